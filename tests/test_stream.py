"""The streaming readers: every row once per epoch for any ranks x workers, class-mixed batches on a
class-sorted cache, determinism, resume, batches assembled in the workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cache_schema import open_cache
from cache_schema.example import example_objects, finish, write_blocks
from cache_schema.writer import CacheWriter
from train.data.objects import ObjectStream, StreamConfig
from train.data.sharding import Sharding, batches_per_epoch, batches_per_slot, slot_plan


def _write(url: str, num_rows: int, block_rows: int = 64, **kw) -> str:
    attrs, layout, data = example_objects(num_rows=num_rows, num_points=32, num_views=2, dim=8, **kw)
    with CacheWriter.create(url, attrs, layout, max_block_rows=block_rows) as w:
        write_blocks(w, data)
        finish(w, data)
    return url


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    return {n: _write(str(root / f"c{n}.zarr"), n) for n in (10, 80, 1000)}


def _train_rows(url: str) -> list[int]:
    return sorted(open_cache(url).done_rows("train").tolist())


def _epoch(url, rank, world, workers, batch=4, epoch=0, start=0, drop_last=False, window_rows=4096):
    ds = ObjectStream(url, StreamConfig(num_points=16, seed=3, window_rows=window_rows), rank=rank, world_size=world)
    ds.set_position(epoch, start, batch, drop_last=drop_last, num_workers=workers)
    return list(DataLoader(ds, batch_size=None, num_workers=workers))


def test_the_plan_deals_every_selected_row_once():
    rng = np.random.default_rng(0)
    for num_rows, block_rows, window in [(10, 4, 8), (80, 64, 4096), (1000, 64, 128), (1000, 8, 16)]:
        selected = rng.random(num_rows) < 0.7
        for world in (1, 2, 3):
            for workers in (0, 1, 2):
                seen, batches = [], []
                for rank in range(world):
                    s = Sharding(world, rank, workers, 5, False, window)
                    for w in range(max(workers, 1)):
                        plan = slot_plan(selected, block_rows, s, w, seed=1, epoch=2, batches_done=0)
                        seen += [int(r) for _, rows in plan.windows for r in rows]
                    kept = Sharding(world, rank, workers, 5, True, window)
                    batches.append(sum(slot_plan(selected, block_rows, kept, w, 1, 2, 0).max_batches
                                       for w in range(max(workers, 1))))
                assert sorted(seen) == np.flatnonzero(selected).tolist(), (num_rows, world, workers)
                # every rank has at least the common number of full batches the loop takes per epoch
                common = batches_per_epoch(int(selected.sum()), block_rows, Sharding(world, 0, workers, 5, True,
                                                                                        window))
                assert min(batches) == common and common >= (int(selected.sum()) // world - 5 * max(workers, 1)) // 5


@pytest.mark.parametrize("size", [10, 80, 1000])
@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("workers", [0, 1, 2])
def test_every_train_row_once_per_epoch(caches, size, world, workers):
    url = caches[size]
    rows = [r for rank in range(world) for b in _epoch(url, rank, world, workers) for r in b["row"].tolist()]
    assert sorted(rows) == _train_rows(url)
    # with drop_last, each rank has the common number of full batches, and no row comes twice
    kept = [_epoch(url, rank, world, workers, drop_last=True) for rank in range(world)]
    stream = ObjectStream(url, StreamConfig(num_points=16, seed=3), 0, world)
    stream.set_position(0, 0, 4, drop_last=True, num_workers=workers)
    common = stream.batches_per_epoch()  # what the loop takes from every rank
    assert min(len(k) for k in kept) == common >= (len(rows) // world - 4 * max(workers, 1)) // 4
    taken = [r for k in kept for b in k for r in b["row"].tolist()]
    assert len(taken) == len(set(taken)) and all(len(b["row"]) == 4 for k in kept for b in k)


def test_a_stream_in_a_dataloader_learns_its_worker_count(caches):
    url = caches[80]
    ds = ObjectStream(url, StreamConfig(num_points=16, seed=3))
    ds.set_position(0, 0, 4, drop_last=False)  # not told about the DataLoader's 2 workers
    rows = [r for b in DataLoader(ds, batch_size=None, num_workers=2) for r in b["row"].tolist()]
    assert sorted(rows) == _train_rows(url)


def test_persistent_workers_move_to_the_next_epoch_by_themselves(caches):
    url = caches[80]
    ds = ObjectStream(url, StreamConfig(num_points=16, seed=3))
    ds.set_position(0, 0, 4, drop_last=False, num_workers=2)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    epochs = [[r for b in loader for r in b["row"].tolist()] for _ in range(2)]
    assert epochs[0] == [r for b in _epoch(url, 0, 1, 2) for r in b["row"].tolist()]
    assert epochs[1] == [r for b in _epoch(url, 0, 1, 2, epoch=1) for r in b["row"].tolist()]
    assert epochs[0] != epochs[1] and sorted(epochs[1]) == _train_rows(url)


def test_same_seed_same_batches_and_new_epoch_new_order(caches):
    url = caches[80]
    a, b = _epoch(url, 0, 1, 2), _epoch(url, 0, 1, 2)
    assert all(torch.equal(x["points"], y["points"]) and torch.equal(x["row"], y["row"]) for x, y in zip(a, b))
    assert [x["row"].tolist() for x in _epoch(url, 0, 1, 2, epoch=1)] != [x["row"].tolist() for x in a]


def test_a_stream_without_contrastive_targets_reads_no_teacher_array_and_the_same_points(caches):
    url = caches[80]
    with_targets = ObjectStream(url, StreamConfig(num_points=16, seed=3))
    without = ObjectStream(url, StreamConfig(num_points=16, seed=3, contrastive=False))
    assert any(k.startswith("teachers/") for k in (a.path for a in with_targets.opened()[1].values()))
    assert not any(a.path.startswith("teachers/") for a in without.opened()[1].values())  # not even opened
    for s in (with_targets, without):
        s.set_position(0, 0, 4)
    for x, y in zip(with_targets, without):
        assert set(x) - set(y) == set(with_targets.terms) and len(with_targets.terms) > 0
        assert torch.equal(x["points"], y["points"]) and torch.equal(x["row"], y["row"])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_where_it_stopped(caches, workers):
    url = caches[1000]
    full = _epoch(url, 1, 2, workers, drop_last=True, window_rows=64)
    for done in (1, 3, 7, 20):
        rest = _epoch(url, 1, 2, workers, drop_last=True, start=done, window_rows=64)
        assert len(rest) == len(full) - done
        for x, y in zip(rest, full[done:]):
            assert torch.equal(x["row"], y["row"]) and torch.equal(x["points"], y["points"])
    assert batches_per_slot(5, [3, 1]) == ([3, 1], 1) and batches_per_slot(3, [3, 3]) == ([2, 1], 1)


def _distinct_labels(batches) -> float:
    return float(np.mean([len(set(b["label"].tolist())) for b in batches]))


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_on_a_class_sorted_cache_mix_classes_like_a_random_draw(tmp_path, workers):
    classes = tuple(f"class{i}" for i in range(8))
    url = _write(str(tmp_path / "sorted.zarr"), 2048, block_rows=64, classes=classes, class_sorted=True)
    cache = open_cache(url)
    labels = np.asarray(cache.array("label")[:])
    assert (np.diff(labels) >= 0).all()  # listed class after class
    batches = _epoch(url, 0, 1, workers, batch=64, drop_last=True)
    train = np.array(_train_rows(url))
    rng = np.random.default_rng(0)
    random_draw = np.mean([len(set(labels[rng.choice(train, 64, replace=False)])) for _ in range(200)])
    assert _distinct_labels(batches) >= 0.9 * random_draw
    # a window of 4 blocks, as the old reader mixed, gives about 4 classes per batch
    assert _distinct_labels(_epoch(url, 0, 1, workers, batch=64, drop_last=True, window_rows=128)) < 0.7 * random_draw


def test_batches_have_points_and_one_target_per_term(small_demo_cache):
    ds = ObjectStream(small_demo_cache, StreamConfig(num_points=100))
    ds.set_position(0, 0, 3)
    batch = next(iter(ds))
    assert batch["points"].shape == (3, 100, 3) and batch["points"].dtype == torch.float32
    assert set(ds.terms) == {"clip-tiny/text", "clip-tiny/image", "dinov2-tiny/image"}
    assert all(batch[t].shape == (3, 64) for t in ds.terms)
    again = ObjectStream(small_demo_cache, StreamConfig(num_points=100))
    again.set_position(0, 0, 3)
    assert torch.equal(batch["points"], next(iter(again))["points"])


def test_a_stream_opens_the_cache_once_per_process_not_per_epoch(caches, monkeypatch):
    import train.data.objects as objects

    ds = ObjectStream(caches[80], StreamConfig(num_points=16, seed=3))
    ds.set_position(0, 0, 4)
    calls = []
    real = objects.open_cache
    monkeypatch.setattr(objects, "open_cache", lambda *a, **k: calls.append(a) or real(*a, **k))
    epochs = [[r for b in ds for r in b["row"].tolist()] for _ in range(3)]
    assert len(calls) == 1 and all(sorted(e) == _train_rows(caches[80]) for e in epochs)
    rows = [r for b in DataLoader(ds, batch_size=None, num_workers=2) for r in b["row"].tolist()]
    assert sorted(rows) == _train_rows(caches[80])  # workers open their own (fork or pickle)
