"""Choosing and constructing an engine by name.

Every engine offers the same interface (see :class:`models.pytensor_engine.
PyTensorEngine`): ``train_step``, ``evaluate``, ``gradients``, ``get_params``,
``set_params``. Engines are imported lazily so that one missing framework does
not break the other.
"""
ENGINES = ("auto", "pytensor", "torch")
DEVICES = ("auto", "cpu", "cuda")
#: fp32: float32 throughout; bf16: bfloat16 autocast in the torch engine
#: (:class:`fxnn.models.torch_engine.TorchEngine`), float32 weights and loss.
PRECISIONS = ("fp32", "bf16")
#: The oldest CUDA GPUs with bfloat16 arithmetic (Ampere, compute capability 8.0).
CUDA_BF16_CAPABILITY = (8, 0)


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


def resolve(engine, device, precision="fp32"):
    """(engine, device) with 'auto' replaced by a concrete choice: torch on a
    CUDA GPU; on the CPU also torch when installed, which bench/bench_network.py
    shows faster than pytensor for every model (README "Engines"); else pytensor.
    ``precision`` bf16 needs the torch engine (PyTensor computes in float32)
    and, on CUDA, a GPU with bfloat16 arithmetic; ValueError (one line) otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    if engine == "torch" and not torch_available():
        raise ValueError("--engine torch needs PyTorch: pip install torch (see README Quick start)")
    if precision == "bf16" and engine == "pytensor":
        raise ValueError("the pytensor engine computes in float32 only; use --engine torch for --precision bf16")
    if precision == "bf16" and not torch_available():
        raise ValueError("--precision bf16 needs the torch engine, and PyTorch is not installed: pip install torch "
                         "(see README Quick start), or use --precision fp32")
    if device == "auto":
        device = "cuda" if engine in ("auto", "torch") and cuda_available() else "cpu"
    if engine == "auto":
        engine = "torch" if torch_available() else "pytensor"
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
                precision="fp32"):
    """A ready-to-train engine for ``network`` starting from ``params``; fxnn
    layers on ``fxnn_path`` (see :mod:`fxnn.models.fxnn_paths`); ``batch_sizes``
    {pass: B} tells an engine that chooses paths before it runs (PyTensor)
    which batches to choose them for; ``precision``: one of :data:`PRECISIONS`
    (bf16: the torch engine only)."""
    if engine == "pytensor":
        if precision != "fp32":
            raise ValueError("the pytensor engine computes in float32 only; use --engine torch for "
                             f"--precision {precision}")
        from .pytensor_engine import PyTensorEngine
        return PyTensorEngine(network, params, optimizer, dropout, seed, fxnn_path=fxnn_path,
                              batch_sizes=batch_sizes)
    from .torch_engine import TorchEngine
    return TorchEngine(network, params, optimizer, dropout, seed, device, fxnn_path=fxnn_path, precision=precision)
