"""Write a training config for a folder of annotated images, priors fitted to its boxes.

    python -m tools.make_config --data ../shared/data/trees --out configs/trees.yaml
    python -m tools.make_config --data DIR --format coco --image-size 512 \\
        --base configs/fssd512_voc.yaml --out configs/my_data_512.yaml
    python train.py --config configs/trees.yaml

Starts from ``--base`` (the network, training and augmentation settings) and derives
from the data:

- the data section: ``voc`` for a VOCdevkit (``VOC2007/``, ``VOC2012/``, ...: every
  year's ``trainval`` for training and the annotated ``test`` lists for validation, as
  in VOC07+12, else ``train``/``val``), ``custom`` for a folder of VOC XML files (with
  the images beside them or in ``JPEGImages/``/``images/``), ``coco`` for COCO JSON
  (chosen when the folder holds JSON and no XML; ``--format coco`` otherwise); the
  training and validation splits from ``ImageSets/Main/{train,val}.txt`` (or
  ``trainval``/``test``), from JSON files named ``*train*``/``*val*``, or, with
  neither, every image for both (no held-out images: the written file says so);
- the class names found in the annotations (``--classes`` picks and orders them) and
  ``model.num_classes``;
- the input size (``--image-size``; a size other than the base's starts the priors
  from SSD's recipe);
- the priors, fitted to the training boxes at that size as ``python -m
  tools.fit_priors`` does, with at most as many priors as the base has, their sizes
  growing from map to map;
- with ``--minutes M`` (a training budget on this machine): the network (the base's if
  it trains at least 50 epochs in M minutes at its measured speed here, else the small
  CPU network of ``configs/quickstart_shapes.yaml`` with its from-scratch recipe) and
  the recipe measured on BCCD (docs/benchmarks.md): ``train.max_minutes``, matching at
  IoU 0.5 with the priors fitted for coverage at 0.4, Gaussian Soft-NMS, mosaics;
- for data that is not Pascal VOC, ``eval.metric: coco`` (``best.pt`` kept by COCO AP).

    python -m tools.make_config --data ../shared/data/bccd --image-size 320 --minutes 15 \\
        --out configs/bccd.yaml

Every derived value is explained by a comment in the written YAML; the rest is the
base's, written out so that the file stands alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from data.layouts import DataLayout, discover_layout
from data.sources import read_records
from engine.prior_fitting import PriorFit, fit_config_priors
from engine.throughput import training_images_per_second
from layers.prior_search import ssd_rule_priors
from models.build import feature_map_sizes
from utils.cli import (
    number_in,
    positive_int,
    run_command,
    script_parser,
)
from utils.config import POSITIVE, Config, config_from_dict, config_to_dict, load_config
from utils.device import choose_device
from utils.errors import UserError
from utils.files import atomic_write_text
from utils.log import setup_logging

logger = logging.getLogger(__name__)

DEFAULT_BASE = Path("configs/fssd300_voc.yaml")
# With --minutes: the network when the base's trains fewer than MIN_EPOCHS epochs in the
# budget (the share of it spent in training steps: TRAINING_SHARE), and the recipe's
# matching threshold and mosaic probability (measured on BCCD: docs/benchmarks.md).
SMALL_CPU_BASE = Path("configs/quickstart_shapes.yaml")
MIN_EPOCHS = 50
TRAINING_SHARE = 0.9
RECIPE_IOU_THRESHOLD = 0.5
RECIPE_FIT_IOU = 0.4
RECIPE_MOSAIC = 0.5
positive_float = number_in(float, POSITIVE)


class MakeConfigError(UserError, ValueError):
    """The data folder cannot be turned into a config; the message says why."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser("A training config for a folder of annotated images.", __doc__)
    parser.add_argument("--data", type=Path, required=True, help="the dataset folder")
    parser.add_argument(
        "--format",
        choices=("voc", "coco"),
        default=None,
        help="annotation format (default: coco if the folder holds JSON and no XML)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the config file to write")
    parser.add_argument(
        "--base",
        type=Path,
        default=DEFAULT_BASE,
        help=f"config whose network and training settings to start from (default {DEFAULT_BASE})",
    )
    parser.add_argument(
        "--image-size", type=positive_int, default=None, help="input size (default: the base's)"
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated class names to train on, in label order (default: all found)",
    )
    parser.add_argument(
        "--max-priors",
        type=positive_int,
        default=None,
        help="most priors the fitted settings may have (default: as many as the base's)",
    )
    parser.add_argument(
        "--minutes",
        type=positive_float,
        default=None,
        help="training budget in minutes (train.max_minutes): the run fits its length to it",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the prior search's sample")
    return parser.parse_intermixed_args(argv)


def detection_cap(most_objects: int, current: int) -> int:
    """Detections kept per image: ``current``, or 1.5 times the most objects in a
    training image rounded up to a hundred when that is more."""
    return max(current, math.ceil(most_objects * 1.5 / 100) * 100)


# Per-class candidates before NMS for each object of a class in an image: an object's
# near-duplicate priors score high too and come first, so with fewer the later objects
# of a crowded class are never candidates. Measured on BCCD val (25 red cells in the
# most crowded training image), same weights, top-k 200 / 400 / 700 / 1000: COCO AP
# 0.583 / 0.596 / 0.599 / 0.600, AP50 0.855 / 0.878 / 0.883 / 0.884.
CANDIDATES_PER_OBJECT = 25
MAX_CANDIDATES = 1000


def candidate_count(most_of_a_class: int, current: int) -> int:
    """Per-class candidates before NMS: ``current``, or ``CANDIDATES_PER_OBJECT`` times
    the most objects of one class in a training image rounded up to a hundred (at most
    ``MAX_CANDIDATES``) when that is more."""
    wanted = math.ceil(most_of_a_class * CANDIDATES_PER_OBJECT / 100) * 100
    return max(current, min(wanted, MAX_CANDIDATES))


def choose_classes(found: list[str], wanted: str | None) -> list[str]:
    if wanted is None:
        return found
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    missing = [name for name in names if name not in found]
    if missing or not names:
        raise MakeConfigError(
            f"--classes {wanted}: {', '.join(missing) or 'no names'} not among the classes "
            f"found: {', '.join(found)}"
        )
    return names


def _for_data(base: Config, layout: DataLayout, names: list[str], root: Path, size: int) -> Config:
    """``base`` reading the data folder, with its classes and input size; its priors,
    or SSD's recipe where they do not describe the network's maps at that size."""
    config = dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, num_classes=len(names) + 1, image_size=size),
        data=dataclasses.replace(
            base.data,
            dataset=layout.dataset,
            root=str(root),
            train_sets=layout.train_sets,
            val_sets=layout.val_sets,
            class_names=names,
        ),
        train=dataclasses.replace(base.train, output_dir=""),
    )
    num_maps = len(feature_map_sizes(config.model))
    if size != base.model.image_size or len(base.priors.min_sizes) != num_maps:
        config = dataclasses.replace(config, priors=ssd_rule_priors(base.priors, size, num_maps))
    return config


def choose_network(
    base: Config, small: Config, *, minutes: float, train_images: int
) -> tuple[Config, str]:
    """The base's network if :data:`MIN_EPOCHS` epochs of ``train_images`` fit in
    ``minutes`` at its measured training speed on this machine, else ``small`` (the
    small CPU network and its from-scratch recipe); the reason, with the speeds."""

    def epochs_of(config: Config) -> tuple[float, float]:
        # Timed where train.py would train (train.device), on a GPU when there is one.
        device = choose_device(config.train.device, origin="train.device")
        rate = training_images_per_second(config, device=str(device))
        return rate, minutes * 60 * TRAINING_SHARE * rate / max(train_images, 1)

    rate, epochs = epochs_of(base)
    measured = (
        f"the base's network trains at {rate:.1f} images/s on this machine (the step alone, "
        f"without data loading): at most {epochs:.1f} epochs of the {train_images} training "
        f"images in {minutes:g} minutes"
    )
    if epochs >= MIN_EPOCHS:
        return base, f"{measured} (at least {MIN_EPOCHS})"
    small_rate, small_epochs = epochs_of(small)
    return small, (
        f"{measured}, fewer than {MIN_EPOCHS}; the small CPU network of {SMALL_CPU_BASE} "
        f"(and its recipe for training from scratch) trains at {small_rate:.1f} images/s: "
        f"at most {small_epochs:.1f} epochs"
    )


def budget_recipe(config: Config, minutes: float) -> tuple[Config, dict[str, str]]:
    """What a run on a time budget gets besides its network: the budget, SSD's matching
    threshold, Gaussian Soft-NMS and mosaics (each measured on BCCD, docs/benchmarks.md);
    a comment per key."""
    comments = {
        "train.max_minutes": (
            f"--minutes: the run, evaluations included, fits its length to {minutes:g} "
            "minutes of this machine's clock; train.epochs only shapes the schedule "
            "(train.epochs / train.eval_interval evaluations, spread over the run)"
        ),
    }
    loss, post, augment = config.loss, config.postprocess, config.augment
    if loss.iou_threshold < RECIPE_IOU_THRESHOLD:
        loss = dataclasses.replace(loss, iou_threshold=RECIPE_IOU_THRESHOLD)
        comments["loss.iou_threshold"] = (
            f"SSD's {RECIPE_IOU_THRESHOLD:g}: a lower threshold makes the priors between "
            "touching objects positives of either (on BCCD's crowded red cells 0.4 lost "
            "4.7 points of COCO AP)"
        )
    if post.nms == "hard":
        post = dataclasses.replace(post, nms="soft_gaussian", soft_nms_sigma=0.5)
        comments["postprocess.nms"] = (
            "Gaussian Soft-NMS: overlapping boxes of one class lose score instead of being "
            "dropped, so touching objects keep their boxes (+1 COCO AP on BCCD, same weights)"
        )
    if augment.mosaic_prob < RECIPE_MOSAIC:
        augment = dataclasses.replace(augment, mosaic_prob=RECIPE_MOSAIC)
        comments["augment.mosaic_prob"] = (
            "mosaics of four images: more objects per step and new company for each, "
            "at their own scale (+1.5 COCO AP on BCCD)"
        )
    train = dataclasses.replace(config.train, max_minutes=minutes)
    return (
        dataclasses.replace(config, loss=loss, postprocess=post, augment=augment, train=train),
        comments,
    )


def derive_config(
    base: Config, args: argparse.Namespace
) -> tuple[Config, DataLayout, PriorFit, dict[str, str], Path]:
    """The config for the data, the layout found, the prior fit, a comment per derived
    key (``section.key``) and the config file whose network and training settings it
    holds. With ``--minutes`` the network is chosen for the budget
    (:func:`choose_network`) and the run gets :func:`budget_recipe`."""
    root = args.data
    layout = discover_layout(root, args.format)
    names = choose_classes(layout.class_names, args.classes)
    size = args.image_size or base.model.image_size
    config = _for_data(base, layout, names, root, size)
    comments: dict[str, str] = {}
    base_path = args.base
    if args.minutes:
        small_base = load_config(SMALL_CPU_BASE)
        small = _for_data(small_base, layout, names, root, size)
        config, comments["model.architecture"] = choose_network(
            config,
            small,
            minutes=args.minutes,
            train_images=len(read_records(config, "train", names)),
        )
        if config is small:
            base, base_path = small_base, SMALL_CPU_BASE
        config, recipe = budget_recipe(config, args.minutes)
        comments.update(recipe)
    start = "the base's priors"
    if config.priors != base.priors:
        num_maps = len(feature_map_sizes(config.model))
        start = f"SSD's recipe for {num_maps} maps at {size} px (the base's are for another size)"
    records = read_records(config, "train", names)
    # The budget recipe matches at 0.5 but fits the priors' coverage at RECIPE_FIT_IOU.
    fit_iou = RECIPE_FIT_IOU if args.minutes else config.loss.iou_threshold
    fitting = dataclasses.replace(
        config, loss=dataclasses.replace(config.loss, iou_threshold=fit_iou)
    )
    try:
        fit = fit_config_priors(
            fitting, max_priors=args.max_priors, seed=args.seed, records=records
        )
    except ValueError as error:
        raise MakeConfigError(f"{root}: {error}") from error
    config = dataclasses.replace(config, priors=fit.fitted)
    fit_note = (
        "fitted at 0.4 while training matches at 0.5: at 0.5 the coverage search spends "
        "the priors on the many mid-sized boxes and drops the large sizes a rare class "
        "needs (on BCCD white cells lost 6 points of AP)"
        if args.minutes and fit_iou != config.loss.iou_threshold
        else "loss.iou_threshold"
    )
    before = f"{fit.before.covered:.2%} with {start}" if fit.before is not None else start
    unused = sorted(set(layout.class_names) - set(names))
    years = sorted({name.partition("/")[0] for name in layout.train_sets + layout.val_sets})
    kind = {
        "custom": "a folder of VOC XML annotations",
        "voc": f"a VOCdevkit with {', '.join(f'VOC{year}' for year in years)}",
        "coco": "COCO JSON",
    }[layout.dataset]
    comments.update(
        {
            "model.num_classes": f"{len(names)} classes + background",
            "model.image_size": "--image-size" if args.image_size else f"the base's ({args.base})",
            "priors.min_sizes": (
                f"fitted to the {fit.boxes} training boxes at {size} px (python -m "
                f"tools.fit_priors): {fit.after.num_priors} priors cover {fit.after.covered:.2%} "
                f"of them at IoU >= {fit.after.threshold:g} ({fit_note}; {before}); no "
                f"prior settings can cover much more than {fit.limit:.2%} on these feature maps"
            ),
            "data.dataset": f"from --data {root}: {kind}",
            "data.root": "relative to the folder train.py runs in",
            "data.train_sets": layout.note,
            "data.class_names": "the object names found in the annotations"
            + (f" (--classes; left out: {', '.join(unused)})" if unused else "")
            + "; label k is the k-th",
        }
    )
    most = max(record.num_objects for record in records)
    most_of_a_class = max(
        int(np.bincount(record.labels).max()) for record in records if record.num_objects
    )
    post = config.postprocess
    cap = detection_cap(most, post.max_detections)
    candidates = max(cap, candidate_count(most_of_a_class, post.pre_nms_topk))
    if (cap, candidates) != (post.max_detections, post.pre_nms_topk):
        config = dataclasses.replace(
            config,
            postprocess=dataclasses.replace(post, max_detections=cap, pre_nms_topk=candidates),
        )
        comments["postprocess.pre_nms_topk"] = (
            f"a training image holds {most} objects, {most_of_a_class} of one class: "
            f"{candidates} candidates per class before NMS (about {CANDIDATES_PER_OBJECT} per "
            "object: each object's near-duplicate priors come first; on BCCD's crowded red "
            f"cells 200 instead of 700 lost 1.6 COCO AP and 2.8 AP50) and {cap} detections "
            f"per image after it (the base keeps {post.pre_nms_topk} and {post.max_detections})"
        )
    if layout.dataset != "voc" and config.eval.metric != "coco":
        config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, metric="coco"))
        comments["eval.metric"] = (
            "COCO AP (IoU 0.5 to 0.95) scores the box's precision as well as the find, and "
            "keeps best.pt by it; VOC's mAP counts a box at IoU 0.5 as found"
        )
    return config, layout, fit, comments, base_path


def render(config: Config, base_path: Path, comments: dict[str, str], header: str) -> str:
    """The config as YAML: the keys that differ from the code defaults or are derived,
    section by section, each derived key under its comment."""
    values, defaults = config_to_dict(config), config_to_dict(Config())
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section, content in values.items():
        keys = [
            key
            for key, value in content.items()
            if value != defaults[section][key] or f"{section}.{key}" in comments
        ]
        if section == "train":
            keys = [key for key in keys if key != "output_dir"]
        if not keys:
            continue
        lines.append(f"{section}:")
        for key in keys:
            comment = comments.get(f"{section}.{key}")
            if comment:
                lines += [f"  # {part}" for part in _wrap(comment)]
            lines.append(f"  {_yaml_item(key, content[key])}")
    return "\n".join(lines) + "\n"


def _yaml_item(key: str, value: Any) -> str:
    """``key: value`` on one line, lists in flow style."""
    if isinstance(value, list | tuple | dict):
        return f"{key}: " + yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return yaml.safe_dump({key: value}, default_flow_style=False).strip()


def _wrap(text: str, width: int = 84) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def main(args: argparse.Namespace) -> int:
    setup_logging(is_main=True)
    base = load_config(args.base)
    config, layout, fit, comments, base_path = derive_config(base, args)
    header = (
        f"Written by python -m tools.make_config --data {args.data}"
        + (f" --image-size {args.image_size}" if args.image_size else "")
        + (f" --minutes {args.minutes:g}" if args.minutes else "")
        + f" --base {args.base}.\n"
        f"Network, training and augmentation settings: {base_path}; the commented keys\n"
        "were derived from the data. Train with python train.py --config THIS_FILE."
    )
    text = render(config, base_path, comments, header)
    # The text must read back as the derived config before it replaces anything.
    written = config_from_dict(yaml.safe_load(text), source=str(args.out))
    if config_to_dict(written) != config_to_dict(config):
        raise AssertionError("the written config does not read back as the derived one")
    atomic_write_text(args.out, text, what="config")
    print(
        f"{layout.dataset} data in {args.data}: {len(config.data.class_names)} classes "
        f"({', '.join(config.data.class_names)}); train {layout.train_sets}, val {layout.val_sets}"
    )
    if fit.before is not None:
        print(fit.before.describe("starting priors"))
    print(fit.after.describe("fitted priors"))
    print(f"wrote {args.out}; train with: python train.py --config {args.out}")
    return 0


if __name__ == "__main__":
    run_command(main, parse_args)
