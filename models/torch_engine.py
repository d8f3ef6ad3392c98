"""The PyTorch engine: the same network, names, layouts and update rules as
the PyTensor engine, on the CPU or a CUDA GPU.

Parameters are plain tensors keyed by the project-wide names of
:mod:`models.architecture` (fxnn 1x1 weights (5M, N), dense weights
(in, out)), so they move between engines unchanged. An fxnn conv layer is
:func:`models.torch_layers.fixed_conv2d` on a path of :mod:`models.fxnn_paths`
(fixed, fused or folded), chosen per layer and pass on its first call when
the path is ``auto``; the optimizers are written out to follow
:mod:`models.optimizers` exactly rather than torch.optim.
"""
import json
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from kernels import native, torch_fused

from . import dropout as dropout_masks
from . import optimizers
from .architecture import LOG_EPS
from .fixed_bases import PROJECTOR
from .fxnn_paths import check_path, describe_paths
from .torch_block import relu_dropout_pool
from .torch_layers import as_constant, auto_path, fixed_conv2d, fold, implementation

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def forward(network, params, x, masks=(), path="fixed", dropout=0.0):
    """Class probabilities; inverted dropout of probability ``dropout`` when
    ``masks`` (one per conv layer, the uint16 draws of
    :func:`models.dropout.draw`) are given; fxnn layers on ``path``, a
    path's name or a function (layer, input, weight, bias) -> name. ReLU,
    dropout and pooling after each conv layer are one op
    (:func:`models.torch_block.relu_dropout_pool`)."""
    h = x
    for i, layer in enumerate(network.convs):
        w, b = params[layer.name + "_w"], params[layer.name + "_b"]
        if layer.fxnn_paths:
            h = fixed_conv2d(h, w, b, path(layer, h, w, b) if callable(path) else path)
        elif layer.factored:  # any other fixed basis: folded path only
            h = F.conv2d(h, fold(w, layer.kernels), b, padding=1)
        else:
            h = F.conv2d(h, w * layer.weight_scale if layer.weight_scale != 1 else w, b, padding=layer.size // 2)
        h = relu_dropout_pool(h, masks[i] if masks else None, dropout)
    h = h.flatten(1)
    for layer in network.denses:
        h = h @ params[layer.name + "_w"] + params[layer.name + "_b"]
        h = torch.relu(h) if layer.relu else torch.softmax(h, dim=-1)
    return h


def objective(probs, y):
    """The original's loss, mean(-onehot(y) * log(p + 1e-3)), and the error rate."""
    picked = torch.log(probs.gather(1, y[:, None]) + LOG_EPS)
    loss = -picked.sum() / probs.numel()
    erate = (probs.argmax(1) != y).to(probs.dtype).mean()
    return loss, erate


class TorchEngine:
    """Trains and evaluates one network with PyTorch."""

    name = "torch"

    def __init__(self, network, params, optimizer=optimizers.DEFAULT_OPTIMIZER, dropout=0.0, seed=0,
                 device="cpu", dtype="float32", fxnn_path="auto"):
        if optimizer not in optimizers.OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}")
        self.network, self.optimizer, self.dropout = network, optimizer, dropout
        self.device, self.dtype = torch.device(device), DTYPES[dtype]
        self.fxnn_path = check_path(fxnn_path)
        native.check_isa()
        if fxnn_path == "fused" and not torch_fused.available(torch.empty(0, device=self.device, dtype=self.dtype)):
            raise ValueError(f"--fxnn-path fused cannot run on {device} here: it needs the C kernels built "
                             f"(CPU, float32) or Triton (CUDA) ({torch_fused.implementation_name()}); "
                             f"use --fxnn-path auto")
        #: {(layer name, pass): path} of the fxnn layers, filled on each one's first call
        self.layer_paths = {}
        # copies: the updates are in place and must not reach the caller's arrays
        self._params = OrderedDict((n, self._tensor(v).clone().requires_grad_(True)) for n, v in params.items())
        self._state = {slot: {n: torch.zeros_like(p) for n, p in self._params.items()}
                       for slot in optimizers.state_slots(optimizer)}
        self._step = 0
        self._rng = np.random.default_rng(seed)

    def _path(self, pass_):
        """The path function of :func:`forward` for ``pass_``: each fxnn
        layer's path, chosen on its first call in that pass and kept."""
        def path(layer, h, w, b):
            key = (layer.name, pass_)
            if key not in self.layer_paths:
                self.layer_paths[key] = auto_path(h, w, b) if self.fxnn_path == "auto" else self.fxnn_path
            return self.layer_paths[key]
        return path

    def describe_paths(self):
        """(paths, implementations) of the fxnn layers in words, for records."""
        return describe_paths(self.network, self.layer_paths, lambda p: implementation(p, self.device))

    def _tensor(self, array):
        return torch.as_tensor(np.asarray(array), device=self.device).to(self.dtype)

    def _batch(self, x, y):
        return self._tensor(x), torch.as_tensor(np.asarray(y), device=self.device).long()

    def _loss_and_grads(self, x, y, masks=()):
        probs = forward(self.network, self._params, x, masks, self._path("train"), self.dropout)
        loss, erate = objective(probs, y)
        grads = torch.autograd.grad(loss, list(self._params.values()))
        return loss, erate, OrderedDict(zip(self._params, grads))

    def train_step(self, x, y, lr):
        """One optimizer step on a batch; returns (loss, error rate) before the step."""
        masks = dropout_masks.draw(self._rng, self.network, len(x), self.dropout)
        x, y = self._batch(x, y)
        loss, erate, grads = self._loss_and_grads(x, y, masks)
        self._step += 1
        with torch.no_grad():
            for name, p in self._params.items():
                self._update(name, p, grads[name], lr)
            for layer in self.network.convs:
                if layer.projected:  # cnn-sub: back into the span of the five kernels
                    w = self._params[layer.name + "_w"]
                    w.copy_((w.reshape(-1, 9) @ as_constant(PROJECTOR, w)).reshape(w.shape))
        return loss.item(), erate.item()

    def _update(self, name, p, g, lr):
        """In-place update following :mod:`models.optimizers`."""
        if self.optimizer == "sgd":
            p.sub_(lr * g)
        elif self.optimizer == "momentum":
            v = self._state["velocity"][name].mul_(optimizers.MOMENTUM).add_(g)
            p.sub_(lr * v)
        else:
            b1, b2 = optimizers.ADAM_BETA1, optimizers.ADAM_BETA2
            m = self._state["m"][name].mul_(b1).add_(g, alpha=1 - b1)
            v = self._state["v"][name].mul_(b2).addcmul_(g, g, value=1 - b2)
            m_hat = m / (1 - b1 ** self._step)
            v_hat = v / (1 - b2 ** self._step)
            p.sub_(lr * m_hat / (v_hat.sqrt() + optimizers.ADAM_EPS))

    def evaluate(self, x, y):
        """(mean loss, error rate, probabilities) of a batch, dropout off."""
        x, y = self._batch(x, y)
        with torch.no_grad():
            probs = forward(self.network, self._params, x, path=self._path("valid"))
            loss, erate = objective(probs, y)
        return float(loss), float(erate), probs.cpu().numpy()

    def gradients(self, x, y):
        """{name: d loss / d param} on a batch with dropout off (for tests)."""
        _, _, grads = self._loss_and_grads(*self._batch(x, y))
        return OrderedDict((n, g.cpu().numpy()) for n, g in grads.items())

    def get_params(self):
        return OrderedDict((n, p.detach().cpu().numpy().copy()) for n, p in self._params.items())

    def get_state(self):
        """Parameters, optimizer state and dropout generator as numpy arrays."""
        state = {f"param/{n}": v for n, v in self.get_params().items()}
        for slot, tensors in self._state.items():
            state.update({f"{slot}/{n}": t.cpu().numpy().copy() for n, t in tensors.items()})
        state["step"] = np.asarray(self._step)
        state["rng"] = np.asarray(json.dumps(self._rng.bit_generator.state))
        return state

    def set_state(self, state):
        self.set_params({n: state[f"param/{n}"] for n in self._params})
        for slot, tensors in self._state.items():
            for n, t in tensors.items():
                t.copy_(self._tensor(state[f"{slot}/{n}"]))
        self._step = int(state["step"])
        self._rng.bit_generator.state = json.loads(str(state["rng"]))

    def set_params(self, params):
        with torch.no_grad():
            for n, p in self._params.items():
                p.copy_(self._tensor(params[n]))
