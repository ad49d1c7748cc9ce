import json
import math

import pytest
import torch

from models.build import (
    InputSizeError,
    build_loss,
    build_model,
    measure_feature_map_sizes,
)
from models.counting import count_parameters
from models.detector import InputNormalizer
from models.fssd import FeatureFusion
from models.weights import convert_fssd_pytorch
from tests.conftest import REPO_ROOT, TINY_MODEL
from tools.summary import summarize
from utils.config import load_config

CONFIG_FILES = sorted((REPO_ROOT / "configs").glob("*.yaml"))

# Prior counts and detection-map sides at each config's own input size (the published
# SSD300/512 and FSSD300/512 layouts; parameters are checked against references below).
EXPECTED = {
    "fssd300_voc.yaml": (11_620, [38, 19, 10, 5, 3, 1]),
    "fssd512_voc.yaml": (32_756, [64, 32, 16, 8, 4, 2, 1]),
    "fssd300_coco.yaml": (11_620, [38, 19, 10, 5, 3, 1]),
    "ssd300_vgg16_voc.yaml": (8_732, [38, 19, 10, 5, 3, 1]),
    "ssd512_vgg16_voc.yaml": (24_564, [64, 32, 16, 8, 4, 2, 1]),
    "ssd300_resnet50_coco.yaml": (8_732, [38, 19, 10, 5, 3, 1]),
    "fssd300_resnet50_voc.yaml": (11_620, [38, 19, 10, 5, 3, 1]),
    "ssdlite320_mobilenetv2_voc.yaml": (3_234, [20, 10, 5, 3, 2, 1]),
    "ssd300_efficientnet_b3_voc.yaml": (8_732, [38, 19, 10, 5, 3, 1]),
}


def reference_parameter_count(shapes: list, num_classes: int) -> int:
    """Parameters of an fssd.pytorch model from its state-dict shapes (BatchNorm
    statistics are buffers, not parameters), with its 21-class confidence layers
    resized to ``num_classes``."""
    total = 0
    for key, shape in shapes:
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        count = math.prod(shape)
        total += count // 21 * num_classes if key.startswith("conf.") else count
    return total


def reference_weights(shapes: list, seed: int = 0) -> dict[str, torch.Tensor]:
    """The deterministic fssd.pytorch weights described in shared/reference/README.md."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, shape in shapes:
        if key.endswith("num_batches_tracked"):
            weights[key] = torch.tensor(0)
            continue
        values = torch.randn(shape, generator=generator)
        scale = math.sqrt(2 / math.prod(shape[1:])) if len(shape) > 1 else 0.01
        weights[key] = values * scale
    return weights


@pytest.mark.parametrize("size", [300, 512])
def test_converted_reference_weights_reproduce_reference_outputs(shared_dir, size):
    reference_dir = shared_dir / "reference"
    shapes = json.loads((reference_dir / "fssd_pytorch_state_dict_keys.json").read_text())
    outputs = torch.load(reference_dir / "fssd_pytorch_parity_outputs.pt", weights_only=True)
    model = build_model(load_config(REPO_ROOT / "configs" / f"fssd{size}_voc.yaml")).eval()
    state = convert_fssd_pytorch(
        reference_weights(shapes[f"fssd{size}_vgg16_voc21"]), model, "reference"
    )
    model.load_state_dict(state)
    with torch.no_grad():
        loc, conf = model.forward_normalized(outputs[f"fssd{size}_input"])
    torch.testing.assert_close(loc, outputs[f"fssd{size}_loc"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(conf, outputs[f"fssd{size}_conf"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_full_size_shapes_and_priors(name):
    num_priors, maps = EXPECTED[name]
    config = load_config(REPO_ROOT / "configs" / name)
    model = build_model(config)
    sizes = measure_feature_map_sizes(model.features, config.model.image_size)
    assert sizes == [(size, size) for size in maps]
    assert model.priors_cxcywh.shape == (num_priors, 4)


@pytest.mark.parametrize(
    ("name", "reference", "num_classes"),
    [
        ("fssd300_voc.yaml", "fssd300_vgg16_voc21", 21),
        ("fssd512_voc.yaml", "fssd512_vgg16_voc21", 21),
        ("fssd300_coco.yaml", "fssd300_vgg16_voc21", 81),
    ],
)
def test_fssd_parameters_equal_the_reference_implementation(
    shared_dir, name, reference, num_classes
):
    shapes = json.loads(
        (shared_dir / "reference" / "fssd_pytorch_state_dict_keys.json").read_text()
    )[reference]
    model = build_model(load_config(REPO_ROOT / "configs" / name))
    assert model.head.num_classes == num_classes
    assert count_parameters(model) == reference_parameter_count(shapes, num_classes)


def test_ssd300_parameters_equal_torchvision():
    from torchvision.models.detection import ssd300_vgg16

    config = load_config(REPO_ROOT / "configs" / "ssd300_vgg16_voc.yaml")
    peer = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=config.model.num_classes)
    assert count_parameters(build_model(config)) == count_parameters(peer)


def _build_at_smallest_size(config_path, overrides):
    """The model at the smallest input (step 16, from 96 to 544) its layers accept, and
    that size, by bisection (an input a network accepts, it accepts larger too). Only
    "too small" counts as not accepted; any other error (a bad config) fails."""
    sizes = list(range(96, 545, 16))

    def build(size):
        config = load_config(config_path, [*overrides, f"model.image_size={size}"])
        try:
            return build_model(config, load_weights=False)
        except InputSizeError:
            return None

    low, high, found = 0, len(sizes) - 1, None
    while low <= high:
        middle = (low + high) // 2
        model = build(sizes[middle])
        if model is None:
            low = middle + 1
        else:
            found, high = (model, sizes[middle]), middle - 1
    if found is None:
        raise AssertionError(f"{config_path.name} builds at no size up to 544")
    return found


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[path.name for path in CONFIG_FILES])
def test_every_config_builds_and_runs_at_a_small_input(path):
    model, image_size = _build_at_smallest_size(path, ["model.width_multiplier=0.125"])
    config = load_config(path)
    assert image_size <= config.model.image_size
    images = torch.rand(2, 3, image_size, image_size) * 255
    model.eval()
    with torch.no_grad():
        loc, conf = model(images)
    num_priors = model.priors_cxcywh.shape[0]
    assert loc.shape == (2, num_priors, 4)
    assert conf.shape == (2, num_priors, config.model.num_classes)
    assert torch.isfinite(loc).all() and torch.isfinite(conf).all()


def test_tiny_fssd_learns_one_box():
    config = load_config(
        None,
        [
            "model.width_multiplier=0.125",
            "model.image_size=160",
            "model.batch_norm=true",
            "model.pixel_format=rgb_imagenet",
            # Maps 20 10 5 3 instead of FSSD300's six.
            "model.pyramid=[[512, 3, 1, 1], [512, 3, 2, 1], [256, 3, 2, 1], [256, 3, 1, 0]]",
            "priors.min_sizes=[16, 40, 72, 104]",
            "priors.max_sizes=[40, 72, 104, 136]",
            "priors.aspect_ratios=[[2], [2], [2], [2]]",
            "priors.steps=null",
        ],
    )
    torch.manual_seed(0)
    model = build_model(config)
    loss_fn = build_loss(config, model.priors_cxcywh)
    images = torch.zeros(2, 3, 160, 160)
    images[:, :, 40:100, 50:130] = 255.0
    boxes = [torch.tensor([[50 / 160, 40 / 160, 130 / 160, 100 / 160]])] * 2
    labels = [torch.tensor([3])] * 2
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(40):
        loc, conf = model(images)
        loss = loss_fn(loc, conf, boxes, labels)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_input_normalizer_formats():
    rgb = torch.tensor([10.0, 20.0, 30.0])[None, :, None, None]
    caffe = InputNormalizer("bgr_caffe")(rgb).flatten()
    torch.testing.assert_close(caffe, torch.tensor([30 - 104.0, 20 - 117.0, 10 - 123.0]))
    imagenet = InputNormalizer("rgb_imagenet")(rgb).flatten()
    expected = (
        torch.tensor([10.0, 20.0, 30.0]) / 255 - torch.tensor([0.485, 0.456, 0.406])
    ) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(imagenet, expected)
    uint8 = InputNormalizer("bgr_caffe")(rgb.to(torch.uint8)).flatten()
    torch.testing.assert_close(uint8, caffe)


def test_fusion_resizes_to_the_first_source_and_concatenates():
    fusion = FeatureFusion([4, 6, 8], [3, 3, 2])
    sources = [torch.rand(1, 4, 10, 10), torch.rand(1, 6, 5, 5), torch.rand(1, 8, 3, 3)]
    fused = fusion(sources)
    assert fused.shape == (1, 8, 10, 10) and fusion.out_channels == 8
    # The first source is not resampled: its part is the 1x1 conv + ReLU output itself.
    torch.testing.assert_close(fused[:, :3], fusion.transforms[0](sources[0]))
    # A constant map stays constant through bilinear resizing.
    constant = fusion.transforms[2](torch.ones(1, 8, 3, 3))
    fused = fusion([sources[0], sources[1], torch.ones(1, 8, 3, 3)])
    torch.testing.assert_close(fused[:, 6:], constant[:, :, :1, :1].expand(1, 2, 10, 10))


def test_summary_reports_the_reference_numbers():
    """FSSD300-VGG16 for VOC (21 classes) counted by hand, layer by layer, from the
    paper's architecture as fssd.pytorch builds it."""
    # (in, out, kernel, output side) of every convolution.
    vgg = [(3, 64, 3, 300), (64, 64, 3, 300), (64, 128, 3, 150), (128, 128, 3, 150),
           (128, 256, 3, 75), (256, 256, 3, 75), (256, 256, 3, 75),
           (256, 512, 3, 38), (512, 512, 3, 38), (512, 512, 3, 38),  # conv4_3
           (512, 512, 3, 19), (512, 512, 3, 19), (512, 512, 3, 19),
           (512, 1024, 3, 19), (1024, 1024, 1, 19)]  # fc6 (dilated), fc7  # fmt: skip
    # Extras [256, 512, 128, 'S', 256]: the unpadded 3x3 gives 17, the strided one 9.
    extras = [(1024, 256, 1, 19), (256, 512, 3, 17), (512, 128, 1, 17), (128, 256, 3, 9)]
    # Fusion: conv4_3, fc7 and the last extra to 256 channels each (then resized to 38).
    fusion = [(512, 256, 1, 38), (1024, 256, 1, 19), (256, 256, 1, 9)]
    pyramid = [(768, 512, 3, 38), (512, 512, 3, 19), (512, 256, 3, 10), (256, 256, 3, 5),
               (256, 256, 3, 3), (256, 256, 3, 1)]  # fmt: skip
    head = []
    for (_, channels, _, side), boxes in zip(pyramid, [6, 6, 6, 6, 4, 4], strict=True):
        head += [(channels, 4 * boxes, 3, side), (channels, 21 * boxes, 3, side)]
    convs = vgg + extras + fusion + pyramid + head
    summary = summarize(REPO_ROOT / "configs" / "fssd300_voc.yaml", [])
    assert summary["parameters"] == sum(i * o * k * k + o for i, o, k, _ in convs)
    assert summary["parameters"] == 34_131_424  # fssd.pytorch's count
    # A multiply-add counts as 2; only the convolutions have FLOPs worth counting.
    assert summary["gflops"] * 1e9 == pytest.approx(
        sum(2 * i * o * k * k * side**2 for i, o, k, side in convs), rel=1e-12
    )
    sides = [38, 19, 10, 5, 3, 1]
    assert summary["feature_maps"] == [[side, side] for side in sides]
    assert summary["num_priors"] == sum(
        side * side * boxes for side, boxes in zip(sides, [6, 6, 6, 6, 4, 4], strict=True)
    )


def test_too_small_input_is_reported():
    with pytest.raises(ValueError, match="input size 64 is too small"):
        build_model(load_config(None, ["model.image_size=64", "model.width_multiplier=0.125"]))
    with pytest.raises(ValueError, match=r"7 detection maps .* priors section describes 6"):
        build_model(
            load_config(
                REPO_ROOT / "configs" / "fssd512_voc.yaml",
                [
                    "priors.min_sizes=[1,2,3,4,5,6]",
                    "priors.max_sizes=null",
                    "priors.steps=null",
                    "priors.aspect_ratios=[[2],[2],[2],[2],[2],[2]]",
                    "model.width_multiplier=0.125",
                ],
            )
        )


def test_the_head_runs_in_float32_under_autocast():
    config = load_config(None, TINY_MODEL)
    torch.manual_seed(0)
    model = build_model(config).eval()
    images = torch.rand(2, 3, 96, 96) * 255
    with torch.no_grad():
        expected = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            maps = model.features(model.normalizer(images))
            loc, conf = model(images)
    assert {feature_map.dtype for feature_map in maps} == {torch.bfloat16}
    assert loc.dtype == conf.dtype == torch.float32
    # The head on bf16 maps: the outputs are close to float32's, not bit-equal.
    for got, want in zip((loc, conf), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0.05 * float(want.abs().max()))
