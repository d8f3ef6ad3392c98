"""The PyTensor engine: the network as one symbolic graph, compiled once.

Compiles a training function (loss, error rate and the optimizer's updates,
dropout on, with masks from :mod:`models.dropout`), an evaluation function (loss, error rate and class
probabilities, dropout off) and, on demand for tests, a gradient function.
Parameters and optimizer state live in shared variables; ``get_params`` /
``set_params`` and ``get_state`` / ``set_state`` move them in and out as
numpy arrays with the project-wide names of :mod:`models.architecture`.
"""
import json
import warnings
from collections import OrderedDict

import numpy as np

# Without a linkable BLAS, PyTensor's C code calls numpy's own (OpenBLAS) through
# the numpy C API; it warns at length about that on every run. See README "Engines".
warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS", category=UserWarning)
import pytensor  # noqa: E402
import pytensor.tensor as pt  # noqa: E402

from kernels import native  # noqa: E402

from . import dropout as dropout_masks
from . import optimizers, pytensor_paths
from .architecture import LOG_EPS
from .fxnn_paths import check_path, describe_paths
from .pytensor_layers import conv2d_same, fold, fused_available, fxnn_conv, max_pool_2x2, project_kernels, relu

def compile_mode():
    """PyTensor's C backend ('cvm'); its default in PyTensor 3 is Numba, whose
    compile takes minutes for this graph. Without a C compiler: the Python VM."""
    mode = pytensor.compile.mode.Mode(linker="cvm" if pytensor.config.cxx else "vm", optimizer="fast_run")
    # Keep softmax as elementwise C code: the rewrite to the symbolic Softmax
    # op would run it in Python, 500x slower on (B, 10) logits.
    return mode.excluding("symbolic_op_recognition")


FLOAT = "float32"  # training precision; float64 is for gradient checks


def implementation(path):
    """What runs ``path`` in this engine, in words (for records)."""
    if path == "fused":
        isa = native.isa() if native.fused_available()[0] else native.requested_isa() or "best ISA of this CPU"
        return f"PyTensor C op of kernels/fused_cpu.c, {isa}"
    if path == "fixed":
        return "PyTensor C op of kernels/fixed_cpu.c, then tensordot"
    return "im2col in PyTensor graph ops with folded kernels"


def softmax(h):
    """Row-wise softmax from elementwise ops (see :func:`compile_mode`)."""
    e = pt.exp(h - pytensor.gradient.disconnected_grad(h.max(axis=1, keepdims=True)))
    return e / e.sum(axis=1, keepdims=True)


def forward(network, params, x, dropout=0.0, masks=(), path="fixed"):
    """Class probabilities (B, classes) of ``network`` for images ``x``, fxnn
    layers on ``path`` (see :mod:`models.fxnn_paths`): a path's name, or
    {layer name: path}.
    Dropout (inverted: kept units scaled by 1/(1-p)) when uint16 ``masks``
    (one per conv layer, see :mod:`models.dropout`) are given."""
    h = x
    for i, layer in enumerate(network.convs):
        w, b = params[layer.name + "_w"], params[layer.name + "_b"]
        if layer.fxnn_paths:
            h = fxnn_conv(h, w, b, path[layer.name] if isinstance(path, dict) else path)
        elif layer.factored:  # any other fixed basis: folded path only
            h = conv2d_same(h, fold(w, layer.kernels), b, 3)
        else:
            h = conv2d_same(h, w * np.asarray(layer.weight_scale, w.dtype) if layer.weight_scale != 1 else w, b,
                            layer.size)
        h = relu(h)
        if masks:
            keep = pt.ge(masks[i], dropout_masks.threshold(dropout))
            h = h * pt.cast(keep, h.dtype) * np.asarray(1.0 / (1.0 - dropout), dtype=h.dtype)
        h = max_pool_2x2(h)
    h = h.flatten(2)
    for layer in network.denses:
        h = pt.dot(h, params[layer.name + "_w"]) + params[layer.name + "_b"]
        h = relu(h) if layer.relu else softmax(h)
    return h


def objective(probs, y):
    """The original's loss and the error rate of a batch."""
    onehot = pt.eq(y.dimshuffle(0, "x"), pt.arange(probs.shape[1]).dimshuffle("x", 0))
    loss = -pt.mean(pt.cast(onehot, probs.dtype) * pt.log(probs + np.asarray(LOG_EPS, dtype=probs.dtype)))
    erate = pt.mean(pt.cast(pt.neq(pt.argmax(probs, axis=1), y), probs.dtype))
    return loss, erate


def optimizer_updates(optimizer, params, grads, lr):
    """Symbolic updates implementing :mod:`models.optimizers`' rules; returns
    (updates, state) with state as {slot: {name: shared}, "step": shared}."""
    state = {slot: OrderedDict((n, pytensor.shared(np.zeros_like(p.get_value()), name=f"{slot}/{n}"))
                               for n, p in params.items())
             for slot in optimizers.state_slots(optimizer)}
    step = pytensor.shared(np.asarray(0, dtype="int64"), name="step")
    state["step"] = step
    updates = [(step, step + 1)]
    for name, p in params.items():
        dtype = p.dtype
        t = pt.cast(step + 1, dtype)
        g = grads[name]
        if optimizer == "sgd":
            new_p = p - lr * g
        elif optimizer == "momentum":
            v = state["velocity"][name]
            new_v = np.asarray(optimizers.MOMENTUM, dtype=dtype) * v + g
            updates.append((v, new_v))
            new_p = p - lr * new_v
        else:
            m, v = state["m"][name], state["v"][name]
            b1, b2 = (np.asarray(b, dtype=dtype) for b in (optimizers.ADAM_BETA1, optimizers.ADAM_BETA2))
            new_m = b1 * m + (1 - b1) * g
            new_v = b2 * v + (1 - b2) * g * g
            updates += [(m, new_m), (v, new_v)]
            m_hat = new_m / (1 - b1 ** t)
            v_hat = new_v / (1 - b2 ** t)
            new_p = p - lr * m_hat / (pt.sqrt(v_hat) + np.asarray(optimizers.ADAM_EPS, dtype=dtype))
        updates.append((p, pt.cast(new_p, dtype)))
    return updates, state


class PyTensorEngine:
    """Trains and evaluates one network with PyTensor on the CPU."""

    name = "pytensor"

    def __init__(self, network, params, optimizer=optimizers.DEFAULT_OPTIMIZER, dropout=0.0, seed=0,
                 dtype=FLOAT, fxnn_path="auto", batch_sizes=None):
        """``batch_sizes`` {pass: B}: the batches ``auto`` chooses paths for
        (default: the training batch 64 and the validation batch 100)."""
        if optimizer not in optimizers.OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}")
        self.fxnn_path = check_path(fxnn_path)
        native.check_isa()
        if fxnn_path == "fused" and not fused_available(dtype):
            raise ValueError("--fxnn-path fused needs float32 and a C compiler for PyTensor; use --fxnn-path auto")
        if fxnn_path == "auto":
            self.layer_paths = pytensor_paths.choose(network, dtype, batch_sizes or {"train": 64, "valid": 100},
                                                     compile_mode())
        else:
            self.layer_paths = {(name, p): fxnn_path for name in pytensor_paths.layer_shapes(network, 1)
                                for p in ("train", "valid")}
        train_paths, valid_paths = ({name: path for (name, p), path in self.layer_paths.items() if p == pass_}
                                    for pass_ in ("train", "valid"))
        self.network, self.optimizer, self.dtype, self.dropout = network, optimizer, dtype, dropout
        self._params = OrderedDict((n, pytensor.shared(np.asarray(v, dtype=dtype), name=n))
                                   for n, v in params.items())
        self._x = pt.tensor4("x", dtype=dtype)
        self._y = pt.ivector("y")
        lr = pt.scalar("lr", dtype=dtype)
        self._rng = np.random.default_rng(seed)
        masks = [pt.tensor4(f"mask{i}", dtype="uint16") for i in range(len(network.convs))] if dropout else []
        with pytensor.config.change_flags(floatX=dtype):
            loss, erate = objective(forward(network, self._params, self._x, dropout, masks, train_paths), self._y)
            grads = OrderedDict(zip(self._params, pytensor.grad(loss, list(self._params.values()))))
            updates, self._state = optimizer_updates(optimizer, self._params, grads, lr)
            projected = {self._params[layer.name + "_w"] for layer in network.convs if layer.projected}
            updates = [(p, project_kernels(new) if p in projected else new) for p, new in updates]
            self._train = pytensor.function([self._x, self._y, lr] + masks, [loss, erate], updates=updates,
                                          mode=compile_mode())
            probs = forward(network, self._params, self._x, path=valid_paths)
            self._eval = pytensor.function([self._x, self._y], list(objective(probs, self._y)) + [probs],
                                         mode=compile_mode())
        self._grad_fn, self._train_paths = None, train_paths

    def describe_paths(self):
        """(paths, implementations) of the fxnn layers in words, for records."""
        return describe_paths(self.network, self.layer_paths, implementation)

    def train_step(self, x, y, lr):
        """One optimizer step on a batch; returns (loss, error rate) before the step."""
        masks = dropout_masks.draw(self._rng, self.network, len(x), self.dropout)
        loss, erate = self._train(x, y, np.asarray(lr, dtype=self.dtype), *masks)
        return float(loss), float(erate)

    def evaluate(self, x, y):
        """(mean loss, error rate, probabilities) of a batch, dropout off."""
        loss, erate, probs = self._eval(x, y)
        return float(loss), float(erate), probs

    def gradients(self, x, y):
        """{name: d loss / d param} on a batch with dropout off (for tests)."""
        if self._grad_fn is None:
            with pytensor.config.change_flags(floatX=self.dtype):
                loss, _ = objective(forward(self.network, self._params, self._x, path=self._train_paths), self._y)
                self._grad_fn = pytensor.function([self._x, self._y],
                                                  pytensor.grad(loss, list(self._params.values())),
                                                  mode=compile_mode())
        return OrderedDict(zip(self._params, self._grad_fn(x, y)))

    def get_params(self):
        return OrderedDict((n, p.get_value()) for n, p in self._params.items())

    def get_state(self):
        """Parameters, optimizer state and dropout generator as numpy arrays."""
        state = {f"param/{n}": p.get_value() for n, p in self._params.items()}
        for slot in optimizers.state_slots(self.optimizer):
            state.update({f"{slot}/{n}": v.get_value() for n, v in self._state[slot].items()})
        state["step"] = self._state["step"].get_value()
        state["rng"] = np.asarray(json.dumps(self._rng.bit_generator.state))
        return state

    def set_state(self, state):
        self.set_params({n: state[f"param/{n}"] for n in self._params})
        for slot in optimizers.state_slots(self.optimizer):
            for n, v in self._state[slot].items():
                v.set_value(np.asarray(state[f"{slot}/{n}"], dtype=self.dtype))
        self._state["step"].set_value(np.asarray(state["step"], dtype="int64"))
        self._rng.bit_generator.state = json.loads(str(state["rng"]))

    def set_params(self, params):
        for n, p in self._params.items():
            p.set_value(np.asarray(params[n], dtype=self.dtype))
