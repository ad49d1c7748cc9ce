import math

import torch

from layers.box_coding import decode, encode
from utils.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh


def test_format_conversions_by_hand():
    xyxy = torch.tensor([[0.1, 0.2, 0.5, 0.8]])
    cxcywh = torch.tensor([[0.3, 0.5, 0.4, 0.6]])
    torch.testing.assert_close(xyxy_to_cxcywh(xyxy), cxcywh)
    torch.testing.assert_close(cxcywh_to_xyxy(cxcywh), xyxy)
    batched = xyxy.expand(2, 3, 4)
    assert xyxy_to_cxcywh(batched).shape == (2, 3, 4)


def test_encode_by_hand():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    # Centre (0.55, 0.52), size (0.4, 0.2).
    box = torch.tensor([[0.35, 0.42, 0.75, 0.62]])
    offsets = encode(box, prior, (0.1, 0.2))
    expected = torch.tensor([[0.05 / 0.02, 0.02 / 0.02, math.log(2.0) / 0.2, 0.0]])
    torch.testing.assert_close(offsets, expected, rtol=0, atol=1e-5)


def test_decode_by_hand():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    offsets = torch.tensor([[1.0, -1.0, 0.0, math.log(0.5) / 0.2]])
    # Centre moves by 0.1 * 0.2 = 0.02; width stays 0.2, height halves to 0.1.
    expected = torch.tensor([[0.42, 0.43, 0.62, 0.53]])
    torch.testing.assert_close(decode(offsets, prior, (0.1, 0.2)), expected)


def test_decode_of_encode_round_trip():
    generator = torch.Generator().manual_seed(0)
    priors_cxcywh = torch.cat(
        [torch.rand(50, 2, generator=generator), 0.05 + torch.rand(50, 2, generator=generator)],
        dim=1,
    )
    top_left = torch.rand(3, 50, 2, generator=generator) * 0.5
    sizes = 0.01 + torch.rand(3, 50, 2, generator=generator) * 0.49
    boxes = torch.cat([top_left, top_left + sizes], dim=-1)  # [B, P, 4]
    offsets = encode(boxes, priors_cxcywh, (0.1, 0.2))
    assert offsets.shape == (3, 50, 4)
    torch.testing.assert_close(decode(offsets, priors_cxcywh, (0.1, 0.2)), boxes, rtol=0, atol=1e-6)


def test_decode_stays_finite_for_extreme_offsets():
    prior = torch.tensor([[0.5, 0.5, 0.1, 0.1]])
    boxes = decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), prior, (0.1, 0.2))
    assert torch.isfinite(boxes).all()
    # Half-precision offsets decode without overflow too.
    assert torch.isfinite(
        decode(torch.full((1, 4), 60000.0, dtype=torch.float16), prior, (0.1, 0.2))
    ).all()
