"""The PyTorch side of the benchmark: the twin's training step and forward pass, eager or ``torch.compile``d.

Same config, same batch shape, torch's own initialisation (the speed of a step does not depend on the
weights' values; ``tests/test_torch_twin.py`` proves the twin computes what the JAX step computes).
"""

import ml_collections
import torch

from benchmarks import torch_train
from benchmarks.jax_steps import Contender, random_batch


def set_threads(count: int) -> None:
    """Intra-op threads for torch (JAX's XLA CPU client uses one per core on its own)."""
    torch.set_num_threads(count)


def train_step(config: ml_collections.ConfigDict, *, compiled: bool = False, device: str = "cpu") -> Contender:
    """``TorchTrainer.train_step`` on one batch; ``compiled`` wraps the loss (attack included) in torch.compile."""
    trainer = torch_train.build_twin(config, steps_per_epoch=100, device=device)
    if compiled:
        trainer.loss_fn = torch.compile(trainer.loss_fn)
    numpy_batch = random_batch(config, (config.train.per_device_batch_size,))
    batch = torch_train.batch_from_numpy(numpy_batch["image"], numpy_batch["label"], device)

    def call():
        metrics = trainer.train_step(batch)
        float(metrics["loss"])  # waits for the step: a CUDA tensor's value needs the queue finished

    return Contender(call, config.train.per_device_batch_size, None)


def eval_forward(config: ml_collections.ConfigDict, batch_size: int, *, compiled: bool = False,
                 device: str = "cpu") -> Contender:
    """The twin's eval-mode forward pass (decouple + classify) without gradients."""
    model = torch_train.build_twin(config, steps_per_epoch=100, device=device).model.eval()
    forward = torch.compile(model) if compiled else model
    numpy_batch = random_batch(config, (batch_size,))
    images = torch_train.batch_from_numpy(numpy_batch["image"], numpy_batch["label"], device)["image"]

    def call():
        with torch.no_grad():
            forward(images)
        if images.is_cuda:
            torch.cuda.synchronize()  # kernels are queued, not done, when the call returns

    return Contender(call, batch_size, None)
