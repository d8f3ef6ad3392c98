"""Interruption in real processes: Ctrl-C and SIGTERM save a loadable record,
and a run killed with SIGKILL resumes to exactly the uninterrupted result."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, wait_for_line
from fxnn.training.matfile import read_mat


def start(small_mnist, out, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "fxnn.py"), "-m", "fxnn", "-nrec", "6", "-ipr", "8",
           "--data-dir", small_mnist, "-o", str(out), "--seed", "3", "--engine", "pytensor", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


def finish(proc):
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "Interrupted"), (signal.SIGTERM, 143, "Terminated")])
def test_signal_saves_a_loadable_record(tmp_path, small_mnist, sig, code, word):
    out_file = tmp_path / "rec.mat"
    proc = start(small_mnist, out_file)
    wait_for_line(proc, n=2)
    proc.send_signal(sig)
    returncode, out, err = finish(proc)
    assert returncode == code, err
    assert f"{word}: saved the recording so far to file {out_file}" in out and "Traceback" not in err
    rec = read_mat(str(out_file))
    assert rec["meta"]["status"] == word.lower()
    assert 2 <= len(rec["vloss"]) < 7 and len(rec["tloss"]) == rec["meta"]["iterations_done"]
    assert os.path.exists(str(out_file) + ".run/checkpoint.npz")


@pytest.mark.slow  # several fxnn.py processes end to end
def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path, small_mnist):
    whole, resumed = tmp_path / "whole.mat", tmp_path / "resumed.mat"
    code, _, err = finish(start(small_mnist, whole))
    assert code == 0, err

    proc = start(small_mnist, resumed)
    wait_for_line(proc, n=4)
    proc.kill()
    proc.wait()
    assert not resumed.exists()
    with np.load(str(resumed) + ".run/checkpoint.npz") as saved:
        wall, cpu = saved["curves/sec_per_record"], saved["curves/cpu_per_record"]
    code, out, err = finish(start(small_mnist, resumed, "--resume"))
    assert code == 0, err
    assert "Resuming at iteration" in out

    a, b = read_mat(str(whole)), read_mat(str(resumed))
    for key in ("tloss", "terate", "vloss", "verate", "yprob", "conv0_w", "conv1_w", "mlp0_w", "mlp2_b"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not os.path.exists(str(resumed) + ".run")
    # the training clocks go on from the checkpoint's: its records' times, then the resumed process's
    done = len(wall)
    assert 3 <= done < 7 and a["twall"].shape == b["twall"].shape == b["tcpu"].shape == (7,)
    np.testing.assert_array_equal(b["twall"][:done], np.cumsum(wall))
    np.testing.assert_array_equal(b["tcpu"][:done], np.cumsum(cpu))
    assert np.all(np.diff(b["twall"]) > 0) and np.all(np.diff(b["tcpu"]) > 0)
    np.testing.assert_allclose(b["twall"], np.cumsum(b["meta"]["sec_per_record"]), rtol=1e-12)


def test_resume_refuses_changed_flags_and_missing_checkpoints(tmp_path, small_mnist):
    out_file = tmp_path / "rec.mat"
    code, _, err = finish(start(small_mnist, out_file, "--resume"))
    assert code == 2 and "nothing to resume" in err
    proc = start(small_mnist, out_file)
    wait_for_line(proc, n=2)
    proc.send_signal(signal.SIGINT)
    finish(proc)
    code, _, err = finish(start(small_mnist, out_file, "--resume", "-lr", "0.01"))
    assert code == 2 and "--learn-rate (run: 0.2, now: 0.01)" in err
    code, _, err = finish(start(small_mnist, out_file))
    assert code == 2 and "--resume" in err and "--force" in err
