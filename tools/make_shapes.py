"""Generate the shapes detection dataset (VOC format) outside a training run.

    python -m tools.make_shapes --root datasets/shapes --train 2000 --val 300

train.py generates it on its own when the config's dataset is ``shapes``; the defaults
here are the config's (``data.root``, ``data.shapes_*``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from data.sources import prepare_data
from utils.cli import run_command
from utils.config import Config, DataConfig

# Flag -> the DataConfig field it sets, and what it means.
FLAGS = {
    "--train": ("shapes_train_images", "training images"),
    "--val": ("shapes_val_images", "validation images"),
    "--image-size": ("shapes_image_size", "image side in pixels"),
    "--seed": ("shapes_seed", "seed of the whole dataset"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = DataConfig()
    parser = argparse.ArgumentParser(
        description="Generate the shapes detection dataset (VOC format)."
    )
    parser.add_argument(
        "--root", default=defaults.root, help=f"output folder (default {defaults.root})"
    )
    for flag, (field, meaning) in FLAGS.items():
        default = getattr(defaults, field)
        parser.add_argument(
            flag, type=int, dest=field, default=default, help=f"{meaning} (default {default})"
        )
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    data = DataConfig(
        dataset="shapes",
        root=args.root,
        **{field: getattr(args, field) for field, _ in FLAGS.values()},
    )
    prepare_data(dataclasses.replace(Config(), data=data))
    print(f"shapes dataset ready in {args.root}")
    return 0


if __name__ == "__main__":
    run_command(main, parse_args)
