"""FixedConv2d as a PyTorch module: numbers against numpy and a dense conv
with the folded kernels, gradients, module conventions, and training."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from fxnn.kernels.fixed_kernels import KERNELS, fixed_stage_reference, fold_weights  # noqa: E402
from fxnn.models.torch_layers import FixedConv2d  # noqa: E402


def folded_conv(layer):
    """The dense nn.Conv2d equal to ``layer``: W_eff[n, m] = sum_k weight[5m+k, n] K_k."""
    m, n = layer.in_channels, layer.out_channels
    dense = nn.Conv2d(m, n, 3, padding=1).double()
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(fold_weights(layer.weight.detach().double().numpy())))
        dense.bias.copy_(layer.bias.detach().double())
    return dense


def test_output_is_fixed_stage_then_a_1x1():
    layer = FixedConv2d(3, 4, path="fixed").double()
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    want = np.einsum("bchw,cn->bnhw", fixed_stage_reference(x.numpy()), layer.weight.detach().numpy())
    want += layer.bias.detach().numpy()[:, None, None]
    np.testing.assert_allclose(layer(x).detach().numpy(), want, rtol=1e-12, atol=1e-12)


def test_equals_the_folded_dense_conv_with_the_same_gradients():
    layer = FixedConv2d(5, 7, path="fixed").double()
    nn.init.normal_(layer.bias)
    dense = folded_conv(layer)
    x = torch.randn(3, 5, 9, 8, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    g = torch.randn(3, 7, 9, 8, dtype=torch.float64)
    layer(x).backward(g)
    dense(x2).backward(g)
    np.testing.assert_allclose(x.grad.numpy(), x2.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad.numpy(), dense.bias.grad.numpy(), rtol=1e-12)
    # chain rule through W_eff = sum_k W[5m+k, n] K_k
    want = np.einsum("nmab,kab->mkn", dense.weight.grad.numpy(), KERNELS).reshape(25, 7)
    np.testing.assert_allclose(layer.weight.grad.numpy(), want, rtol=1e-10, atol=1e-12)


def test_module_conventions():
    layer = FixedConv2d(4, 6)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert layer.weight.shape == (20, 6)
    bound = 0.3 / np.sqrt(20 + 6)
    assert layer.weight.abs().max().item() <= bound and layer.bias.abs().max().item() == 0
    copy = FixedConv2d(4, 6)
    copy.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert torch.equal(copy(x), layer(x)) and not layer(x).requires_grad
    assert FixedConv2d(4, 6, bias=False).bias is None
    assert "4, 6" in repr(layer)


def test_trains_inside_a_sequential():
    """Tell horizontal from vertical bars: loss must fall far within 60 steps."""
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    y = torch.arange(64) % 2
    for i in range(64):
        pos = int(torch.randint(1, 7, (1,), generator=gen))
        if y[i]:
            x[i, 0, :, pos] = 1
        else:
            x[i, 0, pos, :] = 1
    torch.manual_seed(0)
    net = nn.Sequential(FixedConv2d(1, 8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 16, 2))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert net[0].weight.grad is not None


@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 1, 1, 1), (3, 2, 4, 9)])
def test_folded_path_equals_the_fixed_path_forward_and_gradient(shape):
    from fxnn.models.torch_layers import fixed_conv2d
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5 * shape[1], 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: fixed_conv2d(*a, path="folded"), (x, w, b))
    g = torch.randn(shape[0], 4, *shape[2:], dtype=torch.float64)
    results = []
    for path in ("fixed", "folded"):
        out = fixed_conv2d(x, w, b, path)
        results.append([out] + list(torch.autograd.grad(out, (x, w, b), g)))
    for a, c in zip(*results):
        np.testing.assert_allclose(c.detach().numpy(), a.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_an_unknown_path_is_refused():
    with pytest.raises(ValueError, match="path must be one of"):
        FixedConv2d(2, 3, path="fast")
