"""Tests for the five classifiers of Table 1 (flax_fld/models/{resnet,squeezenet,vit}.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_fld.models import get_classifier, registry
from model_helpers import synthetic_variables

NAMES = sorted(registry)


def count_params(tree) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def build(name: str, num_classes: int, big: bool = False):
    if name == "vit":
        return get_classifier(name, num_classes, preset="deit_tiny" if big else "tiny")
    return get_classifier(name, num_classes)


def _uniform_images(shape):
    """Images in [0, 1] from numpy: drawing them with jax.random compiles a program per shape."""
    return np.random.default_rng(1).uniform(size=shape).astype(np.float32)


def abstract_logits(model, shape):
    """Logit shape and variable shapes for an input shape, by tracing only (no compile, no FLOPs)."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    logits = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, x)
    return logits, variables


@pytest.mark.parametrize("name, expected", [("resnet18", 11_689_512), ("squeezenet1_1", 1_235_496)])
def test_parameter_counts_match_torchvision(name, expected):
    _, variables = abstract_logits(get_classifier(name, 1000), (1, 224, 224, 3))
    assert count_params(variables["params"]) == expected


def test_attention_variants_add_exactly_their_gates():
    # Per block with C channels, hidden h = C // 16: SE adds two biased Dense layers; CBAM the same MLP plus a
    # bias-free 7x7 conv over 2 descriptor maps. ResNet-18 has two blocks per width.
    widths = [64, 64, 128, 128, 256, 256, 512, 512]
    mlp = sum(c * (c // 16) + c // 16 + (c // 16) * c + c for c in widths)
    base = count_params(abstract_logits(get_classifier("resnet18", 4), (1, 64, 64, 3))[1]["params"])
    se = count_params(abstract_logits(get_classifier("se_resnet18", 4), (1, 64, 64, 3))[1]["params"])
    cbam = count_params(abstract_logits(get_classifier("cbam_resnet18", 4), (1, 64, 64, 3))[1]["params"])
    assert se - base == mlp
    assert cbam - base == mlp + len(widths) * 7 * 7 * 2


@pytest.mark.parametrize("channels", [1, 3, 11])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_224_by_eval_shape(name, channels):
    logits, _ = abstract_logits(build(name, 4, big=True), (2, 224, 224, channels))
    assert logits.shape == (2, 4)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_64_computed_under_jit(name, channels):
    model = build(name, 5)
    x = _uniform_images((2, 64, 64, channels))
    variables = synthetic_variables(model, x.shape)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert logits.shape == (2, 5)
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name", NAMES)
def test_smallest_supported_size_is_32(name):
    logits, _ = abstract_logits(build(name, 3), (1, 32, 32, 3))
    assert logits.shape == (1, 3)


def test_init_is_deterministic_for_a_key():
    model = build("vit", 4)
    init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 32, 32, 3)), train=False))
    first, again, other = init(jax.random.key(7)), init(jax.random.key(7)), init(jax.random.key(8))
    jax.tree_util.tree_map(np.testing.assert_array_equal, first, again)
    differs = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), first["params"], other["params"])
    assert any(jax.tree_util.tree_leaves(differs))


def test_batchnorm_train_updates_statistics_and_eval_does_not():
    model = get_classifier("resnet18", 4)
    x = _uniform_images((4, 32, 32, 3))
    variables = synthetic_variables(model, x.shape)

    train_logits, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, x)
    changed = jax.tree_util.tree_map(lambda a, b: not np.allclose(a, b), variables["batch_stats"],
                                     updates["batch_stats"])
    assert all(jax.tree_util.tree_leaves(changed))

    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["batch_stats"]))
    eval_logits, eval_updates = evaluate(variables, x)
    eval_again, _ = evaluate(variables, x)
    np.testing.assert_array_equal(eval_logits, eval_again)
    jax.tree_util.tree_map(np.testing.assert_array_equal, eval_updates["batch_stats"], variables["batch_stats"])
    # Batch statistics and the initial running statistics (mean 0, var 1) normalise differently.
    assert not np.allclose(train_logits, eval_logits)


@pytest.mark.parametrize("name", ["squeezenet1_1", "vit"])
def test_dropout_draws_from_the_dropout_rng(name):
    model = build(name, 4)
    x = _uniform_images((2, 32, 32, 3))
    variables = synthetic_variables(model, x.shape)
    apply = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}))
    a, a_again, b = apply(variables, x, jax.random.key(1)), apply(variables, x, jax.random.key(1)), \
        apply(variables, x, jax.random.key(2))
    np.testing.assert_array_equal(a, a_again)
    assert not np.allclose(a, b)


def test_bad_names_raise_value_error():
    with pytest.raises(ValueError, match="classifier='resnet50'"):
        get_classifier("resnet50", 4)
    with pytest.raises(ValueError, match="preset='huge'"):
        get_classifier("vit", 4, preset="huge")


def test_vit_rejects_an_image_size_other_than_its_init_size():
    model = get_classifier("vit", 4, preset="tiny")
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))
    with pytest.raises(ValueError, match="position embedding"):
        jax.eval_shape(lambda v: model.apply(v, jnp.zeros((1, 64, 64, 3)), train=False), variables)
