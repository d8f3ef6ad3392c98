"""The machine a benchmark ran on, printed above its table (two lines) and
stored in its JSON: CPU model, the vector ISA and the matrix engine
(AMX-BF16, AVX512-BF16 only, or none, from /proc/cpuinfo's flags), the fused
kernels' ISAs, threads, library versions, and the measured peaks the figures
are compared with:

* ``fma_peak_gflops``: float32 FMAs, ``native.module.fma_peak`` (every thread
  running independent FMAs of the widest vectors in use);
* ``bf16_peak_gflops``: the bf16 matrix engine, ``native.module.matrix_peak``
  (AMX tiles or AVX512-BF16 dot products), where the extension has it;
* ``bf16_gemm_gflops``: where it has not, what torch.mm reaches on a large
  bf16 GEMM (oneDNN/MKL; a lower bound of the engine's peak, named as such).

Each is the best of several short measurements (a busy moment only ever
lowers one). The C peaks are rates per thread's CPU time times the threads
(where the extension measures them that way), so they stay right when other
processes share the cores; the torch.mm rate is taken from the process's CPU
time the same way. The nominal float32 figure threads x lanes x 2 FMA units x
2 flops x clock is given beside the measured one where the kernel reports a
clock.

    python3 -m bench.machine [--threads N] [--json]    # the banner, or the fields as JSON
"""
import os
import platform
import time

from fxnn.models.fxnn_paths import cpu_model, cpuinfo

LANES = {"avx512": 16, "avx2": 8, "portable": 4}
#: How many short measurements each peak is the best of, and their length in s.
PEAK_TRIES, PEAK_SECONDS = 5, 0.1


def cpu_mhz():
    mhz = cpuinfo("cpu MHz")
    try:
        return float(mhz) if mhz else None
    except ValueError:
        return None


def cpu_flags():
    return set((cpuinfo("flags") or "").split())


def matrix_engine(flags=None):
    """The CPU's bf16 matrix engine by its /proc/cpuinfo flags: "AMX-BF16"
    (Intel AMX tiles, amx_bf16), "AVX512-BF16" (dot-product instructions
    only, avx512_bf16) or "none"."""
    flags = cpu_flags() if flags is None else set(flags)
    if "amx_bf16" in flags:
        return "AMX-BF16"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return "none"


def vector_isa(flags=None):
    """The widest float32 FMA vectors the CPU has, in words."""
    flags = cpu_flags() if flags is None else set(flags)
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags and "fma" in flags:
        return "AVX2+FMA"
    return "no AVX2/AVX-512"


def visible_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def best_of(measure, tries=PEAK_TRIES):
    """The largest of ``tries`` calls of ``measure()`` (GFLOP/s), rounded."""
    return round(max(measure() for _ in range(tries)), 1)


def bf16_isa(native):
    """The ISA name the bf16 C kernel uses, None where it has none (yet)."""
    if native.module is None or not hasattr(native.module, "matrix_peak"):
        return None
    getter = getattr(native, "bf16_isa", None)
    if getter is not None:
        try:
            return getter()
        except Exception:  # noqa: BLE001  (no bf16 ISA on this CPU, or $FXNN_BF16_ISA names a missing one)
            return None
    isas = getattr(native, "bf16_isas", None)
    return (tuple(isas()) or (None,))[0] if isas else None


def torch_bf16_gemm_gflops(threads, size=1024, tries=PEAK_TRIES):
    """The best rate of torch.mm on (size x size) bf16 matrices, GFLOP/s, by
    the process's CPU time spread over ``threads`` (the cores' rate while they
    ran, not the wall clock's), None without torch."""
    try:
        import torch
    except ImportError:
        return None
    a, b = torch.randn(size, size).bfloat16(), torch.randn(size, size).bfloat16()
    torch.mm(a, b)
    best = 0.0
    for _ in range(tries):
        calls, cpu0 = 0, time.process_time()
        wall0 = time.perf_counter()
        while time.perf_counter() - wall0 < PEAK_SECONDS:
            torch.mm(a, b)
            calls += 1
        cpu = time.process_time() - cpu0
        if cpu > 0:
            best = max(best, 2 * size ** 3 * calls / (cpu / threads) / 1e9)
    return round(best, 1)


def describe(threads, peaks=True):
    """{field: value} of this machine, for ``threads`` threads; ``peaks``:
    measure the peaks (about two seconds)."""
    from fxnn.kernels import native
    flags = cpu_flags()
    info = {"cpu": cpu_model(), "machine": platform.machine(), "threads": threads,
            "cores_visible": visible_cores(),
            "isa_flags": " ".join(f for f in ("avx512f", "avx2", "fma", "avx512_bf16", "amx_bf16") if f in flags)
            or "none of avx2/avx512",
            "vector_isa": vector_isa(flags), "matrix_engine": matrix_engine(flags),
            "python": platform.python_version()}
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if capped:  # oneDNN told to use no more than this ISA (e.g. no AMX): the dense baselines run it
        info["onednn_max_isa"] = capped
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
    try:
        import numpy
        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    if hasattr(native.module, "fused_forward"):
        isa = native.isa()
        info["fused_isa"] = isa
        if peaks:
            info["fma_peak_gflops"] = best_of(lambda: native.module.fma_peak(isa, threads, PEAK_SECONDS))
            # the extension that has matrix_peak times both by per-thread CPU time; older ones by the wall clock
            info["fma_peak_clock"] = "thread CPU time" if hasattr(native.module, "matrix_peak") else "wall clock"
        mhz = cpu_mhz()
        if mhz:
            info["nominal_peak_gflops"] = round(threads * LANES[isa] * 2 * 2 * mhz / 1000, 1)
    bf16 = bf16_isa(native)
    if bf16:
        info["bf16_isa"] = bf16
        # a portable stand-in (a CPU without AMX or AVX512-BF16) emulates the instructions: no peak
        if peaks and not bf16.endswith("_standin"):
            info["bf16_peak_gflops"] = best_of(lambda: native.module.matrix_peak(bf16, threads, PEAK_SECONDS))
    try:
        from fxnn.kernels.capabilities import capability
        info["fused_bf16"] = bool(capability("fused", "torch", "cpu", "bfloat16"))
    except ImportError:
        pass
    if peaks and "bf16_peak_gflops" not in info and info["matrix_engine"] != "none":
        gemm = torch_bf16_gemm_gflops(threads)
        if gemm:
            info["bf16_gemm_gflops"] = gemm
    return info


def bf16_peak(info):
    """(GFLOP/s, what it is) of the bf16 peak in ``info``, or (None, None)."""
    if "bf16_peak_gflops" in info:
        return info["bf16_peak_gflops"], f"{info.get('bf16_isa', 'bf16')} matrix peak"
    if "bf16_gemm_gflops" in info:
        return info["bf16_gemm_gflops"], "torch.mm bf16 1024^3 (no matrix_peak in the extension)"
    return None, None


def banner(info):
    """The description as the two lines printed above a table."""
    fp32 = (f"fp32 FMA peak {info['fma_peak_gflops']} GFLOP/s ({info['fused_isa']})"
            if "fma_peak_gflops" in info else "no fp32 FMA peak (extension not built)")
    if "fma_peak_clock" in info:
        fp32 += f" by {info['fma_peak_clock']}"
    if "nominal_peak_gflops" in info:
        fp32 += f" [{info['nominal_peak_gflops']} nominal]"
    value, what = bf16_peak(info)
    bf16 = f"bf16 {value} GFLOP/s ({what})" if value else "no bf16 peak measured"
    fused = info.get("fused_isa", "not built")
    if "fused_bf16" in info:
        fused += f", bf16 kernel {'yes' if info['fused_bf16'] else 'no'}"
    return (f"CPU: {info['cpu']} ({info['machine']}, {info['vector_isa']}, matrix engine {info['matrix_engine']}), "
            f"{info['threads']} threads of {info['cores_visible']} visible; fused kernels: {fused}"
            + (f"; oneDNN capped at {info['onednn_max_isa']} (ONEDNN_MAX_CPU_ISA)" if "onednn_max_isa" in info else "")
            + "\n"
            f"peaks on {info['threads']} threads, best of {PEAK_TRIES}: {fp32}; {bf16}; "
            f"torch {info.get('torch', '-')}, pytensor {info.get('pytensor', '-')}, python {info['python']}")


def main():
    import argparse
    import json
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=visible_cores())
    p.add_argument("--json", action="store_true", help="print the fields as JSON instead of the banner")
    args = p.parse_args()
    info = describe(args.threads)
    print(json.dumps(info, indent=2) if args.json else banner(info))


if __name__ == "__main__":
    main()
