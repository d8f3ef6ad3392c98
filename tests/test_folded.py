"""The folded path: an fxnn layer as one dense 3x3 conv with kernels
W_eff[n, m] = sum_k W[5m+k, n] K_k, against a dense scipy correlation and
against the fixed-stage path, forward and gradient, in both engines. (The
fused path: tests/test_torch_fused.py, tests/test_pytensor_fused_op.py.)"""
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from scipy.signal import correlate2d

from fxnn.models.architecture import build_network
from fxnn.kernels.fixed_kernels import KERNELS, fixed_stage_reference, fold_weights
from fxnn.models.pytensor.engine import PyTensorEngine, compile_mode
from fxnn.models.pytensor.backend import fxnn_conv

SHAPES = [(2, 3, 7, 5, 4), (1, 1, 1, 1, 2), (3, 2, 4, 9, 1)]  # B, M, H, W, N


@pytest.mark.parametrize("b, m, h, w, n", SHAPES)
def test_fold_weights_gives_the_dense_conv_of_fixed_stage_then_1x1(b, m, h, w, n):
    rng = np.random.default_rng(0)
    x, wt = rng.normal(size=(b, m, h, w)), rng.normal(size=(5 * m, n))
    fixed_then_1x1 = np.einsum("bchw,cn->bnhw", fixed_stage_reference(x), wt)
    w_eff = fold_weights(wt)
    assert w_eff.shape == (n, m, 3, 3)
    dense = np.array([[sum(correlate2d(x[i, j], w_eff[o, j], mode="same") for j in range(m))
                       for o in range(n)] for i in range(b)])
    np.testing.assert_allclose(dense, fixed_then_1x1, rtol=1e-12, atol=1e-12)


def test_fold_weights_puts_each_row_on_its_kernel():
    w = np.zeros((10, 1))
    w[5 * 1 + 2, 0] = 3.0  # input channel 1, kernel 2 (sobel_x)
    folded = fold_weights(w)
    np.testing.assert_array_equal(folded[0, 1], 3.0 * KERNELS[2])
    np.testing.assert_array_equal(folded[0, 0], 0.0)
    with pytest.raises(ValueError, match="not a multiple of 5"):
        fold_weights(np.zeros((7, 2)))


def _pytensor_layer(path):
    x, w, b = pt.tensor4("x", dtype="float64"), pt.matrix("w", dtype="float64"), pt.vector("b", dtype="float64")
    g = pt.tensor4("g", dtype="float64")
    out = fxnn_conv(x, w, b, path)
    grads = pytensor.grad((out * g).sum(), [x, w, b])
    return pytensor.function([x, w, b, g], [out] + grads, mode=compile_mode())


@pytest.mark.parametrize("b, m, h, w, n", SHAPES)
def test_pytensor_folded_equals_fixed_forward_and_gradient(b, m, h, w, n):
    rng = np.random.default_rng(1)
    args = (rng.normal(size=(b, m, h, w)), rng.normal(size=(5 * m, n)), rng.normal(size=n),
            rng.normal(size=(b, n, h, w)))
    fixed, folded = _pytensor_layer("fixed")(*args), _pytensor_layer("folded")(*args)
    for name, a, c in zip(("out", "dx", "dw", "db"), fixed, folded):
        np.testing.assert_allclose(c, a, rtol=1e-10, atol=1e-10, err_msg=name)


def test_engines_give_the_same_gradients_on_either_path():
    network = build_network("fxnn", (1, 12, 10))
    params = network.init_params(np.random.default_rng(2))
    rng = np.random.default_rng(3)
    x, y = rng.random((6, 1, 12, 10)).astype(np.float64), rng.integers(0, 10, 6).astype(np.int32)
    engines = [PyTensorEngine(network, params, dtype="float64", fxnn_path=p) for p in ("fixed", "folded")]
    pytest.importorskip("torch")
    from fxnn.models.torch.engine import TorchEngine
    engines += [TorchEngine(network, params, dtype="float64", fxnn_path=p) for p in ("fixed", "folded")]
    grads = [e.gradients(x, y) for e in engines]
    for other in grads[1:]:
        for name in grads[0]:
            np.testing.assert_allclose(other[name], grads[0][name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_the_path_an_engine_reports_is_the_one_it_computes(monkeypatch):
    """With the fixed stage made to fail, the engine that says "folded" still
    trains and the one that says "fixed" cannot: the description follows the
    computation, not the flag."""
    pytest.importorskip("torch")
    from fxnn.models.torch import backend as torch_backend
    from fxnn.models.torch.engine import TorchEngine
    network = build_network("fxnn", (1, 12, 10))
    params = network.init_params(np.random.default_rng(2))
    rng = np.random.default_rng(3)
    x, y = rng.random((6, 1, 12, 10)).astype(np.float32), rng.integers(0, 10, 6).astype(np.int32)
    engines = {p: TorchEngine(network, params, fxnn_path=p) for p in ("fixed", "folded")}

    def no_fixed_stage(*args, **kwargs):
        raise AssertionError("the fixed stage ran")
    monkeypatch.setattr(torch_backend, "fixed_stage", no_fixed_stage)
    assert set(engines["folded"].gradients(x, y)) == set(params)
    assert engines["folded"].describe_paths()[0] == "conv0: train folded, valid -; conv1: train folded, valid -"
    with pytest.raises(AssertionError, match="the fixed stage ran"):
        engines["fixed"].gradients(x, y)
    monkeypatch.undo()
    engines["fixed"].gradients(x, y)
    assert engines["fixed"].describe_paths()[0] == "conv0: train fixed, valid -; conv1: train fixed, valid -"
