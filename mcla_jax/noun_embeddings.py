"""CLIP text embeddings of WordNet nouns (the semantic space of SIC / TAC / MCLA), cached on disk.

    emb, nouns = embed_nouns("openai/clip-vit-base-patch32", prompts="tac")   # [82115, 512]

Each noun is written into every prompt template; each prompt is encoded by the CLIP text tower
and L2-normalised; the P prompt embeddings are averaged and the mean is normalised again:

    t_w = normalize( (1/P) sum_p normalize(text(template_p.format(w))) )

This is CLIP's zero-shot prompt ensembling (Radford et al. 2021). TAC's code averages the
*unnormalised* embeddings instead (docs/mcla.md); ``combine="raw"`` gives that (then the mean
is normalised once). Both return unit rows. ``combine="none"`` returns the raw mean itself, not
normalised (SIC's semantic centres average raw text embeddings; with one prompt it is the raw
embedding). Noun lists contain repeats (82,115 synsets share
67,893 first lemmas), so each distinct text is encoded once and rows are copied back.

Cost: 82k nouns x 7 prompts at ~125 prompts/s is ~75 min on 2 CPU cores, seconds on a GPU, hence
the cache, keyed by (model identity, dtype, templates, combine rule, noun list). A run that is
killed leaves one ``.npz`` per finished batch in ``<cache>.parts/``; the next call reuses them
and encodes only the rest. Everything is written atomically (temp file + rename) and read with
``allow_pickle=False``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from vl_jax import faults, parallel
from vl_jax import workdir as wd
from vl_jax.fileio import atomic_open
from vl_jax.models import clip
from vl_jax.models.clip_tokenizer import tokenize
from vl_jax.models.loaded import ClipCheckpoint, as_clip

SINGLE_PROMPT = ("a photo of a {}.",)
# TAC's (Li et al., ICML 2024) ensemble, from its official code (docs/mcla.md): a subset of
# CLIP's 80 ImageNet templates.
TAC_PROMPTS = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
# SIC's official code writes "a photo of a {c}" (no full stop).
PROMPT_SETS = {"single": SINGLE_PROMPT, "tac": TAC_PROMPTS, "sic": ("a photo of a {}",)}
COMBINE = ("normalized", "raw", "none")  # see the module docstring
CACHE_VERSION = 1  # bump when the computation changes, so old caches are not reused
_TOKEN_BUCKET = 8  # token length rounded up to a multiple of this, capped at the context


def default_cache_dir() -> str:
    """``$MCLA_JAX_CACHE/noun_embeddings`` (default ``~/.cache/mcla_jax/noun_embeddings``)."""
    root = os.environ.get("MCLA_JAX_CACHE", os.path.join("~", ".cache", "mcla_jax"))
    return os.path.join(os.path.expanduser(root), "noun_embeddings")


def resolve_prompts(prompts: str | Sequence[str]) -> tuple[str, ...]:
    """``"single"`` | ``"tac"`` | ``"sic"`` | templates, each with exactly one ``{}`` ->
    templates."""
    if isinstance(prompts, str):
        if prompts not in PROMPT_SETS:
            raise ValueError(f"unknown prompt set {prompts!r}; use {sorted(PROMPT_SETS)} or a list")
        return PROMPT_SETS[prompts]
    templates = tuple(prompts)
    bad = [t for t in templates if t.count("{}") != 1 or re.search(r"\{[^}]", t)]
    if not templates or bad:
        raise ValueError(f"each prompt template needs exactly one '{{}}' and no other field: {bad}")
    return templates


def model_identity(path: str) -> dict:
    """What identifies a checkpoint directory cheaply: its real path, the contents of its small
    files (config, tokenizer) and the size + mtime of its weight files (hashing GBs is slow)."""
    files = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            continue
        st = os.stat(full)  # follows the HF cache's symlinks to the blobs
        if name.endswith((".json", ".txt", ".model", ".tiktoken")) and st.st_size < 1 << 24:
            with open(full, "rb") as f:
                files[name] = hashlib.sha256(f.read()).hexdigest()
        elif name.endswith(".safetensors"):
            files[name] = [st.st_size, st.st_mtime_ns]
    return {"path": os.path.realpath(path), "files": files}


def cache_key(
    path: str, templates: Sequence[str], texts: Sequence[str], combine: str, dtype: str
) -> str:
    """sha256 hex of the fingerprint (``vl_jax.workdir.fingerprint``, the project's one rule) of
    everything the embeddings depend on (``texts``: the distinct nouns). The cache is shared by
    runs, so the fingerprint names the file instead of sitting beside it."""
    payload = wd.fingerprint(
        version=CACHE_VERSION,
        model=model_identity(path),
        dtype=str(jnp.dtype(dtype)),
        templates=list(templates),
        combine=combine,
        nouns=hashlib.sha256(json.dumps(list(texts)).encode()).hexdigest(),
    )
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def make_noun_encoder(
    model: clip.CLIP, mesh, combine: str = "normalized"
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Splits the text tower once; returns jitted ``(ids [B, P, L], mask [B, P, L]) -> [B, E]``,
    the prompt-ensembled unit embedding of each of B nouns under P templates.

    Only the text tower is placed on the mesh (the vision tower is not needed here); the batch
    is sharded over ``data`` and so is the output.
    """
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    graphdef, state = nnx.split(model.text)
    state = parallel.shard_state(state, mesh)

    @jax.jit
    def encode(state, ids, mask):
        b, p, length = ids.shape
        text = nnx.merge(graphdef, state)
        # = CLIP.encode_text (tested equal): project the pooled token, compute in float32.
        e = text.proj(text(ids.reshape(b * p, length), mask.reshape(b * p, length)))
        e = e.astype(jnp.float32).reshape(b, p, -1)
        if combine == "normalized":
            e = e / jnp.linalg.norm(e, axis=-1, keepdims=True)
        e = e.mean(axis=1)
        if combine == "none":
            return e
        return e / jnp.linalg.norm(e, axis=-1, keepdims=True)

    # A partial keeps the jitted function reachable (`.func`), e.g. to check it compiled once.
    return functools.partial(encode, state)


def embed_nouns(
    model: ClipCheckpoint | str,
    nouns: Sequence[str] | None = None,
    prompts: str | Sequence[str] = "single",
    *,
    combine: str = "normalized",
    batch_size: int = 256,
    dtype: str = "float32",
    cache: bool = True,
    cache_dir: str | None = None,
    mesh=None,
    progress: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """CLIP text embeddings of ``nouns`` under a prompt template ensemble.

    Args:
      model: the run's :class:`~vl_jax.models.loaded.ClipCheckpoint` (its weights are loaded
        only when some noun is not cached), or a CLIP checkpoint directory / hub id.
      nouns: texts to embed; default: the first lemma of every WordNet 3.0 noun synset, in WNID
        order (``mcla_jax.wordnet.load().lemmas``), so row i belongs to ``wnids[i]``.
      prompts: ``"single"`` ("a photo of a {}."), ``"tac"`` (TAC's 7) or a list of templates.
      combine: ``"normalized"`` (mean of unit prompt embeddings), ``"raw"`` (TAC's plain mean)
        or ``"none"`` (the plain mean, not normalised: SIC's raw text embeddings).
      batch_size: nouns per global batch (each is P texts), rounded up to split over the mesh.
      dtype: compute dtype of the text tower (``"bfloat16"`` on accelerators); a given
        ClipCheckpoint keeps its own.
      cache, cache_dir: reuse / write ``<cache_dir>/nouns-<key>.npz`` (default dir:
        ``default_cache_dir()``). With several processes it must be a shared filesystem.
      mesh: the ``("data", "model")`` mesh (default: all devices on ``data``).

    Returns:
      (embeddings [N, E] float32, unit rows unless ``combine="none"``, nouns as a list [N]).
    """
    nouns = list(load_wordnet_lemmas() if nouns is None else nouns)
    if any(not isinstance(n, str) for n in nouns):
        raise TypeError("nouns must be strings")
    templates = resolve_prompts(prompts)
    ck = as_clip(model, mesh=mesh, dtype=dtype)
    path, dtype = ck.path, ck.dtype
    texts, inverse = np.unique(np.array(nouns, dtype=object), return_inverse=True)
    texts = [str(t) for t in texts]  # distinct nouns, sorted (np.unique)
    key = cache_key(path, templates, texts, combine, dtype)
    final = os.path.join(cache_dir or default_cache_dir(), f"nouns-{key[:24]}.npz")
    if cache and os.path.exists(final):
        emb = _read_final(final, key, len(texts))
        if emb is not None:
            return emb[inverse], nouns
    done_rows, done_emb = _read_parts(final + ".parts", key, len(texts)) if cache else ([], [])

    if ck.config.text is None:
        raise ValueError(f"{path}: this CLIP checkpoint has no text tower")
    mesh = mesh or ck.mesh
    emb = np.zeros((len(texts), ck.config.embed_dim), np.float32)
    for rows, e in zip(done_rows, done_emb):
        emb[rows] = e
    todo = np.setdiff1d(np.arange(len(texts)), np.concatenate([[], *done_rows]).astype(np.int64))
    if jax.process_count() > 1:  # every process must run the same batches
        multihost_utils.assert_equal(np.int64(len(todo)), "partial caches differ across hosts")
    if len(todo):
        ids, mask = _tokenize(ck.tokenizer, ck.config.text.context_length, templates, texts, todo)
        encoder = make_noun_encoder(ck.model, mesh, combine)
        parts = final + ".parts" if cache and wd.is_writer() else None
        bar = tqdm(
            total=len(texts),
            initial=len(texts) - len(todo),
            unit="noun",
            desc="noun embeddings",
            disable=not progress,
        )
        with bar:
            for rows, e in _encode(encoder, ids, mask, todo, mesh, batch_size):
                emb[rows] = e
                if parts:
                    _write_npz(
                        os.path.join(parts, f"rows-{rows[0]:08d}.npz"), key, rows=rows, emb=e
                    )
                faults.point("nouns.block")
                bar.update(len(rows))
    if cache and wd.is_writer():
        _write_npz(final, key, emb=emb, nouns=np.array(texts, dtype=str))
        _remove_parts(final + ".parts")
    return emb[inverse], nouns


def vocabulary_mask(
    model: ClipCheckpoint | str, nouns: Sequence[str], max_tokens: int
) -> np.ndarray:
    """bool ``[M]``: the nouns the checkpoint's tokenizer writes in at most ``max_tokens``
    tokens (special tokens not counted) and without its unknown token.

    Why: a text tower only knows the words of its training text. A small model with a small
    vocabulary (the offline demo's CLIP) spells every other noun as pieces, and those pieces
    embed near whatever words share them, so SIC's image-centre filter happily selects them;
    restricting the candidates to whole words it knows keeps the semantic space meaningful.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    tokenizer = as_clip(model).tokenizer
    ids = tokenizer(list(nouns), add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    return np.array([0 < len(i) <= max_tokens and unk not in i for i in ids], bool)


def load_wordnet_lemmas() -> tuple[str, ...]:
    from mcla_jax import wordnet  # lazy: a given noun list needs no table

    return wordnet.load().lemmas


def _tokenize(tokenizer, context_length, templates, texts, todo, chunk=4096):
    """-> ids, mask [len(todo), P, L] int32 with one L for the whole run (one compilation)."""
    prompts = [t.format(texts[r]) for r in todo for t in templates]
    parts = [
        tokenize(tokenizer, prompts[i : i + chunk], context_length)
        for i in range(0, len(prompts), chunk)
    ]
    longest = max(ids.shape[1] for ids, _ in parts)
    length = min(-(-longest // _TOKEN_BUCKET) * _TOKEN_BUCKET, context_length)
    pad = lambda a: np.pad(a, ((0, 0), (0, length - a.shape[1])))
    ids = np.concatenate([pad(i) for i, _ in parts]).reshape(len(todo), len(templates), length)
    mask = np.concatenate([pad(m) for _, m in parts]).reshape(ids.shape)
    return ids, mask


def _encode(encoder, ids, mask, todo, mesh, batch_size):
    """Yields (rows of `texts` [b], embeddings [b, E]) per global batch of the `todo` rows.

    Every batch has the same padded shape (nothing recompiles); padding repeats the batch's
    last real noun (a valid input: no all-masked rows) and is dropped. Each process feeds its
    share of the global batch, as in ``vl_jax.encode.encode_paths``.
    """
    n_proc, pi = jax.process_count(), jax.process_index()
    shards = parallel.local_data_shards(mesh)
    per_process = -(-batch_size // n_proc)  # ceil
    per_process = -(-per_process // shards) * shards  # splits over this process's shards
    global_batch = per_process * n_proc
    for start in range(0, len(todo), global_batch):
        take = np.arange(start, start + global_batch).clip(max=len(todo) - 1)
        mine = take[pi * per_process : (pi + 1) * per_process]
        batch = parallel.host_local_to_global({"ids": ids[mine], "mask": mask[mine]}, mesh)
        e = parallel.fetch(encoder(batch["ids"], batch["mask"]))
        n = min(global_batch, len(todo) - start)
        yield todo[start : start + n], e[:n]


def _read_final(path: str, key: str, n: int) -> np.ndarray | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) == key and z["emb"].shape[0] == n:
                return z["emb"].astype(np.float32)
    except (OSError, ValueError, KeyError):  # unreadable: recompute and overwrite
        pass
    return None


def _read_parts(parts: str, key: str, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(rows [b], embeddings [b, E]) of each finished batch of an interrupted run (same key)."""
    rows_list, emb_list = [], []
    if not os.path.isdir(parts):
        return rows_list, emb_list
    for name in sorted(os.listdir(parts)):
        if not (name.startswith("rows-") and name.endswith(".npz")):
            continue  # e.g. a temp file of a write that was killed
        try:
            with np.load(os.path.join(parts, name), allow_pickle=False) as z:
                rows, emb = z["rows"], z["emb"]
                if str(z["key"]) != key or rows.min() < 0 or rows.max() >= n:
                    continue
        except (OSError, ValueError, KeyError):
            continue
        rows_list.append(rows.astype(np.int64))
        emb_list.append(emb)
    return rows_list, emb_list


def _write_npz(path: str, key: str, **arrays) -> None:
    """Atomic ``np.savez``: temp file in the same folder, fsync, rename."""
    with atomic_open(path, "wb") as f:
        np.savez(f, key=np.array(key), **arrays)


def _remove_parts(parts: str) -> None:
    if os.path.isdir(parts):
        for name in os.listdir(parts):
            os.remove(os.path.join(parts, name))
        os.rmdir(parts)
