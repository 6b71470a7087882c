"""Self-contained HTML report pages: escaping, inlined thumbnails and plots, filters, one write.

    cards = [card(image_uri(img), title="id 7", lines=[...], attrs={"cls": "dog"})]
    body = section("Flagged", gallery("flagged", cards, page_size=60))
    write_page(path, "VDC report", filters_html([...]) + body)

What both methods' reports share (the methods build their own content): a page is one HTML file
with every image inlined as a ``data:`` URI and one small inline script, so it opens from disk
with no network (no CDN, no fetched assets) and can be mailed as one file. Every text that
comes from data (ids, class names, answers) goes through :func:`esc`. The page is written
atomically (``vl_jax.fileio.atomic_open``): a reader never sees half a page.

Client side (``SCRIPT``): ``<select data-filter="KEY">`` controls show only the cards whose
``data-KEY`` equals the chosen value (``""`` = any); each ``.gallery`` shows its matching cards
one page at a time (``data-page-size``) with previous / next buttons and a "shown / matching"
count. Images of hidden cards are not decoded (``loading="lazy"``), so a page of a thousand
samples stays quick.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from vl_jax.fileio import atomic_open

__all__ = [
    "block",
    "card",
    "esc",
    "filters_html",
    "gallery",
    "image_uri",
    "png_file_uri",
    "section",
    "strip",
    "table_html",
    "write_page",
]

THUMB = 128  # longest side of a thumbnail in pixels; smaller images are kept as they are

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table.data { border-collapse: collapse; margin: .5em 0; }
table.data td, table.data th { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
table.data th { background: #eee; }
.plots img { max-width: 420px; vertical-align: top; margin-right: 1em; border: 1px solid #ddd; background: #fff; }
.filters { position: sticky; top: 0; background: #fafafa; padding: .5em 0; z-index: 1;
           border-bottom: 1px solid #ddd; }
.filters label { margin-right: 1.2em; }
.gallery { display: flex; flex-wrap: wrap; gap: 8px; }
.card { width: 230px; background: #fff; border: 1px solid #ccc; border-radius: 4px;
        padding: 6px; font-size: 12px; }
.card.bad { border-color: #c33; } .card.good { border-color: #393; }
.card img { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated;
            background: #eee; float: left; margin: 0 6px 4px 0; }
.card .lines { overflow: hidden; } .card .title { font-weight: 600; word-break: break-all; }
.card details { clear: both; } .card ol { padding-left: 1.2em; margin: .3em 0; }
.card.wide { width: auto; flex-basis: 100%; }
.strip { display: flex; flex-wrap: wrap; gap: 4px; margin: 4px 0; }
.strip figure { margin: 0; width: 76px; font-size: 10px; text-align: center; word-break: break-all; }
.strip figure img { width: 72px; height: 72px; float: none; margin: 0; }
.yes { color: #262; } .no { color: #a22; } .muted { color: #777; }
.pager { margin: .4em 0 1em; } .pager button { margin-right: .5em; }
"""

SCRIPT = """
(function () {
  const selects = Array.from(document.querySelectorAll("select[data-filter]"));
  const galleries = Array.from(document.querySelectorAll(".gallery"));
  const state = new Map(galleries.map(g => [g, 0]));
  function matches(card) {
    return selects.every(s => s.value === "" || card.dataset[s.dataset.filter] === s.value);
  }
  function render(g) {
    const size = parseInt(g.dataset.pageSize || "60", 10);
    const cards = Array.from(g.children);
    const hits = cards.filter(matches);
    const pages = Math.max(1, Math.ceil(hits.length / size));
    const page = Math.min(state.get(g), pages - 1);
    state.set(g, page);
    const shown = new Set(hits.slice(page * size, (page + 1) * size));
    cards.forEach(c => { c.hidden = !shown.has(c); });
    const pager = document.getElementById(g.id + "-pager");
    if (pager) {
      pager.querySelector(".count").textContent =
        shown.size + " shown of " + hits.length + " matching (page " + (page + 1) + "/" + pages + ")";
      pager.querySelector(".prev").disabled = page === 0;
      pager.querySelector(".next").disabled = page >= pages - 1;
    }
  }
  galleries.forEach(g => {
    const pager = document.getElementById(g.id + "-pager");
    if (pager) {
      pager.querySelector(".prev").addEventListener("click", () => { state.set(g, state.get(g) - 1); render(g); });
      pager.querySelector(".next").addEventListener("click", () => { state.set(g, state.get(g) + 1); render(g); });
    }
  });
  selects.forEach(s => s.addEventListener("change", () => {
    galleries.forEach(g => { state.set(g, 0); render(g); });
  }));
  galleries.forEach(render);
})();
"""


def esc(x) -> str:
    """``x`` as HTML text (quotes too, so it is safe inside an attribute)."""
    return html.escape(str(x), quote=True)


def image_uri(image: np.ndarray, *, max_side: int = THUMB) -> str:
    """A ``data:`` URI of an image ``[H, W, C]`` or ``[H, W]`` (uint8, or float in [0, 1]): PNG
    of the image itself when its longest side is at most ``max_side`` (never enlarged: the page
    scales small images up with ``image-rendering: pixelated``, so a trigger's pixels stay
    visible as they are), else a JPEG shrunk to ``max_side``."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = np.clip(np.rint(a.astype(np.float64) * (255.0 if a.max(initial=0) <= 1.0 else 1.0)),
                    0, 255).astype(np.uint8)  # fmt: skip
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    im = Image.fromarray(a)
    buf = io.BytesIO()
    if max(im.size) > max_side:  # a photo: shrunk, and JPEG keeps a page of them small
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        im.convert("RGB").save(buf, format="JPEG", quality=90)
        kind = "jpeg"
    else:  # kept pixel for pixel (PNG): a small trigger stays exactly as the model saw it
        im.save(buf, format="PNG", optimize=True)
        kind = "png"
    return f"data:image/{kind};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def png_file_uri(path: str | os.PathLike) -> str | None:
    """A ``data:image/png`` URI of a PNG file (a plot), or None when it does not exist."""
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


def table_html(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A plain ``<table>`` of escaped cells; floats are printed with 4 decimals."""
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else esc(v)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="data"><tr>{head}</tr>{body}</table>'


def filters_html(filters: Sequence[tuple[str, str, Sequence[str]]]) -> str:
    """The filter bar: one ``<select data-filter=key>`` per ``(key, label, values)``, first
    option "any". ``key`` must be a lower-case word (it names the cards' ``data-key``)."""
    out = []
    for key, label, values in filters:
        opts = '<option value="">any</option>' + "".join(
            f'<option value="{esc(v)}">{esc(v)}</option>' for v in values
        )
        out.append(f'<label>{esc(label)} <select data-filter="{esc(key)}">{opts}</select></label>')
    return f'<div class="filters">{"".join(out)}</div>'


def card(
    image: str | None,
    *,
    title: str,
    lines: Sequence[str] = (),
    details: str = "",
    attrs: Mapping[str, str] | None = None,
    tone: str = "",
    alt: str = "",
    open_details: bool = False,
) -> str:
    """One sample: its thumbnail (a data URI, or None for "no image"), a title, short lines of
    already-escaped HTML, optional ``details`` HTML (folded), ``data-*`` attributes the filters
    read, and a ``tone`` ("bad", "good" or "") that colours the border."""
    data = "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in (attrs or {}).items())
    img = (
        f'<img loading="lazy" src="{image}" alt="{esc(alt or title)}">'
        if image
        else '<span class="muted">(no image)</span>'
    )
    text = "".join(f"<div>{ln}</div>" for ln in lines)
    more = ""
    if details:
        more = f"<details{' open' if open_details else ''}><summary>answers</summary>{details}</details>"
    return (
        f'<div class="card {esc(tone)}"{data}>{img}<div class="lines">'
        f'<div class="title">{esc(title)}</div>{text}</div>{more}</div>'
    )


def block(inner: str, *, attrs: Mapping[str, str] | None = None, tone: str = "") -> str:
    """A full-width gallery item around ``inner`` HTML (e.g. one cluster: a heading and image
    strips), with ``data-*`` attributes the filters read."""
    data = "".join(f' data-{esc(k)}="{esc(v)}"' for k, v in (attrs or {}).items())
    return f'<div class="card wide {esc(tone)}"{data}>{inner}</div>'


def strip(figures: Sequence[tuple[str | None, str]]) -> str:
    """A row of small captioned images: ``(data URI or None, caption)`` each."""
    out = []
    for uri, caption in figures:
        img = f'<img loading="lazy" src="{uri}" alt="{esc(caption)}">' if uri else "(no image)"
        out.append(f"<figure>{img}<figcaption>{esc(caption)}</figcaption></figure>")
    return f'<div class="strip">{"".join(out)}</div>'


def gallery(gallery_id: str, cards: Sequence[str], *, page_size: int = 60) -> str:
    """A paged, filterable grid of ``cards`` (see the module docstring); ``gallery_id`` must
    be unique on the page."""
    gid = esc(gallery_id)
    pager = (
        f'<div class="pager" id="{gid}-pager"><button class="prev">previous</button>'
        f'<button class="next">next</button><span class="count"></span></div>'
    )
    return (
        f'{pager}<div class="gallery" id="{gid}" data-page-size="{int(page_size)}">'
        f"{''.join(cards)}</div>"
    )


def section(title: str, body: str, *, note: str = "") -> str:
    """``<h2>title</h2>``, an optional escaped note, then ``body`` (HTML)."""
    extra = f'<p class="muted">{esc(note)}</p>' if note else ""
    return f"<section><h2>{esc(title)}</h2>{extra}{body}</section>"


def write_page(path: str | os.PathLike, title: str, body: str) -> str:
    """Writes the complete page (style, ``body`` HTML, the filter / pager script) atomically;
    returns its path."""
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>"
        f"<body><h1>{esc(title)}</h1>{body}<script>{SCRIPT}</script></body></html>\n"
    )
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return os.fspath(path)
