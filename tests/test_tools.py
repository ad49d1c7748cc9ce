"""The command-line tools and flags the README names, run as a user runs them."""

import json
import math
import re
import xml.etree.ElementTree as ElementTree

import cv2
import pytest
import torch
import yaml

import benchmark
import prune as prune_script
import test as test_script
from engine import machine
from models.build import build_model
from models.pruning import channel_groups
from tests.conftest import REPO_ROOT, TINY_MODEL, randomise_batchnorm, tiny_train_overrides
from tools import eval_benchmark, fit_priors, int8_agreement, make_shapes, show_config
from utils.checkpoint import load_checkpoint, make_checkpoint, save_checkpoint
from utils.config import load_config
from utils.optim import build_optimizer

QUICKSTART = REPO_ROOT / "configs" / "quickstart_shapes.yaml"


def test_show_config_prints_file_then_overrides(capsys):
    assert show_config.main(show_config.parse_args(
        ["--config", str(QUICKSTART), "loss.neg_pos_ratio=2"]
    )) == 0  # fmt: skip
    printed = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load(QUICKSTART.read_text())
    assert printed["loss"]["neg_pos_ratio"] == 2
    assert printed["model"]["image_size"] == written["model"]["image_size"]
    # A key the file leaves out keeps its default.
    assert printed["postprocess"]["nms_iou_threshold"] == 0.45


def test_make_shapes_writes_the_requested_vocdevkit(tmp_path):
    root = tmp_path / "shapes"
    arguments = ["--root", str(root), "--train", "5", "--val", "3", "--image-size", "64"]
    assert make_shapes.main(make_shapes.parse_args(arguments)) == 0
    splits = {name: (root / "ImageSets" / "Main" / f"{name}.txt").read_text().split()
              for name in ("train", "val")}  # fmt: skip
    assert len(splits["train"]) == 5 and len(splits["val"]) == 3
    for image_id in splits["train"] + splits["val"]:
        image = cv2.imread(str(root / "JPEGImages" / f"{image_id}.jpg"))
        assert image.shape == (64, 64, 3)
        tree = ElementTree.parse(root / "Annotations" / f"{image_id}.xml")
        boxes = [[float(box.findtext(tag)) for tag in ("xmin", "ymin", "xmax", "ymax")]
                 for box in tree.iterfind("object/bndbox")]  # fmt: skip
        assert boxes and all(1 <= x1 < x2 <= 64 and 1 <= y1 < y2 <= 64 for x1, y1, x2, y2 in boxes)


def test_fit_priors_writes_settings_that_build_the_printed_prior_count(
    tiny_shapes_root, tmp_path, capsys
):
    overrides = tiny_train_overrides(tiny_shapes_root, tmp_path / "run")
    out = tmp_path / "fitted.yaml"
    arguments = ["--config", str(QUICKSTART), *overrides, "--restarts", "1", "--out", str(out)]
    assert fit_priors.main(fit_priors.parse_args(arguments)) == 0
    printed = capsys.readouterr().out
    [count] = re.findall(r"fitted priors: (\d+) priors", printed)
    fitted = yaml.safe_load(out.read_text())["priors"]
    config = load_config(None, [*overrides, *(f"priors.{key}={json.dumps(value)}"
                                              for key, value in fitted.items())])  # fmt: skip
    assert build_model(config, load_weights=False).priors_cxcywh.shape[0] == int(count)
    start = build_model(load_config(QUICKSTART, overrides), load_weights=False)
    assert int(count) <= start.priors_cxcywh.shape[0]  # --max-priors defaults to as many


def test_eval_benchmark_in_memory_and_whole_command(tmp_path, capsys):
    assert eval_benchmark.main(eval_benchmark.parse_args(
        ["--images", "30", "--detections-per-image", "20"]
    )) == 0  # fmt: skip
    maps = re.findall(r"mAP (\d\.\d+)", capsys.readouterr().out)
    assert len(maps) == 2 and maps[0] == maps[1] and float(maps[0]) > 0
    # Enough images that every class has boxes: the devkit scores a class without any
    # as AP 0, test.py leaves it out of the mean (README, Evaluation).
    assert eval_benchmark.main(eval_benchmark.parse_args(
        ["--whole-command", "--images", "80", "--detections-per-image", "5", "--rounds", "1",
         "--workdir", str(tmp_path)]
    )) == 0  # fmt: skip
    printed = capsys.readouterr().out
    ours, classic = (float(value) for value in re.findall(r"mAP (\d\.\d{8})", printed))
    assert ours == pytest.approx(classic, abs=1e-8) and ours > 0


def test_int8_agreement_reports_on_the_images_it_was_given(shared_dir, tmp_path, capsys):
    images = shared_dir / "data" / "voc_mini" / "VOC2012" / "JPEGImages"
    arguments = ["--images", str(images), "--calibration-images", "2", "--test-images", "2",
                 "--top", "5", *TINY_MODEL]  # fmt: skip
    assert int8_agreement.main(int8_agreement.parse_args(arguments)) == 0
    printed = capsys.readouterr().out
    assert "2 images, top 5 float32 detections each (10 in all)" in printed
    assert "calibrated on 2 others" in printed
    [mean_iou] = re.findall(r"mean IoU with the best int8 box (\d\.\d+)", printed)
    assert 0.5 < float(mean_iou) <= 1.0  # int8 boxes land near float32's
    assert int8_agreement.parse_args(["--images", "x"]).calibration_images == 64


def test_test_script_profile_names_each_stage(tiny_shapes_root, tmp_path, capsys):
    overrides = tiny_train_overrides(tiny_shapes_root, tmp_path / "run")
    config = load_config(QUICKSTART, overrides)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(make_checkpoint(config=config, model_state=build_model(config).state_dict(),
                                    class_names=["ellipse", "rectangle", "triangle", "star",
                                                 "cross"]), checkpoint)  # fmt: skip
    arguments = ["--checkpoint", str(checkpoint), "--out", str(tmp_path / "eval"), "--profile"]
    assert test_script.main(test_script.parse_args(arguments)) == 0
    printed = capsys.readouterr().out
    stages = re.findall(r"^(\S[\w .-]*?)\s+(\d+\.\d{3}) s$", printed, re.M)
    names = [name for name, _ in stages]
    assert names[:5] == ["start-up and imports", "config", "annotations", "ground truth",
                         "model and inference"]  # fmt: skip
    assert names[-1] == "total"
    seconds = [float(value) for _, value in stages]
    assert seconds[-1] == pytest.approx(sum(seconds[:-1]), abs=2e-3)


def test_prune_flags_min_keep_multiple_of_and_show_layers(tmp_path, capsys):
    config = load_config(None, TINY_MODEL)
    model = build_model(config)
    randomise_batchnorm(model)
    source, out = tmp_path / "trained.pt", tmp_path / "pruned.pt"
    save_checkpoint(make_checkpoint(config=config, model_state=model.state_dict(),
                                    class_names=["a"]), source)  # fmt: skip
    arguments = ["--checkpoint", str(source), "--ratio", "0.7", "--min-keep", "0.5",
                 "--multiple-of", "4", "--show-layers", "--out", str(out)]  # fmt: skip
    assert prune_script.main(prune_script.parse_args(arguments)) == 0
    printed = capsys.readouterr().out
    widths = load_checkpoint(out)["channel_widths"]
    before = {group.name: group.width for group in channel_groups(model)}
    for name, width in widths.items():
        # At least half of each layer, rounded up to a multiple of 4 (or the whole layer).
        assert width >= math.ceil(0.5 * before[name])
        assert width % 4 == 0 or width == before[name]
        assert re.search(rf"^{re.escape(name)}\s+{before[name]} ->\s+{width}$", printed, re.M)


def test_benchmark_also_variants_and_int8_comparison(tmp_path):
    output = tmp_path / "bench.json"
    arguments = ["--batch-size", "2", "--repeats", "1", "--warmup", "0", "--input-size",
                 "120x90", "--compare", "onnxruntime-int8", "--calibration-images", "2",
                 "--also", "model.width_multiplier=0.25", "--out", str(output),
                 *TINY_MODEL]  # fmt: skip
    assert benchmark.main(benchmark.parse_args(arguments)) == 0
    results = json.loads(output.read_text())
    names = {"ours (fssd)", "ours (fssd, onnxruntime int8)",
             "ours (fssd, model.width_multiplier=0.25)",
             "ours (fssd, onnxruntime int8, model.width_multiplier=0.25)"}  # fmt: skip
    assert set(results["batch_n"]) == names
    # The --also variant is the wider network: about 4x the GFLOPs of 0.125.
    models = results["models"]
    ratio = (
        models["ours (fssd, model.width_multiplier=0.25)"]["gflops"]
        / models["ours (fssd)"]["gflops"]
    )
    assert 2.5 < ratio < 4.5
    assert any("onnxruntime int8" in line and "/ ours (fssd):" in line
               for line in results["ratios"])  # fmt: skip


def test_machine_yardsticks_are_flops_over_measured_seconds(monkeypatch):
    monkeypatch.setattr(machine, "_median_seconds", lambda call, device, repeats: 0.5)
    cpu = torch.device("cpu")
    assert machine.matmul_gflops(cpu, size=64, repeats=1) == 2 * 64**3 / 0.5 / 1e9
    flops = 2 * 2 * machine.CONV_CHANNELS**2 * 9 * machine.CONV_SIDE**2
    assert machine.conv_gflops(cpu, batch_size=2, repeats=1) == pytest.approx(flops / 0.5 / 1e9)
    limits = machine.measure_limits(cpu)
    assert limits.limit_gflops == limits.conv_fp32_gflops
    assert limits.threads == torch.get_num_threads()
    cpu_flags = set(machine.cpu_flags() or ())
    assert set(machine.vector_flags().split()) <= cpu_flags
    assert limits.flags == machine.vector_flags()


def test_no_decay_grouping_exempts_norms_and_biases():
    config = load_config(None, [*TINY_MODEL, "solver.no_decay_norm_and_bias=true",
                                "solver.weight_decay=0.0005"])  # fmt: skip
    model = build_model(config)
    optimizer = build_optimizer(model, config.solver)
    decay, no_decay = optimizer.param_groups
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    assert decay["weight_decay"] == 0.0005 and no_decay["weight_decay"] == 0.0
    # Conv weights decay; every bias and every BatchNorm weight does not.
    assert all(names[id(p)].endswith("weight") and p.ndim == 4 for p in decay["params"])
    exempt = {names[id(p)] for p in no_decay["params"]}
    norms = {f"{name}.weight" for name, module in model.named_modules()
             if isinstance(module, torch.nn.BatchNorm2d)}  # fmt: skip
    biases = {name for name, _ in model.named_parameters() if name.endswith(".bias")}
    assert exempt == norms | biases
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    plain = build_optimizer(model, load_config(None, TINY_MODEL).solver)
    assert len(plain.param_groups) == 1


def test_sync_bn_on_cpu_processes_is_a_config_error_before_anything_runs(tmp_path):
    from engine.trainer import TrainingRun
    from utils.config import ConfigError
    from utils.distributed import DistributedContext

    config = load_config(None, [*TINY_MODEL, "train.sync_bn=true",
                                f"train.output_dir={tmp_path / 'run'}"])  # fmt: skip
    context = DistributedContext(rank=0, world_size=2, local_rank=0)
    with pytest.raises(ConfigError, match=r"train\.sync_bn: torch's SyncBatchNorm runs on GPUs"):
        TrainingRun(config, None, context, torch.device("cpu"))
    assert not (tmp_path / "run").exists()


def test_eval_only_runs_without_torch(tmp_path):
    """test.py --eval-only, the whole command: it scores the files without importing
    torch or torchvision (README, Evaluation)."""
    import subprocess
    import sys

    ground_truth, detections = eval_benchmark.synthetic_voc(6, 5)
    config, results = eval_benchmark.write_devkit(tmp_path, ground_truth, detections)
    command = [sys.executable, "-X", "importtime", "test.py", "--config", str(config),
               "--eval-only", str(results), "--no-plots"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    assert "numpy" in imported and "engine.evaluation" in imported
    assert "torch" not in imported and "torchvision" not in imported
    assert "mAP" in done.stdout


def test_fp16_on_the_cpu_stops_training_before_it_writes_anything(tmp_path):
    from engine.trainer import TrainingRun
    from utils.device import DeviceError
    from utils.distributed import DistributedContext

    config = load_config(None, [*TINY_MODEL, "train.amp=fp16",
                                f"train.output_dir={tmp_path / 'run'}"])  # fmt: skip
    with pytest.raises(DeviceError, match=r"train\.amp=fp16 needs CUDA; the device is cpu"):
        TrainingRun(config, None, DistributedContext(), torch.device("cpu"))
    assert not (tmp_path / "run").exists()
