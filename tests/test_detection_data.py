"""Rooms as 3DETR samples them for detection (train/data/detection.py) and the detector's parts against 3DETR's
formulas (train/models/detector.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from cache_schema import open_cache
from train.data.detection import (SceneStream, SceneStreamConfig, augment_scene, collate_scenes, random_cuboid,
                                  rotate_aligned_boxes, rotz, sample_scene)
from train.models.detector import DecoderLayer, Detector, FourierPositionEmbedding, TransformerDecoder
from train.models.encoders import create_encoder
from train.ops.geometry import farthest_point_sample


@pytest.fixture
def demo_rooms(demo_rooms_cache):
    return demo_rooms_cache


def inside(points: np.ndarray, box: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return np.all(np.abs(points - box[:3]) <= box[3:] / 2 + eps, axis=1)


def test_rotated_boxes_are_the_bounds_of_their_rotated_corners():
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(-4, 4, (20, 3)), rng.uniform(0.1, 2, (20, 3))], axis=1)
    for angle in (0.0, 0.05, -0.087, 0.5):
        rot = rotz(angle)
        got = rotate_aligned_boxes(boxes, rot)
        for box, out in zip(boxes, got):
            corners = np.array([box[:3] + np.array(s) * box[3:] / 2 for s in itertools.product((-1, 1), repeat=3)])
            turned = corners @ rot.T
            lo, hi = turned.min(axis=0), turned.max(axis=0)
            np.testing.assert_allclose(out, np.r_[(lo + hi) / 2, hi - lo], atol=1e-9)


def test_flips_and_rotation_keep_every_point_inside_its_box():
    rng = np.random.default_rng(1)
    boxes = np.array([[1.0, 2.0, 0.5, 0.6, 0.8, 1.0], [-2.0, 0.5, 1.0, 1.2, 0.4, 2.0]])
    points = np.concatenate([b[:3] + rng.uniform(-0.5, 0.5, (200, 3)) * b[3:] for b in boxes])
    for seed in range(8):
        p, b = augment_scene(points, boxes, np.random.default_rng(seed))
        for k in range(2):
            assert inside(p[k * 200:(k + 1) * 200], b[k]).all()
        # the rotation is small (at most 5 degrees): a box grows by no more than its footprint rotated by 5 degrees
        assert np.all(b[:, 3:5] <= boxes[:, 3:5] * math.cos(math.radians(5)) + boxes[:, [4, 3]]
                      * math.sin(math.radians(5)) + 1e-9)
    flips = {tuple(np.sign(augment_scene(points, boxes, np.random.default_rng(s))[1][0, :2])) for s in range(16)}
    assert flips == {(1, 1), (-1, 1), (1, -1), (-1, -1)}  # each axis flips on its own


def test_random_cuboid_keeps_enough_points_and_the_boxes_whose_centres_it_holds():
    rng = np.random.default_rng(2)
    xyz = rng.uniform(0, [6, 5, 3], (20000, 3))
    boxes = np.concatenate([rng.uniform(0.5, [5.5, 4.5, 2.5], (12, 3)), np.full((12, 3), 0.4)], axis=1)
    cropped = 0
    for seed in range(5):
        idx, keep = random_cuboid(xyz, boxes, np.random.default_rng(seed), min_points=8000)
        assert len(idx) >= 8000 and len(keep) >= 1
        lo, hi = xyz[idx].min(axis=0), xyz[idx].max(axis=0)
        held = np.all((boxes[:, :3] >= lo) & (boxes[:, :3] <= hi), axis=1)
        assert list(np.flatnonzero(held)) == list(keep)
        within = np.flatnonzero(np.all((xyz >= lo) & (xyz <= hi), axis=1))
        assert list(within) == list(idx)  # a cuboid: every point inside the kept points' bounds is kept
        cropped += len(idx) < len(xyz)
    assert cropped == 5  # half the room's points, or more, never needs the whole room
    idx, keep = random_cuboid(xyz, boxes, np.random.default_rng(0), min_points=30000)  # impossible: whole room
    assert len(idx) == len(xyz) and len(keep) == len(boxes)


def test_a_sample_has_n_points_and_only_the_boxes_of_its_crop():
    rng = np.random.default_rng(3)
    xyz = rng.uniform(0, [6, 5, 3], (5000, 3))
    boxes = np.concatenate([rng.uniform(0.5, [5.5, 4.5, 2.5], (6, 3)), np.full((6, 3), 0.4)], axis=1)
    labels = np.arange(6)
    plain = sample_scene(xyz, boxes, labels, np.random.default_rng(0), 1024, augment=False, crop_min_points=0)
    assert plain["points"].shape == (1024, 3) and len(plain["boxes"]) == 6
    assert {tuple(p) for p in plain["points"].astype(np.float64)} <= {tuple(p) for p in xyz.astype(np.float32)
                                                                       .astype(np.float64)}
    more = sample_scene(xyz[:100], boxes, labels, np.random.default_rng(0), 1024, augment=False, crop_min_points=0)
    assert more["points"].shape == (1024, 3)  # with replacement when the room has fewer points
    aug = sample_scene(xyz, boxes, labels, np.random.default_rng(5), 1024, augment=True, crop_min_points=2000)
    assert 1 <= len(aug["boxes"]) <= 6 and len(aug["box_labels"]) == len(aug["boxes"])


def test_batches_pad_boxes_to_the_most_in_the_batch():
    scenes = [{"points": np.zeros((4, 3), np.float32), "boxes": np.ones((n, 6), np.float32),
               "box_labels": np.arange(n), "row": i} for i, n in enumerate((3, 0, 5))]
    batch = collate_scenes(scenes)
    assert batch["boxes"].shape == (3, 5, 6)
    assert batch["box_present"].sum(dim=1).tolist() == [3, 0, 5]
    assert batch["box_labels"][2].tolist() == [0, 1, 2, 3, 4]


def test_every_room_is_read_once_per_epoch_by_2_ranks_x_2_workers(demo_rooms):
    train = set(open_cache(demo_rooms).done_rows("train").tolist())
    rows = []
    for rank in range(2):
        stream = SceneStream(demo_rooms, SceneStreamConfig(num_points=256, window_rows=2, prefetch_bytes=0), rank, 2)
        stream.set_position(2, batch_size=1, drop_last=False, num_workers=2)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
        rows += [r for b in loader for r in (b.unpack() if hasattr(b, "unpack") else b)["row"].tolist()]
    assert sorted(rows) == sorted(train)


def test_evaluation_samples_are_the_same_every_epoch_and_training_ones_are_not(demo_rooms):
    def points(augment, epoch):
        s = SceneStream(demo_rooms, SceneStreamConfig(split="test", num_points=256, augment=augment,
                                                      prefetch_bytes=0))
        s.set_position(epoch, batch_size=8, drop_last=False)
        batch = next(iter(s))
        return {r: p for r, p in zip(batch["row"].tolist(), batch["points"].numpy())}

    a, b = points(False, 0), points(False, 3)
    assert all(np.array_equal(a[r], b[r]) for r in a)
    c, d = points(True, 0), points(True, 1)
    assert not any(np.array_equal(c[r], d[r]) for r in c)


# ---- the detector's parts against 3DETR's formulas ----

def reference_decoder_layer(layer: DecoderLayer, tgt, memory, pos, query_pos):
    """3DETR's ``TransformerDecoderLayer.forward_pre`` written out with (L, B, C) tensors, as the reference holds
    them, reading the same modules."""
    t, m, p, qp = (x.transpose(0, 1) for x in (tgt, memory, pos, query_pos))

    def attend(attn: nn.MultiheadAttention, q, k, v):
        d = attn.embed_dim
        w, bias = attn.in_proj_weight, attn.in_proj_bias
        q, k, v = (x @ w[i * d:(i + 1) * d].T + bias[i * d:(i + 1) * d] for i, x in enumerate((q, k, v)))
        h = attn.num_heads
        split = lambda x: x.reshape(x.shape[0], x.shape[1] * h, d // h).transpose(0, 1)  # noqa: E731
        a = torch.softmax(split(q) @ split(k).transpose(1, 2) / math.sqrt(d // h), dim=-1) @ split(v)
        return attn.out_proj(a.transpose(0, 1).reshape(q.shape[0], q.shape[1], d))

    t2 = layer.norm1(t)
    t = t + attend(layer.self_attn, t2 + qp, t2 + qp, t2)
    t2 = layer.norm2(t)
    t = t + attend(layer.cross_attn, t2 + qp, m + p, m)
    t2 = layer.norm3(t)
    t = t + layer.linear2(torch.relu(layer.linear1(t2)))
    return t.transpose(0, 1)


def test_the_decoder_layer_computes_3detrs_pre_norm_layer():
    torch.manual_seed(0)
    layer = DecoderLayer(32, 4, 48).eval()
    tgt, query_pos = torch.randn(2, 7, 32), torch.randn(2, 7, 32)
    memory, pos = torch.randn(2, 11, 32), torch.randn(2, 11, 32)
    torch.testing.assert_close(layer(tgt, memory, pos, query_pos),
                               reference_decoder_layer(layer, tgt, memory, pos, query_pos), atol=1e-5, rtol=1e-5)


def test_the_decoder_returns_every_layer_through_one_final_norm():
    torch.manual_seed(1)
    dec = TransformerDecoder(3, 32, 4, 32).eval()
    tgt, query_pos, memory, pos = torch.zeros(1, 5, 32), torch.randn(1, 5, 32), torch.randn(1, 9, 32), \
        torch.randn(1, 9, 32)
    outs = dec(tgt, memory, pos, query_pos)
    x = tgt
    for layer, out in zip(dec.layers, outs):
        x = layer(x, memory, pos, query_pos)
        torch.testing.assert_close(out, dec.norm(x))
    assert len(outs) == 3


def test_fourier_features_are_3detrs():
    torch.manual_seed(2)
    emb = FourierPositionEmbedding(16)
    xyz = torch.rand(2, 5, 3) * 4 - 1
    lo, hi = xyz.amin(1), xyz.amax(1)
    out = emb(xyz, lo, hi)
    for b, i in itertools.product(range(2), range(5)):
        x = (xyz[b, i] - lo[b]) / (hi[b] - lo[b]) * 2 * math.pi  # shift_scale_points to [0, 1], times 2 pi
        proj = x @ emb.gauss_B
        torch.testing.assert_close(out[b, i], torch.cat([proj.sin(), proj.cos()]))


def test_boxes_are_offsets_from_fps_queries_and_sizes_a_share_of_the_scene():
    torch.manual_seed(3)
    enc = create_encoder("point-mae-tiny", None, num_group=32, group_size=16)
    model = Detector(enc, 5, num_queries=8, dec_layers=2, dec_dim=32, dec_ffn_dim=32).eval()
    points = torch.rand(2, 512, 3) * torch.tensor([6.0, 4.0, 0.05])  # a flat scene: its z extent is below 0.1
    with torch.no_grad():
        out = model(points)
        centers = enc.tokenize(points).centers
    queries = centers.gather(1, farthest_point_sample(centers, 8).unsqueeze(-1).expand(-1, -1, 3))
    last = out["outputs"]
    offset = last["center_unnormalized"] - queries
    assert offset.abs().max() <= 0.5
    lo, hi = points.amin(1), points.amax(1)
    torch.testing.assert_close(last["center_normalized"], (last["center_unnormalized"] - lo[:, None])
                               / (hi - lo)[:, None])
    scale = (hi - lo).clamp(min=0.1)
    torch.testing.assert_close(last["size_unnormalized"], last["size_normalized"] * scale[:, None])
    prob = last["sem_cls_logits"].softmax(-1)
    torch.testing.assert_close(last["objectness_prob"], 1 - prob[..., -1])
    torch.testing.assert_close(last["sem_cls_prob"], prob[..., :-1])
    assert len(out["aux_outputs"]) == 1 and last["sem_cls_logits"].shape == (2, 8, 6)


def test_the_detect_recipes_scale_the_grouping_to_scenes():
    mae = create_encoder("point-mae", "detect")
    assert (mae.config.num_group, mae.config.group_size) == (2048, 64)
    m2ae = create_encoder("point-m2ae", "detect")
    assert m2ae.config.num_groups == (2048, 1024, 512) and m2ae.config.local_radius == (0.4, 0.8, 1.2)
