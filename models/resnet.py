"""ResNet trunks from torchvision, keeping torchvision's module names (weights load as is)."""

from __future__ import annotations

from collections.abc import Sequence

import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

RESNET_DEPTHS = (18, 34, 50, 101)
STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


def _stage_out_channels(stage: nn.Sequential) -> int:
    last_block = stage[-1]
    if isinstance(last_block, Bottleneck):
        return last_block.conv3.out_channels
    if isinstance(last_block, BasicBlock):
        return last_block.conv2.out_channels
    raise TypeError(f"unexpected ResNet block {type(last_block).__name__}")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet returning the outputs of the named stages.

    Stages after the last requested one are dropped. ``conv4_stride1`` makes ``layer3``
    (conv4_x) keep its input resolution, as NVIDIA's SSD300-ResNet50 does, so its map is
    38x38 at 300 pixels.

    Args:
        depth: 18, 34, 50 or 101.
        return_stages: names among ``layer1`` … ``layer4``, in order.
        conv4_stride1: set ``layer3``'s first block to stride 1.
    """

    def __init__(
        self,
        depth: int,
        *,
        return_stages: Sequence[str] = ("layer2", "layer3", "layer4"),
        conv4_stride1: bool = False,
    ) -> None:
        super().__init__()
        if depth not in RESNET_DEPTHS:
            raise ValueError(f"ResNet depth must be one of {RESNET_DEPTHS}, got {depth}")
        unknown = [name for name in return_stages if name not in STAGE_NAMES]
        if unknown or not return_stages:
            raise ValueError(
                f"return_stages must name stages among {STAGE_NAMES}, got {return_stages}"
            )
        resnet = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = (
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
        )
        last = max(STAGE_NAMES.index(name) for name in return_stages)
        self.stage_names = list(STAGE_NAMES[: last + 1])
        for name in self.stage_names:
            setattr(self, name, getattr(resnet, name))
        self.return_stages = list(return_stages)
        if conv4_stride1:
            first_block = self.layer3[0]
            for module in first_block.modules():
                if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
                    module.stride = (1, 1)

    @property
    def out_channels(self) -> list[int]:
        return [_stage_out_channels(getattr(self, name)) for name in self.return_stages]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.return_stages:
                outputs.append(x)
        return outputs
