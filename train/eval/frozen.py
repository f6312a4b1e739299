"""Evaluation of frozen students on an objects cache: zero-shot, linear probe, few-shot.

Features are the encoder's global feature of each shape's first ``num_points``
points in a fixed random order (no augmentation). ``--ckpt random`` builds an
untrained encoder of the same preset as the baseline.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cache_schema import open_cache
from train import checkpoint
from train.data.objects import head_dims
from train.encoder_io import build_from
from train.models.encoders import create_encoder, encoder_from_record
from train.models.student import Student


def load_student(ckpt: str, cache, preset: str = "point-mae-tiny", seed: int = 0) -> Student:
    """A trained student from a stage-1 / stage-2 / joint checkpoint; any other encoder file (a fine-tuned or
    exported encoder, a released checkpoint) without heads; or ``"random"``: an untrained one with heads for the cache."""
    if ckpt == "random":
        torch.manual_seed(seed)
        return Student(create_encoder(preset), head_dims(cache)).eval()
    try:
        state = checkpoint.load(ckpt, stage=("stage1", "stage2", "joint"))  # another cache (e.g. ModelNet40) is allowed
    except checkpoint.CheckpointError:
        return Student(build_from(ckpt)[0], {}).eval()  # features only: linear probe and few-shot SVM
    model = Student(encoder_from_record(checkpoint.encoder_record(state)), state["heads"])
    model.load_state_dict(state["model"])
    return model.eval()


@torch.inference_mode()
def embed(model: Student, cache, rows: np.ndarray, num_points: int = 1024, batch_size: int = 64) -> dict:
    """Global features and head outputs (float32 numpy) of ``rows``."""
    out: dict[str, list] = {}
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        pts = cache.points(chunk)
        idx = np.stack([np.random.default_rng(int(r)).permutation(pts.shape[1])[:num_points] for r in chunk])
        pts = np.take_along_axis(pts, idx[..., None], axis=1)
        device = next(model.parameters()).device  # a training run validates its model where it trains
        for k, v in model(torch.from_numpy(pts).to(device)).items():
            out.setdefault(k, []).append(v.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def text_teacher(cache) -> str:
    names = [n for n, t in sorted(cache.teachers.items()) if "class_text" in t.roles]
    if not names:
        raise ValueError(f"{cache.loc.url} has no class-prompt embeddings (no teacher with role class_text)")
    return names[0]


def zeroshot(model: Student, cache, split: str = "test", num_points: int = 1024) -> dict:
    name = text_teacher(cache)
    if name not in model.heads:
        raise ValueError(f"the student has no head for {name!r} (heads: {sorted(model.heads)}); zero-shot needs the "
                         "text teacher it was trained with")
    rows = cache.done_rows(split)
    z = F.normalize(torch.from_numpy(embed(model, cache, rows, num_points)[name]), dim=-1)
    classes = F.normalize(torch.from_numpy(cache.teacher(name, "class_text")), dim=-1)
    ranks = (z @ classes.t()).argsort(dim=1, descending=True)
    labels = torch.from_numpy(cache.labels[rows])
    top1 = (ranks[:, 0] == labels).float().mean().item()
    top5 = (ranks[:, :5] == labels[:, None]).any(dim=1).float().mean().item()
    return {"top1": top1, "top5": top5, "num_classes": len(cache.label_names), "num_samples": len(rows),
            "chance": 1 / len(cache.label_names), "teacher": name, "split": split}


def _features(model, cache, rows, num_points):
    f = embed(model, cache, rows, num_points)["_global"]
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def linear_probe(model: Student, cache, num_points: int = 1024, c: float = 1.0, split: str = "test") -> dict:
    """A linear SVM on frozen global features of the train split, scored on ``split``."""
    from sklearn.svm import LinearSVC  # here, not at the top: it takes 2 s to import, and every rank would pay it

    train, test = cache.done_rows("train"), cache.done_rows(split)
    # liblinear shuffles with numpy's global generator unless told a seed: the score would hang on whatever drew before
    svm = LinearSVC(C=c, max_iter=20000, random_state=0).fit(_features(model, cache, train, num_points),
                                                             cache.labels[train])
    acc = float((svm.predict(_features(model, cache, test, num_points)) == cache.labels[test]).mean())
    return {"accuracy": acc, "num_train": len(train), "num_test": len(test)}


def svm_fewshot(model: Student, cache, n_way: int = 5, m_shot: int = 10, queries: int = 20, draws: int = 10,
            num_points: int = 1024, seed: int = 0) -> dict:
    from sklearn.svm import LinearSVC

    train, test = cache.done_rows("train"), cache.done_rows("test")
    f_train, f_test = _features(model, cache, train, num_points), _features(model, cache, test, num_points)
    y_train, y_test = cache.labels[train], cache.labels[test]
    classes = np.unique(y_train)
    if n_way > len(classes):
        raise ValueError(f"{n_way}-way needs {n_way} classes; the cache has {len(classes)}")
    rng = np.random.default_rng(seed)
    accs = []
    for _ in range(draws):
        way = rng.choice(classes, n_way, replace=False)
        support = np.concatenate([rng.choice(np.flatnonzero(y_train == c), m_shot, replace=False) for c in way])
        query = np.concatenate([rng.permutation(np.flatnonzero(y_test == c))[:queries] for c in way])
        svm = LinearSVC(max_iter=20000, random_state=seed).fit(f_train[support], y_train[support])
        accs.append(float((svm.predict(f_test[query]) == y_test[query]).mean()))
    return {"mean": float(np.mean(accs)), "std": float(np.std(accs)), "n_way": n_way, "m_shot": m_shot,
            "draws": draws, "accuracies": accs}


def open_for_eval(url: str):
    cache = open_cache(url)
    if cache.kind != "objects":
        raise ValueError(f"{url} is a {cache.kind} cache; these evaluations need an objects cache")
    return cache


def validate_student(model: Student, url: str, split: str, num_points: int, prefer: str) -> dict[str, float]:
    """A training run's validation: zero-shot top-1 (``prefer="zeroshot"``, when the cache has class prompts
    and the student their head) or linear-probe accuracy on ``split``; ``score`` is the one used."""
    cache = open_for_eval(url)
    with torch.inference_mode():
        if prefer == "zeroshot":
            try:
                top1 = zeroshot(model, cache, split, num_points)["top1"]
                return {"score": top1, "zeroshot_top1": top1}
            except ValueError:
                pass  # no class prompts or no text head: the linear probe instead
        acc = linear_probe(model, cache, num_points, split=split)["accuracy"]
    return {"score": acc, "linear_accuracy": acc}
