"""paired_icfdnet computes IC1 and IC2 exactly as two ICFDNet.apply calls do."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_fld.models import paired_icfdnet
from flax_fld.models.icfdnet import icfdnet
from model_helpers import synthetic_variables


def _pair(preset, channels):
    ic1 = icfdnet(preset, features=3, head="class", num_classes=4, norm="group")
    ic2 = icfdnet(preset, features=3, head="reconstruct", num_classes=4, norm="group")
    x = np.random.default_rng(0).uniform(size=(2, 32, 32, channels)).astype(np.float32)
    # Two networks' own parameters, numpy filled: running two inits op by op compiled more than the checks.
    p1 = synthetic_variables(ic1, x.shape, seed=1)["params"]
    p2 = synthetic_variables(ic2, x.shape, seed=2)["params"]
    return ic1, ic2, p1, p2, x


def _output_weights(output_shapes) -> list[np.ndarray]:
    # Fixed random weights: every output element gets its own gradient, so a misplaced channel shows. Drawn
    # by numpy and passed in: a PRNG inside the differentiated programs slowed their compiling.
    rng = np.random.default_rng(3)
    return [rng.standard_normal(out.shape).astype(np.float32) for out in output_shapes]


def _weighted_sum(outputs, weights):
    return sum(jnp.sum(out * weight) for out, weight in zip(outputs, weights, strict=True))


@pytest.mark.parametrize("preset,channels", [("tiny", 1), ("tiny", 3)])
def test_paired_decouple_equals_two_networks(preset, channels):
    ic1, ic2, p1, p2, x = _pair(preset, channels)

    def separate(p1, p2, x):
        return (*ic1.apply({"params": p1}, x, train=True), *ic2.apply({"params": p2}, x, train=True))

    def paired(p1, p2, x):
        return paired_icfdnet.paired_decouple(ic1, ic2, p1, p2, x)

    def gradient(fn, p1, p2, x, weights):
        return jax.grad(lambda p1, p2, x: _weighted_sum(fn(p1, p2, x), weights), argnums=(0, 1, 2))(p1, p2, x)

    @jax.jit
    def both_ways(p1, p2, x, weights):  # one program: it compiles faster than the four it replaces
        return (separate(p1, p2, x), paired(p1, p2, x),
                gradient(separate, p1, p2, x, weights), gradient(paired, p1, p2, x, weights))

    weights = _output_weights(jax.eval_shape(separate, p1, p2, x))
    want_outputs, got_outputs, want, got = jax.tree.map(np.asarray, both_ways(p1, p2, x, weights))
    for want_output, got_output in zip(want_outputs, got_outputs, strict=True):
        np.testing.assert_allclose(got_output, want_output, rtol=1e-4, atol=1e-5)
    assert jax.tree.structure(want) == jax.tree.structure(got)
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        # atol: the attention key bias has zero gradient in exact arithmetic, float32 noise here.
        assert float(np.max(np.abs(w - g))) <= 1e-3 * float(np.max(np.abs(w))) + 1e-4, jax.tree_util.keystr(path)


def test_can_pair_refuses_batch_norm_and_other_architectures():
    ic1 = icfdnet("tiny", features=3, head="class", norm="group")
    assert paired_icfdnet.can_pair(ic1, ic1.clone(head="reconstruct"))
    assert not paired_icfdnet.can_pair(ic1.clone(norm="batch"), ic1.clone(head="reconstruct", norm="batch"))
    assert not paired_icfdnet.can_pair(ic1, ic1.clone(head="reconstruct", widths=(8, 8)))
    with pytest.raises(ValueError, match="norm='group'"):
        paired_icfdnet.paired_decouple(ic1.clone(norm="batch"), ic1.clone(head="reconstruct", norm="batch"),
                                       {}, {}, np.zeros((1, 32, 32, 1), np.float32))
