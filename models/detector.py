"""The single-shot detector: input normalisation, feature maps, multibox head, priors."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from models.heads import MultiBoxHead
from utils.pixels import CAFFE_BGR_MEAN, IMAGENET_RGB_MEAN, IMAGENET_RGB_STD

PixelFormat = Literal["bgr_caffe", "rgb_imagenet"]


class InputNormalizer(nn.Module):
    """RGB pixels in 0..255 (``[B, 3, H, W]``, any float or uint8) to what the weights expect.

    Args:
        pixel_format: ``bgr_caffe`` flips to BGR and subtracts ``CAFFE_BGR_MEAN``;
            ``rgb_imagenet`` scales to 0..1 and standardises with the ImageNet mean/std.
    """

    def __init__(self, pixel_format: PixelFormat) -> None:
        super().__init__()
        if pixel_format == "bgr_caffe":
            mean, scale, flip = torch.tensor(CAFFE_BGR_MEAN), torch.ones(3), True
        elif pixel_format == "rgb_imagenet":
            mean = torch.tensor(IMAGENET_RGB_MEAN) * 255.0
            scale = 1.0 / (torch.tensor(IMAGENET_RGB_STD) * 255.0)
            flip = False
        else:
            raise ValueError(f"unknown pixel format {pixel_format!r}")
        self.pixel_format = pixel_format
        self.flip_to_bgr = flip
        self.register_buffer("mean", mean[None, :, None, None], persistent=False)
        self.register_buffer("scale", scale[None, :, None, None], persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        if not images.is_floating_point():
            images = images.float()
        if self.flip_to_bgr:
            images = images.flip(1)
        return (images - self.mean) * self.scale


class SingleShotDetector(nn.Module):
    """SSD or FSSD: any feature stack plus a multibox head, with its priors.

    Args:
        normalizer: turns RGB 0..255 input into the network's input.
        features: returns the list of detection maps.
        head: predicts offsets and logits on those maps.
        priors_cxcywh: ``[P, 4]`` priors in head-output order (a buffer, not saved).
    """

    def __init__(
        self,
        *,
        normalizer: InputNormalizer,
        features: nn.Module,
        head: MultiBoxHead,
        priors_cxcywh: Tensor,
    ) -> None:
        super().__init__()
        self.normalizer = normalizer
        self.features = features
        self.head = head
        self.register_buffer("priors_cxcywh", priors_cxcywh, persistent=False)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images`` ``[B, 3, H, W]`` RGB 0..255 -> ``loc`` ``[B, P, 4]``, ``conf``
        ``[B, P, C]``."""
        return self.forward_normalized(self.normalizer(images))

    def forward_normalized(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The network on already-normalised input (what the reference models take).

        Under autocast the head runs in float32: its offsets and logits are what the
        loss and the post-processing read, and bf16's 8-bit mantissa there cost the
        quick start 0.01 mAP (the head is 3-7 % of the FLOPs)."""
        maps = self.features(x)
        if x.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self.head([feature_map.float() for feature_map in maps])
        return self.head(maps)
