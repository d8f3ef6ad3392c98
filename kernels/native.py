"""The compiled extension ``fxnn.kernels._fixed_cpu`` (the fixed stage of
``fixed_cpu.c`` and the fused layer of ``fused_cpu.c``), when ``pip install``
built it, and the instruction set its fused kernels use.

No framework here: the PyTorch launchers (:mod:`fxnn.kernels.cpu_fixed`,
:mod:`fxnn.kernels.cpu_fused`) call it, and :mod:`fxnn.kernels.capabilities`
says from it what runs where, and why not.
"""
import os

try:
    from . import _fixed_cpu as module
    WHY = None
except ImportError as e:  # not built: no C compiler at install time
    module = None
    WHY = f"fxnn.kernels._fixed_cpu not built ({e}); reinstall with a C compiler: pip install -e ."

#: Names the instruction set of the fused kernels (avx512, avx2, portable).
ISA_VARIABLE = "FXNN_ISA"

#: Names the instruction set of the bfloat16 fused kernels (amx, avx512bf16,
#: amx_standin, avx512bf16_standin).
BF16_ISA_VARIABLE = "FXNN_BF16_ISA"


def isas():
    """The instruction sets of the fused kernels this CPU runs, best first."""
    return tuple(module.isas())


def requested_isa():
    """``$FXNN_ISA``, normalised ("" when unset)."""
    return os.environ.get(ISA_VARIABLE, "").strip().lower()


def isa():
    """The instruction set in use: ``$FXNN_ISA`` when set, else the best."""
    supported, wanted = isas(), requested_isa()
    if not wanted:
        return supported[0]
    if wanted not in supported:
        raise RuntimeError(f"{ISA_VARIABLE}={wanted}: this CPU runs the fused kernels as "
                           f"{', '.join(supported)}; unset {ISA_VARIABLE} or name one of those")
    return wanted


def check_isa():
    """RuntimeError with the fix when ``$FXNN_ISA`` names an instruction set
    this CPU does not run (checked where the extension is built)."""
    if requested_isa() and hasattr(module, "fused_forward"):
        isa()


def bf16_isas():
    """The instruction sets of the bfloat16 fused kernels this CPU runs, best
    first: amx, avx512bf16 where the CPU has them, then the portable
    stand-ins amx_standin and avx512bf16_standin (exact emulations of those
    instructions in plain C: correct anywhere, but slow)."""
    return tuple(module.bf16_isas())


def requested_bf16_isa():
    """``$FXNN_BF16_ISA``, normalised ("" when unset)."""
    return os.environ.get(BF16_ISA_VARIABLE, "").strip().lower()


def bf16_isa():
    """The bfloat16 instruction set in use: ``$FXNN_BF16_ISA`` when set, else the best."""
    supported, wanted = bf16_isas(), requested_bf16_isa()
    if not wanted:
        return supported[0]
    if wanted not in supported:
        raise RuntimeError(f"{BF16_ISA_VARIABLE}={wanted}: this CPU runs the bfloat16 fused kernels as "
                           f"{', '.join(supported)}; unset {BF16_ISA_VARIABLE} or name one of those")
    return wanted


def check_bf16_isa():
    """RuntimeError with the fix when ``$FXNN_BF16_ISA`` names an instruction
    set this CPU does not run (checked where the extension is built)."""
    if requested_bf16_isa() and hasattr(module, "fused_forward_bf16"):
        bf16_isa()
