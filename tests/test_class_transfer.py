"""Class-mapped initialisation (train.py --init with a checkpoint of other classes): rows
carried by class name, exact logits for the carried classes, fresh rows for new ones."""

import pytest
import torch

from data.shapes import SHAPE_CLASSES
from data.voc import VOC_CLASSES
from engine.loading import build_detector
from models.class_transfer import ClassTransferError, class_predictors, map_classes
from tests.conftest import REPO_ROOT, TINY_MODEL, randomise_batchnorm, tiny_train_overrides
from tests.test_train import run_train
from utils.checkpoint import make_checkpoint, save_checkpoint
from utils.config import ConfigError, load_config

# The 80 COCO detection categories in their annotation files' order.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip


def test_coco_classes_map_onto_voc_by_name_and_synonym():
    assert len(COCO_CLASSES) == 80
    mapping = map_classes(COCO_CLASSES, VOC_CLASSES)
    carried = dict(mapping.carried)
    assert list(carried) == list(VOC_CLASSES) and mapping.new == []
    renamed = {target: source for target, source in carried.items() if target != source}
    assert renamed == {
        "aeroplane": "airplane",
        "diningtable": "dining table",
        "motorbike": "motorcycle",
        "pottedplant": "potted plant",
        "sofa": "couch",
        "tvmonitor": "tv",
    }
    # Labels count from 1 in the source's order: VOC's person is COCO's label 1, its
    # tvmonitor COCO's 63.
    assert mapping.source_labels[VOC_CLASSES.index("person")] == 1
    assert mapping.source_labels[VOC_CLASSES.index("tvmonitor")] == 63
    assert len(mapping.dropped) == 60 and "toothbrush" in mapping.dropped
    assert "airplane" not in mapping.dropped
    # And back: VOC's names find COCO's.
    assert dict(map_classes(VOC_CLASSES, ["couch", "tv"]).carried) == {
        "couch": "sofa",
        "tv": "tvmonitor",
    }


def test_unmatched_classes_are_an_error_unless_allowed():
    with pytest.raises(ClassTransferError, match=r"1 classes .*: kite .*--allow-new-classes"):
        map_classes(["dog", "cat"], ["Cat", "kite"])
    mapping = map_classes(["dog", "cat"], ["Cat", "kite"], allow_new=True)
    assert mapping.carried == [("Cat", "cat")]
    assert mapping.new == ["kite"] and mapping.dropped == ["dog"]
    assert mapping.describe() == "carried 1: Cat <- cat; new 1: kite; dropped 1: dog"
    with pytest.raises(ClassTransferError, match="no class of this run"):
        map_classes(["dog"], ["kite"], allow_new=True)
    with pytest.raises(ClassTransferError, match="'tv' and 'tvmonitor' both match"):
        map_classes(["tv"], ["tv", "tvmonitor"])


MODELS = [
    ("quickstart_shapes.yaml", TINY_MODEL),
    ("ssdlite320_mobilenetv2_voc.yaml", ["model.width_multiplier=0.25"]),
]


@pytest.mark.parametrize(("config_name", "overrides"), MODELS, ids=["fssd", "ssdlite"])
def test_carried_classes_give_the_source_logits_exactly(tmp_path, config_name, overrides):
    """A model of 4 classes initialises one of the 5 shape classes: the 3 shared classes
    (in another order) and the background give the same logits as in the source, the
    boxes are the same, and the 2 new classes' rows are those of a fresh model."""
    source_names = ["cross", "ellipse", "dog", "star"]
    config_path = REPO_ROOT / "configs" / config_name
    source_config = load_config(config_path, [*overrides, "model.num_classes=5"])
    target_config = load_config(config_path, [*overrides, "model.num_classes=6"])
    torch.manual_seed(1)
    source = build_detector(source_config).eval()
    randomise_batchnorm(source)
    path = tmp_path / "source.pt"
    checkpoint = make_checkpoint(
        config=source_config, model_state=source.state_dict(), class_names=source_names
    )
    save_checkpoint(checkpoint, path)

    torch.manual_seed(2)
    fresh = build_detector(target_config).eval()
    torch.manual_seed(2)
    target = build_detector(
        target_config,
        checkpoint=checkpoint,
        weights=path,
        class_names=SHAPE_CLASSES,
        allow_new_classes=True,
    ).eval()

    size = target_config.model.image_size
    images = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        source_loc, source_conf = source(images)
        target_loc, target_conf = target(images)
    assert torch.equal(target_loc, source_loc)
    pairs = {0: 0, 1: 2, 4: 4, 5: 1}  # background, ellipse, star, cross
    for target_label, source_label in pairs.items():
        assert torch.equal(target_conf[..., target_label], source_conf[..., source_label])
    # The new classes (rectangle 2, triangle 3) keep the fresh head's rows.
    fresh_state, target_state = fresh.state_dict(), target.state_dict()
    prefixes = class_predictors(target)
    assert len(prefixes) == len(target.head.conf)
    for prefix in prefixes:
        for kind in ("weight", "bias"):
            key = f"{prefix}.{kind}"
            rows = target_state[key].reshape(-1, 6, *target_state[key].shape[1:])
            fresh_rows = fresh_state[key].reshape(-1, 6, *fresh_state[key].shape[1:])
            assert torch.equal(rows[:, 2:4], fresh_rows[:, 2:4]), key
            assert not torch.equal(rows[:, [0, 1, 4, 5]], fresh_rows[:, [0, 1, 4, 5]]), key


def test_train_init_from_other_classes_through_the_cli(tiny_shapes_root, tmp_path, capsys, caplog):
    """train.py --init with a 3-class checkpoint: a 5-class run stops with one error that
    names the new classes, runs with --allow-new-classes and says what it carried."""
    config = str(REPO_ROOT / "configs" / "quickstart_shapes.yaml")
    three = tmp_path / "three"
    base = [
        *tiny_train_overrides(tiny_shapes_root, three),
        "train.epochs=1",
        "train.eval_interval=0",
    ]
    subset = ["data.class_names=[star, ellipse, cross]", "model.num_classes=4"]
    assert run_train("--config", config, *base, *subset) == 0
    five = [*tiny_train_overrides(tiny_shapes_root, tmp_path / "five"), "train.epochs=1"]
    init = str(three / "last.pt")
    with pytest.raises(ConfigError, match="--allow-new-classes applies to --init"):
        run_train("--config", config, "--allow-new-classes", *five)
    with pytest.raises(ClassTransferError, match=r"2 classes .*: rectangle, triangle"):
        run_train("--config", config, "--init", init, *five)
    assert run_train("--config", config, "--init", init, "--allow-new-classes", *five) == 0
    assert (
        "carried 3: ellipse, star, cross; new 2: rectangle, triangle; dropped 0: -" in caplog.text
    )
