"""The PyTensor ops of the fused layer (kernels/pytensor_fused_op.py) against
the numpy references, second derivatives (their gradients are the three ops
again) against the differentiable fixed path, their place in the compiled
graph, and the engine on the fused path."""
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from fxnn.models.architecture import build_network
from fxnn.kernels.fixed_kernels import fixed_conv_grad_reference, fixed_conv_reference
from fxnn.models.pytensor.engine import PyTensorEngine, compile_mode
from fxnn.kernels.pytensor_fused_op import FusedConvOp, FusedInputGradOp, FusedWeightGradOp
from fxnn.models.pytensor.backend import fxnn_conv

pytestmark = pytest.mark.skipif(not pytensor.config.cxx, reason="PyTensor has no C compiler (config.cxx)")


def symbols():
    return (pt.tensor4("x", dtype="float32"), pt.matrix("w", dtype="float32"), pt.vector("b", dtype="float32"),
            pt.tensor4("g", dtype="float32"))


def values(b, m, n, h, w, seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return f(b, m, h, w), f(5 * m, n), f(n), f(b, n, h, w)


def close(got, want):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(want).max())))


def test_forward_and_gradients_match_the_references_on_odd_shapes():
    x, w, b, g = symbols()
    y = FusedConvOp()(x, w, b)
    f = pytensor.function([x, w, b, g], [y] + pytensor.grad(pt.sum(y * g), [x, w, b]), mode=compile_mode())
    # one compiled function over several shapes: kept output buffers must be replaced
    for shape in [(1, 1, 1, 1, 1), (2, 3, 5, 7, 9), (3, 4, 17, 13, 6), (1, 2, 3, 1, 20), (2, 3, 5, 7, 9)]:
        xv, wv, bv, gv = values(*shape)
        out = f(xv, wv, bv, gv)
        assert all(o.dtype == np.float32 for o in out)
        for got, want in zip(out, [fixed_conv_reference(xv, wv, bv), *fixed_conv_grad_reference(xv, wv, gv)]):
            close(got, want)


def test_runs_as_c_code_and_perform_is_the_same_reference(monkeypatch):
    x, w, b, g = symbols()
    y = FusedConvOp()(x, w, b)
    outputs = [y] + pytensor.grad(pt.sum(y * g), [x, w, b])
    args = values(2, 3, 4, 5, 6, seed=1)
    python = pytensor.function([x, w, b, g], outputs, mode=pytensor.compile.mode.Mode(linker="py"))
    want = python(*args)  # perform(): the numpy references

    def refuse(*a):
        raise AssertionError("perform() ran instead of the C code")
    for op in (FusedConvOp, FusedWeightGradOp, FusedInputGradOp):
        monkeypatch.setattr(op, "perform", refuse)
    f = pytensor.function([x, w, b, g], outputs, mode=compile_mode())
    ops = {type(node.op) for node in f.maker.fgraph.toposort()}
    assert {FusedConvOp, FusedWeightGradOp, FusedInputGradOp} <= ops
    for got, ref in zip(f(*args), want):
        close(got, ref)


def test_second_derivatives_equal_those_of_the_fixed_path():
    """The ops' own gradients: d/dw and d/dg of a function of dL/dx and dL/dw."""
    x, w, b, g = symbols()
    results = []
    for path in ("fused", "fixed"):
        y = fxnn_conv(x, w, b, path)
        gx, gw = pytensor.grad(pt.sum(y * g), [x, w])
        cost = pt.sum(gx ** 2) + pt.sum(gw ** 2) + pt.sum(gx * x)
        results.append(pytensor.function([x, w, b, g], pytensor.grad(cost, [x, w, g]), mode=compile_mode())(
            *values(2, 2, 3, 6, 5, seed=2)))
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_thread_count_changes_no_number():
    """One thread against the default (each count is a compile of its own)."""
    x, w, b, g = symbols()

    def compiled(threads):
        y = FusedConvOp(threads)(x, w, b)
        return pytensor.function([x, w, b, g], [y] + pytensor.grad(pt.sum(y * g), [x, w, b]), mode=compile_mode())
    args = values(3, 5, 7, 11, 9, seed=3)
    for got, want in zip(compiled(1)(*args), compiled(None)(*args)):
        np.testing.assert_array_equal(got, want)


def test_an_isa_the_cpu_lacks_is_a_clear_error():
    x, w, b, _ = symbols()
    f = pytensor.function([x, w, b], FusedConvOp(isa="sse9")(x, w, b), mode=compile_mode())
    with pytest.raises(ValueError, match="FXNN_ISA=sse9"):
        f(*values(1, 1, 2, 3, 3)[:3])


def test_the_engine_on_the_fused_path_matches_the_fixed_path():
    net = build_network("fxnn", (1, 10, 10))
    params = net.init_params(np.random.default_rng(0))
    rng = np.random.default_rng(1)
    x, y = rng.random((8, 1, 10, 10), dtype=np.float32), rng.integers(0, 10, 8).astype(np.int32)
    engines = {p: PyTensorEngine(net, params, dropout=0.25, seed=5, fxnn_path=p) for p in ("fused", "fixed")}
    for _ in range(3):
        losses = {p: e.train_step(x, y, 0.1) for p, e in engines.items()}
        np.testing.assert_allclose(losses["fused"], losses["fixed"], rtol=1e-4)
    for name, v in engines["fused"].get_params().items():
        np.testing.assert_allclose(v, engines["fixed"].get_params()[name], rtol=1e-4, atol=1e-5)
    assert engines["fused"].describe_paths()[0] == "conv0: train fused, valid fused; conv1: train fused, valid fused"


def test_the_engine_refuses_the_fused_path_in_float64():
    net = build_network("fxnn", (1, 8, 8))
    with pytest.raises(ValueError, match="fused needs float32"):
        PyTensorEngine(net, net.init_params(np.random.default_rng(0)), dtype="float64", fxnn_path="fused")
