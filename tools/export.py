"""ONNX export of a detector, optionally with its box decoding and softmax.

    python -m tools.export --checkpoint runs/quickstart_shapes/best.pt --out model.onnx
    python -m tools.export --config configs/fssd300_voc.yaml --out fssd300.onnx --decode

The graph takes ``images`` ``[B, 3, S, S]`` float RGB in 0..255 (the batch is dynamic)
and returns ``loc`` ``[B, P, 4]`` and ``conf`` ``[B, P, C]`` logits, or with ``--decode``
``boxes`` ``[B, P, 4]`` (normalised xyxy, clipped) and ``scores`` ``[B, P, C]``
(softmax). Class-aware NMS with the per-class top-k and the per-image cap stays outside
the graph: ONNX's NonMaxSuppression has neither, so it would not give our detections.
``--fold-bn`` folds BatchNorm first. Needs ``onnx`` and ``onnxscript`` (and
``onnxruntime`` for ``--check``), which are optional: ``pip install -r
requirements-dev.txt``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engine.inference import SpeedOptions, prepare_for_inference
from engine.loading import build_model_to_run
from layers.box_coding import decode
from models.detector import SingleShotDetector
from utils.cli import add_checkpoint_argument, add_config_arguments, run_command
from utils.log import setup_logging

logger = logging.getLogger(__name__)
# The exporter's optimiser logs every deduplicated constant at INFO.
logging.getLogger("onnx_ir").setLevel(logging.WARNING)


class DecodedDetector(nn.Module):
    """The detector followed by box decoding and the class softmax (no NMS).

    Returns ``boxes`` ``[B, P, 4]`` normalised xyxy clipped to [0, 1] and ``scores``
    ``[B, P, C]``, as :func:`layers.postprocess.postprocess` computes them before NMS.
    """

    def __init__(self, model: SingleShotDetector, variances: tuple[float, float]) -> None:
        super().__init__()
        self.model = model
        self.variances = variances

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        loc, conf = self.model(images)
        boxes = decode(loc, self.model.priors_cxcywh, self.variances).clamp(0.0, 1.0)
        return boxes, F.softmax(conf, dim=-1)


def export_onnx(
    model: nn.Module, path: str | Path, image_size: int, *, output_names: list[str]
) -> Path:
    """Write ``model`` (in eval mode) as ONNX with a dynamic batch axis; returns the path."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            "ONNX export needs the optional packages onnx and onnxscript "
            "(pip install -r requirements-dev.txt)"
        ) from error
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = torch.rand(2, 3, image_size, image_size) * 255
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["images"],
        output_names=output_names,
        dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1, max=1024)}},
        dynamo=True,
        external_data=False,
    )
    program.save(str(path))
    return path


def onnxruntime_outputs(path: str | Path, images: Tensor) -> list[Tensor]:
    """Run an exported model with onnxruntime on the CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"images": images.numpy()})
    return [torch.from_numpy(output) for output in outputs]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Export a detector to ONNX.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_config_arguments(parser)
    add_checkpoint_argument(parser, help="weights to export (default: random weights)")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument(
        "--decode", action="store_true", help="include box decoding and the class softmax"
    )
    parser.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the convs")
    parser.add_argument(
        "--check", action="store_true", help="compare onnxruntime's outputs with PyTorch's"
    )
    return parser.parse_intermixed_args(argv)


def main(args: argparse.Namespace) -> int:
    setup_logging(is_main=True)
    config, model = build_model_to_run(args.config, args.overrides, args.checkpoint)
    prepare_for_inference(model, SpeedOptions(fold_bn=args.fold_bn))
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
        for name, got, want in zip(names, onnxruntime_outputs(path, images), expected, strict=True):
            difference = float((got - want).abs().max())
            print(f"{name}: max |onnxruntime - torch| = {difference:.3g}")
    return 0


if __name__ == "__main__":
    run_command(main, parse_args, user_errors=(RuntimeError,))
