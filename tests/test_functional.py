"""fxnn.functional: fixed_conv2d in PyTorch's weight order against a dense
F.conv2d with the folded kernels, the module's forward, the weight layouts,
its refusals, and the package's lazy names."""
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fxnn  # noqa: E402
from conftest import ROOT  # noqa: E402
from fxnn.models.fixed_bases import BASES  # noqa: E402


def test_the_package_names_load_lazily_without_torch():
    code = ("import sys, fxnn; print('torch' in sys.modules); fxnn.functional, fxnn.convert, fxnn.conversion; "
            "print('torch' in sys.modules, callable(fxnn.convert), fxnn.conversion.convert is fxnn.convert)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["False", "True", "True", "True"], done.stderr
    assert {"functional", "convert", "conversion", "FixedConv2d"} <= set(dir(fxnn))


@pytest.mark.parametrize("basis", ["fxnn", "gauss", "array"])
@pytest.mark.parametrize("stride", [1, 2])
def test_fixed_conv2d_is_the_dense_conv_of_the_folded_weight(basis, stride):
    g = torch.Generator().manual_seed(stride)
    kernels = torch.randn(4, 3, 3, generator=g, dtype=torch.float64) if basis == "array" \
        else torch.from_numpy(BASES[basis].copy())
    x = torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64)
    w = torch.randn(5, 3, len(kernels), generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    dense = torch.einsum("nmk,kab->nmab", w, kernels)
    y = fxnn.functional.fixed_conv2d(x, w, b, stride, basis=kernels.numpy() if basis == "array" else basis)
    np.testing.assert_allclose(y.numpy(), F.conv2d(x, dense, b, stride=stride, padding=1).numpy(),
                               rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(fxnn.functional.dense_weight(w, kernels).numpy(), dense.numpy(), rtol=1e-12)


def test_the_module_forward_is_the_function():
    layer = fxnn.FixedConv2d(3, 4, stride=2, path="fixed").double()
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    want = fxnn.functional.fixed_conv2d(x, layer.weight, layer.bias, stride=2, path="fixed")
    assert torch.equal(layer(x), want)


def test_the_layouts_are_inverse_views():
    w = torch.randn(4, 3, 5)
    record = fxnn.functional.record_layout(w)
    assert record.shape == (15, 4) and record[5 * 2 + 3, 1] == w[1, 2, 3]
    assert torch.equal(fxnn.functional.pytorch_layout(record), w)
    assert torch.equal(fxnn.functional.pytorch_layout(record.contiguous()), w)


def test_bad_arguments_are_refused_in_one_line():
    x, w = torch.zeros(1, 3, 5, 5), torch.zeros(4, 3, 5)
    cases = [
        ((x, torch.zeros(15, 4)), {}, r"weight must be \(out_channels, in_channels, 5\) for a basis of 5 kernels, "
                                      r"got shape \(15, 4\)"),
        ((torch.zeros(1, 2, 5, 5), w), {}, r"input must be \(B, 3, H, W\) or \(3, H, W\)"),
        ((x, w), {"path": "fast"}, "path must be one of auto, fixed, fused, folded"),
        ((x, torch.zeros(4, 3, 9)), {"basis": "dct", "path": "fused"}, "path 'fused' computes fxnn's five kernels"),
        ((x, w), {"basis": "dtc"}, "unknown basis 'dtc'"),
    ]
    for args, kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as raised:
            fxnn.functional.fixed_conv2d(*args, **kwargs)
        assert "\n" not in str(raised.value)
