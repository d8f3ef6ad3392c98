#!/usr/bin/env python3
"""One ResNet-20 training step (forward, backward, SGD update) on the CPU:
fxnn against cnn (the runner's residual network, ``--arch resnet``, the same
engine and precision) and against the plain-PyTorch ResNet-20 a user would
write (nn.Conv2d, nn.BatchNorm2d, nn.Linear, cross-entropy, torch.optim.SGD;
under bf16 autocast with channels_last model and input), on
Fashion-MNIST-sized (1x28x28) and CIFAR-sized (3x32x32) batches, fp32 and
bf16, every contender of an input alternated in the same rounds.

Each step is timed by the wall clock and by the process's CPU time (all its
threads); on a machine other processes load, the CPU time is the steadier
figure, and with ``--threads 1`` (the default) it is the step's work. The
table gives medians, and the ratios fxnn/cnn and fxnn/peer of the CPU times
(docs/resnet.md has figures).

    python3 -m bench.bench_resnet [--repeats 10] [--batch 128] [--inputs fashion,cifar]
        [--precisions fp32,bf16] [--threads 1] [--width 16] [--depth 20] [--json out.json]
"""
import argparse
import json
import os
import time

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
import numpy as np  # noqa: E402

from .machine import banner, describe  # noqa: E402
from .timing import alternated  # noqa: E402

INPUTS = {"fashion": (1, 28, 28), "cifar": (3, 32, 32)}
CONTENDERS = ("fxnn", "cnn", "peer")
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


def peer_step(shape, batch, precision, width, depth, rng):
    import torch
    model = peer_resnet(shape, 10, width, depth)
    bf16 = precision == "bf16"
    x = torch.from_numpy(rng.random((batch,) + shape, dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 10, batch))
    if bf16:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=LEARN_RATE)

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def runner_step(model, shape, batch, precision, width, depth, rng):
    """A training step of the runner's resnet (TorchEngine, SGD, paths auto)."""
    from fxnn.models.resnet import build_resnet
    from fxnn.models.torch.engine import TorchEngine
    network = build_resnet(model, shape, 10, width, depth)
    engine = TorchEngine(network, network.init_params(rng), "sgd", precision=precision)
    x = rng.random((batch,) + shape, dtype=np.float32)
    y = rng.integers(0, 10, batch)
    return lambda: engine.train_step(x, y, LEARN_RATE)


def contenders(shape, batch, precision, width, depth):
    rng = np.random.default_rng(0)
    fns = {model: runner_step(model, shape, batch, precision, width, depth, rng) for model in ("fxnn", "cnn")}
    fns["peer"] = peer_step(shape, batch, precision, width, depth, rng)
    return fns


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


def summarise(wall, cpu, warmup):
    """{contender: {"wall_ms", "cpu_ms"}} medians (the warm-up calls left
    out of the CPU times) and the ratios fxnn/cnn, fxnn/peer of the CPU times."""
    row = {name: {"wall_ms": 1000 * float(np.median(wall[name])),
                  "cpu_ms": 1000 * float(np.median(cpu[name][warmup:]))} for name in wall}
    ratios = {f"fxnn/{other}": row["fxnn"]["cpu_ms"] / row[other]["cpu_ms"] for other in ("cnn", "peer")}
    return row, ratios


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=10, help="timed rounds (each contender once per round)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--inputs", default="fashion,cifar", help=f"of {', '.join(INPUTS)}")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--json", help="also write every figure to this file")
    args = p.parse_args(argv)
    from fxnn.kernels import threads
    threads.use(args.threads, torch=True)
    info = describe(args.threads)
    print(banner(info))
    print(f"ResNet-{args.depth} (width {args.width}) training step, batch {args.batch}, medians of {args.repeats} "
          f"alternated rounds; ms of wall clock and of process CPU time; ratios of the CPU times")
    rows, warmup = [], 2
    for name in args.inputs.split(","):
        for precision in args.precisions.split(","):
            wrapped, cpu = timed(contenders(INPUTS[name], args.batch, precision, args.width, args.depth))
            wall = alternated(wrapped, args.repeats, warmup)
            figures, ratios = summarise(wall, cpu, warmup)
            rows.append({"input": name, "shape": INPUTS[name], "precision": precision, "ms": figures,
                         "ratios": ratios})
            cells = "  ".join(f"{c} {figures[c]['wall_ms']:8.1f} / {figures[c]['cpu_ms']:8.1f}" for c in CONTENDERS)
            print(f"{name:8s} {precision}  {cells}  " + "  ".join(f"{k} {v:.2f}" for k, v in ratios.items()),
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "rows": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return rows


if __name__ == "__main__":
    main()
