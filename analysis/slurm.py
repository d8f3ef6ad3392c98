"""A sweep on Slurm: its Dask workers are batch jobs that the sweep submits
itself (``fxnn-sweep --slurm``), through dask-jobqueue's ``SLURMCluster``.

Each job is one Dask worker that takes one run at a time, with
``--cpus-per-run`` CPUs, ``--gpus-per-run`` GPUs (``--gres=gpu:N``) and
``--mem`` memory; the sweep keeps as many jobs queued or running as it has
runs left (at most ``--max-jobs``), hands a job back as soon as no run is
left for it, and cancels every job when it ends or is stopped. A job that is
cancelled, preempted or reaches its time limit takes its run with it; the
run is retried, resuming from its checkpoint, in another job, and a new job
is submitted in its place. The jobs run this interpreter (``sys.executable``)
with the fxnn this sweep imported first on PYTHONPATH, so the login node and
the compute nodes must share the install's path (as the output folder's).

Before anything is submitted, ``sbatch --test-only`` checks the job script
(partition, account, time, GRES), and the wait for the first job to start is
bounded (``--job-start-timeout``): what goes wrong is one line (a
:class:`~.cluster.SweepError`) naming the cause.
"""
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from .cluster import SweepError, distributed

INSTALL = 'python3 -m pip install -e ".[cluster]"  (or: python3 -m pip install dask-jobqueue)'
SLURM_FLAGS = ("partition", "time", "cpus_per_run", "mem", "account", "sbatch", "max_jobs", "interface",
               "job_start_timeout", "print_job_script")
LOGS = "slurm"  # the jobs' own logs: OUT/slurm/fxnn-sweep-JOBID.out and .err


def add_flags(p):
    g = p.add_argument_group("on Slurm (--slurm: the sweep submits its workers as batch jobs, one run per job)")
    g.add_argument("--slurm", action="store_true",
                   help="run on Slurm: submit the workers with sbatch (dask-jobqueue), as many jobs as runs left "
                        "(at most --max-jobs), and cancel them when the sweep ends; run it on the login node")
    g.add_argument("--partition", help="Slurm partition of the jobs (#SBATCH -p; default: Slurm's)")
    g.add_argument("--time", help="each job's time limit, e.g. 24:00:00 (#SBATCH -t; default: the partition's); a "
                                  "run cut off by it resumes from its checkpoint in a new job")
    g.add_argument("--cpus-per-run", type=int, default=None,
                   help="CPUs of each job, the threads of its run (#SBATCH --cpus-per-task; default 1)")
    g.add_argument("--mem", help="memory of each job, e.g. 16G (#SBATCH --mem; default: Slurm's)")
    g.add_argument("--account", help="account charged for the jobs (#SBATCH -A)")
    g.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="one more #SBATCH line, e.g. --sbatch=--qos=long --sbatch='--constraint=a100' "
                        "(repeatable)")
    g.add_argument("--max-jobs", type=int, default=None,
                   help="jobs queued or running at a time (default: one per run left)")
    g.add_argument("--interface", default=None,
                   help="network interface the sweep and its workers talk over, e.g. ib0 (default: "
                        "dask-jobqueue's; ~/.config/dask/jobqueue.yaml applies)")
    g.add_argument("--job-start-timeout", type=float, default=900.0,
                   help="seconds to wait for the first job to start before giving up with Slurm's reason")
    g.add_argument("--print-job-script", action="store_true",
                   help="print the batch script the flags make and exit, submitting nothing")


def check_flags(p, args):
    """Refuses Slurm flags without --slurm and flags that contradict it."""
    given = [f for f in SLURM_FLAGS if getattr(args, f) not in (None, [], False, 900.0)]
    if not args.slurm and given:
        p.error(f"--{given[0].replace('_', '-')} is for Slurm: add --slurm")
    if args.slurm and args.scheduler:
        p.error("--slurm starts its own workers; --scheduler is for a Dask cluster started otherwise")
    if args.slurm and args.jobs is not None:
        p.error("--jobs is for this machine; on Slurm each job takes one run (--max-jobs limits the jobs)")
    for flag in ("cpus_per_run", "max_jobs"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if args.job_start_timeout <= 0:
        p.error("--job-start-timeout must be positive")


def jobqueue():
    """dask_jobqueue, or a SweepError saying how to install it."""
    distributed()
    # importing dask_jobqueue makes Ctrl-C exit at once (its runner module's SIGINT handler); the
    # sweep's own handlers stay, so that Ctrl-C stops the runs and they save
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        import dask_jobqueue
    except ImportError:
        raise SweepError(f"--slurm submits the workers with dask-jobqueue, which is not installed; "
                         f"install it with {INSTALL}") from None
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)
    return dask_jobqueue


def job_options(args, out_dir):
    """SLURMCluster's keywords for the flags: one worker of one thread per job
    (one run at a time), this interpreter, this fxnn."""
    import fxnn
    home = os.path.dirname(os.path.dirname(os.path.abspath(fxnn.__file__)))
    cpus, gpus = args.cpus_per_run or 1, args.gpus_per_run
    extra = ([f"--gres=gpu:{gpus}"] if gpus else []) + [s if s.startswith("-") else f"--{s}" for s in args.sbatch]
    skip = (["--mem"] if not args.mem else []) + (["-t "] if not args.time else [])
    return dict(
        cores=1, processes=1, nanny=False,
        # the worker's own memory limit (the run is a process of its own, held to --mem by Slurm);
        # without --mem dask-jobqueue still needs a size: none (the later --memory-limit 0 wins)
        memory=args.mem or "1GiB",
        job_mem=args.mem, job_cpu=cpus, queue=args.partition, account=args.account, walltime=args.time,
        job_extra_directives=extra, job_directives_skip=skip,
        worker_extra_args=(["--resources", f"GPU={gpus}"] if gpus else [])
        + ([] if args.mem else ["--memory-limit", "0"]),
        python=sys.executable, job_name="fxnn-sweep", log_directory=os.path.join(out_dir, LOGS),
        job_script_prologue=[f"export PYTHONPATH={shlex.quote(home)}${{PYTHONPATH:+:$PYTHONPATH}}",
                             "export PYTHONSAFEPATH=1",  # no job folder's fxnn.py before the package
                             f"export OMP_NUM_THREADS={cpus} MKL_NUM_THREADS={cpus}"],
        interface=args.interface, scheduler_options={"dashboard_address": None},
    )


def make_cluster(args, out_dir):
    import dask
    dask_jobqueue = jobqueue()
    # a worker takes a run only when it has a free thread: never two on one job
    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        try:
            return dask_jobqueue.SLURMCluster(**job_options(args, out_dir))
        except (OSError, ValueError) as e:
            raise SweepError(f"--slurm: cannot start the sweep's Dask scheduler ({e}); check --interface") from None


def job_script(args, out_dir):
    """The batch script each worker job is submitted with (no folder is left
    behind: dask-jobqueue makes the logs' folder as it writes the script)."""
    logs = os.path.join(out_dir, LOGS)
    missing = [d for d in (out_dir, logs) if not os.path.isdir(d)]
    cluster = make_cluster(args, out_dir)
    try:
        return cluster.job_script()
    finally:
        cluster.close()
        for folder in reversed(missing):
            try:
                os.rmdir(folder)
            except OSError:
                pass


def _run(cmd, timeout=60):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SweepError(f"--slurm: '{' '.join(cmd[:2])} ...' did not answer in {timeout} s: is slurmctld up? "
                         f"(try: sinfo)") from None


def _slurm_error(text):
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["no output"])[-1]


def check_slurm(script):
    """A SweepError unless sbatch is here and Slurm would accept ``script``
    (``sbatch --test-only``: partition, account, time, GRES; nothing is submitted)."""
    if not shutil.which("sbatch"):
        raise SweepError("--slurm: sbatch is not on PATH: run the sweep on the cluster's login node, where Slurm's "
                         "commands are (or load them, e.g. 'module load slurm')")
    with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="fxnn-sweep-job-") as f:
        f.write(script)
        f.flush()
        done = _run(["sbatch", "--test-only", f.name])
    if done.returncode != 0:
        raise SweepError(f"--slurm: Slurm refuses the workers' job ({_slurm_error(done.stderr + done.stdout)}); "
                         f"fix the flags (--partition, --account, --time, --gpus-per-run, --sbatch; "
                         f"sinfo lists the partitions), see the script with --print-job-script")


class SlurmWorkers:
    """The sweep's batch jobs: submitted, kept at the number of runs left,
    replaced when one ends, cancelled at the end (``close``)."""

    def __init__(self, args, out_dir, say):
        self.args, self.out_dir, self.say = args, out_dir, say
        os.makedirs(os.path.join(out_dir, LOGS), exist_ok=True)
        self.cluster = make_cluster(args, out_dir)
        self.client = distributed().Client(self.cluster)
        self.last_check, self.last_problem = 0.0, None

    @property
    def logs(self):
        return os.path.join(self.out_dir, LOGS)

    def job_ids(self):
        return {name: job.job_id for name, job in list(self.cluster.workers.items()) if getattr(job, "job_id", None)}

    def _submit(self, n):
        self.cluster.scale(jobs=n)
        self._settle()

    def _settle(self):
        try:
            self.cluster.sync(self.cluster._correct_state)
        except RuntimeError as e:  # dask-jobqueue's: sbatch or scancel failed
            raise SweepError(f"--slurm: sbatch failed ({_slurm_error(str(e).split('stderr:')[-1])}); "
                             f"see the script with --print-job-script") from None

    def start(self, runs):
        """Submits the jobs for ``runs`` runs and waits (at most
        --job-start-timeout) for the first to start."""
        self._submit(self.target(runs))
        self.say(f"submitted {len(self.cluster.worker_spec)} Slurm job(s) ({self.describe()}); "
                 f"their logs go to {self.logs}")
        deadline = time.monotonic() + self.args.job_start_timeout
        while not self.client.nthreads():
            if time.monotonic() > deadline:
                raise SweepError(f"--slurm: no job started within {self.args.job_start_timeout:g} s "
                                 f"({self.why_waiting()}); raise --job-start-timeout for a busy queue, or fix the "
                                 f"flags (squeue -u $USER shows the jobs)")
            ended = self.ended_early()
            if ended:
                raise SweepError(f"--slurm: the worker job ended before its worker started ({ended}); "
                                 f"the jobs run {sys.executable}: the compute nodes need this same install")
            time.sleep(1.0)

    def describe(self):
        a = self.args
        parts = [f"{a.cpus_per_run or 1} CPU(s)"] + ([f"{a.gpus_per_run} GPU(s)"] if a.gpus_per_run else []) + \
            ([f"{a.mem} memory"] if a.mem else []) + ([f"partition {a.partition}"] if a.partition else []) + \
            ([f"time {a.time}"] if a.time else [])
        return ", ".join(parts)

    def target(self, runs):
        return max(0, min(runs, self.args.max_jobs or runs))

    def squeue(self):
        """{job id: (state, reason)} of this sweep's jobs still in Slurm's queue."""
        ids = sorted(set(self.job_ids().values()))
        if not ids:
            return {}
        done = _run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i %T %r"], timeout=30)
        jobs = {}
        for line in done.stdout.splitlines():
            parts = line.split(None, 2)
            if len(parts) >= 2:
                jobs[parts[0]] = (parts[1], parts[2] if len(parts) > 2 else "")
        return jobs

    def why_waiting(self):
        queued = self.squeue()
        if not queued:
            return "no job in squeue"
        states = sorted({f"{state}, reason {reason}" for state, reason in queued.values()})
        return f"{len(queued)} job(s) {'; '.join(states)}"

    def ended_early(self):
        """For a job that left the queue with no worker ever connected: its
        log's last line."""
        ids = self.job_ids()
        if not ids:
            return ""
        queued = self.squeue()
        for job_id in ids.values():
            if job_id not in queued:
                err = os.path.join(self.logs, f"fxnn-sweep-{job_id}.err")
                try:
                    with open(err, errors="replace") as f:
                        lines = [line.strip() for line in f if line.strip()]
                except OSError:
                    lines = []
                return f"job {job_id}; {err}: {lines[-1] if lines else 'empty'}"
        return ""

    def adjust(self, runs_left):
        """Called as the sweep goes: hands back the jobs no run is left for
        (idle ones, and queued ones first), replaces jobs that left Slurm's
        queue (cancelled, timed out), and submits new ones up to the runs left.
        Slurm failing meanwhile (sbatch refused, slurmctld not answering) is a
        line, and tried again later: the runs going on go on."""
        now = time.monotonic()
        if now - self.last_check < 5.0:
            return
        self.last_check = now
        try:
            self._adjust(self.target(runs_left))
        except SweepError as e:
            if str(e) != self.last_problem:
                self.say(f"Slurm: {e}; trying again every 5 s")
            self.last_problem = str(e)
        else:
            self.last_problem = None

    def _adjust(self, target):
        connected = {info["name"]: address for address, info in self.cluster.scheduler_info["workers"].items()}
        processing = self.client.processing()
        busy = {name for name, address in connected.items() if processing.get(address)}
        queued = self.squeue()
        gone = [name for name, job_id in self.job_ids().items()
                if job_id not in queued and name in self.cluster.worker_spec]
        drop = gone[:]
        names = [n for n in self.cluster.worker_spec if n not in drop]
        surplus = len(names) - target
        for name in [n for n in names if n not in connected] + [n for n in names if n in connected and n not in busy]:
            if surplus <= 0:
                break
            drop.append(name)
            surplus -= 1
        if drop:
            self.cluster.sync(self.cluster.scale_down, drop)
        if len(self.cluster.worker_spec) < target:
            self._submit(target)

    def close(self):
        """Cancels every job (scancel) and stops the scheduler."""
        try:
            self.client.close()
        finally:
            self.cluster.close()
