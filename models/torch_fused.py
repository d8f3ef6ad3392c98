"""The fused fxnn layer as a PyTorch autograd op: ``kernels/fused_cpu.c`` for
the forward, the weight gradient and the input gradient, each in one pass
that never writes the 5M fixed-stage channels to memory.

For float32 CPU tensors when the extension is built (:func:`available`).
A backward that must itself be differentiable (``create_graph=True``) is
computed from the differentiable ops of :mod:`models.torch_fixed` instead,
so higher derivatives work as on the other paths.
"""
import torch

from kernels import cpu_fused, native

from .torch_fixed import FixedStageAdjoint, fixed_stage


def available(x):
    """Whether the fused kernels can run on tensor ``x``."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and native.fused_available()[0]


def implementation_name():
    """The fused kernels in words (ISA included), or why they cannot run."""
    return cpu_fused.available()[1]


class FusedFixedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return cpu_fused.forward(x, weight, bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        dx = dw = db = None
        if torch.is_grad_enabled():  # create_graph: differentiable ops
            if need_x:
                dx = FixedStageAdjoint.apply(torch.einsum("cn,bnhw->bchw", weight, dy))
            if need_w:
                dw = torch.einsum("bchw,bnhw->cn", fixed_stage(x), dy)
            if need_b:
                db = dy.sum((0, 2, 3))
            return dx, dw, db
        dy = dy.contiguous()
        if need_x:
            dx = cpu_fused.input_grad(dy, weight)
        if need_w or need_b:
            dw, db = cpu_fused.weight_grad(x, dy, bias=need_b)
        return dx, (dw if need_w else None), (db if need_b else None)


def fused_conv2d(x, weight, bias=None):
    """The fxnn layer (fixed stage, then 1x1 ``weight`` (5M, N) and ``bias``)
    by the fused kernels; ``x`` must satisfy :func:`available`."""
    return FusedFixedConv.apply(x.contiguous(), weight.contiguous(), None if bias is None else bias.contiguous())
