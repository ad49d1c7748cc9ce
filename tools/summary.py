"""Print a model's parameters, GFLOPs, feature maps and prior count for any config.

python -m tools.summary --config configs/fssd300_voc.yaml [section.key=value ...]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from models.build import build_model, measure_feature_map_sizes
from models.counting import count_flops, count_parameters
from utils.cli import add_config_arguments, run_command
from utils.config import load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Parameters, GFLOPs (torch.utils.flop_counter, batch 1), detection "
        "maps and prior count of the model a config describes."
    )
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    # Overrides may come before or after the options.
    return parser.parse_intermixed_args(argv)


def summarize(config_path: Any, overrides: list[str]) -> dict[str, Any]:
    config = load_config(config_path, overrides)
    # Only the shape matters here: skip loading weights files.
    model = build_model(config, load_weights=False).eval()
    image_size = config.model.image_size
    return {
        "architecture": config.model.architecture,
        "backbone": config.model.backbone,
        "image_size": image_size,
        "num_classes": config.model.num_classes,
        "parameters": count_parameters(model),
        "gflops": count_flops(model, image_size) / 1e9,
        "feature_maps": [
            list(size) for size in measure_feature_map_sizes(model.features, image_size)
        ],
        "num_priors": int(model.priors_cxcywh.shape[0]),
    }


def main(args: argparse.Namespace) -> None:
    summary = summarize(args.config, args.overrides)
    if args.json:
        print(json.dumps(summary))
        return
    maps = " ".join(f"{height}x{width}" for height, width in summary["feature_maps"])
    print(
        f"model        {summary['architecture']} on {summary['backbone']}, "
        f"{summary['image_size']} px, {summary['num_classes']} classes"
    )
    print(f"parameters   {summary['parameters']:,}")
    print(f"GFLOPs       {summary['gflops']:.2f}")
    print(f"maps         {maps}")
    print(f"priors       {summary['num_priors']:,}")


if __name__ == "__main__":
    run_command(main, parse_args, user_errors=(ValueError,))
