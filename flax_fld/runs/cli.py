"""What every ``launch/*.py`` script shares: flag parsing that ends a bad ``--config.KEY=VALUE`` with one
line, quiet library logging, and JAX's persistent compilation cache.

The cache: a second run of a command loads the executables the first compiled instead of spending its first
minute compiling them. ``JAX_COMPILATION_CACHE_DIR``, when set, is left to JAX; otherwise the folder is
``FLAX_FLD_COMPILATION_CACHE`` (``0`` turns the cache off) or ``$XDG_CACHE_HOME/flax_fld/jax`` (default
``~/.cache/flax_fld/jax``).
"""

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

CACHE_ENV = "FLAX_FLD_COMPILATION_CACHE"
_OFF_VALUES = ("0", "off", "false", "no")


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> str:
    """``$XDG_CACHE_HOME/flax_fld/jax``, ``~/.cache/flax_fld/jax`` without it."""
    cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "flax_fld", "jax")


def compilation_cache_dir(environ: Mapping[str, str] = os.environ) -> str | None:
    """The folder the launch scripts cache compiled programs in (see the module docstring); None when off."""
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return environ["JAX_COMPILATION_CACHE_DIR"]
    choice = environ.get(CACHE_ENV, "").strip()
    if choice.lower() in _OFF_VALUES:
        return None
    return os.path.expanduser(choice) if choice and choice != "1" else default_cache_dir(environ)


def enable_compilation_cache(environ: Mapping[str, str] = os.environ) -> str | None:
    """Points ``jax_compilation_cache_dir`` at ``compilation_cache_dir()``; call before the first compile.

    An already set ``JAX_COMPILATION_CACHE_DIR`` is not overridden (JAX reads it itself). Returns the folder
    in use, or None when the cache is off.
    """
    folder = compilation_cache_dir(environ)
    if folder is None or environ.get("JAX_COMPILATION_CACHE_DIR"):
        return folder
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    return folder


# TFDS warnings that every run of these scripts would print and that ask nothing of the reader: the data
# sets are configured builders by design, and PIL decodes the small images fast enough.
_ROUTINE_TFDS_WARNINGS = ("Using custom data configuration", "OpenCV is not installed")


# Libraries whose warnings are about their own bookkeeping (orbax's "Waiting for previous save to complete
# took N seconds" also counts waits made before, and so blames the wrong save); their errors still come through.
_QUIET_LIBRARIES = ("orbax", "tensorstore")


def _keep_record(record: logging.LogRecord) -> bool:
    """False for the routine TFDS warnings above and the warnings of ``_QUIET_LIBRARIES`` (a ``logging`` filter)."""
    parts = record.pathname.replace("\\", "/").split("/")
    if record.levelno < logging.ERROR and any(library in parts for library in _QUIET_LIBRARIES):
        return False
    return not ("tensorflow_datasets" in record.pathname and str(record.msg).startswith(_ROUTINE_TFDS_WARNINGS))


def quiet_library_logging() -> None:
    """absl logging at WARNING (orbax and TFDS log every file operation at INFO) without TFDS's routine
    warnings nor orbax's, unless ``--verbosity`` is given (``--verbosity=-1`` shows every library warning);
    what the scripts print themselves is what a person reads."""
    from absl import flags
    from absl import logging as absl_logging

    if "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present:
        return
    absl_logging.set_verbosity(absl_logging.WARNING)
    logger = logging.getLogger("absl")
    if _keep_record not in logger.filters:
        logger.addFilter(_keep_record)


def with_default_config(argv: Sequence[str], config_path: str) -> list[str]:
    """``argv`` with ``--config=config_path`` after the program name when no ``--config`` is given.

    config_flags applies ``--config.KEY=VALUE`` overrides to a flag's *default* file while the flag is
    defined, where a misspelt key ends in a traceback; given on the command line, the file and its overrides
    are read while parsing, where ``run_main`` turns the error into one line.
    """
    if any(arg == "--config" or arg.startswith("--config=") for arg in argv[1:]):
        return list(argv)
    return [argv[0], f"--config={config_path}", *argv[1:]]


def _parse_flags(argv: Sequence[str]) -> list[str]:
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as error:  # absl's own usage errors, reported as absl does
        sys.exit(f"FATAL Flags parsing error: {error}")
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        # ml_collections escapes its "did you mean" text into the message: unescape it to one line.
        message = str(error).replace("\\n", " ").replace("\\'", "'")
        if len(message) > 1 and message[0] == message[-1] == "'":
            message = message[1:-1]
        message = " ".join(message.split())
        given = " ".join(arg for arg in argv[1:] if arg.startswith("--config."))
        sys.exit(f"error: bad config override ({message}); overrides given: {given or 'none'}")


def check_environment() -> None:
    """Exits with one line when an environment variable this package reads has a value it does not know."""
    from flax_fld.models import layer_forms

    try:
        layer_forms.choice()
    except ValueError as error:
        sys.exit(f"error: {error}")


def run_main(main: Callable[[list[str]], None], *, default_config: str | None = None,
             compilation_cache: bool = True) -> None:
    """``absl.app.run(main)`` with one-line config override errors, quiet logging and (unless
    ``compilation_cache=False``, for a script that times compiles) the persistent compilation cache.

    ``default_config``: a config name or path (``config_files.config_path``) used as ``--config`` when the
    command line gives none; the script defines its ``--config`` flag without a default.
    """
    from absl import app

    def parse(argv: Sequence[str]) -> list[str]:
        if default_config is not None:
            from flax_fld.runtime import config_files

            argv = with_default_config(argv, config_files.config_path(default_config))
        return _parse_flags(argv)

    def prepared_main(argv: list[str]) -> None:
        check_environment()
        quiet_library_logging()
        if compilation_cache:
            enable_compilation_cache()
        main(argv)

    app.run(prepared_main, flags_parser=parse)
