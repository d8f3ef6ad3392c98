"""A summary over seeds of a set of record files, per model.

``python3 -m analysis.summary rec-*.mat --at 100 400 1600 --target 0.05``
prints, per model (and engine), the validation error at the chosen
iterations as mean and standard deviation over the seeds, the iterations
needed to reach the target error, and each model's difference from the
reference model (``--versus``, cnn by default) with a 95% Welch confidence
interval. ``--csv`` and ``--png`` write the same figures as a table and as
curves with bands.
"""
import argparse
import csv
import math
import sys

from .records import RecordError, group_by_label, load_run
from .stats import Spread, error_at, iterations_to, welch_difference

CSV_COLUMNS = ("measure", "label", "versus", "at", "mean", "std", "n", "missing", "ci_low", "ci_high")


def default_at(runs):
    """Record iterations 1, 4, 16, ... and the last, the original's table."""
    last = min(int(r.record_iterations[-1]) for r in runs)
    ipr = runs[0].iters_per_record
    at, k = [], 1
    while k * ipr < last:
        at.append(k * ipr)
        k *= 4
    return at + [last]


def summarize(runs, at, target, versus, level=0.95):
    """Rows (dicts with CSV_COLUMNS) of the summary: per group the error at
    each iteration in ``at`` and the iterations to ``target``; per group other
    than ``versus`` the differences from it."""
    groups = group_by_label(runs)
    rows = []
    for label, group in groups.items():
        for it in at:
            s = Spread.of([error_at(r, it) for r in group])
            rows.append(dict(measure="verate", label=label, at=it, mean=s.mean, std=s.std, n=s.n, missing=s.missing))
        s = Spread.of([iterations_to(r, target) for r in group])
        rows.append(dict(measure="iters_to", label=label, at=target, mean=s.mean, std=s.std, n=s.n,
                         missing=s.missing))
    ref = next((label for label, group in groups.items() if group[0].model == versus), None)
    for label, group in groups.items():
        if ref is None or label == ref:
            continue
        for it in at:
            d = welch_difference([error_at(r, it) for r in group], [error_at(r, it) for r in groups[ref]], level)
            rows.append(dict(measure="verate_diff", label=label, versus=ref, at=it, mean=d.diff,
                             ci_low=d.low, ci_high=d.high))
        a, b = ([iterations_to(r, target) for r in g] for g in (group, groups[ref]))
        if not any(map(math.isnan, a + b)):
            d = welch_difference(a, b, level)
            rows.append(dict(measure="iters_to_diff", label=label, versus=ref, at=target, mean=d.diff,
                             ci_low=d.low, ci_high=d.high))
    return [{c: row.get(c, "") for c in CSV_COLUMNS} for row in rows]


def _pct(x):
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}%"


def _cell(row):
    m, measure = row["mean"], row["measure"]
    fmt = _pct if measure.startswith("verate") else (lambda x: "n/a" if math.isnan(x) else f"{x:.0f}")
    if measure.endswith("_diff"):
        if math.isnan(row["ci_low"]):
            return f"{fmt(m)} [n/a]"
        return f"{fmt(m)} [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]"
    text = fmt(m) + ("" if math.isnan(row["std"]) else f" ± {fmt(row['std'])}")
    return text + (f" ({row['missing']} never)" if row["missing"] else "")


def format_table(rows, at, target):
    """The summary as aligned text: one line per model, one per difference."""
    header = ["", "seeds"] + [f"@{it}" for it in at] + [f"iters to {100 * target:g}%"]
    lines, by_line = [header], {}
    for row in rows:
        key = (row["label"], row["versus"])
        by_line.setdefault(key, {})[row["at"] if row["measure"].startswith("verate") else "to"] = row
    for (label, versus), cells in by_line.items():
        name = f"{label.split(' (')[0]} - {versus.split(' (')[0]}" if versus else label
        n = "" if versus else str(cells[at[0]]["n"] + cells[at[0]]["missing"])
        lines.append([name, n] + [_cell(cells[it]) for it in at] + [_cell(cells["to"]) if "to" in cells else "n/a"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in lines)


def describe(runs):
    """One line on what the runs were trained on, flagging mixed sources."""
    sources = sorted({f"{r.dataset} from {r.data_source}" for r in runs})
    line = "data: " + "; ".join(sources)
    if len(sources) > 1:
        line += "  (WARNING: the runs used different data and are not comparable)"
    unfinished = [r.path for r in runs if r.status != "complete"]
    if unfinished:
        line += f"\nWARNING: not complete: {', '.join(unfinished)}"
    return line


def write_csv(rows, path):
    from data.atomic import atomic_path
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def report(runs, at=None, target=0.05, versus="cnn", csv_path=None, png_path=None, out=None):
    """Print the summary of ``runs``; write the CSV and band plot if asked."""
    out = out or sys.stdout
    at = at or default_at(runs)
    rows = summarize(runs, at, target, versus)
    print(describe(runs), file=out)
    print("validation error, mean ± std over seeds; differences with 95% Welch intervals", file=out)
    print(format_table(rows, at, target), file=out)
    if csv_path:
        write_csv(rows, csv_path)
        print(f"Wrote {csv_path}", file=out)
    if png_path:
        from .plot import plot_bands
        plot_bands(runs, png_path)
        print(f"Wrote {png_path}", file=out)
    return rows


def build_parser():
    p = argparse.ArgumentParser(prog="python3 -m analysis.summary",
                                description=__doc__.split("\n\n")[1].replace("``", ""),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("records", nargs="+", help="record files written by fxnn.py")
    add_summary_flags(p)
    return p


def add_summary_flags(p):
    p.add_argument("--at", type=int, nargs="+", default=None,
                   help="iterations at which to report the validation error (default: one record, "
                        "then 4x apart, and the last)")
    p.add_argument("--target", type=float, default=0.05, help="validation error rate to reach (0.05 = 5%%)")
    p.add_argument("--versus", default="cnn", help="model the others are compared with")
    p.add_argument("--csv", default=None, help="write the summary as CSV here")
    p.add_argument("--png", default=None, help="write validation curves with one-std bands here")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        runs = [load_run(path) for path in args.records]
        report(runs, args.at, args.target, args.versus, args.csv, args.png)
    except (RecordError, ValueError, OSError) as e:
        print(f"summary: error: {e}", file=sys.stderr)
        return 2
    return 0


def cli():
    sys.exit(main())


if __name__ == "__main__":
    cli()
