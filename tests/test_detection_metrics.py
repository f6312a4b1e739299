"""Indoor detection scores (votenet / 3DETR AP25, AP50): box IoU and GIoU against a voxel count, NMS against a
greedy loop, per-class proposals, AP on hand-made cases, and the whole metric against a per-detection loop
written the way 3DETR's ``eval_det_cls`` reads."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from train.eval.detection_metrics import (average_precision, nms_same_class, parse_predictions, scores_dict,
                                          split_scores, voc_ap)
from train.ops.boxes import box_iou, generalized_box_iou


def box(lo, hi) -> np.ndarray:
    """A (6,) centre-size box from its corners."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return np.concatenate([(lo + hi) / 2, hi - lo])


def naive_iou(a, b) -> float:
    inter, va, vb = 1.0, 1.0, 1.0
    for k in range(3):
        alo, ahi, blo, bhi = a[k] - a[k + 3] / 2, a[k] + a[k + 3] / 2, b[k] - b[k + 3] / 2, b[k] + b[k + 3] / 2
        inter *= max(0.0, min(ahi, bhi) - max(alo, blo))
        va, vb = va * (ahi - alo), vb * (bhi - blo)
    return inter / (va + vb - inter) if va + vb - inter > 0 else 0.0


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


# ---- NMS ----------------------------------------------------------------------------------------------------


def greedy_nms(boxes, scores, classes, thr) -> list[int]:
    """The reference's loop: take the best remaining box, drop the remaining ones of its class above thr."""
    remaining = sorted(range(len(boxes)), key=lambda i: (scores[i], i))  # ties: the higher index last = first out
    kept = []
    while remaining:
        i = remaining.pop()
        kept.append(i)
        remaining = [j for j in remaining if not (classes[j] == classes[i] and naive_iou(boxes[i], boxes[j]) > thr)]
    return kept


@pytest.mark.parametrize("seed", range(4))
def test_nms_keeps_what_a_greedy_loop_keeps(seed):
    rng = np.random.default_rng(seed)
    n = 60
    boxes = np.concatenate([rng.uniform(0, 3, (n, 3)), rng.uniform(0.5, 2, (n, 3))], 1)
    scores = np.round(rng.random(n), 1)  # ties on purpose
    classes = rng.integers(0, 3, n)
    kept = nms_same_class(boxes, scores, classes, 0.25)
    assert kept.tolist() == greedy_nms(boxes, scores, classes, 0.25)
    assert 5 < len(kept) < n


def test_nms_only_suppresses_within_a_class_and_above_the_threshold():
    boxes = np.stack([UNIT, UNIT, UNIT])
    assert nms_same_class(boxes, np.array([0.9, 0.8, 0.7]), np.array([0, 1, 0])).tolist() == [0, 1]
    assert nms_same_class(boxes, np.array([0.5, 0.5, 0.5]), np.array([0, 0, 0])).tolist() == [2]  # ties: last
    quarter = np.stack([UNIT, box([0, 0, 0], [1, 1, 4])])  # IoU exactly 1/4
    assert nms_same_class(quarter, np.array([0.9, 0.8]), np.zeros(2), iou=0.25).tolist() == [0, 1]
    assert nms_same_class(quarter, np.array([0.9, 0.8]), np.zeros(2), iou=0.2499).tolist() == [0]


# ---- parse_predictions ------------------------------------------------------------------------------------


def test_every_kept_query_proposes_every_class_scored_by_probability_times_objectness():
    boxes = np.stack([box([i * 3] * 3, [i * 3 + 1] * 3) for i in range(4)])  # disjoint
    prob = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])
    obj = np.array([0.9, 0.05, 0.5, 0.0501])  # query 1 sits on conf_thresh: dropped (strictly above only)
    d = parse_predictions(boxes, prob, obj)
    kept = [0, 2, 3]
    assert len(d.scores) == 3 * len(kept)
    assert d.classes.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # class-major, queries in index order
    np.testing.assert_array_equal(d.boxes, np.tile(boxes[kept], (3, 1)))
    np.testing.assert_allclose(d.scores, (prob[kept] * obj[kept, None]).T.ravel())
    assert d.scores.min() < 0.05  # the threshold is on objectness, not on the per-class score
    assert len(parse_predictions(boxes, prob, obj, conf_thresh=0.6).scores) == 3
    assert len(parse_predictions(boxes, prob, obj, conf_thresh=0.0).scores) == 12


def test_nms_runs_on_the_argmax_class_and_empty_boxes_go_first():
    boxes = np.stack([UNIT, box([0, 0, 0], [1, 1, 1.1]), box([5, 5, 5], [6, 6, 6])])
    prob = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]])
    obj = np.array([0.9, 0.8, 0.7])
    assert len(parse_predictions(boxes, prob, obj).scores) == 2 * 2  # query 1 suppressed by query 0
    other = prob.copy()
    other[1] = [0.2, 0.8]
    assert len(parse_predictions(boxes, other, obj).scores) == 3 * 2  # another argmax class: kept
    # points only in query 1's extra slab and in query 2: query 0 is empty, so query 1 survives NMS
    points = np.concatenate([np.full((5, 3), [0.5, 0.5, 1.05]), np.full((5, 3), 5.5)])
    d = parse_predictions(boxes, prob, obj, points=points)
    np.testing.assert_array_equal(d.boxes[:2], boxes[[1, 2]])
    d = parse_predictions(boxes, prob, obj, points=points[:4])  # every box empty: the most objective one stays
    np.testing.assert_array_equal(d.boxes, boxes[[0, 0]])


# ---- AP: hand-made cases ----------------------------------------------------------------------------------


def dets(*rows) -> tuple:
    """(boxes, scores, classes) of one scene from (box, score, class) rows."""
    if not rows:
        return np.zeros((0, 6)), np.zeros(0), np.zeros(0, np.int64)
    b, s, c = zip(*rows)
    return np.stack(b), np.array(s, float), np.array(c)


def gts(*rows) -> tuple:
    if not rows:
        return np.zeros((0, 6)), np.zeros(0, np.int64)
    b, c = zip(*rows)
    return np.stack(b), np.array(c)


A, B = UNIT, box([3, 0, 0], [4, 1, 1])


def test_voc_ap_is_the_area_under_the_precision_envelope():
    # envelope: 1 on (0, .2], 2/3 on (.2, .4] and (.4, .6] ... 1/2 on (.4, .6], 0 after
    assert voc_ap(np.array([0.2, 0.4, 0.4, 0.6]), np.array([1, 0.5, 2 / 3, 0.5])) == pytest.approx(
        0.2 * 1 + 0.2 * 2 / 3 + 0.2 * 0.5)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert voc_ap(np.array([0.0, 0.0]), np.array([0.0, 0.0])) == 0.0


def test_perfect_boxes_score_one_and_a_duplicate_is_a_false_positive():
    truth = [gts((A, 0), (B, 1)), gts((A, 1))]
    perfect = [dets((A, 0.9, 0), (B, 0.8, 1)), dets((A, 0.7, 1))]
    r = average_precision(perfect, truth, 2)
    assert r[0.25].ap.tolist() == r[0.5].ap.tolist() == [1.0, 1.0] and r[0.5].recall.tolist() == [1.0, 1.0]
    dup = [dets((A, 0.9, 0), (B, 0.8, 1)), dets((A, 0.85, 1), (A, 0.82, 1))]  # class 1: TP, FP, TP
    # recall .5, .5, 1 ; precision 1, 1/2, 2/3 -> .5 * 1 + .5 * 2/3
    assert average_precision(dup, truth, 2)[0.5].ap[1] == pytest.approx(5 / 6)


def test_a_box_below_the_threshold_misses_at_50_and_hits_at_25_and_the_threshold_is_strict():
    r = average_precision([dets((box([0, 0, 0], [1, 1, 2.5]), 0.9, 0))], [gts((A, 0))], 1)  # IoU 0.4
    assert r[0.25].ap[0] == 1.0 and r[0.5].ap[0] == 0.0 and r[0.5].recall[0] == 0.0
    r = average_precision([dets((box([0, 0, 0], [1, 1, 2]), 0.9, 0))], [gts((A, 0))], 1, iou_thresholds=(0.5,))
    assert r[0.5].ap[0] == 0.0  # IoU exactly 0.5 is not above 0.5


def test_the_mean_runs_over_the_classes_with_ground_truth():
    truth = [gts((A, 0), (B, 1))]
    r = average_precision([dets((A, 0.9, 0))], truth, 3)[0.5]  # class 1: gt, no detections; class 2: neither
    assert r.ap[0] == 1.0 and r.ap[1] == 0.0 and np.isnan(r.ap[2]) and r.mean_ap == 0.5
    assert r.recall[1] == 0.0 and r.mean_recall == 0.5
    r = average_precision([dets((A, 0.9, 0), (B, 0.8, 1), (B, 0.5, 2))], truth, 3)[0.5]  # class 2: no gt
    assert r.ap.tolist() == [1.0, 1.0, 0.0] and r.mean_ap == 1.0  # class 2's detections have nothing to find


def test_detections_only_match_their_own_scene():
    r = average_precision([dets(), dets((A, 0.9, 0))], [gts((A, 0)), gts()], 1)[0.25]
    assert r.ap[0] == 0.0 and r.recall[0] == 0.0


def test_a_detection_whose_best_box_is_taken_is_false_even_if_another_would_match():
    b2 = box([0.5, 0, 0], [1.5, 1, 1])  # IoU 1/3 with A
    near_a = box([0.1, 0, 0], [1.1, 1, 1])  # IoU .82 with A, .67 with b2
    r = average_precision([dets((A, 0.9, 0), (near_a, 0.8, 0))], [gts((A, 0), (b2, 0))], 1)[0.5]
    assert r.ap[0] == pytest.approx(0.5) and r.recall[0] == 0.5


def test_equal_scores_keep_the_detections_order():
    miss, hit = (B, 0.5, 0), (A, 0.5, 0)
    assert average_precision([dets(miss, hit)], [gts((A, 0))], 1)[0.5].ap[0] == pytest.approx(0.5)
    assert average_precision([dets(hit, miss)], [gts((A, 0))], 1)[0.5].ap[0] == 1.0
    assert average_precision([dets(miss), dets(hit)], [gts(), gts((A, 0))], 1)[0.5].ap[0] == pytest.approx(0.5)


# ---- AP: the whole metric against a per-detection loop ----------------------------------------------------


def loop_voc_ap(rec, prec) -> float:
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


def loop_scores(detections, ground_truth, num_classes, thr) -> tuple[dict, dict]:
    """{class: AP}, {class: recall} for every class with ground truth or detections, one detection at a time."""
    ap, recall = {}, {}
    for c in range(num_classes):
        gt = [[b for b, k in zip(*g) if k == c] for g in ground_truth]
        pred = [(s, b, score) for s, d in enumerate(detections) for b, score, k in zip(*d) if k == c]
        npos = sum(map(len, gt))
        if not pred and not npos:
            continue
        taken = [[False] * len(g) for g in gt]
        tp = fp = 0
        rec, prec = [], []
        for s, b, _ in sorted(pred, key=lambda p: -p[2]):  # a stable sort
            ovmax, jmax = -np.inf, None
            for j, g in enumerate(gt[s]):
                if naive_iou(b, g) > ovmax:
                    ovmax, jmax = naive_iou(b, g), j
            if ovmax > thr and not taken[s][jmax]:
                tp, taken[s][jmax] = tp + 1, True
            else:
                fp += 1
            rec.append(tp / npos if npos else 0.0)
            prec.append(tp / (tp + fp))
        ap[c], recall[c] = (loop_voc_ap(rec, prec), rec[-1]) if pred else (0.0, 0.0)
    return ap, recall


def random_split(rng, scenes=8, num_classes=5):
    detections, ground_truth = [], []
    for _ in range(scenes):
        g = rng.integers(0, 7)
        gb = np.concatenate([rng.uniform(0, 4, (g, 3)), rng.uniform(0.3, 1.5, (g, 3))], 1)
        gc = rng.integers(0, num_classes - 1, g)  # the last class never has ground truth
        n = rng.integers(0, 25)
        src = rng.integers(0, max(g, 1), n)
        db = np.concatenate([rng.uniform(0, 4, (n, 3)), rng.uniform(0.3, 1.5, (n, 3))], 1)
        if g:
            db[: n // 2 + 1] = gb[src[: n // 2 + 1]] + rng.normal(0, 0.15, (min(n, n // 2 + 1), 6))
        db[:, 3:] = np.abs(db[:, 3:])
        dc = np.where(rng.random(n) < 0.8, gc[src] if g else 0, rng.integers(0, num_classes, n))
        detections.append((db, np.round(rng.random(n), 1), dc))  # ties on purpose
        ground_truth.append((gb, gc))
    return detections, ground_truth


@pytest.mark.parametrize("seed", range(5))
def test_the_metric_equals_a_per_detection_loop_on_random_scenes(seed):
    rng = np.random.default_rng(seed)
    detections, ground_truth = random_split(rng)
    result = average_precision(detections, ground_truth, 5, iou_thresholds=(0.25, 0.5))
    for thr, res in result.items():
        ap, recall = loop_scores(detections, ground_truth, 5, thr)
        assert sorted(ap) == np.flatnonzero(np.isfinite(res.ap)).tolist()
        for c in ap:
            assert res.ap[c] == pytest.approx(ap[c], abs=1e-9) and res.recall[c] == pytest.approx(recall[c], abs=1e-9)
        with_gt = [c for c in ap if any((g[1] == c).any() for g in ground_truth)]
        assert res.mean_ap == pytest.approx(np.mean([ap[c] for c in with_gt]), abs=1e-9)
    assert 0 < result[0.5].mean_ap < result[0.25].mean_ap < 1


def test_split_scores_from_flat_arrays_equal_the_per_scene_scores_and_are_json(tmp_path):
    detections, ground_truth = random_split(np.random.default_rng(7))
    names = ("chair", "table", "sofa", "bed", "sink")
    flat = dict(scenes=np.array([f"scene{i:04d}_00" for i in range(len(detections))]),
                offsets=np.cumsum([0] + [len(d[0]) for d in detections]),
                boxes=np.concatenate([d[0] for d in detections]), scores=np.concatenate([d[1] for d in detections]),
                classes=np.concatenate([d[2] for d in detections]),
                gt_offsets=np.cumsum([0] + [len(g[0]) for g in ground_truth]),
                gt_boxes=np.concatenate([g[0] for g in ground_truth]),
                gt_classes=np.concatenate([g[1] for g in ground_truth]))
    out = split_scores(**flat, class_names=names)
    want = scores_dict(average_precision(detections, ground_truth, 5), names)
    assert {k: out[k] for k in want} == want
    assert set(out["per_class"]["sink"]) == {"ap25", "ap50", "recall25", "recall50", "num_gt"}
    assert out["per_class"]["sink"]["num_gt"] == 0 and out["num_scenes"] == 8
    assert json.loads(json.dumps(out)) == out
    np.savez(tmp_path / "P.npz", **flat)
    assert split_scores(**np.load(tmp_path / "P.npz"), class_names=names) == out
    with pytest.raises(ValueError, match="offsets"):
        split_scores(**{**flat, "offsets": flat["offsets"][:-1]}, class_names=names)
    with pytest.raises(ValueError, match="classes"):
        split_scores(**flat, class_names=names[:3])
