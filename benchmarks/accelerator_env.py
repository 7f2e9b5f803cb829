"""The accelerator's versions, devices and a check that the package imports, as JSON, without PyTorch.

  python -m benchmarks.accelerator_env OUT/environment.json

``benchmarks/paper_on_accelerator.sh`` runs it first in each stage: the JAX parts need only JAX and the
package, so a machine without torch (or with a broken one) still measures them; torch is reported by the
PyTorch rows themselves. Also records which presets of ``flax_fld/runtime/gpu_compile_options.py`` the
installed XLA knows, before any variant is compiled with them. Exits 1 with one line when the package does
not import (nothing after it could run).
"""

import importlib
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/ is not installed


def describe() -> dict:
    """Versions, devices and the compile-option check (see the module docstring)."""
    import jax  # pylint: disable=import-outside-toplevel

    from flax_fld.runtime import gpu_compile_options  # pylint: disable=import-outside-toplevel

    versions = {"python": platform.python_version()}
    for module in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "numpy"):
        try:
            versions[module] = getattr(importlib.import_module(module), "__version__", "?")
        except ImportError as error:
            versions[module] = f"not importable: {error}"
    devices = jax.local_devices()
    presets = {}
    for name, (options, _) in gpu_compile_options.PRESETS.items():
        refused = gpu_compile_options.check(options)[1]
        presets[name] = "known" if not refused else "; ".join(refused)
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": versions, "backend": jax.default_backend(),
            "devices": f"{len(devices)} x {devices[0].device_kind}", "host_cores": os.cpu_count(),
            "load_average": os.getloadavg(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
            "XLA_PYTHON_CLIENT_MEM_FRACTION": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", ""),
            "compile_option_presets": presets}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m benchmarks.accelerator_env OUT.json", file=sys.stderr)
        return 2
    from flax_fld.runtime.atomic_files import write_json_atomically  # pylint: disable=import-outside-toplevel

    start = time.perf_counter()
    try:  # the whole package and the JAX benchmarks import (TFDS, orbax, grain, ...)
        importlib.import_module("flax_fld.training.train")
        importlib.import_module("benchmarks.jax_steps")
    except Exception as error:  # pylint: disable=broad-except  # any import failure ends the stage, in one line
        print(f"accelerator_env: the package does not import: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    description = describe()
    description["import_and_check_s"] = round(time.perf_counter() - start, 2)
    write_json_atomically(argv[1], description)
    print(json.dumps(description))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
