"""Running build tasks: in this process, on a local Dask cluster, or on any Dask scheduler.

Shared by every builder. Tasks are independent (one per block of rows); the
coordinator shows a progress bar weighted by rows, with rate and ETA, and
yields each task's result as it finishes. A task that raises stops the run:
finished blocks stay written and the next run resumes after them.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm


def run_tasks(fn: Callable[..., Any], tasks: Sequence[tuple], weights: Sequence[int], *, workers: int = 0,
              scheduler: str | None = None, desc: str = "build", unit: str = "row",
              progress: bool = True) -> Iterator[Any]:
    """Run ``fn(*task)`` for every task; yield results in completion order.

    ``workers=0`` and no ``scheduler``: run here, one after another (debuggable).
    ``workers=N``: a ``LocalCluster`` of N single-threaded worker processes.
    ``scheduler="tcp://host:8786"``: an existing cluster (its workers need this package).
    """
    bar = tqdm(total=int(sum(weights)), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True,
               mininterval=progress_interval())
    with bar:
        if workers <= 0 and scheduler is None:
            for task, w in zip(tasks, weights):
                result = fn(*task)
                bar.update(w)
                yield result
            return
        with _client(workers, scheduler) as client:
            from dask.distributed import as_completed

            futures = {client.submit(fn, *task, pure=False): w for task, w in zip(tasks, weights)}
            try:
                for fut in as_completed(futures):
                    result = fut.result()
                    bar.update(futures[fut])
                    yield result
            finally:
                client.cancel(list(futures))


def progress_interval() -> float:
    """Seconds between bar updates: live on a terminal, every 30 s in a log file (CI, nohup)."""
    return 0.1 if sys.stderr.isatty() else 30.0


@contextlib.contextmanager
def _client(workers: int, scheduler: str | None):
    from dask.distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)  # keep the progress bar readable
    if scheduler is not None:
        with Client(scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        yield client
