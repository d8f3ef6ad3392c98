"""PyTensor building blocks against independent numpy/scipy references."""
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest
from scipy.signal import correlate2d

from fxnn.kernels.fixed_kernels import fixed_stage_grad_reference, fixed_stage_reference
from fxnn.models.pytensor.engine import compile_mode
from fxnn.models import network
from fxnn.models.pytensor.backend import BACKEND, conv2d_same, fixed_stage

X = pt.tensor4("x", dtype="float64")
G = pt.tensor4("g", dtype="float64")
#: fixed_stage in the engine's mode (the C op where PyTensor compiles C) and
#: in the Python linker (the op's perform, what runs without a C compiler).
FIXED = {name: (pytensor.function([X], fixed_stage(X), mode=mode),
                pytensor.function([X, G], pytensor.grad(pt.sum(fixed_stage(X) * G), X), mode=mode))
         for name, mode in (("compiled", compile_mode()),
                            ("python", pytensor.compile.mode.Mode(linker="py", optimizer="fast_run")))}


@pytest.mark.parametrize("impl", FIXED)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 2, 3), (1, 2, 1, 5), (3, 4, 28, 28), (2, 5, 33, 17)])
def test_fixed_stage_matches_dense_reference(shape, impl):
    x = np.random.default_rng(0).standard_normal(shape)
    np.testing.assert_allclose(FIXED[impl][0](x), fixed_stage_reference(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", FIXED)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 2, 3), (2, 5, 33, 17)])
def test_fixed_stage_gradient_is_the_adjoint(shape, impl):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    g = rng.standard_normal((shape[0], 5 * shape[1]) + shape[2:])
    np.testing.assert_allclose(FIXED[impl][1](x, g), fixed_stage_grad_reference(g), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_conv2d_same_matches_scipy_correlation(k):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, k, k))
    b = rng.standard_normal(4)
    W, B = pt.tensor4("w", dtype="float64"), pt.vector("b", dtype="float64")
    got = pytensor.function([X, W, B], conv2d_same(X, W, B, k), mode=compile_mode())(x, w, b)
    want = np.array([[sum(correlate2d(x[i, m], w[n, m], mode="same") for m in range(3)) + b[n]
                      for n in range(4)] for i in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_pointwise_is_a_1x1_gemm():
    rng = np.random.default_rng(3)
    x, w, b = rng.standard_normal((2, 10, 4, 5)), rng.standard_normal((10, 7)), rng.standard_normal(7)
    W, B = pt.matrix("w", dtype="float64"), pt.vector("b", dtype="float64")
    got = pytensor.function([X, W, B], network.pointwise(BACKEND, X, W, B), mode=compile_mode())(x, w, b)
    np.testing.assert_allclose(got, np.einsum("bchw,cn->bnhw", x, w) + b[:, None, None], rtol=1e-12)


@pytest.mark.parametrize("hw", [(4, 6), (7, 7), (5, 2)])
def test_max_pool_drops_odd_border(hw):
    x = np.random.default_rng(4).standard_normal((2, 3) + hw)
    got = pytensor.function([X], network.pool(BACKEND, X), mode=compile_mode())(x)
    h2, w2 = hw[0] // 2, hw[1] // 2
    want = np.array([[[[x[b, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max() for j in range(w2)]
                       for i in range(h2)] for c in range(3)] for b in range(2)])
    np.testing.assert_array_equal(got, want)
