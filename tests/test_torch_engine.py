"""The torch engine's own fast pieces against the plain formulations."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from models import dropout  # noqa: E402
from models.torch_engine import max_pool_2x2  # noqa: E402


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (1, 2, 7, 5), (3, 1, 3, 4), (2, 2, 2, 2)])
def test_fast_max_pool_equals_max_pool2d_without_autograd(shape):
    x = torch.relu(torch.randn(*shape))
    x[0, 0, 0, :2] = float("nan")  # NaN propagates as in max_pool2d
    with torch.no_grad():
        fast = max_pool_2x2(x)
    torch.testing.assert_close(fast, F.max_pool2d(x, 2), equal_nan=True, rtol=0, atol=0)


def test_max_pool_keeps_max_pool2d_and_its_gradient_under_autograd():
    x = torch.randn(2, 3, 6, 5, requires_grad=True)
    y = max_pool_2x2(x)
    assert y.grad_fn.name().startswith("MaxPool2DWithIndices")
    y.sum().backward()
    assert x.grad.sum().item() == y.numel()  # one winner per window


def test_scaled_mask_is_the_compare_and_scale_of_a_drawn_mask():
    rng = np.random.default_rng(0)
    m = rng.integers(0, dropout.LEVELS, size=(4, 3, 5, 5), dtype=np.uint16)
    h = np.abs(rng.normal(size=m.shape)).astype(np.float32)
    for p in (0.25, 0.5, 0.1):
        scale = np.float32(1 / (1 - p))
        want = h * (m >= dropout.threshold(p)) * scale
        got = h * dropout.scaled(m, p)
        np.testing.assert_array_equal(got, want)
        assert dropout.scaled(m, p).dtype == np.float32
        kept = (dropout.scaled(m, p) > 0).mean()
        assert abs(kept - (1 - p)) < 0.05
