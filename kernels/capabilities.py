"""Which implementation computes each part of an fxnn layer here, or why none
can, for every engine, device, dtype and instruction set.

One :class:`Capability` per question (the ISA is what ``$FXNN_ISA`` and
``$FXNN_BF16_ISA`` name), and from those the paths that run and what runs
each, in words: the one place the engines, the kernels' dispatch and the
records ask, so that they all choose alike. Each backend (the C extension,
PyCUDA, Triton, PyTensor's compiler) is probed once per process and each
answer kept, so dispatch may ask on every call. Needs neither torch nor
PyTensor to import.
"""
import functools
import importlib.util
from dataclasses import dataclass

from . import native

#: The fixed stage, the fused layer, and the ReLU-dropout-pooling block after a conv.
PARTS = ("fixed", "fused", "block")
ENGINES = ("torch", "pytensor")

#: What follows the fixed stage on the fixed path, and what runs the folded path, per engine.
AFTER_FIXED = {"torch": "torch bmm", "pytensor": "tensordot"}
FOLDED = {"torch": "torch conv2d with folded kernels", "pytensor": "im2col in PyTensor graph ops with folded kernels"}
#: What computes the fixed stage where no native kernel runs it, per engine.
FIXED_FALLBACK = {"torch": "separable torch ops", "pytensor": "numpy reference of the PyTensor op"}

#: The oldest GPUs the Triton kernels run on (Triton's floor), and the oldest
#: whose tensor cores take bfloat16.
MIN_CAPABILITY = (7, 5)
BFLOAT16_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Capability:
    """The implementation's name, or a one-line reason there is none; true
    when there is one."""
    name: str | None = None
    reason: str | None = None

    def __bool__(self):
        return self.name is not None

    def __str__(self):
        return self.name if self else self.reason


def _dtype_name(dtype):
    """"float32" for torch.float32, numpy's dtype float32 or "float32"."""
    return str(dtype).removeprefix("torch.")


def _device_type(device):
    """"cuda" for torch.device("cuda:1") or "cuda:1"."""
    return getattr(device, "type", None) or str(device).split(":")[0]


def capability(part, engine="torch", device="cpu", dtype="float32"):
    """What computes ``part`` (one of :data:`PARTS`) for ``engine`` on
    ``device`` in ``dtype`` (a torch dtype or its name), or why nothing
    native can. Never raises for a part and engine of this module."""
    if part not in PARTS or engine not in ENGINES:
        raise ValueError(f"no capability for part {part!r} of engine {engine!r}: "
                         f"parts {', '.join(PARTS)}; engines {', '.join(ENGINES)}")
    return _answer(part, engine, _device_type(device), _dtype_name(dtype),
                   native.requested_isa(), native.requested_bf16_isa())


def forget():
    """Probe everything again at the next question (for tests that take the
    C extension away)."""
    for cached in (_answer, _cuda, _pycuda, _triton, _pytensor_compiler):
        cached.cache_clear()


@functools.cache
def _answer(part, engine, device, dtype, isa, bf16_isa):
    """:func:`capability`, kept per question and ISA override (the last two)."""
    if engine == "pytensor":
        return _pytensor(part, device, dtype)
    if device == "cpu":
        return {"fixed": _cpu_fixed, "fused": _cpu_fused, "block": _cpu_block}[part](dtype)
    if device == "cuda" and part != "block":
        return (_cuda_fixed if part == "fixed" else _cuda_fused)(dtype)
    return Capability(reason=f"no native kernel of the {part} part for {device} tensors")


def _unless(why, name):
    """``name``, or ``why`` when that is not None."""
    return Capability(reason=why) if why else Capability(name)


def _built(function, kernels):
    """None when the C extension has ``function`` (the ``kernels``), else why not."""
    if native.module is None:
        return native.WHY
    if not hasattr(native.module, function):
        return f"fxnn.kernels._fixed_cpu predates the {kernels}; rebuild it: pip install -e ."
    return None


def _built_isa(function, kernels, isa):
    """(ISA, None) when the C extension has ``function`` (the ``kernels``),
    the ISA from ``native.isa`` or ``native.bf16_isa``; else (None, why): not
    built, or the override names an ISA this CPU does not run."""
    why = _built(function, kernels)
    if why:
        return None, why
    try:
        return isa(), None
    except RuntimeError as e:
        return None, str(e)


def _cpu_fixed(dtype):
    if dtype not in ("float32", "float64"):
        return Capability(reason=f"the C fixed stage takes float32 or float64 tensors, not {dtype}")
    return _unless(_built("forward", "fixed stage"), "C fixed stage (kernels/fixed_cpu.c)")


def _cpu_fused(dtype):
    if dtype == "float32":
        isa, why = _built_isa("fused_forward", "fused kernels", native.isa)
        return _unless(why, f"C fused kernel (kernels/fused_cpu.c), {isa}")
    if dtype != "bfloat16":
        return Capability(reason=f"the C fused kernels take float32 or bfloat16 tensors, not {dtype}")
    isa, why = _built_isa("fused_forward_bf16", "bfloat16 fused kernels", native.bf16_isa)
    if not why and isa.endswith("_standin") and not native.requested_bf16_isa():
        why = ("this CPU has neither AMX-BF16 nor AVX512-BF16: the bfloat16 fused kernels would run "
               f"only as portable stand-ins (set {native.BF16_ISA_VARIABLE}={isa} to use them anyway)")
    return _unless(why, f"C fused bf16 kernel (kernels/fused_bf16_cpu.c), {isa}")


def _cpu_block(dtype):
    """float32 runs the C kernel; bfloat16 runs it on an exact float32 copy
    (the same numbers, see :mod:`fxnn.models.torch.block`)."""
    if dtype not in ("float32", "bfloat16"):
        return Capability(reason=f"the C block kernel takes float32 (and bfloat16 as a float32 copy), not {dtype}")
    copy = " on an exact float32 copy" if dtype == "bfloat16" else ""
    return _unless(_built("block_forward", "block kernel"), f"C block kernel (kernels/block_cpu.c){copy}")


@functools.cache
def _cuda():
    """None when PyTorch sees a CUDA GPU, else why not."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False)"
    return None


@functools.cache
def _pycuda():
    """None when the PyCUDA kernels compile and load on the current device, else why not."""
    why = _cuda()
    if why:
        return why
    try:
        import pycuda.driver  # noqa: F401
    except ImportError as e:
        return f"pycuda is not installed ({e}); install the extra: pip install -e .[cuda]"
    import torch

    from . import cuda_fixed
    if cuda_fixed.nvcc() is None:
        return "nvcc not found on PATH nor in $CUDA_HOME/bin; PyCUDA needs it to compile the kernel"
    try:
        cuda_fixed.device_kernels(torch.cuda.current_device())
    except Exception as e:  # any failure to initialise, compile or load means "not available"
        return f"could not compile or load {cuda_fixed.SOURCE.name}: {type(e).__name__}: {e}"
    return None


def _cuda_fixed(dtype):
    if dtype not in ("float32", "float16", "bfloat16"):
        return Capability(reason=f"the PyCUDA kernel takes float32, float16 or bfloat16 tensors, not {dtype}")
    return _unless(_pycuda(), "PyCUDA kernel kernels/simple_conv.cu")


@functools.cache
def _triton():
    """None when the Triton kernels can run on the current device, else why not."""
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed; install the extra: pip install -e .[cuda]"
    why = _cuda()
    if why:
        return why
    import torch
    sm = torch.cuda.get_device_capability()
    if sm < MIN_CAPABILITY:
        return (f"{torch.cuda.get_device_name()} is sm_{sm[0]}{sm[1]}; the Triton kernels "
                f"need sm_{MIN_CAPABILITY[0]}{MIN_CAPABILITY[1]} or newer")
    return None


def _cuda_fused(dtype):
    if dtype not in ("float32", "float16", "bfloat16"):
        return Capability(reason=f"the Triton fused kernels take float32, float16 or bfloat16 tensors, not {dtype}")
    why = _triton()
    if not why and dtype == "bfloat16":
        import torch
        if torch.cuda.get_device_capability() < BFLOAT16_CAPABILITY:
            why = (f"{torch.cuda.get_device_name()} has no bfloat16 tensor cores (the Triton kernels take "
                   f"bfloat16 from sm_{BFLOAT16_CAPABILITY[0]}{BFLOAT16_CAPABILITY[1]})")
    return _unless(why, "Triton fused kernel (kernels/fused_triton.py)")


@functools.cache
def _pytensor_compiler():
    """None when PyTensor compiles C code here, else why not."""
    if importlib.util.find_spec("pytensor") is None:
        return "pytensor is not installed"
    import pytensor
    return None if pytensor.config.cxx else "PyTensor has no C compiler (pytensor.config.cxx is empty)"


def _pytensor(part, device, dtype):
    """PyTensor compiles the C sources itself: no need of the extension."""
    if device != "cpu":
        return Capability(reason=f"the PyTensor engine runs on the CPU only, not {device}")
    if part == "block":
        return Capability(reason="the PyTensor engine builds the block from graph ops")
    if part == "fixed" and dtype not in ("float32", "float64"):
        return Capability(reason=f"the PyTensor fixed-stage op takes float32 or float64, not {dtype}")
    if part == "fused" and dtype != "float32":
        return Capability(reason=f"the PyTensor fused ops take float32, not {dtype}")
    why = _pytensor_compiler()
    if why:
        return Capability(reason=why)
    if part == "fixed":
        return Capability("PyTensor C op of kernels/fixed_cpu.c")
    if _built("fused_forward", "fused kernels"):  # no extension to ask: the op checks the ISA as it compiles
        return Capability(f"PyTensor C op of kernels/fused_cpu.c, {native.requested_isa() or 'best ISA of this CPU'}")
    isa, why = _built_isa("fused_forward", "fused kernels", native.isa)
    return _unless(why, f"PyTensor C op of kernels/fused_cpu.c, {isa}")


def paths(engine="torch", device="cpu", dtype="float32"):
    """The paths of :mod:`fxnn.models.fxnn_paths` that can compute an fxnn
    layer: "fused" where its kernels run, then "fixed" and "folded", which
    run everywhere (the fixed stage in :data:`FIXED_FALLBACK` where no native
    kernel does)."""
    return (("fused",) if capability("fused", engine, device, dtype) else ()) + ("fixed", "folded")


def fixed_stage(engine="torch", device="cpu", dtype="float32"):
    """What computes the fixed stage, in words: the native kernel, or the
    fallback and why."""
    fixed = capability("fixed", engine, device, dtype)
    return fixed.name or f"{FIXED_FALLBACK[engine]} (native kernel unavailable: {fixed.reason})"


def implementation(path, engine="torch", device="cpu", dtype="float32"):
    """What runs ``path`` ("fused", "fixed" or "folded") in words, for
    records and logs (a fused path that cannot run: why)."""
    if path == "fused":
        return str(capability("fused", engine, device, dtype))
    if path == "folded":
        return FOLDED[engine]
    return f"{fixed_stage(engine, device, dtype)}, then {AFTER_FIXED[engine]}"
