"""The one place that reads the model-related config sections and builds the parts."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from torch import Tensor, nn

from layers.multibox_loss import MultiBoxLoss
from layers.postprocess import PostProcessor
from layers.priors import PriorGenerator
from models.counting import meta_forward
from models.detector import InputNormalizer, SingleShotDetector
from models.efficientnet import EfficientNetBackbone
from models.fssd import FeatureFusion, FeaturePyramid, FSSDFeatures
from models.heads import MultiBoxHead
from models.mobilenet import MobileNetV2Backbone
from models.pruning import apply_channel_widths, resolve_channel_widths
from models.resnet import ResNetBackbone
from models.ssd import ExtraLayers, SSDFeatures
from models.vgg import VGG16Backbone, scale_width
from models.weights import (
    PIXEL_FORMAT_OF_SOURCE,
    WeightsError,
    load_backbone_weights,
    load_detector_weights,
)
from utils.config import Config, ModelConfig

logger = logging.getLogger(__name__)


def build_loss(config: Config, priors_cxcywh: Tensor) -> MultiBoxLoss:
    return MultiBoxLoss(
        priors_cxcywh=priors_cxcywh,
        iou_threshold=config.loss.iou_threshold,
        neg_pos_ratio=config.loss.neg_pos_ratio,
        min_negatives=config.loss.min_negatives,
        loc_weight=config.loss.loc_weight,
        variances=config.priors.variances,
        box_loss=config.loss.box_loss,
    )


def build_postprocessor(config: Config, priors_cxcywh: Tensor) -> PostProcessor:
    return PostProcessor(
        priors_cxcywh=priors_cxcywh,
        variances=config.priors.variances,
        score_threshold=config.postprocess.score_threshold,
        pre_nms_topk=config.postprocess.pre_nms_topk,
        nms_iou_threshold=config.postprocess.nms_iou_threshold,
        max_detections=config.postprocess.max_detections,
        nms=config.postprocess.nms,
        soft_nms_sigma=config.postprocess.soft_nms_sigma,
    )


def build_backbone(model: ModelConfig) -> nn.Module:
    """The trunk named by ``model.backbone``, returning the maps the architecture uses."""
    if model.backbone == "vgg16":
        return VGG16Backbone(batch_norm=model.batch_norm, width_multiplier=model.width_multiplier)
    if model.backbone == "mobilenet_v2":
        return MobileNetV2Backbone(width_multiplier=model.width_multiplier)
    if model.backbone == "efficientnet_b3":
        if model.width_multiplier != 1.0:
            logger.info(
                "EfficientNet keeps torchvision's widths; width_multiplier scales the neck only"
            )
        return EfficientNetBackbone()
    depth = int(model.backbone.removeprefix("resnet"))
    if model.width_multiplier != 1.0:
        logger.info("ResNet keeps torchvision's widths; width_multiplier scales the neck only")
    if model.architecture == "ssd":
        # NVIDIA's SSD300-ResNet50: cut after conv4_x (layer3), kept at stride 8.
        return ResNetBackbone(depth, return_stages=["layer3"], conv4_stride1=True)
    return ResNetBackbone(depth, return_stages=["layer2", "layer3", "layer4"])


def build_features(model: ModelConfig, backbone: nn.Module) -> nn.Module:
    """The feature stack (FSSD fusion + pyramid, or SSD extras) on top of ``backbone``."""

    def width(channels: int) -> int:
        return scale_width(channels, model.width_multiplier)

    extra_specs = [
        (width(mid), width(out), kernel, stride, padding)
        for mid, out, kernel, stride, padding in model.extras
    ]
    if model.architecture == "fssd":
        extras = ExtraLayers(backbone.out_channels[-1], extra_specs, batch_norm=model.batch_norm)
        sources = list(backbone.out_channels) + extras.out_channels[-1:]
        fusion = FeatureFusion(
            sources, [width(model.fusion_channels)] * len(sources), batch_norm=model.batch_norm
        )
        pyramid = FeaturePyramid(
            fusion.out_channels,
            [
                (width(out), kernel, stride, padding)
                for out, kernel, stride, padding in model.pyramid
            ],
            batch_norm=model.batch_norm,
        )
        return FSSDFeatures(backbone, extras, fusion, pyramid)
    depthwise = model.architecture == "ssdlite"
    extras = ExtraLayers(
        backbone.out_channels[-1], extra_specs, batch_norm=model.batch_norm, depthwise=depthwise
    )
    return SSDFeatures(backbone, extras, l2norm_first=model.backbone == "vgg16")


class InputSizeError(ValueError):
    """The input is too small for the network's layers: a map would vanish."""


def measure_feature_map_sizes(features: nn.Module, image_size: int) -> list[tuple[int, int]]:
    """``(height, width)`` of every detection map, from a shape-only forward pass.

    Measured by :func:`meta_forward`: no memory, no compute.

    Raises:
        InputSizeError: the input is too small for the layers (a map would vanish).
    """
    try:
        maps = meta_forward(features, image_size)
    except RuntimeError as error:
        raise InputSizeError(
            f"input size {image_size} is too small for this network's layers: {error}"
        ) from error
    sizes = [(int(feature.shape[-2]), int(feature.shape[-1])) for feature in maps]
    if any(height < 1 or width < 1 for height, width in sizes):
        raise InputSizeError(f"input size {image_size} gives empty feature maps: {sizes}")
    return sizes


def feature_map_sizes(model_config: ModelConfig) -> list[tuple[int, int]]:
    """``(height, width)`` of the detection maps the model section gives at its input
    size, without priors (no weights loaded)."""
    features = build_features(model_config, build_backbone(model_config))
    return measure_feature_map_sizes(features, model_config.image_size)


def build_model(
    config: Config,
    *,
    load_weights: bool = True,
    channel_widths: Mapping[str, int] | None = None,
) -> SingleShotDetector:
    """The detector described by ``config.model`` with priors from ``config.priors``.

    Feature-map sizes are measured, the priors generated for them, and the head's
    output count checked against the prior count. ``channel_widths`` (from a pruned
    checkpoint) shrinks the channel groups they name. With ``load_weights``, the
    configured backbone or detector weights are loaded (``model.weights`` wins over
    ``model.backbone_weights``); a pruned model takes its weights from its checkpoint.
    """
    model_config = config.model
    backbone = build_backbone(model_config)
    features = build_features(model_config, backbone)
    map_sizes = measure_feature_map_sizes(features, model_config.image_size)
    generator = PriorGenerator.from_config(config.priors)
    if generator.num_feature_maps != len(map_sizes):
        raise ValueError(
            f"the network has {len(map_sizes)} detection maps {map_sizes} but the priors "
            f"section describes {generator.num_feature_maps}"
        )
    priors = generator(model_config.image_size, map_sizes)
    head = MultiBoxHead(
        features.out_channels,
        generator.num_priors_per_location(),
        model_config.num_classes,
        depthwise=model_config.architecture == "ssdlite",
    )
    model = SingleShotDetector(
        normalizer=InputNormalizer(model_config.pixel_format),
        features=features,
        head=head,
        priors_cxcywh=priors,
    )
    num_outputs = count_head_outputs(model, model_config.image_size)
    if num_outputs != priors.shape[0]:
        raise AssertionError(f"head predicts {num_outputs} boxes for {priors.shape[0]} priors")
    channel_widths = resolve_channel_widths(channel_widths, model_config.widths_file)
    if channel_widths:
        apply_channel_widths(model, channel_widths)
        if load_weights and (model_config.weights or model_config.backbone_weights):
            logger.info("narrowed model: pretrained weights are not loaded (widths differ)")
    elif load_weights:
        _load_configured_weights(model, model_config)
    return model


def count_head_outputs(model: SingleShotDetector, image_size: int) -> int:
    loc, _ = meta_forward(model, image_size)
    return int(loc.shape[1])


def _load_configured_weights(model: SingleShotDetector, model_config: ModelConfig) -> None:
    if model_config.weights:
        source_format = load_detector_weights(model, model_config.weights)
        _check_pixel_format(source_format, model_config, model_config.weights)
    elif model_config.backbone_weights:
        source_format = load_backbone_weights(
            model.features.backbone,
            model_config.backbone,
            model_config.backbone_weights,
            batch_norm=model_config.batch_norm,
        )
        _check_pixel_format(source_format, model_config, model_config.backbone_weights)


def _check_pixel_format(source_format: str, model_config: ModelConfig, origin: str) -> None:
    expected = PIXEL_FORMAT_OF_SOURCE.get(source_format)
    if expected is not None and expected != model_config.pixel_format:
        raise WeightsError(
            f"{origin}: {source_format} weights expect {expected} input but "
            f"model.pixel_format is {model_config.pixel_format}; set "
            f"model.pixel_format={expected}"
        )
