"""The batch reader thread: same batches in the same order as reading inline, across epochs cut short,
with workers; reads the next epoch ahead when told to; errors reach the consumer; closing stops it."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from torch.utils.data import DataLoader

from cache_schema.example import example_objects, finish, write_blocks
from cache_schema.writer import CacheWriter
from train.data.objects import ObjectStream, StreamConfig
from train.data.prefetch import BatchReader


@pytest.fixture(scope="module")
def cache_url(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("prefetch") / "c.zarr")
    attrs, layout, data = example_objects(num_rows=300, num_points=32, num_views=2, dim=8)
    with CacheWriter.create(url, attrs, layout, max_block_rows=32) as w:
        write_blocks(w, data)
        finish(w, data)
    return url


def _epochs(url, prefetch_bytes, workers, cut, epochs=3):
    """Rows and points of each epoch, the consumer taking ``cut`` batches of each (None: all), as the loop does."""
    ds = ObjectStream(url, StreamConfig(num_points=16, seed=5, window_rows=64, prefetch_bytes=prefetch_bytes))
    ds.set_position(0, 0, 8, drop_last=True, num_workers=workers, continuous=True)
    loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    out = []
    for _ in range(epochs):
        taken = []
        for i, b in enumerate(loader):
            if i == cut:
                break
            taken.append((b["row"].clone(), b["points"].clone()))
        out.append(taken)
    ds.close()
    return out


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("cut", [None, 5])
def test_read_ahead_gives_the_inline_batches(cache_url, workers, cut):
    inline = _epochs(cache_url, 0, workers, cut)
    ahead = _epochs(cache_url, 1 << 20, workers, cut)
    tiny_budget = _epochs(cache_url, 1, workers, cut)  # one batch ahead
    assert [len(e) for e in inline] == [len(e) for e in ahead] == [len(e) for e in tiny_budget]
    for epoch in inline:
        rows = torch.cat([r for r, _ in epoch]).tolist()
        assert len(rows) == len(set(rows)) and (len(epoch) == 5 if cut else len(rows) > 100)
    for ref, *others in zip(inline, ahead, tiny_budget):
        for batches in others:
            for (rows, pts), (rows2, pts2) in zip(ref, batches):
                assert torch.equal(rows, rows2) and torch.equal(pts, pts2)
    assert inline[0][0][0].tolist() != inline[1][0][0].tolist()  # epochs differ: the next epoch, not a replay


def test_the_next_epoch_is_read_while_the_consumer_works(cache_url):
    ds = ObjectStream(cache_url, StreamConfig(num_points=16, window_rows=64))
    ds.set_position(0, 0, 8, continuous=True)
    first = list(ds)
    reader = ds._batch_reader[1]
    deadline = time.monotonic() + 30
    while not any(label == 1 for label, *_ in list(reader.ready)) and time.monotonic() < deadline:
        time.sleep(0.01)  # the consumer "trains"; the reader goes on into epoch 1 meanwhile
    assert any(label == 1 for label, *_ in list(reader.ready)), "epoch 1 was not read ahead"
    assert [b["row"].tolist() for b in list(ds)] != [b["row"].tolist() for b in first]
    ds.close()
    assert not reader.thread.is_alive()


def test_one_pass_streams_do_not_read_ahead(cache_url):
    ds = ObjectStream(cache_url, StreamConfig(num_points=16, window_rows=64))
    ds.set_position(0, 0, 8)  # not continuous: an evaluation pass
    list(ds)
    reader = ds._batch_reader[1]
    reader.thread.join(timeout=10)
    assert not reader.thread.is_alive() and not reader.ready


def test_an_error_while_reading_ahead_reaches_the_consumer_in_place():
    def batches(epoch, done):
        yield {"x": torch.zeros(1)}
        if epoch == 1:
            raise OSError("chunk 3 is damaged")
        yield {"x": torch.ones(1)}

    reader = BatchReader(batches, 0, 0, 1 << 20, lambda b: 4, continuous=True)
    assert len(list(reader.epoch(0))) == 2  # epoch 0 is whole even though epoch 1 already failed
    with pytest.raises(OSError, match="chunk 3"):
        list(reader.epoch(1))
    reader.close()


def test_closing_stops_a_producer_blocked_on_its_budget():
    started = threading.Event()

    def endless(epoch, done):
        started.set()
        while True:
            yield {"x": torch.zeros(256)}

    reader = BatchReader(endless, 0, 0, 2048, lambda b: 1024, continuous=True)
    started.wait(5)
    time.sleep(0.1)
    assert len(reader.ready) == 2  # the budget holds it: two batches ahead, no more
    reader.close()
    assert not reader.thread.is_alive()
