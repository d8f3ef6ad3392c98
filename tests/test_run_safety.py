"""Never lose a run, in real processes: one run per record (a lock), damaged
checkpoints and spools refused, resuming on other data refused, flags and
datasets that would fail later refused before training, full disks and
signals during the final write reported truthfully in one line with the
earlier record intact and the run resumable."""
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import fxnn
from conftest import ROOT, one_line, wait_for_line
from conftest import run_fxnn as main
from fxnn.files.atomic import WriteError, atomic_path, remove_stale_temporaries, room_for
from fxnn.data.idx import write_idx
from fxnn.training import checkpoint, matfile
from fxnn.training.matfile import read_mat
from fxnn.training.recorder import Recorder

EARLIER = b"an earlier result"
SNAPSHOT = 784 * 10 * 4  # baseline's m_w, the largest parameter, bytes per record


def command(data_dir, out, *extra, model="baseline", nrec=5, ipr=10):
    return [sys.executable, os.path.join(ROOT, "fxnn.py"), "-m", model, "-nrec", str(nrec), "-ipr", str(ipr),
            "--data-dir", str(data_dir), "-o", str(out), "--seed", "5", *map(str, extra)]


def spawn(args, file_size_limit=None):
    """Start fxnn.py; ``file_size_limit``: RLIMIT_FSIZE in bytes, so that a
    write past it fails with EFBIG (Python ignores SIGXFSZ)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.RLIM_INFINITY))
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            preexec_fn=limit if file_size_limit else None)


def finish(proc):
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def temporaries(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(".tmp-"))


def assert_same_run(a, b, keys=("tloss", "terate", "vloss", "verate", "yprob", "m_w", "m_b")):
    for key in keys:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def whole(tmp_path_factory, small_mnist):
    """The uninterrupted run every resumed one must reproduce."""
    path = tmp_path_factory.mktemp("whole") / "whole.mat"
    code, _, err = finish(spawn(command(small_mnist, path)))
    assert code == 0, err
    return path


@pytest.fixture(scope="module")
def killed(tmp_path_factory, small_mnist):
    """The run folder of a run killed with SIGKILL after three records."""
    out = tmp_path_factory.mktemp("killed") / "rec.mat"
    proc = spawn(command(small_mnist, out))
    wait_for_line(proc, "Iter", 4)
    proc.kill()
    proc.wait()
    # a kill during a checkpoint's write leaves its temporary, which the next run removes
    # (test_a_stale_temporary_is_removed_only_when_its_process_is_dead); the tests that use
    # this run are about the state it leaves, and compare that folder before and after
    remove_stale_temporaries(str(out) + ".run")
    return out


def copy_of(killed, tmp_path):
    out = tmp_path / "rec.mat"
    shutil.copytree(str(killed) + ".run", str(out) + ".run")
    return out


def folder_bytes(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


# ---- 1. one run per record ---------------------------------------------------

def test_a_second_run_on_a_record_in_use_is_refused_naming_the_first(tmp_path, small_mnist, whole):
    out = tmp_path / "rec.mat"
    first = spawn(command(small_mnist, out))
    wait_for_line(first, "Iter", 2)
    first.send_signal(signal.SIGSTOP)  # holds the lock, does nothing, until SIGCONT
    try:
        for extra in (["--force"], ["--resume"], []):
            code, stdout, err = finish(spawn(command(small_mnist, out, *extra)))
            line = one_line(err)
            assert code == 2 and "being written by another fxnn run" in line and f"pid {first.pid} " in line, line
            assert "Iter" not in stdout
    finally:
        first.send_signal(signal.SIGCONT)
    code, _, err = finish(first)
    assert code == 0, err
    assert_same_run(read_mat(str(out)), read_mat(str(whole)))
    assert not os.path.exists(str(out) + ".lock") and not os.path.exists(str(out) + ".run")


def test_the_lock_of_a_killed_run_does_not_block_resume(tmp_path, killed, whole, small_mnist):
    out = copy_of(killed, tmp_path)
    shutil.copy(str(killed) + ".lock", str(out) + ".lock")  # what kill -9 left: a file nobody locks
    assert '"pid"' in (tmp_path / "rec.mat.lock").read_text()
    code, stdout, err = finish(spawn(command(small_mnist, out, "--resume")))
    assert code == 0, err
    assert "Resuming at iteration" in stdout
    assert_same_run(read_mat(str(out)), read_mat(str(whole)))
    assert not os.path.exists(str(out) + ".lock")


# ---- 4. damaged run state ----------------------------------------------------

def truncate(path, keep):
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


def flip(path, where):
    with open(path, "r+b") as f:
        f.seek(int(os.path.getsize(path) * where))
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


DAMAGE = {
    "checkpoint truncated": (lambda run: truncate(run / "checkpoint.npz", 0.5), "checkpoint.npz is damaged"),
    "checkpoint empty": (lambda run: truncate(run / "checkpoint.npz", 0), "checkpoint.npz is damaged"),
    "checkpoint corrupt": (lambda run: flip(run / "checkpoint.npz", 0.3), "checkpoint.npz is damaged"),
    "spool missing": (lambda run: os.unlink(run / "spool-m_w.f32"), "spool-m_w.f32 is missing"),
    "spool truncated": (lambda run: truncate(run / "spool-m_b.f32", 0.7), "spool-m_b.f32 is truncated"),
    "spool corrupt": (lambda run: flip(run / "spool-m_w.f32", 0.3), "spool-m_w.f32 is corrupt (snapshot 1 "),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_state_is_refused_and_nothing_is_invented(tmp_path, capsys, killed, small_mnist, damage):
    out = copy_of(killed, tmp_path)
    run = tmp_path / "rec.mat.run"
    apply, words = DAMAGE[damage]
    apply(run)
    before = folder_bytes(run)
    code, stdout, err = main(capsys, command(small_mnist, out, "--resume")[2:])
    line = one_line(err)
    assert code == 2 and words in line and "--force" in line, line
    assert "Iter" not in stdout and not out.exists()
    assert folder_bytes(run) == before  # the evidence is left as it was


def test_intact_state_resumes_to_the_uninterrupted_result_in_process(tmp_path, capsys, killed, whole, small_mnist):
    out = copy_of(killed, tmp_path)
    code, stdout, err = main(capsys, command(small_mnist, out, "--resume")[2:])
    assert code == 0, err
    assert_same_run(read_mat(str(out)), read_mat(str(whole)))


# ---- 5. resume on other data -------------------------------------------------

def test_resuming_on_other_data_is_refused(tmp_path, capsys, killed, small_mnist):
    other = tmp_path / "other"
    shutil.copytree(small_mnist, other)
    labels = bytearray((other / "mnist" / "t10k-labels-idx1-ubyte").read_bytes())
    labels[-1] = (labels[-1] + 1) % 10  # one test label changed: same files, same sizes, other data
    (other / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(labels)
    out = copy_of(killed, tmp_path)
    for data_dir, extra in ((other, []), (tmp_path / "empty", ["--no-download"])):
        code, stdout, err = main(capsys, command(data_dir, out, "--resume", *extra)[2:])
        line = one_line(err)
        assert code == 2 and "the data differ from the interrupted run's" in line, line
        assert "Iter" not in stdout and not out.exists()


# ---- 6. flags that would fail later ------------------------------------------

@pytest.mark.parametrize("seed", [2**64, 2**32, -1])
def test_seeds_that_cannot_be_stored_exactly_are_refused_by_the_parser(capsys, seed):
    with pytest.raises(SystemExit) as exit_info:
        fxnn.main(["--seed", str(seed)])
    assert exit_info.value.code == 2 and "--seed: must be in 0..4294967295" in capsys.readouterr().err


def test_the_largest_seed_is_stored_exactly(tmp_path, capsys, small_mnist):
    code, _, err = main(capsys, command(small_mnist, tmp_path / "r.mat", nrec=1, ipr=1)[2:-2] + ["--seed", 2**32 - 1])
    assert code == 0, err
    assert read_mat(str(tmp_path / "r.mat"))["meta"]["seed"] == 2**32 - 1


def test_resuming_a_finished_run_says_it_is_finished_and_keeps_it(tmp_path, capsys, small_mnist):
    args = command(small_mnist, tmp_path / "r.mat", nrec=1, ipr=1)[2:]
    assert main(capsys, args)[0] == 0
    finished = (tmp_path / "r.mat").read_bytes()
    code, stdout, err = main(capsys, args + ["--resume"])
    line = one_line(err)
    assert code == 2 and f"nothing to resume: {tmp_path / 'r.mat'} is a finished run" in line, line
    assert "Iter" not in stdout and (tmp_path / "r.mat").read_bytes() == finished


@pytest.mark.parametrize("extra,words", [
    (["-bsize", 10**9], "needs at least"),
    (["-m", "cnn", "-fsize", 1001], "-fsize 1001 is larger than 28x28 images allow"),
    (["-m", "cnn", "-fsize", 55, "-bsize", 10**8], "-bsize 100000000 with -fsize 55 needs at least"),
])
def test_sizes_that_cannot_train_are_refused_before_training(tmp_path, capsys, small_mnist, extra, words):
    code, stdout, err = main(capsys, command(small_mnist, tmp_path / "r.mat")[2:] + extra)
    line = one_line(err)
    assert code == 2 and words in line, line
    assert "Iter" not in stdout and os.listdir(tmp_path) == []


def test_output_paths_of_the_wrong_kind_are_refused_before_training(tmp_path, capsys, small_mnist):
    folder = tmp_path / "a-folder"
    folder.mkdir()
    (folder / "inside").write_bytes(EARLIER)
    code, stdout, err = main(capsys, command(small_mnist, folder, "--force")[2:])
    assert code == 2 and "it is a folder" in one_line(err) and "Iter" not in stdout
    assert (folder / "inside").read_bytes() == EARLIER
    (tmp_path / "rec.mat.run").write_bytes(EARLIER)
    for extra in ([], ["--force"], ["--resume"]):
        code, stdout, err = main(capsys, command(small_mnist, tmp_path / "rec.mat", *extra)[2:])
        assert code == 2 and "rec.mat.run is a file" in one_line(err) and "Iter" not in stdout
    assert (tmp_path / "rec.mat.run").read_bytes() == EARLIER


# ---- 7. empty datasets -------------------------------------------------------

@pytest.mark.parametrize("empty", ["train", "t10k"])
def test_a_dataset_without_images_is_refused_before_the_model(tmp_path, capsys, empty):
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "t10k"):
        n = 0 if split == empty else 5
        write_idx(folder / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    code, stdout, err = main(capsys, command(tmp_path, tmp_path / "r.mat")[2:])
    line = one_line(err)
    assert code == 2 and f"no {'training' if empty == 'train' else 'test'} images" in line, line
    assert "Building model" not in stdout and not (tmp_path / "r.mat").exists()


# ---- 8. full disks -----------------------------------------------------------

def test_a_full_disk_is_one_line_naming_the_file_and_the_space(tmp_path):
    """The kernel's own ENOSPC: /dev/full refuses every write."""
    with pytest.raises(WriteError) as e:
        with room_for("/dev/full", 2**20), open("/dev/full", "wb") as f:
            f.write(b"\0" * 2**20)
            f.flush()
    assert str(e.value).count("\n") == 0
    assert "cannot write /dev/full: no space left on device (it needs about 1.0 MiB, " in str(e.value)
    recorder = Recorder(str(tmp_path), {"w": (3, 4)}, None, None)
    with file_size_limit(16), pytest.raises(WriteError, match=r"spool-w\.f32: file too large for this process's "
                                                              r"file-size limit \(it needs about 48 bytes"):
        recorder.add_record(1.0, 0.5, {"w": np.ones((3, 4), np.float32)}, np.zeros((10, 10)), 0.1)


@contextlib.contextmanager
def file_size_limit(limit):
    """RLIMIT_FSIZE in this process: writes past ``limit`` bytes fail with EFBIG."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_failed_checkpoint_leaves_the_previous_one(tmp_path):
    rng = np.random.default_rng(0)
    flags = {"iters_per_record": 2}
    curves = {k: np.zeros(3 if k in ("vloss", "verate", "yprob", "sec_per_record") else 4)
              for k in checkpoint.CURVES}
    checkpoint.save(str(tmp_path), 2, {"param/w": np.ones(10, np.float32)}, rng, curves, flags)
    with file_size_limit(100_000), pytest.raises(WriteError, match=r"checkpoint\.npz: file too large .*about 392 kiB"):
        checkpoint.save(str(tmp_path), 3, {"param/w": np.ones(100_000, np.float32)}, rng, curves, flags)
    saved = checkpoint.load(str(tmp_path))
    assert saved.record == 2 and saved.engine_state["param/w"].shape == (10,)
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("layout", ["v5", "v7.3"])
def test_a_record_too_large_for_the_disk_leaves_the_earlier_file(tmp_path, monkeypatch, layout):
    """Both writers, scipy's and h5py's (which reports the C library's errno in a RuntimeError)."""
    if layout == "v7.3":
        monkeypatch.setattr(matfile, "V5_MAX_VARIABLE_BYTES", 0)
    spool = tmp_path / "spool.f32"
    spool.write_bytes(np.ones((100, 1000), np.float32).tobytes())
    out = tmp_path / "rec.mat"
    out.write_bytes(EARLIER)
    source = matfile.SnapshotSource("w", (1000,), np.float32, 100, str(spool))
    with file_size_limit(200_000), pytest.raises(WriteError, match=r"rec\.mat: file too large .*about 391 kiB"):
        matfile.write_mat(str(out), {"a": np.zeros(3)}, [source])
    assert out.read_bytes() == EARLIER and temporaries(tmp_path) == []


@pytest.mark.parametrize("where", ["spool", "record"])
def test_a_full_disk_stops_in_one_line_keeps_the_earlier_record_and_resumes(tmp_path, small_mnist, whole, where):
    out = tmp_path / "rec.mat"
    out.write_bytes(EARLIER)
    spool_at_end = 6 * SNAPSHOT
    limit = {"spool": int(3.5 * SNAPSHOT), "record": (spool_at_end + os.path.getsize(whole)) // 2}[where]
    assert spool_at_end < limit < os.path.getsize(whole) or where == "spool"
    code, stdout, err = finish(spawn(command(small_mnist, out, "--force"), file_size_limit=limit))
    line = one_line(err)
    named = {"spool": str(out) + ".run/spool-m_w.f32", "record": str(out)}[where]
    assert code == 4 and f"cannot write {named}: file too large" in line and "it needs about" in line, line
    assert "raise the limit (ulimit -f), then run the same command with --resume" in line
    assert out.read_bytes() == EARLIER and temporaries(tmp_path) == []
    assert stdout.count("Iter") == {"spool": 3, "record": 6}[where]
    code, stdout, err = finish(spawn(command(small_mnist, out, "--resume")))
    assert code == 0, err
    assert_same_run(read_mat(str(out)), read_mat(str(whole)))


# ---- 8. signals during the final write; 10. before the first record ----------

def signal_during_final_write(proc, folder, sig):
    """Send ``sig`` once the final record's temporary file appears."""
    wait_for_line(proc, "Iter", 7)
    deadline = time.monotonic() + 120
    while not any(n.endswith(".mat") for n in temporaries(folder)):
        assert proc.poll() is None and time.monotonic() < deadline, "the final write was not seen"
        time.sleep(0.001)
    proc.send_signal(sig)


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "Interrupted"), (signal.SIGTERM, 143, "Terminated"),
                                           (signal.SIGKILL, -9, None)])
def test_a_signal_during_the_final_write_is_reported_truthfully_and_resumes(tmp_path, small_mnist, sig, code, word):
    out = tmp_path / "rec.mat"
    out.write_bytes(EARLIER)
    args = command(small_mnist, out, "--force", model="fxnn", nrec=6, ipr=1)
    proc = spawn(args)
    signal_during_final_write(proc, tmp_path, sig)
    returncode, stdout, err = finish(proc)
    assert returncode == code, err
    assert out.read_bytes() == EARLIER
    if word:
        line = one_line(err)
        assert line.startswith(f"{word} while writing {out}: it was not written") and "--resume" in line, line
        assert temporaries(tmp_path) == []
    else:
        assert len(temporaries(tmp_path)) == 1  # what kill -9 leaves; the next run removes it
    returncode, stdout, err = finish(spawn(args[:-1] + ["--resume"]))
    assert returncode == 0, err
    assert read_mat(str(out))["vloss"].shape == (7,) and temporaries(tmp_path) == []


def test_a_stale_temporary_is_removed_only_when_its_process_is_dead(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with atomic_path(str(tmp_path / "x.mat")) as tmp:
        live = os.path.basename(tmp)
        stale = live.replace(f"-{os.getpid()}@", f"-{dead.pid}@")
        (tmp_path / stale).write_bytes(b"left by a kill -9")
        (tmp_path / ".tmp-foreign.mat").write_bytes(b"not ours")
        assert remove_stale_temporaries(str(tmp_path)) == [str(tmp_path / stale)]
        open(tmp, "wb").write(b"new")
    assert temporaries(tmp_path) == [".tmp-foreign.mat"] and (tmp_path / "x.mat").read_bytes() == b"new"


def test_a_ctrl_c_as_the_temporary_is_created_leaves_no_file(tmp_path, monkeypatch):
    """A signal taken by another thread reaches the main thread at any moment,
    even inside the call that creates the file: here right after it."""
    real_open = os.open

    def open_then_interrupt(name, *args, **kwargs):
        fd = real_open(name, *args, **kwargs)
        if os.path.basename(str(name)).startswith(".tmp-"):
            os.close(fd)
            raise KeyboardInterrupt
        return fd
    monkeypatch.setattr(os, "open", open_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(str(tmp_path / "x.mat")):
            pass
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # several fxnn.py processes end to end
def test_ctrl_c_before_the_first_record_records_nothing_and_offers_no_resume(tmp_path):
    out = tmp_path / "rec.mat"
    out.write_bytes(EARLIER)
    proc = spawn(command(tmp_path, out, "--force", "--no-download", model="fxnn"))  # 10,000 test images
    wait_for_line(proc, "Building model")
    proc.send_signal(signal.SIGINT)
    code, stdout, err = finish(proc)
    assert code == 130, err
    assert one_line(err) in ("Interrupted before the first record; nothing was recorded.",
                             "Interrupted before training started; nothing was recorded.")  # a ms earlier
    assert "--resume" not in stdout + err and "Iter" not in stdout
    assert out.read_bytes() == EARLIER and not os.path.exists(str(out) + ".run")


def test_ctrl_c_during_the_first_validation_records_nothing(tmp_path, capsys, monkeypatch, small_mnist):
    """The same, deterministically inside the first validation (in this process)."""
    import fxnn.training.loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(fxnn.training.loop, "validate", interrupted)
    out = tmp_path / "rec.mat"
    out.write_bytes(EARLIER)
    code, stdout, err = main(capsys, command(small_mnist, out, "--force")[2:])
    assert code == 130 and one_line(err) == "Interrupted before the first record; nothing was recorded."
    assert "--resume" not in stdout + err and out.read_bytes() == EARLIER
    assert sorted(os.listdir(tmp_path)) == ["rec.mat"]


def can_mount_tmpfs():
    """Root with CAP_SYS_ADMIN: a private mount namespace can mount a tmpfs."""
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


ON_A_SMALL_DISK = """set -e
mount -t tmpfs -o size=$SIZE tmpfs "$DISK"
printf 'an earlier result' > "$DISK/rec.mat"
set +e
"$@" > "$SAVED/stdout" 2> "$SAVED/stderr"
echo $? > "$SAVED/code"
cp -a "$DISK/." "$SAVED/disk"
"""


#: fxnn.py without its disk preflight, as when the disk fills up after the run started
WITHOUT_DISK_CHECK = ("import sys; from fxnn.training import preflight; preflight.check_disk = lambda *a, **k: None; "
                      "import fxnn; sys.exit(fxnn.main(sys.argv[1:]))")


def on_a_small_disk(size, disk, saved, cmd):
    subprocess.run(["unshare", "-m", "sh", "-c", ON_A_SMALL_DISK, "sh", *cmd],
                   env=dict(os.environ, SIZE=size, DISK=str(disk), SAVED=str(saved)), check=True, timeout=300)
    return int((saved / "code").read_text()), one_line((saved / "stderr").read_text())


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs root to mount a small tmpfs in a private mount namespace")
@pytest.mark.parametrize("size,fails", [("160k", "during the run"), ("400k", "the record")])
def test_a_really_full_disk_stops_in_one_line_and_resumes(tmp_path, small_mnist, whole, size, fails):
    """The kernel's ENOSPC on a tmpfs of ``size`` (mounted in a private mount
    namespace, gone with the process): the disk preflight refuses the run up
    front; past it (the disk filled after the start), the run stops in one
    line, the earlier record on that disk is intact, and a copy of what the
    disk held resumes."""
    disk, saved = tmp_path / "disk", tmp_path / "saved"
    disk.mkdir()
    (saved / "disk").mkdir(parents=True)
    cmd = command(small_mnist, disk / "rec.mat", "--force")
    code, line = on_a_small_disk(size, disk, saved, cmd)
    assert code == 2 and "is free there; use --record-params last" in line, line
    assert (saved / "disk" / "rec.mat").read_bytes() == EARLIER
    code, line = on_a_small_disk(size, disk, saved, [cmd[0], "-c", WITHOUT_DISK_CHECK] + cmd[2:])
    assert code == 4, line
    assert ": no space left on device (it needs about " in line and "free some space" in line, line
    named = line.split("cannot write ")[1].split(":")[0]
    if fails == "the record":
        assert named == str(disk / "rec.mat"), line
    else:
        assert named.startswith(str(disk / "rec.mat.run") + "/"), line
    after = saved / "disk"
    assert (after / "rec.mat").read_bytes() == EARLIER and temporaries(after) == []
    resumed = command(small_mnist, after / "rec.mat", "--resume")
    code, stdout, err = finish(spawn(resumed))
    assert code == 0, err
    assert_same_run(read_mat(str(after / "rec.mat")), read_mat(str(whole)))
