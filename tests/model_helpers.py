"""Helpers shared by the model tests (imported by name: pytest puts tests/ on sys.path)."""

import jax
import jax.numpy as jnp
import numpy as np


def synthetic_variables(model, shape, seed: int = 0):
    """Variables of init's shapes filled by numpy (He-scaled weights, identity BatchNorm).

    Compiling a model's init costs several times more than compiling its forward pass (one PRNG expansion
    per parameter), so tests that need values but not init itself use these.
    """
    rng = np.random.default_rng(seed)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))

    def fill(path, leaf):
        name = path[-1].key
        if name in ("scale", "var"):
            return np.ones(leaf.shape, np.float32)
        if name in ("bias", "mean"):
            return np.zeros(leaf.shape, np.float32)
        fan_in = max(1, int(np.prod(leaf.shape[:-1])))
        return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fill, abstract)
