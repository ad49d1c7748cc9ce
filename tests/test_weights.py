import json

import pytest
import torch
import torchvision

from models.build import build_model
from models.vgg import VGG16Backbone
from models.weights import (
    WeightsError,
    convert_vgg16,
    hub_cache_path,
    torchvision_weights_url,
)
from tests.conftest import REPO_ROOT
from tests.test_models import reference_weights
from utils.config import load_config

TINY = ["model.width_multiplier=0.125", "model.image_size=272"]


def random_state_dict(module_factory, seed=0):
    """Random tensors with the shapes of a torchvision model (He-scaled, so activations
    stay in range), built without initialising the model."""
    with torch.device("meta"):
        shapes = [(key, value.shape) for key, value in module_factory().state_dict().items()]
    return reference_weights(shapes, seed=seed)


def test_torchvision_vgg16_converts_with_reduced_fc():
    state = random_state_dict(torchvision.models.vgg16)
    backbone = VGG16Backbone()
    converted, source_format = convert_vgg16(state, backbone, "vgg16.pth")
    assert source_format == "torchvision"
    backbone.load_state_dict(converted)
    layers = dict(backbone.named_modules())
    assert torch.equal(layers["to_conv4_3.conv1_1.conv"].weight, state["features.0.weight"])
    assert torch.equal(layers["to_conv7.conv5_3.conv"].bias, state["features.28.bias"])
    conv6 = layers["to_conv7.conv6.conv"]
    fc6 = state["classifier.0.weight"].reshape(4096, 512, 7, 7)
    assert torch.equal(conv6.weight, fc6[::4, :, ::3, ::3])
    assert torch.equal(conv6.bias, state["classifier.0.bias"][::4])
    assert conv6.dilation == (6, 6) and conv6.weight.shape == (1024, 512, 3, 3)
    conv7 = layers["to_conv7.conv7.conv"]
    assert torch.equal(conv7.weight[:, :, 0, 0], state["classifier.3.weight"][::4, ::4])


def _torchvision_to_conv4_3(factory, state):
    """torchvision's VGG16 trunk up to the ReLU of conv4_3 (the 10th conv)."""
    network = factory()
    network.load_state_dict(state)
    relus = [
        index for index, layer in enumerate(network.features) if isinstance(layer, torch.nn.ReLU)
    ]
    return network.features[: relus[9] + 1].eval()


@pytest.mark.parametrize("batch_norm", [False, True], ids=["vgg16", "vgg16_bn"])
def test_converted_trunk_computes_what_torchvision_computes(batch_norm):
    factory = torchvision.models.vgg16_bn if batch_norm else torchvision.models.vgg16
    state = random_state_dict(factory)
    if batch_norm:
        # Plausible statistics: positive variances.
        for key in state:
            if key.endswith("running_var"):
                state[key] = state[key].abs() + 0.5
    backbone = VGG16Backbone(batch_norm=batch_norm)
    converted, _ = convert_vgg16(state, backbone, "vgg16.pth")
    backbone.load_state_dict(converted, strict=True)
    backbone.eval()
    # 64 pixels: pool3's ceil mode (SSD) and floor mode (torchvision) agree.
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = _torchvision_to_conv4_3(factory, state)(images)
        conv4_3, _ = backbone(images)
    torch.testing.assert_close(conv4_3, expected, rtol=1e-4, atol=1e-4)
    if batch_norm:
        bn = dict(backbone.named_modules())["to_conv4_3.conv1_1.bn"]
        expected_mean = state["features.1.running_mean"] - state["features.0.bias"]
        assert torch.equal(bn.running_mean, expected_mean)
        conv6_bn = dict(backbone.named_modules())["to_conv7.conv6.bn"]
        assert torch.equal(conv6_bn.bias, state["classifier.0.bias"][::4])


def test_reducedfc_file_loads_through_the_config(tmp_path, shared_dir):
    shapes = json.loads(
        (shared_dir / "reference" / "fssd_pytorch_state_dict_keys.json").read_text()
    )["vgg16_reducedfc"]
    state = reference_weights(shapes)
    path = tmp_path / "vgg16_reducedfc.pth"
    torch.save(state, path)
    model = build_model(load_config(None, [f"model.backbone_weights={path}"]))
    layers = dict(model.features.backbone.named_modules())
    assert torch.equal(layers["to_conv7.conv7.conv"].weight, state["33.weight"])
    assert torch.equal(layers["to_conv4_3.conv4_3.conv"].bias, state["21.bias"])


def test_torchvision_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = random_state_dict(torchvision.models.resnet18)
    path = hub_cache_path(torchvision_weights_url("resnet18"))
    assert path.parent == tmp_path / "hub" / "checkpoints"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    overrides = [
        "model.backbone=resnet18",
        "model.extras=[]",
        "model.pixel_format=rgb_imagenet",
        "model.backbone_weights=torchvision",
        *TINY,
    ]
    model = build_model(load_config(None, overrides))
    assert torch.equal(
        model.features.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"]
    )
    assert torch.equal(model.features.backbone.bn1.running_mean, state["bn1.running_mean"])


def test_efficientnet_b3_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    """torchvision's EfficientNet-B3 file, looked up under its own name in the hub
    cache: every backbone tensor loads, the classifier is ignored."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = random_state_dict(torchvision.models.efficientnet_b3)
    path = hub_cache_path(torchvision_weights_url("efficientnet_b3"))
    assert path.name == "efficientnet_b3_rwightman-b3899882.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    config = load_config(
        REPO_ROOT / "configs" / "ssd300_efficientnet_b3_voc.yaml",
        ["model.backbone_weights=torchvision"],
    )
    backbone = build_model(config).features.backbone
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_mobilenet_weights_load_from_a_file(tmp_path):
    state = random_state_dict(torchvision.models.mobilenet_v2)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save({"state_dict": state}, path)
    config = load_config(
        REPO_ROOT / "configs" / "ssdlite320_mobilenetv2_voc.yaml",
        [f"model.backbone_weights={path}"],
    )
    model = build_model(config)
    assert torch.equal(
        model.features.backbone.features[18][0].weight, state["features.18.0.weight"]
    )


def test_missing_torchvision_weights_name_the_file_and_the_address(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as error:
        build_model(load_config(None, ["model.backbone_weights=torchvision", *TINY]))
    message = str(error.value)
    assert str(tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth") in message
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert "model.backbone_weights" in message


def test_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(WeightsError, match=r"nowhere\.pth: backbone weights file not found"):
        build_model(load_config(None, [f"model.backbone_weights={tmp_path}/nowhere.pth", *TINY]))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=r"corrupt\.pth: not a PyTorch weights file"):
        build_model(load_config(None, [f"model.weights={corrupt}", *TINY]))


def test_pixel_format_must_match_the_weights(tmp_path, monkeypatch):
    path = tmp_path / "resnet18.pth"
    torch.save(random_state_dict(torchvision.models.resnet18), path)
    overrides = [
        "model.backbone=resnet18",
        "model.extras=[]",
        f"model.backbone_weights={path}",
        *TINY,
    ]
    with pytest.raises(WeightsError, match=r"set model\.pixel_format=rgb_imagenet"):
        build_model(load_config(None, overrides))


def test_fssd_pytorch_checkpoint_loads_through_the_config(tmp_path, shared_dir):
    shapes = json.loads(
        (shared_dir / "reference" / "fssd_pytorch_state_dict_keys.json").read_text()
    )["fssd300_vgg16_voc21"]
    state = reference_weights(shapes)
    path = tmp_path / "FSSD_VGG16_VOC.pth"
    # As saved by a DataParallel training run.
    torch.save({"state_dict": {f"module.{key}": value for key, value in state.items()}}, path)
    model = build_model(load_config(None, [f"model.weights={path}"]))
    assert torch.equal(model.head.conf[5].weight, state["conf.5.weight"])
    assert torch.equal(
        model.features.fusion.transforms[1].conv.weight, state["ft_module.1.conv.weight"]
    )
    assert torch.equal(model.features.pyramid.layers[0].conv.bias, state["pyramid_ext.0.conv.bias"])

    with pytest.raises(WeightsError) as error:
        build_model(load_config(None, [f"model.weights={path}", "model.num_classes=81"]))
    assert "FSSD_VGG16_VOC.pth" in str(error.value)
    assert "'conf.0.weight' has shape [126, 512, 3, 3]" in str(error.value)
    assert "needs [486, 512, 3, 3]" in str(error.value)


def test_project_checkpoint_round_trip(tmp_path):
    config = load_config(None, TINY)
    model = build_model(config)
    path = tmp_path / "model.pt"
    torch.save({"model": model.state_dict()}, path)
    again = build_model(load_config(None, [*TINY, f"model.weights={path}"]))
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)
    with pytest.raises(WeightsError, match="does not fit this model"):
        build_model(load_config(None, [*TINY, "model.batch_norm=true", f"model.weights={path}"]))
