"""The adversarial recipe that buys robustness on the embedded benchmark: one-step adversarial training
through the decouplers at a small radius (2/255), evaluated at that radius.

  python launch/train.py --config=configs/robust.py --workdir=workdir/robust

On the embedded benchmark (SqueezeNet, docs/evidence.md "The adversarial half: what was tried") it is as accurate as
configs/default.py's features-fixed recipe within the seed noise and robust at 2/255 against an attacker who
controls the image, where the default is not; each step costs more than the default's (the attack's
gradient runs back through IC1/IC2), though its attack takes one step instead of three.
Nothing is robust at 8/255 on that benchmark. Everything not overridden is configs/default.py.
"""

import ml_collections

from flax_fld.config_files import load_config


def get_config() -> ml_collections.ConfigDict:
    config = load_config("default")
    # The attacker moves the image before IC1/IC2 (the threat model of the robust evaluation); with the
    # features held fixed the training attack lowered training accuracy by 0.4 points and bought nothing.
    config.adv.through_decouplers = True
    config.adv.num_steps = 1  # One step from a uniform start (fast adversarial training, Wong et al. 2020).
    config.adv.random_start = "uniform"  # Uniform in the ball: a one-step attack needs it to avoid overfitting.
    config.adv.epsilon = 2 / 255  # At 8/255 the same recipe cost 9 points of clean accuracy and stayed ~4 % robust.
    config.adv.step_size = 2.5 / 255  # 1.25 epsilon, the fast-AT step.
    config.adv.eval_epsilon = 2 / 255  # Robust validation and the test report at the radius trained for.
    config.adv.eval_step_size = 0.5 / 255  # PGD step a quarter of the radius, as at 8/255.
    return config
