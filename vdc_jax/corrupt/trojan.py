"""TrojanNN (Liu et al., NDSS 2018): a watermark optimised to excite chosen neurons of a model.

TrojanNN does not use an arbitrary patch: it picks internal neurons of the attacked network and
optimises the pixels inside a fixed mask (a square in the corner) until those neurons fire
strongly, so the trigger hijacks features the network already has. Here the attacked network is
our CLIP vision tower (:mod:`vl_jax.models.clip`; the original used VGG-Face and other CNNs):

1. **Neuron selection** (the paper's rule): the ``num_neurons`` units of a chosen layer with the
   largest summed absolute weight *from the preceding layer* (``connection="in"``; the PyTorch
   re-implementations sum ``|W|`` over a Linear layer's inputs), or to the next layer
   (``connection="out"``). Layers: the MLP hidden units of transformer block ``layer`` read at the
   class token (``fc1`` columns in, ``fc2`` rows out), or ``"embedding"`` (the projected image
   embedding; ``proj`` columns in).
2. **Trigger generation**: the pixels inside the mask (``p x p`` at the model's input resolution,
   on a background of the normalisation mean, i.e. 0 after normalisation) start from seeded
   uniform noise and follow Adam steps on TrojanNN's loss ``mean((a_sel - target)^2)``, clipped to
   [0, 255] after every step; the whole loop is one jitted ``lax.fori_loop``.
3. **Stamping**: the ``uint8 [p, p, 3]`` trigger is resized (PIL bilinear) to each image's patch
   side ``max(1, round(size_frac * min(H, W)))`` and written into the corner, optionally with
   TrojanNN's transparency (``alpha < 1``). Pixels outside the mask are never touched.

Generating the trigger runs once per (model weights, seed, settings): with ``cache_dir`` set it is
stored as ``trojannn_<sha256[:16]>.safetensors`` (no pickle) and reloaded from there. A trigger
can also be given directly (``trigger=`` a PNG / ``.npy`` path or a ``uint8 [h, w, 3]`` array).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from PIL import Image

from vdc_jax.corrupt.triggers import Attack, _check_image, badnets_patch_side
from vl_jax.checkpoints import SafetensorsReader, save_safetensors

__all__ = [
    "TrojanNN",
    "TrojanTrigger",
    "generate_trigger",
    "load_trigger",
    "neuron_activations",
    "select_neurons",
    "trojannn",
]

# sqrt(7 %): a square covering 7 % of the image, one of the trigger sizes studied in TrojanNN.
DEFAULT_SIZE_FRAC = 0.07**0.5
_CACHE_VERSION = "trojannn-v1"  # bump when the generation algorithm changes


# --------------------------------------------------------------------------- stamping


def trojannn(
    image: np.ndarray,
    trigger: np.ndarray,
    size_frac: float = DEFAULT_SIZE_FRAC,
    alpha: float = 1.0,
    corner: str = "bottom_right",
    margin: int = 0,
) -> np.ndarray:
    """Stamp a (TrojanNN-optimised) square trigger into a corner.

    Args:
      image: uint8 [H, W, 3].
      trigger: uint8 [h, w, 3]; resized bilinearly to ``p x p``,
        ``p = badnets_patch_side(H, W, size_frac)``.
      alpha: opacity of the stamp (TrojanNN's "transparency" is ``1 - alpha``); 1 = replace.
      corner, margin: as in :func:`vdc_jax.corrupt.badnets`.

    Returns:
      uint8 [H, W, 3]: a copy, ``rint((1 - alpha) x + alpha t)`` inside the ``p x p`` mask and
      bitwise equal to ``image`` everywhere else.
    """
    image, trigger = _check_image(image), _check_image(trigger)
    h, w = image.shape[:2]
    p = badnets_patch_side(h, w, size_frac)
    if trigger.shape[:2] != (p, p):
        trigger = np.asarray(Image.fromarray(trigger).resize((p, p), Image.Resampling.BILINEAR))
    vert, _, horiz = corner.partition("_")
    if vert not in ("top", "bottom") or horiz not in ("left", "right"):
        raise ValueError(f"unknown corner {corner!r}")
    m = max(0, min(margin, h - p, w - p))
    top = m if vert == "top" else h - p - m
    left = m if horiz == "left" else w - p - m
    out = image.copy()
    box = out[top : top + p, left : left + p].astype(np.float64)
    out[top : top + p, left : left + p] = np.clip(
        np.rint((1.0 - alpha) * box + alpha * trigger), 0, 255
    ).astype(np.uint8)
    return out


def load_trigger(trigger: str | os.PathLike | np.ndarray) -> np.ndarray:
    """A user-given trigger: a ``.npy`` file (no pickle), an image file (PNG, ...; converted to
    RGB) or an array. Returns uint8 [h, w, 3]."""
    if isinstance(trigger, np.ndarray):
        return _check_image(trigger)
    path = os.fspath(trigger)
    if path.endswith(".npy"):
        return _check_image(np.load(path, allow_pickle=False))
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# --------------------------------------------------------------------------- the model side


def _layer_index(tower, layer: int | str) -> int | str:
    if layer == "embedding":
        return layer
    n = len(tower.encoder.layers)
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -n <= layer < n:
        raise ValueError(
            f"layer must be a block index in [-{n}, {n}) or 'embedding', got {layer!r}"
        )
    return int(layer) % n


def select_neurons(model, layer: int | str = -1, connection: str = "in", k: int = 1) -> np.ndarray:
    """TrojanNN's neuron choice: the ``k`` units with the largest summed ``|weight|``.

    Args:
      model: a :class:`vl_jax.models.clip.CLIP` with a vision tower.
      layer: block index (MLP hidden units, F of them) or ``"embedding"`` (E units).
      connection: ``"in"`` (weights from the preceding layer: ``fc1`` [D, F] summed over D, or
        ``proj`` [D, E] over D) or ``"out"`` (to the next layer: ``fc2`` [F, D] over D).

    Returns:
      int64 [k]: unit indices, strongest first (ties broken by the lower index).
    """
    tower = _vision(model)
    layer = _layer_index(tower, layer)
    if layer == "embedding":
        if connection != "in":
            raise ValueError("the embedding has no next layer: use connection='in'")
        weights = np.abs(np.asarray(tower.proj.kernel[...], np.float64)).sum(0)
    else:
        mlp = tower.encoder.layers[layer].mlp
        if connection == "in":
            weights = np.abs(np.asarray(mlp.fc1.kernel[...], np.float64)).sum(0)
        elif connection == "out":
            weights = np.abs(np.asarray(mlp.fc2.kernel[...], np.float64)).sum(1)
        else:
            raise ValueError(f"connection must be 'in' or 'out', got {connection!r}")
    if not 1 <= k <= len(weights):
        raise ValueError(f"num_neurons must be in [1, {len(weights)}], got {k}")
    return np.argsort(-weights, kind="stable")[:k]


def _vision(model):
    if model is None:
        raise ValueError(
            "TrojanNN optimises its trigger against a vision model, and none is configured: "
            "pass CorruptionSpec(model=<CLIP checkpoint dir or hub id, or a loaded CLIP>) "
            "(or attack_kwargs={'model': ...}), or a ready trigger with "
            "attack_kwargs={'trigger': 'trigger.png'}"
        )
    if isinstance(model, (str, os.PathLike)):
        raise TypeError("load the checkpoint first (vl_jax.models.clip.from_pretrained)")
    if getattr(model, "vision", None) is None:
        raise ValueError("this CLIP checkpoint has no vision tower; TrojanNN needs one")
    return model.vision


def _split(model, layer):
    """``(graphdef, state, static)`` of the vision tower: what the jitted functions take."""
    tower = _vision(model)
    graphdef, state = nnx.split(tower)
    static = (_layer_index(tower, layer), tuple(model.config.mean), tuple(model.config.std))
    return graphdef, state, static


def _activations(graphdef, state, static, neurons, patches):
    """float32 [B, k]: selected activations for patches [B, p, p, 3] in pixel units, each pasted
    bottom-right into a mean-coloured canvas at the model's input size."""
    layer, mean, std = static
    t = nnx.merge(graphdef, state)
    s, p = t.cfg.image_size, patches.shape[1]
    # Normalised canvas: 0 (= the mean colour) outside the mask, the trigger inside.
    inside = (patches / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)
    canvas = jnp.zeros((patches.shape[0], s, s, 3), jnp.float32)
    canvas = canvas.at[:, s - p :, s - p :].set(inside)
    if layer == "embedding":
        acts = t.proj(t(canvas))
    else:
        x = t.hidden_states(canvas, num_layers=layer)  # the input of block `layer`
        blk = t.encoder.layers[layer]
        x = x + blk.attn(blk.ln1(x))
        acts = blk.mlp.act(blk.mlp.fc1(blk.ln2(x)))[:, 0]  # hidden units at the class token
    return acts[:, neurons].astype(jnp.float32)


_activations_jit = jax.jit(_activations, static_argnums=(0, 2))


@functools.partial(jax.jit, static_argnums=(0, 2, 6))
def _optimise(graphdef, state, static, neurons, patch, target, steps, lr):
    """Adam on TrojanNN's loss over the patch [1, p, p, 3], clipped to [0, 255] each step.
    Module-level and jitted with the graph / settings static, so repeated triggers for the same
    model (other seeds, the cache test) reuse one compilation."""
    opt = optax.adam(lr)

    def loss(x):
        return jnp.mean((_activations(graphdef, state, static, neurons, x) - target) ** 2)

    def step(_, carry):
        x, opt_state = carry
        updates, opt_state = opt.update(jax.grad(loss)(x), opt_state)
        return jnp.clip(optax.apply_updates(x, updates), 0.0, 255.0), opt_state

    return jax.lax.fori_loop(0, steps, step, (patch, opt.init(patch)))[0]


def neuron_activations(model, patches: np.ndarray, neurons, layer: int | str = -1) -> np.ndarray:
    """Selected activations for patches: uint8/float [B, p, p, 3] (pixel units) -> float32 [B, k].

    Each patch is pasted bottom-right on a mean-coloured canvas at the model's resolution, the
    same input :func:`generate_trigger` optimises."""
    graphdef, state, static = _split(model, layer)
    patches = jnp.asarray(np.asarray(patches, np.float32))
    return np.asarray(_activations_jit(graphdef, state, static, jnp.asarray(neurons), patches))


@dataclasses.dataclass(frozen=True)
class TrojanTrigger:
    """Result of :func:`generate_trigger`.

    Attributes:
      trigger: uint8 [p, p, 3], ``p`` = the mask side at the model's input size.
      neurons: int64 [k], the selected units.
      activation_init, activation_final: mean selected activation of the seeded starting noise
        and of the final (rounded) trigger.
    """

    trigger: np.ndarray
    neurons: np.ndarray
    activation_init: float
    activation_final: float


def generate_trigger(
    model,
    size_frac: float = DEFAULT_SIZE_FRAC,
    layer: int | str = -1,
    connection: str = "in",
    num_neurons: int = 1,
    target: float = 100.0,
    steps: int = 200,
    lr: float = 4.0,
    seed: int = 0,
) -> TrojanTrigger:
    """Optimise a TrojanNN trigger against ``model``'s vision tower (see the module docstring).

    Loss (TrojanNN): ``mean_k (a_k(x) - target)^2`` over the selected units ``k``, minimised by
    Adam (learning rate ``lr`` in pixel units) over the ``p x p x 3`` masked pixels, clipped to
    [0, 255] after each step. ``target`` far above the units' normal range makes this gradient
    ascent on their activation. Deterministic for a given ``seed`` on a given backend.
    """
    s = _vision(model).cfg.image_size
    p = badnets_patch_side(s, s, size_frac)
    neurons = select_neurons(model, layer, connection, num_neurons)
    graphdef, state, static = _split(model, layer)
    init = np.random.default_rng([int(seed), 0x7204]).uniform(0, 255, (1, p, p, 3))
    init = jnp.asarray(init, jnp.float32)
    idx = jnp.asarray(neurons)
    final = _optimise(graphdef, state, static, idx, init, float(target), int(steps), float(lr))
    trigger = np.clip(np.rint(np.asarray(final[0])), 0, 255).astype(np.uint8)
    both = jnp.concatenate([init, jnp.asarray(trigger, jnp.float32)[None]])
    acts = np.asarray(_activations_jit(graphdef, state, static, idx, both)).mean(1)
    return TrojanTrigger(trigger, neurons, float(acts[0]), float(acts[1]))


def cache_key(model, settings: dict[str, Any]) -> str:
    """sha256 over the algorithm version, the settings and every vision-tower weight (so another
    checkpoint, or a fine-tuned one, never reuses a stale trigger)."""
    tower = _vision(model)
    h = hashlib.sha256(_CACHE_VERSION.encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(json.dumps([tower.cfg.image_size, *model.config.mean, *model.config.std]).encode())
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(tower, nnx.Param))
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        arr = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)}:{arr.dtype}:{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- Attack


@dataclasses.dataclass(frozen=True, eq=False)
class TrojanNN(Attack):
    """:func:`trojannn` with a trigger optimised by :func:`generate_trigger` (or given).

    Either ``trigger`` (a PNG / ``.npy`` path or a uint8 [h, w, 3] array) or ``model`` (a loaded
    CLIP, or a checkpoint directory / hub id for ``clip.from_pretrained``) must be set. With
    ``cache_dir`` the generated trigger is stored there and reused. After construction,
    ``self.trigger`` is uint8 [p, p, 3] and ``self.info`` describes how it was obtained.
    """

    kind: ClassVar[str] = "trojannn"
    size_frac: float = DEFAULT_SIZE_FRAC
    alpha: float = 1.0
    corner: str = "bottom_right"
    margin: int = 0
    trigger: Any = None
    model: Any = None
    cache_dir: str | None = None
    layer: int | str = -1
    connection: str = "in"
    num_neurons: int = 1
    target: float = 100.0
    steps: int = 200
    lr: float = 4.0
    seed: int = 0

    def __post_init__(self):
        if self.trigger is not None:
            trig, info = load_trigger(self.trigger), {"source": "given"}
        else:
            trig, info = self._generate()
        object.__setattr__(self, "trigger", trig)
        object.__setattr__(self, "info", info)

    def _generate(self) -> tuple[np.ndarray, dict]:
        model = self.model
        if isinstance(model, (str, os.PathLike)):
            from vl_jax.models import clip  # only when a checkpoint must be read

            model = clip.from_pretrained(os.fspath(model))
        settings = {
            f: getattr(self, f)
            for f in ("size_frac", "layer", "connection", "num_neurons", "target", "steps", "lr")
        }
        settings["seed"] = int(self.seed)
        if not isinstance(self.layer, str):  # numpy ints from a config must hash as JSON
            settings["layer"] = int(self.layer)
        path = None
        if self.cache_dir is not None:
            key = cache_key(model, settings)
            path = os.path.join(os.fspath(self.cache_dir), f"trojannn_{key[:16]}.safetensors")
            if os.path.exists(path):
                t = SafetensorsReader([path])
                acts = np.array(t["activation"])
                info = {"source": "cache", "path": path, "neurons": np.array(t["neurons"])}
                info.update(activation_init=float(acts[0]), activation_final=float(acts[1]))
                return np.array(t["trigger"]), info
        r = generate_trigger(model, **settings)
        info = {"source": "optimised", "path": path, "neurons": r.neurons}
        info.update(activation_init=r.activation_init, activation_final=r.activation_final)
        if path is not None:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            acts = np.asarray([r.activation_init, r.activation_final], np.float32)
            tensors = {"trigger": r.trigger, "neurons": r.neurons.astype(np.int32)}
            save_safetensors({**tensors, "activation": acts}, path, {"settings": settings})
        return r.trigger, info

    def __call__(self, image):
        return trojannn(image, self.trigger, self.size_frac, self.alpha, self.corner, self.margin)
