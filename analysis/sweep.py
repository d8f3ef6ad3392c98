"""Seed sweeps: run a set of models over several seeds in parallel processes,
then summarise them (see :mod:`analysis.summary`).

``python3 -m analysis.sweep -m fxnn cnn --seeds 1 2 3 -o sweeps/mnist -- --no-download``
runs ``fxnn.py -m MODEL --seed S -o sweeps/mnist/MODEL-seedS.mat`` for every
pair, with the flags after ``--`` added to each, as many at a time as the
machine has cores (each with its share of the threads), and writes each run's
console output beside its record (``.log``). Rerunning the same command skips
the finished runs and resumes interrupted ones, so a sweep stopped by Ctrl-C,
a crash or a reboot goes on where it was. At the end it prints the summary and
writes ``summary.csv`` and ``summary.png`` in the output folder.
"""
import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from .records import RecordError, load_run
from .summary import add_summary_flags, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FXNN = os.path.join(ROOT, "fxnn.py")
SET_BY_SWEEP = ("-m", "--model", "--seed", "-o", "--out", "--resume", "--force")


@dataclass
class Job:
    model: str
    seed: int
    record: str

    @property
    def name(self):
        return f"{self.model} seed {self.seed}"

    @property
    def log(self):
        return os.path.splitext(self.record)[0] + ".log"

    @property
    def state(self):
        """"done", "resume" (an interrupted run left a checkpoint) or "new"."""
        from training import checkpoint
        if checkpoint.exists(self.record + ".run"):
            return "resume"
        return "done" if os.path.exists(self.record) else "new"

    def command(self, fxnn_flags):
        cmd = [sys.executable, FXNN, "-m", self.model, "--seed", str(self.seed), "-o", self.record]
        return cmd + fxnn_flags + (["--resume"] if self.state == "resume" else [])


def plan(models, seeds, out_dir):
    return [Job(m, s, os.path.join(out_dir, f"{m}-seed{s}.mat")) for m in models for s in seeds]


def last_line(path, prefix="Iter "):
    """The last line of a log starting with ``prefix`` (or any last line)."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    marked = [line for line in lines if line.startswith(prefix)]
    return (marked or lines or [""])[-1]


def progress(line):
    """'Iter 00300/10000 valid 9.54%' from a console line, or the line itself."""
    if line.startswith("Iter ") and "valid loss|erate" in line:
        return f"{line[:16]} valid {line.rsplit('|', 1)[1].strip()}"
    return line[:40]


def _minutes(seconds):
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def run_jobs(jobs, fxnn_flags, parallel, threads, status_every=60.0, say=print):
    """Run ``jobs`` ``parallel`` at a time; returns the failed ones. The
    children run in sessions of their own, so a terminal's Ctrl-C reaches
    only the sweep, which passes it on to each child exactly once (a second
    one could cut a child's final save short) and waits for them to save."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    pending, running, failed, finished = list(jobs), {}, [], 0
    last_status = time.monotonic()
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                verb = "resuming" if job.state == "resume" else "starting"
                with open(job.log, "a") as log:
                    proc = subprocess.Popen(job.command(fxnn_flags), stdout=log, stderr=subprocess.STDOUT,
                                            env=env, cwd=os.getcwd(), start_new_session=True)
                running[job.name] = (job, proc, time.monotonic())
                say(f"{verb} {job.name} ({threads} threads): log {job.log}")
            time.sleep(0.5)
            for name, (job, proc, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                finished += 1
                took = _minutes(time.monotonic() - started)
                if proc.returncode == 0:
                    say(f"[{finished}/{len(jobs)}] {name} done in {took}: {last_line(job.log)}")
                else:
                    failed.append(job)
                    say(f"[{finished}/{len(jobs)}] {name} FAILED (exit {proc.returncode}) after {took}: "
                        f"{last_line(job.log, 'fxnn: error')}")
            if running and time.monotonic() - last_status >= status_every:
                last_status = time.monotonic()
                say("  ".join(f"{name}: {progress(last_line(job.log))}" for name, (job, _, _) in running.items()))
    except KeyboardInterrupt:
        say("Interrupted: waiting for the running experiments to save their records ...")
        for job, proc, _ in running.values():
            proc.send_signal(signal.SIGINT)
        for job, proc, _ in running.values():
            proc.wait()
        raise
    return failed


def build_parser():
    p = argparse.ArgumentParser(prog="python3 -m analysis.sweep",
                                description=__doc__.split("\n\n")[1].replace("``", ""),
                                usage="%(prog)s -m MODEL [MODEL ...] --seeds S [S ...] -o DIR [options] "
                                      "[-- FXNN_FLAGS ...]",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-m", "--models", nargs="+", required=True, help="models to run (as fxnn.py -m)")
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="seeds to run each model with")
    p.add_argument("-o", "--out-dir", required=True, help="folder for the records, logs and summary")
    p.add_argument("-j", "--jobs", type=int, default=None,
                   help="experiments at a time (default: as many as cores, at most the number of runs); "
                        "each gets cores/jobs threads")
    p.add_argument("--status-every", type=float, default=60.0, help="seconds between progress lines")
    add_summary_flags(p)
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    fxnn_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    p = build_parser()
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    clash = [f for f in fxnn_flags if f.split("=")[0] in SET_BY_SWEEP]
    if clash:
        p.error(f"the sweep sets {', '.join(clash)} itself; leave it out of the flags after --")
    if args.jobs is not None and args.jobs < 1:
        p.error("--jobs must be at least 1")
    import fxnn
    for model in args.models:  # refuse bad flags before starting anything
        fxnn.build_parser().parse_args(["-m", model] + fxnn_flags)

    os.makedirs(args.out_dir, exist_ok=True)
    jobs = plan(args.models, args.seeds, args.out_dir)
    todo = [job for job in jobs if job.state != "done"]
    cores = os.cpu_count() or 1
    parallel = min(args.jobs or cores, max(len(todo), 1))
    threads = max(1, cores // parallel)
    print(f"{len(jobs)} runs in {args.out_dir}: {len(jobs) - len(todo)} already done, {len(todo)} to run, "
          f"{parallel} at a time on {cores} cores", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops the sweep as Ctrl-C does
    try:
        failed = run_jobs(todo, fxnn_flags, parallel, threads, args.status_every,
                          say=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("Stopped. Rerun the same command to resume the unfinished runs.", file=sys.stderr)
        return 130
    try:
        runs = [load_run(job.record) for job in jobs if os.path.exists(job.record)]
        if runs:
            report(runs, args.at, args.target, args.versus, os.path.join(args.out_dir, "summary.csv"),
                   os.path.join(args.out_dir, "summary.png"))
    except (RecordError, ValueError, OSError) as e:
        print(f"sweep: error: {e}", file=sys.stderr)
        return 2
    if failed:
        print(f"sweep: {len(failed)} run(s) failed: {', '.join(j.name for j in failed)}; "
              f"see their logs, fix and rerun the same command", file=sys.stderr)
        return 1
    return 0


def cli():
    sys.exit(main())


if __name__ == "__main__":
    cli()
