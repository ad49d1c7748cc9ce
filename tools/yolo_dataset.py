"""Write a config's training and validation sets in the YOLO label format, to train
another detector on exactly the boxes this project trains and scores on.

    python -m tools.yolo_dataset --config configs/bccd.yaml --out /tmp/bccd_yolo

The sets are read by this project's readers, so a box they report and drop (a point, an
inverted box, an unknown class) is left out of both. ``OUT/images/{train,val}/`` link
to the images, ``OUT/labels/{train,val}/<image>.txt`` hold one ``class cx cy w h`` line
per object (class 0-based, coordinates normalised by the image: VOC's 1-based pixels
become 0-based exactly as for this project's own training), and ``OUT/data.yaml`` names
the folders and classes. VOC "difficult" objects are left out, as this project trains
without them (``data.train_difficult``) and the metrics ignore them.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np
import yaml

from data.records import AnnotationRecord
from data.sources import prepare_data, read_records, resolve_class_names
from utils.cli import add_config_arguments, run_command
from utils.config import load_config
from utils.log import setup_logging

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="the folder to write")
    return parser.parse_intermixed_args(argv)


def yolo_lines(record: AnnotationRecord) -> list[str]:
    """``class cx cy w h`` per object, normalised by the image; difficult ones left out."""
    size = np.array([record.width, record.height] * 2, dtype=np.float64)
    lines = []
    for box, label, difficult in zip(record.boxes, record.labels, record.difficult, strict=True):
        if difficult:
            continue
        x1, y1, x2, y2 = np.asarray(box, dtype=np.float64) / size
        lines.append(
            f"{int(label) - 1} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}"
        )
    return lines


def write_split(records: list[AnnotationRecord], out: Path, split: str) -> None:
    images, labels = out / "images" / split, out / "labels" / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for record in records:
        link = images / f"{record.image_id}{record.image_path.suffix.lower()}"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.abspath(record.image_path))
        text = "".join(line + "\n" for line in yolo_lines(record))
        (labels / f"{record.image_id}.txt").write_text(text, encoding="utf-8")


def main(args: argparse.Namespace) -> int:
    setup_logging(is_main=True)
    config = load_config(args.config, args.overrides)
    prepare_data(config)
    names = resolve_class_names(config)
    for split in ("train", "val"):
        records = read_records(config, split, names)
        write_split(records, args.out, split)
        objects = sum(len(yolo_lines(record)) for record in records)
        print(f"{split}: {len(records)} images, {objects} objects")
    content = {
        "path": str(args.out.resolve()),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(names)),
    }
    (args.out / "data.yaml").write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    print(f"wrote {args.out / 'data.yaml'}")
    return 0


if __name__ == "__main__":
    run_command(main, parse_args)
