"""Evaluate a detector: batched inference, results files, VOC07 / VOC2010+ / COCO metrics.

    python test.py --checkpoint runs/quickstart_shapes/best.pt
    python test.py --checkpoint runs/fssd300_voc/best.pt eval.metric=voc10
    python test.py --config configs/fssd300_voc.yaml --checkpoint FSSD_VGG16_VOC.pth
    python test.py --config configs/fssd300_voc.yaml --eval-only runs/fssd300_voc/eval
    torchrun --nproc_per_node 4 test.py --checkpoint runs/fssd300_voc/best.pt

The results directory (``--out``, default ``train.output_dir/eval``) receives the
VOC devkit files ``comp4_det_test_<class>.txt`` (``image_id score x1 y1 x2 y2``, 1-based
pixels), ``detections_coco.json`` for the COCO metric, ``metrics.json`` and
``pr_curves.png`` (every class's precision/recall curve). ``--eval-only`` scores such a
directory without a model, and without loading torch (its metrics and plot go to
``--out`` when given, else into it); ``--profile`` prints the seconds each stage took.

Under ``torchrun`` every process runs the model on its share of the batches (the batches
one process would run, every N-th) and rank 0 gathers the detections and scores them:
the same detections and metrics as one process.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from pathlib import Path
from typing import Any

# Only torch-free modules at the top: scoring a results directory (--eval-only) never
# loads torch or torchvision; the model path imports them when it runs.
from data.records import AnnotationRecord
from data.sources import read_records, resolve_class_names
from engine.evaluation import Evaluator, plot_pr_curves, write_metrics
from utils.checkpoint import config_and_checkpoint
from utils.cli import (
    add_backend_arguments,
    add_device_argument,
    add_out_argument,
    add_speed_arguments,
    run_command,
    script_parser,
    speed_flags,
)
from utils.config import Config, ConfigError
from utils.log import setup_logging
from utils.timing import StageTimer, seconds_since_process_start

logger = logging.getLogger("test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(
        "Evaluate a detector on the validation sets of its config.", __doc__, config=True
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="weights: a checkpoint of this project (its config is used when --config is "
        "not given) or an fssd.pytorch checkpoint",
    )
    parser.add_argument(
        "--eval-only",
        type=Path,
        default=None,
        metavar="DIR",
        help="score an existing results directory without a model (fssd.pytorch's --retest)",
    )
    add_out_argument(
        parser,
        help="where results, metrics.json and plots go (default: train.output_dir/eval)",
        aliases=("--results-dir",),
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the precision/recall plot")
    parser.add_argument(
        "--profile", action="store_true", help="print the seconds each stage of the command took"
    )
    add_speed_arguments(parser, auto_layout=True)
    add_device_argument(parser)
    add_backend_arguments(parser)
    # Overrides may come before or after the options.
    return parser.parse_intermixed_args(argv)


def print_table(result: dict[str, Any]) -> None:
    width = max([len(name) for name in result["ap_per_class"]] + [5])
    print(f"{'class':<{width}}  AP ({result['metric']})")
    for name, ap in result["ap_per_class"].items():
        # NaN: the class has no ground truth in this set (null in metrics.json).
        print(f"{name:<{width}}  {'n/a (no ground truth)' if math.isnan(ap) else f'{ap:.4f}'}")
    print(f"{'mAP':<{width}}  {result['mAP']:.4f}")
    if "note" in result:
        print(result["note"])
    if result["metric"] == "coco":
        print(result["summary"], end="")
        per_iou = "  ".join(f"{iou} {ap:.3f}" for iou, ap in result["ap_per_iou"].items())
        print(f"AP per IoU threshold: {per_iou}")


def resolve_config(args: argparse.Namespace) -> tuple[Config, dict[str, Any] | None]:
    """The config (``--config``, else the checkpoint's) and the project checkpoint."""
    return config_and_checkpoint(args.config, args.overrides, args.checkpoint)


def run_model(
    args: argparse.Namespace,
    config: Config,
    checkpoint: dict[str, Any] | None,
    records: list[AnnotationRecord],
    class_names: list[str],
) -> tuple[list[dict[str, Any] | None] | None, dict[str, Any]]:
    """Detections (per record, pixels) of the model and its speed. Under torchrun each
    process runs its share and rank 0 gets all the detections (the others None)."""
    import torch

    from data.loader import build_dataset, build_eval_loader
    from engine.inference import SpeedOptions, build_pipeline, predict_on_ranks
    from engine.loading import build_detector
    from engine.quantize import int8_calibration
    from utils.device import choose_device
    from utils.distributed import cleanup, collective_error, init_distributed

    if args.checkpoint is None and not config.model.weights:
        raise ConfigError("give --checkpoint (or model.weights) to evaluate a model")
    device = choose_device(args.device, origin="--device")
    context = init_distributed(device.type == "cuda", config.train.dist_timeout_minutes)
    if device.type == "cuda" and context.is_distributed:
        device = torch.device("cuda", context.local_rank)
    try:
        model = build_detector(
            config, checkpoint=checkpoint, weights=args.checkpoint, pretrained=True
        )
        pipeline = build_pipeline(
            model,
            config,
            backend=args.backend,
            device=device,
            options=SpeedOptions(**speed_flags(args), inference_mode=True),
            onnx_path=args.onnx,
            calibration=int8_calibration(config, args.calibration_images if args.int8 else None),
        )
        dataset = build_dataset(config, "val", class_names, records)
        loader = build_eval_loader(
            dataset, config, rank=context.rank, world_size=context.world_size
        )
        detections, timing = predict_on_ranks(pipeline, loader, context)
    except RuntimeError as error:
        failure = collective_error(
            error, context, config.train.dist_timeout_minutes, "run the evaluation again"
        )
        if failure is None:
            raise
        raise failure from None
    finally:
        cleanup(context)
    backend = args.backend + (" int8" if args.int8 else "")
    processes = f", {context.world_size} processes" if context.is_distributed else ""
    speed = {**timing.ms_per_image(), "device": f"{pipeline.device}, {backend}{processes}",
             "batch_size": config.eval.batch_size}  # fmt: skip
    return detections, speed


def main(args: argparse.Namespace) -> int:
    # Under torchrun (WORLD_SIZE > 1) the ranks other than 0 only run their share of
    # the model's batches and hand the detections to rank 0.
    is_main = os.environ.get("RANK", "0") == "0"
    setup_logging(is_main=is_main)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and args.eval_only is not None:
        raise ConfigError(
            "--eval-only scores results files in one process: run it without torchrun"
        )
    timer = StageTimer()
    with timer.stage("config"):
        config, checkpoint = resolve_config(args)
    if args.eval_only is not None and not args.eval_only.is_dir():
        raise FileNotFoundError(f"{args.eval_only}: results directory not found")
    with timer.stage("annotations"):
        class_names = resolve_class_names(config)
        records = read_records(config, "val", class_names)
    if not is_main:
        run_model(args, config, checkpoint, records, class_names)
        return 0
    # Results files are read from --eval-only's directory, else written to --out; the
    # metrics and the plot go to --out when given, else beside the results files.
    results_dir = args.eval_only or args.out or Path(config.train.output_dir) / "eval"
    out_dir = args.out or results_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    with timer.stage("ground truth"):
        evaluator = Evaluator.from_config(config, records, class_names)

    speed = None
    if args.eval_only is None:
        with timer.stage("model and inference"):
            detections, speed = run_model(args, config, checkpoint, records, class_names)
        with timer.stage("results files"):
            evaluator.write_results(detections, results_dir)
    # Scored from the files, so that what is reported is what the directory holds.
    with timer.stage("results files"):
        results = evaluator.read_results(results_dir)
    with timer.stage("scoring"):
        result = evaluator.score_results(results)
    if speed is not None:
        result["speed"] = speed
    print_table(result)
    if speed is not None:
        print(
            f"speed ({speed['device']}, batch {speed['batch_size']}): forward "
            f"{speed['forward_ms']:.2f} ms/image, post-processing {speed['postprocess_ms']:.2f} "
            f"ms/image, {speed['fps']:.1f} FPS"
        )
    with timer.stage("metrics.json"):
        path = write_metrics(result, out_dir)
    # The plot comes after the numbers are out, so a user sees them first.
    if "curves" in result and not args.no_plots:
        with timer.stage("PR plot"):
            plot_pr_curves(result["curves"], out_dir)
    where = str(results_dir) if out_dir == results_dir else f"{results_dir}, metrics in {out_dir}"
    print(f"results and metrics in {where} ({path.name})")
    if args.profile:
        started = seconds_since_process_start()
        if started is not None:
            startup = started - sum(timer.seconds.values())
            timer.seconds = {"start-up and imports": startup, **timer.seconds}
        print("time per stage:\n" + timer.table())
    return 0


if __name__ == "__main__":
    run_command(main, parse_args, user_errors=(FileNotFoundError, ValueError))
