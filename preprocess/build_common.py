"""What every cache builder shares: run options, the per-process teacher cache, block runs and the summary.

A builder lists its inputs, creates or resumes the store, and hands every
pending block to :func:`run_blocks`; :func:`summarize` reads the outcome back
from the store, so a resumed or already-finished build reports the same way.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from cache_schema import DONE, FAILED, CacheWriter
from preprocess.cluster import run_tasks
from preprocess.teachers import Teacher, load_teacher


@dataclass(frozen=True)
class RunOptions:
    """How to run a build; none of it changes the content."""

    workers: int = 0
    scheduler: str | None = None
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
    fingerprint: str
    already_complete: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)
    unit: str = "shape"
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        if self.already_complete:
            return f"{self.url} is already complete ({self.rows} {self.unit}s, {self.fingerprint}); nothing to do."
        lines = [f"built {self.url}: {self.done} done, {sum(self.failed.values())} failed of {self.rows} "
                 f"{self.unit}s in {self.seconds:.1f} s; {self.stored_bytes / 2**20:.1f} MiB on disk",
                 f"fingerprint {self.fingerprint}"]
        for reason, n in self.failed.most_common(10):
            lines.append(f"  failed x{n}: {reason}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


@lru_cache(maxsize=8)
def cached_teacher(name: str, batch_size: int) -> Teacher:
    """One instance per process and name: workers keep their teachers between blocks."""
    return load_teacher(name, batch_size=batch_size)


def set_torch_threads(run: RunOptions) -> None:
    if run.torch_threads:
        import torch

        torch.set_num_threads(run.torch_threads)


def run_blocks(build_block: Callable[..., BlockReport], tasks: Sequence[tuple], weights: Sequence[int],
               run: RunOptions, stages: Sequence[str], desc: str, unit: str) -> dict[str, float]:
    """Run every block task (here or on Dask) and add up the seconds each stage took."""
    stage_seconds = dict.fromkeys(stages, 0.0)
    for report in run_tasks(build_block, tasks, weights, workers=run.workers, scheduler=run.scheduler,
                            desc=desc, unit=unit, progress=run.progress):
        for s, sec in report.seconds.items():
            stage_seconds[s] = stage_seconds.get(s, 0.0) + sec
    return stage_seconds


def summarize(writer: CacheWriter, url: str, fingerprint: str, start: float, unit: str,
              stage_seconds: dict[str, float] | None = None, already_complete: bool = False) -> BuildSummary:
    """The outcome of a build, read back from the store."""
    status_path = writer.layout.status_path
    status = writer.group[status_path][:]
    reasons = writer.group[status_path + "_reason"][:]
    failed = Counter(reason_kind(str(x)) for x in reasons[status == FAILED])
    return BuildSummary(url, len(status), int((status == DONE).sum()), failed, time.perf_counter() - start,
                        int(writer.loc.fs.du(writer.loc.root)), fingerprint, already_complete=already_complete,
                        stage_seconds=stage_seconds or {}, unit=unit)


def reason_kind(reason: str) -> str:
    """Group reasons by their kind ("missing file: /a/b.obj" -> "missing file")."""
    return reason.split(":", 1)[0] if ":" in reason else reason

