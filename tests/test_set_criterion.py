"""3DETR's matcher and set criterion against brute force and plain per-pair loops on small hand-built scenes."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from train.models.set_criterion import HungarianMatcher, SetCriterion, normalize_targets

C = 3  # classes; index C is "no object"


def giou_naive(a: list[float], b: list[float]) -> float:
    """GIoU of two centre-size boxes, one axis at a time."""
    inter = enclosing = 1.0
    for d in range(3):
        lo_a, hi_a = a[d] - a[3 + d] / 2, a[d] + a[3 + d] / 2
        lo_b, hi_b = b[d] - b[3 + d] / 2, b[d] + b[3 + d] / 2
        inter *= max(0.0, min(hi_a, hi_b) - max(lo_a, lo_b))
        enclosing *= max(hi_a, hi_b) - min(lo_a, lo_b)
    union = math.prod(a[3:]) + math.prod(b[3:]) - inter
    return inter / union - (enclosing - union) / enclosing


def make_batch(seed: int, q: int, counts: list[int], k: int, aux: int = 0) -> tuple[dict, dict, dict]:
    """Random outputs and targets; scene i has counts[i] real boxes at random rows of k, the others garbage
    (label -1). Returns (outputs, targets, leaves) with the leaves the tensors gradients should reach."""
    g = torch.Generator().manual_seed(seed)
    b = len(counts)
    lo = torch.rand(b, 3, generator=g) - 1
    hi = lo + 3 + 2 * torch.rand(b, 3, generator=g)
    present = torch.zeros(b, k)
    for i, n in enumerate(counts):
        present[i, torch.randperm(k, generator=g)[:n]] = 1
    centers = lo[:, None] + (hi - lo)[:, None] * torch.rand(b, k, 3, generator=g)
    sizes = 0.2 + torch.rand(b, k, 3, generator=g)
    labels = torch.randint(0, C, (b, k), generator=g).masked_fill(present == 0, -1)
    norm = normalize_targets(centers, sizes, present, lo, hi)
    targets = {"gt_box_centers": centers, "gt_box_sizes": sizes, "gt_box_centers_normalized": norm.centers,
               "gt_box_sizes_normalized": norm.sizes, "gt_box_sem_cls_label": labels, "gt_box_present": present,
               "point_cloud_dims_min": lo, "point_cloud_dims_max": hi}
    layers, leaves = [], {}
    for layer in range(aux + 1):
        raw = {"logits": torch.randn(b, q, C + 1, generator=g),
               "center_normalized": torch.rand(b, q, 3, generator=g),
               "size_normalized": 0.05 + 0.3 * torch.rand(b, q, 3, generator=g),
               "center_unnormalized": lo[:, None] + (hi - lo)[:, None] * torch.rand(b, q, 3, generator=g),
               "size_unnormalized": 0.2 + torch.rand(b, q, 3, generator=g)}
        raw = {key: v.requires_grad_() for key, v in raw.items()}
        leaves[layer] = raw
        prob = raw["logits"].detach().softmax(-1)
        layers.append({"sem_cls_logits": raw["logits"], "sem_cls_prob": prob[..., :-1],
                       "objectness_prob": 1 - prob[..., -1],
                       **{key: raw[key] for key in raw if key != "logits"}})
    return {"outputs": layers[-1], "aux_outputs": layers[:-1]}, targets, leaves


def naive_cost(out: dict, targets: dict, i: int, q: int, k: int, w: dict) -> float:
    out = {key: v.detach() for key, v in out.items()}
    box = lambda c, s: [*c.tolist(), *s.tolist()]
    label = int(targets["gt_box_sem_cls_label"][i, k])
    return (-w["class"] * float(out["sem_cls_prob"][i, q, label])
            - w["objectness"] * float(out["objectness_prob"][i, q])
            + w["center"] * float((out["center_normalized"][i, q] - targets["gt_box_centers_normalized"][i, k])
                                  .abs().sum())
            - w["giou"] * giou_naive(box(out["center_unnormalized"][i, q], out["size_unnormalized"][i, q]),
                                     box(targets["gt_box_centers"][i, k], targets["gt_box_sizes"][i, k])))


WEIGHTS = {"class": 1.5, "objectness": 0.7, "giou": 2.0, "center": 0.3}


def test_cost_matrix_entries_are_the_per_pair_costs():
    outputs, targets, _ = make_batch(0, q=5, counts=[3, 4], k=4)
    out = outputs["outputs"]
    matcher = HungarianMatcher(cost_class=1.5, cost_objectness=0.7, cost_giou=2.0, cost_center=0.3)
    cost = matcher.cost_matrix(out, targets)
    assert cost.shape == (2, 5, 4)
    for i, q, k in itertools.product(range(2), range(5), range(4)):
        if targets["gt_box_present"][i, k]:
            assert cost[i, q, k].item() == pytest.approx(naive_cost(out, targets, i, q, k, WEIGHTS), abs=1e-5)


def brute_force_minimum(cost: np.ndarray) -> float:
    """Least total cost over all one-to-one matchings of min(Q, K) pairs of a (Q, K) matrix."""
    q, k = cost.shape
    if q >= k:
        return min(sum(cost[p, j] for j, p in enumerate(perm)) for perm in itertools.permutations(range(q), k))
    return min(sum(cost[i, p] for i, p in enumerate(perm)) for perm in itertools.permutations(range(k), q))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("q,counts,k", [(6, [4, 0, 2], 4), (5, [1, 3, 4], 5), (2, [4, 2], 4), (3, [3, 0], 6)])
def test_matcher_reaches_the_brute_force_minimum_and_ignores_padding(seed, q, counts, k):
    outputs, targets, _ = make_batch(seed, q, counts, k)
    out = outputs["outputs"]
    matcher = HungarianMatcher(cost_class=1.5, cost_objectness=0.7, cost_giou=2.0, cost_center=0.3)
    cost = matcher.cost_matrix(out, targets).numpy()
    match = matcher(out, targets)
    present = targets["gt_box_present"] > 0
    for i, n in enumerate(counts):
        real = np.flatnonzero(present[i].numpy())
        queries, rows = (t.numpy() for t in match.pairs[i])
        assert len(queries) == min(q, n)
        assert len(set(queries)) == len(queries) and len(set(rows)) == len(rows)  # one-to-one
        assert set(rows) <= set(real)  # padded rows never matched
        assert torch.equal(match.matched[i].nonzero().flatten(), torch.from_numpy(queries))
        assert torch.equal(match.gt_index[i, match.matched[i]], torch.from_numpy(rows))
        if n == 0:
            assert not match.matched[i].any()
            continue
        total = cost[i, queries, rows].sum()
        assert total == pytest.approx(brute_force_minimum(cost[i][:, real]), abs=1e-5)


def expected_losses(outputs: dict, targets: dict, matcher: HungarianMatcher, no_object: float,
                    num_boxes: float) -> dict[str, float]:
    """3DETR's four terms (unweighted) of one layer, by loops over the matcher's pairs."""
    match = matcher(outputs, targets)
    outputs = {key: v.detach() for key, v in outputs.items()}
    logits = outputs["sem_cls_logits"]
    b, q, _ = logits.shape
    nll_sum = weight_sum = 0.0
    center = size = giou = 0.0
    for i in range(b):
        label_of = dict(zip(match.pairs[i][0].tolist(), match.pairs[i][1].tolist()))
        for j in range(q):
            row = label_of.get(j)
            label = C if row is None else int(targets["gt_box_sem_cls_label"][i, row])
            w = no_object if label == C else 1.0
            nll_sum += -w * float(torch.log_softmax(logits[i, j], -1)[label])
            weight_sum += w
            if row is None:
                continue
            center += float((outputs["center_normalized"][i, j] - targets["gt_box_centers_normalized"][i, row])
                            .abs().sum())
            size += float((outputs["size_normalized"][i, j] - targets["gt_box_sizes_normalized"][i, row]).abs().sum())
            giou += 1 - giou_naive([*outputs["center_unnormalized"][i, j].tolist(),
                                    *outputs["size_unnormalized"][i, j].tolist()],
                                   [*targets["gt_box_centers"][i, row].tolist(), *targets["gt_box_sizes"][i, row].tolist()])
    return {"sem_cls": nll_sum / weight_sum, "center": center / num_boxes, "size": size / num_boxes,
            "giou": giou / num_boxes}


LOSS_WEIGHTS = {"sem_cls": 1.3, "center": 5.0, "size": 0.8, "giou": 2.0}


def criterion(no_object: float = 0.25, **kw) -> SetCriterion:
    return SetCriterion(C, HungarianMatcher(), sem_cls_weight=1.3, no_object_weight=no_object, center_weight=5.0,
                        size_weight=0.8, giou_weight=2.0, **kw)


def test_losses_match_loops_with_a_boxless_scene_and_aux_layers_summed():
    outputs, targets, _ = make_batch(3, q=5, counts=[3, 0], k=4, aux=2)
    total, logs = criterion()(outputs, targets)
    layers = [outputs["outputs"], *outputs["aux_outputs"]]
    expected_total = 0.0
    for n, layer in enumerate(layers):
        suffix = "" if n == 0 else f"_{n - 1}"
        expected = expected_losses(layer, targets, HungarianMatcher(), 0.25, num_boxes=3)
        for term, value in expected.items():
            assert logs[f"loss/{term}{suffix}"].item() == pytest.approx(LOSS_WEIGHTS[term] * value, rel=1e-5)
            expected_total += LOSS_WEIGHTS[term] * value
    assert total.item() == pytest.approx(expected_total, rel=1e-5)
    assert set(logs) == {f"loss/{t}{s}" for t in [*LOSS_WEIGHTS, "cardinality"] for s in ["", "_0", "_1"]}
    # the no-object weight changes only the classification term
    _, heavier = criterion(no_object=1.0)(outputs, targets)
    expected = expected_losses(outputs["outputs"], targets, HungarianMatcher(), 1.0, num_boxes=3)
    assert heavier["loss/sem_cls"].item() == pytest.approx(1.3 * expected["sem_cls"], rel=1e-5)
    assert heavier["loss/sem_cls"].item() != pytest.approx(logs["loss/sem_cls"].item(), rel=1e-3)
    assert heavier["loss/giou"].item() == pytest.approx(logs["loss/giou"].item())


def test_box_count_is_averaged_over_processes_and_floored_at_one():
    outputs, targets, _ = make_batch(4, q=4, counts=[2, 1], k=3)
    _, alone = criterion()(outputs, targets)
    other_rank_has_9 = criterion(reduce_mean=lambda n: (n + 9) / 2)  # N = (3 + 9) / 2 = 6
    _, shared = other_rank_has_9(outputs, targets)
    for term in ("center", "size", "giou"):
        assert shared[f"loss/{term}"].item() == pytest.approx(alone[f"loss/{term}"].item() * 3 / 6, rel=1e-5)
    assert shared["loss/sem_cls"].item() == pytest.approx(alone["loss/sem_cls"].item())  # a weighted mean

    outputs, targets, _ = make_batch(5, q=4, counts=[0, 0], k=3)
    total, logs = criterion()(outputs, targets)
    assert logs["loss/center"] == 0 and logs["loss/size"] == 0 and logs["loss/giou"] == 0
    logits = outputs["outputs"]["sem_cls_logits"].detach()
    assert logs["loss/sem_cls"].item() == pytest.approx(1.3 * -logits.log_softmax(-1)[..., C].mean().item(), rel=1e-5)
    assert torch.isfinite(total)


def test_a_batch_padded_to_no_rows_is_all_no_object():
    outputs, targets, _ = make_batch(6, q=4, counts=[0, 0], k=3)
    empty = {key: v[:, :0] if v.dim() > 1 and v.shape[1] == 3 and key.startswith("gt_") else v
             for key, v in targets.items()}
    assert empty["gt_box_present"].shape == (2, 0)
    total, _ = criterion()(outputs, empty)
    _, padded = criterion()(outputs, targets)
    assert total.item() == pytest.approx(sum(v.item() for k, v in padded.items() if "cardinality" not in k))


def test_gradients_reach_logits_centres_and_sizes():
    outputs, targets, leaves = make_batch(7, q=5, counts=[3, 2], k=4, aux=1)
    total, _ = criterion()(outputs, targets)
    total.backward()
    for layer in leaves.values():
        for name, leaf in layer.items():
            assert leaf.grad is not None and leaf.grad.abs().sum() > 0, name


def test_a_perfect_prediction_has_no_box_loss():
    _, targets, _ = make_batch(8, q=4, counts=[3, 2], k=4)
    present = targets["gt_box_present"]
    order = present.argsort(dim=1, descending=True, stable=True)  # query j predicts row order[j], real rows first
    take = lambda x: x.gather(1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    labels = targets["gt_box_sem_cls_label"].gather(1, order)
    real = present.gather(1, order) > 0
    logits = torch.full((2, 4, C + 1), -20.0)
    logits.scatter_(2, torch.where(real, labels, C).unsqueeze(-1), 20.0)
    prob = logits.softmax(-1)
    out = {"sem_cls_logits": logits, "sem_cls_prob": prob[..., :-1], "objectness_prob": 1 - prob[..., -1],
           "center_normalized": take(targets["gt_box_centers_normalized"]),
           "size_normalized": take(targets["gt_box_sizes_normalized"]),
           "center_unnormalized": take(targets["gt_box_centers"]), "size_unnormalized": take(targets["gt_box_sizes"])}
    _, logs = criterion()({"outputs": out}, targets)
    assert logs["loss/center"] == 0 and logs["loss/size"] == 0
    assert logs["loss/giou"].abs() < 1e-6
    assert logs["loss/sem_cls"] < 1e-6 and logs["loss/cardinality"] == 0


def test_normalize_targets_is_the_datasets_formula():
    g = np.random.default_rng(0)
    lo, hi = g.uniform(-3, 0, (2, 3)), g.uniform(1, 4, (2, 3))
    centers, sizes = g.uniform(-3, 4, (2, 5, 3)), g.uniform(0.1, 2, (2, 5, 3))
    present = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], np.float32)
    norm = normalize_targets(centers, sizes, present, lo, hi)
    for i, k in itertools.product(range(2), range(5)):
        want_c = (centers[i, k] - lo[i]) / (hi[i] - lo[i]) if present[i, k] else np.zeros(3)
        want_s = sizes[i, k] / (hi[i] - lo[i]) if present[i, k] else np.zeros(3)
        np.testing.assert_allclose(norm.centers[i, k], want_c, rtol=1e-12)
        np.testing.assert_allclose(norm.sizes[i, k], want_s, rtol=1e-12)
    as_tensors = normalize_targets(*(torch.from_numpy(np.asarray(x)) for x in (centers, sizes, present, lo, hi)))
    np.testing.assert_allclose(as_tensors.centers.numpy(), norm.centers, rtol=1e-12)
    one_scene = normalize_targets(centers[0], sizes[0], present[0], lo[0], hi[0])  # (K, 3) with dims (3,)
    np.testing.assert_allclose(one_scene.sizes, norm.sizes[0], rtol=1e-12)


def test_bad_inputs_are_named():
    outputs, targets, _ = make_batch(9, q=3, counts=[2], k=3)
    with pytest.raises(ValueError, match="sem_cls_logits"):
        SetCriterion(C + 1)(outputs, targets)
    bad = {**targets, "gt_box_sem_cls_label": targets["gt_box_sem_cls_label"].masked_fill(
        targets["gt_box_present"] > 0, C)}
    with pytest.raises(ValueError, match="gt_box_sem_cls_label"):
        SetCriterion(C)(outputs, bad)
