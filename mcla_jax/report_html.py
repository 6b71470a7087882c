"""The clustering job's HTML report, ``clusters.html``, and the ``clusters.json`` it is built from.

    python -m mcla_jax.report_html --workdir runs/dogs_mcla      # regenerate, no model

Written by every clustering run (``mcla_jax.experiment.run``, first seed's clusters of the
evaluation split). Per cluster: its size; the semantic-space nouns nearest to it (methods with a
semantic space: the ``S`` nouns of ``semantic_space.tsv``, ranked by cosine to the cluster's mean
unit CLIP image feature); its most and least typical members (cosine of each member's unit
feature to that mean: the cluster's core and its fringe), as thumbnails; and, when the split
has labels, its majority class and purity (the majority's share of the labelled members).
Labels are only *shown*: nothing here chooses anything with them.

``clusters.json`` holds all of that but the images (sizes, nouns, member ids and cosines,
majority and purity) and the dataset the ids come from; the page reads the images back from
that dataset (``vl_jax.data.get_source``, the same name and split the features were encoded
from), so ``python -m mcla_jax.report_html --workdir W`` rebuilds it from the workdir alone.
A dataset that cannot be read here gives the page without images, saying so.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from vl_jax import html_report as H
from vl_jax.errors import NotFoundError, UserError
from vl_jax.runlog import write_json
from vl_jax.workdir import read_json

log = logging.getLogger(__name__)

SHOWN = 8  # most and least typical members shown per cluster
NOUNS = 5  # nouns listed per cluster
PAGE = 20  # clusters per page


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def summarise(
    features: np.ndarray,
    pred: np.ndarray,
    ids,
    labels: np.ndarray,
    class_names,
    *,
    noun_embeddings: np.ndarray | None = None,
    noun_names=None,
) -> list[dict]:
    """One dict per non-empty cluster, by cluster id: ``cluster, size, nouns [(lemma, cos)],
    most / least [(id, cos)] (most typical first / least typical last), majority, purity``
    (the last two None without labels).

    Args:
      features: ``[M, E]`` CLIP image features of the evaluated split (any scale).
      pred: ``[M]`` cluster of each sample. ids: ``[M]``. labels: ``[M]`` (-1 = none).
      noun_embeddings: ``[S, E]`` the semantic space's noun embeddings, ``noun_names`` ``[S]``.
    """
    u = _unit(features)
    pred, labels = np.asarray(pred), np.asarray(labels)
    t = None if noun_embeddings is None else _unit(noun_embeddings)
    out = []
    for c in np.unique(pred):
        idx = np.flatnonzero(pred == c)
        centre = _unit(u[idx].mean(0))
        cos = u[idx] @ centre
        order = idx[np.argsort(-cos, kind="stable")]
        cos_of = dict(zip(idx.tolist(), cos.tolist()))
        most = order[:SHOWN]
        least = order[len(most) :][-SHOWN:]
        row = {
            "cluster": int(c),
            "size": len(idx),
            "most": [(str(ids[i]), round(cos_of[i], 4)) for i in most],
            "least": [(str(ids[i]), round(cos_of[i], 4)) for i in least],
            "nouns": [],
            "majority": None,
            "purity": None,
        }
        if t is not None and len(t):
            sim = t @ centre
            top = np.argsort(-sim, kind="stable")[:NOUNS]
            row["nouns"] = [(str(noun_names[j]), round(float(sim[j]), 4)) for j in top]
        known = labels[idx][labels[idx] >= 0]
        if known.size:
            counts = np.bincount(known)
            y = int(np.argmax(counts))
            row["majority"] = str(class_names[y]) if y < len(class_names) else str(y)
            row["purity"] = round(float(counts[y] / known.size), 4)
        out.append(row)
    return out


def read_space_names(workdir: str) -> list[str] | None:
    """The lemmas of ``semantic_space.tsv`` in file order (the embeddings' row order), or None."""
    path = os.path.join(workdir, "semantic_space.tsv")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [ln.split("\t", 1)[0] for ln in f.read().splitlines()[1:] if ln]


def write(workdir: str, clusters: list[dict], data: dict, title: str = "") -> str:
    """Writes ``clusters.json`` (``{"title", "data": {name, split, data_dir, manual_dir},
    "clusters": summarise(...)}``) then ``clusters.html``; returns the page's path."""
    write_json(os.path.join(workdir, "clusters.json"),
               {"title": title, "data": data, "clusters": clusters})  # fmt: skip
    return render(workdir)


def _thumbs(data: dict, wanted: set[str]) -> tuple[dict[str, str], str]:
    from vl_jax.data import get_source

    try:
        src = get_source(data["name"], data["split"], data_dir=data.get("data_dir") or None,
                         manual_dir=data.get("manual_dir") or None, prepare=False)  # fmt: skip
        pos = {str(s): i for i, s in enumerate(src.ids())}
    except (UserError, OSError, ValueError) as e:
        return {}, f"the dataset could not be read here ({e})"
    out = {}
    for sid in wanted:
        if sid in pos:
            try:
                out[sid] = H.image_uri(src[pos[sid]]["image"])
            except (OSError, ValueError) as e:
                log.warning("clusters.html: no thumbnail for %s: %s", sid, e)
    return out, "" if out or not wanted else "none of the clusters' ids is in the dataset here"


def render(workdir: str) -> str:
    """``clusters.html`` from ``clusters.json``; returns its path."""
    path = os.path.join(workdir, "clusters.json")
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("clusters"), list):
        raise NotFoundError(f"{path}: missing or not a clusters file (written by a clustering run)")
    clusters, data = doc["clusters"], doc.get("data") or {}
    wanted = {i for c in clusters for i, _ in c["most"] + c["least"]}
    thumbs, why = _thumbs(data, wanted) if data.get("name") else ({}, "the dataset is unknown")
    labelled = any(c.get("majority") is not None for c in clusters)
    blocks = []
    for c in sorted(clusters, key=lambda c: c["cluster"]):
        head = f"<b>cluster {c['cluster']}</b> &middot; {c['size']} images"
        if labelled and c.get("majority") is not None:
            head += f" &middot; majority <b>{H.esc(c['majority'])}</b>, purity {c['purity']:.3f}"
        nouns = ", ".join(f"{H.esc(n)} ({s:.3f})" for n, s in c.get("nouns") or [])
        head += f"<br>nouns: {nouns}" if nouns else ""
        inner = (f"<div>{head}</div><div class='muted'>most typical</div>"
                 + H.strip([(thumbs.get(i), f"{i} {s:.3f}") for i, s in c["most"]]))  # fmt: skip
        if c["least"]:
            inner += "<div class='muted'>least typical</div>" + H.strip(
                [(thumbs.get(i), f"{i} {s:.3f}") for i, s in c["least"]]
            )
        attrs = {"majority": c["majority"]} if labelled else {}
        blocks.append(H.block(inner, attrs=attrs))
    body = []
    n = sum(c["size"] for c in clusters)
    note = (f"{len(clusters)} clusters of {n} images ({H.esc(data.get('name', ''))}:"
            f"{H.esc(data.get('split', ''))}). Typicality: cosine of a member's CLIP image feature "
            "to its cluster's mean; nouns: the semantic space's nearest to that mean.")  # fmt: skip
    body.append(f"<p>{note}</p>")
    if why:
        body.append(f'<p class="no">No images: {H.esc(why)}.</p>')
    if labelled:
        majors = sorted({c["majority"] for c in clusters if c.get("majority") is not None})
        body.append(H.filters_html([("majority", "majority class", majors)]))
    body.append(H.gallery("clusters", blocks, page_size=PAGE))
    title = doc.get("title") or "Clusters"
    return H.write_page(os.path.join(workdir, "clusters.html"), title, "".join(body))


def main(argv) -> None:
    from vl_jax import cli, errors

    cli.quiet()
    if len(argv) > 1:
        errors.fail(ValueError(f"unexpected arguments: {argv[1:]}"))
    print(f"report: {errors.exit_on_user_error(render, _WORKDIR.value)}")


if __name__ == "__main__":
    from absl import app, flags

    from vl_jax import cli

    _WORKDIR = flags.DEFINE_string("workdir", None, "a clustering run's workdir")
    flags.mark_flag_as_required("workdir")
    app.run(main, flags_parser=cli.parse_flags)
