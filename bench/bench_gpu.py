#!/usr/bin/env python3
"""GPU benchmark of the fxnn layer: the fused Triton kernel, the fixed path
(PyCUDA stage + cuBLAS), the folded path and cuDNN's dense 3x3.

For every batch B, channel count M = N, image size H = W, precision
(float32, TF32, bfloat16) and memory layout (NCHW, channels-last) it times
forward + backward (input gradient included, as for any layer but the
first) of

* fused      the fused fxnn kernels of kernels/fused_triton.py (Triton)
* fixed      the fixed stage (kernels/simple_conv.cu through PyCUDA), then
             the 1x1 as a cuBLAS batched GEMM
* folded     the 1x1 weights folded into dense 3x3 kernels, one cuDNN conv
* dense      torch.nn.Conv2d(M, N, 3, padding=1) (cuDNN), a full trainable 3x3

and reports each as ms, as a fraction of the device's DRAM bandwidth
(compulsory bytes: each tensor the pass must read or write, once) and of its
tensor-core peak (the multiply-adds each contender does: 5MN per pixel and
pass for the fxnn paths, 9MN for folded and dense; plain float32 against
the CUDA cores' peak). The peaks come from a table keyed by the device's
name (vendor datasheet figures, dense, no sparsity) or --peak-gbps and
--peak-tflops, and are printed with the device. Then the fixed stage alone
(forward, adjoint) as bandwidth, and with --runs a whole MNIST- and
CIFAR-shaped training run (fxnn.py on the GPU; the bundled MNIST sample
and synthetic CIFAR-shaped batches). Times are medians of CUDA-event
timings of single steps after warm-up, torch.backends.cudnn.benchmark on;
all ratios come from the same run.

    python3 -m bench.bench_gpu --quick            # a short run
    python3 -m bench.bench_gpu --json bench/results/gpu.json
    python3 -m bench.bench_gpu --runs             # also the whole training runs
    python3 -m bench.bench_gpu --shapes 64,64,64,32 64,32,64,14 64,64,128,28 --precisions bfloat16 float32 \
        --layouts channels_last nchw --no-stage   # the issue's (B, M, N, H=W) goal shapes (bench/gpu_check.py)

Without PyCUDA (pip install -e ".[test]" brings Triton, not PyCUDA) the
fixed path runs its torch fallback (reported as such) and the fixed stage's
own bandwidth is skipped; the fused Triton kernels are what this needs.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from fxnn.kernels import cuda_fixed  # noqa: E402
from fxnn.kernels.capabilities import capability  # noqa: E402
from fxnn.kernels.fixed_kernels import NUM_KERNELS  # noqa: E402
from fxnn.models.torch.paths import fixed_conv2d_record  # noqa: E402

FULL = {"batch": [64, 256], "channels": [32, 64, 128, 256], "sizes": [14, 28, 56],
        "precisions": ["float32", "tf32", "bfloat16"], "layouts": ["nchw", "channels_last"], "warmup": 10, "reps": 50}
QUICK = {"batch": [256], "channels": [64, 128], "sizes": [28, 56], "precisions": ["bfloat16"], "layouts": ["nchw"],
         "warmup": 3, "reps": 10}
CONTENDERS = ("fused", "fixed", "folded", "dense")

#: Datasheet peaks, dense: (DRAM GB/s, {precision: TFLOP/s}); "float32" is
#: the CUDA cores' FMA rate, the others the tensor cores' with float32
#: accumulation. Keyed by a substring of torch.cuda.get_device_name().
PEAKS = {
    "H200": (4800, {"float32": 67, "tf32": 495, "bfloat16": 989}),
    "H100 PCIe": (2000, {"float32": 51, "tf32": 378, "bfloat16": 756}),
    "H100": (3350, {"float32": 67, "tf32": 495, "bfloat16": 989}),
    "A100-SXM4-80GB": (2039, {"float32": 19.5, "tf32": 156, "bfloat16": 312}),
    "A100": (1555, {"float32": 19.5, "tf32": 156, "bfloat16": 312}),
    "L40S": (864, {"float32": 91.6, "tf32": 183, "bfloat16": 362}),
    "L4": (300, {"float32": 30.3, "tf32": 60, "bfloat16": 121}),
    "RTX 4090": (1008, {"float32": 82.6, "tf32": 82.6, "bfloat16": 165}),
    "A10": (600, {"float32": 31.2, "tf32": 62.5, "bfloat16": 125}),
}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"short run: B={QUICK['batch']}, M=N={QUICK['channels']}, H=W={QUICK['sizes']}, "
                        f"{QUICK['precisions']}, {QUICK['layouts']}, {QUICK['warmup']} warm-up and "
                        f"{QUICK['reps']} timed steps")
    p.add_argument("--shapes", nargs="+", metavar="B,M,N,HW",
                   help="explicit layer shapes (B, M, N, H=W), instead of the --batch x --channels x --sizes grid")
    p.add_argument("--no-stage", action="store_true", help="skip the fixed stage's bandwidth table")
    p.add_argument("--batch", type=int, nargs="+", help=f"batch sizes (default {FULL['batch']})")
    p.add_argument("--channels", type=int, nargs="+", help=f"M = N values (default {FULL['channels']})")
    p.add_argument("--sizes", type=int, nargs="+", help=f"H = W values (default {FULL['sizes']})")
    p.add_argument("--precisions", nargs="+", choices=FULL["precisions"],
                   help=f"precisions (default {FULL['precisions']})")
    p.add_argument("--layouts", nargs="+", choices=FULL["layouts"], help=f"memory layouts (default {FULL['layouts']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps first (default {FULL['warmup']})")
    p.add_argument("--reps", type=int, help=f"timed steps, median reported (default {FULL['reps']})")
    p.add_argument("--peak-gbps", type=float, help="DRAM bandwidth peak in GB/s (default: the table, else PyCUDA)")
    p.add_argument("--peak-tflops", type=float, nargs=3, metavar=("FP32", "TF32", "BF16"),
                   help="compute peaks in TFLOP/s (default: the table for the device)")
    p.add_argument("--runs", action="store_true", help="also time whole MNIST- and CIFAR-shaped training runs")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.shapes:
        args.shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes]
        if any(len(s) != 4 for s in args.shapes):
            p.error("--shapes takes B,M,N,HW (four integers) each")
    else:
        args.shapes = [(b, m, m, size) for b in args.batch for m in args.channels for size in args.sizes]
    return args


def device_peaks(args, name, index):
    """(GB/s or None, {precision: TFLOP/s} or {}, where they came from)."""
    row = next((v for k, v in PEAKS.items() if k in name), None)
    gbps, tflops, source = (row[0], dict(row[1]), "datasheet table") if row else (None, {}, "unknown device")
    if args.peak_tflops:
        tflops, source = dict(zip(FULL["precisions"], args.peak_tflops)), "--peak-tflops"
    if args.peak_gbps:
        gbps = args.peak_gbps
    elif gbps is None:
        try:
            import pycuda.driver as drv
            drv.init()
            device = drv.Device(index)
            clock_khz = device.get_attribute(drv.device_attribute.MEMORY_CLOCK_RATE)
            bus_bits = device.get_attribute(drv.device_attribute.GLOBAL_MEMORY_BUS_WIDTH)
            gbps = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9
        except Exception:  # an attribute this driver does not report: leave it unknown
            gbps = None
    return gbps, tflops, source


def median_ms(step, warmup, reps, before=lambda: None):
    """Median time of ``step`` in ms, each timed alone between CUDA events;
    ``before`` runs untimed before each step."""
    for _ in range(warmup):
        before()
        step()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        before()
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def compulsory_bytes(b, m, n, size, element):
    """Forward + backward with input gradient: read x, W; write y; read dy,
    x, W; write dx, dW."""
    pixels = b * size * size
    return element * (3 * m * pixels + 2 * n * pixels + 3 * NUM_KERNELS * m * n)


def bench_config(b, m, n, size, precision, layout, args, peaks):
    """One row of results."""
    dev = torch.device("cuda")
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(b, m, size, size, device=dev, dtype=dtype).to(memory_format=memory_format).requires_grad_()
    dy = torch.randn(b, n, size, size, device=dev, dtype=dtype).to(memory_format=memory_format)
    w = (torch.randn(NUM_KERNELS * m, n, device=dev, dtype=dtype) / (NUM_KERNELS * m) ** 0.5).requires_grad_()
    bias = torch.zeros(n, device=dev, dtype=dtype, requires_grad=True)
    dense = torch.nn.Conv2d(m, n, 3, padding=1).to(dev, dtype).to(memory_format=memory_format)
    steps = {path: (lambda path=path: fixed_conv2d_record(x, w, bias, path).backward(dy))
             for path in ("fused", "fixed", "folded")}
    steps["dense"] = lambda: dense(x).backward(dy)
    params = [x, w, bias, *dense.parameters()]

    def clear_grads():
        for p in params:
            p.grad = None

    row = {"B": b, "M": m, "N": n, "H": size, "W": size, "precision": precision, "layout": layout}
    moved = compulsory_bytes(b, m, n, size, x.element_size())
    for name in CONTENDERS:
        ms = median_ms(steps[name], args.warmup, args.reps, clear_grads)
        macs = 3 * b * size * size * m * n * (NUM_KERNELS if name in ("fused", "fixed") else 9)
        row[f"{name}_ms"] = ms
        row[f"{name}_dram"] = moved / (ms * 1e-3) / (peaks[0] * 1e9) if peaks[0] else None
        peak = peaks[1].get(precision)
        row[f"{name}_peak"] = 2 * macs / (ms * 1e-3) / (peak * 1e12) if peak else None
    row["fused_over_dense"] = row["fused_ms"] / row["dense_ms"]
    return row


def bench_fixed_stage(b, m, size, args, gbps):
    """The PyCUDA fixed stage alone, forward and adjoint, float32: GB/s and
    the fraction of the DRAM peak (read 1 and write 5 planes per input plane,
    or the reverse; halo re-reads, mostly from L2, not counted)."""
    x = torch.randn(b, m, size, size, device="cuda")
    g5 = torch.randn(b, NUM_KERNELS * m, size, size, device="cuda")
    moved = (1 + NUM_KERNELS) * x.numel() * x.element_size()
    row = {"B": b, "M": m, "H": size, "W": size}
    for direction, step in (("forward", lambda: cuda_fixed.fixed_forward(x)),
                            ("adjoint", lambda: cuda_fixed.fixed_backward(g5))):
        ms = median_ms(step, args.warmup, args.reps)
        row[f"{direction}_ms"] = ms
        row[f"{direction}_gbps"] = moved / (ms * 1e-3) / 1e9
        row[f"{direction}_dram"] = row[f"{direction}_gbps"] / gbps if gbps else None
    return row


def whole_runs():
    """Whole fxnn.py training runs on the GPU, default length (100 records of
    100 iterations), MNIST (bundled sample) and CIFAR-shaped synthetic data:
    wall seconds, each in a fresh process after one untimed run that lets
    ``auto`` measure its paths."""
    from bench_record_memory import write_cifar
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar(os.path.join(tmp, "cifar10"))
        for dataset, extra in (("MNIST", ["--no-download"]), ("CIFAR10", ["--data-dir", tmp])):
            for model in ("fxnn", "cnn"):
                cmd = [sys.executable, str(ROOT / "fxnn.py"), "-m", model, "-d", dataset, "--engine", "torch",
                       "--device", "cuda", "--record-params", "none", "--seed", "1", "--force",
                       "-o", os.path.join(tmp, f"{dataset}-{model}.mat"), *extra]
                subprocess.run(cmd + ["-nrec", "2", "-ipr", "10"], check=True, capture_output=True, cwd=ROOT)
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
                results.append({"dataset": dataset, "model": model, "seconds": time.perf_counter() - start})
                print(f"  {dataset:8} {model:5} {results[-1]['seconds']:8.1f} s (100 x 100 iterations)", flush=True)
    return results


def _fraction(value):
    return f"{value:4.0%}" if value is not None else "  - "


def format_row(r):
    shape = f"{r['B']:>4} {r['M']:>4} {r['N']:>4} {r['H']:>3}x{r['W']:<3} {r['precision']:>8} {r['layout']:>13}"
    if "skipped" in r:
        return f"{shape} | skipped: {r['skipped']}"
    cells = " ".join(f"{r[f'{c}_ms']:8.3f} {_fraction(r[f'{c}_dram'])} {_fraction(r[f'{c}_peak'])}" for c in CONTENDERS)
    return f"{shape} | {cells} | {r['fused_over_dense']:5.2f}x"


def driver_version():
    """The NVIDIA driver's version as nvidia-smi reports it, or None."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def header():
    names = " ".join(f"{c + ' ms':>8} {'DRAM':>4} {'peak':>4}" for c in CONTENDERS)
    line = f"{'B':>4} {'M':>4} {'N':>4} {'HxW':>7} {'dtype':>8} {'layout':>13} | {names} | fused/dense"
    return line + "\n" + "-" * len(line)


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA GPU available (torch.cuda.is_available() is False); nothing to measure")
    fused, stage = (capability(part, "torch", "cuda") for part in ("fused", "fixed"))
    if not fused:
        sys.exit(f"bench_gpu: the fused Triton kernel is unavailable: {fused.reason}")
    fixed_ok, fixed_reason = bool(stage), stage.reason
    if not fixed_ok:
        print(f"bench_gpu: no PyCUDA fixed stage ({fixed_reason}): the fixed path runs its torch fallback, "
              f"and the fixed stage's bandwidth is skipped")

    torch.backends.cudnn.benchmark = True
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    gbps, tflops, source = device_peaks(args, props.name, index)
    try:
        import pycuda
        pycuda_version = pycuda.VERSION_TEXT
    except ImportError:
        pycuda_version = None
    import triton
    meta = {"device": props.name, "compute_capability": f"{props.major}.{props.minor}",
            "sms": props.multi_processor_count, "driver": driver_version(), "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
            "torch": torch.__version__, "pycuda": pycuda_version, "triton": triton.__version__,
            "fixed_stage": "PyCUDA" if fixed_ok else f"torch fallback ({fixed_reason})",
            "peak_gbps": gbps, "peak_tflops": tflops, "peak_source": source, "cudnn_benchmark": True,
            "warmup": args.warmup, "reps": args.reps}
    print(f"{props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} SMs), "
          f"torch {torch.__version__}, triton {triton.__version__}, pycuda {pycuda_version or '-'}; peaks [{source}]: DRAM "
          f"{f'{gbps:.0f} GB/s' if gbps else 'unknown'}, "
          + ", ".join(f"{k} {v} TFLOP/s" for k, v in tflops.items())
          + f"; median of {args.reps} steps after {args.warmup} warm-up\n")
    print("forward + backward (input gradient included): ms, fraction of DRAM bandwidth, fraction of compute peak")
    print(header())
    rows, stage, runs = [], [], []

    def write():  # after every row, so that a run cut short still leaves its figures
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**meta, "layer": rows, "fixed_stage": stage, "runs": runs},
                                            indent=2) + "\n")

    for precision in args.precisions:
        for layout in args.layouts:
            for b, m, n, size in args.shapes:
                try:
                    row = bench_config(b, m, n, size, precision, layout, args, (gbps, tflops))
                except torch.cuda.OutOfMemoryError:
                    row = {"B": b, "M": m, "N": n, "H": size, "W": size, "precision": precision,
                           "layout": layout, "skipped": "out of GPU memory"}
                except Exception as e:  # noqa: BLE001  (a kernel that fails one row: said, the others go on)
                    row = {"B": b, "M": m, "N": n, "H": size, "W": size, "precision": precision,
                           "layout": layout, "skipped": f"{type(e).__name__}: {str(e)[:300]}"}
                torch.cuda.empty_cache()
                rows.append(row)
                print(format_row(row), flush=True)
                write()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if fixed_ok and not args.no_stage:
        print("\nthe PyCUDA fixed stage alone, float32: forward and adjoint, ms, GB/s, fraction of DRAM bandwidth")
    for b, m, _, size in (args.shapes if fixed_ok and not args.no_stage else ()):
        r = bench_fixed_stage(b, m, size, args, gbps)
        stage.append(r)
        print(f"{b:>4} {m:>4} {size:>3}x{size:<3} | forward {r['forward_ms']:8.3f} {r['forward_gbps']:7.0f} "
              f"{_fraction(r['forward_dram'])} | adjoint {r['adjoint_ms']:8.3f} {r['adjoint_gbps']:7.0f} "
              f"{_fraction(r['adjoint_dram'])}", flush=True)
        write()
    if args.runs:
        print("\nwhole training runs, fxnn.py --engine torch --device cuda (default 100 x 100 iterations):")
        runs.extend(whole_runs())
    write()
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
