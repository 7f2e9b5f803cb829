"""One loader for config files: ``load_config("tiny")``, ``load_config("configs/tiny.py")`` or a full path.

configs/ sits next to the package, not inside it (``--config=configs/NAME.py`` is what config_flags is
given), so its files are run from their path rather than imported.
"""

import importlib.util
import os

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")


def known_configs() -> list[str]:
    """Names of the repository's config files (``configs/NAME.py``), sorted."""
    if not os.path.isdir(CONFIG_DIR):
        return []
    return sorted(name[:-3] for name in os.listdir(CONFIG_DIR) if name.endswith(".py") and not name.startswith("_"))


def config_path(name_or_path: str) -> str:
    """The config file meant by a name (``tiny`` -> REPO/configs/tiny.py) or a path.

    A relative path is looked up in the working directory first, then under the repository root, so
    ``configs/tiny.py`` works from anywhere. ValueError names what was looked for when nothing is found.
    """
    if not name_or_path:
        raise ValueError(f"config: empty name; choose one of {', '.join(known_configs())} or give a path")
    is_name = not name_or_path.endswith(".py") and "/" not in name_or_path and os.sep not in name_or_path
    if is_name:
        path = os.path.join(CONFIG_DIR, f"{name_or_path}.py")
        if not os.path.isfile(path):
            raise ValueError(f"config: unknown name {name_or_path!r} (no {path}); "
                             f"choose one of {', '.join(known_configs())} or give a path")
        return path
    candidates = [os.path.abspath(name_or_path)]
    if not os.path.isabs(name_or_path):
        candidates.append(os.path.join(REPO_ROOT, name_or_path))
    for path in candidates:
        if os.path.isfile(path):
            return path
    raise ValueError(f"config: file {name_or_path} not found (looked at {' and '.join(dict.fromkeys(candidates))})")


def load_config(name_or_path: str) -> ml_collections.ConfigDict:
    """``get_config()`` of the config file ``config_path(name_or_path)`` names (a fresh ConfigDict each call)."""
    path = config_path(name_or_path)
    stem = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"flax_fld_config_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ValueError(f"config: {path} defines no get_config()")
    return module.get_config()
