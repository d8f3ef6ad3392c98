"""The fxnn layer at any stride as a dense ``F.conv2d`` with the folded
kernel, and its gradients by autograd: the independent reference of the
fused kernels' strided tests (tests/triton_interpreted_cases.py,
tests/test_cuda_fused.py)."""
import numpy as np
import torch
import torch.nn.functional as F

from fxnn.kernels.fixed_kernels import KERNELS, fold_weights


def dense_conv_reference(x, w, b, dy, stride):
    """(y, dx, dw, db) in float64 numpy for input ``x`` (B, M, H, W),
    weight ``w`` (5M, N) (row ``5*m + k``), bias ``b`` (N,) and output
    gradient ``dy``: ``F.conv2d(x, fold(w), b, stride=stride, padding=1)``."""
    x, w, b = (t.detach().cpu().double().requires_grad_(True) for t in (x, w, b))
    # the folded kernel as a function of w, so that autograd gives dw; the same as fold_weights
    dense = torch.einsum("mkn,kac->nmac", w.view(w.shape[0] // 5, 5, -1), torch.tensor(KERNELS))
    np.testing.assert_allclose(dense.detach().numpy(), fold_weights(w.detach().numpy()), rtol=1e-12)
    y = F.conv2d(x, dense, b, stride=stride, padding=1)
    grads = torch.autograd.grad(y, (x, w, b), dy.detach().cpu().double())
    return [t.detach().numpy() for t in (y, *grads)]
