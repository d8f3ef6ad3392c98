"""The PyTorch backend of :mod:`fxnn.models.network`: its primitives as eager
PyTorch ops on any device (autograd derives the gradients), and the fxnn
layer's pieces written over them (:func:`pointwise`, :func:`fold`)."""
import functools

import numpy as np
import torch
import torch.nn.functional as F

from fxnn.kernels import torch_fused
from fxnn.kernels.fixed_kernels import KERNELS
from fxnn.kernels.torch_fixed import fixed_stage

from .. import network
from .block import relu_dropout_pool


@functools.lru_cache(maxsize=32)
def _constant(data, shape, dtype, device):
    return torch.tensor(np.frombuffer(data).reshape(shape), dtype=dtype, device=device)


def as_constant(array, like):
    """A float64 numpy constant (a basis, a projector) as a tensor of
    ``like``'s dtype and device, made once per (contents, dtype, device)."""
    array = np.ascontiguousarray(array, dtype=np.float64)
    return _constant(array.tobytes(), array.shape, like.dtype, like.device)


#: The five kernels as a torch constant, so that folding them traces under
#: ``torch.compile`` (a numpy constant would break the graph).
KERNELS_TENSOR = torch.tensor(KERNELS)


class TorchBackend:
    """The primitives of :class:`fxnn.models.network.Backend` as eager PyTorch
    ops, on any device; autograd derives the gradients."""

    def constant(self, array, like):
        """A tensor (kept on the graph under ``torch.compile``) or a float64
        numpy array, made once per contents, dtype and device."""
        return array.to(like) if isinstance(array, torch.Tensor) else as_constant(array, like)

    def scalar(self, value, like):
        return value

    def conv(self, x, w, bias, size, stride=1):
        return F.conv2d(x, w, bias, stride=stride, padding=size // 2)

    def fixed_stage(self, x, stride=1):
        return fixed_stage(x, stride)

    def fused_conv(self, x, w, bias, stride=1):
        return torch_fused.fused_conv2d(x, w, bias, stride)

    def channel_matmul(self, x, w, bias):
        """One batched GEMM, the weight broadcast to the batch as a stride-0
        view, so neither the forward nor the gradients copy the (B, C, P)
        tensor (``torch.matmul`` of a matrix with a batch transposes the
        batch into a copy)."""
        b, c, _ = x.shape
        batched = w.t().expand(b, w.shape[1], c)
        return torch.bmm(batched, x) if bias is None else torch.baddbmm(bias[None, :, None], batched, x)

    def combine(self, w, kernels):
        return torch.einsum("mkn,kac->nmac", w, kernels)

    def matmul(self, a, b):
        return a @ b

    def block(self, h, mask, p):
        """The one op of :func:`fxnn.models.torch.block.relu_dropout_pool`."""
        return relu_dropout_pool(h, mask, p)

    def relu(self, h):
        return torch.relu(h)

    def maximum(self, a, b):
        """torch.maximum, whose gradient splits a tie in half, with the gradient
        instead to each argument equal to the maximum (the protocol's rule);
        without autograd, torch.maximum alone."""
        m = torch.maximum(a, b)
        if not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)):
            return m
        m = m.detach()
        return m + (a - a.detach()) * (a == m) + (b - b.detach()) * (b == m)

    def keep(self, mask, threshold, like):
        return (torch.as_tensor(mask, device=like.device).to(torch.int32) >= threshold).to(like.dtype)

    def softmax(self, h):
        return torch.softmax(h, dim=-1)

    def log(self, h):
        return torch.log(h)

    def pick(self, probs, y):
        return probs.gather(1, y[:, None])[:, 0]

    def error_rate(self, probs, y):
        return (probs.argmax(1) != y).to(probs.dtype).mean()

    def sqrt(self, h):
        return h.sqrt()

    def batch_norm(self, x, gamma, beta, mean, var, train, momentum, eps):
        """F.batch_norm: nn.BatchNorm2d's arithmetic, running statistics
        updated in place in training when given."""
        return F.batch_norm(x, mean, var, gamma, beta, training=train, momentum=momentum, eps=eps)

    def pad_channels(self, x, extra):
        return F.pad(x, (0, 0, 0, 0, 0, extra))

    def spatial_mean(self, h):
        return h.mean((2, 3))


BACKEND = TorchBackend()


def pointwise(x, weight, bias=None):
    """1x1 convolution: (B, C, H, W) with weight (C, N) -> (B, N, H, W)
    (:func:`fxnn.models.network.pointwise`)."""
    return network.pointwise(BACKEND, x, weight, bias)


def fold(weight, basis=None):
    """(K*M, N) 1x1 weight -> (N, M, 3, 3) dense kernels
    (:func:`fxnn.models.network.fold`), differentiable. ``basis``: the five
    kernels by default, or another (K, 3, 3) basis, a numpy array or a
    tensor (see :mod:`fxnn.models.fixed_bases`)."""
    return network.fold(BACKEND, weight, KERNELS_TENSOR if basis is None else basis)

