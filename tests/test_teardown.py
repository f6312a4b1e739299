"""A finished build is never lost to its Dask cluster: closing the cluster may fail or time out (one warning line,
the cache is finalized all the same), and a worker process that dies under a block makes that block an
environment failure, which the next run builds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import dask
import dask.distributed  # noqa: F401 - its config defaults, before dask.config.set (which drops new keys)
import numpy as np

from cache_schema import DONE, open_cache
from cache_schema.validate import validate
from preprocess import build_objects as objects_module
from preprocess.build_common import RunOptions
from preprocess.build_objects import ObjectBuildConfig, build_block, build_objects
from preprocess.render import ViewConfig

TINY = ["--teachers", "clip-tiny", "--points", "64", "--views", "2", "--resolution", "32", "--num-captions", "1",
        "--max-per-class", "1", "--demo-per-class", "1", "--block-rows", "4", "--no-progress"]
# `preprocess` whose local cluster times out while closing, as on a loaded machine: the real close, given 10 ms
CLOSE_TIMES_OUT = """
from distributed import LocalCluster
real_close = LocalCluster.close
LocalCluster.close = lambda self, timeout=None: real_close(self, timeout=0.01)
from preprocess.cli import main
main()
"""


def test_a_cluster_that_times_out_while_closing_leaves_a_finalized_cache_and_one_warning_line(tmp_path):
    url = str(tmp_path / "c.zarr")
    run = subprocess.run([sys.executable, "-c", CLOSE_TIMES_OUT, "objects", "demo", *TINY, "--workers", "1",
                          "--out", url], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert re.fullmatch(r"warning: the Dask cluster did not close cleanly \(TimeoutError[^)\n]*\); nothing the "
                        r"build wrote is affected\n", run.stderr), run.stderr  # one line, no traceback
    assert "fingerprint sha256:" in run.stdout
    cache = open_cache(url)  # finalized: splits, class prompts and fingerprint were written
    assert (cache.status == DONE).all() and len(cache.status) == 10 and cache.split_names
    assert validate(url) == []


DOOMED = 1  # the block whose worker dies


def build_or_die(*task):
    """``build_block``, except that block DOOMED kills the worker process running it (as an OOM killer would)."""
    if task[4] == DOOMED:
        os.kill(os.getpid(), signal.SIGKILL)
    return build_block(*task)


def test_a_worker_killed_under_a_block_fails_that_block_for_the_environment_and_the_rerun_builds_it(
        tmp_path, monkeypatch):
    cfg = ObjectBuildConfig("demo", num_points=64, views=ViewConfig(num_views=2, resolution=32),
                            teachers=("clip-tiny",), num_captions=1, max_per_class=1, demo_per_class=1)
    url = str(tmp_path / "c.zarr")
    monkeypatch.setattr(objects_module, "build_block", build_or_die)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # the first death is final (Dask: 3)
        first = build_objects(url, cfg, RunOptions(progress=False, block_rows=2, workers=1, torch_threads=1))
    assert not first.complete and "NOT finalized" in str(first)
    assert set(first.failed) == {"environment: WorkerLost"}  # other blocks went on
    cache = open_cache(url, allow_incomplete=True)
    reasons = cache.array("status_reason")[:]
    lost = np.array([str(r).startswith("environment: WorkerLost: the Dask worker running build_or_die died "
                                       "(1 attempt, last on tcp://") for r in reasons]).reshape(-1, 2)  # (blocks, rows)
    assert lost[DOOMED].all() and (lost.all(axis=1) == lost.any(axis=1)).all()  # whole blocks
    assert (cache.status.reshape(-1, 2)[~lost] == DONE).all() and lost.sum() < lost.size

    monkeypatch.setattr(objects_module, "build_block", build_block)
    second = build_objects(url, cfg, RunOptions(progress=False, block_rows=2))
    assert second.complete and second.done == 10
    final = open_cache(url)
    assert len(set(final.ids)) == 10 and "" not in set(final.ids) and validate(url) == []
