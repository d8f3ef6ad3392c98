"""The fixed stage as a PyTorch operator: (B, M, H, W) -> (B, 5M, Ho, Wo),
at every ``stride``-th pixel (Ho = (H - 1) // stride + 1, as a 3x3
convolution with zero padding 1 and that stride).

Three implementations behind :func:`fixed_stage`:

* the PyCUDA kernel of ``kernels/simple_conv.cu`` for CUDA tensors, when
  PyCUDA and a GPU are there;
* the C kernel of ``kernels/fixed_cpu.c`` for float32/float64 CPU tensors,
  when ``pip install`` built it: one pass over memory each way
  (docs/performance.md has how it compares);
* otherwise (and as the reference the two are tested against beside the
  numpy one) a separable one in plain torch ops, for any device: the input is
  padded once, the two vertical passes ([1,2,1] and [1,0,-1]) are computed
  once and shared by the four non-identity kernels, and each horizontal pass
  writes straight into its slot of a preallocated (B, M, 5, H, W) output,
  which is the 5M layout of :mod:`fxnn.kernels.fixed_kernels` without a copy.

Which runs, or why a kernel cannot, is :mod:`fxnn.kernels.capabilities`' answer.

The backward is the adjoint (correlation with the kernels flipped in both
axes), also separable; it is itself an operator whose backward is the
forward, so higher derivatives work too. Both are ``torch.library`` custom
operators (``torch.ops.fxnn.fixed_stage(x, stride)``,
``torch.ops.fxnn.fixed_stage_adjoint(g, stride, height, width)``, the latter
told the input's size, which stride > 1 does not determine) with fake (shape)
implementations and autograd formulas, so ``torch.compile(fullgraph=True)``
traces through them without a graph break.

At stride > 1 the separable torch ops compute only the pixels kept; the C
and PyCUDA kernels, which work at stride 1, compute the whole stage and keep
every ``stride``-th pixel, and for the adjoint put the gradient back at those
pixels of a zero (B, 5M, H, W) before their stride-1 adjoint.
"""
import logging

import torch
import torch.nn.functional as F

from .capabilities import capability
from .capabilities import fixed_stage as fixed_stage_name
from .fixed_kernels import NUM_KERNELS, SEPARABLE

log = logging.getLogger("fxnn")
_announced = set()


def out_size(size: int, stride: int) -> int:
    """The output's height or width for an input's ``size``: (size - 1) // stride + 1."""
    return (size - 1) // stride + 1


def _correlate(v, taps, dim, stride=1, out=None):
    """Valid 3-tap correlation of ``v`` along ``dim`` at every ``stride``-th
    position (the size goes from n + 2 to out_size(n, stride)), written into
    ``out`` when given."""
    n = out_size(v.shape[dim] - 2, stride)
    span = stride * (n - 1) + 1
    index = (slice(None),) * dim
    terms = [(float(t), v[index + (slice(i, i + span, stride),)]) for i, t in enumerate(taps) if t]
    (t0, first), rest = terms[0], terms[1:]
    if out is None:
        out = first * t0 if t0 != 1 else first.clone()
    else:
        torch.mul(first, t0, out=out)
    for t, term in rest:
        out.add_(term, alpha=t)
    return out


def forward_torch(x: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """The separable forward in torch ops; see the module docstring."""
    b, m, h, w = x.shape
    xp = F.pad(x, (1, 1, 1, 1))
    out = x.new_empty((b, m, NUM_KERNELS, out_size(h, stride), out_size(w, stride)))
    vertical = {}
    for k, sep in enumerate(SEPARABLE):
        if sep is None:
            out[:, :, k].copy_(x[..., ::stride, ::stride])
            continue
        col, row = sep
        if tuple(col) not in vertical:
            vertical[tuple(col)] = _correlate(xp, col, dim=2, stride=stride)
        _correlate(vertical[tuple(col)], row, dim=3, stride=stride, out=out[:, :, k])
    return out.view(b, m * NUM_KERNELS, out.shape[3], out.shape[4])


def _input_size(g, stride, height, width):
    """The input's (H, W) for the adjoint of gradient ``g``: given, or g's
    own at stride 1; ValueError unless g is the output of that size."""
    if height is None or width is None:
        if stride != 1:
            raise ValueError(f"the fixed stage's adjoint at stride {stride} needs the input's size "
                             "(several give one output size): pass height= and width=")
        height, width = g.shape[2], g.shape[3]
    if (g.shape[2], g.shape[3]) != (out_size(height, stride), out_size(width, stride)):
        raise ValueError(f"gradient of {g.shape[2]} x {g.shape[3]} pixels is not the stride-{stride} output "
                         f"of a {height} x {width} input")
    return height, width


def _upsample(g, stride, height, width):
    """``g`` at every ``stride``-th pixel of a zero (B, C, height, width): the
    adjoint of keeping those pixels; ``g`` itself at stride 1."""
    height, width = _input_size(g, stride, height, width)
    if stride == 1:
        return g
    full = g.new_zeros((g.shape[0], g.shape[1], height, width))
    full[..., ::stride, ::stride] = g
    return full


def backward_torch(g: torch.Tensor, stride: int = 1, height: int | None = None,
                   width: int | None = None) -> torch.Tensor:
    """The adjoint of :func:`forward_torch`: (B, 5M, Ho, Wo) -> (B, M, height,
    width). Flipping a separable kernel flips both factors; kernels sharing a
    flipped column filter are summed after their horizontal pass, so each
    distinct column filter costs one vertical pass."""
    g = _upsample(g, stride, height, width)
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


def _native_kernel(x):
    """kernels.cuda_fixed or kernels.cpu_fixed where it runs on ``x``
    (:mod:`fxnn.kernels.capabilities`), else None (e.g. float64 CUDA tensors,
    for gradcheck, take the torch ops); says once per device and dtype
    which runs."""
    kernel = capability("fixed", "torch", x.device, x.dtype)
    if (x.device.type, x.dtype) not in _announced:
        _announced.add((x.device.type, x.dtype))
        log.info("fixed stage on %s %s: %s", x.device.type, x.dtype, fixed_stage_name("torch", x.device, x.dtype))
    if not kernel:
        return None
    if x.device.type == "cuda":
        from . import cuda_fixed
        return cuda_fixed
    from . import cpu_fixed
    return cpu_fixed


def _forward_kernel(x, stride=1):
    """The fixed stage's CPU and CUDA kernel: the native kernel where it runs
    on ``x`` (see :func:`_native_kernel`), every ``stride``-th pixel of its
    stride-1 result; else the separable torch ops."""
    module = _native_kernel(x)
    if module is None:
        return forward_torch(x, stride)
    y = module.fixed_forward(x.contiguous())
    return y if stride == 1 else y[..., ::stride, ::stride].contiguous()


def _adjoint_kernel(g, stride=1, height=None, width=None):
    """The adjoint's CPU and CUDA kernel: the native kernel's stride-1
    adjoint of the upsampled gradient where it runs, else the torch ops."""
    module = _native_kernel(g)
    if module is None:
        return backward_torch(g, stride, height, width)
    return module.fixed_backward(_upsample(g, stride, height, width).contiguous())


#: The fixed stage and its adjoint as PyTorch operators, opaque to
#: ``torch.compile``: the separable torch ops on any device, and for the CPU
#: and CUDA dispatch keys the native kernel (C, PyCUDA) where it runs.
fixed_stage_op = torch.library.custom_op("fxnn::fixed_stage", forward_torch, mutates_args=())
fixed_stage_adjoint = torch.library.custom_op("fxnn::fixed_stage_adjoint", backward_torch, mutates_args=())
fixed_stage_op.register_kernel(("cpu", "cuda"))(_forward_kernel)
fixed_stage_adjoint.register_kernel(("cpu", "cuda"))(_adjoint_kernel)


@fixed_stage_op.register_fake
def _fixed_stage_fake(x, stride=1):
    b, m, h, w = x.shape
    return x.new_empty((b, NUM_KERNELS * m, out_size(h, stride), out_size(w, stride)))


@fixed_stage_adjoint.register_fake
def _fixed_stage_adjoint_fake(g, stride=1, height=None, width=None):
    b, c, ho, wo = g.shape
    torch._check(c % NUM_KERNELS == 0, lambda: f"gradient has {c} channels, not a multiple of {NUM_KERNELS}")
    if height is None or width is None:
        torch._check(stride == 1, lambda: f"the adjoint at stride {stride} needs the input's height and width")
        height, width = ho, wo
    torch._check(ho == out_size(height, stride) and wo == out_size(width, stride),
                 lambda: f"gradient of {ho} x {wo} pixels is not the stride-{stride} output of {height} x {width}")
    return g.new_empty((b, c // NUM_KERNELS, height, width))


# Each is the other's derivative (both are linear), so derivatives of any
# order work; the int arguments have none.
def _save_forward(ctx, inputs, output):
    x, ctx.stride = inputs
    ctx.size = x.shape[2:]


def _save_adjoint(ctx, inputs, output):
    ctx.stride = inputs[1]


fixed_stage_op.register_autograd(lambda ctx, g: (fixed_stage_adjoint(g, ctx.stride, *ctx.size), None),
                                 setup_context=_save_forward)
fixed_stage_adjoint.register_autograd(lambda ctx, gx: (fixed_stage_op(gx, ctx.stride), None, None, None),
                                      setup_context=_save_adjoint)


def check_stride(stride, where="fixed_stage"):
    """ValueError unless ``stride`` is an int >= 1 (a bool is not)."""
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise ValueError(f"{where}: stride must be an int >= 1, got {stride!r}")


def fixed_stage(x, stride=1):
    """The five fixed kernels on each channel of ``x`` (B, M, H, W), zero
    padded, at every ``stride``-th pixel: (B, 5M, (H-1)//stride + 1,
    (W-1)//stride + 1) with channel ``5*m + k`` (see
    :mod:`fxnn.kernels.fixed_kernels`); the same as a grouped
    ``F.conv2d(x, kernels, stride=stride, padding=1)``."""
    if x.dim() != 4:
        raise ValueError(f"fixed_stage expects a 4-D (B, M, H, W) tensor, got shape {tuple(x.shape)}")
    check_stride(stride)
    return fixed_stage_op(x, stride)
