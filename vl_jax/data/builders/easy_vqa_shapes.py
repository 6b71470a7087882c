"""TFDS builder ``easy_vqa_shapes``: the easy-VQA images (PyPI ``easy-vqa``, MIT) with class labels.

easy-VQA ships 4,000 train + 1,000 test synthetic ``64 x 64`` RGB PNGs, each one shape
(circle / rectangle / triangle) in one of 8 colours on a light background, and 48k
question/answer pairs. This builder derives per-image ``shape`` and ``color`` labels, which
makes it a small offline *real-file* classification/clustering set, and keeps the questions.

Label derivation (:func:`derive_labels`), per image and attribute:

1. ``"question"``: from its question/answer pairs. A "what ..." answer that is a shape/colour
   gives it directly, and so does a shape/colour word in a "what" question ("what color is
   the *triangle*?"); a yes/no question about one value asserts it (yes, or "no" to a negated
   question: "is there *not* a ..." / "is *no* ... present") or excludes it; a value is
   derived when one candidate is left. All evidence must agree, else :class:`ValueError`.
2. ``"pixels"``: when the questions leave it open (train: 163 shapes, 288 colours; test: 46 and
   78), from the pixels: colour = the shape's fill, which is exactly one of the 8 palette
   values; shape = fill ratio of the shape's bounding box (rectangle > 0.905, triangle
   < 0.72, else circle). On every image where the questions decide, both rules agree with them
   (checked at preparation; a disagreement raises).

Counts per source are in ``info.metadata["label_sources"]``.
"""

from __future__ import annotations

import collections
import re

import numpy as np
import tensorflow_datasets as tfds

from vl_jax.data.builders._common import ArrayRecordBuilder, encode_png
from vl_jax.images import load_rgb

__all__ = ["COLORS", "PALETTE", "SHAPES", "EasyVqaShapes", "derive_labels", "pixel_labels"]

SHAPES = ("circle", "rectangle", "triangle")
COLORS = ("black", "blue", "brown", "gray", "green", "red", "teal", "yellow")
# Fill colours used by easy-VQA's generator (measured: every image's fill is exactly one).
PALETTE = {
    "black": (0, 0, 0),
    "blue": (0, 0, 255),
    "brown": (165, 42, 42),
    "gray": (128, 128, 128),
    "green": (0, 255, 0),
    "red": (255, 0, 0),
    "teal": (0, 128, 128),
    "yellow": (255, 255, 0),
}
_YES_NO = ("yes", "no")


def derive_labels(qa: list[tuple[str, str]]) -> dict[str, str | None]:
    """``{"shape": ..., "color": ...}`` from one image's (question, answer) pairs; None if open.

    Raises:
      ValueError: the pairs contradict each other.
    """
    out = {}
    for attr, vocab in (("shape", SHAPES), ("color", COLORS)):
        pos, neg = set(), set()
        for question, answer in qa:
            words = re.findall(r"[a-z]+", question.lower())
            named = [w for w in words if w in vocab]
            if answer in _YES_NO:
                if named:
                    negated = "not" in words or words[:2] == ["is", "no"]
                    (pos if (answer == "yes") != negated else neg).update(named)
            else:
                pos.update(named)  # "what color is the triangle?" -> it is a triangle
                if answer in vocab:
                    pos.add(answer)
        if len(pos) > 1 or pos & neg:
            raise ValueError(
                f"contradictory {attr} evidence {sorted(pos)} / not {sorted(neg)}: {qa}"
            )
        left = pos or (set(vocab) - neg)
        out[attr] = next(iter(left)) if len(left) == 1 else None
    return out


def pixel_labels(rgb: np.ndarray) -> dict[str, str]:
    """Shape and colour of an easy-VQA image ``uint8 [64, 64, 3]`` from its pixels.

    Raises:
      ValueError: the fill colour is not one of the palette's.
    """
    wide = rgb.astype(np.int32)
    codes = (wide[..., 0] << 16) | (wide[..., 1] << 8) | wide[..., 2]  # 1-D unique is fast
    values, counts = np.unique(codes, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    background = np.array([(values[order[0]] >> s) & 255 for s in (16, 8, 0)])
    fill = tuple(int(values[order[1]] >> s) & 255 for s in (16, 8, 0))
    color = next((name for name, v in PALETTE.items() if v == fill), None)
    if color is None:
        raise ValueError(f"fill colour {fill} is not in the easy-VQA palette")
    # Anti-aliased edges lie between fill and background: > 60 levels away counts as shape.
    mask = np.abs(wide - background).sum(-1) > 60
    ys, xs = np.nonzero(mask)
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    ratio = box.mean()  # rectangle ~1, circle ~pi/4, triangle ~1/2 (also when cut by the border)
    shape = "rectangle" if ratio > 0.905 else "triangle" if ratio < 0.72 else "circle"
    return {"shape": shape, "color": color}


class EasyVqaShapes(ArrayRecordBuilder):
    """easy-VQA images with derived ``shape`` (3) and ``color`` (8) labels."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "image_id": tfds.features.Scalar(np.int32),
                    "shape": tfds.features.ClassLabel(names=SHAPES),
                    "color": tfds.features.ClassLabel(names=COLORS),
                    "questions": tfds.features.Sequence(tfds.features.Text()),
                    "answers": tfds.features.Sequence(tfds.features.Text()),
                }
            ),
            supervised_keys=("image", "shape"),
            homepage="https://github.com/vzhou842/easy-VQA",
            metadata=tfds.core.MetadataDict(label_sources={}, num_skipped={}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the data is inside the installed package
        try:
            import easy_vqa
        except ImportError as exc:
            raise ImportError(
                "easy_vqa_shapes needs the easy-vqa package: pip install easy-vqa"
            ) from exc
        return {
            "train": self._generate_examples(
                "train", easy_vqa.get_train_questions(), easy_vqa.get_train_image_paths()
            ),
            "test": self._generate_examples(
                "test", easy_vqa.get_test_questions(), easy_vqa.get_test_image_paths()
            ),
        }

    def _generate_examples(self, split, questions, paths):
        texts, answers, image_ids = questions
        qa = collections.defaultdict(list)
        for text, answer, image_id in zip(texts, answers, image_ids):
            qa[int(image_id)].append((text, answer))
        sources = collections.Counter()
        for image_id in sorted(paths):
            try:
                rgb = load_rgb(paths[image_id])
            except Exception as exc:  # ImageError / OSError: record, never crash
                self._skips.add(split, paths[image_id], getattr(exc, "reason", str(exc)))
                continue
            labels = derive_labels(qa[image_id])
            seen = pixel_labels(rgb)
            for attr, value in labels.items():
                if value is None:
                    labels[attr] = seen[attr]
                    sources[f"{attr}_from_pixels"] += 1
                elif value != seen[attr]:
                    raise ValueError(
                        f"{paths[image_id]}: questions say {attr}={value}, pixels {seen[attr]}"
                    )
                else:
                    sources[f"{attr}_from_questions"] += 1
            yield (
                image_id,
                {
                    "image": encode_png(rgb),
                    "image_id": image_id,
                    **labels,
                    "questions": [t for t, _ in qa[image_id]],
                    "answers": [a for _, a in qa[image_id]],
                },
            )
        self.info.metadata["label_sources"][split] = dict(sources)
