"""The command line end to end: console lines, the record file, seeds,
learning, safety of earlier results, and bad flags."""
import dataclasses
import os
import re

import numpy as np
import pytest

import fxnn
from fxnn.training.matfile import read_mat

LINE = re.compile(r"^Iter (\d{5})/(\d{5}): loss\|erate (--------|\d\.\d{6})\|(------|[ \d]{3}\.\d\d)% "
                  r"valid loss\|erate \d\.\d{6}\|[ \d]{3}\.\d\d%$")


def run(capsys, *argv):
    code = fxnn.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_short_run_prints_the_original_lines_and_writes_every_key(tmp_path, capsys, small_mnist):
    out_file = tmp_path / "rec.mat"
    code, out, err = run(capsys, "--model=fxnn", "-nrec", 3, "-ipr", 20, "--data-dir", small_mnist,
                         "-o", out_file, "--seed", 1, "--engine", "pytensor")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == 'Using dataset "MNIST".'
    assert lines[1] == 'Building model "fxnn" ...  done.'
    iters = [line for line in lines if line.startswith("Iter")]
    assert [LINE.match(line).group(1) for line in iters] == ["00000", "00020", "00040", "00060"]
    assert iters[0].startswith("Iter 00000/00060: loss|erate --------|------% valid")
    assert lines[-1] == f"Saved recording to file {out_file}"
    assert not os.path.exists(str(out_file) + ".run")  # the spool is gone after a complete run

    rec = read_mat(str(out_file))
    assert rec["tloss"].shape == rec["terate"].shape == (60,)
    assert rec["vloss"].shape == rec["verate"].shape == (4,)
    for name, shape in {"conv0_w": (5, 32), "conv0_b": (32,), "conv1_w": (160, 64), "conv1_b": (64,),
                        "mlp0_w": (3136, 384), "mlp0_b": (384,), "mlp1_w": (384, 192), "mlp1_b": (192,),
                        "mlp2_w": (192, 10), "mlp2_b": (10,)}.items():
        assert rec[name].shape == (4,) + shape, name
    assert rec["x"].shape == (10, 1, 28, 28) and rec["y"].shape == (10,)
    assert rec["yprob"].shape == (4, 10, 10)
    np.testing.assert_allclose(rec["yprob"].sum(axis=2), 1, rtol=1e-5)
    meta = rec["meta"]
    assert (meta["model"], meta["dataset"], meta["engine"], meta["status"]) == ("fxnn", "MNIST", "pytensor", "complete")
    assert meta["seed"] == 1 and meta["iterations_done"] == 60
    assert (meta["precision"], meta["memory_format"]) == ("fp32", "conv0: NCHW; conv1: NCHW")
    assert "train-images-idx3-ubyte.gz" in meta["data_files"]
    assert meta["flags"]["batch_size"] == 64 and meta["sec_per_record"].shape == (4,)
    # the printed validation numbers are the recorded ones
    for line, vloss, verate in zip(iters, rec["vloss"], rec["verate"]):
        assert f"valid loss|erate {vloss:8.6f}|{verate * 100:6.2f}%" in line


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, capsys, small_mnist):
    def curves(seed, name):
        code, _, err = run(capsys, "--model=cnn", "-nrec", 2, "-ipr", 5, "--data-dir", small_mnist,
                           "-o", tmp_path / name, "--seed", seed, "--engine", "torch")
        assert code == 0, err
        rec = read_mat(str(tmp_path / name))
        return rec["tloss"], rec["vloss"], rec["conv1_w"][-1]
    a, b, c = curves(7, "a.mat"), curves(7, "b.mat"), curves(8, "c.mat")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_training_lowers_the_validation_loss(tmp_path, capsys, small_mnist):
    code, _, err = run(capsys, "--model=fxnn", "-nrec", 3, "-ipr", 40, "--data-dir", small_mnist,
                       "-o", tmp_path / "r.mat", "--seed", 2, "--engine", "torch", "--record-params", "none")
    assert code == 0, err
    rec = read_mat(str(tmp_path / "r.mat"))
    assert rec["vloss"][-1] < 0.6 * rec["vloss"][0]
    assert rec["verate"][-1] < 0.5
    assert "conv0_w" not in rec


def test_an_existing_record_is_not_overwritten_without_force(tmp_path, capsys, small_mnist):
    out_file = tmp_path / "rec.mat"
    out_file.write_bytes(b"an earlier result")
    code, out, err = run(capsys, "-nrec", 1, "-ipr", 1, "--data-dir", small_mnist, "-o", out_file)
    assert code == 2 and "--force" in err and len(err.strip().splitlines()) == 1
    assert out == "" and out_file.read_bytes() == b"an earlier result"
    code, _, err = run(capsys, "-m", "baseline", "-nrec", 1, "-ipr", 1, "--data-dir", small_mnist,
                       "-o", out_file, "--force")
    assert code == 0, err
    assert read_mat(str(out_file))["meta"]["model"] == "baseline"


def test_an_unwritable_output_fails_before_training(tmp_path, capsys, small_mnist):
    code, out, err = run(capsys, "--data-dir", small_mnist, "-o", tmp_path / "no-such-dir" / "rec.mat")
    assert code == 2 and "does not exist" in err and out == ""


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "fashionmnist"])
def test_missing_data_without_download_says_where_to_put_it(tmp_path, capsys, dataset, monkeypatch):
    from fxnn.data import mnist
    monkeypatch.setattr(mnist, "FASHION_MNIST", dataclasses.replace(mnist.FASHION_MNIST, system_folders=()))
    code, out, err = run(capsys, "-d", dataset, "--data-dir", tmp_path, "-o", tmp_path / "r.mat", "--no-download")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and str(tmp_path / dataset.replace("mnist", "-mnist")) in err


@pytest.mark.parametrize("argv", [["-m", "resnet"], ["-bsize", "0"], ["-pdpo", "1.5"], ["-lr", "-1"],
                                  ["-fsize", "4"], ["-nrec", "x"]])
def test_bad_flags_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fxnn.main(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_an_empty_record_name_a_file_as_data_folder_and_a_folder_as_dataset_are_refused_by_the_parser(tmp_path, capsys):
    (tmp_path / "mnist.npz").write_bytes(b"x")
    for argv, words in ((["-o", ""], "argument -o/--out: needs a file name"),
                        (["--data-dir", str(tmp_path / "mnist.npz")], f"{tmp_path / 'mnist.npz'} is a file, not a folder"),
                        (["--data-dir", " "], "argument --data-dir: needs a folder"),
                        (["-d", str(tmp_path)], f"{str(tmp_path)!r} is a folder, not a dataset")):
        with pytest.raises(SystemExit) as exit_info:
            fxnn.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and words in err.strip().splitlines()[-1], err
    assert os.listdir(tmp_path) == ["mnist.npz"]


def test_diverging_run_stops_keeps_its_record_and_exits_3(tmp_path, capsys, small_mnist):
    out_file = tmp_path / "rec.mat"
    code, _, err = run(capsys, "-m", "fxnn", "-lr", "1e10", "-nrec", 3, "-ipr", 10,
                       "--data-dir", small_mnist, "-o", out_file, "--seed", 0)
    assert code == 3 and "-lr" in err and "Warning" not in err
    rec = read_mat(str(out_file))
    assert rec["meta"]["status"] == "diverged"
    assert not np.isfinite(rec["tloss"][-1]) and np.all(np.isfinite(rec["tloss"][:-1]))
