import pytest
import torch

from models.build import build_model, build_postprocessor
from tests.conftest import TINY_MODEL, randomise_batchnorm
from tools.export import DecodedDetector, export_onnx, onnxruntime_outputs
from utils.config import load_config

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


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
        actual = onnxruntime_outputs(path, images)
        for got, want in zip(actual, expected, strict=True):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_decoded_export_feeds_the_same_detections(tiny_model, tmp_path):
    model, config = tiny_model
    decoded = DecodedDetector(model, config.priors.variances)
    path = export_onnx(decoded, tmp_path / "decoded.onnx", 96, output_names=["boxes", "scores"])
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(1)) * 255
    boxes, scores = onnxruntime_outputs(path, images)
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
        float(line.split("=")[-1]) for line in printed.splitlines() if "max |onnxruntime" in line
    ]
    assert len(differences) == 2 and max(differences) < 1e-3
    # The exported graph is the decoded detector: softmax scores sum to 1 per prior.
    config = load_config(None, TINY_MODEL)
    images = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2)) * 255
    boxes, scores = onnxruntime_outputs(out, images)
    num_priors = build_model(config).priors_cxcywh.shape[0]
    assert boxes.shape == (1, num_priors, 4) and scores.shape == (1, num_priors, 6)
    torch.testing.assert_close(scores.sum(-1), torch.ones(1, num_priors))
