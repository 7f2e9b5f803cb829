"""Timing that survives a shared, noisy machine: alternating rounds, medians, and what the machine was doing.

``alternate`` runs every contender once per round, in turn, so that a change in the machine's load touches
all of them alike and their ratio stays meaningful; each contender's figure is the median over the rounds.
"""

import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping


def alternate(calls: Mapping[str, Callable[[], object]], *, warmup: int, rounds: int) -> dict[str, dict]:
    """Times each call (which must block until its result is ready) over ``rounds`` alternating rounds.

    Every call first runs ``warmup`` times untimed (the first of them compiles; its time is kept as
    ``first_s``). Returns {name: {'first_s', 'median_s', 'times_s'}}.
    """
    if rounds < 1 or warmup < 1:
        raise ValueError(f"timing.alternate: rounds={rounds} and warmup={warmup} must be >= 1")
    results = {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        results[name] = {"first_s": time.perf_counter() - start, "times_s": []}
        for _ in range(warmup - 1):
            call()
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            results[name]["times_s"].append(time.perf_counter() - start)
    for result in results.values():
        result["median_s"] = statistics.median(result["times_s"])
    return results


def load_average() -> str:
    return " / ".join(f"{load:.2f}" for load in os.getloadavg())


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return info


# Datasheet fp32 peaks of accelerators (no FMA-unit count to read off a GPU): (TFLOP/s, what it counts).
ACCELERATOR_PEAKS = {
    "H200": (67.0, "NVIDIA H200 SXM datasheet: 67 TFLOP/s FP32 without tensor cores (TF32 tensor cores: 495 dense)"),
    "H100": (67.0, "NVIDIA H100 SXM datasheet: 67 TFLOP/s FP32 without tensor cores (TF32 tensor cores: 495 dense)"),
    "A100": (19.5, "NVIDIA A100 datasheet: 19.5 TFLOP/s FP32 without tensor cores (TF32 tensor cores: 156 dense)"),
}


def peak_flops(device=None) -> tuple[float, str]:
    """(theoretical fp32 FLOP/s of the device the step runs on, how it was derived).

    CPU (``device`` None or a CPU device): cores x clock x FLOPs per cycle per core, with two FMA units per
    core (FLOPs per cycle: 2 x 2 x lanes; lanes 16 with AVX-512, 8 with AVX2, 4 otherwise). The clock is
    /proc/cpuinfo's current "cpu MHz", so turbo and a virtual machine's real clock can make the true peak
    differ: an upper bound to compare with, not a measurement. An accelerator: its datasheet's fp32 figure
    from ``ACCELERATOR_PEAKS`` by device kind, or 0 (no % column) for a kind not listed.
    """
    if device is not None and device.platform != "cpu":
        kind = str(getattr(device, "device_kind", device.platform))
        for name, (tflops, note) in ACCELERATOR_PEAKS.items():
            if name.lower() in kind.lower():
                return tflops * 1e12, note
        return 0.0, f"no datasheet peak known for {kind!r}"
    info = _cpuinfo()
    flags = info.get("flags", "").split()
    lanes, isa = (16, "AVX-512") if "avx512f" in flags else (8, "AVX2+FMA") if "fma" in flags else (4, "SSE")
    mhz = float(info.get("cpu MHz", "0") or 0)
    cores = os.cpu_count() or 1
    peak = cores * mhz * 1e6 * 2 * 2 * lanes
    return peak, (f"{cores} cores x {mhz:.0f} MHz x {4 * lanes} FLOP/cycle ({isa}, 2 FMA units x {lanes} fp32 "
                  "lanes x 2)")


def machine_description() -> dict[str, str]:
    """CPU, versions, threads and the load average at the time of the call."""
    import jax  # pylint: disable=import-outside-toplevel

    info = _cpuinfo()
    description = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu": f"{info.get('model name', platform.processor() or 'unknown')}, {os.cpu_count()} logical cores",
        "python": platform.python_version(),
        "jax / jaxlib": f"{jax.__version__}",
        "jax devices": f"{jax.local_device_count()} x {jax.local_devices()[0].platform} "
                       f"({jax.local_devices()[0].device_kind})",
    }
    try:
        import torch  # pylint: disable=import-outside-toplevel
        description["torch"] = torch.__version__
        if torch.cuda.is_available():
            description["torch"] += (f" on {torch.cuda.get_device_name(0)} (TF32 matmul "
                                     f"{torch.backends.cuda.matmul.allow_tf32}, cuDNN {torch.backends.cudnn.allow_tf32})")
    except ImportError:
        description["torch"] = "not installed"
    description["load average (1/5/15 min) at start"] = load_average()
    return description
