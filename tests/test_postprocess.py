import math

import pytest
import torch

from layers.box_coding import xyxy_to_cxcywh
from layers.postprocess import PostProcessor, postprocess
from tests.conftest import random_priors

# Priors 0 and 1 overlap at IoU 0.9; prior 2 lies apart.
PRIORS_XYXY = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9]])
PRIORS = xyxy_to_cxcywh(PRIORS_XYXY)
# Logits for (background, class 1, class 2).
LOGITS = torch.tensor([[0.0, 5.0, -5.0], [0.0, 4.0, 4.0], [5.0, -5.0, 0.0]])


def _softmax(row, index):
    return math.exp(row[index]) / sum(math.exp(value) for value in row)


def test_class_aware_nms_threshold_and_order():
    [detections] = postprocess(torch.zeros(1, 3, 4), LOGITS[None], PRIORS)
    # Class 1: prior 0 (0.993) suppresses prior 1 (0.491). Class 2: prior 1 survives,
    # NMS is per class. Prior 2's class-2 score 0.0067 and all others fall below 0.01.
    assert detections["labels"].tolist() == [1, 2]
    expected_scores = [_softmax([0.0, 5.0, -5.0], 1), _softmax([0.0, 4.0, 4.0], 2)]
    assert detections["scores"].tolist() == pytest.approx(expected_scores, abs=1e-6)
    torch.testing.assert_close(detections["boxes"], PRIORS_XYXY[:2])
    assert detections["labels"].dtype == torch.int64


def test_settings_change_the_result():
    loc, logits = torch.zeros(1, 3, 4), LOGITS[None]
    [loose] = postprocess(loc, logits, PRIORS, nms_iou_threshold=0.95)
    assert loose["labels"].tolist() == [1, 1, 2]  # 0.9 IoU no longer suppresses
    [capped] = postprocess(loc, logits, PRIORS, max_detections=1)
    assert capped["labels"].tolist() == [1]
    [strict] = postprocess(loc, logits, PRIORS, score_threshold=0.5)
    assert strict["labels"].tolist() == [1]
    [low] = postprocess(loc, logits, PRIORS, score_threshold=0.005, nms_iou_threshold=0.95)
    assert sorted(low["labels"].tolist()) == [1, 1, 2, 2]
    [topk] = postprocess(loc, logits, PRIORS, pre_nms_topk=1, nms_iou_threshold=0.95)
    # Per class only the single best prior enters NMS.
    assert topk["labels"].tolist() == [1, 2]


def test_batch_keeps_images_apart():
    background_only = torch.tensor([[9.0, 0.0, 0.0]] * 3)
    loc = torch.zeros(3, 3, 4)
    logits = torch.stack([LOGITS, background_only, LOGITS])
    detections = postprocess(loc, logits, PRIORS, score_threshold=0.01)
    assert [len(d["scores"]) for d in detections] == [2, 0, 2]
    # Identical boxes in images 0 and 2 do not suppress each other.
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(detections[0][key], detections[2][key])
    assert detections[1]["boxes"].shape == (0, 4)
    assert detections[1]["labels"].shape == (0,)


def test_batch_equals_images_alone_on_random_outputs():
    generator = torch.Generator().manual_seed(0)
    priors = random_priors(500, generator)
    loc = torch.randn(4, 500, 4, generator=generator)
    logits = torch.randn(4, 500, 6, generator=generator) * 3
    batch = postprocess(loc, logits, priors, max_detections=50)
    for index in range(4):
        [alone] = postprocess(
            loc[index : index + 1], logits[index : index + 1], priors, max_detections=50
        )
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(batch[index][key], alone[key])
        assert len(alone["scores"]) == 50
        assert (alone["scores"][:-1] >= alone["scores"][1:]).all()
        assert alone["labels"].min() >= 1 and alone["labels"].max() <= 5
        assert alone["boxes"].min() >= 0 and alone["boxes"].max() <= 1


def test_module_binds_priors_and_settings():
    module = PostProcessor(priors_cxcywh=PRIORS, max_detections=1)
    [detections] = module(torch.zeros(1, 3, 4), LOGITS[None])
    assert detections["labels"].tolist() == [1]
    assert "priors_cxcywh" not in module.state_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(1)
    priors = random_priors(300, generator)
    loc = torch.randn(2, 300, 4, generator=generator)
    logits = torch.randn(2, 300, 4, generator=generator) * 3
    on_cpu = postprocess(loc, logits, priors)
    on_gpu = postprocess(loc.cuda(), logits.cuda(), priors.cuda())
    for cpu_result, gpu_result in zip(on_cpu, on_gpu, strict=True):
        torch.testing.assert_close(gpu_result["scores"].cpu(), cpu_result["scores"])
        assert torch.equal(gpu_result["labels"].cpu(), cpu_result["labels"])
