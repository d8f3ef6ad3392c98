"""The fixed stage as a PyTorch operator: (B, M, H, W) -> (B, 5M, H, W).

Three implementations behind :func:`fixed_stage`:

* the PyCUDA kernel of ``kernels/simple_conv.cu`` for CUDA tensors, when
  PyCUDA and a GPU are there (``kernels.cuda_fixed.available()``);
* the C kernel of ``kernels/fixed_cpu.c`` for float32/float64 CPU tensors,
  when ``pip install`` built it (``kernels.cpu_fixed.available()``): one pass
  over memory each way (README Performance has how it compares);
* otherwise (and as the reference the two are tested against beside the
  numpy one) a separable one in plain torch ops, for any device: the input is
  padded once, the two vertical passes ([1,2,1] and [1,0,-1]) are computed
  once and shared by the four non-identity kernels, and each horizontal pass
  writes straight into its slot of a preallocated (B, M, 5, H, W) output,
  which is the 5M layout of :mod:`fxnn.kernels.fixed_kernels` without a copy.

The backward is the adjoint (correlation with the kernels flipped in both
axes), also separable; it is itself an operator whose backward is the
forward, so higher derivatives work too. Both are ``torch.library`` custom
operators (``torch.ops.fxnn.fixed_stage``, ``torch.ops.fxnn.fixed_stage_adjoint``)
with fake (shape) implementations and autograd formulas, so
``torch.compile(fullgraph=True)`` traces through them without a graph break.
"""
import logging

import torch
import torch.nn.functional as F

from .fixed_kernels import NUM_KERNELS, SEPARABLE

log = logging.getLogger("fxnn")
_announced = set()


def _correlate(v, taps, dim, out=None):
    """Valid 3-tap correlation of ``v`` along ``dim`` (the size shrinks by 2),
    written into ``out`` when given."""
    n = v.shape[dim] - 2
    terms = [(float(t), v.narrow(dim, i, n)) for i, t in enumerate(taps) if t]
    (t0, first), rest = terms[0], terms[1:]
    if out is None:
        out = first * t0 if t0 != 1 else first.clone()
    else:
        torch.mul(first, t0, out=out)
    for t, term in rest:
        out.add_(term, alpha=t)
    return out


def forward_torch(x: torch.Tensor) -> torch.Tensor:
    """The separable forward in torch ops; see the module docstring."""
    b, m, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1))
    out = x.new_empty((b, m, NUM_KERNELS, h, w))
    vertical = {}
    for k, sep in enumerate(SEPARABLE):
        if sep is None:
            out[:, :, k].copy_(x)
            continue
        col, row = sep
        if tuple(col) not in vertical:
            vertical[tuple(col)] = _correlate(xp, col, dim=2)
        _correlate(vertical[tuple(col)], row, dim=3, out=out[:, :, k])
    return out.view(b, m * NUM_KERNELS, h, w)


def backward_torch(g: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`forward_torch`: (B, 5M, H, W) -> (B, M, H, W).
    Flipping a separable kernel flips both factors; kernels sharing a flipped
    column filter are summed after their horizontal pass, so each distinct
    column filter costs one vertical pass."""
    b, c, h, w = g.shape
    g5 = g.view(b, c // NUM_KERNELS, NUM_KERNELS, h, w)
    gp = F.pad(g5, (1, 1, 1, 1))
    by_column = {}
    dx = None
    for k, sep in enumerate(SEPARABLE):
        if sep is None:
            identity = k
            continue
        col, row = sep[0][::-1], sep[1][::-1]
        horizontal = _correlate(gp[:, :, k], row, dim=3)
        if tuple(col) in by_column:
            by_column[tuple(col)].add_(horizontal)
        else:
            by_column[tuple(col)] = horizontal
    for col, acc in by_column.items():
        part = _correlate(acc, col, dim=2)
        dx = part if dx is None else dx.add_(part)
    return dx.add_(g5[:, :, identity])


CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CPU_DTYPES = (torch.float32, torch.float64)


def _kernel_module(device_type):
    """(module, description): kernels.cuda_fixed or kernels.cpu_fixed for
    ``device_type`` when it can run, else (None, why not)."""
    try:
        if device_type == "cuda":
            from . import cuda_fixed as module
        elif device_type == "cpu":
            from . import cpu_fixed as module
        else:
            return None, f"no native kernel for {device_type}"
    except ImportError as e:
        return None, str(e)
    ok, why = module.available()
    return (module if ok else None), why


def _native_kernel(x):
    """The native kernel module that can run on ``x``, else None (e.g. float64
    CUDA tensors, for gradcheck, take the torch path)."""
    if x.dtype not in (CUDA_DTYPES if x.is_cuda else CPU_DTYPES):
        return None
    return _kernel_module(x.device.type)[0]


def implementation_name(device):
    """Which implementation runs the fixed stage on ``device``, in words."""
    module, why = _kernel_module(torch.device(device).type)
    if module is not None:
        return why
    return f"separable torch ops (native kernel unavailable: {why})"


def _announce(x):
    if x.device.type not in _announced:
        _announced.add(x.device.type)
        log.info("fixed stage on %s: %s", x.device.type, implementation_name(x.device))


def _native_or_torch(native_call, torch_call):
    """An operator kernel: ``native_call`` of the native kernel module where
    it runs on the tensor (see :func:`_native_kernel`), else ``torch_call``."""
    def kernel(t):
        _announce(t)
        module = _native_kernel(t)
        return getattr(module, native_call)(t.contiguous()) if module else torch_call(t)
    return kernel


#: The fixed stage and its adjoint as PyTorch operators, opaque to
#: ``torch.compile``: the separable torch ops on any device, and for the CPU
#: and CUDA dispatch keys the native kernel (C, PyCUDA) where it runs.
fixed_stage_op = torch.library.custom_op("fxnn::fixed_stage", forward_torch, mutates_args=())
fixed_stage_adjoint = torch.library.custom_op("fxnn::fixed_stage_adjoint", backward_torch, mutates_args=())
fixed_stage_op.register_kernel(("cpu", "cuda"))(_native_or_torch("fixed_forward", forward_torch))
fixed_stage_adjoint.register_kernel(("cpu", "cuda"))(_native_or_torch("fixed_backward", backward_torch))


@fixed_stage_op.register_fake
def _fixed_stage_fake(x):
    b, m, h, w = x.shape
    return x.new_empty((b, NUM_KERNELS * m, h, w))


@fixed_stage_adjoint.register_fake
def _fixed_stage_adjoint_fake(g):
    b, c, h, w = g.shape
    torch._check(c % NUM_KERNELS == 0, lambda: f"gradient has {c} channels, not a multiple of {NUM_KERNELS}")
    return g.new_empty((b, c // NUM_KERNELS, h, w))


# Each is the other's derivative (both are linear), so derivatives of any order work.
fixed_stage_op.register_autograd(lambda ctx, g: fixed_stage_adjoint(g))
fixed_stage_adjoint.register_autograd(lambda ctx, gx: fixed_stage_op(gx))


def fixed_stage(x):
    """The five fixed kernels on each channel of ``x`` (B, M, H, W), zero padded:
    (B, 5M, H, W) with channel ``5*m + k`` (see :mod:`fxnn.kernels.fixed_kernels`)."""
    if x.dim() != 4:
        raise ValueError(f"fixed_stage expects a 4-D (B, M, H, W) tensor, got shape {tuple(x.shape)}")
    return fixed_stage_op(x)
