"""Network slimming (Liu et al., 2017): channel groups, the global |gamma| threshold and
the channel surgery that removes them.

A :class:`ChannelGroup` is a set of channels that exist together: the convs that produce
them, the BatchNorm layers that scale them (their |gamma| scores each channel), the
convs that read them (at an offset of their input when several sources are
concatenated, as FSSD's fusion does) and per-channel scales such as SSD's L2Norm.
Depthwise convs pass their channels through, so they and their BatchNorm belong to the
group of their input. Pruning a group keeps the same channel indices everywhere in it.

The groups are found by walking the model's structure (names and module types, never
widths written in source). What is prunable:

- VGG16: every conv of the trunk, conv6 and conv7.
- ResNet: the inner channels of every block (conv1/conv2 outputs of a bottleneck, conv1
  of a basic block). Channels on the residual stream are tied across a whole stage by
  the additions (and across stages by the downsample convs); they are left alone, as in
  the network-slimming paper, so the stem, conv3 and downsample widths never change.
- MobileNetV2: the expanded channels of every inverted residual (expansion conv and the
  depthwise conv after it) and the final 1x1 conv; the residual stream is left alone.
- EfficientNet-B3: likewise the expanded channels of every MBConv (expansion, depthwise
  conv, the squeeze-excitation's per-channel scales) and the final 1x1 conv.
- SSD/FSSD necks: every extra layer, the fusion 1x1 convs (their outputs sit at offsets
  of the concatenated map the pyramid reads), every pyramid layer; the heads' inputs
  follow the maps they read.

Only channels scaled by a BatchNorm are prunable (without it there is no score).

A pruned model is described by its widths, ``{group name: kept channels}``; applying
those widths to a freshly built model (:func:`apply_channel_widths`) gives modules of the
same shapes, into which the pruned state dict loads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn
from torchvision.models.efficientnet import MBConv
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from layers.blocks import ConvBNReLU, L2Norm
from models.detector import SingleShotDetector
from models.efficientnet import EfficientNetBackbone
from models.fssd import FSSDFeatures
from models.mobilenet import MobileNetV2Backbone
from models.resnet import ResNetBackbone
from models.ssd import ExtraLayers, SSDFeatures
from models.vgg import VGG16Backbone
from utils.config import ConfigError
from utils.errors import UserError

logger = logging.getLogger(__name__)


class PruningError(UserError, ValueError):
    """A model or a width description that pruning cannot handle; the message says why."""


@dataclass
class Reader:
    """A conv reading a group's channels at ``offset`` of its input.

    ``norm`` is the BatchNorm right after the conv, if any: the bias of a pruned
    channel's constant output is moved into its running mean (or into the conv's bias
    when there is no BatchNorm).
    """

    conv: nn.Conv2d
    offset: int = 0
    norm: nn.BatchNorm2d | None = None


@dataclass
class ChannelGroup:
    """Channels pruned together (see the module docstring).

    ``activation`` maps a pruned channel's BatchNorm shift to the constant its readers
    see once its scale is gone (``ReLU`` or ``ReLU6``); ``None`` when no constant can
    stand in for it (depthwise convs or an L2Norm in between).
    """

    name: str
    convs: list[nn.Conv2d]
    norms: list[nn.BatchNorm2d]
    readers: list[Reader] = field(default_factory=list)
    scales: list[nn.Parameter] = field(default_factory=list)
    activation: type[nn.Module] | None = nn.ReLU

    @property
    def width(self) -> int:
        return self.convs[0].out_channels

    def scores(self) -> Tensor:
        """``[width]`` channel importance: the largest |gamma| over the group's norms."""
        stacked = torch.stack([norm.weight.detach().abs().float() for norm in self.norms])
        return stacked.max(dim=0).values


class _GroupBuilder:
    """Collects groups while walking a model; ``None`` marks maps whose channels are not
    prunable (no BatchNorm, or a residual stream)."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {module: name for name, module in model.named_modules()}
        self.groups: list[ChannelGroup] = []

    def from_block(self, block: nn.Module) -> ChannelGroup | None:
        """A group for a ``ConvBNReLU`` (or conv/BN Sequential) producing new channels."""
        conv, norm, activation = _conv_norm_activation(block)
        if norm is None:
            return None
        group = ChannelGroup(
            name=self.names[block], convs=[conv], norms=[norm], activation=activation
        )
        self.groups.append(group)
        return group

    def add_reader(self, group: ChannelGroup | None, block: nn.Module, offset: int = 0) -> None:
        """``block`` (a conv, ``ConvBNReLU`` or conv/BN Sequential) reads ``group``.

        A depthwise block joins the group instead; its own output is then the group's."""
        if group is None:
            return
        conv, norm, _ = _conv_norm_activation(block)
        if _is_depthwise(conv):
            if offset != 0 or norm is None:
                raise PruningError(f"{self.names[block]}: depthwise conv without BatchNorm")
            group.convs.append(conv)
            group.norms.append(norm)
            group.activation = None
            return
        if conv.groups != 1:
            raise PruningError(f"{self.names[block]}: grouped convs cannot be pruned")
        group.readers.append(Reader(conv=conv, offset=offset, norm=norm))


def _conv_norm_activation(
    block: nn.Module,
) -> tuple[nn.Conv2d, nn.BatchNorm2d | None, type[nn.Module] | None]:
    if isinstance(block, nn.Conv2d):
        return block, None, None
    if isinstance(block, ConvBNReLU):
        norm = block.bn if isinstance(block.bn, nn.BatchNorm2d) else None
        activation = type(block.relu) if isinstance(block.relu, (nn.ReLU, nn.ReLU6)) else None
        return block.conv, norm, activation
    if isinstance(block, nn.Sequential):  # torchvision's Conv2dNormActivation
        parts = list(block)
        if isinstance(parts[0], nn.Conv2d):
            norm = parts[1] if len(parts) > 1 and isinstance(parts[1], nn.BatchNorm2d) else None
            activation = next(
                (type(part) for part in parts[2:] if isinstance(part, (nn.ReLU, nn.ReLU6))), None
            )
            return parts[0], norm, activation
    raise PruningError(f"cannot prune through a {type(block).__name__}")


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _vgg_groups(builder: _GroupBuilder, backbone: VGG16Backbone) -> list[ChannelGroup | None]:
    blocks = [
        module
        for module in (*backbone.to_conv4_3, *backbone.to_conv7)
        if isinstance(module, ConvBNReLU)
    ]
    groups = []
    previous: ChannelGroup | None = None
    for block in blocks:
        builder.add_reader(previous, block)
        previous = builder.from_block(block)
        groups.append(previous)
    by_block = dict(zip(blocks, groups, strict=True))
    return [by_block[backbone.to_conv4_3.conv4_3], by_block[backbone.to_conv7.conv7]]


def _resnet_groups(builder: _GroupBuilder, backbone: ResNetBackbone) -> list[ChannelGroup | None]:
    for stage_name in backbone.stage_names:
        for block in getattr(backbone, stage_name):
            if isinstance(block, Bottleneck):
                pairs = [("conv1", "bn1", "conv2", "bn2"), ("conv2", "bn2", "conv3", "bn3")]
            elif isinstance(block, BasicBlock):
                pairs = [("conv1", "bn1", "conv2", "bn2")]
            else:
                raise PruningError(f"unexpected ResNet block {type(block).__name__}")
            for conv_name, norm_name, reader_name, reader_norm_name in pairs:
                group = ChannelGroup(
                    name=f"{builder.names[block]}.{conv_name}",
                    convs=[getattr(block, conv_name)],
                    norms=[getattr(block, norm_name)],
                    readers=[
                        Reader(
                            conv=getattr(block, reader_name), norm=getattr(block, reader_norm_name)
                        )
                    ],
                )
                builder.groups.append(group)
    # Every returned map is on a residual stream.
    return [None] * len(backbone.return_stages)


def _mobilenet_groups(
    builder: _GroupBuilder, backbone: MobileNetV2Backbone
) -> list[ChannelGroup | None]:
    tapped: ChannelGroup | None = None
    for index, block in enumerate(backbone.features):
        if not isinstance(block, InvertedResidual):
            continue
        layers = list(block.conv)
        if len(layers) != 4:  # no expansion: the depthwise conv reads the residual stream
            continue
        expansion, depthwise, project, project_norm = layers
        group = builder.from_block(expansion)
        builder.add_reader(group, depthwise)
        if group is not None:
            group.readers.append(Reader(conv=project, norm=project_norm))
        if index == backbone.tap_index:
            tapped = group
    last = builder.from_block(backbone.features[-1])
    return [tapped, last]


def _efficientnet_groups(
    builder: _GroupBuilder, backbone: EfficientNetBackbone
) -> list[ChannelGroup | None]:
    """The expanded channels of every MBConv with an expansion: the expansion conv, the
    depthwise conv (it joins the group), the squeeze-excitation's second conv (it makes
    one scale per channel), read by the squeeze-excitation's first conv and the
    projection. No constant stands in for a pruned channel (SiLU, then a scale that
    depends on the input), so nothing is compensated. Then the final 1x1 conv."""
    for stage in backbone.features[: backbone.tap_indices[-1]]:
        for block in stage.modules():
            if not isinstance(block, MBConv) or len(block.block) != 4:
                continue  # no expansion: the depthwise conv reads the residual stream
            expansion, depthwise, excitation, project = block.block
            group = builder.from_block(expansion)
            if group is None:
                continue
            builder.add_reader(group, depthwise)
            group.readers.append(Reader(conv=excitation.fc1))
            group.convs.append(excitation.fc2)
            group.readers.append(Reader(conv=project[0], norm=project[1]))
            group.activation = None
    last = builder.from_block(backbone.features[backbone.tap_indices[-1]])
    # The maps of strides 8 and 16 are on the residual stream.
    return [None, None, last]


def _backbone_groups(builder: _GroupBuilder, backbone: nn.Module) -> list[ChannelGroup | None]:
    if isinstance(backbone, VGG16Backbone):
        return _vgg_groups(builder, backbone)
    if isinstance(backbone, ResNetBackbone):
        return _resnet_groups(builder, backbone)
    if isinstance(backbone, MobileNetV2Backbone):
        return _mobilenet_groups(builder, backbone)
    if isinstance(backbone, EfficientNetBackbone):
        return _efficientnet_groups(builder, backbone)
    raise PruningError(f"no pruning rules for a {type(backbone).__name__} backbone")


def _extras_groups(
    builder: _GroupBuilder, extras: ExtraLayers, source: ChannelGroup | None
) -> list[ChannelGroup | None]:
    """Groups of the extra blocks; returns each block's output group."""
    outputs = []
    for block in extras.blocks:
        previous = source
        for part in block:
            builder.add_reader(previous, part)
            if not _is_depthwise(part.conv):  # a depthwise conv joined its input's group
                previous = builder.from_block(part)
        outputs.append(previous)
        source = previous
    return outputs


def channel_groups(model: SingleShotDetector) -> list[ChannelGroup]:
    """Every prunable channel group of ``model``, in forward order.

    Raises:
        PruningError: a part the rules above do not cover.
    """
    builder = _GroupBuilder(model)
    features = model.features
    backbone_outputs = _backbone_groups(builder, features.backbone)
    if isinstance(features, FSSDFeatures):
        sources = list(backbone_outputs)
        if len(features.extras.blocks) > 0:
            sources.append(_extras_groups(builder, features.extras, backbone_outputs[-1])[-1])
        pyramid_input = features.pyramid.layers[0]
        offset = 0
        for transform, source in zip(features.fusion.transforms, sources, strict=True):
            builder.add_reader(source, transform)
            group = builder.from_block(transform)
            builder.add_reader(group, pyramid_input, offset)
            offset += transform.out_channels
        maps: list[ChannelGroup | None] = []
        previous = None
        for layer in features.pyramid.layers:
            if previous is not None:
                builder.add_reader(previous, layer)
            previous = builder.from_block(layer)
            maps.append(previous)
    elif isinstance(features, SSDFeatures):
        maps = list(backbone_outputs) + _extras_groups(
            builder, features.extras, backbone_outputs[-1]
        )
        if isinstance(features.l2norm, L2Norm) and maps[0] is not None:
            maps[0].scales.append(features.l2norm.weight)
            maps[0].activation = None
    else:
        raise PruningError(f"no pruning rules for {type(features).__name__}")
    for group, loc, conf in zip(maps, model.head.loc, model.head.conf, strict=True):
        for predictor in (loc, conf):
            if isinstance(predictor, nn.Sequential):  # depthwise-separable (SSDLite)
                builder.add_reader(group, predictor[0])
                builder.add_reader(group, predictor[1])
            else:
                builder.add_reader(group, predictor)
    return builder.groups


def prunable_norm_names(model: SingleShotDetector) -> list[str]:
    """Names of the BatchNorm layers whose scales decide pruning (the targets of the
    sparsity penalty); names, because SyncBatchNorm conversion replaces the modules."""
    names = {module: name for name, module in model.named_modules()}
    return [names[norm] for group in channel_groups(model) for norm in group.norms]


def global_threshold(scores: Tensor, ratio: float) -> tuple[Tensor, float]:
    """Which of ``scores`` ``[N]`` the global ``ratio`` prunes: the ``round(ratio * N)``
    lowest (ties broken by position, so the count is exact), as a ``[N]`` mask, and
    the threshold, the highest pruned score (0 when nothing is pruned)."""
    num_pruned = round(ratio * scores.numel())
    pruned = torch.zeros(scores.numel(), dtype=torch.bool)
    order = torch.sort(scores, stable=True).indices
    pruned[order[:num_pruned]] = True
    threshold = float(scores[order[num_pruned - 1]]) if num_pruned else 0.0
    return pruned, threshold


def select_channels(
    groups: list[ChannelGroup],
    ratio: float,
    *,
    min_keep_fraction: float = 0.1,
    multiple_of: int = 1,
) -> dict[str, Tensor]:
    """Channels to keep per group: the global ``ratio`` of lowest |gamma| go.

    The threshold is global: all channels of all groups are ranked by score and the
    lowest ``round(ratio * total)`` are pruned (ties broken by position, so the count
    is exact). Each group then keeps at least ``ceil(min_keep_fraction * width)``
    channels (and at least one), its best ones, so no layer vanishes; with
    ``multiple_of`` the kept count is rounded up to a multiple of it (fast kernels).

    Returns ``{group name: sorted indices to keep}``.
    """
    if not 0.0 <= ratio < 1.0:
        raise PruningError(f"the pruning ratio must be in [0, 1), got {ratio}")
    if not 0.0 <= min_keep_fraction <= 1.0:
        raise PruningError(f"the minimum kept fraction must be in [0, 1], got {min_keep_fraction}")
    if multiple_of < 1:
        raise PruningError(f"widths must be rounded to a multiple of at least 1, got {multiple_of}")
    if not groups:
        raise PruningError("the model has no prunable channels (BatchNorm layers)")
    scores = [group.scores() for group in groups]
    pruned, _ = global_threshold(torch.cat(scores), ratio)
    keep: dict[str, Tensor] = {}
    start = 0
    for group, group_scores in zip(groups, scores, strict=True):
        width = group_scores.numel()
        group_pruned = pruned[start : start + width]
        start += width
        count = width - int(group_pruned.sum())
        minimum = max(1, math.ceil(min_keep_fraction * width))
        count = max(count, minimum)
        count = min(width, math.ceil(count / multiple_of) * multiple_of)
        best = torch.sort(group_scores, descending=True, stable=True).indices[:count]
        keep[group.name] = torch.sort(best).values
    return keep


def select_to_widths(groups: list[ChannelGroup], widths: Mapping[str, int]) -> dict[str, Tensor]:
    """Channels to keep so that each group named in ``widths`` ends at that width: its
    highest-|gamma| channels (groups not named keep all of theirs).

    Returns ``{group name: sorted indices to keep}``.

    Raises:
        PruningError: a name is not a group of this model, or a width is outside
            1..the group's width.
    """
    names = {group.name for group in groups}
    unknown = sorted(set(widths) - names)
    if unknown:
        raise PruningError(
            f"the widths name {len(unknown)} groups this model does not have, e.g. '{unknown[0]}'"
        )
    keep: dict[str, Tensor] = {}
    for group in groups:
        width = int(widths.get(group.name, group.width))
        if not 1 <= width <= group.width:
            raise PruningError(f"width {width} for '{group.name}' outside 1..{group.width}")
        best = torch.sort(group.scores(), descending=True, stable=True).indices[:width]
        keep[group.name] = torch.sort(best).values
    return keep


def zero_pruned_channels(groups: list[ChannelGroup], keep: Mapping[str, Tensor]) -> None:
    """Set scale and shift of every channel not in ``keep`` to zero in all the group's
    BatchNorm layers: the channels then carry zeros, which is what pruning assumes."""
    with torch.no_grad():
        for group in groups:
            dropped = torch.ones(group.width, dtype=torch.bool)
            dropped[keep[group.name]] = False
            for norm in group.norms:
                norm.weight[dropped] = 0.0
                norm.bias[dropped] = 0.0


def prune_channels(
    groups: list[ChannelGroup], keep: Mapping[str, Tensor], *, compensate: bool = True
) -> dict[str, int]:
    """Remove every channel not in ``keep`` from the groups' modules, in place.

    With ``compensate``, the constant ``activation(beta)`` a pruned channel would still
    add to its readers (its scale being near zero) is folded into their bias, or into
    the running mean of their BatchNorm; exact away from the zero-padded borders.
    Returns the new widths.
    """
    missing = [group.name for group in groups if group.name not in keep]
    if missing:
        raise PruningError(f"no widths for {len(missing)} channel groups, e.g. '{missing[0]}'")
    with torch.no_grad():
        for group in groups if compensate else []:
            _compensate_readers(group, keep[group.name])
        output_index: dict[nn.Conv2d, Tensor] = {}
        input_segments: dict[nn.Conv2d, list[tuple[int, int, Tensor]]] = {}
        for group in groups:
            indices = keep[group.name]
            for conv in group.convs:
                output_index[conv] = indices
            for reader in group.readers:
                input_segments.setdefault(reader.conv, []).append(
                    (reader.offset, group.width, indices)
                )
            for norm in group.norms:
                _slice_norm(norm, indices)
            for scale in group.scales:
                scale.data = scale.data[indices].clone()
        for conv in set(output_index) | set(input_segments):
            _slice_conv(conv, output_index.get(conv), input_segments.get(conv, []))
    return {group.name: int(keep[group.name].numel()) for group in groups}


def _compensate_readers(group: ChannelGroup, indices: Tensor) -> None:
    if group.activation is None or group.scales:
        return
    dropped = torch.ones(group.width, dtype=torch.bool)
    dropped[indices] = False
    if not dropped.any():
        return
    shift = group.norms[0].bias.detach()[dropped]  # [D]
    constant = group.activation()(shift.clone())  # what the readers see, [D]
    if not constant.any():
        return
    channels = torch.nonzero(dropped).flatten()
    for reader in group.readers:
        weight = reader.conv.weight[:, reader.offset + channels]  # [O, D, k, k]
        delta = (weight.sum(dim=(2, 3)) * constant).sum(dim=1)  # [O]
        if reader.norm is not None:
            reader.norm.running_mean.sub_(delta)
        elif reader.conv.bias is not None:
            reader.conv.bias.add_(delta)


def _slice_norm(norm: nn.BatchNorm2d, indices: Tensor) -> None:
    norm.weight = nn.Parameter(norm.weight.data[indices].clone())
    norm.bias = nn.Parameter(norm.bias.data[indices].clone())
    norm.running_mean = norm.running_mean[indices].clone()
    norm.running_var = norm.running_var[indices].clone()
    norm.num_features = int(indices.numel())


def _slice_conv(
    conv: nn.Conv2d, outputs: Tensor | None, segments: list[tuple[int, int, Tensor]]
) -> None:
    depthwise = _is_depthwise(conv)
    weight = conv.weight.data
    if outputs is not None:
        weight = weight[outputs]
        if conv.bias is not None:
            conv.bias = nn.Parameter(conv.bias.data[outputs].clone())
        conv.out_channels = int(outputs.numel())
    if depthwise:
        conv.in_channels = conv.groups = conv.out_channels
    elif segments:
        pieces, position = [], 0
        for offset, width, kept in sorted(segments, key=lambda segment: segment[0]):
            pieces.append(torch.arange(position, offset))
            pieces.append(offset + kept)
            position = offset + width
        pieces.append(torch.arange(position, conv.in_channels))
        inputs = torch.cat(pieces)
        weight = weight[:, inputs]
        conv.in_channels = int(inputs.numel())
    conv.weight = nn.Parameter(weight.clone())


def apply_channel_widths(model: SingleShotDetector, widths: Mapping[str, int]) -> None:
    """Shrink a freshly built model to the widths a pruned checkpoint stores.

    The first ``width`` channels of each group are kept; the pruned state dict then
    loads into the result.

    Raises:
        PruningError: the widths do not describe this model's groups.
    """
    groups = channel_groups(model)
    names = {group.name for group in groups}
    unknown = sorted(set(widths) - names)
    if unknown:
        raise PruningError(
            f"channel widths name {len(unknown)} groups this model does not have, "
            f"e.g. '{unknown[0]}'; it was pruned from another architecture"
        )
    keep = {}
    for group in groups:
        width = int(widths.get(group.name, group.width))
        if not 1 <= width <= group.width:
            raise PruningError(f"channel width {width} for '{group.name}' outside 1..{group.width}")
        keep[group.name] = torch.arange(width)
    prune_channels(groups, keep, compensate=False)


def resolve_channel_widths(
    checkpoint_widths: Mapping[str, int] | None, widths_file: str | Path | None
) -> dict[str, int]:
    """The channel widths a model is built with: a pruned checkpoint's, else those of
    the widths file (``model.widths_file``), else none (the full model)."""
    if checkpoint_widths:
        return dict(checkpoint_widths)
    if widths_file:
        return read_widths_file(widths_file)
    return {}


def read_widths_file(path: str | Path) -> dict[str, int]:
    """Channel widths from a YAML file: ``{group name: width}``, optionally under a
    ``channel_widths`` key.

    Raises:
        ConfigError: the file is missing or is not such a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: widths file not found (model.widths_file)")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if isinstance(content, dict) and isinstance(content.get("channel_widths"), dict):
        content = content["channel_widths"]
    if not isinstance(content, dict) or not all(
        isinstance(key, str) and isinstance(value, int) and not isinstance(value, bool)
        for key, value in content.items()
    ):
        raise ConfigError(f"{path}: expected a mapping of channel group names to widths")
    return dict(content)
