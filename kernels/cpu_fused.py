"""The fused fxnn layer of ``kernels/fused_cpu.c`` on PyTorch CPU tensors.

:func:`forward`, :func:`weight_grad` and :func:`input_grad` take float32
tensors in the layouts of ``kernels/fixed_kernels.py`` (x (B, M, H, W), weight
(5M, N), y and dy (B, N, Ho, Wo)) and a stride s of :data:`STRIDES` (Ho =
(H-1)//s + 1, Wo likewise; the fixed stage is computed at the output's
pixels only) and use
``torch.get_num_threads()`` threads.
The instruction set is :func:`fxnn.kernels.native.isa`: the best this CPU runs,
or the one named by the environment variable ``FXNN_ISA`` (``avx512``,
``avx2`` or ``portable``), which tests use to run every path the machine
supports. Where the extension could not be built, the fused path is not
offered (:func:`fxnn.kernels.capabilities.capability` says why).

Float32 tensors in channels_last memory format (x for the forward and the
weight gradient, dy for the input gradient) run the channels_last kernels of
the same file, which read and write (B, H, W, C) memory as it lies: their
4-D results are channels_last too, with no copy either way.

The same three functions take bfloat16 tensors (every argument bf16; the
outputs bf16, of the same shapes) and then run the bfloat16 kernels of
``kernels/fused_bf16_cpu.c`` (fixed stage in float32, rounded once to bf16,
products accumulated in float32, outputs rounded to nearest even), in the
instruction set :func:`fxnn.kernels.native.bf16_isa`: ``amx`` or
``avx512bf16`` where the CPU has them, or the one ``FXNN_BF16_ISA`` names
(the capability of "fused" in bfloat16 says whether that path is worth
offering: not on the portable stand-ins alone, which are exact but slow).
"""
import torch

from . import native
from .fixed_kernels import NUM_KERNELS
from .native import isa
from .native import module as _fixed_cpu
from .torch_fixed import out_size


def _array(t):
    return t.detach().contiguous().numpy()


def _bits(t):
    """The int16 view of a bfloat16 tensor, as numpy (no copy when contiguous)."""
    return t.detach().contiguous().view(torch.int16).numpy()


def channels_last(t):
    """Whether ``t`` is 4-D in channels_last memory format and not also
    NCHW-contiguous (as a tensor of one channel or one pixel is both)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _nhwc(t):
    """The (B, H, W, C) memory of a channels_last float32 tensor, as numpy."""
    return t.detach().permute(0, 2, 3, 1).numpy()


def _empty_nhwc(like, shape):
    """An uninitialised channels_last tensor of NCHW ``shape``."""
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


def _is_bf16(*tensors):
    """True when every tensor given (None skipped) is bfloat16; ValueError
    when some are and some are not."""
    kinds = {t.dtype == torch.bfloat16 for t in tensors if t is not None}
    if len(kinds) > 1:
        raise ValueError("the fused kernels take all tensors float32 or all bfloat16, got "
                         + ", ".join(str(t.dtype) for t in tensors if t is not None))
    return kinds == {True}


#: The strides the kernels run.
STRIDES = (1, 2)


def _check_stride(stride):
    if isinstance(stride, bool) or stride not in STRIDES:
        raise ValueError(f"the fused CPU kernels run stride 1 or 2, got {stride!r}")


def forward(x, weight, bias=None, stride=1):
    """y = bias + W^T fixed(x) at the pixels (s*i, s*j), the fixed stage
    computed there only: (B, M, H, W) -> (B, N, (H-1)//s + 1, (W-1)//s + 1)."""
    _check_stride(stride)
    b, _, h, w = x.shape
    shape = (b, weight.shape[1], out_size(h, stride), out_size(w, stride))
    if not _is_bf16(x, weight, bias) and channels_last(x):
        y = _empty_nhwc(x, shape)
        _fixed_cpu.fused_forward(_nhwc(x), _array(weight), None if bias is None else _array(bias), _nhwc(y),
                                 torch.get_num_threads(), isa(), stride, True)
        return y
    y = x.new_empty(shape)
    if _is_bf16(x, weight, bias):
        _fixed_cpu.fused_forward_bf16(_bits(x), _bits(weight), None if bias is None else _bits(bias),
                                      y.view(torch.int16).numpy(), torch.get_num_threads(), native.bf16_isa(), stride)
        return y
    _fixed_cpu.fused_forward(_array(x), _array(weight), None if bias is None else _array(bias), y.numpy(),
                             torch.get_num_threads(), isa(), stride)
    return y


def weight_grad(x, dy, bias=True, stride=1):
    """(dweight (5M, N), dbias (N,) or None) for output gradient dy of the
    layer at ``stride``."""
    _check_stride(stride)
    m, n = x.shape[1], dy.shape[1]
    dw = x.new_empty((NUM_KERNELS * m, n))
    db = x.new_empty((n,)) if bias else None
    if not _is_bf16(x, dy) and channels_last(x):
        _fixed_cpu.fused_wgrad(_nhwc(x), _nhwc(dy.contiguous(memory_format=torch.channels_last)), dw.numpy(),
                               None if db is None else db.numpy(), torch.get_num_threads(), isa(), stride, True)
        return dw, db
    if _is_bf16(x, dy):
        _fixed_cpu.fused_wgrad_bf16(_bits(x), _bits(dy), dw.view(torch.int16).numpy(),
                                    None if db is None else db.view(torch.int16).numpy(),
                                    torch.get_num_threads(), native.bf16_isa(), stride)
        return dw, db
    _fixed_cpu.fused_wgrad(_array(x), _array(dy), dw.numpy(), None if db is None else db.numpy(),
                           torch.get_num_threads(), isa(), stride)
    return dw, db


def input_grad(dy, weight, stride=1, size=None):
    """dx (B, M, H, W) for output gradient dy of the layer at ``stride``;
    ``size`` is the input's (H, W), needed at stride > 1 (where several
    input sizes give dy's size), dy's own at stride 1."""
    _check_stride(stride)
    if size is None:
        if stride != 1:
            raise ValueError(f"input_grad at stride {stride} needs size=(H, W), the input's")
        size = dy.shape[2:]
    shape = (dy.shape[0], weight.shape[0] // NUM_KERNELS) + tuple(size)
    if not _is_bf16(dy, weight) and channels_last(dy):
        dx = _empty_nhwc(dy, shape)
        _fixed_cpu.fused_dgrad(_nhwc(dy), _array(weight), _nhwc(dx), torch.get_num_threads(), isa(), stride, True)
        return dx
    dx = dy.new_empty(shape)
    if _is_bf16(dy, weight):
        _fixed_cpu.fused_dgrad_bf16(_bits(dy), _bits(weight), dx.view(torch.int16).numpy(),
                                    torch.get_num_threads(), native.bf16_isa(), stride)
        return dx
    _fixed_cpu.fused_dgrad(_array(dy), _array(weight), dx.numpy(), torch.get_num_threads(), isa(), stride)
    return dx
