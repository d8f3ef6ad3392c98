"""Hostile paths, flags and signals (issue 27, classes 1, 2, 7, 9, 11), in
real runs: links, FIFOs, sockets and devices planted where a run writes are
refused in one line naming them, and what they point to is unchanged byte
for byte; flags that would stall or fill the disk are refused before
anything starts; SIGHUP saves a run as SIGTERM does; the writers leave no
temporary when stopped; a bad FXNN_DOWNLOAD_TIMEOUT is one line and a failed
download leaves no folder behind."""
import os
import signal
import socket
import stat
import subprocess
import sys

import numpy as np
import pytest

import fxnn
from conftest import ROOT
from test_hostile_records import write_genuine
from test_run_safety import command, finish, main, one_line, spawn, temporaries, wait_for_line
from fxnn.analysis import sweep
from fxnn.files.atomic import atomic_path
from fxnn.files.nofollow import UnsafePath, remove_folder
from fxnn.training import checkpoint, preflight, runlock
from fxnn.training.matfile import read_mat
from fxnn.training.recorder import Recorder

VICTIM = b"another user's file, which no run may touch\n"
NEVER = "fxnn never writes through links or into special files"


def victim(folder, name="victim"):
    path = folder / name
    path.write_bytes(VICTIM)
    return path


def fifo(path):
    os.mkfifo(path)
    return path


def unix_socket(path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the socket file stays
    return path


def char_device(path):
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # as /dev/null
    except PermissionError:
        pytest.skip("making a device node needs root")
    return path


def refused(capsys, argv, *words):
    """Run fxnn in this process; assert exit 2, one line with ``words``, no training."""
    code, stdout, err = main(capsys, argv)
    line = one_line(err)
    assert code == 2 and all(w in line for w in words) and "Iter" not in stdout, (code, line)
    return line


def fxnn_argv(small_mnist, out, *extra):
    return command(small_mnist, out, *extra, nrec=2, ipr=1)[2:]


# ---- 1. files beside a record ----------------------------------------------------

PLANTS = {
    "link to a file": lambda path, tmp: os.symlink(victim(tmp), path),
    "relative link": lambda path, tmp: (victim(tmp), os.symlink("victim", path)),
    "dangling link": lambda path, tmp: os.symlink(tmp / "created-through-the-link", path),
    "FIFO": lambda path, tmp: fifo(path),
    "socket": lambda path, tmp: unix_socket(path),
    "folder": lambda path, tmp: os.mkdir(path),
}


@pytest.mark.parametrize("extra", [[], ["--force"], ["--resume"]])
@pytest.mark.parametrize("plant", sorted(PLANTS))
def test_a_planted_lock_is_refused_and_what_it_names_is_untouched(tmp_path, capsys, small_mnist, plant, extra):
    out = tmp_path / "rec.mat"
    PLANTS[plant](tmp_path / "rec.mat.lock", tmp_path)
    before = os.lstat(tmp_path / "rec.mat.lock")
    line = refused(capsys, fxnn_argv(small_mnist, out, *extra), "rec.mat.lock", NEVER)
    assert "the record's lock" in line
    after = os.lstat(tmp_path / "rec.mat.lock")
    assert stat.S_IFMT(after.st_mode) == stat.S_IFMT(before.st_mode) and after.st_ino == before.st_ino
    if (tmp_path / "victim").exists():
        assert (tmp_path / "victim").read_bytes() == VICTIM
    assert not (tmp_path / "created-through-the-link").exists() and not out.exists()


@pytest.mark.parametrize("plant", ["link to a folder", "link to a file", "FIFO", "socket"])
def test_a_planted_run_folder_is_refused_and_its_target_is_untouched(tmp_path, capsys, small_mnist, plant):
    out, elsewhere = tmp_path / "rec.mat", tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim(elsewhere)
    {"link to a folder": lambda p: os.symlink(elsewhere, p),
     "link to a file": lambda p: os.symlink(elsewhere / "victim", p),
     "FIFO": fifo, "socket": unix_socket}[plant](tmp_path / "rec.mat.run")
    for extra in ([], ["--force"]):
        refused(capsys, fxnn_argv(small_mnist, out, *extra), "rec.mat.run", NEVER, "the run's folder")
    assert os.listdir(elsewhere) == ["victim"] and (elsewhere / "victim").read_bytes() == VICTIM
    assert os.path.lexists(tmp_path / "rec.mat.run") and not out.exists()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, small_mnist):
    """The run folder of a run stopped by Ctrl-C after two records."""
    out = tmp_path_factory.mktemp("interrupted") / "rec.mat"
    proc = spawn(command(small_mnist, out, nrec=50, ipr=2))
    wait_for_line(proc, "Iter", 2)
    proc.send_signal(signal.SIGINT)
    code, _, err = finish(proc)
    assert code == 130, err
    return out


@pytest.mark.parametrize("name", ["spool-m_w.f32", "checkpoint.npz"])
@pytest.mark.parametrize("plant", ["link", "FIFO"])
def test_a_link_planted_in_the_run_folder_is_refused_on_resume(tmp_path, capsys, small_mnist, interrupted, name, plant):
    import shutil
    out = tmp_path / "rec.mat"
    shutil.copytree(str(interrupted) + ".run", str(out) + ".run")
    planted = tmp_path / "rec.mat.run" / name
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.replace(planted, elsewhere / name)  # the genuine file, now where the link points
    genuine = (elsewhere / name).read_bytes()
    os.symlink(elsewhere / name, planted) if plant == "link" else fifo(planted)
    for extra in (["--resume"], ["--force"]):
        refused(capsys, command(small_mnist, out, *extra, nrec=50, ipr=2)[2:], name, NEVER)
    assert (elsewhere / name).read_bytes() == genuine


def test_a_spool_replaced_by_a_link_during_the_run_is_refused(tmp_path):
    run_dir = tmp_path / "rec.mat.run"
    recorder = Recorder(str(run_dir), {"w": (3, 2)}, np.zeros((1, 1)), np.zeros(1))
    recorder.add_record(1.0, 0.5, {"w": np.ones((3, 2))}, np.zeros((1, 10)), 0.0)
    os.remove(run_dir / "spool-w.f32")
    os.symlink(victim(tmp_path), run_dir / "spool-w.f32")
    with pytest.raises(UnsafePath, match="spool-w.f32 is a symbolic link"):
        recorder.add_record(1.0, 0.5, {"w": np.ones((3, 2))}, np.zeros((1, 10)), 0.0)
    assert (tmp_path / "victim").read_bytes() == VICTIM


def test_a_checkpoint_is_never_written_through_a_linked_run_folder(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, tmp_path / "rec.mat.run")
    with pytest.raises(UnsafePath, match="rec.mat.run is a symbolic link"):
        checkpoint.save(str(tmp_path / "rec.mat.run"), 1, {"w": np.ones(2)}, np.random.default_rng(0),
                        {"tloss": np.ones(1)}, {})
    assert os.listdir(elsewhere) == []


def test_a_linked_run_folder_is_never_removed_through(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim(elsewhere)
    os.symlink(elsewhere, tmp_path / "rec.mat.run")
    remove_folder(str(tmp_path / "rec.mat.run"))
    assert (elsewhere / "victim").read_bytes() == VICTIM
    os.remove(tmp_path / "rec.mat.run")
    (tmp_path / "rec.mat.run").mkdir()
    (tmp_path / "rec.mat.run" / "inside").symlink_to(elsewhere)
    remove_folder(str(tmp_path / "rec.mat.run"))
    assert not (tmp_path / "rec.mat.run").exists() and (elsewhere / "victim").read_bytes() == VICTIM


def test_a_temporary_swapped_for_a_link_is_never_renamed_or_written_through(tmp_path):
    target = tmp_path / "out.csv"
    with pytest.raises(FileExistsError, match="was replaced"):
        with atomic_path(str(target)) as tmp:
            os.remove(tmp)
            os.symlink(victim(tmp_path), tmp)
    assert not target.exists() and (tmp_path / "victim").read_bytes() == VICTIM
    assert temporaries(tmp_path) == []


# ---- 2. -o that is not a regular file ------------------------------------------------

OUTPUTS = {"FIFO": fifo, "socket": unix_socket, "device": char_device, "folder": os.mkdir,
           "link to a FIFO": lambda p: os.symlink(fifo(p.parent / "a-fifo"), p),
           "link to a folder": lambda p: (os.mkdir(p.parent / "a-folder"), os.symlink(p.parent / "a-folder", p))}


@pytest.mark.parametrize("extra", [[], ["--force"]])
@pytest.mark.parametrize("kind", sorted(OUTPUTS))
def test_an_output_that_is_not_a_regular_file_is_refused(tmp_path, capsys, small_mnist, kind, extra):
    out = tmp_path / "out"
    OUTPUTS[kind](out)
    before = os.lstat(out)
    refused(capsys, fxnn_argv(small_mnist, out, *extra), f"cannot write the record {out}", "not a regular file",
            "--force or not")
    after = os.lstat(out)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    assert not os.path.lexists(f"{out}.run") and not os.path.lexists(f"{out}.lock")


def test_a_link_to_a_regular_file_is_replaced_and_its_target_kept(tmp_path, capsys, small_mnist):
    out = tmp_path / "rec.mat"
    os.symlink(victim(tmp_path), out)
    code, _, err = main(capsys, fxnn_argv(small_mnist, out, "--force"))
    assert code == 0, err
    assert (tmp_path / "victim").read_bytes() == VICTIM and not out.is_symlink()
    assert read_mat(str(out))["vloss"].shape == (3,)


# ---- 7. flags that pass a parser and then hurt -----------------------------------------

def test_threads_are_capped_at_four_per_core(capsys):
    from fxnn.kernels.threads import cores
    most = 4 * cores()
    assert fxnn.build_parser().parse_args(["--threads", str(most)]).threads == most
    for threads in (most + 1, 10_000, 10**12):
        with pytest.raises(SystemExit) as stopped:
            fxnn.build_parser().parse_args(["--threads", str(threads)])
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert stopped.value.code == 2 and f"--threads: {threads} is more than 4 per core" in line
        assert f"use at most {most}" in line


SNAPSHOT = 7850 * 4  # bytes of one snapshot of baseline's parameters (m_w 784x10, m_b 10)


@pytest.mark.parametrize("extra,free,fix", [
    (["-nrec", 10**5], 2**30, "use --record-params last (the final parameters only) or none"),
    (["-nrec", 10**5, "--record-params", "last"], 32 * 10**5 + 2 * SNAPSHOT, "use --record-params none"),
    (["-nrec", 10**7, "-ipr", 10, "--record-params", "none"], 2**30, "use a smaller -nrec or -ipr"),
    (["-nrec", 10**9, "-ipr", 10**6], None, "use a smaller -nrec or -ipr"),  # the real disk: exabytes needed
])
def test_a_record_larger_than_the_free_disk_is_refused_before_training(tmp_path, capsys, monkeypatch, small_mnist,
                                                                        extra, free, fix):
    if free is not None:
        statvfs = os.statvfs
        monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result(
            (4096, 1, free, free, free) + tuple(statvfs(path))[5:]))
    out = tmp_path / "rec.mat"
    argv = command(small_mnist, out, "-ipr", 1)[2:] + [str(a) for a in extra]
    line = refused(capsys, argv, "on the disk of", "is free there", fix)
    assert line.startswith("fxnn: error: -nrec ")
    assert sorted(os.listdir(tmp_path)) == []  # no record, run folder, lock or temporary


def test_the_disk_estimate_counts_what_the_run_still_writes():
    shapes = {"w": (10, 10), "b": (10,)}  # 110 float32: 440 bytes a snapshot
    full, bare = preflight.disk_needed(shapes, 9, 5, "all")
    assert (full, bare) == (2 * 16 * 45 + 440 + 440 * (10 + 10), 2 * 16 * 45 + 440)
    assert preflight.disk_needed(shapes, 9, 5, "all", done=4)[0] == full - 440 * 4
    assert preflight.disk_needed(shapes, 9, 5, "none")[0] == bare
    assert preflight.check_disk("x.mat", shapes, 9, 5, "all", free=full) is None
    assert "--record-params last" in preflight.check_disk("x.mat", shapes, 9, 5, "all", free=full - 1)


def sweep_main(capsys, argv):
    code = sweep.main([str(a) for a in argv])
    _, err = capsys.readouterr()
    return code, err


@pytest.mark.parametrize("argv,words", [
    (["--seeds", "-5"], ["baseline seed -5 would be refused by fxnn", "--seed", "must be in 0..4294967295"]),
    (["--seeds", "1", str(2**32)], ["seed 4294967296", "must be in 0..4294967295"]),
    (["--seeds", "1", "--", "--threads", "100000"], ["--threads: 100000 is more than 4 per core"]),
    (["--seeds", "1", "--", "-nrec", "-3"], ["-nrec"]),
    (["--seeds", "1", "--", "-d", "no-such.npz"], ["neither a built-in dataset"]),
])
def test_sweep_flags_are_checked_by_the_runners_own_parser_before_anything_starts(tmp_path, capsys, argv, words):
    code, err = sweep_main(capsys, ["-m", "baseline", "-o", tmp_path / "s", *argv])
    line = one_line(err)
    assert code == 2 and line.startswith("fxnn-sweep: error: ") and all(w in line for w in words), line
    assert not (tmp_path / "s").exists()


def test_repeated_seeds_and_models_run_once_and_say_so(capsys):
    assert sweep.once([3, 1, 3, 2, 1], "seed") == [3, 1, 2]
    assert capsys.readouterr().err.strip() == "fxnn-sweep: note: seed 1, 3 given more than once; each runs once"
    assert sweep.once(["fxnn", "cnn"], "model") == ["fxnn", "cnn"] and capsys.readouterr().err == ""


@pytest.mark.slow  # a sweep end to end
def test_a_sweep_with_a_repeated_seed_runs_it_once(tmp_path, small_mnist):
    pytest.importorskip("distributed", reason='the sweep needs Dask: pip install -e ".[cluster]"')
    out = tmp_path / "s"
    done = subprocess.run([sys.executable, "-m", "fxnn.analysis.sweep", "-m", "baseline", "--seeds", "4", "4", "-o",
                           str(out), "--", "-nrec", "1", "-ipr", "1", "--data-dir", small_mnist],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "seed 4 given more than once; each runs once" in done.stderr and "1 runs in" in done.stdout
    assert sorted(os.listdir(out)) == ["baseline-seed4.log", "baseline-seed4.mat", "summary.csv", "summary.png"]


# ---- 9. signals and a sweep folder in use ----------------------------------------------

def start_run(small_mnist, out, *extra, preexec_fn=None):
    return subprocess.Popen(command(small_mnist, out, *extra, nrec=200, ipr=2), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            preexec_fn=preexec_fn)


def assert_saved(small_mnist, out, proc, code, word, resume=False):
    returncode, stdout, err = finish(proc)
    assert returncode == code, err
    assert f"{word}: saved the recording so far to file {out}; continue with the same flags and --resume" in stdout
    assert "Traceback" not in err
    rec = read_mat(str(out))
    assert rec["meta"]["status"] == word.lower() and len(rec["vloss"]) >= 2
    if not resume:
        return
    proc = spawn(command(small_mnist, out, "--resume", nrec=200, ipr=2))
    wait_for_line(proc, "Resuming at iteration")
    proc.send_signal(signal.SIGTERM)
    assert finish(proc)[0] == 143


def test_sighup_saves_the_run_as_sigterm_does_and_it_resumes(tmp_path, small_mnist):
    out = tmp_path / "rec.mat"
    proc = start_run(small_mnist, out)
    wait_for_line(proc, "Iter", 2)
    proc.send_signal(signal.SIGHUP)
    assert_saved(small_mnist, out, proc, 143, "Terminated", resume=True)


def test_a_run_started_under_nohup_keeps_sighup_ignored(tmp_path, small_mnist):
    out = tmp_path / "rec.mat"
    proc = start_run(small_mnist, out, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    wait_for_line(proc, "Iter", 2)
    proc.send_signal(signal.SIGHUP)
    wait_for_line(proc, "Iter", 2)  # still training
    proc.send_signal(signal.SIGTERM)
    assert_saved(small_mnist, out, proc, 143, "Terminated")


def test_a_run_started_with_sigint_ignored_still_saves_on_ctrl_c(tmp_path, small_mnist):
    """As ``fxnn.py ... &`` from a script starts it (class 11)."""
    out = tmp_path / "rec.mat"
    proc = start_run(small_mnist, out, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    wait_for_line(proc, "Iter", 2)
    proc.send_signal(signal.SIGINT)
    assert_saved(small_mnist, out, proc, 130, "Interrupted")


STOP_AT_RENAME = """
import os, signal, sys, time
def stopped(*args):  # the temporary is complete: the signal comes just before the rename
    os.kill(os.getpid(), signal.{sig})
    time.sleep(30)
os.replace = stopped
from fxnn.analysis import {module}
sys.argv = ["fxnn-{module}"] + {argv!r}
{module}.cli()
"""


def command_name(module):
    """The command a module of fxnn.analysis is installed as."""
    return {"to_csv": "fxnn-csv"}.get(module, f"fxnn-{module}")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("records")
    return [write_genuine(folder / f"fxnn-seed{s}.mat", seed=s) for s in (1, 2)]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("module,flags,name", [("to_csv", ["-o"], "out.csv"), ("summary", ["--csv"], "out.csv"),
                                               ("summary", ["--png"], "out.png"), ("plot", ["-o"], "out.png"),
                                               ("tune", ["--csv"], "out.csv")])
def test_a_writer_stopped_by_a_signal_leaves_no_temporary(tmp_path, records, sig, module, flags, name):
    out = tmp_path / name
    out.write_bytes(VICTIM)  # an earlier file, which must stay whole
    code = STOP_AT_RENAME.format(sig=sig, module=module, argv=records + flags + [str(out)])
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    line = one_line(done.stderr)
    assert done.returncode == 143 and f"stopped by {sig}" in line and "was not written" in line, done.stderr
    assert out.read_bytes() == VICTIM and temporaries(tmp_path) == []


@pytest.mark.parametrize("module,flags,name", [("to_csv", ["-o"], "out.csv"), ("summary", ["--csv"], "out.csv"),
                                               ("plot", ["-o"], "out.png"), ("tune", ["--csv"], "out.csv")])
@pytest.mark.parametrize("where", ["missing folder", "file as folder", "a folder as the file"])
def test_a_writer_into_a_folder_that_cannot_take_it_says_so_in_one_line(tmp_path, capsys, records, module, flags,
                                                                         name, where):
    from importlib import import_module
    folder = tmp_path / "no-such-folder"
    if where == "file as folder":
        folder.write_bytes(VICTIM)
    out = folder / name
    if where == "a folder as the file":
        out.mkdir(parents=True)
    assert import_module(f"fxnn.analysis.{module}").main(records + flags + [str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    problem = {"missing folder": f"the folder {folder} does not exist (create it first)",
               "file as folder": f"{folder} is not a folder", "a folder as the file": "it is a folder; name a file in it"}
    assert line == f"{command_name(module)}: error: cannot write {out}: {problem[where]}"
    if where == "file as folder":
        assert folder.read_bytes() == VICTIM
    else:
        assert not folder.exists() if where == "missing folder" else os.listdir(out) == []


def test_a_second_sweep_into_a_folder_in_use_is_refused_naming_the_first(tmp_path, capsys):
    folder = tmp_path / "s"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from fxnn.training import runlock; "
                               f"runlock.lock({str(folder / 'sweep.lock')!r}, 'x', str); print('held', flush=True); "
                               "sys.stdin.read(); runlock.release_all()"],
                              cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code, err = sweep_main(capsys, ["-m", "baseline", "--seeds", "1", "-o", folder])
        line = one_line(err)
        assert code == 2 and "is in use by another fxnn-sweep" in line and f"pid {holder.pid} " in line, line
        assert os.listdir(folder) == ["sweep.lock"]  # no run started, no log
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not (folder / "sweep.lock").exists()


@pytest.mark.parametrize("where,words", [("file", "a file is in its place"), ("file/below", "not a directory")])
def test_a_sweep_whose_output_folder_cannot_be_made_stops_in_one_line(tmp_path, capsys, where, words):
    victim(tmp_path, "file")
    code, err = sweep_main(capsys, ["-m", "baseline", "--seeds", "1", "-o", tmp_path / where])
    line = one_line(err)
    assert code == 2 and line == f"fxnn-sweep: error: cannot make the output folder {tmp_path / where}: {words}; give another -o"
    assert (tmp_path / "file").read_bytes() == VICTIM


def test_a_planted_sweep_lock_link_is_refused(tmp_path, capsys):
    folder = tmp_path / "s"
    folder.mkdir()
    os.symlink(victim(tmp_path), folder / "sweep.lock")
    code, err = sweep_main(capsys, ["-m", "baseline", "--seeds", "1", "-o", folder])
    assert code == 2 and "sweep.lock is a symbolic link" in one_line(err)
    assert (tmp_path / "victim").read_bytes() == VICTIM
    runlock.release_all()


# ---- downloads --------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "1e400"])
def test_a_bad_download_timeout_is_refused_in_one_line(tmp_path, capsys, monkeypatch, value):
    monkeypatch.setenv("FXNN_DOWNLOAD_TIMEOUT", value)
    for dataset in ("MNIST", "FashionMNIST"):
        line = refused(capsys, ["-d", dataset, "--data-dir", tmp_path / "data", "-o", tmp_path / "r.mat"],
                       f"FXNN_DOWNLOAD_TIMEOUT={value!r} is not a number of seconds")
        assert "unset it" in line
    assert not (tmp_path / "data").exists()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/"


def test_a_failed_download_removes_only_the_folders_it_created(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for env in ("FXNN_MNIST_MIRRORS", "FXNN_FASHION_MNIST_MIRRORS", "FXNN_CIFAR_MIRRORS"):
        monkeypatch.setenv(env, closed_port())
    argv = ["-m", "baseline", "-nrec", "1", "-ipr", "1", "--seed", "1"]
    code, stdout, err = main(capsys, argv + ["-o", "mnist.mat"])  # falls back to the bundled sample
    assert code == 0 and "bundled sample" in stdout, err
    for dataset in ("FashionMNIST", "CIFAR10"):
        refused(capsys, argv + ["-d", dataset, "-o", f"{dataset}.mat"], "download")
    assert not (tmp_path / "data").exists()
    (tmp_path / "data" / "image" / "cifar10").mkdir(parents=True)  # made by the user: stays
    (tmp_path / "data" / "image" / "cifar10" / "notes.txt").write_text("mine")
    refused(capsys, argv + ["-d", "FashionMNIST", "-o", "f.mat"], "download")
    refused(capsys, argv + ["-d", "CIFAR10", "-o", "c.mat"], "download")
    assert sorted(os.listdir(tmp_path / "data" / "image")) == ["cifar10"]
    assert os.listdir(tmp_path / "data" / "image" / "cifar10") == ["notes.txt"]


@pytest.mark.parametrize("module,flags,name", [("to_csv", ["-o"], "out.csv"), ("summary", ["--csv"], "out.csv"),
                                               ("summary", ["--png"], "out.png"), ("plot", ["-o"], "out.png"),
                                               ("tune", ["--csv"], "out.csv"), ("tune", ["--at", "4", "--png"], "out.png")])
@pytest.mark.parametrize("which", ["a record read", "another record"])
def test_an_analysis_command_never_writes_over_a_record(tmp_path, capsys, records, module, flags, name, which):
    """`fxnn-csv rec.mat -o rec.mat` wrote the CSV over the run; a record
    under any name (here one named like the output) is refused in one line."""
    from importlib import import_module
    out = tmp_path / name
    write_genuine(out, seed=3)
    before = out.read_bytes()
    inputs = records + ([str(out)] if which == "a record read" else [])
    assert import_module(f"fxnn.analysis.{module}").main(inputs + flags + [str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    words = "it is one of the records read" if which == "a record read" else "it is a MATLAB file (a record?)"
    assert line.startswith(f"{command_name(module)}: error: {out}: {words}"), line
    assert out.read_bytes() == before


@pytest.mark.parametrize("module,flags", [("summary", ["--csv"]), ("summary", ["--png"]), ("plot", ["-o"]),
                                          ("tune", ["--csv"]), ("tune", ["--at", "4", "--png"])])
def test_a_dash_for_an_output_file_is_refused_not_written_as_a_file_named_dash(tmp_path, capsys, records, module,
                                                                                flags, monkeypatch):
    """`fxnn-summary ... --csv -` wrote a file called "-" (fxnn-csv's -o -
    is standard output, its default; these commands print their table there)."""
    from importlib import import_module
    monkeypatch.chdir(tmp_path)
    assert import_module(f"fxnn.analysis.{module}").main(records + flags + ["-"]) == 2
    line = one_line(capsys.readouterr().err)
    assert line == f"{command_name(module)}: error: -: names a file to write here, not standard output; give a file name"
    assert not os.path.exists(tmp_path / "-")
