"""Seed sweeps: run a set of models over several seeds in parallel processes,
on this machine or a Dask cluster, then summarise them (see
:mod:`fxnn.analysis.summary`).

``fxnn-sweep -m fxnn cnn --seeds 1 2 3 -o sweeps/mnist -- --no-download``
runs ``python3 -m fxnn -m MODEL --seed S -o sweeps/mnist/MODEL-seedS.mat`` (the
fxnn package this sweep runs from, as ``fxnn.py`` would) for every
pair, with the flags after ``--`` added to each, as many at a time as the
machine has cores (each with its share of the threads), or on the Dask
cluster at ``--scheduler`` (whose workers must all see the output folder),
or on Slurm (``--slurm``: the sweep submits its workers as batch jobs, see
:mod:`fxnn.analysis.slurm`), and writes each run's console output beside its
record (``.log``). Rerunning
the same command skips the finished runs and resumes interrupted ones, so a
sweep stopped by Ctrl-C, a crash, a reboot or a lost worker goes on where it
was. At the end it prints the summary and writes ``summary.csv`` and
``summary.png`` in the output folder. Every run's flags are checked by
fxnn's own parser before any starts; a repeated seed or model runs once;
the output folder is locked (``sweep.lock``), so a second sweep into it is
refused while the first runs.

How the runs are spread is :mod:`fxnn.analysis.cluster`'s (Dask, the ``cluster``
extra); what is printed and when is this module's.
"""
import argparse
import errno
import os
import queue
import signal
import sys
import time
import uuid
from dataclasses import dataclass

from fxnn.files.nofollow import UnsafePath
from fxnn.files.progress import duration
from fxnn.training import runlock

from . import slurm
from .cluster import SweepError, cores, fxnn_program
from .records import RecordError, load_run
from .summary import add_summary_flags, report

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
        from fxnn.training import checkpoint
        if checkpoint.exists(self.record + ".run"):
            return "resume"
        return "done" if os.path.exists(self.record) else "new"

    def command(self, fxnn_flags):
        cmd = fxnn_program() + ["-m", self.model, "--seed", str(self.seed), "-o", self.record]
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


class Watch:
    """What the sweep prints as its runs go: a line as each starts (from the
    workers' start events) and ends, and the progress of the running ones
    every ``status_every`` seconds, read from their logs."""

    def __init__(self, total, remote, status_every, say):
        self.total, self.remote, self.status_every, self.say = total, remote, status_every, say
        self.events, self.running, self.finished = queue.Queue(), {}, 0
        self.last_status, self.stopping = time.monotonic(), False
        self.start = time.monotonic()

    def left(self):
        """'; about 40 min left' for the runs not yet ended, at the rate the
        sweep has ended runs so far (its parallelism included), or ''."""
        if not self.finished or self.finished >= self.total:
            return ""
        return f"; {duration((time.monotonic() - self.start) / self.finished * (self.total - self.finished))} left"

    def started(self, event):  # called by Dask's client thread
        self.events.put(event[1])

    def poll(self, jobs_by_name):
        while not self.events.empty():
            e = self.events.get()
            self.running[e["name"]] = jobs_by_name[e["name"]]
            on = f" on {e['where']}" if self.remote else ""
            gpus = f", GPU {e['gpus']}" if e["gpus"] else ""
            self.say(f"{e['verb']} {e['name']}{on} ({e['threads']} threads{gpus}): log {jobs_by_name[e['name']].log}")
        if self.running and time.monotonic() - self.last_status >= self.status_every:
            self.last_status = time.monotonic()
            self.say("  ".join(f"{name}: {progress(last_line(job.log))}" for name, job in self.running.items()))

    def ended(self, job, outcome, error=None):
        """Prints how ``job`` ended; returns whether it failed."""
        self.running.pop(job.name, None)
        if outcome is not None and outcome["code"] is None:
            return False  # the sweep was stopped before the run started
        self.finished += 1
        head = f"[{self.finished}/{self.total}] {job.name}"
        if error is not None:  # the task itself failed: its worker died too often, or cannot run it
            first = (str(error).strip().splitlines() or [""])[0]
            self.say(f"{head} FAILED on the cluster: {type(error).__name__}: {first}")
            return True
        took = _minutes(outcome["seconds"])
        if outcome["code"] == 0:
            self.say(f"{head} done in {took}{self.left()}: {last_line(job.log)}")
            return False
        if self.stopping and outcome["code"] in (130, 143):
            self.say(f"{head} stopped after {took}: {last_line(job.log, '')}")
            return False
        self.say(f"{head} FAILED (exit {outcome['code']}) after {took}: {last_line(job.log, 'fxnn: error')}")
        return True


def run_jobs(client, jobs, fxnn_flags, status_every=60.0, gpus_per_run=0, remote=False, say=print, tick=None):
    """Run ``jobs`` as Dask tasks on ``client``'s cluster; returns the failed
    ones. On Ctrl-C (KeyboardInterrupt) it sets the sweep's stop Event, which
    each running task passes on to its run exactly once (the runs are in
    sessions of their own, so a terminal's Ctrl-C reaches only the sweep),
    waits for every run to save its record and checkpoint (cancelling the
    tasks no worker has taken yet), and re-raises. ``tick(runs_left)``, if
    given, is called as the sweep goes (the Slurm jobs follow the runs left)."""
    from .cluster import distributed, run_job
    dd = distributed()
    name = uuid.uuid4().hex
    stop, topic = dd.Event(f"fxnn-sweep-stop-{name}", client=client), f"fxnn-sweep-{name}"
    watch = Watch(len(jobs), remote, status_every, say)
    client.subscribe_topic(topic, watch.started)
    by_name = {job.name: job for job in jobs}
    futures = {client.submit(run_job, job, fxnn_flags, os.getcwd(), stop.name, topic, gpus_per_run,
                             key=f"fxnn-{job.model}-seed{job.seed}-{name}",
                             resources={"GPU": gpus_per_run} if gpus_per_run else None): job for job in jobs}
    failed, pending = [], set(futures)
    try:
        while pending:
            time.sleep(0.5)
            watch.poll(by_name)
            done = {future for future in pending if future.done()}
            pending -= done
            failed += [futures[future] for future in done if _ended(watch, futures[future], future)]
            for future in done:  # let go of the results: a worker that leaves must not make Dask recompute them
                future.release()
            if tick is not None:
                tick(len(pending))
    except KeyboardInterrupt:
        say("Interrupted: waiting for the running experiments to save their records ...")
        watch.stopping = True
        stop.set()
        while True:  # a second Ctrl-C must not leave the runs unsaved (they die with the sweep)
            try:
                _wait_for_started(client, pending)
                break
            except KeyboardInterrupt:
                say("Still waiting for the running experiments to save their records ...")
        watch.poll(by_name)
        for future in pending:
            _ended(watch, futures[future], future)
        raise
    finally:
        client.unsubscribe_topic(topic)
    return failed


#: Scheduler states of a task no worker has started (None: the scheduler has none).
NOT_STARTED = ("released", "waiting", "queued", "no-worker", None)


def _wait_for_started(client, pending):
    """Until every task in ``pending`` has ended, cancelling those that no
    worker has taken (queued, or waiting for a worker that may never come).
    A task the scheduler holds as finished ("memory") while this client has
    not heard so yet is left alone: cancelling it would lose its outcome."""
    left = set(pending)
    while left:
        left = {f for f in left if not f.done()}
        if not left:
            return
        keys = {f.key for f in left}
        states = client.run_on_scheduler(_task_states, keys)
        waiting = [f for f in left if states.get(f.key) in NOT_STARTED]
        if waiting:
            client.cancel(waiting)
        time.sleep(0.5)


def _task_states(keys, dask_scheduler=None):
    return {k: ts.state for k in keys if (ts := dask_scheduler.tasks.get(k)) is not None}


def _ended(watch, job, future):
    if future.status == "cancelled":  # stopped before a worker took it
        return watch.ended(job, {"code": None})
    if future.status == "error":
        return watch.ended(job, None, future.exception())
    return watch.ended(job, future.result())


def run_sweep(args, head, todo, fxnn_flags, say):
    """Start or reach the cluster, say ``head`` with where the runs go, check
    the workers, run ``todo``; returns the failed jobs."""
    from .cluster import check_workers, start, visible_gpus, wait_for_workers
    if args.slurm:
        return run_on_slurm(args, head, todo, fxnn_flags, say)
    if args.scheduler:
        client, close = start(args.scheduler, None, args.gpus_per_run)
    else:
        gpu_slots = len(visible_gpus()) // args.gpus_per_run if args.gpus_per_run else len(todo)
        parallel = max(1, min(args.jobs or cores(), len(todo), gpu_slots))
        client, close = start(None, parallel, args.gpus_per_run)
    try:
        if args.scheduler:
            wait_for_workers(client, say)
            slots = client.nthreads()
            say(f"{head}, on the Dask cluster at {args.scheduler} ({len(slots)} workers, "
                f"{sum(slots.values())} runs at a time)")
        else:
            say(f"{head}, {parallel} at a time on {cores()} cores")
        check_workers(client, os.path.abspath(args.out_dir), args.gpus_per_run)
        return run_jobs(client, todo, fxnn_flags, args.status_every, args.gpus_per_run,
                        remote=bool(args.scheduler), say=say)
    finally:
        close()


def run_on_slurm(args, head, todo, fxnn_flags, say):
    """The sweep on Slurm: checks the job script with Slurm, submits a job per
    run left, waits (bounded) for one to start, checks the output folder from
    it, runs ``todo`` while the jobs follow the runs left, and cancels every
    job at the end, however it ends."""
    from .cluster import check_workers
    out_dir = os.path.abspath(args.out_dir)
    slurm.check_slurm(slurm.job_script(args, out_dir))
    workers = slurm.SlurmWorkers(args, out_dir, say)
    try:
        say(f"{head}, on Slurm: one job per run ({workers.describe()})")
        workers.start(len(todo))
        check_workers(workers.client, out_dir, args.gpus_per_run)
        return run_jobs(workers.client, todo, fxnn_flags, args.status_every, args.gpus_per_run, remote=True,
                        say=say, tick=workers.adjust)
    finally:
        workers.close()


def once(values, what):
    """``values`` with repeats dropped (a repeated seed is the same run, which
    must not count twice in the summary), said in a line when there were."""
    unique = list(dict.fromkeys(values))
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        print(f"fxnn-sweep: note: {what} {', '.join(repeated)} given more than once; each runs once", file=sys.stderr)
    return unique


def check_runs(jobs, fxnn_flags):
    """A SweepError (one line) unless fxnn's own parser accepts the command
    of every run: the runner's rules, not a copy of them."""
    import fxnn
    parser = fxnn.build_parser()
    for job in jobs:
        def refuse(message, job=job):
            raise SweepError(f"{job.name} would be refused by fxnn: {message}")
        parser.error = refuse
        parser.parse_args(job.command(fxnn_flags)[len(fxnn_program()):])


def lock_folder(out_dir):
    """Lock ``out_dir`` for this sweep (as a run locks its record, on
    ``sweep.lock``), so that two sweeps never run the same runs; one line
    if another holds it or the lock cannot be taken, else None."""
    try:
        runlock.lock(os.path.join(os.path.abspath(out_dir), "sweep.lock"), "the sweep's lock",
                     lambda holder: f"{out_dir} is in use by another fxnn-sweep ({holder}); wait for it to "
                                    f"end, or sweep into another folder with -o")
    except (runlock.LockHeld, UnsafePath) as e:
        return str(e)
    except OSError as e:
        if e.errno not in runlock.UNSUPPORTED:
            return f"cannot lock {out_dir}: {e.strerror or e}"
        print(f"fxnn-sweep: warning: the filesystem of {out_dir} has no locks; make sure no other sweep writes there",
              file=sys.stderr)
    return None


def build_parser():
    p = argparse.ArgumentParser(prog="fxnn-sweep",
                                description=__doc__.split("\n\n")[1].replace("``", ""),
                                usage="%(prog)s -m MODEL [MODEL ...] --seeds S [S ...] -o DIR [options] "
                                      "[-- FXNN_FLAGS ...]",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-m", "--models", nargs="+", required=True, help="models to run (as fxnn.py -m)")
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="seeds to run each model with")
    p.add_argument("-o", "--out-dir", required=True, help="folder for the records, logs and summary")
    p.add_argument("-j", "--jobs", type=int, default=None,
                   help="on this machine: experiments at a time (default: as many as cores, at most the number "
                        "of runs, or of GPUs / --gpus-per-run); each gets cores/jobs threads")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on the Dask cluster whose scheduler is at ADDRESS (e.g. tcp://10.0.0.1:8786) "
                        "instead of this machine; every worker must see the output folder")
    p.add_argument("--gpus-per-run", type=int, default=0,
                   help="GPUs each run needs (Dask resource GPU); each run sees only its own "
                        "(CUDA_VISIBLE_DEVICES)")
    p.add_argument("--status-every", type=float, default=60.0, help="seconds between progress lines")
    slurm.add_flags(p)
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
    if args.gpus_per_run < 0:
        p.error("--gpus-per-run must be 0 or more")
    if args.versus is not None and args.versus not in args.models:
        p.error(f"--versus {args.versus} is not among the models run (-m {' '.join(args.models)})")
    if args.scheduler and args.jobs is not None:
        p.error("--jobs is for this machine; on a cluster each worker's --nthreads says how many runs it takes")
    slurm.check_flags(p, args)
    models, seeds = once(args.models, "model"), once(args.seeds, "seed")
    jobs = plan(models, seeds, os.path.abspath(args.out_dir))
    try:
        check_runs(jobs, fxnn_flags)  # refuse bad flags before starting anything
    except SweepError as e:
        print(f"fxnn-sweep: error: {e}", file=sys.stderr)
        return 2

    if args.print_job_script:
        try:
            print(slurm.job_script(args, os.path.abspath(args.out_dir)), end="")
        except SweepError as e:
            print(f"fxnn-sweep: error: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as e:
        why = "a file is in its place" if e.errno == errno.EEXIST else e.strerror.lower()
        print(f"fxnn-sweep: error: cannot make the output folder {args.out_dir}: {why}; give another -o",
              file=sys.stderr)
        return 2
    problem = lock_folder(args.out_dir)
    if problem:
        print(f"fxnn-sweep: error: {problem}", file=sys.stderr)
        return 2
    try:
        return sweep(args, jobs, fxnn_flags)
    finally:
        runlock.release_all()


def sweep(args, jobs, fxnn_flags):
    """Run the ``jobs`` left and summarise them all; returns the exit code."""
    todo = [job for job in jobs if job.state != "done"]
    say = lambda line: print(line, flush=True)  # noqa: E731
    for sig in (signal.SIGTERM, signal.SIGHUP):  # they stop the sweep as Ctrl-C does (a nohup's SIGHUP stays ignored)
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, signal.default_int_handler)
    try:
        head = f"{len(jobs)} runs in {args.out_dir}: {len(jobs) - len(todo)} already done, {len(todo)} to run"
        failed = run_sweep(args, head, todo, fxnn_flags, say) if todo else say(head) or []
    except SweepError as e:
        print(f"fxnn-sweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("Stopped. Rerun the same command to resume the unfinished runs.", file=sys.stderr)
        return 130
    try:
        runs = [load_run(job.record) for job in jobs if os.path.exists(job.record)]
        if runs:
            report(runs, args.at, args.target, args.versus, os.path.join(args.out_dir, "summary.csv"),
                   os.path.join(args.out_dir, "summary.png"), margin=args.margin)
    except (RecordError, ValueError, OSError) as e:
        print(f"fxnn-sweep: error: {e}", file=sys.stderr)
        return 2
    if failed:
        print(f"fxnn-sweep: {len(failed)} run(s) failed: {', '.join(j.name for j in failed)}; "
              f"see their logs, fix and rerun the same command", file=sys.stderr)
        return 1
    return 0


def cli():
    sys.exit(main())


if __name__ == "__main__":
    cli()
