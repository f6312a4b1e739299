"""A table of the paper as runs: every row's runs, for every seed, then mean +- std beside the paper's figure.

    python scripts/reproduce.py table4 --seeds 0,1,2 --out runs/paper          # real caches, real schedules
    python scripts/reproduce.py table4 --demo --seeds 0,1 --out runs/paper-demo  # built-in demo caches, CPU minutes

A table is a folder ``configs/paper/<table>/``: ``table.json`` (title, columns, row order) and one file per row
and encoder, ``<encoder>/<row>.json``. A row file is a run's config as ``config.json`` holds it (``stage`` and
``config``, so ``train <stage> --config FILE`` accepts it) plus ``row`` (its name in the table) and ``paper`` (the
published figure of each column). A column either trains the row's run on the column's cache (``"mode":
"train"``: fine-tuning on ModelNet40 and on ScanObjectNN are two runs of one row) or evaluates the row's run,
trained once, on it (``"mode": "eval"``: zero-shot).

Runs start from other runs by path: a setting ``runs/paper/<id>/last.pt`` names the run of
``configs/paper/<id>.json`` (shared pre-training lives in ``configs/paper/pretrain/``), which is run first, once
per seed, and reused by every row that starts from it. Run folders are ``OUT/seed<N>/<id>``; a finished run
(``reproduce.json`` written) is not run again, a stopped one resumes from its ``last.pt``.

``--demo`` (``configs/paper/demo.json``) maps every cache to a built-in demo cache, every encoder to its tiny
preset and shortens every stage's schedule, so a table runs on a CPU; its figures say nothing about the paper's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_ROOT = os.path.join(REPO, "configs", "paper")
RUN_PREFIX = "runs/paper/"
DONE = "reproduce.json"  # written in a run folder once the run finished: the argv it ran with
SCORES = "reproduce-scores.json"  # a run's scores, by metric and cache, so printing again evaluates nothing


@dataclass
class Column:
    name: str
    cache: str
    metric: str  # a key of METRICS
    mode: str = "train"  # "train": the row's run on this cache; "eval": the row's run evaluated on it
    settings: dict = field(default_factory=dict)  # the column's own settings of the row's run (few-shot way, shot)
    run: str | None = None  # the run's folder name under the row (default: the cache's name)

    @property
    def run_name(self) -> str:
        return self.run or cache_name(self.cache)


@dataclass
class Row:
    id: str  # "<encoder>/<row>", its file under the table's folder
    name: str
    encoder: str
    stage: str
    config: dict
    paper: dict[str, float | None]


@dataclass
class Table:
    name: str
    title: str
    columns: list[Column]
    rows: list[Row]
    note: str = ""


@dataclass
class Run:
    """One training run: its id (its folder under ``OUT/seed<N>``), stage, settings and the runs it starts from."""

    id: str
    stage: str
    config: dict
    needs: list[str] = field(default_factory=list)


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def list_tables(root: str = CONFIG_ROOT) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "table.json")))


def load_table(name: str, root: str = CONFIG_ROOT) -> Table:
    """``configs/paper/<name>/table.json`` and its row files, checked: every row names a figure per column."""
    folder = os.path.join(root, name)
    if not os.path.exists(os.path.join(folder, "table.json")):
        raise ValueError(f"no table {name!r} in {root}; the tables are: {', '.join(list_tables(root))}")
    spec = read_json(os.path.join(folder, "table.json"))
    columns = [Column(**c) for c in spec["columns"]]
    rows = []
    for row_id in spec["rows"]:
        path = os.path.join(folder, f"{row_id}.json")
        r = read_json(path)
        unknown = set(r.get("paper", {})) - {c.name for c in columns}
        if unknown:
            raise ValueError(f"{path}: 'paper' names no column of {name}: {', '.join(sorted(unknown))}")
        rows.append(Row(row_id, r["row"], row_id.split("/")[0], r["stage"], r["config"],
                        {c.name: r.get("paper", {}).get(c.name) for c in columns}))
    return Table(name, spec["title"], columns, rows, spec.get("note", ""))


def references(config: dict) -> list[str]:
    """The run ids a config starts from: its settings of the form ``runs/paper/<id>/<file>``."""
    return [os.path.dirname(v[len(RUN_PREFIX):]) for k, v in config.items()
            if k != "out" and isinstance(v, str) and v.startswith(RUN_PREFIX)]


def plan(table: Table, root: str = CONFIG_ROOT) -> tuple[list[Run], dict[tuple[str, str], str]]:
    """Every run the table needs, each after the runs it starts from, each once; and which run scores each
    (row, column)."""
    runs: dict[str, Run] = {}

    def add(run: Run) -> None:
        for ref in run.needs:
            if ref not in runs:
                r = read_json(os.path.join(root, f"{ref}.json"))
                add(Run(ref, r["stage"], r["config"], references(r["config"])))
        if run.id in runs and (runs[run.id].stage, runs[run.id].config) != (run.stage, run.config):
            raise ValueError(f"run {run.id} is asked for with two different configs; name the columns' runs apart")
        runs.setdefault(run.id, run)

    scored_by = {}
    for row in table.rows:
        for col in table.columns:
            if col.mode == "eval":
                run = Run(f"{table.name}/{row.id}", row.stage, row.config, references(row.config))
            else:
                run = Run(f"{table.name}/{row.id}/{col.run_name}", row.stage,
                          {**row.config, **col.settings, "cache": col.cache}, references(row.config))
            add(run)
            scored_by[row.id, col.name] = run.id
    return list(runs.values()), scored_by


def cache_name(url: str) -> str:
    """``caches/scanobjectnn-obj_bg.zarr`` -> ``scanobjectnn-obj_bg``."""
    return re.sub(r"\.zarr$", "", os.path.basename(url.rstrip("/")))


@dataclass(frozen=True)
class Demo:
    """``configs/paper/demo.json``: caches and encoders for a CPU, each stage's shortened settings, and the command
    that builds each demo cache (paths relative to the repository)."""

    caches: dict[str, str]
    models: dict[str, str]
    stages: dict[str, dict[str, Any]]
    build: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, root: str = CONFIG_ROOT) -> Demo:
        return cls(**read_json(os.path.join(root, "demo.json")))

    def cache(self, url: str) -> str:
        if url not in self.caches:
            raise ValueError(f"configs/paper/demo.json maps no demo cache to {url}")
        return os.path.join(REPO, self.caches[url])

    def ensure_caches(self, urls: set[str], log: Callable[[str], None] = print) -> None:
        """Build the demo caches ``urls`` need that are not there yet (``make cache ...``, in the repository)."""
        for url in sorted(urls):
            local = self.caches[url]
            if not _finished_cache(os.path.join(REPO, local)):  # absent, or a build that was stopped: (re)build
                if local not in self.build:
                    raise ValueError(f"{local} does not exist and configs/paper/demo.json says not how to build it")
                log(f"building {local}: {self.build[local]}")
                subprocess.run(self.build[local].split(), cwd=REPO, check=True)


def _finished_cache(path: str) -> bool:
    from cache_schema import open_cache

    try:
        open_cache(path)
        return True
    except Exception:  # absent, unreadable or not finalized: the build command finishes or starts it
        return False


def settings_for(run: Run, seed: int, out: str, demo: Demo | None) -> dict:
    """The run's settings for this seed: other runs' paths moved under ``OUT/seed<N>``, and the demo's changes."""
    settings = {k: (os.path.join(out, f"seed{seed}", v[len(RUN_PREFIX):]) if isinstance(v, str)
                    and v.startswith(RUN_PREFIX) else v) for k, v in run.config.items()}
    settings.update(seed=seed, out=run_dir(out, seed, run.id))
    if demo is not None:
        settings["cache"] = demo.cache(settings["cache"])
        if settings.get("model") in demo.models:
            settings["model"] = demo.models[settings["model"]]
        settings.update(demo.stages.get(run.stage, {}))
    # local paths absolute: a run started in another directory (--launch) reads and writes the same places
    return {k: (_absolute(v) if k in PATH_SETTINGS else v) for k, v in settings.items()}


PATH_SETTINGS = ("cache", "out", "init", "teacher", "val_cache")


def _absolute(value):
    """A local path made absolute; URLs (``s3://``), ``random`` and ``ckpt`` as they are."""
    if not isinstance(value, str) or "://" in value or value in ("random", "ckpt"):
        return value
    return os.path.abspath(value)


def run_dir(out: str, seed: int, run_id: str) -> str:
    return os.path.abspath(os.path.join(out, f"seed{seed}", run_id))


def stage_command(stage: str) -> tuple[list[str], type]:
    """The ``train`` subcommand of a row's ``stage`` and its config class: a registered task, or few-shot (a
    command of many fine-tuning runs, not a task of its own)."""
    from train.tasks import TASKS

    if stage == "fewshot":
        from train.downstream.fewshot import FewshotConfig

        return ["fewshot"], FewshotConfig
    if stage not in TASKS:
        raise ValueError(f"stage {stage!r} is no train command; the stages are fewshot, {', '.join(TASKS)}")
    return TASKS[stage].command.split()[1:], TASKS[stage].config_class()


def command_argv(stage: str, settings: dict) -> list[str]:
    """``train`` argv that runs ``stage`` with ``settings`` (option names and flags from the config class)."""
    from train.settings import option_name

    argv, cls = stage_command(stage)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in settings.items():
        if key not in fields:
            raise ValueError(f"{stage} has no setting {key!r}")
        f = fields[key]
        if value is None:
            continue
        flags = f.metadata.get("flags") or ()
        if isinstance(value, bool):
            on, _, off = (flags[0] if flags else f"--{key.replace('_', '-')}").partition("/")
            argv.append(on if value else (off or f"--no-{on[2:]}"))
        elif f.metadata.get("to_cli"):
            for item in f.metadata["to_cli"](value) or []:
                argv += [option_name(f), str(item)]
        elif isinstance(value, (list, tuple)):
            for item in value:
                argv += [option_name(f), str(item)]
        else:
            argv += [option_name(f), str(value)]
    return argv


def train_cli(argv: list[str]) -> None:
    """Run ``train ARGV`` in this process (no interpreter start per run); a failed run raises."""
    from train.cli import app

    code = app(argv, standalone_mode=False)
    if code not in (None, 0):
        raise RuntimeError(f"`train {' '.join(argv)}` failed (exit code {code})")


def launcher(prefix: str) -> Callable[[list[str]], None]:
    """A runner that starts each run as ``PREFIX -m train ARGV`` (e.g. ``torchrun --nproc_per_node=8``), in the
    repository; few-shot, which runs in one process, starts with this Python alone."""
    import shlex
    import sys

    def run(argv: list[str]) -> None:
        head = [sys.executable] if argv[0] == "fewshot" else shlex.split(prefix)
        done = subprocess.run([*head, "-m", "train", *argv], cwd=REPO)
        if done.returncode:
            raise RuntimeError(f"`{' '.join(head)} -m train {' '.join(argv)}` failed (exit code {done.returncode})")

    return run


def launch_processes(prefix: str | None) -> int:
    """How many processes a run started with ``--launch PREFIX`` trains on: torchrun's ``--nproc_per_node`` x
    ``--nnodes``; 1 for any other launcher (or none), whose count ``--processes`` gives."""
    import shlex

    if not prefix:
        return 1
    words, counts = shlex.split(prefix), {}
    for i, word in enumerate(words):
        name, eq, value = word.partition("=")
        key = name.replace("_", "-")
        if key in ("--nproc-per-node", "--nnodes"):
            value = value if eq else (words[i + 1] if i + 1 < len(words) else "")
            low, colon, high = value.partition(":")  # elastic --nnodes MIN:MAX: fixed only when MIN == MAX
            value = low if colon and low == high else value
            if not value.isdigit():
                raise ValueError(f"--launch {prefix!r}: {name} {value!r} is no fixed number of processes; pass "
                                 "--processes N (every run's batch is split over them)")
            counts[key] = int(value)
    return counts.get("--nproc-per-node", 1) * counts.get("--nnodes", 1)


def split_batch(run: Run, settings: dict, processes: int) -> dict:
    """``settings`` with the run's batch (the row's, else its recipe's) split over ``processes``: the loop's
    ``--batch-size`` is per process, and the rows give the paper's global batch. Few-shot runs in one process.
    ``settings`` are checked first (:func:`command_argv`): a misspelt one gets its one-line error, not this."""
    if processes == 1 or run.stage == "fewshot":
        return settings
    batch = settings.get("batch_size")
    if batch is None:  # the recipe decides: resolve it as the run will (after the runs it starts from)
        _, cls = stage_command(run.stage)
        cfg = cls(**settings)
        batch = (cfg.resolved() if hasattr(cfg, "resolved") else cfg).batch_size
    if batch % processes or batch // processes < 2:  # heads' BatchNorm needs 2 samples per process
        raise ValueError(f"{run.id}: a batch of {batch} does not split over {processes} processes into at least 2 "
                         "each; pick a process count that divides it, or set \"batch_size\" in a copy of the "
                         "config folder (--configs)")
    return {**settings, "batch_size": batch // processes}


def execute(runs: list[Run], seeds: list[int], out: str, demo: Demo | None = None,
            runner: Callable[[list[str]], None] = train_cli, log: Callable[[str], None] = print,
            processes: int = 1) -> None:
    """Every run for every seed, in order; finished runs are skipped, stopped ones resumed. Each run's batch is
    split over the ``processes`` it is launched on."""
    from train.downstream.fewshot import SETTINGS as FEWSHOT_SETTINGS

    for seed in seeds:
        for run in runs:
            settings = settings_for(run, seed, out, demo)
            folder = settings["out"]
            done = os.path.join(folder, DONE)
            row_argv = command_argv(run.stage, settings)  # the row's settings, its batch unsplit
            if os.path.exists(done):
                before = read_json(done)
                # the row's argv, not the per-process one it ran with: a table trained on 8 GPUs prints anywhere
                if before.get("row_argv", before["argv"]) != row_argv:  # an edited row: its old run must not stand
                    raise ValueError(f"{folder} was trained with other settings than {run.id} now has "
                                     f"(`train {' '.join(before['argv'])}`); use another --out, or delete the "
                                     "folder to train it again")
                log(f"seed {seed}: {run.id}: done before")
                continue
            argv = command_argv(run.stage, split_batch(run, settings, processes))
            if os.path.exists(os.path.join(folder, "last.pt" if run.stage != "fewshot" else FEWSHOT_SETTINGS)):
                resume = ["--resume"]  # stopped: continue exactly (few-shot: keep the folds that ended)
            elif os.path.isdir(folder) and os.listdir(folder):
                resume = ["--overwrite"]  # stopped before its first checkpoint: start again
            else:
                resume = []
            log(f"seed {seed}: {run.id}: train {' '.join([*argv, *resume])}")
            t0 = time.perf_counter()
            runner([*argv, *resume, "--no-progress"])
            with open(done, "w") as f:
                json.dump({"argv": argv, "row_argv": row_argv, "processes": processes,
                           "seconds": round(time.perf_counter() - t0, 1)}, f, indent=2)


# ---- scoring: a metric reads a finished run folder (and the cache it is scored on); percentages ----

def _checkpoint(folder: str) -> str:
    from train.report import run_checkpoint

    return run_checkpoint(folder)


def _classify(folder: str, cache: str, seed: int, vote: int) -> float:
    from cache_schema import open_cache
    from train.eval.classification import evaluate_classifier, load_classifier

    model, state = load_classifier(_checkpoint(folder))
    return 100 * evaluate_classifier(model, open_cache(cache), "test", state["num_points"], vote=vote,
                                     seed=seed)["overall_accuracy"]


def _zeroshot(folder: str, cache: str, key: str) -> float:
    """At the run's own input size: its patches then span what they spanned in training."""
    from train.eval import frozen

    c = frozen.open_for_eval(cache)
    num_points = read_json(os.path.join(folder, "config.json"))["config"]["num_points"]
    return 100 * frozen.zeroshot(frozen.load_student(_checkpoint(folder), c), c, num_points=num_points)[key]


def _fewshot(folder: str) -> float:
    return 100 * read_json(os.path.join(folder, "fewshot.json"))["mean"]


def _partseg(folder: str, cache: str, key: str) -> float:
    from train.report import partseg_evaluation

    return 100 * partseg_evaluation(_checkpoint(folder), cache)["this run"][key]


METRICS: dict[str, Callable[[str, str, int], float]] = {
    "accuracy": lambda folder, cache, seed: _classify(folder, cache, seed, vote=1),
    "accuracy-vote10": lambda folder, cache, seed: _classify(folder, cache, seed, vote=10),
    "fewshot": lambda folder, cache, seed: _fewshot(folder),
    "zeroshot-top1": lambda folder, cache, seed: _zeroshot(folder, cache, "top1"),
    "zeroshot-top5": lambda folder, cache, seed: _zeroshot(folder, cache, "top5"),
    "partseg-class-miou": lambda folder, cache, seed: _partseg(folder, cache, "class_miou"),
    "partseg-instance-miou": lambda folder, cache, seed: _partseg(folder, cache, "instance_miou"),
}


def score(folder: str, metric: str, cache: str, seed: int) -> float:
    """A metric of a finished run, computed once and kept in the run folder."""
    path = os.path.join(folder, SCORES)
    saved = read_json(path) if os.path.exists(path) else {}
    key = f"{metric} {cache}"
    if key not in saved:
        saved[key] = float(METRICS[metric](folder, cache, seed))
        with open(path, "w") as f:
            json.dump(saved, f, indent=2)
    return saved[key]


def collect(table: Table, scored_by: dict[tuple[str, str], str], seeds: list[int], out: str,
            demo: Demo | None = None) -> dict[tuple[str, str], list[float]]:
    """(row id, column) -> the score of every seed."""
    scores = {}
    for row in table.rows:
        for col in table.columns:
            cache = demo.cache(col.cache) if demo else col.cache
            scores[row.id, col.name] = [score(run_dir(out, s, scored_by[row.id, col.name]), col.metric, cache, s)
                                        for s in seeds]
    return scores


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and the sample standard deviation (ddof 1; ``None`` for one seed, which has none)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else None


def format_table(table: Table, scores: dict[tuple[str, str], list[float]], seeds: list[int],
                 demo: bool = False) -> str:
    """Markdown: each cell ``ours mean +- std (paper X)``."""
    lines = [f"{table.title}", ""]
    if demo:
        lines += [("DEMO RUN: built-in demo caches, tiny encoders and shortened schedules (configs/paper/demo.json); "
                   "the figures say nothing about the paper's, only that the table's runs work end to end."), ""]
    lines += [f"mean +- std over seeds {', '.join(map(str, seeds))} (sample std); paper's figure in brackets"
              if len(seeds) > 1 else f"seed {seeds[0]} alone (no std: run more --seeds); paper's figure in brackets",
              ""]
    lines.append("| row | encoder | " + " | ".join(c.name for c in table.columns) + " |")
    lines.append("|---|---|" + "---|" * len(table.columns))
    for row in table.rows:
        cells = []
        for col in table.columns:
            mean, std = mean_std(scores[row.id, col.name])
            paper = row.paper.get(col.name)
            spread = "" if std is None else f" +- {std:.2f}"
            cells.append(f"{mean:.2f}{spread} ({'-' if paper is None else paper})")
        lines.append(f"| {row.name} | {row.encoder} | " + " | ".join(cells) + " |")
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines)


def reproduce(name: str, seeds: list[int], out: str, demo: bool = False, root: str = CONFIG_ROOT,
              runner: Callable[[list[str]], None] = train_cli, log: Callable[[str], None] = print,
              processes: int = 1) -> str:
    """Run (or resume) every run of table ``name`` for every seed, each on ``processes`` processes (its batch split
    over them); the printed table."""
    table = load_table(name, root)
    demo_cfg = Demo.load(root) if demo else None
    runs, scored_by = plan(table, root)
    if demo_cfg is not None:
        demo_cfg.ensure_caches({r.config["cache"] for r in runs} | {c.cache for c in table.columns}, log)
    if processes > 1:
        log(f"each run's batch is split over {processes} processes, so the global batch is the row's")
    execute(runs, seeds, out, demo_cfg, runner, log, processes)
    text = format_table(table, collect(table, scored_by, seeds, out, demo_cfg), seeds, demo)
    return f"{text}\n\n{costs(table, scored_by, seeds[0], out)}"


def costs(table: Table, scored_by: dict[tuple[str, str], str], seed: int, out: str) -> str:
    """The training cost behind each row's first column (seed ``seed``), in the shape of the paper's Table 5."""
    from train.report import cost_table

    first = table.columns[0].name
    folders = [run_dir(out, seed, scored_by[row.id, first]) for row in table.rows]
    # a few-shot run is a folder of fold runs: the first fold's run stands for its cost
    folders = [os.path.join(f, "fold-0", "run") if os.path.exists(os.path.join(f, "fewshot.json")) else f
               for f in folders]
    return (f"Training cost behind each row's {first!r} run (seed {seed}; device-hours from each run's cost.json; "
            f"few-shot: its first fold):\n\n{cost_table(folders)}")
