import cv2
import numpy as np
import pytest

import demo
import train
from data.records import BadSampleError
from tests.conftest import REPO_ROOT, tiny_train_overrides


@pytest.fixture(scope="module")
def checkpoint(tiny_shapes_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("run")
    config = str(REPO_ROOT / "configs" / "quickstart_shapes.yaml")
    arguments = [
        "--config",
        config,
        *tiny_train_overrides(tiny_shapes_root, output),
        "train.epochs=1",
    ]
    assert train.main(train.parse_args(arguments)) == 0
    return output / "last.pt"


def run_demo(*arguments):
    return demo.main(demo.parse_args([str(argument) for argument in arguments]))


def test_folder_of_images_with_an_unreadable_file(checkpoint, shared_dir, tmp_path, caplog, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted((shared_dir / "data" / "demo_images").glob("*.jpg"))[:2]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    output = tmp_path / "out"
    assert (
        run_demo("--checkpoint", checkpoint, folder, "--output", output, "--threshold", "0.0") == 0
    )
    written = sorted(path.name for path in output.iterdir())
    assert written == sorted(
        path.name for path in folder.glob("*.jpg") if path.name != "broken.jpg"
    )
    assert cv2.imread(str(output / written[0])).shape == cv2.imread(str(folder / written[0])).shape
    assert "broken.jpg: unreadable or corrupt image (skipped)" in caplog.text
    out = capsys.readouterr().out
    assert "average" in out and "FPS" in out


def test_glob_and_single_image(checkpoint, tiny_shapes_root, tmp_path):
    pattern = str(tiny_shapes_root / "JPEGImages" / "val_00000[0-2].jpg")
    assert run_demo("--checkpoint", checkpoint, pattern, "--output", tmp_path / "glob") == 0
    assert len(list((tmp_path / "glob").glob("*.jpg"))) == 3
    single = tiny_shapes_root / "JPEGImages" / "val_000003.jpg"
    options = ["--output", tmp_path / "one", "--fold-bn", "--channels-last"]
    assert run_demo("--checkpoint", checkpoint, single, *options) == 0
    assert [path.name for path in (tmp_path / "one").iterdir()] == ["val_000003.jpg"]


def test_video_keeps_frame_count_size_and_rate(checkpoint, tmp_path):
    source = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(source), cv2.VideoWriter_fourcc(*"mp4v"), 7.0, (96, 80))
    for index in range(6):
        frame = np.full((80, 96, 3), 30 * index, dtype=np.uint8)
        cv2.rectangle(frame, (10, 10), (50, 60), (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    output = tmp_path / "out"
    assert run_demo("--checkpoint", checkpoint, source, "--output", output, "--topk", "5") == 0
    capture = cv2.VideoCapture(str(output / "clip.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(7.0)
    assert (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (
        96,
        80,
    )
    capture.release()


def test_inputs_are_classified_and_empty_inputs_reported(checkpoint, tmp_path):
    assert demo.is_video("0") and demo.is_video("clip.MP4")
    assert not demo.is_video("photo.jpg")
    pattern = str(tmp_path / "nothing_here_*.png")
    with pytest.raises(FileNotFoundError, match="no image, folder of images, glob match or video"):
        run_demo("--checkpoint", checkpoint, pattern, "--output", tmp_path / "out")
    # A single file that is no image, and a folder of nothing readable, are errors.
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    with pytest.raises(BadSampleError, match=r"notes\.txt: unreadable or corrupt image$"):
        run_demo("--checkpoint", checkpoint, notes, "--output", tmp_path / "out")
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"")
    with pytest.raises(BadSampleError, match=r"none of the 2 images could be read; .*a\.jpg"):
        run_demo("--checkpoint", checkpoint, folder, "--output", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_fssd_pytorch_style_weights_need_and_use_a_config(checkpoint, tiny_shapes_root, tmp_path):
    import torch

    from utils.checkpoint import CheckpointError

    # Weights alone (as other projects save them): the config must come from --config.
    weights = tmp_path / "weights_only.pth"
    torch.save(torch.load(checkpoint, weights_only=True)["model"], weights)
    image = tiny_shapes_root / "JPEGImages" / "val_000000.jpg"
    with pytest.raises(CheckpointError, match="give --config too"):
        run_demo("--checkpoint", weights, image, "--output", tmp_path / "out")
    saved = checkpoint.parent / "config.yaml"
    assert run_demo("--checkpoint", weights, "--config", saved, image) == 0
    assert (checkpoint.parent / "demo" / "val_000000.jpg").is_file()


def test_image_with_no_detections_is_written_unchanged(checkpoint, shared_dir, tmp_path, capsys):
    # No score reaches 1.0: post-processing keeps nothing, and the demo still writes the
    # image (unchanged but for JPEG re-encoding) and reports 0 detections.
    source = sorted((shared_dir / "data" / "demo_images").glob("*.jpg"))[0]
    output = tmp_path / "out"
    code = run_demo(
        "--checkpoint", checkpoint, source, "--output", output, "postprocess.score_threshold=1.0"
    )
    assert code == 0
    written = cv2.imread(str(output / source.name))
    original = cv2.imread(str(source))
    assert written.shape == original.shape
    assert np.abs(written.astype(int) - original.astype(int)).mean() < 2.0
    assert f"{source.name}: 0 detections" in capsys.readouterr().out


def test_threshold_and_topk_decide_what_is_drawn(checkpoint, tiny_shapes_root):
    arguments = ["--checkpoint", str(checkpoint), "x.jpg", "--topk", "3", "--threshold", "0"]
    detector = demo.Detector(demo.parse_args(arguments))
    image = cv2.cvtColor(cv2.imread(str(tiny_shapes_root / "JPEGImages" / "val_000000.jpg")),
                         cv2.COLOR_BGR2RGB)  # fmt: skip
    drawn, result = detector(image)
    assert len(result["scores"]) == 3  # the barely trained model scores many priors > 0.01
    assert not np.array_equal(drawn, image)  # threshold 0: all three are drawn
    detector.threshold = 1.0
    drawn, _ = detector(image)
    assert np.array_equal(drawn, image)
    # Without --topk the config's cap holds (a config override sets it here).
    arguments = ["--checkpoint", str(checkpoint), "x.jpg", "postprocess.max_detections=7"]
    _, result = demo.Detector(demo.parse_args(arguments))(image)
    assert len(result["scores"]) == 7


def test_onnxruntime_backend_draws_what_pytorch_draws(checkpoint, tiny_shapes_root, tmp_path):
    import onnxruntime  # noqa: F401  (requirements-dev.txt: missing fails, not skips)

    image = cv2.cvtColor(cv2.imread(str(tiny_shapes_root / "JPEGImages" / "val_000001.jpg")),
                         cv2.COLOR_BGR2RGB)  # fmt: skip
    results = {}
    for backend in ("torch", "onnxruntime"):
        arguments = ["--checkpoint", str(checkpoint), "x.jpg", "--topk", "20", "--backend", backend]
        detector = demo.Detector(demo.parse_args(arguments))
        _, results[backend] = detector(image)
    ours, theirs = results["onnxruntime"], results["torch"]
    assert len(theirs["scores"]) == 20
    np.testing.assert_array_equal(ours["labels"], theirs["labels"])
    np.testing.assert_allclose(ours["scores"], theirs["scores"], atol=1e-5)
    np.testing.assert_allclose(ours["boxes"], theirs["boxes"], atol=1e-2)  # pixels
    source = tiny_shapes_root / "JPEGImages" / "val_000002.jpg"
    output = tmp_path / "onnx"
    assert run_demo("--checkpoint", checkpoint, source, "--output", output,
                    "--backend", "onnxruntime") == 0  # fmt: skip
    assert (output / "val_000002.jpg").is_file()
