"""Stage-1's options for the paper's Table 2 (the text target) and Table 9 (starting from another run's encoder),
and zero-shot top-5."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import zarr

from train.data.objects import ObjectStream, StreamConfig

TEXT = "clip-tiny/text"


def _epoch(url: str, mode: str, split: str = "train") -> dict[str, np.ndarray]:
    stream = ObjectStream(url, StreamConfig(split=split, num_points=32, text_supervision=mode, prefetch_bytes=0))
    stream.set_position(0, 0, 8, drop_last=False)
    batches = list(stream)
    return {k: np.concatenate([b[k].numpy() for b in batches]) for k in ("row", "label", TEXT)}


def _task(cache_url: str, **options):
    from train.stages.stage1 import Stage1Config, Stage1Task

    cfg = Stage1Config(cache=cache_url, out="unused", num_points=64, **options)
    task = Stage1Task(cfg)
    torch.manual_seed(0)
    task.build(ObjectStream(cache_url, task.stream_config()), torch.device("cpu"), 0, 1)
    return task


def test_each_text_supervision_feeds_its_embedding(small_demo_cache):
    """Against the cache's arrays read here with zarr: captions = one of the shape's K caption embeddings (both
    seen), top1 = caption 0, templates = the class prompt of the shape's label."""
    root = zarr.open_group(small_demo_cache, mode="r")
    text = root["teachers/clip-tiny/text"][:].astype(np.float32)                  # (N, K, D)
    class_text = root["teachers/clip-tiny/class_text"][:].astype(np.float32)      # (C, D)
    labels = root["label"][:].astype(np.int64)

    got = _epoch(small_demo_cache, "captions")
    match = (got[TEXT][:, None, :] == text[got["row"]]).all(-1)                   # (R, K)
    assert match.any(1).all() and set(match.argmax(1)) == {0, 1}

    got = _epoch(small_demo_cache, "top1")
    np.testing.assert_array_equal(got[TEXT], text[got["row"], 0])
    assert not np.array_equal(got[TEXT], text[got["row"], 1])

    got = _epoch(small_demo_cache, "templates")
    np.testing.assert_array_equal(got["label"], labels[got["row"]])
    np.testing.assert_array_equal(got[TEXT], class_text[labels[got["row"]]])
    assert len(np.unique(got["label"])) > 1


def test_the_text_supervision_changes_the_stage1_loss(small_demo_cache):
    """The same model and batch through Stage1Task: only the text term changes (top1 draws the same views)."""
    from contextlib import nullcontext

    losses = {}
    for mode in ("captions", "top1", "templates"):
        task = _task(small_demo_cache, text_supervision=mode)
        stream = ObjectStream(small_demo_cache, task.stream_config())
        stream.set_position(0, 0, 8)
        with torch.no_grad():
            losses[mode] = {k: float(v) for k, v in
                            task.losses(task.objective, next(iter(stream)), torch.device("cpu"), nullcontext()).items()}
    assert len({round(loss[TEXT], 6) for loss in losses.values()}) == 3, losses
    for term in ("clip-tiny/image", "dinov2-tiny/image"):
        assert losses["captions"][term] == losses["top1"][term]


def test_a_wrong_mode_is_one_line(small_demo_cache):
    from train.stages.stage1 import Stage1Config

    with pytest.raises(ValueError, match=r"^--text-supervision is one of captions, top1, templates, got 'best'$"):
        Stage1Config(cache=small_demo_cache, out="o", text_supervision="best").validate()
    with pytest.raises(ValueError, match=r"^--text-supervision is one of"):
        ObjectStream(small_demo_cache, StreamConfig(text_supervision="best"))


def test_templates_need_a_class_for_every_shape_and_class_prompts(tmp_path):
    from cache_schema.example import example_objects, finish, write_blocks
    from cache_schema.writer import CacheWriter

    url = str(tmp_path / "loose.zarr")
    attrs, layout, data = example_objects(classes=("chair", "unlabelled"))  # a mesh folder's loose files
    with CacheWriter.create(url, attrs, layout) as w:
        write_blocks(w, data)
        finish(w, data)
    ObjectStream(url, StreamConfig(text_supervision="top1"))  # captions need no class
    with pytest.raises(ValueError, match=r"templates needs the class of every shape; \d+ of the \d+ shapes of "
                                         r"split 'train' .* have none \(e\.g\. 'shape_\d+'\)$"):
        ObjectStream(url, StreamConfig(text_supervision="templates"))

    group = zarr.open_group(url, mode="r+")  # the text teacher without class prompts (an older or pruned cache)
    teachers = dict(group.attrs["teachers"])
    teachers["clip-tiny"] = {**teachers["clip-tiny"], "roles": ["image", "text"]}
    group.attrs["teachers"] = teachers
    with pytest.raises(ValueError, match=r"templates needs class-prompt embeddings \(class_text\) of every text "
                                         r"teacher; .* has none for clip-tiny$"):
        ObjectStream(url, StreamConfig(text_supervision="templates"))


def test_zeroshot_top5_is_the_brute_force_ranking(small_demo_cache):
    """Top-k by counting, per shape, the classes that score strictly higher than its own (no sort involved)."""
    from cache_schema import open_cache
    from train.eval import frozen

    cache = open_cache(small_demo_cache)
    model = frozen.load_student("random", cache, "tiny", seed=3)
    rows = cache.done_rows("test")
    z = frozen.embed(model, cache, rows, 128)["clip-tiny"].astype(np.float64)
    prompts = cache.teacher("clip-tiny", "class_text").astype(np.float64)
    sims = (z / np.linalg.norm(z, axis=1, keepdims=True)) @ (prompts / np.linalg.norm(prompts, axis=1,
                                                                                       keepdims=True)).T
    labels = cache.labels[rows]
    own = sims[np.arange(len(rows)), labels]
    higher = np.array([sum(s > o for s in row) for row, o in zip(sims, own)])
    result = frozen.zeroshot(model, cache, "test", num_points=128)
    assert result["top5"] == pytest.approx(float(np.mean(higher < 5)), abs=1e-6)
    assert result["top1"] == pytest.approx(float(np.mean(higher < 1)), abs=1e-6)
    assert 0 < result["top1"] < result["top5"] < 1  # the case separates the two


def test_init_starts_from_the_files_encoder_with_fresh_heads(small_demo_cache, stage1_ckpt, tmp_path):
    from train.encoder_io import export_encoder

    saved = torch.load(stage1_ckpt, weights_only=True)["model"]
    exported = str(tmp_path / "enc.safetensors")
    export_encoder(stage1_ckpt, exported)
    for init in (stage1_ckpt, exported):
        model = _task(small_demo_cache, init=init).model
        encoder = model.encoder.state_dict()
        assert set(encoder) == {k[len("encoder."):] for k in saved if k.startswith("encoder.")}
        for k, v in encoder.items():
            torch.testing.assert_close(v, saved[f"encoder.{k}"], rtol=0, atol=0, msg=k)
        heads = {k: v for k, v in model.state_dict().items() if k.startswith("heads.")}
        assert heads and all(not torch.equal(v, saved[k]) for k, v in heads.items() if v.numel() > 1)
    random = _task(small_demo_cache).model.encoder.state_dict()
    assert not torch.equal(random["pos_embed.0.weight"], saved["encoder.pos_embed.0.weight"])


def test_init_prints_what_the_file_lacks(small_demo_cache, stage1_ckpt, tmp_path, capsys):
    """A file without a cls token (as Point-MAE's pre-training checkpoints): the load report, as every --init."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from train.encoder_io import export_encoder

    path = str(tmp_path / "enc.safetensors")
    export_encoder(stage1_ckpt, path)
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    save_file({k: v for k, v in load_file(path).items() if k != "cls_token"}, path, metadata=meta)
    _task(small_demo_cache, init=path)
    assert f"--init {path} (exported encoder): not in the file, kept as initialised: cls_token" in \
        capsys.readouterr().err


def test_model_must_match_the_init_file(small_demo_cache, stage1_ckpt):
    from train.stages.stage1 import Stage1Config, initial_encoder

    assert initial_encoder(Stage1Config(cache="c", out="o", init=stage1_ckpt, model="tiny")).family == "point-mae"
    with pytest.raises(ValueError, match=r"^--model point-m2ae-tiny does not match the encoder of --init .*last\.pt "
                                         r"\(family point-mae\); leave --model unset to take the file's$"):
        initial_encoder(Stage1Config(cache="c", out="o", init=stage1_ckpt, model="point-m2ae-tiny"))
    with pytest.raises(ValueError, match=r"\(depth 4, drop_path_rate 0\.0, encoder_dims 128, num_group 32, "
                                         r"num_heads 4, trans_dim 128\)"):
        initial_encoder(Stage1Config(cache="c", out="o", init=stage1_ckpt, model="point-mae"))


def test_a_run_from_init_trains_and_records_it(small_demo_cache, stage1_ckpt, tmp_path):
    from train.stages.stage1 import Stage1Config, train_stage1

    out = str(tmp_path / "s1-from-init")
    train_stage1(Stage1Config(cache=small_demo_cache, out=out, steps=1, batch_size=4, num_points=64, workers=0,
                              init=stage1_ckpt, text_supervision="templates"), progress=False)
    with open(os.path.join(out, "config.json")) as f:
        saved = json.load(f)
    assert saved["config"]["init"] == stage1_ckpt and saved["init"] == stage1_ckpt
    assert saved["config"]["text_supervision"] == saved["text_supervision"] == "templates"
    assert saved["encoder"]["config"]["trans_dim"] == 128


def test_top1_is_refused_on_blip2_captions_not_ranked_best_first():
    """Caption 0 of an unranked BLIP-2 cache is view 0's caption, not the top-1: refused in one line; ranked
    caches and template captions (all equivalent) are accepted."""
    from types import SimpleNamespace

    from train.data.objects import check_top_caption

    def cache(config):
        return SimpleNamespace(attrs=SimpleNamespace(config=config), loc=SimpleNamespace(url="c.zarr"))

    with pytest.raises(ValueError, match="not ranked best-first.*built before caption ranking"):
        check_top_caption(cache({"captioner": "blip2-opt-2.7b"}))
    with pytest.raises(ValueError, match="one caption per view"):
        check_top_caption(cache({"captioner": "blip2-opt-2.7b", "captions": {"order": "one caption per view, ..."}}))
    check_top_caption(cache({"captioner": "blip2-opt-2.7b", "captions": {"order": "best first by clip-vit-b16: ..."}}))
    check_top_caption(cache({"captioner": "template"}))


def test_a_cache_built_before_caption_orders_were_recorded_is_still_complete(small_demo_cache, tmp_path):
    """`make cache` again on a finished cache from before `config.captions.order` says it is complete (template
    captions: the ranking never touched them) instead of refusing it as built with other settings."""
    import shutil

    from preprocess.build_objects import ObjectBuildConfig, RunOptions, build_objects, unrecorded_caption_order
    from preprocess.render import ViewConfig

    url = str(tmp_path / "old.zarr")
    shutil.copytree(small_demo_cache, url)
    group = zarr.open_group(url, mode="r+")
    config = dict(group.attrs["config"])
    config["captions"] = {k: v for k, v in config["captions"].items() if k != "order"}
    group.attrs["config"] = config
    cfg = ObjectBuildConfig("demo", num_points=256, views=ViewConfig(num_views=2, resolution=32),
                            teachers=("clip-tiny", "dinov2-tiny"), num_captions=2, demo_per_class=5)
    assert unrecorded_caption_order(url, cfg)
    assert build_objects(url, cfg, RunOptions(progress=False, block_rows=4)).already_complete
    assert not unrecorded_caption_order(small_demo_cache, cfg)  # a new cache records its order
    blip = dataclasses.replace(cfg, captioner="blip2-tiny")
    group.attrs["build"] = {**dict(group.attrs["build"]), "state": "building"}
    assert not unrecorded_caption_order(url, blip)  # an unfinished BLIP-2 build would mix ranked and unranked blocks
