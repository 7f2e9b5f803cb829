"""Where a training step spends its time, by part of the model: the profile behind BENCHMARKS.md.

  XLA_FLAGS=--xla_force_host_platform_device_count=1 python benchmarks/profile_step.py [K] [classifier]

Traces 3 steps of configs/default.py's pmapped train step (batch 32, K attack steps, default 3) with
``jax.profiler``, maps every XLA op in the trace to the JAX operations it was compiled from (the HLO's
``op_name`` metadata, fusion bodies included), and prints op time per step grouped by: inside the attack's
loop or outside it; IC1/IC2, the classifier or other; forward or backward (JAX's ``transpose``); XLA
convolution, matrix product (our small convolutions run as patches @ kernel, flax_fld/models/conv.py) or other. Op time is summed over threads, so it exceeds wall time where ops run side by side.
"""

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np

from flax_fld.models import fld
from flax_fld.runtime import config_files
from flax_fld.training import train

TRACED_STEPS = 3


def op_sources(hlo_text: str) -> dict[str, tuple[str, bool, bool]]:
    """{HLO instruction: (op_name metadata of it and its fused body, joined; 'convolution', 'matmul' or
    'other ops' by what it and its fused body compute; whether it runs in a while loop's body, i.e. the attack)}."""
    bodies, owner, definition, current = {}, {}, {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%([\w.\-]+) \(", line)
        if header:
            current = header.group(1)
            bodies[current] = []
        elif current is not None:
            bodies[current].append(line)
            instruction = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
            if instruction:
                owner[instruction.group(1)], definition[instruction.group(1)] = current, line
    loop_bodies = set(re.findall(r"body=%([\w.\-]+)", hlo_text))
    sources = {}
    for name, computation in owner.items():
        line = definition[name]
        called = re.search(r"calls=%([\w.\-]+)", line)
        lines = [line] + (bodies.get(called.group(1), []) if called else [])
        names = [m.group(1) for text in lines for m in [re.search(r'op_name="([^"]*)"', text)] if m]
        kind = ("convolution" if any(" convolution(" in text for text in lines)
                else "matmul" if any(" dot(" in text for text in lines) else "other ops")
        sources[name] = (" ".join(names), kind, computation in loop_bodies)
    return sources


def short_label(source: str) -> str:
    """The first JAX operation an op came from, without jit/jvp/transpose wrappers: 'SqueezeNet/stem/conv/...'."""
    first = source.split(" ")[0]
    first = re.sub(r"(jit\(_fun\)/|while/body/|closed_call/|jvp\(|transpose\(|\))", "", first)
    return "/".join(first.split("/")[-4:]) or "(no metadata)"


def group_of(source: str, kind: str, in_loop: bool, classifier: str) -> tuple[str, str, str, str]:
    """(attack loop | outside it, IC1/IC2 | classifier | other, forward | backward, convolution | matmul | other ops).
    XLA keeps no metadata on some fusions (kernel-gradient convolutions and their transposes): 'unattributed'."""
    where = "attack loop" if in_loop else "outside the loop"
    if not source:
        return where, "unattributed", "?", kind
    part = "IC1/IC2" if "ICFDNet" in source else ("classifier" if classifier in source else "other")
    return where, part, "backward" if "transpose(" in source else "forward", kind


def profile(attack_steps: int, classifier: str) -> tuple[collections.Counter, dict, float]:
    """(op ms per step by group, {group: Counter of op ms by op}, wall ms per untraced step)."""
    config = config_files.load_config("default")
    config.adv.num_steps, config.adv.start_epoch = attack_steps, 0
    config.model.classifier = classifier
    model = fld.create_fld_model(config.model, len(config.data.class_names), config.data.channels)
    size = config.data.image_size
    state = train.replicate(train.create_train_state(config, model, (size, size, 1), jax.random.key(0), 20))
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((1, 32, size, size, 1), dtype=np.float32),
             "label": rng.integers(0, 4, (1, 32)).astype(np.int32)}
    step = train.parallel_train_step(model, ml_collections.FrozenConfigDict(config))
    sources = op_sources(step.lower(state, batch).compile().as_text())
    for _ in range(2):
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    start = time.perf_counter()  # untraced: writing the trace would count as step time
    for _ in range(TRACED_STEPS):
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
    wall_ms = 1000 * (time.perf_counter() - start) / TRACED_STEPS
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True):
            for _ in range(TRACED_STEPS):
                state, metrics = step(state, batch)
                jax.block_until_ready(metrics)
        with gzip.open(glob.glob(os.path.join(folder, "**", "*.trace.json.gz"), recursive=True)[0]) as handle:
            events = json.load(handle)
    events = events["traceEvents"] if isinstance(events, dict) else events
    name = type(model.classifier).__name__
    totals, ops = collections.Counter(), collections.defaultdict(collections.Counter)
    for event in events:
        if event.get("ph") == "X" and event.get("name") in sources:
            group = group_of(*sources[event["name"]], classifier=name)
            milliseconds = event["dur"] / 1000 / TRACED_STEPS
            totals[group] += milliseconds
            ops[group][short_label(sources[event["name"]][0])] += milliseconds
    return totals, ops, wall_ms


def main(attack_steps: int = 3, classifier: str = "squeezenet1_1") -> None:
    totals, ops, wall_ms = profile(attack_steps, classifier)
    print(f"configs/default.py, {classifier}, K = {attack_steps}, batch 32: wall {wall_ms:.0f} ms per step "
          f"(untraced), op time {sum(totals.values()):.0f} ms per step, load average {os.getloadavg()[0]:.2f}")
    print("| where | part | direction | kind | op ms per step | largest ops |\n|---|---|---|---|---:|---|")
    for group, milliseconds in totals.most_common():
        largest = ", ".join(f"{op} {ms:.1f}" for op, ms in ops[group].most_common(2))
        print(f"| {' | '.join(group)} | {milliseconds:.1f} | {largest} |")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(int(arguments[0]) if arguments else 3, arguments[1] if len(arguments) > 1 else "squeezenet1_1")
