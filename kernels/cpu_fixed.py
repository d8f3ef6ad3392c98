"""The C fixed stage (``kernels/fixed_cpu.c``) on PyTorch CPU tensors.

The same two calls as :mod:`fxnn.kernels.cuda_fixed`: :func:`fixed_forward` and
:func:`fixed_backward` (the adjoint), on float32 or float64 tensors, using
``torch.get_num_threads()`` threads. The extension ``fxnn.kernels._fixed_cpu`` is
built by ``pip install``; where it could not be built,
:func:`fxnn.kernels.capabilities.capability` says why and
``kernels.torch_fixed`` runs its separable torch ops instead.
"""
import torch

from .fixed_kernels import NUM_KERNELS
from .native import module as _fixed_cpu


def fixed_forward(x):
    """(B, M, H, W) -> (B, 5M, H, W), channel ``5m+k``."""
    b, m, h, w = x.shape
    x = x.detach().contiguous()
    out = x.new_empty((b, m * NUM_KERNELS, h, w))
    _fixed_cpu.forward(x.numpy().reshape(b * m, h, w), out.numpy().reshape(b * m, NUM_KERNELS, h, w),
                       torch.get_num_threads())
    return out


def fixed_backward(g):
    """The adjoint: (B, 5M, H, W) -> (B, M, H, W)."""
    b, c, h, w = g.shape
    if c % NUM_KERNELS:
        raise ValueError(f"gradient has {c} channels, not a multiple of {NUM_KERNELS}")
    g = g.detach().contiguous()
    dx = g.new_empty((b, c // NUM_KERNELS, h, w))
    _fixed_cpu.adjoint(g.numpy().reshape(b * c // NUM_KERNELS, NUM_KERNELS, h, w),
                       dx.numpy().reshape(b * c // NUM_KERNELS, h, w), torch.get_num_threads())
    return dx
