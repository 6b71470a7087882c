"""Encode a folder of images, or a dataset, into CLIP features.

    python -m vl_jax.encode --model openai/clip-vit-base-patch32 --images DIR --out feats.npz
    python -m vl_jax.encode --model ... --data imagenet_dogs:validation --manual_dir ... --out ...

Class subfolders of DIR give labels (files directly in DIR get -1). Writes `features [N, E]`
float32, `paths [N]`, `labels [N]` int32 and `class_names [C]` to an .npz atomically; files that
cannot be read are listed in `<out>.skipped.tsv` (path, reason) and counted on stderr, never fatal.
Both go through the Grain input pipeline (`vl_jax.data.pipeline`): batches are sharded over every
device of the mesh (the last one padded, the padding dropped); with several processes
(`jax.distributed`) each process decodes its share of every batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from vl_jax import errors, faults, parallel
from vl_jax.fileio import atomic_open
from vl_jax.images import walk_image_folder
from vl_jax.models import clip
from vl_jax.models.loaded import ClipCheckpoint, as_clip, preprocess_for
from vl_jax.preprocess import ClipPreprocess

__all__ = ["EncodeResult", "encode_dataset", "encode_folder", "encode_source", "preprocess_for"]


def make_image_encoder(model: clip.CLIP, mesh) -> Callable[[jax.Array], jax.Array]:
    """Splits `model` once and returns a jitted `pixel_values [B, H, W, 3] -> features [B, E]`.

    Parameters are placed on the mesh once (replicated over `data`, split over `model` where
    annotated); the batch is sharded over `data`; the output is sharded like the batch.
    """
    graphdef, state = nnx.split(model)
    state = parallel.shard_state(state, mesh)

    @jax.jit
    def encode(state, pixel_values):
        return nnx.merge(graphdef, state).encode_image(pixel_values)

    # A partial keeps the jitted function reachable (`.func`), e.g. to check it compiled once.
    return functools.partial(encode, state)


@dataclasses.dataclass
class EncodeResult:
    features: np.ndarray  # [N, E] float32
    paths: list[str]
    labels: np.ndarray  # [N] int32
    class_names: list[str]
    skipped: list[tuple[str, str]]
    seconds: float


def encode_source(
    encoder: Callable,
    source,
    preprocess: ClipPreprocess,
    mesh,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    progress: bool = True,
):
    """Encodes every example of a random-access `source` (see `vl_jax.data.pipeline`) once.

    The global batch is rounded up so that every process gets an equal share that splits over its
    data shards; the Grain pipeline pads the last batch, decodes on `workers` threads while the
    device works, and masks out padding and unreadable examples.

    Returns:
      (features [n, E] float32, source indices [n], ids [n], labels [n] int32,
       skipped [(id, reason)]) for the n readable examples, in source order.
    """
    from vl_jax.data.pipeline import gather_strings, make_pipeline, round_batch

    feats, rows, ids, labels, bad = [], [], [], [], []
    with make_pipeline(
        source,
        batch_size=round_batch(batch_size, mesh),
        mesh=mesh,
        transform=preprocess,
        train=False,
        workers=workers,
        with_ids=True,
    ) as it:
        for batch in tqdm(
            it, total=it.num_steps, desc="encode", unit="batch", disable=not progress
        ):
            f, ok, index, label = parallel.fetch(
                (encoder(batch["image"]), batch["mask"], batch["index"], batch["label"])
            )
            row_ids = gather_strings(batch["id"])
            faults.point("encode.batch")
            feats.append(f[ok])
            rows.append(index[ok])
            labels.append(label[ok])
            ids += [row_ids[r] for r in np.flatnonzero(ok)]
            bad += [(int(index[r]), row_ids[r]) for r in np.flatnonzero(~ok & (index >= 0))]
        reasons = {s.index: s.reason for s in it.skipped}
    # Each process knows the reasons of the examples it decoded; process 0 writes the list.
    skipped = [(i, reasons.get(n, "unreadable (decoded by another process)")) for n, i in bad]
    cat = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)
    features = np.concatenate(feats).astype(np.float32) if feats else None
    return features, cat(rows, np.int64), ids, cat(labels, np.int32), skipped


def _encode(model, source, out, *, class_names, ignored, batch_size, dtype, workers, mesh,
            progress) -> EncodeResult:  # fmt: skip
    """Encodes `source` with `model` (a ClipCheckpoint, or a path loaded now), writes `out`
    (process 0)."""
    mesh = mesh or parallel.create_mesh()
    ck = as_clip(model, mesh=mesh, dtype=dtype)
    encoder = make_image_encoder(ck.model, mesh)
    t0 = time.perf_counter()
    features, _, ids, labels, skipped = encode_source(
        encoder, source, ck.preprocess, mesh,
        batch_size=batch_size, workers=workers, progress=progress,
    )  # fmt: skip
    if features is None:
        features = np.zeros((0, ck.model.config.embed_dim), np.float32)
    result = EncodeResult(
        features=features,
        paths=ids,
        labels=labels,
        class_names=[str(c) for c in class_names],
        skipped=[*ignored, *skipped],
        seconds=time.perf_counter() - t0,
    )
    if jax.process_index() == 0:
        write_npz(out, result)
    faults.point("encode.saved")
    return result


def encode_folder(
    model: ClipCheckpoint | str,
    images: str,
    out: str,
    *,
    batch_size: int = 64,
    dtype: str = "float32",
    workers: int | None = None,
    mesh=None,
    progress: bool = True,
) -> EncodeResult:
    """Encodes every image under `images` with `model` (a loaded ClipCheckpoint, or a CLIP
    checkpoint directory / hub id); writes `out`."""
    from vl_jax.data.files import FileSource

    listing = walk_image_folder(images)  # fail on a bad folder before loading a model
    return _encode(
        model, FileSource(listing.paths, listing.labels), out,
        class_names=listing.class_names, ignored=listing.ignored, batch_size=batch_size,
        dtype=dtype, workers=workers, mesh=mesh, progress=progress,
    )  # fmt: skip


def encode_dataset(
    model: ClipCheckpoint | str,
    data: str,
    out: str,
    *,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    batch_size: int = 64,
    dtype: str = "float32",
    workers: int | None = None,
    mesh=None,
    progress: bool = True,
) -> EncodeResult:
    """Encodes every example of dataset `data` ("NAME[:SPLIT]", split default "train", resolved
    by `vl_jax.data.get_source`); writes `out` like `encode_folder`, with the examples' ids in
    `paths` and undecodable examples in the `.skipped.tsv`."""
    from vl_jax.data import get_source  # lazy: TFDS is only needed for datasets

    name, split = split_data_name(data)
    source = get_source(name, split or "train", data_dir=data_dir, manual_dir=manual_dir)
    return _encode(
        model, source, out, class_names=source.class_names, ignored=[],
        batch_size=batch_size, dtype=dtype, workers=workers, mesh=mesh, progress=progress,
    )  # fmt: skip


def split_data_name(data: str) -> tuple[str, str]:
    """``"NAME[:SPLIT]"`` -> ``(NAME, SPLIT or "")``. The split starts after the last ``:``
    outside brackets (``"x:train[:10]"``), and a ``prefix:<path>`` name (``image_folder:``,
    ``hf:``) keeps its own colon: ``"hf:/d"`` has no split, ``"hf:/d:test"`` has ``test``."""
    depth, cut = 0, -1
    for i, ch in enumerate(data):
        depth += (ch == "[") - (ch == "]")
        if ch == ":" and depth == 0:
            cut = i
    if cut < 0 or data[: cut + 1] in ("image_folder:", "hf:"):
        return data, ""
    return data[:cut], data[cut + 1 :]


def write_npz(out: str, r: EncodeResult) -> None:
    """Atomic write of the features file and its `.skipped.tsv` companion."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    arrays = dict(
        features=r.features,
        paths=np.asarray(r.paths, dtype=str),
        labels=r.labels,
        class_names=np.asarray(r.class_names, dtype=str),
    )
    with atomic_open(out, "wb") as f:
        np.savez(f, **arrays)
    skipped_file = f"{out}.skipped.tsv"
    if r.skipped:
        with atomic_open(skipped_file, "w", encoding="utf-8") as f:
            f.write("path\treason\n")
            f.writelines(f"{p}\t{' '.join(str(w).split())}\n" for p, w in r.skipped)
    elif os.path.exists(skipped_file):
        os.remove(skipped_file)  # a stale list from an earlier run would mislead


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vl_jax.encode", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="CLIP checkpoint directory or hub id")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="image folder (class subfolders give labels)")
    src.add_argument("--data", help="dataset NAME[:SPLIT] via vl_jax.data.get_source")
    ap.add_argument("--data_dir", default=None, help="--data: prepared datasets directory")
    ap.add_argument("--manual_dir", default=None, help="--data: manually downloaded files")
    ap.add_argument("--out", required=True, help="output .npz")
    ap.add_argument("--batch_size", type=int, default=64, help="global batch size")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--workers", type=int, default=None, help="decoding threads (default: cores)")
    ap.add_argument("--mesh_data", type=int, default=-1)
    ap.add_argument("--mesh_model", type=int, default=1)
    ap.add_argument(
        "--coordinator_address", default=None, help="multi-host: host:port of process 0"
    )
    ap.add_argument("--num_processes", type=int, default=None)
    ap.add_argument("--process_id", type=int, default=None)
    ap.add_argument(
        "--distributed_auto", action="store_true", help="multi-host: detect the cluster"
    )
    ap.add_argument("--no_progress", action="store_true")
    a = ap.parse_args(argv)
    parallel.initialize_distributed(
        a.coordinator_address, a.num_processes, a.process_id, auto=a.distributed_auto
    )
    mesh = parallel.create_mesh(a.mesh_data, a.mesh_model)
    print(parallel.describe(mesh), file=sys.stderr)
    common = dict(
        batch_size=a.batch_size,
        dtype=a.dtype,
        workers=a.workers,
        mesh=mesh,
        progress=not a.no_progress,
    )
    if a.data is not None:
        r = encode_dataset(
            a.model, a.data, a.out, data_dir=a.data_dir, manual_dir=a.manual_dir, **common
        )
    else:
        r = encode_folder(a.model, a.images, a.out, **common)
    n = len(r.paths)
    print(
        f"encoded {n} images in {r.seconds:.1f} s ({n / max(r.seconds, 1e-9):.1f} img/s) -> {a.out}",
        file=sys.stderr,
    )
    if r.skipped:
        print(f"skipped {len(r.skipped)} file(s): see {a.out}.skipped.tsv", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # A user error (no such folder or checkpoint, dataset not prepared) is one line + exit 2.
    sys.exit(errors.exit_on_user_error(main))
