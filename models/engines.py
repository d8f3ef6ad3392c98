"""Choosing and constructing an engine by name.

Every engine offers the same interface (see :class:`models.pytensor_engine.
PyTensorEngine`): ``train_step``, ``evaluate``, ``gradients``, ``get_params``,
``set_params``. Engines are imported lazily so that one missing framework does
not break the other.
"""
ENGINES = ("auto", "pytensor", "torch")
DEVICES = ("auto", "cpu", "cuda")


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


def resolve(engine, device):
    """(engine, device) with 'auto' replaced by a concrete choice: torch on a
    CUDA GPU; on the CPU also torch when installed, which bench/bench_network.py
    shows faster than pytensor for every model (README "Engines"); else pytensor."""
    if engine == "torch" and not torch_available():
        raise ValueError("--engine torch needs PyTorch: pip install torch (see README Quick start)")
    if device == "auto":
        device = "cuda" if engine in ("auto", "torch") and cuda_available() else "cpu"
    if engine == "auto":
        engine = "torch" if torch_available() else "pytensor"
    if engine == "pytensor" and device != "cpu":
        raise ValueError("the pytensor engine runs on the CPU only; use --engine torch for --device cuda")
    if device == "cuda" and not cuda_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    return engine, device


def make_engine(engine, device, network, params, optimizer, dropout, seed, fxnn_path="auto", batch_sizes=None):
    """A ready-to-train engine for ``network`` starting from ``params``; fxnn
    layers on ``fxnn_path`` (see :mod:`fxnn.models.fxnn_paths`); ``batch_sizes``
    {pass: B} tells an engine that chooses paths before it runs (PyTensor)
    which batches to choose them for."""
    if engine == "pytensor":
        from .pytensor_engine import PyTensorEngine
        return PyTensorEngine(network, params, optimizer, dropout, seed, fxnn_path=fxnn_path,
                              batch_sizes=batch_sizes)
    from .torch_engine import TorchEngine
    return TorchEngine(network, params, optimizer, dropout, seed, device, fxnn_path=fxnn_path)
