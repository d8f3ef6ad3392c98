"""The PyTorch engine: the network of :mod:`fxnn.models.network` run eagerly on
the PyTorch backend, on the CPU or a CUDA GPU.

Parameters are plain tensors keyed by the project-wide names of
:mod:`fxnn.models.architecture` (fxnn 1x1 weights (5M, N), dense weights
(in, out)), so they move between engines unchanged. Each fxnn conv layer's
path (:mod:`fxnn.models.fxnn_paths`: fixed, fused or folded) is chosen per layer
and pass on its first call when the path is ``auto``; the updates of
:func:`fxnn.models.network.updates` are copied into the tensors in place. The
residual network of ``--arch resnet`` (:mod:`fxnn.models.resnet`) runs the same
way; its BatchNorm running statistics are the engine's buffers, which
training steps update in place and which go with the parameters into the
state (checkpoints) and the snapshots (records).

``precision="bf16"`` runs every forward pass (training and validation) under
``torch.autocast`` with bfloat16: convolutions, the fxnn layers and the
matmuls compute in bfloat16 (float32 accumulation), as does the block after
each conv layer (:mod:`fxnn.models.torch.block`); the parameters, their
gradients, the optimizer state and the updates stay float32, and the softmax
and the loss compute in float32. The dense convolutions (``cnn``'s layers,
the folded path of an fxnn layer) then take channels_last inputs: oneDNN's
bfloat16 convolutions run faster on them (forward and backward of cnn's
layers on MNIST, one thread: 2.9 against 4.6 ms, 3.3 against 4.1 ms), and a
whole training step never lost by it (2 threads: even on MNIST and
CIFAR-10 shapes, faster with ``-fsize 5``), though the copies into and out
of that format, and the block's C kernel, which takes NCHW, eat most of the
gain. The fused and fixed paths of fxnn layers compute bf16 in NCHW: an
engine whose fxnn layers are held to one of them (``fxnn_path`` fused or
fixed) stays NCHW, and under ``auto`` the residual network's BatchNorms put
such a layer's output into channels_last. (In float32 the fused kernels
also run channels_last tensors as they lie, for engines built with
``channels_last=True``.) Folded kernels are folded in float32,
then cast once. Each conv layer's memory format as it ran is recorded
(:meth:`TorchEngine.describe_memory_formats`).
"""
import contextlib
from collections import OrderedDict

import numpy as np
import torch

from fxnn.kernels import capabilities, torch_fused

from .. import network as net
from .. import resnet
from ..hyperparameters import HYP
from ..engines import Engine
from .backend import BACKEND, TorchBackend
from .paths import auto_path

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: The autocast dtype of each ``precision`` (None: no autocast).
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}


def memory_format(h):
    """The memory format of a 4-D tensor in words: "channels_last" or "NCHW"."""
    if h.is_contiguous(memory_format=torch.channels_last) and not h.is_contiguous():
        return "channels_last"
    return "NCHW" if h.is_contiguous() else "strided"


def to_channels_last(x):
    """``x`` (B, C, H, W) with channels_last strides, which the convolution
    then follows; a contiguous one-channel tensor is both formats, and
    PyTorch takes it for NCHW, so it gets channels_last strides as a view."""
    if x.shape[1] == 1 and x.is_contiguous():
        return x.as_strided(x.shape, (x.shape[2] * x.shape[3], 1, x.shape[3], 1))
    return x.contiguous(memory_format=torch.channels_last)


class PrecisionBackend(TorchBackend):
    """The torch backend of one engine: under autocast (``autocast_dtype``)
    the softmax computes in float32; the dense convolutions and the fused
    fxnn layers take channels_last inputs when ``channels_last``, else NCHW
    (a channels_last input, as the bf16 block gives in validation, is copied);
    the memory format of each conv layer's output is noted in :attr:`formats`
    (the block or BatchNorm that follows every conv layer sees it)."""

    def __init__(self, autocast_dtype=None, channels_last=False):
        self.autocast_dtype, self.channels_last = autocast_dtype, channels_last
        self.formats = []

    def _laid_out(self, x):
        return to_channels_last(x) if self.channels_last else x.contiguous()

    def conv(self, x, w, bias, size, stride=1):
        return super().conv(self._laid_out(x if self.autocast_dtype is None else x.to(self.autocast_dtype)),
                            w, bias, size, stride)

    def fused_conv(self, x, w, bias, stride=1):
        return super().fused_conv(self._laid_out(x), w, bias, stride)

    def _low(self, *tensors):
        """The tensors in the autocast dtype (None kept); autograd carries the
        gradients back to float32 through the casts."""
        return [t if t is None else t.to(self.autocast_dtype) for t in tensors]

    def fixed_stage(self, x, stride=1):
        return super().fixed_stage(self._low(x)[0] if self.autocast_dtype else x, stride)

    def combine(self, w, kernels):
        """The folded kernels in float32 with autocast off: one rounding, by
        the convolution's own cast, instead of a bfloat16 einsum of the
        weights and kernels cast apart (slower, and rounded twice)."""
        with torch.autocast(w.device.type, enabled=False):
            return super().combine(w, kernels)

    def block(self, h, mask, p):
        self.formats.append(memory_format(h))
        return super().block(h, mask, p)

    def batch_norm(self, x, gamma, beta, mean, var, train, momentum, eps):
        """BatchNorm (which follows every conv layer of the residual network),
        its input's memory format noted; with ``channels_last`` it takes (and
        so the ReLUs and residual adds after it see) channels_last, whatever
        the conv gave (an fxnn layer on the fixed path, or fused in bf16, gives NCHW):
        elementwise ops on mixed formats run slowly."""
        self.formats.append(memory_format(x))
        if self.channels_last:
            x = to_channels_last(x)
        return super().batch_norm(x, gamma, beta, mean, var, train, momentum, eps)

    def softmax(self, h):
        return super().softmax(h if self.autocast_dtype is None else h.float())


class TorchEngine(Engine):
    """Trains and evaluates one network with PyTorch."""

    name = "torch"
    backend = BACKEND

    def __init__(self, network, params, optimizer=HYP.optimizer, dropout=0.0, seed=0,
                 device="cpu", dtype="float32", fxnn_path="auto", precision="fp32", channels_last=None):
        super().__init__(network, params, optimizer, dropout, seed, fxnn_path)
        if network.arch == "resnet" and dropout:
            raise ValueError("the resnet has no dropout (BatchNorm follows its convs): give it dropout 0")
        if precision not in AUTOCAST:
            raise ValueError(f"unknown precision {precision!r}; one of {', '.join(AUTOCAST)}")
        self.device, self.dtype = torch.device(device), DTYPES[dtype]
        self.precision, self.autocast_dtype = precision, AUTOCAST[precision]
        if self.autocast_dtype is not None and self.dtype != torch.float32:
            raise ValueError(f"precision {precision} keeps float32 parameters; dtype {dtype} cannot take it")
        #: the dtype the conv layers compute in
        self.compute_dtype = self.autocast_dtype or self.dtype
        if fxnn_path == "fused" and not torch_fused.runs_fast(self.device.type, self.compute_dtype):
            raise ValueError(f"--fxnn-path fused cannot run on {device} here: it needs the C kernels built "
                             f"(CPU, float32) or Triton (CUDA) "
                             f"({capabilities.capability('fused', 'torch', self.device, self.compute_dtype)}); "
                             f"use --fxnn-path auto")
        if channels_last is None:  # channels_last under bf16: see the module's notes
            channels_last = self.autocast_dtype is not None and not (
                fxnn_path in ("fused", "fixed") and any(layer.fxnn_paths for layer in network.convs))
        self.backend = PrecisionBackend(self.autocast_dtype, channels_last)
        #: {(conv layer name, pass): memory format of its output} as it ran
        self.layer_formats = {}
        self._make_variables(params)
        #: the network's buffers (BatchNorm's running statistics), updated in place by training steps
        self._buffers = OrderedDict((n, self._variable(v, n)) for n, v in network.init_buffers().items())

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _forward(self, x, masks, pass_, update_buffers=True):
        """Class probabilities (float32) of ``x`` under the engine's precision;
        a training pass of the residual network updates its running
        statistics when ``update_buffers``."""
        self.backend.formats = []
        with self._autocast():
            if self.network.arch == "resnet":
                buffers = self._buffers if pass_ == "valid" or update_buffers else None
                probs = resnet.forward(self.backend, self.network, self._params, x, buffers, pass_ == "train",
                                       self._paths(pass_))
            else:
                probs = net.forward(self.backend, self.network, self._params, x, masks,
                                    self.dropout if masks else 0.0, self._paths(pass_))
        for layer, fmt in zip(self.network.convs, self.backend.formats):
            self.layer_formats.setdefault((layer.name, pass_), fmt)
        return probs

    def describe_memory_formats(self):
        """Each conv layer's memory format as it ran, for records:
        "conv0: channels_last; conv1: channels_last" (a layer whose passes
        differed: "conv0: train NCHW, valid channels_last"; "-" not run yet)."""
        parts = []
        for layer in self.network.convs:
            seen = [self.layer_formats.get((layer.name, p), "-") for p in ("train", "valid")]
            ran = [f for f in seen if f != "-"]
            if len(set(ran)) == 1:
                parts.append(f"{layer.name}: {ran[0]}")
            else:
                parts.append(f"{layer.name}: " + ", ".join(f"{p} {f}" for p, f in zip(("train", "valid"), seen)))
        return "; ".join(parts) or "none (no conv layers)"

    def _paths(self, pass_):
        """The path function of :func:`fxnn.models.network.forward` for ``pass_``:
        each factored layer's path, chosen on its first call in that pass
        and kept (folded for a basis other than fxnn's)."""
        def path(layer, h, w, b):
            key = (layer.name, pass_)
            if key not in self.layer_paths:
                if not layer.fxnn_paths:
                    self.layer_paths[key] = "folded"
                else:
                    self.layer_paths[key] = (auto_path(h, w, b, layer.stride) if self.fxnn_path == "auto"
                                             else self.fxnn_path)
            return self.layer_paths[key]
        return path

    def _variable(self, array, name):
        # copies: the updates are in place and must not reach the caller's arrays
        tensor = torch.as_tensor(np.asarray(array), device=self.device).to(self.dtype).clone()
        return tensor.requires_grad_(True) if name in self.network.param_shapes() else tensor

    def get_buffers(self):
        return OrderedDict((n, self._read(b)) for n, b in self._buffers.items())

    def set_params(self, params):
        """The parameters, and the buffers when ``params`` holds them (a
        record's snapshot, :meth:`snapshot`)."""
        super().set_params(params)
        for n, b in self._buffers.items():
            if n in params:
                self._write(b, params[n])

    def get_state(self):
        """:meth:`fxnn.models.network.Engine.get_state` and the buffers (``buffer/{name}``)."""
        return dict(super().get_state(), **{f"buffer/{n}": v for n, v in self.get_buffers().items()})

    def set_state(self, state):
        super().set_state(state)
        for n, b in self._buffers.items():
            self._write(b, state[f"buffer/{n}"])

    def _read(self, variable):
        return variable.detach().cpu().numpy().copy()

    def _write(self, variable, array):
        with torch.no_grad():
            variable.copy_(torch.as_tensor(np.asarray(array), device=self.device).to(self.dtype))

    def implementation(self, path):
        return capabilities.implementation(path, "torch", self.device, self.compute_dtype)

    def _batch(self, x, y):
        return (torch.as_tensor(np.asarray(x), device=self.device).to(self.dtype),
                torch.as_tensor(np.asarray(y), device=self.device).long())

    def _loss_and_grads(self, x, y, masks=(), update_buffers=True):
        probs = self._forward(x, masks, "train", update_buffers)
        loss, erate = net.objective(BACKEND, probs, y)
        grads = torch.autograd.grad(loss, list(self._params.values()))
        return loss, erate, OrderedDict(zip(self._params, grads))

    def _train(self, x, y, lr, masks, corrections):
        loss, erate, grads = self._loss_and_grads(*self._batch(x, y), masks)
        with torch.no_grad():
            for variable, value in net.updates(BACKEND, self.network, self.optimizer, self._params, grads,
                                               self._state, lr, corrections):
                variable.copy_(value)
        return loss.item(), erate.item()

    def evaluate(self, x, y):
        """(mean loss, error rate, probabilities) of a batch, dropout off."""
        x, y = self._batch(x, y)
        with torch.no_grad():
            probs = self._forward(x, (), "valid")
            loss, erate = net.objective(BACKEND, probs, y)
        return float(loss), float(erate), probs.cpu().numpy()

    def gradients(self, x, y):
        """{name: d loss / d param} on a batch with dropout off, BatchNorm in
        training mode without moving its running statistics (for tests)."""
        _, _, grads = self._loss_and_grads(*self._batch(x, y), update_buffers=False)
        return OrderedDict((n, g.cpu().numpy()) for n, g in grads.items())
