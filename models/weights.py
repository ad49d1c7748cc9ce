"""Pretrained weights: finding them offline, converting other formats, loading them.

Sources understood:

- torchvision ImageNet weights (VGG16, VGG16-BN, ResNet, MobileNetV2), from a local file
  or the torch hub cache. VGG16's fc6/fc7 are reduced to SSD's dilated conv6/conv7 by
  subsampling (fc6 ``[4096, 512*7*7]`` -> ``[1024, 512, 3, 3]``, fc7 -> ``[1024, 1024, 1, 1]``).
- ``vgg16_reducedfc.pth``, the SSD base weights (keys ``0.weight`` … ``33.bias``).
- fssd.pytorch detector checkpoints (keys ``base.*``, ``extras.*``, ``ft_module.*``,
  ``pyramid_ext.*``, ``loc.*``, ``conf.*``), matched to this project's modules in order.

Nothing is downloaded: a missing file is reported with the path expected and the
address to fetch it from.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from layers.blocks import ConvBNReLU
from utils.checkpoint import CheckpointError, read_tensor_file
from utils.errors import UserError

logger = logging.getLogger(__name__)

# torchvision's ImageNet weights for each backbone name of the model config.
TORCHVISION_WEIGHTS = {
    "vgg16": "VGG16_Weights",
    "vgg16_bn": "VGG16_BN_Weights",
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
    "mobilenet_v2": "MobileNet_V2_Weights",
    "efficientnet_b3": "EfficientNet_B3_Weights",
}

# Formats of state dicts, by the input they were trained on.
PIXEL_FORMAT_OF_SOURCE = {
    "torchvision": "rgb_imagenet",
    "vgg16_reducedfc": "bgr_caffe",
    "fssd_pytorch": "bgr_caffe",
}

FSSD_PYTORCH_GROUPS = ("base", "extras", "ft_module", "pyramid_ext", "loc", "conf")


class WeightsError(UserError, RuntimeError):
    """Weights that are missing or do not fit; the message names the file and the problem."""


def torchvision_weights_url(backbone: str) -> str:
    enum = getattr(torchvision.models, TORCHVISION_WEIGHTS[backbone])
    return enum.IMAGENET1K_V1.url


def hub_cache_path(url: str) -> Path:
    """Where ``torch.hub`` keeps a downloaded checkpoint (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def resolve_backbone_weights(spec: str, backbone: str) -> Path:
    """The file behind ``model.backbone_weights``: ``torchvision`` or a path.

    Raises:
        WeightsError: the file is not there; the message says where to put it.
    """
    if spec == "torchvision":
        if backbone not in TORCHVISION_WEIGHTS:
            raise WeightsError(f"torchvision has no ImageNet weights for backbone {backbone!r}")
        url = torchvision_weights_url(backbone)
        path = hub_cache_path(url)
        if not path.is_file():
            raise WeightsError(
                f"ImageNet weights for {backbone} not found at {path} and nothing is "
                f"downloaded at run time. Fetch {url} on a machine with internet access and "
                f"copy it to {path} (or set TORCH_HOME), or point model.backbone_weights at "
                "the file."
            )
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"{path}: backbone weights file not found (model.backbone_weights={spec!r})"
        )
    return path


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint file, unwrapped from ``{"model": ...}`` or
    ``{"state_dict": ...}`` and without DataParallel's ``module.`` prefix."""
    path = Path(path)
    try:
        content = read_tensor_file(path, what="weights file")
    except CheckpointError as error:
        raise WeightsError(str(error)) from None
    for key in ("model", "state_dict"):
        if isinstance(content, dict) and isinstance(content.get(key), dict):
            content = content[key]
    if not isinstance(content, dict) or not all(
        isinstance(value, Tensor) for value in content.values()
    ):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return OrderedDict((key.removeprefix("module."), value) for key, value in content.items())


def _module_groups(state_dict: dict[str, Tensor]) -> OrderedDict[str, dict[str, Tensor]]:
    """Tensors grouped by the module that owns them, in file order."""
    groups: OrderedDict[str, dict[str, Tensor]] = OrderedDict()
    for key, value in state_dict.items():
        module, _, name = key.rpartition(".")
        groups.setdefault(module, {})[name] = value
    return groups


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _layers_in_order(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv and BatchNorm modules of ``module`` in forward (definition) order."""
    return [
        (name, child)
        for name, child in module.named_modules()
        if isinstance(child, (nn.Conv2d, nn.BatchNorm2d))
    ]


def _assign_in_order(
    source_groups: list[tuple[str, dict[str, Tensor]]],
    target: nn.Module,
    target_prefix: str,
    origin: str,
) -> dict[str, Tensor]:
    """Pair source modules with the target's conv/BN modules in order, checking shapes."""
    target_layers = _layers_in_order(target)
    if len(source_groups) != len(target_layers):
        raise WeightsError(
            f"{origin}: {len(source_groups)} conv/BN layers in the file but "
            f"{len(target_layers)} in {target_prefix or 'the model'}"
        )
    converted: dict[str, Tensor] = {}
    for (source_name, tensors), (target_name, layer) in zip(
        source_groups, target_layers, strict=True
    ):
        expected = {name: value for name, value in layer.state_dict().items() if value is not None}
        kind = "BatchNorm" if isinstance(layer, nn.BatchNorm2d) else "conv"
        check_fit(
            tensors,
            expected,
            origin=origin,
            target=f"{kind} layer '{target_prefix}{target_name}'",
            source_prefix=f"{source_name}.",
            allow_unexpected=True,
        )
        for name in expected:
            if name in tensors:
                converted[f"{target_prefix}{target_name}.{name}"] = tensors[name]
    return converted


def check_fit(
    given: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    *,
    origin: str,
    target: str = "this model",
    source_prefix: str = "",
    allow_unexpected: bool = False,
    hint: str = "",
) -> None:
    """Check that the tensors ``given`` (read from ``origin``) fit ``expected`` (a
    module's state dict): every expected tensor present (a BatchNorm's
    ``num_batches_tracked`` may be absent), nothing else unless ``allow_unexpected``,
    every shape equal.

    Raises:
        WeightsError: naming the file, the first offending tensor and ``hint``.
    """
    missing = [
        key for key in expected if key not in given and not key.endswith("num_batches_tracked")
    ]
    unexpected = [] if allow_unexpected else [key for key in given if key not in expected]
    suffix = f"; {hint}" if hint else ""
    if missing or unexpected:
        detail = (
            f"unexpected '{source_prefix}{unexpected[0]}'"
            if unexpected
            else f"missing '{source_prefix}{missing[0]}'"
        )
        raise WeightsError(
            f"{origin}: does not fit {target} ({len(unexpected)} unexpected, "
            f"{len(missing)} missing tensors, e.g. {detail}){suffix}"
        )
    for key, value in expected.items():
        if key in given and given[key].shape != value.shape:
            raise WeightsError(
                f"{origin}: '{source_prefix}{key}' has shape {list(given[key].shape)} but "
                f"{target} needs {list(value.shape)}{suffix}"
            )


def reduce_fc_to_conv(fc6: dict[str, Tensor], fc7: dict[str, Tensor]) -> tuple[dict, dict]:
    """SSD's subsampling of VGG16's fc6/fc7 into dilated conv6 and 1x1 conv7.

    fc6 ``[4096, 25088]`` is viewed as a ``[4096, 512, 7, 7]`` conv and every 4th filter
    and every 3rd tap kept (``[1024, 512, 3, 3]``, used with dilation 6); fc7
    ``[4096, 4096]`` keeps every 4th row and column (``[1024, 1024, 1, 1]``).
    """
    conv6_weight = fc6["weight"].reshape(4096, 512, 7, 7)[::4, :, ::3, ::3]
    conv7_weight = fc7["weight"].reshape(4096, 4096, 1, 1)[::4, ::4]
    conv6 = {"weight": conv6_weight.contiguous(), "bias": fc6["bias"][::4].contiguous()}
    conv7 = {"weight": conv7_weight.contiguous(), "bias": fc7["bias"][::4].contiguous()}
    return conv6, conv7


def detect_vgg_format(state_dict: dict[str, Tensor]) -> str:
    keys = list(state_dict)
    if any(key.startswith("classifier.") for key in keys) and any(
        key.startswith("features.") for key in keys
    ):
        return "torchvision"
    if all(re.fullmatch(r"\d+\.(weight|bias)", key) for key in keys):
        return "vgg16_reducedfc"
    if any(key.startswith("base.") for key in keys):
        return "fssd_pytorch"
    return "unknown"


def _vgg_source_layers(
    groups: OrderedDict[str, dict[str, Tensor]], source_format: str, origin: str
) -> list[tuple[str, dict[str, Tensor], dict[str, Tensor] | None]]:
    """(name, conv tensors, BN tensors or None) per conv of a VGG16 file, in order."""
    if source_format == "torchvision":
        ordered = sorted(
            ((name, tensors) for name, tensors in groups.items() if name.startswith("features.")),
            key=lambda item: _natural_key(item[0]),
        )
        classifier = sorted(
            ((name, tensors) for name, tensors in groups.items() if name.startswith("classifier.")),
            key=lambda item: _natural_key(item[0]),
        )
        if len(classifier) < 2:
            raise WeightsError(f"{origin}: VGG16 state dict without fc6/fc7 (classifier)")
        conv6, conv7 = reduce_fc_to_conv(classifier[0][1], classifier[1][1])
        ordered += [("fc6 (reduced)", conv6), ("fc7 (reduced)", conv7)]
    else:
        ordered = sorted(groups.items(), key=lambda item: _natural_key(item[0]))
    layers: list[tuple[str, dict[str, Tensor], dict[str, Tensor] | None]] = []
    for name, tensors in ordered:
        if "running_mean" in tensors:
            if not layers or layers[-1][2] is not None:
                raise WeightsError(f"{origin}: BatchNorm '{name}' does not follow a conv")
            layers[-1] = (layers[-1][0], layers[-1][1], tensors)
        else:
            layers.append((name, tensors, None))
    return layers


def convert_vgg16(
    state_dict: dict[str, Tensor], backbone: nn.Module, origin: str
) -> tuple[dict[str, Tensor], str]:
    """A VGG16 state dict (torchvision VGG16 or VGG16-BN, or reducedfc) as the backbone's.

    Convs are paired in order. Into a BN backbone, a conv bias of the file is folded into
    the BN that follows (its running mean, or its shift where the file has no BN: conv6
    and conv7 from fc6/fc7), so the loaded trunk computes what the file's did. BN
    statistics of a file are dropped for a backbone without BN, with a warning.

    Returns the converted tensors and the source format.
    """
    source_format = detect_vgg_format(state_dict)
    if source_format not in ("torchvision", "vgg16_reducedfc"):
        raise WeightsError(
            f"{origin}: not a VGG16 state dict (expected torchvision's 'features.*'/"
            "'classifier.*' keys or vgg16_reducedfc's '0.weight' … '33.bias')"
        )
    source_layers = _vgg_source_layers(_module_groups(state_dict), source_format, origin)
    blocks = [
        (name, block) for name, block in backbone.named_modules() if isinstance(block, ConvBNReLU)
    ]
    if len(source_layers) != len(blocks):
        raise WeightsError(
            f"{origin}: {len(source_layers)} convs in the file but {len(blocks)} in the backbone"
        )
    converted: dict[str, Tensor] = {}
    dropped_bn = False
    for (source_name, conv, bn), (block_name, block) in zip(source_layers, blocks, strict=True):
        if conv["weight"].shape != block.conv.weight.shape:
            raise WeightsError(
                f"{origin}: '{source_name}.weight' has shape {list(conv['weight'].shape)} but "
                f"'{block_name}.conv.weight' needs {list(block.conv.weight.shape)}"
            )
        converted[f"{block_name}.conv.weight"] = conv["weight"]
        bias = conv.get("bias")
        if block.conv.bias is not None:
            if bias is None:
                raise WeightsError(f"{origin}: '{source_name}' has no bias for '{block_name}'")
            if bn is not None:
                dropped_bn = True
            converted[f"{block_name}.conv.bias"] = bias
            continue
        shift = torch.zeros_like(block.bn.running_mean) if bias is None else bias
        if bn is None:
            # No statistics in the file: an identity BN whose shift is the conv bias.
            converted[f"{block_name}.bn.weight"] = torch.ones_like(shift)
            converted[f"{block_name}.bn.bias"] = shift
            converted[f"{block_name}.bn.running_mean"] = torch.zeros_like(shift)
            converted[f"{block_name}.bn.running_var"] = torch.ones_like(shift)
            continue
        for name in ("weight", "bias", "running_mean", "running_var"):
            converted[f"{block_name}.bn.{name}"] = bn[name]
        # BN(conv(x) + b) with mean m equals BN(conv(x)) with mean m - b.
        converted[f"{block_name}.bn.running_mean"] = bn["running_mean"] - shift
    if dropped_bn:
        logger.warning(
            "%s: BatchNorm statistics dropped: the backbone has no BatchNorm "
            "(model.batch_norm=false); the loaded trunk differs from the file's",
            origin,
        )
    return converted, source_format


def convert_fssd_pytorch(
    state_dict: dict[str, Tensor], model: nn.Module, origin: str
) -> dict[str, Tensor]:
    """An fssd.pytorch FSSD-VGG16 checkpoint as this project's detector state dict.

    Its groups map onto ``features.backbone``, ``features.extras``, ``features.fusion``,
    ``features.pyramid``, ``head.loc`` and ``head.conf``; inside each group layers are
    paired in order, with every shape checked.
    """
    groups = _module_groups(state_dict)
    targets = {
        "base": ("features.backbone.", model.features.backbone),
        "extras": ("features.extras.", model.features.extras),
        "ft_module": ("features.fusion.", model.features.fusion),
        "pyramid_ext": ("features.pyramid.", model.features.pyramid),
        "loc": ("head.loc.", model.head.loc),
        "conf": ("head.conf.", model.head.conf),
    }
    unknown = sorted({name.split(".")[0] for name in groups} - set(FSSD_PYTORCH_GROUPS))
    if unknown:
        raise WeightsError(f"{origin}: unexpected fssd.pytorch groups {unknown}")
    converted: dict[str, Tensor] = {}
    for group, (prefix, target) in targets.items():
        source_groups = sorted(
            ((name, tensors) for name, tensors in groups.items() if name.split(".")[0] == group),
            key=lambda item: _natural_key(item[0]),
        )
        converted.update(_assign_in_order(source_groups, target, prefix, origin))
    return converted


def load_backbone_weights(
    backbone: nn.Module, backbone_name: str, spec: str, batch_norm: bool
) -> str:
    """Load ImageNet (or reducedfc) weights into ``backbone``; returns the source format.

    Args:
        backbone: the backbone module of the detector.
        backbone_name: ``vgg16``, ``resnet50``, ``mobilenet_v2`` … (model config).
        spec: ``torchvision`` or a file path (``model.backbone_weights``).
        batch_norm: the VGG variant with BatchNorm (selects torchvision's ``vgg16_bn``).
    """
    lookup_name = "vgg16_bn" if backbone_name == "vgg16" and batch_norm else backbone_name
    path = resolve_backbone_weights(spec, lookup_name)
    state_dict = read_state_dict(path)
    origin = str(path)
    if backbone_name == "vgg16":
        converted, source_format = convert_vgg16(state_dict, backbone, origin)
    else:
        source_format = "torchvision"
        own = backbone.state_dict()
        converted = {key: value for key, value in state_dict.items() if key in own}
        check_fit(
            state_dict,
            own,
            origin=origin,
            target=f"the {backbone_name} backbone",
            allow_unexpected=True,  # the classifier the detector does not use
            hint="is it a width multiplier other than 1?",
        )
    result = backbone.load_state_dict(converted, strict=False)
    logger.info(
        "loaded %d backbone tensors from %s (%s format); %d left at initialisation",
        len(converted),
        origin,
        source_format,
        len(result.missing_keys),
    )
    return source_format


def load_detector_weights(
    model: nn.Module,
    path: str | Path,
    adapt: Callable[[dict[str, Tensor], str], dict[str, Tensor]] | None = None,
) -> str:
    """Load a whole detector: this project's checkpoint or an fssd.pytorch one.
    ``adapt`` (state dict, origin) -> state dict changes a project checkpoint's tensors
    before the shape check (:func:`models.class_transfer.transfer_classes`).

    Returns the source format (``project`` or ``fssd_pytorch``).
    """
    state_dict = read_state_dict(path)
    origin = str(path)
    if detect_vgg_format(state_dict) == "fssd_pytorch":
        converted = convert_fssd_pytorch(state_dict, model, origin)
        source_format = "fssd_pytorch"
    else:
        converted = state_dict if adapt is None else adapt(state_dict, origin)
        source_format = "project"
    check_fit(
        converted,
        model.state_dict(),
        origin=origin,
        hint="check the config it was trained with (model.num_classes, the architecture)",
    )
    model.load_state_dict(converted, strict=False)
    return source_format
