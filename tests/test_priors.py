import math

import pytest
import torch

from layers.priors import PriorGenerator
from tests.conftest import REPO_ROOT
from utils.config import load_config

# Feature-map sizes of the reference networks (measured by the models once they exist).
REFERENCE_SETTINGS = {
    "voc_300": ("fssd300_voc.yaml", 300, [38, 19, 10, 5, 3, 1]),
    "voc_512": ("fssd512_voc.yaml", 512, [64, 32, 16, 8, 4, 2, 1]),
    "coco_300": ("fssd300_coco.yaml", 300, [38, 19, 10, 5, 3, 1]),
    "coco_512": ("fssd512_coco.yaml", 512, [64, 32, 16, 8, 4, 2, 1]),
}


@pytest.mark.parametrize("setting", sorted(REFERENCE_SETTINGS))
def test_configs_reproduce_reference_priors_exactly(shared_dir, setting):
    reference = torch.load(shared_dir / "reference" / "fssd_pytorch_priors.pt", weights_only=True)[
        f"{setting}_priors_cxcywh"
    ]
    config_name, image_size, feature_maps = REFERENCE_SETTINGS[setting]
    config = load_config(REPO_ROOT / "configs" / config_name)
    assert config.model.image_size == image_size
    generator = PriorGenerator.from_config(config.priors)
    priors = generator(image_size, feature_maps)
    assert priors.dtype == torch.float32
    assert priors.shape == reference.shape
    assert torch.equal(priors, reference)


def test_prior_counts_match_reference_networks():
    config = load_config(REPO_ROOT / "configs" / "fssd300_voc.yaml")
    generator = PriorGenerator.from_config(config.priors)
    assert generator.num_priors_per_location() == [6, 6, 6, 6, 4, 4]
    assert generator.num_priors([38, 19, 10, 5, 3, 1]) == 11620
    config512 = load_config(REPO_ROOT / "configs" / "fssd512_voc.yaml")
    generator512 = PriorGenerator.from_config(config512.priors)
    assert generator512.num_priors([64, 32, 16, 8, 4, 2, 1]) == 32756


def test_hand_computed_priors_and_order():
    generator = PriorGenerator(
        min_sizes=[20], max_sizes=[40], aspect_ratios=[[2]], steps=[50], clip=True
    )
    priors = generator(100, [2])
    assert priors.shape == (2 * 2 * 4, 4)
    root2 = math.sqrt(2)
    second = math.sqrt(0.2 * 0.4)
    # Location (y=0, x=0): centre (0.25, 0.25); the four boxes in the documented order.
    expected_first_location = torch.tensor(
        [
            [0.25, 0.25, 0.2, 0.2],
            [0.25, 0.25, second, second],
            [0.25, 0.25, 0.2 * root2, 0.2 / root2],
            [0.25, 0.25, 0.2 / root2, 0.2 * root2],
        ]
    )
    torch.testing.assert_close(priors[:4], expected_first_location, rtol=0, atol=1e-7)
    # Row-major over y then x: the next location is (y=0, x=1), then (y=1, x=0).
    torch.testing.assert_close(priors[4:8, :2], torch.tensor([[0.75, 0.25]] * 4))
    torch.testing.assert_close(priors[8:12, :2], torch.tensor([[0.25, 0.75]] * 4))
    torch.testing.assert_close(priors[12:16, :2], torch.tensor([[0.75, 0.75]] * 4))


def test_configured_step_moves_centres_off_the_grid():
    # SSD300's last-but-one map: 3x3 cells with step 100 -> centres at 1/6, 1/2, 5/6.
    generator = PriorGenerator(
        min_sizes=[213], max_sizes=None, aspect_ratios=[[]], steps=[100], clip=True
    )
    centres_x = generator(300, [3])[:3, 0]
    torch.testing.assert_close(centres_x, torch.tensor([1 / 6, 0.5, 5 / 6]))
    # Without steps the centres sit on the cell grid of the map itself.
    generator = PriorGenerator(
        min_sizes=[10], max_sizes=None, aspect_ratios=[[]], steps=None, clip=True
    )
    centres_x = generator(300, [4])[:4, 0]
    torch.testing.assert_close(centres_x, torch.tensor([0.125, 0.375, 0.625, 0.875]))


def test_non_square_image_keeps_square_priors_in_pixels():
    generator = PriorGenerator(
        min_sizes=[50], max_sizes=None, aspect_ratios=[[]], steps=None, clip=True
    )
    priors = generator((100, 200), [(2, 4)])
    assert priors.shape == (8, 4)
    # A 50-pixel square is 0.25 of the width and 0.5 of the height.
    torch.testing.assert_close(priors[0], torch.tensor([0.125, 0.25, 0.25, 0.5]))
    torch.testing.assert_close(priors[4, :2], torch.tensor([0.125, 0.75]))


def test_clip_bounds_every_component():
    generator = PriorGenerator(
        min_sizes=[300], max_sizes=[400], aspect_ratios=[[3]], clip=True, steps=None
    )
    clipped = generator(300, [1])
    assert clipped.max().item() == 1.0 and clipped.min().item() >= 0.0
    unclipped = PriorGenerator(
        min_sizes=[300], max_sizes=[400], aspect_ratios=[[3]], clip=False, steps=None
    )(300, [1])
    assert unclipped[1, 2].item() == pytest.approx(math.sqrt(400 / 300))


def test_settings_are_validated():
    with pytest.raises(ValueError, match="max_sizes has 1 entries but min_sizes has 2"):
        PriorGenerator(
            min_sizes=[10, 20], max_sizes=[30], aspect_ratios=[[2], [2]], steps=None, clip=True
        )
    with pytest.raises(ValueError, match="smaller than min_size"):
        PriorGenerator(min_sizes=[30], max_sizes=[10], aspect_ratios=[[2]], steps=None, clip=True)
    generator = PriorGenerator(
        min_sizes=[10], max_sizes=None, aspect_ratios=[[2]], steps=None, clip=True
    )
    with pytest.raises(ValueError, match="got 2 feature maps"):
        generator(100, [10, 5])
