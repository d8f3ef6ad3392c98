"""The engines: what every engine does the same way (:class:`Engine`), and
choosing and constructing one by name.

Every engine offers the same interface: ``train_step``, ``evaluate``,
``gradients``, ``get_params``, ``set_params``, ``get_state``/``set_state``.
The engines themselves (:mod:`fxnn.models.torch.engine`,
:mod:`fxnn.models.pytensor.engine`) are imported lazily so that one missing
framework does not break the other.
"""
import json
from collections import OrderedDict

import numpy as np

from fxnn.kernels import native
from fxnn.kernels.capabilities import BFLOAT16_CAPABILITY as CUDA_BF16_CAPABILITY

from . import dropout as dropout_masks
from . import optimizers
from .fxnn_paths import check_path, describe_paths

ENGINES = ("auto", "pytensor", "torch")
DEVICES = ("auto", "cpu", "cuda")
#: fp32: float32 throughout; bf16: bfloat16 autocast in the torch engine
#: (:class:`fxnn.models.torch.engine.TorchEngine`), float32 weights and loss.
PRECISIONS = ("fp32", "bf16")
#: How the torch engine lays out its conv layers' inputs: auto, channels_last under
#: bf16 (where oneDNN's and cuDNN's bf16 convolutions are fastest) and NCHW in fp32
#: (as records before the flag ran); nchw or channels_last, in either precision.
MEMORY_FORMATS = {"auto": None, "nchw": False, "channels_last": True}
#: The refusal of --memory-format channels_last by the PyTensor engine.
PYTENSOR_NCHW_ONLY = ("the pytensor engine lays tensors out NCHW only; use --engine torch (pip install torch) "
                      "for --memory-format channels_last, or --memory-format nchw")


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def cuda_available():
    if not torch_available():
        return False
    import torch
    return torch.cuda.is_available()


def resolve(engine, device, precision="fp32", memory_format="auto"):
    """(engine, device) with 'auto' replaced by a concrete choice: torch on a
    CUDA GPU; on the CPU also torch when installed, which bench/bench_network.py
    shows faster than pytensor for every model (docs/engines.md); else pytensor.
    ``precision`` bf16 needs the torch engine (PyTensor computes in float32)
    and, on CUDA, a GPU with bfloat16 arithmetic; ``memory_format``
    channels_last the torch engine (PyTensor lays tensors out NCHW); ValueError
    (one line) otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    if engine == "torch" and not torch_available():
        raise ValueError("--engine torch needs PyTorch: pip install torch (see the README's Quick start)")
    if precision == "bf16" and engine == "pytensor":
        raise ValueError("the pytensor engine computes in float32 only; use --engine torch for --precision bf16")
    if precision == "bf16" and not torch_available():
        raise ValueError("--precision bf16 needs the torch engine, and PyTorch is not installed: pip install torch "
                         "(see the README's Quick start), or use --precision fp32")
    if device == "auto":
        device = "cuda" if engine in ("auto", "torch") and cuda_available() else "cpu"
    if engine == "auto":
        engine = "torch" if torch_available() else "pytensor"
    if engine == "pytensor" and MEMORY_FORMATS[memory_format]:
        raise ValueError(PYTENSOR_NCHW_ONLY)
    if engine == "pytensor" and device != "cpu":
        raise ValueError("the pytensor engine runs on the CPU only; use --engine torch for --device cuda")
    if device == "cuda" and not cuda_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    if precision == "bf16" and device == "cuda":
        problem = cuda_bf16_problem()
        if problem:
            raise ValueError(problem)
    return engine, device


def cuda_bf16_problem():
    """Why this CUDA GPU cannot train in bfloat16 (one line), or None."""
    import torch
    capability = torch.cuda.get_device_capability()
    if tuple(capability) >= CUDA_BF16_CAPABILITY:
        return None
    return (f"--precision bf16 needs a CUDA GPU of compute capability {'.'.join(map(str, CUDA_BF16_CAPABILITY))} "
            f"or newer (Ampere), and {torch.cuda.get_device_name()} is {'.'.join(map(str, capability))}: "
            f"use --precision fp32, or --device cpu")


def make_engine(engine, device, network, params, optimizer, dropout, seed, fxnn_path="auto", batch_sizes=None,
                precision="fp32", memory_format="auto"):
    """A ready-to-train engine for ``network`` starting from ``params``; fxnn
    layers on ``fxnn_path`` (see :mod:`fxnn.models.fxnn_paths`); ``batch_sizes``
    {pass: B} tells an engine that chooses paths before it runs (PyTensor)
    which batches to choose them for; ``precision``: one of :data:`PRECISIONS`
    (bf16: the torch engine only); ``memory_format``: one of :data:`MEMORY_FORMATS`
    (channels_last: the torch engine only)."""
    if engine == "pytensor":
        if precision != "fp32":
            raise ValueError("the pytensor engine computes in float32 only; use --engine torch for "
                             f"--precision {precision}")
        if MEMORY_FORMATS[memory_format]:
            raise ValueError(PYTENSOR_NCHW_ONLY)
        from .pytensor.engine import PyTensorEngine
        return PyTensorEngine(network, params, optimizer, dropout, seed, fxnn_path=fxnn_path,
                              batch_sizes=batch_sizes)
    from .torch.engine import TorchEngine
    return TorchEngine(network, params, optimizer, dropout, seed, device, fxnn_path=fxnn_path, precision=precision,
                       channels_last=MEMORY_FORMATS[memory_format])


class Engine:
    """What every engine does the same way: parameters and optimizer state
    under the project-wide names, the dropout masks, the step count, the
    state save/restore and the record of each layer's path. A subclass sets
    ``backend`` and supplies ``_train(x, y, lr, masks, corrections)``,
    ``evaluate``, ``gradients``, ``implementation(path)`` and the variable
    primitives ``_variable(array, name)``, ``_read(variable)`` and
    ``_write(variable, array)``."""

    name = None
    backend = None

    def __init__(self, network, params, optimizer, dropout, seed, fxnn_path):
        if optimizer not in optimizers.OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}")
        self.fxnn_path = check_path(fxnn_path)
        native.check_isa()
        self.network, self.optimizer, self.dropout = network, optimizer, dropout
        self._rng = np.random.default_rng(seed)
        self._step = 0
        #: {(layer name, pass): path} each factored layer really ran
        self.layer_paths = {}

    def _make_variables(self, params):
        """Parameters and zero optimizer state as the engine's variables."""
        self._params = OrderedDict((n, self._variable(v, n)) for n, v in params.items())
        self._state = {slot: OrderedDict((n, self._variable(np.zeros_like(self._read(p)), f"{slot}/{n}"))
                                         for n, p in self._params.items())
                       for slot in optimizers.state_slots(self.optimizer)}

    def describe_paths(self):
        """(paths, implementations) of the factored layers in words, for records."""
        return describe_paths(self.network, self.layer_paths, self.implementation)

    def describe_memory_formats(self):
        """Each conv layer's memory format, for records ("conv0: NCHW; conv1:
        NCHW"); an engine that may run another one says what ran."""
        return "; ".join(f"{layer.name}: NCHW" for layer in self.network.convs) or "none (no conv layers)"

    def train_step(self, x, y, lr):
        """One optimizer step on a batch; returns (loss, error rate) before the step."""
        masks = dropout_masks.draw(self._rng, self.network, len(x), self.dropout)
        self._step += 1
        loss, erate = self._train(x, y, lr, masks, optimizers.bias_corrections(self._step))
        return float(loss), float(erate)

    def get_params(self):
        return OrderedDict((n, self._read(p)) for n, p in self._params.items())

    def get_buffers(self):
        """{name: array} of the state the forward pass keeps beside the
        parameters (BatchNorm's running statistics); an engine that has some overrides it."""
        return OrderedDict()

    def snapshot(self):
        """What a record stores of the network (``network.snapshot_shapes()``):
        the parameters, then the buffers."""
        return OrderedDict(self.get_params(), **self.get_buffers())

    def set_params(self, params):
        for n, p in self._params.items():
            self._write(p, params[n])

    def get_state(self):
        """Parameters, optimizer state and dropout generator as numpy arrays."""
        state = {f"param/{n}": v for n, v in self.get_params().items()}
        for slot, variables in self._state.items():
            state.update({f"{slot}/{n}": self._read(v) for n, v in variables.items()})
        state["step"] = np.asarray(self._step)
        state["rng"] = np.asarray(json.dumps(self._rng.bit_generator.state))
        return state

    def set_state(self, state):
        self.set_params({n: state[f"param/{n}"] for n in self._params})
        for slot, variables in self._state.items():
            for n, v in variables.items():
                self._write(v, state[f"{slot}/{n}"])
        self._step = int(state["step"])
        self._rng.bit_generator.state = json.loads(str(state["rng"]))
