"""The teacher-cache contract: layout, versions, writer, reader and validation.

Depends on numpy, zarr, numcodecs and fsspec only. SCHEMA.md beside this file
is the single source of truth for the layout.
"""

from cache_schema.errors import (
    CacheError,
    CacheLockedError,
    IncompleteCacheError,
    LayoutMismatchError,
    NotACacheError,
    SchemaVersionError,
)
from cache_schema.layout import DONE, FAILED, PENDING, ArraySpec, Layout, objects_layout, rooms_layout, scenes_layout
from cache_schema.metadata import SCHEMA_NAME, SCHEMA_VERSION, CacheAttrs, TeacherRecord
from cache_schema.reader import ObjectCache, Room, RoomCache, SceneCache, SceneFrame, open_cache
from cache_schema.storage import locate
from cache_schema.writer import BlockWriter, CacheWriter

__all__ = [
    "SCHEMA_NAME", "SCHEMA_VERSION", "DONE", "FAILED", "PENDING",
    "ArraySpec", "Layout", "objects_layout", "scenes_layout", "rooms_layout", "CacheAttrs", "TeacherRecord",
    "CacheWriter", "BlockWriter", "open_cache", "ObjectCache", "SceneCache", "SceneFrame", "RoomCache", "Room", "locate",
    "CacheError", "CacheLockedError", "IncompleteCacheError", "LayoutMismatchError", "NotACacheError",
    "SchemaVersionError",
]
