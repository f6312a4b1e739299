"""Classification scores of a fine-tuned model: overall accuracy, mean class accuracy, voting.

Test clouds are the first N stored points of each shape (``sampling="first"``:
on a ModelNet40 points cache, stored in FPS order, that is FPS(N); on
ScanObjectNN all 2,048 as released). Voting (Point-MAE's ``validate_vote``)
averages the logits of N copies of each cloud: the cloud itself and N-1
ScaleAndTranslate-augmented copies, seeded, so ``vote=1`` is plain evaluation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from train import checkpoint
from train.data.augment import scale_and_translate
from train.eval.split import evaluating, split_rows
from train.models.classifier import PointClassifier
from train.models.encoders import encoder_from_record


def accuracy_scores(pred: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Overall accuracy and mean class accuracy (over the classes present in ``labels``)."""
    per_class = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
    return {"overall_accuracy": float((pred == labels).mean()), "mean_class_accuracy": float(np.mean(per_class))}


@torch.inference_mode()
def predict_logits(model: nn.Module, cache, rows: np.ndarray, num_points: int, vote: int = 1, seed: int = 0,
                   batch_size: int = 64, device: torch.device | str | None = None) -> np.ndarray:
    """(len(rows), classes) logits, averaged over ``vote`` copies of every cloud."""
    if vote < 1:
        raise ValueError(f"--vote must be at least 1, got {vote}")
    device = device or next(model.parameters()).device
    out = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        points = cache.array("points").get_orthogonal_selection((chunk, slice(0, num_points))).astype(np.float32)
        total = None
        for copy in range(vote):
            cloud = points if copy == 0 else scale_and_translate(points, np.random.default_rng([seed, s, copy]))
            logits = model(torch.from_numpy(np.ascontiguousarray(cloud)).to(device)).float()
            total = logits if total is None else total + logits
        out.append((total / vote).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def evaluate_classifier(model: nn.Module, cache, split: str, num_points: int, vote: int = 1,
                        seed: int = 0) -> dict:
    """OA and mAcc of ``model`` on ``split`` (``vote`` copies per cloud)."""
    rows = split_rows(cache, split)
    with evaluating(model):
        logits = predict_logits(model, cache, rows, num_points, vote, seed)
    labels = cache.labels[rows].astype(np.int64)
    return {**accuracy_scores(logits.argmax(1), labels), "num_samples": len(rows), "vote": vote,
            "split": split, "num_points": num_points}


def load_classifier(ckpt: str) -> tuple[PointClassifier, dict]:
    """A fine-tuned classifier (eval mode) and its checkpoint record."""
    state = checkpoint.load(ckpt, stage="finetune")
    encoder = encoder_from_record(checkpoint.encoder_record(state))
    model = PointClassifier(encoder, len(state["label_names"]), state["protocol"])
    model.load_state_dict(state["model"])
    return model.eval(), state
