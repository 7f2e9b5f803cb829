"""Opt-in XLA:GPU compiler settings that shorten a compile, named in one place.

configs/paper.py's training step compiles for minutes on a GPU (BENCHMARKS.md, "On a GPU"), and an
accelerator lent for 15 minutes cannot spend them all compiling. XLA has settings that trade some run time
for a shorter compile; none is on by default here, because each changes what XLA builds (autotuning off can
pick a slower convolution algorithm) and only a measurement on the accelerator says whether the trade pays
(``benchmarks/compile_variants.py``; ``docs/gpu_compile_options.md`` names each setting's source).

A spec is a comma-separated list of preset names (``PRESETS``) and ``flag=value`` items, e.g.
``fast_compile`` or ``autotune_0,xla_gpu_force_compilation_parallelism=8``; ``FLAX_FLD_GPU_COMPILE_OPTIONS``
holds one for the benchmarks. Two ways to use a spec:

- per program: ``lowered.compile(compiler_options=parse(spec))``; an option this XLA does not know fails
  that compile alone, with one line;
- for a whole run: ``XLA_FLAGS="$XLA_FLAGS $(python -m flax_fld.runtime.gpu_compile_options SPEC)"
  python launch/train.py ...``. XLA aborts the process on an unknown flag in ``XLA_FLAGS``, so this command
  tries each option on a tiny compile first and prints only those the installed XLA knows (one line on
  stderr for each it drops).

A leaf module: it imports nothing from flax_fld, and jax only inside ``check``.
"""

import os
import sys
from collections.abc import Mapping

ENV = "FLAX_FLD_GPU_COMPILE_OPTIONS"

# name -> (options, what it trades). Sources: docs/gpu_compile_options.md.
PRESETS: dict[str, tuple[dict[str, object], str]] = {
    "parallel_llvm": ({"xla_gpu_enable_llvm_module_compilation_parallelism": True},
                      "splits each module's LLVM IR and compiles the parts on several threads (off by default)"),
    "autotune_0": ({"xla_gpu_autotune_level": 0},
                   "no GEMM/convolution autotuning: a default algorithm instead of the fastest measured one"),
    "autotune_1": ({"xla_gpu_autotune_level": 1},
                   "autotuning on, without the default level 4's buffer initialisation, reinit and result check"),
    "triton_gemm_off": ({"xla_gpu_enable_triton_gemm": False},
                        "matrix products through cuBLAS, no Triton GEMM fusions to generate and autotune"),
}
PRESETS["fast_compile"] = ({**PRESETS["parallel_llvm"][0], **PRESETS["autotune_0"][0],
                            **PRESETS["triton_gemm_off"][0]}, "parallel_llvm + autotune_0 + triton_gemm_off")


def _value(text: str) -> object:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse(spec: str) -> dict[str, object]:
    """``{xla option: value}`` of a spec (see the module docstring); later items override earlier ones.

    Raises ValueError (one line) for an unknown preset name or an item that is neither a name nor
    ``flag=value``. Whether XLA knows a flag is not checked here (``check`` does).
    """
    options: dict[str, object] = {}
    for item in (part.strip() for part in (spec or "").split(",")):
        if not item or item == "default":
            continue
        if "=" in item:
            flag, _, value = item.partition("=")
            flag = flag.strip().removeprefix("--")
            if not flag.startswith("xla_"):
                raise ValueError(f"compile option {item!r}: expected xla_NAME=VALUE or a preset ({', '.join(PRESETS)})")
            options[flag] = _value(value)
        elif item in PRESETS:
            options.update(PRESETS[item][0])
        else:
            raise ValueError(f"unknown compile-option preset {item!r}; expected one of {', '.join(PRESETS)} "
                             "or xla_NAME=VALUE")
    return options


def from_environment(environ: Mapping[str, str] = os.environ) -> dict[str, object]:
    """``parse`` of ``FLAX_FLD_GPU_COMPILE_OPTIONS`` (empty: no options)."""
    return parse(environ.get(ENV, ""))


def xla_flags(options: Mapping[str, object]) -> str:
    """The ``XLA_FLAGS`` form of ``options``: ``--name=value`` separated by spaces (booleans lower case)."""
    def text(value):
        return str(value).lower() if isinstance(value, bool) else str(value)

    return " ".join(f"--{name}={text(value)}" for name, value in options.items())


def check(options: Mapping[str, object]) -> tuple[dict[str, object], list[str]]:
    """(the options the installed XLA accepts, one line per option it refused).

    Each option is tried alone on the compile of a one-element program on JAX's default backend. XLA's
    debug options are one set shared by its backends, so a GPU option is known (and ignored) on a CPU.
    """
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

    lowered = jax.jit(lambda x: x + 1).lower(jnp.zeros((), jnp.float32))
    known, refused = {}, []
    for name, value in options.items():
        try:
            lowered.compile(compiler_options={name: value})
        except Exception as error:  # pylint: disable=broad-except  # XLA's own error type varies by version
            refused.append(f"{name}={value}: {one_line(error)}")
        else:
            known[name] = value
    return known, refused


def one_line(error: BaseException) -> str:
    """``error`` as one line: its type and the first non-empty line of its message."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else 'no message'}"


def main(argv: list[str]) -> int:
    """Prints the XLA_FLAGS fragment of the spec in argv[1] (default: the environment's) that this XLA knows."""
    if len(argv) > 2 or (len(argv) == 2 and argv[1] in ("-h", "--help")):
        print(f"usage: python -m flax_fld.runtime.gpu_compile_options [SPEC]; presets: "
              + "; ".join(f"{name} ({why})" for name, (_, why) in PRESETS.items()), file=sys.stderr)
        return 2
    try:
        options = parse(argv[1]) if len(argv) == 2 else from_environment()
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    known, refused = check(options)
    for line in refused:
        print(f"gpu_compile_options: dropped {line}", file=sys.stderr)
    print(xla_flags(known))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
