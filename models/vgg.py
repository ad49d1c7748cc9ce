"""VGG16 trunk as SSD uses it: pool3 with ceil mode, pool5 3x3/1, dilated conv6, conv7."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from layers.blocks import ConvBNReLU

# VGG16 configuration "D": convs per stage and their widths.
VGG16_STAGES: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
FC_WIDTH = 1024  # conv6/conv7: SSD's reduced fc6/fc7


def scale_width(channels: int, width_multiplier: float) -> int:
    """Channels times the multiplier, at least 1."""
    return max(1, round(channels * width_multiplier))


class VGG16Backbone(nn.Module):
    """VGG16 up to conv7 returning ``[conv4_3, conv7]`` (after their ReLUs).

    ``conv4_3`` has stride 8 and ``conv7`` stride 16; at 300 pixels they are 38x38 and
    19x19. The layers are named after VGG (``conv1_1`` … ``conv5_3``, ``conv6``,
    ``conv7``) and split into ``to_conv4_3`` and ``to_conv7`` by name.

    Args:
        batch_norm: BatchNorm after every conv (the VGG16-BN variant).
        width_multiplier: scales every width (for tiny test and quick-start models).
    """

    def __init__(self, *, batch_norm: bool = False, width_multiplier: float = 1.0) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        in_channels = 3
        for stage, (num_convs, width) in enumerate(VGG16_STAGES, start=1):
            if stage > 1:
                # pool3 rounds up so 75x75 becomes 38x38 at 300 pixels, as in SSD.
                layers[f"pool{stage - 1}"] = nn.MaxPool2d(2, stride=2, ceil_mode=stage == 4)
            out_channels = scale_width(width, width_multiplier)
            for index in range(1, num_convs + 1):
                layers[f"conv{stage}_{index}"] = ConvBNReLU(
                    in_channels, out_channels, 3, batch_norm=batch_norm
                )
                in_channels = out_channels
        layers["pool5"] = nn.MaxPool2d(3, stride=1, padding=1)
        fc_width = scale_width(FC_WIDTH, width_multiplier)
        layers["conv6"] = ConvBNReLU(in_channels, fc_width, 3, dilation=6, batch_norm=batch_norm)
        layers["conv7"] = ConvBNReLU(fc_width, fc_width, 1, batch_norm=batch_norm)

        names = list(layers)
        split = names.index("conv4_3") + 1
        self.to_conv4_3 = nn.Sequential(OrderedDict((name, layers[name]) for name in names[:split]))
        self.to_conv7 = nn.Sequential(OrderedDict((name, layers[name]) for name in names[split:]))

    @property
    def out_channels(self) -> list[int]:
        return [self.to_conv4_3.conv4_3.out_channels, self.to_conv7.conv7.out_channels]

    def forward(self, x: Tensor) -> list[Tensor]:
        conv4_3 = self.to_conv4_3(x)
        conv7 = self.to_conv7(conv4_3)
        return [conv4_3, conv7]
