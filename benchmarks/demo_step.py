"""Times configs/default.py's pmapped train step (1 device, batch 32, one fixed batch) in the checkout on
PYTHONPATH, so that two checkouts can be compared in alternating fresh processes:

  XLA_FLAGS=--xla_force_host_platform_device_count=1 PYTHONPATH=TREE python benchmarks/demo_step.py TREE 8 [K]

An optional third argument sets the attack's K (configs/default.py: 3; the benchmark's FLD + TRADES row: 10).

Prints one JSON line: warm-up seconds (2 steps, the first compiles), and the median wall and CPU milliseconds
per step over the given number of steps, with the 1-minute load average.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flax_fld.models import fld
from flax_fld.runtime import config_files
from flax_fld.training import train


def main(root: str, steps: int, attack_steps: int = 0) -> dict:
    path = os.path.join(root, "configs", "default.py")
    config = (config_files.load_config(path) if hasattr(config_files, "load_config")  # older checkouts differ
              else config_files.load_sibling_config(path, "default.py"))
    if attack_steps:
        config.adv.num_steps = attack_steps
    model = fld.create_fld_model(config.model, 4, 1)
    state = train.replicate(train.create_train_state(config, model, (64, 64, 1), jax.random.key(0), 20))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.uniform(size=(1, 32, 64, 64, 1)).astype(np.float32)),
             "label": jnp.asarray(rng.integers(0, 4, size=(1, 32)).astype(np.int32))}
    step = train.parallel_train_step(model, ml_collections.FrozenConfigDict(config))
    started = time.perf_counter()
    for _ in range(2):
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    warmup = time.perf_counter() - started
    walls, cpus = [], []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"root": root, "K": int(config.adv.num_steps), "warmup_s": round(warmup, 1),
            "wall_ms": round(1000 * float(np.median(walls)), 1), "cpu_ms": round(1000 * float(np.median(cpus)), 1), "load": round(os.getloadavg()[0], 2)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), *map(int, sys.argv[3:4]))), flush=True)
