"""Multibox head: per feature map, a conv predicting box offsets and one for class logits."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from layers.blocks import ConvBNReLU


def _predictor(in_channels: int, out_channels: int, depthwise: bool) -> nn.Module:
    if not depthwise:
        return nn.Conv2d(in_channels, out_channels, 3, padding=1)
    # SSDLite: 3x3 depthwise conv with BN and ReLU6, then a 1x1 conv.
    return nn.Sequential(
        ConvBNReLU(in_channels, in_channels, 3, groups=in_channels, batch_norm=True, relu6=True),
        nn.Conv2d(in_channels, out_channels, 1),
    )


class MultiBoxHead(nn.Module):
    """Offsets and logits for every prior, in prior order.

    Args:
        in_channels: channels of each feature map.
        num_priors_per_location: boxes per location of each map.
        num_classes: classes including background.
        depthwise: depthwise-separable predictors (SSDLite).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_priors_per_location: Sequence[int],
        num_classes: int,
        *,
        depthwise: bool = False,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(num_priors_per_location):
            raise ValueError(
                f"{len(in_channels)} feature maps but prior settings for "
                f"{len(num_priors_per_location)}"
            )
        self.num_classes = num_classes
        self.loc = nn.ModuleList(
            _predictor(channels, count * 4, depthwise)
            for channels, count in zip(in_channels, num_priors_per_location, strict=True)
        )
        self.conf = nn.ModuleList(
            _predictor(channels, count * num_classes, depthwise)
            for channels, count in zip(in_channels, num_priors_per_location, strict=True)
        )

    def forward(self, maps: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """``maps``: per feature map ``[B, C_k, H_k, W_k]``.

        Returns ``loc`` ``[B, P, 4]`` and ``conf`` ``[B, P, num_classes]``, locations
        row-major per map (y then x), then the boxes of one location.
        """
        batch_size = maps[0].shape[0]
        locs, confs = [], []
        for feature, loc_layer, conf_layer in zip(maps, self.loc, self.conf, strict=True):
            # [B, A*4, H, W] -> [B, H, W, A*4] -> [B, H*W*A, 4]
            locs.append(loc_layer(feature).permute(0, 2, 3, 1).reshape(batch_size, -1, 4))
            confs.append(
                conf_layer(feature).permute(0, 2, 3, 1).reshape(batch_size, -1, self.num_classes)
            )
        return torch.cat(locs, dim=1), torch.cat(confs, dim=1)
