"""The fused fxnn layer's Triton kernels (:mod:`fxnn.kernels.fused_triton`) on
PyTorch CUDA tensors: the same three calls as :mod:`fxnn.kernels.cpu_fused`,
each at stride 1 or more.

Importing this module needs neither triton nor a GPU (the kernels' module is
imported on first use); :func:`fxnn.kernels.capabilities.capability`
("fused" on "cuda") says whether they can run here, and why not.
"""
import torch

def _kernels():
    from . import fused_triton
    return fused_triton


def forward(x, weight, bias=None, stride=1):
    """y = bias + W^T fixed(x) at every ``stride``-th pixel: (B, M, H, W) ->
    (B, N, (H-1)//stride + 1, (W-1)//stride + 1)."""
    with torch.cuda.device(x.device):
        return _kernels().forward(x, weight, bias, stride)


def weight_grad(x, dy, stride=1):
    """(dweight (5M, N), dbias (N,)) for output gradient dy of the layer at ``stride``."""
    with torch.cuda.device(x.device):
        return _kernels().weight_grad(x, dy, stride)


def input_grad(dy, weight, stride=1, size=None):
    """dx (B, M, H, W) for output gradient dy (B, N, Ho, Wo) of the layer at
    ``stride``; ``size`` is the input's (H, W), needed at stride > 1."""
    with torch.cuda.device(dy.device):
        return _kernels().input_grad(dy, weight, stride, size)
