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
