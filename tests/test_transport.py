"""Batches packed into one buffer for the trip out of a DataLoader worker come back equal, as views."""

from __future__ import annotations

import pickle

import numpy as np
import torch
from torch.utils.data import DataLoader

from train.data.objects import ObjectStream, StreamConfig
from train.data.transport import PackedBatch, keep_packed, unpack


def test_packing_keeps_every_array_dtype_shape_and_value():
    rng = np.random.default_rng(0)
    arrays = {"points": rng.normal(size=(3, 5, 3)).astype(np.float32), "label": np.array([1, 2, 3], np.int64),
              "odd": rng.integers(0, 255, 7).astype(np.uint8), "half": rng.normal(size=(2, 3)).astype(np.float16),
              "t": torch.arange(6, dtype=torch.int32).reshape(2, 3)}
    packed = pickle.loads(pickle.dumps(PackedBatch.pack(arrays)))
    assert set(packed) == set(arrays) and len(packed) == 5
    for k, v in arrays.items():
        expected = v if isinstance(v, torch.Tensor) else torch.from_numpy(v)
        assert packed[k].dtype == expected.dtype and torch.equal(packed[k], expected), k
    assert packed["points"].untyped_storage().data_ptr() == packed.buffer.untyped_storage().data_ptr()  # a view


def test_packed_batches_from_workers_equal_plain_ones(small_demo_cache):
    def epoch(collate):
        ds = ObjectStream(small_demo_cache, StreamConfig(num_points=64, seed=1))
        ds.set_position(0, 0, 4, num_workers=2)
        kw = {"collate_fn": collate} if collate else {}  # PyTorch's default turns the mapping into a plain dict
        return list(DataLoader(ds, batch_size=None, num_workers=2, **kw))

    packed, plain = epoch(keep_packed), epoch(None)
    assert len(packed) == len(plain) > 0
    assert all(isinstance(b, PackedBatch) for b in packed) and all(type(b) is dict for b in plain)
    for a, b in zip(packed, plain):
        a = unpack(a)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
