"""Plots that show what matters, checked through matplotlib's objects: axis
scales, percentages, markers of undrawable points and stopped runs, and labels
that name what differs between the runs."""
import numpy as np
import pytest

from fxnn.analysis import plot
from fxnn.analysis.records import load_run
from fxnn.training.matfile import write_mat


def make_record(path, verate, model="fxnn", seed=1, ipr=10, engine="torch", status="complete",
                tloss=None, terate=None, **flags):
    """A record in fxnn.py's layout with the given validation error per
    record; training curves follow it unless given."""
    verate = np.asarray(verate, dtype=float)
    terate = np.repeat(verate[1:], ipr) if terate is None else np.asarray(terate, dtype=float)
    tloss = terate / 4 + 0.01 if tloss is None else np.asarray(tloss, dtype=float)
    flags = dict({"iters_per_record": ipr, "num_records": len(verate) - 1, "optimizer": "sgd", "learn_rate": 0.2,
                  "learn_decay": 0.5}, **flags)
    write_mat(str(path), {
        "tloss": tloss, "terate": terate, "vloss": verate / 4 + 0.01, "verate": verate,
        "meta": {"model": model, "dataset": "MNIST", "data_source": "test data", "data_files": "", "engine": engine,
                 "device": "cpu", "seed": seed, "status": status, "iterations_done": len(tloss), "flags": flags},
    }, [])
    return load_run(str(path))


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_error_in_percent_on_a_log_axis_when_the_curves_span_more_than_a_decade(tmp_path):
    run = make_record(tmp_path / "a.mat", [0.9, 0.2, 0.05, 0.02])
    fig = plot.plot_runs([run], str(tmp_path / "a.png"))
    loss_ax, err_ax = fig.axes
    assert err_ax.get_yscale() == "log" and err_ax.get_ylabel() == "error rate (%)"
    valid = lines_by_label(err_ax)["fxnn valid"]
    np.testing.assert_allclose(valid.get_ydata(), [90, 20, 5, 2])  # percent, as on the console
    np.testing.assert_array_equal(valid.get_xdata(), [0, 10, 20, 30])
    train = lines_by_label(err_ax)["fxnn train"]  # the mean of each record's iterations
    np.testing.assert_allclose(train.get_ydata(), [20, 5, 2])
    np.testing.assert_array_equal(train.get_xdata(), [10, 20, 30])
    fig.canvas.draw()
    ticks = {t.get_text() for t in err_ax.get_yticklabels()}
    assert {"2%", "5%", "10%"} <= ticks  # readable at a few percent
    # the loss (0.235 .. 0.015) spans more than a decade too
    assert loss_ax.get_yscale() == "log" and loss_ax.get_ylabel() == "loss"


def test_a_linear_axis_when_the_curves_span_less_than_a_decade(tmp_path):
    run = make_record(tmp_path / "a.mat", [0.5, 0.4, 0.3])
    fig = plot.plot_runs([run], str(tmp_path / "a.png"))
    assert fig.axes[1].get_yscale() == "linear" and fig.axes[0].get_yscale() == "linear"
    forced = plot.plot_runs([run], str(tmp_path / "b.png"), error_scale="log", loss_scale="linear")
    assert forced.axes[1].get_yscale() == "log" and forced.axes[0].get_yscale() == "linear"


def test_points_a_log_axis_cannot_draw_are_marked_and_reported(tmp_path):
    terate = np.repeat([0.3, 0.0, 0.01], 10)  # the second record's training error is exactly zero
    tloss = np.repeat([0.2, 0.02, -0.0001], 10)  # the third record's mean loss is below zero
    run = make_record(tmp_path / "a.mat", [0.9, 0.3, 0.02, 0.01], tloss=tloss, terate=terate)
    notes = []
    fig = plot.plot_runs([run], str(tmp_path / "a.png"), say=notes.append)
    loss_ax, err_ax = fig.axes
    assert loss_ax.get_yscale() == err_ax.get_yscale() == "log"
    for ax, at in ((err_ax, [20]), (loss_ax, [30])):
        (marker,) = [line for line in ax.get_lines() if line.get_marker() == plot.UNDRAWABLE_MARKER]
        np.testing.assert_array_equal(marker.get_xdata(), at)  # where they are, on the bottom edge
        assert not marker.get_clip_on()
        assert any("1 point at or below zero" in t.get_text() for t in ax.texts)
    said = "1 point at or below zero, which a log axis cannot draw; marked \u25bc on its bottom edge"
    assert sorted(notes) == [f"fxnn train error rate: {said}", f"fxnn train loss: {said}"]


def test_the_command_reports_undrawable_points_on_stderr(tmp_path, capsys):
    make_record(tmp_path / "a.mat", [0.9, 0.05, 0.0])
    assert plot.main([str(tmp_path / "a.mat"), "-o", str(tmp_path / "a.png")]) == 0
    err = capsys.readouterr().err
    assert "fxnn-plot: note: fxnn valid error rate: 1 point at or below zero" in err


@pytest.mark.parametrize("status, marker", [("diverged", "X"), ("interrupted", "o"), ("terminated", "o")])
def test_a_run_that_did_not_complete_is_marked_where_it_stopped(tmp_path, status, marker):
    done = make_record(tmp_path / "a.mat", [0.9, 0.2, 0.05], seed=1)
    last_loss = np.nan if status == "diverged" else 0.1
    stopped = make_record(tmp_path / "b.mat", [0.9, 0.3], seed=2, status=status, num_records=2,
                          terate=np.full(15, 0.3), tloss=np.r_[np.full(14, 0.1), last_loss])
    fig = plot.plot_runs([done, stopped], str(tmp_path / "c.png"), say=lambda line: None)
    err_ax = fig.axes[1]
    labels = lines_by_label(err_ax)
    assert f"fxnn, seed 2 ({status} at iteration 15) valid" in labels and "fxnn, seed 1 valid" in labels
    (end,) = [line for line in err_ax.get_lines() if line.get_marker() == marker]
    assert (list(end.get_xdata()), list(end.get_ydata())) == ([10], [30])
    assert end.get_color() == labels[f"fxnn, seed 2 ({status} at iteration 15) valid"].get_color()
    assert err_ax.get_legend() is not None


def test_labels_name_what_differs_and_the_title_what_is_shared(tmp_path):
    runs = [make_record(tmp_path / "a.mat", [0.9, 0.1], learn_rate=0.2, optimizer="sgd"),
            make_record(tmp_path / "b.mat", [0.9, 0.1], learn_rate=0.1, optimizer="sgd"),
            make_record(tmp_path / "c.mat", [0.9, 0.1], learn_rate=0.1, optimizer="adam", model="cnn")]
    fig = plot.plot_runs(runs, str(tmp_path / "a.png"))
    labels = [line.get_label() for line in fig.axes[1].get_lines()]
    assert labels == ["fxnn, sgd, lr 0.2 valid", "fxnn, sgd, lr 0.2 train", "fxnn, sgd, lr 0.1 valid",
                      "fxnn, sgd, lr 0.1 train", "cnn, adam, lr 0.1 valid", "cnn, adam, lr 0.1 train"]
    assert fig._suptitle.get_text().split("\n")[0] == "torch, MNIST, seed 1"

    other = [make_record(tmp_path / "d.mat", [0.9, 0.1], engine="pytensor"), runs[0]]
    labels = [line.get_label() for line in plot.plot_runs(other, str(tmp_path / "b.png")).axes[1].get_lines()]
    assert labels[0] == "fxnn, pytensor valid" and labels[2] == "fxnn, torch valid"
    # runs alike in everything are told apart by their files
    twins = [runs[0], make_record(tmp_path / "e.mat", [0.9, 0.2])]
    labels = [line.get_label() for line in plot.plot_runs(twins, str(tmp_path / "c.png")).axes[1].get_lines()]
    assert labels[0] == "fxnn (a.mat) valid" and labels[2] == "fxnn (e.mat) valid"


def test_a_long_data_description_is_wrapped_whole_in_the_title(tmp_path):
    """The title's lines stay within the figure's width (a long data source was cut at both edges)."""
    from dataclasses import replace
    source = "Fashion-MNIST from " + "/a/long/data/folder" * 6 + ": 60,000 training and 10,000 test images"
    run = replace(make_record(tmp_path / "a.mat", [0.9, 0.1]), data_source=source)
    title = plot.plot_runs([run], str(tmp_path / "a.png"))._suptitle.get_text()
    assert max(len(line) for line in title.split("\n")) <= 120
    assert " ".join(title.split("\n")[1:]).replace(" ", "") == f"MNIST, {source}".replace(" ", "")


def test_bands_group_the_seeds_of_each_setting(tmp_path):
    runs = [make_record(tmp_path / f"f{s}.mat", v, seed=s) for s, v in ((1, [0.9, 0.2, 0.04]), (2, [0.9, 0.3, 0.02]))]
    runs += [make_record(tmp_path / f"c{s}.mat", v, seed=s, model="cnn") for s, v in ((1, [0.9, 0.5, 0.1]),)]
    fig = plot.plot_bands(runs, str(tmp_path / "bands.png"), log_iter=True)
    err_ax = fig.axes[1]
    assert err_ax.get_xscale() == "log" and fig.axes[0].get_xscale() == "log"  # shared x axis
    fx, cnn = err_ax.get_lines()
    assert fx.get_label() == "fxnn, 2 seeds, valid" and cnn.get_label() == "cnn, 1 seeds, valid"
    np.testing.assert_allclose(fx.get_ydata(), [90, 25, 3])
    assert len(err_ax.collections) == 2  # one band per model
    low = err_ax.collections[0].get_paths()[0].vertices[:, 1].min()  # the band's lowest point: last mean - std
    assert low == pytest.approx(3 - np.std([4, 2], ddof=1))
    assert err_ax.get_yscale() == "log"


@pytest.mark.parametrize("draw", [plot.plot_runs, plot.plot_bands])
def test_a_short_runs_iteration_ticks_are_whole_iterations(tmp_path, draw):
    runs = [make_record(tmp_path / f"s{s}.mat", [0.9, 0.5, 0.4, 0.35, 0.3], seed=s, ipr=5) for s in (1, 2)]  # 0..20
    fig = draw(runs, str(tmp_path / "short.png"))
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert len(ticks) >= 3 and all(t == int(t) for t in ticks), ticks  # matplotlib's default: 0, 2.5, 5, 7.5, ...


def test_bands_never_pool_runs_that_differ_in_a_flag_the_labels_do_not_show(tmp_path):
    runs = [make_record(tmp_path / f"b{b}s{s}.mat", v, seed=s, batch_size=b)
            for b, s, v in ((64, 1, [0.9, 0.2]), (64, 2, [0.9, 0.4]), (32, 1, [0.9, 0.1]))]
    err_ax = plot.plot_bands(runs, str(tmp_path / "bands.png")).axes[1]
    lines = lines_by_label(err_ax)
    assert set(lines) == {"fxnn, -bsize 64, 2 seeds, valid", "fxnn, -bsize 32, 1 seeds, valid"}
    np.testing.assert_allclose(lines["fxnn, -bsize 64, 2 seeds, valid"].get_ydata(), [90, 30])
    np.testing.assert_allclose(lines["fxnn, -bsize 32, 1 seeds, valid"].get_ydata(), [90, 10])


def test_the_png_has_the_figure_size(tmp_path):
    import matplotlib.image
    plot.plot_runs([make_record(tmp_path / "a.mat", [0.9, 0.1])], str(tmp_path / "a.png"))
    assert matplotlib.image.imread(str(tmp_path / "a.png")).shape[:2] == (450, 1200)


def test_plot_command_errors_in_one_line(tmp_path, capsys):
    assert plot.main([str(tmp_path / "none.mat"), "-o", str(tmp_path / "x.png")]) == 2
    assert "no such record file" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
