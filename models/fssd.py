"""FSSD's neck: feature fusion of a few sources into one map, then a feature pyramid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from layers.blocks import ConvBNReLU
from models.ssd import ExtraLayers

# One pyramid layer: (out_channels, kernel_size, stride, padding).
PyramidSpec = tuple[int, int, int, int]


class FeatureFusion(nn.Module):
    """FSSD's fusion: a 1x1 conv per source, bilinear resize to the first source, concat.

    The first source is the largest (conv4_3 on VGG); every other transformed source is
    resized to its size with ``F.interpolate(mode="bilinear", align_corners=False)``
    after its ReLU, as the reference does.

    Args:
        in_channels: channels of each source.
        out_channels: channels of each transformed source; the fused map has their sum.
        batch_norm: BatchNorm in the 1x1 convs.
    """

    def __init__(
        self, in_channels: Sequence[int], out_channels: Sequence[int], *, batch_norm: bool = False
    ) -> None:
        super().__init__()
        if len(in_channels) != len(out_channels):
            raise ValueError(
                f"{len(in_channels)} sources but {len(out_channels)} output widths for fusion"
            )
        self.transforms = nn.ModuleList(
            ConvBNReLU(source, width, 1, batch_norm=batch_norm)
            for source, width in zip(in_channels, out_channels, strict=True)
        )

    @property
    def out_channels(self) -> int:
        return sum(transform.out_channels for transform in self.transforms)

    def forward(self, sources: Sequence[Tensor]) -> Tensor:
        size = sources[0].shape[-2:]
        fused = []
        for transform, source in zip(self.transforms, sources, strict=True):
            x = transform(source)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            fused.append(x)
        return torch.cat(fused, dim=1)


class FeaturePyramid(nn.Module):
    """A chain of convs on the fused map; every layer's output is a detection map.

    Args:
        in_channels: channels of the fused map.
        specs: one :data:`PyramidSpec` per layer.
        batch_norm: BatchNorm after every conv.
    """

    def __init__(
        self, in_channels: int, specs: Sequence[PyramidSpec], *, batch_norm: bool = False
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for out_channels, kernel_size, stride, padding in specs:
            self.layers.append(
                ConvBNReLU(
                    in_channels,
                    out_channels,
                    kernel_size,
                    stride=stride,
                    padding=padding,
                    batch_norm=batch_norm,
                )
            )
            in_channels = out_channels

    @property
    def out_channels(self) -> list[int]:
        return [layer.out_channels for layer in self.layers]

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = []
        for layer in self.layers:
            x = layer(x)
            maps.append(x)
        return maps


class FSSDFeatures(nn.Module):
    """FSSD's detection maps: fuse the backbone maps (plus the last extra block's output,
    if there are extras), then build the pyramid on the fused map.

    On VGG16 the sources are conv4_3, conv7 and the output of two extra blocks; on ResNet
    they are the last three stages and there are no extras.
    """

    def __init__(
        self,
        backbone: nn.Module,
        extras: ExtraLayers,
        fusion: FeatureFusion,
        pyramid: FeaturePyramid,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.extras = extras
        self.fusion = fusion
        self.pyramid = pyramid

    @property
    def out_channels(self) -> list[int]:
        return self.pyramid.out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        sources = list(self.backbone(x))
        if len(self.extras.blocks) > 0:
            sources.append(self.extras(sources[-1])[-1])
        return self.pyramid(self.fusion(sources))
