"""Curves of record files drawn to a PNG (headless matplotlib).

``python3 -m analysis.plot rec-MNIST-fxnn.mat rec-MNIST-cnn.mat -o curves.png``
draws the loss and error of each run on two shared axes: validation solid,
training dashed (the mean over each record's iterations, the console's
``loss|erate`` columns). ``--bands`` draws one mean curve per model instead,
with a band of one standard deviation over the seeds.
"""
import argparse
import sys

import numpy as np

from .records import RecordError, group_by_label, load_run


def _figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (loss_ax, err_ax) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100, sharex=True)
    for ax, name in ((loss_ax, "loss"), (err_ax, "error rate")):
        ax.set_xlabel("iteration")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    return fig, loss_ax, err_ax


def _finish(fig, loss_ax, err_ax, path, log_error, title, log_iter=False):
    if log_error:
        err_ax.set_yscale("log")
    if log_iter:  # iteration 0 (the untrained network) drops off a log axis
        err_ax.set_xscale("log", nonpositive="mask")
    loss_ax.set_yscale("log")
    err_ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return fig


def record_means(values, iters_per_record):
    """The mean of each complete record of per-iteration values."""
    n = len(values) // iters_per_record
    return np.asarray(values[:n * iters_per_record]).reshape(n, iters_per_record).mean(axis=1)


def _title(runs):
    sources = sorted({f"{r.dataset}, {r.data_source}" for r in runs})
    return "; ".join(sources)


def plot_runs(runs, path, log_error=False, log_iter=False):
    """One training and one validation curve per run on each axis; returns
    the (closed) figure."""
    fig, loss_ax, err_ax = _figure()
    groups = group_by_label(runs)
    for i, run in enumerate(runs):
        name = run.label if len(groups[run.label]) == 1 else f"{run.label} seed {run.seed}"
        color = f"C{i % 10}"
        train_iters = np.arange(1, len(run.tloss) // run.iters_per_record + 1) * run.iters_per_record
        for ax, train, valid in ((loss_ax, run.tloss, run.vloss), (err_ax, run.terate, run.verate)):
            ax.plot(run.record_iterations, valid, color=color, label=f"{name} valid")
            ax.plot(train_iters, record_means(train, run.iters_per_record), color=color,
                    linestyle="--", alpha=0.7, label=f"{name} train")
    return _finish(fig, loss_ax, err_ax, path, log_error, _title(runs), log_iter)


def plot_bands(runs, path, log_error=False, log_iter=False):
    """Per model: the mean validation curve over seeds, with a band of one
    standard deviation; returns the (closed) figure."""
    fig, loss_ax, err_ax = _figure()
    for i, (label, group) in enumerate(group_by_label(runs).items()):
        lengths = {len(r.verate) for r in group}
        if len(lengths) > 1 or len({r.iters_per_record for r in group}) > 1:
            raise RecordError(f"the runs of {label} have different record schedules "
                              f"({', '.join(r.path for r in group)}); plot them without --bands")
        iters = group[0].record_iterations
        for ax, values in ((loss_ax, [r.vloss for r in group]), (err_ax, [r.verate for r in group])):
            values = np.asarray(values)
            mean = values.mean(axis=0)
            std = values.std(axis=0, ddof=1) if len(group) > 1 else np.zeros_like(mean)
            ax.plot(iters, mean, color=f"C{i % 10}", label=f"{label}, {len(group)} seeds, valid")
            ax.fill_between(iters, mean - std, mean + std, color=f"C{i % 10}", alpha=0.25, linewidth=0)
    return _finish(fig, loss_ax, err_ax, path, log_error, _title(runs) + " (band: one std over seeds)", log_iter)


def build_parser():
    p = argparse.ArgumentParser(prog="python3 -m analysis.plot", description=__doc__.split("\n\n")[0].replace("``", ""),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("records", nargs="+", help="record files written by fxnn.py")
    p.add_argument("-o", "--out", default="curves.png", help="PNG to write")
    p.add_argument("--log-error", action="store_true", help="logarithmic error-rate axis")
    p.add_argument("--log-iter", action="store_true", help="logarithmic iteration axis")
    p.add_argument("--bands", action="store_true",
                   help="one mean validation curve per model with a one-std band over its seeds")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        runs = [load_run(path) for path in args.records]
        (plot_bands if args.bands else plot_runs)(runs, args.out, args.log_error, args.log_iter)
    except (RecordError, OSError) as e:
        print(f"plot: error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {args.out}")
    return 0


def cli():
    sys.exit(main())


if __name__ == "__main__":
    cli()
