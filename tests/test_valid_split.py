"""--valid-split: a stratified, seeded split held out of the training set,
disjoint from what is trained on; validation curves on it, the test set
evaluated once at the end with the final and the best-validation parameters."""
import numpy as np
import pytest

import fxnn
from fxnn.data import DataError, Dataset
from fxnn.data.split import hold_out
from fxnn.training.matfile import read_mat


def dataset(counts, seed=0):
    """A Dataset whose training image i holds the value i (to trace images)
    and whose classes have the given counts, shuffled."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(len(counts)), counts)).astype(np.int32)
    x = np.arange(len(y), dtype=np.float32).reshape(-1, 1, 1, 1) * np.ones((1, 1, 4, 4), np.float32)
    return Dataset("t", x, y, x[:5], y[:5], source="made", num_classes=len(counts))


def ids(x):
    return set(x[:, 0, 0, 0].astype(int).tolist())


@pytest.mark.parametrize("counts,fraction", [([100] * 10, 0.1), ([50, 30, 20, 7], 0.2), ([400, 4], 0.25)])
def test_the_split_is_stratified_and_disjoint(counts, fraction):
    ds = hold_out(dataset(counts), fraction, seed=5)
    expected = [int(round(fraction * c)) for c in counts]
    assert np.bincount(ds.valid_y, minlength=len(counts)).tolist() == expected
    assert np.bincount(ds.train_y, minlength=len(counts)).tolist() == [c - e for c, e in zip(counts, expected)]
    train, valid = ids(ds.train_x), ids(ds.valid_x)
    assert not train & valid and len(train | valid) == sum(counts)  # disjoint, nothing lost
    original = dataset(counts)
    for x, y in ((ds.train_x, ds.train_y), (ds.valid_x, ds.valid_y)):  # each image keeps its label
        np.testing.assert_array_equal(original.train_y[x[:, 0, 0, 0].astype(int)], y)
    assert ds.test_x is original.test_x or np.array_equal(ds.test_x, original.test_x)
    assert ds.validation()[0] is ds.valid_x and "held out of the training set" in ds.valid_set


def test_the_seed_chooses_the_split():
    a, b, c = (hold_out(dataset([60] * 5), 0.2, seed=s) for s in (1, 1, 2))
    assert ids(a.valid_x) == ids(b.valid_x) and ids(a.valid_x) != ids(c.valid_x)


def test_a_split_that_leaves_nothing_is_refused():
    with pytest.raises(DataError, match="no validation images"):
        hold_out(dataset([3, 3]), 0.1, seed=0)


def test_without_a_split_validation_is_the_test_set():
    ds = dataset([10, 10])
    assert ds.validation()[0] is ds.test_x and ds.valid_set == "the test set"


def run(capsys, *argv):
    code = fxnn.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_a_run_validates_on_the_split_and_tests_once_at_the_end(tmp_path, capsys, small_mnist):
    pytest.importorskip("torch")
    out_file = tmp_path / "rec.mat"
    out = run(capsys, "-m", "fxnn", "-nrec", 3, "-ipr", 10, "--data-dir", small_mnist, "--seed", 4,
              "--valid-split", 0.2, "--engine", "torch", "-o", out_file)
    rec = read_mat(str(out_file))
    meta = rec["meta"]
    from fxnn.data import load_dataset
    test = load_dataset("MNIST", small_mnist, download=False)
    held = sum(int(round(0.2 * c)) for c in np.bincount(test.train_y))
    assert (meta["train_images"], meta["valid_images"], meta["test_images"]) == (600 - held, held, 200)
    assert f"{held} images (0.2) held out of the training set" in meta["valid_set"]
    # the recorded test results are those of the final and the best-validation parameters
    best = int(np.argmin(rec["verate"]))
    assert meta["best_iteration"] == best * 10
    assert rec["test_loss"].shape == rec["test_erate"].shape == (2,)
    tests = [line for line in out.splitlines() if line.startswith("Test")]
    assert tests == [f"Test loss|erate {rec['test_loss'][0]:8.6f}|{rec['test_erate'][0] * 100:6.2f}% final "
                     f"parameters, {rec['test_loss'][1]:8.6f}|{rec['test_erate'][1] * 100:6.2f}% best validation "
                     f"(iteration {best * 10})"]
    # recompute them from the recorded snapshots, in a fresh engine on the test set
    from fxnn.models.architecture import build_network
    from fxnn.models.engines import make_engine
    from fxnn.training.loop import validate
    test = load_dataset("MNIST", small_mnist, download=False)
    network = build_network("fxnn", (1, 28, 28))
    names = list(network.param_shapes())
    for column, record in ((0, -1), (1, best)):
        params = {n: rec[n][record] for n in names}
        engine = make_engine("torch", "cpu", network, params, "sgd", 0.25, 0, "auto", {"train": 64, "valid": 100})
        loss, erate = validate(engine, test.test_x, test.test_y)
        assert rec["test_erate"][column] == pytest.approx(erate, abs=1e-9)
        assert rec["test_loss"][column] == pytest.approx(loss, rel=1e-5)
    # the validation curve is on the held-out images, not the test set
    engine = make_engine("torch", "cpu", network, {n: rec[n][-1] for n in names}, "sgd", 0.25, 0, "auto",
                         {"train": 64, "valid": 100})
    assert validate(engine, test.test_x, test.test_y)[0] != pytest.approx(rec["vloss"][-1], rel=1e-6)


def test_the_same_seed_gives_the_same_split_and_numbers(tmp_path, capsys, small_mnist):
    pytest.importorskip("torch")
    recs = []
    for name in ("a.mat", "b.mat"):
        run(capsys, "-m", "baseline", "-nrec", 2, "-ipr", 5, "--data-dir", small_mnist, "--seed", 9,
            "--valid-split", 0.1, "--engine", "torch", "-o", tmp_path / name, "--record-params", "none")
        recs.append(read_mat(str(tmp_path / name)))
    np.testing.assert_array_equal(recs[0]["vloss"], recs[1]["vloss"])
    np.testing.assert_array_equal(recs[0]["test_erate"], recs[1]["test_erate"])


def test_resume_continues_with_the_same_split_and_best_parameters(tmp_path, capsys, small_mnist, monkeypatch):
    pytest.importorskip("torch")
    import fxnn.training.loop as loop
    args = ["-m", "baseline", "-nrec", 4, "-ipr", 5, "--data-dir", small_mnist, "--seed", 3,
            "--valid-split", 0.1, "--engine", "torch", "--record-params", "none"]
    run(capsys, *args, "-o", tmp_path / "whole.mat")
    step = loop.validate
    calls = []

    def interrupt_after_two_records(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step(*a, **kw)
    monkeypatch.setattr(loop, "validate", interrupt_after_two_records)
    assert fxnn.main([str(a) for a in args] + ["-o", str(tmp_path / "cut.mat")]) == 130
    monkeypatch.setattr(loop, "validate", step)
    out = run(capsys, *args, "-o", tmp_path / "cut.mat", "--resume")
    whole, resumed = read_mat(str(tmp_path / "whole.mat")), read_mat(str(tmp_path / "cut.mat"))
    np.testing.assert_array_equal(whole["vloss"], resumed["vloss"])
    np.testing.assert_array_equal(whole["test_erate"], resumed["test_erate"])
    assert whole["meta"]["best_iteration"] == resumed["meta"]["best_iteration"]
    assert out.count("Test loss|erate") == 1


def test_ctrl_c_during_the_final_test_keeps_the_run_and_resume_finishes_it(tmp_path, capsys, small_mnist,
                                                                         monkeypatch):
    pytest.importorskip("torch")
    import fxnn.training.final_test as final
    args = ["-m", "baseline", "-nrec", 2, "-ipr", 5, "--data-dir", small_mnist, "--seed", 3,
            "--valid-split", 0.1, "--engine", "torch", "--record-params", "none", "-o", tmp_path / "r.mat"]
    step = final.validate
    monkeypatch.setattr(final, "validate", lambda *a, **kw: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert fxnn.main([str(a) for a in args]) == 130
    out, _ = capsys.readouterr()
    assert "--resume" in out and "Test loss" not in out
    assert read_mat(str(tmp_path / "r.mat"))["meta"]["status"] == "interrupted"
    monkeypatch.setattr(final, "validate", step)
    out = run(capsys, *args, "--resume")
    rec = read_mat(str(tmp_path / "r.mat"))
    assert out.count("Test loss|erate") == 1 and rec["meta"]["status"] == "complete" and rec["test_erate"].shape == (2,)
