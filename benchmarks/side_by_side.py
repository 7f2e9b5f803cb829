"""JAX against PyTorch (eager and torch.compile) on the same FLD steps, alternating in one run, as markdown.

Rows per classifier: the eval forward pass and the training step of the classifier alone (Table 2's
baseline: colour transform + classifier), its TRADES step with K attack steps, then the full FLD step (IC1 +
IC2 + classifier) without and with the attack. Then: compile time of the JAX step against K, and the pmapped
step on 1, 2 and 4 forced host devices. ``launch/benchmark.py`` parses the flags and calls ``run``.
"""

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from benchmarks import jax_steps, timing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("eval forward", "train step", "TRADES step", "FLD step", "FLD + TRADES step")


def step_config(base: ml_collections.ConfigDict, classifier: str, step: str, attack_steps: int) -> ml_collections.ConfigDict:
    """The config of one row: baseline or decouplers, attack on or off; the attack from the first step."""
    config = ml_collections.ConfigDict(base.to_dict())
    config.model.classifier = classifier
    config.model.use_decouplers = step.startswith("FLD")
    config.adv.enabled = "TRADES" in step
    config.adv.num_steps = attack_steps
    config.adv.start_epoch = 0
    return config


def contenders(config: ml_collections.ConfigDict, step: str, frameworks: Sequence[str],
               torch_device: str = "cpu") -> dict:
    """{framework: Contender} for one row; the PyTorch twin runs on ``torch_device`` ("cpu", "cuda")."""
    built = {}
    for framework in frameworks:
        if framework == "jax":
            built[framework] = (jax_steps.eval_forward(config, config.train.eval_batch_size) if step == "eval forward"
                                else jax_steps.train_step(config))
            continue
        from benchmarks import torch_steps  # pylint: disable=import-outside-toplevel
        compiled = framework == "torch.compile"
        built[framework] = (
            torch_steps.eval_forward(config, config.train.eval_batch_size, compiled=compiled, device=torch_device)
            if step == "eval forward" else torch_steps.train_step(config, compiled=compiled, device=torch_device))
    return built


def measure_rows(base: ml_collections.ConfigDict, classifiers: Sequence[str], steps: Sequence[str],
                 frameworks: Sequence[str], attack_steps: int, warmup: int, rounds: int, log=print,
                 torch_device: str = "cpu") -> list[dict]:
    """One dict per (classifier, step): images/s per framework, first-call seconds, JAX FLOP/s."""
    rows = []
    for classifier in classifiers:
        for step in steps:
            config = step_config(base, classifier, step, attack_steps)
            built = contenders(config, step, frameworks, torch_device)
            timed = timing.alternate({name: c.call for name, c in built.items()}, warmup=warmup, rounds=rounds)
            row = {"classifier": classifier, "step": step}
            for name, result in timed.items():
                row[name] = built[name].images_per_call / result["median_s"]
                row[f"{name} first s"] = result["first_s"]
            if "jax" in built and built["jax"].compile_s is not None:
                row["jax compile s"] = built["jax"].compile_s  # the first call then finds it compiled
            flops = built["jax"].flops_per_call if "jax" in built else None
            if flops:
                row["jax GFLOP/s"] = flops / timed["jax"]["median_s"] / 1e9
            log(f"{classifier:>14} {step:<18} " + "  ".join(f"{name} {row[name]:.1f} img/s" for name in timed))
            rows.append(row)
    return rows


def _probe(arguments: Sequence[str], device_count: int = 1) -> dict:
    """Runs benchmarks/pmap_probe.py in a fresh process on ``device_count`` forced host devices."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={device_count}", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "benchmarks.pmap_probe", *arguments], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode:
        raise RuntimeError(f"benchmarks.pmap_probe {' '.join(arguments)} failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compile_times(attack_steps: Sequence[int], log=print) -> dict[int, float]:
    """Seconds to compile the FLD + TRADES step of configs/default.py for each K, each in a fresh process without
    a compilation cache (within one process JAX would reuse the executable of a K already compiled)."""
    seconds = {}
    for k in attack_steps:
        seconds[k] = _probe(["--compile_only", f"--attack_steps={k}"])["compile_s"]
        log(f"compile K={k}: {seconds[k]:.1f} s")
    return seconds


def pmap_scaling(device_counts: Sequence[int], global_batch: int, attack_steps: int, rounds: int, log=print) -> list[dict]:
    """The pmapped FLD + TRADES step at a fixed global batch on N forced host devices, each in a subprocess.

    Every probe starts from the same state and data and runs the same number of steps; the final parameters
    are compared with the first device count's. They differ by design where the network normalises with
    per-device batch statistics (BatchNorm sees B/N images) or draws per-device dropout masks.
    """
    results, reference = [], None
    with tempfile.TemporaryDirectory() as scratch:
        for count in device_counts:
            params_path = os.path.join(scratch, f"params_{count}.npz")
            result = _probe([f"--global_batch={global_batch}", f"--attack_steps={attack_steps}",
                             f"--rounds={rounds}", f"--params_out={params_path}"], count)
            with np.load(params_path) as archive:
                params = {name: archive[name] for name in archive.files}
            reference = reference or params
            result["max |params - params(N=%d)|" % device_counts[0]] = max(
                float(np.max(np.abs(params[name] - reference[name]))) for name in reference)
            results.append(result)
            log(f"pmap {count} devices: {result['images_per_s']:.1f} img/s")
    return results


def run(base: ml_collections.ConfigDict, *, classifiers: Sequence[str], steps: Sequence[str],
        frameworks: Sequence[str], attack_steps: int, compile_ks: Sequence[int], device_counts: Sequence[int],
        warmup: int, rounds: int, log=print, torch_device: str = "cpu") -> dict:
    """Everything, measured in one process (the pmap probes in subprocesses); returns the raw results."""
    if any(f.startswith("torch") for f in frameworks):
        from benchmarks import torch_steps  # pylint: disable=import-outside-toplevel
        torch_steps.set_threads(os.cpu_count() or 1)
    machine = timing.machine_description()
    peak, peak_note = timing.peak_flops(jax.local_devices()[0])
    results = {"machine": machine, "peak_flops": peak, "peak_note": peak_note,
               "settings": {"image size": base.data.image_size, "batch": base.train.per_device_batch_size,
                            "eval batch": base.train.eval_batch_size, "attack steps K": attack_steps,
                            "ICFDNet preset": base.model.icfdnet_preset, "rounds (median of)": rounds,
                            "warm-up calls": warmup,
                            "threads": f"torch {os.cpu_count()} (set_num_threads); XLA one per core",
                            "torch device": torch_device}}
    results["rows"] = measure_rows(base, classifiers, steps, frameworks, attack_steps, warmup, rounds, log,
                                   torch_device)
    results["compile"] = compile_times(compile_ks, log) if compile_ks else {}
    results["pmap"] = (pmap_scaling(device_counts, base.train.per_device_batch_size, attack_steps, rounds, log)
                       if device_counts else [])
    results["machine"]["load average (1/5/15 min) at end"] = timing.load_average()
    return results
