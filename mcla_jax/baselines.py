"""The untrained baselines of the clustering framework: CLIP k-means, CLIP zero-shot, TAC
without training. Each maps train/evaluation CLIP image features to evaluation clusters.

Shapes: train ``[N, E]``, evaluation ``[M, E]`` raw CLIP image features; returns ``[M]`` int32.
"""

from __future__ import annotations

import numpy as np

from mcla_jax import methods
from mcla_jax.train import build_text_counterparts
from vl_jax.cluster import kmeans


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (squared L2) of each row: ``[M, E], [K, E] -> [M]``."""
    d = (x * x).sum(1)[:, None] - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)[None]
    return np.argmin(d, axis=1).astype(np.int32)


def kmeans_baseline(train, evals, k: int, seed: int, n_init: int = 10, mesh=None) -> np.ndarray:
    """CLIP + k-means (the table's first row): k-means (k-means++, best of ``n_init``) on the
    L2-normalised train features; evaluation images go to the nearest centroid."""
    x = methods.prepare(train, "normalize")[0]
    centroids, _, _ = kmeans(x, k, n_init=n_init, seed=seed, mesh=mesh)
    return _nearest(methods.prepare(evals, "normalize")[0], np.asarray(centroids))


def tac_notrain(
    train, evals, nouns, k: int, seed: int, tau: float = 0.005, mesh=None, *,
    transductive: bool = True, n_init: int = 20,
) -> np.ndarray:  # fmt: skip
    """TAC's no-training variant: spherical k-means on ``[n(u_i) ; t~_i]`` (``2E``) where
    ``t~_i`` is the text counterpart from the semantic space ``nouns`` ``[S, E]``.

    ``transductive=True`` (TAC's script): k-means (``n_init`` restarts; TAC: 20) on the
    *evaluation* split's rows, whose clusters are the result (``train`` is not read; the
    semantic space was still chosen on the train split). ``False`` (ours, inductive): k-means on
    the train split, evaluation rows go to the nearest centroid by cosine.
    """

    def concat(u):
        t = build_text_counterparts(u, nouns, tau)
        return np.concatenate([methods.prepare(u, "normalize")[0], t], axis=1)

    x = concat(evals)
    fit = x if transductive else concat(train)
    centroids, assign, _ = kmeans(fit, k, n_init=n_init, seed=seed, spherical=True, mesh=mesh)
    if transductive:
        return np.asarray(assign).astype(np.int32)
    c = np.asarray(centroids)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.argmax(x @ c.T, axis=1).astype(np.int32)


def zeroshot(model, evals, class_names, prompts="single", dtype="float32", mesh=None):
    """CLIP zero-shot classification with the class names (``"a photo of a {name}."`` or TAC's
    ensemble): cluster = the class whose prompt embedding is nearest in cosine. It reads the
    class names, so it is a supervised reference, not a clustering method. ``model``: the run's
    ``ClipCheckpoint`` or a checkpoint path."""
    from mcla_jax.noun_embeddings import embed_nouns

    names = [n.replace("_", " ") for n in class_names]
    text, _ = embed_nouns(model, names, prompts=prompts, dtype=dtype, cache=False, mesh=mesh,
                          progress=False)  # fmt: skip
    x = methods.prepare(evals, "normalize")[0]
    return np.argmax(x @ np.asarray(text).T, axis=1).astype(np.int32)
