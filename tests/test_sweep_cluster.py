"""Sweeps on a real Dask cluster: a ``dask scheduler`` and ``dask worker``
processes on 127.0.0.1 started here (and always killed here), the sweep sent
to them with ``--scheduler``; the runs checked against the same runs made
locally with fxnn.py, and a worker killed mid-run."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fxnn.analysis.cluster import GpuSlots, SweepError
from fxnn.analysis.records import load_run
from conftest import ROOT

distributed = pytest.importorskip("distributed", reason='Dask is the cluster extra: pip install -e ".[cluster]"')
psutil = pytest.importorskip("psutil")  # a dependency of distributed

TINY = ["--engine", "torch", "--no-download", "--record-params", "none", "-ipr", "5"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A scheduler and named workers as processes of their own; ``close``
    kills every one, and the sweeps sent to them (the workers' runs die with
    their workers, see analysis/child.py)."""

    def __init__(self, tmp_path):
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        self.tmp, self.workers, self.procs = tmp_path, {}, []
        self.env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                        DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION="1.0")
        self._start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", self.address.rsplit(":", 1)[1],
                                  "--no-dashboard"])

    def _start(self, name, args, prefix=()):
        log = open(self.tmp / f"dask-{name}.log", "w")
        proc = subprocess.Popen(list(prefix) + [sys.executable, "-m", "dask"] + args, cwd=ROOT, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def add_worker(self, name, nthreads=1, prefix=(), extra=()):
        self.workers[name] = self._start(name, ["worker", self.address, "--name", name, "--nthreads", str(nthreads),
                                                "--no-nanny", "--host", "127.0.0.1", "--no-dashboard", *extra], prefix)

    def add_workers(self, *names):
        """Workers of one thread each, named ``names``, started and waited for."""
        for name in names:
            self.add_worker(name)
        self.wait_for_workers(len(names))

    def wait_for_workers(self, n):
        with distributed.Client(self.address, timeout="60s") as client:
            client.wait_for_workers(n, timeout=120)

    def close(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


def sweep(cluster, out, models, seeds, fxnn_flags, sweep_flags=()):
    cmd = [sys.executable, "-m", "fxnn.analysis.sweep", "-m", *models, "--seeds", *map(str, seeds), "-o", str(out),
           "--scheduler", cluster.address, "--status-every", "1000", *sweep_flags, "--"] + fxnn_flags
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cluster.procs.insert(0, proc)  # killed first at the end, even when the test fails
    return proc


def local_run(tmp_path, model, seed, fxnn_flags, threads):
    """The same run made locally with fxnn.py, with the thread count the
    sweep's run had."""
    out = tmp_path / f"local-{model}-{seed}.mat"
    done = subprocess.run([sys.executable, "fxnn.py", "--threads", str(threads), "-m", model, "--seed", str(seed),
                           "-o", str(out)] + fxnn_flags,
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads)))
    assert done.returncode == 0, done.stderr
    return load_run(str(out))


def assert_same_curves(a, b):
    for name in ("tloss", "terate", "vloss", "verate"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def started_on(stdout, name):
    """(worker, threads) from the sweep's 'starting NAME on WORKER (T threads...' lines, each start."""
    return [(line.split(" on ")[1].split(" (")[0], int(line.split(" (")[1].split(" thread")[0]))
            for line in stdout.splitlines() if line.startswith(("starting ", "resuming ")) and f" {name} on " in line]


def follow_until_checkpointed(proc, out):
    """(lines, reader, log): the sweep's stdout lines, which the thread
    ``reader`` collects as they come, once fxnn seed 1 has started and its
    ``log`` shows iteration 15 (a record's line is printed before its
    checkpoint is written: the line after iteration 10's says that its
    checkpoint is complete)."""
    lines = []
    reader = threading.Thread(target=lambda: [lines.append(line) for line in proc.stdout], daemon=True)
    reader.start()
    log, deadline = out / "fxnn-seed1.log", time.monotonic() + 300
    while not (log.exists() and "Iter 00015/00200" in log.read_text()
               and any(line.startswith("starting fxnn seed 1 on ") for line in lines)):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.2)
    return lines, reader, log


def assert_resumed_once_and_complete(tmp_path, out, log, flags, threads):
    """fxnn seed 1 (of 40 records) resumed once, from iteration 10 or later,
    and equals the run made locally without a break; seed 2 is complete."""
    resumed_at = [line for line in log.read_text().splitlines() if line.startswith("Resuming at iteration")]
    assert len(resumed_at) == 1 and int(resumed_at[0].split()[3]) >= 10
    run = load_run(str(out / "fxnn-seed1.mat"))
    assert (run.status, len(run.verate), len(run.tloss)) == ("complete", 41, 200)
    assert_same_curves(run, local_run(tmp_path, "fxnn", 1, flags, threads))
    assert load_run(str(out / "fxnn-seed2.mat")).status == "complete"


@pytest.mark.slow
def test_sweep_on_a_dask_cluster_equals_the_local_runs_and_uses_every_worker(tmp_path, cluster, small_mnist):
    cluster.add_workers("w1", "w2")
    flags = TINY + ["-nrec", "3", "--data-dir", small_mnist]
    out = tmp_path / "sweep"
    proc = sweep(cluster, out, ["fxnn", "baseline"], [1, 2], flags)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert f"4 to run, on the Dask cluster at {cluster.address} (2 workers, 2 runs at a time)" in stdout
    workers = set()
    for model in ("fxnn", "baseline"):
        for seed in (1, 2):
            (where, threads), = started_on(stdout, f"{model} seed {seed}")
            workers.add(where)
            run = load_run(str(out / f"{model}-seed{seed}.mat"))
            assert (run.model, run.seed, run.status) == (model, seed, "complete")
            assert (len(run.verate), len(run.tloss)) == (4, 15)
            assert_same_curves(run, local_run(tmp_path, model, seed, flags, threads))
    assert workers == {"w1", "w2"}
    assert (out / "summary.csv").stat().st_size > 0


@pytest.mark.slow
def test_a_run_whose_worker_is_killed_resumes_on_another_and_the_sweep_completes(tmp_path, cluster, small_mnist):
    cluster.add_workers("w1", "w2")
    flags = TINY + ["-nrec", "40", "--data-dir", small_mnist]
    out = tmp_path / "sweep"
    proc = sweep(cluster, out, ["fxnn"], [1, 2], flags)
    lines, reader, log = follow_until_checkpointed(proc, out)
    (victim, _), = started_on("".join(lines), "fxnn seed 1")
    worker = psutil.Process(cluster.workers[victim].pid)
    (run_proc,) = [p for p in worker.children() if str(out / "fxnn-seed1.mat") in " ".join(p.cmdline())]
    cluster.workers[victim].send_signal(signal.SIGKILL)
    run_proc.wait(timeout=10)  # the run dies with its worker: no orphan trains on beside the resumed run
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    reader.join(timeout=10)
    stdout = "".join(lines)
    (first, _), (second, threads) = started_on(stdout, "fxnn seed 1")
    assert first == victim and second != victim
    assert f"resuming fxnn seed 1 on {second}" in stdout
    assert_resumed_once_and_complete(tmp_path, out, log, flags, threads)


def test_a_worker_that_cannot_see_the_output_folder_stops_the_sweep_before_any_run(tmp_path, cluster):
    probe = ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'mount -t tmpfs none "{tmp_path}"']
    try:
        if os.geteuid() != 0 or subprocess.run(probe, capture_output=True, timeout=30).returncode != 0:
            raise OSError
    except OSError:
        pytest.skip("needs root and unshare to give a worker a filesystem of its own")
    hidden = tmp_path / "shared"
    hidden.mkdir()
    # this worker sees an empty tmpfs where the others see the output folder
    cluster.add_worker("elsewhere", prefix=["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                            f'mount -t tmpfs none "{hidden}" && exec "$0" "$@"'])
    cluster.wait_for_workers(1)
    proc = sweep(cluster, hidden / "sweep", ["fxnn"], [1], TINY + ["-nrec", "1"])
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2
    (line,) = stderr.strip().splitlines()
    assert line.startswith("fxnn-sweep: error: 1 worker(s) cannot use the output folder " + str(hidden / "sweep"))
    assert "not the same filesystem" in line and "every worker sees" in line
    assert "starting" not in stdout and not list((hidden / "sweep").glob("*.log"))


def sweep_without(module, tmp_path, *flags):
    """The one line a sweep (``flags`` added) prints, exit code 2, where
    ``module`` cannot be imported."""
    code = (f"import sys; sys.modules[{module!r}] = None; from fxnn.analysis import sweep; "
            f"sys.exit(sweep.main(['-m', 'fxnn', '--seeds', '1', '-o', {str(tmp_path / 's')!r}, *{list(flags)!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    return line


def test_the_sweep_without_dask_says_how_to_install_it(tmp_path):
    line = sweep_without("distributed", tmp_path)
    assert "the sweep runs on Dask, which is not installed" in line and 'pip install -e ".[cluster]"' in line


def test_an_unreachable_scheduler_is_one_line_naming_it(tmp_path):
    cmd = [sys.executable, "-m", "fxnn.analysis.sweep", "-m", "fxnn", "--seeds", "1", "-o", str(tmp_path / "s"),
           "--scheduler", "127.0.0.1"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("fxnn-sweep: error: cannot reach the Dask scheduler at 127.0.0.1 (") and "dask scheduler" in line


class FakeWorker:
    """What GpuSlots reads of a Dask worker."""
    def __init__(self, address, gpus):
        self.address = address
        self.state = type("State", (), {"total_resources": {"GPU": gpus}})()


class FakeFuture:
    def __init__(self, key, polls_until_done):
        self.key, self.polls = key, polls_until_done

    def done(self):
        self.polls -= 1
        return self.polls < 0


class FakeClient:
    """The scheduler's task states as _wait_for_started asks for them, and what it cancels."""
    def __init__(self, states):
        self.states, self.cancelled = states, []

    def run_on_scheduler(self, function, keys):
        return {k: self.states[k] for k in keys if k in self.states}

    def cancel(self, futures):
        self.cancelled += [f.key for f in futures]
        for f in futures:
            f.polls = 0


def test_a_stopped_sweep_cancels_only_the_runs_no_worker_started(monkeypatch):
    """Ctrl-C: queued tasks are cancelled; a running one, and one that has just
    ended on its worker ("memory") before this client heard so, are waited for,
    so that their outcome ("stopped after ...") is reported."""
    from fxnn.analysis import sweep as sweep_module
    monkeypatch.setattr(sweep_module.time, "sleep", lambda s: None)
    futures = [FakeFuture("queued", 5), FakeFuture("running", 2), FakeFuture("ended", 1), FakeFuture("gone", 5),
               FakeFuture("no-worker", 5)]
    client = FakeClient({"queued": "queued", "running": "processing", "ended": "memory", "no-worker": "no-worker"})
    sweep_module._wait_for_started(client, futures)
    assert sorted(client.cancelled) == ["gone", "no-worker", "queued"]


def test_gpu_slots_give_each_run_its_own_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots, worker = GpuSlots(), FakeWorker("tcp://a:1", 3)
    a, b = slots.take(worker, 1), slots.take(worker, 2)
    assert a == ["0"] and b == ["1", "2"]
    with pytest.raises(SweepError, match="0 free GPUs of the 1"):
        slots.take(worker, 1)
    slots.give(worker, b)
    assert sorted(slots.take(worker, 2)) == ["1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # a worker given two of the machine's devices
    assert slots.take(FakeWorker("tcp://b:1", 2), 2) == ["4", "6"]


@pytest.mark.slow
def test_ctrl_c_stops_the_runs_on_the_workers_with_their_records_saved(tmp_path, cluster, small_mnist):
    cluster.add_workers("w1", "w2")
    out = tmp_path / "sweep"
    proc = sweep(cluster, out, ["fxnn"], [1, 2], TINY + ["-nrec", "400", "--data-dir", small_mnist])
    logs, deadline = [out / "fxnn-seed1.log", out / "fxnn-seed2.log"], time.monotonic() + 300
    while not all(p.exists() and "Iter 00010/02000" in p.read_text() for p in logs):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert stdout.count(" stopped after ") == 2 and "FAILED" not in stdout
    for seed in (1, 2):
        run = load_run(str(out / f"fxnn-seed{seed}.mat"))
        assert run.status == "interrupted" and 2 <= len(run.verate) < 401
    # the workers are still up, and run nothing
    assert all(w.poll() is None and not psutil.Process(w.pid).children() for w in cluster.workers.values())


def test_gpu_runs_need_a_worker_with_gpu_resources(tmp_path, cluster):
    cluster.add_worker("cpu-only")
    cluster.wait_for_workers(1)
    proc = sweep(cluster, tmp_path / "sweep", ["fxnn"], [1], TINY + ["-nrec", "1"], ["--gpus-per-run", "1"])
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "starting" not in stdout
    (line,) = stderr.strip().splitlines()
    assert "--gpus-per-run 1: no worker has that many GPU resources" in line and "--resources GPU=N" in line


@pytest.mark.slow  # several fxnn.py processes end to end
def test_each_gpu_run_sees_only_its_own_device(tmp_path, cluster, small_mnist):
    cluster.add_worker("gpus", nthreads=2, extra=["--resources", "GPU=2"])
    cluster.wait_for_workers(1)
    out = tmp_path / "sweep"
    proc = sweep(cluster, out, ["fxnn"], [1, 2], TINY + ["-nrec", "400", "--data-dir", small_mnist],
                 ["--gpus-per-run", "1"])
    worker, seen, deadline = psutil.Process(cluster.workers["gpus"].pid), {}, time.monotonic() + 300
    while len(seen) < 2:  # the runs' own environments, read from /proc while they train side by side
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        for run in worker.children(recursive=True):
            try:
                if "-m fxnn -" in " ".join(run.cmdline()):
                    seen[run.pid] = run.environ().get("CUDA_VISIBLE_DEVICES")
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.2)
    assert sorted(seen.values()) == ["0", "1"]
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130
    assert sorted(line.split("GPU ")[1].split(")")[0] for line in stdout.splitlines()
                  if line.startswith("starting ")) == ["0", "1"]
