"""Shared fixtures: small example caches written through the real writer."""

from __future__ import annotations

import os
import uuid

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers: one thread each, so 2 cores are not 4 threads
    os.environ.setdefault("OMP_NUM_THREADS", "1")

from cache_schema.example import EXAMPLES, finish, write_blocks
from cache_schema.writer import CacheWriter


def build(url, kind: str = "objects", **chunking):
    """Write a complete example cache of ``kind`` at ``url``; returns (fingerprint, data)."""
    attrs, layout, data = EXAMPLES[kind]()
    with CacheWriter.create(url, attrs, layout, **chunking) as w:
        write_blocks(w, data)
        return finish(w, data), data


@pytest.fixture(params=["local", "file", "memory"])
def any_url(request, tmp_path):
    """The same cache through a local path, a file:// URL and fsspec's memory://."""
    if request.param == "local":
        return str(tmp_path / "cache.zarr")
    if request.param == "file":
        return f"file://{tmp_path}/cache.zarr"
    return f"memory://test-{uuid.uuid4().hex}/cache.zarr"


@pytest.fixture
def objects_cache(tmp_path):
    url = str(tmp_path / "objects.zarr")
    fingerprint, data = build(url, "objects", max_block_rows=8)
    return url, data


@pytest.fixture
def scenes_cache(tmp_path):
    url = str(tmp_path / "scenes.zarr")
    fingerprint, data = build(url, "scenes", max_block_rows=4)
    return url, data


@pytest.fixture(scope="session")
def small_demo_cache(tmp_path_factory):
    """A built demo objects cache (50 shapes, tiny teachers, 13 blocks of 4 rows) shared by trainer tests."""
    from preprocess.build_objects import ObjectBuildConfig, RunOptions, build_objects
    from preprocess.render import ViewConfig

    url = str(tmp_path_factory.mktemp("demo") / "demo.zarr")
    cfg = ObjectBuildConfig("demo", num_points=256, views=ViewConfig(num_views=2, resolution=32),
                            teachers=("clip-tiny", "dinov2-tiny"), num_captions=2, demo_per_class=5)
    build_objects(url, cfg, RunOptions(progress=False, block_rows=4))
    return url


@pytest.fixture(scope="session")
def small_scenes_cache(tmp_path_factory):
    """A built demo-scenes cache (6 frames, tiny DINOv2, 3 blocks of 2 frames: both torchrun ranks get frames)."""
    from preprocess.build_common import RunOptions
    from preprocess.build_scenes import SceneBuildConfig, build_scenes

    url = str(tmp_path_factory.mktemp("scenes") / "demo-scenes.zarr")
    build_scenes(url, SceneBuildConfig("demo-scenes", frames=6, teachers=("dinov2-tiny",), feature_size=(70, 42)),
                 RunOptions(progress=False, block_rows=2))
    return url


@pytest.fixture(scope="session")
def demo_rooms_cache(tmp_path_factory):
    """A built demo-rooms cache (12 furnished rooms of 6,000 points with boxes, 3 areas: 8 train, 4 test)."""
    from preprocess.build_common import RunOptions
    from preprocess.build_rooms import RoomBuildConfig, build_rooms

    url = str(tmp_path_factory.mktemp("rooms") / "demo-rooms.zarr")
    build_rooms(url, RoomBuildConfig("demo-rooms", rooms=12, room_points=6000, areas=3), RunOptions(progress=False))
    return url


@pytest.fixture(scope="session")
def stage1_ckpt(small_demo_cache, tmp_path_factory):
    """A 2-step stage-1 run's last.pt on the small demo cache."""
    import os

    from train.stages.stage1 import Stage1Config, train_stage1

    out = str(tmp_path_factory.mktemp("s1") / "run")
    train_stage1(Stage1Config(cache=small_demo_cache, out=out, steps=2, batch_size=4, num_points=128, workers=0),
                 progress=False)
    return os.path.join(out, "last.pt")
