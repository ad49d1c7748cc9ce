import pytest
import torch

from layers.postprocess import postprocess
from models.build import build_model
from models.export import DecodedDetector, export_onnx, onnxruntime_outputs
from tests.conftest import TINY_MODEL, randomise_batchnorm
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
    detections = postprocess(loc, conf, model.priors_cxcywh, variances=config.priors.variances)
    for image, detection in enumerate(detections):
        for box in detection["boxes"][:5]:
            assert (boxes[image] - box).abs().sum(-1).min() < 1e-5
