"""Single-writer lock kept as a small JSON file (``writer.lock``) in the store root.

Only the build coordinator takes the lock. Its workers do not lock; they
present the lock's token (:meth:`WriterLock.verify`) so that a stray second
build is refused while the first one's workers write in parallel.

A lock is *stale*, and is taken over with a warning, when its holder ran on
this host and that process is gone, or when its heartbeat (refreshed by a
background thread every ``heartbeat_s``) is older than ``stale_after_s``.
Creation is atomic on local disks (``O_EXCL``) and on filesystems that support
exclusive create (``mode="xb"``); elsewhere a read-back of the token guards
against two writers starting in the same instant.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from typing import Any

from cache_schema.errors import CacheLockedError
from cache_schema.storage import Location

LOCK_NAME = "writer.lock"
DEFAULT_HEARTBEAT_S = 30.0
DEFAULT_STALE_AFTER_S = 600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_lock(loc: Location, retries: int = 3) -> dict[str, Any] | None:
    """The current lock record, or None when the store is unlocked.

    An unreadable record is read again a few times (a heartbeat may be rewriting
    it on a filesystem without atomic replace) before it is reported as corrupt.
    """
    for attempt in range(retries):
        try:
            with loc.fs.open(loc.path(LOCK_NAME), "rb") as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError):
            time.sleep(0.2 * (attempt + 1))
    return {"token": None, "host": "?", "pid": -1, "heartbeat": 0.0, "corrupt": True}


def _rewrite(loc: Location, data: bytes) -> None:
    """Replace the lock file's contents atomically where the filesystem allows it."""
    path = loc.path(LOCK_NAME)
    if loc.is_local:
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        loc.fs.pipe_file(path, data)  # object stores replace whole objects atomically


def stale_reason(record: dict[str, Any], stale_after_s: float = DEFAULT_STALE_AFTER_S) -> str | None:
    """Why a lock record no longer protects a live writer, or None if it may."""
    if record.get("corrupt"):
        return "the lock file is unreadable"
    if record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", -1))):
        return f"process {record.get('pid')} on this host has exited"
    age = time.time() - float(record.get("heartbeat", 0.0))
    if age > stale_after_s:
        return f"its heartbeat is {age:.0f} s old (stale after {stale_after_s:.0f} s)"
    return None


def describe(record: dict[str, Any]) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(record.get("started", 0))))
    return f"pid {record.get('pid')} on {record.get('host')} (started {started}, command: {record.get('command', '?')})"


class WriterLock:
    """Exclusive right to build one store; use as a context manager or call release()."""

    def __init__(self, loc: Location, heartbeat_s: float = DEFAULT_HEARTBEAT_S,
                 stale_after_s: float = DEFAULT_STALE_AFTER_S) -> None:
        self.loc = loc
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._record = {
            "token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
            "started": time.time(), "heartbeat": time.time(),
            "command": " ".join(sys.argv)[:200],
        }

    def acquire(self) -> WriterLock:
        existing = read_lock(self.loc)
        if existing is not None:
            reason = stale_reason(existing, self.stale_after_s)
            if reason is None:
                raise CacheLockedError(
                    f"{self.loc.url} is being written by {describe(existing)}. Wait for it to finish; "
                    f"if that build is dead, remove the lock with `cache unlock {self.loc.url}`."
                )
            warnings.warn(f"taking over a stale writer lock on {self.loc.url}: {reason}", stacklevel=2)
            self.loc.fs.rm(self.loc.path(LOCK_NAME))
        self._create()
        self._thread = threading.Thread(target=self._beat, name="cache-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _create(self) -> None:
        data = json.dumps(self._record).encode()
        path = self.loc.path(LOCK_NAME)
        self.loc.fs.makedirs(self.loc.root, exist_ok=True)
        if self.loc.is_local:
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raise CacheLockedError(f"{self.loc.url}: another writer took the lock just now") from None
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return
        try:
            with self.loc.fs.open(path, "xb") as f:
                f.write(data)
        except FileExistsError:
            raise CacheLockedError(f"{self.loc.url}: another writer took the lock just now") from None
        except (ValueError, NotImplementedError, TypeError):
            self.loc.fs.pipe_file(path, data)
        held = read_lock(self.loc)
        if held is None or held.get("token") != self.token:
            raise CacheLockedError(f"{self.loc.url}: another writer took the lock just now")

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            held = read_lock(self.loc)
            if held is None or held.get("token") != self.token:
                return  # lock was broken by hand; do not re-create it
            self._record["heartbeat"] = time.time()
            _rewrite(self.loc, json.dumps(self._record).encode())

    def verify(self) -> None:
        verify_token(self.loc, self.token)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        held = read_lock(self.loc)
        if held is not None and held.get("token") == self.token:
            self.loc.fs.rm(self.loc.path(LOCK_NAME))

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def verify_token(loc: Location, token: str) -> None:
    """Refuse to write unless the store's lock is held with ``token`` (worker side)."""
    held = read_lock(loc)
    if held is None:
        raise CacheLockedError(f"{loc.url} has no writer lock; workers may only write inside a running build")
    if held.get("token") != token:
        raise CacheLockedError(f"{loc.url} is locked by another build: {describe(held)}")


def break_lock(loc: Location) -> dict[str, Any] | None:
    """Remove the lock unconditionally (``cache unlock``); returns what it held."""
    held = read_lock(loc)
    if held is not None:
        loc.fs.rm(loc.path(LOCK_NAME))
    return held
