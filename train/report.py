"""`train report RUN_DIR`: a PNG of a run's curves and evaluation, and an HTML page with them and its config.

Curves come from ``metrics.csv`` (every loss term, learning rate, data-wait %,
samples/s per logging window); the evaluation table is the run's ``best.pt``
(zero-shot, linear probe, few-shot) on the cache it was trained on, computed
once and kept in ``RUN_DIR/eval.json``.
"""

from __future__ import annotations

import csv
import html
import json
import os

import numpy as np


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise RuntimeError("`train report` draws with matplotlib: pip install 'teacher-cache[viz]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: str) -> dict[str, np.ndarray]:
    path = os.path.join(run_dir, "metrics.csv")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{run_dir} has no metrics.csv: is it a run directory of `train stage1/stage2`?")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path} is empty: the run logged no step yet")
    return {k: np.array([float(r[k]) if r.get(k) not in (None, "") else np.nan for r in rows]) for k in rows[0]}


def evaluation(run_dir: str, cache: str, refresh: bool = False) -> dict:
    """Zero-shot, linear and few-shot of the run's best.pt (cached in eval.json)."""
    path = os.path.join(run_dir, "eval.json")
    if os.path.exists(path) and not refresh:
        with open(path) as f:
            return json.load(f)
    from train import evaluate

    ckpt = os.path.join(run_dir, "best.pt")
    if not os.path.exists(ckpt):
        raise FileNotFoundError(f"{run_dir} has no best.pt yet (the run has not finished); use --no-eval")
    c = evaluate.open_for_eval(cache)
    train_labels = c.labels[c.split("train")]
    shots = int(min(10, np.bincount(train_labels).min()))  # 10-shot, or what the smallest class allows
    result: dict = {"fewshot_setting": f"5-way {shots}-shot"}
    for name in ("random", ckpt):
        model = evaluate.load_student(name, c)
        few = evaluate.fewshot(model, c, n_way=min(5, len(np.unique(train_labels))), m_shot=shots)
        row = {"linear": evaluate.linear_probe(model, c)["accuracy"], "fewshot": few["mean"],
               "fewshot_std": few["std"], "zeroshot": None, "zeroshot_top5": None}
        try:
            zs = evaluate.zeroshot(model, c)
            row["zeroshot"], row["zeroshot_top5"] = zs["top1"], zs["top5"]
        except ValueError:  # no text teacher
            pass
        result["random init" if name == "random" else "this run"] = row
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    return result


def report(run_dir: str, out: str | None = None, with_eval: bool = True, dpi: int = 100) -> tuple[str, str]:
    """Write the PNG (default RUN_DIR/report.png) and report.html beside it; returns both paths."""
    plt = _pyplot()
    out = out or os.path.join(run_dir, "report.png")
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    m = read_metrics(run_dir)
    step = m["step"]
    table = dict(evaluation(run_dir, config["config"]["cache"])) if with_eval else {}
    few_label = table.pop("fewshot_setting", "5-way 10-shot")
    fig, axes = plt.subplots(2, 3, figsize=(16, 9), dpi=dpi)
    stage = config.get("stage", "?")
    fig.suptitle(f"{run_dir}: {stage}, {int(step[-1])} steps, cache {config['cache']['url']} "
                 f"({str(config['cache'].get('fingerprint'))[:19]}...)", fontsize=12)
    ax = axes[0, 0]
    for k in sorted(k for k in m if k.startswith("loss/")):
        ax.plot(step, m[k], label=k[5:], lw=2 if k == "loss/total" else 1.2)
    ax.set_yscale("log")
    ax.set(title="loss per term", xlabel="step", ylabel="loss (log scale)")
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
    ax.set_title("evaluation (test split)" if table else "evaluation (skipped: --no-eval)")
    if table:
        cells = [[name] + [("-" if r[k] is None else f"{100 * r[k]:.1f}%") for k in ("zeroshot", "linear", "fewshot")]
                 for name, r in table.items()]
        t = ax.table(cellText=cells, colLabels=["encoder", "zero-shot top-1", "linear SVM", few_label],
                     loc="center", cellLoc="center")
        t.auto_set_font_size(False)
        t.set_fontsize(10)
        t.scale(1, 2)
    ax = axes[1, 2]
    ax.axis("off")
    ax.set_title("run")
    cfg = config["config"]
    lines = [f"{k}: {cfg[k]}" for k in ("model", "steps", "batch_size", "lr", "num_points", "workers", "seed")
             if k in cfg]
    lines += [f"{k}: {cfg[k]}" for k in ("teacher", "mask_ratio", "shuffle", "local", "use_global", "target", "init",
                                         "teacher_source", "encoder_lr_scale", "decoder_depth") if k in cfg]
    lines.append(f"world size: {config.get('world_size', 1)}")
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=9, transform=ax.transAxes)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    page = os.path.splitext(out)[0] + ".html"
    rows = "".join(f"<tr><td>{html.escape(n)}</td>" + "".join(
        f"<td>{'-' if r[k] is None else f'{100 * r[k]:.1f}%'}</td>" for k in ("zeroshot", "linear", "fewshot"))
        + "</tr>" for n, r in table.items())
    with open(page, "w") as f:
        f.write(f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(run_dir)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 10px}} pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>{html.escape(run_dir)} ({html.escape(stage)})</h1>
<img src="{html.escape(os.path.basename(out))}" alt="curves and evaluation" style="max-width:100%">
<h2>Evaluation</h2>
<table><tr><th>encoder</th><th>zero-shot top-1</th><th>linear SVM</th><th>{few_label}</th></tr>{rows}</table>
<h2>Configuration</h2><pre>{html.escape(json.dumps(config, indent=2))}</pre></body></html>
""")
    return out, page
