"""Measure how well a config's priors cover its training boxes, and fit better ones.

    python -m tools.fit_priors --config configs/quickstart_shapes.yaml --out fitted.yaml
    python train.py --config configs/quickstart_shapes.yaml priors.min_sizes=[...] ...

Prints the coverage of the current priors (the share of training boxes that some prior
overlaps at IoU >= loss.iou_threshold, so that it can get positives; the mean best IoU;
both by box size at the model's input), fits min/max sizes and aspect ratios with at
most as many priors (``--max-priors``), prints the same table for them and writes the
``priors`` section as a YAML fragment to paste into the config (``--out``), and the same
as overrides for the command line. It also prints the most any prior settings could
cover on the model's feature-map grid. See ``layers/prior_search.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import yaml

from engine.prior_fitting import fit_config_priors
from layers.prior_search import RESTARTS, SAMPLE, Coverage
from utils.cli import (
    number_in,
    positive_int,
    run_command,
    script_parser,
)
from utils.config import NON_NEGATIVE, Config, load_config
from utils.log import setup_logging

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(
        "Prior coverage of a config's training boxes, and fitted priors.", __doc__, config=True
    )
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
        default=SAMPLE,
        help=f"boxes the search scores each candidate on (default {SAMPLE}; all are reported)",
    )
    parser.add_argument(
        "--restarts",
        type=number_in(int, NON_NEGATIVE),
        default=RESTARTS,
        help=f"searches restarted from the best settings shaken (default {RESTARTS})",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the fitted YAML here")
    return parser.parse_intermixed_args(argv)


def fragment(config: Config, source: str, before: Coverage | None, after: Coverage) -> str:
    """The fitted ``priors`` section as YAML, with where it came from in comments."""
    priors = config.priors
    section = {
        "priors": {
            "min_sizes": priors.min_sizes,
            "max_sizes": priors.max_sizes,
            "aspect_ratios": priors.aspect_ratios,
            "steps": priors.steps,
        }
    }
    header = (
        f"# Priors fitted by python -m tools.fit_priors to the training boxes of {source}\n"
        f"# at {config.model.image_size} px: {after.num_priors} priors cover "
        f"{after.covered:.2%} of the boxes at IoU >= {after.threshold:g}"
        + (f" ({before.covered:.2%} with the {before.num_priors} before).\n" if before else ".\n")
    )
    return header + yaml.safe_dump(section, default_flow_style=None, sort_keys=False)


def main(args: argparse.Namespace) -> int:
    setup_logging(is_main=True)
    config = load_config(args.config, args.overrides)
    result = fit_config_priors(
        config,
        max_priors=args.max_priors,
        seed=args.seed,
        sample=args.sample,
        restarts=args.restarts,
    )
    print(
        f"{result.boxes} training boxes at {config.model.image_size} px; on these feature maps "
        f"no prior settings can cover much more than {result.limit:.2%} at IoU >= "
        f"{config.loss.iou_threshold:g} (the best of many prior shapes at each box's "
        "nearest centre)"
    )
    if result.before is not None:
        print(result.before.describe("current priors"))
    else:
        print(
            "current priors: they do not describe this network's feature maps; "
            "the search starts from SSD's recipe"
        )
    print(result.after.describe("fitted priors"))
    fitted = result.fitted
    print(
        "as overrides: "
        + " ".join(
            f"priors.{key}={json.dumps(getattr(fitted, key)).replace(' ', '')}"
            for key in ("min_sizes", "max_sizes", "aspect_ratios", "steps")
        )
    )
    text = fragment(
        dataclasses.replace(config, priors=fitted),
        str(args.config or "the default config"),
        result.before,
        result.after,
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
