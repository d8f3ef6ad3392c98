"""Cases of tests/test_triton_fused.py run by Triton's interpreter
(``TRITON_INTERPRET=1``, which must be set before triton is imported, so
that file runs this one in a Python process of its own; collected alone,
without the variable, it skips).

The fused fxnn layer's Triton kernels (kernels/fused_triton.py) on CPU
tensors, forward and both gradients, float32, bfloat16 and float16, on small
odd shapes (1x1, 1xN and Nx1 images, sizes that are no multiple of any tile,
more channels than a chunk, several shares of the weight gradient's sum and
several tiles of the input gradient) against the float64 numpy references
of kernels/fixed_kernels.py, with torch.empty handing out NaN-filled tensors so
that an unwritten output element or an unwritten scratch value read fails.
At strides 2 and 3 (odd and even sizes, so that striding leaves a remainder
or not) the forward and all three gradients against a dense strided
``F.conv2d`` with the folded kernel and its autograd, in float64
(tests/strided_conv.py), directly and through kernels/cuda_fused.py.
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from strided_conv import dense_conv_reference  # noqa: E402

from fxnn.kernels.fixed_kernels import fixed_conv_grad_reference, fixed_conv_reference  # noqa: E402

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by tests/test_triton_fused.py in a process of its own with TRITON_INTERPRET=1",
                allow_module_level=True)

from fxnn.kernels import fused_triton as ft_module  # noqa: E402


@pytest.fixture
def ft():
    return ft_module


#: (rtol, atol as a fraction of the largest reference value). bfloat16 and
#: float16: the responses are rounded to the dtype before the dot and the
#: result on the way out (the interpreter truncates where a GPU rounds).
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.float16: (2 ** -9, 2 ** -9), torch.bfloat16: (2 ** -6, 2 ** -6)}

#: (B, M, N, H, W)
SHAPES = [(1, 1, 1, 1, 1), (2, 3, 5, 7, 5), (3, 17, 4, 9, 6), (1, 2, 20, 1, 13), (2, 1, 3, 13, 1),
          (3, 2, 3, 19, 19)]


def tensors(shape, dtype, seed=0):
    b, m, n, h, w = shape
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).to(dtype) for s in ((b, m, h, w), (5 * m, n), (n,), (b, n, h, w))]


def assert_matches(got, want, dtype):
    rtol, atol = TOLERANCE[dtype]
    assert got.dtype == dtype
    np.testing.assert_allclose(got.float().numpy(), want, rtol=rtol, atol=atol * max(1.0, float(np.abs(want).max())))


def check_layer(ft, shape, dtype):
    x, w, b, dy = tensors(shape, dtype)
    f64 = [t.double().numpy() for t in (x, w, b, dy)]
    assert_matches(ft.forward(x, w, b), fixed_conv_reference(*f64[:3]), dtype)
    assert_matches(ft.forward(x, w), fixed_conv_reference(*f64[:2]), dtype)
    dx, dw, db = fixed_conv_grad_reference(f64[0], f64[1], f64[3])
    got_dw, got_db = ft.weight_grad(x, dy)
    assert_matches(got_dw, dw, dtype)
    assert_matches(got_db, db, dtype)
    assert_matches(ft.input_grad(dy, w), dx, dtype)


@pytest.fixture
def nan_filled(monkeypatch):
    """torch.empty hands out NaN-filled float tensors, so that an output
    element or a scratch value the kernels read before writing fails."""
    real = torch.empty

    def empty(*args, **kwargs):
        t = real(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t
    monkeypatch.setattr(torch, "empty", empty)


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_forward_and_both_gradients_match_the_references(ft, shape, nan_filled):
    check_layer(ft, shape, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 5), (3, 17, 4, 9, 6)])
def test_half_precisions_match_the_references(ft, shape, dtype, nan_filled):
    check_layer(ft, shape, dtype)


#: (stride, (B, M, N, H, W)): odd sizes with a remainder, even ones without,
#: single pixels, more channels than a chunk, several tiles of dY's grid.
STRIDED = [(2, (2, 3, 5, 7, 9)), (2, (1, 2, 3, 8, 8)), (2, (2, 1, 2, 1, 1)), (2, (1, 2, 3, 2, 3)),
           (2, (3, 17, 4, 9, 6)), (2, (1, 2, 3, 15, 17)), (3, (2, 3, 5, 7, 8))]


@pytest.mark.parametrize("stride,shape", STRIDED)
def test_strided_forward_and_gradients_match_a_strided_dense_conv2d(ft, stride, shape, nan_filled):
    b, m, n, h, w = shape
    x, weight, bias, _ = tensors(shape, torch.float32)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    dy = torch.randn(b, n, ho, wo, generator=torch.Generator().manual_seed(1))
    y, dx, dw, db = dense_conv_reference(x, weight, bias, dy, stride)
    assert ft.forward(x, weight, bias, stride=stride).shape == (b, n, ho, wo)
    assert_matches(ft.forward(x, weight, bias, stride=stride), y, torch.float32)
    got_dw, got_db = ft.weight_grad(x, dy, stride=stride)
    assert_matches(got_dw, dw, torch.float32)
    assert_matches(got_db, db, torch.float32)
    assert_matches(ft.input_grad(dy, weight, stride=stride, size=(h, w)), dx, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_strided_half_precisions_match_the_reference(ft, dtype, nan_filled):
    x, weight, bias, _ = tensors((2, 3, 5, 7, 9), dtype)
    dy = torch.randn(2, 5, 4, 5, generator=torch.Generator().manual_seed(1)).to(dtype)
    y, dx, dw, db = dense_conv_reference(x, weight, bias, dy, 2)
    assert_matches(ft.forward(x, weight, bias, stride=2), y, dtype)
    got_dw, got_db = ft.weight_grad(x, dy, stride=2)
    assert_matches(got_dw, dw, dtype)
    assert_matches(ft.input_grad(dy, weight, stride=2, size=(7, 9)), dx, dtype)


def test_cuda_fused_passes_the_stride_and_size_on(ft, monkeypatch):
    """kernels/cuda_fused.py's three calls (those of kernels/torch_fused.py)
    on the interpreted kernels, its CUDA device guard made a no-op for CPU tensors."""
    import contextlib
    from fxnn.kernels import cuda_fused
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    x, weight, bias, _ = tensors((2, 3, 5, 7, 8), torch.float32)
    dy = torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(1))
    y, dx, dw, db = dense_conv_reference(x, weight, bias, dy, 2)
    assert_matches(cuda_fused.forward(x, weight, bias, stride=2), y, torch.float32)
    got_dw, got_db = cuda_fused.weight_grad(x, dy, stride=2)
    assert_matches(got_dw, dw, torch.float32)
    assert_matches(got_db, db, torch.float32)
    assert_matches(cuda_fused.input_grad(dy, weight, stride=2, size=(7, 8)), dx, torch.float32)


def test_the_shapes_exercise_what_they_claim(ft):
    """Several shares of the weight gradient, several input-gradient tiles
    per image and more channels than a chunk, with the interpreter's tiles."""
    (forward,), (wgrad,), (dgrad,) = (k.configs for k in (ft._forward_kernel, ft._weight_grad_kernel,
                                                         ft._input_grad_kernel))
    assert ft.shares(3 * 19 * 19, 2, 3) == 2
    assert 19 > dgrad.kwargs["TILE_H"] - 2 and 19 > dgrad.kwargs["TILE_W"] - 2
    assert 17 > forward.kwargs["BLOCK_M"] and 17 > wgrad.kwargs["BLOCK_M"] and 20 > forward.kwargs["BLOCK_N"]
    assert (15 - 1) // 2 + 1 > dgrad.kwargs["TILE_H"] - 2 and (17 - 1) // 2 + 1 > dgrad.kwargs["TILE_W"] - 2


def test_the_interpreter_tunes_nothing(ft):
    for kernel in (ft._forward_kernel, ft._weight_grad_kernel, ft._input_grad_kernel):
        assert len(kernel.configs) == 1


def test_bad_arguments_are_refused_clearly(ft):
    x, w, b, dy = tensors((1, 2, 3, 4, 4), torch.float32)
    with pytest.raises(TypeError, match="must share one dtype"):
        ft.forward(x, w.double())
    with pytest.raises(TypeError, match="must share one dtype"):
        ft.input_grad(dy.double(), w.double())
    with pytest.raises(ValueError, match="weight has 10 rows, want 5"):
        ft.forward(x[:, :1], w)
    with pytest.raises(ValueError, match="does not match x"):
        ft.weight_grad(x, dy[:, :, :3])
    with pytest.raises(ValueError, match="must be 4-D"):
        ft.forward(x[0], w)
    for stride in (0, 2.0, True):
        with pytest.raises(ValueError, match="stride must be an int >= 1"):
            ft.forward(x, w, stride=stride)
    with pytest.raises(ValueError, match="does not match x"):
        ft.weight_grad(x, dy, stride=2)
    with pytest.raises(ValueError, match="needs the input's size"):
        ft.input_grad(dy[..., ::2, ::2], w, stride=2)
    with pytest.raises(ValueError, match="not the stride-2 output of a 5 x 4 input"):
        ft.input_grad(dy[..., ::2, ::2], w, stride=2, size=(5, 4))


def test_empty_batches_give_empty_results(ft):
    x, w, b, dy = tensors((0, 2, 3, 4, 4), torch.float32)
    assert ft.forward(x, w, b).shape == (0, 3, 4, 4)
    dw, db = ft.weight_grad(x, dy)
    assert torch.equal(dw, torch.zeros(10, 3)) and torch.equal(db, torch.zeros(3))
    assert ft.input_grad(dy, w).shape == (0, 2, 4, 4)
