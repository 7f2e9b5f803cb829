"""Tests for flax_fld/robustness/strong_attack.py and flax_fld/robustness/robust_eval.py.

A linear model is the reference: its exact L-inf robust accuracy has a closed form (for each wrong class, the
worst image of the ball moves every pixel by epsilon against the sign of w_y - w_j, clipped to [0, 1]), so the
attack is checked against the truth, not only against PGD. Multiplying its logits by 1e4 saturates the softmax:
cross-entropy gradients are exactly zero and PGD-CE fails, the gradient masking a scale-free loss must defeat.
"""

import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_helpers import RUNS_MANY_TIMES, synthetic_variables, untrained_run

from flax_fld.evaluation import metrics
from flax_fld.method import attack
from flax_fld.models import fld
from flax_fld.robustness import robust_eval, strong_attack
from flax_fld.runtime import config_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (48, 8, 8, 1)
K = 4
EPS = 4 / 255
BUDGET = robust_eval.StrongSettings(pgd_steps=10, steps=10, restarts=1, targets=3)


def _linear(seed: int = 0):
    """``(W [D, K], b [K], images [N, H, W, C])`` of a random linear model and random images."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal((int(np.prod(SHAPE[1:])), K)).astype(np.float32)
    return weights, rng.standard_normal(K).astype(np.float32), rng.random(SHAPE).astype(np.float32)


def _linear_logits(weights, bias, scale=1.0):
    return lambda x: scale * ((x.reshape(x.shape[0], -1) - 0.5) @ weights + bias)


@jax.jit
def _linear_attacks(weights, bias, scale, images, labels, epsilon):
    """Strong attack and PGD-CE on a linear model whose weights are arguments, so every linear test shares one
    compilation: ``(x_strong, margin_strong, x_pgd)``; ``epsilon`` is ``[N]``."""
    logits_fn = _linear_logits(weights, bias, scale)
    x_strong, margin = strong_attack.strong_attack(logits_fn, images, labels, epsilon, num_steps=10, num_restarts=1,
                                                   num_targets=3, key=jax.random.key(0))
    x_pgd = attack.pgd_ce(logits_fn, images, labels, epsilon, step_size=epsilon / 4, num_steps=10,
                          key=jax.random.key(1))
    return x_strong, margin, x_pgd


def _exactly_robust(weights, bias, images, labels, epsilon) -> np.ndarray:
    """bool ``[N]``: no image of the ball (within [0, 1]) changes the linear model's prediction."""
    x = images.reshape(len(images), -1)
    low, high = np.maximum(x - epsilon, 0.0), np.minimum(x + epsilon, 1.0)
    robust = np.ones(len(x), bool)
    for i, y in enumerate(labels):
        for j in set(range(K)) - {int(y)}:
            direction = weights[:, y] - weights[:, j]
            worst = np.where(direction > 0, low[i], high[i])
            robust[i] &= (worst - 0.5) @ direction + bias[y] - bias[j] > 0
    return robust


@functools.partial(jax.jit, static_argnums=0)  # one program per model and shape, not one per eager jnp op
def _argmax_logits(logits_fn, images):
    return jnp.argmax(logits_fn(images), -1)


def _correct(logits_fn, images, labels) -> np.ndarray:
    return np.asarray(_argmax_logits(logits_fn, images)) == labels


def _predicted(logits_fn, images) -> np.ndarray:
    return np.array(_argmax_logits(logits_fn, images), np.int32)  # writable copy


def test_losses_are_scale_free_and_targets_skip_the_label():
    logits = np.array([[3.0, 1.0, 2.0, -1.0], [0.0, 4.0, 1.0, 2.0]], np.float32)
    labels = np.array([0, 2], np.int32)

    @jax.jit  # one program, not one per eager jnp op
    def losses(logits, labels):
        return (strong_attack.margin(logits, labels),
                [strong_attack.dlr_loss(scale * logits, labels) for scale in (1.0, 1e-3, 1e4)],
                [strong_attack.target_classes(logits, labels, jnp.int32(k)) for k in (1, 3)],
                strong_attack.targeted_dlr_loss(logits, labels, jnp.array([2, 1])))

    margin, (dlr, *scaled_dlr), (first_targets, third_targets), targeted = jax.tree.map(
        np.asarray, losses(logits, labels))
    np.testing.assert_allclose(margin, [1.0, -3.0])
    for scaled in scaled_dlr:
        np.testing.assert_allclose(scaled, dlr, rtol=1e-5)
    # Runner-up, then the next; the label itself is never a target.
    np.testing.assert_array_equal(first_targets, [2, 1])
    np.testing.assert_array_equal(third_targets, [3, 0])
    assert float(targeted[1]) > 0  # target 1 wins
    # APGD's schedule for 100 steps.
    assert strong_attack.checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
    assert len(strong_attack.run_plan(2, 5, K)) == 2 + 2 + 3  # at most K - 1 targets


def test_equals_exact_robust_accuracy_on_a_linear_model_and_stays_in_the_ball():
    weights, bias, images = _linear()
    logits_fn = _linear_logits(weights, bias)  # one object: _argmax_logits compiles once for it
    labels = _predicted(logits_fn, images)
    epsilon = np.linspace(0.0, 8 / 255, SHAPE[0]).astype(np.float32)  # per-example radii, the first one zero
    x_adv, margin, _ = (np.asarray(a) for a in _linear_attacks(weights, bias, 1.0, images, labels, epsilon))
    distance = np.abs(x_adv - images).max(axis=(1, 2, 3))
    assert np.all(distance <= epsilon + 1e-6) and distance[0] == 0.0
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    exact = _exactly_robust(weights, bias, images, labels, epsilon[:, None])
    assert 0 < exact.sum() < len(exact)  # the radii make both outcomes occur
    np.testing.assert_array_equal(_correct(logits_fn, x_adv, labels), exact)
    np.testing.assert_array_equal(margin > 0, exact)


def test_margin_loss_defeats_the_gradient_masking_that_stops_pgd():
    weights, bias, images = _linear(seed=1)
    logits_fn = _linear_logits(weights, bias, 1e4)
    labels = _predicted(logits_fn, images)
    epsilon = np.full(SHAPE[0], EPS, np.float32)
    x_strong, _, x_pgd = _linear_attacks(weights, bias, 1e4, images, labels, epsilon)
    exact = _exactly_robust(weights, bias, images, labels, EPS)
    pgd_robust = _correct(logits_fn, x_pgd, labels)
    np.testing.assert_array_equal(_correct(logits_fn, x_strong, labels), exact)
    assert pgd_robust.mean() >= exact.mean() + 0.25, (pgd_robust.mean(), exact.mean())


def _mlp(seed: int = 2):
    """A tanh MLP: nonlinear, so PGD and the strong attack can disagree per example."""

    @jax.jit  # the weights in one program rather than one per eager PRNG op
    def weights():
        k1, k2 = jax.random.split(jax.random.key(seed))
        return jax.random.normal(k1, (int(np.prod(SHAPE[1:])), 32)) / 4.0, jax.random.normal(k2, (32, K)) * 2.0

    w1, w2 = weights()
    return lambda x: jnp.tanh((x.reshape(x.shape[0], -1) - 0.5) @ w1) @ w2


def test_seeded_with_pgd_never_weaker_per_example_and_more_runs_never_raise_a_margin():
    logits_fn = _mlp()
    images = np.random.default_rng(3).random(SHAPE).astype(np.float32)
    labels = _predicted(logits_fn, images)

    @jax.jit
    def run(x, y):
        def strong(restarts, targets, x_init=None):
            return strong_attack.strong_attack(logits_fn, x, y, EPS, num_steps=10, num_restarts=restarts,
                                               num_targets=targets, key=jax.random.key(0), x_init=x_init)

        x_pgd = attack.pgd_ce(logits_fn, x, y, EPS, step_size=EPS / 4, num_steps=10, key=jax.random.key(1))
        return x_pgd, strong(1, 1, x_pgd), strong(2, 3, x_pgd)

    x_pgd, (_, few), (x_seeded, many) = jax.tree.map(np.asarray, run(images, labels))
    pgd_robust = _correct(logits_fn, x_pgd, labels)
    strong_robust = _correct(logits_fn, x_seeded, labels)
    assert not np.any(strong_robust & ~pgd_robust)  # robust set is a subset of PGD's
    assert np.any(pgd_robust & ~strong_robust)  # and this MLP has examples only the strong attack breaks
    pgd_margin = jax.jit(lambda x, y: strong_attack.margin(logits_fn(x), y))(x_pgd, labels)
    assert np.all(few <= np.asarray(pgd_margin) + 1e-5)
    assert np.abs(x_seeded - images).max() <= EPS + 1e-6
    assert np.all(many <= few + 1e-6) and np.any(many < few - 1e-6)  # more restarts and targets only help


def test_one_call_per_class_numbers_and_near_zero_at_a_large_radius():
    weights, bias, images = _linear(seed=4)
    logits_fn = _linear_logits(weights, bias)
    images = images[:40]  # batches of 16: the last one is padded
    # Some clean errors, so that clean accuracy is below 100 %; the least likely class as label, so that noise
    # cannot turn them into correct predictions (which the noise <= clean check would rightly flag).
    labels = _predicted(logits_fn, images)
    labels[:6] = np.asarray(_argmax_logits(lambda x: -logits_fn(x), images[:6]))  # argmin
    result = robust_eval.robust_accuracy_per_class(logits_fn, images, labels, EPS, num_classes=K, settings=BUDGET,
                                                   batch_size=16)
    assert list(result) == list(robust_eval.ATTACKS) and all(len(v) == K for v in result.values())
    clean = _correct(logits_fn, images, labels)
    counts = np.bincount(labels, minlength=K)
    np.testing.assert_allclose(result["clean"], 100.0 * np.bincount(labels[clean], minlength=K) / counts)
    exact = _exactly_robust(weights, bias, images, labels, EPS) & clean
    np.testing.assert_allclose(result["strong"], 100.0 * np.bincount(labels[exact], minlength=K) / counts)
    for c in range(K):
        assert result["worst"][c] <= min(result["strong"][c], result["pgd"][c])
    checks = robust_eval.sanity_checks(result, [f"c{i}" for i in range(K)])
    assert all(check["passed"] for check in checks), checks

    # Same logits_fn and batch size: the compiled evaluation is reused at the large radius.
    large = robust_eval.robust_accuracy_per_class(logits_fn, images[:16], labels[:16], 64 / 255, num_classes=K,
                                                  settings=BUDGET, batch_size=16)
    accuracy = np.nansum(np.asarray(large["strong"]) * np.bincount(labels[:16], minlength=K)) / 16
    assert accuracy <= 10.0, large


def test_sanity_checks_flag_a_constructed_violation_as_a_warning():
    per_class = {"clean": [90.0, 80.0, np.nan], "noise": [90.0, 85.0, np.nan], "pgd": [50.0, 40.0, np.nan],
                 "strong": [60.0, 30.0, np.nan], "worst": [50.0, 30.0, np.nan]}
    checks = robust_eval.sanity_checks(per_class, ["a", "b", "c"], large_radius_accuracy=40.0)
    by_name = {check["name"]: check for check in checks}
    assert not by_name["order a"]["passed"]
    assert "pgd 50.00 < strong 60.00" in by_name["order a"]["detail"]
    assert "clean 80.00 < noise 85.00" in by_name["order b"]["detail"]
    assert by_name["order c"]["passed"]  # a class without examples is skipped, not failed
    assert not by_name["large radius"]["passed"] and "40.00% > 10%" in by_name["large radius"]["detail"]
    lines = robust_eval.warnings(checks)
    assert len(lines) == 3 and all(line.startswith("WARNING: sanity check") for line in lines)


def _tiny_config():
    return config_files.load_config("tiny")


def test_through_the_fld_model_seeded_strong_attack_is_a_subset_of_pgd():
    """The tiny FLD model (decouplers on, 32 px) under the fixed-features threat model of Fig. 2."""
    config = _tiny_config()
    config.model.classifier = "vit"  # the tiny ViT: its gradient compiles in about half SqueezeNet's time
    model = fld.create_fld_model(config.model, K, 1)
    assert model.use_decouplers
    # Per submodule, as fld.init_variables lays them out, without compiling init (slower than the attack here).
    shapes = {"ic1": (1, 32, 32, 1), "ic2": (1, 32, 32, 1), "classifier": (1, 32, 32, model.classifier_channels)}
    parts = {name: synthetic_variables(module, shapes[name], seed=5) for name, module in fld._submodules(model).items()}
    variables = {kind: {name: part.get(kind, {}) for name, part in parts.items()} for kind in ("params", "batch_stats")}
    images = np.random.default_rng(6).random((4, 32, 32, 1)).astype(np.float32)

    # Variables as an argument: as closed-over constants XLA would spend its time folding them. XLA's
    # optimisation level 1 (the suite's is 0, tests/conftest.py): measured, it compiled ~2 s longer and ran
    # the 7 gradient passes ~4x faster (5 s -> 1.3 s; 18 s -> 14 s for the test on a loaded machine).
    @functools.partial(jax.jit, compiler_options=RUNS_MANY_TIMES)
    def run(variables, x):
        decoupled, _ = fld.decouple(model, variables, x, train=False)
        logits_fn = fld.attack_logits_fn(model, variables, decoupled, end_to_end=False)
        labels = jnp.argmax(logits_fn(x), -1)
        x_pgd = attack.pgd_ce(logits_fn, x, labels, 8 / 255, step_size=2 / 255, num_steps=3, key=jax.random.key(0))
        x_strong, _ = strong_attack.strong_attack(logits_fn, x, labels, 8 / 255, num_steps=3, num_restarts=1,
                                                  num_targets=1, key=jax.random.key(1), x_init=x_pgd)
        return labels, jnp.argmax(logits_fn(x_pgd), -1), jnp.argmax(logits_fn(x_strong), -1), x_strong

    labels, pgd_pred, strong_pred, x_strong = (np.asarray(a) for a in run(variables, images))
    assert not np.any((strong_pred == labels) & (pgd_pred != labels))
    assert np.abs(x_strong - np.asarray(images)).max() <= 8 / 255 + 1e-6
    assert 0.0 <= x_strong.min() and x_strong.max() <= 1.0


@pytest.fixture(scope="module")
def tiny_workdir(tmp_path_factory):
    """A configs/tiny.py run directory holding its initial state (launch/eval.py needs a checkpoint it can
    read, not a trained one); the baseline tiny ViT, the fastest variant to compile."""
    root = tmp_path_factory.mktemp("strong")
    config = _tiny_config()
    config.model.use_decouplers = False
    config.model.classifier = "vit"
    config.data.data_dir = str(root / "tfds_data")
    config.adv.strong_steps, config.adv.strong_pgd_steps, config.adv.strong_targets = 3, 2, 1
    return untrained_run(root, config)


def test_launch_eval_robust_strong_writes_new_keys_and_keeps_old_ones(tiny_workdir):
    workdir, info = tiny_workdir
    path = os.path.join(workdir, "eval.json")
    # What training and an earlier --epsilons left in eval.json (a radius of the robust curve, the selected
    # epoch): re-evaluating the same checkpoint slot keeps both.
    counts = np.asarray(info.class_counts["test"])
    curve_entry = metrics.class_report(np.diag(counts // 2) + np.diag(counts - counts // 2)[:, ::-1],
                                       list(info.class_names))
    earlier = {"checkpoint": "best checkpoint (epoch 7)", "epoch": 7, "robust": {"pgd9_linf_3/255": curve_entry}}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(earlier, handle)
    # The strong attack runs its programs many times: XLA's optimisation level 1 (the suite's default is 0,
    # tests/conftest.py) halves this subprocess's time.
    env = dict(os.environ, XLA_FLAGS=os.environ["XLA_FLAGS"].replace("optimization_level=0", "optimization_level=1"))
    result = subprocess.run([sys.executable, "launch/eval.py", f"--workdir={workdir}", "--robust=strong",
                             "--strong_epsilon=2"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(path, encoding="utf-8") as handle:
        report = json.load(handle)
    assert report["robust"]["pgd9_linf_3/255"] == curve_entry and report["epoch"] == 7
    assert report["strong_robust"]["epsilon"] == pytest.approx(2 / 255)  # --strong_epsilon, in 1/255 units
    assert report["strong_robust"]["pgd_step_size"] == pytest.approx(0.5 / 255)
    for field in ("per_class_accuracy", "average", "confusion_matrix", "robust", "class_names", "split"):
        assert field in report, field
    assert report["robust"]  # the PGD evaluation of --robust=pgd is still there
    strong = report["strong_robust"]
    assert set(strong["attacks"]) == set(strong["per_class_accuracy"]) == set(robust_eval.ATTACKS)
    test_counts = np.asarray(info.class_counts["test"])
    for name in robust_eval.ATTACKS:
        np.testing.assert_array_equal(np.asarray(strong["attacks"][name]["confusion_matrix"]).sum(1), test_counts)
    per_class = strong["per_class_accuracy"]
    for name in info.class_names:
        assert per_class["worst"][name] <= min(per_class["strong"][name], per_class["pgd"][name])
    names = [check["name"] for check in strong["sanity_checks"]]
    assert names == [f"order {name}" for name in info.class_names] + ["large radius"]
    assert strong["large_radius"]["epsilon"] == pytest.approx(64 / 255)
    assert strong["large_radius"]["num_examples"] == min(64, int(test_counts.sum()))  # adv.strong_sanity_examples
    assert strong["settings"] == {"pgd_steps": 2, "steps": 3, "restarts": 1, "targets": 1}
    failed = [check for check in strong["sanity_checks"] if not check["passed"]]
    collapsed_note = int(bool(failed) and strong["attacks"]["clean"]["collapsed"])
    assert len(strong["warnings"]) == len(failed) + collapsed_note
    assert all(line in result.stdout for line in strong["warnings"])
    assert "worst case" in result.stdout and ("[pass]" in result.stdout or "[FAIL]" in result.stdout)
    batches = -(-int(test_counts.sum()) // (2 * 8))  # two host devices, configs/tiny.py's eval_batch_size
    assert f"strong attacks: batch {batches}/{batches} | " in result.stdout, result.stdout[-2000:]



def test_strong_epsilon_needs_the_strong_evaluation(tiny_workdir):
    workdir, _ = tiny_workdir
    bad = subprocess.run([sys.executable, "launch/eval.py", f"--workdir={workdir}", "--strong_epsilon=2"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--strong_epsilon=2 needs --robust=strong" in bad.stderr.strip().splitlines()[-1]
