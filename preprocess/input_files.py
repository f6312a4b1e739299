"""Opening dataset files safely: nothing outside the dataset root, nothing missing or empty.

Datasets are shared folders full of symlinks (a model linked from another
synset, a mount elsewhere). A link that leaves the dataset root could make a
build read any file the worker can read (``/etc/passwd`` parsed as a mesh), so
every input a builder opens goes through :func:`checked_path` first.
"""

from __future__ import annotations

import os

from preprocess.errors import BadInput


def checked_path(path: str, root: str | None, what: str = "file") -> str:
    """``path`` once it is known to exist, to be non-empty and to resolve (symlinks followed) inside ``root``.

    Raises :class:`BadInput` with its own reason for each case: ``outside dataset root``, ``missing file``,
    ``empty file``. ``root=None`` (built-in data) checks existence only.
    """
    if root is not None and not is_inside(path, root):
        raise BadInput(f"outside dataset root: {path} resolves to {os.path.realpath(path)}, "
                       f"which is not under {os.path.realpath(root)}")
    if not os.path.exists(path):
        raise BadInput(f"missing {what}: {path}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise BadInput(f"empty file: {path}")
    return path


def is_inside(path: str, root: str) -> bool:
    """True when ``path`` (symlinks followed, ``..`` resolved) lies under ``root``."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)
