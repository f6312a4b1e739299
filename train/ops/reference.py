"""Naive twins of the geometry ops: loops that define what the fast versions compute (tests only)."""

from __future__ import annotations

import torch


def fps_naive(points: torch.Tensor, k: int, start: int = 0) -> torch.Tensor:
    out = []
    for cloud in points:
        chosen = [start]
        for _ in range(k - 1):
            best, best_d = 0, -1.0
            for j in range(len(cloud)):
                d = min(float(((cloud[j] - cloud[c]) ** 2).sum()) for c in chosen)
                if d > best_d:
                    best, best_d = j, d
            chosen.append(best)
        out.append(chosen)
    return torch.tensor(out)


def knn_naive(query: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.empty(query.shape[0], query.shape[1], k, dtype=torch.long)
    for b in range(query.shape[0]):
        for m in range(query.shape[1]):
            d = [(float(((query[b, m] - p) ** 2).sum()), j) for j, p in enumerate(points[b])]
            out[b, m] = torch.tensor([j for _, j in sorted(d)[:k]])
    return out


def ball_query_naive(query: torch.Tensor, points: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    out = torch.full((query.shape[0], query.shape[1], k), -1, dtype=torch.long)
    for b in range(query.shape[0]):
        for m in range(query.shape[1]):
            found = [j for j, p in enumerate(points[b]) if float(((query[b, m] - p) ** 2).sum()) < radius ** 2]
            out[b, m, :len(found[:k])] = torch.tensor(found[:k], dtype=torch.long)
    return out


def chamfer_naive(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for a, b in zip(x, y):
        ab = sum(min(float(((p - q) ** 2).sum()) for q in b) for p in a) / len(a)
        ba = sum(min(float(((q - p) ** 2).sum()) for p in a) for q in b) / len(b)
        total += ab + ba
    return torch.tensor(total / len(x))
