"""One pmapped FLD + TRADES step timed on this process's devices (set by XLA_FLAGS); prints one JSON line.

Run by ``side_by_side.pmap_scaling`` with --xla_force_host_platform_device_count=N, at a fixed global batch,
and by ``side_by_side.compile_times`` with --compile_only (a fresh process: no executable is cached yet), which
also takes --config (default configs/default.py):

    python -m benchmarks.pmap_probe --compile_only --attack_steps=10 --config=configs/paper.py
"""

import argparse
import json

import jax
import numpy as np
from flax import traverse_util

from benchmarks import jax_steps, timing
from benchmarks.side_by_side import step_config
from flax_fld.runtime.config_files import load_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--global_batch", type=int, default=32)
    parser.add_argument("--attack_steps", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--params_out", default="")
    parser.add_argument("--compile_only", action="store_true")
    parser.add_argument("--config", default="default", help="--compile_only: a config file, e.g. configs/paper.py")
    args = parser.parse_args()
    if args.compile_only:
        jax.config.update("jax_enable_compilation_cache", False)
        config = step_config(load_config(args.config), "squeezenet1_1", "FLD + TRADES step",
                             args.attack_steps)
        print(json.dumps({"attack_steps": args.attack_steps, "compile_s": jax_steps.compile_seconds(config)}))
        return
    devices = jax.local_device_count()
    if args.global_batch % devices:
        raise SystemExit(f"pmap_probe: global batch {args.global_batch} does not split over {devices} devices")
    config = step_config(load_config("default"), "squeezenet1_1", "FLD + TRADES step",
                         args.attack_steps)
    config.train.per_device_batch_size = args.global_batch // devices
    # The same global batch for every device count: draw it whole, then split it over the devices.
    whole = jax_steps.random_batch(config, (args.global_batch,))
    batch = {name: value.reshape(devices, -1, *value.shape[1:]) for name, value in whole.items()}
    contender, holder = jax_steps.train_step(config, batch=batch, keep_state=True)
    timed = timing.alternate({"step": contender.call}, warmup=2, rounds=args.rounds)
    params = traverse_util.flatten_dict(jax.device_get(holder["state"].params), sep="/")
    np.savez(args.params_out, **{name: np.asarray(value) for name, value in params.items()})
    print(json.dumps({"devices": devices, "per-device batch": config.train.per_device_batch_size,
                      "images_per_s": args.global_batch / timed["step"]["median_s"],
                      "median_s": timed["step"]["median_s"], "first_s": timed["step"]["first_s"]}))


if __name__ == "__main__":
    main()
