"""Typed experiment configuration: dataclass defaults, YAML files, command-line overrides.

An experiment file holds only what differs from the defaults below::

    model:
      image_size: 512
    priors:
      min_sizes: [35.84, 76.8, 153.6, 230.4, 307.2, 384.0, 460.8]

Scripts take trailing ``section.key=value`` overrides (``solver.lr=2e-3``). Unknown keys
and values of the wrong type are rejected with the key and the file (or override) named.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from utils.device import AmpChoice, DeviceChoice
from utils.errors import UserError
from utils.files import atomic_write_text


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be applied; the message names where."""


@dataclass
class ModelConfig:
    """Network choice and shape. Defaults: FSSD300 on VGG16 for VOC.

    ``num_classes`` counts the background class (label 0). Layer specs are lists:
    ``extras`` entries are ``[mid_channels, out_channels, kernel, stride, padding]`` (a
    1x1 reduction then a spatial conv), ``pyramid`` entries (FSSD only) are
    ``[out_channels, kernel, stride, padding]``. Widths are before ``width_multiplier``.
    """

    architecture: Literal["fssd", "ssd", "ssdlite"] = "fssd"
    backbone: Literal[
        "vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2", "efficientnet_b3"
    ] = "vgg16"
    num_classes: int = 21
    image_size: int = 300
    batch_norm: bool = False
    width_multiplier: float = 1.0
    # FSSD on VGG16 (as fssd.pytorch): conv7 19x19 -> 17x17 -> 9x9 at 300 pixels.
    extras: list[tuple[int, int, int, int, int]] = field(
        default_factory=lambda: [(256, 512, 3, 1, 0), (128, 256, 3, 2, 1)]
    )
    fusion_channels: int = 256
    pyramid: list[tuple[int, int, int, int]] = field(
        default_factory=lambda: [
            (512, 3, 1, 1),
            (512, 3, 2, 1),
            (256, 3, 2, 1),
            (256, 3, 2, 1),
            (256, 3, 1, 0),
            (256, 3, 1, 0),
        ]
    )
    # What the weights expect: "bgr_caffe" (BGR 0..255 minus 104/117/123: reducedfc and
    # fssd.pytorch weights) or "rgb_imagenet" (torchvision weights).
    pixel_format: Literal["bgr_caffe", "rgb_imagenet"] = "bgr_caffe"
    # "" (random init), "torchvision" (ImageNet weights from the torch hub cache) or a file.
    backbone_weights: str = ""
    # A whole-detector checkpoint to start from: this project's or fssd.pytorch's.
    weights: str = ""
    # A YAML file of channel widths ({group name: width}, as prune.py stores them in a
    # checkpoint's channel_widths): the model is built that narrow, e.g. to train a
    # pruned architecture from scratch or to time it. A pruned checkpoint's own widths win.
    widths_file: str = ""


@dataclass
class PriorConfig:
    """Prior boxes, in input pixels; one entry per feature map. Defaults: FSSD300 on VOC.

    Feature-map sizes are not configured: the model measures them.
    """

    min_sizes: list[float] = field(default_factory=lambda: [30, 60, 111, 162, 213, 264])
    max_sizes: list[float] | None = field(default_factory=lambda: [60, 111, 162, 213, 264, 315])
    aspect_ratios: list[list[float]] = field(
        default_factory=lambda: [[2, 3], [2, 3], [2, 3], [2, 3], [2], [2]]
    )
    steps: list[float] | None = field(default_factory=lambda: [8, 16, 32, 64, 100, 300])
    clip: bool = True
    variances: tuple[float, float] = (0.1, 0.2)


@dataclass
class LossConfig:
    """Matching and multibox loss.

    ``box_loss``: ``smooth_l1`` (SSD's, on the encoded offsets) or an IoU loss on the
    decoded boxes, ``giou``, ``diou`` or ``ciou``, which trains the box overlap that the
    strict COCO thresholds (AP75) reward. IoU losses are about a quarter of smooth-L1's
    size on a typical positive: raise ``loc_weight`` with them (2 is common).
    """

    iou_threshold: float = 0.5
    neg_pos_ratio: int = 3
    min_negatives: int = 0
    loc_weight: float = 1.0
    box_loss: Literal["smooth_l1", "giou", "diou", "ciou"] = "smooth_l1"


@dataclass
class PostProcessConfig:
    """Detection output: thresholds and caps.

    ``nms``: ``hard`` (greedy NMS: a box overlapping a higher-scoring one of its class
    above ``nms_iou_threshold`` is dropped), or Soft-NMS (Bodla et al. 2017), which
    lowers such a box's score instead, so that touching objects of one class (crowds)
    keep their boxes: ``soft_linear`` multiplies it by 1 - IoU above
    ``nms_iou_threshold``, ``soft_gaussian`` by exp(-IoU^2 / ``soft_nms_sigma``) at any
    overlap. Boxes whose score falls to ``score_threshold`` or below are dropped.
    Soft-NMS runs per image and class on the host; the ONNX export has hard NMS only.
    """

    score_threshold: float = 0.01
    pre_nms_topk: int = 200
    nms_iou_threshold: float = 0.45
    max_detections: int = 200
    nms: Literal["hard", "soft_linear", "soft_gaussian"] = "hard"
    soft_nms_sigma: float = 0.5


@dataclass
class DataConfig:
    """Where the images and boxes come from.

    ``dataset`` picks the reader; ``root`` is its folder. Sets name the splits:

    - ``shapes`` and ``custom``: a split name with ``ImageSets/Main/<name>.txt`` under
      ``root`` (``all`` takes every annotation file);
    - ``voc``: ``YEAR/SPLIT`` under a VOCdevkit ``root`` (``2007/trainval``);
    - ``coco``: ``SPLIT`` for ``annotations/instances_SPLIT.json`` with images in
      ``SPLIT/``, or ``ANNOTATION_JSON:IMAGE_DIR`` relative to ``root``.

    ``class_names`` empty means the dataset's own: VOC's 20, COCO's categories, the
    generator's shapes, or (custom) every name found in the annotations.
    """

    dataset: Literal["shapes", "voc", "coco", "custom"] = "shapes"
    root: str = "datasets/shapes"
    train_sets: list[str] = field(default_factory=lambda: ["train"])
    val_sets: list[str] = field(default_factory=lambda: ["val"])
    class_names: list[str] = field(default_factory=list)
    # VOC "difficult" objects: evaluation always ignores them; training may use them.
    train_difficult: bool = False
    # A bad sample (unreadable image, XML without objects, box outside the image or
    # inverted, unknown class): "skip" reports and leaves it out, "stop" ends the run.
    on_bad_sample: Literal["skip", "stop"] = "skip"
    # Boxes narrower or lower than this (pixels of the original image, after clipping)
    # are reported and left out: VOC's inclusive pixels make a box with xmin == xmax
    # 1 px wide (BCCD has such marks). 0 keeps every non-empty box.
    min_box_side: float = 2.0
    # Loader processes per training process; auto: the cores available to this process,
    # shared by the training processes on this machine, less one for the training process
    # itself (at least 1). The first epoch logs how many a run needs if the step waits
    # for data.
    num_workers: int | Literal["auto"] = "auto"
    # The generated shapes dataset (written to root when missing).
    shapes_train_images: int = 2000
    shapes_val_images: int = 300
    shapes_image_size: int = 256
    shapes_seed: int = 0


@dataclass
class AugmentConfig:
    """SSD's training augmentation; each step's probability and range."""

    photometric_prob: float = 0.5
    brightness_delta: float = 32.0
    contrast_range: tuple[float, float] = (0.5, 1.5)
    saturation_range: tuple[float, float] = (0.5, 1.5)
    hue_delta: float = 18.0
    expand_prob: float = 0.5
    expand_max_ratio: float = 4.0
    crop_prob: float = 1.0
    # Minimum IoU of the crop with some box; null means a crop with no constraint. SSD
    # also keeps the whole image as one of the choices (crop_prob < 1 does that too).
    crop_min_ious: list[float | None] = field(
        default_factory=lambda: [None, 0.1, 0.3, 0.5, 0.7, 0.9]
    )
    crop_scale: tuple[float, float] = (0.3, 1.0)
    crop_aspect_ratio: tuple[float, float] = (0.5, 2.0)
    flip_prob: float = 0.5
    # Mosaic (as in YOLOv4): with this probability a training image is four augmented
    # images tiled 2 x 2 and cut back to the input size around a random centre, so that
    # objects keep their scale and each image holds more of them, in new company.
    mosaic_prob: float = 0.0


@dataclass
class TrainConfig:
    """The training run."""

    # "" means runs/<config file name> (runs/default without a config file).
    output_dir: str = ""
    epochs: int = 120
    # A wall-clock budget for the whole run in minutes, evaluations included (0 = none).
    # With one, the length is fitted to the clock (estimated from the first iterations,
    # fitted again at every epoch and evaluation) and train.epochs only shapes the
    # schedule: LR milestones and the train.epochs / train.eval_interval evaluations keep
    # their share of the run. Ends with the final evaluation and best.pt, as any run.
    max_minutes: float = 0.0
    batch_size: int = 32
    seed: int = 0
    device: DeviceChoice = "auto"
    # Mixed precision. auto: bf16 on CUDA (fp16 with a gradient scaler on GPUs without
    # bf16) and on CPUs with native bf16 (AVX512_BF16 or AMX), float32 elsewhere; the
    # choice and its reason are logged. bf16 also runs on other CPUs, emulated and slow;
    # fp16 needs CUDA. none: float32.
    amp: AmpChoice = "auto"
    # NHWC activations. auto: on CUDA (tensor cores) and on CPUs with AVX-512 (oneDNN's
    # NHWC kernels trained the quick start 1.27x faster there); NCHW on other CPUs (on an
    # AVX2 EPYC NHWC trained it at 0.93x: slow BatchNorm at 8 channels).
    channels_last: bool | Literal["auto"] = "auto"
    sync_bn: bool = False
    # Evaluate (eval.metric on the val sets) every N epochs and at the end; 0 = only at
    # the end. The best score keeps best.pt.
    eval_interval: int = 10
    checkpoint_interval: int = 1
    # Also write last.pt when this many minutes passed since the last one (at the next
    # logged iteration, mid-epoch too): it bounds the work an interruption loses when
    # epochs are long. 0 = only every train.checkpoint_interval epochs.
    checkpoint_minutes: float = 30.0
    # Under torchrun: a collective (gradient all-reduce, evaluation gather, barrier)
    # that waits this long fails the run with this setting named (NCCL and gloo).
    dist_timeout_minutes: float = 30.0
    log_interval: int = 20
    # Network slimming stage 1: L1 penalty on BatchNorm scales (0 = off).
    sparsity: float = 0.0
    # Batch mixup (image blend, union of boxes) with this probability.
    mixup_prob: float = 0.0
    mixup_alpha: float = 1.5
    # Images drawn with their detections at the end of training (0 = none).
    visualize_images: int = 8


@dataclass
class SolverConfig:
    """Optimiser, warm-up and LR schedule. Scale ``lr`` linearly with the total batch size.

    SGD with momentum is SSD's recipe; AdamW (decoupled weight decay) converges faster
    from scratch, which the quick start uses.
    """

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # No weight decay on BatchNorm parameters and biases.
    no_decay_norm_and_bias: bool = False
    # Linear warm-up from warmup_factor * lr to lr over the first iterations.
    warmup_iterations: int = 500
    warmup_factor: float = 0.001
    schedule: Literal["multistep", "cosine"] = "multistep"
    # multistep: epochs at which the LR is multiplied by gamma.
    milestones: list[int] = field(default_factory=lambda: [80, 100])
    gamma: float = 0.1
    # cosine: the final LR as a fraction of lr.
    min_lr_factor: float = 0.0
    # Clip the gradient norm (0 = off).
    grad_clip_norm: float = 0.0


# The evaluation metrics, typed once (engine.evaluation takes its list from here).
Metric = Literal["voc07", "voc10", "coco"]
METRICS: tuple[str, ...] = get_args(Metric)


@dataclass
class EvalConfig:
    """Evaluation: metric, batch size and IoU threshold."""

    metric: Metric = "voc07"
    batch_size: int = 16
    iou_threshold: float = 0.5


@dataclass
class Config:
    """The whole experiment; each section is read by its builder only."""

    model: ModelConfig = field(default_factory=ModelConfig)
    priors: PriorConfig = field(default_factory=PriorConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    postprocess: PostProcessConfig = field(default_factory=PostProcessConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


@dataclass(frozen=True)
class Range:
    """The values a number may take: ``low``/``high`` bounds (None: unbounded), each
    inclusive unless ``low_open``/``high_open``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{self.low:g}, {self.high:g}{right}"


POSITIVE = Range(0, low_open=True)
AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
PROBABILITY = Range(0, 1)

# Numbers outside these ranges make no sense (and fail late, deep inside torch, or
# silently do nothing): they are refused where the config is read, key and value named.
RANGES: dict[str, Range] = {
    "model.num_classes": Range(2),
    "model.image_size": AT_LEAST_ONE,
    "model.width_multiplier": POSITIVE,
    "model.fusion_channels": AT_LEAST_ONE,
    "loss.iou_threshold": Range(0, 1, low_open=True),
    "loss.neg_pos_ratio": NON_NEGATIVE,
    "loss.min_negatives": NON_NEGATIVE,
    "loss.loc_weight": NON_NEGATIVE,
    "postprocess.score_threshold": PROBABILITY,
    "postprocess.pre_nms_topk": AT_LEAST_ONE,
    "postprocess.nms_iou_threshold": PROBABILITY,
    "postprocess.max_detections": AT_LEAST_ONE,
    "postprocess.soft_nms_sigma": POSITIVE,
    "data.num_workers": NON_NEGATIVE,
    "data.shapes_train_images": AT_LEAST_ONE,
    "data.shapes_val_images": NON_NEGATIVE,
    "data.shapes_image_size": Range(32),
    "augment.photometric_prob": PROBABILITY,
    "augment.expand_prob": PROBABILITY,
    "augment.expand_max_ratio": Range(1),
    "augment.crop_prob": PROBABILITY,
    "augment.flip_prob": PROBABILITY,
    "augment.mosaic_prob": PROBABILITY,
    "train.epochs": AT_LEAST_ONE,
    "train.max_minutes": NON_NEGATIVE,
    "train.batch_size": AT_LEAST_ONE,
    "train.eval_interval": NON_NEGATIVE,
    "train.checkpoint_interval": AT_LEAST_ONE,
    "train.checkpoint_minutes": NON_NEGATIVE,
    "train.dist_timeout_minutes": POSITIVE,
    "data.min_box_side": NON_NEGATIVE,
    "train.log_interval": AT_LEAST_ONE,
    "train.sparsity": NON_NEGATIVE,
    "train.mixup_prob": PROBABILITY,
    "train.mixup_alpha": POSITIVE,
    "train.visualize_images": NON_NEGATIVE,
    "solver.lr": POSITIVE,
    "solver.momentum": Range(0, 1, high_open=True),
    "solver.weight_decay": NON_NEGATIVE,
    "solver.warmup_iterations": NON_NEGATIVE,
    "solver.warmup_factor": Range(0, 1, low_open=True),
    "solver.gamma": POSITIVE,
    "solver.min_lr_factor": PROBABILITY,
    "solver.grad_clip_norm": NON_NEGATIVE,
    "eval.batch_size": AT_LEAST_ONE,
    "eval.iou_threshold": Range(0, 1, low_open=True),
}


def _check_range(value: Any, dotted: str, source: str) -> None:
    allowed = RANGES.get(dotted)
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if allowed is not None and numeric and not allowed.contains(value):
        raise ConfigError(f"{source}: '{dotted}' must be {allowed.describe()}, got {value!r}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, updated by the YAML file at ``path``, then by ``key=value`` overrides.

    An empty ``train.output_dir`` becomes ``runs/<file name without .yaml>``.
    """
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            with path.open(encoding="utf-8") as handle:
                content = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML: {error}") from error
        if content is None:
            content = {}
        if not isinstance(content, dict):
            raise ConfigError(f"{path}: expected a mapping of sections, got {_type_name(content)}")
        config = merge_dict(config, content, source=str(path))
    for override in overrides or []:
        config = apply_override(config, override)
    if not config.train.output_dir:
        run_name = Path(path).stem if path is not None else "default"
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, output_dir=f"runs/{run_name}")
        )
    return config


def config_from_dict(values: dict[str, Any], source: str = "checkpoint") -> Config:
    """A config rebuilt from :func:`config_to_dict` output (e.g. stored in a checkpoint)."""
    return merge_dict(Config(), values, source=source)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dicts and lists, ready for YAML, JSON or a checkpoint."""
    return _plain(dataclasses.asdict(config))


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again by :func:`load_config`)."""
    atomic_write_text(path, config_to_yaml(config), what="config")


def merge_dict(config: Any, values: dict[str, Any], source: str, prefix: str = "") -> Any:
    """A copy of dataclass ``config`` with ``values`` (nested dicts) applied and checked."""
    hints = get_type_hints(type(config))
    names = [item.name for item in dataclasses.fields(config)]
    updates = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{dotted}'{_suggestion(key, names)}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{source}: '{dotted}' is a section and expects a mapping, "
                    f"got {_type_name(value)}"
                )
            updates[key] = merge_dict(current, value, source, prefix=f"{dotted}.")
        else:
            updates[key] = _coerce(value, hints[key], dotted, source)
            _check_range(updates[key], dotted, source)
    return dataclasses.replace(config, **updates)


def apply_override(config: Config, override: str) -> Config:
    """Apply one ``section.key=value`` override; the value is read as YAML."""
    source = f"override '{override}'"
    dotted, separator, raw_value = override.partition("=")
    dotted = dotted.strip()
    if not separator or not dotted:
        raise ConfigError(f"{source}: expected section.key=value")
    keys = dotted.split(".")
    annotation = _annotation_at(config, keys, source)
    # Text fields take the text as typed, so "yes" or "1" stay strings.
    is_text = annotation is str or (
        get_origin(annotation) is Literal
        and all(isinstance(arg, str) for arg in get_args(annotation))
    )
    if is_text or (_is_optional(annotation, str) and raw_value != "null"):
        value: Any = raw_value
    else:
        try:
            value = yaml.safe_load(raw_value) if raw_value else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"{source}: value is not valid YAML: {error}") from error
    nested: Any = value
    for key in reversed(keys):
        nested = {key: nested}
    return merge_dict(config, nested, source)


def _annotation_at(config: Any, keys: list[str], source: str) -> Any:
    node, annotation = config, None
    for depth, key in enumerate(keys):
        dotted = ".".join(keys[: depth + 1])
        if not dataclasses.is_dataclass(node):
            raise ConfigError(f"{source}: '{'.'.join(keys[:depth])}' has no sub-keys")
        names = [item.name for item in dataclasses.fields(node)]
        if key not in names:
            raise ConfigError(f"{source}: unknown key '{dotted}'{_suggestion(key, names)}")
        annotation = get_type_hints(type(node))[key]
        node = getattr(node, key)
    if dataclasses.is_dataclass(node):
        raise ConfigError(f"{source}: '{'.'.join(keys)}' is a section; set one of its keys")
    return annotation


def _coerce(value: Any, annotation: Any, dotted: str, source: str) -> Any:
    """``value`` checked against (and converted to) the type ``annotation``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, dotted, source)
            except ConfigError:
                continue
        raise _type_error(value, annotation, dotted, source)
    if origin is Literal:
        if value in args:
            return value
        choices = ", ".join(repr(choice) for choice in args)
        raise ConfigError(f"{source}: '{dotted}' must be one of {choices}, got {value!r}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, annotation, dotted, source)
        return [_coerce(item, args[0], f"{dotted}[{i}]", source) for i, item in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, annotation, dotted, source)
        if len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
        else:
            item_types = list(args)
            if len(value) != len(item_types):
                raise ConfigError(
                    f"{source}: '{dotted}' expects {len(item_types)} values, got {len(value)}"
                )
        return tuple(
            _coerce(item, item_type, f"{dotted}[{i}]", source)
            for i, (item, item_type) in enumerate(zip(value, item_types, strict=True))
        )
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads 1e-3 (no dot) as text; accept any number float() understands.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"{source}: '{dotted}' has unsupported type {annotation!r}")
    raise _type_error(value, annotation, dotted, source)


def _type_error(value: Any, annotation: Any, dotted: str, source: str) -> ConfigError:
    expected = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
    if get_origin(annotation) is not None:
        expected = str(annotation).replace("typing.", "")
    return ConfigError(
        f"{source}: '{dotted}' expects {expected}, got {value!r} ({_type_name(value)})"
    )


def _is_optional(annotation: Any, inner: type) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and set(get_args(annotation)) == {
        inner,
        type(None),
    }


def _suggestion(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (known keys: {', '.join(names)})"


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


__all__ = [
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "LossConfig",
    "ModelConfig",
    "PostProcessConfig",
    "PriorConfig",
    "SolverConfig",
    "TrainConfig",
    "apply_override",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "load_config",
    "merge_dict",
    "save_config",
]
