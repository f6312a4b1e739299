"""scripts/reproduce.py: tables as runs, seeds, reuse of finished runs, mean +- std, and the paper's config files."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys

import numpy as np
import pytest

from train import reproduce as rp

FAST = {"epochs": 1, "warmup_epochs": 0, "num_points": 128, "batch_size": 8, "workers": 0, "num_group": 16,
        "group_size": 16}


def write(path, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


@pytest.fixture
def toy_configs(tmp_path, small_demo_cache):
    """A two-row table: fine-tuning from a shared stage-1 run, and from random init; two columns of one run."""
    root = str(tmp_path / "configs")
    write(f"{root}/pretrain/toy/stage1.json", {"stage": "stage1", "config": {
        "cache": small_demo_cache, "model": "point-mae-tiny", "steps": 2, "batch_size": 4, "num_points": 128,
        "workers": 0}})
    write(f"{root}/toy/table.json", {"title": "Toy table", "rows": ["point-mae/ours", "point-mae/random"], "columns": [
        {"name": "acc", "cache": small_demo_cache, "metric": "accuracy"},
        {"name": "acc vote", "cache": small_demo_cache, "metric": "accuracy-vote10"}]})
    write(f"{root}/toy/point-mae/ours.json", {"stage": "finetune", "row": "ours", "paper": {"acc": 94.0},
                                              "config": {"init": "runs/paper/pretrain/toy/stage1/last.pt", **FAST}})
    write(f"{root}/toy/point-mae/random.json", {"stage": "finetune", "row": "random", "paper": {},
                                                "config": {"init": "random", "model": "point-mae-tiny", **FAST}})
    return root


def test_plan_runs_shared_pretraining_once_and_first(toy_configs):
    table = rp.load_table("toy", toy_configs)
    runs, scored_by = rp.plan(table, toy_configs)
    ids = [r.id for r in runs]
    assert ids.count("pretrain/toy/stage1") == 1 and ids.index("pretrain/toy/stage1") == 0
    assert len(ids) == 3  # the two columns read one run of each row
    assert scored_by["point-mae/ours", "acc"] == scored_by["point-mae/ours", "acc vote"]
    settings = rp.settings_for(runs[1], 7, "/o", None)
    assert settings["init"] == "/o/seed7/pretrain/toy/stage1/last.pt" and settings["seed"] == 7


def test_toy_table_two_seeds_mean_and_std_and_determinism(toy_configs, tmp_path):
    out = str(tmp_path / "runs")
    text = rp.reproduce("toy", [0, 1], out, root=toy_configs, log=lambda s: None)
    table = rp.load_table("toy", toy_configs)
    _, scored_by = rp.plan(table, toy_configs)
    lines = {line.split("|")[1].strip(): line for line in text.split("Training cost")[0].splitlines()
             if line.startswith("| ")}
    assert "pre-train device-h" in text.split("Training cost")[1]  # Table 5's columns, from the runs' cost.json
    for row in table.rows:
        for i, col in enumerate(table.columns):
            per_seed = []
            for seed in (0, 1):
                saved = json.load(open(os.path.join(out, f"seed{seed}", scored_by[row.id, col.name], rp.SCORES)))
                per_seed.append(saved[f"{col.metric} {col.cache}"])
            cell = lines[row.name].split("|")[3 + i].strip()
            mean, std, paper = re.fullmatch(r"(\S+) \+- (\S+) \((\S+)\)", cell).groups()
            assert float(mean) == pytest.approx(round(np.mean(per_seed), 2), abs=1e-9)
            assert float(std) == pytest.approx(round(np.std(per_seed, ddof=1), 2), abs=1e-9)
            assert paper == ("94.0" if (row.name, col.name) == ("ours", "acc") else "-")
    # a score is the run's own evaluation: best.pt on the test split, in percent
    from cache_schema import open_cache
    from train.eval.classification import evaluate_classifier, load_classifier

    folder = os.path.join(out, "seed1", scored_by["point-mae/ours", "acc"])
    model, state = load_classifier(os.path.join(folder, "best.pt"))
    plain = evaluate_classifier(model, open_cache(table.columns[0].cache), "test", state["num_points"])
    assert json.load(open(os.path.join(folder, rp.SCORES)))[f"accuracy {table.columns[0].cache}"] == \
        pytest.approx(100 * plain["overall_accuracy"])
    # the seed reached the run, and the stage-1 run was the one fine-tuned from
    cfg = json.load(open(os.path.join(folder, "config.json")))
    assert cfg["config"]["seed"] == 1 and cfg["config"]["init"] == os.path.join(out, "seed1/pretrain/toy/stage1/last.pt")
    # finished runs are not run again, and the table prints the same
    calls = []
    again = rp.reproduce("toy", [0, 1], out, root=toy_configs, runner=calls.append, log=lambda s: None)
    assert calls == [] and again == text
    # determinism: the whole chain again with seed 1 (stage-1; fine-tuning with augmentation and dropout; 10
    # voting copies) gives the same weights and figures, while seed 0 gave others
    other = str(tmp_path / "again")
    rp.reproduce("toy", [1], other, root=toy_configs, log=lambda s: None)
    import torch

    for row in table.rows:
        run = scored_by[row.id, "acc"]
        weights = [torch.load(os.path.join(d, run, "last.pt"), weights_only=False)["model"]
                   for d in (f"{out}/seed1", f"{other}/seed1", f"{out}/seed0")]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
        assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])
        scores = [json.load(open(os.path.join(d, run, rp.SCORES))) for d in (f"{out}/seed1", f"{other}/seed1")]
        assert scores[0] == scores[1]


def test_stopped_run_resumes(toy_configs, tmp_path):
    """A run with a last.pt but no reproduce.json (killed) is resumed, not restarted; a failed run raises."""
    out = str(tmp_path / "runs")
    calls = []

    def runner(argv):  # each run in its own `python -m train` process, as --launch starts them
        calls.append(argv)
        rp.launcher(sys.executable)(argv)

    table = rp.load_table("toy", toy_configs)
    runs, _ = rp.plan(table, toy_configs)
    rp.execute(runs[:1], [0], out, runner=runner, log=lambda s: None)
    os.remove(os.path.join(out, "seed0", runs[0].id, rp.DONE))
    rp.execute(runs[:1], [0], out, runner=runner, log=lambda s: None)
    assert "--resume" not in calls[0] and "--resume" in calls[1]
    with pytest.raises(RuntimeError, match="failed"):
        rp.launcher(sys.executable)(["stage1", "--cache", str(tmp_path / "missing.zarr"), "--out", out + "/x"])


def test_a_run_stopped_before_its_first_checkpoint_starts_again_and_an_edited_row_is_refused(toy_configs, tmp_path):
    out = str(tmp_path / "runs")
    table = rp.load_table("toy", toy_configs)
    runs, _ = rp.plan(table, toy_configs)
    calls = []
    folder = rp.run_dir(out, 0, runs[0].id)
    os.makedirs(folder)
    open(os.path.join(folder, "config.json"), "w").write("{}")  # a run killed before its first save
    rp.execute(runs[:1], [0], out, runner=calls.append, log=lambda s: None)
    assert "--overwrite" in calls[0] and "--resume" not in calls[0]
    edited = dataclasses.replace(runs[0], config={**runs[0].config, "steps": 3})
    with pytest.raises(ValueError, match="trained with other settings.*use another --out"):
        rp.execute([edited], [0], out, runner=calls.append, log=lambda s: None)
    assert len(calls) == 1


def test_a_stopped_fewshot_run_is_resumed_fold_by_fold(tmp_path):
    """Few-shot has no last.pt of its own: a folder with its settings file is a started run, resumed per fold."""
    from train.downstream.fewshot import SETTINGS

    out, calls = str(tmp_path / "runs"), []
    run = rp.Run("table1/fewshot", "fewshot", {"cache": str(tmp_path / "m40.zarr"), "way": 5, "shot": 10})
    folder = rp.run_dir(out, 0, run.id)
    os.makedirs(os.path.join(folder, "fold-0"))
    rp.execute([run], [0], out, runner=calls.append, log=lambda s: None)  # killed before its settings were written
    open(os.path.join(folder, SETTINGS), "w").write("{}")
    os.remove(os.path.join(folder, rp.DONE))
    rp.execute([run], [0], out, runner=calls.append, log=lambda s: None)
    assert "--overwrite" in calls[0] and "--resume" not in calls[0]
    assert "--resume" in calls[1] and "--overwrite" not in calls[1]


def test_batches_are_split_over_the_launched_processes(toy_configs, tmp_path, small_demo_cache, capsys,
                                                      monkeypatch):
    """--launch on N processes: each run's per-process --batch-size is the row's (or its recipe's) / N, so the
    global batch is the paper's; finished runs are compared as they ran, so the table prints again anywhere."""
    assert rp.launch_processes(None) == 1 and rp.launch_processes("srun --ntasks 8 python") == 1
    assert rp.launch_processes("torchrun --nproc_per_node=8") == 8
    assert rp.launch_processes("torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d") == 8
    assert rp.launch_processes("torchrun --nnodes=2:2 --nproc_per_node=4") == 8
    with pytest.raises(ValueError, match="pass --processes N"):
        rp.launch_processes("torchrun --nnodes=1:4 --nproc_per_node=4")  # elastic: no fixed count
    with pytest.raises(ValueError, match="pass --processes N"):
        rp.launch_processes("torchrun --nproc_per_node=gpu")
    runs, _ = rp.plan(rp.load_table("toy", toy_configs), toy_configs)
    from_recipe = rp.Run("toy/recipe", "finetune", {"cache": small_demo_cache, "init": "random",
                                                    "model": "point-mae-tiny"})
    out, calls = str(tmp_path / "runs"), []

    def runner(argv):  # what the launched run would be given; its folder stands for the run
        calls.append(argv)
        os.makedirs(argv[argv.index("--out") + 1])

    rp.execute([runs[0], from_recipe], [0], out, runner=runner, log=lambda s: None, processes=2)

    def batch(argv):
        return int(argv[argv.index("--batch-size") + 1])

    assert batch(calls[0]) == 4 // 2  # the row's 4
    assert batch(calls[1]) == 32 // 2  # the fine-tuning recipe's 32
    calls.clear()
    with monkeypatch.context() as m:  # printed again without --launch: compared by the row's settings, resolving
        m.setattr(rp, "split_batch", lambda *a: pytest.fail("a finished run was resolved again"))  # nothing
        rp.execute([runs[0], from_recipe], [0], out, runner=runner, log=lambda s: None)
    assert calls == []
    with pytest.raises(ValueError, match="toy/recipe: a batch of 32 does not split over 32 processes into at least 2"):
        rp.execute([from_recipe], [1], out, runner=runner, log=lambda s: None, processes=32)
    with pytest.raises(ValueError, match="pretrain/toy/stage1: a batch of 4 does not split over 3 processes"):
        rp.execute([runs[0]], [1], out, runner=runner, log=lambda s: None, processes=3)
    monkeypatch.syspath_prepend(os.path.join(rp.REPO, "scripts"))
    from reproduce import main

    assert main(["toy", "--configs", toy_configs, "--out", out, "--processes", "2"]) == 2
    assert "runs without --launch train in this one process" in capsys.readouterr().err


def test_bad_table_and_bad_setting_are_one_line_errors(toy_configs):
    with pytest.raises(ValueError, match="no table 'table99'.*toy"):
        rp.load_table("table99", toy_configs)
    with pytest.raises(ValueError, match="stage1 has no setting 'epochz'"):
        rp.command_argv("stage1", {"epochz": 3})


def test_mean_std_is_numpy_sample_std():
    assert rp.mean_std([90.0, 92.0, 97.0]) == pytest.approx((93.0, float(np.std([90, 92, 97], ddof=1))))
    assert rp.mean_std([91.5]) == (91.5, None)  # one seed has no spread, printed without one
    table = rp.Table("T", "T: toy", [rp.Column("MN40", "caches/m.zarr", "overall_accuracy")],
                     [rp.Row("e/ours", "Ours", "e", "finetune", {}, {"MN40": 93.0})])
    one = rp.format_table(table, {("e/ours", "MN40"): [91.5]}, [0])
    assert "| Ours | e | 91.50 (93.0) |" in one and "+-" not in one.split("\n", 3)[3] and "seed 0 alone" in one
    two = rp.format_table(table, {("e/ours", "MN40"): [91.5, 92.5]}, [0, 1])
    assert f"| Ours | e | 92.00 +- {np.std([91.5, 92.5], ddof=1):.2f} (93.0) |" in two


# ---- the paper's own config files ----

def all_run_files():
    root = rp.CONFIG_ROOT
    files = []
    for dirpath, _, names in os.walk(root):
        files += [os.path.join(dirpath, n) for n in names if n.endswith(".json")
                  and n not in ("table.json", "demo.json")]
    return sorted(files)


@pytest.mark.parametrize("table", rp.list_tables())
def test_paper_tables_plan_and_every_run_builds_its_config(table):
    """Every table of configs/paper plans (each reference is a file), every run's settings make its command's
    config, and in the demo every cache maps to a demo cache."""
    t = rp.load_table(table)
    assert t.rows and all(any(v is not None for v in r.paper.values()) or "captions" in r.id for r in t.rows)
    runs, _ = rp.plan(t)
    demo = rp.Demo.load()
    for run in runs:
        for d in (None, demo):
            argv = rp.command_argv(run.stage, rp.settings_for(run, 0, "/out", d))
            assert argv[0] in ("stage1", "stage2", "mae", "joint", "finetune", "fewshot", "segment")


def test_paper_run_files_are_accepted_by_config(tmp_path):
    """`train <stage> --config FILE` reads every run file of configs/paper (its stage, its settings)."""
    files = all_run_files()
    assert len(files) > 40
    for path in files:
        saved = json.load(open(path))
        names = {f.name for f in dataclasses.fields(rp.stage_command(saved["stage"])[1])}
        assert set(saved["config"]) <= names, (path, set(saved["config"]) - names)


def test_paper_rows_start_from_the_runs_the_paper_describes():
    """The chains behind some rows, spelled out: a wrong reference would train the wrong ablation."""
    def chain(table, row):
        t = rp.load_table(table)
        runs, _ = rp.plan(dataclasses.replace(t, rows=[r for r in t.rows if r.id == row]))
        return [r.id for r in runs if r.id.startswith("pretrain/")]

    assert chain("table4", "point-m2ae/no-global") == ["pretrain/point-m2ae/stage1", "pretrain/point-m2ae/stage2-no-global"]
    assert chain("table4", "point-m2ae/stage1-only") == ["pretrain/point-m2ae/stage1"]
    assert chain("table9", "point-mae/reversed") == ["pretrain/point-mae/mae", "pretrain/point-mae/stage1-after-mae"]
    assert chain("table9", "point-mae/joint") == ["pretrain/point-mae/joint"]
    assert chain("table8", "point-m2ae/points") == ["pretrain/point-m2ae/stage1", "pretrain/point-m2ae/stage2-points"]
    assert chain("table3", "point-mae/point-mae") == ["pretrain/point-mae/mae"]
    no_global = json.load(open(os.path.join(rp.CONFIG_ROOT, "pretrain/point-m2ae/stage2-no-global.json")))["config"]
    assert no_global["use_global"] is False and no_global.get("shuffle", True) is True
    points = json.load(open(os.path.join(rp.CONFIG_ROOT, "pretrain/point-mae/stage2-points.json")))["config"]
    assert points["target"] == "points"
