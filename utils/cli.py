"""Command-line flags that several scripts and tools share, spelled and explained once,
and the entry point that turns their errors into one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from utils.allocator import keep_freed_memory
from utils.config import AT_LEAST_ONE, PROBABILITY, Range
from utils.device import AMP_CHOICES, BACKENDS, DEVICE_CHOICES
from utils.errors import UserError, user_message


def number_in(kind: type[int] | type[float], allowed: Range) -> Callable[[str], float]:
    """An argparse ``type``: a ``kind`` number within ``allowed``, else argparse's
    usage error naming the flag, the range and the value."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not allowed.contains(value):
            raise argparse.ArgumentTypeError(f"must be {allowed.describe()}, got {text}")
        return value

    return parse


probability = number_in(float, PROBABILITY)
positive_int = number_in(int, AT_LEAST_ONE)


def script_parser(
    description: str, doc: str | None = None, *, config: bool = False
) -> argparse.ArgumentParser:
    """A script's parser: ``description`` on top, the module docstring ``doc`` (its usage
    examples) under the flags, as written; with ``config`` the config arguments too."""
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=doc,
    )
    if config:
        add_config_arguments(parser)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` flag and trailing ``section.key=value`` overrides of a script."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="experiment YAML holding what differs from the defaults (default: none)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides applied after the file, e.g. postprocess.score_threshold=0.05",
    )


def add_checkpoint_argument(
    parser: argparse.ArgumentParser, *, required: bool = False, help: str | None = None
) -> None:
    """``--checkpoint``: a checkpoint of this project (its config is used when
    ``--config`` is not given) or fssd.pytorch weights with ``--config``."""
    parser.add_argument(
        "--checkpoint",
        type=Path,
        required=required,
        default=None,
        help=help
        or "weights: a checkpoint of this project (its config is used when --config is not "
        "given; a pruned one brings its widths) or an fssd.pytorch checkpoint with --config",
    )


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="where the network runs (default auto: CUDA when there is one, else the CPU)",
    )


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend torch|onnxruntime`` and the ``--onnx`` file the latter may run."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="run the model in PyTorch (default) or as one end-to-end ONNX graph (network "
        "and post-processing) in ONNX Runtime on the CPU",
    )
    parser.add_argument(
        "--onnx",
        type=Path,
        default=None,
        help="with --backend onnxruntime: an end-to-end export of the same model "
        "(python -m tools.export --end-to-end); default: export it now",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="with --backend onnxruntime: quantize the convolutions to int8 (weights per "
        "channel, activations per tensor; post-processing stays float32)",
    )
    add_calibration_argument(parser)


def add_calibration_argument(
    parser: argparse.ArgumentParser, *, source: str = "training images"
) -> None:
    """``--calibration-images N``: how many images calibrate int8 activation ranges."""
    parser.add_argument(
        "--calibration-images",
        type=positive_int,
        default=64,
        help=f"{source} whose activation ranges calibrate int8 (default 64)",
    )


def add_fold_bn_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fold-bn",
        action="store_true",
        help="fold BatchNorm into the preceding convs (same outputs, faster)",
    )


def add_channels_last_argument(parser: argparse.ArgumentParser, *, auto: bool = False) -> None:
    """``--channels-last``; with ``auto`` the default is ``auto`` (NHWC on CUDA and on
    CPUs with AVX-512, as ``train.channels_last=auto``) and ``--no-channels-last``
    asks for NCHW."""
    if not auto:
        parser.add_argument(
            "--channels-last",
            action="store_true",
            help="NHWC activations (same outputs; much faster on CPUs with oneDNN)",
        )
        return
    parser.add_argument(
        "--channels-last",
        dest="channels_last",
        action="store_const",
        const=True,
        default="auto",
        help="NHWC activations (same outputs; much faster on CPUs with oneDNN); default: "
        "NHWC on CUDA and on CPUs with AVX-512, NCHW elsewhere",
    )
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_const",
        const=False,
        help="NCHW activations",
    )


def add_repeats_argument(parser: argparse.ArgumentParser, *, default: int, what: str) -> None:
    """``--repeats N``: how many timed runs of ``what`` a timing takes its median over."""
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=default,
        help=f"timed {what} (default {default})",
    )


def add_out_argument(
    parser: argparse.ArgumentParser,
    *,
    help: str,
    required: bool = False,
    aliases: tuple[str, ...] = (),
) -> None:
    """``--out PATH``, the one name of every script's "write it here" flag (``aliases``
    keep the names earlier releases used)."""
    parser.add_argument(
        "--out", *aliases, dest="out", type=Path, required=required, default=None, help=help
    )


def add_speed_arguments(
    parser: argparse.ArgumentParser, *, all_paths: bool = False, auto_layout: bool = False
) -> None:
    """The inference speed paths (``engine.inference.SpeedOptions``) as flags: BatchNorm
    folding and NHWC (``auto_layout``: chosen for the device unless a flag says); with
    ``all_paths`` also inference mode, compile, autocast and CUDA graphs."""
    add_fold_bn_argument(parser)
    add_channels_last_argument(parser, auto=auto_layout)
    if not all_paths:
        return
    parser.add_argument(
        "--inference-mode", action="store_true", help="torch.inference_mode (else no_grad)"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument(
        "--amp",
        dest="autocast",
        choices=list(AMP_CHOICES),
        default="none",
        help="autocast precision: auto is bf16 on CUDA and on CPUs with native bf16, else "
        "float32; fp16 needs CUDA; post-processing stays float32 (default none)",
    )
    parser.add_argument(
        "--cuda-graphs", action="store_true", help="replay the forward as a CUDA graph"
    )


# The speed flags' destinations: the fields of engine.inference.SpeedOptions.
SPEED_FLAGS = ("fold_bn", "channels_last", "inference_mode", "compile", "autocast", "cuda_graphs")


def speed_flags(args: argparse.Namespace) -> dict[str, object]:
    """The values of the speed flags a script has (:func:`add_speed_arguments`), by
    SpeedOptions field: ``SpeedOptions(**speed_flags(args), inference_mode=True)``."""
    return {name: getattr(args, name) for name in SPEED_FLAGS if hasattr(args, name)}


def run_command(
    main: Callable[[argparse.Namespace], int | None],
    parse_args: Callable[[], argparse.Namespace],
    *,
    user_errors: tuple[type[BaseException], ...] = (),
) -> NoReturn:
    """A script's entry point: ``main(parse_args())``'s return value is the exit code;
    a :class:`utils.errors.UserError` (or one of ``user_errors``) ends the command with
    one ``error: ...`` line and the error's exit code (1; 2 for a bad sample), Ctrl-C
    with ``interrupted``. Freed memory is kept in the process
    (:func:`utils.allocator.keep_freed_memory`)."""
    keep_freed_memory()
    try:
        code = main(parse_args())
    except (UserError, *user_errors) as error:
        print(f"error: {user_message(error)}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 1))
    except KeyboardInterrupt:
        sys.exit("interrupted")
    sys.exit(code or 0)
