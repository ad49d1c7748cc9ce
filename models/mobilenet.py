"""MobileNetV2 trunk for SSDLite, keeping torchvision's module names (weights load as is)."""

from __future__ import annotations

import torchvision
from torch import Tensor, nn
from torchvision.models.mobilenetv2 import InvertedResidual


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 returning two maps, as SSDLite attaches to it.

    The first map is the expansion (first 1x1 conv) of the block that takes stride 16 to
    32, the second the final 1x1 conv's output: 576 and 1280 channels, 20x20 and 10x10 at
    320 pixels. The block is found by tracking strides, not by index.

    Args:
        width_multiplier: torchvision's ``width_mult`` (1.0 for ImageNet weights).
    """

    def __init__(self, *, width_multiplier: float = 1.0) -> None:
        super().__init__()
        self.features = torchvision.models.mobilenet_v2(
            weights=None, width_mult=width_multiplier
        ).features
        stride = 1
        self.tap_index = -1
        for index, block in enumerate(self.features):
            block_stride = (
                block.stride if isinstance(block, InvertedResidual) else _stem_stride(block)
            )
            if isinstance(block, InvertedResidual) and block_stride == 2 and stride == 16:
                self.tap_index = index
                break
            stride *= block_stride
        if self.tap_index < 0:
            raise RuntimeError("MobileNetV2 has no block going from stride 16 to 32")

    @property
    def out_channels(self) -> list[int]:
        expansion = self.features[self.tap_index].conv[0]
        return [expansion.out_channels, self.features[-1].out_channels]

    def forward(self, x: Tensor) -> list[Tensor]:
        for block in self.features[: self.tap_index]:
            x = block(x)
        tapped_block = self.features[self.tap_index]
        expansion = tapped_block.conv[0](x)
        x = tapped_block.conv[1:](expansion)  # stride-2 block: no residual to add
        for block in self.features[self.tap_index + 1 :]:
            x = block(x)
        return [expansion, x]


def _stem_stride(block: nn.Module) -> int:
    convs = [module for module in block.modules() if isinstance(module, nn.Conv2d)]
    return convs[0].stride[0] if convs else 1
