"""Models: the paper's five classifiers (Table 1), the ICFDNet decoupler and the composite FLD model.

`get_classifier(name, num_classes, **kwargs)` builds a Linen module whose `__call__(x, train)` maps
[B,H,W,C] (any C, H and W >= 32) to logits [B,K]. BatchNorm statistics live in the 'batch_stats' collection;
dropout draws from the 'dropout' rng.
"""

from typing import Any, Callable

import flax.linen as nn

from flax_fld.models.resnet import cbam_resnet18, resnet18, se_resnet18
from flax_fld.models.squeezenet import squeezenet1_1
from flax_fld.models.vit import vit

# Classifier name (config.model.classifier) -> constructor(num_classes, **kwargs).
registry: dict[str, Callable[..., nn.Module]] = {
    "squeezenet1_1": squeezenet1_1,
    "resnet18": resnet18,
    "cbam_resnet18": cbam_resnet18,
    "se_resnet18": se_resnet18,
    "vit": vit,
}


def get_classifier(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """The classifier `name` with `num_classes` outputs; kwargs go to its constructor (e.g. preset='tiny')."""
    if name not in registry:
        raise ValueError(f"models: classifier={name!r}; expected one of {sorted(registry)}")
    if num_classes < 1:
        raise ValueError(f"models: num_classes={num_classes}; must be >= 1")
    return registry[name](num_classes, **kwargs)


__all__ = ["get_classifier", "registry"]
