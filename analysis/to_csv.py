"""A record's curves as CSV, one row per training iteration.

``fxnn-csv rec-MNIST-fxnn.mat -o curves.csv`` (or
``fxnn-csv``; without ``-o``, to standard output) writes the columns
``record_file, iteration, tloss, terate, vloss, verate, learn_rate``: the
training loss and error rate of each iteration (``tloss``, ``terate``, as in
the record; iteration 1 is the first), the validation loss and error rate on
the rows of the iterations after which the test set was evaluated (``vloss``,
``verate``; iteration 0 is the untrained network), and the learn rate the
iteration trained with. Error rates are fractions, as in the record. A cell
with nothing to say is empty. Several records go into one file, one after the
other, told apart by ``record_file``.
"""
import argparse
import csv
import sys

from fxnn.files.atomic import atomic_path

from .records import RecordError, check_outputs, load_run

COLUMNS = ("record_file", "iteration", "tloss", "terate", "vloss", "verate", "learn_rate")


def learn_rates(run):
    """The learn rate of each record, ``lr * ld**(r / (nrec - 1))`` as the
    run's schedule has it; None where the record lacks the flags."""
    from fxnn.training.loop import Schedule

    try:
        flags = run.flags
        schedule = Schedule(int(flags["num_records"]), run.iters_per_record, 0, float(flags["learn_rate"]),
                            float(flags["learn_decay"]))
    except (KeyError, TypeError, ValueError):
        return None
    needed = min(schedule.num_records, -(-len(run.tloss) // run.iters_per_record))  # the records the curve reaches
    try:
        return [float(schedule.learn_rate_at(r)) for r in range(needed)]
    except (OverflowError, ZeroDivisionError):
        return None


def rows(run):
    """The CSV rows (dicts of COLUMNS) of one run."""
    rates = learn_rates(run)
    ipr = run.iters_per_record
    last = max(len(run.tloss), (len(run.verate) - 1) * ipr)
    for iteration in range(last + 1):
        row = dict.fromkeys(COLUMNS, "")
        row["record_file"], row["iteration"] = run.path, iteration
        if 1 <= iteration <= len(run.tloss):
            row["tloss"], row["terate"] = run.tloss[iteration - 1], run.terate[iteration - 1]
            record = (iteration - 1) // ipr
            if rates and record < len(rates):
                row["learn_rate"] = rates[record]
        if iteration % ipr == 0 and iteration // ipr < len(run.verate):
            row["vloss"], row["verate"] = run.vloss[iteration // ipr], run.verate[iteration // ipr]
        yield row


def write(runs, stream):
    writer = csv.DictWriter(stream, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for run in runs:
        writer.writerows({k: repr(float(v)) if isinstance(v, float) else v for k, v in row.items()}
                         for row in rows(run))


def build_parser():
    p = argparse.ArgumentParser(prog="fxnn-csv", description=__doc__.replace("``", ""),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("records", nargs="+", help="record files written by fxnn.py")
    p.add_argument("-o", "--out", default=None, help="CSV file to write (default, or -: standard output)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.out == "-":  # the usual name of standard output, not a file called "-"
        args.out = None
    try:
        check_outputs([args.out], args.records)
        runs = [load_run(path) for path in args.records]
        if args.out is None:
            write(runs, sys.stdout)
            return 0
        with atomic_path(args.out) as tmp, open(tmp, "w", newline="") as f:  # an earlier file stays whole
            write(runs, f)
    except (RecordError, OSError) as e:
        print(f"fxnn-csv: error: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {args.out}", file=sys.stderr)
    return 0


def cli():
    from fxnn.files.signals import stoppable
    sys.exit(stoppable("to_csv", main)())  # SIGTERM or SIGHUP: no temporary left, one line


if __name__ == "__main__":
    cli()
