"""What `preprocess` does when the user says nothing: renders only for the demo, tiny teachers for built-in data."""

from __future__ import annotations

from mesh_fixtures import modelnet_fixture
from typer.testing import CliRunner

from cache_schema import open_cache
from preprocess.cli import app

SMALL = ["--points", "128", "--views", "2", "--resolution", "32", "--num-captions", "1", "--no-progress"]


def test_real_datasets_do_not_store_renders_unless_asked(tmp_path):
    root = tmp_path / "ModelNet40"
    modelnet_fixture(str(root))
    url = str(tmp_path / "m.zarr")
    result = CliRunner().invoke(app, ["objects", "modelnet40", "--root", str(root), "--out", url, "--teachers",
                                      "tiny", *SMALL])
    assert result.exit_code == 0, result.output
    cache = open_cache(url)
    assert "views/rgb" not in cache.group and "views/depth" not in cache.group
    assert "teachers/clip-tiny/image" in cache.group  # the views were embedded all the same
    assert "renders not stored" in result.output and "--rgb --depth" in result.output
    kept = str(tmp_path / "kept.zarr")
    result = CliRunner().invoke(app, ["objects", "modelnet40", "--root", str(root), "--out", kept, "--teachers",
                                      "tiny", "--rgb", *SMALL])
    assert result.exit_code == 0 and "views/rgb" in open_cache(kept).group and "views/depth" in open_cache(kept).group


def test_built_in_data_defaults_to_the_tiny_teachers(tmp_path):
    url = str(tmp_path / "s.zarr")
    result = CliRunner().invoke(app, ["scenes", "demo-scenes", "--frames", "2", "--feature-size", "70x42", "--out",
                                      url, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert list(open_cache(url).teachers) == ["dinov2-tiny"]
    demo = str(tmp_path / "d.zarr")
    result = CliRunner().invoke(app, ["objects", "demo", "--max-per-class", "1", "--demo-per-class", "1", "--out",
                                      demo, *SMALL])
    assert result.exit_code == 0, result.output
    cache = open_cache(demo)
    assert sorted(cache.teachers) == ["clip-tiny", "dinov2-tiny"] and "views/rgb" in cache.group
