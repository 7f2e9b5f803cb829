"""The suite's own guard: in CI a skipped test is a failure (tests/conftest.py)."""

import os
import subprocess
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))


def _run_pytest(tmp_path, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_skips.py").write_text(
        "import pytest\n"
        "def test_needs_torch():\n    pytest.skip('PyTorch is not installed')\n"
        "def test_plain():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    env["PYTHONPATH"] = TESTS + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                           "-p", "no:xdist", str(tmp_path / "test_skips.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ci", [False, True])
def test_a_skip_fails_only_in_ci(tmp_path, ci):
    result = _run_pytest(tmp_path, ci)
    if ci:
        assert result.returncode != 0, result.stdout
        assert "1 failed, 1 passed" in result.stdout and "skipped in CI" in result.stdout
    else:
        assert result.returncode == 0, result.stdout
        assert "1 passed, 1 skipped" in result.stdout
