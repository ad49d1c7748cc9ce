"""EfficientNet-B3 trunk for SSD and FSSD, keeping torchvision's module names (its
ImageNet weights load as they are)."""

from __future__ import annotations

import torchvision
from torch import Tensor, nn


class EfficientNetBackbone(nn.Module):
    """torchvision's EfficientNet-B3 ``features`` returning the last map of each of
    strides 8, 16 and 32: the outputs of stages 3 and 5 (48 and 136 channels, on the
    residual stream) and of the final 1x1 conv (1536 channels); 38x38, 19x19 and 10x10
    at 300 pixels. The stages are found by tracking strides, not by index.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = torchvision.models.efficientnet_b3(weights=None).features
        stride, last_of_stride = 1, {}
        for index, stage in enumerate(self.features):
            stride *= _stage_stride(stage)
            last_of_stride[stride] = index
        missing = [value for value in (8, 16, 32) if value not in last_of_stride]
        if missing:
            raise RuntimeError(f"EfficientNet has no stage at strides {missing}")
        self.tap_indices = [last_of_stride[value] for value in (8, 16, 32)]

    @property
    def out_channels(self) -> list[int]:
        return [_stage_out_channels(self.features[index]) for index in self.tap_indices]

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for index, stage in enumerate(self.features[: self.tap_indices[-1] + 1]):
            x = stage(x)
            if index in self.tap_indices:
                outputs.append(x)
        return outputs


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [item for item in module.modules() if isinstance(item, nn.Conv2d)]


def _stage_stride(stage: nn.Module) -> int:
    """The stride of a stage: the product of its convs' strides (the squeeze-excitation
    convs are 1x1 with stride 1)."""
    stride = 1
    for conv in _convs(stage):
        stride *= conv.stride[0]
    return stride


def _stage_out_channels(stage: nn.Module) -> int:
    """The output width of a stage: its last conv's (an MBConv's projection comes after
    its squeeze-excitation convs)."""
    return _convs(stage)[-1].out_channels
