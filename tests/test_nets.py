import json

import pytest
import torch

import sdekit
from sdekit.nets import MLP, UNet, build_net


def small_unet(**kw):
    cfg = dict(in_channels=1, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(1,))
    cfg.update(kw)
    return UNet(**cfg)


@pytest.mark.parametrize("hw", [(8, 8), (7, 7), (5, 9), (1, 1), (16, 12)])
def test_unet_shapes_any_size(hw):
    net = small_unet(channel_mult=(1, 2, 2))
    x = torch.randn(3, 1, *hw)
    out = net(x, torch.rand(3))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_unet_multichannel_and_out_channels():
    net = small_unet(in_channels=3, out_channels=6)
    assert net(torch.randn(2, 3, 8, 8), torch.rand(2)).shape == (2, 6, 8, 8)


def test_unet_gradients_reach_every_parameter():
    net = small_unet(num_classes=10, dropout=0.1)
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    out = net(x, torch.rand(4), torch.tensor([0, 3, 10, -1]))
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_time_changes_output():
    net = small_unet().eval()
    x = torch.randn(2, 1, 8, 8)
    a = net(x, torch.full((2,), 0.1))
    b = net(x, torch.full((2,), 0.9))
    assert (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("make", [lambda: small_unet(num_classes=10), lambda: MLP(dim=2, num_classes=10)])
def test_class_conditioning_and_null_class(make):
    torch.manual_seed(0)
    net = make().eval()
    with torch.no_grad():  # make the class embedding matter at initialisation
        net.class_emb.emb.weight.normal_(0, 3)
    x = torch.randn(4, *((1, 8, 8) if isinstance(net, UNet) else (2,)))
    t = torch.rand(4)
    null = net(x, t)  # y = None means the null class
    assert torch.equal(null, net(x, t, torch.full((4,), 10)))
    assert torch.equal(null, net(x, t, torch.full((4,), -1)))
    cond = net(x, t, torch.tensor([1, 2, 3, 4]))
    assert (cond - null).abs().max() > 1e-3
    # per-row: changing row 0's label leaves the other rows alone
    cond2 = net(x, t, torch.tensor([5, 2, 3, 4]))
    assert (cond2[0] - cond[0]).abs().max() > 1e-3
    torch.testing.assert_close(cond2[1:], cond[1:])
    with pytest.raises(ValueError, match="class labels"):
        net(x, t, torch.tensor([0, 1, 2, 11]))


def test_unconditional_net_rejects_labels():
    with pytest.raises(ValueError, match="no class conditioning"):
        small_unet()(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 1]))


def test_classifier_free_guidance_wraps_conditional_net():
    net = small_unet(num_classes=10).eval()
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3)
    y = torch.tensor([1, 2, 3])
    guided = sdekit.ClassifierFreeGuidance(net, y, null_cond=net.null_class, weight=2.0)
    expect = 3.0 * net(x, t, y) - 2.0 * net(x, t)
    torch.testing.assert_close(guided(x, t), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(5, 2), (5, 3, 4)])
def test_mlp_shapes_and_gradients(shape):
    dim = 1
    for s in shape[1:]:
        dim *= s
    net = MLP(dim=dim, width=32, depth=2)
    x = torch.randn(*shape, requires_grad=True)
    out = net(x, torch.rand(shape[0]))
    assert out.shape == x.shape
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with pytest.raises(ValueError, match="features"):
        net(torch.randn(5, dim + 1), torch.rand(5))


@pytest.mark.parametrize("make", [lambda: small_unet(num_classes=3, time_embedding="fourier"),
                                  lambda: MLP(dim=2, width=16, depth=1)])
def test_config_rebuilds_same_network(make):
    net = make()
    cfg = json.loads(json.dumps(net.config))
    other = build_net(cfg)
    other.load_state_dict(net.state_dict())
    x = torch.randn(2, *((1, 8, 8) if isinstance(net, UNet) else (2,)))
    t = torch.rand(2)
    assert torch.equal(net.eval()(x, t), other.eval()(x, t))
    assert other.config == net.config


def test_build_net_errors():
    with pytest.raises(ValueError, match="unknown net type"):
        build_net({"type": "Transformer"})
    with pytest.raises(ValueError, match="bad arguments"):
        build_net({"type": "MLP", "nonsense": 1})


@pytest.mark.parametrize("prediction", sdekit.PREDICTIONS)
def test_same_net_under_every_prediction(prediction):
    """No per-prediction classes: the adapter decides what the output means."""
    net = MLP(dim=2, width=16, depth=1)
    model = sdekit.ScoreModel(net, sdekit.VPSDE(), prediction=prediction)
    x = torch.randn(4, 2)
    assert model.score(x, 0.5).shape == x.shape


def test_time_shape_checked():
    with pytest.raises(ValueError, match="batch"):
        small_unet()(torch.randn(2, 1, 8, 8), torch.rand(3))
