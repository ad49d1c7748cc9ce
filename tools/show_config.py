"""Print the resolved config of an experiment: defaults, then the file, then overrides.

python -m tools.show_config --config configs/fssd512_voc.yaml loss.neg_pos_ratio=2
"""

from __future__ import annotations

import argparse

from utils.cli import add_config_arguments, run_command
from utils.config import config_to_yaml, load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Print the resolved config of an experiment (defaults, file, overrides)."
    )
    add_config_arguments(parser)
    # Overrides may come before or after the options.
    return parser.parse_intermixed_args(argv)


def main(args: argparse.Namespace) -> int:
    print(config_to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


if __name__ == "__main__":
    run_command(main, parse_args)
