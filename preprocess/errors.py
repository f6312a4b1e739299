"""The two ways a row can fail, kept apart so a resumed build knows which to retry.

:class:`BadInput` is the row's own fault (a broken mesh, a missing image): the
row is stored ``failed`` with the reason and never retried. A
:class:`EnvironmentFailure` is the machine's (no OpenGL context, CUDA out of
memory, a teacher that cannot load): its rows are stored ``failed`` with a
reason starting ``environment:``, and the next run builds them again.
"""

from __future__ import annotations

from cache_schema.layout import RETRY_PREFIX as ENVIRONMENT_PREFIX


class BadInput(Exception):
    """An input that cannot become a row; the message is stored as the row's reason."""


class EnvironmentFailure(RuntimeError):
    """The machine, not the input, stopped a row; the row is retried on the next run."""


def is_environment_reason(reason: str) -> bool:
    """True for the stored reason of a row that failed for environmental reasons."""
    return reason.startswith(ENVIRONMENT_PREFIX)


def environment_reason(err: BaseException) -> str:
    return f"{ENVIRONMENT_PREFIX}{type(err).__name__}: {err}"[:500]


def is_environment_error(err: BaseException) -> bool:
    """Errors that say nothing about the input: our own, CUDA running out of memory, OpenGL context failures."""
    if isinstance(err, (EnvironmentFailure, MemoryError)):
        return True
    name = type(err).__name__
    text = str(err)
    return ("OutOfMemoryError" in name or "CUDA out of memory" in text
            or name in ("GLError", "NullFunctionError") or "EGL" in name or "OSMesa" in text)
