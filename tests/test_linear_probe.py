"""The linear floor (flax_fld/linear_probe.py): logistic regression on raw pixels, chosen on validation."""

import numpy as np
import optax
import jax
import jax.numpy as jnp

from flax_fld import input_pipeline, linear_probe


def test_logistic_regression_separates_separable_data_and_l2_shrinks_weights():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 20)) * 3
    labels = np.repeat(np.arange(3), 30)
    features = (centers[labels] + rng.normal(size=(90, 20))).astype(np.float32)
    weak = linear_probe.train_logistic_regression(features, labels, 3, l2=1e-4)
    strong = linear_probe.train_logistic_regression(features, labels, 3, l2=1.0)
    assert np.mean(linear_probe.predict(weak, features) == labels) == 1.0
    assert float(jnp.sum(strong["w"] ** 2)) < float(jnp.sum(weak["w"] ** 2))
    # L-BFGS reached the minimum: the gradient of the convex loss is ~0 there.
    grad = jax.grad(linear_probe.logistic_loss)(weak, jnp.asarray(features), jnp.asarray(labels), 1e-4)
    assert float(optax.tree.norm(grad)) < 1e-3


def test_fit_linear_probe_reports_the_test_split_of_a_prepared_data_set(tmp_path):
    from flax_fld.config_files import load_config

    config = load_config("tiny")
    data = input_pipeline.prepare_data_source(config.data, str(tmp_path))
    report = linear_probe.fit_linear_probe(data, l2_grid=(1e-2, 1.0))
    assert report["l2"] in (1e-2, 1.0)
    assert report["num_examples"] == sum(sum(row) for row in report["confusion_matrix"])
    assert set(report["per_class_accuracy"]) == set(config.data.class_names)
    assert 0.0 <= report["average"] <= 100.0 and report["robust"] == {}
