"""Streaming `objects` caches for training: whole blocks in, shuffled samples out.

Each sample: ``points`` (N, 3) subsampled from the cached P points and
augmented; ``label``; ``row``; and one target per contrastive term:
``<teacher>/text`` (by ``text_supervision``: a random caption's embedding, the
first caption's - the cache's top-ranked, see SCHEMA.md - or the shape's
class-prompt embedding ``class_text[label]``), ``<teacher>/image`` (a random
view's embedding, or its depth map's for teachers that have depth).

Rows are sharded over ranks and DataLoader workers by :mod:`train.data.sharding`
(every row once per epoch; a shuffle window mixes many random blocks). Samples
are prepared a window at a time with vectorised numpy and yielded as whole
batches by the worker; the randomness of a window is seeded by (seed, epoch,
rank, window), so a resumed stream yields exactly what the uninterrupted one
would have, whatever the number of workers. Random
subsampling reads one aligned window of N stored points per block (one chunk
column of the cache's 1024-point chunks): the builder stores i.i.d.
area-weighted surface samples, so any window is itself an unbiased uniform
sample, and only 1/8 of an 8192-point cloud is read. ``sampling="fps"`` reads
whole clouds and runs FPS per cloud instead (slow on a CPU); ``sampling="first"``
always reads the first window, the input `train export-teacher` embedded;
``sampling="prefix"`` reads the first ``PREFIX_FACTOR * N`` stored points and
takes N of them in a random order, as Point-MAE fine-tunes (FPS to 1,200 of a
cloud, 1,024 of those at random): on a points cache stored in FPS order
(ModelNet40) the prefix is that FPS sample; with N = P (ScanObjectNN's 2,048)
it is a random permutation of the cloud, so grouping starts at a random point.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset
from zarr.core.sync import sync as zarr_sync  # runs a coroutine on zarr's I/O loop, as zarr.Array does

from cache_schema import open_cache
from cache_schema.errors import CorruptChunkError
from cache_schema.layout import UNLABELLED_CLASS
from train.data.augment import augment_batch
from train.data.prefetch import DEFAULT_BUDGET_BYTES
from train.data.sharding import DEFAULT_WINDOW_ROWS, ShardedStream, SlotPlan
from train.data.transport import PackedBatch

SAMPLINGS = ("random", "fps", "first", "prefix")
# the text target of a shape: one of its K cached captions at random each time (all captions), always caption 0
# (the top-ranked one), or its class's prompt embedding (category names: the "manual captions" of the paper's Table 2)
TEXT_SUPERVISIONS = ("captions", "top1", "templates")
PREFIX_FACTOR = 1200 / 1024  # Point-MAE's fine-tuning: 1,200 FPS points for 1,024, 2,400 for 2,048


def prefix_points(num_points: int, stored: int) -> int:
    return min(stored, int(round(num_points * PREFIX_FACTOR)))


@dataclass(frozen=True)
class StreamConfig:
    split: str = "train"
    num_points: int = 1024
    sampling: str = "random"  # "fps"; "first": the first N stored points (what export-teacher embeds); "prefix"
    augment: bool = True
    augmentation: str = "pretrain"  # or "scale-translate", "rotate" (fine-tuning recipes; see augment.py)
    seed: int = 0
    window_rows: int = DEFAULT_WINDOW_ROWS  # rows (of many random blocks) shuffled together
    teacher_features: str | None = None  # also stream teachers/<name>/tokens and /global (an exported model)
    prefetch_bytes: int = DEFAULT_BUDGET_BYTES  # batches prepared ahead on a thread (0: none; see prefetch.py)
    part_labels: bool = False  # also stream part_label (N,) aligned with the points (part segmentation)
    contrastive: bool = True  # stream the teachers' embeddings stage-1 aligns to (off: not even read)
    text_supervision: str = "captions"  # one of TEXT_SUPERVISIONS: what a ``<teacher>/text`` target is


def contrastive_terms(cache) -> dict[str, tuple[str, str]]:
    """term -> (teacher, role): text for teachers with captions, image for every vision teacher."""
    terms = {}
    for name, t in sorted(cache.teachers.items()):
        if "text" in t.roles:
            terms[f"{name}/text"] = (name, "text")
        if "image" in t.roles:
            terms[f"{name}/image"] = (name, "image")
    return terms


def head_dims(cache) -> dict[str, int]:
    """teacher -> embedding dim, for every teacher a contrastive term aligns to (one student head each)."""
    return {teacher: cache.teachers[teacher].dim for teacher, _ in contrastive_terms(cache).values()}


class ObjectStream(ShardedStream, IterableDataset):
    """An epoch of one split of an objects cache, sharded over DDP ranks and DataLoader workers (batches out)."""

    def __init__(self, url: str, config: StreamConfig = StreamConfig(), rank: int = 0, world_size: int = 1,
                 storage_options: dict | None = None) -> None:
        super().__init__()
        self.url, self.config, self.rank, self.world_size = url, config, rank, world_size
        self.storage_options = storage_options
        cache = open_cache(url, storage_options)
        if cache.kind != "objects":
            raise ValueError(f"{url} is a {cache.kind} cache; stage-1 trains on objects caches")
        self.terms = contrastive_terms(cache) if config.contrastive else {}
        self.head_dims = head_dims(cache)
        self.selected = np.zeros(cache.num_rows, bool)
        self.selected[cache.done_rows(config.split)] = True
        self.class_text = class_prompt_targets(cache, self.terms, config) if config.contrastive else {}
        self.block_rows = cache.chunking.block_rows
        self.set_position(0)

    def _batches(self, epoch: int, plan: SlotPlan, packed: bool):
        # in a DataLoader worker a batch crosses to the main process as one buffer (see transport.py)
        out = PackedBatch.pack if packed else (lambda b: {k: torch.from_numpy(v) for k, v in b.items()})
        num_rows, arrays = self.opened()
        skip, pending = plan.skip_rows, None
        for w, rows in plan.windows:
            if skip >= len(rows):
                skip -= len(rows)
                continue
            rng = np.random.default_rng([self.config.seed, epoch, self.rank, w])
            blocks = np.unique(rows // self.block_rows).tolist()
            prepared = self._prepare(self._read(arrays, num_rows, blocks, rng), rows, rng)
            prepared = {k: v[skip:] for k, v in prepared.items()}
            skip = 0
            pending = prepared if pending is None else {k: np.concatenate([pending[k], v]) for k, v in prepared.items()}
            while len(pending["row"]) >= self.batch_size:
                yield out({k: v[:self.batch_size] for k, v in pending.items()})
                pending = {k: v[self.batch_size:] for k, v in pending.items()}
        if pending is not None and len(pending["row"]) and not self.drop_last:
            yield out(pending)

    def _open(self) -> tuple[int, dict[str, Any]]:
        """The cache's row count and the zarr arrays a sample needs."""
        cache = open_cache(self.url, self.storage_options)
        paths = {"points": "points", "label": "label"}
        for name, role in {(n, r) for n, r in self.terms.values()}:
            if role == "text" and self.class_text:
                continue  # the class prompts replace the captions: they are not read
            paths[f"{name}/{role}"] = f"teachers/{name}/{role}"
            if role == "image" and "depth" in cache.teachers[name].roles:
                paths[f"{name}/depth"] = f"teachers/{name}/depth"
        if self.config.part_labels:
            if "part_label" not in cache.group:
                raise ValueError(f"{self.url} has no per-point part labels (part_label)")
            paths["part_label"] = "part_label"
        arrays = {key: cache.array(path) for key, path in paths.items()}
        for role in ("tokens", "global") if self.config.teacher_features else ():
            arrays[f"{self.config.teacher_features}/{role}"] = cache.teacher_array(self.config.teacher_features, role)
        return cache.num_rows, arrays

    def _read(self, arrays: dict[str, Any], num_rows: int, blocks: list[int],
              rng: np.random.Generator) -> dict[str, Any]:
        """Whole blocks of every array a sample needs, in block order, all chunks fetched concurrently.

        zarr's synchronous API reads one selection at a time and its per-call
        overhead dominates small chunks, so every (array, block) selection of
        the group is awaited together on zarr's own event loop. For random
        sampling only one window of N stored points per block is read (aligned
        to N, so with the cache's 1024-point chunks one chunk column).
        """
        ranges = [(b * self.block_rows, min((b + 1) * self.block_rows, num_rows)) for b in blocks]
        n = self.config.num_points
        stored = arrays["points"].shape[1]
        windowed = self.config.sampling != "fps" and stored >= n
        width = prefix_points(n, stored) if windowed and self.config.sampling == "prefix" else n
        window_starts = ([0] * len(ranges) if self.config.sampling in ("first", "prefix") else
                         n * rng.integers(0, stored // n, len(ranges))) if windowed else [None] * len(ranges)
        selections = []
        for key in arrays:
            on_points = windowed and key in ("points", "part_label")  # part labels follow their points
            starts = window_starts if on_points else [None] * len(ranges)
            for (r0, r1), o in zip(ranges, starts):
                selections.append((key, (slice(r0, r1), slice(o, o + width)) if on_points else (slice(r0, r1),)))

        async def read_all():
            return await asyncio.gather(*(arrays[key].async_array.getitem(sel) for key, sel in selections))

        try:
            parts = zarr_sync(read_all())
        except Exception as e:  # a damaged chunk: name the store and rows, not zarr's internals
            raise CorruptChunkError(f"{self.url}: cannot read rows {ranges[0][0]}-{ranges[-1][1] - 1} "
                                    f"({', '.join(sorted(arrays))}): {type(e).__name__}: {e}") from None
        out = {key: np.concatenate([p for (k, _), p in zip(selections, parts) if k == key]) for key in arrays}
        idx = np.concatenate([np.arange(r0, r1) for r0, r1 in ranges])
        return {"position": {int(r): i for i, r in enumerate(idx)}, "arrays": out}

    def _prepare(self, data: dict[str, Any], rows: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Every sample of a group at once, in yield order."""
        a = data["arrays"]
        pos = np.array([data["position"][int(r)] for r in rows])
        n = self.config.num_points
        points = a["points"][pos].astype(np.float32)                        # (R, n or P, 3)
        parts = a["part_label"][pos] if "part_label" in a else None          # (R, n or P)
        idx = None
        if self.config.sampling == "fps":
            from train.ops import farthest_point_sample

            idx = farthest_point_sample(torch.from_numpy(points), n).numpy()
        elif points.shape[1] < n:  # fewer stored points than asked: sample with replacement
            idx = rng.integers(0, points.shape[1], (len(rows), n))
        elif self.config.sampling == "prefix":  # n of the prefix, in a random order
            idx = rng.random((len(rows), points.shape[1])).argsort(axis=1)[:, :n]
        if idx is not None:
            points = np.take_along_axis(points, idx[..., None], axis=1)
            parts = None if parts is None else np.take_along_axis(parts, idx, axis=1)
        # otherwise _read already kept one window of n points per block     # (R, N, 3)
        if self.config.augment:
            points = augment_batch(points, rng, self.config.augmentation)
        out = {"points": points, "label": a["label"][pos].astype(np.int64), "row": rows.astype(np.int64)}
        if parts is not None:
            out["part_label"] = parts.astype(np.int64)
        view = None
        for term, (name, role) in self.terms.items():
            if role == "text":
                out[term] = self._text_target(a, name, pos, out["label"], rng)
                continue
            values = a[f"{name}/{role}"]                                      # (B, V, D)
            view = rng.integers(0, values.shape[1], len(rows)) if view is None else view  # one view for all
            chosen = values[pos, view]
            if f"{name}/depth" in a:
                use_depth = rng.random(len(rows)) < 0.5
                chosen = np.where(use_depth[:, None], a[f"{name}/depth"][pos, view], chosen)
            out[term] = chosen.astype(np.float32)
        if self.config.teacher_features:
            for role in ("tokens", "global"):
                key = f"{self.config.teacher_features}/{role}"
                out[key] = a[key][pos].astype(np.float32)
        return out

    def _text_target(self, a: dict[str, np.ndarray], name: str, pos: np.ndarray, labels: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
        """(R, D) float32: the ``<name>/text`` target of each sample, by ``text_supervision``."""
        if self.class_text:
            return self.class_text[name][labels]
        captions = a[f"{name}/text"]                                          # (B, K, D)
        # drawn for top1 too: the views then are the ones the captions mode would draw
        k = rng.integers(0, captions.shape[1], len(pos))
        return captions[pos, 0 if self.config.text_supervision == "top1" else k].astype(np.float32)


def check_top_caption(cache) -> None:
    """``top1`` means the best caption: refused on a BLIP-2 cache whose captions are not ranked best-first (built
    before the ranking, or without a CLIP teacher to rank them: caption 0 is then view 0's)."""
    built = cache.attrs.config
    order = str((built.get("captions") or {}).get("order", ""))
    if str(built.get("captioner", "")).startswith("blip2") and not order.startswith("best first"):
        raise ValueError(f"--text-supervision top1: the BLIP-2 captions of {cache.loc.url} are not ranked best-first "
                         f"({order or 'built before caption ranking'}), so caption 0 is one view's caption, not the "
                         "top-1; rebuild the cache with a CLIP teacher, or use --text-supervision captions")


def class_prompt_targets(cache, terms: dict[str, tuple[str, str]], config: StreamConfig) -> dict[str, np.ndarray]:
    """teacher -> (C, D) float32 class-prompt embeddings, for ``text_supervision="templates"`` (else empty).

    Every text teacher must carry ``class_text`` and every shape of the split a class: a mesh folder's loose files
    (class ``unlabelled``) have none, and their "a 3D model of a unlabelled." prompt would be no supervision."""
    if config.text_supervision not in TEXT_SUPERVISIONS:
        raise ValueError(f"--text-supervision is one of {', '.join(TEXT_SUPERVISIONS)}, got "
                         f"{config.text_supervision!r}")
    if config.text_supervision == "top1":
        check_top_caption(cache)
    if config.text_supervision != "templates":
        return {}
    url, teachers = cache.loc.url, sorted({n for n, role in terms.values() if role == "text"})
    lacking = [n for n in teachers if "class_text" not in cache.teachers[n].roles]
    if lacking or not teachers:
        raise ValueError(f"--text-supervision templates needs class-prompt embeddings (class_text) of every text "
                         f"teacher; {url} has none for {', '.join(lacking) or 'any (no text teacher)'}")
    names, rows = cache.label_names, cache.done_rows(config.split)
    labels = cache.labels[rows]
    bad = (labels < 0) | (labels >= len(names))
    if UNLABELLED_CLASS in names:
        bad |= labels == names.index(UNLABELLED_CLASS)
    if bad.any():
        raise ValueError(f"--text-supervision templates needs the class of every shape; {bad.sum()} of the "
                         f"{len(rows)} shapes of split {config.split!r} of {url} have none (e.g. "
                         f"{cache.ids[rows[np.flatnonzero(bad)[0]]]!r})")
    return {n: cache.teacher(n, "class_text") for n in teachers}
