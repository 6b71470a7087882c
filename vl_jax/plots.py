"""PNG plots written by the jobs: confusion matrices, score histograms, ROC curves.

matplotlib with the non-interactive Agg backend (no display needed); each function writes one
PNG atomically (`vl_jax.fileio.atomic_open`) and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from vl_jax.fileio import atomic_open


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> str:
    plt = _pyplot()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return os.fspath(path)


def confusion_png(
    path: str | os.PathLike,
    counts: np.ndarray,
    *,
    row_names: Sequence[str] | None = None,
    col_names: Sequence[str] | None = None,
    title: str = "",
    xlabel: str = "cluster",
    ylabel: str = "class",
) -> str:
    """Heat map of a `[C, K]` count table (e.g. classes x Hungarian-ordered clusters), each row
    normalised to fractions; counts are printed in the cells when the table is small."""
    plt = _pyplot()
    counts = np.asarray(counts)
    c, k = counts.shape
    frac = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.35 * max(c, k) + 2)
    fig, ax = plt.subplots(figsize=(size * 1.1, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the class")
    if max(c, k) <= 25:
        for i in range(c):
            for j in range(k):
                if counts[i, j]:
                    colour = "white" if frac[i, j] > 0.6 else "black"
                    ax.text(
                        j, i, str(counts[i, j]), ha="center", va="center", fontsize=7, color=colour
                    )
    if row_names is not None and c <= 60:
        ax.set_yticks(range(c), [str(n)[:24] for n in row_names], fontsize=7)
    if col_names is not None and k <= 60:
        ax.set_xticks(range(k), [str(n)[:24] for n in col_names], fontsize=7, rotation=90)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return _save(fig, path)


def histograms_png(
    path: str | os.PathLike,
    groups: Mapping[str, np.ndarray],
    *,
    threshold: float | None = None,
    title: str = "",
    xlabel: str = "score",
    bins: int = 30,
) -> str:
    """Overlaid histograms (density) of one score per group, e.g. {"clean": s0, "dirty": s1};
    empty groups are left out of the plot but named in the legend with n=0."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    values = [np.asarray(v, np.float64).ravel() for v in groups.values()]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    for name, v in zip(groups, values):
        if v.size:
            ax.hist(v, bins=edges, alpha=0.55, density=True, label=f"{name} (n={v.size})")
        else:
            ax.plot([], [], label=f"{name} (n=0)")
    if threshold is not None:
        ax.axvline(
            threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:g}"
        )
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def roc_png(
    path: str | os.PathLike,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
    *,
    title: str = "",
) -> str:
    """ROC curves, one per name: `(fpr [M], tpr [M], auc)` as `vl_jax.metrics.roc_curve` and
    `roc_auc` return them."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)
