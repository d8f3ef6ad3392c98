"""The Dask side of a sweep: the cluster its runs go to, the checks made
before any starts, and the task that runs one experiment on a worker.

A sweep is a set of Dask tasks, one per run, on Dask's distributed
scheduler: an in-process cluster sized to the machine by default, or an
existing one (``--scheduler``), started by hand with ``dask scheduler`` /
``dask worker`` or on a batch system by dask-jobqueue. Each task runs
the fxnn package (``python3 -m fxnn``) as a subprocess in its own session, with its share of the
worker's threads and, with ``--gpus-per-run``, its own GPUs. Records and
checkpoints live in the output folder, which every worker must see (a shared
filesystem), so a run whose worker died resumes from its checkpoint on the
worker Dask retries it on. Dask is the ``cluster`` extra; this module imports
it only when a sweep starts.
"""
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

from . import child

INSTALL = 'python3 -m pip install -e ".[cluster]"  (or: python3 -m pip install "dask[distributed]")'


class SweepError(Exception):
    """Why the sweep cannot start; the message is one line."""


def distributed():
    """The ``distributed`` package, or a SweepError saying how to install it."""
    try:
        import distributed as dd
    except ImportError:
        raise SweepError(f"the sweep runs on Dask, which is not installed; install it with {INSTALL}") from None
    return dd


def cores():
    """Cores this process may run on: in a Slurm job, at most the CPUs it was
    given (SLURM_CPUS_PER_TASK, which a node without CPU binding does not
    enforce)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    given = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return min(n, int(given)) if given.isdigit() and int(given) > 0 else n


def run_threads(slots):
    """Threads for one run: this machine's cores shared among the ``slots``
    runs its worker takes at a time (the worker's Dask threads)."""
    return max(1, cores() // max(1, slots))


def fxnn_program():
    """The command that starts one run: this interpreter running the fxnn
    package, ``python3 -m fxnn``; :func:`run_environment` makes it the same
    fxnn as this process's."""
    return [sys.executable, "-m", "fxnn"]


def run_environment(env):
    """``env`` for a run, so that its ``-m fxnn`` imports the fxnn this process
    imported (a checkout's, an editable or a plain install), whatever its
    working directory holds: the folder above that package first on
    PYTHONPATH, and (Python 3.11 on) no working directory put before it."""
    import fxnn
    home = os.path.dirname(os.path.dirname(os.path.abspath(fxnn.__file__)))
    path = os.pathsep.join(p for p in (home, env.get("PYTHONPATH")) if p)
    return dict(env, PYTHONPATH=path, PYTHONSAFEPATH="1")


def with_threads(cmd, env, threads):
    """The command and environment that give a run ``threads`` threads. The
    one place the sweep says how: fxnn's ``--threads`` (placed right after
    :func:`fxnn_program`, before the user's flags, so a ``--threads`` of
    theirs wins) and OpenMP's and MKL's variables for anything else the run
    starts."""
    at = len(fxnn_program())
    cmd = cmd[:at] + ["--threads", str(threads)] + cmd[at:]
    return cmd, dict(env, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))


def visible_gpus():
    """The GPUs this machine shows a run: CUDA_VISIBLE_DEVICES's list when
    set, else every device PyTorch counts (none without PyTorch)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip()]
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


class GpuSlots:
    """Which of a worker's GPUs are free. Dask's resources count GPUs, so at
    most as many GPU runs start as the worker has; this hands each its own
    devices. The worker's devices: its CUDA_VISIBLE_DEVICES list, else
    0 .. GPU-1 for its ``--resources GPU=N``."""

    def __init__(self):
        self._lock, self._free = threading.Lock(), {}

    def take(self, worker, n):
        if not n:
            return []
        with self._lock:
            if worker.address not in self._free:
                total = int(worker.state.total_resources.get("GPU", 0))
                listed = os.environ.get("CUDA_VISIBLE_DEVICES")
                devices = [d.strip() for d in listed.split(",")] if listed else [str(i) for i in range(total)]
                self._free[worker.address] = devices[:total]
            free = self._free[worker.address]
            if len(free) < n:
                raise SweepError(f"worker {worker.address} has {len(free)} free GPUs of the {n} a run needs; "
                                 f"its --resources GPU=N must not exceed its devices")
            taken, free[:] = free[:n], free[n:]
            return taken

    def give(self, worker, devices):
        if not devices:
            return
        with self._lock:
            self._free[worker.address].extend(devices)


GPUS = GpuSlots()


def start(scheduler, slots, gpus_per_run):
    """(client, close): a client of the cluster at ``scheduler``, or
    of an in-process cluster with one worker taking ``slots`` runs at a time
    (with the machine's GPUs as its GPU resources), and a function that
    closes what was started."""
    dd = distributed()
    if scheduler:
        try:
            client = dd.Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as e:
            raise SweepError(f"cannot reach the Dask scheduler at {scheduler} ({e}); start one with "
                             f"'dask scheduler', or leave out --scheduler to run on this machine") from None
        return client, client.close
    resources = None
    if gpus_per_run:
        gpus = visible_gpus()
        if len(gpus) < gpus_per_run:
            raise SweepError(f"--gpus-per-run {gpus_per_run}: this machine shows {len(gpus)} GPU(s)")
        resources = {"GPU": len(gpus)}
    cluster = dd.LocalCluster(n_workers=1, threads_per_worker=slots, processes=False, resources=resources,
                              dashboard_address=None)
    client = dd.Client(cluster)

    def close():
        client.close()
        cluster.close()
    return client, close


def wait_for_workers(client, say):
    """Until the cluster has a worker (a batch system may take a while)."""
    if client.nthreads():
        return
    say("no workers on the cluster yet; waiting for one (Ctrl-C to stop) ...")
    while not client.nthreads():
        time.sleep(1.0)


def _sees(path, token):
    """On a worker: why it cannot use the output folder, or None."""
    import socket
    host = socket.gethostname()
    try:
        with open(path) as f:
            if f.read() == token:
                if os.access(os.path.dirname(path), os.W_OK):
                    return None
                return f"on {host} it is not writable"
    except OSError:
        pass
    return f"on {host} it is not there (not the same filesystem)"


def check_workers(client, out_dir, gpus_per_run):
    """A SweepError unless every worker sees ``out_dir`` (writes a token
    there and has each worker read it back) and, for GPU runs, some worker
    has enough GPU resources."""
    token = uuid.uuid4().hex
    path = os.path.join(out_dir, f".sweep-check-{token}")
    with open(path, "w") as f:
        f.write(token)
    try:
        problems = {w: p for w, p in client.run(_sees, path, token).items() if p}
    finally:
        os.remove(path)
    if problems:
        worker, problem = next(iter(problems.items()))
        raise SweepError(f"{len(problems)} worker(s) cannot use the output folder {out_dir} ({worker}: {problem}); "
                         f"records and checkpoints must be on a filesystem every worker sees at the same path")
    if gpus_per_run:
        gpus = client.run(lambda dask_worker: dask_worker.state.total_resources.get("GPU", 0))
        if not any(n >= gpus_per_run for n in gpus.values()):
            raise SweepError(f"--gpus-per-run {gpus_per_run}: no worker has that many GPU resources; start GPU "
                             f"workers with 'dask worker SCHEDULER --resources GPU=N'")


STOPPED_FROM_OUTSIDE = (143, -signal.SIGTERM, 128 + signal.SIGKILL, -signal.SIGKILL)  # fxnn exits 143 on SIGTERM


def _leaving(worker, within=10.0):
    """Whether ``worker`` is closing, or starts to within ``within`` seconds."""
    from distributed.core import Status
    deadline = time.monotonic() + within
    while True:
        if worker.status in (Status.closing, Status.closing_gracefully, Status.closed, Status.failed):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def run_job(job, fxnn_flags, cwd, stop_name, topic, gpus_per_run):
    """The Dask task of one run, on a worker: runs ``job`` (resuming it if it
    left a checkpoint), logging a start event under ``topic``; when the
    Event ``stop_name`` is set it passes a Ctrl-C to the run and waits for
    it to save. Returns {"code", "where", "seconds"}; code None: not started
    because the sweep was stopped. A run stopped from outside (SIGTERM or
    SIGKILL) while its worker closes, as when a batch system ends the
    worker's job, is handed back to the scheduler (Dask's Reschedule) to
    resume on another worker."""
    dd = distributed()
    worker = dd.get_worker()
    where = f"Slurm job {os.environ['SLURM_JOB_ID']}" if os.environ.get("SLURM_JOB_ID") else str(worker.name)
    stop = dd.Event(stop_name)
    if stop.is_set():
        return {"code": None, "where": where, "seconds": 0.0}
    if not os.path.isdir(os.path.dirname(job.record)):
        raise SweepError(f"worker {where} cannot see the output folder {os.path.dirname(job.record)}")
    if job.state == "done":  # a retry of a run that ended on a worker lost before it could say so
        return {"code": 0, "where": where, "seconds": 0.0}
    devices = GPUS.take(worker, gpus_per_run)
    try:
        threads = run_threads(worker.state.nthreads)
        verb = "resuming" if job.state == "resume" else "starting"
        cmd, env = with_threads(job.command(fxnn_flags), run_environment(os.environ), threads)
        if gpus_per_run:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        worker.log_event(topic, {"name": job.name, "verb": verb, "where": where, "threads": threads,
                                 "gpus": ",".join(devices)})
        started = time.monotonic()
        with open(job.log, "a") as log:
            proc = subprocess.Popen(child.guarded(cmd), stdout=log, stderr=subprocess.STDOUT, env=env,
                                    cwd=cwd if os.path.isdir(cwd) else os.path.dirname(job.record),
                                    start_new_session=True)
        while proc.poll() is None:
            if stop.wait(timeout=1.0):
                proc.send_signal(signal.SIGINT)  # once: a second could cut the run's final save short
                proc.wait()
        if proc.returncode in STOPPED_FROM_OUTSIDE and not stop.is_set() and _leaving(worker):
            # a batch system stopping the job (scancel, time limit, preemption) signals the run and its
            # worker alike: the run saves if it gets to, and resumes from its checkpoint on another worker
            raise dd.Reschedule()
        return {"code": proc.returncode, "where": where, "seconds": time.monotonic() - started}
    finally:
        GPUS.give(worker, devices)
