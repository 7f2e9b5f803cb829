"""The public name of the config loader: ``from flax_fld.config_files import load_config`` (configs/*.py use it).

The loader lives in ``flax_fld.runtime.config_files``; this module keeps the path users' own configs import.
"""

from flax_fld.runtime.config_files import load_config

__all__ = ["load_config"]
