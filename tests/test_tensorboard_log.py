"""--tensorboard DIR: event files read back with TensorBoard's own reader
hold the run's curves, learn rate and flags; a resumed run replaces what the
interrupted one logged past its checkpoint; without the package, one line."""
import os
import sys

import numpy as np
import pytest

import fxnn
from fxnn.training.loop import Schedule
from fxnn.training.matfile import read_mat
from fxnn.training.recorder import Recorder
from fxnn.training.tensorboard_log import TensorBoardLog, check

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_back(logdir):
    """{tag: {step: value}} of the scalars, and {tag: text} of the texts."""
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    scalars = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
    return scalars, texts


def test_a_run_logs_every_iteration_every_record_and_its_flags(tmp_path, capsys, small_mnist):
    pytest.importorskip("torch")
    out, logdir = tmp_path / "r.mat", tmp_path / "tb" / "fxnn"
    code = fxnn.main(["-m", "baseline", "-nrec", "3", "-ipr", "4", "-lr", "0.3", "-ld", "0.25",
                      "--data-dir", small_mnist, "-o", str(out), "--seed", "5", "--engine", "torch",
                      "--tensorboard", str(logdir)])
    assert code == 0, capsys.readouterr().err
    rec = read_mat(str(out))
    scalars, texts = read_back(logdir)
    assert sorted(scalars) == ["learn_rate", "train/error_pct", "train/loss", "valid/error_pct", "valid/loss"]
    steps = list(range(1, 13))
    assert sorted(scalars["train/loss"]) == steps
    np.testing.assert_allclose([scalars["train/loss"][s] for s in steps], rec["tloss"], rtol=1e-6)
    np.testing.assert_allclose([scalars["train/error_pct"][s] for s in steps], 100 * rec["terate"], rtol=1e-6)
    assert sorted(scalars["valid/loss"]) == [0, 4, 8, 12]
    np.testing.assert_allclose([scalars["valid/loss"][s] for s in (0, 4, 8, 12)], rec["vloss"], rtol=1e-6)
    np.testing.assert_allclose([scalars["valid/error_pct"][s] for s in (0, 4, 8, 12)], 100 * rec["verate"], rtol=1e-6)
    # the learn rate of each record, from its first iteration: lr * ld**(i / (nrec - 1))
    assert scalars["learn_rate"] == pytest.approx({1: 0.3, 5: 0.3 * 0.25 ** 0.5, 9: 0.3 * 0.25})
    assert "| model | baseline |" in texts["flags"] and "| seed | 5 |" in texts["flags"]
    assert f"| fxnn_version | {fxnn.__version__} |" in texts["provenance"]


def recorder_with(tmp_path, iterations, records):
    rec = Recorder(str(tmp_path), {}, np.zeros((1, 1, 2, 2), np.float32), np.zeros(1, np.int32), "none")
    for r in range(records):
        rec.add_record(1.0 / (r + 1), 0.5 / (r + 1), {}, np.zeros((1, 10)), 0.0)
    for i in range(iterations):
        rec.add_iteration(1.0 + i, 0.01 * i)
    return rec


def test_a_resumed_run_replaces_what_was_logged_past_the_checkpoint(tmp_path):
    schedule = Schedule(3, 2, 8, 0.1, 0.5)
    logdir = tmp_path / "tb"
    first = TensorBoardLog(str(logdir), recorder_with(tmp_path, 0, 0), schedule, {"seed": 1}, {})  # a fresh run
    first.update(recorder_with(tmp_path, 2, 2))
    first.close(recorder_with(tmp_path, 3, 2))  # interrupted after one more iteration, no checkpoint for it

    resumed = recorder_with(tmp_path, 2, 2)  # the checkpoint: 2 iterations, records 0 and 1
    second = TensorBoardLog(str(logdir), resumed, schedule, {"seed": 1}, {})
    resumed.tloss.append(-7.0)  # iteration 3, trained again with other numbers
    resumed.terate.append(0.0)
    second.close(resumed)
    scalars, _ = read_back(logdir)
    assert scalars["train/loss"] == {1: 1.0, 2: 2.0, 3: -7.0}
    assert scalars["valid/loss"] == {0: 1.0, 2: 0.5}


def test_without_the_package_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    for name in [n for n in sys.modules if n.split(".")[0] == "tensorboard"] + ["tensorboard"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it raises ImportError
    code = fxnn.main(["--tensorboard", str(tmp_path / "tb"), "-o", str(tmp_path / "r.mat"), "--engine", "pytensor"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "pip install 'fxnn[tensorboard]'" in err and "Traceback" not in err
    assert not os.listdir(tmp_path)


def test_a_new_run_takes_a_folder_of_earlier_events_only_with_force_and_then_shows_alone(tmp_path):
    schedule = Schedule(2, 2, 8, 0.1, 0.5)
    logdir = str(tmp_path / "tb")
    assert check(logdir) is None
    TensorBoardLog(logdir, recorder_with(tmp_path, 0, 0), schedule, {}, {}).close(recorder_with(tmp_path, 4, 3))
    assert "holds the events of an earlier run" in check(logdir) and "--force" in check(logdir)
    assert check(logdir, resume=True) is None and check(logdir, force=True) is None
    again = recorder_with(tmp_path, 0, 1)
    again.vloss[0] = 9.0
    log = TensorBoardLog(logdir, recorder_with(tmp_path, 0, 0), schedule, {}, {})  # --force: a new run
    log.close(again)
    scalars, _ = read_back(logdir)
    assert scalars["valid/loss"] == {0: 9.0} and not scalars.get("train/loss")  # the earlier run is not shown
    assert len(os.listdir(logdir)) == 2  # nor deleted


def test_check_refuses_a_file_and_an_empty_name(tmp_path):
    (tmp_path / "f").write_text("")
    assert "is a file, not a folder" in check(str(tmp_path / "f"))
    assert f"{tmp_path / 'f'} is a file, not a folder" in check(str(tmp_path / "f" / "tb" / "run"))  # on the way
    assert "needs a folder" in check("")
    assert check(str(tmp_path / "new" / "deeper")) is None


def test_a_folder_the_system_will_not_make_is_one_line_and_no_record(tmp_path, capsys, small_mnist):
    """/proc passes check() (it exists, and root may write to it) but refuses
    any new folder: the run stops in one line before training."""
    pytest.importorskip("torch")
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    out = tmp_path / "r.mat"
    code = fxnn.main(["-m", "baseline", "-nrec", "1", "-ipr", "1", "--data-dir", small_mnist, "-o", str(out),
                      "--engine", "torch", "--tensorboard", "/proc/fxnn-tb"])
    stdout, err = capsys.readouterr()
    assert code == 2 and err.startswith("fxnn: error: --tensorboard /proc/fxnn-tb: "), err  # (not writable, as non-root)
    assert err.count("\n") == 1 and "Traceback" not in err and "Iter" not in stdout
    assert not out.exists() and os.listdir(tmp_path) == []
