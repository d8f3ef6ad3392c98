"""Curves of record files drawn to a PNG (headless matplotlib).

``fxnn-plot rec-MNIST-fxnn.mat rec-MNIST-cnn.mat -o curves.png``
draws the loss and the error rate (in percent, as on the console) of each run
on two axes: validation solid, training dashed (the mean over each record's
iterations, the console's ``loss|erate`` columns). What the runs share is in
the title, what tells them apart (model, engine, dataset, optimizer, learn
rate, seed) in each run's label. An axis is logarithmic when its curves span
more than a decade (``--error-scale``, ``--loss-scale`` to choose); points a
log axis cannot draw (a loss at or below zero, an error rate of exactly zero)
are marked with a triangle on its bottom edge and reported. A run that did not
complete ends in a marker (X: diverged, o: interrupted or terminated) and its
label says where it stopped. ``--bands`` draws one mean curve per group of
seeds instead, with a band of one standard deviation.
"""
import argparse
import os
import sys
import textwrap

import numpy as np

from .records import RecordError, check_outputs, distinct_runs, experiment_differences, load_run

SCALES = ("auto", "log", "linear")
#: A run that did not complete: (marker at the end of its curves, word).
STOPPED = {"diverged": "X", "interrupted": "o", "terminated": "o"}
UNDRAWABLE_MARKER = "v"


def _number(value):
    return None if value in (None, "") else f"{float(value):g}"


#: What tells runs apart, in label order: a run's value in words (None: not recorded).
IDENTITY = (
    lambda r: r.model,
    lambda r: r.engine,
    lambda r: r.dataset,
    lambda r: r.flags.get("optimizer") or None,
    lambda r: _number(r.flags.get("learn_rate")) and f"lr {_number(r.flags.get('learn_rate'))}",
    lambda r: f"seed {r.seed}",
)
SEED = len(IDENTITY) - 1
#: The fxnn.py options IDENTITY names already.
IN_IDENTITY = ("-d", "--optimizer", "-lr")


def identities(runs, leave_out=()):
    """(labels, common): per run, a label naming the model and whatever else
    differs between ``runs`` (IDENTITY indices in ``leave_out`` aside, and
    any other flag of the experiment, analysis.records); and
    the values all runs share, for the title. Runs alike in all of these
    are told apart by their file names."""
    values = [[get(run) for get in IDENTITY] for run in runs]
    differ = [i for i in range(len(IDENTITY)) if len({v[i] for v in values}) > 1 and i not in leave_out]
    others = [[f"{option} {value}" for option, value in pairs if option not in IN_IDENTITY]
              for pairs in experiment_differences(runs)[0]]  # e.g. a batch size: never pooled unnamed
    labels = [", ".join([v[0]] + [v[i] or "?" for i in differ if i != 0] + more) for v, more in zip(values, others)]
    if not leave_out:
        labels = [f"{label} ({os.path.basename(run.path)})" if labels.count(label) > 1 else label
                  for run, label in zip(runs, labels)]
    common = [values[0][i] for i in range(len(IDENTITY))
              if i not in differ and i not in leave_out and values[0][i] is not None]
    return labels, common


def stopped_label(run):
    """" (diverged at iteration 1,234)" for a run that did not complete, else ""."""
    if run.status not in STOPPED:
        return ""
    return f" ({run.status} at iteration {len(run.tloss):,})"


def record_means(values, iters_per_record):
    """The mean of each complete record of per-iteration values."""
    n = len(values) // iters_per_record
    return np.asarray(values[:n * iters_per_record]).reshape(n, iters_per_record).mean(axis=1)


def choose_scale(scale, arrays):
    """``scale``, or for "auto": "log" when the finite positive values of
    ``arrays`` span more than a decade, else "linear"."""
    if scale != "auto":
        return scale
    values = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays] or [np.zeros(0)])
    values = values[np.isfinite(values) & (values > 0)]
    return "log" if len(values) and values.max() > 10 * values.min() else "linear"


class Panel:
    """One axis of the figure: curves collected first, drawn once its scale is known."""

    def __init__(self, ax, name, unit=""):
        self.ax, self.name, self.unit, self.curves = ax, name, unit, []

    def add(self, x, y, label, **style):
        self.curves.append((np.asarray(x, dtype=float), np.asarray(y, dtype=float), label, style))

    def draw(self, scale, say):
        """Draw the curves on a ``scale`` axis; points it cannot draw are
        marked on the bottom edge (log) and each is reported through ``say``."""
        from matplotlib.transforms import blended_transform_factory
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax = self.ax
        if scale == "log":
            ax.set_yscale("log", nonpositive="mask")
            ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_minor_formatter(NullFormatter())  # the 1-2-5 major ticks carry the labels
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{self.unit}"))
        ax.set_ylabel(f"{self.name} (%)" if self.unit == "%" else self.name)
        edge = blended_transform_factory(ax.transData, ax.transAxes)
        marked = 0
        for x, y, label, style in self.curves:
            ax.plot(x, y, label=label, **style)
            nonpositive = np.isfinite(y) & (y <= 0) if scale == "log" else np.zeros(len(y), bool)
            infinite = ~np.isfinite(y)
            if nonpositive.any():
                ax.plot(x[nonpositive], np.zeros(nonpositive.sum()), UNDRAWABLE_MARKER, color=style.get("color"),
                        transform=edge, clip_on=False, label="_undrawable")
                marked += nonpositive.sum()
                say(f"{label} {self.name}: {_points(nonpositive.sum())} at or below zero, which a log axis cannot "
                    f"draw; marked \u25bc on its bottom edge")
            if infinite.any():
                say(f"{label} {self.name}: {_points(infinite.sum())} not finite (NaN or infinite), not drawn")
        if marked:
            ax.text(0.01, 0.02, f"\u25bc {_points(marked)} at or below zero (not drawable on a log axis)",
                    transform=ax.transAxes, fontsize=7, va="bottom")


def _points(n):
    return f"{n} point" + ("" if n == 1 else "s")


def _figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, (loss_ax, err_ax) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100, sharex=True)
    for ax in (loss_ax, err_ax):
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no tick at iteration 2.5 of a short run
        ax.grid(True, alpha=0.3, which="both")
    return fig, Panel(loss_ax, "loss"), Panel(err_ax, "error rate", "%")


def _finish(fig, loss, error, path, scales, title, log_iter, say):
    loss.draw(choose_scale(scales[0], [c[1] for c in loss.curves]), say)
    error.draw(choose_scale(scales[1], [c[1] for c in error.curves]), say)
    if log_iter:  # iteration 0 (the untrained network) drops off a log axis
        error.ax.set_xscale("log", nonpositive="mask")
    error.ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return fig


def save_figure(fig, path):
    """Write ``fig`` to ``path`` atomically (its format from the extension),
    so a stopped or failed write leaves an earlier file whole."""
    from fxnn.files.atomic import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=os.path.splitext(path)[1][1:] or None)


def _title(runs, common, extra="", width=120):
    """The settings all runs share, then their data, each wrapped to ``width``
    characters (a figure's width at the title's size)."""
    sources = "; ".join(sorted({f"{r.dataset}, {r.data_source}" for r in runs}))
    lines = ([", ".join(common) + extra] if common or extra else []) + [sources]
    return "\n".join(textwrap.fill(line, width) for line in lines)


def _say_to_stderr(line):
    print(f"fxnn-plot: note: {line}", file=sys.stderr)


def plot_runs(runs, path, error_scale="auto", log_iter=False, loss_scale="auto", say=_say_to_stderr):
    """One training and one validation curve per run on each axis; returns
    the (closed) figure. ``say`` gets a line for each set of points that
    could not be drawn."""
    fig, loss, error = _figure()
    labels, common = identities(runs)
    for i, (run, label) in enumerate(zip(runs, labels)):
        color, label = f"C{i % 10}", label + stopped_label(run)
        train_iters = np.arange(1, len(run.tloss) // run.iters_per_record + 1) * run.iters_per_record
        for panel, train, valid, scale in ((loss, run.tloss, run.vloss, 1), (error, run.terate, run.verate, 100)):
            panel.add(run.record_iterations, scale * valid, f"{label} valid", color=color)
            panel.add(train_iters, scale * record_means(train, run.iters_per_record), f"{label} train",
                      color=color, linestyle="--", alpha=0.7)
            if run.status in STOPPED and len(valid):
                panel.add(run.record_iterations[-1:], scale * valid[-1:], "_stopped", color=color,
                          marker=STOPPED[run.status], markersize=9, linestyle="none")
    return _finish(fig, loss, error, path, (loss_scale, error_scale), _title(runs, common), log_iter, say)


def plot_bands(runs, path, error_scale="auto", log_iter=False, loss_scale="auto", say=_say_to_stderr):
    """Per group of runs that differ only in their seed: the mean validation
    curve over the seeds, with a band of one standard deviation; returns the
    (closed) figure."""
    fig, loss, error = _figure()
    labels, common = identities(runs, leave_out=(SEED,))
    groups = {}
    for run, label in zip(runs, labels):
        groups.setdefault(label, []).append(run)
    bands = []
    for i, (label, group) in enumerate(groups.items()):
        if len({len(r.verate) for r in group}) > 1 or len({r.iters_per_record for r in group}) > 1:
            raise RecordError(f"the runs of {label} have different record schedules "
                              f"({', '.join(r.path for r in group)}); plot them without --bands")
        iters = group[0].record_iterations
        for panel, values, scale in ((loss, [r.vloss for r in group], 1), (error, [r.verate for r in group], 100)):
            values = scale * np.asarray(values)
            mean = values.mean(axis=0)
            std = values.std(axis=0, ddof=1) if len(group) > 1 else np.zeros_like(mean)
            panel.add(iters, mean, f"{label}, {len(group)} seeds, valid", color=f"C{i % 10}")
            bands.append((panel.ax, iters, mean - std, mean + std, f"C{i % 10}"))
    for ax, iters, low, high, color in bands:
        ax.fill_between(iters, low, high, color=color, alpha=0.25, linewidth=0)
    return _finish(fig, loss, error, path, (loss_scale, error_scale),
                   _title(runs, common, " (band: one std over seeds)"), log_iter, say)


def image_path(text):
    """An argparse type: a file name whose extension is an image format
    matplotlib writes (png, pdf, svg, ...; none: PNG)."""
    from matplotlib.figure import Figure
    formats = Figure().canvas.get_supported_filetypes()
    extension = os.path.splitext(text)[1][1:].lower()
    if extension and extension not in formats:
        raise argparse.ArgumentTypeError(f"{text}: .{extension} is not an image format matplotlib writes; "
                                         f"end the name in one of {', '.join(sorted(formats))}")
    return text


def build_parser():
    p = argparse.ArgumentParser(prog="fxnn-plot", description=__doc__.split("\n\n")[0].replace("``", ""),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("records", nargs="+", help="record files written by fxnn.py")
    p.add_argument("-o", "--out", type=image_path, default="curves.png",
                   help="image to write, its format from the extension (png, pdf, svg, ...)")
    p.add_argument("--error-scale", choices=SCALES, default="auto",
                   help="error-rate axis; auto: logarithmic when the curves span more than a decade")
    p.add_argument("--loss-scale", choices=SCALES, default="auto",
                   help="loss axis; auto: logarithmic when the curves span more than a decade")
    p.add_argument("--log-error", action="store_const", const="log", dest="error_scale", default=argparse.SUPPRESS,
                   help="the same as --error-scale log")
    p.add_argument("--log-iter", action="store_true", help="logarithmic iteration axis")
    p.add_argument("--bands", action="store_true",
                   help="one mean validation curve per group of seeds, with a one-std band")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        check_outputs([args.out], args.records)
        runs, notes = distinct_runs([load_run(path) for path in args.records], by_experiment=args.bands)
        for note in notes:
            print(note, file=sys.stderr)
        draw = plot_bands if args.bands else plot_runs
        draw(runs, args.out, args.error_scale, args.log_iter, args.loss_scale)
    except (RecordError, OSError) as e:
        print(f"fxnn-plot: error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {args.out}")
    return 0


def cli():
    from fxnn.files.signals import stoppable
    sys.exit(stoppable("plot", main)())  # SIGTERM or SIGHUP: no temporary left, one line


if __name__ == "__main__":
    cli()
