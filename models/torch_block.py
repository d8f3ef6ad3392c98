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
"""
import numpy as np
import torch

from fxnn.kernels import native

from . import dropout as dropout_masks
from . import network


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
    """The block in torch ops: pool(relu(h) * dropout factors)."""
    h = torch.relu(h)
    if mask is not None:
        factors = dropout_masks.scaled(mask, p, np.float64 if h.dtype == torch.float64 else np.float32)
        h = h * torch.from_numpy(factors).to(h.device, h.dtype)
    return _MaxPool2x2.apply(h)


# ---- the block as PyTorch operators: the C kernel on float32 CPU tensors ----

def _factors(mask: torch.Tensor, threshold: int, scale: float, like: torch.Tensor) -> torch.Tensor:
    return (mask.to(torch.int32) >= threshold).to(like.dtype) * scale


def _block_forward_ref(y: torch.Tensor, mask: torch.Tensor | None, threshold: int, scale: float) -> torch.Tensor:
    h = torch.relu(y)
    return _pool(h if mask is None else h * _factors(mask, threshold, scale, y)).contiguous()


def _block_backward_ref(y: torch.Tensor, mask: torch.Tensor | None, threshold: int, scale: float, out: torch.Tensor,
                        g: torch.Tensor) -> torch.Tensor:
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
    return y.new_empty((b, c, h // 2, w // 2))


@block_backward.register_fake
def _block_backward_fake(y, mask, threshold, scale, out, g):
    return torch.empty_like(y, memory_format=torch.contiguous_format)


def _block_setup(ctx, inputs, output):
    y, mask, ctx.threshold, ctx.scale = inputs
    ctx.save_for_backward(y, mask, output)


def _block_grad(ctx, g):
    y, mask, out = ctx.saved_tensors
    return block_backward(y, mask, ctx.threshold, ctx.scale, out, g), None, None, None


block_forward.register_autograd(_block_grad, setup_context=_block_setup)


def native_available(y):
    """Whether the C kernel can run the block on tensor ``y``."""
    return (y.device.type == "cpu" and y.dtype == torch.float32 and native.available()[0]
            and hasattr(native.module, "block_forward"))


def relu_dropout_pool(y, mask=None, p=0.0):
    """pool(relu(y) * dropout factors) of ``y`` (B, C, H, W); ``mask``: the
    layer's uint16 draws from :func:`fxnn.models.dropout.draw`, or None."""
    if not native_available(y):
        return reference(y, mask, p)
    if mask is not None:
        mask = torch.from_numpy(np.ascontiguousarray(mask).reshape(y.shape))
    return block_forward(y, mask, dropout_masks.threshold(p) if mask is not None else 0,
                         float(1.0 / (1.0 - p)) if mask is not None else 1.0)
