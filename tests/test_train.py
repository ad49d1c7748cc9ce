import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

import engine.trainer
import engine.training
import train
from data.records import BadSampleError
from data.sources import DataError
from engine.training import (
    EpochOptions,
    EpochResult,
    StopRequest,
    TrainingParts,
    TrainState,
    add_bn_sparsity_gradient,
    loader_advice,
    mixup_batch,
    train_one_epoch,
)
from layers.matching import pad_targets
from models.build import build_loss, build_model
from models.counting import count_flops
from tests.conftest import REPO_ROOT, TINY_MODEL, tiny_train_overrides
from utils.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    make_checkpoint,
    save_checkpoint,
)
from utils.config import config_from_dict, load_config
from utils.distributed import DistributedContext
from utils.log import MetricsWriter
from utils.optim import LRSchedule


def run_train(*arguments: str) -> int:
    return train.main(train.parse_args(list(arguments)))


def train_records(output_dir):
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["kind"] == "train"]


def test_schedule_warms_up_then_decays():
    schedule = LRSchedule(
        total_iterations=100,
        iterations_per_epoch=10,
        warmup_iterations=4,
        warmup_factor=0.2,
        schedule="multistep",
        milestones=[5, 8],
        gamma=0.1,
        min_lr_factor=0.0,
    )
    assert [schedule(i) for i in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert schedule(49) == 1.0 and schedule(50) == pytest.approx(0.1)
    assert schedule(80) == pytest.approx(0.01)
    cosine = LRSchedule(
        total_iterations=100,
        iterations_per_epoch=10,
        warmup_iterations=0,
        warmup_factor=1.0,
        schedule="cosine",
        milestones=[],
        gamma=0.1,
        min_lr_factor=0.05,
    )
    assert (
        cosine(0) == 1.0
        and cosine(50) == pytest.approx(0.525)
        and cosine(100) == pytest.approx(0.05)
    )


def test_training_run_writes_its_outputs_and_warms_up(tiny_shapes_root, tmp_path):
    output = tmp_path / "run"
    assert run_train("--config", str(REPO_ROOT / "configs" / "quickstart_shapes.yaml"),
                     *tiny_train_overrides(tiny_shapes_root, output)) == 0  # fmt: skip
    records = train_records(output)
    assert [record["iteration"] for record in records] == [1, 2, 3, 4, 5, 6]
    # The LR of iteration k is lr * (0.1 + 0.9 * (k - 1) / 4) during the 4-iteration
    # warm-up (then the config's cosine schedule).
    expected = [
        0.01 * (0.1 + 0.9 * k / 4) * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(4)
    ]
    assert [record["lr"] for record in records[:4]] == pytest.approx(expected)
    assert all(math.isfinite(record["loss"]) for record in records)

    saved = load_config(output / "config.yaml")
    assert saved.train.output_dir == str(output) and saved.model.image_size == 96
    checkpoint = load_checkpoint(output / "last.pt")
    assert checkpoint["iteration"] == 6
    assert checkpoint["class_names"] == ["ellipse", "rectangle", "triangle", "star", "cross"]
    assert {"optimizer", "scheduler", "scaler", "rng", "config"} <= set(checkpoint)
    assert (output / "best.pt").is_file()
    results = json.loads((output / "results.json").read_text())
    assert results["metric"] == "voc07"
    assert set(results["ap_per_class"]) == set(checkpoint["class_names"])
    assert results["mAP"] == pytest.approx(np.nanmean(list(results["ap_per_class"].values())))
    evals = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    assert [record["iteration"] for record in evals if record["kind"] == "eval"] == [2, 4, 6]
    throughput = [record for record in evals if record["kind"] == "throughput"]
    assert [record["epoch"] for record in throughput] == [0, 1, 2]
    forward_gflops = count_flops(build_model(saved), 96) / 1e9
    for record in throughput:
        assert record["images_per_second"] > 0
        rate = 3 * forward_gflops * record["images_per_second"]
        assert record["gflops_per_second"] == pytest.approx(rate)
    assert len(list((output / "detections").glob("*.jpg"))) == 2
    assert list((output / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_continues_exactly(tiny_shapes_root, tmp_path):
    config = str(REPO_ROOT / "configs" / "quickstart_shapes.yaml")
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert run_train("--config", config, *tiny_train_overrides(tiny_shapes_root, straight)) == 0
    # Stop mid-epoch (iteration 3 of 6, epoch 2 of 3), then resume from the checkpoint,
    # with a loader worker this time: augmentation does not depend on the workers.
    overrides = tiny_train_overrides(tiny_shapes_root, split)
    assert run_train("--config", config, *overrides, "--stop-at", "3") == 0
    assert load_checkpoint(split / "last.pt")["iteration"] == 3
    assert run_train("--resume", str(split / "last.pt"), "data.num_workers=1") == 0

    losses_straight = [(r["iteration"], r["loss"], r["lr"]) for r in train_records(straight)]
    losses_split = [(r["iteration"], r["loss"], r["lr"]) for r in train_records(split)]
    assert losses_split == losses_straight
    final_straight = load_checkpoint(straight / "last.pt")["model"]
    final_split = load_checkpoint(split / "last.pt")["model"]
    for key, value in final_straight.items():
        assert torch.equal(value, final_split[key]), key


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(
    tiny_shapes_root, tmp_path, monkeypatch, caplog
):
    original = engine.trainer.build_loss

    def poisoned_loss(config, priors):
        loss_fn = original(config, priors)
        calls = {"count": 0}
        forward = loss_fn.forward

        def forward_with_nan(*args):
            calls["count"] += 1
            losses = forward(*args)
            if calls["count"] == 5:
                losses["loss"] = losses["loss"] * float("nan")
            return losses

        loss_fn.forward = forward_with_nan
        return loss_fn

    monkeypatch.setattr(engine.trainer, "build_loss", poisoned_loss)
    output = tmp_path / "run"
    code = run_train("--config", str(REPO_ROOT / "configs" / "quickstart_shapes.yaml"),
                     *tiny_train_overrides(tiny_shapes_root, output))  # fmt: skip
    assert code == 1
    assert "loss is nan at iteration 5 (epoch 3)" in caplog.text
    assert f"the last good checkpoint is {output / 'last.pt'}" in caplog.text
    # Saved at the end of epoch 2, untouched by the failing iteration.
    assert load_checkpoint(output / "last.pt")["iteration"] == 4


def test_bad_image_stops_cleanly_or_is_skipped(tmp_path, caplog):
    import cv2
    import numpy as np

    data = tmp_path / "data"
    data.mkdir()
    for index in range(9):
        image = np.full((64, 64, 3), 40 * (index % 5), dtype=np.uint8)
        cv2.rectangle(image, (10, 10), (40, 50), (255, 255, 255), -1)
        cv2.imwrite(str(data / f"img{index}.jpg"), image)
        (data / f"img{index}.xml").write_text(
            f"<annotation><filename>img{index}.jpg</filename><size><width>64</width>"
            "<height>64</height></size><object><name>box</name><bndbox><xmin>11</xmin>"
            "<ymin>11</ymin><xmax>41</xmax><ymax>51</ymax></bndbox></object></annotation>"
        )
    (data / "img3.jpg").write_bytes(b"corrupt")
    base = [
        *tiny_train_overrides(tmp_path, tmp_path / "run"),
        "data.dataset=custom",
        f"data.root={data}",
        "data.train_sets=[all]",
        "data.val_sets=[]",
        "model.num_classes=2",
        "train.epochs=2",
    ]
    message = (
        r"img3\.jpg: unreadable or corrupt image; stopped \(data\.on_bad_sample=stop\); "
        r"saved .*last\.pt at iteration \d+: fix or remove the file, then continue with --resume$"
    )
    with pytest.raises(BadSampleError, match=message) as stopped:
        run_train(*base, "data.on_bad_sample=stop")
    assert stopped.value.exit_code == 2
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] >= 0
    caplog.clear()
    assert run_train(*base, "data.on_bad_sample=skip", f"train.output_dir={tmp_path / 'run2'}") == 0
    assert "img3.jpg: unreadable or corrupt image" in caplog.text


def test_num_classes_must_fit_the_dataset(tiny_shapes_root, tmp_path):
    with pytest.raises(DataError, match=r"set model\.num_classes=6"):
        run_train(*tiny_train_overrides(tiny_shapes_root, tmp_path / "run"), "model.num_classes=21")


def test_sigint_saves_and_exits_cleanly(tiny_shapes_root, tmp_path):
    output = tmp_path / "run"
    overrides = [*tiny_train_overrides(tiny_shapes_root, output), "train.epochs=500"]
    process = subprocess.Popen(
        [sys.executable, "train.py", *overrides],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    metrics = output / "metrics.jsonl"
    while time.time() < deadline and not (metrics.is_file() and len(train_records(output)) >= 2):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    assert "received SIGINT: saved" in out
    checkpoint = load_checkpoint(output / "last.pt")
    assert checkpoint["iteration"] >= 2
    assert "Traceback" not in out


# The 2-process gloo runs: 16 images over 2 ranks of 4 per batch (2 iterations per
# epoch), 4 epochs, evaluated at epochs 2 and 4 in 3 batches of 2 images (one rank gets
# 2, the other 1), a checkpoint every epoch; started with --resume (last: it takes an
# optional path), as torchrun --max-restarts reruns it.
DDP_SETTINGS = ["train.epochs=4", "train.eval_interval=2", "train.checkpoint_interval=1",
                "eval.batch_size=2"]  # fmt: skip


def torchrun_environment(temporary, **extra):
    """One thread per process; torchrun's own temporary folders (torchelastic_*) go
    under the test's ``temporary`` folder instead of staying in /tmp."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(temporary), **extra}


def torchrun_train(root, output, port, *, restarts=0):
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--max-restarts", str(restarts), "--master_port", str(port), "train.py",
            *tiny_train_overrides(root, output), *DDP_SETTINGS, "--resume"]  # fmt: skip


@pytest.fixture(scope="module")
def ddp_run(tiny_shapes_root, tmp_path_factory):
    """An uninterrupted 2-process run; its output directory and what it printed."""
    output = tmp_path_factory.mktemp("ddp") / "run"
    environment = torchrun_environment(output.parent)
    command = torchrun_train(tiny_shapes_root, output, 29561)
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, env=environment)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return output, result.stdout + result.stderr


def test_ddp_with_gloo_on_two_processes_and_sharded_evaluation(ddp_run, tmp_path):
    """Training on 2 gloo processes; its evaluations, and test.py under torchrun, run
    each process on its share of the validation batches and give exactly what one
    process gives: the same mAP and byte-identical results files."""
    output, printed = ddp_run
    environment = torchrun_environment(tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    # --resume without a last.pt yet starts a new run.
    assert "--resume: no last.pt in" in printed
    records = train_records(output)
    # Logged once (rank 0).
    assert [record["iteration"] for record in records] == list(range(1, 9))
    assert load_checkpoint(output / "last.pt")["iteration"] == 8
    summary = json.loads((output / "results.json").read_text())
    assert summary["iterations"] == 8

    evaluation = ["test.py", "--checkpoint", str(output / "last.pt"), "--no-plots"]
    single = subprocess.run(
        [sys.executable, *evaluation, "--out", str(tmp_path / "one")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=environment,
    )  # fmt: skip
    assert single.returncode == 0, single.stdout + single.stderr
    sharded = subprocess.run(
        [*torchrun, "--master_port", "29564", *evaluation, "--out", str(tmp_path / "two")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=environment,
    )  # fmt: skip
    assert sharded.returncode == 0, sharded.stdout + sharded.stderr
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert abs(two["mAP"] - one["mAP"]) <= 1e-12
    assert abs(summary["mAP"] - one["mAP"]) <= 1e-12  # the training run's own evaluation
    files = sorted(path.name for path in (tmp_path / "one").glob("comp4_det_test_*.txt"))
    assert len(files) == 5
    # Detections on images of both ranks' shares (ids 0..5; rank 1 ran images 2 and 3).
    lines = [line for name in files for line in (tmp_path / "one" / name).read_text().splitlines()]
    assert len({line.split()[0] for line in lines}) == 6
    for name in files:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    assert "2 processes" in sharded.stdout and sharded.stdout.count("results and metrics") == 1


def worker_pids(marker: str, rank: int) -> list[int]:
    """The processes whose environment holds ``marker`` and ``RANK=rank`` (torchrun's
    workers inherit the launcher's environment)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in environment and f"RANK={rank}".encode() in environment:
            pids.append(int(entry.name))
    return pids


def test_torchrun_restarts_a_killed_worker_and_ends_where_an_uninterrupted_run_ends(
    tiny_shapes_root, ddp_run, tmp_path
):
    """torchrun --max-restarts 1 ... --resume: kill -9 rank 1 after the first checkpoint;
    the restarted group continues from last.pt and ends with the weights of the run
    that was never interrupted."""
    marker = f"FSSD_ELASTIC_TEST={tmp_path}"
    environment = torchrun_environment(tmp_path, **{marker.split("=")[0]: str(tmp_path)})
    killed = tmp_path / "killed"
    command = torchrun_train(tiny_shapes_root, killed, 29563, restarts=1)
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=environment)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "last.pt").is_file():
        time.sleep(0.05)
    victims = worker_pids(marker, 1)
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    assert "resumed at iteration" in out
    # The survivor's gloo failure is one line, not a traceback.
    assert "[rank0]: Traceback" not in out
    final = load_checkpoint(killed / "last.pt")
    assert final["iteration"] == 8
    straight, _ = ddp_run
    for key, value in load_checkpoint(straight / "last.pt")["model"].items():
        assert torch.equal(value, final["model"][key]), key


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "config": {}}, path)

    def failing_save(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(
        CheckpointError, match=r"last\.pt: could not write the checkpoint \(disk full\)"
    ):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "config": {}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3))
    assert [item.name for item in tmp_path.iterdir()] == ["last.pt"]
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(
        CheckpointError, match=r"last\.pt: a truncated or damaged PyTorch checkpoint"
    ):
        load_checkpoint(path)


def test_sparsity_adds_the_l1_subgradient():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.5, -0.2, 0.0, 2.0]))
    model(torch.randn(2, 3, 4, 4)).sum().backward()
    before = model[1].weight.grad.clone()
    add_bn_sparsity_gradient([model[1]], 0.01)
    expected = before + 0.01 * torch.tensor([1.0, -1.0, 0.0, 1.0])
    torch.testing.assert_close(model[1].weight.grad, expected)


def test_mixup_blends_images_and_joins_boxes():
    import numpy as np

    images = torch.stack(
        [torch.full((3, 2, 2), 100, dtype=torch.uint8), torch.zeros(3, 2, 2, dtype=torch.uint8)]
    )
    boxes = [
        torch.tensor([[0.1, 0.1, 0.5, 0.5]]),
        torch.tensor([[0.2, 0.2, 0.9, 0.9], [0.0, 0.0, 0.3, 0.3]]),
    ]
    labels = [torch.tensor([1]), torch.tensor([2, 3])]
    # Seed 3 draws weight 0.7505 and the permutation [1, 0]: each image gets the other
    # as partner (with seed 0 the permutation is the identity and proves nothing).
    weight = float(np.random.default_rng(3).beta(1.5, 1.5))
    assert weight == pytest.approx(0.7505, abs=1e-4)
    padded_boxes, padded_labels = pad_targets(boxes, labels)
    mixed, mixed_boxes, mixed_labels = mixup_batch(
        images, padded_boxes, padded_labels, np.random.default_rng(3), 1.5
    )
    torch.testing.assert_close(mixed[0], torch.full((3, 2, 2), 100.0 * weight))
    torch.testing.assert_close(mixed[1], torch.full((3, 2, 2), 100.0 * (1 - weight)))
    # Image 0 has one box and a padding slot (label 0), then image 1's two boxes.
    assert mixed_labels.tolist() == [[1, 0, 2, 3], [2, 3, 1, 0]]
    real = mixed_labels > 0
    torch.testing.assert_close(mixed_boxes[0][real[0]], torch.cat([boxes[0], boxes[1]]))
    torch.testing.assert_close(mixed_boxes[1][real[1]], torch.cat([boxes[1], boxes[0]]))


def test_resume_can_extend_the_schedule(tiny_shapes_root, tmp_path):
    output = tmp_path / "run"
    config = str(REPO_ROOT / "configs" / "quickstart_shapes.yaml")  # cosine schedule
    overrides = tiny_train_overrides(tiny_shapes_root, output)
    assert run_train("--config", config, *overrides, "train.epochs=1") == 0
    assert run_train("--resume", str(output / "last.pt"), "train.epochs=3") == 0
    records = train_records(output)
    assert [record["iteration"] for record in records] == [1, 2, 3, 4, 5, 6]
    # Iterations 3-6 follow the 3-epoch cosine (6 iterations), not the 1-epoch one.
    expected = 0.01 * 0.5 * (1 + math.cos(math.pi * 4 / 6))
    assert records[4]["lr"] == pytest.approx(expected)
    assert load_checkpoint(output / "last.pt")["iteration"] == 6


def sgd_epoch(model, batches, *, options, scaler=None, lr=1.0, writer=None):
    """train_one_epoch over ``batches`` with plain SGD at ``lr`` and a constant LR; the
    epoch's result."""
    config = load_config(None, TINY_MODEL)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    parts = TrainingParts(
        model=model,
        loss_fn=build_loss(config, model.priors_cxcywh),
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
        scaler=scaler or torch.amp.GradScaler("cpu", enabled=False),
        device=torch.device("cpu"),
    )
    return train_one_epoch(
        parts,
        batches,
        epoch=0,
        state=TrainState(),
        context=DistributedContext(),
        writer=writer or MetricsWriter("unused", enabled=False),
        stop=StopRequest(),
        options=options,
    )


def one_step(model, *, options, scaler=None, lr=1.0):
    """One iteration of train_one_epoch on a fixed batch with plain SGD at ``lr``;
    returns the parameters before it and the epoch's result."""
    generator = torch.Generator().manual_seed(0)
    batch = {
        "images": torch.rand(2, 3, 96, 96, generator=generator) * 255,
        "targets": pad_targets(
            [torch.tensor([[0.1, 0.2, 0.5, 0.7]]), torch.tensor([[0.3, 0.3, 0.9, 0.8]])],
            [torch.tensor([1]), torch.tensor([3])],
        ),
    }
    before = [parameter.detach().clone() for parameter in model.parameters()]
    result = sgd_epoch(model, [batch], options=options, scaler=scaler, lr=lr)
    return before, result


def update_norm(model, before):
    steps = [(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)]
    return float(torch.cat(steps).norm())


def test_gradient_clipping_bounds_the_update():
    torch.manual_seed(0)
    model = build_model(load_config(None, TINY_MODEL), load_weights=False)
    # With plain SGD at lr 1 the update is the gradient: clipped, its norm is the bound.
    before, result = one_step(model, options=EpochOptions(grad_clip_norm=1e-3))
    assert result.stop_reason is None and result.images == 2
    assert update_norm(model, before) == pytest.approx(1e-3, rel=1e-4)
    torch.manual_seed(0)
    unclipped = build_model(load_config(None, TINY_MODEL), load_weights=False)
    before, _ = one_step(unclipped, options=EpochOptions())
    assert update_norm(unclipped, before) > 10 * 1e-3


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
def test_fp16_grad_scaler_skips_overflowing_steps_and_backs_off():
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            torch.ones(2, 2) @ torch.ones(2, 2)
    except RuntimeError as error:
        pytest.skip(f"this CPU build has no float16 autocast: {error}")
    options = EpochOptions(autocast_dtype=torch.float16)
    torch.manual_seed(0)
    model = build_model(load_config(None, TINY_MODEL), load_weights=False)
    # A scale of 2^60 overflows float16 gradients: the step is skipped, the scale halved.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**60)
    before, result = one_step(model, options=options, scaler=scaler)
    assert result.stop_reason is None
    assert scaler.get_scale() == 2.0**59
    assert update_norm(model, before) == 0.0
    # A small scale gives finite gradients: the step is taken and the scale kept.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    before, _ = one_step(model, options=options, scaler=scaler, lr=0.01)
    assert scaler.get_scale() == 2.0**4
    assert update_norm(model, before) > 0.0
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


def test_checkpoints_carry_their_format_version(tmp_path):
    config = load_config(None, TINY_MODEL)
    state = make_checkpoint(config=config, model_state={"w": torch.ones(2)}, class_names=["a"])
    assert state["format_version"] == FORMAT_VERSION == 1
    assert state["channel_widths"] == {} and state["class_names"] == ["a"]
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert config_from_dict(loaded["config"]) == config and torch.equal(
        loaded["model"]["w"], torch.ones(2)
    )
    # Files from before the version field have version 1's layout and still load.
    save_checkpoint({key: value for key, value in state.items() if key != "format_version"}, path)
    assert load_checkpoint(path)["class_names"] == ["a"]
    save_checkpoint({**state, "format_version": FORMAT_VERSION + 1}, path)
    with pytest.raises(
        CheckpointError, match=r"checkpoint format 2 is newer than this code reads \(1\)"
    ):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "options",
    [
        ["loss.box_loss=giou", "loss.loc_weight=2", "postprocess.nms=soft_gaussian",
         "augment.mosaic_prob=1"],
        ["loss.box_loss=diou", "postprocess.nms=soft_linear"],
        ["loss.box_loss=ciou"],
    ],
)  # fmt: skip
def test_tiny_run_with_the_box_loss_nms_and_mosaic_options(tiny_shapes_root, tmp_path, options):
    output = tmp_path / "run"
    config = str(REPO_ROOT / "configs" / "quickstart_shapes.yaml")
    assert run_train("--config", config, *tiny_train_overrides(tiny_shapes_root, output),
                     *options) == 0  # fmt: skip
    assert all(math.isfinite(record["loss"]) for record in train_records(output))
    results = json.loads((output / "results.json").read_text())
    assert results["iterations"] == 6
    assert results["mAP"] == pytest.approx(np.nanmean(list(results["ap_per_class"].values())))
    saved = load_config(output / "config.yaml")
    for option in options:
        section, _, rest = option.partition(".")
        key, _, value = rest.partition("=")
        assert getattr(getattr(saved, section), key) == yaml.safe_load(value)


BF16_LINE = "precision: bf16 on cpu (train.amp=auto: the CPU has native bf16 (avx512_bf16))"
FP32_LINE = (
    "precision: float32 on cpu (train.amp=auto: the CPU has no native bf16 "
    "(none of avx512_bf16, amx_bf16))"
)


@pytest.mark.parametrize(
    ("flags", "logged"), [({"avx512f", "avx512_bf16"}, BF16_LINE), ({"avx2", "fma"}, FP32_LINE)]
)
def test_amp_auto_trains_in_bf16_where_the_cpu_has_it(
    tiny_shapes_root, tmp_path, monkeypatch, caplog, flags, logged
):
    import utils.device

    monkeypatch.setattr(utils.device, "cpu_flags", lambda: frozenset(flags))
    seen, evaluated = [], []
    original = engine.trainer.TrainingParts

    def recording_parts(*args, **kwargs):
        parts = original(*args, **kwargs)
        features = parts.model.features
        forward = features.forward

        def forward_recording(images):
            maps = forward(images)
            (seen if features.training else evaluated).append(maps[0].dtype)
            return maps

        features.forward = forward_recording
        return parts

    monkeypatch.setattr(engine.trainer, "TrainingParts", recording_parts)
    output = tmp_path / "run"
    caplog.set_level("INFO")
    overrides = tiny_train_overrides(tiny_shapes_root, output)
    assert run_train(*overrides, "train.amp=auto", "train.epochs=1") == 0
    assert logged in caplog.text
    # The feature maps are computed in the autocast dtype (the head in float32).
    want = torch.bfloat16 if "avx512_bf16" in flags else torch.float32
    assert seen and set(seen) == {want}
    # Evaluation runs in float32 (as test.py does by default), whatever train.amp is.
    assert evaluated and set(evaluated) == {torch.float32}
    assert all(math.isfinite(record["loss"]) for record in train_records(output))


def test_loader_advice_counts_the_workers_a_waiting_step_needs(monkeypatch):
    monkeypatch.setattr(engine.training, "available_cores", lambda: 2)
    # 160 images in 2 s, 1 s of it waiting: the step alone takes 160 images/s, the one
    # worker delivered 80 images/s, so 2 would keep up.
    waiting = EpochResult(images=160, seconds=2.0, data_seconds=1.0)
    assert loader_advice(waiting, 1) == (
        "the step waited for data 50% of the epoch with data.num_workers=1: a worker prepares "
        "about 80 images/s and the step takes 160 images/s, so about 2 workers would keep up "
        "(2 CPU cores available to this process)"
    )
    # Without workers the main process loads: 100 images in 0.5 s is 200 images/s against
    # a step of 100 / 1.5 = 67 images/s, so one worker would do.
    main_process = EpochResult(images=100, seconds=2.0, data_seconds=0.5)
    assert (
        "prepares about 200 images/s and the step takes 67 images/s, so about 1 worker would"
        in (loader_advice(main_process, 0))
    )
    assert loader_advice(EpochResult(images=100, seconds=2.0, data_seconds=0.2), 1) is None


# Operations that read device values to the host (a GPU would wait for its queue).
HOST_READS = {
    "aten._local_scalar_dense.default",  # .item(), bool(tensor), int(tensor)
    "aten.nonzero.default",
    "aten.masked_select.default",
    "aten.is_nonzero.default",
    "aten.equal.default",
    "aten._unique2.default",
    "aten.unique_consecutive.default",
    "aten.repeat_interleave.Tensor",
}


class HostReadCounter(TorchDispatchMode):
    """Counts :data:`HOST_READS` (boolean-mask indexing counts: it calls nonzero) and
    ``Tensor.tolist`` calls, which read without dispatching."""

    def __init__(self, monkeypatch):
        super().__init__()
        self.reads = []
        original = torch.Tensor.tolist

        def counted_tolist(tensor):
            self.reads.append("tolist")
            return original(tensor)

        monkeypatch.setattr(torch.Tensor, "tolist", counted_tolist)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        masked = str(func).startswith("aten.index.Tensor") and any(
            index is not None and index.dtype == torch.bool for index in args[1]
        )
        if str(func) in HOST_READS or masked:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("log_interval", "logged"), [(1, 4), (2, 2), (3, 2), (10, 1)])
def test_the_step_reads_the_device_once_per_logged_iteration(monkeypatch, log_interval, logged):
    """Over 4 iterations, reads happen only at logged iterations (every log_interval-th
    and the call's last), one each: the losses, the non-finite count and the stop votes
    come back together. Matching, hard negative mining, mixup and clipping read nothing.
    (SGD: Adam's step counters are host tensors, no device reads either.)"""
    config = load_config(None, TINY_MODEL)
    torch.manual_seed(0)
    model = build_model(config, load_weights=False)
    generator = torch.Generator().manual_seed(0)
    batches = [
        {
            "images": torch.randint(0, 256, (2, 3, 96, 96), generator=generator).to(torch.uint8),
            "targets": pad_targets(
                [torch.tensor([[0.1, 0.2, 0.5, 0.7], [0.5, 0.5, 0.6, 0.9]]), torch.zeros(0, 4)],
                [torch.tensor([1, 2]), torch.zeros(0, dtype=torch.int64)],
            ),
        }
        for _ in range(4)
    ]
    records = []

    class Recorder(MetricsWriter):
        def write(self, kind, iteration, epoch, values):
            records.append(iteration)

    options = EpochOptions(log_interval=log_interval, mixup_prob=1.0, grad_clip_norm=10.0)
    counter = HostReadCounter(monkeypatch)
    with counter:
        result = sgd_epoch(
            model, batches, options=options, lr=0.01, writer=Recorder("unused", enabled=False)
        )
    assert result.stop_reason is None and result.images == 8
    assert len(records) == logged
    assert counter.reads == ["tolist"] * logged


def test_checkpoints_by_time_save_mid_epoch_and_change_nothing(tiny_shapes_root, tmp_path, caplog):
    config = str(REPO_ROOT / "configs" / "quickstart_shapes.yaml")
    straight, timed = tmp_path / "straight", tmp_path / "timed"
    assert run_train("--config", config, *tiny_train_overrides(tiny_shapes_root, straight)) == 0
    caplog.set_level("INFO")
    # Due at once: every logged iteration (each one here) writes last.pt, mid-epoch too.
    overrides = [*tiny_train_overrides(tiny_shapes_root, timed), "train.checkpoint_minutes=1e-9"]
    assert run_train("--config", config, *overrides) == 0
    saved = [
        record.getMessage()
        for record in caplog.records
        if "checkpoint_minutes" in record.getMessage()
    ]
    # Iterations 1, 3, 5 end mid-epoch (2 per epoch); 2, 4, 6 save at the epoch's end anyway.
    assert saved == [
        f"saved last.pt at iteration {i} (train.checkpoint_minutes passed)" for i in (1, 3, 5)
    ]
    records_straight = [(r["iteration"], r["loss"]) for r in train_records(straight)]
    assert [(r["iteration"], r["loss"]) for r in train_records(timed)] == records_straight
    final = load_checkpoint(timed / "last.pt")["model"]
    for key, value in load_checkpoint(straight / "last.pt")["model"].items():
        assert torch.equal(value, final[key]), key


def test_channels_last_training_follows_the_nchw_run(tiny_shapes_root, tmp_path, caplog):
    """train.channels_last=true trains in NHWC (the log says so) and gives the losses of
    the NCHW run: the first (same weights, same batch) up to float rounding; the second
    looser, because AdamW's first step moves every weight by about lr * sign(gradient),
    so a gradient that is rounding noise in one layout moves its weight the other way."""
    losses = {}
    for layout in ("false", "true"):
        output = tmp_path / f"run_{layout}"
        overrides = [*tiny_train_overrides(tiny_shapes_root, output), "train.epochs=1",
                     "train.eval_interval=0", "train.amp=none",
                     f"train.channels_last={layout}"]  # fmt: skip
        assert run_train("--config", str(REPO_ROOT / "configs" / "quickstart_shapes.yaml"),
                         *overrides) == 0  # fmt: skip
        losses[layout] = [record["loss"] for record in train_records(output)]
    assert "layout NHWC (train.channels_last=true)" in caplog.text
    assert "layout NCHW (train.channels_last=false)" in caplog.text
    assert len(losses["true"]) == 2
    assert losses["true"][0] == pytest.approx(losses["false"][0], rel=1e-5)
    assert losses["true"][1] == pytest.approx(losses["false"][1], rel=1e-2)
    assert losses["true"][1] != pytest.approx(losses["true"][0], rel=1e-2)  # it did train


def test_a_failed_collective_is_one_line_naming_the_rank_and_the_timeout():
    from utils.distributed import collective_error

    two = DistributedContext(rank=1, world_size=2)
    gloo = RuntimeError(
        "[pair.cc:545] Read error [127.0.0.1]:42195: Connection reset by peer\nmore"
    )
    error = collective_error(gloo, two, 30.0, "rerun with --resume")
    assert str(error) == (
        "rank 1 of 2: a collective with the other processes failed ([pair.cc:545] Read error "
        "[127.0.0.1]:42195: Connection reset by peer): another process died (torchrun's "
        "summary names it) or stalled longer than train.dist_timeout_minutes=30; rerun with "
        "--resume"
    )
    assert collective_error(gloo, DistributedContext(), 30.0, "") is None  # one process
    assert collective_error(RuntimeError("shape mismatch"), two, 30.0, "") is None
    assert collective_error(ValueError("gloo"), two, 30.0, "") is None
