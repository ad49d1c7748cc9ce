import dataclasses
import json

import numpy as np
import pytest
import torch

import benchmark
import utils.device
from data.transforms import EvalTransform
from engine import speed
from engine.inference import (
    InferencePipeline,
    OnnxRuntimePipeline,
    SpeedOptions,
    build_pipeline,
    to_pixels,
)
from models.build import build_model, build_postprocessor
from models.counting import count_flops
from tests.conftest import TINY_MODEL, randomise_batchnorm, tiny_train_overrides
from utils.config import load_config
from utils.device import (
    DeviceError,
    choose_device,
    cpu_flags,
    resolve_channels_last,
    resolve_precision,
)

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_pipeline(options: SpeedOptions, device: torch.device = CPU) -> InferencePipeline:
    config = load_config(None, TINY_MODEL)
    torch.manual_seed(0)  # the same weights in every pipeline
    model = build_model(config)
    randomise_batchnorm(model)
    postprocessor = build_postprocessor(config, model.priors_cxcywh)
    return InferencePipeline(
        model, postprocessor, image_size=config.model.image_size, device=device, options=options
    )


def photos(count: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    sizes = [(120, 90), (64, 200), (96, 96)]
    return [
        rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for height, width in sizes[:count]
    ]


def network_outputs(pipeline: InferencePipeline, images: list[np.ndarray]):
    with pipeline.grad_mode():
        return pipeline.forward(pipeline.preprocess(images))


def test_preprocessing_equals_the_evaluation_transform():
    pipeline = tiny_pipeline(SpeedOptions())
    images = photos()
    batch = pipeline.preprocess(images)
    assert batch.shape == (3, 3, 96, 96) and batch.dtype == torch.uint8
    for image, tensor in zip(images, batch, strict=True):
        resized, _, _ = EvalTransform(96)(image, np.zeros((0, 4), np.float32), np.zeros(0))
        assert np.array_equal(tensor.permute(1, 2, 0).numpy(), resized)


@pytest.mark.parametrize(
    "options",
    [
        SpeedOptions(channels_last=True),
        SpeedOptions(fold_bn=True),
        SpeedOptions(inference_mode=True),
        SpeedOptions(channels_last=True, fold_bn=True, inference_mode=True),
    ],
    ids=["channels_last", "fold_bn", "inference_mode", "all"],
)
def test_speed_paths_give_the_same_outputs(options):
    images = photos()
    reference = tiny_pipeline(SpeedOptions())
    fast = tiny_pipeline(options)
    expected = network_outputs(reference, images)
    actual = network_outputs(fast, images)
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    # Same detections in pixels, end to end.
    for got, want in zip(fast(images), reference(images), strict=True):
        assert len(got["scores"]) == len(want["scores"])
        np.testing.assert_allclose(got["boxes"], want["boxes"], rtol=1e-4, atol=1e-2)
        assert np.array_equal(got["labels"], want["labels"])


def test_compiled_network_gives_the_same_outputs():
    images = photos(2)
    expected = network_outputs(tiny_pipeline(SpeedOptions()), images)
    actual = network_outputs(tiny_pipeline(SpeedOptions(compile=True)), images)
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_cuda_only_paths_are_refused_on_the_cpu():
    with pytest.raises(DeviceError, match=r"^--amp=fp16 needs CUDA; the device is cpu \(use bf16"):
        tiny_pipeline(SpeedOptions(autocast="fp16"))
    with pytest.raises(DeviceError, match="CUDA graphs"):
        tiny_pipeline(SpeedOptions(cuda_graphs=True))


def test_bf16_autocast_on_the_cpu_stays_close_to_float32():
    images = photos(2)
    expected = network_outputs(tiny_pipeline(SpeedOptions()), images)
    pipeline = tiny_pipeline(SpeedOptions(autocast="bf16", channels_last=True))
    assert pipeline.runner.autocast_dtype == torch.bfloat16
    actual = network_outputs(pipeline, images)
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == torch.float32  # the runner hands float32 to post-processing
        # bf16 keeps 8 bits of mantissa: a few parts in a hundred of the output range.
        torch.testing.assert_close(got, want, rtol=0, atol=0.05 * float(want.abs().max()))


@pytest.mark.parametrize(
    ("flags", "dtype", "reason"),
    [
        ({"avx512f", "avx512_bf16"}, torch.bfloat16, "the CPU has native bf16 (avx512_bf16)"),
        ({"avx2", "amx_bf16", "amx_tile"}, torch.bfloat16, "the CPU has native bf16 (amx_bf16)"),
        ({"avx2", "fma"}, None, "the CPU has no native bf16 (none of avx512_bf16, amx_bf16)"),
        (None, None, "the CPU flags could not be read (no /proc/cpuinfo)"),
    ],
)
def test_auto_precision_follows_the_cpu_flags(monkeypatch, flags, dtype, reason):
    known = None if flags is None else frozenset(flags)
    monkeypatch.setattr(utils.device, "cpu_flags", lambda: known)
    precision = resolve_precision("auto", CPU, origin="train.amp")
    assert precision.dtype == dtype
    assert precision.reason == f"train.amp=auto: {reason}"
    assert precision.name == ("bf16" if dtype else "none")
    assert resolve_precision("none", CPU).dtype is None
    forced = resolve_precision("bf16", CPU)
    assert forced.dtype == torch.bfloat16
    assert forced.reason.endswith("emulated, slow)") == (dtype is None)
    with pytest.raises(DeviceError, match=r"^amp=half: expected one of none, auto, bf16, fp16$"):
        resolve_precision("half", CPU)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
    )
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    # ARM kernels call them Features.
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert cpu_flags(cpuinfo) == {"fp", "asimd", "bf16"}
    assert cpu_flags(tmp_path / "missing") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_one_device_choice_for_every_script():
    assert choose_device("auto") == torch.device("cpu")
    assert choose_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"^--device=cuda but no CUDA device is available$"):
        choose_device("cuda", origin="--device")
    with pytest.raises(DeviceError, match=r"train\.device=tpu: expected one of auto, cpu, cuda"):
        choose_device("tpu", origin="train.device")


@needs_cuda
@pytest.mark.parametrize("autocast", ["bf16", "fp16"])
def test_autocast_stays_close_on_cuda(autocast):
    images = photos()
    cuda = torch.device("cuda")
    expected = network_outputs(tiny_pipeline(SpeedOptions(), cuda), images)
    actual = network_outputs(tiny_pipeline(SpeedOptions(autocast=autocast), cuda), images)
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0.05, atol=0.05 * float(want.abs().max()))


@needs_cuda
def test_cuda_graphs_replay_the_forward():
    images = photos()
    cuda = torch.device("cuda")
    expected = network_outputs(tiny_pipeline(SpeedOptions(), cuda), images)
    graphed = tiny_pipeline(SpeedOptions(cuda_graphs=True), cuda)
    for _ in range(2):  # capture, then replay
        actual = network_outputs(graphed, images)
        for got, want in zip(actual, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_benchmark_script_against_torchvision(tmp_path, capsys):
    output = tmp_path / "bench.json"
    arguments = ["--batch-size", "2", "--repeats", "2", "--warmup", "0", "--compare",
                 "torchvision", "--input-size", "160x120", "--json", str(output),
                 "--fold-bn", "--inference-mode", "--channels-last", *TINY_MODEL]  # fmt: skip
    assert benchmark.main(benchmark.parse_args(arguments)) == 0
    results = json.loads(output.read_text())
    config = load_config(None, TINY_MODEL)
    assert results["batch_size"] == 2 and results["num_priors"] > 0
    ours, theirs = results["models"]["ours (fssd)"], results["models"]["torchvision ssd300_vgg16"]
    assert ours["options"]["fold_bn"] and not theirs["options"]["fold_bn"]
    assert {**ours["options"], "fold_bn": False} == theirs["options"]
    assert ours["num_classes"] == theirs["num_classes"] == config.model.num_classes
    # torchvision's SSD300 has 69.716 GFLOPs at its default 91 classes; each class costs
    # 2 * 9 * sum(H * W * C_in * anchors) = 2 * 9 * 5,531,136 FLOPs in its classifier.
    expected = 69.716306944 - (91 - config.model.num_classes) * 2 * 9 * 5_531_136 / 1e9
    assert theirs["input_size"] == 300
    assert theirs["gflops"] == pytest.approx(expected, abs=1e-6)
    limits = results["limits"]
    assert limits["conv_fp32_gflops"] > 0 and limits["matmul_fp32_gflops"] > 0
    for key, batch in (("batch_1", 1), ("batch_n", 2)):
        assert set(results[key]) == {"ours (fssd)", "torchvision ssd300_vgg16"}
        for name, row in results[key].items():
            rate = results["models"][name]["gflops"] * batch / row["forward_ms"] * 1e3
            assert row["forward_gflops_per_s"] == pytest.approx(rate)
    printed = capsys.readouterr().out
    rows = results["batch_1"]
    ratio = rows["ours (fssd)"]["total_ms"] / rows["torchvision ssd300_vgg16"]["total_ms"]
    assert f"batch 1: ours (fssd) / torchvision ssd300_vgg16: total {ratio:.3f}, " in printed
    assert limits["described"] in printed and "fp32 matmul 2048x2048" in printed


@pytest.mark.parametrize("compile_network", [False, True])
def test_torchvision_peer_gets_our_speed_paths_and_class_count(compile_network):
    arguments = ["--compare", "torchvision", "--channels-last", "--inference-mode",
                 "--fold-bn", *(["--compile"] if compile_network else []), *TINY_MODEL]  # fmt: skip
    runners, config, _ = benchmark.build_runners(benchmark.parse_args(arguments), CPU)
    ours, theirs = runners
    assert theirs.options == dataclasses.replace(ours.options, fold_bn=False)
    assert theirs.num_classes == config.model.num_classes
    head = theirs.model.head.classification_head
    assert head.num_columns == config.model.num_classes
    assert all(conv.out_channels % config.model.num_classes == 0 for conv in head.module_list)
    assert theirs.runner.module.backbone.features[0].weight.is_contiguous(
        memory_format=torch.channels_last
    )
    assert isinstance(theirs.runner.callable, torch._dynamo.eval_frame.OptimizedModule) == (
        compile_network
    )


def test_measure_takes_medians_per_part_and_of_each_calls_total():
    calls = []

    class FakeRunner(speed.Runner):
        def __init__(self, name, samples):
            self.name, self.samples = name, iter(samples)

        def __call__(self, images):
            calls.append(self.name)
            return next(self.samples)

    first = FakeRunner("a", [dict(zip(speed.PARTS, values, strict=True))
                             for values in [(1, 10, 0), (3, 1, 0), (2, 2, 9)]])  # fmt: skip
    second = FakeRunner("b", [dict(zip(speed.PARTS, (1, 1, 1), strict=True))] * 3)
    results = speed.measure([first, second], [], warmup=0, repeats=3)
    # Each round starts one runner later: a b, b a, a b.
    assert calls == ["a", "b", "b", "a", "a", "b"]
    # Medians in ms per part; the total is the median of each call's sum (11, 4, 13),
    # not the sum of the part medians (2 + 2 + 0).
    assert results["a"] == {"preprocess_ms": 2000.0, "forward_ms": 2000.0, "post_ms": 0.0,
                            "total_ms": 11000.0}  # fmt: skip
    assert results["b"]["total_ms"] == 3000.0


def test_benchmark_times_the_end_to_end_onnx_graph(tmp_path):
    import onnxruntime  # noqa: F401  (requirements-dev.txt: missing fails, not skips)

    output = tmp_path / "bench.json"
    arguments = ["--batch-size", "2", "--repeats", "1", "--warmup", "1", "--backend",
                 "onnxruntime", "--input-size", "160x120", "--json", str(output)]  # fmt: skip
    arguments += TINY_MODEL
    assert benchmark.main(benchmark.parse_args(arguments)) == 0
    results = json.loads(output.read_text())
    assert set(results["batch_n"]) == {"ours (fssd, onnxruntime)"}
    row = results["batch_n"]["ours (fssd, onnxruntime)"]
    assert row["forward_ms"] > 0 and row["post_ms"] >= 0


def test_onnxruntime_backend_on_a_gpu_device_runs_on_the_cpu_and_says_so(caplog):
    config = load_config(None, TINY_MODEL)
    pipeline = build_pipeline(
        build_model(config),
        config,
        backend="onnxruntime",
        device=torch.device("cuda"),
        options=SpeedOptions(),
    )
    assert isinstance(pipeline, OnnxRuntimePipeline) and pipeline.device.type == "cpu"
    assert "runs on the CPU, not on cuda" in caplog.text


def test_training_benchmark_reports_step_loader_and_limit(tiny_shapes_root, tmp_path, capsys):
    output = tmp_path / "train.json"
    overrides = [*tiny_train_overrides(tiny_shapes_root, tmp_path / "run"), "train.batch_size=4"]
    arguments = ["--train", "--repeats", "2", "--feed-rate", "1000", "--json", str(output),
                 *overrides]  # fmt: skip
    assert benchmark.main(benchmark.parse_args(arguments)) == 0
    results = json.loads(output.read_text())
    training, limits = results["training"], results["limits"]
    config = load_config(None, overrides)
    forward_gflops = count_flops(build_model(config), 96) / 1e9
    assert training["forward_gflops"] == pytest.approx(forward_gflops)
    assert training["batch_size"] == 4 and training["loader_workers"] == 0
    assert training["step_gflops_per_second"] == pytest.approx(
        3 * forward_gflops * training["step_images_per_second"]
    )
    share = training["step_gflops_per_second"] / limits["conv_fp32_gflops"]
    assert results["limit_share"] == pytest.approx(share)
    printed = capsys.readouterr().out
    per_worker = training["loader_images_per_second"]  # the main process loads (no workers)
    assert f"{per_worker:.1f} per worker" in printed
    assert f"a step of 1000 images/s needs {1000 / per_worker:.2f} workers' output" in printed
    assert f"= {share:.0%} of the limit" in printed


def test_to_pixels_scales_each_image_and_keeps_empty_ones():
    detections = [
        {"boxes": torch.tensor([[0.1, 0.2, 0.5, 1.0], [0.0, 0.0, 1.0, 0.5]]),
         "scores": torch.tensor([0.9, 0.4]), "labels": torch.tensor([3, 1])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
         "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[0.25, 0.5, 0.75, 1.0]]), "scores": torch.tensor([0.7]),
         "labels": torch.tensor([20])},
    ]  # fmt: skip
    sizes = [(100, 200), (50, 50), (40, 80)]  # (height, width)
    pixels = to_pixels(detections, sizes)
    np.testing.assert_allclose(pixels[0]["boxes"], [[20, 20, 100, 100], [0, 0, 200, 50]])
    np.testing.assert_allclose(pixels[0]["scores"], [0.9, 0.4])
    assert pixels[0]["labels"].tolist() == [3, 1] and pixels[0]["labels"].dtype == np.int64
    assert pixels[1]["boxes"].shape == (0, 4) and pixels[1]["scores"].shape == (0,)
    np.testing.assert_allclose(pixels[2]["boxes"], [[20, 20, 60, 40]])
    assert pixels[2]["labels"].tolist() == [20]
    assert to_pixels([], []) == []


def test_interleaved_onnxruntime_runners_do_not_spin():
    import onnxruntime  # noqa: F401  (requirements-dev.txt: missing fails, not skips)

    runners, _, _ = benchmark.build_runners(
        benchmark.parse_args(["--compare", "onnxruntime", *TINY_MODEL]), CPU
    )
    assert [runner.name for runner in runners] == ["ours (fssd)", "ours (fssd, onnxruntime)"]
    session_options = runners[1].pipeline.session.get_session_options()
    assert session_options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert not runners[1].pipeline.spinning
    # Alone (nothing runs after it) it keeps ONNX Runtime's default.
    alone, _, _ = benchmark.build_runners(
        benchmark.parse_args(["--backend", "onnxruntime", *TINY_MODEL]), CPU
    )
    assert alone[0].pipeline.spinning


@pytest.mark.parametrize(
    ("flags", "nhwc", "reason"),
    [
        ({"avx2", "avx512f"}, True, "train.channels_last=auto: the CPU has AVX-512"),
        ({"avx2", "fma"}, False, "train.channels_last=auto: the CPU has no AVX-512"),
        (None, False, "train.channels_last=auto: the CPU has no AVX-512"),
    ],
)
def test_auto_layout_follows_the_cpu(monkeypatch, flags, nhwc, reason):
    known = None if flags is None else frozenset(flags)
    monkeypatch.setattr(utils.device, "cpu_flags", lambda: known)
    assert resolve_channels_last("auto", CPU) == (nhwc, reason)
    assert resolve_channels_last(True, CPU) == (True, "train.channels_last=true")
    assert resolve_channels_last(False, CPU) == (False, "train.channels_last=false")


@pytest.mark.parametrize(("flags", "nhwc"), [({"avx2", "avx512f"}, True), ({"avx2"}, False)])
def test_test_and_demo_choose_the_layout_for_the_cpu_unless_a_flag_says(
    monkeypatch, caplog, flags, nhwc
):
    import demo
    import test as test_script

    monkeypatch.setattr(utils.device, "cpu_flags", lambda: frozenset(flags))
    for script, arguments in (
        (test_script, ["--checkpoint", "x.pt"]),
        (demo, ["--checkpoint", "x.pt", "x"]),
    ):
        assert script.parse_args(arguments).channels_last == "auto"
        assert script.parse_args([*arguments, "--channels-last"]).channels_last is True
        assert script.parse_args([*arguments, "--no-channels-last"]).channels_last is False
    assert benchmark.parse_args(TINY_MODEL).channels_last is False  # timings say what they use
    with caplog.at_level("INFO", logger="engine.inference"):
        pipeline = tiny_pipeline(SpeedOptions(channels_last="auto", inference_mode=True))
    assert pipeline.options.channels_last is nhwc
    assert f"layout {'NHWC' if nhwc else 'NCHW'} (--channels-last=auto: the CPU has" in caplog.text
    weight = next(m.weight for m in pipeline.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert weight.is_contiguous(memory_format=torch.channels_last) is nhwc
    # The same detections as the layout asked for by name.
    explicit = tiny_pipeline(SpeedOptions(channels_last=nhwc, inference_mode=True))
    for got, want in zip(pipeline(photos()), explicit(photos()), strict=True):
        np.testing.assert_array_equal(got["boxes"], want["boxes"])
        np.testing.assert_array_equal(got["scores"], want["scores"])


def test_stream_gives_what_batch_by_batch_calls_give():
    pipeline = tiny_pipeline(SpeedOptions(channels_last=True, inference_mode=True))
    images = photos(3)
    batches = [images[:2], images[2:], images[1:]]
    streamed = list(pipeline.stream(iter(batches)))
    assert [list(batch) for batch, _ in streamed] == [list(batch) for batch in batches]
    for (_, got), batch in zip(streamed, batches, strict=True):
        want = pipeline(batch)
        assert len(got) == len(want)
        for got_image, want_image in zip(got, want, strict=True):
            for key in ("boxes", "scores", "labels"):
                np.testing.assert_array_equal(got_image[key], want_image[key])
    assert list(pipeline.stream([])) == []
