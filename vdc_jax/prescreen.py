"""The CLIP pre-screen: samples whose image CLIP already agrees with skip the MLLM.

    screen = prescreen.run(config.prescreen, source, class_names, items, mesh, workdir)
    screen.asked            # the items VQA still asks (all but the confidently consistent)
    table = screen.merge(scoring.score(screen.asked, ...))   # every item, in dataset order

VDC asks every image 6-8 questions; most samples of a real dataset are clean and a CLIP model
already sees that their image matches their label. Per sample, two cheap signals from one CLIP
(``config.prescreen.clip``; the image tower once per image, the text tower once per class):

- **zero-shot**: softmax over the classes of exp(logit_scale) * cos(image, prompt(class)), the
  prompt ``config.prescreen.prompt`` (default ``"a photo of a {}"``); the label's probability
  ``p_label`` and whether the label is the top-1 class;
- **neighbours**: the share of the sample's ``neighbours`` nearest images (cosine, CLIP image
  space, the samples being cleaned; `vl_jax.cluster.knn`) that carry the same label.

**The rule, fixed in advance** (no evaluation labels, no tuning on the data being cleaned): a
sample is *confidently consistent* and skips the MLLM when its label is CLIP's top-1 class with
``p_label >= min_prob`` (0.9) **and** at least ``min_agree`` (0.5) of its 10 neighbours share
its label. Both conditions must hold: a poison keeps its image's true content, which zero-shot
sees, and relabelled poisons that cluster together (a shared trigger) still fail zero-shot.

**Skipped samples' score**: 1.0 (as if every answer agreed), ``consistent = total = 0``
answers, never flagged; the metrics therefore cover every sample. ``prescreen.tsv`` lists each
sample's ``p_label``, neighbour agreement and decision; metrics.json counts the skipped ones
(``config.prescreen``). An image CLIP cannot read is never skipped here: VQA records it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from vdc_jax.scoring import Table
from vdc_jax.vqa import Item
from vl_jax.fileio import atomic_open
from vl_jax.workdir import is_writer

__all__ = ["ClipView", "Screen", "clip_view", "decide", "run", "summary"]


@dataclasses.dataclass
class ClipView:
    """CLIP's view of a source: for the n readable images, ``index`` int [n] (source
    positions), ``features`` float32 [n, E] (L2-normalised image embeddings) and ``zeroshot``
    float32 [n, K] (class probabilities of the prompts)."""

    index: np.ndarray
    features: np.ndarray
    zeroshot: np.ndarray

    def save(self, path: str) -> None:
        if is_writer():
            with atomic_open(path, "wb") as f:
                np.savez(f, index=self.index, features=self.features, zeroshot=self.zeroshot)

    @classmethod
    def load(cls, path: str) -> ClipView:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["index"], z["features"], z["zeroshot"])


def clip_view(source, class_names: Sequence[str], clip: str, mesh, *, prompt: str = "a photo of a {}",
              batch_size: int = 64) -> ClipView:  # fmt: skip
    """Encodes every image of ``source`` and the class prompts with the CLIP at ``clip``."""
    from vl_jax.encode import encode_source, make_image_encoder
    from vl_jax.models.clip_tokenizer import tokenize
    from vl_jax.models.loaded import ClipCheckpoint

    ck = ClipCheckpoint(clip, mesh=mesh)
    feats, index, _, _, _ = encode_source(make_image_encoder(ck.model, mesh), source,
                                          ck.preprocess, mesh, batch_size=batch_size,
                                          progress=False)  # fmt: skip
    texts = [prompt.format(n.replace("_", " ")) for n in class_names]
    ids, mask = tokenize(ck.tokenizer, texts, ck.config.text.context_length)
    text = np.asarray(ck.model.encode_text(jnp.asarray(ids), jnp.asarray(mask)), np.float32)
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    feats, text = unit(feats), unit(text)
    logits = float(np.exp(np.asarray(ck.model.logit_scale[...]))) * feats @ text.T
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return ClipView(index, feats.astype(np.float32), probs.astype(np.float32))


@dataclasses.dataclass
class Screen:
    """The pre-screen's decision over ``items`` (aligned, [M]): ``skip`` bool, ``label_prob``
    (zero-shot p of the label), ``top1`` (label is CLIP's top class), ``agree`` (share of
    neighbours with the label); ``asked`` / ``passed``: the items VQA asks / skips."""

    items: list[Item]
    skip: np.ndarray
    label_prob: np.ndarray
    top1: np.ndarray
    agree: np.ndarray

    @property
    def asked(self) -> list[Item]:
        return [it for it, s in zip(self.items, self.skip, strict=True) if not s]

    @property
    def passed(self) -> list[Item]:
        return [it for it, s in zip(self.items, self.skip, strict=True) if s]

    def merge(self, table: Table) -> Table:
        """``table`` (scored over `asked`) with the skipped items added, score 1.0 and no
        answers, every [M] array in dataset order."""
        skip = self.passed
        order = np.argsort(np.concatenate([table.index, [it.index for it in skip]]), kind="stable")
        cat = lambda a, b: np.concatenate([np.asarray(a), np.asarray(b, np.asarray(a).dtype)])[
            order
        ]
        zeros = np.zeros(len(skip), np.int64)
        return dataclasses.replace(
            table,
            index=cat(table.index, [it.index for it in skip]),
            ids=[(table.ids + [it.id for it in skip])[k] for k in order],
            labels=cat(table.labels, [it.label for it in skip]),
            score=cat(table.score, np.ones(len(skip))),
            flagged=cat(table.flagged, np.zeros(len(skip), bool)),
            consistent=cat(table.consistent, zeros),
            total=cat(table.total, zeros),
            dropped=None if table.dropped is None else cat(table.dropped, zeros),
        )

    def write(self, path: str) -> None:
        """``prescreen.tsv``: id, label, p_label, top1, neighbour agreement, skipped."""
        if not is_writer():
            return
        rows = ["id\tlabel\tp_label\ttop1\tagree\tskipped\n"]
        for it, p, t, a, s in zip(self.items, self.label_prob, self.top1, self.agree, self.skip,
                                  strict=True):  # fmt: skip
            rows.append(f"{it.id}\t{it.label}\t{p:.6f}\t{int(t)}\t{a:.3f}\t{int(s)}\n")
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.writelines(rows)


def decide(view: ClipView, items: Sequence[Item], *, min_prob: float = 0.9, neighbours: int = 10,
           min_agree: float = 0.5, mesh=None) -> Screen:  # fmt: skip
    """The rule of the module docstring over ``items``; an item CLIP could not read (absent
    from ``view.index``) is never skipped."""
    from vl_jax.cluster.knn import knn

    items = list(items)
    row = {int(i): r for r, i in enumerate(view.index)}
    at = np.asarray([row.get(it.index, -1) for it in items])
    labels = np.asarray([it.label for it in items])
    seen = at >= 0
    p = np.zeros(len(items))
    top1 = np.zeros(len(items), bool)
    p[seen] = view.zeroshot[at[seen], labels[seen]]
    top1[seen] = np.argmax(view.zeroshot[at[seen]], axis=1) == labels[seen]
    agree = np.zeros(len(items))
    k = min(neighbours, int(seen.sum()) - 1)
    if k >= 1:
        nn, _ = knn(view.features[at[seen]], k, "cosine", mesh=mesh)
        lab = labels[seen]
        agree[seen] = np.mean(lab[nn] == lab[:, None], axis=1)
    skip = seen & top1 & (p >= min_prob) & (agree >= min_agree)
    return Screen(items, skip, p, top1, agree)


def run(
    cfg, source, class_names: Sequence[str], items: Sequence[Item], mesh, workdir: str
) -> Screen | None:
    """``config.prescreen`` on the items of one VDC run, or None when it is off. The CLIP view
    is written to ``clip_view.npz`` (the confident-learning signal of `vdc_jax.compare` reads
    it) and the decisions to ``prescreen.tsv``."""
    if cfg is None or not cfg.enabled:
        return None
    if not cfg.clip:
        from vl_jax.errors import ConfigError

        raise ConfigError(
            "config.prescreen.enabled needs config.prescreen.clip (a CLIP checkpoint)"
        )
    view = clip_view(
        source, class_names, cfg.clip, mesh, prompt=cfg.prompt, batch_size=cfg.batch_size
    )
    view.save(os.path.join(workdir, "clip_view.npz"))
    screen = decide(view, items, min_prob=cfg.min_prob, neighbours=cfg.neighbours,
                    min_agree=cfg.min_agree, mesh=mesh)  # fmt: skip
    screen.write(os.path.join(workdir, "prescreen.tsv"))
    return screen


def summary(screen: Screen | None) -> dict:
    """metrics.json's ``config.prescreen``: samples checked, skipped and sent to the MLLM."""
    if screen is None:
        return {"enabled": False}
    return {"enabled": True, "samples": len(screen.items), "skipped": int(screen.skip.sum()),
            "asked": int((~screen.skip).sum())}  # fmt: skip
