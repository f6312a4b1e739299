"""Few-shot classification as published (Point-BERT's procedure, Table 1 of the MMPD paper): n-way m-shot, folds.

    train fewshot --cache caches/modelnet40-resampled.zarr --way 5 --shot 10 --folds 10 --init runs/s2/last.pt \
        --out runs/fewshot-5w10s

Per fold (seeded by ``seed`` and the fold): draw ``way`` classes; per class
``shot`` training objects from the train split and ``queries`` (20) test
objects from the test split. The fold's objects are written as a small points
cache (``OUT/fold-K/cache.zarr``, classes renumbered 0..way-1) and the full
model is fine-tuned on it with the classification recipe (Point-MAE's
few-shot config: 150 epochs, 10 warm-up), validating on the fold's test
objects every epoch, as those works do; the fold's score is its best overall
accuracy. The result is the mean and standard deviation over folds
(``OUT/fewshot.json``). Point-BERT's released folds are pickles and are not
loaded: folds are regenerated with the same procedure, so the objects differ
from the released ones.

Nothing finished is lost: each fold writes ``OUT/fold-K/fold.json`` when it
ends, and ``--resume`` keeps those folds, continues a stopped fold from its
``last.pt`` and runs the rest. The settings are kept in
``OUT/fewshot-settings.json``; a resume with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from cache_schema import DONE, CacheAttrs, CacheWriter, objects_layout, open_cache
from train.costs import write_json
from train.downstream.finetune import RECIPES, FinetuneConfig, train_finetune
from train.loop import check_run_dir, clear_run_dir
from train.settings import setting

FOLD_RESULT = "fold.json"  # written when a fold ends: a resumed run keeps it
SETTINGS = "fewshot-settings.json"


@dataclass
class FewshotConfig(FinetuneConfig):
    """Folds of n-way m-shot full fine-tuning; every fold a fine-tuning run of these settings."""

    cache: str = setting(help="A points cache with train and test splits (ModelNet40 in the papers).")
    way: int = setting(5, "Classes per fold (5 or 10 in the papers).", check="positive")
    shot: int = setting(10, "Training objects per class (10 or 20).", check="positive")
    folds: int = setting(10, "Folds, each fine-tuned from --init.", check="positive")
    queries: int = setting(20, "Test objects per class and fold.", check="positive")
    workers: int = setting(0, "DataLoader worker processes (a fold is small).", check="non-negative")
    not_options = (*FinetuneConfig.not_options, "protocol", "val_split", "val_cache")
    recipe_table = {name: {**r, "epochs": 150} for name, r in RECIPES.items()}  # Point-MAE's cfgs/fewshot.yaml

    @classmethod
    def described_defaults(cls) -> dict[str, str]:
        described = super().described_defaults()
        return {**described, "batch_size": f"{described['batch_size']}, at most a fold's training objects"}


@dataclass(frozen=True)
class Fold:
    classes: np.ndarray  # the way source classes, in label order 0..way-1
    train_rows: np.ndarray  # source rows, grouped by class
    test_rows: np.ndarray


def draw_fold(labels: np.ndarray, train: np.ndarray, test: np.ndarray, way: int, shot: int, queries: int,
              seed: int, fold: int) -> Fold:
    """One fold: ``way`` classes with at least ``shot`` train and ``queries`` test objects each."""
    rng = np.random.default_rng([seed, fold, 0xF01D])
    eligible = [c for c in np.unique(labels[train])
                if (labels[train] == c).sum() >= shot and (labels[test] == c).sum() >= queries]
    if len(eligible) < way:
        raise ValueError(f"{way}-way {shot}-shot with {queries} queries needs {way} classes with {shot} train and "
                         f"{queries} test objects each; the cache has {len(eligible)}")
    classes = np.sort(rng.choice(eligible, way, replace=False))
    train_rows = np.concatenate([rng.choice(train[labels[train] == c], shot, replace=False) for c in classes])
    test_rows = np.concatenate([rng.choice(test[labels[test] == c], queries, replace=False) for c in classes])
    return Fold(classes, train_rows, test_rows)


def write_fold_cache(source, fold: Fold, url: str, description: dict, seed: int = 0) -> str:
    """The fold's objects as a points cache in a random row order: splits ``train`` and ``test``, classes
    renumbered 0..way-1."""
    chosen = np.concatenate([fold.train_rows, fold.test_rows])
    perm = np.random.default_rng(seed).permutation(len(chosen))
    rows = chosen[perm]  # cache row i holds source row rows[i]
    points = source.array("points").get_orthogonal_selection((np.sort(rows),)).astype(np.float32)
    points = points[np.argsort(np.argsort(rows))]  # back from row order to cache order
    new_label = {int(c): i for i, c in enumerate(fold.classes)}
    data = {"ids": np.array([str(source.array("ids")[int(r)]) for r in rows]),
            "label": np.array([new_label[int(c)] for c in source.labels[rows]]), "points": points}
    layout = objects_layout(len(rows), points.shape[1], 0, 0, {}, num_classes=len(fold.classes),
                            point_dtype="float32")
    attrs = CacheAttrs(kind="objects", dataset={"name": f"{source.attrs.dataset.get('name')}-fewshot",
                                                "source_root": source.loc.url},
                       config={"source": "fewshot-fold", **description},
                       label_names=tuple(source.label_names[int(c)] for c in fold.classes))
    with CacheWriter.create(url, attrs, layout, overwrite=True) as w:
        for block in range(w.num_blocks):
            b0, b1 = w.block_range(block)
            w.write_block(block, {k: v[b0:b1] for k, v in data.items()}, np.full(b1 - b0, DONE, np.uint8))
        w.write_split("train", np.flatnonzero(perm < len(fold.train_rows)))
        w.write_split("test", np.flatnonzero(perm >= len(fold.train_rows)))
        w.finalize()
    return url


def run_fewshot(cfg: FewshotConfig, resume: bool = False, progress: bool = True) -> dict:
    """Fine-tune on every fold; ``cfg.out`` holds a run per fold and ``fewshot.json`` with mean and std.

    ``resume``: folds that ended are kept, a stopped fold continues from its ``last.pt``, the rest run.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would write the same fold caches
        raise ValueError("train fewshot runs in one process (a fold is a few hundred shapes); start it without "
                         "torchrun")
    cfg.validate()
    way, shot, folds, queries = cfg.way, cfg.shot, cfg.folds, cfg.queries
    source = open_cache(cfg.cache)
    labels = source.labels
    train, test = np.sort(source.done_rows("train")), np.sort(source.done_rows("test"))  # folds draw in row order
    drawn = [draw_fold(labels, train, test, way, shot, queries, cfg.seed, k) for k in range(folds)]
    init_identity = _file_identity(cfg.init) if cfg.init != "random" else None  # a missing file: refused here
    _prepare_out(cfg, resume, {"cache_fingerprint": source.fingerprint, "init_sha256": init_identity})
    results = []
    for k, fold in enumerate(drawn):
        folder = os.path.join(cfg.out, f"fold-{k}")
        result_path = os.path.join(folder, FOLD_RESULT)
        if resume and os.path.exists(result_path):
            with open(result_path) as f:
                results.append(json.load(f))
            continue
        run_dir, fold_cache = os.path.join(folder, "run"), os.path.join(folder, "cache.zarr")
        continuing = resume and os.path.exists(os.path.join(run_dir, "last.pt"))
        if not continuing:  # a fold stopped before its first checkpoint starts again, cache included
            if os.path.isdir(folder):
                clear_run_dir(folder)
            description = {"cache": source.loc.url, "fingerprint": source.fingerprint, "way": way, "shot": shot,
                           "queries": queries, "fold": k, "seed": cfg.seed, "classes": fold.classes.tolist()}
            write_fold_cache(source, fold, fold_cache, description, cfg.seed + k)
        fold_cfg = dataclasses.replace(cfg, cache=fold_cache, out=run_dir, val_split="test", overwrite=False,
                                       batch_size=min(cfg.batch_size or 32, len(fold.train_rows)))
        metrics = train_finetune(fold_cfg, resume=continuing, progress=progress)
        result = {"fold": k, "classes": [source.label_names[int(c)] for c in fold.classes],
                  "best_overall_accuracy": metrics["best/overall_accuracy"]}
        write_json(result_path, result)
        results.append(result)
    accs = np.array([r["best_overall_accuracy"] for r in results])
    summary = {"way": way, "shot": shot, "folds": folds, "queries": queries, "init": cfg.init,
               "mean": float(accs.mean()), "std": float(accs.std()), "per_fold": results}
    write_json(os.path.join(cfg.out, "fewshot.json"), summary)
    return summary


def _file_identity(path: str) -> str:
    """sha256 of a file: a checkpoint retrained at the same path is another starting point."""
    if not os.path.isfile(path):
        raise ValueError(f"--init {path}: no such file")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prepare_out(cfg: FewshotConfig, resume: bool, identity: dict) -> None:
    """``--out`` ready for this run (called once every input has been checked): empty (or emptied with
    ``--overwrite``), or resumed with the same settings, the same cache contents and the same init weights."""
    settings = {**{k: v for k, v in cfg.to_dict().items() if k not in ("out", "overwrite")}, **identity}
    saved_path = os.path.join(cfg.out, SETTINGS)
    if resume:
        if not os.path.exists(saved_path):
            raise ValueError(f"--resume: {cfg.out} holds no few-shot run ({SETTINGS} is missing); start it without "
                             "--resume")
        with open(saved_path) as f:
            saved = json.load(f)
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"--resume: {cfg.out} was started with other settings ("
                             + ", ".join(f"{k}: {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed)
                             + "); resume with the same options, or choose another --out")
        return
    if check_run_dir(cfg, resume=False):  # non-empty: refused without --overwrite
        clear_run_dir(cfg.out)  # no fold of the old run may pass for one of this run
    os.makedirs(cfg.out, exist_ok=True)
    write_json(saved_path, settings)
