"""The fused fxnn layer's Triton kernels (:mod:`fxnn.kernels.fused_triton`) on
PyTorch CUDA tensors: the same three calls as :mod:`fxnn.kernels.cpu_fused`,
each at stride 1 or more.

Importing this module needs neither triton nor a GPU (the kernels' module is
imported on first use); :func:`available` says whether they can run here,
and why not.
"""
import importlib.util

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_status = None


#: The oldest GPUs the kernels run on (Triton's floor), and the oldest whose
#: tensor cores take bfloat16.
MIN_CAPABILITY = (7, 5)
BFLOAT16_CAPABILITY = (8, 0)


def _probe():
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed; install the extra: pip install -e .[cuda]"
    if not torch.cuda.is_available():
        return False, "no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False)"
    capability = torch.cuda.get_device_capability()
    if capability < MIN_CAPABILITY:
        return False, (f"{torch.cuda.get_device_name()} is sm_{capability[0]}{capability[1]}; the Triton kernels "
                       f"need sm_{MIN_CAPABILITY[0]}{MIN_CAPABILITY[1]} or newer")
    return True, "Triton fused kernel (kernels/fused_triton.py)"


def available():
    """(True, description) when the Triton kernels can run on CUDA tensors
    here, else (False, why). Decided once per process."""
    global _status
    if _status is None:
        _status = _probe()
    return _status


def runs(dtype):
    """Whether the kernels run on CUDA tensors of ``dtype`` here."""
    if dtype not in DTYPES or not available()[0]:
        return False
    return dtype != torch.bfloat16 or torch.cuda.get_device_capability() >= BFLOAT16_CAPABILITY


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
