import pytest
import torch
from torch import nn

from models.build import build_model
from models.folding import fold_batchnorm
from tests.conftest import REPO_ROOT, TINY_MODEL, randomise_batchnorm
from utils.config import load_config


@pytest.mark.parametrize(
    "config_name, overrides, size",
    [
        (None, TINY_MODEL, 96),
        (
            "fssd300_resnet50_voc.yaml",
            ["model.backbone=resnet18", "model.width_multiplier=0.125"],
            288,
        ),
        ("ssdlite320_mobilenetv2_voc.yaml", ["model.width_multiplier=0.25"], 320),
        ("ssd300_resnet50_voc.yaml", ["model.width_multiplier=0.125"], 300),
        ("ssd300_efficientnet_b3_voc.yaml", ["model.width_multiplier=0.125"], 300),
    ],
    ids=["fssd_vgg16_bn", "fssd_resnet18", "ssdlite_mobilenetv2", "ssd_resnet50", "ssd_effnet_b3"],
)
def test_folded_model_gives_the_same_outputs(config_name, overrides, size):
    path = REPO_ROOT / "configs" / config_name if config_name else None
    model = build_model(load_config(path, [*overrides, f"model.image_size={size}"]))
    randomise_batchnorm(model)
    model.eval()
    images = torch.rand(2, 3, size, size) * 255
    with torch.no_grad():
        loc, conf = model(images)
    count = sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    assert fold_batchnorm(model) == count > 0
    assert not any(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    with torch.no_grad():
        folded_loc, folded_conf = model(images)
    # Float32 rounding, relative to the output scale (random BN makes outputs large).
    for folded, original in ((folded_loc, loc), (folded_conf, conf)):
        tolerance = 1e-5 * float(original.abs().max())
        torch.testing.assert_close(folded, original, rtol=1e-4, atol=tolerance)


def test_folding_needs_eval_mode():
    model = build_model(load_config(None, TINY_MODEL))
    with pytest.raises(RuntimeError, match="eval mode"):
        fold_batchnorm(model)
