"""Imports run one way: preprocess -> cache_schema <- train."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _names(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name.split(".")[0] for a in node.names}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return {node.module.split(".")[0]}
    return set()


def _imported_top_levels(package: str, module_level_only: bool = False) -> set[str]:
    names = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in (tree.body if module_level_only else ast.walk(tree)):
            names |= _names(node)
    return names


def test_cache_schema_imports_only_its_declared_dependencies():
    allowed = {"numpy", "zarr", "numcodecs", "fsspec", "cache_schema"}
    stdlib = set(sys.stdlib_module_names)
    assert _imported_top_levels("cache_schema", module_level_only=True) - stdlib - allowed == set()
    # inside functions: `cache show` reaches for its optional extra (viz: matplotlib), `cache validate
    # --scheduler` for a Dask cluster
    assert _imported_top_levels("cache_schema") - stdlib - allowed == {"matplotlib", "dask"}


def test_train_never_imports_preprocess_or_builder_libraries():
    forbidden = {"preprocess", "pyrender", "trimesh", "open_clip", "transformers", "OpenGL"}
    assert _imported_top_levels("train") & forbidden == set()


def test_importing_the_contract_loads_no_heavy_modules():
    code = ("import sys, cache_schema, cache_schema.cli, cache_schema.validate, cache_schema.info; "
            "print(sorted(m for m in ('torch', 'train', 'preprocess', 'typer', 'pyrender') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_trainer_loads_no_builder_modules_at_run_time():
    code = ("import sys, train.cli, train.stages.stage1, train.eval.frozen, train.data.objects; "
            "print(sorted(m for m in ('preprocess', 'pyrender', 'trimesh', 'open_clip', 'transformers', 'OpenGL') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
