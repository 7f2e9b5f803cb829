"""benchmarks/paper_on_accelerator.sh and its compile options: what a 15-minute accelerator lease relies on.

The lease cannot be rehearsed on a GPU here, so these check on the CPU what would otherwise fail there first:
that compiler options reach XLA and that an option the installed XLA does not know costs one variant one
line, that the script refuses budgets over its stage, and (slow) that both stages on the tiny preset leave
every result file within their budget, with PyTorch unimportable during the compile stage.
"""

import json
import os
import random
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # benchmarks/ is a top-level folder, not part of the installed package
    sys.path.insert(0, REPO)
from benchmarks import compile_variants  # noqa: E402
from flax_fld.runtime import gpu_compile_options  # noqa: E402

SCRIPT = os.path.join(REPO, "benchmarks", "paper_on_accelerator.sh")


def test_options_reach_xla_and_an_unknown_one_fails_only_its_own_variant(tmp_path):
    offset = random.random()  # a program no persistent cache holds, so that XLA compiles (and dumps) it
    x = jnp.arange(16.0).reshape(4, 4)
    lowered = jax.jit(lambda a: jnp.tanh(a @ a.T + offset)).lower(x)
    lines = []
    results = compile_variants.measure_variants(
        lowered, lambda: (x,),
        {"level 2, dumped": {"xla_backend_optimization_level": 2, "xla_dump_to": str(tmp_path)},
         "unknown": {"xla_no_such_option": True},
         "cheap llvm": {"xla_llvm_disable_expensive_passes": True}},
        log=lines.append, warmup=3, calls=5)
    applied = [name for name in os.listdir(tmp_path) if name.endswith("debug_options")]
    assert applied, os.listdir(tmp_path)  # XLA wrote the module's options: the variant's reached it
    assert "xla_backend_optimization_level: 2" in (tmp_path / applied[0]).read_text()
    for name in ("level 2, dumped", "cheap llvm"):  # the variant after the failing one ran too
        assert results[name]["status"] == "done" and len(results[name]["times_s"]) == 5
        assert results[name]["compile_s"] > 0 and results[name]["median_s"] > 0
    error = results["unknown"]["error"]
    assert "xla_no_such_option" in error and "\n" not in error and results["unknown"]["status"] == "error"
    assert [line for line in lines if "unknown" in line] == [f"variant unknown: {error}"]


def test_presets_parse_to_xla_options_and_a_bad_name_is_one_line():
    fast = gpu_compile_options.parse("fast_compile")
    assert fast == {"xla_gpu_enable_llvm_module_compilation_parallelism": True, "xla_gpu_autotune_level": 0,
                    "xla_gpu_enable_triton_gemm": False}
    assert gpu_compile_options.parse("default") == gpu_compile_options.parse("") == {}
    assert gpu_compile_options.parse("autotune_0, --xla_gpu_autotune_level=1,xla_gpu_force_compilation_parallelism=8") \
        == {"xla_gpu_autotune_level": 1, "xla_gpu_force_compilation_parallelism": 8}  # later items win
    assert gpu_compile_options.xla_flags(fast) == ("--xla_gpu_enable_llvm_module_compilation_parallelism=true "
                                                   "--xla_gpu_autotune_level=0 --xla_gpu_enable_triton_gemm=false")
    for spec in ("autotune_zero", "gpu_autotune_level=0"):
        with pytest.raises(ValueError) as raised:
            gpu_compile_options.parse(spec)
        assert "\n" not in str(raised.value) and "fast_compile" in str(raised.value)


def test_check_keeps_the_options_xla_knows_and_names_each_one_it_drops():
    known, refused = gpu_compile_options.check({"xla_gpu_autotune_level": 0, "xla_no_such_option": 1,
                                                "xla_llvm_disable_expensive_passes": True})
    assert known == {"xla_gpu_autotune_level": 0, "xla_llvm_disable_expensive_passes": True}  # a GPU one too
    assert len(refused) == 1 and refused[0].startswith("xla_no_such_option=1: ") and "\n" not in refused[0]


@pytest.mark.parametrize("environment, message", [
    ({"STAGE": "compile", "OPTION_S": "200"}, "the compile stage's budgets and kill delays add up to 1234 s"),
    ({"STAGE": "run", "TRAIN_S": "400"}, "the run stage's budgets and kill delays add up to 715 s"),
    ({"STAGE": "both"}, "STAGE must be compile or run"),
])
def test_the_script_refuses_a_plan_over_its_stage_before_running_anything(tmp_path, environment, message):
    done = subprocess.run(["bash", SCRIPT, str(tmp_path / "out")], env={**os.environ, **environment},
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")  # nothing ran


def _stage(stage: str, out, **extra) -> tuple[float, dict[str, str]]:
    """Runs one stage of the script on the tiny preset; returns (wall s, {part: status})."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("JAX_COMPILATION_CACHE_DIR", "CI", "XLA_FLAGS")}
    environment.update(STAGE=stage, PRESET="tiny", PYTHON=sys.executable, JAX_PLATFORMS="cpu",
                       XLA_FLAGS="--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
                       **extra)
    start = time.perf_counter()
    done = subprocess.run(["bash", SCRIPT, str(out)], env=environment, capture_output=True, text=True,
                          timeout=600, check=False)
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    rows = (out / f"summary-{stage}.tsv").read_text().splitlines()[1:]
    return wall, {row.split("\t")[0]: row.split("\t")[1] for row in rows}


@pytest.mark.slow  # both stages on configs/tiny.py: 4 min 9 s on 2 cores beside other work (load 4 to 6)
def test_both_stages_leave_every_result_file_within_their_budgets(tmp_path):
    blocker = tmp_path / "no_torch" / "torch"  # an import of torch fails: the compile stage must not need it
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked in this rehearsal')\n")
    out = tmp_path / "out"
    wall, statuses = _stage("compile", out, PYTHONPATH=str(blocker.parent), PARTS_PROGRAMS="decouplers",
                            OPTION_VARIANTS="default xla_no_such_option=1 fast_compile")
    assert wall < 540, wall
    assert statuses == {"environment": "ok", "parts": "ok", "options_default": "ok",
                        "options_xla_no_such_option_1": "error", "options_fast_compile": "ok", "memory": "ok"}
    environment = json.loads((out / "environment-compile.json").read_text())
    assert environment["compile_option_presets"]["fast_compile"] == "known"
    assert json.loads((out / "parts.jsonl").read_text().splitlines()[0])["program"] == "decouplers"
    assert "### decouplers" in (out / "parts.md").read_text()
    for variant in ("default", "fast_compile"):
        result = json.loads((out / f"options_{variant}.json").read_text())
        assert result["status"] == "done" and result["program"] == "decouplers" and result["median_s"] > 0
    unknown = json.loads((out / "options_xla_no_such_option_1.json").read_text())
    assert "xla_no_such_option" in unknown["error"] and "\n" not in unknown["error"]
    memory = json.loads((out / "memory.json").read_text())
    assert memory["program"] == "step" and memory["memory"]["peak_estimate_gib"] > 0 and memory["median_s"] > 0

    wall, statuses = _stage("run", out, TRAIN_EXAMPLES="40", K="2", ROWS_CLASSIFIERS="squeezenet1_1",
                            ROWS_WARMUP="1", ROWS_ROUNDS="1", TORCH_DEVICE="cpu")
    assert wall < 540, wall
    assert statuses == {"environment": "ok", "train": "ok", "rows_baseline": "ok", "rows_fld_squeezenet1_1": "ok"}
    train = json.loads((out / "train.json").read_text())
    assert train["status"] == "ok" and "XLA programs compiled" in train["compile_count_line"] and train["eval_json"]
    assert "| squeezenet1_1 | TRADES step |" in (out / "rows_baseline.md").read_text()
    assert "| squeezenet1_1 | FLD + TRADES step |" in (out / "rows_fld_squeezenet1_1.md").read_text()
