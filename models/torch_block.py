"""What follows every conv layer of the network, for the PyTorch engine: ReLU,
inverted dropout (the uint16 draws of :mod:`models.dropout`), 2x2 max pooling
(stride 2, an odd last row or column dropped), as one autograd op.

The gradient of the pooling goes to every element equal to its window's
maximum, as in PyTensor and Theano (``F.max_pool2d`` picks one), so both
engines agree at ties, which ReLU and flat image regions make common. On
float32 CPU tensors the C kernel of ``kernels/block_cpu.c`` does each
direction in one pass over memory; elsewhere (CUDA, float64, no C build)
:func:`reference` does the same in torch ops, and is what the kernel is
tested against. The C kernel's backward is not itself differentiable.
"""
import numpy as np
import torch
from torch.autograd.function import once_differentiable

from kernels import native

from . import dropout as dropout_masks


class _MaxPool2x2(torch.autograd.Function):
    """2x2 max pooling of the strided views; gradient to every maximum."""

    @staticmethod
    def forward(ctx, h):
        ctx.shape = h.shape
        h = h[:, :, :h.shape[2] // 2 * 2, :h.shape[3] // 2 * 2]
        views = [h[:, :, i::2, j::2] for i in (0, 1) for j in (0, 1)]
        out = torch.maximum(torch.maximum(views[0], views[1]), torch.maximum(views[2], views[3]))
        ctx.save_for_backward(h, out)
        return out

    @staticmethod
    def backward(ctx, g):
        h, out = ctx.saved_tensors
        gh = g.new_zeros(ctx.shape)
        for i in (0, 1):
            for j in (0, 1):
                gh[:, :, i:h.shape[2]:2, j:h.shape[3]:2] = g * (h[:, :, i::2, j::2] == out)
        return gh


def reference(h, mask=None, p=0.0):
    """The block in torch ops: pool(relu(h) * dropout factors)."""
    h = torch.relu(h)
    if mask is not None:
        factors = dropout_masks.scaled(mask, p, np.float64 if h.dtype == torch.float64 else np.float32)
        h = h * torch.from_numpy(factors).to(h.device, h.dtype)
    return _MaxPool2x2.apply(h)


class _Block(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, mask, threshold, scale):
        b, c, h, w = y.shape
        y = y.contiguous()
        out = y.new_empty((b, c, h // 2, w // 2))
        planes = (b * c, h, w)
        m = None if mask is None else mask.reshape(planes)
        native.module.block_forward(y.numpy().reshape(planes), m, threshold, scale,
                                    out.numpy().reshape(b * c, h // 2, w // 2), torch.get_num_threads())
        ctx.save_for_backward(y, out)
        ctx.mask, ctx.threshold, ctx.scale = m, threshold, scale
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        y, out = ctx.saved_tensors
        b, c, h, w = y.shape
        gy = torch.empty_like(y)
        native.module.block_backward(y.numpy().reshape(b * c, h, w), ctx.mask, ctx.threshold, ctx.scale,
                                     out.numpy().reshape(b * c, h // 2, w // 2),
                                     g.contiguous().numpy().reshape(b * c, h // 2, w // 2),
                                     gy.numpy().reshape(b * c, h, w), torch.get_num_threads())
        return gy, None, None, None


def native_available(y):
    """Whether the C kernel can run the block on tensor ``y``."""
    return (y.device.type == "cpu" and y.dtype == torch.float32 and native.available()[0]
            and hasattr(native.module, "block_forward"))


def relu_dropout_pool(y, mask=None, p=0.0):
    """pool(relu(y) * dropout factors) of ``y`` (B, C, H, W); ``mask``: the
    layer's uint16 draws from :func:`models.dropout.draw`, or None."""
    if not native_available(y):
        return reference(y, mask, p)
    if mask is not None:
        mask = mask.reshape(y.shape)
    return _Block.apply(y, mask, dropout_masks.threshold(p) if mask is not None else 0,
                        float(1.0 / (1.0 - p)) if mask is not None else 1.0)
