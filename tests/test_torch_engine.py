"""The dropout the torch engine runs (the block after each conv layer:
tests/test_torch_block.py), against the keep probability and a numpy
reference written apart from :func:`fxnn.models.dropout.scaled`."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fxnn.models import dropout  # noqa: E402
from fxnn.models.torch.backend import BACKEND  # noqa: E402


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_drawn_masks_keep_each_unit_with_probability_1_minus_p(p):
    """Over 2^20 draws the kept fraction is within 5 standard errors of
    1 - p, and the kept units are independent of their neighbours."""
    rng = np.random.default_rng(0)
    mask = dropout.draw(rng, _Net(), 64, p)[0]
    kept = dropout.scaled(mask, p) > 0
    n = kept.size
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    both = (kept[..., 1:] & kept[..., :-1]).mean()  # adjacent pairs: (1-p)^2 if independent
    assert abs(both - (1 - p) ** 2) < 5 * np.sqrt(p * (1 - p) / n)


def test_torch_dropout_block_matches_numpy_reference():
    """relu, keep with scale 1/(1-p), 2x2 max: the torch block (the C kernel
    where built) against a loop in numpy on the raw uint16 draws."""
    rng = np.random.default_rng(1)
    p = 0.25
    y = rng.normal(size=(2, 3, 6, 5)).astype(np.float32)
    mask = rng.integers(0, dropout.LEVELS, size=y.shape, dtype=np.uint16)
    got = BACKEND.block(torch.from_numpy(y), mask, p).numpy()
    want = np.zeros((2, 3, 3, 2), np.float32)
    for idx in np.ndindex(want.shape):
        b, c, i, j = idx
        window = [max(y[b, c, 2 * i + a, 2 * j + d], 0) * (mask[b, c, 2 * i + a, 2 * j + d] >= round(p * 65536))
                  / (1 - p) for a in (0, 1) for d in (0, 1)]
        want[idx] = max(window)
    np.testing.assert_allclose(got, want, rtol=1e-6)


class _Net:
    """A network's shape as :func:`fxnn.models.dropout.draw` reads it: one conv layer of 16 channels, 32x32."""
    input_shape = (1, 32, 32)
    convs = (type("Conv", (), {"out_channels": 16})(),)
