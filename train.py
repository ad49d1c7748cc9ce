"""Train an FSSD/SSD detector.

    python train.py --config configs/quickstart_shapes.yaml [section.key=value ...]
    torchrun --nproc_per_node 4 train.py --config configs/fssd300_voc.yaml
    torchrun --nproc_per_node 4 --max-restarts 3 train.py --config configs/fssd300_voc.yaml --resume
    python train.py --resume runs/quickstart_shapes/last.pt
    python train.py --config configs/quickstart_shapes.yaml --init pruned.pt   # fine-tune
    python train.py --config configs/fssd300_voc.yaml --init runs/fssd300_coco/best.pt  # COCO->VOC

Everything goes into ``train.output_dir``: the resolved ``config.yaml``, ``last.pt``
(every ``train.checkpoint_interval`` epochs and on SIGINT/SIGTERM), ``best.pt`` (best
validation mAP), ``metrics.jsonl``, ``tensorboard/``, ``results.json`` and a few
validation images with their detections in ``detections/``.
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from typing import Any

import torch

from engine.trainer import TrainingRun
from engine.training import StopRequest
from utils.checkpoint import checkpoint_config, load_checkpoint
from utils.cli import (
    run_command,
    script_parser,
)
from utils.config import Config, ConfigError, load_config
from utils.device import choose_device
from utils.distributed import cleanup, collective_error, init_distributed
from utils.log import setup_logging

logger = logging.getLogger("train")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(
        "Train an FSSD/SSD detector from a config (see configs/).", __doc__, config=True
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        metavar="CHECKPOINT",
        help="continue a run exactly where it stopped: from CHECKPOINT, or from "
        "train.output_dir/last.pt when no path is given (a new run starts when there is "
        "none yet, so that torchrun --max-restarts can rerun the same command); its saved "
        "config is used (overrides still apply, e.g. train.epochs=200 to extend it)",
    )
    parser.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="start from these weights with a fresh optimiser and schedule (fine-tuning); "
        "a pruned checkpoint brings its channel widths, so the model is rebuilt pruned; "
        "a checkpoint of other classes gives its class rows to the classes of the same "
        "name (COCO to VOC: aeroplane from airplane, ...)",
    )
    parser.add_argument(
        "--allow-new-classes",
        action="store_true",
        help="with --init: classes the checkpoint does not have start from a fresh head "
        "(without it they are an error)",
    )
    parser.add_argument(
        "--stop-at",
        type=int,
        default=None,
        metavar="ITERATION",
        help="save last.pt and stop once this many iterations are done (resume later)",
    )
    # Overrides may come before or after the options.
    return parser.parse_intermixed_args(argv)


def resolve_config(args: argparse.Namespace) -> tuple[Config, dict[str, Any] | None]:
    """The run's config and, when resuming, the checkpoint to resume from."""
    checkpoint = None
    if args.init is not None and args.resume is not None:
        raise ConfigError("--init starts a new run and --resume continues one: give one")
    if args.allow_new_classes and args.init is None:
        raise ConfigError("--allow-new-classes applies to --init CHECKPOINT: give one")
    if args.resume is None:
        config = load_config(args.config, args.overrides)
    else:
        if args.resume == "auto":
            located = load_config(args.config, args.overrides)
            path = Path(located.train.output_dir) / "last.pt"
            if not path.is_file():
                # Nothing to continue yet: the first start of a run that torchrun
                # restarts with the same command (--max-restarts) after a failure.
                return located, None
        else:
            if args.config is not None:
                raise ConfigError(
                    "--resume CHECKPOINT uses the checkpoint's config; drop --config "
                    "(trailing overrides still apply)"
                )
            path = Path(args.resume)
        checkpoint = load_checkpoint(path)
        config = checkpoint_config(checkpoint, args.overrides, source=path)
    return config, checkpoint


def install_signal_handlers(stop: StopRequest) -> dict[int, Any]:
    """First SIGINT/SIGTERM: finish the iteration, save, exit. A second SIGINT kills.

    Returns the previous handlers, for :func:`restore_signal_handlers`."""

    def handler(signum: int, _frame: Any) -> None:
        stop.request(f"received {signal.Signals(signum).name}")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, handler)
    return previous


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def main(args: argparse.Namespace) -> int:
    config, checkpoint = resolve_config(args)
    # The device type decides the process group's backend (NCCL or Gloo); each rank
    # then takes its own GPU of that one choice.
    device = choose_device(config.train.device, origin="train.device")
    context = init_distributed(device.type == "cuda", config.train.dist_timeout_minutes)
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
    setup_logging(context.is_main)
    if args.resume == "auto" and checkpoint is None:
        logger.info("--resume: no last.pt in %s yet; starting a new run", config.train.output_dir)
    try:
        training = TrainingRun(
            config,
            checkpoint,
            context,
            device,
            init=args.init,
            allow_new_classes=args.allow_new_classes,
        )
        stop = StopRequest()
        previous_handlers = install_signal_handlers(stop)
        try:
            return training.train(stop, stop_at_iteration=args.stop_at)
        finally:
            restore_signal_handlers(previous_handlers)
            training.writer.close()
    except RuntimeError as error:
        failure = collective_error(
            error,
            context,
            config.train.dist_timeout_minutes,
            f"{config.train.output_dir}/last.pt holds the last checkpoint: rerun the command "
            "with --resume (torchrun --max-restarts N ... --resume does it by itself)",
        )
        if failure is None:
            raise
        raise failure from None
    finally:
        cleanup(context)


if __name__ == "__main__":
    run_command(main, parse_args)
