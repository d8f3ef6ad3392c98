"""Choosing and constructing an engine by name.

Every engine offers the same interface (see :class:`models.pytensor_engine.
PyTensorEngine`): ``train_step``, ``evaluate``, ``gradients``, ``get_params``,
``set_params``. Engines are imported lazily so that one missing framework does
not break the other.
"""
ENGINES = ("auto", "pytensor", "torch")
DEVICES = ("auto", "cpu", "cuda")


def cuda_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve(engine, device):
    """(engine, device) with 'auto' replaced by a concrete choice; see README
    "Engines" for the measurements behind the CPU choice."""
    if device == "auto":
        device = "cuda" if engine in ("auto", "torch") and cuda_available() else "cpu"
    if engine == "auto":
        engine = "torch" if device == "cuda" else "pytensor"
    if engine == "pytensor" and device != "cpu":
        raise ValueError("the pytensor engine runs on the CPU only; use --engine torch for --device cuda")
    if device == "cuda" and not cuda_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    return engine, device


def make_engine(engine, device, network, params, optimizer, dropout, seed):
    """A ready-to-train engine for ``network`` starting from ``params``."""
    if engine == "pytensor":
        from .pytensor_engine import PyTensorEngine
        return PyTensorEngine(network, params, optimizer, dropout, seed)
    from .torch_engine import TorchEngine
    return TorchEngine(network, params, optimizer, dropout, seed, device)
