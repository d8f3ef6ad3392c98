#!/usr/bin/env python3
"""Forward+backward of one fixed layer against a dense 3x3 conv and the naive
fixed formulation, per engine, measured side by side in one run.

Contenders at each (B, M, N, HxW):
  fixed    the fixed stage + 1x1 GEMM (torch: FixedConv2d(path="fixed"); pytensor: the engine's graph)
  folded   the 1x1 weights folded into dense 3x3 kernels, then one dense conv (models/fxnn_paths.py)
  dense    a generic 3x3 conv (torch: nn.Conv2d(M, N, 3, padding=1); pytensor: its im2col conv)
  naive    torch only: depthwise conv2d with the 5 kernels (groups=M), then a 1x1 conv2d
  gemms    torch only: just the three GEMMs of the 1x1 stage (forward, weight and
           input gradients) in the layout that makes each one torch.mm on
           preallocated (B*H*W, 5M) matrices, with the fixed stage for free:
           the floor of any implementation that does not fuse the fixed stage
           into the GEMM itself
Medians after warm-up; ratios are against the dense conv of the same engine
and against the naive formulation.

    python3 bench/bench_fixed_layer.py [--repeats 10] [--json out.json]
"""
import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import median_ms  # noqa: E402

#: (B, M, N, H=W): the issue's shapes, then the MNIST and CIFAR-10 nets' conv layers.
SHAPES = [(64, 32, 64, 14), (64, 64, 64, 32), (64, 64, 128, 28),
          (64, 1, 32, 28), (64, 32, 64, 14), (64, 3, 32, 32), (64, 32, 64, 16)]
LABELS = ["issue", "issue", "issue", "MNIST conv0", "MNIST conv1", "CIFAR conv0", "CIFAR conv1"]


def torch_contenders(b, m, n, hw):
    import torch
    import torch.nn.functional as F
    from models.fixed_kernels import KERNELS
    from models.torch_layers import FixedConv2d

    x = torch.randn(b, m, hw, hw, requires_grad=True)
    fixed, folded = FixedConv2d(m, n, path="fixed"), FixedConv2d(m, n, path="folded")
    dense = torch.nn.Conv2d(m, n, 3, padding=1)
    depthwise = torch.tensor(KERNELS, dtype=torch.float32)[:, None].repeat(m, 1, 1, 1)
    pointwise = torch.randn(n, 5 * m, 1, 1, requires_grad=True)

    pixels, c = b * hw * hw, 5 * m
    x5, w1, gy = torch.randn(pixels, c), torch.randn(c, n), torch.randn(pixels, n)
    y, dw, dx5 = torch.empty(pixels, n), torch.empty(c, n), torch.empty(pixels, c)

    def gemms():
        torch.mm(x5, w1, out=y)
        torch.mm(x5.t(), gy, out=dw)
        torch.mm(gy, w1.t(), out=dx5)

    def run(forward):
        def step():
            y = forward()
            y.backward(torch.ones_like(y))
        return step
    return {"fixed": run(lambda: fixed(x)), "folded": run(lambda: folded(x)), "dense": run(lambda: dense(x)),
            "naive": run(lambda: F.conv2d(F.conv2d(x, depthwise, padding=1, groups=m), pointwise)),
            "gemms": gemms}


def pytensor_contenders(b, m, n, hw):
    import pytensor
    import pytensor.tensor as pt
    from models.pytensor_engine import compile_mode
    from models.pytensor_layers import conv2d_same, fxnn_conv

    rng = np.random.default_rng(0)
    x = pytensor.shared(rng.random((b, m, hw, hw), dtype=np.float32))
    w1 = pytensor.shared(rng.random((5 * m, n), dtype=np.float32))
    w3 = pytensor.shared(rng.random((n, m, 3, 3), dtype=np.float32))
    bias = pytensor.shared(np.zeros(n, np.float32))

    def compiled(out, weight):
        cost = pt.sum(out)  # d cost / d out = ones, as the torch contenders
        return pytensor.function([], pytensor.grad(cost, [x, weight]), mode=compile_mode())
    return {"fixed": compiled(fxnn_conv(x, w1, bias, "fixed"), w1),
            "folded": compiled(fxnn_conv(x, w1, bias, "folded"), w1),
            "dense": compiled(conv2d_same(x, w3, bias, 3), w3)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--engines", default="torch,pytensor")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    builders = {"torch": torch_contenders, "pytensor": pytensor_contenders}
    rows = []
    print(f"forward+backward, float32, {os.cpu_count()} CPU threads, medians of {args.repeats} (ms)")
    print(f"{'engine':9s} {'B,M,N,HxW':18s} {'layer':12s} {'fixed':>8s} {'folded':>8s} {'dense':>8s} {'naive':>8s}"
          f" {'gemms':>8s} {'fixed/dense':>12s} {'folded/dense':>13s} {'naive/fixed':>12s} {'gemms/dense':>12s}")
    for engine in args.engines.split(","):
        # The process's first timings run slow (allocator and thread pool growing):
        # one untimed round of the first shape keeps that out of the table.
        for f in builders[engine](*SHAPES[0]).values():
            median_ms(f, args.repeats)
        for (b, m, n, hw), label in zip(SHAPES, LABELS):
            times = {k: median_ms(f, args.repeats) for k, f in builders[engine](b, m, n, hw).items()}
            naive, gemms = times.get("naive", float("nan")), times.get("gemms", float("nan"))
            rows.append({"engine": engine, "shape": [b, m, n, hw], "layer": label, **times})
            print(f"{engine:9s} {f'{b},{m},{n},{hw}x{hw}':18s} {label:12s} {times['fixed']:8.2f} "
                  f"{times['folded']:8.2f} {times['dense']:8.2f} {naive:8.2f} {gemms:8.2f} "
                  f"{times['fixed'] / times['dense']:11.2f}x {times['folded'] / times['dense']:12.2f}x "
                  f"{naive / times['fixed']:11.2f}x {gemms / times['dense']:11.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": os.cpu_count(), "ms": rows}, f, indent=2)


if __name__ == "__main__":
    main()
