"""What follows every conv layer of the network, for the PyTorch engine: ReLU,
inverted dropout (the uint16 draws of :mod:`fxnn.models.dropout`), 2x2 max pooling
(stride 2, an odd last row or column dropped), as one autograd op.

The gradient of the pooling goes to every element equal to its window's
maximum, as in PyTensor and Theano (``F.max_pool2d`` picks one), so both
engines agree at ties, which ReLU and flat image regions make common. On
float32 CPU tensors the C kernel of ``kernels/block_cpu.c`` does each
direction in one pass over memory; elsewhere (CUDA, float64, no C build)
:func:`reference` does the same in torch ops, and is what the kernel is
tested against. Both directions are ``torch.library`` operators
(``torch.ops.fxnn.relu_dropout_pool`` and its backward) with fake
implementations; the backward is not itself differentiable.

bfloat16 (and float16) activations, what a conv layer gives under
``--precision bf16`` (autocast), are computed as the exact function rounded
once: ReLU, the dropout keep (times 0 or 1) and the maximum are exact in any
float format, so the dropout scale 1/(1-p) is applied after the pooling, one
rounding of the exact product (PyTorch multiplies a bfloat16 tensor by a
Python float in float32), and the gradient g * 1/(1-p) goes to every element
equal to its window's maximum before the scale (the maxima of the exact
function). The operators do this in torch ops of the tensor's dtype
(:func:`low_precision_ops`, CUDA; a channels_last input gives a
channels_last result). On the CPU with the C build a bfloat16 block whose
gradient will be taken runs the float32 C kernel on an exact float32 copy
instead (:func:`casts_to_native`; without a gradient, as in validation, the
torch ops on a channels_last copy are faster):
its float32 products of bfloat16 values round to the same bfloat16 numbers,
and no two of them tie where the bfloat16 values differ, so forward and
gradient are bitwise the same (tested), in a quarter of the time of the
torch ops (the cnn's first block, 64x32x28x28, forward and backward on one
thread of the development VM's Xeon: 8.6 ms, against 33 ms for the torch
ops and 6.1 ms for the float32 kernel on float32 data).
"""
import numpy as np
import torch
import torch.nn.functional as F

from fxnn.kernels import native
from fxnn.kernels.capabilities import capability

from .. import dropout as dropout_masks
from .. import network

#: Float dtypes too coarse to hold 1/(1-p) exactly: the block scales after pooling.
LOW_PRECISION = (torch.bfloat16, torch.float16)


def _pool(h):
    """2x2 max pooling (:func:`fxnn.models.network.pool`; ``torch.maximum`` is
    the one primitive it needs, so the torch module serves as its backend)."""
    return network.pool(torch, h)


def _pool_grad(h, out, g):
    """The gradient of :func:`_pool` at ``h``: ``g`` to every maximum."""
    gh = g.new_zeros(h.shape)
    rows, cols = h.shape[2] // 2 * 2, h.shape[3] // 2 * 2
    for i in (0, 1):
        for j in (0, 1):
            gh[:, :, i:rows:2, j:cols:2] = g * (h[:, :, i:rows:2, j:cols:2] == out)
    return gh


class _MaxPool2x2(torch.autograd.Function):
    """2x2 max pooling of the strided views; gradient to every maximum."""

    @staticmethod
    def forward(ctx, h):
        out = _pool(h)
        ctx.save_for_backward(h, out)
        return out

    @staticmethod
    def backward(ctx, g):
        h, out = ctx.saved_tensors
        return _pool_grad(h, out, g)


def reference(h, mask=None, p=0.0):
    """The block in torch ops: pool(relu(h) * dropout factors) (in a low
    precision dtype: pool(relu(h) * keep) * 1/(1-p), see the module's notes)."""
    if h.dtype in LOW_PRECISION:
        kept = torch.relu(h) if mask is None else torch.relu(h) * torch.from_numpy(
            np.asarray(mask) >= dropout_masks.threshold(p)).to(h.device, h.dtype)
        out = _MaxPool2x2.apply(kept)
        return out if mask is None else out * float(1.0 / (1.0 - p))
    h = torch.relu(h)
    if mask is not None:
        factors = dropout_masks.scaled(mask, p, np.float64 if h.dtype == torch.float64 else np.float32)
        h = h * torch.from_numpy(factors).to(h.device, h.dtype)
    return _MaxPool2x2.apply(h)


# ---- the block as PyTorch operators: the C kernel on float32 CPU tensors ----

def _factors(mask: torch.Tensor, threshold: int, scale: float, like: torch.Tensor) -> torch.Tensor:
    return (mask.to(torch.int32) >= threshold).to(like.dtype) * scale


def _layout(y):
    """The memory format of the block's results for input ``y``: channels_last
    kept, anything else contiguous."""
    if y.dim() == 4 and y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _masked(y, mask, threshold):
    """y times the dropout keep (0 or 1), exact in any float dtype (a NaN
    stays NaN, as in the C kernel); ``mask``: uint16 draws, or their keep
    as a bool tensor (:func:`relu_dropout_pool` computes it for these dtypes)."""
    if mask is None:
        return y
    keep = mask if mask.dtype == torch.bool else mask.to(torch.int32) >= threshold
    return y * keep


def _max2x2(h):
    """2x2 max pooling (:func:`_pool`), by ``F.max_pool2d`` where the output is
    not empty (it propagates NaN, as ``torch.maximum``)."""
    return F.max_pool2d(h, 2) if min(h.shape[2:]) >= 2 else _pool(h)


def _block_forward_low(y, mask, threshold, scale):
    """The forward in a low precision dtype: ReLU commutes with the maximum,
    so pool(relu(y) * keep) = relu(max_pool2d(y * keep)); then one rounding
    of the scale."""
    out = torch.relu(_max2x2(_masked(y, mask, threshold)))
    return (out if mask is None else out * scale).contiguous(memory_format=_layout(y))


def _block_backward_low(y, mask, threshold, scale, g):
    """The gradient in a low precision dtype: g * scale (one rounding) to every
    element equal to its window's maximum of relu(y) * keep where that is
    positive (a window whose maximum is 0 passes nothing: every element is
    below 0 or dropped)."""
    h = _masked(y, mask, threshold)
    top = _max2x2(h)
    gs = g if mask is None else g * scale
    gs = torch.where(top > 0, gs, torch.zeros((), dtype=gs.dtype, device=gs.device))
    rows, cols = h.shape[2] // 2 * 2, h.shape[3] // 2 * 2
    fmt = _layout(y)
    gy = (torch.empty_like(y, memory_format=fmt) if (rows, cols) == h.shape[2:]
          else torch.zeros_like(y, memory_format=fmt))
    zero = torch.zeros((), dtype=gs.dtype, device=gs.device)
    for i in (0, 1):
        for j in (0, 1):
            torch.where(h[:, :, i:rows:2, j:cols:2] == top, gs, zero, out=gy[:, :, i:rows:2, j:cols:2])
    return gy


def _block_forward_ref(y: torch.Tensor, mask: torch.Tensor | None, threshold: int, scale: float) -> torch.Tensor:
    if y.dtype in LOW_PRECISION:
        return _block_forward_low(y, mask, threshold, scale)
    h = torch.relu(y)
    return _pool(h if mask is None else h * _factors(mask, threshold, scale, y)).contiguous()


def _block_backward_ref(y: torch.Tensor, mask: torch.Tensor | None, threshold: int, scale: float, out: torch.Tensor,
                        g: torch.Tensor) -> torch.Tensor:
    if y.dtype in LOW_PRECISION:
        return _block_backward_low(y, mask, threshold, scale, g)
    factors = None if mask is None else _factors(mask, threshold, scale, y)
    h = torch.relu(y) if factors is None else torch.relu(y) * factors
    gh = _pool_grad(h, out, g)
    return torch.where(y > 0, gh if factors is None else gh * factors, torch.zeros_like(gh))


#: ``fxnn::relu_dropout_pool(y, mask, threshold, scale)`` and its backward:
#: torch ops on any device, ``kernels/block_cpu.c`` for float32 CPU tensors.
#: The backward operator is not itself differentiable.
block_forward = torch.library.custom_op("fxnn::relu_dropout_pool", _block_forward_ref, mutates_args=())
block_backward = torch.library.custom_op("fxnn::relu_dropout_pool_backward", _block_backward_ref, mutates_args=())


@block_forward.register_kernel("cpu")
def _block_forward_cpu(y, mask, threshold, scale):
    if not native_available(y):
        return _block_forward_ref(y, mask, threshold, scale)
    b, c, h, w = y.shape
    y = y.contiguous()
    out = y.new_empty((b, c, h // 2, w // 2))
    planes = (b * c, h, w)
    native.module.block_forward(y.numpy().reshape(planes), None if mask is None else mask.contiguous().numpy()
                                .reshape(planes), threshold, scale, out.numpy().reshape(b * c, h // 2, w // 2),
                                torch.get_num_threads())
    return out


@block_backward.register_kernel("cpu")
def _block_backward_cpu(y, mask, threshold, scale, out, g):
    if not native_available(y):
        return _block_backward_ref(y, mask, threshold, scale, out, g)
    b, c, h, w = y.shape
    y = y.contiguous()
    gy = torch.empty_like(y)
    native.module.block_backward(y.numpy().reshape(b * c, h, w), None if mask is None else mask.contiguous().numpy()
                                 .reshape(b * c, h, w), threshold, scale,
                                 out.contiguous().numpy().reshape(b * c, h // 2, w // 2),
                                 g.contiguous().numpy().reshape(b * c, h // 2, w // 2),
                                 gy.numpy().reshape(b * c, h, w), torch.get_num_threads())
    return gy


@block_forward.register_fake
def _block_forward_fake(y, mask, threshold, scale):
    b, c, h, w = y.shape
    out = y.new_empty((b, c, h // 2, w // 2))
    return out.contiguous(memory_format=_layout(y)) if y.dtype in LOW_PRECISION else out


@block_backward.register_fake
def _block_backward_fake(y, mask, threshold, scale, out, g):
    fmt = _layout(y) if y.dtype in LOW_PRECISION else torch.contiguous_format
    return torch.empty_like(y, memory_format=fmt)


def _block_setup(ctx, inputs, output):
    y, mask, ctx.threshold, ctx.scale = inputs
    ctx.save_for_backward(y, mask, output)


def _block_grad(ctx, g):
    y, mask, out = ctx.saved_tensors
    return block_backward(y, mask, ctx.threshold, ctx.scale, out, g), None, None, None


block_forward.register_autograd(_block_grad, setup_context=_block_setup)


@torch.compiler.assume_constant_result
def _kernel_runs(device_type: str, dtype: torch.dtype) -> bool:
    """Whether the C kernel runs the block of ``dtype`` tensors on
    ``device_type`` (:mod:`fxnn.kernels.capabilities`); a constant to ``torch.compile``."""
    return bool(capability("block", "torch", device_type, dtype))


def native_available(y):
    """Whether the C kernel can run the block on tensor ``y`` itself (float32)."""
    return y.dtype == torch.float32 and _kernel_runs(y.device.type, y.dtype)


def casts_to_native(y):
    """Whether the block of bfloat16 tensor ``y`` runs the float32 C kernel on
    an exact float32 copy (the CPU with the C build): the same numbers as
    the bfloat16 torch ops (see the module's notes), in a quarter of their time."""
    return y.dtype == torch.bfloat16 and _kernel_runs(y.device.type, y.dtype)


def relu_dropout_pool(y, mask=None, p=0.0):
    """pool(relu(y) * dropout factors) of ``y`` (B, C, H, W); ``mask``: the
    layer's uint16 draws from :func:`fxnn.models.dropout.draw`, or None.
    The operators run on float32 CPU tensors (the C kernel), on bfloat16 CPU
    tensors as float32 copies (:func:`casts_to_native`) where a gradient
    will be taken, on other bfloat16 and float16 ones in torch ops of their
    dtype (on the CPU without a gradient, as in validation, on a
    channels_last copy: faster there than the float32 kernel's copies, and
    the result is channels_last), :func:`reference` elsewhere. The numbers
    are the same either way (see the module's notes)."""
    forward_only = not (torch.is_grad_enabled() and y.requires_grad)
    if casts_to_native(y) and forward_only:
        return low_precision_ops(y.contiguous(memory_format=torch.channels_last), mask, p)
    if casts_to_native(y):
        return relu_dropout_pool(y.to(torch.float32, memory_format=torch.contiguous_format), mask, p).to(y.dtype)
    return low_precision_ops(y, mask, p) if y.dtype in LOW_PRECISION else _block(y, mask, p)


def low_precision_ops(y, mask=None, p=0.0):
    """The block's operators on a bfloat16 or float16 ``y`` in torch ops of
    its dtype (the dropout keep compared in numpy: torch has no uint16
    comparison)."""
    if mask is not None:
        mask = torch.from_numpy(np.ascontiguousarray(mask).reshape(y.shape) >= dropout_masks.threshold(p))
    return _operators(y, mask, p)


def _block(y, mask, p):
    if not native_available(y):
        return reference(y, mask, p)
    if mask is not None:
        mask = torch.from_numpy(np.ascontiguousarray(mask).reshape(y.shape))
    return _operators(y, mask, p)


def _operators(y, mask, p):
    return block_forward(y, None if mask is None else mask.to(y.device),
                         dropout_masks.threshold(p) if mask is not None else 0,
                         float(1.0 / (1.0 - p)) if mask is not None else 1.0)
