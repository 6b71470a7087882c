"""Grain input pipeline: a random-access source -> global batches sharded over ``data``.

    it = make_pipeline(source, batch_size=256, mesh=mesh, transform=ClipPreprocess(), train=True)
    for step, batch in zip(range(start, steps), it):
        state = train_step(state, batch)  # batch["image"]: float32 [B, h, w, 3], global
    save_state(workdir / "data", step, it)  # or restore_state(workdir / "data", fresh_it)
    write_skipped(out + ".skipped.tsv", it.skipped)

    # Evaluation that resumes: only the batches still to do, each built as in a full run.
    b = round_batch(64, mesh)                       # 64, rounded up to what the mesh splits
    it = make_pipeline(source, batch_size=b, mesh=mesh, transform=t, train=False, steps=[3, 5])

``source`` is a :class:`vl_jax.data.protocol.RandomAccessSource` (``vl_jax.data.get_source(...)``,
:class:`vl_jax.data.files.FileSource`, a wrapped source such as VDC's corrupted one) or, in
tests and scripts, any ``len``-able, indexable list of example dicts. An example's ``image`` is a
decoded ``uint8 [H, W, 3]`` (or ``[H, W]``/``[H, W, 1|4]``) array, encoded image bytes, or a file
path, plus optional ``label`` (int, default -1) and ``id`` (str; default the path, else the
index).

Stages (each small and separately testable):

1. :class:`Schedule` — pure index arithmetic: which source index fills row ``j`` of this process's
   share of global batch ``k``. Global batch ``k`` covers ``B`` consecutive positions of an epoch;
   process ``p`` of ``P`` takes rows ``[p*b, (p+1)*b)`` with ``b = B / P``, so
   ``host_local_to_global`` reassembles them in order, every process runs the same number of
   steps, and each example is used exactly once per epoch across all processes.
   *Train*: each epoch is a fresh seeded permutation (grain's ``index_shuffle``, O(1) memory; the
   per-epoch seed mixes ``(seed, epoch)`` through ``SeedSequence``, so seed 1 is not seed 0's
   second epoch), cut into ``N // B`` full batches (``drop_remainder``; a different remainder is
   dropped each epoch). *Eval*: dataset order, ``ceil(N / B)`` batches; rows past ``N`` are
   padding (``index`` -1, ``mask`` False).
2. ``_LoadBatch`` — one grain element is one local batch: read, decode (bytes / path / array,
   with :mod:`vl_jax.images`' robust decoding), ``transform``. A bad example (undecodable,
   missing file, failing record) becomes a zero row with ``mask`` False and a reason; it never
   stops the run and is never dropped silently (:attr:`DeviceIterator.skipped`).
3. grain: ``MapDataset.range(steps).map(load).to_iter_dataset(ReadOptions(num_threads=workers))``,
   optionally ``.mp_prefetch(MultiprocessingOptions(processes))``. Whole local batches are the
   grain elements, so the output is identical for any number of threads or processes.
4. :class:`DeviceIterator` — host batch -> global ``jax.Array`` s
   (``parallel.host_local_to_global``), records skipped examples, and checkpoints (grain
   iterator state + skipped list) via Orbax.

Running only some eval batches (``steps=``): a consumer that keeps its results per batch (VDC's
``answers.jsonl``) resumes by asking for the steps it still needs. A batch's rows depend only on
its step number (``Schedule.rows``), so step ``k`` holds the same examples whether or not the
steps before it ran, and the images of the steps left out are never read.

Threads vs processes (measured with ``benchmarks/input_pipeline.py``'s 500x375 JPEGs, CLIP
224 preprocessing, 2-core machine): with the machine quiet, 2 threads gave ~525-550 img/s
against ~310-335 img/s for a plain loop (PIL decoding and resizing release the GIL), and 3-4
threads no more; 2 grain worker processes gave only ~90-120 img/s even after their 7-9 s start-up
(each spawned worker re-imports JAX and the pipeline; batches are copied between processes). On
a loaded machine (1.75 cores busy elsewhere) threads stayed at the plain loop's ~200 img/s and
processes fell to ~25 img/s. Hence the default of one thread per core (:func:`default_workers`)
and ``processes=0``. ``processes > 0`` works (grain *spawns* its workers, safe with JAX and under
pytest) but ``source`` and ``transform`` must be picklable, and a script must guard its entry
point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import numpy as np
from PIL import Image

from vl_jax import parallel
from vl_jax.fileio import atomic_open
from vl_jax.images import ImageError, decode_rgb, load_rgb, pil_to_rgb

__all__ = [
    "DeviceIterator",
    "Schedule",
    "Skipped",
    "gather_strings",
    "make_pipeline",
    "restore_state",
    "round_batch",
    "save_state",
    "write_skipped",
]

_log = logging.getLogger(__name__)

DATA_KEY = "data"  # item name of the iterator state inside an Orbax checkpoint
DEVICE_KEYS = ("image", "label", "mask", "index")


# --------------------------------------------------------------------------- schedule


def _epoch_seed(seed: int, epoch: int) -> int:
    # grain's own per-epoch seeding is `seed + epoch`, which makes seed s+1 replay epoch 1 of s.
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Which source index fills each row of this process's share of every global batch.

    Attributes:
      size: number of examples ``N``.
      global_batch: ``B``, rows per step over all processes.
      train: shuffle per epoch and drop the remainder (else dataset order, padded last batch).
      seed: shuffle seed (train only).
      num_epochs: train only; None repeats forever.
      process_index, process_count: this process, and how many share every batch.
    """

    size: int
    global_batch: int
    train: bool
    seed: int = 0
    num_epochs: int | None = None
    process_index: int = 0
    process_count: int = 1

    def __post_init__(self):
        if self.global_batch < 1 or self.global_batch % self.process_count:
            raise ValueError(
                f"batch_size {self.global_batch} must be a positive multiple of the "
                f"process count {self.process_count}"
            )
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index {self.process_index} not in [0, {self.process_count})")
        if self.train and self.size < self.global_batch:
            raise ValueError(
                f"train: {self.size} examples make no full batch of {self.global_batch}"
            )
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None, got {self.num_epochs}")

    @property
    def local_batch(self) -> int:
        """``b = B / P`` rows per step on each process."""
        return self.global_batch // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        if self.train:
            return self.size // self.global_batch
        return -(-self.size // self.global_batch)

    @property
    def num_steps(self) -> int | None:
        """Total steps (equal on every process); None when training forever."""
        if not self.train:
            return self.steps_per_epoch
        return None if self.num_epochs is None else self.steps_per_epoch * self.num_epochs

    def rows(self, step: int) -> np.ndarray:
        """``int64 [b]``: the source index of each local row of ``step``; -1 is padding."""
        epoch, k = divmod(step, self.steps_per_epoch)
        start = k * self.global_batch + self.process_index * self.local_batch
        positions = np.arange(start, start + self.local_batch, dtype=np.int64)
        if not self.train:
            return np.where(positions < self.size, positions, -1)
        order = grain.MapDataset.range(self.size).shuffle(seed=_epoch_seed(self.seed, epoch))
        return np.asarray([order[int(p)] for p in positions], np.int64)


# --------------------------------------------------------------------------- loading


def to_rgb(image: Any, name: str) -> np.ndarray:
    """An example's ``image`` (bytes, path, PIL image or pixel array) -> ``uint8 [H, W, 3]``.

    Raises:
      ImageError: undecodable data or an unusable array; OSError: an unreadable path.
    """
    if isinstance(image, bytes | bytearray | memoryview):
        return decode_rgb(bytes(image), name)
    if isinstance(image, str | os.PathLike):
        return load_rgb(image)
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    pixels = np.asarray(image)
    if pixels.dtype == object and pixels.ndim == 0:  # e.g. bytes boxed by a record reader
        return to_rgb(pixels.item(), name)
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3) or 0 in pixels.shape:
        raise ImageError(
            name, f"expected a uint8 [H, W, 3] image, got {pixels.dtype} {pixels.shape}"
        )
    if pixels.ndim == 3 and pixels.shape[-1] == 3:
        return pixels
    if pixels.ndim == 3 and pixels.shape[-1] not in (1, 4):
        raise ImageError(name, f"unsupported channel count {pixels.shape[-1]}")
    # Gray [H, W(, 1)] and RGBA [H, W, 4] take the same route as files (alpha onto white).
    return pil_to_rgb(Image.fromarray(pixels[..., 0] if pixels.shape[-1:] == (1,) else pixels))


def _example_id(example: dict, index: int) -> str:
    ex_id = example.get("id")
    if isinstance(ex_id, bytes):
        ex_id = ex_id.decode("utf-8", "replace")
    if ex_id is None or ex_id == "":
        image = example.get("image")
        ex_id = os.fspath(image) if isinstance(image, str | os.PathLike) else str(index)
    return str(ex_id)


class _LoadBatch:
    """Grain map: step -> this process's local batch as numpy (see ``make_pipeline``)."""

    def __init__(self, source, transform: Callable, schedule: Schedule, image_shape: tuple):
        self.source, self.transform, self.schedule = source, transform, schedule
        self.image_shape = image_shape

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        rows = self.schedule.rows(int(step))
        b = len(rows)
        image = np.zeros((b, *self.image_shape), np.float32)
        label = np.full(b, -1, np.int32)
        mask = np.zeros(b, bool)
        ids, reasons = [""] * b, [""] * b
        for j, i in enumerate(rows):
            if i < 0:
                continue  # padding
            ids[j], pixels, reasons[j], label[j] = self._one(int(i))
            if pixels is not None:
                image[j], mask[j] = pixels, True
        return {
            "image": image,
            "label": label,
            "mask": mask,
            "index": rows.astype(np.int32),
            "id": np.asarray(ids, dtype=str),
            "reason": np.asarray(reasons, dtype=str),
        }

    def _one(self, i: int) -> tuple[str, np.ndarray | None, str, int]:
        """-> (id, pixels or None, reason ('' when fine), label)."""
        try:
            example = self.source[i]
        except ImageError as e:  # a source that decodes in __getitem__ (vl_jax.data.get_source)
            return e.path, None, e.reason, -1
        except Exception as e:  # one unreadable record must not stop a run; it is reported
            return str(i), None, f"unreadable record: {type(e).__name__}: {e}", -1
        ex_id = _example_id(example, i)
        label = int(example.get("label", -1))
        try:
            pixels = np.asarray(self.transform(to_rgb(example["image"], ex_id)), np.float32)
        except ImageError as e:
            return ex_id, None, e.reason, label
        except (OSError, ValueError, KeyError) as e:  # missing file, bad array, no "image"
            return ex_id, None, f"{type(e).__name__}: {e}", label
        if pixels.shape != self.image_shape:
            why = f"transform gave shape {pixels.shape}, expected {self.image_shape}"
            return ex_id, None, why, label
        return ex_id, pixels, "", label


def _output_shape(transform: Callable) -> tuple[int, ...]:
    hw = getattr(transform, "output_hw", None)  # ClipPreprocess knows without running
    if hw is not None:
        return (*hw, 3)
    probe = np.asarray(transform(np.full((64, 64, 3), 128, np.uint8)))
    return tuple(probe.shape)


# --------------------------------------------------------------------------- iterator


def default_workers() -> int:
    """Reader threads when none are given: one per CPU core, at most 16."""
    return max(1, min(os.cpu_count() or 1, 16))


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A bad example: its source ``index``, ``id`` (path or dataset id) and the ``reason``."""

    index: int
    id: str
    reason: str


class DeviceIterator(grain.DatasetIterator):
    """Yields ``{"image": float32 [B, h, w, 3], "label": int32 [B], "mask": bool [B],
    "index": int32 [B]}``, global ``jax.Array`` s split over the mesh's ``data`` axis.

    ``mask`` is False for padding (``index`` -1) and for bad examples (``index`` >= 0, listed in
    :attr:`skipped`). With ``with_ids`` the dict also holds ``"id"``: numpy str ``[b]``, this
    process's rows only (host-local, not on device; :func:`gather_strings` gives all of them).
    A grain ``DatasetIterator``, so ``grain.checkpoint.CheckpointSave/Restore`` (Orbax) and
    ``get_state``/``set_state`` work; the state includes the skipped list.

    Attributes:
      steps: ``[num_steps]`` the schedule step of each batch, in the order they come (a
        ``range`` unless ``make_pipeline(steps=...)`` chose some); None when training forever.
    """

    def __init__(
        self,
        dataset: grain.IterDataset,
        mesh,
        schedule: Schedule,
        with_ids: bool,
        steps: Sequence[int] | None = None,
    ):
        self._host = iter(dataset)
        super().__init__(self._host)
        self.mesh, self.schedule, self.with_ids = mesh, schedule, with_ids
        if steps is None and schedule.num_steps is not None:
            steps = range(schedule.num_steps)  # a range: no list as long as a training run
        self.steps = steps
        self.step = 0  # batches returned so far
        self._skipped: dict[int, Skipped] = {}  # by index: a bad example counts once per run

    @property
    def num_steps(self) -> int | None:
        """Batches this iterator yields (same on every process); None when training forever."""
        return None if self.steps is None else len(self.steps)

    @property
    def skipped(self) -> list[Skipped]:
        """Bad examples this process met so far, in the order first seen."""
        return list(self._skipped.values())

    def __next__(self) -> dict[str, Any]:
        host = next(self._host)
        self.step += 1
        for j in np.flatnonzero(host["reason"] != ""):
            i = int(host["index"][j])
            if i not in self._skipped:
                self._skipped[i] = Skipped(i, str(host["id"][j]), str(host["reason"][j]))
                _log.warning("skipped example %d (%s): %s", i, host["id"][j], host["reason"][j])
        batch = parallel.host_local_to_global({k: host[k] for k in DEVICE_KEYS}, self.mesh)
        if self.with_ids:
            batch["id"] = host["id"]
        return batch

    def get_state(self) -> dict[str, Any]:
        return {
            "host": self._host.get_state(),
            "step": self.step,
            "skipped": [dataclasses.astuple(s) for s in self._skipped.values()],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self._host.set_state(state["host"])
        self.step = int(state["step"])
        self._skipped = {int(i): Skipped(int(i), str(d), str(r)) for i, d, r in state["skipped"]}

    def __enter__(self) -> DeviceIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()  # stops grain's threads/processes now rather than at garbage collection


def make_pipeline(
    source,
    *,
    batch_size: int,
    mesh,
    transform: Callable[[np.ndarray], np.ndarray],
    train: bool,
    seed: int = 0,
    num_epochs: int | None = None,
    workers: int | None = None,
    processes: int = 0,
    prefetch: int = 2,
    with_ids: bool = False,
    process_index: int | None = None,
    process_count: int | None = None,
    steps: Sequence[int] | None = None,
) -> DeviceIterator:
    """Grain pipeline from ``source`` to global batches on ``mesh``.

    Args:
      source: random-access examples (see the module docstring).
      batch_size: global batch ``B``; ``B / process_count`` must split over this process's
        ``data`` shards (``parallel.local_data_shards``).
      mesh: the ``("data", "model")`` mesh; batches are split over ``data``.
      transform: ``uint8 [H, W, 3] -> float32 [h, w, 3]`` with a fixed output size, e.g.
        ``ClipPreprocess``.
      train: True: per-epoch seeded shuffle, full batches only, ``num_epochs`` (None = forever).
        False: every example exactly once in order, last batch padded (``mask`` False).
      seed: shuffle seed; the same seed gives the same batches on any worker count.
      workers: grain reader threads, each building whole local batches; None: one per CPU
        core (at most 16).
      processes: grain worker processes (``mp_prefetch``); 0 = threads only (the default,
        faster on the measured 2-core machine, see the module docstring).
      prefetch: local batches buffered ahead per process.
      with_ids: add the host-local ``"id"`` rows (see :class:`DeviceIterator`).
      process_index, process_count: override ``jax.process_index()/process_count()``
        (tests simulate several hosts with them).
      steps: evaluation only: run just these steps (batch numbers in ``[0, ceil(N / B))``), in
        the order given; each is the batch a full run makes at that step, and the examples of
        the other steps are never read (resuming a per-batch result, see the module
        docstring). Every process must pass the same steps. None: all steps.

    Returns:
      A :class:`DeviceIterator` of ``num_steps`` batches.
    """
    if not train and num_epochs not in (None, 1):
        raise ValueError("evaluation covers the source exactly once; num_epochs must be None")
    if steps is not None and train:
        # A training run resumes from its iterator state (save_state / restore_state).
        raise ValueError("steps= selects evaluation batches; train=True resumes with restore_state")
    schedule = Schedule(
        size=len(source),
        global_batch=batch_size,
        train=train,
        seed=seed,
        num_epochs=num_epochs if train else None,
        process_index=jax.process_index() if process_index is None else process_index,
        process_count=jax.process_count() if process_count is None else process_count,
    )
    shards = parallel.local_data_shards(mesh)
    if schedule.local_batch % shards:
        raise ValueError(
            f"local batch {schedule.local_batch} (batch_size {batch_size} / "
            f"{schedule.process_count} processes) does not split over {shards} data shards"
        )
    if steps is not None:
        steps = [int(k) for k in steps]
        bad = [k for k in steps if not 0 <= k < schedule.num_steps]
        if bad:
            raise ValueError(f"steps {bad} not in [0, {schedule.num_steps}) for {len(source)} "
                             f"examples in batches of {batch_size}")  # fmt: skip
    workers = default_workers() if workers is None else workers
    load = _LoadBatch(source, transform, schedule, _output_shape(transform))
    if steps is not None:
        ds = grain.MapDataset.source(steps).map(load)  # element k = schedule step steps[k]
    else:
        total = schedule.num_steps
        ds = grain.MapDataset.range(total if total is not None else 2**62).map(load)
    read = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=max(prefetch, workers))
    ds = ds.to_iter_dataset(read)
    if processes > 0:
        from absl import flags

        # grain reads its absl flags when it starts workers; programs that do not use absl
        # (pytest, our CLIs) never parse them, which grain would report as an error.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=processes, per_worker_buffer_size=prefetch)
        )
    return DeviceIterator(ds, mesh, schedule, with_ids, steps)


def round_batch(batch_size: int, mesh, process_count: int | None = None) -> int:
    """The smallest global batch >= ``batch_size`` that :func:`make_pipeline` accepts on
    ``mesh``: an equal share per process, each a multiple of the process's ``data`` shards
    (``parallel.local_data_shards``; every process holds as many). E.g. 11 on 4 devices -> 12,
    11 on 2 processes x 2 devices -> 12, 11 on 8 devices -> 16, 11 on 1 device -> 11."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_proc = jax.process_count() if process_count is None else process_count
    shards = parallel.local_data_shards(mesh)
    per_process = -(-batch_size // n_proc)  # ceil, then up to a multiple of the local shards
    return -(-per_process // shards) * shards * n_proc


def gather_strings(local: Sequence[str]) -> list[str]:
    """Every process's ``local`` strings, concatenated in process order, on every process.

    For host-local row data such as the ``"id"`` rows of a batch, or the reasons of the bad
    rows a process decoded. A collective: every process must call it, each with the same
    number of strings. One process: ``list(local)``.
    """
    if jax.process_count() == 1:
        return [str(x) for x in local]
    from jax.experimental import multihost_utils

    raw = [str(x).encode() for x in local]
    longest = multihost_utils.process_allgather(np.int32(max(map(len, raw), default=0)))
    buf = np.zeros((len(raw), max(int(np.max(longest)), 1)), np.uint8)
    for j, r in enumerate(raw):
        buf[j, : len(r)] = np.frombuffer(r, np.uint8)
    rows = multihost_utils.process_allgather(buf, tiled=True)  # [P * n, width], process order
    return [bytes(r).rstrip(b"\0").decode() for r in rows]


# --------------------------------------------------------------------------- checkpoints


def save_state(directory: str | os.PathLike, step: int, it: DeviceIterator) -> None:
    """Save ``it`` 's position (and skipped list) with Orbax as checkpoint ``step``.

    One JSON file per process (grain's ``CheckpointHandler``). To save it together with the
    model, put ``DATA_KEY: grain.checkpoint.CheckpointSave(it)`` in your own
    ``ocp.args.Composite``.
    """
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(os.path.abspath(directory)) as mngr:
        mngr.save(step, args=ocp.args.Composite(**{DATA_KEY: grain.checkpoint.CheckpointSave(it)}))
        mngr.wait_until_finished()


def restore_state(directory: str | os.PathLike, it: DeviceIterator, step: int | None = None) -> int:
    """Restore ``it`` (a fresh iterator built like the saved one) in place; returns the step.

    ``step`` defaults to the latest checkpoint in ``directory``.

    Raises:
      FileNotFoundError: no checkpoint there.
    """
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(os.path.abspath(directory)) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no iterator checkpoint under {directory}")
        args = ocp.args.Composite(**{DATA_KEY: grain.checkpoint.CheckpointRestore(it)})
        mngr.restore(step, args=args)
    return step


def write_skipped(path: str | os.PathLike, skipped: Sequence[Skipped]) -> None:
    """Write ``id<TAB>reason`` lines (with a header) for the caller's ``skipped.tsv``."""
    lines = ["id\treason\n"] + [f"{s.id}\t{' '.join(s.reason.split())}\n" for s in skipped]
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)
