"""ImageNet-1k (ILSVRC-2012) WNIDs and their WordNet 3.0 lemmas, read from a shipped table.

The table is ``vl_jax/assets/wnid_names.tsv`` (30 KB, written by ``scripts/make_wnid_names.py``
from WordNet 3.0's ``data.noun`` and TFDS's ImageNet label list; see that script for the sources
and ``mcla_jax/assets/WORDNET_LICENSE`` for WordNet's license). It is read on first use and kept
for the process (``functools.cache``):

* ``ILSVRC2012_WNIDS[i - 1]`` is the WNID of ILSVRC2012_ID ``i`` (devkit order, the ids used in
  ``ILSVRC2012_validation_ground_truth.txt``). ``sorted(ILSVRC2012_WNIDS)`` is the usual
  0..999 label order of torchvision/TFDS ``imagenet2012``.
* ``WNID_LEMMAS[wnid]`` are the synset's lemmas in WordNet order (first = most common name),
  spelt as in WordNet (``"great_white_shark"``), keyed in sorted WNID order.

Both names are module attributes loaded lazily (``from vl_jax.data.wnid_names import
WNID_LEMMAS`` reads the table then); ``ilsvrc2012_wnids()`` and ``wnid_lemmas()`` return the same
objects.
"""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["ILSVRC2012_WNIDS", "WNID_LEMMAS", "ilsvrc2012_wnids", "wnid_lemmas"]

ASSET = "wnid_names.tsv"
NUM_CLASSES = 1000

# Provided by __getattr__ below; declared for readers and type checkers.
ILSVRC2012_WNIDS: tuple[str, ...]
WNID_LEMMAS: dict[str, tuple[str, ...]]


@functools.cache
def _table() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    # Via the package, not "vl_jax.assets": the assets folder is data, not a package.
    text = resources.files("vl_jax").joinpath("assets", ASSET).read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines or lines[0].split("\t") != ["wnid", "lemmas"]:
        raise ValueError(f"{ASSET}: expected the header 'wnid<TAB>lemmas'")
    wnids, lemmas = [], {}
    for n, line in enumerate(lines[1:], start=2):
        wnid, sep, names = line.partition("\t")
        if not sep or not names or wnid in lemmas:
            raise ValueError(f"{ASSET} line {n}: not a new '<wnid><TAB><lemma>;...' row: {line!r}")
        wnids.append(wnid)
        lemmas[wnid] = tuple(names.split(";"))
    if len(wnids) != NUM_CLASSES:
        raise ValueError(f"{ASSET}: {len(wnids)} WNIDs, expected {NUM_CLASSES}")
    return tuple(wnids), {w: lemmas[w] for w in sorted(lemmas)}


def ilsvrc2012_wnids() -> tuple[str, ...]:
    """The 1,000 WNIDs in ILSVRC2012_ID order (``[i - 1]`` is id ``i``)."""
    return _table()[0]


def wnid_lemmas() -> dict[str, tuple[str, ...]]:
    """``{wnid: lemmas}`` for the 1,000 classes, WordNet order within a synset."""
    return _table()[1]


def __getattr__(name: str):
    if name == "ILSVRC2012_WNIDS":
        return ilsvrc2012_wnids()
    if name == "WNID_LEMMAS":
        return wnid_lemmas()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
