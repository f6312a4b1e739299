"""Errors raised by the cache contract, each naming the store it concerns."""


class CacheError(Exception):
    """Base class: anything wrong with a cache store or its use."""


class SchemaVersionError(CacheError):
    """The store was written with a schema major version this reader does not know."""


class NotACacheError(CacheError):
    """The path holds no teacher cache (no root group or wrong `schema` attribute)."""


class CacheLockedError(CacheError):
    """Another writer holds the store's lock."""


class LayoutMismatchError(CacheError):
    """Data or an existing store does not match the declared layout."""


class IncompleteCacheError(CacheError):
    """The store has not been finalized (build running or killed)."""


class CorruptChunkError(CacheError):
    """Stored bytes that cannot be read back (a damaged or truncated chunk)."""
