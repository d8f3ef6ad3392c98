"""A summary over seeds of a set of record files, per model.

``fxnn-summary rec-*.mat --at 100 400 1600 --target 0.05``
prints, per model (and engine), the validation error at the chosen
iterations as mean and standard deviation over the seeds with a 95% t
interval of the mean, the iterations needed to reach the target error, and
each model's difference from the reference model (``--versus``, cnn by
default) with a 95% Welch confidence interval; ``--time`` adds the training
seconds to the target, wall and CPU. ``--against precision=fp32`` compares
each setting instead with the one that differs from it only in that flag,
and ``--paired`` matches the runs of a comparison by seed. Runs that differ
in anything but the seed (data, learn rate, optimizer, batch size,
records...) are never pooled: each setting is a row of its own, labelled by
what differs.
``--csv`` and ``--png`` write the same figures as a table and as curves with
bands.
"""
import argparse
import csv
import math
import re
import sys

import numpy as np

from .plot import image_path, plot_bands
from .records import RecordError, check_outputs, distinct_runs, group_by_label, load_run, option_flag, tag_experiments
from .stats import (Spread, clipped, equivalence, error_at, holm, iterations_to, mean_interval, paired_difference,
                    paired_equivalence, paired_p, seconds_to, t_factor, welch_difference, welch_p)

CSV_COLUMNS = ("measure", "label", "versus", "at", "mean", "std", "n", "missing", "ci_low", "ci_high", "p", "p_holm",
               "p_equiv", "p_equiv_holm")


#: The test-set errors of a --valid-split run (``at`` in the CSV): with the
#: final parameters, and with those of the record of lowest validation error.
TEST_AT = {"final": 0, "best": 1}
#: What is counted to the target (measure ``<name>_to``), with its column's heading: iterations,
#: and with ``--time`` the training seconds of each clock.
TO_TARGET = {"iters": "iters to", "wall": "wall s to", "cpu": "CPU s to"}


def to_target(run, target, what):
    """``run``'s iterations ("iters") or training seconds ("wall", "cpu") to
    ``target``, interpolated between records."""
    return iterations_to(run, target, interpolate=True) if what == "iters" else seconds_to(run, target, what)


def has_test(runs):
    """Whether ``runs`` evaluated the test set once at the end (--valid-split)."""
    return any(not math.isnan(r.test_erate[0]) for r in runs)


def default_at(runs):
    """Record iterations 1, 4, 16, ... and the last that all of ``runs``
    (one experiment) have, the original's table."""
    last = min(int(r.record_iterations[-1]) for r in runs)
    ipr = runs[0].iters_per_record
    at, k = [], 1
    while k * ipr < last:
        at.append(k * ipr)
        k *= 4
    return at + [last]


def shared_default_at(groups):
    """Per label, the iterations of every label's :func:`default_at` at which
    all of that label's runs have a record: the table's columns are the union
    of the defaults, and a label is summarised in each column it has a record
    for, so that "-" means no record there, not another label's spacing."""
    union = sorted(set().union(*(default_at(group) for group in groups.values())))
    return {label: [it for it in union if all(np.any(r.record_iterations == it) for r in group)]
            for label, group in groups.items()}


def reference(group, groups, versus):
    """The label of the ``versus`` group ``group`` is compared with: the one
    with the same settings (the same tag), else the only ``versus`` group,
    else the one sharing the most of its settings if only one does (each
    model at its own learn rate, in fp32 and in bf16: the same precision)."""
    refs = [label for label, g in groups.items() if g[0].model == versus]
    same = [label for label in refs if groups[label][0].tag == group[0].tag]
    if same or len(refs) < 2:
        return (same or refs or [None])[0]
    mine = dict(group[0].experiment)
    shared = {label: sum(mine.get(k) == v for k, v in groups[label][0].experiment) for label in refs}
    best = [label for label in refs if shared[label] == max(shared.values())]
    return best[0] if len(best) == 1 else None


def _setting(name, keys):
    """The experiment key (:attr:`~fxnn.analysis.records.Run.experiment`)
    that ``name`` names: the key itself (``learn_rate``, ``conv-lr-scale``)
    or fxnn.py's option (``-lr``, ``--precision``); None if none."""
    plain = name.lstrip("-").replace("-", "_")
    return next((k for k in keys if k == plain or option_flag(k) == name), None)


def _is(value, text):
    """Whether a recorded setting is the one written ``text`` on the command
    line (numbers by value: ``0.10`` is 0.1)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(text) == value
        except ValueError:
            return False
    return str(value) == text


def counterparts(groups, against):
    """{label: the label it is compared with} for ``against`` = (KEY, VALUE):
    each group whose KEY is not VALUE against the group with the same
    experiment but KEY = VALUE. ValueError, one line, for a KEY no run has,
    a VALUE none has, nothing to compare, or a group without a counterpart."""
    name, value = against
    flag = f"--against {name}={value}"
    experiments = {label: dict(group[0].experiment) for label, group in groups.items()}
    keys = list(next(iter(experiments.values())))
    key = _setting(name, keys)
    if key is None:
        raise ValueError(f"{flag}: no run has a setting {name}; name one of {', '.join(keys)}")
    refs = [label for label, e in experiments.items() if _is(e[key], value)]
    if not refs:
        have = sorted({str(e[key]) for e in experiments.values()})
        raise ValueError(f"{flag}: no run has {key} {value} (the runs have {', '.join(have)}); give the records of "
                         f"those runs or name a value they have")
    if len(refs) == len(experiments):
        raise ValueError(f"{flag}: every run has {key} {value}: there is nothing to compare with them")
    pairs = {}
    for label, e in experiments.items():
        if label in refs:
            continue
        same = [ref for ref in refs if all(experiments[ref][k] == v for k, v in e.items() if k != key)]
        if not same:
            raise ValueError(f"{flag}: {label} has no counterpart (no runs with {key} {value} and otherwise its "
                             f"settings); add their records or leave its records out")
        pairs[label] = same[0]
    return pairs


def comparisons(groups, versus, against=None):
    """{label: the label of the group it is compared with}: by ``against``
    (:func:`counterparts`) if given, else with the ``versus`` model
    (:func:`reference`)."""
    if against:
        return counterparts(groups, against)
    refs = {label: reference(group, groups, versus) for label, group in groups.items()}
    return {label: ref for label, ref in refs.items()
            if ref is not None and label != ref and groups[label][0].model != versus}


def matched(groups, label, ref):
    """The runs of groups ``label`` and ``ref`` of the seeds both have, in
    pairs (two lists in the order of the seeds); ValueError, one line, where
    they have none in common."""
    mine, theirs = ({r.seed: r for r in groups[name]} for name in (label, ref))
    seeds = sorted(mine.keys() & theirs.keys())
    if not seeds:
        raise ValueError(f"--paired: {label} (seeds {_seeds(mine)}) and {ref} (seeds {_seeds(theirs)}) have no "
                         f"seed in common; pair runs of the same seeds, or leave out --paired")
    return [mine[s] for s in seeds], [theirs[s] for s in seeds]


def pairing_notes(groups, compared):
    """A line per paired comparison whose groups do not have the same seeds,
    naming the seeds left out of the pairs."""
    notes = []
    for label, ref in compared.items():
        mine, theirs = ({r.seed for r in g} for g in (groups[label], groups[ref]))
        if mine != theirs:
            left = [f"{_seeds(a - b)} of {name}"
                    for a, b, name in ((mine, theirs, label), (theirs, mine, ref)) if a - b]
            notes.append(f"NOTE: {label} - {ref}: paired on the {len(mine & theirs)} seeds both have; left out: "
                         f"seed {'; seed '.join(left)}")
    return notes


def _seeds(seeds):
    return ", ".join(map(str, sorted(seeds)))


def _difference(measure, label, ref, at, a, b, level, margin, bound, paired=False):
    """A difference row: mean(a) - mean(b), its Welch interval (clipped to
    +-``bound`` when given), Welch's p and, with a ``margin``, the p of the
    two one-sided tests of equivalence within it; ``paired`` (a[i] and b[i]
    of one seed): the mean paired difference, the sd and number of the
    differences, and the paired t interval and tests instead."""
    if paired:
        d, p, eq = paired_difference(a, b, level), paired_p(a, b), paired_equivalence
        spread = dict(std=Spread.of(np.subtract(a, b)).std, n=len(a))
        measure = measure.replace("_diff", "_paired_diff")
    else:
        d, p, eq, spread = welch_difference(a, b, level), welch_p(a, b), equivalence, {}
    d = clipped(d, -bound, bound) if bound else d
    return dict(measure=measure, label=label, versus=ref, at=at, mean=d.diff, ci_low=d.low, ci_high=d.high, p=p,
                p_equiv=eq(a, b, margin).p if margin else "", **spread)


def summarize(runs, at, target, versus, level=0.95, margin=None, time=False, against=None, paired=False):
    """Rows (dicts with CSV_COLUMNS) of the summary of runs labelled by
    :func:`~fxnn.analysis.records.tag_experiments`: per label the error at each
    iteration in ``at`` (default: :func:`shared_default_at`) with the
    interval of its mean, and the iterations (``time``: also the wall and CPU
    training seconds) to ``target``, interpolated between records; per label
    other than ``versus`` the differences from its reference, each with Welch's p, Holm-adjusted over all the
    differences of the summary (``p_holm``), and with a ``margin`` (of error
    rate) the p of equivalence within it (two one-sided tests), also
    Holm-adjusted over the summary's (``p_equiv_holm``). ``against`` (KEY,
    VALUE) compares each label instead with its :func:`counterparts`;
    ``paired``: on the runs of the seeds both have, matched by seed."""
    groups = group_by_label(runs)
    counted = list(TO_TARGET) if time else ["iters"]
    at_of = {label: list(at) for label in groups} if at else shared_default_at(groups)
    rows = []
    for label, group in groups.items():
        for it in at_of[label]:
            values = [error_at(r, it) for r in group]
            s, ci = Spread.of(values), clipped(mean_interval(values, level), 0.0, 1.0)
            rows.append(dict(measure="verate", label=label, at=it, mean=s.mean, std=s.std, n=s.n, missing=s.missing,
                             ci_low=ci.low, ci_high=ci.high))
        for what in counted:
            s = Spread.of([to_target(r, target, what) for r in group])
            rows.append(dict(measure=f"{what}_to", label=label, at=target, mean=s.mean, std=s.std, n=s.n,
                             missing=s.missing))
        if has_test(group):
            for at, i in TEST_AT.items():
                values = [r.test_erate[i] for r in group]
                s, ci = Spread.of(values), clipped(mean_interval(values, level), 0.0, 1.0)
                rows.append(dict(measure="test_erate", label=label, at=at, mean=s.mean, std=s.std, n=s.n,
                                 missing=s.missing, ci_low=ci.low, ci_high=ci.high))
    for label, ref in comparisons(groups, versus, against).items():
        group, other = matched(groups, label, ref) if paired else (groups[label], groups[ref])
        for it in [it for it in at_of[label] if it in at_of[ref]]:
            rows.append(_difference("verate_diff", label, ref, it, [error_at(r, it) for r in group],
                                    [error_at(r, it) for r in other], level, margin, 1.0, paired))
        if has_test(group) and has_test(other):
            for at, i in TEST_AT.items():
                rows.append(_difference("test_erate_diff", label, ref, at, [r.test_erate[i] for r in group],
                                        [r.test_erate[i] for r in other], level, margin, 1.0, paired))
        for what in counted:
            a, b = ([to_target(r, target, what) for r in g] for g in (group, other))
            if not any(map(math.isnan, a + b)):
                rows.append(_difference(f"{what}_to_diff", label, ref, target, a, b, level, None, None, paired))
    for key in ("p", "p_equiv"):
        diffs = [row for row in rows if row.get(key, "") != ""]
        for row, adjusted in zip(diffs, holm([row[key] for row in diffs])):
            row[key + "_holm"] = adjusted
    return [{c: row.get(c, "") for c in CSV_COLUMNS} for row in rows]


def _pct(x):
    return "n/a" if math.isnan(x) else f"{100 * x:.2f}%"


def _interval(fmt, row):
    return "[n/a]" if math.isnan(row["ci_low"]) else f"[{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]"


def _cell(row):
    if row is None:
        return "-"
    m, measure = row["mean"], row["measure"]
    digits = 1 if measure.startswith(("wall", "cpu")) else 0  # seconds to a tenth, iterations whole
    fmt = _pct if measure.startswith(("verate", "test")) else (lambda x: "n/a" if math.isnan(x) else f"{x:.{digits}f}")
    if measure.endswith("_diff"):
        equiv = (f" eq={row['p_equiv']:.2g}/{row['p_equiv_holm']:.2g}"
                 if row["p_equiv"] != "" and not math.isnan(row["p_equiv"]) else "")
        p = "" if math.isnan(row["p_holm"]) else f" p={row['p_holm']:.2g}"
        return f"{fmt(m)} {_interval(fmt, row)}{p}{equiv}"
    text = fmt(m) + ("" if math.isnan(row["std"]) else f" ± {fmt(row['std'])}")
    if measure in ("verate", "test_erate") and not math.isnan(row["ci_low"]):
        text += f" {_interval(fmt, row)}"
    return text + (f" ({row['missing']} never)" if row["missing"] else "")


def _short(label):
    """A label without its engine: ``fxnn (torch) -lr 0.1`` -> ``fxnn -lr 0.1``."""
    return re.sub(r" \([^)]*\)", "", label, count=1)


def format_table(rows, at=None, target=0.05):
    """The summary as aligned text: one line per label, one per difference;
    a column per iteration any label is summarised at ("-" where a label has
    no record there)."""
    at = sorted({row["at"] for row in rows if row["measure"].startswith("verate")}) if at is None else at
    tests = [at for at in TEST_AT if any(row["measure"] == "test_erate" and row["at"] == at for row in rows)]
    counted = [what for what in TO_TARGET if what == "iters" or any(row["measure"] == f"{what}_to" for row in rows)]
    header = (["", "seeds"] + [f"@{it}" for it in at] + [f"{TO_TARGET[what]} {100 * target:g}%" for what in counted]
              + [f"test ({at})" for at in tests])
    lines, by_line = [header], {}
    for row in rows:
        key = (row["label"], row["versus"])
        measure = row["measure"]
        column = (row["at"] if measure.startswith("verate") else ("test", row["at"]) if measure.startswith("test")
                  else measure.split("_")[0])
        by_line.setdefault(key, {})[column] = row
    for (label, versus), cells in by_line.items():
        name = f"{_short(label)} - {_short(versus)}" if versus else label
        n = str(next(iter(cells.values()))["n"]) if versus else str(cells["iters"]["n"] + cells["iters"]["missing"])
        lines.append([name, n] + [_cell(cells.get(it)) for it in at]
                     + [_cell(cells[what]) if what in cells else "n/a" for what in counted]
                     + [_cell(cells.get(("test", t))) for t in tests])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
                     for line in lines)


def describe(runs, differ=()):
    """What the runs were trained on, which settings keep them apart, and
    which did not complete."""
    dataset = {r.data_source: r.dataset for r in runs}
    sources = [f"{dataset[source]}: {source}" for source in sorted(dataset)]  # numbered as the labels' "data N"
    lines = ["data: " + ("; ".join(f"data {i}: {source}" for i, source in enumerate(sources, 1))
                         if len(sources) > 1 else sources[0])]
    if differ:
        lines.append(f"NOTE: these runs differ in more than the seed ({', '.join(differ)}): each setting is summarised "
                     f"on its own row and is never pooled with the others")
    unfinished = [r.path for r in runs if r.status != "complete"]
    if unfinished:
        lines.append(f"WARNING: not complete: {', '.join(unfinished)}")
    return "\n".join(lines)


def seeds_note(rows, level=0.95):
    """A line on how wide the intervals are with 2 seeds, where a row has 2."""
    if not any(row["measure"] == "verate" and row["n"] == 2 for row in rows):
        return None
    return (f"NOTE: with 2 seeds a {100 * level:g}% interval of the mean reaches {t_factor(2, level):.1f} std either "
            f"side (Student's t with 1 degree of freedom); with 3 seeds {t_factor(3, level):.1f}, with 5 "
            f"{t_factor(5, level):.1f}: run more seeds for intervals that tell models apart")


def write_csv(rows, path):
    from fxnn.files.atomic import atomic_path
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def report(runs, at=None, target=0.05, versus=None, csv_path=None, png_path=None, out=None, margin=None,
           time=False, against=None, paired=False):
    """Print the summary of ``runs``; write the CSV and band plot if asked.
    ``versus``: the reference model (None: cnn, where there is one)."""
    if versus is not None and against is None and not any(run.model == versus for run in runs):
        raise ValueError(f"--versus {versus}: no record of that model among these "
                         f"(models: {', '.join(sorted({run.model for run in runs}))})")
    versus = versus or "cnn"
    out = out or sys.stdout
    runs, differ = tag_experiments(runs)
    rows = summarize(runs, at, target, versus, margin=margin, time=time, against=against, paired=paired)
    print(describe(runs, differ), file=out)
    if paired:
        groups = group_by_label(runs)
        for note in pairing_notes(groups, comparisons(groups, versus, against)):
            print(note, file=out)
    test = "the paired t test" if paired else "Welch's test"
    print("validation error, mean ± std over seeds [95% t interval of the mean]; differences "
          + ("paired by seed: mean of the per-seed differences with 95% paired t intervals (seeds: how many pairs)"
             if paired else "with 95% Welch intervals")
          + "; intervals clipped to what an error rate can be; iterations to the target interpolated between records",
          file=out)
    print(f"p: {test} of no difference, Holm-adjusted over the table's differences"
          + (f"; eq: p of equivalence within ±{_pct(margin)} ({'paired ' if paired else ''}two one-sided tests; "
             "unadjusted/Holm-adjusted; below 0.05: shown equivalent)" if margin else
             "; add --margin to test equivalence"), file=out)
    if time:
        print("wall s, CPU s: seconds of training to the target (this process's wall clock and CPU time, all its "
              "threads; validation and recording left out), interpolated between records", file=out)
    if any(row["measure"] == "test_erate" for row in rows):
        print("test: the test-set error once at the end (--valid-split), with the final parameters and with "
              "those of the record of lowest validation error", file=out)
    print(format_table(rows, at, target), file=out)
    note = seeds_note(rows)
    if note:
        print(note, file=out)
    if csv_path:
        write_csv(rows, csv_path)
        print(f"Wrote {csv_path}", file=out)
    if png_path:
        plot_bands(runs, png_path)
        print(f"Wrote {png_path}", file=out)
    return rows


def build_parser():
    p = argparse.ArgumentParser(prog="fxnn-summary",
                                description=__doc__.split("\n\n")[1].replace("``", ""),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("records", nargs="+", help="record files written by fxnn.py")
    add_summary_flags(p)
    p.add_argument("--time", action="store_true",
                   help="also the seconds of training to --target, wall and CPU (records' twall and tcpu), "
                        "with Welch intervals between models")
    p.add_argument("--against", type=_key_value, default=None, metavar="KEY=VALUE",
                   help="instead of --versus, compare each setting with the one that has the same settings but "
                        "KEY=VALUE, e.g. precision=fp32 (KEY: a flag's name, learn_rate, or option, -lr)")
    p.add_argument("--paired", action="store_true",
                   help="differences on runs matched by seed (the seeds both settings have): the mean per-seed "
                        "difference with a paired t interval, paired t test and (--margin) paired equivalence test")
    return p


def _key_value(text):
    key, sep, value = text.partition("=")
    if not (key and sep and value):
        raise argparse.ArgumentTypeError(f"give KEY=VALUE, e.g. precision=fp32; got {text!r}")
    return key, value


def error_rate(what, example):
    """An argparse type: an error rate strictly between 0 and 1, refused in one line naming ``what``."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not 0 < value < 1:
            raise argparse.ArgumentTypeError(f"{what} is an error rate in (0, 1), e.g. {example}; got {text}")
        return value
    return parse


def iteration(text):
    """An argparse type: an iteration count, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"an iteration is a whole number, 0 or more; got {text}")
    return int(text)


def add_summary_flags(p):
    p.add_argument("--at", type=iteration, nargs="+", default=None,
                   help="iterations at which to report the validation error (default, for each setting: "
                        "one record, then 4x apart, and the last)")
    p.add_argument("--target", type=error_rate("a target", "0.05 for 5%"), default=0.05, help="validation error rate to reach (0.05 = 5%%)")
    p.add_argument("--versus", default=None, help="model the others are compared with (default: cnn, where there is one)")
    p.add_argument("--csv", default=None, help="write the summary as CSV here")
    p.add_argument("--png", type=image_path, default=None, help="write validation curves with one-std bands here")
    p.add_argument("--margin", type=error_rate("a margin", "0.01 for 1 point"), default=None, metavar="M",
                   help="equivalence margin of error rate (0.01 = 1 point): each difference gets the p of two "
                        "one-sided tests that it lies within +-M; say 'level' only where that p is below 0.05")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        check_outputs([args.csv, args.png], args.records)
        runs, notes = distinct_runs([load_run(path) for path in args.records])
        for note in notes:
            print(note)
        report(runs, args.at, args.target, args.versus, args.csv, args.png, margin=args.margin, time=args.time,
               against=args.against, paired=args.paired)
    except (RecordError, ValueError, OSError) as e:
        print(f"fxnn-summary: error: {e}", file=sys.stderr)
        return 2
    return 0


def cli():
    from fxnn.files.signals import stoppable
    sys.exit(stoppable("summary", main)())  # SIGTERM or SIGHUP: no temporary left, one line


if __name__ == "__main__":
    cli()
