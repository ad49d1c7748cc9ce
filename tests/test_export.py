import numpy as np
import onnxruntime  # noqa: F401  (requirements-dev.txt: missing fails, not skips)
import onnxscript  # noqa: F401
import pytest
import torch

from engine.export import DecodedDetector, export_detector, export_onnx
from engine.inference import run_onnx
from models.build import build_model, build_postprocessor
from tests.conftest import REPO_ROOT, TINY_MODEL, randomise_batchnorm
from utils.config import load_config


@pytest.fixture(scope="module")
def tiny_model():
    config = load_config(None, TINY_MODEL)
    model = build_model(config)
    randomise_batchnorm(model)
    return model.eval(), config


def test_network_matches_onnxruntime_at_any_batch_size(tiny_model, tmp_path):
    model, _ = tiny_model
    path = export_onnx(model, tmp_path / "tiny.onnx", 96, output_names=["loc", "conf"])
    for batch_size in (1, 3):  # exported at batch 2: the batch axis is dynamic
        images = torch.rand(batch_size, 3, 96, 96, generator=torch.Generator().manual_seed(0))
        images = images * 255
        with torch.no_grad():
            expected = model(images)
        actual = run_onnx(path, images)
        for got, want in zip(actual, expected, strict=True):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_decoded_export_feeds_the_same_detections(tiny_model, tmp_path):
    model, config = tiny_model
    decoded = DecodedDetector(model, config.priors.variances)
    path = export_onnx(decoded, tmp_path / "decoded.onnx", 96, output_names=["boxes", "scores"])
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1)) * 255
    boxes, scores = run_onnx(path, images)
    with torch.no_grad():
        expected_boxes, expected_scores = decoded(images)
        loc, conf = model(images)
    torch.testing.assert_close(boxes, expected_boxes, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2, scores.shape[1]))
    # The boxes are exactly what post-processing keeps before NMS.
    detections = build_postprocessor(config, model.priors_cxcywh)(loc, conf)
    for image, detection in enumerate(detections):
        for box in detection["boxes"][:5]:
            assert (boxes[image] - box).abs().sum(-1).min() < 1e-5


def test_export_command_writes_and_checks_the_model(tmp_path, capsys):
    import tools.export

    out = tmp_path / "cli.onnx"
    arguments = ["--out", str(out), "--decode", "--fold-bn", "--check", *TINY_MODEL]
    assert tools.export.main(tools.export.parse_args(arguments)) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and out.stat().st_size > 0
    differences = [
        float(line.split("= ")[1].split()[0])
        for line in printed.splitlines()
        if "max |onnxruntime" in line
    ]
    assert len(differences) == 2 and max(differences) < 1e-3
    assert printed.count("(within ") == 2
    # The exported graph is the decoded detector: softmax scores sum to 1 per prior.
    config = load_config(None, TINY_MODEL)
    images = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2)) * 255
    boxes, scores = run_onnx(out, images)
    num_priors = build_model(config).priors_cxcywh.shape[0]
    assert boxes.shape == (1, num_priors, 4) and scores.shape == (1, num_priors, 6)
    torch.testing.assert_close(scores.sum(-1), torch.ones(1, num_priors))


def test_end_to_end_check_fails_on_a_difference_and_tells_ties_apart(tmp_path, capsys, monkeypatch):
    """tools.export --end-to-end --check on random weights: the detections agree except
    where scores tie (untrained heads give many bit-equal scores, whose order the two
    runtimes break differently); a box moved by 2 px in ONNX Runtime's output fails the
    command with one error."""
    import tools.export

    out = tmp_path / "e2e.onnx"
    arguments = ["--out", str(out), "--end-to-end", "--check", *TINY_MODEL]
    assert tools.export.main(tools.export.parse_args(arguments)) == 0
    printed = capsys.readouterr().out
    assert "detections equal (score within 1e-05, box within 0.5 px" in printed
    assert "DIFFER" not in printed

    real = tools.export.run_onnx

    def shifted(path, images):
        boxes, scores, labels, counts = real(path, images)
        return boxes + 2.0, scores, labels, counts

    monkeypatch.setattr(tools.export, "run_onnx", shifted)
    with pytest.raises(
        tools.export.ExportCheckError, match=r"e2e\.onnx: ONNX Runtime's detections differ"
    ):
        tools.export.main(tools.export.parse_args(arguments))
    assert "DIFFER" in capsys.readouterr().out


def assert_same_detections(onnx_outputs, expected, image_size):
    """ONNX Runtime's end-to-end outputs against PyTorch's post-processing: the same
    count per image, scores to 1e-5 in the same order, the same labels and boxes (to
    1e-4 of the image side) in that order. Scores within 1e-6 of each other may swap
    places: the two runtimes' softmax can differ in the last bit."""
    boxes, scores, labels, counts = (np.asarray(item) for item in onnx_outputs)
    for index, detection in enumerate(expected):
        count = len(detection["scores"])
        assert counts[index] == count
        want_scores = detection["scores"].numpy()
        np.testing.assert_allclose(scores[index, :count], want_scores, atol=1e-5, rtol=0)
        got = np.column_stack([labels[index, :count], boxes[index, :count] / image_size])
        want = np.column_stack([detection["labels"].numpy(), detection["boxes"].numpy()])
        unmatched = list(range(count))
        for row in range(count):
            near = [j for j in unmatched if abs(want_scores[j] - want_scores[row]) <= 1e-6]
            match = next(
                (j for j in near if got[row, 0] == want[j, 0]
                 and np.abs(got[row, 1:] - want[j, 1:]).max() <= 1e-4),
                None,
            )  # fmt: skip
            assert match is not None, f"image {index}, detection {row}: {got[row]} not found"
            unmatched.remove(match)
        # Rows past the count are zeros.
        assert not scores[index, count:].any() and not labels[index, count:].any()


def photos(shared_dir, size, count):
    """``count`` shared VOC photos resized to the model's input, as a uint8 NCHW batch."""
    import cv2

    paths = sorted((shared_dir / "data" / "voc_mini" / "VOC2012" / "JPEGImages").glob("*.jpg"))
    images = [cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB) for path in paths[:count]]
    batch = np.stack([cv2.resize(image, (size, size)) for image in images])
    return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()


def end_to_end_check(model, config, path, images):
    export_detector(model, config, path)
    with torch.no_grad():
        expected = build_postprocessor(config, model.priors_cxcywh)(*model(images.float()))
    assert_same_detections(run_onnx(path, images), expected, config.model.image_size)
    return expected


def test_end_to_end_graph_gives_the_same_detections_as_pytorch(shared_dir, tmp_path):
    # The quick-start architecture with random weights and BatchNorm statistics, on
    # real photos; a low cap and top-k make both the per-class and per-image cuts bite.
    config = load_config(
        REPO_ROOT / "configs" / "quickstart_shapes.yaml",
        ["postprocess.max_detections=50", "postprocess.pre_nms_topk=30"],
    )
    torch.manual_seed(0)
    model = build_model(config).eval()
    randomise_batchnorm(model)
    images = photos(shared_dir, config.model.image_size, 5)
    expected = end_to_end_check(model, config, tmp_path / "quickstart.onnx", images)
    assert [len(item["scores"]) for item in expected] == [50] * 5
    assert len({int(label) for item in expected for label in item["labels"]}) > 1


def test_end_to_end_fssd300_with_random_weights(shared_dir, tmp_path):
    config = load_config(REPO_ROOT / "configs" / "fssd300_voc.yaml")
    torch.manual_seed(0)
    model = build_model(config).eval()
    randomise_batchnorm(model)
    with torch.no_grad():  # spread the class scores, as a trained head does
        for layer in model.head.modules():
            if isinstance(layer, torch.nn.Conv2d) and layer.out_channels % 21 == 0:
                layer.weight.mul_(40.0)
    images = photos(shared_dir, 300, 2)
    expected = end_to_end_check(model, config, tmp_path / "fssd300.onnx", images)
    assert min(len(item["scores"]) for item in expected) > 20


def matched_iou(fp32_boxes, int8_boxes):
    """Mean IoU of each float32 box with its best int8 box (torchvision.ops.box_iou)."""
    from torchvision.ops import box_iou

    iou = box_iou(torch.as_tensor(fp32_boxes), torch.as_tensor(int8_boxes))
    return float(iou.max(dim=1).values.mean())


def test_int8_graph_quantizes_the_convolutions_only(shared_dir, tmp_path):
    import onnx

    from engine.quantize import quantize_end_to_end

    config = load_config(REPO_ROOT / "configs" / "quickstart_shapes.yaml")
    torch.manual_seed(0)
    model = build_model(config).eval()
    randomise_batchnorm(model)
    images = photos(shared_dir, config.model.image_size, 8)
    end_to_end_check(model, config, tmp_path / "fp32.onnx", images[:2])
    int8 = quantize_end_to_end(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", [images.numpy()])
    graph = onnx.load(str(int8)).graph
    producers = {output: node for node in graph.node for output in node.output}
    initializers = {item.name: item for item in graph.initializer}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    assert len(convs) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    for conv in convs:
        # Input and weight come dequantized from int8; the weight scales are per channel.
        data, weight = (producers[name] for name in conv.input[:2])
        assert data.op_type == weight.op_type == "DequantizeLinear"
        quantized_weight = initializers[weight.input[0]]
        assert quantized_weight.data_type == onnx.TensorProto.INT8
        assert tuple(initializers[weight.input[1]].dims) == (quantized_weight.dims[0],)
        assert len(initializers[data.input[1]].dims) == 0  # activations: one scale per tensor
    for node in graph.node:  # softmax, decoding and the post-processing stay float32
        if node.op_type in ("Softmax", "Exp", "TopK", "NonMaxSuppression"):
            assert all(producers.get(name, node).op_type != "DequantizeLinear"
                       for name in node.input)  # fmt: skip
    # Its detections land where float32's do.
    fp32 = run_onnx(tmp_path / "fp32.onnx", images)
    quantized = run_onnx(int8, images)
    for index in range(len(images)):
        assert matched_iou(fp32[0][index, :10], quantized[0][index, :10]) > 0.8
