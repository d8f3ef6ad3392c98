"""Swapping a model's 3x3 convolutions for fixed-basis ones, in place.

    import fxnn
    print(fxnn.conversion.report(model, torch.zeros(1, 3, 32, 32)))  # what convert will do
    fxnn.convert(model)                                               # then fine-tune it

:func:`convert` replaces every eligible ``nn.Conv2d`` of a model (3x3,
stride 1 or 2, padding 1 or "same", dilation 1, groups 1, zero padding: what
:class:`fxnn.FixedConv2d` computes) by a ``FixedConv2d`` with the same
channels, stride, bias, device, dtype and training mode, like ``torch.ao``'s
module swapping; the others stay. ``init="project"`` starts each one from
the least-squares projection of its dense kernels onto the span of the
basis' kernels (:func:`project`), so a trained model keeps what the span can
hold of it and can be fine-tuned; ``init="fresh"`` draws fxnn's
initialisation. :func:`report` says, before converting, which layers
convert, how much of their kernels' energy the span keeps, and the
parameters and multiply-adds before and after.
"""
import dataclasses

import numpy as np
import torch
from torch import nn

from fxnn.models.fixed_bases import basis_kernels, gram
from fxnn.models.torch.layer import FixedConv2d, refusal

INITS = ("project", "fresh")


def project(weight, basis="fxnn"):
    """(coefficients (N, M, K), energy kept (N, M)) of dense kernels
    ``weight`` (N, M, 3, 3): the least-squares coefficients over the K
    kernels of ``basis`` (the normal equations ``c G = w B^T`` with the
    basis' Gram matrix G, by its pseudo-inverse where singular), and for
    each kernel the fraction ``|P w|^2 / |w|^2`` of its energy the span
    keeps (1 for a zero kernel). float64, on ``weight``'s device."""
    flat = np.asarray(basis_kernels(basis)).reshape(-1, 9)                        # B (K, 9)
    solve = torch.tensor(np.linalg.pinv(gram(basis)) @ flat, device=weight.device)  # G^+ B (K, 9)
    w = weight.detach().to(torch.float64).reshape(weight.shape[0], weight.shape[1], 9)
    coefficients = w @ solve.T
    kept = (coefficients @ torch.tensor(flat, device=weight.device)).square().sum(-1)
    total = w.square().sum(-1)
    energy = torch.where(total > 0, kept / torch.where(total > 0, total, 1), torch.ones_like(total))
    return coefficients, energy


def why_not(module):
    """Why ``module`` (an ``nn.Conv2d``) cannot be a FixedConv2d, in a few
    words, or None when it can. Subclasses of ``nn.Conv2d`` (quantization
    aware, weight standardised, ...) may compute something else: left alone."""
    if nn.parameter.is_lazy(module.weight):
        return "lazy, not yet initialised: run a forward pass first"
    if type(module) is not nn.Conv2d:
        return f"{type(module).__name__}, a subclass of nn.Conv2d, may compute something else"
    reason = refusal(kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
                     dilation=module.dilation, groups=module.groups, padding_mode=module.padding_mode)
    return reason and reason.split("; got ", 1)[1]


def _choose(model, filter):
    """([(name, conv)] to convert, [(name, why not)]) over every distinct
    ``nn.Conv2d`` of ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert takes an nn.Module, got {type(model).__name__}")
    if filter is not None and not callable(filter):
        raise TypeError(f"filter must be a function (name, module) -> bool, got {type(filter).__name__}")
    chosen, left = [], []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d):
            continue
        reason = why_not(module)
        if reason is None and filter is not None and not filter(name, module):
            reason = "left out by the filter"
        if reason is None:
            chosen.append((name, module))
        else:
            left.append((name or "(the model)", reason))
    return chosen, left


def _fixed_layer(conv, basis, init, path):
    """The FixedConv2d that replaces ``conv``."""
    weight = conv.weight
    layer = FixedConv2d(conv.in_channels, conv.out_channels, 3, stride=conv.stride, padding=conv.padding,
                        bias=conv.bias is not None, device=weight.device, dtype=weight.dtype, basis=basis,
                        path=path)
    if init == "project":
        with torch.no_grad():
            layer.weight.copy_(project(weight, basis)[0])
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
    layer.weight.requires_grad_(weight.requires_grad)
    if conv.bias is not None:
        layer.bias.requires_grad_(conv.bias.requires_grad)
    return layer.train(conv.training)


def convert(model, basis="fxnn", init="project", filter=None, path="auto"):
    """Replace, in place, every eligible ``nn.Conv2d`` of ``model`` (see the
    module's notes) by a :class:`fxnn.FixedConv2d` over ``basis`` computed on
    ``path``, and return the model (the new layer itself when ``model`` is
    such a conv). ``init``: "project" (the least-squares projection of the
    dense kernels onto the basis' span, the bias copied) or "fresh" (fxnn's
    initialisation); ``filter(name, conv) -> bool`` picks among the eligible
    ones (name as in ``model.named_modules()``). A conv registered at
    several places is replaced by one layer at all of them. Hooks on the
    replaced convs are not carried over. :func:`report` tells beforehand
    what it will do."""
    if init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    chosen, _ = _choose(model, filter)
    new = {id(conv): _fixed_layer(conv, basis, init, path) for _, conv in chosen}
    if id(model) in new:
        return new[id(model)]
    for parent in model.modules():
        for child_name, child in list(parent._modules.items()):  # named_children() skips repeats
            if id(child) in new:
                setattr(parent, child_name, new[id(child)])
    return model


@dataclasses.dataclass
class LayerReport:
    """One conv :func:`convert` replaces: its name, shape, how much of its
    kernels' energy the basis' span keeps (mean and least over its N*M
    kernels) and its parameters and multiply-adds (None without an input)
    before and after."""
    name: str
    in_channels: int
    out_channels: int
    stride: int
    energy_mean: float
    energy_min: float
    params_before: int
    params_after: int
    macs_before: int = None
    macs_after: int = None


@dataclasses.dataclass
class ConversionReport:
    """What :func:`convert` does to a model (from :func:`report`): the layers
    it replaces, those it leaves ([(name, why)]), and the whole model's
    parameters and multiply-adds (of its conv and linear layers, for
    ``input_shape``; None without an input) before and after. ``str()`` is
    a table."""
    basis: str
    layers: list
    left: list
    params_before: int
    params_after: int
    input_shape: tuple = None
    macs_before: int = None
    macs_after: int = None

    def __str__(self):
        lines = [f"Conv2d layers to FixedConv2d (basis {self.basis}): {len(self.layers)} of "
                 f"{len(self.layers) + len(self.left)}"]
        lines += [f"  {r.name}: {r.in_channels}->{r.out_channels} stride {r.stride}, energy of its kernels kept "
                  f"{r.energy_mean:.1%} (least {r.energy_min:.1%})" for r in self.layers]
        lines += [f"  {name}: left as it is: {why}" for name, why in self.left]
        lines.append(f"parameters: {self.params_before:,} -> {self.params_after:,} "
                     f"({self.params_after / max(self.params_before, 1):.1%})")
        if self.macs_before is not None:
            shape = "x".join(map(str, self.input_shape))
            lines.append(f"multiply-adds of the conv and linear layers for a {shape} input: {self.macs_before:,} "
                         f"-> {self.macs_after:,} ({self.macs_after / max(self.macs_before, 1):.1%})")
        return "\n".join(lines)


def _output_sizes(model, example_input):
    """{module: output elements} of every conv and linear layer of ``model``
    on ``example_input``, summed over its calls (one forward pass, no gradients, in eval mode; the
    modes are restored after)."""
    sizes, handles = {}, []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, FixedConv2d)):
            handles.append(module.register_forward_hook(
                lambda m, _, out: sizes.__setitem__(m, sizes.get(m, 0) + out.numel())))
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return sizes


def _macs(module, numel):
    """Multiply-adds of a layer whose output has ``numel`` elements: the
    dense kernel's per output value, or the 1x1 over the K*M responses of a
    FixedConv2d (its fixed stage, a few adds per input value, not counted)."""
    if isinstance(module, nn.Linear):
        return numel * module.in_features
    if isinstance(module, FixedConv2d):
        return numel * module.num_kernels * module.in_channels
    return numel * module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]


def report(model, example_input=None, basis="fxnn", filter=None):
    """The :class:`ConversionReport` of ``convert(model, basis, filter=filter)``,
    before it runs (the model is not changed): the multiply-adds need
    ``example_input``, on which the model runs once in eval mode."""
    chosen, left = _choose(model, filter)
    k = len(basis_kernels(basis))
    sizes = _output_sizes(model, example_input) if example_input is not None else None
    layers = []
    for name, conv in chosen:
        _, energy = project(conv.weight, basis)
        bias = 0 if conv.bias is None else conv.out_channels
        layer = LayerReport(name or "(the model)", conv.in_channels, conv.out_channels, conv.stride[0],
                            energy.mean().item(), energy.min().item(), conv.weight.numel() + bias,
                            k * conv.in_channels * conv.out_channels + bias)
        if sizes is not None:
            numel = sizes.get(conv, 0)  # 0: not run on this input
            layer.macs_before, layer.macs_after = _macs(conv, numel), numel * k * conv.in_channels
        layers.append(layer)
    params = sum(p.numel() for p in model.parameters() if not nn.parameter.is_lazy(p))  # lazy: no size yet
    result = ConversionReport(str(basis) if isinstance(basis, str) else "custom", layers, left, params,
                              params - sum(r.params_before - r.params_after for r in layers))
    if sizes is not None:
        result.input_shape = tuple(example_input.shape)
        result.macs_before = sum(_macs(m, n) for m, n in sizes.items())
        result.macs_after = result.macs_before - sum(r.macs_before - r.macs_after for r in layers)
    return result


__all__ = ["convert", "report", "project", "why_not", "ConversionReport", "LayerReport", "INITS"]
