"""Network slimming, stage 2: remove the channels with the smallest BatchNorm scales.

    python train.py --config configs/quickstart_shapes.yaml train.sparsity=1e-2 \\
        train.output_dir=runs/slim_sparsity                                   # stage 1
    python prune.py --checkpoint runs/slim_sparsity/best.pt --ratio 0.5 \\
        --out runs/slim_sparsity/pruned.pt --benchmark                       # stage 2
    python train.py --config configs/quickstart_shapes.yaml \\
        --init runs/slim_sparsity/pruned.pt train.output_dir=runs/slim_finetune  # stage 3

The threshold is global: the ``--ratio`` fraction of all prunable channels with the
smallest |gamma| go, except that every layer keeps at least ``--min-keep`` of its
channels. What is prunable on each architecture (VGG trunk, ResNet block interiors,
MobileNetV2 expansions, extras, fusion, pyramid) is described in ``models/pruning.py``.
The output checkpoint stores the channel widths next to the weights, so ``test.py``,
``demo.py`` and ``train.py --init/--resume`` rebuild the pruned model from it.

A pruned checkpoint can be slimmed again: train it with sparsity (``--init``), prune
that checkpoint (``--ratio`` and ``--min-keep`` then count the channels it has), and
fine-tune. The widths compose, and every checkpoint lists the rounds
(``pruning_rounds``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import logging
from pathlib import Path

import numpy as np
import torch

from engine.inference import SpeedOptions, build_pipeline, prepare_for_inference
from engine.loading import load_model
from engine.speed import PipelineRunner, measure
from models.build import build_model
from models.counting import count_flops, count_parameters
from models.detector import SingleShotDetector
from models.pruning import (
    channel_groups,
    global_threshold,
    prune_channels,
    read_widths_file,
    select_channels,
    select_to_widths,
)
from utils.checkpoint import make_checkpoint, pruning_rounds, save_checkpoint
from utils.cli import (
    add_channels_last_argument,
    add_checkpoint_argument,
    add_repeats_argument,
    run_command,
    script_parser,
)
from utils.config import Config
from utils.log import setup_logging

logger = logging.getLogger("prune")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(
        "Prune the channels of a BatchNorm detector with the smallest scales.", __doc__, config=True
    )
    add_checkpoint_argument(
        parser, required=True, help="the trained (ideally sparsity-trained) checkpoint to prune"
    )
    parser.add_argument(
        "--ratio",
        type=float,
        default=0.5,
        help="fraction of all prunable channels to remove (default 0.5)",
    )
    parser.add_argument(
        "--widths",
        type=Path,
        default=None,
        metavar="FILE",
        help="prune to these widths instead of by --ratio: a YAML of {group: width} "
        "(e.g. configs/widths/fssd300_vgg16_bn_slim50.yaml); each group keeps its "
        "highest-|gamma| channels",
    )
    parser.add_argument(
        "--min-keep",
        type=float,
        default=0.1,
        help="every layer keeps at least this fraction of its channels (default 0.1)",
    )
    parser.add_argument(
        "--multiple-of",
        type=int,
        default=1,
        help="round each layer's kept channels up to a multiple of this (e.g. 8 for GPUs)",
    )
    parser.add_argument(
        "--no-compensation",
        action="store_true",
        help="do not move the constant output of pruned channels (ReLU of their BN "
        "shift) into the next layer's bias",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="pruned checkpoint to write (default: CHECKPOINT's folder, pruned_<ratio>.pt)",
    )
    parser.add_argument(
        "--benchmark",
        action="store_true",
        help="also time batch-1 inference of the model before and after pruning (and "
        "with BatchNorm folded), interleaved in this process",
    )
    add_repeats_argument(parser, default=50, what="calls per model for --benchmark")
    add_channels_last_argument(parser)
    parser.add_argument(
        "--show-layers", action="store_true", help="print every layer's width before and after"
    )
    return parser.parse_intermixed_args(argv)


def state_dict_megabytes(model: torch.nn.Module) -> float:
    """Size of the model's weights as ``torch.save`` writes them, in MB (10^6 bytes)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 1e6


def describe(model: SingleShotDetector, image_size: int) -> dict[str, float]:
    return {
        "params": count_parameters(model),
        "megabytes": state_dict_megabytes(model),
        "gflops": count_flops(model, image_size) / 1e9,
    }


def benchmark(
    models: dict[str, SingleShotDetector],
    config: Config,
    repeats: int,
    options: SpeedOptions,
) -> dict[str, dict[str, float]]:
    """Batch-1 forward and whole-call latency (median ms; the call adds preprocessing
    and post-processing) of each model through the inference pipeline with
    ``options``, timed by benchmark.py's harness (:func:`engine.speed.measure`): the
    models' calls interleaved, so that they share the machine's noise."""
    image_size = config.model.image_size
    image = np.random.default_rng(0).integers(0, 256, (image_size, image_size, 3), np.uint8)
    cpu = torch.device("cpu")
    runners = [
        PipelineRunner(
            name,
            build_pipeline(model, config, backend="torch", device=cpu, options=options),
            config.model.num_classes,
        )
        for name, model in models.items()
    ]
    rows = measure(runners, [image], warmup=5, repeats=repeats)
    return {
        name: {"forward_ms": row["forward_ms"], "total_ms": row["total_ms"]}
        for name, row in rows.items()
    }


# Pruned channels whose |gamma| reaches this fraction of the kept channels' median carry
# signal: the scales were not made sparse.
NOT_SPARSE_FRACTION = 0.1


def report_sparsity(scores: torch.Tensor, threshold: float, ratio: float) -> bool:
    """Print how the |gamma| of the prunable channels are spread and the threshold the
    ratio gives; warn when they are not sparse (the channels to prune are not small next
    to those kept). Returns whether they are sparse."""
    below = float((scores < 0.01).float().mean())
    kept = scores[scores > threshold]
    reference = float(kept.median() if kept.numel() else scores.max())
    print(
        f"|gamma| of the {scores.numel()} prunable channels: median {float(scores.median()):.4g}, "
        f"{below:.1%} below 0.01; ratio {ratio:g} gives the threshold {threshold:.4g} "
        f"(median of the channels kept: {reference:.4g})"
    )
    sparse = threshold <= NOT_SPARSE_FRACTION * reference
    if not sparse:
        logger.warning(
            "the BatchNorm scales are not sparse: the channels to prune reach |gamma| "
            "%.4g, %.0f%% of the median of those kept, so they carry signal and accuracy "
            "will drop sharply until fine-tuning (train.py --init) brings it back. Train "
            "with train.sparsity=LAMBDA first (network slimming stage 1; see the README)",
            threshold,
            100 * threshold / reference if reference > 0 else float("inf"),
        )
    return sparse


def main(args: argparse.Namespace) -> int:
    setup_logging(is_main=True)
    config, model, checkpoint = load_model(args.config, args.overrides, args.checkpoint)
    model.eval()
    image_size = config.model.image_size
    original = copy.deepcopy(model) if args.benchmark else None
    before = describe(model, image_size)

    groups = channel_groups(model)
    widths_before = {group.name: group.width for group in groups}
    scores = torch.cat([group.scores() for group in groups])
    if args.widths is not None:
        keep = select_to_widths(groups, read_widths_file(args.widths))
        ratio = 1 - sum(len(indices) for indices in keep.values()) / scores.numel()
    else:
        keep = select_channels(
            groups, args.ratio, min_keep_fraction=args.min_keep, multiple_of=args.multiple_of
        )
        ratio = args.ratio
    _, threshold = global_threshold(scores, ratio)
    report_sparsity(scores, threshold, ratio)
    widths = prune_channels(groups, keep, compensate=not args.no_compensation)
    after = describe(model, image_size)

    if args.show_layers:
        name_width = max(len(name) for name in widths)
        for name, width in widths.items():
            print(f"{name:<{name_width}}  {widths_before[name]:>5} -> {width:>5}")
    kept, total = sum(widths.values()), sum(widths_before.values())
    print(
        f"pruned {total - kept} of {total} channels ({(total - kept) / total:.1%}) in "
        f"{len(groups)} layers; global |gamma| threshold {threshold:.4g}"
    )
    previous_rounds = pruning_rounds(checkpoint)
    first = previous_rounds[0] if previous_rounds else {}
    if "channels" in first and "params" in first:
        unpruned_channels, unpruned_params = first["channels"][0], first["params"][0]
        print(
            f"round {len(previous_rounds) + 1}: {kept} of the unpruned model's "
            f"{unpruned_channels} channels left ({kept / unpruned_channels:.1%}), "
            f"params {after['params'] / unpruned_params:.1%} of its {unpruned_params:,}"
        )
    print(f"{'':<12}{'before':>14}{'after':>14}{'ratio':>9}")
    for key, label, fmt in (
        ("params", "params", "{:,.0f}"),
        ("megabytes", "size (MB)", "{:.2f}"),
        ("gflops", "GFLOPs", "{:.3f}"),
    ):
        print(
            f"{label:<12}{fmt.format(before[key]):>14}{fmt.format(after[key]):>14}"
            f"{after[key] / before[key]:>9.3f}"
        )

    name = args.widths.stem if args.widths is not None else f"{args.ratio:g}"
    out = args.out or args.checkpoint.parent / f"pruned_{name}.pt"
    this_round = {
        "round": len(previous_rounds) + 1,
        "source": str(args.checkpoint),
        "ratio": ratio,
        "widths_file": str(args.widths) if args.widths is not None else None,
        "threshold": threshold,
        "min_keep_fraction": args.min_keep,
        "multiple_of": args.multiple_of,
        "compensation": not args.no_compensation,
        "channels": [total, kept],
        "params": [int(before["params"]), int(after["params"])],
    }
    state = make_checkpoint(
        config=config,
        model_state=model.state_dict(),
        class_names=(checkpoint or {}).get("class_names") or [],
        # Every group's width as this round leaves it (prune_channels lists them all),
        # so a later round starts from these.
        channel_widths=widths,
        pruning=this_round,
        pruning_rounds=[*previous_rounds, this_round],
    )
    save_checkpoint(state, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB on disk)")

    if original is not None:
        folded = prepare_for_inference(copy.deepcopy(model), SpeedOptions(fold_bn=True))
        models = {"unpruned": original}
        if previous_rounds:
            # A later round: its input is the previous round's model; the unpruned
            # model (its architecture; timing does not depend on the weights' values)
            # stays the reference, so every round's speed-up is against the same model.
            full = build_model(
                dataclasses.replace(
                    config, model=dataclasses.replace(config.model, widths_file=None)
                ),
                load_weights=False,
                channel_widths={},
            ).eval()
            models = {"unpruned": full, f"round {len(previous_rounds)}": original}
        models.update({"pruned": model, "pruned+folded": folded})
        timings = benchmark(
            models,
            config,
            args.repeats,
            SpeedOptions(channels_last=args.channels_last, inference_mode=True),
        )
        reference = timings["unpruned"]
        layout = "NHWC" if args.channels_last else "NCHW"
        print(
            f"batch-1 CPU latency ({torch.get_num_threads()} threads, {layout}, "
            f"median of {args.repeats})"
        )
        print(f"{'':<15}{'forward ms':>12}{'speed-up':>10}{'total ms':>10}{'speed-up':>10}")
        for name, timing in timings.items():
            print(
                f"{name:<15}{timing['forward_ms']:>12.2f}"
                f"{reference['forward_ms'] / timing['forward_ms']:>9.2f}x"
                f"{timing['total_ms']:>10.2f}"
                f"{reference['total_ms'] / timing['total_ms']:>9.2f}x"
            )
    return 0


if __name__ == "__main__":
    run_command(main, parse_args)
