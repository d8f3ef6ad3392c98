#!/usr/bin/env python3
"""One ResNet-20 training step (forward, backward, SGD update) on the CPU:
fxnn against the strongest dense baseline of the same precision, on
Fashion-MNIST-sized (1x28x28) and CIFAR-sized (3x32x32) batches, fp32 and
bf16, every contender of an input and precision alternated in the same
rounds.

Contenders: the runner's residual network (``--arch resnet``, its engine,
SGD) with fxnn's and with dense 3x3 convs (``fxnn``, ``cnn``), and the
plain-PyTorch ResNet-20 a user would write (``peer``: nn.Conv2d,
nn.BatchNorm2d, nn.Linear, cross-entropy, torch.optim.SGD). In fp32 each
runs as the engine does by default (NCHW) and with channels_last tensors
(``cl``: oneDNN's fastest fp32 layout); in bf16 all run under bf16 autocast
with channels_last (the engine's default there). The dense contenders of a
precision (cnn, peer and their cl forms) are its baselines, and the fastest
of them *the* baseline that ``vs best dense`` is against.

Each step is timed by the wall clock and by the process's CPU time (all its
threads; with ``--threads 1``, the default, the calling thread's, as every
op then runs on it): on a machine other processes load, the CPU time is the
steadier figure, and the ratios are of CPU times. Medians; the first calls
(``auto``'s path measuring included) are left out (docs/resnet.md has
figures).

With ``--floor``, the same rounds also time the network's convolutions
by themselves, forward and backward at their shapes in the step, in the
precision's fastest dense layout (channels_last): as dense 3x3 convs
(oneDNN), as 1x1 convs from 5M channels at the output's pixels (oneDNN's
GEMM over the fixed stage's output, written out), and the BatchNorm and
ReLU between each block's two convs, the pass a kernel's epilogue could
take over. From them, two floors for fxnn's step, the rest of the network
as cnn's channels_last step has it: ``floor``, its fixed stage free and
its GEMM (5 multiply-adds where a dense conv does 9) at the dense convs'
own rate, and ``floor, inner BN+ReLU fused``, those BatchNorms and ReLUs
free too.

    python3 -m bench.bench_resnet [--repeats 10] [--batch 128] [--inputs fashion,cifar]
        [--precisions fp32,bf16] [--threads 1] [--width 16] [--depth 20] [--floor] [--json out.json]
"""
import argparse
import json
import os
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
import numpy as np  # noqa: E402

from fxnn.kernels.fixed_kernels import NUM_KERNELS  # noqa: E402

from .machine import banner, describe  # noqa: E402
from .timing import alternated  # noqa: E402

INPUTS = {"fashion": (1, 28, 28), "cifar": (3, 32, 32)}
#: Contenders of each precision: (model, channels_last); None: the engine's default.
CONTENDERS = {"fp32": {"fxnn": ("fxnn", None), "fxnn cl": ("fxnn", True), "cnn": ("cnn", None),
                       "cnn cl": ("cnn", True), "peer": ("peer", False), "peer cl": ("peer", True)},
              "bf16": {"fxnn": ("fxnn", None), "cnn": ("cnn", None), "peer": ("peer", True)}}
LEARN_RATE = 0.05


def peer_resnet(shape, classes, width, depth):
    """The ResNet (option A shortcuts) as a user writes it in plain PyTorch."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            s = x[:, :, ::self.stride, ::self.stride] if self.stride != 1 else x
            return torch.relu(y + (F.pad(s, (0, 0, 0, 0, 0, self.extra)) if self.extra else s))

    n = (depth - 2) // 6
    layers, cin = [nn.Conv2d(shape[0], width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()], width
    for stage in range(3):
        for j in range(n):
            cout = width * 2 ** stage
            layers.append(Block(cin, cout, 2 if stage and not j else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def peer_step(shape, batch, precision, width, depth, rng, channels_last):
    import torch
    model = peer_resnet(shape, 10, width, depth)
    bf16 = precision == "bf16"
    x = torch.from_numpy(rng.random((batch,) + shape, dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, batch))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=LEARN_RATE)

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step.model, step.input = model, x  # for the tests
    return step


def runner_step(model, shape, batch, precision, width, depth, rng, channels_last=None):
    """A training step of the runner's resnet (TorchEngine, SGD, paths auto;
    ``channels_last`` None: the engine's default memory format)."""
    from fxnn.models.resnet import build_resnet
    from fxnn.models.torch.engine import TorchEngine
    network = build_resnet(model, shape, 10, width, depth)
    engine = TorchEngine(network, network.init_params(rng), "sgd", precision=precision, channels_last=channels_last)
    x = rng.random((batch,) + shape, dtype=np.float32)
    y = rng.integers(0, 10, batch)

    def step():
        engine.train_step(x, y, LEARN_RATE)
    step.engine = engine  # for the tests
    return step


def contenders(shape, batch, precision, width, depth):
    """{name: one training step} of :data:`CONTENDERS` [precision]."""
    rng = np.random.default_rng(0)
    fns = {}
    for name, (model, channels_last) in CONTENDERS[precision].items():
        fns[name] = (peer_step(shape, batch, precision, width, depth, rng, channels_last) if model == "peer"
                     else runner_step(model, shape, batch, precision, width, depth, rng, channels_last))
    return fns


#: The parts ``--floor`` times beside the steps (not contenders themselves).
FLOOR_PARTS = ("3x3 convs", "1x1 convs", "inner BN+ReLU")


def floor_parts(shape, batch, precision, width, depth):
    """{part: one call}: the network's convs by themselves, each forward and
    backward (input gradient included) at its shape in the step, on
    channels_last inputs of ``precision`` (bf16: under autocast, bf16
    inputs): ``3x3 convs`` dense, ``1x1 convs`` each as the 1x1 conv from
    5M channels at its output's pixels (an fxnn layer's GEMM over its fixed
    stage's output, the stride taken), ``inner BN+ReLU`` the BatchNorm and
    ReLU after each block's first conv (in training mode)."""
    import torch
    from torch import nn
    from fxnn.models.resnet import build_resnet, out_size
    cl, bf16 = torch.channels_last, precision == "bf16"
    g = torch.Generator().manual_seed(0)

    def tensor(channels, size, grad=False):
        t = torch.randn(batch, channels, size, size, generator=g).contiguous(memory_format=cl)
        return (t.bfloat16() if bf16 else t).requires_grad_(grad)

    network = build_resnet("cnn", shape, 10, width, depth)
    inner = {block.conv_a.name for block in network.blocks}
    parts = {part: [] for part in FLOOR_PARTS}  # (module, x, dy) per layer
    size = shape[1]
    for conv in network.convs:
        m, n, out = conv.in_channels, conv.out_channels, out_size(size, conv.stride)
        dy = tensor(n, out)
        parts["3x3 convs"].append((nn.Conv2d(m, n, 3, conv.stride, 1, bias=False).to(memory_format=cl),
                                   tensor(m, size, True), dy))
        parts["1x1 convs"].append((nn.Conv2d(NUM_KERNELS * m, n, 1, bias=False).to(memory_format=cl),
                                    tensor(NUM_KERNELS * m, out, True), dy))
        if conv.name in inner:
            parts["inner BN+ReLU"].append((nn.Sequential(nn.BatchNorm2d(n), nn.ReLU()), tensor(n, out, True), dy))
        size = out

    def call(layers):
        def run():
            for module, x, dy in layers:
                x.grad = None
                module.zero_grad(set_to_none=True)
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    y = module(x)
                y.backward(dy)
        run.layers = layers  # for the tests
        return run
    return {part: call(layers) for part, layers in parts.items()}


#: An fxnn layer's multiply-adds per output pixel, as a fraction of a dense 3x3 conv's.
GEMM_SHARE = NUM_KERNELS / 9
#: The step ratio to cnn that issue 31 asks fxnn for.
GOAL = 0.75


def floor(cpu_ms, precision, best_dense):
    """The ``--floor`` figures from the median CPU ms of the steps and parts:
    cnn's channels_last step with its 3x3 convs at :data:`GEMM_SHARE` of
    their time (``floor``), and that less the inner BatchNorms and ReLUs,
    each in ms and as ratios to that cnn step and to the fastest dense step;
    oneDNN's 1x1 convs as a ratio to the 3x3 convs; and the fxnn layers'
    time, as a fraction of the 3x3 convs', that a step of :data:`GOAL`
    times cnn's allows, without and with the inner BN+ReLU fused."""
    base = "cnn cl" if precision == "fp32" else "cnn"
    ms = cpu_ms[base] - (1 - GEMM_SHARE) * cpu_ms["3x3 convs"]
    fused = ms - cpu_ms["inner BN+ReLU"]
    share, bn_share = cpu_ms["3x3 convs"] / cpu_ms[base], cpu_ms["inner BN+ReLU"] / cpu_ms[base]
    return {"base": base, "parts_ms": {p: cpu_ms[p] for p in FLOOR_PARTS},
            # the fxnn layers' time, as a fraction of the dense convs', that a step of GOAL x cnn's allows
            "layers_for_goal": 1 - (1 - GOAL) / share, "layers_for_goal_fused": 1 - (1 - GOAL - bn_share) / share,
            "convs_share": share, "1x1/3x3": cpu_ms["1x1 convs"] / cpu_ms["3x3 convs"],
            "floor_ms": ms, "floor/cnn": ms / cpu_ms[base], "floor/best dense": ms / cpu_ms[best_dense],
            "fused_floor_ms": fused, "fused_floor/cnn": fused / cpu_ms[base],
            "fused_floor/best dense": fused / cpu_ms[best_dense]}


def print_floor(f):
    parts, base = f["parts_ms"], f["base"]
    print(f"  the convs alone: 3x3 {parts['3x3 convs']:.1f} ms ({f['convs_share']:.0%} of {base}'s step); "
          f"1x1 from 5M channels {parts['1x1 convs']:.1f} ms ({f['1x1/3x3']:.2f}x of the 3x3)")
    print(f"  floor (fixed stage free, GEMM at the 3x3 convs' rate): {f['floor_ms']:.1f} ms, "
          f"{f['floor/cnn']:.2f}x of {base}, {f['floor/best dense']:.2f}x of best dense")
    print(f"  floor, inner BN+ReLU fused (- {parts['inner BN+ReLU']:.1f} ms): {f['fused_floor_ms']:.1f} ms, "
          f"{f['fused_floor/cnn']:.2f}x of {base}, {f['fused_floor/best dense']:.2f}x of best dense")
    print(f"  a step of {GOAL}x {base}'s needs the fxnn layers at {f['layers_for_goal']:.2f}x of the 3x3 convs' "
          f"time ({GEMM_SHARE:.2f}x is the GEMM alone at their rate), or {f['layers_for_goal_fused']:.2f}x with "
          f"the inner BN+ReLU fused", flush=True)


def timed(fns):
    """``fns`` wrapped to note each call's process CPU time: (wrapped, {name: [s]})."""
    cpu = {name: [] for name in fns}

    def wrap(name, fn):
        def run():
            start = time.process_time()
            fn()
            cpu[name].append(time.process_time() - start)
        return run
    return {name: wrap(name, fn) for name, fn in fns.items()}, cpu


def is_dense(name):
    return not name.startswith("fxnn")


def summarise(wall, cpu, warmup):
    """({contender: {"wall_ms", "cpu_ms", "vs_best_dense"}}, {"best_dense",
    "best_fxnn", "fxnn/cnn", "best fxnn/best dense"}): medians (the warm-up
    calls left out of the CPU times) and ratios of the CPU times: each
    contender's to the fastest dense one, fxnn's to cnn's in the same
    layout, and the fastest fxnn's to the fastest dense."""
    row = {name: {"wall_ms": 1000 * float(np.median(wall[name])),
                  "cpu_ms": 1000 * float(np.median(cpu[name][warmup:]))} for name in wall if name not in FLOOR_PARTS}
    cpu_ms = {name: figures["cpu_ms"] for name, figures in row.items()}
    dense = min((n for n in cpu_ms if is_dense(n)), key=cpu_ms.get)
    fxnn = min((n for n in cpu_ms if not is_dense(n)), key=cpu_ms.get)
    for name, figures in row.items():
        figures["vs_best_dense"] = figures["cpu_ms"] / cpu_ms[dense]
    ratios = {"best_dense": dense, "best_fxnn": fxnn, "fxnn/cnn": cpu_ms["fxnn"] / cpu_ms["cnn"],
              "best fxnn/best dense": cpu_ms[fxnn] / cpu_ms[dense]}
    return row, ratios


def print_row(name, precision, figures, ratios):
    layout = "NCHW unless cl" if precision == "fp32" else "bf16 autocast, channels_last"
    print(f"\n{name} {precision} ({layout}): best dense {ratios['best_dense']}, best fxnn {ratios['best_fxnn']} "
          f"{ratios['best fxnn/best dense']:.2f}x of it; fxnn/cnn {ratios['fxnn/cnn']:.2f}")
    print(f"  {'contender':10s} {'wall ms':>9s} {'CPU ms':>9s} {'vs best dense':>14s}")
    for c, f in figures.items():
        print(f"  {c:10s} {f['wall_ms']:9.1f} {f['cpu_ms']:9.1f} {f['vs_best_dense']:13.2f}x", flush=True)


#: Where a step's time goes, by op name (torch.profiler's self CPU time):
#: the first category whose words one is in; the rest is "other".
CATEGORIES = (("fxnn kernels", ("fxnn",)), ("dense conv", ("convolution", "mkldnn")),
              ("BatchNorm", ("batch_norm",)), ("ReLU", ("relu", "threshold", "clamp")), ("adds", ("add",)))


def categorise(averages, steps):
    """{category: ms per step} of torch.profiler's per-op ``averages`` of ``steps`` steps."""
    ms = {name: 0.0 for name, _ in CATEGORIES + (("other", ()),)}
    for op in averages:
        name = next((c for c, words in CATEGORIES if any(w in op.key for w in words)), "other")
        ms[name] += op.self_cpu_time_total / 1000 / steps
    return ms


def profile(fns, names, repeats, label):
    """Print, for each contender of ``names``, where its step's time goes
    (:func:`categorise`) and its top ops, and its fxnn paths."""
    from .bench_network import profiled
    for name in names:
        averages = profiled(fns[name], repeats)
        ms = categorise(averages, repeats)
        total = sum(ms.values())
        print(f"\n{label} {name}: {total:.1f} ms a step (profiled, {repeats} steps): "
              + ", ".join(f"{c} {v:.1f} ({v / total:.0%})" for c, v in ms.items()))
        engine = getattr(fns[name], "engine", None)
        if engine is not None and name.startswith("fxnn"):
            print(f"  paths: {engine.describe_paths()[0]}")
        print(averages.table(sort_by="self_cpu_time_total", row_limit=12))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (each contender once per round)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--inputs", default="fashion,cifar", help=f"of {', '.join(INPUTS)}")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--floor", action="store_true",
                   help="also time the convs alone (dense 3x3, and 1x1 from 5M channels) and the inner "
                        "BatchNorms and ReLUs: floors for fxnn's step (see the module's notes)")
    p.add_argument("--json", help="also write every figure to this file")
    p.add_argument("--profile", metavar="NAMES",
                   help="instead of timing, profile these contenders (e.g. fxnn,cnn cl) with torch.profiler")
    args = p.parse_args(argv)
    for flag, given, known in (("--inputs", args.inputs, INPUTS), ("--precisions", args.precisions, CONTENDERS)):
        unknown = [v for v in given.split(",") if v not in known]
        if unknown:
            p.error(f"{flag}: unknown {', '.join(unknown)}; give some of {', '.join(known)}")
    for precision in args.precisions.split(",") if args.profile else ():
        unknown = [c for c in args.profile.split(",") if c not in CONTENDERS[precision]]
        if unknown:
            p.error(f"--profile: no contender {', '.join(unknown)} in {precision}; "
                    f"one of {', '.join(CONTENDERS[precision])}")
    if min(args.repeats, args.batch, args.threads, args.width) < 1 or (args.depth - 2) % 6 or args.depth < 8:
        p.error("--repeats, --batch, --threads and --width take positive numbers, --depth 6n+2 (8, 14, 20, ...)")
    from fxnn.kernels import threads
    threads.use(args.threads, torch=True)
    info = describe(args.threads)
    print(banner(info))
    print(f"ResNet-{args.depth} (width {args.width}) training step, batch {args.batch}, medians of {args.repeats} "
          f"alternated rounds; ms of wall clock and of process CPU time; ratios of the CPU times")
    rows, warmup = [], 2
    for name in args.inputs.split(","):
        for precision in args.precisions.split(","):
            fns = contenders(INPUTS[name], args.batch, precision, args.width, args.depth)
            if args.profile:
                profile(fns, args.profile.split(","), args.repeats, f"{name} {precision}")
                continue
            if args.floor:
                fns.update(floor_parts(INPUTS[name], args.batch, precision, args.width, args.depth))
            wrapped, cpu = timed(fns)
            wall = alternated(wrapped, args.repeats, warmup)
            figures, ratios = summarise(wall, cpu, warmup)
            rows.append({"input": name, "shape": INPUTS[name], "precision": precision, "ms": figures,
                         "ratios": ratios, "load_average": os.getloadavg()[0]})
            print_row(name, precision, figures, ratios)
            if args.floor:
                cpu_ms = {n: 1000 * float(np.median(t[warmup:])) for n, t in cpu.items()}
                rows[-1]["floor"] = floor(cpu_ms, precision, ratios["best_dense"])
                print_floor(rows[-1]["floor"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
