"""Look at a dataset before training on it: counts, box sizes, problems, pictures.

    python -m tools.inspect_data --config configs/my_data.yaml
    python -m tools.inspect_data --config configs/my_data.yaml --augmented --grid 12

Prints, for the training and the validation sets: images and objects per class, objects
per image, box widths, heights and aspect ratios at the model's input size (what the
priors see) and every problem the readers found, grouped by kind with a count and a
first example. Writes into ``--out`` (default ``runs/inspect/<config name>``):

- ``boxes.png``: histograms of box width, height and aspect ratio at the input size,
  objects per image and per class, and the boxes' sizes against the config's prior
  shapes;
- ``grid.png`` (``grid_augmented.png`` with ``--augmented``): training images with their
  boxes and class names drawn, as read, or after the training augmentation.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import cv2
import numpy as np

from data.dataset import sample_rng
from data.loader import build_dataset, build_transform
from data.records import AnnotationRecord, BadSampleError, ProblemReport, read_image
from data.sources import prepare_data, read_records, resolve_class_names
from data.statistics import SplitStatistics, split_statistics
from layers.prior_search import map_settings
from utils.cli import (
    positive_int,
    run_command,
    script_parser,
)
from utils.config import Config, load_config
from utils.device import available_cores
from utils.log import setup_logging
from utils.visualize import class_color, draw_detections

logger = logging.getLogger(__name__)

TAGS_UP_TO = 25  # images with more boxes are drawn without name tags


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(
        "Counts, box sizes, problems and pictures of a config's dataset.", __doc__, config=True
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs")
    parser.add_argument(
        "--grid", type=positive_int, default=16, help="training images in the grid (default 16)"
    )
    parser.add_argument(
        "--augmented", action="store_true", help="draw the grid after the training augmentation"
    )
    parser.add_argument(
        "--tile", type=positive_int, default=320, help="side of a grid tile in pixels (default 320)"
    )
    parser.add_argument("--seed", type=int, default=0, help="which images the grid shows")
    return parser.parse_intermixed_args(argv)


def read_split(
    config: Config, split: str, class_names: list[str]
) -> tuple[list[AnnotationRecord], SplitStatistics]:
    """The records of a split and their statistics, with every problem the training
    reader would meet: those of the annotations, and the images it cannot decode
    (each image is decoded once, as training decodes it). Every problem is listed,
    whatever ``data.on_bad_sample`` says."""
    problems = ProblemReport("skip")
    records = read_records(config, split, class_names, problems)
    dataset = build_dataset(config, split, class_names, records)
    for record, error in dataset.unreadable_images(workers=available_cores()):
        problem = str(error).removeprefix(f"{record.image_path}: ")
        problems.report(record.image_path, f"{problem} (skipped)")
    return records, split_statistics(split, records, class_names, config.model.image_size, problems)


def describe(stats: SplitStatistics, sets: list[str], image_size: int) -> str:
    lines = [
        f"{stats.name} sets {sets}: {stats.images} images, {stats.objects} objects"
        + (f" ({stats.difficult} marked difficult)" if stats.difficult else "")
    ]
    width = max(len(name) for name in stats.objects_per_class)
    lines.append(f"  {'class':<{width}}  {'objects':>8}  {'images':>7}")
    for name, count in stats.objects_per_class.items():
        lines.append(f"  {name:<{width}}  {count:>8}  {stats.images_per_class[name]:>7}")
    counts = np.repeat(
        list(stats.objects_per_image), list(stats.objects_per_image.values())
    ).astype(float)
    if counts.size:
        lines.append(
            f"  objects per image: mean {counts.mean():.1f}, median {np.median(counts):g}, "
            f"min {counts.min():g}, max {counts.max():g}"
        )
    if stats.objects:
        for name, values in (
            ("width", stats.widths),
            ("height", stats.heights),
            ("aspect w/h", stats.aspect_ratios),
        ):
            low, p5, median, p95, high = np.percentile(values, [0, 5, 50, 95, 100])
            unit = "" if name.startswith("aspect") else " px"
            lines.append(
                f"  box {name} at {image_size} px: min {low:.3g}, 5% {p5:.3g}, median "
                f"{median:.3g}, 95% {p95:.3g}, max {high:.3g}{unit}"
            )
        small = float(np.mean(np.sqrt(stats.widths * stats.heights) < 16))
        lines.append(f"  boxes under 16 px (square root of the area): {small:.1%}")
    if stats.problems:
        lines.append(f"  problems ({sum(count for count, _ in stats.problems.values())}):")
        for kind, (count, example) in stats.problems.items():
            lines.append(f"    {count:>6} x {kind}")
            lines.append(f"           e.g. {example}")
    else:
        lines.append("  problems: none")
    return "\n".join(lines)


def plot_boxes(stats: SplitStatistics, config: Config, path: Path) -> None:
    """The histograms and the box-size scatter with the prior shapes, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = config.model.image_size
    figure, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    sides = np.concatenate(
        [stats.widths, stats.heights, [1.0, 2.0]]
        if not stats.objects
        else [stats.widths, stats.heights]
    )
    edges = np.geomspace(max(sides.min() * 0.9, 0.5), sides.max() * 1.1, 40)
    for axis, values, name in (
        (axes[0, 0], stats.widths, "box width"),
        (axes[0, 1], stats.heights, "box height"),
    ):
        axis.hist(values, bins=edges, color="#3b7dd8")
        _log_scale(axis, "x")
        axis.set_xlabel(f"{name} at the {size} px input (px)")
        axis.set_ylabel("boxes")
    ratios = stats.aspect_ratios
    ratio_edges = 2.0 ** np.linspace(-3, 3, 37)
    axes[0, 2].hist(
        np.clip(ratios, ratio_edges[0], ratio_edges[-1]), bins=ratio_edges, color="#3b7dd8"
    )
    axes[0, 2].set_xscale("log", base=2)
    axes[0, 2].set_xlabel("aspect ratio width / height at the input")
    per_image = np.repeat(list(stats.objects_per_image), list(stats.objects_per_image.values()))
    low, high = (int(per_image.min()), int(per_image.max())) if per_image.size else (0, 1)
    step = max(1, math.ceil((high - low + 1) / 40))
    axes[1, 0].hist(per_image, bins=np.arange(low, high + step + 1, step) - 0.5, color="#e07b39")
    axes[1, 0].set_xlabel("objects per image")
    axes[1, 0].set_ylabel("images")
    names = list(stats.objects_per_class)[:40]
    axes[1, 1].barh(
        names[::-1], [stats.objects_per_class[name] for name in names][::-1], color="#e07b39"
    )
    axes[1, 1].set_xlabel(
        "objects per class" + (" (first 40)" if len(stats.objects_per_class) > 40 else "")
    )
    scatter = axes[1, 2]
    scatter.scatter(stats.widths, stats.heights, s=4, alpha=0.3, color="#3b7dd8", label="boxes")
    for index, item in enumerate(map_settings(config.priors)):
        shapes = np.array(item.shapes())
        scatter.scatter(
            shapes[:, 0],
            shapes[:, 1],
            marker="x",
            s=40,
            color=np.array(class_color(index + 1)) / 255,
            label=f"priors, map {index + 1}",
        )
    _log_scale(scatter, "x")
    _log_scale(scatter, "y")
    scatter.set_xlabel("width (px)")
    scatter.set_ylabel("height (px)")
    scatter.set_title("boxes and the config's prior shapes")
    scatter.legend(fontsize=7, loc="upper left")
    figure.suptitle(
        f"{stats.name}: {stats.images} images, {stats.objects} objects, at the {size} px input"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)


def _log_scale(axes, which: str) -> None:
    """A log scale on ``which`` ("x" or "y") of ``axes``, labelled in plain numbers."""
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    getattr(axes, f"set_{which}scale")("log")
    axis = getattr(axes, f"{which}axis")
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())


def draw_grid(
    records: list[AnnotationRecord],
    class_names: list[str],
    config: Config,
    *,
    count: int,
    augmented: bool,
    seed: int,
    tile_size: int,
) -> np.ndarray:
    """Up to ``count`` records (a seeded choice) drawn with their boxes, as one RGB image."""
    chosen = np.sort(
        np.random.default_rng(seed).choice(len(records), min(count, len(records)), replace=False)
    )
    transform = build_transform(config, train=True) if augmented else None
    tiles = []
    for index in chosen:
        record = records[index]
        try:
            image = read_image(record.image_path)
        except BadSampleError as error:
            logger.warning("%s (left out of the grid)", error)
            continue
        boxes, labels = record.boxes.copy(), record.labels.copy()
        if transform is not None:
            image, boxes, labels = transform(image, boxes, labels, sample_rng(seed, 0, int(index)))
            boxes = boxes * np.array([image.shape[1], image.shape[0]] * 2, dtype=np.float32)
        scale = tile_size / max(image.shape[:2])
        resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
        drawn = draw_detections(
            resized, boxes * scale, labels, None, class_names, tags=len(boxes) <= TAGS_UP_TO
        )
        tile = np.full((tile_size + 18, tile_size, 3), 32, dtype=np.uint8)
        tile[: drawn.shape[0], : drawn.shape[1]] = drawn
        cv2.putText(
            tile, record.image_id[:40], (4, tile_size + 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
            (230, 230, 230), 1, cv2.LINE_AA,
        )  # fmt: skip
        tiles.append(tile)
    if not tiles:
        return np.full((tile_size + 18, tile_size, 3), 32, dtype=np.uint8)
    columns = min(4, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    grid = np.full((rows * (tile_size + 22), columns * (tile_size + 4), 3), 255, dtype=np.uint8)
    for position, tile in enumerate(tiles):
        row, column = divmod(position, columns)
        top, left = row * (tile_size + 22) + 2, column * (tile_size + 4) + 2
        grid[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    return np.concatenate([grid, legend(class_names, grid.shape[1])])


def legend(class_names: list[str], width: int) -> np.ndarray:
    """A strip naming each class in its box colour (wrapping onto more rows)."""
    rows: list[list[tuple[int, str]]] = [[]]
    used = 4
    for label, name in enumerate(class_names, start=1):
        (text_width, _), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        if used + text_width + 30 > width and rows[-1]:
            rows.append([])
            used = 4
        rows[-1].append((label, name))
        used += text_width + 30
    strip = np.full((22 * len(rows) + 4, width, 3), 255, dtype=np.uint8)
    for row, entries in enumerate(rows):
        left, top = 4, 22 * row + 4
        for label, name in entries:
            cv2.rectangle(strip, (left, top + 3), (left + 12, top + 15), class_color(label), -1)
            cv2.putText(
                strip, name, (left + 16, top + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA,
            )  # fmt: skip
            (text_width, _), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
            left += text_width + 30
    return strip


def main(args: argparse.Namespace) -> int:
    setup_logging(is_main=True)
    config = load_config(args.config, args.overrides)
    out = args.out or Path("runs") / "inspect" / (args.config.stem if args.config else "default")
    prepare_data(config)
    class_names = resolve_class_names(config)
    size = config.model.image_size
    train_records, train_stats = read_split(config, "train", class_names)
    print(describe(train_stats, config.data.train_sets, size))
    if config.data.val_sets != config.data.train_sets:
        _, val_stats = read_split(config, "val", class_names)
        print(describe(val_stats, config.data.val_sets, size))
    else:
        print(f"val sets {config.data.val_sets}: the training sets (no held-out images)")
    out.mkdir(parents=True, exist_ok=True)
    plot_boxes(train_stats, config, out / "boxes.png")
    grid = draw_grid(
        train_records,
        class_names,
        config,
        count=args.grid,
        augmented=args.augmented,
        seed=args.seed,
        tile_size=args.tile,
    )
    grid_path = out / ("grid_augmented.png" if args.augmented else "grid.png")
    if not cv2.imwrite(str(grid_path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{grid_path}: could not write the image")
    print(f"wrote {out / 'boxes.png'} and {grid_path}")
    return 0


if __name__ == "__main__":
    run_command(main, parse_args)
