"""``CorruptedSource``: inject poisoned samples and noisy labels into a source, with a manifest.

Wraps any :class:`vl_jax.data.protocol.RandomAccessSource` (``len(src)``, ``src[i] -> {"image":
uint8 [H, W, 3], "label": int32, "id": str}``, ``labels()``, ``ids()``, ``class_names``, ``name``,
``split``) and is one itself, so the input pipeline and the cleanser read it like any dataset. Which samples are altered is decided once, in ``__init__``, from ``seed``;
triggers are applied lazily in ``__getitem__`` (they are deterministic functions of the image).

Selection rules (VDC, Zhu et al. ICLR 2024, section 4.1):

1. Label noise first -- VDC's hybrid setting injects poisons into a dataset that *already* has
   noisy labels. In every class ``c``, ``round(noise_rate * n_c)`` samples are chosen;
   symmetric noise gives each a uniformly random *other* label, asymmetric ``c -> c + 1 mod K``.
2. Poisons (all-to-one) are then drawn per non-target class, the same number from each, only
   among samples not chosen in step 1: a sample is altered at most once, and a poisoned sample
   is never also mislabelled by noise (its label is the target, and its original label is the
   true one). Samples of the target class are never poisoned.
3. Samples with a negative label (e.g. STL-10 "unlabelled") are never altered.

Each step draws from its own ``np.random.default_rng([seed, step, class])`` stream, so e.g.
changing the attack leaves the noisy-label choice unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from vdc_jax.corrupt.stega import SSBA
from vdc_jax.corrupt.triggers import Attack, BadNets, Blended, Sig, WaNet
from vdc_jax.corrupt.trojan import TrojanNN
from vl_jax.data.protocol import RandomAccessSource, check_source
from vl_jax.fileio import atomic_open

__all__ = [
    "ATTACKS",
    "KINDS",
    "CorruptedSource",
    "CorruptionSpec",
    "make_attack",
    "read_manifest",
]

ATTACKS: dict[str, type[Attack]] = {
    a.kind: a for a in (BadNets, Blended, Sig, WaNet, TrojanNN, SSBA)
}
NOISE_KINDS = {"sym": "noise_sym", "asym": "noise_asym"}
KINDS = (*ATTACKS, *NOISE_KINDS.values())
MANIFEST_FIELDS = ("index", "id", "kind", "original_label", "new_label")

_NOISE_STREAM, _NOISE_LABEL_STREAM, _POISON_STREAM, _ATTACK_STREAM = 1, 2, 3, 4


@dataclasses.dataclass(frozen=True)
class CorruptionSpec:
    """What to inject.

    Attributes:
      attack: ``None`` (no poisons), a name in :data:`ATTACKS` (``"badnets"``, ``"blended"``,
        ``"sig"``, ``"wanet"``, ``"trojannn"``, ``"ssba"``; built with ``attack_kwargs`` and,
        for seeded triggers, a seed derived from the dataset seed), or an :class:`Attack`
        instance used as is.
      attack_kwargs: parameters of the named attack (e.g. ``{"alpha": 0.1}``).
      target: the all-to-one target class.
      poison_per_class: poisons per non-target class (VDC: 500 on CIFAR-10, 80 on ImageNet-Dog).
      poison_rate: alternatively, poisons as a fraction of the labelled dataset, split equally
        over the ``K - 1`` non-target classes: ``round(rate * N / (K - 1))`` per class (VDC's
        eta = 0.09 on CIFAR-10 -> 500). Give exactly one of the two when ``attack`` is set.
      noise: ``None``, ``"sym"`` or ``"asym"``.
      noise_rate: fraction of every class that gets a noisy label (VDC: 0.4).
      model: for attacks optimised against a model (``"trojannn"``): a CLIP checkpoint
        directory / hub id or a loaded ``vl_jax.models.clip.CLIP``; ignored by the others.
      cache_dir: where such attacks cache their optimised trigger (e.g. the run's workdir).
    """

    attack: str | Attack | None = None
    attack_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    target: int = 0
    poison_per_class: int | None = None
    poison_rate: float | None = None
    noise: str | None = None
    noise_rate: float = 0.0
    model: Any = None
    cache_dir: str | None = None

    def __post_init__(self):
        if self.attack is not None:
            if (self.poison_per_class is None) == (self.poison_rate is None):
                raise ValueError("give exactly one of poison_per_class and poison_rate")
            if isinstance(self.attack, str) and self.attack not in ATTACKS:
                raise ValueError(f"unknown attack {self.attack!r}; known: {sorted(ATTACKS)}")
            if self.poison_per_class is not None and self.poison_per_class < 0:
                raise ValueError("poison_per_class must be >= 0")
            if self.poison_rate is not None and not 0 <= self.poison_rate < 1:
                raise ValueError("poison_rate must be in [0, 1)")
        if self.noise is not None:
            if self.noise not in NOISE_KINDS:
                raise ValueError(f"noise must be None, 'sym' or 'asym', got {self.noise!r}")
            if not 0 <= self.noise_rate < 1:
                raise ValueError("noise_rate must be in [0, 1)")


def make_attack(spec: CorruptionSpec, seed: int) -> Attack | None:
    """The spec's attack; a named seeded trigger gets ``seed`` unless ``attack_kwargs`` has one,
    and an attack with ``model`` / ``cache_dir`` fields gets the spec's unless given there."""
    if spec.attack is None or isinstance(spec.attack, Attack):
        return spec.attack
    cls = ATTACKS[spec.attack]
    kwargs = dict(spec.attack_kwargs)
    fields = {f.name for f in dataclasses.fields(cls)}
    if "seed" in fields:
        kwargs.setdefault(
            "seed", int(np.random.default_rng([seed, _ATTACK_STREAM]).integers(2**31))
        )
    for name in ("model", "cache_dir"):
        if name in fields and getattr(spec, name) is not None:
            kwargs.setdefault(name, getattr(spec, name))
    return cls(**kwargs)


class CorruptedSource:
    """A :class:`~vl_jax.data.protocol.RandomAccessSource` with injected dirt: same length, ids
    and images except on altered samples.

    ``self[i]`` is ``source[i]`` with the trigger applied to the image of a poisoned sample and
    the label replaced on every altered sample; other keys pass through, clean samples are
    returned as is (bitwise equal).

    Attributes:
      source: the wrapped source; spec: the :class:`CorruptionSpec`; seed: the selection seed.
      name: ``"<source name>+corrupt"``; split: the source's; class_names: the source's.
      labels_original: int32 [N], the source's labels.
      kinds: object [N], ``""`` for a clean sample, else one of :data:`KINDS`.
      attack: the bound :class:`Attack` (``None`` without poisons).
    """

    def __init__(self, source: RandomAccessSource, spec: CorruptionSpec, seed: int = 0):
        self.source = check_source(source)
        self.spec = spec
        self.seed = int(seed)
        self.class_names = list(source.class_names)
        self.name = f"{source.name}+corrupt"
        self.split = source.split
        k = self.num_classes
        if spec.attack is not None and not 0 <= spec.target < k:
            raise ValueError(f"target {spec.target} is not a class of {k}")
        if spec.noise is not None and k < 2:
            raise ValueError("label noise needs at least 2 classes")
        self.labels_original = np.asarray(source.labels(), np.int32)
        if self.labels_original.shape != (len(source),):
            raise ValueError(
                f"source labels have shape {self.labels_original.shape}, expected ({len(source)},)"
            )
        self.attack = make_attack(spec, self.seed)
        n = len(self.labels_original)
        self._labels = self.labels_original.copy()
        self.kinds = np.full(n, "", dtype=object)
        self._choose_noise()
        self._choose_poisons()
        self._manifest = None

    # ------------------------------------------------------------------ source protocol
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels_original)

    def __getitem__(self, i) -> dict:
        example = self.source[i]
        i = int(i) % len(self)
        kind = self.kinds[i]
        if not kind:
            return example
        example = dict(example)
        if kind in ATTACKS:
            example["image"] = self.attack(example["image"])
        example["label"] = np.int32(self._labels[i])
        return example

    def labels(self) -> np.ndarray:
        """int32 [N]: the labels after corruption (``labels()[i] == self[i]["label"]``)."""
        return self._labels.copy()

    def ids(self) -> list[str]:
        """[N] the source's ids (corruption keeps them), without decoding any image."""
        return self.source.ids()

    def __repr__(self) -> str:
        counts = {k: int(np.sum(self.kinds == k)) for k in KINDS if np.any(self.kinds == k)}
        return f"CorruptedSource({self.source!r}, seed={self.seed}, altered={counts})"

    # ------------------------------------------------------------------ ground truth
    @property
    def is_dirty(self) -> np.ndarray:
        """bool [N]: poisoned or mislabelled (the positives for TPR / FPR)."""
        return self.kinds != ""

    @property
    def is_poisoned(self) -> np.ndarray:
        """bool [N]: carries a backdoor trigger (and the target label)."""
        return np.isin(self.kinds, list(ATTACKS))

    @property
    def is_noisy(self) -> np.ndarray:
        """bool [N]: label changed by symmetric / asymmetric noise (image untouched)."""
        return np.isin(self.kinds, list(NOISE_KINDS.values()))

    @property
    def manifest(self) -> list[dict]:
        """One row per altered sample, by index: ``{"index", "id", "kind", "original_label",
        "new_label"}``. Ids are read from the source (``ids()``, no image decoded) on first
        access."""
        if self._manifest is None:
            idx = np.flatnonzero(self.is_dirty)
            all_ids = self.source.ids()
            row_ids = [str(all_ids[i]) for i in idx]
            self._manifest = [
                {
                    "index": int(i),
                    "id": sid,
                    "kind": str(self.kinds[i]),
                    "original_label": int(self.labels_original[i]),
                    "new_label": int(self._labels[i]),
                }
                for i, sid in zip(idx, row_ids)
            ]
        return [dict(r) for r in self._manifest]

    def write_manifest(self, path: str | os.PathLike) -> None:
        """Write :attr:`manifest` atomically: JSON (a list of rows) if ``path`` ends in
        ``.json``, else TSV with the header ``index id kind original_label new_label``.

        Raises:
          ValueError: TSV requested but an id holds a tab or newline (use ``.json``).
        """
        path = os.fspath(path)
        rows = self.manifest
        if path.endswith(".json"):
            text = json.dumps(rows, indent=1) + "\n"
        else:
            bad = [r["id"] for r in rows if any(ch in r["id"] for ch in "\t\n\r")]
            if bad:
                raise ValueError(f"id {bad[0]!r} cannot be written to TSV; write .json instead")
            lines = ["\t".join(MANIFEST_FIELDS)]
            lines += ["\t".join(str(r[f]) for f in MANIFEST_FIELDS) for r in rows]
            text = "\n".join(lines) + "\n"
        with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)

    # ------------------------------------------------------------------ selection
    def _rng(self, stream: int, c: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, int(c)])

    def _choose_noise(self) -> None:
        spec, k = self.spec, self.num_classes
        if spec.noise is None or spec.noise_rate == 0:
            return
        kind = NOISE_KINDS[spec.noise]
        for c in range(k):
            members = np.flatnonzero(self.labels_original == c)
            m = round(spec.noise_rate * len(members))
            chosen = np.sort(self._rng(_NOISE_STREAM, c).choice(members, m, replace=False))
            if spec.noise == "sym":  # c + U{1..K-1} mod K: uniform over the K-1 other classes
                shift = self._rng(_NOISE_LABEL_STREAM, c).integers(1, k, size=m)
            else:
                shift = np.ones(m, np.int64)
            self._labels[chosen] = (c + shift) % k
            self.kinds[chosen] = kind

    def _choose_poisons(self) -> None:
        spec, k = self.spec, self.num_classes
        if self.attack is None:
            return
        if spec.poison_per_class is not None:
            per_class = spec.poison_per_class
        else:
            n_labelled = int(np.sum(self.labels_original >= 0))
            per_class = round(spec.poison_rate * n_labelled / max(k - 1, 1))
        for c in range(k):
            if c == spec.target:
                continue
            free = np.flatnonzero((self.labels_original == c) & (self.kinds == ""))
            if per_class > len(free):
                raise ValueError(
                    f"class {c} has {len(free)} samples left to poison (after label noise), "
                    f"{per_class} requested"
                )
            chosen = np.sort(self._rng(_POISON_STREAM, c).choice(free, per_class, replace=False))
            self._labels[chosen] = spec.target
            self.kinds[chosen] = self.attack.kind


def read_manifest(path: str | os.PathLike) -> list[dict]:
    """Rows written by :meth:`CorruptedSource.write_manifest` (JSON or TSV), ints restored."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            rows = json.load(f)
        else:
            header, *lines = f.read().splitlines()
            if tuple(header.split("\t")) != MANIFEST_FIELDS:
                raise ValueError(f"{path}: not a manifest (header {header!r})")
            rows = [dict(zip(MANIFEST_FIELDS, line.split("\t"))) for line in lines]
    for r in rows:
        for f in ("index", "original_label", "new_label"):
            r[f] = int(r[f])
    return rows
