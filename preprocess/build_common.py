"""What every cache builder shares: run options, the per-process teacher cache, block runs and the summary.

A builder lists its inputs, creates or resumes the store, opens one executor
(:func:`build_executor`) and hands every pending block to :func:`run_blocks`;
:func:`summarize` reads the outcome back from the store, so a resumed or
already-finished build reports the same way.

The coordinator loads teachers only on the CPU (:func:`coordinator_teacher`,
for their records and the class prompts): on a GPU node its process would
otherwise hold a copy of every model on ``cuda:0`` next to a worker's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from cache_schema import DONE, FAILED, CacheWriter
from cache_schema.layout import STR
from preprocess.cluster import Executor, WorkerLost, open_executor
from preprocess.errors import (BadInput, EnvironmentFailure, environment_reason, is_environment_error,
                               is_environment_reason)

if TYPE_CHECKING:  # the teachers bring torch: builders without teachers (rooms, points) never load it
    from preprocess.teachers import Teacher


@dataclass(frozen=True)
class RunOptions:
    """How to run a build; none of it changes the content."""

    workers: int = 0
    scheduler: str | None = None
    cluster: str = "local"                 # or "slurm" (dask-jobqueue)
    cluster_options: tuple[str, ...] = ()  # KEY=VALUE for --cluster slurm
    gl_platform: str = "auto"
    overwrite: bool = False
    block_rows: int = 64
    batch_size: int = 64
    progress: bool = True
    torch_threads: int | None = None


@dataclass
class BlockReport:
    """What a worker sends back: seconds spent per stage (statuses are in the store)."""

    block: int
    seconds: dict[str, float]


@dataclass
class BuildSummary:
    url: str
    rows: int
    done: int
    failed: Counter
    seconds: float
    stored_bytes: int
    fingerprint: str | None
    already_complete: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)
    unit: str = "shape"
    notes: list[str] = field(default_factory=list)
    noted: Counter = field(default_factory=Counter)  # notes on done rows by kind ("texture missing": 3)

    @property
    def complete(self) -> bool:
        """False while rows failed for environmental reasons wait for a rerun (the cache is not finalized)."""
        return self.fingerprint is not None

    def __str__(self) -> str:
        if self.already_complete:
            return f"{self.url} is already complete ({self.rows} {self.unit}s, {self.fingerprint}); nothing to do."
        lines = [f"built {self.url}: {self.done} done, {sum(self.failed.values())} failed of {self.rows} "
                 f"{self.unit}s in {self.seconds:.1f} s; {self.stored_bytes / 2**20:.1f} MiB on disk",
                 f"fingerprint {self.fingerprint}" if self.complete else
                 "NOT finalized: rows failed for environmental reasons; run the same command again to retry them"]
        for reason, n in self.failed.most_common(10):
            lines.append(f"  failed x{n}: {reason}")
        for reason, n in self.noted.most_common(10):
            lines.append(f"  done with a note x{n}: {reason}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@lru_cache(maxsize=8)
def cached_teacher(name: str, batch_size: int, device: str | None = None) -> Teacher:
    """One instance per process, name and device: workers keep their teachers between blocks."""
    import torch

    from preprocess.teachers import load_teacher

    return load_teacher(name, device=torch.device(device) if device else None, batch_size=batch_size)


def worker_teacher(name: str, batch_size: int) -> Teacher:
    """A teacher on a worker's device; failing to load there (CUDA out of memory, a broken driver) is the
    machine's fault: :class:`EnvironmentFailure`, the block stays pending and the next run retries it."""
    from preprocess.teachers import MissingWeightsError

    try:
        return cached_teacher(name, batch_size)
    except MissingWeightsError:
        raise
    except Exception as e:
        raise EnvironmentFailure(f"teacher {name!r} could not be loaded on this worker "
                                 f"({type(e).__name__}: {e})") from e


def coordinator_teacher(name: str, batch_size: int = 64) -> Teacher:
    """A teacher for the coordinator's own needs (records, class prompts): always on the CPU."""
    return cached_teacher(name, batch_size, "cpu")


def row_failure(err: Exception) -> str:
    """The stored reason of a row that raised: its own message for bad input, ``environment: ...`` for the
    machine's failures (retried on the next run), else the exception."""
    if isinstance(err, BadInput):
        return str(err)
    if is_environment_error(err):
        return environment_reason(err)
    return f"{type(err).__name__}: {err}"


@contextlib.contextmanager
def build_executor(run: RunOptions) -> Iterator[Executor]:
    with open_executor(run.workers, run.scheduler, run.cluster, run.cluster_options, run.progress) as ex:
        yield ex


def with_working_renderer(ex: Executor, run: RunOptions) -> RunOptions:
    """Probe OpenGL on a worker before any row is built (EGL falls back to OSMesa; nothing works: stop)."""
    from preprocess.render import working_gl_platform

    return dataclasses.replace(run, gl_platform=ex.call(working_gl_platform, run.gl_platform))


def set_torch_threads(run: RunOptions) -> None:
    if run.torch_threads:
        import torch

        torch.set_num_threads(run.torch_threads)


def run_blocks(ex: Executor, writer: CacheWriter, build_block: Callable[..., BlockReport],
               tasks: dict[int, tuple], stages: Sequence[str], desc: str, unit: str) -> dict[str, float]:
    """Run every block task (``tasks``: block -> arguments of ``build_block``, here or on Dask) and add up the
    seconds each stage took.

    A block whose worker died under it (killed, out of memory: :class:`WorkerLost`) is written with every row
    failed for that environmental reason, so the next run builds it again; the other blocks go on.
    """
    blocks = list(tasks)

    def lost(i: int, err: WorkerLost) -> BlockReport:
        write_lost_block(writer, blocks[i], environment_reason(err))
        return BlockReport(blocks[i], {})

    weights = [stop - start for start, stop in map(writer.block_range, blocks)]
    stage_seconds = dict.fromkeys(stages, 0.0)
    for report in ex.map(build_block, list(tasks.values()), weights, desc, unit, lost=lost):
        for s, sec in report.seconds.items():
            stage_seconds[s] = stage_seconds.get(s, 0.0) + sec
    return stage_seconds


def write_lost_block(writer: CacheWriter, block: int, reason: str) -> None:
    """Store every row of ``block`` as failed with ``reason`` (an environmental one: retried by the next run);
    its arrays hold zeros (empty strings, no ragged entries) until then."""
    start, stop = writer.block_range(block)
    n, layout = stop - start, writer.layout
    status = (layout.status_path, layout.status_path + "_reason")
    arrays = {s.path: np.full((n, *s.inner_shape), "", object) if s.dtype == STR else
              np.zeros((n, *s.inner_shape), s.dtype) for s in layout.by_axis("row") if s.path not in status}
    ragged = {s.path: [np.zeros((0, *s.inner_shape), s.dtype)] * n
              for specs in layout.ragged_families().values() for s in specs}
    writer.write_block(block, arrays, np.full(n, FAILED, np.uint8), [reason] * n, ragged=ragged or None)


def finalize_unless_retrying(writer: CacheWriter) -> str | None:
    """Finalize the store, or leave it building (None) while environment-failed rows wait for a rerun."""
    return None if writer.retry_rows().any() else writer.finalize()


def finish_build(writer: CacheWriter, url: str, splits: dict[str, list[int]], start: float, unit: str,
                 stage_seconds: dict[str, float]) -> BuildSummary:
    """The end of every build: write the splits, finalize (unless rows wait for a rerun), summarize."""
    for split, rows in splits.items():
        writer.write_split(split, rows)
    return summarize(writer, url, finalize_unless_retrying(writer), start, unit, stage_seconds)


def summarize(writer: CacheWriter, url: str, fingerprint: str | None, start: float, unit: str,
              stage_seconds: dict[str, float] | None = None, already_complete: bool = False) -> BuildSummary:
    """The outcome of a build, read back from the store."""
    status_path = writer.layout.status_path
    status = writer.group[status_path][:]
    reasons = writer.group[status_path + "_reason"][:]
    failed = Counter(reason_kind(str(x)) for x in reasons[status == FAILED])
    noted = Counter(reason_kind(str(x)) for x in reasons[(status == DONE) & (reasons != "")])
    return BuildSummary(url, len(status), int((status == DONE).sum()), failed, time.perf_counter() - start,
                        int(writer.loc.fs.du(writer.loc.root)), fingerprint, already_complete=already_complete,
                        stage_seconds=stage_seconds or {}, unit=unit, noted=noted)


def reason_kind(reason: str) -> str:
    """Group reasons by their kind ("missing file: /a/b.obj" -> "missing file"; "environment: CUDA ..." ->
    "environment: OutOfMemoryError")."""
    if is_environment_reason(reason):
        return ": ".join(reason.split(": ", 2)[:2])
    return reason.split(":", 1)[0] if ":" in reason else reason

