"""Pictures: the objects contact sheet, the scenes overlay (points on their stored pixels) and run reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from cache_schema import open_cache
from cache_schema.cli import main as cache_main
from cache_schema.example import write_example
from cache_schema.show import overlay_image


def _size(path: str) -> tuple[int, int]:
    assert os.path.getsize(path) > 10_000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_overlay_puts_each_point_on_its_pixel():
    image = np.zeros((10, 12, 3), np.uint8)
    uv = np.array([[2.5, 3.7], [11.9, 9.99], [0.0, 0.0], [12.0, 5.0]])  # the last is just outside
    colors = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], np.uint8)
    out = overlay_image(image, uv, colors, radius=0)
    assert out[3, 2].tolist() == [255, 0, 0] and out[9, 11].tolist() == [0, 255, 0] and out[0, 0].tolist() == [0, 0, 255]
    assert np.count_nonzero(out.any(axis=2)) == 3 and not image.any()  # the input is untouched
    assert np.count_nonzero(overlay_image(image, uv[:1], colors[:1], radius=1).any(axis=2)) == 9


def test_overlay_of_a_cache_frame_marks_exactly_its_stored_pairs(tmp_path):
    url = str(tmp_path / "scenes.zarr")
    write_example(url, "scenes")
    frame = open_cache(url).frame(0)
    for c in range(len(frame.K)):
        w, h = frame.image_size[c]
        sel = frame.pair_camera == c
        out = overlay_image(np.zeros((h, w, 3), np.uint8), frame.pair_uv[sel], np.full((sel.sum(), 3), 255, np.uint8),
                            radius=0)
        drawn = {tuple(p) for p in np.argwhere(out[..., 0] == 255).tolist()}
        stored = {(int(np.floor(v)), int(np.floor(u))) for u, v in frame.pair_uv[sel] if u < w and v < h}
        assert drawn == stored and drawn


def test_objects_sheet_with_failed_rows(small_demo_cache, tmp_path):
    out = str(tmp_path / "sheet.png")
    assert cache_main(["show", small_demo_cache, "--out", out, "--rows", "3"]) == 0
    # 2 views -> 2 RGB + 2 depth + 2 point panels + captions = 7 columns of 1.9 in (+1.5), 3 rows of 1.9 in (+0.6)
    assert _size(out) == (round((1.9 * 7 + 1.5) * 100), round((1.9 * 3 + 0.6) * 100))
    example = str(tmp_path / "example.zarr")
    write_example(example, "objects")  # has a failed row, depth maps but no RGB
    out2 = str(tmp_path / "example.png")
    assert cache_main(["show", example, "--out", out2, "--rows", "2"]) == 0
    w, h = _size(out2)
    assert w == round((1.9 * 7 + 1.5) * 100) and h == round((1.9 * 2 + 0.25 + 0.6 + 0.6) * 100)
    assert cache_main(["show", example, "--out", out2, "--ids", "no-such-id"]) == 2


def test_scenes_sheet_with_images_by_depth_and_label(tmp_path):
    from preprocess.build_common import RunOptions
    from preprocess.build_scenes import SceneBuildConfig, build_scenes

    url = str(tmp_path / "scenes.zarr")
    build_scenes(url, SceneBuildConfig("demo-scenes", frames=2, teachers=("dinov2-tiny",), feature_size=(70, 42),
                                       store_images=True), RunOptions(progress=False))
    for color_by in ("depth", "label"):
        out = str(tmp_path / f"frame-{color_by}.png")
        assert cache_main(["show", url, "--out", out, "--frame", "1", "--color-by", color_by]) == 0
        # 3 cameras of 320x192 in one row of 5 in panels, the bird's-eye view below
        assert _size(out) == (round((5 * 3 + 1.2) * 100), round((5 * 192 / 320 + 6.5) * 100))


def test_train_report_png_and_html(small_demo_cache, tmp_path):
    from typer.testing import CliRunner

    from train.cli import app
    from train.stages.stage1 import Stage1Config, train_stage1

    run = str(tmp_path / "run")
    train_stage1(Stage1Config(cache=small_demo_cache, out=run, steps=4, batch_size=4, num_points=128, workers=0,
                              log_every=1), progress=False)
    result = CliRunner().invoke(app, ["report", run])
    assert result.exit_code == 0, result.output
    assert _size(os.path.join(run, "report.png")) == (1600, 900)
    page = open(os.path.join(run, "report.html")).read()
    assert '<img src="report.png"' in page and "linear SVM" in page and '&quot;steps&quot;: 4' in page
    evaluation = json.load(open(os.path.join(run, "eval.json")))
    assert set(evaluation) == {"checkpoint", "setting", "random init", "this run"}
    assert evaluation["checkpoint"] == "last.pt"  # the run did not validate: no best.pt
    assert evaluation["setting"] == "test split; few-shot 5-way 4-shot" and 0 <= evaluation["this run"]["linear"] <= 1
    # the demo's table reads the same evaluation
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "demo_results.py")
    table = subprocess.run([sys.executable, script, run], capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stderr
    assert "5-way 4-shot" in table.stdout and os.path.join(run, "last.pt") in table.stdout
    missing = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert missing.exit_code == 2 and ("config.json" in missing.output or "metrics.csv" in missing.output)


def test_show_explains_a_missing_cache(tmp_path):
    assert cache_main(["show", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")]) == 2
