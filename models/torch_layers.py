"""``FixedConv2d``: the fxnn layer as a drop-in PyTorch module.

    layer = FixedConv2d(64, 128, 3, stride=2, padding=1)   # for nn.Conv2d(64, 128, 3, stride=2, padding=1)

The fixed stage (:func:`fxnn.kernels.torch_fixed.fixed_stage`, five fixed 3x3
kernels per input channel, nothing trainable) followed by a trainable 1x1
convolution, with ``nn.Conv2d``'s arguments (what a fixed 3x3 stage cannot
be is refused: :func:`refusal`). ``weight`` is in PyTorch's order,
(out_channels, in_channels, 5); the engines and fxnn's ``.mat`` records keep
the original's (5 * in_channels, out_channels) layout, row ``5*m + k`` (the
5M layout of :mod:`fxnn.kernels.fixed_kernels`): :func:`record_layout` and
:func:`pytorch_layout` are the two views of one another, and
:func:`fixed_conv2d_record` is the layer on the record layout (the engines'
and benchmarks' form). It computes on one of the paths of
:mod:`fxnn.models.fxnn_paths` (fixed, fused, folded), by default the one
measured fastest for its shape and stride. ``FixedConv2d(M, N, basis="dct")``
(a name of :mod:`fxnn.models.fixed_bases`, or a (K, 3, 3) array) runs its 1x1
over another fixed basis instead: weight (out_channels, in_channels, K),
always on the folded path (the fixed and fused paths compute fxnn's five
kernels only). :func:`fixed_conv2d` is the functional form
(``fxnn.functional``).
"""
import functools
import logging
import math
import numbers
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fxnn.kernels import torch_fused
from fxnn.kernels.fixed_kernels import KERNELS, NUM_KERNELS
from fxnn.kernels.torch_fixed import fixed_stage, out_size
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


def path_contenders(shape, dtype, device, train, input_grad, bias=True, autocast=None, channels_last=False,
                    stride=1):
    """{path: callable}: one pass of an fxnn layer of ``shape`` (B, M, N, H, W)
    and ``stride`` on each available path, on random data with the timing batch of
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
    dy = torch.randn(x.shape[0], n, out_size(h, stride), out_size(w, stride), generator=g).to(device, autocast or dtype)
    if channels_last:
        dy = dy.contiguous(memory_format=torch.channels_last)

    def run(path):
        def forward():
            with torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
                return fixed_conv2d_record(x, weight, b_, path, stride)

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
    b, m, n, h, w, stride, dtype, autocast, channels_last, device, train, input_grad, bias = call
    threads = torch.get_num_threads()
    if (call, threads) not in _auto:
        device = torch.device(device)
        compute = autocast or dtype
        paths = available_paths(torch.empty(0, dtype=dtype, device=device), compute)
        key = {"engine": "torch", "torch": torch.__version__, "device": device.type, "dtype": str(dtype),
               "threads": threads, "shape": [b, m, n, h, w], "pass": "train" if train else "valid",
               "input_grad": input_grad, "bias": bias,
               "fused": implementation("fused", device, compute) if "fused" in paths else None}
        if stride != 1:  # keys of stride-1 layers stay as they were
            key["stride"] = stride
        if autocast is not None:  # keys of float32 layers stay as they were
            key["autocast"] = str(autocast)
        if channels_last:
            key["channels_last"] = True
        if device.type == "cuda":
            key["gpu"] = torch.cuda.get_device_name(device)
        _auto[call, threads] = fxnn_paths.choose(key, paths, lambda: path_contenders(
            key["shape"], dtype, device, train, input_grad, bias, autocast, channels_last, stride))
    return _auto[call, threads]


def _is_channels_last(x):
    """Whether ``x`` is laid out channels_last (and not also NCHW-contiguous,
    as a tensor of one channel or one pixel is both)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def auto_path(x, weight, bias=None, stride=1):
    """The path ``auto`` takes for this layer call (``weight`` in the record
    layout (5M, N)): measured once per shape, stride, dtype (and autocast
    dtype), memory format, device, thread count and pass (training when
    autograd records). Under ``torch.compile`` it is chosen when the graph
    is traced."""
    train = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                         or (bias is not None and bias.requires_grad))
    # operator.index: under torch.compile with dynamic shapes it specializes
    # the sizes (a graph per shape, guarded), as auto's choice is per shape
    b, m, n, h, w = (operator.index(size) for size in (x.shape[0], x.shape[1], weight.shape[1], *x.shape[2:]))
    compute = torch_fused.autocast_dtype(x)
    return _measured_path((b, m, n, h, w, stride, x.dtype, compute if compute != x.dtype else None,
                           _is_channels_last(x), str(x.device), train, train and x.requires_grad,
                           bias is not None))


def _say_fused_falls_back(x, dtype):
    if (x.device.type, dtype) not in _fallbacks:
        _fallbacks.add((x.device.type, dtype))
        log.info("fused fxnn path unavailable for %s %s tensors (%s): running the fixed path",
                 x.device.type, dtype, torch_fused.implementation_name(x.device, dtype))


def fixed_conv2d_record(x, weight, bias=None, path="fixed", stride=1):
    """The fxnn layer with ``weight`` in the record layout (5M, N), row
    ``5*m + k`` (that of the engines and ``.mat`` records), on ``path`` (see
    :mod:`fxnn.models.fxnn_paths`): "fixed" runs the fixed stage then the 1x1
    GEMM, "fused" the fused kernel, "folded" one dense 3x3 conv with the
    folded kernels, "auto" the fastest as measured for this call's shape;
    padding 1, every ``stride``-th output pixel. "fused" on a tensor it
    cannot run on (float64, CUDA without Triton, no C build) runs the fixed
    path and says so once. Under autocast every path computes in the
    autocast dtype, as ``F.conv2d`` does; a channels_last input gives a
    channels_last result. Every path traces under
    ``torch.compile(fullgraph=True)`` without a graph break.
    :func:`fixed_conv2d` is the same in PyTorch's weight order."""
    y = _fixed_conv2d(x, weight, bias, auto_path(x, weight, bias, stride) if path == "auto" else path, stride)
    if _is_channels_last(x) and not y.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous(memory_format=torch.channels_last)
    return y


def _fixed_conv2d(x, weight, bias, path, stride):
    if path == "fused":
        dtype = torch_fused.autocast_dtype(x)
        if torch_fused.runs_fast(x.device.type, dtype):
            return torch_fused.fused_conv2d(x, weight, bias, stride)
        if not torch.compiler.is_compiling():
            _say_fused_falls_back(x, dtype)
        path = "fixed"
    return network.factored_conv(BACKEND, x, weight, bias, path, _KERNELS, stride)


# ---- the layer in PyTorch's conventions -------------------------------------

#: What a conv must be to be a FixedConv2d, in words (the refusals say it).
SUPPORTED = ("kernel_size=3, stride 1 or 2, padding=1 (or 'same' at stride 1), dilation=1, groups=1, "
             "padding_mode='zeros'")


def _pair(value):
    """``value`` as a pair of ints: an integer twice, a sequence of two as a
    tuple, else None."""
    def integer(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if integer(value):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(integer(v) for v in value):
        return int(value[0]), int(value[1])
    return None


def refusal(kernel_size=3, stride=1, padding=1, dilation=1, groups=1, padding_mode="zeros"):
    """Why a conv with these ``nn.Conv2d`` arguments cannot be a
    :class:`FixedConv2d` (one line naming what is supported), or None."""
    got = []
    if _pair(kernel_size) != (3, 3):
        got.append(f"kernel_size={kernel_size!r}")
    if _pair(stride) not in ((1, 1), (2, 2)):
        got.append(f"stride={stride!r}")
    if not (_pair(padding) == (1, 1) or (padding == "same" and _pair(stride) == (1, 1))):
        got.append(f"padding={padding!r}" + (f" with stride={stride!r}" if padding == "same" else ""))
    if _pair(dilation) != (1, 1):
        got.append(f"dilation={dilation!r}")
    if groups != 1:
        got.append(f"groups={groups!r}")
    if padding_mode != "zeros":
        got.append(f"padding_mode={padding_mode!r}")
    return f"FixedConv2d supports {SUPPORTED}; got {', '.join(got)}" if got else None


def _check(**arguments):
    reason = refusal(**arguments)
    if reason:
        raise ValueError(reason)


def record_layout(weight):
    """A (N, M, K) FixedConv2d weight as the (K*M, N) record layout, row
    ``K*m + k`` (a view; differentiable)."""
    return weight.reshape(weight.shape[0], -1).t()


def pytorch_layout(record, num_kernels=NUM_KERNELS):
    """A (K*M, N) record-layout weight as FixedConv2d's (N, M, K) (a view)."""
    rows, n = record.shape
    return record.t().reshape(n, rows // num_kernels, num_kernels)


def _basis(basis):
    """The (K, 3, 3) kernels of ``basis`` (a name, an array or a tensor) as
    :func:`fxnn.models.network.fold` takes them."""
    if isinstance(basis, str) and basis == "fxnn":
        return _KERNELS
    return basis if isinstance(basis, torch.Tensor) else basis_kernels(basis)


def dense_weight(weight, basis="fxnn"):
    """The (N, M, 3, 3) dense kernels ``sum_k weight[n, m, k] * basis[k]`` of a
    FixedConv2d weight (N, M, K): the ``nn.Conv2d`` weight computing the same
    (:func:`fxnn.functional.dense_weight`); differentiable."""
    return network.fold(BACKEND, record_layout(weight), _basis(basis))


def fixed_conv2d(input, weight, bias=None, stride=1, padding=1, path="auto", basis="fxnn"):
    """The functional form of :class:`FixedConv2d` (:func:`fxnn.functional.fixed_conv2d`):
    ``input`` (B, M, H, W) or (M, H, W), ``weight`` (N, M, K) in PyTorch's
    order, ``bias`` (N,) or None, ``stride`` 1 or 2, ``padding`` 1 or "same"
    (stride 1), ``path`` as :class:`FixedConv2d`'s; ``basis`` the name of a
    basis of :mod:`fxnn.models.fixed_bases`, a (K, 3, 3) array or tensor
    (not fxnn's: folded only). Returns (B, N, Ho, Wo), Ho = (H - 1) // stride + 1."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    fxnn_basis = isinstance(basis, str) and basis == "fxnn"
    if not fxnn_basis and path not in ("auto", "folded"):
        raise ValueError(f"path {path!r} computes fxnn's five kernels only; another basis runs folded: "
                         f"use path='folded' or 'auto'")
    kernels = _basis(basis)
    k = kernels.shape[0]
    if weight.dim() != 3 or weight.shape[2] != k:
        raise ValueError(f"weight must be (out_channels, in_channels, {k}) for a basis of {k} kernels, got shape "
                         f"{tuple(weight.shape)} (a ({k}M, N) record-layout weight takes fixed_conv2d_record)")
    _check(stride=stride, padding=padding)
    stride = _pair(stride)[0]
    if input.dim() not in (3, 4) or input.shape[-3] != weight.shape[1]:
        raise ValueError(f"input must be (B, {weight.shape[1]}, H, W) or ({weight.shape[1]}, H, W) for a weight "
                         f"of {weight.shape[1]} input channels, got shape {tuple(input.shape)}")
    x = input if input.dim() == 4 else input[None]
    record = record_layout(weight)
    if fxnn_basis:
        y = fixed_conv2d_record(x, record, bias, path, stride)
    else:
        y = network.factored_conv(BACKEND, x, record, bias, "folded", kernels, stride)
    return y if input.dim() == 4 else y[0]


class FixedConv2d(nn.Module):
    r"""A 3x3 convolution over a fixed basis: each input channel is
    correlated with K fixed 3x3 kernels (fxnn's five by default: smooth,
    Sobel y, Sobel x, cross, identity; nothing trainable), then a trainable
    1x1 convolution mixes the K*M responses into ``out_channels``. It takes
    ``nn.Conv2d``'s arguments and computes what an ``nn.Conv2d(in_channels,
    out_channels, 3, stride, padding=1)`` would with the dense kernels
    ``W[n, m] = sum_k weight[n, m, k] * basis[k]`` (:func:`fold`), with 5/9 of
    its trainable weights.

    Args:
        in_channels: channels of the input, M.
        out_channels: channels of the output, N.
        kernel_size: 3 (the basis' kernels are 3x3).
        stride: 1 or 2 (an int or a pair of equal ints).
        padding: 1 or "same" (stride 1 only); zeros.
        dilation, groups: 1.
        bias: whether to add a trainable bias (N,).
        padding_mode: "zeros".
        device, dtype: of the parameters.
        basis: "fxnn" (the five kernels, every path), a name of
            :data:`fxnn.models.fixed_bases.BASES` or a (K, 3, 3) array:
            another basis, always computed folded.
        path: how to compute it (:mod:`fxnn.models.fxnn_paths`): "fixed"
            (the fixed stage, then the 1x1 as a GEMM), "fused" (one kernel,
            the K*M responses never stored), "folded" (a dense 3x3 conv
            with the folded kernels) or "auto" (the fastest, measured once
            per shape, stride, dtype and pass).

    Any other ``kernel_size``, ``stride``, ``padding``, ``dilation``,
    ``groups`` or ``padding_mode`` is refused with a ValueError naming what
    is supported.

    Shape:
        - Input: (B, M, H, W) or (M, H, W).
        - Output: (B, N, Ho, Wo) or (N, Ho, Wo), Ho = (H - 1) // stride + 1,
          Wo = (W - 1) // stride + 1.

    Attributes:
        weight: (out_channels, in_channels, K), ``weight[n, m, k]`` the
            coefficient of kernel k of input channel m in output channel n;
            ``nn.init`` sees fan_in = M*K. :meth:`record_weight` gives it in
            the (K*M, N) layout of fxnn's engines and ``.mat`` records (row
            ``K*m + k``), :meth:`load_record_weight` sets it from one.
        bias: (out_channels,), or None.

    Examples::

        >>> layer = FixedConv2d(16, 32, 3, stride=2, padding=1)
        >>> layer(torch.randn(8, 16, 28, 28)).shape
        torch.Size([8, 32, 14, 14])
        >>> layer.weight.shape
        torch.Size([32, 16, 5])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=1, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 basis="fxnn", path: str = "auto") -> None:
        super().__init__()
        _check(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, groups=groups,
               padding_mode=padding_mode)
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
        self.kernel_size, self.stride = (3, 3), _pair(stride)
        self.padding = padding if padding == "same" else (1, 1)
        self.dilation, self.groups, self.padding_mode = (1, 1), 1, "zeros"
        self.num_kernels = len(kernels)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, self.num_kernels, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """fxnn's initialisation: weight uniform in +-0.3/sqrt(K*M + N)
        (:data:`fxnn.models.architecture.FXNN_1X1_INIT_SCALE`; K = 5 for
        fxnn's kernels), bias zero."""
        bound = FXNN_1X1_INIT_SCALE / math.sqrt(self.num_kernels * self.in_channels + self.out_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def record_weight(self) -> torch.Tensor:
        """The weight in the record layout (K*M, N), row ``K*m + k``: a view."""
        return record_layout(self.weight)

    @torch.no_grad()
    def load_record_weight(self, record) -> None:
        """Set the weight from a (K*M, N) record-layout array or tensor (as
        a ``.mat`` record's ``conv*_w`` holds it)."""
        record = torch.as_tensor(record)
        expected = (self.num_kernels * self.in_channels, self.out_channels)
        if tuple(record.shape) != expected:
            raise ValueError(f"a record weight of this layer is {expected}, got {tuple(record.shape)}")
        self.weight.copy_(pytorch_layout(record, self.num_kernels))

    def _basis(self):
        return "fxnn" if self.basis == "fxnn" else self.kernels

    def dense_weight(self) -> torch.Tensor:
        """The (N, M, 3, 3) kernels of the ``nn.Conv2d`` computing the same
        (:func:`dense_weight`); differentiable."""
        return dense_weight(self.weight, self._basis())

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return fixed_conv2d(input, self.weight, self.bias, self.stride[0], self.padding, self.path, self._basis())

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")
        if self.bias is None:
            text += ", bias=False"
        return text + f", basis={self.basis}, path={self.path}"
