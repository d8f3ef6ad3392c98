"""The machine a benchmark ran on, printed above its table and stored in its
JSON: CPU model, the instruction sets it has and the one the fused kernels
use, threads, library versions, and the FMA peak the figures compare with.

The peak is measured (fxnn.kernels._fixed_cpu.fma_peak: every thread running
independent FMAs of the widest vectors in use, the best of five tenths of a
second), so it reflects the clock the cores really hold under a vector load;
the nominal figure threads x lanes x 2 FMA units x 2 flops x clock is
printed beside it where the kernel reports a clock."""
import os
import platform

from fxnn.models.fxnn_paths import cpu_model, cpuinfo

LANES = {"avx512": 16, "avx2": 8, "portable": 4}


def cpu_mhz():
    mhz = cpuinfo("cpu MHz")
    try:
        return float(mhz) if mhz else None
    except ValueError:
        return None


def describe(threads):
    """{field: value} of this machine, for ``threads`` threads."""
    from fxnn.kernels import native
    flags = set((cpuinfo("flags") or "").split())
    info = {"cpu": cpu_model(), "machine": platform.machine(), "threads": threads,
            "cores_visible": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "isa_flags": " ".join(f for f in ("avx512f", "avx2", "fma") if f in flags) or "none of avx2/avx512",
            "python": platform.python_version()}
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        import pytensor
        info["pytensor"] = pytensor.__version__
    except ImportError:
        pass
    if native.fused_available()[0]:
        isa = native.isa()
        info["fused_isa"] = isa
        # the best of a few short measurements: a busy moment only ever lowers one
        info["fma_peak_gflops"] = round(max(native.module.fma_peak(isa, threads, 0.1) for _ in range(5)), 1)
        mhz = cpu_mhz()
        if mhz:
            info["nominal_peak_gflops"] = round(threads * LANES[isa] * 2 * 2 * mhz / 1000, 1)
    return info


def banner(info):
    """The description as the lines printed above a table."""
    peak = (f"FMA peak {info['fma_peak_gflops']} GFLOP/s measured on {info['threads']} threads "
            f"({info['fused_isa']})" if "fma_peak_gflops" in info else "no FMA peak (extension not built)")
    if "nominal_peak_gflops" in info:
        peak += f", {info['nominal_peak_gflops']} nominal at the reported clock"
    return (f"CPU: {info['cpu']} ({info['machine']}; {info['isa_flags']}), {info['threads']} threads of "
            f"{info['cores_visible']} visible; fused kernels: {info.get('fused_isa', 'not built')}\n"
            f"{peak}; torch {info.get('torch', '-')}, pytensor {info.get('pytensor', '-')}, "
            f"python {info['python']}")
