"""``auto`` for the PyTorch engine and :class:`~fxnn.models.torch.layer.FixedConv2d`:
which paths of :mod:`fxnn.models.fxnn_paths` (fixed, fused, folded) can run an
fxnn layer on a tensor (:mod:`fxnn.kernels.capabilities` answers), and the one measured
fastest per shape, stride, dtype, memory format, device, thread count and
pass; and :func:`fixed_conv2d_record`, the layer on the record layout (5M, N)
computed on a path (the engines' and benchmarks' form)."""
import logging
import operator

import torch

from fxnn.kernels import capabilities, torch_fused
from fxnn.kernels.fixed_kernels import NUM_KERNELS
from fxnn.kernels.torch_fixed import out_size

from .. import fxnn_paths, network
from .backend import KERNELS_TENSOR, BACKEND

log = logging.getLogger("fxnn")
_fallbacks = set()


def available_paths(x, dtype=None):
    """The paths that can compute an fxnn layer on tensor ``x`` in ``dtype``
    (default: what autocast computes ``x`` in, see
    :func:`fxnn.kernels.torch_fused.autocast_dtype`), fastest first by
    default (:func:`fxnn.models.fxnn_paths.default_path`)."""
    dtype = torch_fused.autocast_dtype(x) if dtype is None else dtype
    return capabilities.paths("torch", x.device, dtype)


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
        if device.type == "meta":  # tensors without data (shape inference): nothing to time
            _auto[call, threads] = fxnn_paths.default_path(paths)
            return _auto[call, threads]
        key = {"engine": "torch", "torch": torch.__version__, "device": device.type, "dtype": str(dtype),
               "threads": threads, "shape": [b, m, n, h, w], "pass": "train" if train else "valid",
               "input_grad": input_grad, "bias": bias,
               "fused": capabilities.implementation("fused", "torch", device, compute) if "fused" in paths else None}
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
                 x.device.type, dtype, capabilities.capability("fused", "torch", x.device, dtype).reason)


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
    return network.factored_conv(BACKEND, x, weight, bias, path, KERNELS_TENSOR, stride)

