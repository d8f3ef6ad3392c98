"""Records as CSV, read back with Python's csv module: every iteration's
training values, the validation rows, the learn rate of the schedule."""
import csv
import io
import math
import os

import numpy as np
import pytest

import fxnn
from fxnn.analysis import to_csv
from fxnn.training.matfile import read_mat, write_mat


def read_csv(path_or_text):
    if isinstance(path_or_text, str) and "\n" in path_or_text:
        return list(csv.DictReader(io.StringIO(path_or_text)))
    with open(path_or_text, newline="") as f:
        return list(csv.DictReader(f))


def cell(value):
    return None if value == "" else float(value)


def test_a_real_record_as_csv(tmp_path, capsys, small_mnist):
    pytest.importorskip("torch")
    rec_path = tmp_path / "r.mat"
    assert fxnn.main(["-m", "baseline", "-nrec", "3", "-ipr", "4", "-lr", "0.3", "-ld", "0.25", "--seed", "2",
                      "--data-dir", small_mnist, "-o", str(rec_path), "--engine", "torch"]) == 0
    capsys.readouterr()
    assert to_csv.main([str(rec_path), "-o", str(tmp_path / "c.csv")]) == 0
    rows = read_csv(tmp_path / "c.csv")
    rec = read_mat(str(rec_path))
    assert list(rows[0]) == ["record_file", "iteration", "tloss", "terate", "vloss", "verate", "learn_rate"]
    assert [int(r["iteration"]) for r in rows] == list(range(13))
    assert {r["record_file"] for r in rows} == {str(rec_path)}
    assert cell(rows[0]["tloss"]) is None and cell(rows[0]["learn_rate"]) is None  # the untrained network
    np.testing.assert_array_equal([cell(r["tloss"]) for r in rows[1:]], rec["tloss"])  # exactly: repr round-trips
    np.testing.assert_array_equal([cell(r["terate"]) for r in rows[1:]], rec["terate"])
    np.testing.assert_array_equal([cell(rows[i]["verate"]) for i in (0, 4, 8, 12)], rec["verate"])
    np.testing.assert_array_equal([cell(rows[i]["vloss"]) for i in (0, 4, 8, 12)], rec["vloss"])
    assert all(cell(rows[i]["vloss"]) is None for i in range(13) if i % 4)
    rates = [cell(r["learn_rate"]) for r in rows[1:]]
    assert rates == pytest.approx([0.3] * 4 + [0.3 * 0.25 ** 0.5] * 4 + [0.3 * 0.25] * 4)


def test_an_interrupted_diverged_record_and_several_records_to_stdout(tmp_path, capsys, monkeypatch):
    tloss = np.r_[np.linspace(0.3, 0.1, 6), np.nan]  # diverged at iteration 7, in the second record of 5
    write_mat(str(tmp_path / "d.mat"), {
        "tloss": tloss, "terate": np.full(7, 0.5), "vloss": np.array([0.4, 0.2]), "verate": np.array([0.9, 0.3]),
        "meta": {"model": "fxnn", "dataset": "MNIST", "data_source": "test", "data_files": "", "engine": "torch",
                 "device": "cpu", "seed": 1, "status": "diverged", "iterations_done": 7,
                 "flags": {"iters_per_record": 5, "num_records": 4}},  # no learn rate flags (an older record)
    }, [])
    (tmp_path / "e.mat").write_bytes((tmp_path / "d.mat").read_bytes())
    assert to_csv.main([str(tmp_path / "d.mat"), str(tmp_path / "e.mat")]) == 0
    out = capsys.readouterr().out
    rows = read_csv(out)
    assert len(rows) == 2 * 8 and [r["record_file"] for r in rows].count(str(tmp_path / "e.mat")) == 8
    first = rows[:8]
    assert math.isnan(cell(first[7]["tloss"])) and cell(first[5]["verate"]) == 0.3
    assert all(r["learn_rate"] == "" for r in first)
    monkeypatch.chdir(tmp_path)  # "-o -" is standard output too, not a file called "-"
    assert to_csv.main([str(tmp_path / "d.mat"), "-o", "-"]) == 0
    assert read_csv(capsys.readouterr().out) == rows[:8] and not os.path.exists(tmp_path / "-")


def test_bad_records_one_line_and_an_earlier_csv_kept(tmp_path, capsys):
    (tmp_path / "old.csv").write_text("earlier results\n")
    (tmp_path / "junk.mat").write_bytes(b"junk" * 50)
    assert to_csv.main([str(tmp_path / "junk.mat"), "-o", str(tmp_path / "old.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.mat: not an fxnn record" in err
    assert (tmp_path / "old.csv").read_text() == "earlier results\n"
