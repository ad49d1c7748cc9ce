import math

import pytest
import torch

from layers.multibox_loss import MultiBoxLoss, box_regression_loss, hard_negative_mask
from tests.conftest import loss_settings, random_priors
from tests.test_matching import QUADRANTS
from utils.boxes import xyxy_to_cxcywh

PRIORS_CXCYWH = xyxy_to_cxcywh(QUADRANTS)

# Logits of the four priors for classes (background, 1, 2).
LOGITS = torch.tensor(
    [
        [0.0, 0.0, 0.0],  # prior 0: the positive, CE = log 3 against class 1
        [0.0, 2.0, 0.0],  # background CE = log(2 + e^2)
        [0.0, 0.0, 1.0],  # background CE = log(2 + e)
        [1.0, 0.0, 0.0],  # background CE = log(e + 2) - 1
    ]
)
CE_POSITIVE = math.log(3.0)
CE_NEGATIVE = [math.log(2 + math.e**2), math.log(2 + math.e), math.log(math.e + 2) - 1]


def _loss(**kwargs):
    return MultiBoxLoss(priors_cxcywh=PRIORS_CXCYWH, **loss_settings(**kwargs))


def _one_object():
    # The box equals prior 0 exactly, so its regression target is zero.
    return [QUADRANTS[:1].clone()], [torch.tensor([1])]


@pytest.mark.parametrize("ratio, negatives", [(1, [0]), (2, [0, 1]), (3, [0, 1, 2])])
def test_hand_computed_loss(ratio, negatives):
    boxes, labels = _one_object()
    loc_pred = torch.full((1, 4, 4), 0.5)
    out = _loss(neg_pos_ratio=ratio)(loc_pred, LOGITS[None], boxes, labels)
    # Smooth-L1(0.5) = 0.5 * 0.5^2 = 0.125 per coordinate, on the one positive.
    assert out["loc_loss"].item() == pytest.approx(0.5, abs=1e-6)
    expected_conf = CE_POSITIVE + sum(CE_NEGATIVE[index] for index in negatives)
    assert out["conf_loss"].item() == pytest.approx(expected_conf, abs=1e-5)
    assert out["loss"].item() == pytest.approx(expected_conf + 0.5, abs=1e-5)
    assert out["num_positives"].item() == 1


def test_normalised_by_positives_over_the_batch_and_loc_weight():
    boxes, labels = _one_object()
    loc_pred = torch.full((2, 4, 4), 0.5)
    out = _loss(neg_pos_ratio=1, loc_weight=2.0)(
        loc_pred, LOGITS.expand(2, 4, 3), boxes * 2, labels * 2
    )
    # Two images with identical terms: sums double, positives double, ratio unchanged.
    assert out["num_positives"].item() == 2
    assert out["loc_loss"].item() == pytest.approx(0.5, abs=1e-6)
    assert out["conf_loss"].item() == pytest.approx(CE_POSITIVE + CE_NEGATIVE[0], abs=1e-5)
    assert out["loss"].item() == pytest.approx(CE_POSITIVE + CE_NEGATIVE[0] + 1.0, abs=1e-5)


def test_batch_without_objects_is_finite_and_backpropagates():
    empty = [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.int64)] * 2
    loc_pred = torch.randn(2, 4, 4, requires_grad=True)
    logits = LOGITS.expand(2, 4, 3).clone().requires_grad_(True)
    out = _loss()(loc_pred, logits, *empty)
    # SSD keeps 3 negatives per positive: no positives, no terms; divided by max(0, 1).
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()

    # With a minimum, images without objects still teach the background class.
    out = _loss(min_negatives=1)(loc_pred, logits, *empty)
    assert out["conf_loss"].item() == pytest.approx(2 * CE_NEGATIVE[0], abs=1e-5)
    assert out["loc_loss"].item() == 0.0


def test_image_without_objects_contributes_only_through_min_negatives():
    boxes, labels = _one_object()
    batch_boxes = [boxes[0], torch.zeros(0, 4)]
    batch_labels = [labels[0], torch.zeros(0, dtype=torch.int64)]
    loc_pred = torch.zeros(2, 4, 4)
    logits = LOGITS.expand(2, 4, 3)
    plain = _loss(neg_pos_ratio=1)(loc_pred, logits, batch_boxes, batch_labels)
    assert plain["conf_loss"].item() == pytest.approx(CE_POSITIVE + CE_NEGATIVE[0], abs=1e-5)
    with_minimum = _loss(neg_pos_ratio=1, min_negatives=2)(
        loc_pred, logits, batch_boxes, batch_labels
    )
    # Image 0 keeps max(1, 2) = 2 negatives, image 1 keeps 2: its two hardest of four.
    image0 = CE_POSITIVE + CE_NEGATIVE[0] + CE_NEGATIVE[1]
    # Image 1's priors against background: prior 0 gives log 3, below priors 1 and 2.
    image1 = CE_NEGATIVE[0] + CE_NEGATIVE[1]
    assert with_minimum["conf_loss"].item() == pytest.approx(image0 + image1, abs=1e-5)


def test_batch_loss_is_sum_of_image_losses():
    generator = torch.Generator().manual_seed(0)
    priors = random_priors(64, generator)
    loss_fn = MultiBoxLoss(priors_cxcywh=priors, **loss_settings())
    boxes = [
        torch.tensor([[0.1, 0.1, 0.4, 0.5]]),
        torch.tensor([[0.2, 0.3, 0.9, 0.8], [0.0, 0.0, 0.3, 0.3]]),
    ]
    labels = [torch.tensor([1]), torch.tensor([2, 3])]
    loc_pred = torch.randn(2, 64, 4, generator=generator)
    logits = torch.randn(2, 64, 4, generator=generator)
    batch = loss_fn(loc_pred, logits, boxes, labels)
    total = 0.0
    for index in range(2):
        alone = loss_fn(
            loc_pred[index : index + 1],
            logits[index : index + 1],
            boxes[index : index + 1],
            labels[index : index + 1],
        )
        total += alone["loss"].item() * alone["num_positives"].item()
    assert batch["loss"].item() * batch["num_positives"].item() == pytest.approx(total, rel=1e-5)


def test_hard_negative_mask_counts_and_never_takes_positives():
    background_loss = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    positive = torch.tensor(
        [[True, False, False, False, False, False], [True, True, False, False, False, False]]
    )
    mask = hard_negative_mask(background_loss, positive, neg_pos_ratio=3, min_negatives=0)
    # Image 0: three hardest negatives; image 1: 6 wanted, 4 available, ties in prior order.
    assert mask.tolist() == [
        [False, True, True, True, False, False],
        [False, False, True, True, True, True],
    ]


def test_prior_count_mismatch_is_reported():
    boxes, labels = _one_object()
    with pytest.raises(ValueError, match="predicts 5 boxes but the loss has 4 priors"):
        _loss()(torch.zeros(1, 5, 4), torch.zeros(1, 5, 3), boxes, labels)


# Prior [0.4, 0.4, 0.6, 0.6] (zero offsets decode to it) and a box shifted by 0.1:
# intersection 0.01, union 0.07, IoU 1/7; the enclosing box is 0.3 x 0.3.
IOU_PRIOR_CXCYWH = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
IOU_BOX = torch.tensor([[[0.5, 0.5, 0.7, 0.7]]])
IOU = 1 / 7
GIOU_LOSS = 1 - (IOU - (0.09 - 0.07) / 0.09)
# DIoU adds the squared centre distance over the enclosing diagonal squared; CIoU's
# aspect term is zero for two squares.
DIOU_LOSS = 1 - IOU + (0.1**2 + 0.1**2) / (0.3**2 + 0.3**2)


@pytest.mark.parametrize(
    "kind, expected", [("giou", GIOU_LOSS), ("diou", DIOU_LOSS), ("ciou", DIOU_LOSS)]
)
def test_iou_box_losses_of_two_known_boxes(kind, expected):
    loss = box_regression_loss(
        torch.zeros(1, 1, 4), IOU_BOX, torch.tensor([[True]]), IOU_PRIOR_CXCYWH,
        variances=(0.1, 0.2), kind=kind,
    )  # fmt: skip
    assert loss.shape == (1, 1, 1)
    assert loss.item() == pytest.approx(expected, abs=1e-5)


def test_ciou_adds_the_aspect_ratio_term():
    # A 0.2 x 0.1 box centred on the 0.2 x 0.2 prior: IoU 0.5, no centre distance,
    # v = 4 / pi^2 * (atan(2) - atan(1))^2, alpha = v / (1 - IoU + v).
    box = torch.tensor([[[0.4, 0.45, 0.6, 0.55]]])
    v = 4 / math.pi**2 * (math.atan(2.0) - math.atan(1.0)) ** 2
    expected = 1 - 0.5 + v * v / (1 - 0.5 + v)
    loss = box_regression_loss(
        torch.zeros(1, 1, 4), box, torch.tensor([[True]]), IOU_PRIOR_CXCYWH,
        variances=(0.1, 0.2), kind="ciou",
    )  # fmt: skip
    assert loss.item() == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("kind", ["giou", "diou", "ciou"])
def test_iou_loss_is_zero_for_a_perfect_box_and_ignores_background(kind):
    boxes, labels = _one_object()
    logits = LOGITS[None].clone().requires_grad_(True)
    loc_pred = torch.zeros(1, 4, 4, requires_grad=True)
    out = _loss(box_loss=kind, neg_pos_ratio=3)(loc_pred, logits, boxes, labels)
    assert out["loc_loss"].item() == pytest.approx(0.0, abs=1e-6)
    out["loss"].backward()
    # Background priors (paired with nothing) get no box gradient, and none is NaN.
    assert torch.isfinite(loc_pred.grad).all()
    assert torch.equal(loc_pred.grad[0, 1:], torch.zeros(3, 4))


def test_unknown_box_loss_is_refused():
    with pytest.raises(ValueError, match="unknown box loss 'iou'"):
        _loss(box_loss="iou")
