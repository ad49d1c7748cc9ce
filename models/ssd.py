"""SSD's extra layers and feature stack: backbone maps plus every extra block's output."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from layers.blocks import ConvBNReLU, L2Norm

# One extra block: (mid_channels, out_channels, kernel_size, stride, padding) of its
# 1x1 reduction followed by its spatial conv.
ExtraSpec = tuple[int, int, int, int, int]


class ExtraLayers(nn.Module):
    """Blocks that shrink the last backbone map further; each block's output is a map.

    A block is a 1x1 conv to ``mid_channels`` then a ``kernel_size`` conv to
    ``out_channels``. With ``depthwise`` (SSDLite) the spatial conv is depthwise and a
    1x1 conv follows it, all with ReLU6.

    Args:
        in_channels: channels of the map the first block reads.
        specs: one :data:`ExtraSpec` per block.
        batch_norm: BatchNorm after every conv.
        depthwise: depthwise-separable blocks (forces BatchNorm, as SSDLite does).
    """

    def __init__(
        self,
        in_channels: int,
        specs: Sequence[ExtraSpec],
        *,
        batch_norm: bool = False,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for mid_channels, out_channels, kernel_size, stride, padding in specs:
            parts: OrderedDict[str, nn.Module] = OrderedDict()
            if depthwise:
                parts["reduce"] = ConvBNReLU(
                    in_channels, mid_channels, 1, batch_norm=True, relu6=True
                )
                parts["depthwise"] = ConvBNReLU(
                    mid_channels,
                    mid_channels,
                    kernel_size,
                    stride=stride,
                    padding=padding,
                    groups=mid_channels,
                    batch_norm=True,
                    relu6=True,
                )
                parts["pointwise"] = ConvBNReLU(
                    mid_channels, out_channels, 1, batch_norm=True, relu6=True
                )
            else:
                parts["reduce"] = ConvBNReLU(in_channels, mid_channels, 1, batch_norm=batch_norm)
                parts["conv"] = ConvBNReLU(
                    mid_channels,
                    out_channels,
                    kernel_size,
                    stride=stride,
                    padding=padding,
                    batch_norm=batch_norm,
                )
            self.blocks.append(nn.Sequential(parts))
            in_channels = out_channels

    @property
    def out_channels(self) -> list[int]:
        return [block[-1].out_channels for block in self.blocks]

    def forward(self, x: Tensor) -> list[Tensor]:
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs


class SSDFeatures(nn.Module):
    """SSD's feature maps: the backbone's maps, then every extra block's output.

    Args:
        backbone: returns a list of maps and has ``out_channels``.
        extras: applied to the backbone's last map.
        l2norm_first: rescale the first map with :class:`L2Norm` (SSD on VGG's conv4_3).
    """

    def __init__(self, backbone: nn.Module, extras: ExtraLayers, *, l2norm_first: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.extras = extras
        self.l2norm = L2Norm(backbone.out_channels[0]) if l2norm_first else None

    @property
    def out_channels(self) -> list[int]:
        return list(self.backbone.out_channels) + self.extras.out_channels

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = list(self.backbone(x))
        extra_maps = self.extras(maps[-1])
        if self.l2norm is not None:
            maps[0] = self.l2norm(maps[0])
        return maps + extra_maps
