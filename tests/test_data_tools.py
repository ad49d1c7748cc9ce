"""tools.inspect_data (dataset report) and tools.make_config (a config from a folder)."""

import dataclasses
import json
import math
import xml.etree.ElementTree as ElementTree
from collections import Counter

import cv2
import numpy as np
import pytest
import torch
import yaml
from torchvision.ops import box_convert, box_iou

import train
from data.layouts import voc_layout
from data.records import ProblemReport, problem_kind
from data.sources import DataError, read_records
from data.statistics import split_statistics
from data.voc import VOC_CLASSES, read_voc_format
from layers.prior_search import ssd_rule_priors
from models.build import build_model
from tests.conftest import REPO_ROOT
from tools import augment_benchmark, inspect_data, make_config, yolo_dataset
from utils.checkpoint import load_checkpoint
from utils.config import load_config

QUICKSTART = REPO_ROOT / "configs" / "quickstart_shapes.yaml"


def write_custom_folder(root):
    """Four images with VOC XML: two good ones, one box inverted, one box reaching out
    of its image, one object of an unknown class, one image without annotation."""
    root.mkdir(parents=True)
    objects = {
        "a": [("cat", (10, 10, 40, 30)), ("dog", (5, 5, 60, 60)), ("cat", (1, 1, 8, 20))],
        "b": [("dog", (20, 30, 50, 45))],
        "c": [("cat", (30, 10, 20, 40)), ("cat", (50, 50, 90, 70)), ("bird", (1, 1, 5, 5))],
        "d": [("dog", (1, 1, 30, 30)), ("cat", (2, 2, 12, 12))],
    }
    for name, items in objects.items():
        cv2.imwrite(str(root / f"{name}.png"), np.full((64, 80, 3), 128, np.uint8))
        parts = [f"<annotation><filename>{name}.png</filename>"]
        parts.append("<size><width>80</width><height>64</height><depth>3</depth></size>")
        for class_name, (x1, y1, x2, y2) in items:
            parts.append(
                f"<object><name>{class_name}</name><difficult>0</difficult><bndbox>"
                f"<xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
                "</bndbox></object>"
            )
        (root / f"{name}.xml").write_text("".join(parts) + "</annotation>")
    cv2.imwrite(str(root / "unannotated.png"), np.zeros((8, 8, 3), np.uint8))
    return root


def test_statistics_equal_direct_counts(tmp_path):
    root = write_custom_folder(tmp_path / "custom")
    problems = ProblemReport("skip")
    records = read_voc_format(root, "all", ["cat", "dog"], problems)
    stats = split_statistics("train", records, ["cat", "dog"], 100, problems)

    # Counted straight from the XML files, applying the reader's rules by hand: the
    # inverted box (c, x 30 -> 20) and the unknown class (bird) are left out.
    kept = []
    for path in sorted(root.glob("*.xml")):
        for element in ElementTree.parse(path).getroot().iter("object"):
            box = [
                float(element.findtext(f"bndbox/{tag}")) for tag in ("xmin", "ymin", "xmax", "ymax")
            ]
            name = element.findtext("name")
            if name in ("cat", "dog") and box[2] > box[0]:
                kept.append((path.stem, name, box))
    assert stats.images == 4 and stats.objects == len(kept) == 7
    assert (
        stats.objects_per_class
        == dict(Counter(name for _, name, _ in kept))
        == {"cat": 4, "dog": 3}
    )
    assert stats.images_per_class == {"cat": 3, "dog": 3}
    assert stats.objects_per_image == dict(Counter(Counter(stem for stem, _, _ in kept).values()))
    # Widths and heights at the 100 px input: VOC boxes [xmin - 1, xmax], scaled by
    # 100/80 and 100/64; the box reaching past x = 80 is clipped to the image.
    expected_widths = sorted((min(box[2], 80) - (box[0] - 1)) * 100 / 80 for _, _, box in kept)
    expected_heights = sorted((min(box[3], 64) - (box[1] - 1)) * 100 / 64 for _, _, box in kept)
    np.testing.assert_allclose(sorted(stats.widths), expected_widths, rtol=1e-6)
    np.testing.assert_allclose(sorted(stats.heights), expected_heights, rtol=1e-6)
    assert stats.difficult == 0
    # One problem of each kind, with its first message.
    counts = {kind: count for kind, (count, _) in stats.problems.items()}
    assert counts == {
        "object N [...] is inverted or empty; left out": 1,
        "object N [...] reaches outside the NxN image; clipped to [...]": 1,
        "N objects of unknown classes '...' left out; known classes: cat, dog": 1,
        "N images have no XML annotation and are left out: unannotated.png": 1,
    }
    assert stats.problems["object N [...] is inverted or empty; left out"][1].startswith(
        str(root / "c.xml")
    )


def test_problem_kinds_group_the_same_problem():
    assert problem_kind("object 3 [1, 2, 0, 5] is inverted or empty; left out") == problem_kind(
        "object 0 [7.5, 2, 1, 9] is inverted or empty; left out"
    )
    assert problem_kind(
        "2 objects of unknown classes 'a' (1), 'b' (1) left out; known classes: x"
    ) == ("N objects of unknown classes '...' left out; known classes: x")


def test_inspect_data_reports_and_draws(tiny_shapes_root, tmp_path, capsys):
    overrides = [f"data.root={tiny_shapes_root}", "data.shapes_train_images=16",
                 "data.shapes_val_images=6", "data.shapes_image_size=96"]  # fmt: skip
    out = tmp_path / "inspect"
    for augmented in ([], ["--augmented"]):
        args = inspect_data.parse_args(
            ["--config", str(QUICKSTART), *overrides, "--out", str(out), "--grid", "5", *augmented]
        )
        assert inspect_data.main(args) == 0
    printed = capsys.readouterr().out
    config = load_config(QUICKSTART, overrides)
    records = read_records(config, "train", ["ellipse", "rectangle", "triangle", "star", "cross"])
    objects = sum(record.num_objects for record in records)
    assert f"train sets ['train']: 16 images, {objects} objects" in printed
    assert "val sets ['val']: 6 images" in printed
    for name in ("boxes.png", "grid.png", "grid_augmented.png"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 300 and image.shape[1] > 300
    # Five tiles of 320 px in rows of four, under them the class legend.
    assert cv2.imread(str(out / "grid.png")).shape[1] == 4 * 324


def test_inspect_data_lists_every_image_training_cannot_read(tmp_path, capsys, caplog):
    """A corrupt, a zero-byte and a truncated JPEG (the XML gives their sizes, so only
    decoding finds them): inspect_data's problem list names exactly the images the
    training reader skips, even under data.on_bad_sample=stop."""
    from data.loader import build_dataset
    from tests.test_data import _write_xml

    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    for index in range(6):
        image = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        cv2.imwrite(str(root / f"img{index}.jpg"), image)
        _write_xml(root / f"img{index}.xml", f"img{index}.jpg", [("cat", (10, 10, 60, 70))],
                   size=(96, 96))  # fmt: skip
    (root / "img1.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (root / "img2.jpg").write_bytes(b"")
    whole = (root / "img3.jpg").read_bytes()
    (root / "img3.jpg").write_bytes(whole[: len(whole) // 2])
    overrides = ["data.dataset=custom", f"data.root={root}", "data.train_sets=[all]",
                 "data.val_sets=[all]", "data.class_names=[cat]", "model.num_classes=2",
                 "data.on_bad_sample=stop"]  # fmt: skip
    arguments = ["--config", str(QUICKSTART), *overrides, "--out", str(tmp_path / "out")]
    assert inspect_data.main(inspect_data.parse_args(arguments)) == 0
    printed = capsys.readouterr().out
    assert "problems (3):" in printed
    assert "3 x unreadable or corrupt image" in printed

    # The training reader, under skip, over every sample: the same three files.
    config = load_config(QUICKSTART, [*overrides[:-1], "data.on_bad_sample=skip"])
    dataset = build_dataset(config, "train", ["cat"])
    caplog.clear()
    for index in range(len(dataset)):
        dataset[(index, 0)]
    skipped = sorted(
        record.getMessage().split(":")[0]
        for record in caplog.records
        if "unreadable or corrupt image (skipped)" in record.getMessage()
    )
    assert skipped == sorted(str(root / f"img{index}.jpg") for index in (1, 2, 3))
    assert sorted(str(record.image_path) for record, _ in dataset.unreadable_images()) == skipped


def prior_coverage(config, records, threshold):
    """The share of the records' boxes whose best IoU with the built model's priors
    reaches ``threshold``."""
    priors_cxcywh = build_model(config, load_weights=False).priors_cxcywh
    priors = box_convert(priors_cxcywh, in_fmt="cxcywh", out_fmt="xyxy")
    boxes = torch.cat(
        [torch.from_numpy(r.boxes / np.array([r.width, r.height] * 2)) for r in records]
    ).float()
    return float((box_iou(boxes, priors).max(dim=1).values >= threshold).float().mean())


def make(argv):
    return make_config.main(make_config.parse_args([str(item) for item in argv]))


def test_make_config_output_trains_as_written(tiny_shapes_root, tmp_path):
    out = tmp_path / "configs" / "mine.yaml"
    assert make(["--data", tiny_shapes_root, "--base", QUICKSTART, "--image-size", 96,
                 "--out", out]) == 0  # fmt: skip
    text = out.read_text()
    written = yaml.safe_load(text)
    config = load_config(out)
    # Classes found in the XML (sorted), splits from ImageSets/Main/{train,val}.txt.
    names = ["cross", "ellipse", "rectangle", "star", "triangle"]
    assert config.data.class_names == names and config.model.num_classes == 6
    assert config.data.dataset == "custom" and config.data.root == str(tiny_shapes_root)
    assert (config.data.train_sets, config.data.val_sets) == (["train"], ["val"])
    assert config.model.image_size == 96 and config.model.width_multiplier == 0.125
    assert "# 5 classes + background" in text and "# from the split lists train.txt" in text
    assert "output_dir" not in written.get("train", {})
    # The priors were fitted to these boxes at 96 px: the built model's priors cover
    # what the comment says (counted here with torchvision's IoU), more than SSD's
    # recipe for 96 px does.
    records = read_records(config, "train", names)
    covered = prior_coverage(config, records, 0.4)
    assert f"cover {covered:.2%}" in text.replace("\n  # ", " ")
    start = dataclasses.replace(config, priors=ssd_rule_priors(config.priors, 96, 4))
    assert covered > prior_coverage(start, records, 0.4) and config.priors.steps is None
    # train.py runs it as written (the overrides only keep the test short).
    output = tmp_path / "run"
    arguments = ["--config", str(out), f"train.output_dir={output}", "train.epochs=1",
                 "data.num_workers=0", "train.batch_size=8"]  # fmt: skip
    assert train.main(train.parse_args(arguments)) == 0
    checkpoint = load_checkpoint(output / "last.pt")
    assert checkpoint["class_names"] == names and checkpoint["iteration"] == 2


@pytest.mark.parametrize("wide_rate, small_chosen", [(50.0, False), (5.0, True)])
def test_make_config_minutes_chooses_the_network_and_recipe(
    tiny_shapes_root, tmp_path, monkeypatch, wide_rate, small_chosen
):
    # A base twice as wide as the small CPU network, at a faked measured speed: 2 min *
    # 60 * 0.9 * rate / 16 training images is 337.5 epochs at 50 images/s (>= 50: kept),
    # 33.75 at 5 (the small network, at 300 images/s, gets 2025).
    base = yaml.safe_load(QUICKSTART.read_text())
    base["model"]["width_multiplier"] = 0.25
    base_path = tmp_path / "wide.yaml"
    base_path.write_text(yaml.safe_dump(base))
    rates = {0.25: wide_rate, 0.125: 300.0}
    monkeypatch.setattr(
        make_config,
        "training_images_per_second",
        lambda config, **_: rates[config.model.width_multiplier],
    )
    out = tmp_path / "budget.yaml"
    assert make(["--data", tiny_shapes_root, "--base", base_path, "--image-size", 96,
                 "--minutes", 2, "--out", out]) == 0  # fmt: skip
    config, lines = load_config(out), out.read_text().splitlines()
    text = " ".join(line.strip(" #") for line in lines)
    epochs = 2 * 60 * 0.9 * wide_rate / 16
    assert (
        f"trains at {wide_rate:.1f} images/s on this machine (the step alone, without data "
        f"loading): at most {epochs:.1f} epochs" in text
    )
    if small_chosen:
        assert config.model.width_multiplier == 0.125
        assert "fewer than 50; the small CPU network of configs/quickstart_shapes.yaml" in text
        assert "trains at 300.0 images/s: at most 2025.0 epochs" in text
        assert lines[1] == (
            "# Network, training and augmentation settings: configs/quickstart_shapes.yaml;"
            " the commented keys"
        )
    else:
        assert config.model.width_multiplier == 0.25 and "(at least 50)" in text
    # The recipe of a budgeted run, each choice under the comment that explains it.
    assert config.train.max_minutes == 2 and config.loss.iou_threshold == 0.5
    assert config.postprocess.nms == "soft_gaussian" and config.augment.mosaic_prob == 0.5
    assert config.eval.metric == "coco"
    for key in ("iou_threshold:", "nms:", "mosaic_prob:", "max_minutes:", "metric:"):
        [index] = [i for i, line in enumerate(lines) if line.strip().startswith(key)]
        assert lines[index - 1].strip().startswith("#"), key
    # The priors were fitted for coverage at 0.4, the recipe's fit threshold, and are the
    # fit of the same boxes at 0.4 from SSD's recipe.
    assert "at IoU >= 0.4 (fitted at 0.4 while training matches at 0.5" in text
    records = read_records(config, "train", config.data.class_names)
    covered = prior_coverage(config, records, 0.4)
    assert f"cover {covered:.2%}" in text.replace("\n  # ", " ")
    start = dataclasses.replace(config, priors=ssd_rule_priors(config.priors, 96, 4))
    assert covered > prior_coverage(start, records, 0.4)


def test_training_speed_is_measured_on_the_config_network():
    config = load_config(QUICKSTART, ["model.image_size=96", "model.num_classes=3"])
    config = dataclasses.replace(config, priors=ssd_rule_priors(config.priors, 96, 4))
    rate = make_config.training_images_per_second(config, batch_size=2, iterations=1)
    assert math.isfinite(rate) and rate > 0


def test_make_config_reads_coco_json(shared_dir, tmp_path):
    out = tmp_path / "coco.yaml"
    root = shared_dir / "data" / "voc_mini"
    # The folder is also a VOCdevkit (XML wins without --format).
    assert make(["--data", root, "--format", "coco", "--base", QUICKSTART, "--out", out]) == 0
    config = load_config(out)
    assert config.data.dataset == "coco"
    # One JSON file: it serves both sets, its images found under VOC2012/JPEGImages.
    assert config.data.train_sets == ["annotations/instances_voc_mini.json:VOC2012/JPEGImages"]
    assert config.data.val_sets == config.data.train_sets
    # Category-id order (not VOC's alphabetical one), 20 classes.
    categories = json.loads((root / "annotations" / "instances_voc_mini.json").read_text())
    by_id = sorted(categories["categories"], key=lambda item: item["id"])
    assert config.data.class_names == [item["name"] for item in by_id]
    assert config.model.num_classes == 21
    assert "no held-out images" in out.read_text()


def write_coco2017(root):
    """COCO 2017's layout in small: instances, captions and keypoints files in
    annotations/, the images in train2017/ and val2017/."""
    (root / "annotations").mkdir(parents=True)
    categories = [{"id": 3, "name": "cat"}, {"id": 1, "name": "dog"}]
    for split, count in (("train2017", 3), ("val2017", 2)):
        (root / split).mkdir()
        images, annotations = [], []
        for index in range(count):
            name = f"{split}_{index:03d}.jpg"
            cv2.imwrite(str(root / split / name), np.full((60, 80, 3), 90, np.uint8))
            images.append({"id": index + 1, "file_name": name, "width": 80, "height": 60})
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": 3 if index % 2 else 1, "bbox": [10, 10, 30, 20],
                                "area": 600, "iscrowd": 0})  # fmt: skip
        content = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(content))
        captions = [{"id": 1, "image_id": 1, "caption": "a dog"}]
        (root / "annotations" / f"captions_{split}.json").write_text(
            json.dumps({"images": images, "annotations": captions})
        )
    keypoints = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "person"}]}
    (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(keypoints))


def test_make_config_reads_the_coco_2017_layout(tmp_path):
    root = tmp_path / "coco"
    write_coco2017(root)
    config, layout, _, _, _ = make_config.derive_config(
        load_config(QUICKSTART), make_config.parse_args(["--data", str(root), "--out", "x.yaml"])
    )
    assert layout.dataset == "coco"
    assert layout.train_sets == ["annotations/instances_train2017.json:train2017"]
    assert layout.val_sets == ["annotations/instances_val2017.json:val2017"]
    assert config.data.class_names == ["dog", "cat"] and config.model.num_classes == 3
    assert [len(read_records(config, split, ["dog", "cat"])) for split in ("train", "val")] == [
        3,
        2,
    ]


def write_devkit(root, years):
    """A VOCdevkit: per year, the custom folder's files in VOC's folders and the split
    lists given (``None``: a list whose images have no XML, like VOC2012's test)."""
    source = write_custom_folder(root / "source")
    for year, lists in years.items():
        folder = root / f"VOC{year}"
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (folder / sub).mkdir(parents=True)
        for name in "abcd":
            (folder / "Annotations" / f"{name}.xml").write_bytes(
                (source / f"{name}.xml").read_bytes()
            )
            (folder / "JPEGImages" / f"{name}.png").write_bytes(
                (source / f"{name}.png").read_bytes()
            )
        for split, ids in lists.items():
            (folder / "ImageSets" / "Main" / f"{split}.txt").write_text(
                "\n".join(ids or ["x1", "x2"])
            )


def test_make_config_reads_a_vocdevkit(shared_dir, tmp_path):
    # VOC07+12: both years' trainval for training, VOC2007's test for validation;
    # VOC2012's test list has no annotations.
    root = tmp_path / "VOCdevkit"
    write_devkit(
        root, {"2007": {"trainval": "ab", "test": "cd"}, "2012": {"trainval": "abc", "test": None}}
    )
    config, layout, _, comments, _ = make_config.derive_config(
        load_config(QUICKSTART), make_config.parse_args(["--data", str(root), "--out", "x.yaml"])
    )
    assert (layout.dataset, layout.train_sets, layout.val_sets) == (
        "voc", ["2007/trainval", "2012/trainval"], ["2007/test"])  # fmt: skip
    assert config.data.class_names == ["bird", "cat", "dog"] and config.model.num_classes == 4
    assert comments["data.dataset"].endswith("a VOCdevkit with VOC2007, VOC2012")
    # No annotated test list: train and val.
    root = tmp_path / "VOCdevkit2"
    write_devkit(root, {"2012": {"train": "ab", "val": "d", "trainval": "abd", "test": None}})
    layout = voc_layout(root)
    assert (layout.train_sets, layout.val_sets) == (["2012/train"], ["2012/val"])
    assert layout.class_names == ["cat", "dog"]
    # The shared VOC photos: VOC's 20 classes, read as test.py reads VOC.
    out = tmp_path / "voc_mini.yaml"
    assert (
        make(["--data", shared_dir / "data" / "voc_mini", "--base", QUICKSTART, "--out", out]) == 0
    )
    config = load_config(out)
    assert (config.data.dataset, config.data.train_sets, config.data.val_sets) == (
        "voc", ["2012/trainval"], ["2012/test"])  # fmt: skip
    assert config.data.class_names == list(VOC_CLASSES)
    ids = (shared_dir / "data/voc_mini/VOC2012/ImageSets/Main/test.txt").read_text().split()
    assert len(read_records(config, "val", list(VOC_CLASSES))) == len(ids)


def test_make_config_errors_name_the_problem(shared_dir, tmp_path, capsys):
    trees = shared_dir / "data" / "trees"
    out = tmp_path / "trees.yaml"
    with pytest.raises(
        make_config.MakeConfigError, match="Pine not among the classes found: Alive, Dead, Tree"
    ):
        make_config.derive_config(
            load_config(QUICKSTART),
            make_config.parse_args(
                ["--data", str(trees), "--out", str(out), "--classes", "Tree,Pine"]
            ),
        )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no annotations found"):
        make(["--data", empty, "--out", out])
    (empty / "VOCdevkit").mkdir()  # the folder above a VOCdevkit: say which to pass
    with pytest.raises(DataError, match="pass the VOCdevkit folder: --data"):
        make(["--data", empty, "--out", out])
    assert not out.exists()


def test_detection_cap_leaves_room_for_the_most_crowded_image():
    # 279 trees in one image -> 418.5 -> 500; a few objects keep the base's 200.
    assert make_config.detection_cap(279, 200) == 500
    assert make_config.detection_cap(134, 200) == 300
    assert make_config.detection_cap(6, 200) == 200


def test_crowded_classes_get_candidates_for_every_object():
    # BCCD: 25 red cells in one image -> 625 -> 700 per class before NMS; 279 trees
    # would want 7,000 and get the cap of 1,000; a few objects keep the base's 200.
    assert make_config.candidate_count(25, 200) == 700
    assert make_config.candidate_count(279, 200) == 1000
    assert make_config.candidate_count(4, 200) == 200
    assert make_config.candidate_count(4, 1500) == 1500  # the base's own, if more


def test_make_config_gives_a_crowded_class_its_candidates(tmp_path):
    from tests.test_data import _write_xml

    root = tmp_path / "cells"
    root.mkdir()
    for index, count in enumerate((12, 3)):
        cv2.imwrite(str(root / f"img{index}.jpg"), np.full((96, 128, 3), 90, np.uint8))
        objects = [("cell", (2 + 10 * k, 10, 10 + 10 * k, 30)) for k in range(count)]
        objects.append(("other", (5, 50, 40, 90)))
        _write_xml(root / f"img{index}.xml", f"img{index}.jpg", objects, size=(128, 96))
    out = tmp_path / "cells.yaml"
    assert make(["--data", root, "--base", QUICKSTART, "--image-size", 96, "--out", out]) == 0
    config, text = load_config(out), out.read_text()
    # 12 cells in one image: 300 candidates per class; 13 objects need no larger cap.
    assert (config.postprocess.pre_nms_topk, config.postprocess.max_detections) == (300, 200)
    assert "a training image holds 13 objects, 12 of one class: 300 candidates" in " ".join(
        line.strip(" #") for line in text.splitlines()
    )


def test_yolo_dataset_writes_the_boxes_this_project_trains_on(tmp_path):
    root = tmp_path / "custom"
    write_custom_folder(root)
    out = tmp_path / "yolo"
    config = tmp_path / "custom.yaml"
    data = {"dataset": "custom", "root": str(root), "train_sets": ["all"], "val_sets": ["all"],
            "class_names": ["cat", "dog"]}  # fmt: skip
    config.write_text(yaml.safe_dump({"data": data, "model": {"num_classes": 3}}))
    arguments = yolo_dataset.parse_args(["--config", str(config), "--out", str(out)])
    assert yolo_dataset.main(arguments) == 0
    # Image b's dog at VOC pixels 20..50 x 30..45 (1-based, inclusive) of 80 x 64 is
    # [19, 29, 50, 45] in 0-based pixels: class 1, centre (34.5, 37), size 31 x 16.
    [line] = (out / "labels" / "train" / "b.txt").read_text().splitlines()
    expected = [1, 34.5 / 80, 37 / 64, 31 / 80, 16 / 64]
    assert [float(value) for value in line.split()] == pytest.approx(expected, abs=1e-6)
    records = read_records(load_config(config), "train", ["cat", "dog"])
    for record in records:
        lines = (out / "labels" / "train" / f"{record.image_id}.txt").read_text().splitlines()
        assert len(lines) == record.num_objects
        for line, box, label in zip(lines, record.boxes, record.labels, strict=True):
            values = [float(value) for value in line.split()]
            width, height = record.width, record.height
            expected = [label - 1, (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height,
                        (box[2] - box[0]) / width, (box[3] - box[1]) / height]  # fmt: skip
            assert values == pytest.approx(expected, abs=1e-6)
        image = out / "images" / "train" / f"{record.image_id}{record.image_path.suffix.lower()}"
        assert image.resolve() == record.image_path.resolve()
    content = yaml.safe_load((out / "data.yaml").read_text())
    assert content["names"] == {0: "cat", 1: "dog"} and content["train"] == "images/train"


def test_augment_benchmark_times_both_pipelines_and_a_workers_job(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for index in range(3):
        image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"photo{index}.jpg"), image)
    (tmp_path / "notes.txt").write_text("not an image")
    augment_benchmark.main(
        augment_benchmark.parse_args(["--images", str(tmp_path), "--size", "64", "--repeats", "1"])
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "images: 3 x 1 passes, input 64, one thread"
    rates = {line.rsplit(None, 2)[0].strip(): line.split()[-2] for line in lines[1:4]}
    assert set(rates) == {
        "OpenCV/NumPy SSDAugmentation",
        "with decoding (a worker's job)",
        "torchvision.transforms.v2",
    }
    assert all(float(rate) > 0 for rate in rates.values())
