"""Host-side input preparation for `vl_jax.generate`: checks a request and packs it into the
bucketed, padded numpy arrays that the jitted request function takes.

    ids, mask, image_index = check_request(input_ids, attention_mask, ...)
    arrays, prefix = pack_request(ids, mask, pixel_values, image_index, ...)

Shapes are bucketed (`bucket`) so that a warm engine never recompiles for new sizes within a
bucket: the prompt length (left padding), the batch (pad rows) and the number of images, the
last two to a multiple of the mesh's `data` axis.

Shape letters: B batch, T prompt length, N images, p shared prefix length; a trailing b marks
a bucketed size (Bb, Tb, Nb).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

MIN_PROMPT_BUCKET = 16
MIN_SUFFIX_BUCKET = 8  # per-row question part when the image prefix is shared


def bucket(n: int, multiple: int = 1, minimum: int = 1) -> int:
    """The padded size for `n`: four buckets per octave (at most 25% padding: 1-7 exact, then
    8, 10, 12, 14, 16, 20, ... 512, 640, 768, 896, 1024, ...), rounded up to `multiple`."""
    n = max(int(n), minimum, 1)
    step = 2 ** max(0, n.bit_length() - 3)
    n = -(-n // step) * step
    return -(-n // multiple) * multiple


def left_pad(ids: np.ndarray, mask: np.ndarray, length: int, pad: int):
    """Moves each row's real tokens (mask 1, in order) to the right end of `length` slots.

    Accepts left-, right- or un-padded [B, T] inputs. Returns (ids [B, length] int32,
    mask [B, length] int32)."""
    ids, mask = np.asarray(ids), np.asarray(mask).astype(bool)
    out_ids = np.full((ids.shape[0], length), pad, np.int32)
    out_mask = np.zeros((ids.shape[0], length), np.int32)
    for r in range(ids.shape[0]):
        real = ids[r][mask[r]]
        if len(real):
            out_ids[r, length - len(real) :] = real
            out_mask[r, length - len(real) :] = 1
    return out_ids, out_mask


def shared_prefix(ids: np.ndarray, mask: np.ndarray, image_index: np.ndarray, image_token: int):
    """Length p of the prompt prefix that every row shares with the other rows of its image
    (VDC: "USER: <image>" + the P image tokens, then a different question per row), or 0 when
    sharing does not apply: p must cover all image tokens and leave >= 1 token per row.

    With p > 0 the engine prefills the prefix once per image and copies its KV cache to the
    image's rows, instead of running the P image tokens through the decoder for every question.
    """
    rows = [ids[r][mask[r].astype(bool)] for r in range(ids.shape[0])]
    first: dict[int, np.ndarray] = {}
    p = min(len(r) for r in rows) - 1
    for r, i in zip(rows, image_index.tolist()):
        ref = first.setdefault(i, r)
        n = min(len(r), len(ref))
        diff = np.flatnonzero(r[:n] != ref[:n])
        p = min(p, diff[0] if len(diff) else n)
        where = np.flatnonzero(r == image_token)
        if len(where) and where[-1] >= p:
            return 0
    if len(first) == len(rows) or p <= 0:
        return 0  # nothing is shared: the plain path does the same work with fewer steps
    return int(p)


def image_prefixes(ids: np.ndarray, mask: np.ndarray, image_index: np.ndarray, image_token: int):
    """{image: p_i}, the length of the prompt prefix that the rows of each image share, or None
    when sharing does not apply (every image has one row, or some p_i would not cover its rows'
    image tokens or leave >= 1 token per row). Per image, unlike `shared_prefix`: images of
    different sizes (dynamic resolution) have prefixes of different lengths."""
    by_image: dict[int, list[np.ndarray]] = {}
    for r, i in enumerate(image_index.tolist()):
        by_image.setdefault(i, []).append(ids[r][mask[r].astype(bool)])
    if len(by_image) == ids.shape[0]:
        return None
    out = {}
    for i, rows in by_image.items():
        ref, p = rows[0], min(map(len, rows)) - 1
        for r in rows[1:]:
            diff = np.flatnonzero(r[:p] != ref[:p])
            p = min(p, diff[0]) if len(diff) else p
        for r in rows:
            where = np.flatnonzero(r == image_token)
            if p <= 0 or (len(where) and where[-1] >= p):
                return None
        out[i] = int(p)
    return out


def split_prefixes(ids, mask, index, prefixes: dict[int, int], nb: int, pb: int):
    """`split_prefix` with a prefix length per image (`image_prefixes`), each left-padded to
    `pb`. Returns (prefix_ids [Nb, pb] int32, prefix_mask [Nb, pb] int32: images no row uses
    get one masked-in pad token, as pad rows do; mask [B, T] without the prefix tokens)."""
    prefix_ids = np.zeros((nb, pb), np.int32)
    prefix_mask = np.zeros((nb, pb), np.int32)
    prefix_mask[:, -1] = 1
    keep = np.zeros_like(mask)
    for r in range(ids.shape[0]):
        real = np.flatnonzero(mask[r])
        p = prefixes[int(index[r])]
        prefix_ids[index[r], pb - p :] = ids[r, real[:p]]
        prefix_mask[index[r]] = 0
        prefix_mask[index[r], pb - p :] = 1
        keep[r, real[p:]] = 1
    return prefix_ids, prefix_mask, keep


def check_request(
    input_ids,
    attention_mask,
    *,
    pixel_values,
    image_index,
    vlm: bool,
    max_new_tokens: int,
    num_beams: int,
    do_sample: bool,
    early_stopping,
    min_new_tokens: int = 0,
    query: bool = False,
    qformer_input_ids=None,
    qformer_attention_mask=None,
):
    """Rejects inconsistent arguments (ValueError) before any work is done.

    `query`: the model computes per-row image features from an instruction
    (`query_features`, InstructBLIP); then a request with images needs `qformer_input_ids`
    [B, Qt] (its mask defaults to ones).

    Returns (ids [B, T], mask [B, T]: ones when `attention_mask` is None, image_index,
    qformer): image_index is the caller's; `arange(B)` int32 when `pixel_values` [N = B, ...]
    come without one (transformers' convention: row i uses image i); None without images. Its
    values are checked against N by `image_rows`, once the request is known to have rows.
    qformer is (ids [B, Qt], mask [B, Qt]) for a query model with images, else None."""
    ids = np.asarray(input_ids)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if ids.ndim != 2 or mask.shape != ids.shape:
        raise ValueError(f"input_ids {ids.shape} and attention_mask {mask.shape}: need [B, T]")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {min_new_tokens}")
    if num_beams < 1 or (num_beams > 1 and do_sample):
        raise ValueError("num_beams must be >= 1; beam sampling is not supported")
    if early_stopping not in (False, True, "never"):
        raise ValueError(f"early_stopping must be False, True or 'never', not {early_stopping}")
    if image_index is not None and pixel_values is None:
        raise ValueError("image_index given without pixel_values")
    if pixel_values is not None and not vlm:
        raise ValueError("pixel_values given to a text-only model")
    b = ids.shape[0]
    if pixel_values is not None and image_index is None:
        n = num_images(pixel_values)
        if n != b:
            raise ValueError(
                f"pixel_values holds {n} images for {b} rows: without image_index row i uses "
                "image i, so there must be one image per row (pass image_index [B] to share "
                "images between rows)"
            )
        image_index = np.arange(b, dtype=np.int32)
    qformer = _check_qformer(qformer_input_ids, qformer_attention_mask, b, query,
                             pixel_values is not None)  # fmt: skip
    return ids, mask, image_index, qformer


def _check_qformer(q_ids, q_mask, b: int, query: bool, images: bool):
    """(ids [B, Qt], mask [B, Qt]) of a query model's request with images, else None; the
    instruction is required exactly there (ValueError)."""
    if not (query and images):
        if q_ids is not None or q_mask is not None:
            raise ValueError(
                "qformer_input_ids are for a model with query_features (InstructBLIP) and "
                "pixel_values"
            )
        return None
    if q_ids is None:
        raise ValueError("this model needs qformer_input_ids [B, Qt] (the instruction per row)")
    q_ids = np.asarray(q_ids)
    q_mask = np.ones_like(q_ids) if q_mask is None else np.asarray(q_mask)
    if q_ids.ndim != 2 or q_ids.shape[0] != b or q_mask.shape != q_ids.shape:
        raise ValueError(
            f"qformer_input_ids {q_ids.shape} and qformer_attention_mask {q_mask.shape}: need "
            f"[B={b}, Qt]"
        )
    return q_ids, q_mask


def pad_qformer(q_ids: np.ndarray, q_mask: np.ndarray, bb: int):
    """The Q-Former instruction padded on the right (its positions are absolute, as the BERT
    tokenizer pads) to a length bucket, and with empty rows to the batch bucket Bb.

    Returns (ids [Bb, Qb] int32, mask [Bb, Qb] int32)."""
    b, q = q_ids.shape
    qb = bucket(max(q, 1), minimum=MIN_SUFFIX_BUCKET)
    ids = np.zeros((bb, qb), np.int32)
    mask = np.zeros((bb, qb), np.int32)
    ids[:b, :q], mask[:b, :q] = q_ids, q_mask
    return ids, mask


def image_rows(image_index, b: int, n: int) -> np.ndarray:
    """The image of each of the B rows, [B] int32, each in [0, N) (else ValueError)."""
    index = np.asarray(image_index, np.int32)
    if index.shape != (b,) or index.min() < 0 or index.max() >= n:
        raise ValueError(f"image_index must be [B={b}] in [0, {n}), got {index}")
    return index


def split_prefix(ids: np.ndarray, mask: np.ndarray, index: np.ndarray, prefix: int, nb: int):
    """Cuts the shared prefix (the first `prefix` real tokens, see `shared_prefix`) off every
    row: it goes to the device once per image, the rows keep only their own suffix.

    ids, mask [B, T], index [B]. Returns (prefix_ids [Nb, p] int32: image i's prefix in row i,
    zeros in rows no row uses; mask [B, T] with the prefix tokens masked out)."""
    prefix_ids = np.zeros((nb, prefix), np.int32)
    keep = np.zeros_like(mask)
    for r in range(ids.shape[0]):
        real = np.flatnonzero(mask[r])
        prefix_ids[index[r]] = ids[r, real[:prefix]]
        keep[r, real[prefix:]] = 1
    return prefix_ids, keep


def pad_prompts(ids: np.ndarray, mask: np.ndarray, *, prefix: int, pad: int, multiple: int):
    """Left-pads the prompts to a length bucket and the batch to a batch bucket.

    ids, mask [B, T] (any padding). Returns ids, mask [Bb, Tb] int32; valid [Bb] bool (False for
    pad rows: a one-token prompt whose output is discarded); row_ids [Bb] int32 (`arange`,
    keys each row's sampling stream)."""
    b = ids.shape[0]
    lengths = mask.astype(bool).sum(-1)
    minimum = MIN_SUFFIX_BUCKET if prefix else MIN_PROMPT_BUCKET
    t = bucket(max(lengths.max(), 1), minimum=minimum)
    ids, mask = left_pad(ids, mask, t, pad)
    bb = bucket(b, multiple=multiple)
    valid = np.arange(bb) < b
    ids = np.concatenate([ids, np.full((bb - b, t), pad, np.int32)])
    mask = np.concatenate([mask, np.zeros((bb - b, t), np.int32)])
    mask[~valid, -1] = 1
    return ids, mask, valid, np.arange(bb, dtype=np.int32)


def num_images(pixel_values) -> int:
    """N of pixel_values [N, H, W, 3] without a host copy (it may be a global jax.Array whose
    rows live on other processes)."""
    if isinstance(pixel_values, tuple) and hasattr(pixel_values, "_fields"):
        pixel_values = pixel_values[0]  # a model's image pytree (`image_layout`): [N, ...] leaves
    shape = getattr(pixel_values, "shape", None)
    return int(shape[0]) if shape is not None else len(pixel_values)


def pad_images(pixel_values, index: np.ndarray, bb: int, multiple: int):
    """pixel_values [N, H, W, 3], index [B] -> (pixels [Nb, H, W, 3] with zero images appended,
    index [Bb] int32: pad rows use image 0).

    A jax.Array (e.g. an input pipeline's batch, sharded over `data`, possibly spanning
    processes) stays on device: it is padded there, never copied to the host."""
    n = num_images(pixel_values)
    nb = bucket(n, multiple=multiple)

    def pad(px):
        if isinstance(px, jax.Array):
            if nb > n:
                widths = ((0, nb - n),) + ((0, 0),) * (px.ndim - 1)
                px = jax.jit(lambda a: jnp.pad(a, widths))(px)
            return px
        px = np.asarray(px)
        return np.concatenate([px, np.zeros((nb - n, *px.shape[1:]), px.dtype)])

    # A model's image pytree (dynamic resolution: canvas, sizes, layout) pads leaf by leaf;
    # an empty image (zero size, no real patch) is what a padding image is.
    px = jax.tree.map(pad, pixel_values) if hasattr(pixel_values, "_fields") else pad(pixel_values)
    padded = np.zeros(bb, np.int32)
    padded[: len(index)] = index
    return px, padded


def pack_request(
    ids: np.ndarray,
    mask: np.ndarray,
    pixel_values,
    image_index,
    *,
    image_token: int | None,
    pad: int,
    multiple: int,
    qformer: tuple[np.ndarray, np.ndarray] | None = None,
    per_image_prefix: bool = False,
) -> tuple[list[np.ndarray], int]:
    """The device inputs of a checked request with B >= 1 rows (see `check_request`).

    `multiple` is the mesh's `data` size: batch and image buckets divide over it. Returns
    (arrays, p), p the shared prefix length (0: none), arrays in the request function's order:
    ids [Bb, Tb] int32, mask [Bb, Tb] int32, valid [Bb] bool, row_ids [Bb] int32; with images
    also pixels [Nb, H, W, 3] and image_index [Bb] int32; with p > 0 also prefix_ids [Nb, p]
    int32 (then Tb buckets only the per-row suffixes); with `qformer` (ids, mask [B, Qt]) also
    qformer_ids, qformer_mask [Bb, Qb] int32 (`pad_qformer`), and never a shared prefix: the
    image features differ per row (they depend on the row's instruction).

    With a shared prefix also prefix_mask [Nb, p] int32. `per_image_prefix` (a family whose
    image token count varies per image, dynamic resolution): each image's prefix has its own
    length (`image_prefixes`), left-padded to p = `bucket(max)`; else every image's prefix has
    the one length p of `shared_prefix` (prefix_mask all ones)."""
    prefix = 0
    if pixel_values is not None:
        n = num_images(pixel_values)
        nb = bucket(n, multiple=multiple)
        index = image_rows(image_index, ids.shape[0], n)
        if qformer is None and per_image_prefix:
            prefixes = image_prefixes(ids, mask, index, image_token)
            if prefixes:
                prefix = bucket(max(prefixes.values()), minimum=MIN_SUFFIX_BUCKET)
                prefix_ids, prefix_mask, mask = split_prefixes(
                    ids, mask, index, prefixes, nb, prefix
                )
        elif qformer is None:
            prefix = shared_prefix(ids, mask, index, image_token)
            if prefix:
                prefix_ids, mask = split_prefix(ids, mask, index, prefix, nb)
                prefix_mask = np.ones_like(prefix_ids)
    ids, mask, valid, row_ids = pad_prompts(ids, mask, prefix=prefix, pad=pad, multiple=multiple)
    arrays = [ids, mask, valid, row_ids]
    if pixel_values is not None:
        arrays += pad_images(pixel_values, index, len(valid), multiple)
        if prefix:
            arrays += [prefix_ids, prefix_mask]
        if qformer is not None:
            arrays += pad_qformer(*qformer, len(valid))
    return arrays, prefix
