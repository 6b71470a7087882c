"""Generate ``vl_jax/assets/wnid_names.tsv``: ImageNet-1k WNIDs and their WordNet 3.0 lemmas.

Usage (needs the Debian ``wordnet-base`` package for ``data.noun``; nothing else)::

    apt-get install wordnet-base
    python scripts/make_wnid_names.py [--data_noun /usr/share/wordnet/data.noun]

Sources:

* The 1,000 ILSVRC-2012 WNIDs in **ILSVRC2012_ID order** (the devkit's ``meta.mat`` /
  ``map_clsloc.txt`` order used by ``ILSVRC2012_validation_ground_truth.txt``; line i = id i)
  come from TFDS's ``image_classification/imagenet_resized_labels.txt``. Consistency check:
  the ground truth of ``ILSVRC2012_val_00000001`` is 490, and line 490 is n01751748 (sea snake).
* Lemmas come straight from WordNet 3.0's ``data.noun``: a WNID is ``n`` + the 8-digit byte
  offset of its synset line, whose fields are ``offset lex_filenum ss_type w_cnt (word lex_id)*``
  (``w_cnt`` in hex; see ``wndb(5WN)``). Reading the file directly gives the same lemmas as
  ``nltk.corpus.wordnet.synset_from_pos_and_offset`` without needing NLTK or a corpus download.

Output: a header line ``wnid<TAB>lemmas``, then one line per class in ILSVRC2012_ID order
(line i + 1 = id i), ``<wnid><TAB><lemma>;<lemma>;...`` with WordNet's raw lemma spelling
(underscores for spaces), read by :mod:`vl_jax.data.wnid_names`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence

import tensorflow_datasets as tfds

_OUT = os.path.join(os.path.dirname(__file__), os.pardir, "vl_jax", "assets", "wnid_names.tsv")


def read_lemmas(data_noun: str, wnids: list[str]) -> dict[str, tuple[str, ...]]:
    """Lemmas of each noun synset ``wnid`` (``n%08d`` of its byte offset in ``data_noun``)."""
    out = {}
    with open(data_noun, "rb") as f:
        for wnid in wnids:
            offset = int(wnid[1:])
            f.seek(offset)
            fields = f.readline().decode("utf-8").split()
            if int(fields[0]) != offset or fields[2] != "n":
                raise ValueError(f"{wnid}: no noun synset at byte {offset} of {data_noun}")
            count = int(fields[3], 16)
            out[wnid] = tuple(fields[4 + 2 * i] for i in range(count))
    return out


def write_table(path: str, wnids: Sequence[str], lemmas: Mapping[str, Sequence[str]]) -> None:
    """Write the asset: header, then ``wnid<TAB>lemma;lemma;...`` per WNID in ``wnids`` order."""
    lines = ["wnid\tlemmas\n"]
    for w in wnids:
        names = lemmas[w]
        if not names or any(";" in n or "\t" in n or "\n" in n for n in names):
            raise ValueError(f"{w}: lemmas {names!r} cannot be written as ';'-separated text")
        lines.append(f"{w}\t{';'.join(names)}\n")
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_noun", default="/usr/share/wordnet/data.noun")
    parser.add_argument("--out", default=_OUT)
    args = parser.parse_args()

    labels = os.path.join(
        os.path.dirname(tfds.__file__), "image_classification", "imagenet_resized_labels.txt"
    )
    with open(labels) as f:
        wnids = [line.strip() for line in f if line.strip()]
    assert len(wnids) == len(set(wnids)) == 1000, len(wnids)
    write_table(args.out, wnids, read_lemmas(args.data_noun, wnids))
    print(f"wrote {len(wnids)} WNIDs to {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
