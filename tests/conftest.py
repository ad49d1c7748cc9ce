import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only shared data beside the checkout (CI always has it)."""
    if not SHARED_DIR.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DIR}; it must sit beside the checkout")
    return SHARED_DIR


def random_priors(count: int, generator: torch.Generator) -> torch.Tensor:
    """``[count, 4]`` cxcywh priors with centres in [0, 1] and sizes in [0.05, 0.35]."""
    centres = torch.rand(count, 2, generator=generator)
    sizes = 0.05 + 0.3 * torch.rand(count, 2, generator=generator)
    return torch.cat([centres, sizes], dim=1)


# A tiny FSSD (1/8 width, 96 px, maps 12 6 3 1) on a tiny shapes dataset: a few
# iterations take well under a second on a CPU.
TINY_MODEL = [
    "model.image_size=96",
    "model.width_multiplier=0.125",
    "model.batch_norm=true",
    "model.pixel_format=rgb_imagenet",
    "model.num_classes=6",
    "model.pyramid=[[512, 3, 1, 1], [512, 3, 2, 1], [256, 3, 2, 1], [256, 3, 1, 0]]",
    "priors.min_sizes=[10, 24, 48, 72]",
    "priors.max_sizes=[24, 48, 72, 96]",
    "priors.aspect_ratios=[[2], [2], [2], [2]]",
    "priors.steps=null",
]


@pytest.fixture(scope="session")
def tiny_shapes_root(tmp_path_factory) -> Path:
    from data.shapes import ensure_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    return ensure_shapes_dataset(root, num_train=16, num_val=6, image_size=96, seed=0)


def tiny_train_overrides(root: Path, output_dir: Path) -> list[str]:
    """Overrides for a 3-epoch run of 2 iterations each, evaluated every epoch."""
    return [
        *TINY_MODEL,
        f"data.root={root}",
        "data.shapes_train_images=16",
        "data.shapes_val_images=6",
        "data.shapes_image_size=96",
        "data.num_workers=0",
        f"train.output_dir={output_dir}",
        "train.batch_size=8",
        "train.epochs=3",
        "train.log_interval=1",
        "train.eval_interval=1",
        "train.visualize_images=2",
        "solver.lr=0.01",
        "solver.warmup_iterations=4",
        "solver.warmup_factor=0.1",
    ]


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """BN statistics and affine parameters far from their identity initialisation."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            size = module.num_features
            with torch.no_grad():
                module.running_mean.copy_(torch.randn(size, generator=generator))
                module.running_var.copy_(torch.rand(size, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(size, generator=generator))
                module.bias.copy_(torch.randn(size, generator=generator))


def postprocess_settings(**overrides):
    """The config's post-processing defaults (``PostProcessConfig``, the priors'
    variances), with ``overrides``: what the layers take as keyword arguments."""
    from utils.config import PostProcessConfig, PriorConfig

    defaults = dataclasses.asdict(PostProcessConfig())
    return {**defaults, "variances": PriorConfig().variances, **overrides}


def loss_settings(**overrides):
    """The config's loss defaults (``LossConfig``, the priors' variances), with ``overrides``."""
    from utils.config import LossConfig, PriorConfig

    return {**dataclasses.asdict(LossConfig()), "variances": PriorConfig().variances, **overrides}
