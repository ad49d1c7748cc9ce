"""Folding BatchNorm into the convolution before it, for inference.

``BN(conv(x)) = conv'(x)`` with ``w' = w * gamma / sigma`` (per output channel) and
``b' = beta + (b - mean) * gamma / sigma``, ``sigma = sqrt(running_var + eps)``. The
folded model computes the same outputs in eval mode with one layer fewer per pair.
"""

from __future__ import annotations

import torch
from torch import nn

from layers.blocks import ConvBNReLU


def fused_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv with a bias that equals ``bn(conv(x))`` in eval mode."""
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [C_out]
        fused.weight.copy_(conv.weight * scale[:, None, None, None])
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_(bn.bias + (bias - bn.running_mean) * scale)
    return fused


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every conv -> BatchNorm pair of ``model`` in place; returns how many.

    Pairs are found by structure, not by name lists: this project's ``ConvBNReLU``
    (``conv``/``bn``), torchvision's ResNet blocks and stem (``convN``/``bnN``) and any
    ``nn.Sequential`` where a BatchNorm directly follows a conv (ResNet downsample,
    MobileNetV2 layers). The BatchNorm becomes ``nn.Identity``.
    """
    if model.training:
        raise RuntimeError("fold BatchNorm in eval mode (call model.eval() first)")
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, ConvBNReLU) and isinstance(module.bn, nn.BatchNorm2d):
            module.conv = fused_conv(module.conv, module.bn)
            module.bn = nn.Identity()
            folded += 1
            continue
        if isinstance(module, nn.Sequential):
            children = list(module)
            for index in range(len(children) - 1):
                conv, bn = children[index], children[index + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module[index] = fused_conv(conv, bn)
                    module[index + 1] = nn.Identity()
                    folded += 1
            continue
        for name, child in list(module.named_children()):
            if not (name.startswith("conv") and isinstance(child, nn.Conv2d)):
                continue
            bn_name = "bn" + name.removeprefix("conv")
            bn = getattr(module, bn_name, None)
            if isinstance(bn, nn.BatchNorm2d):
                setattr(module, name, fused_conv(child, bn))
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return folded
