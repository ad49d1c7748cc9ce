import cv2
import numpy as np
import pytest
import torch

from data.coco import read_coco
from data.dataset import DetectionDataset
from data.loader import ResumableSampler, collate
from data.records import BadSampleError, ProblemReport, read_image
from data.shapes import SHAPE_CLASSES, ensure_shapes_dataset, generate_image
from data.transforms import EvalTransform, SSDAugmentation, mosaic
from data.voc import VOC_CLASSES, discover_class_names, read_voc_format
from tests.reference_augmentation import photometric as reference_photometric
from tests.reference_augmentation import reference_augmentation
from utils.config import ConfigError, load_config
from utils.pixels import MEAN_FILL_RGB

SHAPES_SETTINGS = {"num_train": 12, "num_val": 4, "image_size": 96, "seed": 3}


def voc_mini(shared_dir, split="all", policy="stop"):
    return read_voc_format(
        shared_dir / "data" / "voc_mini" / "VOC2012", split, VOC_CLASSES, ProblemReport(policy)
    )


def voc_mini_coco(shared_dir):
    root = shared_dir / "data" / "voc_mini"
    return read_coco(
        root / "annotations" / "instances_voc_mini.json",
        root / "VOC2012" / "JPEGImages",
        VOC_CLASSES,
        ProblemReport("stop"),
        keep_empty=True,
    )


def test_voc_reader_reads_the_devkit_layout(shared_dir):
    records = voc_mini(shared_dir)
    assert len(records) == 100
    assert sum(record.num_objects for record in records) == 273
    assert len(voc_mini(shared_dir, "trainval")) == 67
    assert len(voc_mini(shared_dir, "test")) == 33
    first = next(record for record in records if record.image_id == "2007_000027")
    # <xmin>174 <ymin>101 <xmax>349 <ymax>351, 1-based inclusive -> 0-based continuous.
    np.testing.assert_array_equal(first.boxes, [[173, 100, 349, 351]])
    assert first.labels.tolist() == [VOC_CLASSES.index("person") + 1]
    assert (first.width, first.height) == (486, 500)
    assert first.image_path.name == "2007_000027.jpg" and first.image_path.is_file()
    assert any(record.difficult.any() for record in records)


def test_coco_reader_matches_the_voc_annotations(shared_dir):
    records = voc_mini_coco(shared_dir)
    assert len(records) == 100
    assert sum(record.num_objects for record in records) == 273
    by_name = {record.image_path.name: record for record in voc_mini(shared_dir)}
    for record in records:
        voc = by_name[record.image_path.name]
        # Category ids are in another order than VOC's: labels are matched by name.
        assert sorted(record.labels.tolist()) == sorted(voc.labels.tolist())
        # The JSON's boxes start at VOC's 1-based xmin: one pixel apart at most.
        assert np.abs(np.sort(record.boxes, 0) - np.sort(voc.boxes, 0)).max() <= 1.0
        assert isinstance(record.extra["coco_id"], int)


def test_custom_trees_resolve_images_and_report_foreign_classes(shared_dir, caplog):
    folder = shared_dir / "data" / "trees"
    assert discover_class_names(sorted(folder.glob("*.xml"))) == ["Alive", "Dead", "Tree"]
    records = read_voc_format(folder, "all", ["Tree"], ProblemReport("skip"))
    # OSBS_029.xml names OSBS_029.tif; the image shipped is OSBS_029.png.
    by_id = {record.image_id: record for record in records}
    assert by_id["OSBS_029"].image_path.name == "OSBS_029.png"
    assert by_id["OSBS_029"].num_objects == 61
    # SOAP_061.xml holds only 'Alive'/'Dead' objects: reported and left out.
    assert "SOAP_061" not in by_id
    assert (
        "SOAP_061.xml: 37 objects of unknown classes 'Alive' (9), 'Dead' (28) left out; "
        "known classes: Tree" in caplog.text
    )
    assert "SOAP_061.xml: no objects to train on; image left out" in caplog.text
    with pytest.raises(BadSampleError, match=r"SOAP_061\.xml: 37 objects of unknown classes"):
        read_voc_format(folder, "all", ["Tree"], ProblemReport("stop"))
    everything = read_voc_format(folder, "all", ["Alive", "Dead", "Tree"], ProblemReport("stop"))
    assert sum(record.num_objects for record in everything) == 61 + 37 + 279


def _write_xml(path, filename, objects, size=(100, 80)):
    parts = [f"<annotation><filename>{filename}</filename>"]
    parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height></size>")
    for name, (x1, y1, x2, y2) in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    path.write_text("".join(parts))


def _write_image(path, size=(100, 80)):
    import cv2

    cv2.imwrite(str(path), np.full((size[1], size[0], 3), 127, dtype=np.uint8))


def test_bad_annotations_are_reported_with_file_and_problem(tmp_path, caplog):
    _write_image(tmp_path / "a.jpg")
    _write_xml(
        tmp_path / "a.xml",
        "a.jpg",
        [("unicorn", (1, 1, 5, 5)), ("cat", (10, 10, 50, 50)), ("cat", (60, 10, 20, 40)),
         ("cat", (50, 50, 150, 70)), ("cat", (30, 30, 30, 30))],
    )  # fmt: skip
    _write_image(tmp_path / "empty.jpg")
    _write_xml(tmp_path / "empty.xml", "empty.jpg", [])
    _write_xml(tmp_path / "lost.xml", "lost.tif", [("cat", (1, 1, 9, 9))])
    (tmp_path / "broken.xml").write_text("<annotation><object>")
    records = read_voc_format(tmp_path, "all", ["cat"], ProblemReport("skip"))
    assert [record.image_id for record in records] == ["a"]
    # Inverted box dropped, box outside the image clipped, unknown class and point dropped.
    np.testing.assert_array_equal(records[0].boxes, [[9, 9, 50, 50], [49, 49, 100, 70]])
    text = caplog.text
    assert "a.xml: object 4 ('cat') is a point (30, 30), not a box; left out" in text
    # Each problem names the object as the XML numbers it (the unknown one counts too).
    assert "a.xml: object 2 [59, 9, 20, 40] is inverted or empty" in text
    assert "a.xml: object 3 [49, 49, 150, 70] reaches outside the 100x80 image; clipped" in text
    assert "a.xml: 1 objects of unknown classes 'unicorn' (1) left out" in text
    assert "empty.xml: no objects to train on" in text
    assert (
        "lost.xml: image 'lost.tif' named in the annotation not found, nor any image with id 'lost'"
        in text
    )
    assert "broken.xml: not a readable XML annotation" in text
    with pytest.raises(BadSampleError, match=r"a\.xml: object 4 \('cat'\) is a point"):
        read_voc_format(tmp_path, "all", ["cat"], ProblemReport("stop"))


def test_corrupt_image_is_skipped_or_stops(tmp_path, caplog):
    _write_image(tmp_path / "good.jpg")
    _write_xml(tmp_path / "good.xml", "good.jpg", [("cat", (10, 10, 50, 50))])
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    _write_xml(tmp_path / "bad.xml", "bad.jpg", [("cat", (10, 10, 50, 50))])
    records = read_voc_format(tmp_path, "all", ["cat"], ProblemReport("stop"))
    assert len(records) == 2
    skipping = DetectionDataset(records, ["cat"], EvalTransform(32), on_bad_sample="skip")
    items = [skipping[index] for index in range(2)]
    assert items[0] is None and items[1] is not None
    assert "bad.jpg: unreadable or corrupt image (skipped)" in caplog.text
    batch = collate(items)
    assert batch["images"].shape == (1, 3, 32, 32) and batch["image_ids"] == ["good"]
    stopping = DetectionDataset(records, ["cat"], EvalTransform(32), on_bad_sample="stop")
    with pytest.raises(BadSampleError, match=r"bad\.jpg: unreadable or corrupt image"):
        stopping[0]


def test_shapes_generator_is_deterministic_and_checks_its_manifest(tmp_path):
    image_a, objects_a = generate_image(seed=5, split="train", index=7, size=128)
    image_b, objects_b = generate_image(seed=5, split="train", index=7, size=128)
    assert np.array_equal(image_a, image_b)
    assert [(name, box.tolist()) for name, box in objects_a] == [
        (name, box.tolist()) for name, box in objects_b
    ]
    image_c, _ = generate_image(seed=6, split="train", index=7, size=128)
    assert not np.array_equal(image_a, image_c)

    root = ensure_shapes_dataset(tmp_path / "shapes", **SHAPES_SETTINGS)
    records = read_voc_format(root, "train", SHAPE_CLASSES, ProblemReport("stop"))
    assert len(records) == SHAPES_SETTINGS["num_train"]
    assert (
        len(read_voc_format(root, "val", SHAPE_CLASSES, ProblemReport("stop")))
        == SHAPES_SETTINGS["num_val"]
    )
    labels = np.concatenate([record.labels for record in records])
    assert labels.min() >= 1 and labels.max() <= len(SHAPE_CLASSES)
    assert all(1 <= record.num_objects <= 6 for record in records)
    for record in records:
        assert (record.boxes[:, :2] >= 0).all() and (record.boxes[:, 2:] <= 96).all()
    # A second call finds the finished dataset; other settings are refused.
    assert ensure_shapes_dataset(tmp_path / "shapes", **SHAPES_SETTINGS) == root
    with pytest.raises(ValueError, match="generated with other settings"):
        ensure_shapes_dataset(tmp_path / "shapes", **{**SHAPES_SETTINGS, "seed": 4})


def test_augmentation_keeps_boxes_inside_and_labels_in_step(shared_dir):
    records = voc_mini(shared_dir)[:20]
    augment = SSDAugmentation(size=96)
    for index, record in enumerate(records):
        image = read_image(record.image_path)
        for repeat in range(5):
            rng = np.random.default_rng([index, repeat])
            out, boxes, labels = augment(image, record.boxes.copy(), record.labels.copy(), rng)
            assert out.shape == (96, 96, 3) and out.dtype == np.uint8
            assert boxes.shape == (labels.shape[0], 4)
            assert (boxes >= 0).all() and (boxes <= 1).all()
            assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
            assert set(labels.tolist()) <= set(record.labels.tolist())
            again = augment(
                image,
                record.boxes.copy(),
                record.labels.copy(),
                np.random.default_rng([index, repeat]),
            )
            assert np.array_equal(again[0], out) and np.array_equal(again[1], boxes)


def test_flip_expand_and_crop_move_boxes_with_the_image():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    image[10:20, 5:25] = 255
    boxes = np.array([[5, 10, 25, 20]], dtype=np.float32)
    flipper = SSDAugmentation(size=60, photometric_prob=0, expand_prob=0, crop_prob=0, flip_prob=1)
    out, flipped, _ = flipper(image, boxes, np.array([1]), np.random.default_rng(0))
    # x: 60 - 25 = 35 .. 60 - 5 = 55 of 60; y: 10 .. 20 of 40, on a 60 x 60 output.
    np.testing.assert_allclose(flipped * 60, [[35, 15, 55, 30]], atol=1e-4)
    assert out[16:29, 36:54].min() == 255 and out[:, :34].max() == 0
    # A zoom-out puts the image on the mean fill; the box still frames the white patch.
    zoomer = SSDAugmentation(size=120, photometric_prob=0, expand_prob=1, crop_prob=0, flip_prob=0)
    for seed in range(5):
        out, moved, _ = zoomer(image, boxes, np.array([1]), np.random.default_rng(seed))
        x1, y1, x2, y2 = np.round(moved[0] * 120).astype(int)
        assert out[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() >= 250
        assert tuple(out[0, 0]) == MEAN_FILL_RGB or tuple(out[-1, -1]) == MEAN_FILL_RGB
    # A crop keeps only boxes whose centre is inside, clipped and shifted to the window.
    two = np.array([[5, 10, 25, 20], [40, 25, 58, 38]], dtype=np.float32)
    cropper = SSDAugmentation(size=60, crop_min_ious=[None])
    for seed in range(20):
        window, kept, labels = cropper.crop_window(
            60, 40, two, np.array([1, 2]), np.random.default_rng(seed)
        )
        assert len(kept) == len(labels) >= 1
        assert (kept >= 0).all() and (kept[:, 2] <= window[2] - window[0]).all()
        assert (kept[:, 3] <= window[3] - window[1]).all()


def _augment_both(augment, reference_options, image, record, seed):
    ours = augment(image, record.boxes.copy(), record.labels.copy(), np.random.default_rng(seed))
    reference = reference_augmentation(
        image, record.boxes.copy(), record.labels.copy(), np.random.default_rng(seed),
        size=augment.size, **reference_options,
    )  # fmt: skip
    return ours, reference


def test_one_warp_augmentation_matches_the_step_by_step_pipeline(shared_dir):
    """For the same draws, the geometry-first pipeline gives the previous release's
    boxes and labels, and without colour jitter the same pixels (one bilinear warp
    against cut, flip and resize). Equal draws give equal crops, so the distributions of
    crop scale, aspect and kept boxes are equal too."""
    records = voc_mini(shared_dir)[:12]
    images = [read_image(record.image_path) for record in records]
    plain = SSDAugmentation(size=300, photometric_prob=0)
    jittered = SSDAugmentation(size=300)
    for index, (image, record) in enumerate(zip(images, records, strict=True)):
        for repeat in range(8):
            seed = [index, repeat]
            (out, boxes, labels), (want, want_boxes, want_labels, _) = _augment_both(
                plain, {"photometric_prob": 0}, image, record, seed
            )
            assert np.array_equal(labels, want_labels)
            np.testing.assert_allclose(boxes * 300, want_boxes * 300, atol=1.0)
            difference = np.abs(out.astype(int) - want.astype(int))
            assert difference.mean() < 0.3 and np.percentile(difference, 99) <= 2
            (_, boxes, labels), (_, want_boxes, want_labels, _) = _augment_both(
                jittered, {}, image, record, seed
            )
            assert np.array_equal(labels, want_labels)
            np.testing.assert_allclose(boxes * 300, want_boxes * 300, atol=1.0)


def test_8_bit_colour_jitter_matches_the_float_one(shared_dir):
    augment = SSDAugmentation(size=300, photometric_prob=1.0)
    for index, record in enumerate(voc_mini(shared_dir)[:10]):
        image = read_image(record.image_path)
        for repeat in range(4):
            draw = augment.draw_photometric(np.random.default_rng([index, repeat]))
            assert draw.brightness is not None and draw.contrast is not None
            ours = augment.photometric(image, draw)
            want = reference_photometric(image, np.random.default_rng([index, repeat]), 1.0)
            difference = np.abs(ours.astype(int) - want.astype(int))
            # 8-bit HSV against float HSV: a level or two; a hue step of 1.4 degrees moves
            # a few strongly coloured pixels by more.
            assert difference.mean() < 2.5 and np.percentile(difference, 99) <= 5
            assert difference.max() <= 16


def test_sampler_resumes_mid_epoch_in_the_same_order():
    dataset = list(range(10))
    full = ResumableSampler(dataset, num_replicas=1, rank=0, seed=1)
    full.set_epoch(3)
    keys = list(full)
    assert sorted(index for index, _ in keys) == list(range(10))
    assert {epoch for _, epoch in keys} == {3}
    resumed = ResumableSampler(dataset, num_replicas=1, rank=0, seed=1)
    resumed.set_epoch(3)
    resumed.start_at(4)
    assert len(resumed) == 6
    assert list(resumed) == keys[4:]
    # The offset applies once: the next pass is a full epoch again.
    assert len(list(resumed)) == 10
    ranks = [ResumableSampler(dataset, num_replicas=2, rank=rank, seed=1) for rank in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(3)
    assert sorted(index for sampler in ranks for index, _ in sampler) == list(range(10))


def test_dataset_items_are_normalised_and_reproducible(tmp_path):
    root = ensure_shapes_dataset(tmp_path / "shapes", **SHAPES_SETTINGS)
    records = read_voc_format(root, "train", SHAPE_CLASSES, ProblemReport("stop"))
    dataset = DetectionDataset(records, SHAPE_CLASSES, SSDAugmentation(size=64), seed=9)
    item = dataset[(2, 5)]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.uint8
    assert item["orig_size"] == (96, 96)
    assert torch.equal(dataset[(2, 5)]["boxes"], item["boxes"])
    assert not torch.equal(dataset[(2, 6)]["image"], item["image"])


class _FixedIntegers:
    """An rng whose ``integers`` always gives ``value`` (the mosaic's window corner)."""

    def __init__(self, value):
        self.value = value

    def integers(self, low, high):
        assert low <= self.value < high
        return self.value


def test_mosaic_tiles_four_images_and_keeps_boxes_mostly_inside():
    # Tiles of 10 px filled with 10, 20, 30, 40, tiled 2 x 2; the window's corner at
    # (5, 5) takes a quarter of each.
    boxes = [
        np.array([[0.2, 0.2, 0.6, 0.6]]),  # canvas [2, 2, 6, 6]: 1 of 16 px inside, dropped
        np.array([[0.0, 0.3, 0.8, 1.0]]),  # canvas [10, 3, 18, 10]: 25 of 56 px inside, kept
        np.array([[0.5, 0.0, 0.9, 0.4]]),  # canvas [5, 10, 9, 14]: wholly inside
        np.zeros((0, 4)),
    ]
    tiles = [
        (np.full((10, 10, 3), 10 * (index + 1), np.uint8), boxes[index].astype(np.float32),
         np.array([index + 1] * len(boxes[index]), np.int64))
        for index in range(4)
    ]  # fmt: skip
    image, kept, labels = mosaic(tiles, _FixedIntegers(5))
    assert image.shape == (10, 10, 3)
    assert image[:5, :5].min() == image[:5, :5].max() == 10
    assert image[:5, 5:].min() == 20 and image[5:, :5].max() == 30 and image[5:, 5:].min() == 40
    np.testing.assert_allclose(kept, [[0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.4, 0.9]], atol=1e-6)
    assert labels.tolist() == [2, 3]


def test_dataset_mosaics_are_reproducible_and_off_by_default(tmp_path):
    root = ensure_shapes_dataset(tmp_path / "shapes", **SHAPES_SETTINGS)
    records = read_voc_format(root, "train", SHAPE_CLASSES, ProblemReport("stop"))
    plain = DetectionDataset(records, SHAPE_CLASSES, SSDAugmentation(size=64), seed=9)
    off = DetectionDataset(records, SHAPE_CLASSES, SSDAugmentation(size=64), seed=9,
                           mosaic_prob=0.0)  # fmt: skip
    mosaics = DetectionDataset(records, SHAPE_CLASSES, SSDAugmentation(size=64), seed=9,
                               mosaic_prob=1.0)  # fmt: skip
    # Without mosaics the random stream is the one before mosaics existed.
    assert torch.equal(off[(2, 5)]["image"], plain[(2, 5)]["image"])
    item = mosaics[(2, 5)]
    assert item["image"].shape == (3, 64, 64)
    assert torch.equal(mosaics[(2, 5)]["boxes"], item["boxes"])
    assert not torch.equal(item["image"], plain[(2, 5)]["image"])
    boxes = item["boxes"]
    assert ((boxes >= 0) & (boxes <= 1)).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    assert len(item["labels"]) == len(boxes)


def test_auto_workers_share_the_cores_between_training_processes(monkeypatch):
    import data.loader

    monkeypatch.setattr(data.loader, "available_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert data.loader.resolve_num_workers("auto") == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun, 4 processes on this machine
    assert data.loader.resolve_num_workers("auto") == 3
    monkeypatch.setattr(data.loader, "available_cores", lambda: 2)
    assert data.loader.resolve_num_workers("auto") == 1  # never none
    assert data.loader.resolve_num_workers(0) == 0 and data.loader.resolve_num_workers(6) == 6
    config = load_config(None, ["data.num_workers=3"])
    assert config.data.num_workers == 3 and load_config().data.num_workers == "auto"
    with pytest.raises(ConfigError, match=r"'data\.num_workers' must be >= 0, got -1"):
        load_config(None, ["data.num_workers=-1"])
    with pytest.raises(ConfigError, match=r"data\.num_workers"):
        load_config(None, ["data.num_workers=many"])


def test_collate_keeps_the_decoders_nhwc_memory():
    images = [np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3) + index for index in range(2)]
    items = [
        {"image": torch.from_numpy(image).permute(2, 0, 1), "boxes": torch.zeros(0, 4),
         "labels": torch.zeros(0), "index": index, "image_id": str(index), "orig_size": (5, 5)}
        for index, image in enumerate(images)
    ]  # fmt: skip
    batch = collate(items)["images"]
    assert batch.shape == (2, 3, 5, 5)
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch[1, 2], torch.from_numpy(images[1][:, :, 2]))


def test_large_jpegs_are_decoded_at_reduced_scale(shared_dir, tmp_path):
    from data.records import AnnotationRecord, jpeg_size, read_image_reduced

    photo = shared_dir / "data" / "voc_mini" / "VOC2012" / "JPEGImages" / "2007_000027.jpg"
    assert jpeg_size(np.fromfile(photo, dtype=np.uint8)) == (500, 486)
    # A 2400 x 1800 photo with a white box at x 600..1200, y 300..900.
    image = np.full((1800, 2400, 3), 60, dtype=np.uint8)
    image[300:900, 600:1200] = 255
    big = tmp_path / "big.jpg"
    cv2.imwrite(str(big), image)
    png = tmp_path / "big.png"
    cv2.imwrite(str(png), image)
    assert jpeg_size(np.fromfile(png, dtype=np.uint8)) is None
    for min_side, shape in ((None, (1800, 2400)), (900, (900, 1200)), (400, (450, 600)),
                            (200, (225, 300)), (1000, (1800, 2400))):  # fmt: skip
        decoded, full = read_image_reduced(big, min_side=min_side)
        assert decoded.shape[:2] == shape and full == (1800, 2400)
    assert read_image_reduced(png, min_side=200)[0].shape[:2] == (1800, 2400)
    # Through the dataset: boxes scaled with the image, orig_size the full image's.
    record = AnnotationRecord(
        image_id="big", image_path=big, width=2400, height=1800,
        boxes=np.array([[600, 300, 1200, 900]], dtype=np.float32), labels=np.array([1]),
        difficult=np.array([False]), source="big.xml",
    )  # fmt: skip
    item = DetectionDataset([record], ["box"], EvalTransform(100), decode_min_side=200)[0]
    assert item["orig_size"] == (1800, 2400)
    np.testing.assert_allclose(item["boxes"].numpy(), [[0.25, 1 / 6, 0.5, 0.5]], atol=1e-6)
    pixels = item["image"].permute(1, 2, 0).numpy()
    assert pixels[20:48, 27:48].min() > 240 and pixels[60:, :].max() < 80


def test_evaluation_shards_are_the_single_process_batches():
    """Each rank gets every world_size-th of the batches one process runs, whole."""
    from data.loader import ShardBatches

    single = [list(batch) for batch in ShardBatches(7, 2, 0, 1)]
    assert single == [[0, 1], [2, 3], [4, 5], [6]]
    shards = [list(ShardBatches(7, 2, rank, 3)) for rank in range(3)]
    assert shards == [[[0, 1], [6]], [[2, 3]], [[4, 5]]]
    assert [len(ShardBatches(7, 2, rank, 3)) for rank in range(3)] == [2, 1, 1]
    assert list(ShardBatches(3, 4, 1, 2)) == []  # a rank with nothing to do


def test_coco_images_missing_on_disk_are_reported_and_left_out(tmp_path, caplog):
    """A COCO file naming an image that is not there: reported with the file, and
    neither trained on nor fitted to (tools.make_config fits priors to these records)."""
    import json

    (tmp_path / "images").mkdir()
    _write_image(tmp_path / "images" / "here.jpg")
    content = {
        "images": [
            {"id": 1, "file_name": "here.jpg", "width": 100, "height": 80},
            {"id": 2, "file_name": "gone.jpg", "width": 100, "height": 80},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 20], "area": 600,
             "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 50, 50], "area": 2500,
             "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "cat"}],
    }  # fmt: skip
    annotation_file = tmp_path / "instances.json"
    annotation_file.write_text(json.dumps(content))
    problems = ProblemReport("skip")
    records = read_coco(annotation_file, tmp_path / "images", ["cat"], problems, keep_empty=True)
    assert [record.image_id for record in records] == ["1"]
    assert problems.problems == [
        f"{annotation_file} (image 2, gone.jpg): image file {tmp_path / 'images' / 'gone.jpg'} "
        "not found; image left out"
    ]
    with pytest.raises(BadSampleError, match=r"gone\.jpg not found; stopped"):
        read_coco(annotation_file, tmp_path / "images", ["cat"], ProblemReport("stop"),
                  keep_empty=True)  # fmt: skip


def test_boxes_under_the_minimum_side_are_reported_and_left_out(tmp_path):
    """VOC's inclusive pixels make xmin == xmax a 1 px wide box: under data.min_box_side
    (2 px) it is reported by file and object and left out; 0 keeps it."""
    _write_image(tmp_path / "a.jpg")
    objects = [("cat", (10, 10, 50, 50)), ("cat", (30, 5, 30, 40)), ("cat", (60, 20, 62, 21))]
    _write_xml(tmp_path / "a.xml", "a.jpg", objects)
    problems = ProblemReport("skip")
    [record] = read_voc_format(tmp_path, "all", ["cat"], problems)
    # Object 2 (VOC 60..62 x 20..21) is 3x2 px: just enough.
    np.testing.assert_array_equal(record.boxes, [[9, 9, 50, 50], [59, 19, 62, 21]])
    assert problems.problems == [
        f"{tmp_path / 'a.xml'}: object 1 [29, 4, 30, 40] is 1x36 px, under "
        "data.min_box_side=2; left out"
    ]
    [everything] = read_voc_format(tmp_path, "all", ["cat"], ProblemReport("skip"), 0.0)
    assert everything.num_objects == 3
