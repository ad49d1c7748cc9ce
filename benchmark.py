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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.transforms import resize_batch
from engine.inference import (
    DetectorPipeline,
    OnnxRuntimePipeline,
    SpeedOptions,
    build_pipeline,
)
from engine.loading import load_model
from engine.machine import measure_limits
from engine.speed import (
    PipelineRunner,
    Runner,
    TorchvisionRunner,
    describe,
    load_images,
    measure,
    peer_options,
    ratio_lines,
)
from engine.throughput import TRAINING_FLOPS_PER_FORWARD, measure_training
from utils.cli import (
    add_backend_arguments,
    add_checkpoint_argument,
    add_device_argument,
    add_out_argument,
    add_repeats_argument,
    add_speed_arguments,
    positive_int,
    run_command,
    script_parser,
    speed_flags,
)
from utils.device import choose_device
from utils.log import setup_logging

logger = logging.getLogger("benchmark")

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
    parser = script_parser(
        "Time a detector (and optionally torchvision's SSD300) end to end.", __doc__, config=True
    )
    add_checkpoint_argument(
        parser, help="weights to time (a pruned checkpoint brings its widths); default: random"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=8, help="throughput batch (default 8)"
    )
    add_repeats_argument(parser, default=10, what="calls")
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
    add_out_argument(parser, help="write the results here (JSON)", aliases=("--json",))
    return parser.parse_intermixed_args(argv)


def timed_images_calibration(
    args: argparse.Namespace, image_size: int
) -> Callable[[], list[np.ndarray]]:
    """``--int8``'s calibration: the timed images themselves (``--images``, else random
    ones), since the weights may be random too and no training set is needed."""

    def calibration() -> list[np.ndarray]:
        images = load_images(args.images, args.input_size, args.calibration_images, args.seed)
        return [resize_batch(images, image_size, channels_first=True)]

    return calibration


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
    config, model, _ = load_model(args.config, args.overrides, args.checkpoint)
    models = {"": (config, model)}
    for also in args.also:
        extra = [item.strip() for item in also.split(";") if item.strip()]
        models[", " + "; ".join(extra)] = load_model(
            args.config, [*args.overrides, *extra], args.checkpoint
        )[:2]
    variants = [(args.backend, args.int8)]
    variants += [OUR_VARIANTS[name] for name in args.compare if name in OUR_VARIANTS]
    runners: list[Runner] = []
    for label, (variant_config, variant_model) in models.items():
        for backend, int8 in dict.fromkeys(variants):
            pipeline = build_pipeline(
                copy.deepcopy(variant_model),
                variant_config,
                backend=backend,
                device=device,
                options=SpeedOptions(**speed_flags(args)),
                # --onnx is an export of the main model, on the main backend only.
                onnx_path=args.onnx if not label and backend == args.backend else None,
                calibration=(
                    timed_images_calibration(args, variant_config.model.image_size)
                    if int8
                    else None
                ),
            )
            runtime = "" if backend == "torch" else f", {backend}{' int8' if int8 else ''}"
            name = f"ours ({variant_config.model.architecture}{runtime}{label})"
            runners.append(PipelineRunner(name, pipeline, variant_config.model.num_classes))
    if "torchvision" in args.compare:
        runners.append(
            TorchvisionRunner(
                device, peer_options(SpeedOptions(**speed_flags(args))), config.model.num_classes
            )
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
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


def benchmark_training(args: argparse.Namespace, device: torch.device) -> int:
    """``--train``: the training step, the loader and the machine's limit, in one run."""
    config, _, _ = load_model(args.config, args.overrides, args.checkpoint)
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
    if args.out is not None:
        results = {
            "training": dataclasses.asdict(measured),
            "limit_share": share,
            "limits": dataclasses.asdict(limits),
            "torch": torch.__version__,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_command(main, parse_args)
