"""`model.init_from`: torchvision ImageNet weights into our ResNet-18 family and SqueezeNet 1.1.

The state_dicts come from randomly initialised torchvision models (no download), with random BatchNorm
statistics so that a mistake in the statistics mapping shows.
"""

import functools

import jax
import ml_collections
import numpy as np
import pytest
from flax import traverse_util
from model_helpers import synthetic_variables
from torch_helpers import torch_or_skip, torchvision_models

from flax_fld.models import fld, get_classifier, pretrained
from flax_fld.runtime.config_files import load_config
from flax_fld.training import config_validation, train

torch = torch_or_skip()
SIZE = 64


def _torchvision_model(name: str):
    torch.manual_seed(0)
    model = getattr(torchvision_models(), name)()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    if name == "squeezenet1_1":
        # Our one deliberate difference (squeezenet.py docstring): no ReLU on the class scores.
        model.classifier[2] = torch.nn.Identity()
    return model.eval()


def _state_dict(model) -> dict[str, np.ndarray]:
    return {name: value.detach().numpy() for name, value in model.state_dict().items()}


def _ours(name: str, num_classes: int, channels: int, state_dict) -> tuple:
    """(module, loaded variables, fresh paths, the variables passed in as the fresh initialisation).

    torchvision_params only reads the fresh variables' shapes and copies the values it keeps, so numpy-filled
    ones stand in for `module.init`, which run eagerly compiles hundreds of one-op programs (the trainer's
    real init path is test_create_train_state_starts_the_classifier_from_a_pth's).
    """
    module = get_classifier(name, num_classes)
    fresh_variables = synthetic_variables(module, (1, SIZE, SIZE, channels), seed=1)
    variables, fresh = pretrained.torchvision_params(state_dict, name, fresh_variables)
    return module, variables, fresh, fresh_variables


def _logits(module, variables, images: np.ndarray) -> np.ndarray:
    # One program for the forward pass: run eagerly, each layer's ops would compile one by one.
    return np.asarray(jax.jit(functools.partial(module.apply, train=False))(variables, images))


def _torch_logits(model, images_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))).numpy()


@pytest.mark.slow  # full-size torchvision networks at 224 px: make test-slow
@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1"])
def test_our_model_gives_torchvision_logits_on_rgb(name):
    reference = _torchvision_model(name)
    module, variables, fresh, _ = _ours(name, 1000, 3, _state_dict(reference))
    assert fresh == []  # every parameter and statistic came from the file
    images = np.random.default_rng(0).uniform(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    ours = _logits(module, variables, images)
    expected = _torch_logits(reference, images)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_first_convolution_is_adapted_to_the_channel_count():
    """An 11-channel input whose channels all equal a gray image responds as that gray image in RGB."""
    reference = _torchvision_model("resnet18")
    module, variables, _, _ = _ours("resnet18", 1000, 11, _state_dict(reference))
    gray = np.random.default_rng(1).uniform(size=(2, SIZE, SIZE, 1)).astype(np.float32)
    ours = _logits(module, variables, np.repeat(gray, 11, axis=-1))
    expected = _torch_logits(reference, np.repeat(gray, 3, axis=-1))
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("name, kept_fresh", [
    ("resnet18", {"params/fc/kernel", "params/fc/bias"}),
    ("squeezenet1_1", {"params/classifier_conv/kernel", "params/classifier_conv/bias"}),
])
def test_a_new_head_keeps_its_initialisation(name, kept_fresh):
    state_dict = _state_dict(_torchvision_model(name))
    _, variables, fresh, fresh_variables = _ours(name, 4, 11, state_dict)
    assert set(fresh) == kept_fresh
    kept, given = (traverse_util.flatten_dict(tree, sep="/") for tree in (variables, fresh_variables))
    for path in kept_fresh:
        np.testing.assert_array_equal(kept[path], given[path])
    stem = variables["params"]["stem_conv"] if name == "resnet18" else variables["params"]["stem"]["conv"]
    rgb_kernel = state_dict["conv1.weight" if name == "resnet18" else "features.0.weight"]
    np.testing.assert_allclose(stem["kernel"], pretrained.conv_kernel(rgb_kernel, 11), rtol=1e-6)


def test_attention_variants_load_the_backbone_and_keep_their_gates_fresh():
    state_dict = _state_dict(_torchvision_model("resnet18"))
    _, variables, fresh, _ = _ours("cbam_resnet18", 4, 11, state_dict)
    assert fresh and all("/cbam/" in path or "/fc/" in path for path in fresh)
    np.testing.assert_array_equal(variables["params"]["layer1_block0"]["conv1"]["kernel"],
                                  state_dict["layer1.0.conv1.weight"].transpose(2, 3, 1, 0))


def test_bad_files_and_settings_give_one_line():
    with pytest.raises(ValueError, match="no such file"):
        pretrained.load_state_dict("/nonexistent/resnet18.pth")
    bn_variables = synthetic_variables(get_classifier("squeezenet1_1", 4, batch_norm=True), (1, SIZE, SIZE, 3))
    with pytest.raises(ValueError, match="squeezenet_batch_norm=False"):
        pretrained.torchvision_params(_state_dict(_torchvision_model("squeezenet1_1")), "squeezenet1_1",
                                      bn_variables)
    with pytest.raises(ValueError, match="no resnet18 weights"):
        pretrained.torchvision_params(_state_dict(_torchvision_model("squeezenet1_1")), "resnet18",
                                      synthetic_variables(get_classifier("resnet18", 4), (1, 32, 32, 3)))


def test_a_truncated_pth_is_refused_with_its_path(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(_torchvision_model("resnet18").state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="resnet18.pth.*not a readable PyTorch state_dict"):
        pretrained.load_state_dict(str(path))


def _config(init_from: str) -> ml_collections.ConfigDict:
    config = load_config("tiny")
    config.model.classifier = "resnet18"
    config.model.init_from = init_from
    return config


def test_create_train_state_starts_the_classifier_from_a_pth(tmp_path):
    reference = _torchvision_model("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    config = _config(str(path))
    config_validation.validate_config(config)
    model = fld.create_fld_model(config.model, num_classes=4, image_channels=1)
    size = config.data.image_size
    state = train.create_train_state(config, model, (size, size, 1), jax.random.key(0), steps_per_epoch=2)
    kernel = np.asarray(state.params["classifier"]["layer4_block1"]["conv2"]["kernel"])
    np.testing.assert_array_equal(kernel, reference.layer4[1].conv2.weight.detach().numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(state.batch_stats["classifier"]["stem_bn"]["var"]),
                                  reference.bn1.running_var.numpy())
    assert state.params["classifier"]["stem_conv"]["kernel"].shape[2] == model.classifier_channels


def test_validation_refuses_a_missing_file_and_an_unsupported_classifier(tmp_path):
    with pytest.raises(ValueError, match="config.model.init_from='/nonexistent.pth'"):
        config_validation.validate_config(_config("/nonexistent.pth"))
    path = tmp_path / "weights.npz"
    np.savez(path, x=np.zeros(1))
    config = _config(str(path))
    config.model.classifier = "vit"
    with pytest.raises(ValueError, match="no torchvision counterpart"):
        config_validation.validate_config(config)
