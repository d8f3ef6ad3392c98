"""Symbolic building blocks of the network in PyTensor, and the PyTensor
backend of :mod:`fxnn.models.network`.

Each function maps symbolic tensors to symbolic tensors; PyTensor derives the
gradients. The fixed stage is the op of :mod:`fxnn.kernels.pytensor_fixed_op`
(its C code; without a C compiler, the numpy reference); the dense k x k
convolution of ``cnn`` is an im2col of shifted views followed by one
tensordot, since PyTensor no longer ships a conv2d op.
"""
import numpy as np
import pytensor
import pytensor.scalar as ps
import pytensor.tensor as pt
from pytensor.tensor.elemwise import Elemwise

from fxnn.kernels.capabilities import capability
from fxnn.kernels.fixed_kernels import KERNELS
from fxnn.kernels.pytensor_fixed_op import fixed_stage_op
from fxnn.kernels.pytensor_fused_op import fused_conv

from .. import network


def zero_pad(x, pad):
    """Zero pad the last two axes of ``x`` by ``pad`` on each side."""
    if pad == 0:
        return x
    b, c, h, w = x.shape
    padded = pt.zeros((b, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    return pt.set_subtensor(padded[:, :, pad:-pad, pad:-pad], x)


def fixed_stage(x, stride=1):
    """(B, M, H, W) -> (B, 5M, Ho, Wo): the five fixed kernels, channel ``5m+k``:
    the op of :mod:`fxnn.kernels.pytensor_fixed_op` (its C code, or the numpy
    reference where PyTensor has no C compiler), every ``stride``-th pixel
    kept (the op computes them all)."""
    y = fixed_stage_op(x)
    return y if stride == 1 else y[:, :, ::stride, ::stride]


def conv2d_same(x, w, bias, k, stride=1):
    """Dense cross-correlation, zero padded by ``k // 2`` ('same' size at
    stride 1): (B, M, H, W) with weight (N, M, k, k), k odd -> (B, N, Ho, Wo),
    Ho = (H - 1) // stride + 1."""
    b, _, h, width = x.shape
    xp = zero_pad(x, k // 2)
    patches = pt.stack([xp[:, :, a:a + h:stride, c:c + width:stride] for a in range(k) for c in range(k)], axis=2)
    ho, wo = (h - 1) // stride + 1, (width - 1) // stride + 1
    patches = patches.reshape((b, -1, ho, wo))          # channel index m*k*k + a*k + c
    return network.pointwise(BACKEND, patches, w.reshape((w.shape[0], -1)).T, bias)


def fxnn_conv(x, w, bias, path="fixed", stride=1):
    """An fxnn conv layer on ``path`` (see :mod:`fxnn.models.fxnn_paths`); "fused"
    where it cannot run (float64, no C compiler) computes the fixed path."""
    if path == "fused" and not capability("fused", "pytensor", "cpu", x.dtype):
        path = "fixed"
    return network.factored_conv(BACKEND, x, w, bias, path, KERNELS, stride)


class _MaximumToEveryMax(ps.Maximum):
    """Elementwise maximum whose gradient goes to each argument equal to the
    result, as the Backend protocol says (and as Theano's, PyTensor's Max
    reduction and the torch engine's pooling do); PyTensor's own maximum
    gives a tie's gradient to its first argument only, which changed the
    pooling gradient wherever a window holds equal maxima."""

    def pullback(self, inputs, outputs, output_grads):
        (x, y), (z,), (gz,) = inputs, outputs, output_grads
        return ps.eq(z, x) * gz, ps.eq(z, y) * gz


maximum = Elemwise(_MaximumToEveryMax(ps.upcast_out, name="maximum_to_every_max"))


def relu(x):
    """max(x, 0) with gradient 0 at x == 0 (as PyTorch), unlike pt.maximum."""
    return pt.switch(x > 0, x, 0)


def softmax(h):
    """Row-wise softmax from elementwise ops (see
    :func:`fxnn.models.pytensor.engine.compile_mode`)."""
    e = pt.exp(h - pytensor.gradient.disconnected_grad(h.max(axis=1, keepdims=True)))
    return e / e.sum(axis=1, keepdims=True)


class PyTensorBackend:
    """The primitives of :class:`fxnn.models.network.Backend` as symbolic
    PyTensor ops, for one graph compiled once."""

    def constant(self, array, like):
        return pt.constant(np.asarray(array).astype(like.dtype))

    def scalar(self, value, like):
        if isinstance(value, (int, float)):
            return np.asarray(value, dtype=like.dtype)
        return pt.cast(value, like.dtype)

    def conv(self, x, w, bias, size, stride=1):
        return conv2d_same(x, w, bias, size, stride)

    def fixed_stage(self, x, stride=1):
        return fixed_stage(x, stride)

    def fused_conv(self, x, w, bias, stride=1):
        if stride != 1:
            raise ValueError(f"the PyTensor fused op computes stride 1 only, not {stride}: "
                             f"a strided fused layer needs the torch engine (or the fixed or folded path)")
        return fused_conv(x, w, bias)

    def channel_matmul(self, x, w, bias):
        return pt.tensordot(x, w, axes=[[1], [0]]).dimshuffle(0, 2, 1) + bias.dimshuffle("x", 0, "x")

    def combine(self, w, kernels):
        return pt.tensordot(w, kernels, axes=[[1], [0]]).dimshuffle(1, 0, 2, 3)

    def matmul(self, a, b):
        return pt.dot(a, b)

    def block(self, h, mask, p):
        return network.relu_dropout_pool(self, h, mask, p)

    def relu(self, h):
        return relu(h)

    def maximum(self, a, b):
        return maximum(a, b)

    def keep(self, mask, threshold, like):
        return pt.cast(pt.ge(mask, threshold), like.dtype)

    def softmax(self, h):
        return softmax(h)

    def log(self, h):
        return pt.log(h)

    def pick(self, probs, y):
        return probs[pt.arange(probs.shape[0]), y]

    def error_rate(self, probs, y):
        return pt.mean(pt.cast(pt.neq(pt.argmax(probs, axis=1), y), probs.dtype))

    def sqrt(self, h):
        return pt.sqrt(h)


BACKEND = PyTensorBackend()
