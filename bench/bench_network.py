#!/usr/bin/env python3
"""One training step and one validation pass of the whole network, per engine.

For fxnn (on each path of models/fxnn_paths.py: fused, fixed, folded, and
auto, which times them per layer) and cnn on each engine present (pytensor,
torch), against the peer a user would write instead: a plain PyTorch
nn.Sequential cnn with nn.Conv2d and torch.optim.SGD. Medians of alternated
rounds after warm-up (each engine's rows alternate among themselves, the
peer's with torch's), measured side by side in one run, on MNIST-shaped
random data (batch 64 for training, 100 for validation, as fxnn.py uses
them).

    python3 -m bench.bench_network [--dataset MNIST|CIFAR10] [--engines pytensor,torch] [--repeats 20] [--json out.json]
    python3 -m bench.bench_network --profile [cnn]   # where the torch fxnn (cnn) step's time goes, by op
"""
import argparse
import json
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as fxnn.py: no spinning BLAS threads between contenders
import numpy as np  # noqa: E402

from .machine import banner, describe  # noqa: E402
from .timing import alternated_ms  # noqa: E402
from fxnn.models.architecture import build_network  # noqa: E402
from fxnn.models.engines import make_engine  # noqa: E402

SHAPES = {"MNIST": (1, 28, 28), "CIFAR10": (3, 32, 32)}


def peer_cnn(shape):
    """The plain PyTorch cnn: same layers, nn.Conv2d, torch.optim.SGD."""
    import torch
    from torch import nn
    c, h, w = shape
    net = nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.Dropout(0.25), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Dropout(0.25), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 384), nn.ReLU(),
                        nn.Linear(384, 192), nn.ReLU(), nn.Linear(192, 10))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def train(x, y):
        net.train()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(torch.from_numpy(x)), torch.from_numpy(y).long())
        loss.backward()
        opt.step()

    def validate(x, y):
        net.eval()
        with torch.no_grad():
            net(torch.from_numpy(x))
    return train, validate


def profile(model, shape, xt, yt, xv, yv, repeats, rng):
    """torch.profiler's table of the torch engine's train step and validation
    pass of ``model`` (auto paths), top ops by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    net = build_network(model, shape)
    engine = make_engine("torch", "cpu", net, net.init_params(rng), "sgd", 0.25, 0)
    for name, step in (("train step", lambda: engine.train_step(xt, yt, 0.01)),
                       ("validation", lambda: engine.evaluate(xv, yv))):
        for _ in range(3):
            step()
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                step()
        print(f"torch {model} {name} ({engine.describe_paths()[0]}), {repeats} calls:")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=SHAPES, default="MNIST")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--engines", default="pytensor,torch", help="engines to time, beside the peer")
    p.add_argument("--profile", metavar="MODEL", nargs="?", const="fxnn",
                   help="print torch.profiler tables of MODEL (default fxnn) instead of timings")
    args = p.parse_args()
    shape = SHAPES[args.dataset]
    rng = np.random.default_rng(0)
    xt, yt = rng.random((64,) + shape, dtype=np.float32), rng.integers(0, 10, 64).astype(np.int32)
    xv, yv = rng.random((100,) + shape, dtype=np.float32), rng.integers(0, 10, 100).astype(np.int32)
    if args.profile:
        import torch
        torch.set_num_threads(os.cpu_count())
        return profile(args.profile, shape, xt, yt, xv, yv, args.repeats, rng)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import torch
        torch.set_num_threads(threads)
        engines = tuple(args.engines.split(","))
    except ImportError:
        engines = tuple(e for e in args.engines.split(",") if e != "torch")
    info = describe(threads)
    print(banner(info))
    steps = {}
    if "torch" in engines:
        train, validate = peer_cnn(shape)
        steps["peer nn.Conv2d cnn"] = (lambda: train(xt, yt), lambda: validate(xv, yv))
    for engine_name in engines:
        paths = ("fused", "fixed", "folded", "auto")
        for model, path in [("fxnn", p) for p in paths] + [("cnn", "auto")]:
            net = build_network(model, shape)
            engine = make_engine(engine_name, "cpu", net, net.init_params(rng), "sgd", 0.25, 0, path,
                                 {"train": len(xt), "valid": len(xv)})
            engine.train_step(xt, yt, 0.01)  # auto chooses its paths on the first calls
            engine.evaluate(xv, yv)
            name = f"{engine_name} {model}" + (f" ({path})" if model == "fxnn" else "")
            if path == "auto":
                name += f" [{engine.describe_paths()[0]}]" if model == "fxnn" else ""
            steps[name] = (lambda e=engine: e.train_step(xt, yt, 0.01), lambda e=engine: e.evaluate(xv, yv))
    # Rounds alternate within one engine's rows (the peer's with torch's): right after a
    # PyTensor step numpy's BLAS threads still spin, which would slow the next torch step.
    rows = {}
    for engine_name in engines:
        group = {k: f for k, f in steps.items() if k.startswith(engine_name) or (engine_name == "torch" and "peer" in k)}
        train_ms = alternated_ms({k: t for k, (t, _) in group.items()}, args.repeats)
        valid_ms = alternated_ms({k: v for k, (_, v) in group.items()}, args.repeats)
        rows.update({k: (train_ms[k], valid_ms[k]) for k in group})
    rows = {k: rows[k] for k in steps}
    peer = rows.get("peer nn.Conv2d cnn")
    print(f"{args.dataset}, {threads} threads, medians of {args.repeats} alternated rounds")
    width = max(len(k) for k in rows) + 2
    print(f"{'':{width}s} {'train step (64)':>16s} {'validation (100)':>17s}"
          + ("   vs peer: train  valid" if peer else ""))
    for name, (t, v) in rows.items():
        ratio = f"   {t / peer[0]:13.2f}x {v / peer[1]:6.2f}x" if peer else ""
        print(f"{name:{width}s} {t:13.1f} ms {v:14.1f} ms{ratio}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dataset": args.dataset, "machine": info, "repeats": args.repeats,
                       "ms": {k: {"train_step": t, "validation": v} for k, (t, v) in rows.items()}}, f, indent=2)


if __name__ == "__main__":
    main()
