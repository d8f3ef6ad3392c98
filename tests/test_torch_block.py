"""ReLU, dropout and 2x2 max pooling after each conv layer of the torch engine
(models/torch/block.py): the C kernel of kernels/block_cpu.c against the
torch-ops reference (bitwise, forward and gradient, NaN and odd sizes
included), the reference against F.max_pool2d, and the pooling gradient at
ties against PyTensor's."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from fxnn.models import dropout  # noqa: E402
from fxnn.models.torch.block import native_available, reference, relu_dropout_pool  # noqa: E402

SHAPES = [(2, 3, 28, 28), (1, 2, 7, 5), (3, 1, 3, 4), (2, 2, 2, 2), (1, 1, 1, 1), (2, 4, 9, 17), (2, 3, 14, 14),
          (1, 2, 35, 33), (2, 2, 6, 34)]  # the last three: rows of 14, 32 and 34 columns (vectors of 8 and 16)


def case(shape, p, seed=0):
    rng = np.random.default_rng(seed)
    y = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    y[0, 0, :2, :2] = 0.75  # a tie inside a window
    mask = rng.integers(0, dropout.LEVELS, size=shape, dtype=np.uint16) if p else None
    g = torch.from_numpy(rng.standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2)).astype(np.float32))
    return y, mask, g


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_kernel_equals_the_reference_bitwise(shape, p):
    if not native_available(torch.empty(0)):
        pytest.skip("fxnn.kernels._fixed_cpu not built")
    y, mask, g = case(shape, p)
    results = []
    for f in (relu_dropout_pool, reference):
        t = y.clone().requires_grad_(True)
        out = f(t, mask, p)
        out.backward(g)
        results.append((out.detach(), t.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_nan_propagates_like_torch():
    y, _, _ = case((2, 2, 6, 6), 0)
    y[0, 0, 0, 0] = float("nan")
    with torch.no_grad():
        for f in (relu_dropout_pool, reference):
            out = f(y)
            assert torch.isnan(out[0, 0, 0, 0]) and not torch.isnan(out[0, 0, 1:]).any()


@pytest.mark.parametrize("shape", [s for s in SHAPES if min(s[2:]) >= 2])
def test_the_forward_is_relu_dropout_and_max_pool2d(shape):
    y, mask, _ = case(shape, 0.25, seed=1)
    want = F.max_pool2d(torch.relu(y) * torch.from_numpy(dropout.scaled(mask, 0.25)), 2)
    with torch.no_grad():
        assert torch.equal(relu_dropout_pool(y, mask, 0.25), want)
        assert torch.equal(reference(y, mask, 0.25), want)


def test_without_ties_the_gradient_is_max_pool2ds():
    y = torch.randn(3, 4, 8, 10, generator=torch.Generator().manual_seed(2))
    g = torch.randn(3, 4, 4, 5)
    a, b = y.clone().requires_grad_(True), y.clone().requires_grad_(True)
    relu_dropout_pool(a).backward(g)
    F.max_pool2d(torch.relu(b), 2).backward(g)
    assert torch.equal(a.grad, b.grad)


def test_at_ties_every_maximum_gets_the_gradient_as_in_pytensor():
    import pytensor
    import pytensor.tensor as pt
    from fxnn.models import network
    from fxnn.models.pytensor.backend import BACKEND, relu
    y = np.array([[[[1.0, 1.0, 0.0, -1.0], [0.5, 1.0, -2.0, -3.0]]]], np.float32)
    g = np.array([[[[2.0, 3.0]]]], np.float32)
    t = torch.from_numpy(y).requires_grad_(True)
    relu_dropout_pool(t).backward(torch.from_numpy(g))
    x = pt.tensor4("x", dtype="float32")
    want = pytensor.function([x], pytensor.grad(pt.sum(network.pool(BACKEND, relu(x)) * g), x))(y)
    np.testing.assert_array_equal(t.grad.numpy(), want)
    np.testing.assert_array_equal(want, [[[[2, 2, 0, 0], [0, 2, 0, 0]]]])  # a dead window passes nothing


def test_float64_runs_the_reference():
    y, mask, g = case((2, 3, 6, 7), 0.25, seed=3)
    y[0, 0, :2, :2] = torch.tensor([[0.1, 0.2], [0.3, 0.4]])  # no tie: max is differentiable
    y = y.double().requires_grad_(True)
    out = relu_dropout_pool(y, mask, 0.25)
    assert out.dtype == torch.float64
    assert torch.autograd.gradcheck(lambda t: relu_dropout_pool(t, mask, 0.25), (y,))
