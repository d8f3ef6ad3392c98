"""The training clocks of a record (``twall``, ``tcpu``: the seconds of training to each record):
running sums of the recorder's per-record times, continued across a resume, written by a real run
and read back by scipy and GNU Octave. (Kill and resume in real processes: test_interrupt.py;
seconds to a target error: test_analysis.py.)"""
import os
import subprocess

import numpy as np
import scipy.io

import fxnn
from octave_tool import octave_cli
from fxnn.training.recorder import Recorder


def recorder(tmp_path):
    return Recorder(str(tmp_path / "run"), {"w": (2,)}, np.zeros((10, 1, 2, 2), np.float32), np.zeros(10),
                    record_params="none")


def add(rec, seconds, cpu_seconds):
    rec.add_record(1.0, 0.5, {"w": np.ones(2, np.float32)}, np.full((10, 10), 0.1), seconds, cpu_seconds)


def saved(rec, path):
    rec.save(str(path), {"model": "fxnn"})
    return scipy.io.loadmat(str(path))


def test_the_clocks_are_running_sums_and_a_resume_goes_on_from_the_checkpoints(tmp_path):
    first = recorder(tmp_path)
    for wall, cpu in ((0.0, 0.0), (1.5, 1.0), (2.0, 1.25)):
        add(first, wall, cpu)
    resumed = recorder(tmp_path)
    resumed.restore(first.state(), {"w": np.ones(2, np.float32)})
    add(resumed, 0.5, 0.25)  # the time between the stop and the resume is in neither list
    r = saved(resumed, tmp_path / "rec.mat")
    assert r["twall"].shape == r["tcpu"].shape == (4, 1)
    np.testing.assert_array_equal(r["twall"][:, 0], [0.0, 1.5, 3.5, 4.0])
    np.testing.assert_array_equal(r["tcpu"][:, 0], [0.0, 1.0, 2.25, 2.5])


def test_a_checkpoint_from_before_cpu_times_resumes_with_the_cpu_clock_unknown(tmp_path):
    first = recorder(tmp_path)
    add(first, 0.0, 0.0)
    add(first, 2.0, 1.0)
    state = {k: v for k, v in first.state().items() if k != "cpu_per_record"}
    resumed = recorder(tmp_path)
    resumed.restore(state, {"w": np.ones(2, np.float32)})
    add(resumed, 3.0, 2.0)
    r = saved(resumed, tmp_path / "rec.mat")
    np.testing.assert_array_equal(r["twall"][:, 0], [0.0, 2.0, 5.0])
    assert np.all(np.isnan(r["tcpu"]))  # never a CPU time made up for the records before the resume


def test_a_run_records_its_clocks_read_alike_by_scipy_and_octave(tmp_path, capsys, small_mnist):
    out = tmp_path / "rec.mat"
    code = fxnn.main(["-m", "fxnn", "-nrec", "3", "-ipr", "5", "--data-dir", str(small_mnist), "-o", str(out),
                      "--seed", "1", "--engine", "torch", "--record-params", "none", "--threads", "1"])
    assert code == 0, capsys.readouterr().err
    r = scipy.io.loadmat(str(out), squeeze_me=True)
    twall, tcpu = r["twall"], r["tcpu"]
    assert twall.shape == tcpu.shape == r["verate"].shape == (4,)
    assert twall[0] == tcpu[0] == 0.0
    assert np.all(np.diff(twall) > 0) and np.all(np.diff(tcpu) > 0)  # every record trained
    np.testing.assert_allclose(twall, np.cumsum(r["meta"]["sec_per_record"].item()), rtol=1e-12)
    octave = octave_cli()
    script = f"r = load('{out}'); printf('%.17g ', r.twall); printf('\\n'); printf('%.17g ', r.tcpu);"
    done = subprocess.run([octave, "--no-gui", "--quiet", "--no-init-file", "--eval", script], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, HOME=str(tmp_path)))
    assert done.returncode == 0, done.stderr
    wall_line, cpu_line = done.stdout.strip().split("\n")
    assert [float(v) for v in wall_line.split()] == twall.tolist()
    assert [float(v) for v in cpu_line.split()] == tcpu.tolist()

