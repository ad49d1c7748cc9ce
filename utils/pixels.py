"""Pixel constants of the input formats pretrained weights expect, defined once.

Images enter the detector as RGB 0..255; ``models.detector.InputNormalizer`` turns them
into what the weights were trained on, and the augmentation fills zoomed-out canvases
with the same mean.
"""

from __future__ import annotations

# Caffe VGG / fssd.pytorch weights: BGR pixels in 0..255 minus this BGR mean.
CAFFE_BGR_MEAN = (104.0, 117.0, 123.0)
# torchvision weights: RGB in 0..1, standardised with the ImageNet mean and std.
IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)

# Fill of zoomed-out canvases (SSD's "mean fill"): the Caffe mean as RGB uint8.
MEAN_FILL_RGB = tuple(int(value) for value in reversed(CAFFE_BGR_MEAN))
