"""Reading and writing safetensors checkpoints as numpy arrays, single file or sharded.

We parse the safetensors header ourselves instead of calling `safetensors.numpy`, because numpy has
no bfloat16: most released LLM and VLM checkpoints are bf16 and `safetensors.numpy` refuses them.
`ml_dtypes` (a JAX dependency) provides the dtype, and `np.memmap` keeps loading lazy and zero-copy,
so a 7B checkpoint is never read into host memory at once. The format is plain JSON + raw bytes:
nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping

import ml_dtypes
import numpy as np

from vl_jax.errors import UserError
from vl_jax.fileio import atomic_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(UserError, ValueError):
    """A checkpoint file is missing, malformed, or does not match the model."""


def _read_header(path: str) -> tuple[dict, int]:
    """Returns (header dict, byte offset where tensor data starts)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointError(
                f"{path}: not a safetensors file (header length {n}, size {size})"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from e
    header.pop("__metadata__", None)
    data_start = 8 + n
    for key, info in header.items():
        begin, end = info["data_offsets"]
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path}: tensor '{key}' has unsupported dtype {info['dtype']}")
        want = int(np.prod(info["shape"], dtype=np.int64)) * dtype.itemsize
        if end - begin != want or data_start + end > size:
            raise CheckpointError(
                f"{path}: tensor '{key}' is truncated or corrupt "
                f"(offsets {begin}..{end}, expected {want} bytes, file size {size})"
            )
    return header, data_start


class SafetensorsReader(Mapping[str, np.ndarray]):
    """Lazy, read-only mapping key -> np.ndarray over one or more safetensors files.

    Arrays are memory-mapped views; copy them (or put them on device) before the reader is dropped
    if the files may change.
    """

    def __init__(self, files: list[str]):
        self._where: dict[str, tuple[str, dict, int]] = {}
        self._maps: dict[str, np.memmap] = {}
        for path in files:
            header, start = _read_header(path)
            for key, info in header.items():
                if key in self._where:
                    raise CheckpointError(
                        f"tensor '{key}' appears in both {self._where[key][0]} and {path}"
                    )
                self._where[key] = (path, info, start)

    @classmethod
    def from_dir(cls, directory: str, prefix: str = "model") -> SafetensorsReader:
        """Opens `<prefix>.safetensors` or the shards listed in `<prefix>.safetensors.index.json`."""
        single = os.path.join(directory, f"{prefix}.safetensors")
        index = os.path.join(directory, f"{prefix}.safetensors.index.json")
        if os.path.exists(index):
            try:
                with open(index) as f:
                    weight_map = json.load(f)["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: malformed index file ({e!r})") from e
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not os.path.exists(os.path.join(directory, s))]
            if missing:
                raise CheckpointError(f"{index}: shard file(s) missing: {', '.join(missing)}")
            reader = cls([os.path.join(directory, s) for s in shards])
            for key, shard in weight_map.items():
                if key not in reader._where:
                    raise CheckpointError(
                        f"{index}: key '{key}' is listed for {shard} but not in it"
                    )
            return reader
        if os.path.exists(single):
            return cls([single])
        raise CheckpointError(
            f"{directory}: no {prefix}.safetensors or {prefix}.safetensors.index.json "
            "(only safetensors checkpoints are read; convert .bin/.pt files with safetensors first)"
        )

    def __getitem__(self, key: str) -> np.ndarray:
        path, info, start = self._where[key]
        if path not in self._maps:
            self._maps[path] = np.memmap(path, dtype=np.uint8, mode="r")
        begin, end = info["data_offsets"]
        buf = self._maps[path][start + begin : start + end]
        return buf.view(_DTYPES[info["dtype"]]).reshape(info["shape"])

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._where[key][1]["shape"])

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def save_safetensors(tensors: Mapping[str, np.ndarray], path: str, metadata: dict | None = None):
    """Writes `tensors` to `path` atomically (temp file + rename), in safetensors format."""
    header: dict = {"__metadata__": {str(k): str(v) for k, v in (metadata or {}).items()}}
    offset = 0
    arrays = []
    for key in sorted(tensors):
        arr = np.asarray(tensors[key], order="C")
        if arr.dtype not in _NAMES:
            raise CheckpointError(f"cannot save tensor '{key}' of dtype {arr.dtype}")
        header[key] = {
            "dtype": _NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8-byte alignment
    with atomic_open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())
