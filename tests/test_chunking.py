"""Chunk shapes follow bytes, and row blocks never split a chunk."""

from __future__ import annotations

import numpy as np
import pytest

from cache_schema.chunking import chunk_for, plan_chunks, pow2_ceil, pow2_floor
from cache_schema.layout import ArraySpec, objects_layout, scenes_layout
from cache_schema.metadata import TeacherRecord


def _teachers(d=768):
    return {"clip": TeacherRecord("clip", "open_clip", "ViT-B-16", "laion2b", "x", d, ("image", "text", "class_text"))}


def test_pow2_helpers_match_brute_force():
    for x in [1, 1.5, 2, 3, 7, 8, 9, 1000, 4096]:
        assert pow2_floor(x) == max(2**k for k in range(20) if 2**k <= max(x, 1))
        assert pow2_ceil(x) == min(2**k for k in range(20) if 2**k >= x)


@pytest.mark.parametrize("target", [2**16, 2**20, 4 * 2**20, 16 * 2**20])
def test_chunks_hold_about_target_bytes_and_divide_the_block(target):
    layout = objects_layout(52_000, 8192, 12, 5, _teachers(), num_classes=55, image_hw=(224, 224),
                            store_rgb=True, store_depth=True, point_dtype="float32")
    plan = plan_chunks(layout, target, max_block_rows=1024)
    for spec in layout.by_axis("row"):
        chunk = plan.chunks[spec.path]
        nbytes = np.prod(chunk) * (64 if spec.dtype == "str" else np.dtype(spec.dtype).itemsize)
        assert plan.block_rows % chunk[0] == 0, spec.path
        single_view = chunk[0] == 1 and len(chunk) > 1 and chunk[1] == 1  # split no further than one view
        assert nbytes <= target or single_view, (spec.path, chunk, nbytes)
        # at least half the target unless the whole block is smaller than that
        assert nbytes * 2 > target or chunk[0] == plan.block_rows, (spec.path, chunk, nbytes)


def test_a_row_larger_than_the_target_is_split_on_its_next_axis():
    spec = ArraySpec("views/rgb", "uint8", (12, 512, 512, 3), ("row", "view", "y", "x", "rgb"), "row")
    chunk = chunk_for(spec, 2**20)
    assert chunk == (1, 1, 512, 512, 3)


def test_flat_arrays_are_chunked_by_bytes_and_blocks_fit_small_datasets():
    layout = scenes_layout(10, 6, {"dino": TeacherRecord("dino", "transformers", "dinov2", "-", "x", 64,
                                                         ("pair_features",))})
    plan = plan_chunks(layout, 2**20)
    assert plan.chunks["points"] == (2**16, 4)  # 16 B per point
    assert plan.chunks["teachers/dino/pair_features"] == (2**13, 64)  # 128 B per pair
    assert plan.block_rows == 16  # 10 frames: no block of 256
    assert plan.num_blocks(10) == 1 and plan.block_range(0, 10) == (0, 10)
