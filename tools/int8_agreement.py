"""How closely the int8 end-to-end graph follows the float32 one: each float32 detection
matched to the int8 detection of highest IoU (same image), reported as the mean IoU,
the share with IoU >= 0.5 and the same label, and the score difference.

    python -m tools.int8_agreement --config configs/fssd300_voc.yaml \\
        --images ../shared/data/voc_mini/VOC2012/JPEGImages --calibration-images 32

Without ``--checkpoint`` the weights are random (seeded by ``--seed``). Calibration uses
the first ``--calibration-images`` of the folder; the comparison the rest (at most
``--test-images``), so no image is both.
"""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path

import numpy as np
import torch

from data.records import BadSampleError, read_image
from data.transforms import resize_batch, resize_image
from engine.inference import SpeedOptions, build_pipeline
from engine.loading import load_model
from utils.boxes import box_iou
from utils.cli import (
    add_calibration_argument,
    add_checkpoint_argument,
    positive_int,
    run_command,
    script_parser,
)
from utils.log import setup_logging

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(
        "Compare the int8 end-to-end ONNX detector with the float32 one.", __doc__, config=True
    )
    add_checkpoint_argument(parser, help="weights (default: random, seeded by --seed)")
    parser.add_argument("--images", type=Path, required=True, help="a folder of photos")
    add_calibration_argument(parser, source="images of --images")
    parser.add_argument("--test-images", type=positive_int, default=32)
    parser.add_argument("--top", type=positive_int, default=20, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_intermixed_args(argv)


def read_folder(folder: Path, size: int) -> np.ndarray:
    """Every readable image of ``folder`` (sorted) resized: ``uint8`` ``[N, 3, S, S]``."""
    images = []
    for path in sorted(folder.iterdir()):
        try:
            image = read_image(path)
        except BadSampleError:
            continue  # not an image
        images.append(resize_image(image, size))
    return resize_batch(images, size, channels_first=True)


def main(args: argparse.Namespace) -> int:
    setup_logging(is_main=True)
    torch.manual_seed(args.seed)
    config, model, _ = load_model(args.config, args.overrides, args.checkpoint)
    model.eval()
    images = read_folder(args.images, config.model.image_size)
    calibration = images[: args.calibration_images]
    test = images[args.calibration_images :][: args.test_images]
    if len(test) == 0:
        raise ValueError(f"{args.images}: no images left after the calibration images")
    cpu = torch.device("cpu")
    fp32 = build_pipeline(
        copy.deepcopy(model), config, backend="onnxruntime", device=cpu, options=SpeedOptions()
    )
    int8 = build_pipeline(
        model,
        config,
        backend="onnxruntime",
        device=cpu,
        options=SpeedOptions(),
        calibration=lambda: [calibration],
    )
    ious, agree, score_differences = [], [], []
    for image in test:
        want = fp32.forward(torch.from_numpy(image[None]))
        got = int8.forward(torch.from_numpy(image[None]))
        count = min(int(want[3][0]), args.top)
        if count == 0 or int(got[3][0]) == 0:
            continue
        iou = box_iou(
            torch.from_numpy(want[0][0, :count]), torch.from_numpy(got[0][0, : got[3][0]])
        )
        best_iou, best = iou.max(dim=1)
        ious += best_iou.tolist()
        same_label = got[2][0][best.numpy()] == want[2][0, :count]
        agree += ((best_iou.numpy() >= 0.5) & same_label).tolist()
        score_differences += np.abs(got[1][0][best.numpy()] - want[1][0, :count]).tolist()
    print(
        f"{len(test)} images, top {args.top} float32 detections each ({len(ious)} in all), "
        f"calibrated on {len(calibration)} others:\n"
        f"mean IoU with the best int8 box {np.mean(ious):.3f} (median {np.median(ious):.3f}); "
        f"IoU >= 0.5 and the same label: {np.mean(agree):.1%}; "
        f"mean |score difference| {np.mean(score_differences):.2e}"
    )
    return 0


if __name__ == "__main__":
    run_command(main, parse_args, user_errors=(ValueError,))
