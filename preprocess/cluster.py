"""Running build tasks: in this process, on a local Dask cluster, on SLURM, or on any Dask scheduler.

Shared by every builder. A build opens one :class:`Executor` for its whole run
(a SLURM cluster is asked for its jobs once) and uses it twice: ``call`` runs
one set-up task on a worker (the OpenGL probe, the PCA fit: the coordinator
loads no model on a GPU), ``map`` runs the independent row blocks with a
progress bar weighted by rows, with rate and ETA, and yields each result as it
finishes. A task that raises stops the run: finished blocks stay written and
the next run resumes after them. A task whose worker process dies under it
(killed, out of memory) on every attempt Dask makes is :class:`WorkerLost`, an
environment failure: the builders store its rows as such and go on.

Closing the cluster cannot fail a build: by then every block is written, so a
client or cluster that fails or times out while closing (a loaded machine, a
worker slow to stop) is one warning line, and the build's own last writes
(splits, fixed arrays, finalize) go ahead.

GPU placement: every Dask worker owns exactly one GPU. On a machine with GPUs,
``--workers N`` starts dask-cuda's ``LocalCUDACluster`` with one worker per
visible GPU (``CUDA_VISIBLE_DEVICES`` respected, at most N); each worker sees
only its own device as ``cuda:0``. On SLURM every job asks for one GPU and runs
one worker, so the same holds on every node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from preprocess.errors import EnvironmentFailure

CLUSTERS = ("local", "slurm")
# --cluster-option keys for SLURM -> what they set (dask-jobqueue SLURMCluster arguments or our own)
SLURM_OPTIONS = {
    "jobs": "number of SLURM jobs, one Dask worker and one GPU each (default: --workers, or 1)",
    "queue": "partition (#SBATCH -p)",
    "account": "account to charge (#SBATCH -A)",
    "walltime": "time limit per job, e.g. 04:00:00 (#SBATCH -t)",
    "cores": "CPU cores per job (default 8: rendering and decoding run on the CPU)",
    "memory": "memory per job (default 64GB)",
    "gpus": "GPUs per job: 1 (default) or 0 for a CPU partition",
    "job-extra": "a further #SBATCH directive, e.g. --constraint=a100 (repeat the option for more)",
    "prologue": "a shell line run before the worker starts, e.g. 'module load cuda' (repeatable)",
    "python": "the Python on the compute nodes (default: this one; it needs this package installed)",
    "local-directory": "worker scratch space on the node, e.g. /tmp or $TMPDIR",
    "interface": "network interface the workers listen on, e.g. ib0",
}
REPEATABLE = ("job-extra", "prologue")
CLOSE_GRACE = 5.0  # seconds a cluster that failed to close gets to finish stopping its workers


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else every CUDA device torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


@dataclass(frozen=True)
class LocalPlacement:
    """What ``--workers N`` starts here: one worker per GPU on a GPU machine, else CPU processes."""

    kind: str                 # "cuda" (dask-cuda LocalCUDACluster) or "cpu" (LocalCluster)
    workers: int
    devices: tuple[str, ...]  # the GPU of each worker, in order ("cuda" only)
    note: str = ""

    def cluster_kwargs(self) -> dict[str, Any]:
        # The scheduler's HTTP server (health, metrics) starts even with the dashboard off, on 8787 by default:
        # a free local port instead, so two builds on one node neither collide nor print dask's port warning.
        common = {"n_workers": self.workers, "threads_per_worker": 1, "dashboard_address": None, "silence_logs": 40,
                  "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"}}
        if self.kind == "cuda":
            return {**common, "CUDA_VISIBLE_DEVICES": list(self.devices)}
        return {**common, "processes": True}


def local_placement(workers: int, gpus: Sequence[str]) -> LocalPlacement:
    """One worker per GPU, never two on one GPU: ``workers`` above the GPU count is cut down (with a note)."""
    if not gpus:
        return LocalPlacement("cpu", workers, ())
    n = min(workers, len(gpus))
    note = "" if n == workers else (f"{workers} workers asked, {len(gpus)} GPUs visible: starting {n} "
                                    "(one worker per GPU)")
    return LocalPlacement("cuda", n, tuple(gpus[:n]), note)


def parse_cluster_options(pairs: Sequence[str]) -> dict[str, Any]:
    """``["queue=gpu", "job-extra=--constraint=a100", ...]`` -> a dict; unknown keys are refused."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--cluster-option {pair!r}: expected KEY=VALUE, e.g. queue=gpu")
        if key not in SLURM_OPTIONS:
            known = ", ".join(f"{k} ({v})" for k, v in SLURM_OPTIONS.items())
            raise ValueError(f"--cluster-option {key!r} is not known; known keys: {known}")
        if key in REPEATABLE:
            out.setdefault(key, []).append(value)
        else:
            out[key] = value
    return out


def slurm_cluster(options: dict[str, Any], workers: int = 0):
    """A dask-jobqueue ``SLURMCluster`` whose jobs each run one worker on one GPU, and how many jobs to start.

    Its ``job_script()`` is exactly what ``sbatch`` will receive.
    """
    from dask_jobqueue import SLURMCluster

    gpus = int(options.get("gpus", 1))
    if gpus not in (0, 1):
        raise ValueError(f"--cluster-option gpus={gpus}: each SLURM job runs one worker on one GPU (gpus=1), or "
                         "none (gpus=0); ask for more jobs instead (--cluster-option jobs=N)")
    directives = [f"--gres=gpu:{gpus}"] if gpus else []
    directives += list(options.get("job-extra", []))
    kwargs: dict[str, Any] = {
        "cores": int(options.get("cores", 8)), "memory": options.get("memory", "64GB"), "processes": 1,
        "job_extra_directives": directives, "job_script_prologue": list(options.get("prologue", [])),
        "python": options.get("python", sys.executable), "job_name": "teacher-cache",
        # one build thread per worker: the teachers batch on the GPU, rendering is one context per process
        "worker_extra_args": ["--nthreads", "1"],
    }
    for key, arg in (("queue", "queue"), ("account", "account"), ("walltime", "walltime"),
                     ("local-directory", "local_directory"), ("interface", "interface")):
        if key in options:
            kwargs[arg] = options[key]
    jobs = int(options.get("jobs", workers or 1))
    if jobs < 1:
        raise ValueError(f"--cluster-option jobs={jobs}: at least one job is needed")
    return SLURMCluster(**kwargs), jobs


class WorkerLost(EnvironmentFailure):
    """The worker process running a task died (killed, out of memory) on every attempt Dask made."""


def _worker_lost(err: Exception, fn: Callable[..., Any]) -> WorkerLost:
    """Dask's ``KilledWorker`` in one line."""
    tries = err.allowed_failures + 1  # type: ignore[attr-defined]
    where = err.last_worker.address  # type: ignore[attr-defined]
    return WorkerLost(f"the Dask worker running {getattr(fn, '__name__', 'the task')} died ({tries} attempt"
                      f"{'s' * (tries > 1)}, last on {where}): killed, or out of memory?")


class Executor:
    """Runs set-up calls and row blocks here (``workers=0``) or on a Dask client."""

    def __init__(self, client=None, progress: bool = True) -> None:
        self.client = client
        self.progress = progress

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on one worker (here without a cluster): set-up that must see the workers' machine."""
        if self.client is None:
            return fn(*args)
        from dask.distributed import KilledWorker

        try:
            return self.client.submit(fn, *args, pure=False).result()
        except KilledWorker as e:
            raise _worker_lost(e, fn) from None

    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple], weights: Sequence[int], desc: str = "build",
            unit: str = "row", lost: Callable[[int, WorkerLost], Any] | None = None) -> Iterator[Any]:
        """``fn(*task)`` for every task; results in completion order, with a progress bar weighted by rows.

        ``lost(i, error)`` is yielded in place of the result of task ``i`` when its worker died under it
        (:class:`WorkerLost`); without ``lost`` that stops the run.
        """
        bar = tqdm(total=int(sum(weights)), desc=desc, unit=unit, disable=not self.progress, dynamic_ncols=True,
                   mininterval=progress_interval())
        with bar:
            if self.client is None:
                for task, w in zip(tasks, weights):
                    result = fn(*task)
                    bar.update(w)
                    yield result
                return
            from dask.distributed import KilledWorker, as_completed

            futures = {self.client.submit(fn, *task, pure=False): i for i, task in enumerate(tasks)}
            try:
                for fut in as_completed(futures):
                    i = futures[fut]
                    try:
                        result = fut.result()
                    except KilledWorker as e:
                        if lost is None:
                            raise _worker_lost(e, fn) from None
                        result = lost(i, _worker_lost(e, fn))
                    bar.update(weights[i])
                    yield result
            finally:
                self.client.cancel(list(futures))


@contextlib.contextmanager
def open_executor(workers: int = 0, scheduler: str | None = None, cluster: str = "local",
                  cluster_options: Sequence[str] = (), progress: bool = True) -> Iterator[Executor]:
    """The executor of one build: in-process, ``--workers N`` here, ``--cluster slurm`` or ``--scheduler``.

    Closing the client and cluster on the way out never raises (see :func:`close_quietly`): an exception of
    the build itself goes on unchanged, a normal exit stays normal.
    """
    if cluster not in CLUSTERS:
        raise ValueError(f"--cluster must be one of {CLUSTERS}, got {cluster!r}")
    if cluster == "slurm" and scheduler is not None:
        raise ValueError("--cluster slurm starts its own scheduler; leave out --scheduler")
    if cluster_options and cluster != "slurm":
        raise ValueError("--cluster-option only applies with --cluster slurm")
    if cluster == "local" and workers <= 0 and scheduler is None:
        yield Executor(None, progress)
        return
    from dask.distributed import Client

    logging.getLogger("distributed").setLevel(logging.WARNING)  # keep the progress bar readable
    client = dask_cluster = None
    try:
        if scheduler is not None:
            client = Client(scheduler)
        elif cluster == "slurm":
            dask_cluster, jobs = slurm_cluster(parse_cluster_options(cluster_options), workers)
            dask_cluster.scale(jobs=jobs)
            print(f"submitted {jobs} SLURM jobs (one worker each); blocks start as the jobs come up "
                  f"(squeue -u $USER). Each job runs:\n{dask_cluster.job_script()}", file=sys.stderr)
            client = Client(dask_cluster)
        else:
            dask_cluster = _local_cluster(workers)
            client = Client(dask_cluster)
        yield Executor(client, progress)
    finally:
        close_quietly(client, dask_cluster)


def close_quietly(client, cluster) -> None:
    """Close the client, then the cluster (either may be None); a failure is one warning line on stderr.

    Logging is held back meanwhile: Dask's own messages about it (a worker killed after its stop timeout, the
    traceback of a timed-out retirement that its event loop logs) would bury the one line that says what went
    wrong. A cluster that failed to close gets :data:`CLOSE_GRACE` more seconds to stop its workers (and Dask's
    later note that one of them was reaped elsewhere is dropped).
    """
    problem = None
    held = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        for closing in (client, cluster):
            if closing is None:
                continue
            try:
                closing.close()
            except Exception as e:  # any failure to close is reported, never raised
                problem = problem or e
                if closing is cluster:
                    with contextlib.suppress(Exception):
                        cluster.close(timeout=CLOSE_GRACE)
                    _quiet_reaped_workers()
    finally:
        logging.disable(held)
    if problem is not None:
        what = f"{type(problem).__name__}: {problem}" if str(problem) else type(problem).__name__
        print(f"warning: the Dask cluster did not close cleanly ({what}); nothing the build wrote is affected",
              file=sys.stderr)


class _ReapedWorkerNote(logging.Filter):
    """Drops Dask's note that a worker process killed while closing was reaped elsewhere ("exit status was
    already read, will report exitcode 255"): it comes from a background thread, after the one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "exit status was already read" not in record.getMessage()


def _quiet_reaped_workers() -> None:
    log = logging.getLogger("distributed.process")
    if not any(isinstance(f, _ReapedWorkerNote) for f in log.filters):
        log.addFilter(_ReapedWorkerNote())


def _local_cluster(workers: int):
    placement = local_placement(workers, visible_gpus())
    if placement.note:
        print(f"note: {placement.note}", file=sys.stderr)
    if placement.kind == "cuda":
        from dask_cuda import LocalCUDACluster

        return LocalCUDACluster(**placement.cluster_kwargs())
    from dask.distributed import LocalCluster

    return LocalCluster(**placement.cluster_kwargs())


def progress_interval() -> float:
    """Seconds between bar updates: live on a terminal, every 30 s in a log file (CI, nohup)."""
    return 0.1 if sys.stderr.isatty() else 30.0
