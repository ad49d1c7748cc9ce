"""Building blocks shared by every backbone, fusion module, pyramid and head."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvBNReLU(nn.Module):
    """Conv2d, optional BatchNorm, optional ReLU: the one conv block of the project.

    The parts are named ``conv``, ``bn`` and ``relu`` so that pruning and BN folding
    can find them; a missing part is ``nn.Identity``. Without BatchNorm the conv has
    a bias, with it the BN shift replaces the bias.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size.
        stride: convolution stride.
        padding: zero padding; ``None`` keeps the size at stride 1 (``dilation * (k // 2)``).
        dilation: kernel dilation.
        groups: convolution groups (``in_channels`` for a depthwise conv).
        batch_norm: add BatchNorm after the conv.
        relu: add a ReLU at the end.
        relu6: use ReLU6 (MobileNet) instead of ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        batch_norm: bool = False,
        relu: bool = True,
        relu6: bool = False,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size // 2)
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=not batch_norm,
        )
        self.bn: nn.Module = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        self.relu: nn.Module
        if not relu:
            self.relu = nn.Identity()
        elif relu6:
            self.relu = nn.ReLU6(inplace=True)
        else:
            self.relu = nn.ReLU(inplace=True)

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class L2Norm(nn.Module):
    """SSD's rescaling of conv4_3: L2-normalise over channels, then a learned scale.

    Args:
        channels: number of input channels (one learned scale each).
        initial_scale: starting value of every scale (SSD: 20).
        eps: added to the norm so all-zero positions stay finite.
    """

    def __init__(self, channels: int, initial_scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(initial_scale)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, C, H, W]
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps
        return x / norm * self.weight[None, :, None, None]
