"""Tests for flax_fld/evaluation/saliency.py (integrated gradients through the whole model) and predict's --explain."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from model_helpers import RUNS_MANY_TIMES, synthetic_fld_variables, untrained_run

from flax_fld.data.datasets import simulator
from flax_fld.evaluation import saliency
from flax_fld.models import fld
from flax_fld.runs import predict
from flax_fld.runtime.config_files import load_config

_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
_GRADES = ("normal", "mild", "moderate")  # three images: the CLI test grades three too (same compiled shapes)
# The completeness test's 40 forward + backward passes ran ~10x slower at the suite's level 0; that program, and
# only it, is compiled at level 1 (measured on 2 cores: compiling 5 s longer, running 24 s -> 3 s).
_LIBRARY_EXPLAIN_PROGRAM = saliency._jitted_explain


@functools.lru_cache(maxsize=1)
def _explain_program_at_level_1(model, baseline):
    """The library's own jitted ``explain_model`` (wrapped, not copied), compiled at level 1."""
    return jax.jit(_LIBRARY_EXPLAIN_PROGRAM(model, baseline), compiler_options=RUNS_MANY_TIMES)


def _scans(size=32):
    """Three simulated sector scans ``[3, size, size, 1]`` in [0, 1], black outside the sector."""
    return np.stack([simulator.simulate_example(7, i, grade, size).image for i, grade in enumerate(_GRADES)])[..., None]


# One program per shape rather than one per jnp op (eager); what is tested is the baseline, not eager mode.
_make_baseline = jax.jit(saliency.make_baseline, static_argnames="kind")


@pytest.fixture(scope="module")
def tiny_model():
    """(model, variables) of configs/tiny.py (GroupNorm decouplers, squeezenet1_1) with numpy-filled weights."""
    model = fld.create_fld_model(load_config("tiny").model, 4, 1)
    return model, synthetic_fld_variables(model, (32, 32, 1))


def test_completeness_gap_shrinks_with_the_steps_on_a_tiny_fld_model(tiny_model, monkeypatch):
    # Completeness: the attributions of an image sum to f_k(x) - f_k(baseline). The midpoint rule's gap comes
    # from the integrand's kinks (ReLU, max pooling), so it falls like 1/steps rather than 1/steps^2 and is
    # noisy per image; its mean over these three scans and classes, measured on this model: 0.94 logits at 8
    # steps, 0.16 at 32, 0.083 at 64, 0.020 at 128. The bounds leave a factor 2 of slack; 32 steps, not more,
    # because each step is a forward and a backward pass of the model. (On the trained 64 px demo model,
    # whose logits move by 2 to 8 between baseline and image, 64 steps left 1 to 4 %; this untrained one's
    # logits move by 0.1 to 0.8, hence an absolute bound in logits.)
    model, variables = tiny_model
    images = _scans()
    targets = np.array([0, 1, 3])  # completeness holds for any class; no forward pass to find the predicted ones
    monkeypatch.setattr(saliency, "_jitted_explain", _explain_program_at_level_1)  # explain's batching kept
    coarse = saliency.explain(model, variables, images, targets, steps=8)
    fine = saliency.explain(model, variables, images, targets, steps=32)
    np.testing.assert_allclose(coarse.logit_changes, fine.logit_changes)  # the same two ends
    gap_8 = np.mean(np.abs(coarse.attribution_sums - coarse.logit_changes))
    gap_32 = np.mean(np.abs(fine.attribution_sums - fine.logit_changes))
    assert gap_32 < 0.5 * gap_8 and gap_32 < 0.32, (gap_8, gap_32)
    assert fine.maps.shape == (3, 32, 32) and fine.maps.min() >= 0.0
    np.testing.assert_allclose(fine.maps.max(axis=(1, 2)), 1.0)
    # The flat baseline keeps the black outside the sector, so nothing there is attributed.
    outside = images[..., 0] <= saliency.DARK_LEVEL
    assert outside.any() and np.all(fine.maps[outside] == 0.0)


def test_black_is_a_jump_for_the_decouplers_and_the_flat_baseline_is_not(tiny_model):
    # Why the baseline is not black: IC1/IC2 begin with a bias-free convolution + GroupNorm, blind to the
    # image's scale, so the logit jumps right next to black and no step count integrates over the jump.
    model, variables = tiny_model
    logits_fn = jax.jit(saliency.model_logits_fn(model, variables))
    image = _scans()[2]
    for kind, expect_jump in (("black", True), ("flat", False)):
        start = np.asarray(_make_baseline(image, kind))
        path = np.stack([start + alpha * (image - start) for alpha in (0.0, 1e-4)])
        step = float(np.abs(np.diff(np.asarray(logits_fn(path)), axis=0)).max())
        assert (step > 0.05) == expect_jump, (kind, step)  # measured: 4.2 from black, 2.5e-4 from flat


def _quadrant_logits(x):
    """A hand-built 4-class "model": class k is a 3x3 convolution of the image, soft-plussed and summed over
    quadrant k (top-left, top-right, bottom-left, bottom-right); x [B, 64, 64, C] -> [B, 4]."""
    kernel = jnp.tile(jnp.asarray([[1.0, -2.0, 1.0], [0.5, 3.0, 0.5], [1.0, -2.0, 1.0]])[:, :, None, None],
                      (1, 1, x.shape[-1], 1))
    response = jax.nn.softplus(jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                                            dimension_numbers=("NHWC", "HWIO", "NHWC")))[..., 0]
    quadrants = [response[:, :32, :32], response[:, :32, 32:], response[:, 32:, :32], response[:, 32:, 32:]]
    return jnp.stack([q.sum(axis=(1, 2)) for q in quadrants], axis=-1)


@pytest.mark.parametrize("channels", [1, 3])
def test_a_class_that_reads_one_quadrant_is_explained_by_that_quadrant(channels):
    images = np.random.default_rng(0).random((4, 64, 64, channels)).astype(np.float32)
    targets = np.array([0, 1, 2, 3])

    @jax.jit  # everything below in one program, not one per eager jnp op
    def explain(x, t):
        attributions = saliency.integrated_gradients(_quadrant_logits, x, t, steps=32)
        change = (_quadrant_logits(x) - _quadrant_logits(jnp.zeros_like(x)))[jnp.arange(4), t]
        single = saliency.integrated_gradients(_quadrant_logits, x[1], 1, steps=32)  # one image [H, W, C]
        return saliency.saliency_map(attributions), attributions, change, single

    maps, attributions, change, single = (np.asarray(a) for a in explain(images, targets))
    assert maps.shape == (4, 64, 64)
    for k in range(4):
        rows, columns = (slice(0, 32), slice(32, 64))[k // 2], (slice(0, 32), slice(32, 64))[k % 2]
        share = maps[k, rows, columns].sum() / maps[k].sum()
        assert share > 0.95, (k, share)  # measured 0.976 to 0.981: the convolution reaches 1 pixel across
    # A smooth model and a black baseline: completeness holds tightly; one image [H, W, C] as in a batch.
    np.testing.assert_allclose(attributions.sum(axis=(1, 2, 3)), change, rtol=2e-3)
    np.testing.assert_allclose(single, attributions[1], rtol=1e-5, atol=1e-6)


def test_flat_baseline_and_saliency_paths():
    image = np.zeros((4, 4, 1), np.float32)
    image[1:3, 1:3, 0] = [[0.2, 0.4], [0.6, 0.8]]
    np.testing.assert_allclose(np.asarray(_make_baseline(image))[..., 0],
                               np.pad(np.full((2, 2), 0.5), 1), atol=1e-7)  # the sector's mean; black kept
    assert np.all(np.asarray(_make_baseline(np.zeros((2, 3, 3, 3)))) == 0.0)  # all dark: its own
    np.testing.assert_array_equal(jax.jit(saliency.saliency_map)(np.zeros((2, 3, 3, 1))), np.zeros((2, 3, 3)))
    assert predict.saliency_paths(["out/a.png", "out/a_saliency.png"]) == [
        "out/a_saliency_0.png", "out/a_saliency_saliency.png"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A configs/tiny.py run directory holding its initial state (predict needs weights, not good ones)."""
    root = tmp_path_factory.mktemp("explain")
    config = load_config("tiny")
    config.data.data_dir = str(root / "tfds_data")
    workdir, _ = untrained_run(root, config)
    return workdir


def test_cli_explain_writes_one_saliency_png_per_image_and_frame(run_dir, tmp_path):
    pytest.importorskip("pydicom")
    from test_dicom import write_dicom

    scans = _scans()
    png = tmp_path / "scan.png"
    PIL.Image.fromarray(np.round(scans[0, ..., 0] * 255).astype(np.uint8)).save(png)
    cine = write_dicom(tmp_path / "cine.dcm", np.round(scans[1:, ..., 0] * 4095))  # two frames
    plot_dir = tmp_path / "plots"
    result = subprocess.run([sys.executable, os.path.join(_ROOT, "launch", "predict.py"), f"--workdir={run_dir}",
                             f"--plot_dir={plot_dir}", "--explain", "--explain_steps=4", str(png), str(cine)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    written = sorted(os.listdir(plot_dir))
    assert written == ["cine_frame1.png", "cine_frame1_saliency.png", "cine_frame2.png",
                       "cine_frame2_saliency.png", "scan.png", "scan_saliency.png"]
    for name in written:
        assert f"wrote {plot_dir / name}" in result.stdout
        with PIL.Image.open(plot_dir / name) as image:
            assert image.format == "PNG"


def test_cli_explain_without_plot_dir_is_a_one_line_usage_error(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(_ROOT, "launch", "predict.py"),
                             f"--workdir={tmp_path}", "--explain", "scan.png"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--explain" in result.stderr.strip().splitlines()[-1]
    assert "--plot_dir" in result.stderr.strip().splitlines()[-1]
    with pytest.raises(ValueError, match="plot_dir"):
        predict.run(str(tmp_path), ["scan.png"], explain=True)
