#!/usr/bin/env python3
"""One fxnn layer on each of its paths against a dense 3x3 conv, per engine,
training (forward + backward, the input's gradient included) and forward
alone, measured alternated in one run, with the machine and its FMA peak.

Contenders at each (B, M, N, HxW):
  fused    the fused C kernel (kernels/fused_cpu.c): fixed stage computed into the GEMM's packed operand
  fixed    the fixed stage written out, then the 1x1 GEMM (torch: bmm; pytensor: tensordot)
  folded   the 1x1 weights folded into dense 3x3 kernels, then the engine's dense conv
  dense    a generic 3x3 conv (torch: nn.Conv2d(M, N, 3, padding=1), oneDNN; pytensor: its im2col conv)
  naive    torch only: depthwise conv2d with the 5 kernels (groups=M), then a 1x1 conv2d
  gemms    torch only: just the 1x1 stage's GEMMs (forward; in training also the weight and
           input gradients) as torch.mm on preallocated pixel-major matrices, the fixed stage
           for free: the floor of any path that writes the 5M channels out
GFLOP/s count the multiply-adds each contender does (2 flops each): 5MN per
pixel for the fxnn paths, 9MN for folded and dense, three times that for
training; the fused kernel's figure is thus its rate on the 1x1 part. Times
are medians of alternated rounds; ratios are against the dense conv of the
same engine, from the same run.

    python3 -m bench.bench_fixed_layer [--repeats 10] [--engines torch,pytensor] [--json out.json]
"""
import argparse
import json
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as fxnn.py: no spinning BLAS threads between contenders
import numpy as np  # noqa: E402

from .machine import banner, describe  # noqa: E402
from .timing import alternated_ms  # noqa: E402

#: (B, M, N, H=W): the issue's shapes, then the MNIST and CIFAR-10 nets' conv layers.
SHAPES = [(64, 64, 64, 32), (64, 32, 64, 14), (64, 64, 128, 28),
          (64, 1, 32, 28), (64, 3, 32, 32), (64, 32, 64, 16)]
LABELS = ["goal", "goal (MNIST conv1)", "goal", "MNIST conv0", "CIFAR conv0", "CIFAR conv1"]
PASSES = ("train", "forward")
#: multiply-adds per pixel, in units of M*N
MACS = {"fused": 5, "fixed": 5, "naive": 5, "gemms": 5, "folded": 9, "dense": 9}


def torch_contenders(b, m, n, hw, train):
    import torch
    import torch.nn.functional as F
    from fxnn.kernels.fixed_kernels import KERNELS
    from fxnn.models.torch_layers import available_paths, fixed_conv2d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, m, hw, hw, generator=g).requires_grad_(train)
    weight = (0.1 * torch.randn(5 * m, n, generator=g)).requires_grad_(train)
    bias = torch.zeros(n, requires_grad=train)
    dense = torch.nn.Conv2d(m, n, 3, padding=1).requires_grad_(train)
    depthwise = torch.tensor(KERNELS, dtype=torch.float32)[:, None].repeat(m, 1, 1, 1)
    pointwise = torch.randn(n, 5 * m, 1, 1, generator=g).requires_grad_(train)
    dy = torch.randn(b, n, hw, hw, generator=g)

    pixels, c = b * hw * hw, 5 * m
    x5, w1, gy = torch.randn(pixels, c), torch.randn(c, n), torch.randn(pixels, n)
    y, dw, dx5 = torch.empty(pixels, n), torch.empty(c, n), torch.empty(pixels, c)

    def gemms():
        torch.mm(x5, w1, out=y)
        if train:
            torch.mm(x5.t(), gy, out=dw)
            torch.mm(gy, w1.t(), out=dx5)

    def run(forward):
        if train:
            return lambda: forward().backward(dy)

        def no_grad():
            with torch.no_grad():
                forward()
        return no_grad
    fns = {path: run(lambda path=path: fixed_conv2d(x, weight, bias, path)) for path in available_paths(x)}
    fns.update(dense=run(lambda: dense(x)),
               naive=run(lambda: F.conv2d(F.conv2d(x, depthwise, padding=1, groups=m), pointwise)), gemms=gemms)
    return fns


def pytensor_contenders(b, m, n, hw, train):
    import pytensor
    import pytensor.tensor as pt
    from fxnn.models.pytensor_engine import compile_mode
    from fxnn.models.pytensor_layers import conv2d_same, fxnn_conv
    from fxnn.models.pytensor_paths import available_paths

    rng = np.random.default_rng(0)
    x = pytensor.shared(rng.random((b, m, hw, hw), dtype=np.float32))
    w1 = pytensor.shared(rng.random((5 * m, n), dtype=np.float32))
    w3 = pytensor.shared(rng.random((n, m, 3, 3), dtype=np.float32))
    bias = pytensor.shared(np.zeros(n, np.float32))
    dy = pt.constant(rng.random((b, n, hw, hw), dtype=np.float32))

    def compiled(out, weight):
        outputs = pytensor.grad(pt.sum(out * dy), [x, weight, bias]) if train else [out]
        return pytensor.function([], outputs, mode=compile_mode())
    fns = {path: compiled(fxnn_conv(x, w1, bias, path), w1) for path in available_paths("float32")}
    fns["dense"] = compiled(conv2d_same(x, w3, bias, 3), w3)
    return fns


def gflops(name, ms, b, m, n, hw, train):
    return 2 * MACS[name] * m * n * b * hw * hw * (3 if train else 1) / ms / 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (each contender once per round)")
    p.add_argument("--engines", default="torch,pytensor")
    p.add_argument("--passes", default="train,forward", help="train (forward+backward) and/or forward")
    p.add_argument("--shapes", default="all", help="'goal' for the three goal shapes only")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        pass
    info = describe(threads)
    print(banner(info))
    shapes = list(zip(SHAPES, LABELS))[:3 if args.shapes == "goal" else None]
    builders = {"torch": torch_contenders, "pytensor": pytensor_contenders}
    order = ["fused", "fixed", "folded", "dense", "naive", "gemms"]
    rows = []
    for pass_ in args.passes.split(","):
        train = pass_ == "train"
        print(f"\n{'forward+backward' if train else 'forward'}, float32, medians of {args.repeats} alternated "
              f"rounds: ms (GFLOP/s)")
        print(f"{'engine':9s} {'B,M,N,HxW':15s} {'layer':18s}" + "".join(f"{c:>16s}" for c in order)
              + f"{'fused/dense':>12s}{'fixed/dense':>12s}{'folded/dense':>13s}{'fused/peak':>11s}")
        for engine in args.engines.split(","):
            # the process's first timings run slow (allocator, thread pools): one untimed round first
            alternated_ms(builders[engine](*shapes[0][0], train), 1, warmup=1)
            for (b, m, n, hw), label in shapes:
                times = alternated_ms(builders[engine](b, m, n, hw, train), args.repeats)
                rates = {k: gflops(k, t, b, m, n, hw, train) for k, t in times.items()}
                rows.append({"engine": engine, "pass": pass_, "shape": [b, m, n, hw], "layer": label,
                             "ms": times, "gflops": rates})
                cells = "".join(f"{times[c]:8.2f} ({rates[c]:4.0f})" if c in times else f"{'':>16s}" for c in order)
                ratio = lambda a: f"{times[a] / times['dense']:.2f}x" if a in times else "-"  # noqa: E731
                peak = (f"{rates['fused'] / info['fma_peak_gflops']:.0%}"
                        if "fused" in rates and "fma_peak_gflops" in info else "-")
                print(f"{engine:9s} {f'{b},{m},{n},{hw}x{hw}':15s} {label:18s}{cells}{ratio('fused'):>12s}"
                      f"{ratio('fixed'):>12s}{ratio('folded'):>13s}{peak:>11s}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "repeats": args.repeats, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
