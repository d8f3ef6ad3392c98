"""The PyTorch fixed stage against the dense numpy reference, a dense conv2d
built from the same kernels (strides 1, 2 and 3, odd sizes that leave a
remainder), gradcheck and torch.compile; on the CPU once with the C kernel
(kernels/fixed_cpu.c) and once with the separable torch ops."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from fxnn.kernels.fixed_kernels import KERNELS, fixed_stage_grad_reference, fixed_stage_reference  # noqa: E402
from fxnn.kernels import torch_fixed  # noqa: E402
from fxnn.kernels.capabilities import capability, fixed_stage as fixed_stage_name  # noqa: E402
from fxnn.kernels.torch_fixed import backward_torch, fixed_stage, fixed_stage_adjoint  # noqa: E402

SHAPES = [(1, 1, 1, 1), (1, 1, 1, 5), (2, 3, 2, 3), (3, 17, 28, 28), (5, 2, 33, 17), (1, 64, 6, 7)]


@pytest.fixture(autouse=True, params=["C kernel", "torch ops"])
def implementation(request, monkeypatch):
    """Every test runs on both CPU implementations behind fixed_stage."""
    if request.param == "torch ops":
        request.getfixturevalue("without_c_build")
    elif not capability("fixed") and os.environ.get("FXNN_REQUIRE_NATIVE") != "1":
        pytest.skip("fxnn.kernels._fixed_cpu not built; build it with: pip install -e .")
    return request.param


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_forward_matches_the_dense_reference(shape, dtype, tol):
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))
    want = fixed_stage_reference(x.double().numpy())
    np.testing.assert_allclose(fixed_stage(x).double().numpy(), want, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_the_adjoint_reference(shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn((shape[0], 5 * shape[1]) + shape[2:], dtype=torch.float64)
    fixed_stage(x).backward(g)
    np.testing.assert_allclose(x.grad.numpy(), fixed_stage_grad_reference(g.numpy()), rtol=1e-12, atol=1e-12)


def test_equals_a_grouped_conv2d_with_the_same_kernels():
    x = torch.randn(4, 6, 9, 11, dtype=torch.float64)
    weight = torch.tensor(KERNELS)[:, None].repeat(6, 1, 1, 1)  # (5M, 1, 3, 3), channel 5m+k
    np.testing.assert_allclose(fixed_stage(x).numpy(), F.conv2d(x, weight, padding=1, groups=6).numpy(),
                               rtol=1e-12, atol=1e-12)


def test_gradcheck_first_and_second_order():
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fixed_stage, (x,))
    assert torch.autograd.gradgradcheck(fixed_stage, (x,))


def test_backward_alone_is_the_adjoint_of_forward():
    x, g = torch.randn(2, 4, 8, 3, dtype=torch.float64), torch.randn(2, 20, 8, 3, dtype=torch.float64)
    assert torch.sum(fixed_stage(x) * g).item() == pytest.approx(torch.sum(x * backward_torch(g)).item(), rel=1e-12)


def grouped_conv(x, stride):
    """The fixed stage as a grouped dense conv2d (the independent reference)."""
    weight = torch.tensor(KERNELS, dtype=x.dtype)[:, None].repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(x, weight, stride=stride, padding=1, groups=x.shape[1])


STRIDED = [(2, (2, 3, 7, 9)), (2, (1, 2, 8, 8)), (2, (2, 1, 1, 1)), (2, (1, 2, 2, 3)), (3, (2, 2, 7, 5))]


@pytest.mark.parametrize("stride,shape", STRIDED)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_strided_forward_and_adjoint_match_a_strided_conv2d(stride, shape, dtype, tol):
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)
    want = grouped_conv(x, stride)
    g = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (want_dx,) = torch.autograd.grad(want, x, g)
    got = fixed_stage(x.detach().to(dtype), stride)
    assert got.shape == want.shape == (shape[0], 5 * shape[1], (shape[2] - 1) // stride + 1,
                                       (shape[3] - 1) // stride + 1)
    np.testing.assert_allclose(got.double().numpy(), want.detach().numpy(), rtol=tol, atol=tol * 10)
    dx = fixed_stage_adjoint(g.to(dtype), stride, shape[2], shape[3])
    np.testing.assert_allclose(dx.double().numpy(), want_dx.numpy(), rtol=tol, atol=tol * 10)
    np.testing.assert_allclose(backward_torch(g, stride, shape[2], shape[3]).numpy(), want_dx.numpy(),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,shape", [(2, (1, 2, 5, 3)), (2, (1, 1, 4, 4))])
def test_strided_gradcheck_first_and_second_order(stride, shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fixed_stage(t, stride), (x,))
    assert torch.autograd.gradgradcheck(lambda t: fixed_stage(t, stride), (x,))
    g = torch.randn(fixed_stage(x, stride).shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fixed_stage_adjoint(t, stride, shape[2], shape[3]), (g,))


@pytest.mark.parametrize("stride", [1, 2])
def test_opcheck_and_torch_compile_without_a_graph_break(stride):
    x = torch.randn(2, 3, 7, 9, requires_grad=True)
    torch.library.opcheck(torch_fixed.fixed_stage_op, (x, stride))
    g = torch.randn(2, 15, (7 - 1) // stride + 1, (9 - 1) // stride + 1)
    torch.library.opcheck(fixed_stage_adjoint, (g, stride, 7, 9))
    torch._dynamo.reset()
    results = []
    for f in (torch.compile(fixed_stage, fullgraph=True), fixed_stage):
        xi = x.detach().clone().requires_grad_(True)
        y = f(xi, stride)
        results.append((y.detach(), *torch.autograd.grad((y * y).sum(), xi)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match="4-D"):
        fixed_stage(torch.zeros(3, 4, 5))
    for stride in (0, 1.5, True):
        with pytest.raises(ValueError, match="stride must be an int >= 1"):
            fixed_stage(torch.zeros(1, 1, 4, 4), stride)
    g = torch.zeros(1, 5, 4, 5)
    with pytest.raises(ValueError, match="needs the input's size"):
        fixed_stage_adjoint(g, 2)
    with pytest.raises(ValueError, match="not the stride-2 output of a 9 x 9 input"):
        fixed_stage_adjoint(g, 2, 9, 9)


def test_cpu_implementation_is_named(implementation):
    want = "C fixed stage" if implementation == "C kernel" else "separable torch ops"
    assert fixed_stage_name("torch", "cpu").startswith(want)

