import torch

from layers.matching import match_priors

# Four quadrant priors of the unit square, xyxy.
QUADRANTS = torch.tensor(
    [
        [0.0, 0.0, 0.5, 0.5],
        [0.5, 0.0, 1.0, 0.5],
        [0.0, 0.5, 0.5, 1.0],
        [0.5, 0.5, 1.0, 1.0],
    ]
)


def test_threshold_and_forced_best_prior():
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.4], [0.6, 0.6, 0.8, 0.8]])
    labels = torch.tensor([2, 1])
    matched_boxes, matched_labels = match_priors([boxes], [labels], QUADRANTS, 0.5)
    # Box 0 covers prior 0 at IoU 0.8; box 1 only reaches IoU 0.16 with prior 3 but
    # still owns it as its best prior.
    assert matched_labels.tolist() == [[2, 0, 0, 1]]
    torch.testing.assert_close(matched_boxes[0, 0], boxes[0])
    torch.testing.assert_close(matched_boxes[0, 3], boxes[1])
    assert matched_boxes[0, 1].abs().sum() == 0 and matched_boxes[0, 2].abs().sum() == 0


def test_iou_exactly_at_threshold_is_positive():
    priors = torch.tensor(
        [
            [0.0, 0.0, 0.5, 1.0],  # identical to the box: its best prior
            [0.0, 0.0, 1.0, 1.0],  # IoU 0.5
            [0.0, 0.0, 0.25, 1.0],  # IoU 0.5
            [0.0, 0.0, 0.24, 1.0],  # IoU 0.48
        ]
    )
    box = torch.tensor([[0.0, 0.0, 0.5, 1.0]])
    _, labels = match_priors([box], [torch.tensor([7])], priors, 0.5)
    assert labels.tolist() == [[7, 7, 7, 0]]


def test_images_without_objects_and_mixed_batches():
    empty_boxes, empty_labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    matched_boxes, labels = match_priors([empty_boxes], [empty_labels], QUADRANTS, 0.5)
    assert matched_boxes.shape == (1, 4, 4) and labels.tolist() == [[0, 0, 0, 0]]

    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    matched_boxes, labels = match_priors(
        [empty_boxes, boxes, empty_boxes],
        [empty_labels, torch.tensor([4]), empty_labels],
        QUADRANTS,
        0.5,
    )
    assert labels.tolist() == [[0, 0, 0, 0], [0, 0, 0, 4], [0, 0, 0, 0]]
    assert matched_boxes[0].abs().sum() == 0 and matched_boxes[2].abs().sum() == 0


def test_batch_matches_each_image_alone():
    generator = torch.Generator().manual_seed(3)
    priors = torch.rand(200, 2, generator=generator) * 0.8
    priors = torch.cat([priors, priors + 0.05 + torch.rand(200, 2, generator=generator) * 0.2], 1)
    images = []
    for count in (3, 0, 7, 1):
        corner = torch.rand(count, 2, generator=generator) * 0.6
        boxes = torch.cat(
            [corner, corner + 0.1 + torch.rand(count, 2, generator=generator) * 0.3], 1
        )
        images.append((boxes, torch.randint(1, 5, (count,), generator=generator)))
    batch_boxes, batch_labels = match_priors(
        [boxes for boxes, _ in images], [labels for _, labels in images], priors, 0.5
    )
    for index, (boxes, labels) in enumerate(images):
        alone_boxes, alone_labels = match_priors([boxes], [labels], priors, 0.5)
        assert torch.equal(batch_labels[index], alone_labels[0])
        assert torch.equal(batch_boxes[index], alone_boxes[0])
    # Every object owns at least one prior.
    for index, (_, labels) in enumerate(images):
        matched = batch_labels[index]
        for label in labels.unique():
            assert (matched == label).any()


def test_shared_best_prior_goes_to_the_later_box():
    boxes = torch.tensor([[0.0, 0.0, 0.45, 0.45], [0.05, 0.05, 0.5, 0.5]])
    _, labels = match_priors([boxes], [torch.tensor([1, 2])], QUADRANTS, 0.5)
    # Both boxes overlap prior 0 best (IoU 0.81); the reference loop gives it to the last.
    assert labels.tolist() == [[2, 0, 0, 0]]
