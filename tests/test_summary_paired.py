"""fxnn-summary's comparison of one setting with another (``--against``) paired
by seed (``--paired``): the paired statistics against scipy's paired and
one-sample t tests, and the command on constructed records whose per-seed
differences are known, checked against figures worked by hand."""
import csv
import math

import numpy as np
import pytest
from scipy import stats

from fxnn.analysis import summary
from fxnn.analysis.records import load_run
from fxnn.analysis.stats import paired_difference, paired_equivalence, paired_p
from test_analysis import make_record

PAIRS = [
    ([0.051, 0.048, 0.050, 0.047], [0.061, 0.058, 0.066, 0.049]),
    ([0.10, 0.12, 0.11, 0.13, 0.09], [0.11, 0.10, 0.12, 0.125, 0.095]),
    ([1.0, 2.0, 3.5], [1.5, 1.7, 3.2]),
]


@pytest.mark.parametrize("a, b", PAIRS)
def test_paired_interval_and_p_equal_scipys_paired_t_test(a, b):
    ref = stats.ttest_rel(a, b)
    d = paired_difference(a, b, level=0.9)
    assert d.diff == pytest.approx(np.mean(np.subtract(a, b)))
    assert (d.low, d.high) == pytest.approx(tuple(ref.confidence_interval(0.9)), rel=1e-10)
    assert paired_p(a, b) == pytest.approx(ref.pvalue, rel=1e-10)
    assert paired_p(a, b) == pytest.approx(stats.ttest_1samp(np.subtract(a, b), 0).pvalue, rel=1e-10)


@pytest.mark.parametrize("a, b", PAIRS)
@pytest.mark.parametrize("margin", [0.001, 0.01, 0.05, 0.5])
def test_paired_tost_is_the_larger_p_of_scipys_two_one_sided_paired_tests(a, b, margin):
    above = stats.ttest_rel(a, np.subtract(b, margin), alternative="greater").pvalue  # H0: a - b <= -margin
    below = stats.ttest_rel(a, np.add(b, margin), alternative="less").pvalue      # H0: a - b >= margin
    e = paired_equivalence(a, b, margin)
    assert e.p == pytest.approx(max(above, below), rel=1e-10)
    ci = paired_difference(a, b, level=0.90)
    assert e.equivalent(0.05) == (-margin < ci.low and ci.high < margin)


def test_paired_statistics_need_pairs_and_leave_out_pairs_with_a_nan():
    with pytest.raises(ValueError, match="paired values come in pairs: got 3 and 2"):
        paired_p([1.0, 2.0, 3.0], [1.0, 2.0])
    assert math.isnan(paired_p([1.0], [2.0])) and math.isnan(paired_equivalence([1.0], [2.0], 0.1).p)
    assert paired_p([1.0, 2.0, math.nan, 4.0], [0.5, 1.8, 3.0, 3.0]) == pytest.approx(
        stats.ttest_rel([1.0, 2.0, 4.0], [0.5, 1.8, 3.0]).pvalue)


# fp32 curves (records at 0, 100, 200; never at the 5% target) and bf16's per-seed difference from them
FXNN = {1: [0.9, 0.30, 0.20], 2: [0.9, 0.34, 0.18], 3: [0.9, 0.28, 0.22], 4: [0.9, 0.31, 0.19]}
CNN = {1: [0.9, 0.25, 0.15], 2: [0.9, 0.27, 0.16], 3: [0.9, 0.22, 0.14], 4: [0.9, 0.26, 0.13]}
FXNN_BF16 = {100: [0.010, 0.012, 0.008, 0.010], 200: [-0.004, 0.002, -0.001, -0.001]}
CNN_BF16 = {100: [0.001, -0.001, 0.002, 0.0], 200: [0.0, 0.001, -0.001, 0.0]}
FX_BF16 = "fxnn (torch) -lr 1.6 --precision bf16"
FX_FP32 = "fxnn (torch) -lr 1.6 --precision fp32"


def precision_records(tmp_path, seeds=(1, 2, 3, 4), bf16_seeds=(1, 2, 3, 4)):
    """fxnn at -lr 1.6 and cnn at -lr 3.2, each in fp32 and in bf16 (fp32's curve plus the known difference)."""
    paths = []
    for model, lr, curves, deltas in (("fxnn", 1.6, FXNN, FXNN_BF16), ("cnn", 3.2, CNN, CNN_BF16)):
        for s in seeds:
            paths.append(make_record(tmp_path / f"{model}-fp32-{s}.mat", model, s, curves[s], learn_rate=lr,
                                     precision="fp32"))
        for s in bf16_seeds:
            bf16 = np.add(curves[s], [0.0, deltas[100][s - 1], deltas[200][s - 1]])
            paths.append(make_record(tmp_path / f"{model}-bf16-{s}.mat", model, s, bf16, learn_rate=lr,
                                     precision="bf16"))
    return paths


def paired_by_hand(d, margin=None):
    """The mean of the differences d, their sd, 95% t interval, paired t test p and TOST p, worked out."""
    n, mean = len(d), sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    se, t975 = sd / math.sqrt(n), stats.t.ppf(0.975, n - 1)
    tost = max(stats.t.sf((mean + margin) / se, n - 1), stats.t.cdf((mean - margin) / se, n - 1)) if margin else ""
    return dict(mean=mean, std=sd, n=n, ci_low=mean - t975 * se, ci_high=mean + t975 * se,
                p=2 * stats.t.sf(abs(mean) / se, n - 1), p_equiv=tost)


def holm_by_hand(p):
    order = sorted(range(len(p)), key=lambda i: p[i])
    adjusted, running = [0.0] * len(p), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def test_against_paired_compares_each_bf16_setting_with_its_fp32_by_seed(tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert summary.main(precision_records(tmp_path) + ["--at", "100", "200", "--against", "precision=fp32",
                                                       "--paired", "--margin", "0.01", "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["measure", "label", "versus", "at", "mean", "std", "n", "missing", "ci_low",
                                     "ci_high", "p", "p_holm", "p_equiv", "p_equiv_holm"]
        diffs = [r for r in reader if r["measure"].endswith("diff")]
    # one difference per model and iteration, each bf16 against the fp32 of its own model and -lr; none else
    assert {(r["measure"], r["label"], r["versus"], r["at"]) for r in diffs} == {
        ("verate_paired_diff", f"{m} (torch) -lr {lr} --precision bf16", f"{m} (torch) -lr {lr} --precision fp32",
         at) for m, lr in (("fxnn", 1.6), ("cnn", 3.2)) for at in ("100", "200")}
    want = {(r["label"].split()[0], r["at"]): paired_by_hand(
        (FXNN_BF16 if r["label"].startswith("fxnn") else CNN_BF16)[int(r["at"])], 0.01) for r in diffs}
    keys = sorted(want)
    for key, p_holm, eq_holm in zip(keys, holm_by_hand([want[k]["p"] for k in keys]),
                                    holm_by_hand([want[k]["p_equiv"] for k in keys])):
        want[key].update(p_holm=p_holm, p_equiv_holm=eq_holm)
    for r in diffs:
        hand = want[r["label"].split()[0], r["at"]]
        for column, value in hand.items():
            assert float(r[column]) == pytest.approx(value, rel=1e-9, abs=1e-15), (r["label"], r["at"], column)
    # the table: the fxnn line's seeds column holds its 4 pairs, its @100 cell the figures worked above
    fx = want["fxnn", "100"]
    (line,) = [line for line in printed.splitlines() if line.startswith("fxnn -lr 1.6 --precision bf16 - ")]
    assert line.split("--precision fp32")[1].split()[0] == "4"
    assert (f"{100 * fx['mean']:.2f}% [{100 * fx['ci_low']:.2f}%, {100 * fx['ci_high']:.2f}%] "
            f"p={fx['p_holm']:.2g} eq={fx['p_equiv']:.2g}/{fx['p_equiv_holm']:.2g}") in line
    assert "paired t test" in printed and "paired by seed" in printed


def test_unpaired_against_uses_welch_and_pairing_narrows_the_interval(tmp_path):
    runs, _ = summary.tag_experiments([load_run(p) for p in precision_records(tmp_path)])
    welch = {r["label"]: r for r in summary.summarize(runs, [100], 0.05, "cnn", against=("precision", "fp32"))
             if r["measure"] == "verate_diff"}
    paired = {r["label"]: r for r in summary.summarize(runs, [100], 0.05, "cnn", against=("precision", "fp32"),
                                                       paired=True) if r["measure"] == "verate_paired_diff"}
    fp32 = [v[1] for v in FXNN.values()]
    ref = stats.ttest_ind(np.add(fp32, FXNN_BF16[100]), fp32, equal_var=False)
    assert (welch[FX_BF16]["ci_low"], welch[FX_BF16]["ci_high"]) == pytest.approx(tuple(ref.confidence_interval()))
    assert welch[FX_BF16]["versus"] == FX_FP32 and welch[FX_BF16]["p"] == pytest.approx(ref.pvalue)
    # the seed-to-seed spread (4 points) cancels in the pairs (0.2 points): Welch sees nothing, the pairs +1 point
    assert welch[FX_BF16]["ci_low"] < 0 < paired[FX_BF16]["ci_low"]


def test_seeds_only_one_setting_has_are_left_out_of_the_pairs_and_named(tmp_path, capsys):
    paths = precision_records(tmp_path, seeds=(1, 2, 3, 4), bf16_seeds=(1, 2, 3))
    paths.append(make_record(tmp_path / "fxnn-bf16-9.mat", "fxnn", 9, [0.9, 0.5, 0.4], learn_rate=1.6,
                             precision="bf16"))
    assert summary.main(paths + ["--at", "100", "--against", "precision=fp32", "--paired", "--csv",
                                 str(tmp_path / "p.csv")]) == 0
    printed = capsys.readouterr().out
    assert f"NOTE: {FX_BF16} - {FX_FP32}: paired on the 3 seeds both have; left out: seed 9 of {FX_BF16}; " \
           f"seed 4 of {FX_FP32}" in printed
    with open(tmp_path / "p.csv", newline="") as f:
        (row,) = [r for r in csv.DictReader(f) if r["measure"] == "verate_paired_diff" and r["label"] == FX_BF16]
    hand = paired_by_hand(FXNN_BF16[100][:3])
    assert int(row["n"]) == 3 and float(row["mean"]) == pytest.approx(hand["mean"])
    assert float(row["p"]) == pytest.approx(hand["p"])


def test_against_takes_any_flag_by_name_or_option_and_numbers_by_value(tmp_path):
    paths = [make_record(tmp_path / f"fxnn-{lr}-{s}.mat", "fxnn", s, np.add(FXNN[s], k / 100), learn_rate=lr)
             for k, lr in enumerate((0.1, 0.2)) for s in (1, 2, 3)]
    runs, _ = summary.tag_experiments([load_run(p) for p in paths])
    for against in (("learn_rate", "0.10"), ("-lr", "0.1")):
        (row,) = [r for r in summary.summarize(runs, [100], 0.05, "cnn", against=against, paired=True)
                  if r["measure"] == "verate_paired_diff"]
        assert (row["label"], row["versus"]) == ("fxnn (torch) -lr 0.2", "fxnn (torch) -lr 0.1")
        assert row["mean"] == pytest.approx(0.01) and row["std"] == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("args, message", [
    (["--against", "colour=red"], "--against colour=red: no run has a setting colour; name one of model, engine,"),
    (["--against", "precision=fp16"], "no run has precision fp16 (the runs have bf16, fp32)"),
    (["--against", "model=cnn"], "fxnn (torch) -lr 1.6 --precision fp32 has no counterpart (no runs with model cnn "
                                 "and otherwise its settings)"),
])
def test_against_refuses_in_one_line_a_setting_or_counterpart_the_runs_lack(tmp_path, capsys, args, message):
    assert summary.main(precision_records(tmp_path) + ["--at", "100", "--csv", str(tmp_path / "p.csv")] + args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fxnn-summary: error: ") and message in err
    assert not (tmp_path / "p.csv").exists()


def test_refusals_of_nothing_to_compare_no_shared_seed_and_no_key_value(tmp_path, capsys):
    fp32 = [p for p in precision_records(tmp_path) if "fp32" in p]
    assert summary.main(fp32 + ["--at", "100", "--against", "precision=fp32"]) == 2
    assert "every run has precision fp32: there is nothing to compare" in capsys.readouterr().err
    (tmp_path / "apart").mkdir()
    paths = precision_records(tmp_path / "apart", seeds=(1, 2), bf16_seeds=(3, 4))
    assert summary.main(paths + ["--at", "100", "--against", "precision=fp32", "--paired"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(seeds 3, 4) and fxnn" in err and "have no seed in common" in err
    with pytest.raises(SystemExit):
        summary.build_parser().parse_args(["x.mat", "--against", "precision"])
