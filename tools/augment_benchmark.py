"""Images per second of one worker: this project's OpenCV/NumPy SSD augmentation against
the same pipeline on ``torchvision.transforms.v2`` (as torchvision's SSD recipe builds it).

    python -m tools.augment_benchmark --images ../shared/data/voc_mini/VOC2012/JPEGImages

Both run in this process, one thread, on the same decoded images and boxes, decoding
excluded; then ours again with decoding (``data.records.read_image`` and the
augmentation: a loader worker's whole job). Prints images/s for each and the ratio.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from data.records import IMAGE_EXTENSIONS, read_image
from data.transforms import SSDAugmentation
from utils.cli import (
    add_repeats_argument,
    run_command,
)
from utils.pixels import MEAN_FILL_RGB
from utils.timing import time_interleaved


def torchvision_v2_pipeline(size: int) -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomPhotometricDistort(p=0.5),
            v2.RandomZoomOut(fill=list(MEAN_FILL_RGB), side_range=(1.0, 4.0), p=0.5),
            v2.RandomIoUCrop(),
            v2.RandomHorizontalFlip(p=0.5),
            v2.Resize((size, size), antialias=False),
            v2.SanitizeBoundingBoxes(),
        ]
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, required=True, help="folder of JPEG/PNG images")
    parser.add_argument("--size", type=int, default=300, help="model input side")
    add_repeats_argument(parser, default=3, what="passes over the images")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    paths = sorted(
        path for path in args.images.iterdir() if path.suffix.lower() in IMAGE_EXTENSIONS
    )
    images = [read_image(path) for path in paths]
    rng = np.random.default_rng(0)
    samples = []
    for image in images:
        height, width = image.shape[:2]
        # Two plausible boxes per image: what matters here is the cost, not the content.
        x1, y1 = rng.uniform(0, width / 2), rng.uniform(0, height / 2)
        boxes = np.array(
            [[x1, y1, x1 + width / 3, y1 + height / 3], [0, 0, width / 2, height / 2]],
            dtype=np.float32,
        )
        samples.append((image, boxes, np.array([1, 2])))

    ours = SSDAugmentation(size=args.size)
    passes = itertools.count()

    def ours_pass() -> None:
        repeat = next(passes)
        for index, (image, boxes, labels) in enumerate(samples):
            ours(image, boxes, labels, np.random.default_rng([repeat, index]))

    def worker_pass() -> None:
        repeat = next(passes)
        for index, (path, (_, boxes, labels)) in enumerate(zip(paths, samples, strict=True)):
            ours(read_image(path), boxes, labels, np.random.default_rng([repeat, index]))

    pipeline = torchvision_v2_pipeline(args.size)
    torch.manual_seed(0)

    def v2_pass() -> None:
        for image, boxes, labels in samples:
            tensor = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
            target = {
                "boxes": tv_tensors.BoundingBoxes(
                    torch.from_numpy(boxes), format="XYXY", canvas_size=image.shape[:2]
                ),
                "labels": torch.from_numpy(labels),
            }
            pipeline(tensor, target)

    # Passes interleaved, so that the three share the machine's noise; the median pass.
    seconds = time_interleaved(
        {"ours": ours_pass, "worker": worker_pass, "v2": v2_pass}, warmup=0, repeats=args.repeats
    )
    ours_rate, worker_rate, v2_rate = (
        len(samples) / statistics.median(seconds[name]) for name in ("ours", "worker", "v2")
    )

    print(f"images: {len(samples)} x {args.repeats} passes, input {args.size}, one thread")
    print(f"OpenCV/NumPy SSDAugmentation     {ours_rate:8.1f} images/s")
    print(f"  with decoding (a worker's job) {worker_rate:8.1f} images/s")
    print(f"torchvision.transforms.v2        {v2_rate:8.1f} images/s")
    print(f"ratio (ours / v2)                {ours_rate / v2_rate:8.2f}x")
    return 0


if __name__ == "__main__":
    run_command(main, parse_args)
