"""Learn-rate grids read back (analysis/tune.py) and the summary's test-set
column (--valid-split runs), on records with known curves."""
import csv
import math

import numpy as np
import pytest

from fxnn.analysis import summary, tune
from fxnn.analysis.records import load_run
from fxnn.training.matfile import write_mat
from test_analysis import make_record

# validation error per record (iterations 0, 100, 200) of seed 1 and 2 at each rate
GRID = {0.1: ([0.9, 0.50, 0.30], [0.9, 0.52, 0.28]),
        0.2: ([0.9, 0.40, 0.20], [0.9, 0.42, 0.22]),
        0.4: ([0.9, 0.30, 0.25], [0.9, 0.34, 0.27])}


@pytest.fixture
def grid(tmp_path):
    paths = []
    for rate, curves in GRID.items():
        for seed, curve in enumerate(curves, 1):
            paths.append(make_record(tmp_path / f"fxnn-{rate}-{seed}.mat", "fxnn", seed, curve, learn_rate=rate))
    paths.append(make_record(tmp_path / "cnn.mat", "cnn", 1, [0.9, 0.6, 0.5], learn_rate=0.2))
    return paths


def test_grids_group_by_everything_but_rate_and_seed(grid):
    groups = tune.grids([load_run(p) for p in grid])
    assert list(groups) == ["fxnn (torch)", "cnn (torch)"]
    assert list(groups["fxnn (torch)"]) == [0.1, 0.2, 0.4]
    assert [len(runs) for runs in groups["fxnn (torch)"].values()] == [2, 2, 2]


def test_best_rate_is_the_lowest_seed_mean_at_each_horizon(grid):
    by_rate = tune.grids([load_run(p) for p in grid])["fxnn (torch)"]
    means = {it: {rate: np.mean([c[it // 100] for c in curves]) for rate, curves in GRID.items()} for it in (100, 200)}
    assert tune.best_rates(by_rate, [100, 200]) == {it: min(m, key=m.get) for it, m in means.items()}
    assert tune.best_rates(by_rate, [100, 200]) == {100: 0.4, 200: 0.2}


def test_a_diverged_rate_is_never_best(tmp_path):
    paths = [make_record(tmp_path / "a.mat", "fxnn", 1, [0.9, 0.5, 0.4], learn_rate=0.1),
             make_record(tmp_path / "b.mat", "fxnn", 1, [0.9, math.nan, math.nan], learn_rate=0.2)]
    by_rate = tune.grids([load_run(p) for p in paths])["fxnn (torch)"]
    assert tune.best_rates(by_rate, [200]) == {200: 0.1}


def test_tune_command_marks_the_best_warns_at_the_edge_and_writes_csv(grid, tmp_path, capsys):
    out = tmp_path / "grid.csv"
    assert tune.main(grid + ["--csv", str(out)]) == 0
    text = capsys.readouterr().out
    fxnn_block = text.split("cnn (torch):")[0]
    assert "40.00%*" not in fxnn_block and "32.00%*" in fxnn_block  # rate 0.4 at @100: (0.30+0.34)/2
    assert "NOTE: at @100 the best rate is the grid's smallest or largest" in fxnn_block
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    row = [r for r in rows if r["label"] == "fxnn (torch)" and r["learn_rate"] == "0.2" and r["at"] == "200"]
    assert float(row[0]["mean_verate"]) == pytest.approx(0.21) and row[0]["n"] == "2"


def test_tune_best_prints_one_line_per_group(grid, capsys):
    assert tune.main(grid + ["--best"]) == 0
    assert capsys.readouterr().out.splitlines() == ["fxnn (torch)\t0.2", "cnn (torch)\t0.2"]


def test_tune_refuses_a_foreign_file_in_one_line(grid, tmp_path, capsys):
    (tmp_path / "junk.mat").write_bytes(b"junk" * 100)
    assert tune.main(grid + [str(tmp_path / "junk.mat")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.mat: not an fxnn record" in err


def _with_test(path, final, best):
    """Add the test-set error a --valid-split run records at its end."""
    from fxnn.training.matfile import read_mat
    r = read_mat(path)
    r["test_erate"] = np.array([final, best])
    r["test_loss"] = np.array([final, best]) / 4
    write_mat(path, r, [])
    return path


def test_summary_reports_the_test_error_of_split_runs_with_welch_differences(tmp_path, capsys):
    fx = [_with_test(make_record(tmp_path / f"f{s}.mat", "fxnn", s, [0.9, 0.2]), t, t + 0.01)
          for s, t in ((1, 0.10), (2, 0.12), (3, 0.11))]
    cn = [_with_test(make_record(tmp_path / f"c{s}.mat", "cnn", s, [0.9, 0.3]), t, t - 0.01)
          for s, t in ((1, 0.15), (2, 0.14))]
    rows = summary.summarize([load_run(p) for p in fx + cn], None, 0.5, "cnn")
    get = {(r["measure"], r["label"], r["at"]): r for r in rows}
    assert get["test_erate", "fxnn (torch)", "final"]["mean"] == pytest.approx(0.11)
    assert get["test_erate", "cnn (torch)", "best"]["mean"] == pytest.approx(0.135)
    from scipy import stats
    ref = stats.ttest_ind([0.10, 0.12, 0.11], [0.15, 0.14], equal_var=False).confidence_interval(0.95)
    d = get["test_erate_diff", "fxnn (torch)", "final"]
    assert d["mean"] == pytest.approx(-0.035) and (d["ci_low"], d["ci_high"]) == pytest.approx((ref.low, ref.high))
    summary.report([load_run(p) for p in fx + cn], target=0.5)
    text = capsys.readouterr().out
    assert "test (final)" in text and "11.00% ± 1.00%" in text


def test_summary_has_no_test_column_for_runs_validated_on_the_test_set(tmp_path, capsys):
    runs = [load_run(make_record(tmp_path / f"f{s}.mat", "fxnn", s, [0.9, 0.2])) for s in (1, 2)]
    assert not [r for r in summary.summarize(runs, None, 0.5, "cnn") if r["measure"].startswith("test")]
    summary.report(runs, target=0.5)
    assert "test (" not in capsys.readouterr().out


def test_tune_plots_error_against_rate_per_horizon(grid, tmp_path, capsys):
    import matplotlib.image
    out = tmp_path / "grid.png"
    assert tune.main(grid + ["--at", "100", "200", "--png", str(out)]) == 0
    image = matplotlib.image.imread(str(out))
    assert image.shape[1] > 2 * image.shape[0] * 0.8 and image.std() > 0  # two panels side by side, not blank
    assert tune.main(grid + ["--png", str(out)]) == 2
    assert "--png needs --at" in capsys.readouterr().err


def test_tune_leaves_out_unfinished_runs_and_says_so(grid, tmp_path, capsys):
    from fxnn.training.matfile import read_mat
    r = read_mat(grid[0])
    r["meta"]["status"] = "interrupted"
    write_mat(grid[0], r, [])
    assert tune.main(grid) == 0
    out = capsys.readouterr().out
    assert f"NOTE: left out, not complete (rerun the sweep to finish them): {grid[0]}" in out
    fxnn_block = out.split("fxnn (torch):")[1].split("cnn (torch):")[0]
    (row,) = [line.split() for line in fxnn_block.splitlines() if line.startswith("0.1 ")]
    assert row[:3] == ["0.1", "1", "52.00%"]  # rate 0.1 now has seed 2 only
    assert tune.main(grid[:1]) == 2
