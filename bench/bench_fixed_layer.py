#!/usr/bin/env python3
"""One fxnn layer on each of its paths and precisions against the strongest
dense 3x3 conv, per engine, training (forward + backward, the input's
gradient included) and forward alone, measured alternated in one run, with
the machine and its fp32 and bf16 peaks.

Torch engine, at each (B, M, N, HxW) and stride S (1 unless given), every
contender of one pass alternated in the same rounds:

  dense baselines   nn.Conv2d(M, N, 3, stride=S, padding=1) (oneDNN):
    dense fp32            float32, NCHW
    dense fp32 cl         float32, channels_last
    dense bf16 cl         under torch.autocast("cpu", torch.bfloat16), channels_last (bf16 input,
                          as a layer after another autocast layer gets); marked "(no bf16 unit)"
                          and never the baseline where the CPU has neither AMX-BF16 nor AVX512-BF16
  fxnn contenders   fxnn.models.torch_paths.fixed_conv2d_record on a path:
    fp32 fused|fixed|folded|auto    float32, NCHW (fused: kernels/fused_cpu.c)
    fp32 fused cl|auto cl           float32, channels_last (fused: the same file's channels_last
                                    kernels, which read and write that layout as it lies)
    bf16 fused|fixed|folded|auto    under bf16 autocast, bf16 NCHW input (fused: the bf16 C
                                    kernel where built)
    bf16 folded cl|auto cl          the same on a bf16 channels_last input (oneDNN's bf16 conv,
                                    which folded runs, is fastest on it): ``auto`` is compared
                                    with ``folded`` on the same input
  extras (--extras) naive (depthwise conv2d, then 1x1 conv2d, fp32) and gemms (just the 1x1's
                    GEMMs as torch.mm on preallocated matrices, fp32: the floor of any path that
                    writes the 5M channels out)

*The* baseline of a row is its fastest dense configuration, named in the row;
every contender's ratio ``/best`` is against it, and ``/same`` against the
fastest dense of its own precision. GFLOP/s count the multiply-adds each
contender does (2 flops each): 5MN per output pixel for the fxnn paths, 9MN for
folded and dense, three times that for training; the fused kernels' figures
are thus their rates on the 1x1 (GEMM) part, and are also given as fractions
of the measured fp32 FMA peak and bf16 matrix peak (bench/machine.py). A
contender that fails (a path not available yet, an error) is reported as
such and the others go on. PyTensor engine: fused, fixed, folded and its
dense im2col conv, float32 only, its dense the baseline, stride 1 only.

    python3 -m bench.bench_fixed_layer [--repeats 10] [--shapes goal|all|strided|resnet20] [--passes train,forward]
        [--engines torch[,pytensor]] [--precisions fp32,bf16] [--extras] [--shape B,M,N,HW[,S] ...]
        [--threads N] [--clock wall|cpu] [--json out.json]
"""
import argparse
import json
import os
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as fxnn.py: no spinning BLAS threads between contenders
import numpy as np  # noqa: E402

from .machine import banner, bf16_peak, describe  # noqa: E402
from .timing import alternated  # noqa: E402

#: (B, M, N, H=W[, stride]): the issue's three goal shapes, the MNIST and
#: CIFAR-10 nets' conv layers, then the strided 3x3 convolutions of a
#: CIFAR ResNet-20 (the first of stages 2 and 3) and a wider one.
SHAPES = [(64, 64, 64, 32), (64, 32, 64, 14), (64, 64, 128, 28),
          (64, 1, 32, 28), (64, 3, 32, 32), (64, 32, 64, 16),
          (64, 16, 32, 32, 2), (64, 32, 64, 16, 2), (64, 32, 64, 32, 2)]
LABELS = ["goal", "goal (MNIST conv1)", "goal", "MNIST conv0", "CIFAR conv0", "CIFAR conv1",
          "ResNet-20 stage 2, stride 2", "ResNet-20 stage 3, stride 2", "stride 2"]
GOAL_SHAPES = 3
STRIDED = 6  # the index of the first strided shape
#: The 3x3 convolutions of ResNet-20 (width 16) on Fashion-MNIST at batch 128:
#: the stem, then each stage's shapes (bench/bench_resnet.py's network).
RESNET20 = [(128, 1, 16, 28), (128, 16, 16, 28), (128, 16, 32, 28, 2), (128, 32, 32, 14), (128, 32, 64, 14, 2),
            (128, 64, 64, 7)]
PASSES = ("train", "forward")
PATHS = ("fused", "fixed", "folded", "auto")
DENSE = ("dense fp32", "dense fp32 cl", "dense bf16 cl")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def precision_of(name):
    """"fp32" or "bf16" of a contender's name."""
    return "bf16" if "bf16" in name else "fp32"


def macs_per_mn(name, note=""):
    """Multiply-adds per pixel, in units of M*N (``note``: auto's, "took folded" or another path)."""
    return 9 if ("dense" in name or "folded" in name or "took folded" in note) else 5


def out_size(hw, stride):
    return (hw - 1) // stride + 1


def dims(shape):
    """(B, M, N, HW, stride) of a shape given with or without its stride."""
    return tuple(shape) + (1,) * (5 - len(shape))


def gflops(name, ms, b, m, n, hw, train, note="", stride=1):
    return 2 * macs_per_mn(name, note) * m * n * b * out_size(hw, stride) ** 2 * (3 if train else 1) / ms / 1e6


def torch_contenders(b, m, n, hw, train, precisions=("fp32", "bf16"), extras=False, stride=1):
    """{name: callable} of one pass each, and {name: note} (the path auto
    took, or a contender's error)."""
    import torch
    import torch.nn.functional as F
    from fxnn.kernels.fixed_kernels import KERNELS
    from fxnn.models.torch import paths as torch_paths
    from fxnn.models.torch.paths import fixed_conv2d_record

    cl = torch.channels_last
    g = torch.Generator().manual_seed(0)
    x32 = torch.randn(b, m, hw, hw, generator=g)
    weight = (0.1 * torch.randn(5 * m, n, generator=g)).requires_grad_(train)
    bias = torch.zeros(n, requires_grad=train)
    dense = torch.nn.Conv2d(m, n, 3, stride=stride, padding=1).requires_grad_(train)
    ho = out_size(hw, stride)
    dy32 = torch.randn(b, n, ho, ho, generator=g)
    inputs = {  # (x, dy) per precision and layout; bf16: what a layer after an autocast layer gets
        ("fp32", False): (x32, dy32),
        ("fp32", True): (x32.contiguous(memory_format=cl), dy32.contiguous(memory_format=cl)),
        ("bf16", False): (x32.bfloat16(), dy32.bfloat16()),
        ("bf16", True): (x32.bfloat16().contiguous(memory_format=cl), dy32.bfloat16().contiguous(memory_format=cl)),
    }
    for x, _ in inputs.values():
        x.requires_grad_(train)
    params = [weight, bias, *dense.parameters()]

    def one_pass(forward, precision, channels_last):
        """One pass of ``forward`` in ``precision`` (bf16: under autocast) on
        the input of that precision and memory format."""
        x, dy = inputs[precision, channels_last]

        def run():
            with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                if not train:
                    with torch.no_grad():
                        return forward(x)
                y = forward(x)
            x.grad = None
            for p in params:
                p.grad = None
            y.backward(dy)
        return run

    fns, notes = {}, {}
    for precision in ("fp32", "bf16"):
        if precision not in precisions:
            continue
        if precision == "fp32":
            fns["dense fp32"] = one_pass(dense, "fp32", False)
            fns["dense fp32 cl"] = one_pass(dense, "fp32", True)
        else:
            fns["dense bf16 cl"] = one_pass(dense, "bf16", True)
        layouts = ((path, False) for path in PATHS)
        if precision == "bf16":  # folded and auto on the layout oneDNN's bf16 conv likes, too
            layouts = (*layouts, ("folded", True), ("auto", True))
        for path, channels_last in layouts:
            name = f"{precision} {path}" + (" cl" if channels_last else "")
            fns[name] = one_pass(
                lambda x, path=path: fixed_conv2d_record(x, weight, bias, path, stride), precision, channels_last)
            if path == "auto":
                x, _ = inputs[precision, channels_last]
                try:
                    with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"), \
                            torch.set_grad_enabled(train):
                        notes[name] = "took " + torch_paths.auto_path(x, weight, bias, stride)
                except Exception as e:  # noqa: BLE001  (reported with the contender)
                    notes[name] = f"auto_path failed: {type(e).__name__}: {e}"
            elif path == "fused" and precision == "bf16":
                try:
                    with torch.autocast("cpu", torch.bfloat16):
                        if "fused" not in torch_paths.available_paths(inputs["bf16", False][0]):
                            notes["bf16 fused"] = "no bf16 fused kernel here: runs the fixed path"
                except Exception as e:  # noqa: BLE001
                    notes["bf16 fused"] = f"available_paths failed: {type(e).__name__}: {e}"
    if "fp32" in precisions:
        for path in ("fused", "auto"):
            fns[f"fp32 {path} cl"] = one_pass(
                lambda x, path=path: fixed_conv2d_record(x, weight, bias, path, stride), "fp32", True)
        try:
            with torch.set_grad_enabled(train):
                notes["fp32 auto cl"] = "took " + torch_paths.auto_path(inputs["fp32", True][0], weight, bias, stride)
        except Exception as e:  # noqa: BLE001  (reported with the contender)
            notes["fp32 auto cl"] = f"auto_path failed: {type(e).__name__}: {e}"
    if extras and "fp32" in precisions:
        depthwise = torch.tensor(KERNELS, dtype=torch.float32)[:, None].repeat(m, 1, 1, 1)
        pointwise = torch.randn(n, 5 * m, 1, 1, generator=g).requires_grad_(train)
        params.append(pointwise)
        fns["naive"] = one_pass(lambda x: F.conv2d(F.conv2d(x, depthwise, stride=stride, padding=1, groups=m),
                                                   pointwise), "fp32", False)
        pixels, c = b * ho * ho, 5 * m
        x5, w1, gy = torch.randn(pixels, c), torch.randn(c, n), torch.randn(pixels, n)
        y, dw, dx5 = torch.empty(pixels, n), torch.empty(c, n), torch.empty(pixels, c)

        def gemms():
            torch.mm(x5, w1, out=y)
            if train:
                torch.mm(x5.t(), gy, out=dw)
                torch.mm(gy, w1.t(), out=dx5)
        fns["gemms"] = gemms
    # one trial call each: a contender that cannot run is reported, not timed
    for name in list(fns):
        try:
            fns[name]()
        except Exception as e:  # noqa: BLE001
            notes[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            del fns[name]
    return fns, notes


def pytensor_contenders(b, m, n, hw, train, precisions=("fp32",), extras=False):
    import pytensor
    import pytensor.tensor as pt
    from fxnn.models.pytensor.engine import compile_mode
    from fxnn.models.pytensor.backend import conv2d_same, fxnn_conv
    from fxnn.models.pytensor.paths import available_paths

    rng = np.random.default_rng(0)
    x = pytensor.shared(rng.random((b, m, hw, hw), dtype=np.float32))
    w1 = pytensor.shared(rng.random((5 * m, n), dtype=np.float32))
    w3 = pytensor.shared(rng.random((n, m, 3, 3), dtype=np.float32))
    bias = pytensor.shared(np.zeros(n, np.float32))
    dy = pt.constant(rng.random((b, n, hw, hw), dtype=np.float32))

    def compiled(out, weight):
        outputs = pytensor.grad(pt.sum(out * dy), [x, weight, bias]) if train else [out]
        return pytensor.function([], outputs, mode=compile_mode())
    fns = {f"fp32 {path}": compiled(fxnn_conv(x, w1, bias, path), w1) for path in available_paths("float32")}
    fns["dense fp32"] = compiled(conv2d_same(x, w3, bias, 3), w3)
    return fns, {}


def bf16_hardware(info):
    return info.get("matrix_engine", "none") != "none"


def analyse(engine, pass_, shape, label, samples, notes, info):
    """The row of one (engine, pass, shape): medians, rates, the baseline
    and each contender's ratios and peak fractions."""
    b, m, n, hw, stride = dims(shape)
    train = pass_ == "train"
    ms = {k: 1000 * float(np.median(t)) for k, t in samples.items()}
    rates = {k: gflops(k, t, b, m, n, hw, train, notes.get(k, ""), stride) for k, t in ms.items()}
    eligible = {k: t for k, t in ms.items() if k.startswith("dense")
                and (precision_of(k) == "fp32" or bf16_hardware(info))}
    baseline = min(eligible, key=eligible.get) if eligible else None
    same = {}
    for prec in ("fp32", "bf16"):
        of_prec = {k: t for k, t in ms.items() if k.startswith("dense") and precision_of(k) == prec}
        if of_prec:
            same[prec] = min(of_prec, key=of_prec.get)
    row = {"engine": engine, "pass": pass_, "shape": list(shape), "layer": label, "ms": ms, "gflops": rates,
           "rounds_ms": {k: [1000 * s for s in t] for k, t in samples.items()},
           "baseline": baseline, "same_precision_dense": same, "notes": notes,
           "vs_baseline": {k: t / ms[baseline] for k, t in ms.items()} if baseline else {},
           "vs_same_precision": {k: t / ms[same[precision_of(k)]] for k, t in ms.items()
                                 if precision_of(k) in same}}
    fractions = {}
    for k in ("fp32 fused", "fp32 fused cl"):
        if k in rates and info.get("fma_peak_gflops"):
            fractions[k] = rates[k] / info["fma_peak_gflops"]
    peak, _ = bf16_peak(info)
    if "bf16 fused" in rates and peak and "fixed path" not in notes.get("bf16 fused", ""):
        fractions["bf16 fused"] = rates["bf16 fused"] / peak
    row["gemm_part_of_peak"] = fractions
    return row


def shape_name(shape):
    b, m, n, hw, stride = dims(shape)
    return f"{b},{m},{n},{hw}x{hw}" + (f"/{stride}" if stride != 1 else "")


def print_row(row, info):
    base = row["baseline"]
    print(f"\n{row['engine']} {'forward+backward' if row['pass'] == 'train' else 'forward'} "
          f"{shape_name(row['shape'])} ({row['layer']}): baseline {base or '-'}"
          + (f" {row['ms'][base]:.2f} ms" if base else ""))
    print(f"  {'contender':16s} {'ms':>9s} {'GFLOP/s':>8s} {'/best':>7s} {'/same':>7s} {'of peak':>8s}  note")
    names = list(row["ms"]) + [k for k in row["notes"] if k not in row["ms"]]
    for k in names:
        note = row["notes"].get(k, "")
        if k not in row["ms"]:
            print(f"  {k:16s} {'-':>9s} {'':8s} {'':7s} {'':7s} {'':8s}  {note}")
            continue
        if k.startswith("dense bf16") and not bf16_hardware(info):
            note = (note + "; " if note else "") + "no bf16 unit: not a baseline"
        if k == base:
            note = (note + "; " if note else "") + "<- baseline"
        note = note if len(note) <= 100 else note[:97] + "..."  # the whole of it is in the JSON
        vb = row["vs_baseline"].get(k)
        vs = row["vs_same_precision"].get(k)
        frac = row["gemm_part_of_peak"].get(k)
        print(f"  {k:16s} {row['ms'][k]:9.2f} {row['gflops'][k]:8.0f} "
              f"{f'{vb:.2f}x' if vb is not None else '-':>7s} {f'{vs:.2f}x' if vs is not None else '-':>7s} "
              f"{f'{frac:.0%}' if frac is not None else '':>8s}  {note}", flush=True)


def print_summary(rows):
    """One line per (engine, pass, shape): the baseline and the fused contenders' ratios."""
    print("\nsummary: ratio to the row's baseline (fastest dense), lower is better; "
          "fused GEMM part as a fraction of its peak")
    print(f"{'engine':9s} {'pass':8s} {'B,M,N,HxW[/S]':17s} {'baseline':14s} {'ms':>8s} {'fp32 fused':>11s} "
          f"{'fp32 fus.cl':>11s} {'bf16 fused':>11s} {'best fxnn':>20s} {'fp32 %pk':>9s} {'bf16 %pk':>9s}")
    for r in rows:
        vb = r["vs_baseline"]
        fx = {k: v for k, v in vb.items() if not k.startswith("dense") and k not in ("naive", "gemms")}
        best = min(fx, key=fx.get) if fx else None
        cell = lambda k: f"{vb[k]:.2f}x" if k in vb else "-"  # noqa: E731
        pk = lambda k: f"{r['gemm_part_of_peak'][k]:.0%}" if k in r["gemm_part_of_peak"] else "-"  # noqa: E731
        print(f"{r['engine']:9s} {r['pass']:8s} {shape_name(r['shape']):17s} {r['baseline'] or '-':14s} "
              f"{r['ms'][r['baseline']] if r['baseline'] else float('nan'):8.2f} {cell('fp32 fused'):>11s} "
              f"{cell('fp32 fused cl'):>11s} {cell('bf16 fused'):>11s} {(f'{best} {fx[best]:.2f}x' if best else '-'):>20s} "
              f"{pk('fp32 fused'):>9s} {pk('bf16 fused'):>9s}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (each contender once per round)")
    p.add_argument("--engines", default="torch", help="torch and/or pytensor (fp32 only)")
    p.add_argument("--passes", default="train,forward", help="train (forward+backward) and/or forward")
    p.add_argument("--shapes", default="goal", choices=("goal", "all", "strided", "resnet20"),
                   help="the three goal shapes (default), all (also the MNIST, CIFAR and ResNet layers), "
                        "the strided ResNet layers only, or every conv shape of ResNet-20 at batch 128")
    p.add_argument("--shape", action="append", metavar="B,M,N,HW[,S]",
                   help="a shape of your own instead (repeatable): batch, in and out channels, H = W, stride")
    p.add_argument("--precisions", default="fp32,bf16", help="torch engine: fp32 and/or bf16 contenders")
    p.add_argument("--extras", action="store_true", help="also the naive and gemms contenders (torch, fp32)")
    p.add_argument("--threads", type=int, help="threads (default: every visible core)")
    p.add_argument("--clock", choices=CLOCKS, default="wall",
                   help="time each call by the wall clock (default) or by the process's CPU time, "
                        "which other processes loading the cores do not lengthen")
    p.add_argument("--json", help="also write every figure to this file")
    args = p.parse_args(argv)
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    if threads < 1:
        p.error(f"--threads {threads}: give a positive number")
    try:
        import torch  # noqa: F401  (loaded first, so that its pool is set too)
    except ImportError:
        pass
    from fxnn.kernels import threads as thread_pools
    thread_pools.use(threads)
    info = describe(threads)
    print(banner(info))
    if not bf16_hardware(info) and "bf16" in args.precisions:
        print("this CPU has no bf16 unit (neither AMX-BF16 nor AVX512-BF16): bf16 rows are emulated, "
              "and dense bf16 is never the baseline")
    print(f"medians of {args.repeats} alternated rounds, {args.clock} clock; /best: against the row's fastest dense, "
          f"/same: against the fastest dense of the contender's precision")
    shapes = list(zip(SHAPES, LABELS))
    shapes = {"goal": shapes[:GOAL_SHAPES], "all": shapes, "strided": shapes[STRIDED:],
              "resnet20": [(shape, "ResNet-20") for shape in RESNET20]}[args.shapes]
    if args.shape:
        shapes = [(tuple(int(v) for v in s.split(",")), "--shape") for s in args.shape]
    for shape, _ in shapes:
        if len(shape) not in (4, 5) or min(shape) < 1:
            p.error(f"--shape {','.join(map(str, shape))}: give B,M,N,HW or B,M,N,HW,S, all positive")
    shapes = [(dims(shape), label) for shape, label in shapes]
    builders = {"torch": torch_contenders, "pytensor": pytensor_contenders}
    precisions = tuple(args.precisions.split(","))
    rows = []
    for pass_ in args.passes.split(","):
        train = pass_ == "train"
        for engine in args.engines.split(","):
            of_engine = [(shape, label) for shape, label in shapes if engine == "torch" or shape[4] == 1]
            if len(of_engine) < len(shapes):
                print(f"{engine}: stride 1 only, the strided shapes skipped")
            if not of_engine:
                continue
            build = lambda shape: builders[engine](  # noqa: E731
                *shape[:4], train, precisions, args.extras, **({"stride": shape[4]} if shape[4] != 1 else {}))
            # the process's first timings run slow (allocator, thread pools): one untimed round first
            first, _ = build(of_engine[0][0])
            alternated(first, 1, warmup=1, clock=CLOCKS[args.clock])
            for shape, label in of_engine:
                fns, notes = build(shape)
                samples = alternated(fns, args.repeats, clock=CLOCKS[args.clock])
                row = analyse(engine, pass_, shape, label, samples, notes, info)
                rows.append(row)
                print_row(row, info)
    print_summary(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "repeats": args.repeats, "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
