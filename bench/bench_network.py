#!/usr/bin/env python3
"""One training step and one validation pass of the whole network, per
engine and precision, against plain PyTorch written for speed.

For fxnn (on each path of models/fxnn_paths.py: fused, fixed, folded, and
auto, which times them per layer) and cnn, on each engine present (torch:
fp32 and bf16; pytensor: fp32 only), against the peer a performance-minded
user would write instead: the same architecture as a plain PyTorch
nn.Sequential (nn.Conv2d, nn.ReLU, nn.Dropout, nn.MaxPool2d, nn.Linear,
torch.optim.SGD), in three configurations:

  peer fp32        NCHW, float32 (what most code does)
  peer fp32 cl     channels_last model and input
  peer bf16 cl     channels_last, forward under torch.autocast("cpu", torch.bfloat16)
                   (validation under torch.inference_mode)

The fastest peer is *the* baseline of each column (``/best``, training step
and validation apart); ``/same`` compares with the fastest peer of the same
precision, ``fxnn/cnn`` each fxnn
row with cnn of the same engine and precision. The torch engine's bf16 rows
use the runner's own precision facility (``make_engine(..., precision=)``)
where it exists, else they run the engine's steps under bf16 autocast, as
the facility does (the table says which). A row that fails (a path not
available yet) is reported and left out. Medians of alternated rounds after
warm-up (each engine's rows alternate among themselves, the peers' with
torch's), measured side by side in one run, on random data of the dataset's
shape (batch 64 for training, 100 for validation, as fxnn.py uses them).

    python3 -m bench.bench_network [--dataset MNIST|CIFAR10] [--engines pytensor,torch] [--precisions fp32,bf16]
        [--repeats 20] [--json out.json]
    python3 -m bench.bench_network --profile [cnn] [--precisions bf16]   # where the torch fxnn (cnn) step's time goes
"""
import argparse
import inspect
import json
import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as fxnn.py: no spinning BLAS threads between contenders
import numpy as np  # noqa: E402

from .machine import banner, describe  # noqa: E402
from .timing import alternated  # noqa: E402
from fxnn.models.architecture import build_network  # noqa: E402
from fxnn.models.engines import make_engine  # noqa: E402

SHAPES = {"MNIST": (1, 28, 28), "CIFAR10": (3, 32, 32)}
PEERS = (("fp32", False), ("fp32", True), ("bf16", True))


def peer_cnn(shape, precision="fp32", channels_last=False, seed=0):
    """(train(x, y), validate(x, y)) of the plain PyTorch cnn: same layers,
    nn.Conv2d, torch.optim.SGD; channels_last model and input, and bf16
    autocast, as asked."""
    import torch
    from torch import nn
    torch.manual_seed(seed)
    c, h, w = shape
    net = nn.Sequential(nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.Dropout(0.25), nn.MaxPool2d(2),
                        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Dropout(0.25), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 384), nn.ReLU(),
                        nn.Linear(384, 192), nn.ReLU(), nn.Linear(192, 10))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    bf16 = precision == "bf16"

    def batch(x):
        return torch.from_numpy(x).contiguous(memory_format=fmt)

    def train(x, y):
        net.train()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(net(batch(x)), torch.from_numpy(y).long())
        loss.backward()
        opt.step()

    def validate(x, y):
        net.eval()
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            net(batch(x))
    return train, validate


def engine_precision_facility():
    """How the runner's engines take a precision: "make_engine" where
    make_engine has a ``precision`` parameter, else None (this bench then
    runs the engine's steps under bf16 autocast itself)."""
    return "make_engine" if "precision" in inspect.signature(make_engine).parameters else None


def engine_steps(engine_name, model, path, precision, shape, rng, xt, yt, xv, yv):
    """(train(), validate(), engine, how bf16 was set up) of one engine."""
    net = build_network(model, shape)
    kwargs, how = {}, None
    if precision != "fp32":
        if engine_precision_facility():
            kwargs["precision"], how = precision, "make_engine(precision=)"
        else:
            how = "bench's own autocast"
    engine = make_engine(engine_name, "cpu", net, net.init_params(rng), "sgd", 0.25, 0, path,
                         {"train": len(xt), "valid": len(xv)}, **kwargs)
    if precision == "bf16" and not kwargs:
        import torch

        def train():
            with torch.autocast("cpu", torch.bfloat16):
                engine.train_step(xt, yt, 0.01)

        def validate():
            with torch.autocast("cpu", torch.bfloat16):
                engine.evaluate(xv, yv)
    else:
        def train():
            engine.train_step(xt, yt, 0.01)

        def validate():
            engine.evaluate(xv, yv)
    return train, validate, engine, how


def profiled(step, repeats, warmup=3):
    """torch.profiler's per-op averages of ``repeats`` calls of ``step``
    after ``warmup`` untimed ones."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    for _ in range(warmup):
        step()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            step()
    return prof.key_averages()


def profile(model, shape, xt, yt, xv, yv, repeats, rng, precision="fp32"):
    """torch.profiler's table of the torch engine's train step and validation
    pass of ``model`` (auto paths) in ``precision``, top ops by self CPU time."""
    train, validate, engine, _ = engine_steps("torch", model, "auto", precision, shape, rng, xt, yt, xv, yv)
    for name, step in (("train step", train), ("validation", validate)):
        averages = profiled(step, repeats)
        print(f"torch {precision} {model} {name} ({engine.describe_paths()[0]}), {repeats} calls:")
        print(averages.table(sort_by="self_cpu_time_total", row_limit=10))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=SHAPES, default="MNIST")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--engines", default="pytensor,torch", help="engines to time, beside the peers")
    p.add_argument("--precisions", default="fp32,bf16", help="fp32 and/or bf16 (torch engine and peers)")
    p.add_argument("--paths", default="fused,fixed,folded,auto", help="the fxnn paths to time")
    p.add_argument("--profile", metavar="MODEL", nargs="?", const="fxnn",
                   help="print torch.profiler tables of MODEL (default fxnn) instead of timings")
    args = p.parse_args(argv)
    shape = SHAPES[args.dataset]
    precisions = tuple(args.precisions.split(","))
    rng = np.random.default_rng(0)
    xt, yt = rng.random((64,) + shape, dtype=np.float32), rng.integers(0, 10, 64).astype(np.int32)
    xv, yv = rng.random((100,) + shape, dtype=np.float32), rng.integers(0, 10, 100).astype(np.int32)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.profile:
        import torch
        torch.set_num_threads(threads)
        return profile(args.profile, shape, xt, yt, xv, yv, args.repeats, rng, precisions[0])
    try:
        import torch
        torch.set_num_threads(threads)
        engines = tuple(args.engines.split(","))
    except ImportError:
        engines = tuple(e for e in args.engines.split(",") if e != "torch")
    info = describe(threads)
    print(banner(info))
    steps, groups, notes, how_bf16 = {}, {}, {}, None

    def add(group, name, build):
        try:
            train, validate = build()
            train()  # auto chooses its paths on the first calls; a row that cannot run says so here
            validate()
        except Exception as e:  # noqa: BLE001  (reported, the others go on)
            notes[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            print(f"{name}: {notes[name]}", flush=True)
            return
        steps[name] = (train, validate)
        groups[name] = group

    if "torch" in engines:
        for precision, channels_last in PEERS:
            if precision in precisions:
                def build(p=precision, c=channels_last):
                    train, validate = peer_cnn(shape, p, c)
                    return lambda: train(xt, yt), lambda: validate(xv, yv)
                add("torch", f"peer {precision}{' cl' if channels_last else ''}", build)
    for engine_name in engines:
        for precision in precisions if engine_name == "torch" else ("fp32",):
            for model, path in [("fxnn", p) for p in args.paths.split(",")] + [("cnn", "auto")]:
                name = f"{engine_name} {precision} {model}" + (f" ({path})" if model == "fxnn" else "")
                built = {}

                def build(engine_name=engine_name, model=model, path=path, precision=precision, built=built):
                    train, validate, engine, how = engine_steps(engine_name, model, path, precision, shape,
                                                                rng, xt, yt, xv, yv)
                    built.update(engine=engine, how=how)
                    return train, validate
                add(engine_name, name, build)
                if name in steps and model == "fxnn" and path == "auto":
                    notes[name] = built["engine"].describe_paths()[0]
                if built.get("how"):
                    how_bf16 = built["how"]
    # Rounds alternate within one engine's rows (the peers' with torch's): right after a
    # PyTensor step numpy's BLAS threads still spin, which would slow the next torch step.
    rows, rounds = {}, {}
    for engine_name in engines:
        group = {k: f for k, f in steps.items() if groups[k] == engine_name}
        if not group:
            continue
        train_s = alternated({k: t for k, (t, _) in group.items()}, args.repeats)
        valid_s = alternated({k: v for k, (_, v) in group.items()}, args.repeats)
        for k in group:
            rounds[k] = {"train_step": [1000 * s for s in train_s[k]], "validation": [1000 * s for s in valid_s[k]]}
            rows[k] = (float(np.median(rounds[k]["train_step"])), float(np.median(rounds[k]["validation"])))
    rows = {k: rows[k] for k in steps if k in rows}
    figures = ratios(rows)
    print(f"\n{args.dataset}, {threads} threads, medians of {args.repeats} alternated rounds"
          + (f"; torch bf16 rows: {how_bf16}" if how_bf16 else ""))
    print_table(rows, figures, notes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dataset": args.dataset, "machine": info, "args": vars(args), "bf16_via": how_bf16,
                       "repeats": args.repeats,
                       "ms": {k: {"train_step": t, "validation": v} for k, (t, v) in rows.items()},
                       **figures, "notes": notes, "rounds_ms": rounds}, f, indent=2)
        print(f"wrote {args.json}")


def precision_of(name):
    return "bf16" if " bf16" in name else "fp32"


def ratios(rows):
    """{"baseline": [the fastest peer by training step, by validation],
    "vs_baseline", "vs_same_precision" (against the fastest peer of the row's
    precision, per pass: "same_precision_peer"), "fxnn_vs_cnn" (against cnn
    of the same engine and precision)}: each {row: [train ratio, validation
    ratio]}."""
    peers = {k: v for k, v in rows.items() if k.startswith("peer")}
    out = {"baseline": None, "vs_baseline": {}, "same_precision_peer": {}, "vs_same_precision": {},
           "fxnn_vs_cnn": {}}
    if peers:
        best = [min(peers, key=lambda k: peers[k][i]) for i in (0, 1)]
        out["baseline"] = best
        out["vs_baseline"] = {k: [r[i] / rows[best[i]][i] for i in (0, 1)] for k, r in rows.items()}
        for prec in ("fp32", "bf16"):
            of_prec = {k: v for k, v in peers.items() if precision_of(k) == prec}
            if of_prec:
                out["same_precision_peer"][prec] = [min(of_prec, key=lambda k: of_prec[k][i]) for i in (0, 1)]
        same = out["same_precision_peer"]
        out["vs_same_precision"] = {k: [r[i] / rows[same[precision_of(k)][i]][i] for i in (0, 1)]
                                    for k, r in rows.items() if precision_of(k) in same}
    for k, (t, v) in rows.items():
        if " fxnn" in k:
            cnn = k.split(" fxnn")[0] + " cnn"
            if cnn in rows:
                out["fxnn_vs_cnn"][k] = [t / rows[cnn][0], v / rows[cnn][1]]
    return out


def print_table(rows, figures, notes):
    width = max([len(k) for k in list(rows) + list(notes)] + [10]) + 2
    pair = lambda r: f"{r[0]:6.2f}x {r[1]:6.2f}x" if r else f"{'':7s} {'':7s}"  # noqa: E731
    print(f"{'':{width}s} {'train (64)':>11s} {'valid (100)':>12s}   {'/best: train':>12s} {'valid':>7s}   "
          f"{'/same: train':>12s} {'valid':>7s}   {'fxnn/cnn':>8s} {'valid':>7s}")
    for name, (t, v) in rows.items():
        note = notes.get(name, "")
        base = [p for p, n in zip(("train", "valid"), figures["baseline"] or ()) if n == name]
        if base:
            note = f"<- baseline ({', '.join(base)})" + (f"; {note}" if note else "")
        print(f"{name:{width}s} {t:8.1f} ms {v:9.1f} ms   {pair(figures['vs_baseline'].get(name)):>20s}   "
              f"{pair(figures['vs_same_precision'].get(name)):>20s}   {pair(figures['fxnn_vs_cnn'].get(name)):>16s}"
              f"  {note}")
    for name, note in notes.items():
        if name not in rows:
            print(f"{name:{width}s} {'-':>11s} {'-':>12s}   {note}")


if __name__ == "__main__":
    main()
