"""The PyTensor C op of the fixed stage (kernels/pytensor_fixed_op.py) against
the numpy references and finite differences, and its place in the graph."""
import numpy as np
import pytensor
import pytensor.tensor as pt
import pytest

from fxnn.kernels.fixed_kernels import fixed_stage_grad_reference, fixed_stage_reference
from fxnn.models.pytensor.engine import compile_mode
from fxnn.kernels.pytensor_fixed_op import FixedAdjointOp, FixedStageOp
from fxnn.models.pytensor.backend import fixed_stage

pytestmark = pytest.mark.skipif(not pytensor.config.cxx, reason="PyTensor has no C compiler (config.cxx)")


def compiled(dtype, threads=None):
    x, g = pt.tensor4("x", dtype=dtype), pt.tensor4("g", dtype=dtype)
    y = FixedStageOp(threads)(x)
    return pytensor.function([x, g], [y, pytensor.grad(pt.sum(y * g), x)], mode=compile_mode())


@pytest.mark.parametrize("dtype,tol", [("float32", 2e-5), ("float64", 1e-12)])
def test_forward_and_gradient_match_the_references_on_odd_shapes(dtype, tol):
    f = compiled(dtype)
    rng = np.random.default_rng(0)
    # one compiled function over several shapes: the output buffer it keeps
    # between calls must be replaced when the shape changes
    for shape in [(1, 1, 1, 1), (2, 3, 13, 7), (1, 2, 1, 9), (3, 1, 30, 2), (2, 3, 13, 7)]:
        x = rng.standard_normal(shape).astype(dtype)
        g = rng.standard_normal((shape[0], 5 * shape[1]) + shape[2:]).astype(dtype)
        y, dx = f(x, g)
        assert y.dtype == dtype and dx.dtype == dtype
        np.testing.assert_allclose(y, fixed_stage_reference(x.astype(np.float64)), rtol=tol, atol=10 * tol)
        np.testing.assert_allclose(dx, fixed_stage_grad_reference(g.astype(np.float64)), rtol=tol, atol=10 * tol)


def test_runs_as_c_code_in_the_engines_mode(monkeypatch):
    """In the engine's mode both ops run compiled: perform() is never called."""
    def refuse(*args):
        raise AssertionError("perform() ran instead of the C code")
    monkeypatch.setattr(FixedStageOp, "perform", refuse)
    monkeypatch.setattr(FixedAdjointOp, "perform", refuse)
    f = compiled("float32")
    ops = [type(node.op) for node in f.maker.fgraph.toposort()]
    assert FixedStageOp in ops and FixedAdjointOp in ops
    x = np.ones((1, 1, 3, 3), np.float32)
    y, dx = f(x, np.ones((1, 5, 3, 3), np.float32))
    np.testing.assert_allclose(y, fixed_stage_reference(x), rtol=1e-6)


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_count_changes_no_number(threads):
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((2, 15, 9, 8))
    want = compiled("float64", 2)(x, g)
    for got, ref in zip(compiled("float64", threads)(x, g), want):
        np.testing.assert_array_equal(got, ref)


def test_first_and_second_derivatives_by_finite_differences():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 5, 4))
    g = rng.standard_normal((2, 10, 5, 4))
    pytensor.gradient.verify_grad(lambda v: FixedStageOp()(v), [x], rng=rng, mode=compile_mode())
    pytensor.gradient.verify_grad(lambda v: FixedAdjointOp()(v), [g], rng=rng, mode=compile_mode())


def test_the_python_fallback_gives_the_same_numbers():
    """perform() (the numpy references) runs where PyTensor has no compiler."""
    x = pt.tensor4("x", dtype="float64")
    y = FixedStageOp()(x)
    fns = [pytensor.function([x], [y, pytensor.grad(pt.sum(y ** 2), x)], mode=mode)
           for mode in (compile_mode(), pytensor.compile.mode.Mode(linker="py", optimizer="fast_run"))]
    xv = np.random.default_rng(3).standard_normal((2, 3, 6, 7))
    for got, want in zip(fns[0](xv), fns[1](xv)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_the_layer_uses_the_op_and_bad_input_is_refused():
    x = pt.tensor4("x", dtype="float32")
    assert isinstance(fixed_stage(x).owner.op, FixedStageOp)
    with pytest.raises(TypeError, match="4-D float32 or float64"):
        FixedStageOp()(pt.matrix("m", dtype="float32"))
    with pytest.raises(TypeError, match="4-D float32 or float64"):
        FixedStageOp()(pt.tensor4("i", dtype="int32"))
    with pytest.raises(ValueError, match="multiple of 5"):
        FixedAdjointOp()(pt.tensor4("g", dtype="float32", shape=(None, 7, None, None)))
