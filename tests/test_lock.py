"""One writer per store: a second is refused, a stale lock is taken over, workers need the token."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from cache_schema import BlockWriter, CacheLockedError, CacheWriter, locate
from cache_schema.cli import main as cache_main
from cache_schema.example import example_objects, finish, write_blocks
from cache_schema.lock import LOCK_NAME, read_lock


def test_second_writer_is_refused(tmp_path):
    attrs, layout, data = example_objects()
    url = str(tmp_path / "c.zarr")
    with CacheWriter.create(url, attrs, layout):
        with pytest.raises(CacheLockedError, match=r"is being written by pid \d+ on .*cache unlock"):
            CacheWriter.create(url, attrs, layout)
    with CacheWriter.create(url, attrs, layout) as w:  # released on exit: a new writer may start
        write_blocks(w, data)
        finish(w, data)
    assert read_lock(locate(url)) is None


def _write_lock(url, **record):
    loc = locate(url)
    loc.fs.makedirs(loc.root, exist_ok=True)
    base = {"token": "old", "host": "elsewhere", "pid": 1, "started": time.time(), "heartbeat": time.time()}
    loc.fs.pipe_file(loc.path(LOCK_NAME), json.dumps({**base, **record}).encode())


def test_lock_of_a_dead_process_on_this_host_is_recovered(tmp_path):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    url = str(tmp_path / "c.zarr")
    _write_lock(url, host=socket.gethostname(), pid=int(dead.stdout))
    attrs, layout, _ = example_objects()
    with pytest.warns(UserWarning, match="has exited"):
        w = CacheWriter.create(url, attrs, layout)
    assert read_lock(locate(url))["token"] == w.token
    w.close()


def test_lock_with_an_old_heartbeat_is_recovered_and_a_fresh_one_is_not(tmp_path):
    url = str(tmp_path / "c.zarr")
    attrs, layout, _ = example_objects()
    _write_lock(url, heartbeat=time.time() - 5)  # another host, alive 5 s ago
    with pytest.raises(CacheLockedError):
        CacheWriter.create(url, attrs, layout, stale_after_s=60)
    _write_lock(url, heartbeat=time.time() - 120)
    with pytest.warns(UserWarning, match="heartbeat is 1[12]\\d s old"):
        CacheWriter.create(url, attrs, layout, stale_after_s=60).close()


def test_heartbeat_is_refreshed_while_writing(tmp_path):
    attrs, layout, _ = example_objects()
    url = str(tmp_path / "c.zarr")
    with CacheWriter.create(url, attrs, layout, heartbeat_s=0.05):
        first = read_lock(locate(url))["heartbeat"]
        time.sleep(0.3)
        assert read_lock(locate(url))["heartbeat"] > first


def test_workers_need_the_builds_token(tmp_path):
    attrs, layout, data = example_objects()
    url = str(tmp_path / "c.zarr")
    with pytest.raises(CacheLockedError, match="no writer lock"):
        BlockWriter.attach(url, "whatever")
    with CacheWriter.create(url, attrs, layout, max_block_rows=8) as w:
        with pytest.raises(CacheLockedError, match="locked by another build"):
            BlockWriter.attach(url, "not-the-token")
        worker = BlockWriter.attach(url, w.token)
        write_blocks(worker, data, blocks=[1])
        assert w.pending_blocks() == [0, 2]


def test_cache_unlock_removes_a_lock(tmp_path, capsys):
    url = str(tmp_path / "c.zarr")
    _write_lock(url, pid=4242)
    assert cache_main(["unlock", url]) == 0
    assert "pid 4242" in capsys.readouterr().out
    assert read_lock(locate(url)) is None


RACER = """
import sys, time
from cache_schema import CacheLockedError, CacheWriter
from cache_schema.example import example_objects
attrs, layout, _ = example_objects()
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # start together
try:
    w = CacheWriter.create(sys.argv[1], attrs, layout)
except CacheLockedError:
    print("refused")
else:
    time.sleep(1.0)
    w.close()
    print("won")
"""


def test_two_writers_starting_together_one_wins(tmp_path):
    url = str(tmp_path / "c.zarr")
    start = str(time.time() + 1.5)
    procs = [subprocess.Popen([sys.executable, "-c", RACER, url, start], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outcomes == ["refused", "won"]
