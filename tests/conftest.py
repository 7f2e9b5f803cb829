"""Test-wide setup: two host CPU devices so pmap and collectives are exercised without a GPU.

One style across the suite: plain pytest functions (``pytest.mark.parametrize``, ``tmp_path``); a
``chex.TestCase`` only where a pure function is checked both eagerly and under jit
(``@chex.variants(with_jit=True, without_jit=True)``). Configs are the tiny presets, images 32 px or less.
"""

import os

import pytest

# Must be set before jax is imported anywhere in the test session. Two host devices; and XLA's CPU backend
# without LLVM's expensive passes at optimisation level FLAX_FLD_TEST_XLA_LEVEL (default 0). Nearly every test
# of `make test` compiles a program and runs it a few times, so compile time dominates: level 0 compiles
# about 20 % faster than level 1 (itself ~3x faster than XLA's default 3) and the suite takes ~12 % less
# time. The checks that run a program many times (`make test-slow`, which sets level 1; the strong attack
# through launch/eval.py) are faster at level 1.
_XLA_LEVEL = os.environ.get("FLAX_FLD_TEST_XLA_LEVEL", "0")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2 "
                      f"--xla_backend_optimization_level={_XLA_LEVEL} --xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiling the train step dominates the suite's time on a CPU. A persistent cache lets the xdist workers and
# the launch/*.py subprocesses (which inherit the environment) reuse each other's identical executables.
_CACHE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE_DIR)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


# Every dependency of the suite is in the test extra, so in CI (the CI variable is set) a skip means a broken
# install: PyTorch, torchvision or torchattacks missing would otherwise silently drop the only checks against
# independent code and leave CI green. Locally a skip stays a skip, with its reason.
_SKIPS_FAIL = bool(os.environ.get("CI"))


def _fail_skip(report) -> None:
    if _SKIPS_FAIL and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped in CI (the test extra should provide everything): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_skip(outcome.get_result())


# FLAX_FLD_TEST_COMPILE_REPORT=DIR: every test's XLA programs (compiled, and loaded from the persistent cache)
# and wall seconds, one JSON line per test in DIR/<worker>.jsonl; `python tests/compile_report.py DIR` ranks
# them. Where the suite's time goes is mostly compiling, and which test pays for which program is the map for
# sharing compiled programs between tests.
_COMPILE_REPORT_DIR = os.environ.get("FLAX_FLD_TEST_COMPILE_REPORT", "")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if not _COMPILE_REPORT_DIR:
        yield
        return
    import json
    import time

    from flax_fld.training import compile_log

    log = compile_log.process_log()
    before, start = len(log.programs), time.perf_counter()
    yield
    programs = log.programs[before:]
    fresh = [p for p in programs if not p.cached]
    record = {"test": item.nodeid, "seconds": round(time.perf_counter() - start, 3),
              "compiled": len(fresh), "compile_s": round(sum(p.compile_s + p.lower_s for p in fresh), 3),
              "cached": len(programs) - len(fresh),
              "programs": sorted({p.name for p in fresh})}
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    os.makedirs(_COMPILE_REPORT_DIR, exist_ok=True)
    with open(os.path.join(_COMPILE_REPORT_DIR, f"{worker}.jsonl"), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
