"""`train eval ...`: scores of a checkpoint (or an untrained encoder) on a cache."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from cache_schema.errors import CacheError
from train.cli.options import Cache, Ckpt, Json, Points, Preset, fail

app = typer.Typer(help="Evaluate a checkpoint (or --ckpt random) on a cache.", no_args_is_help=True)


def show(result: dict, as_json: bool) -> None:
    """One JSON object, or one aligned ``key: value`` line per entry."""
    width = max(map(len, result))
    typer.echo(json.dumps(result) if as_json else "\n".join(f"{k:>{width}}: {v}" for k, v in result.items()))


@app.command("seg")
def eval_seg(cache: Cache, ckpt: Annotated[str, typer.Option(help="A `fusion finetune` checkpoint.")],
             split: str = "val", json_out: Json = False) -> None:
    """LiDAR-only segmentation: mIoU, per-class IoU and accuracy (label 255 ignored)."""
    from train.eval.lidar_segmentation import evaluate_seg

    try:
        result = {"eval": "seg", "ckpt": ckpt, "cache": cache, **evaluate_seg(ckpt, cache, split)}
    except (CacheError, FileNotFoundError, ValueError, KeyError) as e:
        fail(e)
    show(result, json_out)



def _evaluate(what: str, cache: str, ckpt: str, model: str, as_json: bool, **kwargs) -> None:
    from train.eval import frozen

    try:
        c = frozen.open_for_eval(cache)
        student = frozen.load_student(ckpt, c, model)
        result = getattr(frozen, what)(student, c, **kwargs)
    except (CacheError, FileNotFoundError, ValueError, KeyError) as e:
        fail(e)
    result = {"eval": what, "ckpt": ckpt, "cache": cache, **result}
    show(result, as_json)


@app.command("zeroshot")
def eval_zeroshot(cache: Cache, ckpt: Ckpt, split: str = "test", model: Preset = "point-mae-tiny",
                  num_points: Points = 1024, json_out: Json = False) -> None:
    """Zero-shot classification through the text-teacher head: top-1 / top-5 against class prompts."""
    _evaluate("zeroshot", cache, ckpt, model, json_out, split=split, num_points=num_points)


@app.command("linear")
def eval_linear(cache: Cache, ckpt: Ckpt, model: Preset = "point-mae-tiny", num_points: Points = 1024,
                c: Annotated[float, typer.Option(help="SVM regularisation C.")] = 1.0, json_out: Json = False) -> None:
    """Linear probe: a linear SVM on frozen global features (train split), accuracy on the test split."""
    _evaluate("linear_probe", cache, ckpt, model, json_out, num_points=num_points, c=c)


@app.command("svm-fewshot")
def eval_svm_fewshot(cache: Cache, ckpt: Ckpt, model: Preset = "point-mae-tiny", n_way: int = 5, m_shot: int = 10,
                 draws: int = 10, num_points: Points = 1024, json_out: Json = False) -> None:
    """n-way m-shot linear SVMs on frozen features over random draws (not the fine-tuning protocol of the papers'
    few-shot tables: that is `train fewshot`)."""
    _evaluate("svm_fewshot", cache, ckpt, model, json_out, n_way=n_way, m_shot=m_shot, draws=draws,
              num_points=num_points)



@app.command("classify")
def eval_classify(
    cache: Cache,
    ckpt: Annotated[str, typer.Option(help="A `train finetune` checkpoint (best.pt or last.pt).")],
    split: str = "test",
    vote: Annotated[int, typer.Option(help="Average the logits of N copies: the cloud and N-1 ScaleAndTranslate "
                                           "ones (Point-MAE's voting; 1 = none).")] = 1,
    num_points: Annotated[Optional[int], typer.Option(help="Points per shape (default: the run's).")] = None,
    seed: int = 0,
    json_out: Json = False,
) -> None:
    """Classification: overall accuracy and mean class accuracy of a fine-tuned model, with optional voting."""
    from cache_schema import open_cache
    from train.eval.classification import evaluate_classifier, load_classifier

    try:
        model, state = load_classifier(ckpt)
        c = open_cache(cache)
        if tuple(c.label_names) != tuple(state["label_names"]):
            raise ValueError(f"{cache} has other classes than the run was fine-tuned on ({len(c.label_names)} vs "
                             f"{len(state['label_names'])})")
        result = {"eval": "classify", "ckpt": ckpt, "cache": cache,
                  **evaluate_classifier(model, c, split, num_points or state["num_points"], vote, seed)}
    except (CacheError, FileNotFoundError, ValueError, KeyError) as e:
        fail(e)
    show(result, json_out)


@app.command("partseg")
def eval_partseg(
    cache: Cache,
    ckpt: Annotated[str, typer.Option(help="A `train segment` checkpoint (best.pt or last.pt).")],
    split: str = "test",
    num_points: Annotated[Optional[int], typer.Option(help="Points per shape (default: the run's).")] = None,
    json_out: Json = False,
) -> None:
    """Part segmentation: instance mIoU and class mIoU (predictions restricted to each shape's class parts)."""
    from cache_schema import open_cache
    from train.eval.part_segmentation import evaluate_partseg, load_segmenter

    try:
        model, state = load_segmenter(ckpt)
        c = open_cache(cache)
        if list(c.part_names) != list(state["part_names"]):
            raise ValueError(f"{cache} has other parts than the run was trained on ({len(c.part_names)} vs "
                             f"{len(state['part_names'])})")
        result = {"eval": "partseg", "ckpt": ckpt, "cache": cache,
                  **evaluate_partseg(model, c, split, num_points or state["num_points"], state["class_parts"])}
    except (CacheError, FileNotFoundError, ValueError, KeyError) as e:
        fail(e)
    show(result, json_out)


@app.command("semseg")
def eval_semseg(
    cache: Cache,
    ckpt: Annotated[str, typer.Option(help="A `train semseg` checkpoint (best.pt or last.pt).")],
    split: str = "test",
    votes: Annotated[int, typer.Option(min=1, help="Passes of sliding blocks, each with its own random padding; "
                                                  "each adds a vote per point (the reference's 3).")] = 3,
    batch_size: Annotated[int, typer.Option(min=1, help="Blocks per forward pass.")] = 32,
    seed: int = 0,
    save_predictions: Annotated[Optional[str], typer.Option(
        help="Write P.npz: rooms (R,) ids, offsets (R+1,), pred and label (sum,) in the cache's class order.")]
    = None,
    json_out: Json = False,
) -> None:
    """Indoor semantic segmentation of whole rooms (sliding 1 m blocks at stride 0.5, votes): mIoU, mAcc, OA and
    per-class IoU over every point of the split's rooms."""
    from cache_schema import open_cache
    from train.eval.semantic_segmentation import evaluate_rooms, load_semseg

    try:
        model, state = load_semseg(ckpt)
        c = open_cache(cache)
        if c.kind != "rooms":
            raise ValueError(f"{cache} is a {c.kind} cache; `train eval semseg` reads a rooms cache")
        if list(c.label_names) != list(state["label_names"]):
            raise ValueError(f"{cache} has other classes than the run was trained on ({len(c.label_names)} vs "
                             f"{len(state['label_names'])})")
        scores = evaluate_rooms(model, c, split, state["num_points"], votes, state.get("block_size", 1.0), seed,
                                batch_size, progress=not json_out, save_predictions=save_predictions)
        scores.pop("confusion")
        if scores["failed_rooms"]:
            typer.echo(f"warning: {len(scores['failed_rooms'])} rooms of {split!r} failed to build and are not "
                       f"scored: {', '.join(scores['failed_rooms'][:5])} (see `cache info {cache}`)", err=True)
        result = {"eval": "semseg", "ckpt": ckpt, "cache": cache, **scores}
    except (CacheError, FileNotFoundError, ValueError, KeyError) as e:
        fail(e)
    show(result, json_out)


@app.command("detect")
def eval_detect(
    cache: Cache,
    ckpt: Annotated[str, typer.Option(help="A `train detect` checkpoint (best.pt or last.pt).")],
    split: Annotated[Optional[str], typer.Option(help="Rooms to score (default: val when the cache has it, "
                                                      "else test).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Rooms per forward pass.")] = 8,
    seed: Annotated[int, typer.Option(help="Seeds the points sampled from each room.")] = 0,
    save_predictions: Annotated[Optional[str], typer.Option(
        help="Write P.npz: scenes (S,), offsets (S+1,), boxes (sum, 6), scores, classes, gt_offsets, gt_boxes, "
             "gt_classes and class_names, enough to recompute the AP.")] = None,
    json_out: Json = False,
) -> None:
    """Indoor 3D detection as 3DETR scores ScanNetV2: per-class NMS, then AP per class and mAP at IoU 0.25 and 0.5
    over the split's rooms (VOC all-point AP, mAP over the classes with ground truth)."""
    from train.eval.detection import check_classes, evaluate_detection, load_detector

    try:
        model, state = load_detector(ckpt)
        c = check_classes(cache, state)
        split = split or next((s for s in ("val", "test") if s in c.split_names), None)
        if split not in c.split_names:
            raise ValueError(f"{cache} has no {split or 'val or test'} split (it has {', '.join(c.split_names)}); "
                             "name one with --split")
        scores = evaluate_detection(model, cache, split, state["num_points"], seed, batch_size,
                                    progress=not json_out, save_predictions=save_predictions)
        if scores["failed_rooms"]:
            typer.echo(f"warning: {len(scores['failed_rooms'])} rooms of {split!r} failed to build and are not "
                       f"scored: {', '.join(scores['failed_rooms'][:5])} (see `cache info {cache}`)", err=True)
        result = {"eval": "detect", "ckpt": ckpt, "cache": cache, "split": split, **scores}
    except (CacheError, FileNotFoundError, ValueError, KeyError) as e:
        fail(e)
    show(result, json_out)
