"""Where a cache lives: a local path or any fsspec URL (file://, memory://, s3://, ...).

One :class:`Location` gives both views of the same place: a zarr store for the
arrays and an fsspec filesystem for the few plain files the contract keeps
beside them (the writer lock) and for listing chunk files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
import zarr
from zarr.storage import FsspecStore, LocalStore


@dataclass(frozen=True)
class Location:
    """A cache's address: ``url`` as the user gave it, ``fs`` + ``root`` for plain file access."""

    url: str
    fs: fsspec.AbstractFileSystem
    root: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return "file" in _protocols(self.fs)

    def path(self, key: str) -> str:
        return f"{self.root.rstrip('/')}/{key}"

    def zarr_store(self, read_only: bool) -> zarr.abc.store.Store:
        if self.is_local:
            return LocalStore(self.root, read_only=read_only)
        return FsspecStore.from_url(self.url, read_only=read_only, storage_options=self.storage_options or None)

    def exists(self) -> bool:
        return self.fs.exists(self.path("zarr.json"))


def _protocols(fs: fsspec.AbstractFileSystem) -> tuple[str, ...]:
    p = fs.protocol
    return (p,) if isinstance(p, str) else tuple(p)


def locate(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> Location:
    """Resolve a path or URL; ``storage_options`` go to fsspec (e.g. ``{"anon": True}`` for S3)."""
    url = os.fspath(url)
    opts = dict(storage_options or {})
    fs, root = fsspec.core.url_to_fs(url, **opts)
    if "file" in _protocols(fs):
        root = os.path.abspath(root)
    return Location(url=url, fs=fs, root=root, storage_options=opts)
