"""The composite FLD model (Fig. 2, Algorithm 1), its losses (Eqs. 3-5), the TRADES inner max and one
training step, in PyTorch. The twin of flax_fld/{color,losses,attack}.py, models/fld.py and ``train.train_step``.

Tensors are NCHW: images [B,C,H,W] in [0,1], features [B,F,H,W], logits [B,K], labels int64 [B].
Everything here is a plain function of modules and tensors (no hidden state besides BatchNorm buffers), so a
caller may wrap the modules with ``torch.compile`` (``benchmarks.torch_train.build_twin(compile=True)`` does,
in place). The optimizer and the training step itself are in ``benchmarks.torch_train``.
"""

import dataclasses
from typing import NamedTuple, Optional

import ml_collections
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.torch_layers import frozen_batch_stats
from benchmarks.torch_models import build_classifier, build_icfdnet

# ------------------------------------------------------------------------------------ colour transform (Y_c)

COLOR_SPACES = ("gray", "ycbcr", "hsv", "lab", "rgb")
_LUMA = (0.299, 0.587, 0.114)
_YCBCR = (_LUMA, (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
_RGB_TO_XYZ = ((0.4124564, 0.3575761, 0.1804375), (0.2126729, 0.7151522, 0.0721750),
               (0.0193339, 0.1191920, 0.9503041))
_D65_WHITE = (0.95047, 1.0, 1.08883)


def num_color_channels(space: str) -> int:
    if space not in COLOR_SPACES:
        raise ValueError(f"torch_fld: unknown color space {space!r}; expected one of {COLOR_SPACES}")
    return 1 if space == "gray" else 3


def _channel_vector(values, x: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)


def _apply_matrix(x: torch.Tensor, matrix) -> torch.Tensor:
    return torch.einsum("bchw,dc->bdhw", x, torch.tensor(matrix, dtype=x.dtype, device=x.device))


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    # amax/amin split the gradient evenly between tied channels, as jnp.max does (gray input ties all three).
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    value = x.amax(dim=1)
    chroma = value - x.amin(dim=1)
    has_value = value > 0
    saturation = torch.where(has_value, chroma / torch.where(has_value, value, torch.ones_like(value)), 0.0)
    has_hue = chroma > 0
    safe_chroma = torch.where(has_hue, chroma, torch.ones_like(chroma))
    rc, gc, bc = (value - r) / safe_chroma, (value - g) / safe_chroma, (value - b) / safe_chroma
    sector = torch.where(r == value, bc - gc, torch.where(g == value, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(has_hue, torch.remainder(sector / 6.0, 1.0), 0.0)
    return torch.stack([hue, saturation, value], dim=1)


def _rgb_to_lab(x: torch.Tensor) -> torch.Tensor:
    # Safe branches as in flax_fld/models/color.py: the discarded side of each where() has a finite gradient.
    linear = torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)
    xyz = _apply_matrix(linear, _RGB_TO_XYZ) / _channel_vector(_D65_WHITE, x)
    delta = 6.0 / 29.0
    f = torch.where(xyz > delta**3, xyz.clamp_min(delta**3) ** (1.0 / 3.0), xyz / (3.0 * delta**2) + 4.0 / 29.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=1)


def color_transform(x: torch.Tensor, space: str) -> torch.Tensor:
    """Y_c of Algorithm 1 (``flax_fld.models.color.color_transform``): [B,C,H,W], C in {1,3} -> [B,Cc,H,W], ~[0,1]."""
    num_color_channels(space)
    if x.shape[1] == 1:
        if space == "gray":
            return x
        x = x.expand(-1, 3, -1, -1)
    if space == "gray":
        return _apply_matrix(x, (_LUMA,))
    if space == "ycbcr":
        return _apply_matrix(x, _YCBCR) + _channel_vector((0.0, 0.5, 0.5), x)
    if space == "hsv":
        return _rgb_to_hsv(x)
    if space == "lab":
        return (_rgb_to_lab(x) + _channel_vector((0.0, 128.0, 128.0), x)) / _channel_vector((100.0, 255.0, 255.0), x)
    return x


# ------------------------------------------------------------------------------------------ composite model

class Decoupled(NamedTuple):
    feat1: Optional[torch.Tensor]  # [B,F,H,W]
    class_logits: Optional[torch.Tensor]  # [B,K], IC1's head (Ls)
    feat2: Optional[torch.Tensor]  # [B,F,H,W]
    x_hat: Optional[torch.Tensor]  # [B,C,H,W], IC2's reconstruction (Lc)


def standardize(features: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``fld.standardize``: each image's each channel to zero mean, unit (biased) variance over H, W."""
    var, mean = torch.var_mean(features, dim=(2, 3), keepdim=True, unbiased=False)
    return (features - mean) * torch.rsqrt(var + eps)


class TorchFLD(nn.Module):
    """IC1, IC2 (None in baseline mode) and the classifier f; the twin of ``fld.FLDModel``."""

    def __init__(self, ic1: Optional[nn.Module], ic2: Optional[nn.Module], classifier: nn.Module, color_space: str,
                 num_classes: int, standardize_features: bool = False, detach_features: bool = False):
        super().__init__()
        self.ic1, self.ic2, self.classifier = ic1, ic2, classifier
        self.color_space, self.num_classes = color_space, num_classes
        self.standardize_features, self.detach_features = standardize_features, detach_features

    @property
    def use_decouplers(self) -> bool:
        return self.ic1 is not None

    def decouple(self, x: torch.Tensor, *, train: bool) -> Decoupled:
        """``fld.decouple``: train mode normalises with batch statistics and updates the running ones."""
        if not self.use_decouplers:
            return Decoupled(None, None, None, None)
        self.ic1.train(train)
        self.ic2.train(train)
        feat1, class_logits = self.ic1(x)
        feat2, x_hat = self.ic2(x)
        return Decoupled(feat1, class_logits, feat2, x_hat)

    def feature_part(self, decoupled: Decoupled, for_loss: bool = False) -> Optional[torch.Tensor]:
        """The (2F) decoupled channels of x_c, standardised as configured; detached (``detach_features``) only
        in the classifier's loss (``for_loss``), as ``fld.for_classifier_loss``: the attack differentiates
        through them."""
        if decoupled.feat1 is None:
            return None
        features = torch.cat([decoupled.feat1, decoupled.feat2], dim=1)
        if self.detach_features and for_loss:
            features = features.detach()
        return standardize(features) if self.standardize_features else features

    def classifier_input(self, x: torch.Tensor, decoupled: Decoupled,
                         features: Optional[torch.Tensor] = None, for_loss: bool = False) -> torch.Tensor:
        """``fld.classifier_input``: x_c = cat(Feat1, Feat2, Y_c(x)) [B,2F+Cc,H,W]; baseline Y_c(x).

        ``features`` (from ``feature_part``) skips recomputing the feature channels (the attack's fixed ones);
        ``for_loss``: the classifier's training loss (``feature_part``).
        """
        features = self.feature_part(decoupled, for_loss) if features is None else features
        color_image = color_transform(x, self.color_space)
        return color_image if features is None else torch.cat([features, color_image], dim=1)

    def classify(self, x_c: torch.Tensor, *, train: bool) -> torch.Tensor:
        self.classifier.train(train)
        return self.classifier(x_c)

    def forward(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        """``fld.forward``'s logits [B,K] (train=True also updates BatchNorm running statistics)."""
        return self.classify(self.classifier_input(x, self.decouple(x, train=train)), train=train)


def build_fld_model(model_config: ml_collections.ConfigDict, num_classes: int, image_channels: int,
                    image_size: tuple[int, int], dropout_rate: Optional[float] = None) -> TorchFLD:
    """The twin of ``fld.create_fld_model(config.model, ...)`` (torch's default initialisation).

    ``dropout_rate`` overrides the classifier's (0.0 for a deterministic comparison with flax).
    """
    use_decouplers = bool(model_config.use_decouplers)
    features = int(model_config.feature_channels)
    in_channels = num_color_channels(model_config.color_space) + (2 * features if use_decouplers else 0)
    classifier = build_classifier(model_config.classifier, in_channels, num_classes, image_size,
                                  vit_preset=model_config.get("vit_preset", "tiny"),
                                  squeezenet_batch_norm=bool(model_config.get("squeezenet_batch_norm", False)),
                                  dropout_rate=dropout_rate)
    ic1 = ic2 = None
    if use_decouplers:
        norm = model_config.get("icfdnet_norm", "batch")
        ic1 = build_icfdnet(model_config.icfdnet_preset, image_channels, features, "class", num_classes, norm)
        ic2 = build_icfdnet(model_config.icfdnet_preset, image_channels, features, "reconstruct", num_classes, norm)
    return TorchFLD(ic1, ic2, classifier, model_config.color_space, num_classes,
                    bool(model_config.get("standardize_features", False)),
                    bool(model_config.get("detach_features", False)))


# ------------------------------------------------------------------------------------------- losses (Eqs. 3-5)

def laplacian(x: torch.Tensor) -> torch.Tensor:
    """4-neighbour Laplacian per channel with edge-replicated borders: [B,C,H,W] -> [B,C,H,W]."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    neighbours = padded[:, :, :-2, 1:-1] + padded[:, :, 2:, 1:-1] + padded[:, :, 1:-1, :-2] + padded[:, :, 1:-1, 2:]
    return neighbours - 4.0 * x


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor, xi: float = 1e-3) -> torch.Tensor:
    """Lc, Eq. 5 read as Charbonnier: mean(sqrt((lap x - lap x_hat)^2 + xi^2)) + mean|x - x_hat|."""
    edge_error = laplacian(x) - laplacian(x_hat)
    return torch.sqrt(edge_error**2 + xi**2).mean() + (x - x_hat).abs().mean()


def decoupling_bce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Ls: sigmoid BCE of IC1's logits [B,K] against one-hot labels, mean over batch and classes."""
    targets = F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets)


def kl_divergence(logits_target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-example KL(softmax(target) || softmax(logits)) [B], from log-softmaxes (no 0 * inf)."""
    log_p, log_q = F.log_softmax(logits_target, dim=-1), F.log_softmax(logits, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def adaptive_trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, labels: torch.Tensor,
                         class_beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lat, Eq. 3: mean_i (1 - beta_y) CE(f(x_i), y) + beta_y KL(f(x_i) || f(x'_i)); returns (mean, [B])."""
    beta = class_beta.to(logits_clean.dtype)[labels]
    per_example = (1.0 - beta) * F.cross_entropy(logits_clean, labels, reduction="none") + \
        beta * kl_divergence(logits_clean, logits_adv)
    return per_example.mean(), per_example


# ------------------------------------------------------------------------------- TRADES inner max (Eq. 3)

def project(x_adv: torch.Tensor, x: torch.Tensor, epsilon: torch.Tensor) -> torch.Tensor:
    """Onto the L-inf ball of radius epsilon ([B,1,1,1] or scalar) around x, then into [0,1]."""
    return torch.clamp(torch.minimum(torch.maximum(x_adv, x - epsilon), x + epsilon), 0.0, 1.0)


def trades_inner_max(logits_fn, x: torch.Tensor, epsilon: torch.Tensor, step_size: torch.Tensor, num_steps: int,
                     noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``attack.trades_pgd``: x' = argmax_{|x'-x|_inf <= eps_i} KL(f(x) || f(x')) by signed-gradient ascent.

    Starts at project(x + 0.001 * noise) (``noise`` [B,C,H,W] standard normal; drawn here when None, passed in to
    reproduce a JAX run), then ``num_steps`` steps x' <- project(x' + step_i sign(grad)), the KL summed over
    the batch so that each example follows its own gradient. ``epsilon``/``step_size``: scalar or [B].
    ``logits_fn`` must be eval mode (examples independent). Returns x' [B,C,H,W], detached.
    """
    x = x.detach()
    epsilon = torch.as_tensor(epsilon, dtype=x.dtype, device=x.device)
    step_size = torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
    if epsilon.ndim == 1:
        epsilon, step_size = epsilon.view(-1, 1, 1, 1), step_size.view(-1, 1, 1, 1)
    noise = torch.randn_like(x) if noise is None else noise
    with torch.no_grad():
        logits_clean = logits_fn(x)
    x_adv = project(x + 0.001 * noise, x, epsilon)
    for _ in range(num_steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            objective = kl_divergence(logits_clean, logits_fn(x_adv)).sum()
        # Only d objective / d x' is requested, so autograd skips every weight gradient.
        (grad,) = torch.autograd.grad(objective, x_adv)
        x_adv = project(x_adv.detach() + step_size * grad.sign(), x, epsilon)
    return x_adv.detach()


def attack_logits_fn(model: TorchFLD, decoupled: Optional[Decoupled]):
    """``fld.attack_logits_fn`` in eval mode: features of the clean image held fixed (``decoupled`` given,
    Fig. 2) or recomputed from x' by IC1/IC2 (``decoupled`` None: end to end)."""
    fixed = None if decoupled is None else model.feature_part(Decoupled(*(
        None if t is None else t.detach() for t in decoupled)))

    def logits_fn(x_perturbed: torch.Tensor) -> torch.Tensor:
        if decoupled is None:
            current = model.decouple(x_perturbed, train=False)
            return model.classify(model.classifier_input(x_perturbed, current), train=False)
        return model.classify(model.classifier_input(x_perturbed, decoupled, features=fixed), train=False)

    return logits_fn


# ------------------------------------------------------------------------------------- Eq. 4, one step's loss

@dataclasses.dataclass(frozen=True)
class StepSettings:
    """The options of ``config.adv`` and ``config.loss`` that one training step reads."""

    adv_enabled: bool = True
    epsilon: float = 8 / 255
    step_size: float = 2 / 255
    num_steps: int = 3
    through_decouplers: bool = False
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)
    charbonnier_xi: float = 1e-3

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> "StepSettings":
        adv, loss = config.adv, config.loss
        return cls(bool(adv.enabled), float(adv.epsilon), float(adv.step_size), int(adv.num_steps),
                   bool(adv.through_decouplers), (float(loss.l1), float(loss.l2), float(loss.l3)),
                   float(loss.charbonnier_xi))


class StepOutputs(NamedTuple):
    loss: torch.Tensor  # L of Eq. 4
    lc: torch.Tensor
    ls: torch.Tensor
    lat: torch.Tensor
    logits_clean: torch.Tensor  # [B,K]
    logits_adv: torch.Tensor  # [B,K]
    x_adv: Optional[torch.Tensor]  # [B,C,H,W], None when adversarial training is off


def fld_loss(model: TorchFLD, images: torch.Tensor, labels: torch.Tensor, class_epsilon: torch.Tensor,
             class_beta: torch.Tensor, settings: StepSettings, noise: Optional[torch.Tensor] = None,
             x_adv: Optional[torch.Tensor] = None) -> StepOutputs:
    """``objective.loss_and_gradients``' loss: L = l1 Lc + l2 Ls + l3 Lat (Eq. 4), images [B,C,H,W], labels [B].

    Per-example radius eps_i = class_epsilon[y] (Eq. 1), step step_size * eps_i / epsilon, beta_y =
    class_beta[y] (Eq. 2). Like flax, the attack sees the BatchNorm running statistics from *before* this
    step, so it runs before any train-mode pass could move them: first when it goes through the decouplers,
    else after IC1/IC2 (it only needs the classifier's statistics then). ``x_adv`` given: no attack, use it.
    """
    epsilon = class_epsilon[labels]
    step_size = settings.step_size * epsilon / settings.epsilon
    attack = settings.adv_enabled and x_adv is None
    if attack and settings.through_decouplers:
        x_adv = trades_inner_max(attack_logits_fn(model, None), images, epsilon, step_size, settings.num_steps, noise)

    decoupled = model.decouple(images, train=True)
    zero = images.new_zeros(())
    lc = zero if decoupled.x_hat is None else reconstruction_loss(images, decoupled.x_hat, settings.charbonnier_xi)
    ls = zero if decoupled.class_logits is None else decoupling_bce(decoupled.class_logits, labels)
    x_c = model.classifier_input(images, decoupled, for_loss=True)
    if attack and not settings.through_decouplers:
        x_adv = trades_inner_max(attack_logits_fn(model, decoupled), images, epsilon, step_size,
                                 settings.num_steps, noise)

    logits_clean = model.classify(x_c, train=True)
    if settings.adv_enabled:
        decoupled_adv = decoupled
        if settings.through_decouplers:
            with frozen_batch_stats(model):  # flax discards this pass's statistics
                decoupled_adv = model.decouple(x_adv, train=True)
        # Both classifier passes move the running statistics, in this order, as in flax (and TRADES).
        logits_adv = model.classify(model.classifier_input(x_adv, decoupled_adv, for_loss=True), train=True)
        lat, _ = adaptive_trades_loss(logits_clean, logits_adv, labels, class_beta)
    else:
        logits_adv, x_adv = logits_clean, None
        lat = F.cross_entropy(logits_clean, labels)
    l1, l2, l3 = settings.weights
    return StepOutputs(l1 * lc + l2 * ls + l3 * lat, lc, ls, lat, logits_clean, logits_adv, x_adv)
