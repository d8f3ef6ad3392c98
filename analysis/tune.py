"""A learn-rate grid read back: which rate is best, at which horizon.

``python3 -m fxnn.analysis.tune sweeps/grid/*/*.mat --at 100 400 1600 3000``
groups the records by everything but the learn rate and the seed (model,
engine, optimizer, data, the other flags), and prints for each group the
validation error at each rate (the mean over its seeds), the test error of
runs that validated on a held-out split (--valid-split), and the best rate at
each horizon. Tune on the validation error of a held-out split, never on the
test set: the test column is for reporting the rate chosen. ``--best`` prints
one line per group, its label and the rate of lowest validation error at the
last horizon, for scripts that go on to run more seeds at that rate.
"""
import argparse
import csv
import math
import sys
from dataclasses import replace

import numpy as np

from .plot import image_path
from .records import RecordError, check_outputs, distinct_runs, group_by_label, load_run, tag_experiments
from .stats import error_at
from .summary import default_at, iteration


def _learn_rate(run):
    value = run.flags.get("learn_rate")
    if not isinstance(value, float):
        raise RecordError(f"{run.path}: meta.flags.learn_rate is {'missing' if value is None else repr(value)[:40]}; "
                          f"fxnn-tune needs each run's learn rate, as fxnn.py records it")
    return value


def grids(runs):
    """{group label: {learn rate: [runs]}}: the runs grouped by everything but
    their learn rate and seed, in first-seen order, rates ascending."""
    stripped, _ = tag_experiments([replace(r, flags={**r.flags, "learn_rate": None}) for r in runs])
    out = {}
    for run, s in zip(runs, stripped):
        out.setdefault(s.label, {}).setdefault(_learn_rate(run), []).append(run)
    return {label: dict(sorted(by_rate.items())) for label, by_rate in out.items()}


def mean_error(runs, at):
    """Mean validation error of ``runs`` at iteration ``at`` (NaN where a
    diverged run's error is NaN)."""
    return float(np.mean([error_at(r, at) for r in runs]))


def best_rates(by_rate, at):
    """{horizon: the rate of lowest mean validation error there} (ties: the
    smaller rate)."""
    best = {}
    for it in at:
        scored = [(mean_error(runs, it), rate) for rate, runs in by_rate.items()]
        scored = [(e, rate) for e, rate in scored if not math.isnan(e)]
        best[it] = min(scored)[1] if scored else math.nan
    return best


def grid_at(by_rate):
    """The summary's default horizons over every run of a grid."""
    return default_at([r for runs in by_rate.values() for r in runs])


def _pct(x):
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}%"


def format_grid(label, by_rate, at):
    """One group's grid as aligned text, the best rate at each horizon last."""
    has_test = any(not math.isnan(r.test_erate[0]) for runs in by_rate.values() for r in runs)
    header = ["-lr", "seeds"] + [f"@{it}" for it in at] + (["test (final)"] if has_test else [])
    best = best_rates(by_rate, at)
    lines = [header]
    for rate, runs in by_rate.items():
        cells = [_pct(mean_error(runs, it)) + ("*" if best[it] == rate else " ") for it in at]
        test = [_pct(float(np.mean([r.test_erate[0] for r in runs])))] if has_test else []
        lines.append([f"{rate:g}", str(len(runs))] + cells + test)
    lines.append(["best -lr", ""] + [f"{best[it]:g} " for it in at] + ([""] if has_test else []))
    rates = list(by_rate)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    body = "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in lines)
    edge = [f"@{it}" for it in at if len(rates) > 1 and best[it] in (rates[0], rates[-1])]
    note = (f"\nNOTE: at {', '.join(edge)} the best rate is the grid's smallest or largest: the optimum may lie "
            f"outside it; extend the grid" if edge else "")
    return f"{label}: validation error at each learn rate (mean over seeds; * the best at that horizon)\n{body}{note}"


def write_csv(groups, at_of, path):
    from fxnn.files.atomic import atomic_path
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "learn_rate", "at", "mean_verate", "n", "mean_test_erate"])
        for label, by_rate in groups.items():
            for rate, runs in by_rate.items():
                test = float(np.mean([r.test_erate[0] for r in runs]))
                for it in at_of[label]:
                    writer.writerow([label, rate, it, mean_error(runs, it), len(runs), test])


def plot_grids(groups, at, path):
    """Validation error against learn rate (log axes), one panel per horizon
    in ``at``, one line per group through its seeds' means, each seed a dot;
    diverged runs (NaN) are left out."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plot import save_figure
    fig, axes = plt.subplots(1, len(at), figsize=(3.6 * len(at), 3.8), dpi=100, sharey=True, squeeze=False)
    for ax, it in zip(axes[0], at):
        for label, by_rate in groups.items():
            rates = list(by_rate)
            line, = ax.plot(rates, [100 * mean_error(by_rate[r], it) for r in rates], marker="o", label=label)
            for rate, runs in by_rate.items():
                ax.plot([rate] * len(runs), [100 * error_at(r, it) for r in runs], ".", color=line.get_color(),
                        alpha=0.5)
        ax.set(xscale="log", yscale="log", title=f"iteration {it}", xlabel="learn rate")
        ax.grid(True, alpha=0.3, which="both")
    axes[0][0].set_ylabel("validation error (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def build_parser():
    p = argparse.ArgumentParser(prog="fxnn-tune",
                                description=__doc__.split("\n\n")[1].replace("``", ""),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("records", nargs="+", help="record files of a learn-rate grid, written by fxnn.py")
    p.add_argument("--at", type=iteration, nargs="+", default=None,
                   help="iterations at which to compare the rates (default, per group: one record, then 4x apart, "
                        "and the last)")
    p.add_argument("--best", action="store_true",
                   help="print only '<group label>\\t<rate>' per group: the best rate at the last horizon")
    p.add_argument("--csv", default=None, help="write every group's grid as CSV here")
    p.add_argument("--png", type=image_path, default=None,
                   help="plot validation error against learn rate here, a panel per --at horizon (needs --at)")
    return p


def main(argv=None, out=None):
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        if args.png and not args.at:
            raise ValueError("--png needs --at: the horizons to draw a panel for")
        check_outputs([args.csv, args.png], args.records)
        runs, notes = distinct_runs([load_run(path) for path in args.records])
        for note in notes:
            print(note, file=out)
        unfinished = [r.path for r in runs if r.status != "complete"]
        if unfinished:
            print(f"NOTE: left out, not complete (rerun the sweep to finish them): {', '.join(unfinished)}", file=out)
        runs = [r for r in runs if r.status == "complete"]
        if not runs:
            raise ValueError("no complete record among those given")
        groups = grids(runs)
        at_of = {label: args.at or grid_at(by_rate) for label, by_rate in groups.items()}
        for label, by_rate in groups.items():
            if args.best:
                print(f"{label}\t{best_rates(by_rate, at_of[label][-1:])[at_of[label][-1]]:g}", file=out)
            else:
                print(format_grid(label, by_rate, at_of[label]), file=out)
        if args.csv:
            write_csv(groups, at_of, args.csv)
            print(f"Wrote {args.csv}", file=out)
        if args.png:
            plot_grids(groups, args.at, args.png)
            print(f"Wrote {args.png}", file=out)
    except (RecordError, ValueError, OSError) as e:
        print(f"fxnn-tune: error: {e}", file=sys.stderr)
        return 2
    return 0


def cli():
    from fxnn.files.signals import stoppable
    sys.exit(stoppable("tune", main)())  # SIGTERM or SIGHUP: no temporary left, one line


if __name__ == "__main__":
    cli()
