"""Axis-aligned box IoU and GIoU against volumes counted on a voxel grid."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from train.ops.boxes import box_iou, generalized_box_iou


def box(lo, hi) -> np.ndarray:
    """A (6,) centre-size box from its corners."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return np.concatenate([(lo + hi) / 2, hi - lo])


UNIT = box([0, 0, 0], [1, 1, 1])


# ---- box_iou / generalized_box_iou against a voxel count ----------------------------------------------------

H = 0.125  # voxel edge; box faces on multiples of 0.25 never pass through a voxel centre, so counts are exact


def voxel_masks(boxes: np.ndarray) -> np.ndarray:
    """(K, V) which voxel centres of a grid over [0, 5]^3 (where every test box lies) each box holds."""
    axis = np.arange(H / 2, 5, H)
    centres = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    lo, hi = boxes[:, None, :3] - boxes[:, None, 3:] / 2, boxes[:, None, :3] + boxes[:, None, 3:] / 2
    return ((centres >= lo) & (centres <= hi)).all(-1)


@pytest.fixture(scope="module")
def lattice_boxes() -> np.ndarray:
    rng = np.random.default_rng(0)
    lo = rng.integers(0, 12, (10, 3)) * 0.25
    random = [box(l, l + rng.integers(1, 9, 3) * 0.25) for l in lo]
    special = [box([0, 0, 0], [2, 2, 2]), box([2, 0, 0], [3, 2, 2]),        # touching faces
               box([0.5, 0.5, 0.5], [1.5, 1, 1.25]),                       # nested in the first
               box([4, 4, 4], [5, 5, 5]),                                   # disjoint
               box([1, 1, 1], [1, 1, 1]), box([1, 1, 1], [1, 2, 1]),        # zero-size: a point, a segment
               box([3, 3, 3], [3, 3, 3]), box([0, 0, 0], [2, 2, 2])]        # another point, a duplicate
    return np.stack(random + special)


def test_box_iou_and_giou_equal_their_definitions_on_voxel_counted_volumes(lattice_boxes):
    masks = voxel_masks(lattice_boxes)
    t = torch.from_numpy(lattice_boxes)
    iou, giou = box_iou(t, t).numpy(), generalized_box_iou(t, t).numpy()
    v = H**3
    for i, j in itertools.product(range(len(lattice_boxes)), repeat=2):
        inter, union = (masks[i] & masks[j]).sum() * v, (masks[i] | masks[j]).sum() * v
        hull_lo = np.minimum(*(lattice_boxes[[i, j], :3] - lattice_boxes[[i, j], 3:] / 2))
        hull_hi = np.maximum(*(lattice_boxes[[i, j], :3] + lattice_boxes[[i, j], 3:] / 2))
        enclosing = voxel_masks(box(hull_lo, hull_hi)[None])[0].sum() * v
        want_iou = inter / union if union else 0.0
        want_giou = want_iou - (enclosing - union) / enclosing if enclosing else 0.0
        assert iou[i, j] == pytest.approx(want_iou, abs=1e-12), (i, j)
        assert giou[i, j] == pytest.approx(want_giou, abs=1e-6), (i, j)  # union floored at 1e-8 for points
    first, touching, nested, disjoint, point = 10, 11, 12, 13, 14
    assert iou[first, touching] == 0 and giou[first, touching] == pytest.approx(0.0)  # hull = union
    assert iou[first, nested] == pytest.approx(0.375 / 8) and iou[first, disjoint] == 0 > giou[first, disjoint]
    assert iou[point, point] == 0 and giou[point, point] == 0 and giou[point, 16] == pytest.approx(-1.0)
    assert iou[first, 17] == 1 and giou[first, 17] == 1


def test_box_iou_is_batched_pairwise(lattice_boxes):
    t = torch.from_numpy(lattice_boxes)
    batched = box_iou(t[:12].reshape(2, 6, 6), t[6:].reshape(2, 6, 6))  # (2, 6, 6)
    assert batched.shape == (2, 6, 6)
    assert torch.equal(batched[1], box_iou(t[6:12], t[12:]))
