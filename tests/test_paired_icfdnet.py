"""paired_icfdnet computes IC1 and IC2 exactly as two ICFDNet.apply calls do."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_fld.models import paired_icfdnet
from flax_fld.models.icfdnet import icfdnet


def _pair(preset, channels):
    ic1 = icfdnet(preset, features=3, head="class", num_classes=4, norm="group")
    ic2 = icfdnet(preset, features=3, head="reconstruct", num_classes=4, norm="group")
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, channels)).astype(np.float32))
    p1 = ic1.init(jax.random.key(1), x, train=False)["params"]
    p2 = ic2.init(jax.random.key(2), x, train=False)["params"]
    return ic1, ic2, p1, p2, x


def _weighted_sum(outputs):
    # Fixed random weights: every output element gets its own gradient, so a misplaced channel shows.
    keys = jax.random.split(jax.random.key(3), len(outputs))
    return sum(jnp.sum(out * jax.random.normal(k, out.shape)) for k, out in zip(keys, outputs))


@pytest.mark.parametrize("preset,channels", [("tiny", 1), ("tiny", 3)])
def test_paired_decouple_equals_two_networks(preset, channels):
    ic1, ic2, p1, p2, x = _pair(preset, channels)

    def separate(p1, p2, x):
        return (*ic1.apply({"params": p1}, x, train=True), *ic2.apply({"params": p2}, x, train=True))

    def paired(p1, p2, x):
        return paired_icfdnet.paired_decouple(ic1, ic2, p1, p2, x)

    for want, got in zip(jax.jit(separate)(p1, p2, x), jax.jit(paired)(p1, p2, x)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    grad = lambda fn: jax.jit(jax.grad(lambda *a: _weighted_sum(fn(*a)), argnums=(0, 1, 2)))(p1, p2, x)
    want, got = grad(separate), grad(paired)
    assert jax.tree.structure(want) == jax.tree.structure(got)
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
        # atol: the attention key bias has zero gradient in exact arithmetic, float32 noise here.
        assert float(jnp.max(jnp.abs(w - g))) <= 1e-3 * float(jnp.max(jnp.abs(w))) + 1e-4, jax.tree_util.keystr(path)


def test_can_pair_refuses_batch_norm_and_other_architectures():
    ic1 = icfdnet("tiny", features=3, head="class", norm="group")
    assert paired_icfdnet.can_pair(ic1, ic1.clone(head="reconstruct"))
    assert not paired_icfdnet.can_pair(ic1.clone(norm="batch"), ic1.clone(head="reconstruct", norm="batch"))
    assert not paired_icfdnet.can_pair(ic1, ic1.clone(head="reconstruct", widths=(8, 8)))
    with pytest.raises(ValueError, match="norm='group'"):
        paired_icfdnet.paired_decouple(ic1.clone(norm="batch"), ic1.clone(head="reconstruct", norm="batch"),
                                       {}, {}, jnp.zeros((1, 32, 32, 1)))
