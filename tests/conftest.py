from pathlib import Path

import pytest
import torch

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
