"""The fused fxnn layer as PyTorch operators: the forward, the weight gradient
and the input gradient, each in one pass that never writes the 5M
fixed-stage channels to memory.

Three ``torch.library`` custom operators, each with a fake (shape)
implementation and an autograd formula, so ``torch.compile(fullgraph=True)``
traces through them without a graph break:

* ``fxnn::fused_forward(x, weight, bias, stride=1)``: y = bias + W^T fixed(x);
* ``fxnn::fused_weight_grad(x, dy, stride=1)``: (dW, dbias) = (fixed(x) dY^T, sum dY);
* ``fxnn::fused_input_grad(dy, weight, stride=1, height=None, width=None)``:
  dx = adjoint(W dY), of the input's (height, width) (needed at stride > 1,
  where several input sizes give one output size).

With stride s, fixed(x) is the fixed stage at the output's pixels (s*i, s*j)
only, (B, 5M, (H-1)//s + 1, (W-1)//s + 1), and its adjoint scatters back to
those pixels of the input.

Each is linear in each argument and the derivatives of each are the others
(see the autograd formulas below), so derivatives of any order stay on
these operators. Their kernels: ``kernels/fused_cpu.c`` for float32 CPU
tensors (NCHW, or channels_last as they lie, with a channels_last result)
and the bfloat16 kernels (AMX or AVX512-BF16) for bfloat16 CPU tensors
when the extension is built (:mod:`fxnn.kernels.cpu_fused`), the Triton
kernels of :mod:`fxnn.kernels.fused_triton` (:mod:`fxnn.kernels.cuda_fused`) for float32, float16 and bfloat16
CUDA tensors when Triton is installed; anything else (other dtypes and
devices) computes the same in torch ops (the fixed stage of
:mod:`fxnn.kernels.torch_fixed` and an einsum), the reference beside them.
"""
import torch

from . import cpu_fused, cuda_fused, native
from .capabilities import capability
from .fixed_kernels import NUM_KERNELS
from .torch_fixed import backward_torch, check_stride, forward_torch, out_size


@torch.compiler.assume_constant_result
def runs_fast(device_type: str, dtype: torch.dtype) -> bool:
    """Whether a fused kernel (not the torch-ops reference) runs on tensors
    of ``device_type`` and ``dtype`` (:mod:`fxnn.kernels.capabilities`); a
    constant to ``torch.compile``. An ``$FXNN_ISA`` (``$FXNN_BF16_ISA`` for
    bfloat16) this CPU does not run is an error, not a reason to fall back."""
    if device_type == "cpu":
        (native.check_bf16_isa if dtype == torch.bfloat16 else native.check_isa)()
    return bool(capability("fused", "torch", device_type, dtype))


def autocast_dtype(x):
    """The dtype autocast computes a convolution of ``x`` in: the autocast
    dtype of ``x``'s device when autocast is on there and ``x`` is a float32
    or reduced-precision tensor, else ``x``'s own dtype (autocast leaves
    float64 alone)."""
    device = x.device.type
    if x.dtype in (torch.float32, torch.bfloat16, torch.float16) and device in ("cpu", "cuda") \
            and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


# ---- the reference kernels, in torch ops (any device and dtype) -------------
# Stride s keeps the fixed stage at pixels (s*i, s*j) only (zero padding 1, as
# a 3x3 convolution with stride s); its adjoint puts the gradient back there
# (zeros elsewhere in the input's (height, width)) before the adjoint stencil:
# forward_torch and backward_torch of fxnn.kernels.torch_fixed at that stride.

def _forward_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 stride: int = 1) -> torch.Tensor:
    y = torch.einsum("bchw,cn->bnhw", forward_torch(x, stride), weight)
    return (y if bias is None else y + bias[:, None, None]).contiguous()


def _weight_grad_ref(x: torch.Tensor, dy: torch.Tensor, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.einsum("bchw,bnhw->cn", forward_torch(x, stride), dy).contiguous(), dy.sum((0, 2, 3))


def _input_size(dy, stride, height, width):
    """The input's (H, W): given, or dy's own at stride 1."""
    if height is None or width is None:
        if stride != 1:
            raise ValueError(f"fused_input_grad at stride {stride} needs the input's height and width "
                             "(several input sizes give the same output size): pass height= and width=")
        return dy.shape[2], dy.shape[3]
    return height, width


def _input_grad_ref(dy: torch.Tensor, weight: torch.Tensor, stride: int = 1,
                    height: int | None = None, width: int | None = None) -> torch.Tensor:
    h, w = _input_size(dy, stride, height, width)
    return backward_torch(torch.einsum("cn,bnhw->bchw", weight, dy), stride, h, w)


fused_forward = torch.library.custom_op("fxnn::fused_forward", _forward_ref, mutates_args=())
fused_weight_grad = torch.library.custom_op("fxnn::fused_weight_grad", _weight_grad_ref, mutates_args=())
fused_input_grad = torch.library.custom_op("fxnn::fused_input_grad", _input_grad_ref, mutates_args=())


# ---- the fast kernels, per dispatch key -------------------------------------

def _contiguous(*tensors):
    return [None if t is None else t.contiguous() for t in tensors]


def _dense(*tensors):
    """Each tensor contiguous in its own memory format: channels_last ones
    stay channels_last (the CPU kernels read them as they lie)."""
    return [None if t is None else t.contiguous(memory_format=torch.channels_last) if cpu_fused.channels_last(t)
            else t.contiguous() for t in tensors]


def _nhwc_out(t, stride):
    """Whether the fast kernel given ``t`` (x, or dy for the input gradient)
    returns a channels_last result: float32 CPU tensors in channels_last
    memory format, at a stride the kernels run."""
    return (t.device.type == "cpu" and t.dtype == torch.float32 and stride in FAST_STRIDES
            and cpu_fused.channels_last(t) and runs_fast("cpu", t.dtype))


#: The strides the fast kernels run; others take the reference.
FAST_STRIDES = (1, 2)


def _register_fast(device_type, module, prepare):
    """The kernels of ``module`` (cpu_fused or cuda_fused) for ``device_type``,
    with the reference where they cannot run; ``prepare`` lays out the
    tensors as the module takes them."""
    def fast(dtype, stride):
        return stride in FAST_STRIDES and runs_fast(device_type, dtype)

    @fused_forward.register_kernel(device_type)
    def _forward(x, weight, bias, stride=1):
        if not fast(x.dtype, stride):
            return _forward_ref(x, weight, bias, stride)
        return module.forward(*prepare(x, weight, bias), stride=stride)

    @fused_weight_grad.register_kernel(device_type)
    def _weight_grad(x, dy, stride=1):
        if not fast(x.dtype, stride):
            return _weight_grad_ref(x, dy, stride)
        return module.weight_grad(*prepare(x, dy), stride=stride)

    @fused_input_grad.register_kernel(device_type)
    def _input_grad(dy, weight, stride=1, height=None, width=None):
        if not fast(dy.dtype, stride):
            return _input_grad_ref(dy, weight, stride, height, width)
        return module.input_grad(*prepare(dy, weight), stride=stride,
                                 size=_input_size(dy, stride, height, width))


_register_fast("cpu", cpu_fused, _dense)
_register_fast("cuda", cuda_fused, _contiguous)


# ---- shapes, for torch.compile and the meta device --------------------------

def _empty_like_kernels(t, shape, stride):
    """An empty result of ``shape`` in the memory format the kernels give
    when ``t`` (x, or dy for the input gradient) is their input."""
    return torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=torch.channels_last
                       if _nhwc_out(t, stride) else torch.contiguous_format)


@fused_forward.register_fake
def _forward_fake(x, weight, bias, stride=1):
    b, m, h, w = x.shape
    torch._check(weight.shape[0] == NUM_KERNELS * m,
                 lambda: f"weight has {weight.shape[0]} rows for {m} input channels")
    return _empty_like_kernels(x, (b, weight.shape[1], out_size(h, stride), out_size(w, stride)), stride)


@fused_weight_grad.register_fake
def _weight_grad_fake(x, dy, stride=1):
    return x.new_empty((NUM_KERNELS * x.shape[1], dy.shape[1])), dy.new_empty((dy.shape[1],))


@fused_input_grad.register_fake
def _input_grad_fake(dy, weight, stride=1, height=None, width=None):
    h, w = _input_size(dy, stride, height, width)
    return _empty_like_kernels(dy, (dy.shape[0], weight.shape[0] // NUM_KERNELS, h, w), stride)


# ---- derivatives: each operator's are the other two -------------------------
# With A the fixed stage at the output's pixels (A^T its adjoint into the
# input's size) and every operator linear in each argument: y = W^T A x + b;
# (dW, db) = (A x dY^T, sum dY); dx = A^T W dY. The int arguments (stride,
# the input's size) have no gradient.

def _save(stride_at):
    """setup_context that saves the first two inputs and the stride (input
    ``stride_at``)."""
    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:2])
        ctx.stride = inputs[stride_at]
    return setup


def _forward_backward(ctx, dy):
    x, weight = ctx.saved_tensors
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    dx = fused_input_grad(dy, weight, ctx.stride, x.shape[2], x.shape[3]) if need_x else None
    dw, db = fused_weight_grad(x, dy, ctx.stride) if need_w or need_b else (None, None)
    return dx, (dw if need_w else None), (db if need_b else None), None


def _weight_grad_backward(ctx, gw, gb):
    x, dy = ctx.saved_tensors
    if gw is None:
        gw = dy.new_zeros((NUM_KERNELS * x.shape[1], dy.shape[1]))
    need_x, need_dy = ctx.needs_input_grad[:2]
    return (fused_input_grad(dy, gw, ctx.stride, x.shape[2], x.shape[3]) if need_x else None,
            fused_forward(x, gw, gb, ctx.stride) if need_dy else None, None)


def _input_grad_backward(ctx, gx):
    dy, weight = ctx.saved_tensors
    need_dy, need_w = ctx.needs_input_grad[:2]
    return (fused_forward(gx, weight, None, ctx.stride) if need_dy else None,
            fused_weight_grad(gx, dy, ctx.stride)[0] if need_w else None, None, None, None)


fused_forward.register_autograd(_forward_backward, setup_context=_save(3))
fused_weight_grad.register_autograd(_weight_grad_backward, setup_context=_save(2))
fused_input_grad.register_autograd(_input_grad_backward, setup_context=_save(2))


def fused_conv2d(x, weight, bias=None, stride=1):
    """The fxnn layer (fixed stage, then 1x1 ``weight`` (5M, N) and ``bias``)
    by the fused kernels where they run (:func:`runs_fast`), else the same in
    torch ops. ``stride`` (an int >= 1) keeps the output pixels (s*i, s*j) of
    the stride-1 layer only, as ``F.conv2d(..., stride=s, padding=1)`` does:
    (B, M, H, W) -> (B, N, (H-1)//s + 1, (W-1)//s + 1); the kernels compute
    the fixed stage at those pixels only.

    Under autocast it behaves as ``F.conv2d`` does: float32 arguments are cast
    once to the autocast dtype (bfloat16 on the CPU) and the kernels of that
    dtype run, with float32 accumulation; the result has that dtype, and the
    casts carry the gradients back to float32 parameters. The kernels
    compute float32 channels_last tensors as they lie (on the CPU; the result
    is channels_last too) and copy any other layout to NCHW."""
    check_stride(stride, "fused_conv2d")
    dtype = autocast_dtype(x)
    if any(t is not None and t.dtype != dtype for t in (x, weight, bias)):
        with torch.autocast(x.device.type, enabled=False):
            return fused_conv2d(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype), stride)
    return fused_forward(x, weight, bias, stride)
