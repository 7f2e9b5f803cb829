"""Loading config files by path: configs/*.py are scripts for config_flags, not a package to import."""

import importlib.util
import os

import ml_collections


def load_sibling_config(config_file: str, name: str = "default.py") -> ml_collections.ConfigDict:
    """``get_config()`` of the config file ``name`` next to ``config_file`` (pass ``__file__``)."""
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    spec = importlib.util.spec_from_file_location(f"flax_fld_config_{os.path.splitext(name)[0]}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()



def run_main(main) -> None:
    """``absl.app.run(main)``, except that a bad ``--config.KEY=VALUE`` override (a misspelt key, a value of
    the wrong type) ends with one line naming it, and the ml_collections suggestion, instead of a traceback."""
    import sys

    from absl import app, flags

    def parse(argv):
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

    app.run(main, flags_parser=parse)
