"""The fused fxnn layer of ``kernels/fused_cpu.c`` on PyTorch CPU tensors.

:func:`forward`, :func:`weight_grad` and :func:`input_grad` take float32
tensors in the layouts of ``kernels/fixed_kernels.py`` (x (B, M, H, W), weight
(5M, N), y and dy (B, N, H, W)) and use ``torch.get_num_threads()`` threads.
The instruction set is :func:`fxnn.kernels.native.isa`: the best this CPU runs,
or the one named by the environment variable ``FXNN_ISA`` (``avx512``,
``avx2`` or ``portable``), which tests use to run every path the machine
supports. Where the extension could not be built, :func:`available` says why
and the fused path is not offered.
"""
import torch

from . import native
from .fixed_kernels import NUM_KERNELS
from .native import isa
from .native import module as _fixed_cpu


def available():
    """(True, description) when the fused kernels can run, else (False, why)."""
    ok, why = native.fused_available()
    return (True, f"C fused kernel (kernels/fused_cpu.c), {isa()}") if ok else (False, why)


def _array(t):
    return t.detach().contiguous().numpy()


def forward(x, weight, bias=None):
    """y = bias + W^T fixed(x): (B, M, H, W) -> (B, N, H, W)."""
    b, _, h, w = x.shape
    y = x.new_empty((b, weight.shape[1], h, w))
    _fixed_cpu.fused_forward(_array(x), _array(weight), None if bias is None else _array(bias), y.numpy(),
                             torch.get_num_threads(), isa())
    return y


def weight_grad(x, dy, bias=True):
    """(dweight (5M, N), dbias (N,) or None) for output gradient dy."""
    m, n = x.shape[1], dy.shape[1]
    dw = x.new_empty((NUM_KERNELS * m, n))
    db = x.new_empty((n,)) if bias else None
    _fixed_cpu.fused_wgrad(_array(x), _array(dy), dw.numpy(), None if db is None else db.numpy(),
                           torch.get_num_threads(), isa())
    return dw, db


def input_grad(dy, weight):
    """dx (B, M, H, W) for output gradient dy (B, N, H, W)."""
    b, _, h, w = dy.shape
    dx = dy.new_empty((b, weight.shape[0] // NUM_KERNELS, h, w))
    _fixed_cpu.fused_dgrad(_array(dy), _array(weight), dx.numpy(), torch.get_num_threads(), isa())
    return dx
