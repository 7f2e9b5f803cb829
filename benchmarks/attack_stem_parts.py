"""The attack loop alone, x_c fed to the classifier as channel parts against concatenated, in one process.

  XLA_FLAGS=--xla_force_host_platform_device_count=1 python benchmarks/attack_stem_parts.py [ROUNDS]

configs/default.py's model (SqueezeNet-BN + two 'cpu' ICFDNets), batch 32, 64 px, K = 10, Fig. 2's threat model
(features fixed). The two jitted attacks alternate ROUNDS times (default 15); prints each one's median. With
parts, the stem convolves the fixed features apart from Y_c(x'), so XLA hoists that share out of the loop
(``fld.classifier_input_parts``). The two x' may differ where a gradient is ~0 and its sign flips with the
summation order; ``tests/test_fld.py`` checks logits and gradients.
"""

import statistics
import sys
import time

import jax
import jax.numpy as jnp

from flax_fld.method import attack
from flax_fld.models import fld
from flax_fld.runtime.config_files import load_config


def attack_fn(model: fld.FLDModel, epsilon: jax.Array, as_parts: bool):
    def run(variables, images, decoupled, key):
        def logits_fn(x_perturbed):
            make_input = fld.classifier_input_parts if as_parts else fld.classifier_input
            x_c = make_input(model, x_perturbed, jax.lax.stop_gradient(decoupled))
            return fld.classify(model, variables, x_c, train=False)[0]
        return attack.trades_pgd(logits_fn, images, epsilon, step_size=epsilon / 4, num_steps=10, key=key)
    return jax.jit(run)


def main(rounds: int) -> None:
    model = fld.create_fld_model(load_config("default").model, 4, 1)
    variables = fld.init_variables(model, jax.random.key(0), (64, 64, 1))
    images = jax.random.uniform(jax.random.key(1), (32, 64, 64, 1))
    decoupled, _ = jax.jit(lambda v, x: fld.decouple(model, v, x, train=True))(variables, images)
    epsilon, key = jnp.full((32,), 8 / 255), jax.random.key(3)
    calls = {name: attack_fn(model, epsilon, as_parts) for name, as_parts in (("concatenated", False), ("parts", True))}
    for call in calls.values():
        call(variables, images, decoupled, key).block_until_ready()  # compile
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call(variables, images, decoupled, key).block_until_ready()
            times[name].append(time.perf_counter() - start)
    for name, seconds in times.items():
        print(f"{name}: median {1e3 * statistics.median(seconds):.1f} ms over {rounds} calls")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15)
