"""An independent PyTorch twin of the FLD model and training step, for side-by-side checks and benchmarks.

- ``torch_layers``: flax semantics in torch (SAME pooling, bilinear resize, BatchNorm statistics, attention).
- ``torch_models``: ICFDNet and the five classifiers of ``flax_fld.models.registry``.
- ``torch_fld``: colour transform, the composite model, the TRADES inner max, Eqs. 3-5 and one training step.
- ``flax_to_torch``: copies a Flax variables dict into the twin and maps its gradients back.

Nothing in ``flax_fld`` imports this package; it needs ``torch`` (CPU build is enough).
"""
