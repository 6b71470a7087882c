"""Generate ``vl_jax/data/wnid_names.py``: ImageNet-1k WNIDs and their WordNet 3.0 lemmas.

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
"""

from __future__ import annotations

import argparse
import os

import tensorflow_datasets as tfds

_OUT = os.path.join(os.path.dirname(__file__), os.pardir, "vl_jax", "data", "wnid_names.py")
_HEADER = '''"""ImageNet-1k (ILSVRC-2012) WNIDs and WordNet 3.0 lemmas. GENERATED, do not edit.

Regenerate with ``python scripts/make_wnid_names.py`` (reads Debian ``wordnet-base``'s
``data.noun`` and TFDS's ``imagenet_resized_labels.txt``; see that script for the sources).

* ``ILSVRC2012_WNIDS[i - 1]`` is the WNID of ILSVRC2012_ID ``i`` (devkit order, the ids used in
  ``ILSVRC2012_validation_ground_truth.txt``). ``sorted(ILSVRC2012_WNIDS)`` is the usual
  0..999 label order of torchvision/TFDS ``imagenet2012``.
* ``WNID_LEMMAS[wnid]`` are the synset's lemmas in WordNet order (first = most common name).
"""

# fmt: off
'''


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
    lemmas = read_lemmas(args.data_noun, wnids)

    lines = [_HEADER, "ILSVRC2012_WNIDS = (\n"]
    lines += [f'    "{w}",\n' for w in wnids]
    lines += [")\n\n", "WNID_LEMMAS = {\n"]
    for w in sorted(wnids):
        names = ", ".join(f'"{n}"' for n in lemmas[w])
        lines.append(f'    "{w}": ({names},),\n')
    lines += ["}\n", "# fmt: on\n"]
    with open(args.out, "w") as f:
        f.writelines(lines)
    print(f"wrote {len(wnids)} WNIDs to {os.path.normpath(args.out)}")


if __name__ == "__main__":
    main()
