"""The dropout factors the torch engine multiplies by (the block after each
conv layer: tests/test_torch_block.py)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from models import dropout  # noqa: E402


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
