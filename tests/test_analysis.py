"""Summaries and seed sweeps (plots: test_plot.py), on records the tests construct (with
known curves) and on short real sweeps."""
import csv
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from fxnn.analysis import summary, sweep
from fxnn.analysis.records import RecordError, distinct_runs, load_run
from fxnn.analysis.stats import Spread, error_at, iterations_to, welch_difference
from conftest import ROOT
from fxnn.training.matfile import write_mat
from test_hostile_records import genuine_small


def make_record(path, model, seed, verate, ipr=100, engine="torch", source="test data", clocks=None, **flags):
    """A record file with the given validation error per record and simple
    other curves, in the layout fxnn.py writes (``clocks``: the training
    clocks ``twall`` and ``tcpu``, absent as in records written before them;
    ``flags``: more of fxnn.py's flags, as it records them)."""
    verate = np.asarray(verate, dtype=float)
    iters = (len(verate) - 1) * ipr
    terate = np.linspace(verate[0], verate[-1], iters)
    write_mat(str(path), {
        "tloss": terate / 4, "terate": terate, "vloss": verate / 4, "verate": verate,
        "meta": {"model": model, "dataset": "MNIST", "data_source": source, "data_files": "",
                 "engine": engine, "device": "cpu", "seed": seed, "status": "complete", "iterations_done": iters,
                 "flags": {"iters_per_record": ipr, "num_records": len(verate) - 1, **flags}},
        **(clocks or {}),
    }, [])
    return str(path)


FXNN = {1: [0.9, 0.20, 0.08, 0.04, 0.030], 2: [0.9, 0.25, 0.06, 0.05, 0.035], 3: [0.9, 0.18, 0.09, 0.045, 0.028]}
CNN = {1: [0.9, 0.40, 0.12, 0.07, 0.045], 2: [0.9, 0.38, 0.15, 0.06, 0.041]}


@pytest.fixture
def records(tmp_path):
    return ([make_record(tmp_path / f"fxnn-{s}.mat", "fxnn", s, v) for s, v in FXNN.items()]
            + [make_record(tmp_path / f"cnn-{s}.mat", "cnn", s, v) for s, v in CNN.items()])


def test_load_run_reads_the_curves_and_identity(records):
    run = load_run(records[0])
    assert (run.model, run.engine, run.seed, run.iters_per_record) == ("fxnn", "torch", 1, 100)
    np.testing.assert_array_equal(run.verate, FXNN[1])
    np.testing.assert_array_equal(run.record_iterations, [0, 100, 200, 300, 400])
    assert len(run.tloss) == 400 and run.label == "fxnn (torch)"


def test_load_run_refuses_missing_and_foreign_files(tmp_path):
    with pytest.raises(RecordError, match="no such record file"):
        load_run(str(tmp_path / "absent.mat"))
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all" * 20)
    with pytest.raises(RecordError, match="junk.mat: not an fxnn record"):
        load_run(str(tmp_path / "junk.mat"))
    with pytest.raises(RecordError) as e:  # a folder given where its records were meant
        load_run(str(tmp_path))
    assert str(e.value) == f"{tmp_path}: a folder, not a record file; give the records in it ({tmp_path}/*.mat)"
    os.mkfifo(tmp_path / "pipe.mat")  # a pipe: opening it to read would wait for a writer for ever
    with pytest.raises(RecordError, match="pipe.mat: not a plain file"):
        load_run(str(tmp_path / "pipe.mat"))


def test_error_at_and_iterations_to_target(records):
    run = load_run(records[1])  # fxnn seed 2
    assert error_at(run, 200) == 0.06
    with pytest.raises(ValueError, match="no validation at iteration 150"):
        error_at(run, 150)
    assert iterations_to(run, 0.05) == 300       # 0.05 <= 0.05 counts as reached
    assert iterations_to(run, 0.25) == 100
    assert math.isnan(iterations_to(run, 0.01))  # never reached


def test_spread_is_the_sample_mean_and_std_and_counts_nans():
    s = Spread.of([1.0, 2.0, 4.0, math.nan])
    assert (s.n, s.missing) == (3, 1)
    assert s.mean == pytest.approx(7 / 3)
    assert s.std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))


@pytest.mark.parametrize("a, b", [([1, 2, 3.5], [2, 4, 5, 6]), ([0.03, 0.035, 0.028], [0.045, 0.041]),
                                  (np.arange(10.0), np.arange(5.0) * 3)])
def test_welch_interval_equals_scipys(a, b):
    d = welch_difference(a, b, level=0.9)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.9)
    assert d.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert (d.low, d.high) == pytest.approx((ref.low, ref.high))


def test_welch_interval_needs_two_values_a_side():
    d = welch_difference([1.0], [2.0, 3.0])
    assert d.diff == -1.5 and math.isnan(d.low) and math.isnan(d.high)


def test_summary_rows_are_right_on_constructed_records(records, tmp_path):
    runs = [load_run(p) for p in records]
    rows = summary.summarize(runs, at=[100, 400], target=0.05, versus="cnn")
    get = {(r["measure"], r["label"], r["at"]): r for r in rows}
    fx100 = [v[1] for v in FXNN.values()]
    cnn100 = [v[1] for v in CNN.values()]
    row = get["verate", "fxnn (torch)", 100]
    assert row["mean"] == pytest.approx(np.mean(fx100)) and row["std"] == pytest.approx(np.std(fx100, ddof=1))
    assert row["n"] == 3
    # iterations to 5%, interpolated between the records around the crossing: fxnn's seeds
    # 200 + 100 * 3/4, 300 (reached exactly), 200 + 100 * 4/4.5; cnn's 300 + 100 * 2/2.5, 300 + 100 * 1/1.9
    assert get["iters_to", "fxnn (torch)", 0.05]["mean"] == pytest.approx(np.mean([275, 300, 200 + 400 / 4.5]))
    assert get["iters_to", "cnn (torch)", 0.05]["mean"] == pytest.approx(np.mean([380, 300 + 100 / 1.9]))
    diff = get["verate_diff", "fxnn (torch)", 100]
    ref = stats.ttest_ind(fx100, cnn100, equal_var=False).confidence_interval(0.95)
    assert diff["versus"] == "cnn (torch)"
    assert diff["mean"] == pytest.approx(np.mean(fx100) - np.mean(cnn100))
    assert (diff["ci_low"], diff["ci_high"]) == pytest.approx((ref.low, ref.high))
    assert ("verate_diff", "cnn (torch)", 100) not in get
    # Welch's p, Holm-adjusted over every difference of the table (the family)
    assert diff["p"] == pytest.approx(stats.ttest_ind(fx100, cnn100, equal_var=False).pvalue)
    family = sorted(r["p"] for r in rows if r["measure"].endswith("_diff"))
    assert diff["p_holm"] == pytest.approx(max(min(1, (len(family) - i) * p) for i, p in enumerate(family)
                                               if p <= diff["p"]))
    assert diff["p_equiv"] == ""   # no margin asked for

    # the CSV holds the same rows, readable by a real CSV parser
    out = tmp_path / "s.csv"
    summary.write_csv(rows, str(out))
    with open(out, newline="") as f:
        back = list(csv.DictReader(f))
    assert len(back) == len(rows)
    assert float(back[0]["mean"]) == pytest.approx(rows[0]["mean"])


def test_never_reached_targets_are_counted_not_averaged(records):
    runs = [load_run(p) for p in records]
    rows = summary.summarize(runs, at=[400], target=0.029, versus="cnn")
    (fx,) = [r for r in rows if r["measure"] == "iters_to" and r["label"] == "fxnn (torch)"]
    assert (fx["mean"], fx["n"], fx["missing"]) == (pytest.approx(300 + 100 * 16 / 17), 1, 2)  # 4.5% -> 2.8%
    assert not [r for r in rows if r["measure"] == "iters_to_diff"]  # undefined when some never reach it
    table = summary.format_table(rows, [400], 0.029)
    assert "(2 never)" in table


def test_runs_differing_in_more_than_the_seed_are_never_pooled(tmp_path, capsys):
    curves = {1: [0.9, 0.2, 0.1], 2: [0.9, 0.3, 0.12], 3: [0.9, 0.25, 0.2], 4: [0.9, 0.35, 0.22]}
    paths = [make_record(tmp_path / f"{m}-{lr}-{s}.mat", m, s, np.add(curves[s], 0.01 * k), learn_rate=lr,
                         batch_size=64.0, optimizer="sgd")
             for k, (m, lr, seeds) in enumerate([("fxnn", 0.1, (1, 2)), ("fxnn", 0.2, (3, 4)),
                                                 ("cnn", 0.1, (1, 2)), ("cnn", 0.2, (3, 4))])
             for s in seeds]
    runs, differ = summary.tag_experiments([load_run(p) for p in paths])
    assert differ == ["-lr"]
    rows = summary.summarize(runs, at=[100], target=0.05, versus="cnn")
    get = {(r["measure"], r["label"], r["versus"]): r for r in rows}
    for k, (label, seeds) in enumerate([("fxnn (torch) -lr 0.1", (1, 2)), ("fxnn (torch) -lr 0.2", (3, 4)),
                                        ("cnn (torch) -lr 0.1", (1, 2)), ("cnn (torch) -lr 0.2", (3, 4))]):
        row = get["verate", label, ""]
        assert row["n"] == 2 and row["mean"] == pytest.approx(np.mean([curves[s][1] + 0.01 * k for s in seeds]))
    # each fxnn setting is compared with the cnn of the same setting
    diff = get["verate_diff", "fxnn (torch) -lr 0.2", "cnn (torch) -lr 0.2"]
    assert diff["mean"] == pytest.approx(np.mean([0.26, 0.36]) - np.mean([0.28, 0.38]))
    assert ("verate_diff", "fxnn (torch) -lr 0.2", "cnn (torch) -lr 0.1") not in get
    # and the user is told
    assert summary.main(paths + ["--at", "100"]) == 0
    out = capsys.readouterr().out
    assert "NOTE: these runs differ in more than the seed (-lr)" in out
    assert any(line.startswith("fxnn -lr 0.1 - cnn -lr 0.1 ") for line in out.splitlines())


def test_runs_on_different_data_are_separate_rows_named_by_their_data(tmp_path, capsys):
    paths = [make_record(tmp_path / f"{src}-{s}.mat", "fxnn", s, FXNN[s], source=src)
             for src in ("data set B", "data set A") for s in (1, 2)]
    assert summary.main(paths + ["--at", "400"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "data: data 1: MNIST: data set A; data 2: MNIST: data set B"
    assert "(data)" in lines[1]
    (a,) = [line for line in lines if line.startswith("fxnn (torch) data 1 ")]
    assert f"{100 * np.mean([FXNN[1][4], FXNN[2][4]]):.2f}%" in a and a.split()[4] == "2"


def test_runs_with_different_record_spacing_summarise_at_every_default_iteration_they_have(tmp_path, capsys):
    coarse = [make_record(tmp_path / f"c{s}.mat", "fxnn", s, FXNN[s], ipr=100) for s in (1, 2, 3)]
    fine = [make_record(tmp_path / f"f{s}.mat", "fxnn", s, np.repeat(FXNN[s], 2)[1:], ipr=50) for s in (1, 2, 3)]
    cnn = [make_record(tmp_path / f"cnn{s}.mat", "cnn", s, CNN[s], ipr=100) for s in (1, 2)]
    assert summary.main(coarse + fine + cnn) == 0
    out = capsys.readouterr().out
    runs, _ = summary.tag_experiments([load_run(p) for p in coarse + fine + cnn])
    rows = summary.summarize(runs, None, 0.05, "cnn")
    at = {label: [r["at"] for r in rows if r["measure"] == "verate" and r["label"] == label]
          for label in {r["label"] for r in rows}}
    # the columns are the union of each setting's defaults (100, 400; 50, 200, 400); each row has
    # every one it has a record at, so the fine runs are summarised at 100 too
    assert at == {"fxnn (torch) -nrec 4 -ipr 100": [100, 200, 400], "fxnn (torch) -nrec 8 -ipr 50": [50, 100, 200, 400],
                  "cnn (torch) -nrec 4 -ipr 100": [100, 200, 400]}
    fine_400 = next(r for r in rows if r["label"] == "fxnn (torch) -nrec 8 -ipr 50" and r["at"] == 400)
    assert fine_400["mean"] == pytest.approx(np.mean([FXNN[s][4] for s in (1, 2, 3)]))
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:1] == ["seeds"])
    assert lines[head].split()[:5] == ["seeds", "@50", "@100", "@200", "@400"]
    table = {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[head + 1:])}
    assert table["fxnn (torch) -nrec 4 -ipr 100"][:3] == ["3", "-", "21.00% ± 3.61% [12.04%, 29.96%]"]
    assert table["fxnn (torch) -nrec 8 -ipr 50"][4].startswith("3.10% ± 0.36%")
    at_100 = np.mean([FXNN[s][1] for s in (1, 2, 3)])  # the fine runs' record at 100
    assert table["fxnn (torch) -nrec 8 -ipr 50"][2].startswith(f"{100 * at_100:.2f}% ± ")
    assert "-" not in table["fxnn (torch) -nrec 8 -ipr 50"][1:5]  # it has a record at every column
    # the only cnn is the reference of both, at the iterations each shares with it
    diffs = {(r["label"], r["at"]) for r in rows if r["measure"] == "verate_diff"}
    assert diffs == {("fxnn (torch) -nrec 4 -ipr 100", it) for it in (100, 200, 400)} | {
        ("fxnn (torch) -nrec 8 -ipr 50", it) for it in (100, 200, 400)}


def test_intervals_are_clipped_to_what_an_error_rate_can_be(tmp_path):
    paths = [make_record(tmp_path / f"{m}{s}.mat", m, s, [0.9, e])
             for m, s, e in [("fxnn", 1, 0.001), ("fxnn", 2, 0.02), ("cnn", 1, 0.9), ("cnn", 2, 0.1)]]
    rows = summary.summarize([load_run(p) for p in paths], at=[100], target=0.05, versus="cnn")
    get = {(r["measure"], r["label"]): r for r in rows}
    fx, cnn, diff = get["verate", "fxnn (torch)"], get["verate", "cnn (torch)"], get["verate_diff", "fxnn (torch)"]
    ref = stats.ttest_1samp([0.001, 0.02], 0).confidence_interval(0.95)
    assert ref.low < 0 and fx["ci_low"] == 0 and fx["ci_high"] == pytest.approx(ref.high)
    ref = stats.ttest_1samp([0.9, 0.1], 0).confidence_interval(0.95)
    assert ref.low < 0 < 1 < ref.high and (cnn["ci_low"], cnn["ci_high"]) == (0, 1)
    ref = stats.ttest_ind([0.001, 0.02], [0.9, 0.1], equal_var=False).confidence_interval(0.95)
    assert ref.low < -1 < 1 < ref.high and (diff["ci_low"], diff["ci_high"]) == (-1, 1)


def test_the_summary_says_how_wide_intervals_are_with_two_seeds(records, capsys):
    assert summary.main(records + ["--at", "400"]) == 0  # cnn has 2 seeds
    (note,) = [line for line in capsys.readouterr().out.splitlines() if "with 2 seeds" in line]
    assert f"reaches {stats.t.ppf(0.975, 1) / math.sqrt(2):.1f} std either side" in note
    assert summary.main(records[:3] + ["--at", "400"]) == 0  # fxnn's 3 seeds only
    assert "with 2 seeds" not in capsys.readouterr().out


def test_summary_command_prints_the_table_and_writes_csv_and_png(records, tmp_path, capsys):
    code = summary.main(records + ["--at", "100", "400", "--csv", str(tmp_path / "s.csv"),
                                   "--png", str(tmp_path / "s.png")])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "data: MNIST: test data"
    fx_line = next(line for line in lines if line.startswith("fxnn (torch)"))
    assert f"{100 * np.mean([v[1] for v in FXNN.values()]):.2f}%" in fx_line
    assert any(line.startswith("fxnn - cnn") for line in lines)
    assert (tmp_path / "s.csv").stat().st_size > 0 and (tmp_path / "s.png").stat().st_size > 0


def test_summary_command_one_line_error_on_bad_iteration(records, capsys):
    assert summary.main(records + ["--at", "150"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no validation at iteration 150" in err


@pytest.fixture
def dask():
    """The sweep runs on Dask, the cluster extra (.ci/run installs it)."""
    pytest.importorskip("distributed", reason='the sweep needs Dask: pip install -e ".[cluster]"')


@pytest.mark.slow  # several fxnn.py processes end to end
def test_sweep_runs_every_model_and_seed_then_skips_them_when_rerun(tmp_path, small_mnist, dask):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "fxnn.analysis.sweep", "-m", "fxnn", "baseline", "--seeds", "1", "2",
           "-o", str(out), "--at", "5", "10", "--", "-nrec", "2", "-ipr", "5", "--data-dir", small_mnist]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "4 to run, 2 at a time" in done.stdout
    for model in ("fxnn", "baseline"):
        for seed in (1, 2):
            run = load_run(str(out / f"{model}-seed{seed}.mat"))
            assert (run.model, run.seed, run.status, len(run.verate)) == (model, seed, "complete", 3)
            assert run.flags["threads"] == 1  # 2 at a time on 2 cores: --threads 1 each
            assert "Iter 00010/00010" in (out / f"{model}-seed{seed}.log").read_text()
    assert "fxnn - baseline" not in done.stdout  # --versus cnn: no cnn here, so no differences
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["label"] for r in rows} == {"fxnn (torch)", "baseline (torch)"} or \
        {r["label"] for r in rows} == {"fxnn (pytensor)", "baseline (pytensor)"}
    assert os.path.getsize(out / "summary.png") > 0

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "4 already done, 0 to run" in again.stdout


def test_sweep_resumes_a_run_that_left_a_checkpoint(tmp_path):
    job = sweep.plan(["fxnn"], [7], str(tmp_path))[0]
    assert job.state == "new" and "--resume" not in job.command([])
    os.makedirs(job.record + ".run")
    open(os.path.join(job.record + ".run", "checkpoint.npz"), "wb").close()
    assert job.state == "resume" and job.command(["-nrec", "3"])[-3:] == ["-nrec", "3", "--resume"]


@pytest.mark.parametrize("extra, message", [(["--", "--seed", "4"], "the sweep sets --seed itself"),
                                            (["--", "-nrec", "0"], "must be a positive integer"),
                                            (["--gpus-per-run", "-1"], "--gpus-per-run must be 0 or more"),
                                            (["--scheduler", "tcp://127.0.0.1:8786", "-j", "2"],
                                             "--jobs is for this machine")])
def test_sweep_refuses_bad_flags_before_running_anything(tmp_path, extra, message):
    cmd = [sys.executable, "-m", "fxnn.analysis.sweep", "-m", "fxnn", "--seeds", "1", "-o", str(tmp_path / "s")] + extra
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "s").exists()


def test_progress_line_from_a_console_line():
    line = "Iter 00300/10000: loss|erate 0.125169| 39.05% valid loss|erate 0.053871| 16.81%"
    assert sweep.progress(line) == "Iter 00300/10000 valid 16.81%"


@pytest.mark.slow  # several fxnn.py processes end to end
def test_interrupted_sweep_saves_every_run_and_the_rerun_resumes_them(tmp_path, small_mnist, dask):
    import signal
    import time
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "fxnn.analysis.sweep", "-m", "fxnn", "--seeds", "1", "2", "-o", str(out),
           "--", "-nrec", "400", "-ipr", "5", "--data-dir", small_mnist, "--record-params", "none"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [out / "fxnn-seed1.log", out / "fxnn-seed2.log"]
    deadline = time.monotonic() + 300
    while not all(p.exists() and "Iter 00010/02000" in p.read_text() for p in logs):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # to the sweep only, as a Ctrl-C reaches it
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "Rerun the same command to resume" in stderr
    for seed in (1, 2):
        run = load_run(str(out / f"fxnn-seed{seed}.mat"))
        assert run.status == "interrupted" and 2 <= len(run.verate) < 401
    # the rerun resumes both (it is stopped again right away: only the resume matters)
    again = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while sum("Resuming at iteration" in p.read_text() for p in logs) < 2:
        assert again.poll() is None and time.monotonic() < deadline, again.communicate()
        time.sleep(0.2)
    again.send_signal(signal.SIGTERM)
    stdout, _ = again.communicate(timeout=300)
    assert "0 already done, 2 to run" in stdout and stdout.count("resuming fxnn seed") == 2
    assert again.returncode == 130


def test_a_sweep_started_with_sigint_ignored_still_stops_its_runs(tmp_path, small_mnist, dask):
    """As under nohup or ``&`` in a script: the runs must not inherit the ignored SIGINT
    with which the sweep stops them (analysis/child.py restores it)."""
    import signal
    import time
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "fxnn.analysis.sweep", "-m", "fxnn", "--seeds", "1", "-o", str(out),
           "--", "-nrec", "400", "-ipr", "5", "--data-dir", small_mnist, "--record-params", "none"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    log, deadline = out / "fxnn-seed1.log", time.monotonic() + 300
    try:
        while not (log.exists() and "Iter 00010/02000" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # its run dies with it (analysis/child.py)
    assert proc.returncode == 130, stderr
    run = load_run(str(out / "fxnn-seed1.mat"))
    assert run.status == "interrupted" and 2 <= len(run.verate) < 401


def test_a_margin_adds_the_equivalence_test_to_every_error_difference(records, capsys):
    runs = [load_run(p) for p in records]
    rows = summary.summarize(runs, at=[400], target=0.05, versus="cnn", margin=0.05)
    (diff,) = [r for r in rows if r["measure"] == "verate_diff"]
    fx, cnn = [v[4] for v in FXNN.values()], [v[4] for v in CNN.values()]
    ci90 = stats.ttest_ind(fx, cnn, equal_var=False).confidence_interval(0.90)
    assert (diff["p_equiv"] < 0.05) == (-0.05 < ci90.low and ci90.high < 0.05)
    assert summary.main([*records, "--margin", "0.05", "--at", "400"]) == 0
    out = capsys.readouterr().out
    assert "eq=" in out and "p of equivalence within ±5.00%" in out
    with pytest.raises(SystemExit):
        summary.build_parser().parse_args(["--margin", "5", "x.mat"])


WALL = np.array([0.0, 10, 25, 45, 70])  # training seconds at each record, unevenly spaced


def timed_records(tmp_path):
    """FXNN's and CNN's curves with clocks: wall WALL * (1 + seed/10), CPU 0.8 of it."""
    return [make_record(tmp_path / f"{model}-{s}.mat", model, s, v,
                        clocks={"twall": WALL * (1 + s / 10), "tcpu": 0.8 * WALL * (1 + s / 10)})
            for model, curves in (("fxnn", FXNN), ("cnn", CNN)) for s, v in curves.items()]


def test_seconds_to_target_by_hand_on_constructed_records(tmp_path, capsys):
    runs = [load_run(p) for p in timed_records(tmp_path)]
    rows = summary.summarize(runs, at=[400], target=0.05, versus="cnn", time=True)
    get = {(r["measure"], r["label"]): r for r in rows}
    # each run crosses 5% between records 2 and 3 (fxnn) or 3 and 4 (cnn), the same fraction of the way
    # along its clock as along its error: fxnn 0.03/0.04, 0.01/0.01, 0.04/0.045; cnn 0.02/0.025, 0.01/0.019
    fxnn_wall = [1.1 * (25 + 20 * 0.75), 1.2 * (25 + 20), 1.3 * (25 + 20 * 0.04 / 0.045)]
    cnn_wall = [1.1 * (45 + 25 * 0.8), 1.2 * (45 + 25 * 0.01 / 0.019)]
    for clock, scale in (("wall", 1.0), ("cpu", 0.8)):
        fx, cn = np.multiply(fxnn_wall, scale), np.multiply(cnn_wall, scale)
        row = get[f"{clock}_to", "fxnn (torch)"]
        assert (row["mean"], row["std"], row["n"]) == (pytest.approx(fx.mean()), pytest.approx(fx.std(ddof=1)), 3)
        assert get[f"{clock}_to", "cnn (torch)"]["mean"] == pytest.approx(cn.mean())
        diff = get[f"{clock}_to_diff", "fxnn (torch)"]
        ref = stats.ttest_ind(fx, cn, equal_var=False)
        assert diff["mean"] == pytest.approx(fx.mean() - cn.mean())
        assert (diff["ci_low"], diff["ci_high"]) == pytest.approx(tuple(ref.confidence_interval(0.95)))
        assert diff["p"] == pytest.approx(ref.pvalue)
    # the time differences join the family of Holm's correction
    family = sorted(r["p"] for r in rows if r["measure"].endswith("_diff"))
    assert len(family) == 4  # @400, iterations, wall, CPU
    # the command: the same figures in the table and the CSV
    paths = timed_records(tmp_path)
    assert summary.main(paths + ["--at", "400", "--target", "0.05", "--time", "--csv", str(tmp_path / "t.csv")]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(line for line in lines if line.split()[:1] == ["seeds"])
    assert "wall s to 5%" in head and "CPU s to 5%" in head
    (fx_line,) = [line for line in lines if line.startswith("fxnn (torch) ")]
    assert f"{np.mean(fxnn_wall):.1f} ± {np.std(fxnn_wall, ddof=1):.1f}" in fx_line
    with open(tmp_path / "t.csv", newline="") as f:
        back = {(r["measure"], r["label"]): r for r in csv.DictReader(f)}
    assert float(back["wall_to", "cnn (torch)"]["mean"]) == pytest.approx(np.mean(cnn_wall))


def test_time_to_target_is_refused_in_one_line_for_records_without_clocks(records, tmp_path, capsys):
    assert load_run(records[0]).twall is None
    assert summary.main(records + ["--at", "400"]) == 0  # without --time they summarise as before
    capsys.readouterr()
    assert summary.main(records + ["--at", "400", "--time"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no training clocks (twall, tcpu)" in err and "--time" in err
    bad = make_record(tmp_path / "bad.mat", "fxnn", 9, FXNN[1], clocks={"twall": WALL[:3], "tcpu": WALL})
    with pytest.raises(RecordError, match="twall: .*not one number per record"):
        load_run(bad)


def test_runs_in_another_precision_are_another_setting_not_the_same_run_again(tmp_path):
    paths = [make_record(tmp_path / f"fxnn-{p}.mat", "fxnn", 1, FXNN[1], precision=p) for p in ("fp32", "bf16")]
    paths.append(make_record(tmp_path / "fxnn-old.mat", "fxnn", 2, FXNN[2]))  # before --precision: fp32
    runs, notes = distinct_runs([load_run(p) for p in paths])
    assert len(runs) == 3 and notes == []
    runs, differ = summary.tag_experiments(runs)
    assert differ == ["--precision"]
    assert [r.label for r in runs] == ["fxnn (torch) --precision fp32", "fxnn (torch) --precision bf16",
                                       "fxnn (torch) --precision fp32"]
    # each model at its own rate in two precisions: each compared with the reference of its precision
    paths = [make_record(tmp_path / f"{m}-{p}-{s}.mat", m, s, np.add(FXNN[s], k / 100), learn_rate=lr, precision=p)
             for k, (m, lr, p) in enumerate([("fxnn", 1.6, "fp32"), ("fxnn", 1.6, "bf16"), ("cnn", 3.2, "fp32"),
                                             ("cnn", 3.2, "bf16")]) for s in (1, 2)]
    runs, _ = summary.tag_experiments([load_run(p) for p in paths])
    diffs = {(r["label"], r["versus"]): r for r in summary.summarize(runs, [100], 0.05, "cnn")
             if r["measure"] == "verate_diff"}
    assert set(diffs) == {("fxnn (torch) -lr 1.6 --precision fp32", "cnn (torch) -lr 3.2 --precision fp32"),
                          ("fxnn (torch) -lr 1.6 --precision bf16", "cnn (torch) -lr 3.2 --precision bf16")}
    assert diffs["fxnn (torch) -lr 1.6 --precision bf16", "cnn (torch) -lr 3.2 --precision bf16"]["mean"] == \
        pytest.approx(-0.02)


@pytest.mark.parametrize("tool,argv,words", [
    ("summary", ["--target", "2"], "--target: a target is an error rate in (0, 1)"),
    ("summary", ["--target", "abc"], "--target: a target is an error rate in (0, 1)"),
    ("summary", ["--margin", "0"], "--margin: a margin is an error rate in (0, 1)"),
    ("summary", ["--at", "-5"], "--at: an iteration is a whole number, 0 or more"),
    ("tune", ["--at", "100", "x"], "--at: an iteration is a whole number, 0 or more")])
def test_horizons_targets_and_margins_out_of_range_are_refused_in_one_line(capsys, tool, argv, words):
    from importlib import import_module
    with pytest.raises(SystemExit) as stop:
        import_module(f"fxnn.analysis.{tool}").main(["rec.mat"] + argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and err.startswith(f"fxnn-{tool}: error: argument {words}")


def test_a_versus_model_with_no_record_is_refused_in_one_line(tmp_path, capsys):
    path = str(tmp_path / "fxnn.mat")
    write_mat(path, genuine_small(), [])
    assert summary.main([path, "--versus", "cnn-x13"]) == 2
    assert capsys.readouterr().err.strip() == "fxnn-summary: error: --versus cnn-x13: no record of that model among these (models: fxnn)"
    assert summary.main([path]) == 0  # the default, cnn, is compared with where there is one
    with pytest.raises(SystemExit) as stop:
        sweep.main(["-m", "fxnn", "--seeds", "1", "--versus", "cnn", "-o", str(tmp_path / "s")])
    assert stop.value.code == 2 and "--versus cnn is not among the models run (-m fxnn)" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("tool,flag", [("plot", "-o"), ("summary", "--png"), ("tune", "--png")])
def test_an_image_name_matplotlib_cannot_write_is_refused_before_any_work(capsys, tool, flag):
    from importlib import import_module
    with pytest.raises(SystemExit) as stop:
        import_module(f"fxnn.analysis.{tool}").main(["no-such.mat", flag, "curves.xyz"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert stop.value.code == 2 and ".xyz is not an image format matplotlib writes" in err and "png" in err


def test_a_sweep_says_how_long_its_remaining_runs_will_take(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(sweep.time, "monotonic", lambda: clock[0])
    lines = []
    watch = sweep.Watch(total=4, remote=False, status_every=60, say=lines.append)
    log = tmp_path / "run.log"
    log.write_text("Iter 00300/00300: loss|erate 0.1| 5.00% valid loss|erate 0.1|  4.00%\n")
    job = type("Job", (), {"name": "fxnn-seed1", "log": str(log)})()
    for ended_at in (700.0, 1300.0, 1900.0, 2500.0):  # two at a time: 10 min between ends
        clock[0] = ended_at
        watch.ended(job, {"code": 0, "seconds": 1200.0})
    heads = [line.split(": Iter")[0] for line in lines]
    assert heads == ["[1/4] fxnn-seed1 done in 20m00s; about 30 min left", "[2/4] fxnn-seed1 done in 20m00s; about 20 min left",
                     "[3/4] fxnn-seed1 done in 20m00s; about 10 min left", "[4/4] fxnn-seed1 done in 20m00s"]
