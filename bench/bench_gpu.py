#!/usr/bin/env python3
"""GPU benchmark of the fixed 3x3 stage kernel (kernels/simple_conv.cu).

For every batch B, channel count M = N and image size H = W it times forward +
backward of three ways to compute an fxnn-like layer with N outputs:

* fxnn       the kernel, then a 1x1 convolution 5M -> N (cuDNN)
* folded     the 1x1 weights folded into dense 3x3 kernels, then one cuDNN
             3x3 conv (models/fxnn_paths.py; the same function as fxnn)
* cudnn      torch.nn.Conv2d(M, N, 3, padding=1), a full trainable 3x3 layer
* depthwise  conv2d with the five fixed kernels (groups=M), then the same 1x1

(input gradient included, as for any layer but the first), and the fixed stage
alone, forward and backward, as achieved memory bandwidth: bytes read + written
over time, against the device's peak from the memory clock and bus width
(PyCUDA device attributes) or --peak-gbps. Times are medians of CUDA-event
timings of single steps after warm-up, with torch.backends.cudnn.benchmark on;
all ratios come from the same run. Small layers include the host's launch
overhead, as they do in training.

    python3 bench/bench_gpu.py            # the full grid
    python3 bench/bench_gpu.py --quick    # a short run
    python3 bench/bench_gpu.py --json bench/results/gpu.json
"""
import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels import cuda_fixed  # noqa: E402
from models.fixed_kernels import KERNELS, NUM_KERNELS  # noqa: E402
from models.torch_layers import fold  # noqa: E402

FULL = {"batch": [64, 256], "channels": [32, 64, 256], "sizes": [28, 32, 56], "warmup": 10, "reps": 50}
QUICK = {"batch": [64], "channels": [32, 64], "sizes": [28, 56], "warmup": 3, "reps": 10}


class FixedStage(torch.autograd.Function):
    """The kernel as an autograd function, enough for timing."""

    @staticmethod
    def forward(ctx, x):
        return cuda_fixed.fixed_forward(x)

    @staticmethod
    def backward(ctx, g):
        return cuda_fixed.fixed_backward(g.contiguous())


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"short run: B={QUICK['batch']}, M=N={QUICK['channels']}, H=W={QUICK['sizes']}, "
                        f"{QUICK['warmup']} warm-up and {QUICK['reps']} timed steps")
    p.add_argument("--batch", type=int, nargs="+", help=f"batch sizes (default {FULL['batch']})")
    p.add_argument("--channels", type=int, nargs="+", help=f"M = N values (default {FULL['channels']})")
    p.add_argument("--sizes", type=int, nargs="+", help=f"H = W values (default {FULL['sizes']})")
    p.add_argument("--warmup", type=int, help=f"untimed steps first (default {FULL['warmup']})")
    p.add_argument("--reps", type=int, help=f"timed steps, median reported (default {FULL['reps']})")
    p.add_argument("--peak-gbps", type=float, help="device memory bandwidth peak in GB/s "
                                                   "(default: from PyCUDA's memory clock and bus width)")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def peak_bandwidth(args, device_index):
    """(GB/s or None, where it came from)."""
    if args.peak_gbps:
        return args.peak_gbps, "--peak-gbps"
    try:
        import pycuda.driver as drv
        drv.init()
        device = drv.Device(device_index)
        clock_khz = device.get_attribute(drv.device_attribute.MEMORY_CLOCK_RATE)
        bus_bits = device.get_attribute(drv.device_attribute.GLOBAL_MEMORY_BUS_WIDTH)
    except Exception as e:  # an attribute this driver does not report: say so, carry on
        return None, f"unknown ({type(e).__name__}: {e}); pass --peak-gbps"
    gbps = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # two transfers per clock
    return gbps, f"PyCUDA: {clock_khz / 1e3:.0f} MHz memory clock x {bus_bits}-bit bus x 2"


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


def bench_config(b, m, size, args, peak):
    """One row of results for batch b, M = N = m, H = W = size."""
    n, dev = m, torch.device("cuda")
    x = torch.randn(b, m, size, size, device=dev, requires_grad=True)
    grad_out = torch.randn(b, n, size, size, device=dev)
    w1x1 = (torch.randn(n, NUM_KERNELS * m, 1, 1, device=dev) / (NUM_KERNELS * m) ** 0.5).requires_grad_()
    b1x1 = torch.zeros(n, device=dev, requires_grad=True)
    conv3x3 = torch.nn.Conv2d(m, n, 3, padding=1).to(dev)
    w_fixed = torch.tensor(KERNELS, dtype=torch.float32)[:, None].repeat(m, 1, 1, 1).to(dev)  # (5M, 1, 3, 3)

    def depthwise(t):
        return F.conv2d(t, w_fixed, padding=1, groups=m)

    steps = {
        "fxnn": lambda: F.conv2d(FixedStage.apply(x), w1x1, b1x1).backward(grad_out),
        "folded": lambda: F.conv2d(x, fold(w1x1.view(n, NUM_KERNELS * m).t()), b1x1, padding=1).backward(grad_out),
        "cudnn": lambda: conv3x3(x).backward(grad_out),
        "depthwise": lambda: F.conv2d(depthwise(x), w1x1, b1x1).backward(grad_out),
    }
    params = [x, w1x1, b1x1, *conv3x3.parameters()]

    def clear_grads():
        for p in params:
            p.grad = None

    row = {"B": b, "M": m, "N": n, "H": size, "W": size}
    for name, step in steps.items():
        row[f"{name}_ms"] = median_ms(step, args.warmup, args.reps, clear_grads)
    for name in ("folded", "cudnn", "depthwise"):
        row[f"{name}_over_fxnn"] = row[f"{name}_ms"] / row["fxnn_ms"]

    # The fixed stage alone: compulsory traffic, read 1 and write 5 planes per
    # input plane (forward) or read 5 and write 1 (backward); halo re-reads,
    # mostly from L2, are not counted.
    xd = x.detach()
    g5 = torch.randn(b, NUM_KERNELS * m, size, size, device=dev)
    moved = (1 + NUM_KERNELS) * xd.numel() * xd.element_size()
    for direction, step in (("fwd", lambda: cuda_fixed.fixed_forward(xd)),
                            ("bwd", lambda: cuda_fixed.fixed_backward(g5))):
        ms = median_ms(step, args.warmup, args.reps)
        gbps = moved / (ms * 1e-3) / 1e9
        row[f"fixed_{direction}_ms"] = ms
        row[f"fixed_{direction}_gbps"] = gbps
        row[f"fixed_{direction}_peak_fraction"] = gbps / peak if peak else None

    # Sanity: the kernel against the depthwise formulation, in exact float32.
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        row["max_abs_diff_vs_depthwise"] = (cuda_fixed.fixed_forward(xd) - depthwise(xd)).abs().max().item()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    return row


def _bandwidth(row, direction):
    fraction = row[f"fixed_{direction}_peak_fraction"]
    share = f"({fraction:4.0%})" if fraction is not None else ""
    return f"{row[f'fixed_{direction}_gbps']:8.0f} {share:>6}"


def format_table(rows):
    header = (f"{'B':>4} {'M=N':>4} {'HxW':>6} | {'fxnn ms':>8} {'folded ms':>9} {'cudnn ms':>8} {'dw ms':>8} | "
              f"{'folded/fxnn':>11} {'cudnn/fxnn':>10} {'dw/fxnn':>7} | {'fixed fwd GB/s':>15} {'fixed bwd GB/s':>15}")
    lines = [header, "-" * len(header)]
    for r in rows:
        shape = f"{r['B']:>4} {r['M']:>4} {r['H']:>3}x{r['W']:<2}"
        if "skipped" in r:
            lines.append(f"{shape} | skipped: {r['skipped']}")
            continue
        lines.append(f"{shape} | {r['fxnn_ms']:8.3f} {r['folded_ms']:9.3f} {r['cudnn_ms']:8.3f} "
                     f"{r['depthwise_ms']:8.3f} | {r['folded_over_fxnn']:11.2f} {r['cudnn_over_fxnn']:10.2f} "
                     f"{r['depthwise_over_fxnn']:7.2f} | "
                     f"{_bandwidth(r, 'fwd'):>15} {_bandwidth(r, 'bwd'):>15}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA GPU available (torch.cuda.is_available() is False); nothing to measure")
    ok, reason = cuda_fixed.available()
    if not ok:
        sys.exit(f"bench_gpu: the fixed-stage CUDA kernel is unavailable: {reason}")

    torch.backends.cudnn.benchmark = True
    index = torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    peak, peak_source = peak_bandwidth(args, index)
    import pycuda
    meta = {
        "device": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "torch": torch.__version__,
        "pycuda": pycuda.VERSION_TEXT,
        "peak_gbps": peak,
        "peak_source": peak_source,
        "cudnn_benchmark": True,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "warmup": args.warmup,
        "reps": args.reps,
        "dtype": "float32",
    }
    peak_text = f"{peak:.0f} GB/s" if peak else "unknown"
    print(f"{props.name} (sm_{props.major}{props.minor}), torch {torch.__version__}, "
          f"pycuda {pycuda.VERSION_TEXT}; memory peak {peak_text} [{peak_source}]; "
          f"cuDNN TF32 {'on' if meta['cudnn_allow_tf32'] else 'off'}; "
          f"median of {args.reps} steps after {args.warmup} warm-up\n")
    print(format_table([]))

    rows = []
    for b in args.batch:
        for m in args.channels:
            for size in args.sizes:
                try:
                    row = bench_config(b, m, size, args, peak)
                except torch.cuda.OutOfMemoryError:
                    row = {"B": b, "M": m, "N": m, "H": size, "W": size, "skipped": "out of GPU memory"}
                torch.cuda.empty_cache()
                rows.append(row)
                print(format_table([row]).splitlines()[-1], flush=True)

    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**meta, "results": rows}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
