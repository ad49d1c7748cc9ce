"""Faults a user meets: full disks, killed runs, bad samples, bad values, hostile files.
Each ends with one clear message and nothing lost."""

import errno
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import demo
import prune as prune_script
import test as test_script
import train
from data.records import BadSampleError, ProblemReport
from data.voc import read_voc_format
from tests.conftest import REPO_ROOT, tiny_train_overrides
from tests.test_data import _write_image, _write_xml
from utils.checkpoint import (
    CheckpointError,
    config_and_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from utils.cli import run_command
from utils.config import ConfigError, load_config
from utils.files import remove_stale_temporaries

QUICKSTART = str(REPO_ROOT / "configs" / "quickstart_shapes.yaml")


def exit_of(main, *arguments):
    """What ``python script.py ARGUMENTS`` exits with, run in this process."""
    with pytest.raises(SystemExit) as stopped:
        run_command(main.main, lambda: main.parse_args(list(arguments)))
    return stopped.value.code


@pytest.mark.parametrize("wrapped", [False, True])
def test_full_disk_while_saving_names_the_file_and_keeps_the_old_checkpoint(
    tmp_path, monkeypatch, wrapped
):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "config": {}}, path)
    real_save = torch.save

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        cause = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if not wrapped:
            raise cause
        # torch.save reports the writer's failure as its own RuntimeError.
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from cause

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as raised:
        save_checkpoint({"model": {"w": torch.zeros(3)}, "config": {}}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert str(raised.value) == (
        f"{path}: could not write the checkpoint (No space left on device); the previous "
        "one, if any, is unchanged"
    )
    assert [item.name for item in tmp_path.iterdir()] == ["last.pt"]  # no temporary left
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))


def test_a_failed_save_ends_training_with_one_error_line(
    tiny_shapes_root, tmp_path, monkeypatch, capsys
):
    def full_disk(state, handle, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    output = tmp_path / "run"
    code = exit_of(train, "--config", QUICKSTART, *tiny_train_overrides(tiny_shapes_root, output))
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {output / 'last.pt'}: could not write the checkpoint (No space left on "
        "device); the previous one, if any, is unchanged"
    ]


# train.py run as from the shell, with TensorBoard's record writer failing as on a full
# disk after the file header and the first events.
FULL_DISK_UNDER_TENSORBOARD = """
import errno, os, runpy, sys
from tensorboard.summary.writer.record_writer import RecordWriter
real_write, calls = RecordWriter.write, []
def fills_up(self, data):
    calls.append(1)
    if len(calls) > 3:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real_write(self, data)
RecordWriter.write = fills_up
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path("train.py", run_name="__main__")
"""


def test_a_full_disk_under_tensorboard_ends_training_with_one_error_line(
    tiny_shapes_root, tmp_path
):
    """TensorBoard writes its events in a thread of its own: a full disk there gives one
    error line naming the folder and the cause, not the thread's traceback."""
    output = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-c", FULL_DISK_UNDER_TENSORBOARD, "--config", QUICKSTART,
         *tiny_train_overrides(tiny_shapes_root, output)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    err = result.stderr
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {output}: could not write the metrics (metrics.jsonl, tensorboard/): No space "
        "left on device; free some space or set another train.output_dir, then continue with "
        "--resume"
    ]
    assert "Traceback" not in err and "Exception in thread" not in err


def test_stale_temporary_checkpoints_are_removed(tiny_shapes_root, tmp_path, monkeypatch):
    output = tmp_path / "run"
    output.mkdir()
    dead = output / ".last.pt.tmp999999999"  # no such process
    alive = output / f".best.pt.tmp{os.getppid()}"  # a running process: maybe writing
    other = output / "notes.tmp123"
    for path in (dead, alive, other):
        path.write_bytes(b"x" * 100)
    assert remove_stale_temporaries(output) == [dead]
    assert not dead.exists() and alive.exists() and other.exists()
    # A training run cleans its folder at start, and fsyncs the folder after each rename.
    dead.write_bytes(b"x")
    opened = []
    real_open = os.open
    monkeypatch.setattr(
        os, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k)
    )
    overrides = [*tiny_train_overrides(tiny_shapes_root, output), "train.epochs=1"]
    assert train.main(train.parse_args(["--config", QUICKSTART, *overrides])) == 0
    assert not dead.exists() and alive.exists()
    assert str(output) in opened


def bad_custom_dataset(root, problem):
    """A custom VOC-XML folder of 3 images (8 with the good ones) and one problem."""
    root.mkdir()
    for index in range(8):
        _write_image(root / f"img{index}.jpg", size=(96, 96))
        _write_xml(root / f"img{index}.xml", f"img{index}.jpg", [("cat", (10, 10, 60, 70))],
                   size=(96, 96))  # fmt: skip
    if problem == "unknown class":
        _write_xml(root / "img3.xml", "img3.jpg", [("unicorn", (10, 10, 60, 70))], size=(96, 96))
    elif problem == "broken xml":
        (root / "img3.xml").write_text("<annotation><object>")
    elif problem == "missing image":
        (root / "img3.jpg").unlink()
    elif problem == "corrupt image":
        (root / "img3.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    elif problem == "inverted box":
        _write_xml(root / "img3.xml", "img3.jpg", [("cat", (49, 10, 1, 70))], size=(96, 96))
    return root


def custom_overrides(root, output, workers):
    overrides = tiny_train_overrides(root, output)
    overrides = [item for item in overrides if not item.startswith(("data.", "model.num_classes"))]
    return [*overrides, "data.dataset=custom", f"data.root={root}", "data.train_sets=[all]",
            "data.val_sets=[all]", "data.class_names=[cat]", "model.num_classes=2",
            "data.on_bad_sample=stop", f"data.num_workers={workers}"]  # fmt: skip


@pytest.mark.parametrize(
    "problem", ["unknown class", "broken xml", "missing image", "inverted box"]
)
def test_bad_sample_found_while_reading_exits_2_in_train_and_test(tmp_path, capsys, problem):
    root = bad_custom_dataset(tmp_path / "data", problem)
    overrides = custom_overrides(root, tmp_path / "run", workers=0)
    assert exit_of(train, "--config", QUICKSTART, *overrides) == 2
    assert exit_of(test_script, "--config", QUICKSTART, *overrides, "model.weights=x.pt") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "img3" in line]
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    # Worded as what happens: the command stopped, nothing was left out.
    assert all(line.endswith("; stopped (data.on_bad_sample=stop)") for line in errors)
    assert all("left out" not in line for line in errors) or problem == "unknown class"
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_met_in_training_ends_with_one_error_line(tmp_path, workers):
    """train.py with data.on_bad_sample=stop: exit 2, last.pt saved, and the last line is
    the one error line (as in the terminal: a separate process, loader workers too)."""
    root = bad_custom_dataset(tmp_path / "data", "corrupt image")
    output = tmp_path / "run"
    overrides = [*custom_overrides(root, output, workers), "data.val_sets=[]", "train.epochs=1"]
    result = subprocess.run([sys.executable, "train.py", "--config", QUICKSTART, *overrides],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        f"error: {root / 'img3.jpg'}: unreadable or corrupt image; stopped "
        f"(data.on_bad_sample=stop); saved {output / 'last.pt'} at iteration 0: fix or remove "
        "the file, then continue with --resume"
    )
    assert "Traceback" not in result.stderr
    assert (output / "last.pt").is_file()


def test_corrupt_image_in_a_loader_worker_exits_2_with_one_line(tmp_path, capsys):
    root = bad_custom_dataset(tmp_path / "data", "corrupt image")
    output = tmp_path / "run"
    clean = bad_custom_dataset(tmp_path / "clean", "none")
    overrides = custom_overrides(clean, output, workers=0)
    assert train.main(train.parse_args(["--config", QUICKSTART, *overrides, "train.epochs=1"])) == 0
    bad = [*custom_overrides(root, output, workers=1)]
    code = exit_of(test_script, "--checkpoint", str(output / "last.pt"), *bad, "--no-plots",
                   "--results-dir", str(tmp_path / "eval"))  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {root / 'img3.jpg'}: unreadable or corrupt image"]
    assert "Original Traceback" not in err and "DataLoader worker" not in err


def test_images_without_annotation_are_reported(tmp_path, caplog):
    root = bad_custom_dataset(tmp_path / "data", "none")
    for index in range(7):
        _write_image(root / f"extra{index}.png", size=(96, 96))
    records = read_voc_format(root, "all", ["cat"], ProblemReport("skip"))
    assert len(records) == 8
    assert ("7 images have no XML annotation and are left out: extra0.png, extra1.png, "
            "extra2.png, extra3.png, extra4.png and 2 more") in caplog.text  # fmt: skip
    with pytest.raises(BadSampleError, match="7 images have no XML annotation"):
        read_voc_format(root, "all", ["cat"], ProblemReport("stop"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("solver.lr=-0.01", "'solver.lr' must be > 0, got -0.01"),
        ("train.batch_size=0", "'train.batch_size' must be >= 1, got 0"),
        ("train.epochs=-1", "'train.epochs' must be >= 1, got -1"),
        (
            "postprocess.score_threshold=1.5",
            "'postprocess.score_threshold' must be in [0, 1], got 1.5",
        ),
        ("solver.momentum=1", "'solver.momentum' must be in [0, 1), got 1.0"),
    ],
)
def test_values_out_of_range_are_refused_where_the_config_is_read(override, message):
    with pytest.raises(ConfigError) as raised:
        load_config(None, [override])
    assert str(raised.value) == f"override '{override}': {message}"


def test_every_shipped_config_and_the_defaults_are_in_range():
    for path in [None, *sorted((REPO_ROOT / "configs").glob("*.yaml"))]:
        load_config(path)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--threshold", "2", "argument --threshold: must be in [0, 1], got 2"),
        ("--topk", "0", "argument --topk: must be >= 1, got 0"),
        ("--topk", "-1", "argument --topk: must be >= 1, got -1"),
    ],
)
def test_demo_flags_out_of_range_are_refused(flag, value, message, capsys):
    with pytest.raises(SystemExit) as stopped:
        demo.parse_args(["--checkpoint", "x.pt", "image.jpg", flag, value])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


class RunsACommand:
    def __reduce__(self):
        return (os.system, ("echo owned",))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_hostile_or_random_files_are_refused_plainly(tmp_path):
    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps(RunsACommand(), protocol=2))
    with pytest.raises(CheckpointError) as raised:
        config_and_checkpoint(None, [], hostile)
    message = str(raised.value)
    assert message.startswith(f"{hostile}: not a checkpoint this project can load safely: ")
    assert "(posix.system)" in message and "refused without running anything" in message
    assert "weights_only" not in message and "--config" not in message
    noise = tmp_path / "noise.pt"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError) as raised:
        config_and_checkpoint(None, [], noise)
    assert str(raised.value) == (
        f"{noise}: not a PyTorch checkpoint (torch.save's zip archive of tensors); this "
        "project cannot read it"
    )
    # The same object saved by torch.save (a zip archive) is refused the same way.
    torch.save(RunsACommand(), hostile)
    with pytest.raises(CheckpointError, match=r"can load safely: .*\(posix\.system\)"):
        load_checkpoint(hostile)
    # Tensors in another project's layout: there the --config hint applies.
    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    with pytest.raises(CheckpointError, match="give --config too"):
        config_and_checkpoint(None, [], foreign)


def test_resumed_run_drops_the_metrics_logged_after_its_checkpoint(tiny_shapes_root, tmp_path):
    output = tmp_path / "run"
    overrides = tiny_train_overrides(tiny_shapes_root, output)
    assert train.main(train.parse_args(["--config", QUICKSTART, *overrides, "--stop-at", "3"])) == 0
    # What a run killed at iteration 5 leaves: lines past the checkpoint, a torn line.
    with (output / "metrics.jsonl").open("a") as handle:
        for iteration in (4, 5):
            handle.write(json.dumps({"kind": "train", "iteration": iteration, "epoch": 1,
                                     "loss": 99.0}) + "\n")  # fmt: skip
        handle.write('{"kind": "train", "itera')
    assert train.main(train.parse_args(["--resume", str(output / "last.pt")])) == 0
    lines = (output / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    train_lines = [record for record in records if record["kind"] == "train"]
    assert [record["iteration"] for record in train_lines] == [1, 2, 3, 4, 5, 6]
    assert all(record["loss"] != 99.0 for record in train_lines)


def test_prune_reports_the_scales_and_warns_when_they_are_not_sparse(capsys, caplog):
    dense = torch.linspace(0.9, 1.1, 100)
    assert not prune_script.report_sparsity(dense, threshold=0.9990, ratio=0.5)
    printed = capsys.readouterr().out
    assert printed.strip() == (
        "|gamma| of the 100 prunable channels: median 0.999, 0.0% below 0.01; ratio 0.5 "
        "gives the threshold 0.999 (median of the channels kept: 1.049)"
    )
    # torch's median of an even count is the lower middle value: 0.9 + 0.2 * 49 / 99
    # overall, 0.9 + 0.2 * 74 / 99 among the 50 kept (above the threshold).
    assert (
        "the BatchNorm scales are not sparse: the channels to prune reach |gamma| 0.999, "
        "95% of the median of those kept" in caplog.text
    )
    assert "train.sparsity=LAMBDA first" in caplog.text
    caplog.clear()
    sparse = torch.cat([torch.full((60,), 1e-4), torch.linspace(0.5, 1.0, 40)])
    assert prune_script.report_sparsity(sparse, threshold=1e-4, ratio=0.5)
    assert "60.0% below 0.01" in capsys.readouterr().out
    assert "not sparse" not in caplog.text


def test_atomic_writes_keep_the_old_file_when_the_writer_fails(tmp_path):
    from utils.files import WriteError, atomic_write, atomic_write_text

    target = tmp_path / "sub" / "config.yaml"
    atomic_write_text(target, "first\n", what="config")
    assert target.read_text() == "first\n"

    def failing(handle):
        handle.write(b"half of it")
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError) as caught:
        atomic_write(target, failing, what="config")
    assert str(caught.value) == (
        f"{target}: could not write the config (No space left on device); "
        "the previous one, if any, is unchanged"
    )
    assert target.read_text() == "first\n"
    assert sorted(path.name for path in target.parent.iterdir()) == ["config.yaml"]
