"""Symbolic building blocks of the network in PyTensor.

Each function maps symbolic tensors to symbolic tensors; PyTensor derives the
gradients. The fixed stage is the op of :mod:`kernels.pytensor_fixed_op`
(its C code; without a C compiler, the numpy reference); the dense k x k
convolution of ``cnn`` is an im2col of shifted views followed by one
tensordot, since PyTensor no longer ships a conv2d op.
"""
import pytensor
import pytensor.tensor as pt

from kernels.fixed_kernels import KERNELS
from kernels.pytensor_fixed_op import fixed_stage_op
from kernels.pytensor_fused_op import fused_conv

from .fixed_bases import PROJECTOR


def zero_pad(x, pad):
    """Zero pad the last two axes of ``x`` by ``pad`` on each side."""
    if pad == 0:
        return x
    b, c, h, w = x.shape
    padded = pt.zeros((b, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    return pt.set_subtensor(padded[:, :, pad:-pad, pad:-pad], x)


def fixed_stage(x):
    """(B, M, H, W) -> (B, 5M, H, W): the five fixed kernels, channel ``5m+k``:
    the op of :mod:`kernels.pytensor_fixed_op` (its C code, or the numpy
    reference where PyTensor has no C compiler)."""
    return fixed_stage_op(x)


def pointwise(x, w, bias):
    """1x1 convolution: (B, C, H, W) with weight (C, N) -> (B, N, H, W)."""
    return pt.tensordot(x, w, axes=[[1], [0]]).dimshuffle(0, 3, 1, 2) + bias.dimshuffle("x", 0, "x", "x")


def conv2d_same(x, w, bias, k):
    """Dense cross-correlation, zero padded to 'same' size: (B, M, H, W) with
    weight (N, M, k, k), k odd -> (B, N, H, W)."""
    b, _, h, width = x.shape
    xp = zero_pad(x, k // 2)
    patches = pt.stack([xp[:, :, a:a + h, c:c + width] for a in range(k) for c in range(k)], axis=2)
    patches = patches.reshape((b, -1, h, width))          # channel index m*k*k + a*k + c
    return pointwise(patches, w.reshape((w.shape[0], -1)).T, bias)


def fold(w, basis=KERNELS):
    """(K*M, N) 1x1 weight over ``basis`` (K, 3, 3), fxnn's five by default
    -> (N, M, 3, 3) dense kernels, the symbolic form of
    :func:`kernels.fixed_kernels.fold_weights`."""
    c, n = w.shape
    k = len(basis)
    kernels = pt.constant(basis.astype(w.dtype))
    return pt.tensordot(w.reshape((c // k, k, n)), kernels, axes=[[1], [0]]).dimshuffle(1, 0, 2, 3)


def fused_available(dtype):
    """Whether the fused C ops can compute a layer of ``dtype``."""
    return bool(pytensor.config.cxx) and dtype == "float32"


def fxnn_conv(x, w, bias, path="fixed"):
    """An fxnn conv layer on ``path`` (see :mod:`models.fxnn_paths`); "fused"
    where it cannot run (float64, no C compiler) computes the fixed path."""
    if path == "folded":
        return conv2d_same(x, fold(w), bias, 3)
    if path == "fused" and fused_available(x.dtype):
        return fused_conv(x, w, bias)
    return pointwise(fixed_stage(x), w, bias)


def project_kernels(w):
    """Dense (N, M, 3, 3) weights projected onto the span of the five kernels,
    the symbolic form of :func:`models.fixed_bases.project_kernels`."""
    return pt.dot(w.reshape((-1, 9)), pt.constant(PROJECTOR.astype(w.dtype))).reshape(w.shape)


def max_pool_2x2(x):
    """2x2 max pooling, stride 2; an odd last row/column is dropped."""
    b, c, h, w = x.shape
    h2, w2 = h // 2, w // 2
    x = x[:, :, :h2 * 2, :w2 * 2]
    return x.reshape((b, c, h2, 2, w2, 2)).max(axis=(3, 5))


def relu(x):
    """max(x, 0) with gradient 0 at x == 0 (as PyTorch), unlike pt.maximum."""
    return pt.switch(x > 0, x, 0)
