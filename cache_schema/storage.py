"""Where a cache lives: a local path or any fsspec URL (file://, memory://, s3://, ...).

One :class:`Location` gives both views of the same place: a zarr store for the
arrays and an fsspec filesystem for the few plain files the contract keeps
beside them (the writer lock) and for listing chunk files.
"""

from __future__ import annotations

import json
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


STORAGE_FLAGS = ("-o", "--storage-option")


def parse_storage_options(pairs: list[str]) -> dict[str, Any]:
    """``["anon=true", 'client_kwargs={"endpoint_url": "http://..."}']`` -> a dict (values parsed as JSON when
    they are JSON)."""
    opts: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--storage-option expects KEY=VALUE, got {pair!r}")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    return opts


def split_storage_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Take every ``-o KEY=VALUE`` / ``--storage-option KEY=VALUE`` out of a command line, wherever it stands."""
    if "--help" in argv:  # let --help list the option
        return argv, []
    rest, pairs = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in STORAGE_FLAGS:
            if i + 1 >= len(argv):
                raise ValueError(f"{arg} needs KEY=VALUE")
            pairs.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--storage-option="):
            pairs.append(arg.split("=", 1)[1])
        elif arg.startswith("-o") and len(arg) > 2 and not arg.startswith("--"):
            pairs.append(arg[2:])
        else:
            rest.append(arg)
        i += 1
    return rest, pairs


def use_storage_options(options: dict[str, Any], urls: list[str]) -> list[str]:
    """Make ``options`` the fsspec defaults for the protocols of ``urls`` (remote ones), in this process and in
    the processes it starts (data-loader workers, local Dask workers read ``FSSPEC_<PROTOCOL>`` at import).

    Every cache a command opens then gets them, without each function passing them on. Returns the protocols.
    """
    import fsspec.config

    known = set(fsspec.available_protocols())  # not tcp:// (a --scheduler address) or other non-storage URLs
    protocols = sorted({p for u in urls if "://" in u
                        for p in [fsspec.core.split_protocol(u)[0]] if p in known and p not in ("file", "local")})
    for proto in protocols:
        fsspec.config.conf.setdefault(proto, {}).update(options)
        merged = {**json.loads(os.environ.get(f"FSSPEC_{proto.upper()}", "{}")), **options}
        os.environ[f"FSSPEC_{proto.upper()}"] = json.dumps(merged)
    return protocols


def apply_storage_args(argv: list[str] | tuple[str, ...] | None) -> list[str]:
    """The command line without its ``-o/--storage-option KEY=VALUE`` pairs (taken from anywhere on it), which
    become the fsspec defaults for every remote URL on the line (see :func:`use_storage_options`)."""
    import sys

    args, pairs = split_storage_args(list(argv) if argv is not None else sys.argv[1:])
    if pairs:
        try:
            use_storage_options(parse_storage_options(pairs), args)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    return args
