"""TrojanNN (Liu et al., NDSS 2018): a watermark optimised to excite chosen neurons of a model.

TrojanNN does not use an arbitrary patch: it picks internal neurons of the attacked network and
optimises the pixels inside a fixed mask until those neurons fire strongly, so the trigger
hijacks features the network already has. Here the attacked network is our CLIP vision tower
(:mod:`vl_jax.models.clip`; the original used VGG-Face and other CNNs):

1. **Neuron selection** (the paper's rule): the ``num_neurons`` units of a chosen layer with the
   largest summed absolute weight *from the preceding layer* (``connection="in"``), or to the
   next layer (``connection="out"``: BackdoorBench's rule, which ranks the classifier head's
   input features by their summed ``|W|`` to the head). Layers: the MLP hidden units of
   transformer block ``layer`` read at the class token (``fc1`` columns in, ``fc2`` rows out),
   or ``"embedding"`` (the projected image embedding; ``proj`` columns in).
2. **Mask** (:func:`trojan_mask`): ``"apple"`` (default; an apple silhouette of 7 % of the area
   in the lower right, drawn procedurally in the place and size of BackdoorBench's
   ``apple4.png``, which is not ours to ship), ``"square"`` (a ``p x p`` corner square, ``p`` =
   ``round(size_frac * min(H, W))``) or a given mask image (non-zero = inside).
3. **Trigger generation**: the pixels inside the mask at the model's input resolution start from
   seeded uniform noise and follow Adam steps on TrojanNN's loss ``mean((a_sel - target)^2)``,
   clipped to [0, 255] after every step; the whole loop is one jitted ``lax.fori_loop``. Outside
   the mask the model sees black for additive stamping (what the trigger adds to a black image,
   as BackdoorBench optimises it) and the normalisation mean for replacement.
4. **Stamping**: the ``uint8`` trigger (the mask's bounding box) is resized (PIL bilinear) to the
   mask's bounding box at each image's size and applied inside the mask only: ``"add"`` (default,
   BackdoorBench's ``TrojanTrigger``) adds it, saturating at 255; ``"replace"`` writes it with
   opacity ``alpha`` (TrojanNN's transparency is ``1 - alpha``). Pixels outside the mask are
   never touched.

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

from vdc_jax.corrupt.triggers import (
    Attack,
    _check_image,
    _resize,
    badnets_patch_side,
    corner_box,
    load_trigger,
)
from vl_jax.checkpoints import SafetensorsReader, save_safetensors

__all__ = [
    "TrojanNN",
    "TrojanTrigger",
    "apple_mask",
    "generate_trigger",
    "load_trigger",
    "neuron_activations",
    "select_neurons",
    "trojan_mask",
    "trojannn",
]

# sqrt(7 %): a square covering 7 % of the image, one of the trigger sizes studied in TrojanNN.
DEFAULT_SIZE_FRAC = 0.07**0.5
STAMPS = ("add", "replace")
_CACHE_VERSION = "trojannn-v2"  # bump when the generation algorithm changes


# --------------------------------------------------------------------------- masks


def _ellipse(v, u, cy, cx, ry, rx, degrees=0.0):
    """bool: pixel centres ``(v, u)`` inside an ellipse rotated by ``degrees``."""
    a = np.deg2rad(degrees)
    dy, dx = v - cy, u - cx
    along, across = dx * np.cos(a) - dy * np.sin(a), dx * np.sin(a) + dy * np.cos(a)
    return (along / rx) ** 2 + (across / ry) ** 2 <= 1.0


def apple_mask(height: int, width: int) -> np.ndarray:
    """An apple silhouette: bool [H, W], True inside.

    Drawn in the coordinates of a 224 x 224 canvas and sampled at each pixel centre, so it
    scales with the image: two overlapping upright ellipses (the lobes; notches at the top and
    bottom) and a leaf tilted 45 degrees above them. It covers 7.0 % of the image, rows
    120-202 and columns 128-193 at 224 px (the lower right, off-centre): the place, size and
    shape of BackdoorBench's ``apple4.png`` mask (7.0 %, rows 120-203, columns 128-194;
    intersection over union 0.85 with it), which is licensed for non-commercial use only and
    therefore not shipped.
    """
    v = (np.arange(height, dtype=np.float64)[:, None] + 0.5) * (224.0 / height)
    u = (np.arange(width, dtype=np.float64)[None, :] + 0.5) * (224.0 / width)
    body = _ellipse(v, u, 172.5, 149.5, 30.5, 21.5) | _ellipse(v, u, 172.5, 172.5, 30.5, 21.5)
    return body | _ellipse(v, u, 128.0, 169.0, 4.0, 10.5, 45.0)


def trojan_mask(
    height: int,
    width: int,
    mask: str | np.ndarray = "apple",
    size_frac: float = DEFAULT_SIZE_FRAC,
    corner: str = "bottom_right",
    margin: int = 0,
) -> np.ndarray:
    """TrojanNN's mask at an image size: bool [H, W], True where the trigger goes.

    Args:
      mask: ``"apple"`` (:func:`apple_mask`; ``size_frac``, ``corner`` and ``margin`` do not
        apply), ``"square"`` (a ``p x p`` square, ``p = badnets_patch_side(H, W, size_frac)``,
        in ``corner``, ``margin`` pixels from the borders) or a mask image [h, w] or [h, w, C]
        whose non-zero pixels are inside (resized with nearest neighbour).
    """
    if isinstance(mask, np.ndarray):
        m = mask if mask.ndim == 2 else mask.max(axis=2)
        m = (np.asarray(m) > 0).astype(np.uint8)
        return _resize(m, height, width, Image.Resampling.NEAREST) > 0
    if mask == "apple":
        return apple_mask(height, width)
    if mask == "square":
        p = badnets_patch_side(height, width, size_frac)
        top, left = corner_box(height, width, p, corner, margin)
        out = np.zeros((height, width), bool)
        out[top : top + p, left : left + p] = True
        return out
    raise ValueError(f"mask must be 'apple', 'square' or a mask image, got {mask!r}")


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the True pixels of a bool [H, W] mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        raise ValueError("the TrojanNN mask is empty at this image size")
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


# --------------------------------------------------------------------------- stamping


def trojannn(
    image: np.ndarray,
    trigger: np.ndarray,
    mask: str | np.ndarray = "apple",
    stamp: str = "add",
    size_frac: float = DEFAULT_SIZE_FRAC,
    alpha: float = 1.0,
    corner: str = "bottom_right",
    margin: int = 0,
) -> np.ndarray:
    """Stamp a (TrojanNN-optimised) trigger inside its mask.

    Args:
      image: uint8 [H, W, 3].
      trigger: uint8 [h, w, 3], the mask's bounding box; resized bilinearly to the bounding box
        of ``trojan_mask(H, W, mask, size_frac, corner, margin)``.
      stamp: ``"add"``: ``image + alpha * t``, saturating at 255 (BackdoorBench adds without
        saturating, so its sums above 255 wrap around in its uint8 cast); ``"replace"``:
        ``(1 - alpha) * image + alpha * t``.
      alpha: weight of the trigger (TrojanNN's "transparency" is ``1 - alpha``).

    Returns:
      uint8 [H, W, 3]: a copy, the stamp rounded to nearest inside the mask and bitwise equal to
      ``image`` everywhere else.
    """
    image, trigger = _check_image(image), _check_image(trigger)
    if stamp not in STAMPS:
        raise ValueError(f"stamp must be one of {STAMPS}, got {stamp!r}")
    inside = trojan_mask(*image.shape[:2], mask, size_frac, corner, margin)
    top, left, bh, bw = _bbox(inside)
    box = (slice(top, top + bh), slice(left, left + bw))
    t = _resize(trigger, bh, bw).astype(np.float64)
    region = image[box].astype(np.float64)
    stamped = region + alpha * t if stamp == "add" else (1.0 - alpha) * region + alpha * t
    out = image.copy()
    out[box] = np.where(inside[box][..., None], np.clip(np.rint(stamped), 0, 255), out[box])
    return out


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


def _split(model, layer, mask: np.ndarray, background: str):
    """``(graphdef, state, static, inside)`` of the vision tower for a bool [S, S] mask at the
    model's input size: what the jitted functions take (``inside`` = the mask's bounding box as
    float32 [bh, bw], ``static`` = layer, normalisation, box position, background colour)."""
    tower = _vision(model)
    graphdef, state = nnx.split(tower)
    top, left, bh, bw = _bbox(mask)
    mean = np.asarray(model.config.mean, np.float64)
    # The background in normalised units: 0 = the mean colour, or black (0 in pixels).
    if background == "mean":
        bg = np.zeros(3)
    elif background == "black":
        bg = -mean / np.asarray(model.config.std, np.float64)
    else:
        raise ValueError(f"background must be 'mean' or 'black', got {background!r}")
    static = (
        _layer_index(tower, layer),
        tuple(model.config.mean),
        tuple(model.config.std),
        (top, left),
        tuple(float(c) for c in bg),
    )
    inside = jnp.asarray(mask[top : top + bh, left : left + bw], jnp.float32)
    return graphdef, state, static, inside


def _activations(graphdef, state, static, neurons, patches, inside):
    """float32 [B, k]: selected activations for patches [B, bh, bw, 3] in pixel units, each
    pasted where ``inside`` [bh, bw] is 1 into a background canvas at the model's input size."""
    layer, mean, std, (top, left), bg = static
    t = nnx.merge(graphdef, state)
    s, (bh, bw) = t.cfg.image_size, patches.shape[1:3]
    bg = jnp.asarray(bg, jnp.float32)
    trig = (patches / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)
    box = jnp.where(inside[None, :, :, None] > 0, trig, bg)  # no gradient outside the mask
    canvas = jnp.broadcast_to(bg, (patches.shape[0], s, s, 3))
    canvas = canvas.at[:, top : top + bh, left : left + bw].set(box)
    if layer == "embedding":
        acts = t.proj(t(canvas))
    else:
        x = t.hidden_states(canvas, num_layers=layer)  # the input of block `layer`
        blk = t.encoder.layers[layer]
        x = x + blk.attn(blk.ln1(x))
        acts = blk.mlp.act(blk.mlp.fc1(blk.ln2(x)))[:, 0]  # hidden units at the class token
    return acts[:, neurons].astype(jnp.float32)


_activations_jit = jax.jit(_activations, static_argnums=(0, 2))


@functools.partial(jax.jit, static_argnums=(0, 2, 7))
def _optimise(graphdef, state, static, neurons, patch, inside, target, steps, lr):
    """Adam on TrojanNN's loss over the patch [1, bh, bw, 3], clipped to [0, 255] each step.
    Module-level and jitted with the graph / settings static, so repeated triggers for the same
    model (other seeds, the cache test) reuse one compilation."""
    opt = optax.adam(lr)

    def loss(x):
        acts = _activations(graphdef, state, static, neurons, x, inside)
        return jnp.mean((acts - target) ** 2)

    def step(_, carry):
        x, opt_state = carry
        updates, opt_state = opt.update(jax.grad(loss)(x), opt_state)
        return jnp.clip(optax.apply_updates(x, updates), 0.0, 255.0), opt_state

    return jax.lax.fori_loop(0, steps, step, (patch, opt.init(patch)))[0]


def _model_mask(model, mask, size_frac) -> np.ndarray:
    """bool [S, S]: the mask at the model's input size (a square always bottom-right)."""
    s = _vision(model).cfg.image_size
    return trojan_mask(s, s, mask, size_frac)


def neuron_activations(
    model,
    patches: np.ndarray,
    neurons,
    layer: int | str = -1,
    mask: str | np.ndarray | None = None,
    size_frac: float = DEFAULT_SIZE_FRAC,
    background: str = "mean",
) -> np.ndarray:
    """Selected activations for patches: uint8/float [B, bh, bw, 3] (pixel units) -> float32 [B, k].

    Each patch fills the bounding box of ``mask`` (as :func:`trojan_mask` at the model's input
    size; ``None``: a square of the patch's size in the bottom-right corner), inside the mask,
    on a ``background`` (``"mean"`` or ``"black"``) canvas: the input :func:`generate_trigger`
    optimises."""
    patches = np.asarray(patches, np.float32)
    if mask is None:
        s = _vision(model).cfg.image_size
        m = np.zeros((s, s), bool)
        m[s - patches.shape[1] :, s - patches.shape[2] :] = True
    else:
        m = _model_mask(model, mask, size_frac)
    graphdef, state, static, inside = _split(model, layer, m, background)
    idx = jnp.asarray(neurons)
    return np.asarray(_activations_jit(graphdef, state, static, idx, jnp.asarray(patches), inside))


@dataclasses.dataclass(frozen=True)
class TrojanTrigger:
    """Result of :func:`generate_trigger`.

    Attributes:
      trigger: uint8 [bh, bw, 3], the mask's bounding box at the model's input size (0 outside
        the mask).
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
    mask: str | np.ndarray = "apple",
    stamp: str = "add",
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
    Adam (learning rate ``lr`` in pixel units) over the masked pixels, clipped to [0, 255] after
    each step. ``target`` far above the units' normal range makes this gradient ascent on their
    activation. ``stamp`` picks the background the model sees outside the mask: black for
    ``"add"``, the normalisation mean for ``"replace"``. Deterministic for a given ``seed`` on a
    given backend.
    """
    if stamp not in STAMPS:
        raise ValueError(f"stamp must be one of {STAMPS}, got {stamp!r}")
    m = _model_mask(model, mask, size_frac)
    background = "black" if stamp == "add" else "mean"
    neurons = select_neurons(model, layer, connection, num_neurons)
    graphdef, state, static, inside = _split(model, layer, m, background)
    bh, bw = inside.shape
    init = np.random.default_rng([int(seed), 0x7204]).uniform(0, 255, (1, bh, bw, 3))
    init = jnp.asarray(init, jnp.float32)
    idx = jnp.asarray(neurons)
    args = (graphdef, state, static, idx, init, inside, float(target), int(steps), float(lr))
    final = np.asarray(_optimise(*args)[0])
    trigger = np.clip(np.rint(final), 0, 255) * np.asarray(inside)[..., None]
    trigger = trigger.astype(np.uint8)
    both = jnp.concatenate([init, jnp.asarray(trigger, jnp.float32)[None]])
    acts = np.asarray(_activations_jit(graphdef, state, static, idx, both, inside)).mean(1)
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
    ``cache_dir`` the generated trigger is stored there and reused. ``mask`` is ``"apple"``,
    ``"square"``, or a mask image (a path or an array; non-zero = inside). After construction,
    ``self.trigger`` is uint8 [bh, bw, 3] and ``self.info`` describes how it was obtained.
    """

    kind: ClassVar[str] = "trojannn"
    mask: Any = "apple"
    stamp: str = "add"
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
        if self.stamp not in STAMPS:
            raise ValueError(f"stamp must be one of {STAMPS}, got {self.stamp!r}")
        if isinstance(self.mask, (str, os.PathLike)) and self.mask not in ("apple", "square"):
            object.__setattr__(self, "mask", load_trigger(self.mask))  # a mask image file
        elif not isinstance(self.mask, str):
            object.__setattr__(self, "mask", np.asarray(self.mask))
        if self.trigger is not None:
            trig, info = load_trigger(self.trigger), {"source": "given"}
        else:
            trig, info = self._generate()
        object.__setattr__(self, "trigger", trig)
        object.__setattr__(self, "info", info)

    def _settings(self) -> dict[str, Any]:
        """The generation settings, JSON-able (the cache key and the file's metadata)."""
        settings = {
            f: getattr(self, f)
            for f in ("stamp", "size_frac", "connection", "num_neurons", "target", "steps", "lr")
        }
        settings["seed"] = int(self.seed)
        # numpy ints from a config must hash as JSON; a mask image by its content
        settings["layer"] = self.layer if isinstance(self.layer, str) else int(self.layer)
        mask = self.mask
        if isinstance(mask, np.ndarray):
            digest = hashlib.sha256(np.ascontiguousarray(mask > 0).tobytes()).hexdigest()
            mask = f"image:{mask.shape}:{digest[:16]}"
        settings["mask"] = mask
        return settings

    def _generate(self) -> tuple[np.ndarray, dict]:
        model = self.model
        if isinstance(model, (str, os.PathLike)):
            from vl_jax.models import clip  # only when a checkpoint must be read

            model = clip.from_pretrained(os.fspath(model))
        settings = self._settings()
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
        r = generate_trigger(model, **{**settings, "mask": self.mask})
        info = {"source": "optimised", "path": path, "neurons": r.neurons}
        info.update(activation_init=r.activation_init, activation_final=r.activation_final)
        if path is not None:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            acts = np.asarray([r.activation_init, r.activation_final], np.float32)
            tensors = {"trigger": r.trigger, "neurons": r.neurons.astype(np.int32)}
            save_safetensors({**tensors, "activation": acts}, path, {"settings": settings})
        return r.trigger, info

    def __call__(self, image):
        return trojannn(
            image,
            self.trigger,
            self.mask,
            self.stamp,
            self.size_frac,
            self.alpha,
            self.corner,
            self.margin,
        )
