"""Sweeps on Slurm (``fxnn-sweep --slurm``) against a real single-node Slurm
on 127.0.0.1 (tests/slurm_cluster.py starts it): the workers are batch jobs
the sweep submits itself; the runs are checked against the same runs made
locally with fxnn.py, a worker job is cancelled mid-run, the sweep is
stopped with Ctrl-C, and Slurm refuses or never starts the jobs."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from fxnn.analysis.records import load_run
from slurm_cluster import slurm  # noqa: F401  (the fixture)
from test_sweep_cluster import (TINY, assert_resumed_once_and_complete, assert_same_curves, follow_until_checkpointed,
                                local_run, started_on, sweep_without)

pytest.importorskip("distributed", reason='Dask is the cluster extra: pip install -e ".[cluster]"')
pytest.importorskip("dask_jobqueue", reason='dask-jobqueue is in the cluster extra: pip install -e ".[cluster]"')

ON_SLURM = ["--slurm", "--interface", "lo", "--status-every", "1000"]  # loopback: this machine is the cluster


def sweep_cmd(out, models, seeds, fxnn_flags, sweep_flags=()):
    return [sys.executable, "-m", "fxnn.analysis.sweep", "-m", *models, "--seeds", *map(str, seeds), "-o", str(out),
            *ON_SLURM, *sweep_flags, "--"] + fxnn_flags


def start_sweep(slurm, out, models, seeds, fxnn_flags, sweep_flags=(), env=None):
    return subprocess.Popen(sweep_cmd(out, models, seeds, fxnn_flags, sweep_flags), cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or slurm.env)


def finish(proc, timeout):
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # the sweep's jobs end with it (their workers' death timeout; the session stop cancels them)
        raise


def wait_until_empty(slurm, timeout=30):
    deadline = time.monotonic() + timeout
    while slurm.squeue() and time.monotonic() < deadline:
        time.sleep(0.5)
    return slurm.squeue()


def test_print_job_script_shows_each_flag_as_its_sbatch_line(tmp_path):
    out = tmp_path / "sweep"
    cmd = sweep_cmd(out, ["fxnn"], [1, 2], [], ["--partition", "gpu", "--time", "02:30:00", "--cpus-per-run", "6",
                                                "--gpus-per-run", "2", "--mem", "24G", "--account", "proj7",
                                                "--sbatch=--qos=long", "--sbatch", "constraint=a100",
                                                "--print-job-script"])
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    sbatch = [line for line in lines if line.startswith("#SBATCH ")]
    for want in ("-p gpu", "-t 02:30:00", "--cpus-per-task=6", "--gres=gpu:2", "--mem=24G", "-A proj7",
                 "--qos=long", "--constraint=a100", "-n 1", f"-o {out}/slurm/fxnn-sweep-%J.out",
                 f"-e {out}/slurm/fxnn-sweep-%J.err"):
        assert f"#SBATCH {want}" in sbatch, (want, sbatch)
    worker = lines[-1]
    assert worker.startswith(f"{sys.executable} -m distributed.cli.dask_worker tcp://127.0.0.1:")
    assert "--nthreads 1" in worker and "--resources GPU=2" in worker and "--no-nanny" in worker
    assert f"export PYTHONPATH={ROOT}" in done.stdout and "OMP_NUM_THREADS=6" in done.stdout
    assert not out.exists()  # nothing submitted, nothing written


def test_print_job_script_leaves_out_what_was_not_asked_for(tmp_path):
    cmd = sweep_cmd(tmp_path / "s", ["fxnn"], [1], [], ["--print-job-script"])
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    sbatch = [line for line in done.stdout.splitlines() if line.startswith("#SBATCH ")]
    assert "#SBATCH --cpus-per-task=1" in sbatch
    assert not [line for line in sbatch if line.startswith(("#SBATCH -t", "#SBATCH --mem", "#SBATCH -p",
                                                             "#SBATCH -A", "#SBATCH --gres"))], sbatch
    assert "--memory-limit 0" in done.stdout  # no --mem: the worker has no limit of its own either


@pytest.mark.parametrize("flags, message", [
    (["--partition", "gpu"], "--partition is for Slurm: add --slurm"),
    (["--slurm", "--scheduler", "tcp://127.0.0.1:1"], "--slurm starts its own workers"),
    (["--slurm", "-j", "2"], "--jobs is for this machine"),
    (["--slurm", "--cpus-per-run", "0"], "--cpus-per-run must be at least 1"),
])
def test_slurm_flags_are_checked_before_anything_starts(tmp_path, flags, message):
    cmd = [sys.executable, "-m", "fxnn.analysis.sweep", "-m", "fxnn", "--seeds", "1", "-o", str(tmp_path / "s"), *flags]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert not (tmp_path / "s").exists()


def test_no_sbatch_on_path_is_one_line_saying_where_to_run(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no Slurm commands at all
    cmd = sweep_cmd(tmp_path / "s", ["fxnn"], [1], TINY + ["-nrec", "1"])
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2, done.stderr
    # the one line (Dask may log a warning of its own before it, as "event loop unresponsive" under load)
    assert done.stderr.count("fxnn-sweep: error") == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("fxnn-sweep: error: --slurm: sbatch is not on PATH") and "login node" in line


def test_slurm_without_dask_jobqueue_says_how_to_install_it(tmp_path):
    line = sweep_without("dask_jobqueue", tmp_path, "--slurm")
    assert "dask-jobqueue, which is not installed" in line and 'pip install -e ".[cluster]"' in line


def test_a_partition_slurm_does_not_have_is_one_line_and_nothing_is_submitted(tmp_path, slurm):
    cmd = sweep_cmd(tmp_path / "s", ["fxnn"], [1], TINY + ["-nrec", "1"], ["--partition", "nosuch"])
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, env=slurm.env)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("fxnn-sweep: error: --slurm: Slurm refuses the workers' job (") and "partition" in line.lower()
    assert "sinfo" in line and time.monotonic() - started < 60
    assert "starting" not in done.stdout and slurm.squeue() == []


def test_jobs_that_never_start_are_one_line_with_slurms_reason_within_the_timeout(tmp_path, slurm):
    # a job held until tomorrow stays PENDING (reason BeginTime), as on a queue that never gets to it
    cmd = sweep_cmd(tmp_path / "s", ["fxnn"], [1], TINY + ["-nrec", "1"],
                    ["--sbatch=--begin=now+1day", "--job-start-timeout", "5"])
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, env=slurm.env)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("fxnn-sweep: error: --slurm: no job started within 5 s (1 job(s) PENDING, reason BeginTime)")
    assert "--job-start-timeout" in line and time.monotonic() - started < 60
    assert wait_until_empty(slurm) == []  # the sweep cancelled its job


@pytest.mark.slow
def test_a_sweep_on_slurm_runs_each_run_in_a_batch_job_and_equals_the_local_runs(tmp_path, slurm, small_mnist):
    flags = TINY + ["-nrec", "3", "--data-dir", small_mnist]
    out = tmp_path / "sweep"
    proc = start_sweep(slurm, out, ["fxnn", "baseline"], [1, 2], flags)
    stdout, stderr = finish(proc, 600)
    assert proc.returncode == 0, stderr
    assert "4 to run, on Slurm: one job per run (1 CPU(s))" in stdout
    assert f"submitted 4 Slurm job(s) (1 CPU(s)); their logs go to {out}/slurm" in stdout
    jobs = set()
    for model in ("fxnn", "baseline"):
        for seed in (1, 2):
            (where, threads), = started_on(stdout, f"{model} seed {seed}")
            assert where.startswith("Slurm job ") and threads == 1  # --cpus-per-run 1 (the node has more)
            jobs.add(where)
            run = load_run(str(out / f"{model}-seed{seed}.mat"))
            assert (run.model, run.seed, run.status) == (model, seed, "complete")
            assert_same_curves(run, local_run(tmp_path, model, seed, flags, threads))
    assert len(jobs) >= 2  # the node takes two jobs of one CPU at a time
    assert any(p.suffix == ".err" for p in (out / "slurm").iterdir())  # the jobs' logs beside the sweep's
    assert wait_until_empty(slurm) == []  # every job released
    assert (out / "summary.csv").stat().st_size > 0


@pytest.mark.slow
def test_a_run_whose_job_is_cancelled_resumes_in_another_job_and_equals_an_uninterrupted_run(
        tmp_path, slurm, small_mnist):
    flags = TINY + ["-nrec", "40", "--data-dir", small_mnist]
    out = tmp_path / "sweep"
    proc = start_sweep(slurm, out, ["fxnn"], [1, 2], flags)
    lines, reader, log = follow_until_checkpointed(proc, out)
    (victim, _), = started_on("".join(lines), "fxnn seed 1")
    subprocess.run(["scancel", victim.split()[-1]], env=slurm.env, check=True, timeout=30)
    try:
        assert proc.wait(timeout=600) == 0, proc.stderr.read()
    finally:
        proc.kill()
    reader.join(timeout=10)
    stdout = "".join(lines)
    (first, _), (second, threads) = started_on(stdout, "fxnn seed 1")
    assert first == victim and second != victim
    assert f"resuming fxnn seed 1 on {second}" in stdout and "FAILED" not in stdout
    # Slurm's SIGTERM reaches the run and its worker alike: the run saves if it gets to before its
    # worker exits (the run dies with it), else it resumes from its last checkpoint
    assert_resumed_once_and_complete(tmp_path, out, log, flags, threads)
    assert wait_until_empty(slurm) == []


@pytest.mark.slow
def test_ctrl_c_stops_the_runs_saves_their_records_and_leaves_no_job_in_squeue(tmp_path, slurm, small_mnist):
    out = tmp_path / "sweep"
    # three runs, jobs of half the node's CPUs: two run, the third waits in Slurm's queue
    cpus = max(1, len(os.sched_getaffinity(0)) // 2)
    proc = start_sweep(slurm, out, ["fxnn"], [1, 2, 3], TINY + ["-nrec", "400", "--data-dir", small_mnist],
                       ["--cpus-per-run", str(cpus)])
    logs, deadline = [out / f"fxnn-seed{seed}.log" for seed in (1, 2, 3)], time.monotonic() + 300
    while sum(p.exists() and "Iter 00010/02000" in p.read_text() for p in logs) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    assert len(slurm.squeue()) == 3
    proc.send_signal(signal.SIGINT)
    stdout, stderr = finish(proc, 300)
    assert proc.returncode == 130, stderr
    started = [line for line in stdout.splitlines() if line.startswith("starting fxnn seed")]
    assert stdout.count(" stopped after ") == len(started) >= 2 and "FAILED" not in stdout
    for log in logs:
        record = str(log)[:-len(".log")] + ".mat"
        if log.exists():
            run = load_run(record)
            assert run.status == "interrupted" and 2 <= len(run.verate) < 401
        else:
            assert not os.path.exists(record)
    assert slurm.squeue() == []  # cancelled before the sweep returned
