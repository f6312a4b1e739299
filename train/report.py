"""`train report RUN_DIR`: a PNG of a run's curves and evaluation, and an HTML page with them and its config.

Curves come from ``metrics.csv`` (every loss term, learning rate, data-wait %,
samples/s per logging window) and ``validation.csv`` when the run validated.
The evaluation table is the run's ``best.pt`` (its ``last.pt`` when it did not
validate) on the cache it was trained on: zero-shot, linear probe and few-shot
next to a random-init encoder for stage-1/2 runs, validation-split mIoU and
accuracy for fusion fine-tuning; a fusion pre-training run has no head to
score. It is computed once and kept in ``RUN_DIR/eval.json``.

The cost tables (the paper's Table 5) read ``cost.json`` of the run and of the runs its starting checkpoints
came from (:mod:`train.costs`): :func:`chain_table` for one run, :func:`cost_table` for several side by side,
:func:`run_cost` the numbers behind both.
"""

from __future__ import annotations

import csv
import html
import json
import os

import numpy as np

from train.costs import cost_chain
from train.tasks import TASKS


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError("`train report` draws with matplotlib: pip install 'teacher-cache[viz]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: str, name: str = "metrics.csv") -> dict[str, np.ndarray]:
    path = os.path.join(run_dir, name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir} has no {name}: is it a run directory of `train`?")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} is empty: the run logged no step yet")
    return {k: np.array([float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows]) for k in rows[0]}


OBJECT_COLUMNS = (("zeroshot", "zero-shot top-1"), ("linear", "linear SVM"), ("fewshot", "few-shot"))
SEG_COLUMNS = (("miou", "mIoU"), ("accuracy", "point accuracy"))
SEGMENT_COLUMNS = (("instance_miou", "Inst. mIoU"), ("class_miou", "Cls. mIoU"))
SEMSEG_COLUMNS = (("miou", "mIoU"), ("macc", "mAcc"), ("oa", "OA"))
DETECT_COLUMNS = (("map25", "mAP@0.25"), ("map50", "mAP@0.5"))
PICTURE_TITLES = {"parts.png": "Test objects: predicted and true parts",
                  "boxes.png": "Validation rooms from above: true and detected boxes"}
FINETUNE_COLUMNS = (("overall_accuracy", "OA"), ("mean_class_accuracy", "mAcc"), ("overall_accuracy_vote10",
                                                                                 "OA, vote 10"))


def run_checkpoint(run_dir: str) -> str:
    """best.pt when the run validated, else last.pt."""
    for name in ("best.pt", "last.pt"):
        if os.path.exists(os.path.join(run_dir, name)):
            return os.path.join(run_dir, name)
    raise FileNotFoundError(f"{run_dir} has no checkpoint yet; use --no-eval")


def evaluation(run_dir: str, cache: str, refresh: bool = False, stage: str = "stage1") -> dict:
    """The evaluation table of the run's checkpoint by its task's ``evaluation`` (cached in eval.json); ``{}``
    for a task without a head."""
    path = os.path.join(run_dir, "eval.json")
    if os.path.exists(path) and not refresh:
        with open(path) as f:
            return json.load(f)
    result = TASKS[stage].load("evaluation")(run_checkpoint(run_dir), cache)
    if result:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
    return result


def no_evaluation(ckpt: str, cache: str) -> dict:
    """Fusion pre-training: no head to score (fine-tune it)."""
    return {}


def lidar_seg_evaluation(ckpt: str, cache: str) -> dict:
    from train.eval.lidar_segmentation import evaluate_seg

    seg = evaluate_seg(ckpt, cache, "val")
    return {"checkpoint": os.path.basename(ckpt), "setting": "val split",
            "this run": {"miou": seg["miou"], "accuracy": seg["accuracy"]}}


def partseg_evaluation(ckpt: str, cache: str) -> dict:
    from cache_schema import open_cache
    from train.eval.part_segmentation import evaluate_partseg, load_segmenter

    model, state = load_segmenter(ckpt)
    seg = evaluate_partseg(model, open_cache(cache), "test", state["num_points"], state["class_parts"])
    return {"checkpoint": os.path.basename(ckpt), "setting": "test split",
            "this run": {"instance_miou": seg["instance_miou"], "class_miou": seg["class_miou"]}}


def semseg_evaluation(ckpt: str, cache: str) -> dict:
    from cache_schema import open_cache
    from train.eval.semantic_segmentation import evaluate_rooms, load_semseg

    model, state = load_semseg(ckpt)
    seg = evaluate_rooms(model, open_cache(cache), "test", state["num_points"], block_size=state["block_size"])
    return {"checkpoint": os.path.basename(ckpt), "setting": "test rooms, whole, 3 votes",
            "this run": {"miou": seg["miou"], "macc": seg["macc"], "oa": seg["oa"]}}


def detect_evaluation(ckpt: str, cache: str) -> dict:
    from train.eval.detection import check_classes, evaluate_detection, load_detector

    model, state = load_detector(ckpt)
    c = check_classes(cache, state)
    split = "val" if "val" in c.split_names else "test"
    det = evaluate_detection(model, cache, split, state["num_points"])
    failed = f"; {len(det['failed_rooms'])} rooms failed to build, not scored" if det["failed_rooms"] else ""
    return {"checkpoint": os.path.basename(ckpt), "setting": f"{split} rooms, 3DETR's NMS and AP{failed}",
            "this run": {"map25": det["map25"], "map50": det["map50"]}}


def boxes_picture(ckpt: str, cache_url: str, out_dir: str, dpi: int = 100, rooms: int = 3,
                  min_score: float = 0.3) -> str:
    """``out_dir/boxes.png``: validation rooms from above, true boxes and the run's detections scoring at least
    ``min_score`` (after NMS), labelled by class."""
    from matplotlib.patches import Rectangle

    from train.eval.detection import check_classes, load_detector, predict_split

    plt = _pyplot()
    model, state = load_detector(ckpt)
    cache = check_classes(cache_url, state)
    split = "val" if "val" in cache.split_names else "test"
    names = state["box_classes"]
    arrays = predict_split(model, cache_url, split, state["num_points"], max_rooms=rooms)
    chosen = range(min(rooms, len(arrays["scenes"])))
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, len(chosen), figsize=(6 * len(chosen), 6), dpi=dpi, squeeze=False)
    fig.suptitle(f"{os.path.basename(ckpt)} on {cache_url}: true boxes (solid) and detections scoring >= "
                 f"{min_score} (dashed), from above", fontsize=11)
    for ax, i in zip(axes[0], chosen):
        room = cache.room(int(np.flatnonzero(cache.ids == arrays["scenes"][i])[0]))
        step = max(1, len(room.points) // 20000)
        ax.scatter(room.points[::step, 0], room.points[::step, 1], s=0.2, c="0.75")
        lo, hi = arrays["offsets"][i], arrays["offsets"][i + 1]
        glo, ghi = arrays["gt_offsets"][i], arrays["gt_offsets"][i + 1]
        drawn = [(b, c, "-", None) for b, c in zip(arrays["gt_boxes"][glo:ghi], arrays["gt_classes"][glo:ghi])]
        keep = arrays["scores"][lo:hi] >= min_score
        drawn += [(b, c, "--", s) for b, c, s in zip(arrays["boxes"][lo:hi][keep], arrays["classes"][lo:hi][keep],
                                                     arrays["scores"][lo:hi][keep])]
        for (cx, cy, _, dx, dy, _), c, style, score in drawn:
            colour = cmap(int(c) % 20)
            ax.add_patch(Rectangle((cx - dx / 2, cy - dy / 2), dx, dy, fill=False, lw=1.0, ls=style, ec=colour))
            label = names[int(c)] if score is None else f"{names[int(c)]} {score:.2f}"
            ax.text(cx, cy + (0 if score is None else dy / 2), label, fontsize=5, ha="center", color=colour)
        ax.set_title(f"{arrays['scenes'][i]}: {ghi - glo} true, {int(keep.sum())} detected", fontsize=9)
        ax.set_aspect("equal")
        ax.tick_params(labelsize=7)
    out = os.path.join(out_dir, "boxes.png")
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def finetune_evaluation(ckpt: str, cache: str) -> dict:
    from cache_schema import open_cache
    from train.eval.classification import evaluate_classifier, load_classifier

    model, state = load_classifier(ckpt)
    c = open_cache(cache)
    plain = evaluate_classifier(model, c, "test", state["num_points"])
    voted = evaluate_classifier(model, c, "test", state["num_points"], vote=10)
    return {"checkpoint": os.path.basename(ckpt), "setting": f"test split, {state['protocol']} protocol",
            "this run": {"overall_accuracy": plain["overall_accuracy"],
                         "mean_class_accuracy": plain["mean_class_accuracy"],
                         "overall_accuracy_vote10": voted["overall_accuracy"]}}


def object_evaluation(ckpt: str, cache: str) -> dict:
    from train.eval import frozen

    c = frozen.open_for_eval(cache)
    train_labels = c.labels[c.split("train")]
    shots = int(min(10, np.bincount(train_labels).min()))  # 10-shot, or what the smallest class allows
    result: dict = {"checkpoint": os.path.basename(ckpt), "setting": f"test split; few-shot 5-way {shots}-shot"}
    for name in ("random", ckpt):
        model = frozen.load_student(name, c)
        few = frozen.svm_fewshot(model, c, n_way=min(5, len(np.unique(train_labels))), m_shot=shots)
        row = {"linear": frozen.linear_probe(model, c)["accuracy"], "fewshot": few["mean"],
               "fewshot_std": few["std"], "zeroshot": None, "zeroshot_top5": None}
        try:
            zs = frozen.zeroshot(model, c)
            row["zeroshot"], row["zeroshot_top5"] = zs["top1"], zs["top5"]
        except ValueError:  # no text teacher
            pass
        result["random init" if name == "random" else "this run"] = row
    return result


def report(run_dir: str, out: str | None = None, with_eval: bool = True, dpi: int = 100) -> tuple[str, str]:
    """Write the PNG (default RUN_DIR/report.png) and report.html beside it; returns both paths."""
    plt = _pyplot()
    out = out or os.path.join(run_dir, "report.png")
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    m = read_metrics(run_dir)
    step = m["step"]
    stage = config.get("stage", "?")
    table = dict(evaluation(run_dir, config["config"]["cache"], stage=stage)) if with_eval else {}
    setting, ckpt_name = table.pop("setting", ""), table.pop("checkpoint", "")
    columns = TASKS[stage].load("columns")
    fig, axes = plt.subplots(2, 3, figsize=(16, 9), dpi=dpi)
    fig.suptitle(f"{run_dir}: {stage}, {int(step[-1])} steps, cache {config['cache']['url']} "
                 f"({str(config['cache'].get('fingerprint'))[:19]}...)", fontsize=12)
    ax = axes[0, 0]
    for k in sorted(k for k in m if k.startswith("loss/")):
        ax.plot(step, m[k], label=k[5:], lw=2 if k == "loss/total" else 1.2)
    ax.set_yscale("log")
    ax.set(title="loss per term", xlabel="step", ylabel="loss (log scale)")
    val = read_metrics(run_dir, "validation.csv") if os.path.exists(os.path.join(run_dir, "validation.csv")) else {}
    if val:  # the validation score on a second axis
        twin = ax.twinx()
        twin.plot(val["step"], val["score"], "k--o", ms=3, label="validation score")
        twin.set_ylabel(f"validation score ({config['config'].get('val_split')})")
        twin.legend(loc="lower left", fontsize=8)
    ax.legend(fontsize=8)
    for ax, key, title, ylabel in ((axes[0, 1], "lr", "learning rate", "learning rate (largest param group)"),
                                   (axes[0, 2], "data_wait_pct", "data wait", "% of step time waiting for data"),
                                   (axes[1, 0], "samples_per_s", "throughput", "samples / s (all ranks)")):
        if key in m:
            ax.plot(step, m[key], marker="o", ms=3)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[0, 0].grid(alpha=0.3)
    ax = axes[1, 1]
    ax.axis("off")
    ax.set_title(f"evaluation of {ckpt_name} ({setting})" if table else
                 f"evaluation: none ({TASKS[stage].load('evaluation').__doc__})" if with_eval
                 else "evaluation (skipped: --no-eval)")
    if table:
        cells = [[name] + [("-" if r.get(k) is None else f"{100 * r[k]:.1f}%") for k, _ in columns]
                 for name, r in table.items()]
        t = ax.table(cellText=cells, colLabels=["encoder"] + [label for _, label in columns],
                     loc="center", cellLoc="center")
        t.auto_set_font_size(False)
        t.set_fontsize(10)
        t.scale(1, 2)
    ax = axes[1, 2]
    ax.axis("off")
    ax.set_title("run")
    cfg = {**config["config"], **config["config"].get("weights", {})}  # older fusion runs: one weights dict
    lines = [f"{k}: {cfg[k]}" for k in ("model", "steps", "batch_size", "lr", "num_points", "workers", "seed")
             if k in cfg]
    lines += [f"{k}: {cfg[k]}" for k in ("teacher", "mask_ratio", "shuffle", "local", "use_global", "target", "init",
                                         "teacher_source", "encoder_lr_scale", "decoder_depth", "mode", "dim",
                                         "depth", "labels", "max_points", "contrastive", "regression", "occupancy",
                                         "codebook", "protocol", "recipe", "epochs", "augmentation", "num_group",
                                         "val_split") if k in cfg]
    lines.append(f"world size: {config.get('world_size', 1)}, precision: {config.get('precision', 'fp32')}")
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=9, transform=ax.transAxes)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    parts_png = None
    if TASKS[stage].picture and with_eval:
        parts_png = TASKS[stage].load("picture")(run_checkpoint(run_dir), config["config"]["cache"],
                                                 os.path.dirname(os.path.abspath(out)), dpi=dpi)
    page = os.path.splitext(out)[0] + ".html"
    rows = "".join(f"<tr><td>{html.escape(n)}</td>" + "".join(
        f"<td>{'-' if r.get(k) is None else f'{100 * r[k]:.1f}%'}</td>" for k, _ in columns)
        + "</tr>" for n, r in table.items())
    header = "".join(f"<th>{html.escape(label)}</th>" for _, label in columns)
    with open(page, "w") as f:
        f.write(f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(run_dir)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px}} pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>{html.escape(run_dir)} ({html.escape(stage)})</h1>
<img src="{html.escape(os.path.basename(out))}" alt="curves and evaluation" style="max-width:100%">
{f'<h2>{PICTURE_TITLES.get(os.path.basename(parts_png), "Examples")}</h2><img src="{os.path.basename(parts_png)}" '
 f'alt="examples" style="max-width:100%">' if parts_png else ""}
<h2>Evaluation {html.escape(f"of {ckpt_name} ({setting})" if table else "")}</h2>
<table><tr><th>encoder</th>{header}</tr>{rows}</table>
<h2>Configuration</h2><pre>{html.escape(json.dumps(config, indent=2))}</pre></body></html>
""")
    return out, page


def parts_picture(ckpt: str, cache_url: str, out_dir: str, dpi: int = 100) -> str:
    """``out_dir/parts.png``: the part sheet of a segmentation run's checkpoint."""
    return part_sheet(ckpt, cache_url, os.path.join(out_dir, "parts.png"), dpi=dpi)


def part_sheet(ckpt: str, cache_url: str, out: str, rows: int = 4, dpi: int = 100) -> str:
    """Test objects of different classes, coloured by predicted and by true part, side by side (PNG)."""
    from cache_schema import open_cache
    from cache_schema.show import view_points
    from train.eval.part_segmentation import load_segmenter, predict_parts

    plt = _pyplot()
    model, state = load_segmenter(ckpt)
    cache = open_cache(cache_url)
    test = cache.done_rows("test")
    labels = cache.labels[test]
    chosen = np.array([test[labels == c][0] for c in np.unique(labels)][:rows])  # one shape per class
    points, pred, truth = predict_parts(model, cache, chosen, state["num_points"], state["class_parts"])
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(len(chosen), 2, figsize=(7, 3.2 * len(chosen)), dpi=dpi, squeeze=False)
    fig.suptitle(f"{os.path.basename(ckpt)} on {cache_url}: predicted vs true parts", fontsize=11)
    for r, row in enumerate(chosen):
        own = state["class_parts"][int(cache.labels[row])]
        names = [state["part_names"][p].split("/")[-1] for p in own]
        for ax, ids, title in ((axes[r, 0], pred[r], "predicted"), (axes[r, 1], truth[r], "true")):
            p = view_points(points[r], 30)
            order = np.argsort(p[:, 2])
            colour = np.array([cmap(own.index(int(i)) % 10) if int(i) in own else (0, 0, 0, 1) for i in ids])
            ax.scatter(p[order, 0], p[order, 1], c=colour[order], s=2)
            ax.set_aspect("equal")
            ax.axis("off")
            iou = _shape_miou(pred[r], truth[r], own)
            ax.set_title(f"{cache.label_names[int(cache.labels[row])]}: {title}" +
                         (f" (mIoU {100 * iou:.0f})" if title == "predicted" else ""), fontsize=9)
        handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(k % 10), label=n) for k, n in enumerate(names)]
        axes[r, 1].legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def _shape_miou(pred: np.ndarray, truth: np.ndarray, parts: list[int]) -> float:
    from train.eval.metrics import part_iou_scores

    return part_iou_scores([pred], [truth], np.zeros(1, int), [np.asarray(parts)])["instance_miou"]



def _fine_tunes(stage: str) -> bool:
    spec = TASKS.get(stage)
    return bool(spec and spec.fine_tunes)


def run_cost(run_dir: str) -> dict:
    """A run's cost with everything behind it (Table 5): the chain of runs (:func:`train.costs.cost_chain`),
    device-hours per stage, pre-training and fine-tuning totals, the run's parameter counts and its result.

    ``pretrain_hours`` adds every run of the chain that is not a downstream task (stage-1, stage-2, any other
    pre-training); ``finetune_hours`` the downstream ones. A run of unknown cost (an external checkpoint, a run
    older than ``cost.json``) is left out of the sums: ``hours`` has it as None, ``pretrain_unknown`` /
    ``finetune_unknown`` say a sum lacks it."""
    chain = cost_chain(run_dir)
    hours: dict[str, float | None] = {}
    out = {"pretrain_hours": 0.0, "finetune_hours": 0.0, "pretrain_unknown": False, "finetune_unknown": False}
    for record in chain:
        phase = "finetune" if _fine_tunes(record["stage"]) else "pretrain"
        h = record.get("device_hours")
        if h is None:
            out[f"{phase}_unknown"] = True
            hours[record["stage"]] = None
        else:
            out[f"{phase}_hours"] += h
            if record["stage"] not in hours or hours[record["stage"]] is not None:
                hours[record["stage"]] = hours.get(record["stage"], 0.0) + h
    last = chain[-1]
    return {"run_dir": run_dir, "stage": last["stage"], "chain": chain, "hours": hours, **out,
            "devices": sorted({r["device"] for r in chain if r.get("device")}),
            "parameters": last.get("parameters") or {}, "result": run_result(run_dir, last["stage"])}


def run_result(run_dir: str, stage: str) -> dict | None:
    """The run's headline score as its report has it: the first column of its evaluation (``eval.json``, e.g.
    fine-tuning's test OA), else its best validation (``best.json``); None when it has neither."""
    if stage not in TASKS:
        return None
    key, label = TASKS[stage].load("columns")[0]
    for name, source in (("eval.json", "evaluation"), ("best.json", "best validation")):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                record = json.load(f)
            value = record.get("this run", record).get(key)
            if value is not None:
                return {"label": label, "value": value, "source": source}
    return None


def _hours(h: float | None) -> str:
    return "?" if h is None else f"{h:.3g}"


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.3g}M"


def _result(r: dict | None) -> str:
    return "-" if r is None else f"{r['label']} {100 * r['value']:.1f}% ({r['source']})"


def _totals(cost: dict) -> tuple[str, str]:
    """The pre-training and fine-tuning sums, ``+ ?`` where a run of unknown cost is missing from one."""
    return tuple(_hours(cost[f"{p}_hours"]) + (" + ?" if cost[f"{p}_unknown"] else "") for p in ("pretrain", "finetune"))


def chain_table(run_dir: str) -> str:
    """Markdown: one row per run behind ``run_dir`` (first run first) with its device, steps, device-hours and
    parameter counts, then the pre-training and fine-tuning totals and the run's result."""
    cost = run_cost(run_dir)
    lines = ["| stage | run | device | steps | device-hours | #params | encoder |", "|---" * 7 + "|"]
    for r in cost["chain"]:
        device = "?" if not r.get("device") else f"{r['device']} x{r.get('world_size', 1)}"
        p = r.get("parameters") or {}
        lines.append(f"| {r['stage']} | {r['run_dir']} | {device} | {r.get('steps') or '?'} | "
                     f"{_hours(r.get('device_hours'))} | {_count(p.get('total'))} | {_count(p.get('encoder'))} |")
    pretrain, finetune = _totals(cost)
    lines += ["", f"pre-train device-hours: {pretrain}", f"fine-tune device-hours: {finetune}",
              f"result: {_result(cost['result'])}"]
    return "\n".join(lines)


def cost_table(run_dirs: list[str]) -> str:
    """Markdown in the shape of the paper's Table 5, one row per run: #params (the run's trained module: for a
    fine-tuning run encoder + head, what Point-MAE's 22.1M counts), device-hours of each pre-training stage behind
    it, the pre-training and fine-tuning totals, and its result. ``?`` / ``+ ?``: a run of unknown cost."""
    costs = [run_cost(d) for d in run_dirs]
    stages = list(dict.fromkeys(r["stage"] for c in costs for r in c["chain"]
                                if r["stage"] in TASKS and not _fine_tunes(r["stage"])))  # in chain order
    header = ["run", "devices", "#params", *(f"{s} device-h" for s in stages), "pre-train device-h",
              "fine-tune device-h", "result"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for c in costs:
        cells = [c["run_dir"], ", ".join(c["devices"]) or "?", _count(c["parameters"].get("total")),
                 *(_hours(c["hours"][s]) if s in c["hours"] else "-" for s in stages), *_totals(c),
                 _result(c["result"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
