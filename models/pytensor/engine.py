"""The PyTensor engine: the network of :mod:`fxnn.models.network` as one symbolic
graph of the PyTensor backend, compiled once.

Compiles a training function (loss, error rate and the optimizer's updates,
dropout on, with masks from :mod:`fxnn.models.dropout`), an evaluation function
(loss, error rate and class probabilities, dropout off) and, on demand for
tests, a gradient function. Parameters and optimizer state live in shared
variables; :class:`fxnn.models.network.Engine` moves them in and out as numpy
arrays with the project-wide names of :mod:`fxnn.models.architecture`. PyTensor
compiles before it runs, so ``auto`` chooses each fxnn layer's path for the
known batch sizes when the engine is built (:mod:`fxnn.models.pytensor.paths`).
"""
import warnings
from collections import OrderedDict

import numpy as np

# Without a linkable BLAS, PyTensor's C code calls numpy's own (OpenBLAS) through
# the numpy C API; it warns at length about that on every run. See docs/engines.md.
warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS", category=UserWarning)
import pytensor  # noqa: E402
import pytensor.tensor as pt  # noqa: E402

from fxnn.kernels import capabilities  # noqa: E402

from .. import network as net  # noqa: E402
from ..engines import Engine  # noqa: E402
from ..hyperparameters import HYP  # noqa: E402
from . import paths as pytensor_paths  # noqa: E402
from .backend import BACKEND  # noqa: E402


def compile_mode():
    """PyTensor's C backend ('cvm'); its default in PyTensor 3 is Numba, whose
    compile takes minutes for this graph. Without a C compiler: the Python VM."""
    mode = pytensor.compile.mode.Mode(linker="cvm" if pytensor.config.cxx else "vm", optimizer="fast_run")
    # Keep softmax as elementwise C code: the rewrite to the symbolic Softmax
    # op would run it in Python, 500x slower on (B, 10) logits.
    return mode.excluding("symbolic_op_recognition")


FLOAT = "float32"  # training precision; float64 is for gradient checks


class PyTensorEngine(Engine):
    """Trains and evaluates one network with PyTensor on the CPU."""

    name = "pytensor"
    backend = BACKEND

    def __init__(self, network, params, optimizer=HYP.optimizer, dropout=0.0, seed=0,
                 dtype=FLOAT, fxnn_path="auto", batch_sizes=None):
        """``batch_sizes`` {pass: B}: the batches ``auto`` chooses paths for
        (default: the run's, :data:`fxnn.models.hyperparameters.HYP`)."""
        if network.arch != "original":  # BatchNorm's running statistics would be graph updates: not written
            raise ValueError(f"the pytensor engine runs --arch original only: use --engine torch for --arch "
                             f"{network.arch}")
        super().__init__(network, params, optimizer, dropout, seed, fxnn_path)
        if fxnn_path == "fused" and not capabilities.capability("fused", "pytensor", "cpu", dtype):
            raise ValueError("--fxnn-path fused needs float32 and a C compiler for PyTensor; use --fxnn-path auto")
        self.dtype = dtype
        if fxnn_path == "auto":
            self._chosen = pytensor_paths.choose(network, dtype, batch_sizes or {"train": HYP.batch_size, "valid": HYP.valid_batch},
                                                 compile_mode())
        else:
            self._chosen = {(name, p): fxnn_path for name in pytensor_paths.layer_shapes(network, 1)
                            for p in ("train", "valid")}
        self._make_variables(params)
        self._x = pt.tensor4("x", dtype=dtype)
        self._y = pt.ivector("y")
        lr, c1, c2 = (pt.scalar(n, dtype=dtype) for n in ("lr", "c1", "c2"))
        masks = [pt.tensor4(f"mask{i}", dtype="uint16") for i in range(len(network.convs))] if dropout else []
        with pytensor.config.change_flags(floatX=dtype):
            loss, erate = self._objective(masks, "train")
            grads = OrderedDict(zip(self._params, pytensor.grad(loss, list(self._params.values()))))
            updates = net.updates(BACKEND, network, optimizer, self._params, grads, self._state, lr, (c1, c2))
            self._train_fn = pytensor.function([self._x, self._y, lr, c1, c2] + masks, [loss, erate],
                                               updates=updates, mode=compile_mode(),
                                               on_unused_input="ignore")  # c1, c2: Adam's only
            probs = net.forward(BACKEND, network, self._params, self._x, paths=self._paths("valid"))
            self._eval = pytensor.function([self._x, self._y], list(net.objective(BACKEND, probs, self._y)) + [probs],
                                           mode=compile_mode())
        self._grad_fn = None

    def _paths(self, pass_):
        """The path function of :func:`fxnn.models.network.forward` for ``pass_``:
        the chosen path of an fxnn layer (the fixed path where "fused"
        cannot run), folded for any other basis; recorded as it is built
        into the graph."""
        def path(layer, h, w, b):
            chosen = self._chosen[layer.name, pass_] if layer.fxnn_paths else "folded"
            if chosen == "fused" and not capabilities.capability("fused", "pytensor", "cpu", h.dtype):
                chosen = "fixed"
            self.layer_paths[layer.name, pass_] = chosen
            return chosen
        return path

    def _objective(self, masks, pass_):
        probs = net.forward(BACKEND, self.network, self._params, self._x, masks, self.dropout, self._paths(pass_))
        return net.objective(BACKEND, probs, self._y)

    def _variable(self, array, name):
        return pytensor.shared(np.asarray(array, dtype=self.dtype), name=name)

    def _read(self, variable):
        return variable.get_value()

    def _write(self, variable, array):
        variable.set_value(np.asarray(array, dtype=self.dtype))

    def implementation(self, path):
        return capabilities.implementation(path, "pytensor", "cpu", self.dtype)

    def _train(self, x, y, lr, masks, corrections):
        as_float = (np.asarray(v, dtype=self.dtype) for v in (lr,) + corrections)
        return self._train_fn(x, y, *as_float, *masks)

    def evaluate(self, x, y):
        """(mean loss, error rate, probabilities) of a batch, dropout off."""
        loss, erate, probs = self._eval(x, y)
        return float(loss), float(erate), probs

    def gradients(self, x, y):
        """{name: d loss / d param} on a batch with dropout off (for tests)."""
        if self._grad_fn is None:
            with pytensor.config.change_flags(floatX=self.dtype):
                loss, _ = self._objective([], "train")
                self._grad_fn = pytensor.function([self._x, self._y],
                                                  pytensor.grad(loss, list(self._params.values())),
                                                  mode=compile_mode())
        return OrderedDict(zip(self._params, self._grad_fn(x, y)))
