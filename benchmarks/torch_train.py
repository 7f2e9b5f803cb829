"""One training step of Algorithm 1 in PyTorch, the twin of ``flax_fld.training.train.train_step`` on one device, and
``build_twin``, which builds model + optimizer from the same ml_collections config (configs/default.py).

    trainer = build_twin(config, steps_per_epoch=30, num_threads=2)
    metrics = trainer.train_step(batch_from_numpy(images_nhwc, labels))

The optimizer follows ``optimizer.create_optimizer``: optional global-norm clipping (optax's rule: scale by
max_norm / norm only when norm >= max_norm), then AdamW (b1 0.9, b2 0.999, eps 1e-8, decoupled decay) or SGD
with momentum and L2, decay on the parameters whose *flax* shape has ndim > 1 (kernels, the ViT's tokens and
embeddings, and the attention q/k/v biases, which flax stores as [heads, head_dim]), and optax's warm-up +
cosine (or constant) learning-rate schedule evaluated at the step count.
"""

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Optional

import ml_collections
import numpy as np
import torch
from torch import nn

from benchmarks.torch_fld import StepSettings, TorchFLD, build_fld_model, fld_loss


@contextlib.contextmanager
def intra_op_threads(num_threads: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``num_threads`` inside, restored after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def learning_rate_fn(optim_config: ml_collections.ConfigDict, num_epochs: int,
                     steps_per_epoch: int) -> Callable[[int], float]:
    """``optimizer.create_learning_rate_fn`` as a python function of the 0-based step."""
    total = max(int(num_epochs * steps_per_epoch), 1)
    warmup = min(int(optim_config.warmup_epochs * steps_per_epoch), total - 1)
    peak = float(optim_config.learning_rate)
    if optim_config.schedule == "cosine":
        def cosine(step: int) -> float:
            if step < warmup:
                return peak * step / warmup
            count = min(step - warmup, total - warmup)
            return peak * 0.5 * (1.0 + math.cos(math.pi * count / (total - warmup)))
        return cosine
    if optim_config.schedule == "constant":
        ramp = max(warmup, 1)
        return lambda step: peak * min(step, ramp) / ramp if step < warmup else peak
    raise ValueError(f"torch_train: optim.schedule={optim_config.schedule!r}; expected 'cosine' or 'constant'")


def flax_ndim(name: str, parameter: torch.Tensor) -> int:
    """ndim of the flax leaf a twin parameter copies: only attention q/k/v biases differ ([heads, head_dim])."""
    parts = name.split(".")
    if parts[-1] == "bias" and len(parts) > 1 and parts[-2] in ("query", "key", "value"):
        return 2
    return parameter.ndim


class TorchTrainer:
    """Model, optimizer, per-class epsilon/beta and counters: the twin of ``TrainState`` + ``train_step``."""

    def __init__(self, model: TorchFLD, settings: StepSettings, optim_config: ml_collections.ConfigDict,
                 num_epochs: int, steps_per_epoch: int, class_epsilon: torch.Tensor, class_beta: torch.Tensor):
        self.model, self.settings = model, settings
        # A plain function of (model, tensors, settings): replace it with torch.compile(trainer.loss_fn) to
        # compile the loss, attack included (the attack's autograd.grad splits it into several graphs).
        self.loss_fn = fld_loss
        decay, no_decay = [], []
        for name, parameter in model.named_parameters():
            (decay if flax_ndim(name, parameter) > 1 else no_decay).append(parameter)
        weight_decay = float(optim_config.weight_decay)
        groups = [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]
        if optim_config.name == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.999), eps=1e-8, foreach=True)
        elif optim_config.name == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=0.0, momentum=float(optim_config.momentum), foreach=True)
        else:
            raise ValueError(f"torch_train: optim.name={optim_config.name!r}; expected 'adamw' or 'sgd'")
        self.parameters = decay + no_decay
        self.clip_norm = float(optim_config.grad_clip_norm or 0.0)
        self.learning_rate = learning_rate_fn(optim_config, num_epochs, steps_per_epoch)
        self.step = 0
        self.class_epsilon, self.class_beta = class_epsilon, class_beta
        self.adv_correct = torch.zeros_like(class_epsilon, dtype=torch.int64)
        self.adv_seen = torch.zeros_like(class_epsilon, dtype=torch.int64)

    def _clip_gradients(self) -> torch.Tensor:
        for parameter in self.parameters:
            if parameter.grad is None:  # flax would hold a zero gradient (and still decay the weight)
                parameter.grad = torch.zeros_like(parameter)
        grads = [parameter.grad for parameter in self.parameters]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if self.clip_norm > 0:
            scale = torch.where(norm < self.clip_norm, torch.ones_like(norm), self.clip_norm / norm)
            torch._foreach_mul_(grads, scale)
        return norm

    def apply_gradients(self) -> tuple[torch.Tensor, float]:
        """Clip the parameters' ``.grad``, one optimizer update at this step's learning rate, step + 1.

        Returns (global gradient norm before clipping, learning rate used)."""
        learning_rate = self.learning_rate(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        grad_norm = self._clip_gradients()
        self.optimizer.step()
        self.step += 1
        return grad_norm, learning_rate

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One minibatch of Algorithm 1: IC1 + IC2 + classifier, K-step attack, Eq. 4, backward, clip, update.

        Args:
            batch: ``{'image': float32 [B,C,H,W] in [0,1], 'label': int64 [B]}``, optionally ``'noise'``
                [B,C,H,W] standard normal for the attack's start (drawn from torch's generator otherwise).

        Returns:
            Scalar tensors loss, lc, ls, lat, clean_acc, adv_acc, grad_norm (before clipping), learning_rate.
        """
        images, labels = batch["image"], batch["label"]
        self.optimizer.zero_grad(set_to_none=True)
        out = self.loss_fn(self.model, images, labels, self.class_epsilon, self.class_beta, self.settings,
                           noise=batch.get("noise"))
        out.loss.backward()
        grad_norm, learning_rate = self.apply_gradients()
        with torch.no_grad():
            hits = (out.logits_adv.argmax(dim=-1) == labels).long()
            self.adv_correct.index_add_(0, labels, hits)
            self.adv_seen.index_add_(0, labels, torch.ones_like(hits))
            clean_acc = (out.logits_clean.argmax(dim=-1) == labels).float().mean()
        return {"loss": out.loss.detach(), "lc": out.lc.detach(), "ls": out.ls.detach(), "lat": out.lat.detach(),
                "clean_acc": clean_acc, "adv_acc": hits.float().mean(), "grad_norm": grad_norm,
                "learning_rate": torch.tensor(learning_rate)}


def initial_class_values(config: ml_collections.ConfigDict, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``train.uniform_class_values`` at epoch 0: epsilon_i = epsilon; beta_i = beta / (1 + beta), or 0 before
    ``adv.start_epoch``."""
    beta = float(config.adv.beta)
    beta = beta / (1.0 + beta) if int(config.adv.get("start_epoch", 0)) <= 0 else 0.0
    return (torch.full((num_classes,), float(config.adv.epsilon)), torch.full((num_classes,), beta))


def build_twin(config: ml_collections.ConfigDict, *, steps_per_epoch: int = 1, num_classes: Optional[int] = None,
               image_channels: Optional[int] = None, image_size: Optional[int] = None,
               num_threads: Optional[int] = None, dropout_rate: Optional[float] = None, compile: bool = False,
               seed: int = 0, device: str = "cpu") -> TorchTrainer:
    """A ``TorchTrainer`` for ``config`` (the same ConfigDict the flax trainer reads), torch-initialised.

    Sizes default to ``config.data`` (classes = len(class_names)). ``num_threads`` sets torch's intra-op
    threads (process-wide; do it here, not in tests). ``compile`` wraps IC1, IC2 and the classifier in
    ``torch.compile`` in place (parameter names unchanged, so ``flax_to_torch`` still applies). ``device``
    ("cpu", "cuda") holds the model and the per-class values; feed it batches on the same device.
    """
    if num_threads:
        torch.set_num_threads(int(num_threads))
    torch.manual_seed(seed)
    num_classes = int(num_classes or len(config.data.class_names))
    image_channels = int(image_channels or config.data.channels)
    size = int(image_size or config.data.image_size)
    model = build_fld_model(config.model, num_classes, image_channels, (size, size), dropout_rate).to(device)
    if compile:
        for module in (model.ic1, model.ic2, model.classifier):
            if isinstance(module, nn.Module):
                module.compile()
    class_epsilon, class_beta = (values.to(device) for values in initial_class_values(config, num_classes))
    return TorchTrainer(model, StepSettings.from_config(config), config.optim, int(config.train.num_epochs),
                        int(steps_per_epoch), class_epsilon, class_beta)


def batch_from_numpy(images: np.ndarray, labels: np.ndarray, device: str = "cpu") -> dict[str, torch.Tensor]:
    """A flax-side batch (images float32 [B,H,W,C], labels [B]) as the twin's NCHW tensors on ``device``."""
    image = torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2)))
    return {"image": image.to(device), "label": torch.from_numpy(np.asarray(labels, np.int64)).to(device)}
