"""The `cache` command as a user calls it (installed console script, real stores)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from cache_schema import SCHEMA_VERSION
from cache_schema.cli import main as cache_main


def test_info_text_names_kind_teachers_splits_and_bytes(objects_cache, capsys):
    url, _ = objects_cache
    assert cache_main(["info", url]) == 0
    out = capsys.readouterr().out
    for expected in (f"objects (teacher-cache {SCHEMA_VERSION})", "24: 23 done, 1 failed, 0 pending",
                     "test (12), train (12)",
                     "clip-tiny", "random init, NOT pretrained", "teachers/dinov2-tiny/image", "on disk"):
        assert expected in out, expected


def test_info_json_is_one_object_with_sizes_and_provenance(scenes_cache, capsys):
    url, data = scenes_cache
    assert cache_main(["info", url, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "scenes" and info["rows"] == 10
    assert info["num_points"] == sum(len(p) for p in data["ragged"]["points"])
    assert info["num_pairs"] == sum(len(p) for p in data["ragged"]["pairs/uv"])
    assert info["teachers"]["dinov2-tiny"]["dim"] == 8
    assert info["arrays"]["points"]["dtype"] == "float32" and info["arrays"]["frames/ids"]["dtype"] == "str"
    assert info["stored_bytes"] >= sum(a["stored_bytes"] for a in info["arrays"].values()) > 0
    assert info["build"]["state"] == "finalized" and info["dataset"]["name"] == "example-scenes"


def test_console_script_example_then_validate(tmp_path):
    exe = shutil.which("cache", path=str(__import__("pathlib").Path(sys.executable).parent))
    if exe is None:
        pytest.fail("the `cache` console script is not installed in this environment (run `make setup`)")
    url = str(tmp_path / "ex.zarr")
    run = subprocess.run([exe, "example", url, "--kind", "scenes"], capture_output=True, text=True)
    assert run.returncode == 0 and "wrote a synthetic scenes cache" in run.stdout
    run = subprocess.run([exe, "validate", url], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    again = subprocess.run([exe, "example", url], capture_output=True, text=True)
    assert again.returncode == 2 and "different settings" in again.stderr


def test_bad_storage_option_is_explained(capsys):
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        cache_main(["info", "x.zarr", "-o", "anon"])


@pytest.mark.parametrize("module,words", [("train.cli", "Train point-cloud students"),
                                          ("preprocess.cli", "Build teacher-feature caches")])
def test_typer_entry_points_explain_themselves(module, words):
    from typer.testing import CliRunner

    app = __import__(module, fromlist=["app"]).app
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and words in result.output


def test_storage_options_are_taken_from_anywhere_and_applied_to_storage_urls_only(monkeypatch):
    import fsspec.config

    from cache_schema.storage import split_storage_args, use_storage_options

    args, pairs = split_storage_args(["stage1", "-o", "anon=true", "--cache", "s3://b/c.zarr", "-oregion=eu",
                                      "--storage-option=key=k", "--storage-option", "x=1"])
    assert args == ["stage1", "--cache", "s3://b/c.zarr"] and pairs == ["anon=true", "region=eu", "key=k", "x=1"]
    assert split_storage_args(["stage1", "--help", "-o", "a=b"])[1] == []  # --help shows the option instead
    monkeypatch.setattr(fsspec.config, "conf", {})
    monkeypatch.setenv("FSSPEC_S3", "{}")  # recorded, so the test leaves the environment as it found it
    assert use_storage_options({"anon": True}, ["s3://b/c.zarr", "tcp://head:8786", "caches/local.zarr"]) == ["s3"]
    assert fsspec.config.conf == {"s3": {"anon": True}}
    assert json.loads(os.environ["FSSPEC_S3"]) == {"anon": True}  # for the processes it starts
