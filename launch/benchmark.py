"""JAX against PyTorch on the same FLD steps, side by side in one run (benchmarks/side_by_side.py).

  python launch/benchmark.py --quick                      # the side-by-side table for SqueezeNet and ResNet-18
  python launch/benchmark.py --out=benchmarks/latest.md   # every classifier, torch.compile, K sweep, pmap 1/2/4

PyTorch is a benchmark extra: pip install torch==2.13.0 (the CPU build; see README). Without it only the
JAX column is measured. --config.* overrides the base config (configs/default.py), e.g. --config.data.image_size=32.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/ is not installed
from benchmarks import report, side_by_side  # noqa: E402  pylint: disable=wrong-import-position
from flax_fld.runs import cli  # noqa: E402  pylint: disable=wrong-import-position
from flax_fld.runtime.atomic_files import write_text_atomically  # noqa: E402  pylint: disable=wrong-import-position
from flax_fld.models import registry  # noqa: E402  pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", None, "Base config of every row (default configs/default.py).")
_QUICK = flags.DEFINE_bool("quick", False, "Only the side-by-side table: SqueezeNet + ResNet-18, TRADES and FLD + "
                           "TRADES rows, eager torch; no compile-time or pmap table (a few minutes).")
_CLASSIFIERS = flags.DEFINE_list("classifiers", [], "Classifiers; empty: all (or the --quick pair).")
_STEPS = flags.DEFINE_list("steps", list(side_by_side.STEPS), "Rows per classifier.")
_FRAMEWORKS = flags.DEFINE_list("frameworks", ["jax", "torch eager", "torch.compile"], "Contenders.")
_ATTACK_STEPS = flags.DEFINE_integer("attack_steps", 10, "K, the inner-max steps of the TRADES rows.")
_COMPILE_KS = flags.DEFINE_list("compile_ks", ["5", "10", "20", "40"], "K values for the compile-time table.")
_DEVICES = flags.DEFINE_list("devices", ["1", "2", "4"], "Forced host device counts for the pmap table.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls per contender (the first compiles).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed alternating rounds; medians are reported.")
_TORCH_DEVICE = flags.DEFINE_string("torch_device", "cpu", "Where the PyTorch twin runs: cpu, or cuda beside JAX "
                                    "on a GPU (README, 'On a GPU or TPU').")
_OUT = flags.DEFINE_string("out", "", "Also write the markdown here.")


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    classifiers = _CLASSIFIERS.value or (["squeezenet1_1", "resnet18"] if _QUICK.value else list(registry))
    frameworks = _FRAMEWORKS.value if not _QUICK.value else ["jax", "torch eager"]
    steps = _STEPS.value if not _QUICK.value else ["TRADES step", "FLD + TRADES step"]
    try:
        import torch  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        print("PyTorch not installed (pip install torch==2.13.0): measuring JAX only", file=sys.stderr)
        frameworks = ["jax"]
    results = side_by_side.run(
        _CONFIG.value, classifiers=classifiers, steps=steps, frameworks=frameworks,
        attack_steps=_ATTACK_STEPS.value,
        compile_ks=[] if _QUICK.value else [int(k) for k in _COMPILE_KS.value],
        device_counts=[] if _QUICK.value else [int(n) for n in _DEVICES.value],
        warmup=_WARMUP.value, rounds=_ROUNDS.value, log=lambda line: print(line, file=sys.stderr, flush=True),
        torch_device=_TORCH_DEVICE.value)
    text = report.markdown(results, "python " + " ".join(sys.argv))
    print(text)
    if _OUT.value:
        write_text_atomically(_OUT.value, text)


if __name__ == "__main__":
    cli.run_main(main, default_config="default", compilation_cache=False)  # the compile-time table must measure compiles
