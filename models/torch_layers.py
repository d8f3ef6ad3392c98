"""``FixedConv2d``: the fxnn layer as a drop-in PyTorch module.

    layer = FixedConv2d(64, 128)   # in place of nn.Conv2d(64, 128, 3, padding=1)

The fixed stage (:func:`models.torch_fixed.fixed_stage`, five fixed 3x3
kernels per input channel, nothing trainable) followed by a trainable 1x1
convolution. ``weight`` has shape (5 * in_channels, out_channels), rows in the
5M layout of :mod:`models.fixed_kernels` (row ``5*m + k``), the layout of the
``conv*_w`` parameters in fxnn's records, so weights move between this layer,
both engines and ``.mat`` files unchanged.
"""
import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .architecture import FXNN_1X1_INIT_SCALE
from .fixed_kernels import KERNELS, NUM_KERNELS
from .fxnn_paths import PATHS, resolve_paths
from .torch_fixed import fixed_stage


def pointwise(x, weight, bias=None):
    """1x1 convolution as one batched GEMM: (B, C, H, W) with weight (C, N)
    -> (B, N, H, W). The weight is broadcast to the batch as a stride-0 view,
    so neither the forward nor the gradients copy the (B, C, H*W) tensor
    (``torch.matmul`` of a matrix with a batch transposes the batch into a
    copy, which took 40% of the fixed path's time)."""
    b, c, h, w = x.shape
    n = weight.shape[1]
    x3 = x.reshape(b, c, h * w)
    batched = weight.t().expand(b, n, c)
    out = torch.bmm(batched, x3) if bias is None else torch.baddbmm(bias[None, :, None], batched, x3)
    return out.view(b, n, h, w)


@functools.lru_cache(maxsize=32)
def _constant(data, shape, dtype, device):
    return torch.tensor(np.frombuffer(data).reshape(shape), dtype=dtype, device=device)


def as_constant(array, like):
    """A float64 numpy constant (a basis, a projector) as a tensor of
    ``like``'s dtype and device, made once per (contents, dtype, device)."""
    array = np.ascontiguousarray(array, dtype=np.float64)
    return _constant(array.tobytes(), array.shape, like.dtype, like.device)


def fold(weight, basis=KERNELS):
    """(5M, N) 1x1 weight -> (N, M, 3, 3) dense kernels; the torch form of
    :func:`models.fixed_kernels.fold_weights`, differentiable."""
    c, n = weight.shape
    return torch.einsum("mkn,kac->nmac", weight.reshape(c // NUM_KERNELS, NUM_KERNELS, n), as_constant(basis, weight))


def fixed_conv2d(x, weight, bias=None, path="fixed"):
    """Functional form of :class:`FixedConv2d`. ``path`` (see
    :mod:`models.fxnn_paths`): "fixed" runs the fixed stage then the 1x1
    GEMM, "folded" one dense 3x3 conv with the folded kernels, "auto" the
    faster of the two for the tensor's device and whether autograd records."""
    if path == "auto":
        path = resolve_paths("auto", "torch", x.device.type)["train" if torch.is_grad_enabled() else "valid"]
    if path == "folded":
        return F.conv2d(x, fold(weight), bias, padding=1)
    return pointwise(fixed_stage(x), weight, bias)


class FixedConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, bias=True, path="auto", device=None, dtype=None):
        super().__init__()
        if path not in PATHS:
            raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
        self.in_channels, self.out_channels, self.path = in_channels, out_channels, path
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(NUM_KERNELS * in_channels, out_channels, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        """fxnn's initialisation: uniform +-0.3/sqrt(5M + N), bias zero."""
        bound = FXNN_1X1_INIT_SCALE / math.sqrt(NUM_KERNELS * self.in_channels + self.out_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x):
        return fixed_conv2d(x, self.weight, self.bias, self.path)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, fixed 3x3 x{NUM_KERNELS} + 1x1, "
                f"bias={self.bias is not None}, path={self.path}")
