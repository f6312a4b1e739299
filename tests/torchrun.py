"""The one way the tests start real `torchrun` (gloo on the CPU, 2 processes by default)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def torchrun(*args: str, nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --nproc_per_node=N --master_port=<free> ARGS``; asserts it succeeded.

    ``args``: ``"-m", "train", "stage1", ...`` or a script path and its arguments. One thread per process, so two
    ranks share two cores without oversubscribing them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}",
           *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done
