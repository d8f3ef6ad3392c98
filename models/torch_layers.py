"""``FixedConv2d``: the fxnn layer as a drop-in PyTorch module.

    layer = FixedConv2d(64, 128)   # in place of nn.Conv2d(64, 128, 3, padding=1)

The fixed stage (:func:`fxnn.kernels.torch_fixed.fixed_stage`, five fixed 3x3
kernels per input channel, nothing trainable) followed by a trainable 1x1
convolution. ``weight`` has shape (5 * in_channels, out_channels), rows in the
5M layout of :mod:`fxnn.kernels.fixed_kernels` (row ``5*m + k``), the layout of the
``conv*_w`` parameters in fxnn's records, so weights move between this layer,
both engines and ``.mat`` files unchanged. It computes on one of the paths of
:mod:`fxnn.models.fxnn_paths` (fixed, fused, folded), by default the one measured
fastest for its shape. ``FixedConv2d(M, N, basis="dct")`` (a name of
:mod:`fxnn.models.fixed_bases`, or a (K, 3, 3) array) runs its 1x1 over another
fixed basis instead: weight (K * in_channels, out_channels) in the same
layout, always on the folded path (the fixed and fused paths compute fxnn's
five kernels only).
"""
import functools
import logging
import math
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fxnn.kernels import torch_fused
from fxnn.kernels.fixed_kernels import KERNELS, NUM_KERNELS
from fxnn.kernels.torch_fixed import fixed_stage
from fxnn.kernels.torch_fixed import implementation_name as fixed_stage_name

from . import fxnn_paths, network
from .architecture import FXNN_1X1_INIT_SCALE
from .fixed_bases import basis_kernels
from .fxnn_paths import PATHS
from .torch_block import relu_dropout_pool

log = logging.getLogger("fxnn")
_fallbacks = set()


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
_KERNELS = torch.tensor(KERNELS)


class TorchBackend:
    """The primitives of :class:`fxnn.models.network.Backend` as eager PyTorch
    ops, on any device; autograd derives the gradients."""

    def constant(self, array, like):
        """A tensor (kept on the graph under ``torch.compile``) or a float64
        numpy array, made once per contents, dtype and device."""
        return array.to(like) if isinstance(array, torch.Tensor) else as_constant(array, like)

    def scalar(self, value, like):
        return value

    def conv(self, x, w, bias, size):
        return F.conv2d(x, w, bias, padding=size // 2)

    def fixed_stage(self, x):
        return fixed_stage(x)

    def fused_conv(self, x, w, bias):
        return torch_fused.fused_conv2d(x, w, bias)

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
        """The one op of :func:`fxnn.models.torch_block.relu_dropout_pool`."""
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
    return network.fold(BACKEND, weight, _KERNELS if basis is None else basis)


def available_paths(x, dtype=None):
    """The paths that can compute an fxnn layer on tensor ``x`` in ``dtype``
    (default: what autocast computes ``x`` in, see
    :func:`fxnn.kernels.torch_fused.autocast_dtype`), fastest first by
    default (:func:`fxnn.models.fxnn_paths.default_path`)."""
    dtype = torch_fused.autocast_dtype(x) if dtype is None else dtype
    fused = torch_fused.runs_fast(x.device.type, dtype)
    return (("fused",) if fused else ()) + ("fixed", "folded")


def implementation(path, device, dtype=torch.float32):
    """What runs ``path`` on ``device`` in ``dtype``, in words (for records and logs)."""
    if path == "fused":
        return torch_fused.implementation_name(device, dtype)
    if path == "folded":
        return "torch conv2d with folded kernels"
    return f"{fixed_stage_name(device)}, then torch bmm"


def path_contenders(shape, dtype, device, train, input_grad, bias=True, autocast=None, channels_last=False):
    """{path: callable}: one pass of an fxnn layer of ``shape`` (B, M, N, H, W)
    on each available path, on random data with the timing batch of
    :func:`fxnn.models.fxnn_paths.timing_batch` (on CUDA the layer's own batch,
    since a GPU run on a small one times the launches); ``train``: forward and backward
    (the input's gradient too when ``input_grad``), else forward without
    autograd; ``autocast``: the autocast dtype the layer runs under (None:
    none); ``channels_last``: the input's memory format. For
    :func:`fxnn.models.fxnn_paths.choose`."""
    b, m, n, h, w = shape
    g = torch.Generator().manual_seed(0)
    batch = b if torch.device(device).type == "cuda" else fxnn_paths.timing_batch(b, h, w)
    x = torch.randn(batch, m, h, w, generator=g).to(device, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = (0.1 * torch.randn(NUM_KERNELS * m, n, generator=g)).to(device, dtype).requires_grad_(train)
    b_ = torch.zeros(n, device=device, dtype=dtype, requires_grad=train) if bias else None
    x.requires_grad_(train and input_grad)
    device_type = torch.device(device).type
    dy = torch.randn(x.shape[0], n, h, w, generator=g).to(device, autocast or dtype)
    if channels_last:
        dy = dy.contiguous(memory_format=torch.channels_last)

    def run(path):
        def forward():
            with torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
                return fixed_conv2d(x, weight, b_, path)

        def one_pass():
            if train:
                forward().backward(dy)
            else:
                with torch.no_grad():
                    forward()
            if x.device.type == "cuda":  # the clock must see the work done, not queued
                torch.cuda.synchronize(x.device)
        return one_pass
    return {path: run(path) for path in available_paths(x, autocast or dtype)}


_auto = {}


@torch.compiler.assume_constant_result
def _measured_path(call):
    """The path measured fastest for ``call`` (see :func:`auto_path`), once
    per call and thread count. A constant to ``torch.compile``: it runs (and
    times, and reads the thread count) when a graph is traced, not in it."""
    b, m, n, h, w, dtype, autocast, channels_last, device, train, input_grad, bias = call
    threads = torch.get_num_threads()
    if (call, threads) not in _auto:
        device = torch.device(device)
        compute = autocast or dtype
        paths = available_paths(torch.empty(0, dtype=dtype, device=device), compute)
        key = {"engine": "torch", "torch": torch.__version__, "device": device.type, "dtype": str(dtype),
               "threads": threads, "shape": [b, m, n, h, w], "pass": "train" if train else "valid",
               "input_grad": input_grad, "bias": bias,
               "fused": implementation("fused", device, compute) if "fused" in paths else None}
        if autocast is not None:  # keys of float32 layers stay as they were
            key["autocast"] = str(autocast)
        if channels_last:
            key["channels_last"] = True
        if device.type == "cuda":
            key["gpu"] = torch.cuda.get_device_name(device)
        _auto[call, threads] = fxnn_paths.choose(key, paths, lambda: path_contenders(
            key["shape"], dtype, device, train, input_grad, bias, autocast, channels_last))
    return _auto[call, threads]


def _is_channels_last(x):
    """Whether ``x`` is laid out channels_last (and not also NCHW-contiguous,
    as a tensor of one channel or one pixel is both)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def auto_path(x, weight, bias=None):
    """The path ``auto`` takes for this layer call: measured once per shape,
    dtype (and autocast dtype), memory format, device, thread count and pass
    (training when autograd records). Under ``torch.compile`` it is chosen
    when the graph is traced."""
    train = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                         or (bias is not None and bias.requires_grad))
    # operator.index: under torch.compile with dynamic shapes it specializes
    # the sizes (a graph per shape, guarded), as auto's choice is per shape
    b, m, n, h, w = (operator.index(size) for size in (x.shape[0], x.shape[1], weight.shape[1], *x.shape[2:]))
    compute = torch_fused.autocast_dtype(x)
    return _measured_path((b, m, n, h, w, x.dtype, compute if compute != x.dtype else None,
                           _is_channels_last(x), str(x.device), train, train and x.requires_grad,
                           bias is not None))


def _say_fused_falls_back(x, dtype):
    if (x.device.type, dtype) not in _fallbacks:
        _fallbacks.add((x.device.type, dtype))
        log.info("fused fxnn path unavailable for %s %s tensors (%s): running the fixed path",
                 x.device.type, dtype, torch_fused.implementation_name(x.device, dtype))


def fixed_conv2d(x, weight, bias=None, path="fixed"):
    """Functional form of :class:`FixedConv2d` on ``path`` (see
    :mod:`fxnn.models.fxnn_paths`): "fixed" runs the fixed stage then the 1x1
    GEMM, "fused" the fused kernel, "folded" one dense 3x3 conv with the
    folded kernels, "auto" the fastest as measured for this call's shape.
    "fused" on a tensor it cannot run on (float64, CUDA without Triton, no
    C build) runs the fixed path and says so once. Under autocast every path
    computes in the autocast dtype, as ``F.conv2d`` does; a channels_last
    input gives a channels_last result. Every path traces under
    ``torch.compile(fullgraph=True)`` without a graph break."""
    y = _fixed_conv2d(x, weight, bias, auto_path(x, weight, bias) if path == "auto" else path)
    if _is_channels_last(x) and not y.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous(memory_format=torch.channels_last)
    return y


def _fixed_conv2d(x, weight, bias, path):
    if path == "fused":
        dtype = torch_fused.autocast_dtype(x)
        if torch_fused.runs_fast(x.device.type, dtype):
            return torch_fused.fused_conv2d(x, weight, bias)
        if not torch.compiler.is_compiling():
            _say_fused_falls_back(x, dtype)
        path = "fixed"
    return network.factored_conv(BACKEND, x, weight, bias, path, _KERNELS)


class FixedConv2d(nn.Module):
    def __init__(self, in_channels, out_channels, bias=True, path="auto", device=None, dtype=None, basis="fxnn"):
        super().__init__()
        if path not in PATHS:
            raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
        kernels = basis_kernels(basis)
        #: the basis' name, or "custom" for an array; None of the module's state
        self.basis = basis if isinstance(basis, str) else "custom"
        if self.basis != "fxnn":
            if path not in ("auto", "folded"):
                raise ValueError(f"path {path!r} computes fxnn's five kernels only; a layer over basis "
                                 f"{self.basis!r} runs folded: use path='folded' or 'auto'")
            path = "folded"
            # a buffer, so that .to(device) moves it, not in the state_dict; float64, cast
            # to the weight's dtype when folded, so that .double() after float32 loses nothing
            self.register_buffer("kernels", torch.tensor(kernels, dtype=torch.float64, device=device),
                                 persistent=False)
        self.in_channels, self.out_channels, self.path = in_channels, out_channels, path
        self.num_kernels = len(kernels)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.num_kernels * in_channels, out_channels, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        """fxnn's initialisation: uniform +-0.3/sqrt(K*M + N) (K = 5 for
        fxnn's kernels), bias zero."""
        bound = FXNN_1X1_INIT_SCALE / math.sqrt(self.num_kernels * self.in_channels + self.out_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x):
        if self.basis != "fxnn":
            return network.factored_conv(BACKEND, x, self.weight, self.bias, "folded", self.kernels)
        return fixed_conv2d(x, self.weight, self.bias, self.path)

    def extra_repr(self):
        basis = "" if self.basis == "fxnn" else f" ({self.basis} basis)"
        return (f"{self.in_channels}, {self.out_channels}, fixed 3x3 x{self.num_kernels}{basis} + 1x1, "
                f"bias={self.bias is not None}, path={self.path}")
