"""Eq. 3 and Eq. 4 for one batch, in the order the train step runs them: the attack, then the loss on x'.

``adversarial_examples`` is the inner maximisation; its output is data for ``fld_loss``, the outer
minimisation, which ``jax.value_and_grad`` differentiates. Keeping the two apart means the loss a student
reads receives x' as an argument, as in TRADES' code and DeepMind's adversarial_robustness trainer.
``loss_and_gradients`` puts them together for ``train.train_step`` (and for the PyTorch twin's test in
``benchmarks/``, which checks exactly what the step computes).
"""

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from flax_fld.method import attack, losses
from flax_fld.models import fld


class LossTerms(NamedTuple):
    """What ``fld_loss`` computed besides the total: the three terms, both logits, the new statistics."""

    lc: jax.Array  # scalar, Eq. 5 (0 without decouplers)
    ls: jax.Array  # scalar, IC1's class BCE (0 without decouplers)
    lat: jax.Array  # scalar, Eq. 3 (the clean cross-entropy when there is no x')
    logits_clean: jax.Array  # [B, K]
    logits_adv: jax.Array  # [B, K]; the clean logits when there is no x'
    batch_stats: dict  # running statistics after this batch's train-mode passes


ATTACK_SPACES = ("image", "classifier_input")


def adversarial_examples(model: fld.FLDModel, variables: dict, images: jax.Array, labels: jax.Array,
                         decoupled: fld.Decoupled, class_epsilon: jax.Array, key: jax.Array,
                         adv_config: ml_collections.ConfigDict) -> jax.Array:
    """The inner max of Eq. 3 within each example's radius ``class_epsilon[y]`` (Eq. 1).

    ``attack.trades_pgd`` in eval mode (as TRADES attacks), on the running statistics from before this step;
    the step size scales with the radius (``adv.step_size * epsilon_y / adv.epsilon``), so every class takes
    the same number of steps to cross its ball. ``adv.random_start`` picks TRADES' tiny start or a uniform
    one (fast adversarial training).

    ``adv.attack_space`` says where x' lives:
      image: x' [B,H,W,C] in [0, 1]. Fig. 2's threat model (``adv.through_decouplers`` False) holds
        ``decoupled``, the clean image's features that the loss also uses, fixed and perturbs only
        ``Y_c(x')``; end to end, IC1/IC2 (eval mode) see x' too.
      classifier_input: Algorithm 1's ``x' <- max KL(f(x_c), f(x'))`` read literally: every channel of
        x_c = cat(Feat1, Feat2, Y_c(x)) moves inside the ball (no [0, 1] box: the features are not pixels).
        Returned as the perturbation ``x'_c - x_c`` [B,H,W,2F+Cc], which the loss adds to its own x_c, so
        the classifier's gradient still reaches IC1/IC2 through the clean features. No decoupler pass per
        attack step.

    Args:
        model: the static FLD model. variables: ``{'params', 'batch_stats'}``.
        images: ``[B,H,W,C]`` in [0, 1]. labels: int ``[B]``. class_epsilon: ``[K]`` (Eq. 1).
        decoupled: IC1/IC2's outputs on ``images`` (train mode, as in the loss).
        key: the random start's PRNG key. adv_config: ``config.adv``.

    Returns:
        ``x'`` (image space) or ``x'_c - x_c`` (classifier-input space), gradients stopped.
    """
    epsilon = class_epsilon[labels]
    settings = dict(step_size=adv_config.step_size * epsilon / adv_config.epsilon, num_steps=int(adv_config.num_steps),
                    key=key, random_start=str(adv_config.get("random_start", "small")))
    if adv_config.get("attack_space", "image") == "classifier_input":
        x_c = fld.classifier_input(model, images, jax.lax.stop_gradient(decoupled))

        def logits_of_x_c(x_c_perturbed):
            return fld.classify(model, variables, x_c_perturbed, train=False)[0]

        x_c_adv = attack.trades_pgd(logits_of_x_c, x_c, epsilon, valid_range=None, **settings)
        return jax.lax.stop_gradient(x_c_adv - x_c)
    logits_fn = fld.attack_logits_fn(model, variables, decoupled, end_to_end=bool(adv_config.through_decouplers))
    return attack.trades_pgd(logits_fn, images, epsilon, **settings)


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The static half of Eq. 4, fixed for a run: the model, the weights and how x' reaches the classifier."""

    model: fld.FLDModel
    weights: tuple[float, float, float]  # (l1, l2, l3) of Eq. 4
    charbonnier_xi: float  # Eq. 5's smoothing constant
    end_to_end: bool = False  # adv.through_decouplers: IC1/IC2 re-run on x'
    attack_space: str = "image"  # adv.attack_space: "image" or "classifier_input"

    @classmethod
    def from_config(cls, model: fld.FLDModel, config: ml_collections.ConfigDict) -> "LossSettings":
        return cls(model=model, weights=(float(config.loss.l1), float(config.loss.l2), float(config.loss.l3)),
                   charbonnier_xi=float(config.loss.charbonnier_xi),
                   end_to_end=bool(config.adv.through_decouplers),
                   attack_space=str(config.adv.get("attack_space", "image")))


class LossBatch(NamedTuple):
    """What ``fld_loss`` receives for one batch besides the parameters: the data, x' and the per-class beta."""

    images: jax.Array  # [B, H, W, C] in [0, 1]
    labels: jax.Array  # int [B]
    x_adv: Optional[jax.Array]  # adversarial_examples' output (x', or the perturbation of x_c), or None
    class_beta: jax.Array  # [K], Eq. 2
    dropout_keys: tuple[jax.Array, jax.Array]  # for the clean and the adversarial pass


def fld_loss(params: dict, decoupled: fld.Decoupled, batch_stats: dict, batch: LossBatch,
             settings: LossSettings) -> tuple[jax.Array, LossTerms]:
    """Eq. 4, ``L = l1 Lc + l2 Ls + l3 Lat``, for one batch, its decoupled features and its x'.

    Lc (Eq. 5) on IC2's reconstruction, Ls (BCE) on IC1's class head, both from ``decoupled``. The classifier
    sees ``x_c = cat(Feat1, Feat2, Y_c(x))`` and ``x'_c`` (the clean features with ``Y_c(x')``, IC1/IC2
    re-run on x' when ``end_to_end``, or ``x_c + x_adv`` in the classifier-input ``attack_space``), and Lat
    is Eq. 3 with ``beta_y = class_beta[y]``. Both classifier
    passes move the running statistics, clean first, as TRADES' two train-mode forwards do. Without x'
    (adversarial training off), Lat is the clean cross-entropy. Differentiate with respect to ``params`` and
    ``decoupled``; ``loss_and_gradients`` carries the second into IC1/IC2.

    Args:
        params, batch_stats: the trees ``{'ic1', 'ic2', 'classifier'}`` (only ``classifier`` in baseline mode).
        decoupled: IC1/IC2's train-mode outputs on ``batch.images`` (all None in baseline mode).
        batch: images, labels, x' (or None), class beta and dropout keys (``LossBatch``).
        settings: static (``LossSettings``).

    Returns:
        ``(L, LossTerms)``; ``LossTerms.batch_stats`` holds the classifier's statistics.
    """
    model, (images, labels, x_adv, class_beta, dropout_keys) = settings.model, batch
    variables = {"params": params, "batch_stats": batch_stats}
    lc = ls = jnp.float32(0.0)
    if model.use_decouplers:
        lc = losses.reconstruction_loss(images, decoupled.x_hat, settings.charbonnier_xi)
        ls = losses.decoupling_bce(decoupled.class_logits, labels)
    x_c = fld.classifier_input(model, images, fld.for_classifier_loss(model, decoupled))
    logits_clean, classifier_stats = fld.classify(model, variables, x_c, train=True, dropout_rng=dropout_keys[0])
    if x_adv is None:
        logits_adv = logits_clean
        lat = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits_clean, labels))
    else:
        after_clean_pass = {"params": params, "batch_stats": classifier_stats}
        if settings.attack_space == "classifier_input":
            x_adv_c = x_c + x_adv
        else:
            decoupled_adv = fld.decouple(model, variables, x_adv, train=True)[0] if settings.end_to_end else decoupled
            x_adv_c = fld.classifier_input(model, x_adv, fld.for_classifier_loss(model, decoupled_adv))
        logits_adv, classifier_stats = fld.classify(model, after_clean_pass, x_adv_c, train=True,
                                                    dropout_rng=dropout_keys[1])
        lat, _ = losses.adaptive_trades_loss(logits_clean, logits_adv, labels, class_beta)
    loss = losses.total_loss(lc, ls, lat, settings.weights)
    return loss, LossTerms(lc, ls, lat, logits_clean, logits_adv, classifier_stats)


def loss_and_gradients(params: dict, batch_stats: dict, images: jax.Array, labels: jax.Array,
                       class_epsilon: jax.Array, class_beta: jax.Array, keys: tuple[jax.Array, ...], *,
                       model: fld.FLDModel, config: ml_collections.ConfigDict):
    """Algorithm 1's inner loop body on one device: decouple, attack (Eq. 1, 3), loss (Eq. 4), gradients.

    One train-mode pass of IC1/IC2 serves both the attack, which holds its features fixed (Fig. 2), and the
    loss: ``jax.vjp`` keeps its pullback, which carries the loss's gradient with respect to the features back
    into IC1/IC2's parameters (recomputing the pass inside the loss would run it twice; XLA does not merge
    the two).

    Args:
        params, batch_stats: the model's trees. images: ``[B,H,W,C]``. labels: int ``[B]``.
        class_epsilon, class_beta: ``[K]`` (Eq. 1 and 2). keys: ``(attack, dropout clean, dropout adversarial)``.
        model: static. config: the run's config (``adv``, ``loss``).

    Returns:
        ``(L, LossTerms with every new batch statistic, gradients like params, x' or None)``.
    """
    attack_key, *dropout_keys = keys

    def decouple(params):
        return fld.decouple(model, {"params": params, "batch_stats": batch_stats}, images, train=True)

    decoupled, pullback, decoupler_stats = jax.vjp(decouple, params, has_aux=True)
    x_adv = None
    if config.adv.enabled:
        x_adv = adversarial_examples(model, {"params": params, "batch_stats": batch_stats}, images, labels,
                                     decoupled, class_epsilon, attack_key, config.adv)
    loss_fn = functools.partial(fld_loss, settings=LossSettings.from_config(model, config))
    batch = LossBatch(images, labels, x_adv, class_beta, tuple(dropout_keys))
    (loss, terms), (grads, feature_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        params, decoupled, batch_stats, batch)
    grads = jax.tree.map(jnp.add, grads, pullback(feature_grads)[0])
    terms = terms._replace(batch_stats={**batch_stats, **decoupler_stats, **terms.batch_stats})
    return loss, terms, grads, x_adv


def count_by_class(labels: jax.Array, hits: jax.Array, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """Per-class ``(correct, seen)`` counts ``[K]`` int32 of a batch: the numerators and denominators of Acc_i."""
    correct = jnp.zeros((num_classes,), jnp.int32).at[labels].add(hits.astype(jnp.int32))
    seen = jnp.zeros((num_classes,), jnp.int32).at[labels].add(1)
    return correct, seen
