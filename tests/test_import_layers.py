"""The package's import layers (pyproject.toml's import-linter contract): kept today, and reported when broken."""

import ast
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT_IMPORTS = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint_imports(root: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=root)
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_package_keeps_its_layers():
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_import_from_a_higher_layer_breaks_the_contract(tmp_path):
    shutil.copytree(os.path.join(REPO, "flax_fld"), tmp_path / "flax_fld",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "pyproject.toml"), tmp_path / "pyproject.toml")
    losses = tmp_path / "flax_fld" / "method" / "losses.py"
    losses.write_text(losses.read_text() + "\nfrom flax_fld.training import train  # a layer above the method\n")
    result = _lint_imports(str(tmp_path))
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and "flax_fld.method.losses -> flax_fld.training.train" in result.stdout


def test_no_module_of_the_package_starts_or_kills_processes():
    # Process control is test tooling (harness/), never shipped in the wheel.
    offenders = []
    for folder, _, files in os.walk(os.path.join(REPO, "flax_fld")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                tree = ast.parse(open(path, encoding="utf-8").read())
                imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                            for alias in node.names}
                imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                             if isinstance(node, ast.ImportFrom)}
                offenders += [f"{os.path.relpath(path, REPO)}: {module}"
                              for module in {"subprocess", "signal", "multiprocessing"} & imported]
    assert not offenders, offenders
