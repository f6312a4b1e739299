"""Readers refuse a schema major version they do not know, naming both versions."""

from __future__ import annotations

import pytest
import zarr

from cache_schema import SCHEMA_VERSION, NotACacheError, SchemaVersionError, open_cache
from cache_schema.cli import main as cache_main
from cache_schema.validate import validate


def _set_attr(url, key, value):
    g = zarr.open_group(url, mode="r+")
    g.attrs[key] = value


def test_unknown_major_version_is_refused(objects_cache):
    url, _ = objects_cache
    _set_attr(url, "schema_version", "2.0")
    with pytest.raises(SchemaVersionError) as e:
        open_cache(url)
    assert "2.0" in str(e.value) and SCHEMA_VERSION in str(e.value) and "1.x" in str(e.value)
    problems = validate(url)
    assert len(problems) == 1 and "schema_version 2.0" in problems[0].what


def test_newer_minor_version_is_read(objects_cache):
    url, _ = objects_cache
    _set_attr(url, "schema_version", "1.7")
    assert open_cache(url).num_rows == 24


def test_foreign_zarr_group_is_not_a_cache(tmp_path, capsys):
    url = str(tmp_path / "other.zarr")
    zarr.open_group(url, mode="w").attrs["schema"] = "something-else"
    with pytest.raises(NotACacheError, match="not a teacher-cache store"):
        open_cache(url)
    assert cache_main(["info", url]) == 2
    assert "not a teacher-cache store" in capsys.readouterr().err
