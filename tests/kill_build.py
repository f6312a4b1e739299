"""Start a `preprocess` build in a child process and SIGKILL it once some rows are finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import zarr

from cache_schema import PENDING

PREPROCESS = [sys.executable, "-c", "from preprocess.cli import main; main()"]


def row_status(url: str, status_path: str) -> np.ndarray | None:
    try:
        return zarr.open_group(url, mode="r")[status_path][:]
    except Exception:  # not created yet
        return None


def kill_midway(args: list[str], url: str, status_path: str, finished: int, timeout: float = 240) -> np.ndarray:
    """Run ``preprocess *args --out url``, kill it after ``finished`` rows; the status it left (some pending)."""
    proc = subprocess.Popen([*PREPROCESS, *args, "--out", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = row_status(url, status_path)
        if status is not None and (status != PENDING).sum() >= finished:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    status = row_status(url, status_path)
    assert status is not None and (status == PENDING).any(), "the build finished before it could be killed"
    return status
