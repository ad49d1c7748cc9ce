"""Evaluate a detector: batched inference, results files, VOC07 / VOC2010+ / COCO metrics.

    python test.py --checkpoint runs/quickstart_shapes/best.pt
    python test.py --checkpoint runs/fssd300_voc/best.pt eval.metric=voc10
    python test.py --config configs/fssd300_voc.yaml --checkpoint FSSD_VGG16_VOC.pth
    python test.py --config configs/fssd300_voc.yaml --eval-only runs/fssd300_voc/eval

The results directory (``--results-dir``, default ``train.output_dir/eval``) receives the
VOC devkit files ``comp4_det_test_<class>.txt`` (``image_id score x1 y1 x2 y2``, 1-based
pixels), ``detections_coco.json`` for the COCO metric, ``metrics.json`` and one
precision/recall plot per class. ``--eval-only`` scores such a directory without a model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from data.dataset import BadSampleError
from data.loader import (
    DataError,
    build_dataset,
    build_eval_loader,
    resolve_class_names,
    val_annotation_file,
)
from models.build import build_model, build_postprocessor, build_trained_model
from models.folding import fold_batchnorm
from models.weights import WeightsError
from utils.checkpoint import CheckpointError, config_and_checkpoint
from utils.config import (
    ConfigError,
    add_config_arguments,
)
from utils.engine import predict
from utils.evaluation import (
    COCO_RESULTS_FILE,
    coco_results,
    coco_truth_and_ids,
    plot_pr_curves,
    score_coco,
    score_voc_results,
    write_metrics,
    write_voc_results,
)
from utils.log import setup_logging

logger = logging.getLogger("test")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Evaluate a detector on the validation sets of its config.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_config_arguments(parser)
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
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where results, metrics.json and plots go (default: train.output_dir/eval)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the per-class PR plots")
    parser.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold BatchNorm into the preceding convs before inference (same outputs, faster)",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="NHWC activations (same outputs; much faster on CPUs with oneDNN)",
    )
    # Overrides may come before or after the options.
    return parser.parse_intermixed_args(argv)


def print_table(result: dict[str, Any]) -> None:
    width = max([len(name) for name in result["ap_per_class"]] + [5])
    print(f"{'class':<{width}}  AP ({result['metric']})")
    for name, ap in result["ap_per_class"].items():
        print(f"{name:<{width}}  {ap:.4f}")
    print(f"{'mAP':<{width}}  {result['mAP']:.4f}")
    if result["metric"] == "coco":
        print(result["summary"], end="")


def main(args: argparse.Namespace) -> int:
    setup_logging(is_main=True)
    config, checkpoint = config_and_checkpoint(args.config, args.overrides, args.checkpoint)
    if len(config.data.val_sets) != 1 and config.eval.metric == "coco":
        raise ConfigError(
            "the COCO metric scores one annotation file: give one data.val_sets entry"
        )
    class_names = resolve_class_names(config)
    dataset = build_dataset(config, "val", class_names)
    records = dataset.records
    metric = config.eval.metric
    if args.eval_only is not None and not args.eval_only.is_dir():
        raise FileNotFoundError(f"{args.eval_only}: results directory not found")
    results_dir = args.eval_only or args.results_dir or Path(config.train.output_dir) / "eval"
    results_dir.mkdir(parents=True, exist_ok=True)

    speed = None
    if args.eval_only is None:
        if args.checkpoint is None and not config.model.weights:
            raise ConfigError("give --checkpoint (or model.weights) to evaluate a model")
        device = torch.device(
            "cuda" if torch.cuda.is_available() and config.train.device != "cpu" else "cpu"
        )
        if args.checkpoint is not None:
            model = build_trained_model(config, args.checkpoint, checkpoint)
        else:
            model = build_model(config)
        model.eval()
        if args.fold_bn:
            logger.info("folded %d BatchNorm layers into convs", fold_batchnorm(model))
        model = model.to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        postprocessor = build_postprocessor(config, model.priors_cxcywh).to(device)
        detections, timing = predict(
            model,
            postprocessor,
            build_eval_loader(dataset, config),
            device,
            channels_last=args.channels_last,
        )
        speed = {
            **timing.ms_per_image(),
            "device": str(device),
            "batch_size": config.eval.batch_size,
        }
        write_voc_results(records, detections, class_names, results_dir)
        category_ids = None
        if metric == "coco":
            _, image_ids, category_ids = coco_truth_and_ids(
                records, class_names, val_annotation_file(config)
            )
            entries = coco_results(detections, image_ids, category_ids)
            (results_dir / COCO_RESULTS_FILE).write_text(json.dumps(entries), encoding="utf-8")

    if metric == "coco":
        coco, _, _ = coco_truth_and_ids(records, class_names, val_annotation_file(config))
        results_file = results_dir / COCO_RESULTS_FILE
        if not results_file.is_file():
            raise FileNotFoundError(f"{results_file}: COCO results file not found")
        result = score_coco(coco, json.loads(results_file.read_text(encoding="utf-8")), class_names)
    else:
        result = score_voc_results(
            results_dir,
            records,
            class_names,
            use_07_metric=metric == "voc07",
            iou_threshold=config.eval.iou_threshold,
        )
        if not args.no_plots:
            plot_pr_curves(result["curves"], results_dir)
    if speed is not None:
        result["speed"] = speed
    print_table(result)
    if speed is not None:
        print(
            f"speed ({speed['device']}, batch {speed['batch_size']}): forward "
            f"{speed['forward_ms']:.2f} ms/image, post-processing {speed['postprocess_ms']:.2f} "
            f"ms/image, {speed['fps']:.1f} FPS"
        )
    path = write_metrics(result, results_dir)
    print(f"results and metrics in {results_dir} ({path.name})")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(parse_args()))
    except (ConfigError, DataError, WeightsError, CheckpointError, BadSampleError) as error:
        sys.exit(f"error: {error}")
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
