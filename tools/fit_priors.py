"""Measure how well a config's priors cover its training boxes, and fit better ones.

    python -m tools.fit_priors --config configs/quickstart_shapes.yaml --out fitted.yaml
    python train.py --config configs/quickstart_shapes.yaml priors.min_sizes=[...] ...

Prints the coverage of the current priors (the share of training boxes that some prior
overlaps at IoU >= loss.iou_threshold, so that it can get positives; the mean best IoU;
both by box size at the model's input), fits min/max sizes and aspect ratios with at
most as many priors (``--max-priors``), prints the same table for them and writes the
``priors`` section as a YAML fragment to paste into the config (``--out``), and the same
as overrides for the command line. It also prints the most any prior settings could
cover on the model's feature-map grid. See ``engine/prior_fitting.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch
import yaml

from data.sources import prepare_data, read_records, resolve_class_names
from engine.prior_fitting import (
    Coverage,
    fit_priors,
    grid_limit,
    prior_coverage,
)
from models.build import build_model, measure_feature_map_sizes
from utils.cli import add_config_arguments, positive_int, run_command
from utils.config import Config, load_config
from utils.log import setup_logging

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Prior coverage of a config's training boxes, and fitted priors.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--max-priors",
        type=positive_int,
        default=None,
        help="most priors the fitted settings may have (default: as many as now)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the box sample (default 0)")
    parser.add_argument(
        "--sample",
        type=positive_int,
        default=4000,
        help="boxes the search scores each candidate on (default 4000; all are reported)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the fitted YAML here")
    return parser.parse_intermixed_args(argv)


def training_boxes(config: Config) -> torch.Tensor:
    """Every box of the training sets, normalised by its image: ``[G, 4]`` xyxy."""
    prepare_data(config)
    records = read_records(config, "train", resolve_class_names(config))
    boxes = [
        record.boxes / np.array([record.width, record.height] * 2, dtype=np.float32)
        for record in records
    ]
    return torch.from_numpy(np.concatenate([np.zeros((0, 4), np.float32), *boxes]))


def coverage_table(name: str, coverage: Coverage) -> str:
    lines = [
        f"{name}: {coverage.num_priors} priors, {coverage.covered:.2%} of the boxes covered at "
        f"IoU >= {coverage.threshold:g}, mean best IoU {coverage.mean_best_iou:.3f}"
    ]
    for low, high, count, covered in coverage.by_size:
        band = f"{low:g}-{high:g} px" if high != float("inf") else f">= {low:g} px"
        lines.append(f"  {band:<14}{count:>8} boxes  {covered:>8.2%} covered")
    return "\n".join(lines)


def fragment(config: Config, source: str, before: Coverage, after: Coverage) -> str:
    """The fitted ``priors`` section as YAML, with where it came from in comments."""
    priors = config.priors
    section = {
        "priors": {
            "min_sizes": priors.min_sizes,
            "max_sizes": priors.max_sizes,
            "aspect_ratios": priors.aspect_ratios,
        }
    }
    header = (
        f"# Priors fitted by python -m tools.fit_priors to the training boxes of {source}\n"
        f"# at {config.model.image_size} px: {after.num_priors} priors cover "
        f"{after.covered:.2%} of the boxes at IoU >= {after.threshold:g} "
        f"({before.covered:.2%} with the {before.num_priors} before).\n"
    )
    return header + yaml.safe_dump(section, default_flow_style=None, sort_keys=False)


def main(args: argparse.Namespace) -> int:
    setup_logging(is_main=True)
    config = load_config(args.config, args.overrides)
    size = config.model.image_size
    model = build_model(config, load_weights=False)
    map_sizes = measure_feature_map_sizes(model.features, size)
    boxes = training_boxes(config)
    threshold = config.loss.iou_threshold
    before = prior_coverage(boxes, model.priors_cxcywh, threshold=threshold, image_size=size)
    limit = grid_limit(
        boxes, image_size=size, map_sizes=map_sizes, steps=config.priors.steps, threshold=threshold
    )
    print(
        f"{boxes.shape[0]} training boxes at {size} px; on these feature maps no prior settings "
        f"can cover more than {limit:.2%} at IoU >= {threshold:g} (a prior of each box's own "
        "shape at the nearest centre)"
    )
    print(coverage_table("current priors", before))
    fitted, after = fit_priors(
        boxes,
        config.priors,
        image_size=size,
        map_sizes=map_sizes,
        threshold=threshold,
        max_priors=args.max_priors or before.num_priors,
        seed=args.seed,
        sample=args.sample,
    )
    print(coverage_table("fitted priors", after))
    text = fragment(
        dataclasses.replace(config, priors=fitted),
        str(args.config or "the default config"),
        before,
        after,
    )
    print(
        "as overrides: "
        + " ".join(
            f"priors.{key}={json.dumps(getattr(fitted, key)).replace(' ', '')}"
            for key in ("min_sizes", "max_sizes", "aspect_ratios")
        )
    )
    if args.out is None:
        print(text, end="")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    run_command(main, parse_args)
