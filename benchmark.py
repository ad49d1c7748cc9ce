"""Measure a detector's speed end to end, forward only and post-processing only.

    python benchmark.py --config configs/fssd300_voc.yaml --compare torchvision
    python benchmark.py --checkpoint runs/quickstart_shapes/best.pt --batch-size 16
    python benchmark.py --config configs/fssd300_voc.yaml --device cuda --batch-size 64 \\
        --amp bf16 --channels-last --inference-mode --cuda-graphs --json runs/bench.json

Inputs are decoded RGB images (``--images DIR``, else random ones of ``--input-size``);
decoding is excluded, everything after it is timed: resizing and upload
(``preprocess``), the network (``forward``), post-processing with the detections copied
back to the host in pixels (``post``). Each measurement is the median of ``--repeats``
calls after ``--warmup`` calls, CUDA-synchronised between the parts. Batch 1 gives the
latency, ``--batch-size`` the throughput.

``--compare torchvision`` runs torchvision's ``ssd300_vgg16`` (random weights; its own
transform, anchors and post-processing) on the same images in the same process, its
calls interleaved with ours. It gets the config's number of classes and every speed
path ours gets that applies to it (NHWC, inference mode, compile, autocast, CUDA
graphs; BatchNorm folding does not apply, its VGG16 has none). The table gives each
model's GFLOPs, the GFLOP/s its forward reached, and a float32 matrix product's
GFLOP/s on the same device in the same run (the machine's practical limit), then our
time over its time.

``--backend onnxruntime`` times ours as one end-to-end ONNX graph in ONNX Runtime on the
CPU (``engine/export.py``): its ``forward`` then includes the post-processing, and
``post`` is only the conversion to each image's pixels; ``--int8`` quantizes it
(``engine/quantize.py``), calibrated on ``--calibration-images`` of the timed images.
torchvision's model keeps running in PyTorch with the speed flags given. When more than
one runner is timed, ONNX Runtime's threads do not spin-wait after a run (they would
hold the cores and slow the runner that follows: a pruned FSSD300 measured 159 ms after
an ONNX Runtime call and 117 ms without); the table says so.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from data.records import IMAGE_EXTENSIONS, BadSampleError, read_image
from engine.export import build_pipeline as build_export_pipeline
from engine.inference import (
    DetectorPipeline,
    NetworkRunner,
    OnnxRuntimePipeline,
    SpeedOptions,
    grad_mode,
    speed_options,
)
from engine.loading import build_model_to_run
from engine.machine import measure_limits
from engine.throughput import TRAINING_FLOPS_PER_FORWARD, measure_training
from models.build import count_flops
from utils.cli import (
    add_backend_arguments,
    add_checkpoint_argument,
    add_config_arguments,
    add_device_argument,
    add_speed_arguments,
    positive_int,
    run_command,
)
from utils.config import ConfigError
from utils.device import choose_device
from utils.log import setup_logging
from utils.timing import run_interleaved, synchronize

logger = logging.getLogger("benchmark")

PARTS = ("preprocess", "forward", "post")


# --compare choices that time ours again on another backend: (backend, int8).
OUR_VARIANTS = {"onnxruntime": ("onnxruntime", False), "onnxruntime-int8": ("onnxruntime", True)}
COMPARISONS = ("torchvision", *OUR_VARIANTS)


def comparisons(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in COMPARISONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {', '.join(unknown)}; choose from {', '.join(COMPARISONS)}"
        )
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a detector (and optionally torchvision's SSD300) end to end.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_config_arguments(parser)
    add_checkpoint_argument(
        parser, help="weights to time (a pruned checkpoint brings its widths); default: random"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="throughput batch (default 8)"
    )
    parser.add_argument("--repeats", type=positive_int, default=10, help="timed calls (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights and images (default 0)"
    )
    parser.add_argument(
        "--images", type=Path, default=None, help="a folder of images to use as inputs"
    )
    parser.add_argument(
        "--input-size",
        default="500x375",
        help="WIDTHxHEIGHT of the random input images (default 500x375, a typical VOC photo)",
    )
    add_speed_arguments(parser, all_paths=True)
    add_backend_arguments(parser)
    parser.add_argument(
        "--compare",
        type=comparisons,
        default=[],
        metavar="WHAT[,WHAT]",
        help="also time, on the same inputs and interleaved, a comma-separated list of: "
        "torchvision (its ssd300_vgg16), onnxruntime (ours as the end-to-end ONNX graph in "
        "ONNX Runtime), onnxruntime-int8 (its int8 version)",
    )
    parser.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="OVERRIDES",
        help="time another variant of our model too: the config with these overrides "
        "(';'-separated), e.g. --also model.widths_file=configs/widths/X.yaml; repeatable",
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="time training instead: the training step on --repeats batches from the "
        "config's loader (train.batch_size, train.amp, train.channels_last as configured), "
        "the loader on its own, and the step's share of the machine's limit",
    )
    parser.add_argument(
        "--feed-rate",
        type=float,
        default=None,
        metavar="IMAGES_PER_S",
        help="with --train: also say how many loader workers (cores) a step of this rate "
        "needs, e.g. a GPU's",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    return parser.parse_intermixed_args(argv)


def load_images(
    folder: Path | None, input_size: str, count: int, seed: int = 0
) -> list[np.ndarray]:
    """``count`` decoded RGB uint8 images: from ``folder`` (cycled) or random."""
    if folder is None:
        try:
            width, height = (int(side) for side in input_size.lower().split("x"))
        except ValueError:
            raise ConfigError(f"--input-size must be WIDTHxHEIGHT, got {input_size!r}") from None
        rng = np.random.default_rng(seed)
        return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(count)]
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS)
    images = []
    for path in paths:
        try:
            images.append(read_image(path))
        except BadSampleError as error:
            logger.warning("%s (skipped)", error)
    if not images:
        raise ConfigError(f"{folder}: no readable images")
    return [images[index % len(images)] for index in range(count)]


class Runner:
    """One system under test: a call on a list of images returning seconds per part.
    It names the network it runs, its input size, class count and speed paths."""

    name: str
    network: nn.Module
    input_size: int
    num_classes: int
    options: SpeedOptions

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, float]:
        raise NotImplementedError


class PipelineRunner(Runner):
    def __init__(self, name: str, pipeline: DetectorPipeline, num_classes: int) -> None:
        self.name = name
        self.pipeline = pipeline
        self.network = pipeline.model
        self.input_size = pipeline.image_size
        self.num_classes = num_classes
        self.options = pipeline.options

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, float]:
        pipeline, device = self.pipeline, self.pipeline.device
        with pipeline.grad_mode():
            return timed_parts(
                device,
                lambda _: pipeline.preprocess(images),
                lambda batch: pipeline.forward(batch),
                lambda outputs: pipeline.postprocess(outputs, [i.shape[:2] for i in images]),
            )


def peer_options(options: SpeedOptions) -> SpeedOptions:
    """The speed paths torchvision's SSD300 gets: every one ours gets, except BatchNorm
    folding, which does not apply (its VGG16 has no BatchNorm)."""
    return dataclasses.replace(options, fold_bn=False)


class TorchvisionNetwork(nn.Module):
    """torchvision SSD's backbone and head as one module, so that the same speed paths
    (NHWC, autocast, compile, CUDA graphs) wrap it as they wrap ours: normalised images
    -> box regression, class logits, and the feature maps (the anchors need their
    sizes)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = list(self.backbone(images).values())
        outputs = self.head(features)
        return outputs["bbox_regression"], outputs["cls_logits"], *features


class TorchvisionRunner(Runner):
    """torchvision's SSD300-VGG16 (random weights) with ``num_classes`` classes and the
    given speed paths, split into the same parts as ours: the tensor conversion and its
    transform (resize, normalise) / backbone and head / anchors, its post-processing
    and the copy of the detections to the host."""

    def __init__(self, device: torch.device, options: SpeedOptions, num_classes: int) -> None:
        from torchvision.models.detection import ssd300_vgg16

        self.name = "torchvision ssd300_vgg16"
        self.model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes)
        self.model.eval().to(device)
        self.num_classes = num_classes
        self.options = options
        self.runner = NetworkRunner(TorchvisionNetwork(self.model), device=device, options=options)
        self.network = self.runner.module
        self.input_size = 300
        self.device = device

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, float]:
        model = self.model
        sizes = [tuple(image.shape[:2]) for image in images]

        def preprocess(_: Any) -> Any:
            tensors = [
                torch.from_numpy(image).to(self.device).permute(2, 0, 1).float() / 255.0
                for image in images
            ]
            return model.transform(tensors)[0]

        def forward(image_list: Any) -> Any:
            bbox_regression, cls_logits, *features = self.runner(image_list.tensors)
            head_outputs = {"bbox_regression": bbox_regression, "cls_logits": cls_logits}
            return head_outputs, features, image_list

        def post(state: Any) -> Any:
            head_outputs, features, image_list = state
            anchors = model.anchor_generator(image_list, features)
            detections = model.postprocess_detections(head_outputs, anchors, image_list.image_sizes)
            detections = model.transform.postprocess(detections, image_list.image_sizes, sizes)
            return [{key: value.cpu().numpy() for key, value in d.items()} for d in detections]

        with grad_mode(self.options):
            return timed_parts(self.device, preprocess, forward, post)


def timed_parts(device: torch.device, *steps: Callable[[Any], Any]) -> dict[str, float]:
    """Run ``preprocess``, ``forward``, ``post`` in a chain; seconds of each."""
    seconds, value = {}, None
    synchronize(device)
    for part, step in zip(PARTS, steps, strict=True):
        start = time.perf_counter()
        value = step(value)
        synchronize(device)
        seconds[part] = time.perf_counter() - start
    return seconds


def measure(
    runners: Sequence[Runner], images: Sequence[np.ndarray], *, warmup: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Median ms per part (and in total) per runner, runners interleaved call by call
    (:func:`utils.timing.run_interleaved`)."""
    samples = run_interleaved(
        {runner.name: lambda runner=runner: runner(images) for runner in runners},
        warmup=warmup,
        repeats=repeats,
    )
    results = {}
    for name, calls in samples.items():
        medians = {f"{part}_ms": 1000 * statistics.median(c[part] for c in calls) for part in PARTS}
        medians["total_ms"] = 1000 * statistics.median(sum(c.values()) for c in calls)
        results[name] = medians
    return results


def build_pipeline(
    args: argparse.Namespace,
    device: torch.device,
    config: Any,
    model: nn.Module,
    *,
    backend: str,
    int8: bool,
    onnx_path: Path | None = None,
) -> DetectorPipeline:
    def calibration() -> list[np.ndarray]:
        # The timed images themselves (--images, else random ones): the weights may be
        # random too, and no training set is needed.
        size = config.model.image_size
        images = load_images(args.images, args.input_size, args.calibration_images, args.seed)
        resized = np.stack([cv2.resize(image, (size, size)) for image in images])
        return [np.ascontiguousarray(resized.transpose(0, 3, 1, 2))]

    return build_export_pipeline(
        model,
        config,
        backend=backend,
        device=device,
        options=speed_options(args),
        onnx_path=onnx_path,
        calibration=calibration if int8 else None,
    )


def print_table(results: dict[str, Any]) -> None:
    width = max(len(name) for name in results["models"]) + 2
    for label, key in (("batch 1", "batch_1"), (f"batch {results['batch_size']}", "batch_n")):
        print(f"{label}: ms per call (median of {results['repeats']})")
        print(
            f"{'':<{width}}{'preprocess':>11}{'forward':>10}{'post':>9}{'total':>10}{'img/s':>9}"
            f"{'GFLOP/s':>9}"
        )
        for name, row in results[key].items():
            images = results["batch_size"] if key == "batch_n" else 1
            print(
                f"{name:<{width}}{row['preprocess_ms']:>11.2f}{row['forward_ms']:>10.2f}"
                f"{row['post_ms']:>9.2f}{row['total_ms']:>10.2f}"
                f"{1000 * images / row['total_ms']:>9.1f}{row['forward_gflops_per_s']:>9.1f}"
            )
    print("models (GFLOP/s above is of the forward):")
    for name, model in results["models"].items():
        given = [key for key, value in model["options"].items() if value not in (False, "none")]
        print(
            f"  {name}: {model['gflops']:.2f} GFLOPs at {model['input_size']} px, "
            f"{model['num_classes']} classes, speed paths: {', '.join(given) or 'none'}"
        )
    if results.get("onnxruntime_spinning") is False:
        print("ONNX Runtime: intra-op thread spinning off (runners interleaved)")
    print(results["limits"]["described"])
    for line in results.get("ratios", []):
        print(line)


def build_runners(
    args: argparse.Namespace, device: torch.device
) -> tuple[list[Runner], Any, DetectorPipeline]:
    """Ours (``--backend``, ``--int8``) and each ``--also`` variant of it, each on every
    backend ``--compare`` names, and with ``--compare torchvision`` torchvision's SSD300
    with the same speed paths (:func:`peer_options`) and the config's class count; the
    config and our first pipeline. The backends of one variant run the same weights."""
    config, model = build_model_to_run(args.config, args.overrides, args.checkpoint)
    models = {"": (config, model)}
    for also in args.also:
        extra = [item.strip() for item in also.split(";") if item.strip()]
        models[", " + "; ".join(extra)] = build_model_to_run(
            args.config, [*args.overrides, *extra], args.checkpoint
        )
    variants = [(args.backend, args.int8)]
    variants += [OUR_VARIANTS[name] for name in args.compare if name in OUR_VARIANTS]
    runners: list[Runner] = []
    for label, (variant_config, variant_model) in models.items():
        for backend, int8 in dict.fromkeys(variants):
            pipeline = build_pipeline(
                args,
                device,
                variant_config,
                copy.deepcopy(variant_model),
                backend=backend,
                int8=int8,
                # --onnx is an export of the main model, on the main backend only.
                onnx_path=args.onnx if not label and backend == args.backend else None,
            )
            runtime = "" if backend == "torch" else f", {backend}{' int8' if int8 else ''}"
            name = f"ours ({variant_config.model.architecture}{runtime}{label})"
            runners.append(PipelineRunner(name, pipeline, variant_config.model.num_classes))
    if "torchvision" in args.compare:
        runners.append(
            TorchvisionRunner(device, peer_options(speed_options(args)), config.model.num_classes)
        )
    if len(runners) > 1:
        # Interleaved calls: ONNX Runtime's threads would spin on the cores after each run
        # and slow the runner that follows (a pruned FSSD300: 159 ms against 117 ms).
        for runner in runners:
            if isinstance(runner, PipelineRunner) and isinstance(
                runner.pipeline, OnnxRuntimePipeline
            ):
                runner.pipeline = runner.pipeline.without_spinning()
                logger.info("%s: ONNX Runtime thread spinning off between runs", runner.name)
    return runners, config, runners[0].pipeline


def describe(runner: Runner) -> dict[str, Any]:
    """What a runner was given and the size of its network."""
    return {
        "options": dataclasses.asdict(runner.options),
        "num_classes": runner.num_classes,
        "input_size": runner.input_size,
        "gflops": count_flops(runner.network, runner.input_size) / 1e9,
    }


def main(args: argparse.Namespace) -> int:
    setup_logging(is_main=True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device, origin="--device")
    torch.manual_seed(args.seed)  # random weights decide how much post-processing does
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.train:
        return benchmark_training(args, device)
    runners, config, pipeline = build_runners(args, device)
    images = load_images(args.images, args.input_size, args.batch_size, args.seed)
    models = {runner.name: describe(runner) for runner in runners}

    limits = measure_limits(device)
    results: dict[str, Any] = {
        "device": limits.device,
        "cpu_flags": limits.flags,
        "threads": limits.threads,
        "torch": torch.__version__,
        "options": vars(pipeline.options),
        "image_size": config.model.image_size,
        "num_priors": int(pipeline.model.priors_cxcywh.shape[0]),
        "num_classes": config.model.num_classes,
        "gflops": models[runners[0].name]["gflops"],
        "models": models,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "seed": args.seed,
        "limits": {**dataclasses.asdict(limits), "described": limits.describe()},
        "onnxruntime_spinning": not any(
            isinstance(runner, PipelineRunner)
            and isinstance(runner.pipeline, OnnxRuntimePipeline)
            and not runner.pipeline.spinning
            for runner in runners
        ),
    }
    results["batch_1"] = measure(runners, images[:1], warmup=args.warmup, repeats=args.repeats)
    results["batch_n"] = measure(runners, images, warmup=args.warmup, repeats=args.repeats)
    for key, batch in (("batch_1", 1), ("batch_n", args.batch_size)):
        for name, row in results[key].items():
            row["forward_gflops_per_s"] = models[name]["gflops"] * batch / row["forward_ms"] * 1e3
    results["ratios"] = ratio_lines(results, [runner.name for runner in runners])
    print_table(results)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def benchmark_training(args: argparse.Namespace, device: torch.device) -> int:
    """``--train``: the training step, the loader and the machine's limit, in one run."""
    config, _ = build_model_to_run(args.config, args.overrides, args.checkpoint)
    measured = measure_training(config, device=device, batches=args.repeats)
    limits = measure_limits(device)
    layout = "NHWC" if measured.channels_last else "NCHW"
    share = measured.step_gflops_per_second / limits.limit_gflops
    lines = [
        f"training step ({config.model.architecture} {config.model.backbone}, "
        f"{config.model.image_size} px, batch {measured.batch_size}, {measured.precision}, "
        f"{layout}; {args.repeats} batches after 1 untimed): "
        f"{measured.step_images_per_second:.1f} images/s, "
        f"{measured.step_gflops_per_second:.1f} GFLOP/s "
        f"({TRAINING_FLOPS_PER_FORWARD} x {measured.forward_gflops:.3f} forward GFLOPs per "
        f"image) = {share:.0%} of the limit",
        f"data loading (data.num_workers={measured.loader_workers}, {args.repeats} batches "
        f"after the first): {measured.loader_images_per_second:.1f} images/s, "
        f"{measured.per_worker:.1f} per worker; the step above needs "
        f"{measured.step_images_per_second / measured.per_worker:.2f} workers' output",
    ]
    if args.feed_rate:
        lines.append(
            f"a step of {args.feed_rate:g} images/s needs "
            f"{args.feed_rate / measured.per_worker:.2f} workers' output: "
            f"data.num_workers={measured.workers_for(args.feed_rate)} (a core each)"
        )
    lines.append(limits.describe())
    print("\n".join(lines))
    if args.json is not None:
        results = {
            "training": dataclasses.asdict(measured),
            "limit_share": share,
            "limits": dataclasses.asdict(limits),
            "torch": torch.__version__,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def ratio_lines(results: dict[str, Any], names: list[str]) -> list[str]:
    """Each of our variants against torchvision's SSD300 (when timed) and against our
    first variant: total, forward and post-processing times."""
    ours = [name for name in names if name.startswith("ours")]
    references = [name for name in names if not name.startswith("ours")] + ours[:1]
    lines = []
    for reference in references:
        for name in ours:
            if name == reference:
                continue
            for key in ("batch_1", "batch_n"):
                rows = results[key]
                parts = ", ".join(
                    f"{part.removesuffix('_ms')} {rows[name][part] / rows[reference][part]:.3f}"
                    for part in ("total_ms", "forward_ms", "post_ms")
                )
                lines.append(f"{key.replace('_', ' ')}: {name} / {reference}: {parts}")
    return lines


if __name__ == "__main__":
    run_command(main, parse_args)
