"""ONNX export of a detector: the network, with ``--decode`` its box decoding and softmax
too, or with ``--end-to-end`` the whole detector, post-processing included.

    python -m tools.export --checkpoint runs/quickstart_shapes/best.pt --out model.onnx
    python -m tools.export --config configs/fssd300_voc.yaml --out fssd300.onnx --decode
    python -m tools.export --checkpoint runs/quickstart_shapes/best.pt --out det.onnx \\
        --end-to-end --check

The network graph takes ``images`` ``[B, 3, S, S]`` float RGB in 0..255 (the batch is
dynamic) and returns ``loc`` ``[B, P, 4]`` and ``conf`` ``[B, P, C]`` logits, or with
``--decode`` ``boxes`` ``[B, P, 4]`` (normalised xyxy, clipped) and ``scores``
``[B, P, C]`` (softmax). The end-to-end graph takes ``uint8`` images and returns
``boxes`` (input pixels), ``scores``, ``labels`` and ``count`` per image, with the
config's post-processing (``postprocess.*``) inside: see ``engine/export.py``.
``--fold-bn`` folds BatchNorm first; ``--check`` compares ONNX Runtime with PyTorch.
Needs ``onnx``, ``onnxscript`` and ``onnxruntime``, which are optional: ``pip install
-r requirements-dev.txt``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from engine.export import DecodedDetector, compare_detections, export_detector, export_onnx
from engine.inference import SpeedOptions, prepare_for_inference, run_onnx
from engine.loading import load_model
from models.build import build_postprocessor
from utils.cli import (
    add_checkpoint_argument,
    add_fold_bn_argument,
    run_command,
    script_parser,
)
from utils.errors import UserError
from utils.log import setup_logging


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser("Export a detector to ONNX.", __doc__, config=True)
    add_checkpoint_argument(parser, help="weights to export (default: random weights)")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument(
        "--decode", action="store_true", help="include box decoding and the class softmax"
    )
    parser.add_argument(
        "--end-to-end",
        action="store_true",
        help="the whole detector: uint8 images in, post-processed detections out",
    )
    add_fold_bn_argument(parser)
    parser.add_argument(
        "--check", action="store_true", help="compare onnxruntime's outputs with PyTorch's"
    )
    return parser.parse_intermixed_args(argv)


def main(args: argparse.Namespace) -> int:
    setup_logging(is_main=True)
    config, model, _ = load_model(args.config, args.overrides, args.checkpoint)
    prepare_for_inference(model, SpeedOptions(fold_bn=args.fold_bn))
    if args.end_to_end:
        return export_whole_detector(args, config, model)
    network: nn.Module = model
    names = ["loc", "conf"]
    if args.decode:
        network, names = DecodedDetector(model, config.priors.variances), ["boxes", "scores"]
    size = config.model.image_size
    path = export_onnx(network, args.out, size, output_names=names)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.check:
        images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
        with torch.no_grad():
            expected = network(images)
        for name, got, want in zip(names, run_onnx(path, images), expected, strict=True):
            difference = float((got - want).abs().max())
            # Float32 rounding of two kernel libraries, relative to the outputs' scale.
            tolerance = CHECK_RELATIVE_TOLERANCE * max(1.0, float(want.abs().max()))
            print(
                f"{name}: max |onnxruntime - torch| = {difference:.3g} "
                f"({'within' if difference <= tolerance else 'ABOVE'} {tolerance:.3g})"
            )
            if not difference <= tolerance:
                raise ExportCheckError(
                    f"{path}: output '{name}' differs from PyTorch's by {difference:.3g} "
                    f"(more than {tolerance:.3g}); the export is not faithful"
                )
    return 0


# --check's bound on |ONNX Runtime - PyTorch| of the raw outputs, times their largest value.
CHECK_RELATIVE_TOLERANCE = 1e-4


def export_whole_detector(args: argparse.Namespace, config, model) -> int:
    size = config.model.image_size
    path = export_detector(model, config, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    if args.check:
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=generator)
        got = tuple(item.numpy() for item in run_onnx(path, images))
        with torch.no_grad():
            loc, conf = model(images.float())
            expected = build_postprocessor(config, model.priors_cxcywh)(loc, conf)
        comparison = compare_detections(
            expected,
            got,
            conf.softmax(dim=-1),
            image_size=size,
            max_detections=config.postprocess.max_detections,
        )
        print(f"onnxruntime vs torch on 2 random images: {comparison.describe()}")
        if not comparison.agrees:
            raise ExportCheckError(
                f"{path}: ONNX Runtime's detections differ from PyTorch's "
                f"({comparison.unexplained} of {comparison.detections} not explained by tied "
                "scores); the export is not faithful"
            )
    return 0


class ExportCheckError(UserError):
    """``--check`` found detections that differ beyond tied scores."""


if __name__ == "__main__":
    run_command(main, parse_args, user_errors=(RuntimeError,))
