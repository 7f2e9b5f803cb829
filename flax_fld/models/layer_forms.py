"""Which form ``conv.Conv`` and ``pooling.max_pool`` take: the CPU rewrites in this package, or XLA's own ops.

The rewrites (patches @ kernel, HWIO input gradients, separable max pools with their own gradients) exist
because XLA's CPU convolution and ``select_and_scatter`` are slow in the shapes these networks have. On a
GPU, cuDNN runs the plain ops, and the rewrites only add slices, concatenations and transposes. Both forms
compute the same values and gradients (``tests/test_fast_layers.py``); this only picks the faster one.

``FLAX_FLD_LAYER_FORMS``: ``auto`` (default: the rewrites on the CPU backend only), ``cpu`` (always the
rewrites) or ``plain`` (never). Read when a model is traced, so set it before the first step compiles.
"""

import os

import jax

ENV = "FLAX_FLD_LAYER_FORMS"
CHOICES = ("auto", "cpu", "plain")


def choice() -> str:
    """``FLAX_FLD_LAYER_FORMS`` checked (ValueError naming it), without touching the backend: launch scripts
    call this before ``jax.distributed`` may initialise, so a typo stops them at once, not at the first trace."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"{ENV}={value!r}; expected one of {', '.join(CHOICES)}")
    return value


def use_cpu_forms() -> bool:
    """True where the layers should take their CPU rewrites (``FLAX_FLD_LAYER_FORMS``, else the backend)."""
    if (chosen := choice()) == "auto":
        return jax.default_backend() == "cpu"
    return chosen == "cpu"
