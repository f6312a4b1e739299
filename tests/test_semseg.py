"""Indoor semantic segmentation: block sampling as ACT's loader draws it, whole-room sliding blocks that cover every
point, the scores against a hand-computed confusion matrix, the head without the object class, and the commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cache_schema import CacheAttrs, CacheWriter, open_cache, rooms_layout
from train.cli import app
from train.data.rooms import (RoomBlockStream, RoomStreamConfig, blocks_per_room, epoch_slots, sample_block,
                              sliding_blocks)
from train.eval.semantic_segmentation import segmentation_scores
from train.models import create_encoder
from train.models.part_segmentation import PartSegmentation

CLASSES = ("floor", "wall", "chair")


def grid_room(rng: np.random.Generator, n: int, size=(3.0, 2.0, 2.5), origin=(10.0, -4.0, 1.0)):
    """Points of a room in its dataset's coordinates (not at 0): floor below 0.1 m, walls within 0.2 m of x's
    ends, a chair elsewhere."""
    xyz = rng.uniform(0, 1, (n, 3)) * size
    labels = np.full(n, 2, np.uint8)
    labels[(xyz[:, 0] < 0.2) | (xyz[:, 0] > size[0] - 0.2)] = 1
    labels[xyz[:, 2] < 0.1] = 0
    return (xyz + origin).astype(np.float32), labels


def write_rooms(url: str, sizes: list[int], seed: int = 0, test: tuple[int, ...] = (0,),
                failed: tuple[int, ...] = ()) -> list:
    rng = np.random.default_rng(seed)
    rooms = [grid_room(rng, n) if i not in failed else (np.zeros((0, 3), np.float32), np.zeros(0, np.uint8))
             for i, n in enumerate(sizes)]
    attrs = CacheAttrs(kind="rooms", dataset={"name": "grid-rooms", "source_root": "synthetic"},
                       config={"box_classes": ["chair"]}, label_names=CLASSES)
    with CacheWriter.create(url, attrs, rooms_layout(len(sizes), with_instances=False, with_boxes=False),
                            max_block_rows=2) as w:
        for b in w.pending_blocks():
            s, e = w.block_range(b)
            part = rooms[s:e]
            w.write_block(b, {"rooms/ids": np.array([f"Area_1/room_{i}" for i in range(s, e)])},
                          [2 if i in failed else 1 for i in range(s, e)],
                          ["bad line: Annotations/x.txt:3" if i in failed else "" for i in range(s, e)], ragged={
                              "points": [p for p, _ in part], "labels": [lab for _, lab in part],
                              "colors": [np.zeros((len(p), 3), np.uint8) for p, _ in part]})
        w.write_split("test", list(test))
        w.write_split("train", [i for i in range(len(sizes)) if i not in test])
        w.finalize()
    return rooms


@pytest.fixture(scope="module")
def rooms_cache(tmp_path_factory):
    url = str(tmp_path_factory.mktemp("rooms") / "grid.zarr")
    return url, write_rooms(url, [3000, 9000, 5000, 7000], test=(0, 2))


def test_blocks_per_room_follow_acts_room_idxs():
    sizes = np.array([1_000_000, 250_000, 3000, 60_000])
    counts = blocks_per_room(sizes, 2048)
    num_iter = int(sizes.sum() / 2048)  # ACT: int(sum * sample_rate / num_point), room share rounded
    np.testing.assert_array_equal(counts, [int(round(s / sizes.sum() * num_iter)) for s in sizes])
    assert blocks_per_room(sizes, 2048, 0.5).sum() == pytest.approx(counts.sum() / 2, abs=2)


def test_a_block_is_a_centred_column_of_n_points_with_its_height():
    rng = np.random.default_rng(0)
    xyz, _ = grid_room(rng, 20_000)
    xyz -= xyz.min(axis=0)
    for seed in range(5):
        idx, center = sample_block(xyz, np.random.default_rng(seed), 2048, min_points=1024)
        assert idx.shape == (2048,) and np.abs(xyz[idx, :2] - center[:2]).max() <= 0.5
        column = (np.abs(xyz[:, :2] - center[:2]) <= 0.5).all(axis=1).sum()
        assert column > 1024
        if column >= 2048:  # enough points: drawn without replacement
            assert len(np.unique(idx)) == 2048
    sparse = xyz[:3000]  # about 3000/6 points per column: fewer than N, so some repeat
    idx, center = sample_block(sparse, np.random.default_rng(1), 2048, min_points=200)
    assert idx.shape == (2048,) and len(np.unique(idx)) < 2048


def test_the_stream_gives_centred_blocks_of_the_training_rooms(rooms_cache):
    url, rooms = rooms_cache
    stream = RoomBlockStream(url, RoomStreamConfig(num_points=512, augment=False, prefetch_bytes=0))
    stream.set_position(0, batch_size=4, drop_last=False)
    batches = list(stream)
    points = torch.cat([b["points"] for b in batches])
    assert points.shape[1:] == (512, 3) and np.abs(points[..., :2].numpy()).max() <= 0.5
    z = points[..., 2].numpy()
    assert z.min() >= 0 and z.max() <= 2.5 + 1e-5  # height above the room's lowest point, not centred
    rows = torch.cat([b["row"] for b in batches]).numpy()
    assert set(rows) == {1, 3}  # test rooms are never drawn
    np.testing.assert_array_equal(np.bincount(rows, minlength=4), stream.counts)  # in proportion to points
    np.testing.assert_array_equal(stream.counts, [0, round(9000 / 16000 * 31), 0, round(7000 / 16000 * 31)])
    assert max(len(set(b["row"].tolist())) for b in batches) == 2  # a batch mixes the rooms of its window
    labels = torch.cat([b["labels"] for b in batches]).numpy()
    assert set(np.unique(labels)) == {0, 1, 2}


def test_every_slot_is_drawn_once_per_epoch_by_2_ranks_x_2_workers(rooms_cache):
    url, _ = rooms_cache
    seen = []
    for rank in range(2):
        stream = RoomBlockStream(url, RoomStreamConfig(num_points=256, window_rows=4, prefetch_bytes=0), rank, 2)
        stream.set_position(3, batch_size=2, drop_last=False, num_workers=2)
        for worker in range(2):
            info = type("Info", (), {"num_workers": 2, "id": worker})
            plan = stream._plan(info, 3, 0)
            seen += [int(s) for _, window in plan.windows for s in window]
    assert sorted(seen) == list(range(int(stream.counts.sum())))
    slot_room = epoch_slots(stream.counts, 0, 3)  # a room's slots are together: windows read few rooms
    assert (np.diff(slot_room) != 0).sum() == (stream.counts > 0).sum() - 1


def test_a_blocks_content_does_not_depend_on_who_draws_it(rooms_cache):
    url, _ = rooms_cache
    cfg = RoomStreamConfig(num_points=256, window_rows=3, prefetch_bytes=0)

    def blocks(workers):
        stream = RoomBlockStream(url, cfg)
        stream.set_position(1, batch_size=3, drop_last=False, num_workers=workers)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
        out = [b.unpack() if hasattr(b, "unpack") else b for b in loader]
        pts = torch.cat([b["points"] for b in out]).numpy()
        return sorted(hash(p.tobytes()) for p in pts)

    assert blocks(0) == blocks(2)


def act_block_starts(top_x: float, top_y: float, block=1.0, stride=0.5) -> list[tuple[float, float]]:
    """A direct port of ACT's ``ScannetDatasetWholeScene`` loop (room minimum at 0): every block's start."""
    grid_x = int(np.ceil(float(top_x - block) / stride) + 1)
    grid_y = int(np.ceil(float(top_y - block) / stride) + 1)
    starts = []
    for index_y in range(0, grid_y):
        for index_x in range(0, grid_x):
            s_x = index_x * stride
            e_x = min(s_x + block, top_x)
            s_x = e_x - block
            s_y = index_y * stride
            e_y = min(s_y + block, top_y)
            s_y = e_y - block
            starts.append((s_x, s_y))
    return starts


def test_sliding_blocks_cover_every_point_in_columns_of_whole_blocks():
    rng = np.random.default_rng(3)
    for size in ((3.3, 2.2, 2.0), (0.7, 2.6, 2.0)):  # a room narrower than a block too
        xyz = rng.uniform(0, 1, (7000, 3)).astype(np.float32) * size
        blocks = sliding_blocks(xyz, 512, rng)
        covered = np.zeros(len(xyz), bool)
        for idx, center in blocks:
            assert len(idx) % 512 == 0 and len(idx)
            assert np.abs(xyz[idx, :2] - center).max() <= 0.5 + 0.001 + 1e-6
            covered[idx] = True
        assert covered.all()
        if min(size[:2]) >= 1.0:  # ACT's loop (a room narrower than a block has no grid there)
            expected = [np.array(s) + 0.5 for s in act_block_starts(*xyz[:, :2].max(0))]
            np.testing.assert_allclose(np.array([c for _, c in blocks]), np.array(expected), atol=1e-6)


def test_scores_match_a_hand_computed_confusion_matrix():
    conf = np.array([[5, 1, 0],   # true floor: 5 right, 1 as wall
                     [2, 4, 0],   # true wall
                     [0, 0, 0]])  # chair never in labels, never predicted
    s = segmentation_scores(conf, CLASSES)
    iou_floor, iou_wall = 5 / (5 + 1 + 2), 4 / (4 + 2 + 1)
    assert s["per_class"] == {"floor": pytest.approx(iou_floor), "wall": pytest.approx(iou_wall), "chair": None}
    assert s["miou"] == pytest.approx((iou_floor + iou_wall + 0) / 3)  # ACT: every class, an absent one as 0
    assert s["macc"] == pytest.approx((5 / 6 + 4 / 6 + 0) / 3)
    assert s["oa"] == pytest.approx(9 / 12) and s["num_points"] == 12
    conf[2, 1] = 1  # a chair predicted as wall: chair IoU 0 counts in the mean
    assert segmentation_scores(conf, CLASSES)["per_class"]["chair"] == 0.0


def test_the_scene_head_has_no_object_class_branch():
    head = PartSegmentation(create_encoder("point-mae"), 0, 13)
    assert head.label_conv is None and head.head[0].in_channels == 3328  # ACT: 1024 + 2 x 1152
    frozen = {n for n, p in head.named_parameters() if not p.requires_grad}
    assert frozen == {"encoder.cls_token", "encoder.cls_pos"}  # no cls token in the sequence: never trained
    part = PartSegmentation(create_encoder("point-mae"), 16, 50)
    assert part.head[0].in_channels == 3392  # Point-MAE part segmentation: + 64 label channels
    tiny = PartSegmentation(create_encoder("point-mae-tiny", "semseg"), 0, 3)
    assert tiny(torch.rand(2, 512, 3)).shape == (2, 512, 3)


def test_train_and_evaluate_whole_rooms_from_the_command_line(rooms_cache, tmp_path):
    url, rooms = rooms_cache
    runner = CliRunner()
    out = str(tmp_path / "run")
    r = runner.invoke(app, ["semseg", "--cache", url, "--out", out, "--epochs", "2", "--warmup-epochs", "0",
                            "--batch-size", "4", "--num-points", "512", "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    config = json.load(open(f"{out}/config.json"))
    assert config["config"]["lr"] == 2e-4 and config["config"]["grad_clip"] == 10.0  # the reference's recipe
    npz = str(tmp_path / "pred.npz")
    r = runner.invoke(app, ["eval", "semseg", "--cache", url, "--ckpt", f"{out}/last.pt", "--json", "--votes", "2",
                            "--save-predictions", npz])
    assert r.exit_code == 0, r.output
    scores = json.loads(r.output.strip().splitlines()[-1])
    saved = np.load(npz)
    assert list(saved["rooms"]) == ["Area_1/room_0", "Area_1/room_2"] and saved["offsets"].tolist() == [0, 3000, 8000]
    np.testing.assert_array_equal(saved["label"], np.concatenate([rooms[0][1], rooms[2][1]]))  # every point, in order
    conf = np.zeros((3, 3), np.int64)
    np.add.at(conf, (saved["label"], saved["pred"]), 1)
    recomputed = segmentation_scores(conf, CLASSES)
    assert scores["miou"] == pytest.approx(recomputed["miou"]) and scores["oa"] == pytest.approx(recomputed["oa"])
    assert scores["num_points"] == 8000 and set(scores) >= {"miou", "macc", "oa", "per_class"}
    from train.report import report

    _, page = report(out)
    evaluation = json.load(open(f"{out}/eval.json"))
    assert set(evaluation["this run"]) == {"miou", "macc", "oa"} and "mIoU" in open(page).read()


def test_a_run_stopped_and_resumed_repeats_the_uninterrupted_one(rooms_cache, tmp_path):
    from train.downstream.semseg import SemsegConfig, train_semseg

    url, _ = rooms_cache
    common = dict(cache=url, epochs=2, warmup_epochs=1, batch_size=4, num_points=256, num_group=8, group_size=16,
                  workers=1, val_split=None)
    whole = str(tmp_path / "whole")
    train_semseg(SemsegConfig(out=whole, **common), progress=False)
    parts = str(tmp_path / "parts")
    train_semseg(SemsegConfig(out=parts, **common), progress=False, stop_at=3)
    train_semseg(SemsegConfig(out=parts, **common), resume=True, progress=False)
    a, b = (torch.load(f"{d}/last.pt", weights_only=True)["model"] for d in (whole, parts))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_semseg_refuses_a_cache_of_another_kind(objects_cache, tmp_path):
    r = CliRunner().invoke(app, ["semseg", "--cache", objects_cache[0], "--out", str(tmp_path / "r")])
    assert r.exit_code != 0 and "objects cache" in r.output and "Traceback" not in r.output


def test_a_short_cpu_run_on_demo_rooms_beats_the_untrained_model(tmp_path):
    from preprocess.build_common import RunOptions
    from preprocess.build_rooms import RoomBuildConfig, build_rooms
    from train.downstream.semseg import SemsegConfig, train_semseg
    from train.eval.semantic_segmentation import evaluate_rooms, load_semseg

    url = str(tmp_path / "demo-rooms.zarr")
    build_rooms(url, RoomBuildConfig("demo-rooms", rooms=6, room_points=8000, areas=3), RunOptions(progress=False))
    out = str(tmp_path / "run")
    train_semseg(SemsegConfig(cache=url, out=out, epochs=5, warmup_epochs=1, batch_size=16, num_points=256,
                              num_group=16, group_size=16, lr=1e-3, workers=0, val_split=None), progress=False)
    trained, _ = load_semseg(f"{out}/last.pt")
    untrained = PartSegmentation(create_encoder("point-mae-tiny", num_group=16, group_size=16), 0, 13).eval()
    cache = open_cache(url)
    scores = [evaluate_rooms(m, cache, "test", 256, votes=1)["miou"] for m in (trained, untrained)]
    assert scores[0] > scores[1] + 0.1, scores


def test_point_m2ae_segments_rooms_with_its_own_head(rooms_cache, tmp_path):
    from train.downstream.semseg import SemsegConfig, train_semseg
    from train.eval.semantic_segmentation import evaluate_rooms, load_semseg

    url, _ = rooms_cache
    out = str(tmp_path / "m2ae")
    train_semseg(SemsegConfig(cache=url, out=out, model="point-m2ae-tiny", epochs=1, warmup_epochs=0, batch_size=4,
                              sample_rate=0.25, num_points=256, workers=0, val_split=None), progress=False)
    model, state = load_semseg(f"{out}/last.pt")
    assert model.design == "per-level" and state["encoder"]["name"] == "point-m2ae"
    scores = evaluate_rooms(model, open_cache(url), "test", 256, votes=1)
    assert scores["num_points"] == 8000 and 0 <= scores["miou"] <= 1


def test_a_test_room_that_failed_to_build_is_named_not_silently_dropped(tmp_path):
    from train.eval.semantic_segmentation import evaluate_rooms

    url = str(tmp_path / "rooms.zarr")
    write_rooms(url, [2000, 3000, 2500], test=(0, 1), failed=(1,))
    model = PartSegmentation(create_encoder("point-mae-tiny", num_group=8, group_size=16), 0, 3).eval()
    scores = evaluate_rooms(model, open_cache(url), "test", 256, votes=1)
    assert scores["rooms"] == 1 and scores["failed_rooms"] == ["Area_1/room_1"] and scores["num_points"] == 2000
