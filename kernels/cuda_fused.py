"""The fused fxnn layer's Triton kernels (:mod:`kernels.fused_triton`) on
PyTorch CUDA tensors: the same three calls as :mod:`kernels.cpu_fused`.

Importing this module needs neither triton nor a GPU (the kernels' module is
imported on first use); :func:`available` says whether they can run here,
and why not.
"""
import importlib.util

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_status = None


def _probe():
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed; install the extra: pip install -e .[cuda]"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False)"
    return True, "Triton fused kernel (kernels/fused_triton.py)"


def available():
    """(True, description) when the Triton kernels can run on CUDA tensors
    here, else (False, why). Decided once per process."""
    global _status
    if _status is None:
        _status = _probe()
    return _status


def _kernels():
    from . import fused_triton
    return fused_triton


def forward(x, weight, bias=None):
    """y = bias + W^T fixed(x): (B, M, H, W) -> (B, N, H, W)."""
    return _kernels().forward(x, weight, bias)


def weight_grad(x, dy):
    """(dweight (5M, N), dbias (N,)) for output gradient dy."""
    return _kernels().weight_grad(x, dy)


def input_grad(dy, weight):
    """dx (B, M, H, W) for output gradient dy (B, N, H, W)."""
    return _kernels().input_grad(dy, weight)
