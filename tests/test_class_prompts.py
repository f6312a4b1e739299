"""`preprocess class-prompts`: a points cache gets CLIP class-name embeddings, then zero-shot runs on it."""

from __future__ import annotations

import numpy as np
import pytest
from test_point_datasets import _scanobjectnn

from cache_schema import open_cache
from cache_schema.validate import validate
from preprocess.build_common import cached_teacher
from preprocess.build_points import PointBuildConfig, build_points
from preprocess.class_prompts import add_class_prompts
from train.eval import frozen


def test_class_prompts_make_a_points_cache_zero_shot_ready(tmp_path, stage1_ckpt):
    _scanobjectnn(str(tmp_path / "h5"), n_train=6, n_test=8, points=256)
    url = str(tmp_path / "scan.zarr")
    build_points(url, PointBuildConfig("scanobjectnn", str(tmp_path / "h5"), "obj_bg"), progress=False)
    before = open_cache(url).fingerprint
    with pytest.raises(ValueError, match="zero-shot|class_text|class-prompt"):
        frozen.text_teacher(open_cache(url))
    print(add_class_prompts(url, "clip-tiny"))
    cache = open_cache(url)
    assert cache.fingerprint != before and cache.teachers["clip-tiny"].roles == ("class_text",)
    expected = cached_teacher("clip-tiny", 64).encode_classes(list(cache.label_names))
    np.testing.assert_allclose(cache.teacher("clip-tiny", "class_text"), expected, atol=2e-3)  # stored float16
    assert "nothing to do" in add_class_prompts(url, "clip-tiny")
    assert validate(url) == []
    student = frozen.load_student(stage1_ckpt, cache)
    result = frozen.zeroshot(student, cache, "test", num_points=128)
    assert result["num_classes"] == 15 and result["num_samples"] == 8 and 0 <= result["top1"] <= result["top5"] <= 1
    with pytest.raises(ValueError, match="no text tower"):
        add_class_prompts(url, "dinov2-tiny")
