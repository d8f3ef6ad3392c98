"""The PyTorch engine: the network of :mod:`fxnn.models.network` run eagerly on
the PyTorch backend, on the CPU or a CUDA GPU.

Parameters are plain tensors keyed by the project-wide names of
:mod:`fxnn.models.architecture` (fxnn 1x1 weights (5M, N), dense weights
(in, out)), so they move between engines unchanged. Each fxnn conv layer's
path (:mod:`fxnn.models.fxnn_paths`: fixed, fused or folded) is chosen per layer
and pass on its first call when the path is ``auto``; the updates of
:func:`fxnn.models.network.updates` are copied into the tensors in place.
"""
from collections import OrderedDict

import numpy as np
import torch

from fxnn.kernels import torch_fused

from . import network as net
from . import optimizers
from .torch_layers import BACKEND, auto_path, implementation

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TorchEngine(net.Engine):
    """Trains and evaluates one network with PyTorch."""

    name = "torch"
    backend = BACKEND

    def __init__(self, network, params, optimizer=optimizers.DEFAULT_OPTIMIZER, dropout=0.0, seed=0,
                 device="cpu", dtype="float32", fxnn_path="auto"):
        super().__init__(network, params, optimizer, dropout, seed, fxnn_path)
        self.device, self.dtype = torch.device(device), DTYPES[dtype]
        if fxnn_path == "fused" and not torch_fused.available(torch.empty(0, device=self.device, dtype=self.dtype)):
            raise ValueError(f"--fxnn-path fused cannot run on {device} here: it needs the C kernels built "
                             f"(CPU, float32) or Triton (CUDA) ({torch_fused.implementation_name()}); "
                             f"use --fxnn-path auto")
        self._make_variables(params)

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
                    self.layer_paths[key] = auto_path(h, w, b) if self.fxnn_path == "auto" else self.fxnn_path
            return self.layer_paths[key]
        return path

    def _variable(self, array, name):
        # copies: the updates are in place and must not reach the caller's arrays
        tensor = torch.as_tensor(np.asarray(array), device=self.device).to(self.dtype).clone()
        return tensor.requires_grad_(True) if name in self.network.param_shapes() else tensor

    def _read(self, variable):
        return variable.detach().cpu().numpy().copy()

    def _write(self, variable, array):
        with torch.no_grad():
            variable.copy_(torch.as_tensor(np.asarray(array), device=self.device).to(self.dtype))

    def implementation(self, path):
        return implementation(path, self.device)

    def _batch(self, x, y):
        return (torch.as_tensor(np.asarray(x), device=self.device).to(self.dtype),
                torch.as_tensor(np.asarray(y), device=self.device).long())

    def _loss_and_grads(self, x, y, masks=()):
        probs = net.forward(BACKEND, self.network, self._params, x, masks, self.dropout, self._paths("train"))
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
            probs = net.forward(BACKEND, self.network, self._params, x, paths=self._paths("valid"))
            loss, erate = net.objective(BACKEND, probs, y)
        return float(loss), float(erate), probs.cpu().numpy()

    def gradients(self, x, y):
        """{name: d loss / d param} on a batch with dropout off (for tests)."""
        _, _, grads = self._loss_and_grads(*self._batch(x, y))
        return OrderedDict((n, g.cpu().numpy()) for n, g in grads.items())
