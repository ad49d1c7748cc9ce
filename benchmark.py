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
calls interleaved with ours, and prints our time over its time.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from data.dataset import IMAGE_EXTENSIONS
from models.build import build_model_to_run, build_postprocessor, count_flops
from models.pruning import PruningError
from models.weights import WeightsError
from utils.checkpoint import CheckpointError
from utils.config import ConfigError, add_config_arguments
from utils.inference import InferencePipeline, SpeedOptions
from utils.log import setup_logging
from utils.timing import synchronize

logger = logging.getLogger("benchmark")

PARTS = ("preprocess", "forward", "post")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a detector (and optionally torchvision's SSD300) end to end.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="weights to time (a pruned checkpoint brings its widths); default: random weights",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="throughput batch (default 8)")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: CUDA if any"
    )
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
    parser.add_argument("--channels-last", action="store_true", help="NHWC activations")
    parser.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the convs")
    parser.add_argument(
        "--inference-mode", action="store_true", help="torch.inference_mode (else no_grad)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument(
        "--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast (CUDA)"
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="replay the forward as a CUDA graph"
    )
    parser.add_argument(
        "--compare",
        choices=["torchvision"],
        default=None,
        help="also time torchvision's ssd300_vgg16 on the same inputs, interleaved",
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
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            logger.warning("%s: not a readable image, skipped", path)
            continue
        images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    if not images:
        raise ConfigError(f"{folder}: no readable images")
    return [images[index % len(images)] for index in range(count)]


class Runner:
    """One system under test: a call on a list of images returning seconds per part."""

    name: str

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, float]:
        raise NotImplementedError


class PipelineRunner(Runner):
    def __init__(self, name: str, pipeline: InferencePipeline) -> None:
        self.name = name
        self.pipeline = pipeline

    def __call__(self, images: Sequence[np.ndarray]) -> dict[str, float]:
        pipeline, device = self.pipeline, self.pipeline.device
        with pipeline.grad_mode():
            return timed_parts(
                device,
                lambda _: pipeline.preprocess(images),
                lambda batch: pipeline.forward(batch),
                lambda outputs: pipeline.postprocess(*outputs, [i.shape[:2] for i in images]),
            )


class TorchvisionRunner(Runner):
    """torchvision's SSD300-VGG16 split into the same parts: the tensor conversion and
    its transform (resize, normalise) / backbone, head and anchors / its post-processing
    and the copy of the detections to the host."""

    def __init__(self, device: torch.device, inference_mode: bool) -> None:
        from torchvision.models.detection import ssd300_vgg16

        self.name = "torchvision ssd300_vgg16"
        self.model = ssd300_vgg16(weights=None, weights_backbone=None).eval().to(device)
        self.device = device
        self.inference_mode = inference_mode

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
            features = list(model.backbone(image_list.tensors).values())
            head_outputs = model.head(features)
            return head_outputs, model.anchor_generator(image_list, features), image_list

        def post(state: Any) -> Any:
            head_outputs, anchors, image_list = state
            detections = model.postprocess_detections(head_outputs, anchors, image_list.image_sizes)
            detections = model.transform.postprocess(detections, image_list.image_sizes, sizes)
            return [{key: value.cpu().numpy() for key, value in d.items()} for d in detections]

        mode = torch.inference_mode() if self.inference_mode else torch.no_grad()
        with mode:
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
    """Median ms per part (and in total) per runner, runners interleaved call by call."""
    for runner in runners:
        for _ in range(warmup):
            runner(images)
    samples: dict[str, list[dict[str, float]]] = {runner.name: [] for runner in runners}
    for _ in range(repeats):
        for runner in runners:
            samples[runner.name].append(runner(images))
    results = {}
    for name, calls in samples.items():
        medians = {f"{part}_ms": 1000 * statistics.median(c[part] for c in calls) for part in PARTS}
        medians["total_ms"] = 1000 * statistics.median(sum(c.values()) for c in calls)
        results[name] = medians
    return results


def choose_device(preference: str) -> torch.device:
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is available")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def build_pipeline(args: argparse.Namespace, device: torch.device) -> tuple[InferencePipeline, Any]:
    config, model = build_model_to_run(args.config, args.overrides, args.checkpoint)
    options = SpeedOptions(
        channels_last=args.channels_last,
        fold_bn=args.fold_bn,
        inference_mode=args.inference_mode,
        compile=args.compile,
        autocast=args.amp,
        cuda_graphs=args.cuda_graphs,
    )
    postprocessor = build_postprocessor(config, model.priors_cxcywh)
    pipeline = InferencePipeline(
        model, postprocessor, image_size=config.model.image_size, device=device, options=options
    )
    return pipeline, config


def print_table(results: dict[str, Any]) -> None:
    for label, key in (("batch 1", "batch_1"), (f"batch {results['batch_size']}", "batch_n")):
        print(f"{label}: ms per call (median of {results['repeats']})")
        print(f"{'':<28}{'preprocess':>11}{'forward':>10}{'post':>9}{'total':>10}{'img/s':>9}")
        for name, row in results[key].items():
            images = results["batch_size"] if key == "batch_n" else 1
            print(
                f"{name:<28}{row['preprocess_ms']:>11.2f}{row['forward_ms']:>10.2f}"
                f"{row['post_ms']:>9.2f}{row['total_ms']:>10.2f}"
                f"{1000 * images / row['total_ms']:>9.1f}"
            )
    for line in results.get("ratios", []):
        print(line)


def main(args: argparse.Namespace) -> int:
    setup_logging(is_main=True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    torch.manual_seed(args.seed)  # random weights decide how much post-processing does
    pipeline, config = build_pipeline(args, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    runners: list[Runner] = [PipelineRunner(f"ours ({config.model.architecture})", pipeline)]
    if args.compare == "torchvision":
        runners.append(TorchvisionRunner(device, inference_mode=args.inference_mode))
    images = load_images(args.images, args.input_size, args.batch_size, args.seed)

    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "options": vars(pipeline.options),
        "image_size": config.model.image_size,
        "num_priors": int(pipeline.model.priors_cxcywh.shape[0]),
        "num_classes": config.model.num_classes,
        "gflops": count_flops(pipeline.model, config.model.image_size) / 1e9,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "seed": args.seed,
    }
    results["batch_1"] = measure(runners, images[:1], warmup=args.warmup, repeats=args.repeats)
    results["batch_n"] = measure(runners, images, warmup=args.warmup, repeats=args.repeats)
    if len(runners) == 2:
        ours, theirs = (runner.name for runner in runners)
        results["ratios"] = [
            f"{key.replace('_', ' ')}: {part} ours/torchvision = "
            f"{results[key][ours][part] / results[key][theirs][part]:.3f}"
            for key in ("batch_1", "batch_n")
            for part in ("total_ms", "forward_ms", "post_ms")
        ]
    print_table(results)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(parse_args()))
    except (ConfigError, CheckpointError, WeightsError, PruningError) as error:
        sys.exit(f"error: {error}")
