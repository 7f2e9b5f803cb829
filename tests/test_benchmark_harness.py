"""The benchmark harness (benchmarks/timing.py, report.py, profile_step.py): alternation, medians, tables, attribution."""

import os
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # benchmarks/ is a top-level folder, not part of the installed package
    sys.path.insert(0, REPO)
from benchmarks import profile_step, report, timing  # noqa: E402


def test_alternate_interleaves_the_contenders_and_reports_medians():
    order = []
    calls = {"a": lambda: order.append("a"), "b": lambda: order.append("b")}
    results = timing.alternate(calls, warmup=2, rounds=3)
    assert order == ["a", "a", "b", "b"] + ["a", "b"] * 3  # warm-ups first, then one of each per round
    for result in results.values():
        assert len(result["times_s"]) == 3
        assert min(result["times_s"]) <= result["median_s"] <= max(result["times_s"])
    with pytest.raises(ValueError, match="rounds=0"):
        timing.alternate(calls, warmup=1, rounds=0)


def test_peak_flops_names_how_it_was_derived():
    peak, note = timing.peak_flops()
    assert peak >= 0 and "cores x" in note and "FLOP/cycle" in note


def test_an_accelerator_peak_comes_from_its_datasheet_by_device_kind():
    class Device:  # the two attributes peak_flops reads from a jax.Device
        def __init__(self, platform, device_kind):
            self.platform, self.device_kind = platform, device_kind

    peak, note = timing.peak_flops(Device("gpu", "NVIDIA H200"))
    assert peak == 67e12 and "H200" in note and "datasheet" in note
    peak, note = timing.peak_flops(Device("tpu", "TPU v9"))
    assert peak == 0 and "TPU v9" in note  # no % column rather than a wrong one
    assert "cores x" in timing.peak_flops(Device("cpu", "cpu"))[1]


def test_report_has_one_row_per_measurement_and_the_ratios():
    results = {
        "machine": {"cpu": "test cpu"}, "settings": {"batch": 32}, "peak_flops": 100e9, "peak_note": "n",
        "rows": [{"classifier": "squeezenet1_1", "step": "TRADES step", "jax": 50.0, "torch eager": 25.0,
                  "jax compile s": 3.0, "jax GFLOP/s": 10.0}],
        "compile": {10: 20.0, 40: 21.0},
        "pmap": [{"devices": 1, "per-device batch": 32, "images_per_s": 10.0, "first_s": 5.0,
                  "max |params - params(N=1)|": 0.0},
                 {"devices": 2, "per-device batch": 16, "images_per_s": 9.0, "first_s": 6.0,
                  "max |params - params(N=1)|": 1e-3}],
    }
    text = report.markdown(results, "python launch/benchmark.py")
    assert "| squeezenet1_1 | TRADES step | 50.0 | 25.0 | 2.00x | 10.0 (10.0 %) | 3.0 |" in text
    assert "| 40 | 21.0 | 1.05x |" in text
    assert "| 2 | 16 | 9.0 | 6.0 | 1.00e-03 |" in text


HLO = """
%fused_conv (p0: f32[2,8,8,3], p1: f32[3,3,3,4]) -> f32[2,8,8,4] {
  %p0 = f32[2,8,8,3]{3,2,1,0} parameter(0)
  ROOT %convolution.1 = f32[2,8,8,4]{3,2,1,0} convolution(%p0, %p1), metadata={op_name="jit(_fun)/while/body/closed_call/transpose(jvp(SqueezeNet))/stem/conv/conv_general_dilated"}
}

%body.1 (arg: (s32[], f32[2,8,8,3])) -> (s32[], f32[2,8,8,3]) {
  %ynn_fusion.7 = f32[2,8,8,4]{3,2,1,0} fusion(%x, %k), kind=kCustom, calls=%fused_conv
}

ENTRY %main.2 (a: f32[2,8,8,3]) -> f32[2,8,8,4] {
  %dot.6 = f32[128,4]{1,0} dot(%patches, %kernel), metadata={op_name="jit(_fun)/SqueezeNet/fire2/squeeze/conv/dot_general"}
  %while.3 = (s32[], f32[2,8,8,3]) while(%t), condition=%cond.1, body=%body.1
  %add.4 = f32[2,8,8,4]{3,2,1,0} add(%a, %b), metadata={op_name="jit(_fun)/jvp(ICFDNet)/encoder0/GroupNorm_0/add"}
  %kernel_grad.5 = f32[3,3,3,4]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%fused_conv_no_metadata
}

%fused_conv_no_metadata (p0: f32[2,8,8,3]) -> f32[3,3,3,4] {
  ROOT %convolution.9 = f32[3,3,3,4]{3,2,1,0} convolution(%p0, %p0)
}
"""


def test_profile_attributes_ops_to_loop_part_direction_and_kind():
    sources = profile_step.op_sources(HLO)
    assert profile_step.group_of(*sources["ynn_fusion.7"], classifier="SqueezeNet") == (
        "attack loop", "classifier", "backward", "convolution")  # the fused body's metadata and convolution count
    assert profile_step.group_of(*sources["add.4"], classifier="SqueezeNet") == (
        "outside the loop", "IC1/IC2", "forward", "other ops")
    assert profile_step.group_of(*sources["kernel_grad.5"], classifier="SqueezeNet") == (
        "outside the loop", "unattributed", "?", "convolution")
    assert profile_step.group_of(*sources["dot.6"], classifier="SqueezeNet") == (
        "outside the loop", "classifier", "forward", "matmul")
    assert profile_step.short_label(sources["ynn_fusion.7"][0]) == "SqueezeNet/stem/conv/conv_general_dilated"


def test_compile_trace_summary_totals_xla_events_and_leaves_out_python_frames():
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    from benchmarks import step_parts  # pylint: disable=import-outside-toplevel

    # A constant of its own makes the program new to the suite's persistent compilation cache.
    unique = float(time.time_ns() % 1_000_003)
    lowered = jax.jit(lambda x: jnp.tanh(x) * unique + jnp.sum(x)).lower(jax.ShapeDtypeStruct((64,), jnp.float32))
    wall, events = step_parts.compile_trace_summary(lowered, top=50)
    names = [name for name, _, _ in events]
    assert wall > 0 and "PjRtCpuClient::Compile" in names
    assert not any(name.startswith("$") for name in names)  # "$file:line" events are Python's, not XLA's
    seconds = [total for _, total, _ in events]
    assert seconds == sorted(seconds, reverse=True) and all(count >= 1 for _, _, count in events)
    compile_s = dict((name, total) for name, total, _ in events)["PjRtCpuClient::Compile"]
    assert compile_s <= wall + 0.05  # the backend's compile lies inside the timed call
    with pytest.raises(RuntimeError, match="nothing was compiled"):  # the same program again: JAX's cache serves it
        step_parts.compile_trace_summary(lowered)


@pytest.mark.slow  # five lowerings of whole-step size: about 20 s
def test_the_four_step_parts_make_up_the_train_step():
    """The parts' StableHLO operations add up to the whole step's, to within what the step adds around them
    (key splitting, device means, counters) and what XLA's lowering shares between them."""
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import ml_collections  # pylint: disable=import-outside-toplevel

    from benchmarks import step_parts  # pylint: disable=import-outside-toplevel
    from benchmarks.compile_probe import fresh_train_step, stablehlo_size  # pylint: disable=import-outside-toplevel
    from flax_fld.models import fld  # pylint: disable=import-outside-toplevel
    from flax_fld.runtime.config_files import load_config  # pylint: disable=import-outside-toplevel
    from flax_fld.training import train  # pylint: disable=import-outside-toplevel

    config = load_config("tiny")
    config.data.image_size = 32
    image_shape, batch = (32, 32, int(config.data.channels)), 2
    model = fld.create_fld_model(config.model, 4, image_shape[-1])
    parts = step_parts.step_parts(config, model, image_shape, batch)
    assert tuple(parts) == step_parts.PART_NAMES
    operations = {name: stablehlo_size(jax.jit(function).lower(*arguments).as_text())[0]
                  for name, (function, arguments) in parts.items()}
    devices = jax.local_device_count()
    step = fresh_train_step(model, ml_collections.FrozenConfigDict(config)).lower(
        train.abstract_train_state(config, model, image_shape, 10),
        {"image": jax.ShapeDtypeStruct((devices, batch, *image_shape), jnp.float32),
         "label": jax.ShapeDtypeStruct((devices, batch), jnp.int32)})
    whole = stablehlo_size(step.as_text())[0]
    assert all(count > 0 for count in operations.values())
    assert 0.8 * whole <= sum(operations.values()) <= 1.1 * whole, (operations, whole)
    with pytest.raises(ValueError, match="use_decouplers"):
        config.model.use_decouplers = False
        step_parts.step_parts(config, fld.create_fld_model(config.model, 4, image_shape[-1]), image_shape, batch)
