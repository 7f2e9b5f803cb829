"""PyTorch/torchvision access for tests that compare with them (imported by name from tests/)."""

import importlib.util
import sys
import types

import pytest

TORCH_INSTALL = "pip install torch==2.13.0 torchvision==0.28.0 (the CPU build of torch; unpinned pulls CUDA)"


def torch_or_skip():
    """The torch module, or a skip that says how to install the CPU build."""
    return pytest.importorskip("torch", reason=f"PyTorch is not installed: {TORCH_INSTALL}")


def torchvision_models():
    """``torchvision.models``, even where torchvision's compiled operators cannot load.

    PyPI has no CPU build of torchvision: the 0.28.0 wheel links against CUDA libraries that the CPU build of
    torch lacks, so ``import torchvision`` fails while registering its detection operators. The model
    definitions are plain Python, so in that case the package is entered without running its __init__.
    """
    torch_or_skip()
    try:
        import torchvision  # pylint: disable=import-outside-toplevel
        return torchvision.models
    except ImportError:
        pytest.skip(f"torchvision is not installed: {TORCH_INSTALL}")
    except RuntimeError:  # "operator torchvision::nms does not exist": its CUDA-only _C.so did not load
        for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
            del sys.modules[name]
        spec = importlib.util.find_spec("torchvision")
        package = types.ModuleType("torchvision")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        sys.modules["torchvision"] = package
        return importlib.import_module("torchvision.models")
