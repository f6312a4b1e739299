"""A build killed with SIGKILL and run again ends with the same content as an uninterrupted build."""

from __future__ import annotations

import pathlib
import subprocess

from kill_build import PREPROCESS, kill_midway

from cache_schema import PENDING, open_cache

ARGS = ["objects", "demo", "--teachers", "tiny", "--points", "256", "--views", "3", "--resolution", "48",
        "--num-captions", "2", "--max-per-class", "4", "--block-rows", "4", "--no-progress"]


def test_sigkill_then_rerun_equals_an_uninterrupted_build(tmp_path):
    killed = str(tmp_path / "killed.zarr")
    status = kill_midway(ARGS, killed, "status", finished=8)
    finished_before = int((status != PENDING).sum())

    rerun = subprocess.run([*PREPROCESS, *ARGS, "--out", killed], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "taking over a stale writer lock" in rerun.stderr
    assert f"{40} done" in rerun.stdout and finished_before < 40

    clean = str(tmp_path / "clean.zarr")
    run = subprocess.run([*PREPROCESS, *ARGS, "--out", clean], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert open_cache(killed).fingerprint == open_cache(clean).fingerprint

    again = subprocess.run([*PREPROCESS, *ARGS, "--out", clean], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_cli_explains_bad_arguments(tmp_path):
    run = subprocess.run([*PREPROCESS, "objects", "shapenet", "--root", str(tmp_path / "nowhere"), "--teachers",
                          "tiny", "--out", str(tmp_path / "x.zarr")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "ShapeNet root" in run.stderr and "is not a folder" in run.stderr
    assert not pathlib.Path(tmp_path / "x.zarr").exists()
