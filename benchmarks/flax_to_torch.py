"""Flax variables <-> the PyTorch twin: weight copy in, gradients (and weights, statistics) back out.

The twin names every parameter after its flax path (``benchmarks.torch_models``), so the pairing is by name:
``params/ic1/encoder0/conv_in/Conv_0/kernel`` <-> ``ic1.encoder0.conv_in.Conv_0.weight`` and
``batch_stats/.../BatchNorm_0/var`` <-> ``....BatchNorm_0.running_var``. Layouts:

    flax leaf                                   torch tensor
    conv kernel [kh, kw, Cin, Cout] (HWIO)      weight [Cout, Cin, kh, kw] (OIHW)
    dense kernel [Din, Dout]                    weight [Dout, Din]
    attention q/k/v kernel [D, heads, hd]       weight [heads*hd, D]      (bias [heads, hd] -> [heads*hd])
    attention out kernel [heads, hd, D]         weight [D, heads*hd]
    scale / bias / mean / var, ViT tokens       same shape (scale -> weight, mean/var -> running_*)

Every flax leaf must find its torch tensor and every torch parameter (and BatchNorm running statistic) must
be covered, or the copy fails: a silent mismatch would make a twin comparison meaningless.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

_PARAM_NAMES = {"kernel": "weight", "scale": "weight"}
_STAT_NAMES = {"mean": "running_mean", "var": "running_var"}


def flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """A nested dict of arrays as {path tuple: leaf}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix + (str(key),)))
        else:
            flat[prefix + (str(key),)] = value
    return flat


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return tree


def torch_name(path: tuple[str, ...], collection: str = "params") -> str:
    """Twin tensor name of a flax leaf path inside ``collection`` (path starts with ic1/ic2/classifier)."""
    renames = _STAT_NAMES if collection == "batch_stats" else _PARAM_NAMES
    return ".".join(path[:-1] + (renames.get(path[-1], path[-1]),))


def to_torch_layout(path: tuple[str, ...], leaf: Any) -> np.ndarray:
    """A flax leaf as the twin's tensor layout (see the module docstring)."""
    array = np.asarray(leaf)
    if path[-1] == "kernel":
        if array.ndim == 4:
            return array.transpose(3, 2, 0, 1)
        if array.ndim == 3:  # attention: out [heads, hd, D]; query/key/value [D, heads, hd]
            flat = array.reshape(-1, array.shape[-1]) if path[-2] == "out" else array.reshape(array.shape[0], -1)
            return flat.T
        if array.ndim == 2:
            return array.T
    if path[-1] == "bias" and array.ndim == 2:
        return array.reshape(-1)
    return array


def to_flax_layout(path: tuple[str, ...], tensor: torch.Tensor, flax_shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of ``to_torch_layout``: a twin tensor (or its gradient) in the flax leaf's layout."""
    array = tensor.detach().cpu().numpy()
    if path[-1] == "kernel" and array.ndim == 4:
        array = array.transpose(2, 3, 1, 0)
    elif path[-1] == "kernel" and array.ndim == 2:
        array = array.T
    return np.ascontiguousarray(array.reshape(flax_shape))


def _twin_tensors(twin: nn.Module, collection: str) -> dict[str, torch.Tensor]:
    if collection == "params":
        return dict(twin.named_parameters())
    return {name: buffer for name, buffer in twin.named_buffers() if name.endswith(("running_mean", "running_var"))}


def _pairs(twin: nn.Module, variables: Mapping, collection: str) -> list[tuple[tuple[str, ...], Any, torch.Tensor]]:
    """(flax path, flax leaf, twin tensor) for every leaf of ``variables[collection]``; fails on any gap."""
    tensors = _twin_tensors(twin, collection)
    pairs, unmatched = [], []
    for path, leaf in flatten(variables.get(collection, {})).items():
        name = torch_name(path, collection)
        if name not in tensors:
            unmatched.append("/".join(path))
            continue
        pairs.append((path, leaf, tensors.pop(name)))
    if unmatched or tensors:
        raise ValueError(f"flax_to_torch: {collection} do not pair up; flax leaves without a twin tensor: "
                         f"{unmatched[:8]}; twin tensors without a flax leaf: {sorted(tensors)[:8]}")
    return pairs


def load_flax_variables(twin: nn.Module, variables: Mapping) -> None:
    """Copies ``{'params': {'ic1','ic2','classifier'}, 'batch_stats': {...}}`` (fld.init_variables' layout)
    into the twin (a ``TorchFLD``: its children are named ic1, ic2, classifier)."""
    with torch.no_grad():
        for collection in ("params", "batch_stats"):
            for path, leaf, tensor in _pairs(twin, variables, collection):
                value = torch.from_numpy(np.array(to_torch_layout(path, leaf)))  # copy_ casts to the twin's dtype
                if tuple(value.shape) != tuple(tensor.shape):
                    raise ValueError(f"flax_to_torch: {'/'.join(path)} has shape {tuple(value.shape)} in torch "
                                     f"layout but the twin's {torch_name(path, collection)} is {tuple(tensor.shape)}")
                tensor.copy_(value)


def twin_to_flax(twin: nn.Module, template: Mapping, collection: str = "params", grads: bool = False) -> dict:
    """The twin's ``collection`` (or the gradients of its parameters: ``grads=True``) as a nested dict of
    numpy arrays shaped like ``template[collection]`` (e.g. the flax variables the twin was loaded from).
    A parameter without a gradient maps to zeros, as jax.grad would give."""
    flat = {}
    for path, leaf, tensor in _pairs(twin, template, collection):
        source = tensor
        if grads:
            source = tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
        flat[path] = to_flax_layout(path, source, tuple(np.shape(leaf)))
    return unflatten(flat)
