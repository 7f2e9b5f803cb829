"""Start the classifier from a torchvision ImageNet checkpoint (`config.model.init_from`).

torchvision saves a model as a ``state_dict``: a flat mapping from dotted names (``layer1.0.conv1.weight``)
to tensors in PyTorch's layouts (convolutions OIHW, linear layers [out, in]). ``torchvision_params`` turns
one into our classifier's variables, for the ResNet-18 family and SqueezeNet 1.1:
- convolution kernels OIHW -> HWIO, linear kernels transposed; BatchNorm weight/bias -> scale/bias and
  running_mean/running_var -> batch_stats mean/var;
- the first convolution is adapted to the input's channel count: x_c has 2F + Cc channels (11 in the
  default recipe), not RGB. Each new channel gets the mean of the three RGB kernels, scaled by 3 / C, so an
  input whose channels are all equal to a gray image gives the same first-layer response as that gray image
  replicated to RGB would in the ImageNet model;
- the head (``fc`` / ``classifier.1``) is loaded only when its shape matches; otherwise it keeps its fresh
  initialisation (a new task has new classes);
- parts torchvision does not have (CBAM and SE gates) keep their fresh initialisation.
Where to get a file: ``torchvision.models.resnet18(weights="IMAGENET1K_V1").state_dict()`` saved with
``torch.save``, or the ``.pth`` URL listed in torchvision's documentation for that weight enum.
"""

import os
import re
from collections.abc import Callable, Mapping

import numpy as np
from flax import traverse_util

SUPPORTED = ("resnet18", "cbam_resnet18", "se_resnet18", "squeezenet1_1")
HEADS = {"resnet18": "fc", "squeezenet1_1": "classifier.1"}

# torchvision squeezenet1_1: index in `features` -> our Fire module name.
_SQUEEZENET_FIRES = {3: "fire2", 4: "fire3", 6: "fire4", 7: "fire5", 9: "fire6", 10: "fire7", 11: "fire8", 12: "fire9"}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """A torchvision checkpoint as {name: float32 numpy array}: ``.pth``/``.pt`` (needs torch) or ``.npz``."""
    if not os.path.isfile(path):
        raise ValueError(f"model.init_from={path!r}: no such file")
    if path.endswith(".npz"):
        with np.load(path) as archive:
            return {name: np.asarray(archive[name], np.float32) for name in archive.files}
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise ValueError(f"model.init_from={path!r}: reading a .pth needs PyTorch (pip install torch==2.13.0 "
                         "for the CPU build), or convert it to .npz") from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: any of pickle's or zipfile's errors
        raise ValueError(f"model.init_from={path!r}: not a readable PyTorch state_dict ({error})") from error
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # training checkpoints often wrap it
    return {name: value.detach().float().numpy() for name, value in state.items() if hasattr(value, "numpy")}


def conv_kernel(weight: np.ndarray, in_channels: int | None = None) -> np.ndarray:
    """OIHW -> HWIO; with ``in_channels``, RGB kernels become ``in_channels`` copies of their mean x 3/C."""
    kernel = np.transpose(weight, (2, 3, 1, 0))
    if in_channels is not None and in_channels != kernel.shape[2]:
        mean = kernel.mean(axis=2, keepdims=True) * (kernel.shape[2] / in_channels)
        kernel = np.repeat(mean, in_channels, axis=2)
    return kernel


def _resnet_names(name: str) -> str | None:
    """torchvision ResNet name -> our path 'module/.../leaf' (leaf in torchvision terms), or None."""
    name = name.replace("conv1.", "stem_conv.", 1) if name.startswith("conv1.") else name
    name = name.replace("bn1.", "stem_bn.", 1) if name.startswith("bn1.") else name
    match = re.fullmatch(r"layer(\d)\.(\d+)\.(conv1|conv2|bn1|bn2|downsample\.0|downsample\.1)\.(\w+)", name)
    if match:
        layer, block, part, leaf = match.groups()
        part = {"downsample.0": "downsample_conv", "downsample.1": "downsample_bn"}.get(part, part)
        return f"layer{layer}_block{block}/{part}/{leaf}"
    match = re.fullmatch(r"(stem_conv|stem_bn|fc)\.(\w+)", name)
    return f"{match.group(1)}/{match.group(2)}" if match else None


def _squeezenet_names(name: str) -> str | None:
    match = re.fullmatch(r"features\.(\d+)\.(?:(squeeze|expand1x1|expand3x3)\.)?(weight|bias)", name)
    if match:
        index, part, leaf = int(match.group(1)), match.group(2), match.group(3)
        if index == 0 and part is None:
            return f"stem/conv/{leaf}"
        if index in _SQUEEZENET_FIRES and part:
            return f"{_SQUEEZENET_FIRES[index]}/{part}/conv/{leaf}"
        return None
    match = re.fullmatch(r"classifier\.1\.(weight|bias)", name)
    return f"classifier_conv/{match.group(1)}" if match else None


def _convert(path: str, value: np.ndarray, first_conv: str, in_channels: int) -> list[tuple[str, str, np.ndarray]]:
    """One torchvision tensor -> [(collection, our flat path, array)] (BatchNorm statistics in batch_stats)."""
    module, leaf = path.rsplit("/", 1)
    if leaf == "weight" and value.ndim == 4:
        return [("params", f"{module}/kernel", conv_kernel(value, in_channels if module == first_conv else None))]
    if leaf == "weight" and value.ndim == 2:
        return [("params", f"{module}/kernel", value.T)]
    if leaf == "weight":
        return [("params", f"{module}/scale", value)]
    if leaf == "bias":
        return [("params", f"{module}/bias", value)]
    if leaf in ("running_mean", "running_var"):
        return [("batch_stats", f"{module}/{'mean' if leaf == 'running_mean' else 'var'}", value)]
    return []  # num_batches_tracked


def torchvision_params(state_dict: Mapping[str, np.ndarray], classifier: str, variables: dict) -> tuple[dict, list[str]]:
    """Our classifier's ``{'params', 'batch_stats'}`` with every matching torchvision tensor copied in.

    Args:
        state_dict: {torchvision name: array}, e.g. from ``load_state_dict``.
        classifier: a name in ``SUPPORTED``.
        variables: the classifier's freshly initialised variables (they give shapes and the channel count).

    Returns:
        (new variables, the paths of ours that kept their fresh initialisation, sorted).
    """
    if classifier not in SUPPORTED:
        raise ValueError(f"model.init_from: classifier={classifier!r} has no torchvision counterpart; "
                         f"expected one of {SUPPORTED}")
    family = "squeezenet1_1" if classifier == "squeezenet1_1" else "resnet18"
    rename: Callable[[str], str | None] = _squeezenet_names if family == "squeezenet1_1" else _resnet_names
    first_conv = "stem/conv" if family == "squeezenet1_1" else "stem_conv"
    flat = {collection: traverse_util.flatten_dict(variables.get(collection, {}), sep="/")
            for collection in ("params", "batch_stats")}
    if family == "squeezenet1_1" and any(path.endswith("/bn/scale") for path in flat["params"]):
        raise ValueError("model.init_from: torchvision's SqueezeNet has no BatchNorm; set "
                         "model.squeezenet_batch_norm=False to start from it")
    in_channels = flat["params"][f"{first_conv}/kernel"].shape[2]
    head = HEADS[family]
    loaded: set[tuple[str, str]] = set()
    for name, value in state_dict.items():
        path = rename(name)
        if path is None:
            continue
        for collection, ours, array in _convert(path, np.asarray(value, np.float32), first_conv, in_channels):
            if ours not in flat[collection]:
                raise ValueError(f"model.init_from: torchvision tensor {name} maps to {collection}/{ours}, "
                                 f"which {classifier} does not have")
            if array.shape != flat[collection][ours].shape:
                if name.startswith(head + "."):
                    continue  # another number of classes: the head keeps its fresh initialisation
                raise ValueError(f"model.init_from: {name} has shape {value.shape}, which does not fit "
                                 f"{collection}/{ours} {flat[collection][ours].shape}")
            flat[collection][ours] = array
            loaded.add((collection, ours))
    if not any(collection == "params" and ours == f"{first_conv}/kernel" for collection, ours in loaded):
        raise ValueError(f"model.init_from: the file holds no {family} weights (no first convolution found)")
    fresh = sorted(f"{collection}/{path}" for collection in flat for path in flat[collection]
                   if (collection, path) not in loaded)
    new = {collection: traverse_util.unflatten_dict(
        {path: np.asarray(value) for path, value in flat[collection].items()}, sep="/") for collection in flat}
    return new, fresh
