"""Parts of LiDAR fusion training: mIoU by hand, frames streamed and collated with their pairs,
the shared codebook's assignment and straight-through gradient, occupancy targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cache_schema import open_cache
from cache_schema.example import write_example
from train.data.scenes import SceneStream, SceneStreamConfig, paired_point_features
from train.eval.metrics import confusion_matrix, iou_scores
from train.models.codebook import VectorQuantizer
from train.ops.occupancy import mask_voxels, occupancy_queries, voxel_keys


def test_miou_against_a_hand_computed_confusion_matrix():
    target = np.array([0, 0, 0, 1, 1, 2, 2, 2, 255, 255])
    pred = np.array([0, 0, 1, 1, 2, 2, 2, 0, 1, 2])     # the last two are ignored whatever they say
    conf = confusion_matrix(pred, target, 3)
    np.testing.assert_array_equal(conf, [[2, 1, 0], [0, 1, 1], [1, 0, 2]])
    s = iou_scores(conf, ("road", "car", "pole"))
    # road: 2 / (3 + 3 - 2) = 0.5; car: 1 / (2 + 2 - 1) = 1/3; pole: 2 / (3 + 3 - 2) = 0.5
    assert s["per_class_iou"] == pytest.approx({"road": 0.5, "car": 1 / 3, "pole": 0.5})
    assert s["miou"] == pytest.approx((0.5 + 1 / 3 + 0.5) / 3) and s["accuracy"] == pytest.approx(5 / 8)
    absent = iou_scores(confusion_matrix(np.array([0, 0]), np.array([0, 0]), 3))
    assert absent["per_class_iou"]["1"] is None and absent["miou"] == 1.0  # absent classes do not count
    with pytest.raises(ValueError, match="class indices"):
        confusion_matrix(np.array([5]), np.array([0]), 3)


def test_streamed_frames_keep_each_pair_with_its_feature(tmp_path):
    url = str(tmp_path / "scenes.zarr")
    write_example(url, "scenes")
    cache = open_cache(url)
    stream = SceneStream(url, SceneStreamConfig(split="train"))
    frames = [int(f["row"]) for f in stream]  # batches of one frame
    assert sorted(frames) == cache.split("train").tolist()  # every frame once
    assert [int(f["row"]) for f in SceneStream(url)] == frames  # same seed, same order
    stream.set_position(0, 0, batch_size=3)
    batch = next(iter(DataLoader(stream, batch_size=None)))  # the worker collates the batch
    assert len(batch["row"]) == 3
    # a 3D feature that says which (frame, point) it is: the pair must bring back its own stored 2D feature
    counts = torch.bincount(batch["batch_index"])
    assert len(set(counts.tolist())) > 1                      # frames of different sizes
    local = torch.cat([torch.arange(c) for c in counts])
    point_features = torch.stack([batch["batch_index"], local], 1)
    mine, theirs = paired_point_features(point_features, batch)
    for (frame_i, point_i), feature, cam, uv, f in zip(mine.tolist(), theirs, batch["pair_camera"], batch["pair_uv"],
                                                      batch["pair_frame"]):
        row = int(batch["row"][frame_i])
        assert frame_i == int(f)
        stored = cache.ragged("pairs/point", row)
        k = [j for j in range(len(stored)) if stored[j] == point_i and
             np.allclose(cache.ragged("pairs/uv", row)[j], uv.numpy())][0]
        np.testing.assert_allclose(feature.numpy(), cache.ragged("teachers/dinov2-tiny/pair_features", row)[k]
                                   .astype(np.float32))
        assert int(cam) == int(cache.ragged("pairs/camera", row)[k])


def test_codebook_assigns_the_nearest_code_and_passes_gradients_straight_through():
    vq = VectorQuantizer(4, 2, beta=0.25)
    with torch.no_grad():
        vq.codebook.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    z = torch.tensor([[0.9, 0.1], [0.1, 0.8], [0.2, 0.1], [0.7, 0.9]], requires_grad=True)
    out, codes, loss = vq(z)
    assert codes.tolist() == [1, 2, 0, 3]
    torch.testing.assert_close(out, vq.codebook.weight[codes])
    expected = 1.25 * ((vq.codebook.weight[codes] - z) ** 2).mean()
    torch.testing.assert_close(loss, expected)
    (out * torch.arange(8.0).reshape(4, 2)).sum().backward()
    torch.testing.assert_close(z.grad, torch.arange(8.0).reshape(4, 2))  # d out / d z = identity
    assert vq.codebook.weight.grad is None  # only the VQ loss trains the codebook
    z.grad = None
    vq(z)[2].backward()
    assert vq.codebook.weight.grad is not None and z.grad is not None


def test_occupancy_targets_on_a_constructed_scene():
    # two points in voxel (0,0,0), one in (2,0,0), one in (0,3,0) with 1 m voxels
    xyz = torch.tensor([[0.2, 0.3, 0.1], [0.7, 0.1, 0.9], [2.5, 0.5, 0.5], [0.5, 3.5, 0.5]])
    assert voxel_keys(xyz, 1.0).tolist() == [[0, 0, 0], [0, 0, 0], [2, 0, 0], [0, 3, 0]]
    keep, masked = mask_voxels(xyz, 1.0, ratio=1 / 3, generator=torch.Generator().manual_seed(0))
    assert len(masked) == 1
    removed = (voxel_keys(xyz, 1.0) == masked[0]).all(dim=1)
    assert torch.equal(keep, ~removed) and removed.any()
    queries, targets = occupancy_queries(xyz, masked, 1.0, generator=torch.Generator().manual_seed(0))
    assert targets.tolist() == [1.0, 0.0] and torch.equal(queries[0], masked[0])
    occupied = {tuple(v) for v in voxel_keys(xyz, 1.0).tolist()}
    empty = tuple(queries[1].tolist())
    assert empty not in occupied and min(max(abs(a - b) for a, b in zip(empty, o)) for o in occupied) == 1


def test_waffle_backbone_is_per_point_permutation_equivariant_and_batch_independent():
    from train.models.lidar_backbone import WaffleBackbone, WaffleConfig

    torch.manual_seed(0)
    net = WaffleBackbone(WaffleConfig(dim=16, depth=3)).eval()
    a = torch.cat([torch.randn(300, 3) * 10, torch.rand(300, 1)], 1)
    b = torch.cat([torch.randn(200, 3) * 10, torch.rand(200, 1)], 1)
    alone = net(a, torch.zeros(300, dtype=torch.long))
    assert alone.shape == (300, 16) and torch.isfinite(alone).all()
    together = net(torch.cat([a, b]), torch.cat([torch.zeros(300), torch.ones(200)]).long())
    torch.testing.assert_close(together[:300], alone, atol=1e-5, rtol=1e-5)   # b does not leak into a
    perm = torch.randperm(300)
    torch.testing.assert_close(net(a[perm], torch.zeros(300, dtype=torch.long)), alone[perm], atol=1e-5, rtol=1e-5)
    far = a.clone()
    far[0, :3] = 1000.0  # outside the scene box: clamped to a border cell, still a finite feature
    assert torch.isfinite(net(far, torch.zeros(300, dtype=torch.long))).all()
    net.train()
    net(torch.cat([a, b]), torch.cat([torch.zeros(300), torch.ones(200)]).long()).sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_subsampled_frames_keep_only_pairs_of_kept_points_reindexed(tmp_path):
    url = str(tmp_path / "scenes.zarr")
    write_example(url, "scenes")
    full = {int(f["row"]): f for f in SceneStream(url)}
    for f in SceneStream(url, SceneStreamConfig(max_points=15)):
        ref = full[int(f["row"])]
        assert len(f["points"]) == min(15, len(ref["points"]))
        for p, feat in zip(f["pair_point"], f["pair_features"]):
            original = (ref["points"] == f["points"][p]).all(dim=1).nonzero().flatten()  # the same point in the full
            assert any(torch.equal(feat, ref["pair_features"][j]) for j in torch.nonzero(
                torch.isin(ref["pair_point"], original)).flatten())
