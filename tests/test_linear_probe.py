"""The linear floor (flax_fld/evaluation/linear_probe.py): logistic regression on raw pixels, chosen on validation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax_fld.data import input_pipeline
from flax_fld.evaluation import linear_probe


def test_logistic_regression_separates_separable_data_and_l2_shrinks_weights():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 20)) * 3
    labels = np.repeat(np.arange(3), 30)
    features = (centers[labels] + rng.normal(size=(90, 20))).astype(np.float32)
    weak = linear_probe.train_logistic_regression(features, labels, 3, l2=1e-4)
    strong = linear_probe.train_logistic_regression(features, labels, 3, l2=1.0)
    assert np.mean(linear_probe.predict(weak, features) == labels) == 1.0
    assert float(np.sum(np.asarray(strong["w"]) ** 2)) < float(np.sum(np.asarray(weak["w"]) ** 2))
    # L-BFGS reached the minimum: the gradient of the convex loss is ~0 there. One jitted program: eagerly,
    # each op of the loss and of its gradient compiles on its own.
    gradient_norm = jax.jit(lambda params, features, labels: optax.tree.norm(
        jax.grad(linear_probe.logistic_loss)(params, features, labels, 1e-4)))
    assert float(gradient_norm(weak, jnp.asarray(features), jnp.asarray(labels))) < 1e-3


def test_fit_probe_scores_the_test_split_with_the_validation_argmax_l2_and_beats_chance(tmp_path):
    from flax_fld.runtime.config_files import load_config

    config = load_config("tiny")
    # Simulator version 1, whose grade the pixels carry: version 2 is built so that they do not (a linear
    # model on its pixels sits at chance, docs/simulator.md), and this test is about the probe's mechanics.
    config.data.simulator_version = 1
    data = input_pipeline.prepare_data_source(config.data, str(tmp_path))
    grid = (1e-2, 1.0)
    report = linear_probe.fit_linear_probe(data, l2_grid=grid)
    test_images, test_labels = input_pipeline.load_split(data, "test")
    # The test split is what is scored: its size and its per-class counts are the confusion matrix's rows.
    assert report["num_examples"] == len(test_labels) == sum(sum(row) for row in report["confusion_matrix"])
    np.testing.assert_array_equal(np.sum(report["confusion_matrix"], axis=1),
                                  np.bincount(test_labels, minlength=len(config.data.class_names)))
    assert set(report["per_class_accuracy"]) == set(config.data.class_names) and report["robust"] == {}

    # L2 is the argmax of the validation balanced accuracy, recomputed here from the same pieces.
    splits = {split: input_pipeline.load_split(data, split) for split in ("train", "validation")}
    train_x = linear_probe.pixels(splits["train"][0])
    mean, std = train_x.mean(0), train_x.std(0) + 1e-3
    scores = []
    for l2 in grid:
        params = linear_probe.train_logistic_regression((train_x - mean) / std, splits["train"][1], 4, l2)
        predicted = linear_probe.predict(params, (linear_probe.pixels(splits["validation"][0]) - mean) / std)
        truth = splits["validation"][1]
        scores.append(np.mean([np.mean(predicted[truth == k] == k) for k in np.unique(truth)]))
    assert report["l2"] == grid[int(np.argmax(scores))]

    # The simulator's grades differ in brightness: even a linear model beats chance (25 %) by far.
    assert report["balanced_accuracy"] > 40.0
