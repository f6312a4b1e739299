"""The streaming reader: exactly-once epochs across workers and ranks, determinism, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from train.data.objects import ObjectStream, StreamConfig
from train.data.sharding import batches_per_slot, shard_blocks


@pytest.fixture
def demo_cache(small_demo_cache):
    return small_demo_cache


def _rows(url, rank, world, workers, epoch=0, batch=4, start=0):
    ds = ObjectStream(url, StreamConfig(num_points=64, seed=3), rank=rank, world_size=world)
    ds.set_position(epoch, start, batch, workers, drop_last=False)
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, drop_last=False)
    return [r for b in loader for r in b["row"].tolist()]


def test_shards_cover_every_block_once():
    for blocks, world, workers in [(10, 2, 2), (7, 1, 3), (3, 2, 2)]:
        seen = sorted(b for r in range(world) for w in range(workers)
                      for b in shard_blocks(blocks, world, r, workers, w, seed=1, epoch=5))
        assert seen == list(range(blocks))
    assert shard_blocks(10, 1, 0, 1, 0, 1, 0) != shard_blocks(10, 1, 0, 1, 0, 1, 1)


def test_every_train_row_once_per_epoch_across_2_ranks_x_2_workers(demo_cache):
    from cache_schema import open_cache

    train = sorted(open_cache(demo_cache).split("train").tolist())
    rows = _rows(demo_cache, 0, 2, 2) + _rows(demo_cache, 1, 2, 2)
    assert sorted(rows) == train


def test_same_seed_same_order_and_new_epoch_new_order(demo_cache):
    assert _rows(demo_cache, 0, 1, 2) == _rows(demo_cache, 0, 1, 2)
    assert _rows(demo_cache, 0, 1, 2, epoch=1) != _rows(demo_cache, 0, 1, 2)


def test_resume_continues_where_it_stopped(demo_cache):
    full = _rows(demo_cache, 0, 1, 2, batch=4)
    for done in (1, 3, 7, 9):
        assert _rows(demo_cache, 0, 1, 2, batch=4, start=done) == full[done * 4:]
    assert batches_per_slot(5, [3, 1]) == ([3, 1], 1) and batches_per_slot(3, [3, 3]) == ([2, 1], 1)


def test_samples_have_points_and_one_target_per_term(demo_cache):
    ds = ObjectStream(demo_cache, StreamConfig(num_points=100))
    sample = next(iter(ds))
    assert sample["points"].shape == (100, 3) and sample["points"].dtype == torch.float32
    assert set(ds.terms) == {"clip-tiny/text", "clip-tiny/image", "dinov2-tiny/image"}
    assert all(sample[t].shape == (64,) for t in ds.terms)
    again = next(iter(ObjectStream(demo_cache, StreamConfig(num_points=100))))
    assert np.array_equal(sample["points"], again["points"])
