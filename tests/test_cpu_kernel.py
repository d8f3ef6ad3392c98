"""The C fixed stage (kernels/fixed_cpu.c through fxnn.kernels._fixed_cpu) against
the dense numpy references, on odd shapes, both dtypes and any thread count,
and its refusal of bad buffers (skipped where the extension is not built:
conftest.native_module)."""

import numpy as np
import pytest
from conftest import native_module

from fxnn.kernels.fixed_kernels import NUM_KERNELS, fixed_stage_grad_reference, fixed_stage_reference

_fixed_cpu = native_module()

#: (B, M, H, W): single pixels, single rows and columns, odd sizes, wide planes.
SHAPES = [(1, 1, 1, 1), (1, 1, 1, 9), (2, 1, 7, 1), (1, 2, 2, 2), (3, 5, 13, 7), (2, 3, 33, 65), (1, 1, 300, 3)]
DTYPES = [(np.float32, 2e-5), (np.float64, 1e-12)]


def forward(x, threads=2):
    b, m, h, w = x.shape
    out = np.full((b * m, NUM_KERNELS, h, w), np.nan, dtype=x.dtype)  # every element must be written
    _fixed_cpu.forward(np.ascontiguousarray(x).reshape(b * m, h, w), out, threads)
    return out.reshape(b, m * NUM_KERNELS, h, w)


def adjoint(g, threads=2):
    b, c, h, w = g.shape
    dx = np.full((b * c // NUM_KERNELS, h, w), np.nan, dtype=g.dtype)
    _fixed_cpu.adjoint(np.ascontiguousarray(g).reshape(b * c // NUM_KERNELS, NUM_KERNELS, h, w), dx, threads)
    return dx.reshape(b, c // NUM_KERNELS, h, w)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_forward_matches_the_dense_reference(shape, dtype, tol):
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    np.testing.assert_allclose(forward(x), fixed_stage_reference(x.astype(np.float64)), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_adjoint_matches_the_dense_reference(shape, dtype, tol):
    b, m, h, w = shape
    g = np.random.default_rng(2).standard_normal((b, NUM_KERNELS * m, h, w)).astype(dtype)
    np.testing.assert_allclose(adjoint(g), fixed_stage_grad_reference(g.astype(np.float64)), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("threads", [1, 3, 7, 1000])
def test_any_thread_count_gives_the_same_numbers(threads):
    """Threads split the planes; more threads than planes is fine."""
    rng = np.random.default_rng(3)
    x, g = rng.standard_normal((2, 3, 9, 10)), rng.standard_normal((2, 15, 9, 10))
    np.testing.assert_array_equal(forward(x, threads), forward(x, 1))
    np.testing.assert_array_equal(adjoint(g, threads), adjoint(g, 1))


def test_adjoint_is_the_transpose_of_forward():
    rng = np.random.default_rng(4)
    x, g = rng.standard_normal((3, 2, 11, 6)), rng.standard_normal((3, 10, 11, 6))
    assert np.sum(forward(x) * g) == pytest.approx(np.sum(x * adjoint(g)), rel=1e-12)


def test_bad_buffers_are_refused_not_read():
    x32, out32 = np.zeros((2, 4, 4), np.float32), np.zeros((2, NUM_KERNELS, 4, 4), np.float32)
    with pytest.raises(ValueError, match="3 dimensions"):
        _fixed_cpu.forward(x32[None], out32, 1)
    with pytest.raises(ValueError, match="float32 or float64"):
        _fixed_cpu.forward(x32.astype(np.int32), out32, 1)
    with pytest.raises(ValueError, match="one dtype"):
        _fixed_cpu.forward(x32, out32.astype(np.float64), 1)
    with pytest.raises(ValueError, match=r"\(P, 5, H, W\)"):
        _fixed_cpu.forward(x32, np.zeros((2, NUM_KERNELS, 4, 5), np.float32), 1)
    with pytest.raises(ValueError, match=r"\(P, 5, H, W\)"):
        _fixed_cpu.adjoint(np.zeros((2, 4, 4, 4), np.float32), x32, 1)
    with pytest.raises((ValueError, BufferError)):  # not C-contiguous
        _fixed_cpu.forward(np.zeros((2, 4, 8), np.float32)[:, :, ::2], out32, 1)
    readonly = out32.copy()
    readonly.setflags(write=False)
    with pytest.raises((ValueError, BufferError)):
        _fixed_cpu.forward(x32, readonly, 1)


def test_the_torch_engine_uses_it_and_gets_the_numbers_of_its_torch_ops():
    """kernels.torch_fixed runs this kernel on CPU tensors; the forward makes the
    same additions in the same order as the separable torch ops, so it changes
    no numbers (at strides 1 and 2), and the adjoint agrees to float32 rounding."""
    torch = pytest.importorskip("torch")
    from fxnn.kernels import capabilities, torch_fixed
    x = torch.randn(3, 7, 19, 12, generator=torch.Generator().manual_seed(5))
    g = torch.randn(3, 35, 19, 12, generator=torch.Generator().manual_seed(6))
    assert capabilities.fixed_stage("torch", "cpu").startswith("C fixed stage")
    assert torch.equal(torch_fixed.fixed_stage(x), torch_fixed.forward_torch(x))
    np.testing.assert_allclose(torch_fixed.fixed_stage_adjoint(g).numpy(), torch_fixed.backward_torch(g).numpy(),
                               rtol=1e-6, atol=1e-5)
    # at stride 2 the kernel's stage is subsampled, the torch ops compute only the pixels kept
    g2 = g[..., ::2, ::2].contiguous()
    assert torch.equal(torch_fixed.fixed_stage(x, 2), torch_fixed.forward_torch(x, 2))
    np.testing.assert_allclose(torch_fixed.fixed_stage_adjoint(g2, 2, 19, 12).numpy(),
                               torch_fixed.backward_torch(g2, 2, 19, 12).numpy(), rtol=1e-6, atol=1e-5)
