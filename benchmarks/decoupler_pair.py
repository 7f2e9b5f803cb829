"""Times IC1 + IC2 (two 'cpu' ICFDNets with GroupNorm, batch 32, 64 px) as two networks and paired
(``flax_fld/models/paired_icfdnet.py``), forward and forward+backward, alternating, medians of 7:

  XLA_FLAGS=--xla_force_host_platform_device_count=1 python benchmarks/decoupler_pair.py
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from flax_fld.models.icfdnet import icfdnet
from flax_fld.models.paired_icfdnet import paired_decouple


def main(batch: int = 32, repeats: int = 7) -> None:
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(batch, 64, 64, 1)).astype(np.float32))
    ic1 = icfdnet("cpu", features=4, head="class", norm="group")
    ic2 = icfdnet("cpu", features=4, head="reconstruct", norm="group")
    p1 = ic1.init(jax.random.key(1), x[:1], train=False)["params"]
    p2 = ic2.init(jax.random.key(2), x[:1], train=False)["params"]
    total = lambda outputs: sum(jnp.sum(out ** 2) for out in outputs)
    ways = {"two networks": lambda p1, p2: total((*ic1.apply({"params": p1}, x, train=True),
                                                  *ic2.apply({"params": p2}, x, train=True))),
            "paired": lambda p1, p2: total(paired_decouple(ic1, ic2, p1, p2, x))}
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    for _ in range(2):
        for name, fn in ways.items():
            for tag, compiled in (("forward", jax.jit(fn)), ("forward+backward", jax.jit(jax.grad(fn, (0, 1))))):
                jax.block_until_ready(compiled(p1, p2))
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    jax.block_until_ready(compiled(p1, p2))
                    times.append(time.perf_counter() - start)
                print(f"{name:13s} {tag:17s} {1000 * np.median(times):7.1f} ms", flush=True)
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
