"""The floors under every table: multinomial logistic regression on the raw pixels, and on texture features.

A deep recipe that scores below a linear model on the same split has not learned what the data offers (a
SqueezeNet run once predicted one class where the pixel model reached 97 %). ``fit_probe`` trains
``softmax(W phi(x) + b)`` on the training split, features standardised with the training mean and standard
deviation, full batch with L-BFGS, for each L2 strength in ``l2_grid``; the strength with the best
validation balanced accuracy is kept and the test split is reported in the fields of ``eval.json``.
``fit_linear_probe`` takes the pixels as ``phi``; ``fit_texture_probe`` the hand-made texture features of
``flax_fld.evaluation.texture_features`` (histogram, GLCM, gradients), the classical baseline of ultrasound grading.
"""

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax_fld.data import input_pipeline
from flax_fld.evaluation import metrics, texture_features

DEFAULT_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def logistic_loss(params: dict, features: jax.Array, labels: jax.Array, l2: float) -> jax.Array:
    """Mean softmax cross-entropy of ``features [N, D] @ w [D, K] + b [K]`` plus ``l2/2 * |w|^2``."""
    logits = features @ params["w"] + params["b"]
    data_term = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return data_term + 0.5 * l2 * jnp.sum(params["w"] ** 2)


def train_logistic_regression(features: np.ndarray, labels: np.ndarray, num_classes: int, l2: float,
                              num_steps: int = 200) -> dict:
    """Full-batch L-BFGS on ``logistic_loss`` from zero weights (convex: the start does not matter).

    One compiled program per feature shape serves every ``l2`` of a grid and every split of that size: the
    data and ``l2`` are arguments of the program, not constants baked into it.
    """
    return _lbfgs(jnp.asarray(features, jnp.float32), jnp.asarray(labels, jnp.int32), jnp.float32(l2),
                  num_classes=int(num_classes), num_steps=int(num_steps))


@functools.partial(jax.jit, static_argnames=("num_classes", "num_steps"))
def _lbfgs(features: jax.Array, labels: jax.Array, l2: jax.Array, *, num_classes: int, num_steps: int) -> dict:
    params = {"w": jnp.zeros((features.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
    loss_fn = lambda p: logistic_loss(p, features, labels, l2)  # noqa: E731
    solver = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(loss_fn)

    def body(_, carry):
        params, state = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss_fn)
        return optax.apply_updates(params, updates), state

    return jax.lax.fori_loop(0, num_steps, body, (params, solver.init(params)))[0]


def predict(params: dict, features: np.ndarray) -> np.ndarray:
    return np.asarray(jnp.argmax(jnp.asarray(features) @ params["w"] + params["b"], axis=-1))


def fit_probe(data: input_pipeline.DataSource, featurize: Callable[[np.ndarray], np.ndarray],
              l2_grid: Sequence[float] = DEFAULT_L2_GRID) -> dict:
    """Test-split report (``metrics.class_report`` fields plus ``l2``, ``class_names``, ``split``, ``robust``)
    of the logistic regression on ``featurize(images [N,H,W,C]) -> [N, D]``, L2 chosen on validation."""
    splits = {split: input_pipeline.load_split(data, split)
              for split in ("train", "validation", "test")}
    raw = {split: np.asarray(featurize(images), np.float32) for split, (images, _) in splits.items()}
    mean, std = raw["train"].mean(0), raw["train"].std(0) + 1e-3
    features = {split: (values - mean) / std for split, values in raw.items()}
    labels = {split: labels for split, (_, labels) in splits.items()}
    class_names = list(data.info.class_names)
    num_classes = len(class_names)

    def report(params, split):
        matrix = metrics.confusion_matrix(labels[split], predict(params, features[split]), num_classes)
        return metrics.class_report(np.asarray(matrix), class_names)

    best = None
    for l2 in l2_grid:
        params = train_logistic_regression(features["train"], labels["train"], num_classes, float(l2))
        score = report(params, "validation")["balanced_accuracy"]
        if best is None or score > best[0]:
            best = (score, float(l2), params)
    result = report(best[2], "test")
    result.update(l2=best[1], class_names=class_names, split="test", robust={},
                  checkpoint=f"l2={best[1]:g} chosen by validation balanced accuracy")
    return result


def pixels(images: np.ndarray) -> np.ndarray:
    """``[N, H, W, C]`` -> ``[N, H*W*C]``: the raw-pixel features of the linear floor."""
    return images.reshape(len(images), -1)


def fit_linear_probe(data: input_pipeline.DataSource, l2_grid: Sequence[float] = DEFAULT_L2_GRID) -> dict:
    """The linear floor: ``fit_probe`` on the raw pixels."""
    return fit_probe(data, pixels, l2_grid)


def fit_texture_probe(data: input_pipeline.DataSource, l2_grid: Sequence[float] = DEFAULT_L2_GRID) -> dict:
    """The texture floor: ``fit_probe`` on ``texture_features.texture_features``."""
    return fit_probe(data, texture_features.texture_features, l2_grid)
