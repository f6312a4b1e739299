"""Sharing for real: a cache on an S3-compatible server (moto, on loopback) read through s3://."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
from conftest import build

from cache_schema import open_cache
from cache_schema.cli import main as cache_main
from cache_schema.validate import validate

pytest.importorskip("s3fs", reason="the `test` extra installs s3fs")
moto_server = pytest.importorskip("moto.server", reason="the `test` extra installs moto[server]")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    bucket = f"team-caches-{_free_port()}"
    fs.mkdir(bucket)
    return fs, bucket, {"client_kwargs": {"endpoint_url": s3_endpoint}}


def test_uploaded_cache_is_read_and_checked_through_s3(tmp_path, s3_env, capsys):
    fs, bucket, opts = s3_env
    local = str(tmp_path / "scenes.zarr")
    fingerprint, data = build(local, "scenes", max_block_rows=4)
    url = f"s3://{bucket}/scenes.zarr"
    fs.put(local, url, recursive=True)

    cache = open_cache(url, storage_options=opts)
    assert cache.fingerprint == fingerprint
    f = cache.frame(6)
    np.testing.assert_allclose(f.points, data["ragged"]["points"][6].astype(np.float32))
    np.testing.assert_array_equal(f.pair_point, data["ragged"]["pairs/point"][6])
    assert validate(url, storage_options=opts) == []

    # The CLI, with the endpoint given as a storage option and through AWS_ENDPOINT_URL alone.
    assert cache_main(["info", url, "--json", "-o", f"client_kwargs={json.dumps(opts['client_kwargs'])}"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "scenes" and info["build"]["fingerprint"] == fingerprint and info["stored_bytes"] > 0
    assert cache_main(["validate", url]) == 0
    assert "valid" in capsys.readouterr().out


def test_cache_written_directly_to_s3(s3_env):
    fs, bucket, opts = s3_env
    url = f"s3://{bucket}/objects.zarr"
    from cache_schema import CacheLockedError, CacheWriter
    from cache_schema.example import example_objects, finish, write_blocks

    attrs, layout, data = example_objects()
    with CacheWriter.create(url, attrs, layout, storage_options=opts, max_block_rows=8) as w:
        with pytest.raises(CacheLockedError):
            CacheWriter.create(url, attrs, layout, storage_options=opts)
        write_blocks(w, data)
        fingerprint = finish(w, data)
    assert not fs.exists(f"{bucket}/objects.zarr/writer.lock")
    fp_local, _ = build(f"memory://s3-compare-{bucket}/o.zarr", "objects", max_block_rows=8)
    assert fingerprint == fp_local
    assert validate(url, storage_options=opts) == []


def test_storage_option_reaches_every_command_that_opens_a_cache(tmp_path, s3_env, monkeypatch):
    """`-o` after the subcommand, in preprocess, train and cache alike; nothing else tells them the endpoint."""
    import os
    import subprocess
    import sys

    fs, bucket, opts = s3_env
    monkeypatch.delenv("AWS_ENDPOINT_URL")  # only -o knows where the server is
    o = ["-o", f"client_kwargs={json.dumps(opts['client_kwargs'])}"]
    url = f"s3://{bucket}/demo.zarr"

    def run(tool: str, *args: str) -> subprocess.CompletedProcess:
        code = f"import sys; from {tool}.cli import main; sys.exit(main())"
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})

    built = run("preprocess", "objects", "demo", "--out", url, "--points", "256", "--views", "2", "--resolution",
                "32", "--num-captions", "1", "--max-per-class", "2", "--demo-per-class", "2", "--no-progress", *o)
    assert built.returncode == 0, built.stderr
    assert fs.exists(f"{bucket}/demo.zarr/zarr.json")
    trained = run("train", "stage1", "--cache", url, "--out", str(tmp_path / "s1"), "--steps", "1", "--batch-size",
                  "4", "--num-points", "128", "--workers", "0", "--no-progress", *o)
    assert trained.returncode == 0, trained.stderr
    assert (tmp_path / "s1" / "last.pt").exists()
    checked = run("cache_schema", "validate", url, *o)
    assert checked.returncode == 0 and "valid" in checked.stdout, checked.stdout + checked.stderr
