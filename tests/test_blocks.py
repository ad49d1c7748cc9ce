import torch
from torch import nn

from layers.blocks import ConvBNReLU, L2Norm


def test_l2norm_rescales_each_position_to_the_learned_scale():
    layer = L2Norm(channels=8, initial_scale=20.0)
    x = torch.randn(2, 8, 5, 7)
    out = layer(x)
    torch.testing.assert_close(out.norm(dim=1), torch.full((2, 5, 7), 20.0))
    # Direction is unchanged.
    torch.testing.assert_close(out / 20.0, x / x.norm(dim=1, keepdim=True))
    with torch.no_grad():
        layer.weight[:] = torch.arange(8.0)
    torch.testing.assert_close(layer(x)[:, 3], 3.0 * x[:, 3] / x.norm(dim=1))
    assert torch.equal(layer(torch.zeros(1, 8, 2, 2)), torch.zeros(1, 8, 2, 2))


def test_conv_block_parts_and_shapes():
    plain = ConvBNReLU(4, 6, 3)
    assert plain.conv.bias is not None and isinstance(plain.bn, nn.Identity)
    assert plain(torch.randn(1, 4, 9, 9)).shape == (1, 6, 9, 9)
    with_bn = ConvBNReLU(4, 6, 3, batch_norm=True, stride=2)
    assert with_bn.conv.bias is None and isinstance(with_bn.bn, nn.BatchNorm2d)
    assert with_bn(torch.randn(2, 4, 9, 9)).shape == (2, 6, 5, 5)
    assert with_bn.out_channels == 6
    dilated = ConvBNReLU(4, 4, 3, dilation=6)
    assert dilated.conv.padding == (6, 6)
    assert dilated(torch.randn(1, 4, 20, 20)).shape == (1, 4, 20, 20)
    linear = ConvBNReLU(4, 4, 1, relu=False)
    x = torch.randn(1, 4, 3, 3)
    assert (linear(x) < 0).any()
    depthwise = ConvBNReLU(4, 4, 3, groups=4, relu6=True)
    assert depthwise.conv.weight.shape == (4, 1, 3, 3)
    assert depthwise(x * 100).max() <= 6.0
