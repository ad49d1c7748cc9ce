import math
import sys

import pytest
import torch
from torchvision.ops import batched_nms, box_iou, nms

from layers import postprocess as postprocess_module
from layers.box_coding import decode
from layers.postprocess import PostProcessor, nms_keep_mask
from tests.conftest import postprocess_settings, random_priors
from utils.boxes import xyxy_to_cxcywh

# Priors 0 and 1 overlap at IoU 0.9; prior 2 lies apart.
PRIORS_XYXY = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.12, 0.1, 0.52, 0.5], [0.6, 0.6, 0.9, 0.9]])
PRIORS = xyxy_to_cxcywh(PRIORS_XYXY)
# Logits for (background, class 1, class 2).
LOGITS = torch.tensor([[0.0, 5.0, -5.0], [0.0, 4.0, 4.0], [5.0, -5.0, 0.0]])


def postprocess(loc, logits, priors, **overrides):
    """The layer with the config's defaults for what a test does not set."""
    return postprocess_module.postprocess(loc, logits, priors, **postprocess_settings(**overrides))


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


def reference_detections(loc, logits, priors, *, threshold, topk, iou, cap):
    """The reference's loop (fssd.pytorch's Detect): per image, per class, threshold,
    top-k, NMS; then the image's best ``cap``. Written independently of the module."""
    results = []
    for image in range(loc.shape[0]):
        boxes = decode(loc[image], priors, postprocess_settings()["variances"]).clamp(0, 1)
        scores = torch.softmax(logits[image], dim=-1)
        found = []
        for label in range(1, logits.shape[2]):
            class_scores, order = scores[:, label].sort(descending=True)
            order = order[:topk][class_scores[:topk] > threshold]
            for index in nms(boxes[order], scores[order, label], iou).tolist():
                found.append((float(scores[order[index], label]), label, boxes[order[index]]))
        found.sort(key=lambda item: -item[0])
        results.append(found[:cap])
    return results


@pytest.mark.parametrize("path", ["per_class_loop", "matrix"])
@pytest.mark.parametrize("threshold", [0.01, 0.3])
def test_equals_the_reference_loop(threshold, path, monkeypatch):
    if path == "matrix":  # what GPUs run, forced on the CPU
        module = sys.modules["layers.postprocess"]
        monkeypatch.setattr(module, "_per_class_nms", module.nms_keep_mask)
    generator = torch.Generator().manual_seed(2)
    priors = random_priors(400, generator)
    loc = torch.randn(3, 400, 4, generator=generator) * 0.5
    logits = torch.randn(3, 400, 5, generator=generator) * 2
    settings = {"threshold": threshold, "topk": 60, "iou": 0.45, "cap": 100}
    expected = reference_detections(loc, logits, priors, **settings)
    actual = postprocess(loc, logits, priors, score_threshold=threshold, pre_nms_topk=60,
                         nms_iou_threshold=0.45, max_detections=100)  # fmt: skip
    for want, got in zip(expected, actual, strict=True):
        assert len(got["scores"]) == len(want) > 0
        torch.testing.assert_close(got["scores"], torch.tensor([item[0] for item in want]))
        assert got["labels"].tolist() == [item[1] for item in want]
        torch.testing.assert_close(got["boxes"], torch.stack([item[2] for item in want]))


def test_nms_mask_equals_torchvision_nms():
    generator = torch.Generator().manual_seed(3)
    rows, count = 6, 120
    centres = torch.rand(rows, count, 2, generator=generator)
    sizes = 0.05 + 0.3 * torch.rand(rows, count, 2, generator=generator)
    boxes = torch.cat([centres - sizes / 2, centres + sizes / 2], dim=-1)
    scores = torch.rand(rows, count, generator=generator).sort(dim=1, descending=True).values
    labels = torch.randint(0, 3, (rows, count), generator=generator)
    valid = torch.rand(rows, count, generator=generator) < 0.9
    for threshold in (0.1, 0.45, 0.7):
        keep = nms_keep_mask(boxes, labels, valid, threshold)
        suppressed = 0
        for row in range(rows):
            candidates = torch.nonzero(valid[row]).flatten()
            kept = batched_nms(
                boxes[row, candidates], scores[row, candidates], labels[row, candidates], threshold
            )
            expected = sorted(candidates[kept].tolist())
            assert torch.nonzero(keep[row]).flatten().tolist() == expected
            assert len(expected) > 0
            suppressed += len(candidates) - len(expected)
        assert suppressed > 0


def test_heavy_suppression_widens_the_search(monkeypatch):
    """Many near-identical boxes: most candidates are suppressed, so the first round
    (1.5 x max_detections candidates) finds too few survivors and the search widens."""
    budgets = []
    per_class_nms = postprocess_module._per_class_nms

    def recording(boxes, *args):
        budgets.append(boxes.shape[1])
        return per_class_nms(boxes, *args)

    monkeypatch.setattr(postprocess_module, "_per_class_nms", recording)
    generator = torch.Generator().manual_seed(4)
    priors = torch.tensor([[0.5, 0.5, 0.2, 0.2]]).repeat(300, 1)
    priors[:, :2] += 0.002 * torch.randn(300, 2, generator=generator)
    priors[:150, 0] += 0.4  # two clusters
    priors[150:, 0] -= 0.4
    loc = torch.zeros(1, 300, 4)
    logits = torch.randn(1, 300, 3, generator=generator)
    settings = {"threshold": 0.01, "topk": 200, "iou": 0.45, "cap": 5}
    [want] = reference_detections(loc, logits, priors, **settings)
    [got] = postprocess(loc, logits, priors, max_detections=5)
    assert len(want) == len(got["scores"]) == 4  # one box per class and cluster
    # 7 candidates (5 * 3 // 2), then doubled until every candidate above the threshold
    # is in (or 5 survive, which never happens here).
    assert budgets[:3] == [7, 14, 28] and budgets == sorted(budgets) and len(budgets) >= 4
    torch.testing.assert_close(got["scores"], torch.tensor([item[0] for item in want]))
    assert got["labels"].tolist() == [item[1] for item in want]


def test_module_binds_priors_and_settings():
    module = PostProcessor(priors_cxcywh=PRIORS, **postprocess_settings(max_detections=1))
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


# Soft-NMS: box 1 overlaps box 0 at IoU 50 / 100 = 0.5; box 2 lies apart.
SOFT_BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0]])
SOFT_SCORES = torch.tensor([0.9, 0.8, 0.7])


@pytest.mark.parametrize(
    "method, threshold, expected_order, expected_scores",
    [
        # Gaussian: 0.8 * exp(-0.5^2 / 0.5) = 0.4852, now below box 2's 0.7.
        ("soft_gaussian", 0.3, [0, 2, 1], [0.9, 0.7, 0.8 * math.exp(-0.25 / 0.5)]),
        # Linear above the threshold: 0.8 * (1 - 0.5) = 0.4.
        ("soft_linear", 0.3, [0, 2, 1], [0.9, 0.7, 0.4]),
        # At or below the threshold nothing decays.
        ("soft_linear", 0.5, [0, 1, 2], [0.9, 0.8, 0.7]),
        # Hard: box 1 is suppressed.
        ("hard", 0.3, [0, 2], [0.9, 0.7]),
    ],
)
def test_soft_nms_scores_after_one_suppression(method, threshold, expected_order, expected_scores):
    kept, scores = postprocess_module.soft_nms(
        SOFT_BOXES, SOFT_SCORES, method=method, iou_threshold=threshold, sigma=0.5,
        score_threshold=0.01,
    )  # fmt: skip
    assert kept.tolist() == expected_order
    assert scores.tolist() == pytest.approx(expected_scores, abs=1e-6)


def test_soft_nms_drops_scores_that_decay_below_the_threshold():
    kept, scores = postprocess_module.soft_nms(
        SOFT_BOXES, SOFT_SCORES, method="soft_linear", iou_threshold=0.3, sigma=0.5,
        score_threshold=0.45,
    )  # fmt: skip
    assert kept.tolist() == [0, 2] and scores.tolist() == pytest.approx([0.9, 0.7])


def test_soft_nms_loop_with_hard_decay_equals_torchvision_nms():
    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(60, 2, generator=generator) * 50
    boxes = torch.cat([corners, corners + 5 + torch.rand(60, 2, generator=generator) * 20], dim=1)
    scores = torch.rand(60, generator=generator)
    kept, kept_scores = postprocess_module.soft_nms(
        boxes, scores, method="hard", iou_threshold=0.4, sigma=0.5, score_threshold=0.0
    )
    assert kept.tolist() == nms(boxes, scores, 0.4).tolist()
    assert torch.equal(kept_scores, scores[kept])


def _reference_soft_nms(boxes, scores, method, iou_threshold, sigma, score_threshold):
    """Soft-NMS as the paper writes it: the whole IoU matrix up front (torchvision's
    box_iou), then one plain Python pass per box taken."""
    iou = box_iou(boxes, boxes).double().tolist()
    current = scores.double().tolist()
    alive = [value > score_threshold for value in current]
    taken, taken_scores = [], []
    while any(alive):
        index = max((i for i in range(len(current)) if alive[i]), key=lambda i: (current[i], -i))
        taken.append(index)
        taken_scores.append(current[index])
        alive[index] = False
        for other in range(len(current)):
            if not alive[other]:
                continue
            overlap = iou[index][other]
            if method == "soft_gaussian":
                current[other] *= math.exp(-(overlap**2) / sigma)
            elif overlap > iou_threshold:
                current[other] *= 1.0 - overlap
            alive[other] = current[other] > score_threshold
    return taken, taken_scores


@pytest.mark.parametrize("method", ["soft_linear", "soft_gaussian"])
def test_soft_nms_equals_the_full_matrix_reference_in_a_crowd(method):
    # 150 boxes around 12 objects: near-duplicates that decay one another, as the
    # candidates of crowded red cells do.
    generator = torch.Generator().manual_seed(3)
    centres = torch.rand(12, 2, generator=generator) * 80
    pick = torch.randint(0, 12, (150,), generator=generator)
    middle = centres[pick] + torch.randn(150, 2, generator=generator) * 2
    half = 6 + torch.rand(150, 2, generator=generator) * 3
    boxes = torch.cat([middle - half, middle + half], dim=1)
    scores = torch.rand(150, generator=generator)
    kept, kept_scores = postprocess_module.soft_nms(
        boxes, scores, method=method, iou_threshold=0.3, sigma=0.5, score_threshold=0.05
    )
    expected, expected_scores = _reference_soft_nms(boxes, scores, method, 0.3, 0.5, 0.05)
    assert 12 <= len(expected) < 150  # the decay dropped some, kept more than the objects
    assert kept.tolist() == expected
    assert kept_scores.tolist() == pytest.approx(expected_scores, rel=1e-6)
    capped, capped_scores = postprocess_module.soft_nms(
        boxes, scores, method=method, iou_threshold=0.3, sigma=0.5, score_threshold=0.05,
        max_kept=10,
    )  # fmt: skip
    assert capped.tolist() == expected[:10]
    assert capped_scores.tolist() == pytest.approx(expected_scores[:10], rel=1e-6)


@pytest.mark.parametrize("method", ["soft_linear", "soft_gaussian"])
def test_soft_nms_post_processing_keeps_the_overlapping_box_with_a_lower_score(method):
    [detections] = postprocess(
        torch.zeros(1, 3, 4), LOGITS[None], PRIORS, nms=method, soft_nms_sigma=0.5
    )
    # Class 1: prior 1 (IoU 0.152 / 0.168 with prior 0) keeps its box at a decayed score;
    # class 2 as with hard NMS.
    iou = 0.152 / 0.168
    decay = math.exp(-(iou**2) / 0.5) if method == "soft_gaussian" else 1 - iou
    class1 = [_softmax([0.0, 5.0, -5.0], 1), _softmax([0.0, 4.0, 4.0], 1) * decay]
    class2 = [_softmax([0.0, 4.0, 4.0], 2)]
    assert detections["labels"].tolist() == [1, 2, 1]
    assert detections["scores"].tolist() == pytest.approx(
        [class1[0], class2[0], class1[1]], abs=1e-6
    )
    torch.testing.assert_close(detections["boxes"], PRIORS_XYXY[[0, 1, 1]])
    [capped] = postprocess(torch.zeros(1, 3, 4), LOGITS[None], PRIORS, nms=method, max_detections=2)
    assert capped["labels"].tolist() == [1, 2]
    [empty] = postprocess(
        torch.zeros(1, 3, 4), torch.tensor([[[9.0, 0.0, 0.0]] * 3]), PRIORS, nms=method
    )
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64
