"""``auto`` chooses each fxnn layer's path by timing it (models/fxnn_paths.py):
with an injected clock it picks what its own timings say is fastest, a cache
hit skips the timing, a corrupt or foreign cache file is ignored with a
warning, measuring can be switched off, and runs record each layer's path."""
import json
import os
import warnings

import numpy as np
import pytest

from fxnn.models import fxnn_paths
from fxnn.models.fxnn_paths import PathTuner

KEY = {"engine": "test", "shape": [8, 3, 4, 5, 5], "pass": "train"}


class FakeClock:
    """A clock that only the fake contenders move."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def contenders(self, seconds, calls):
        """{path: callable} that 'take' ``seconds[path]`` and count their calls."""
        def run(path):
            def one_pass():
                calls[path] = calls.get(path, 0) + 1
                self.now += seconds[path]
            return one_pass
        return {path: run(path) for path in seconds}


def tuner(tmp_path, clock, name="paths.json"):
    return PathTuner(str(tmp_path / name), clock=clock, budget=0.05)


@pytest.mark.parametrize("fastest", ["fused", "fixed", "folded"])
def test_it_picks_the_path_its_own_timings_say_is_fastest(tmp_path, fastest):
    clock, calls = FakeClock(), {}
    seconds = {p: 0.010 for p in ("fused", "fixed", "folded")}
    seconds[fastest] = 0.004
    chosen = tuner(tmp_path, clock).choose(KEY, tuple(seconds), lambda: clock.contenders(seconds, calls))
    assert chosen == fastest
    assert set(calls) == set(seconds) and min(calls.values()) >= 4  # a warm-up and at least three rounds
    entry = json.loads((tmp_path / "paths.json").read_text())["entries"][json.dumps(KEY, sort_keys=True)]
    assert entry["path"] == fastest and entry["ms"][fastest] == pytest.approx(4.0)


def test_one_slow_call_does_not_decide(tmp_path):
    clock = FakeClock()
    durations = {"fused": iter([0.001, 0.5, 0.002, 0.002, 0.002, 0.002, 0.002, 0.002]),
                 "fixed": iter([0.003] * 8)}

    def contenders():
        def run(path):
            def one_pass():
                clock.now += next(durations[path])
            return one_pass
        return {p: run(p) for p in durations}
    assert tuner(tmp_path, clock).choose(KEY, ("fused", "fixed"), contenders) == "fused"


def test_a_cache_hit_skips_the_timing(tmp_path):
    clock, calls = FakeClock(), {}
    seconds = {"fused": 0.001, "folded": 0.002}
    assert tuner(tmp_path, clock).choose(KEY, tuple(seconds), lambda: clock.contenders(seconds, calls)) == "fused"

    def no_timing():
        raise AssertionError("measured although the cache knew the answer")
    clock2 = FakeClock()
    fresh = tuner(tmp_path, clock2)  # a new process, the same cache file
    assert fresh.choose(KEY, tuple(seconds), no_timing) == "fused"
    assert fresh.choose(KEY, tuple(seconds), no_timing) == "fused"  # and from memory
    other = dict(KEY, shape=[8, 3, 4, 6, 6])  # another layer is measured
    calls.clear()
    assert fresh.choose(other, tuple(seconds), lambda: clock2.contenders(seconds, calls)) == "fused"
    assert calls


def test_a_cached_path_that_cannot_run_here_is_measured_again(tmp_path):
    clock, calls = FakeClock(), {}
    (tmp_path / "paths.json").write_text(json.dumps({"format": 1, "entries": {
        json.dumps(KEY, sort_keys=True): {"path": "fused", "ms": {}}}}))
    seconds = {"fixed": 0.002, "folded": 0.001}
    assert tuner(tmp_path, clock).choose(KEY, tuple(seconds), lambda: clock.contenders(seconds, calls)) == "folded"


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage", b'{"format": 99, "entries": {}}',
                                     b'["a", "list"]', b'{"format": 1, "entries": "oops"}'],
                         ids=["truncated", "binary", "other-format", "not-a-dict", "bad-entries"])
def test_a_corrupt_or_foreign_cache_file_is_ignored_with_a_warning(tmp_path, content):
    (tmp_path / "paths.json").write_bytes(content)
    clock, calls = FakeClock(), {}
    seconds = {"fused": 0.003, "fixed": 0.001}
    with pytest.warns(RuntimeWarning, match="ignoring the fxnn path cache"):
        chosen = tuner(tmp_path, clock).choose(KEY, tuple(seconds), lambda: clock.contenders(seconds, calls))
    assert chosen == "fixed" and calls
    data = json.loads((tmp_path / "paths.json").read_text())  # rewritten as a valid cache
    assert data["format"] == 1 and len(data["entries"]) == 1


def test_entries_of_other_machines_are_kept(tmp_path):
    other = dict(KEY, cpu="another CPU")
    (tmp_path / "paths.json").write_text(json.dumps({"format": 1, "entries": {
        json.dumps(other, sort_keys=True): {"path": "folded", "ms": {}}}}))
    clock, calls = FakeClock(), {}
    seconds = {"fused": 0.001, "folded": 0.002}
    assert tuner(tmp_path, clock).choose(KEY, tuple(seconds), lambda: clock.contenders(seconds, calls)) == "fused"
    assert len(json.loads((tmp_path / "paths.json").read_text())["entries"]) == 2


def test_an_unwritable_cache_costs_a_warning_not_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    clock, calls = FakeClock(), {}
    seconds = {"fused": 0.001, "folded": 0.002}
    t = PathTuner(str(blocker / "sub" / "paths.json"), clock=clock, budget=0.05)
    with pytest.warns(RuntimeWarning, match="could not write the fxnn path cache"):
        assert t.choose(KEY, tuple(seconds), lambda: clock.contenders(seconds, calls)) == "fused"


def test_measuring_switched_off_takes_the_default_without_timing(monkeypatch):
    monkeypatch.setenv("FXNN_AUTOTUNE", "0")

    def no_timing():
        raise AssertionError("measured although FXNN_AUTOTUNE=0")
    assert fxnn_paths.choose(KEY, ("fused", "fixed", "folded"), no_timing) == "fused"
    assert fxnn_paths.choose(KEY, ("fixed", "folded"), no_timing) == "fixed"
    assert fxnn_paths.choose(KEY, ("folded",), no_timing) == "folded"


@pytest.mark.parametrize("value,on", [("off", False), ("No", False), (" false ", False), ("yes", True),
                                      ("TRUE", True), ("", True)])
def test_the_switch_reads_its_words_quietly(monkeypatch, value, on):
    monkeypatch.setenv("FXNN_AUTOTUNE", value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fxnn_paths.measuring_enabled() is on


def test_a_switch_value_it_does_not_know_leaves_measuring_on_and_says_so_once(monkeypatch):
    monkeypatch.setenv("FXNN_AUTOTUNE", "maybe")
    monkeypatch.setattr(fxnn_paths, "_said_switch", set())
    with pytest.warns(RuntimeWarning, match=r"FXNN_AUTOTUNE='maybe' is neither off \(0, off, no, false\) nor on"):
        assert fxnn_paths.measuring_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fxnn_paths.measuring_enabled()


def test_the_cache_lives_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.setenv("FXNN_CACHE_DIR", str(tmp_path / "c"))
    assert fxnn_paths.cache_file() == str(tmp_path / "c" / "paths.json")
    monkeypatch.delenv("FXNN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert fxnn_paths.cache_file() == str(tmp_path / "x" / "fxnn" / "paths.json")


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """fxnn_paths.choose measuring with a fake clock, and a hook to say which
    path the fake contenders make fastest."""
    torch = pytest.importorskip("torch")
    from fxnn.models.torch import paths as torch_paths
    clock, calls = FakeClock(), {}
    fastest = {"path": "folded"}
    monkeypatch.setenv("FXNN_AUTOTUNE", "1")
    monkeypatch.setattr(fxnn_paths, "_default", tuner(tmp_path, clock))
    monkeypatch.setattr(torch_paths, "_auto", {})

    def contenders(shape, dtype, device, train, input_grad, bias=True, autocast=None, channels_last=False,
                   stride=1):
        paths = torch_paths.available_paths(torch.empty(0, dtype=dtype, device=device), autocast or dtype)
        return clock.contenders({p: 0.001 if p == fastest["path"] else 0.002 for p in paths}, calls)
    monkeypatch.setattr(torch_paths, "path_contenders", contenders)
    return fastest


@pytest.mark.parametrize("path", ["fixed", "folded"])
def test_auto_runs_the_path_that_was_measured_fastest(measured, path):
    import torch
    from fxnn.models.torch.paths import fixed_conv2d_record
    measured["path"] = path
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(4, 6, 12, 12, generator=g), torch.randn(30, 8, generator=g), torch.randn(8, generator=g)
    with torch.no_grad():
        assert torch.equal(fixed_conv2d_record(x, w, b, "auto"), fixed_conv2d_record(x, w, b, path))
    # tells them apart
    assert not torch.equal(fixed_conv2d_record(x, w, b, "fixed"), fixed_conv2d_record(x, w, b, "folded"))


def test_each_layer_and_pass_gets_its_own_choice_in_the_record(measured, tmp_path, small_mnist):
    import scipy.io
    import fxnn
    measured["path"] = "fixed"
    out = str(tmp_path / "r.mat")
    assert fxnn.main(["-m", "fxnn", "-nrec", "1", "-ipr", "2", "--data-dir", small_mnist, "--engine", "torch",
                      "-o", out, "--seed", "1"]) == 0
    meta = scipy.io.loadmat(out, squeeze_me=True)["meta"]
    assert str(meta["fxnn_path"]) == "conv0: train fixed, valid fixed; conv1: train fixed, valid fixed"
    assert str(meta["fxnn_impl"]).startswith("fixed: ")
    keys = json.loads(open(fxnn_paths.tuner().cache).read())["entries"]
    layers = sorted((json.loads(k)["pass"], tuple(json.loads(k)["shape"][1:])) for k in keys)
    assert layers == [("train", (1, 32, 28, 28)), ("train", (32, 64, 14, 14)),
                      ("valid", (1, 32, 28, 28)), ("valid", (32, 64, 14, 14))]


def test_models_without_fxnn_layers_say_so(small_mnist, tmp_path):
    import scipy.io
    import fxnn
    out = str(tmp_path / "c.mat")
    assert fxnn.main(["-m", "cnn", "-nrec", "1", "-ipr", "1", "--data-dir", small_mnist, "--engine", "torch",
                      "-o", out]) == 0
    assert str(scipy.io.loadmat(out, squeeze_me=True)["meta"]["fxnn_path"]) == "none (no fxnn layers)"


def test_the_contenders_compute_the_same_layer(monkeypatch):
    """What is timed is the layer itself, once on each path that runs here:
    equal outputs, every contender forward and backward."""
    torch = pytest.importorskip("torch")
    from fxnn.models.torch import paths as torch_paths
    seen, real = {}, torch_paths.fixed_conv2d_record

    def recording(x, weight, bias, path, stride=1):
        y = real(x, weight, bias, path, stride)
        seen[path] = y.detach().clone()
        return y
    monkeypatch.setattr(torch_paths, "fixed_conv2d_record", recording)
    runs = torch_paths.path_contenders([3, 2, 4, 6, 5], torch.float32, torch.device("cpu"), train=True,
                                        input_grad=True)
    assert tuple(runs) == torch_paths.available_paths(torch.empty(0))
    for path, run in runs.items():
        run()
        assert path in seen
    for path in runs:
        torch.testing.assert_close(seen[path], seen["fixed"], rtol=1e-5, atol=1e-5)


def test_the_pytensor_engine_measures_its_layers(monkeypatch, tmp_path):
    """PyTensor chooses at build time for the batches it is told."""
    from fxnn.models.pytensor import paths as pytensor_paths
    from fxnn.models.architecture import build_network
    net = build_network("fxnn", (1, 8, 8))
    assert pytensor_paths.layer_shapes(net, 5) == {"conv0": (5, 1, 32, 8, 8), "conv1": (5, 32, 64, 4, 4)}
    clock, seen = FakeClock(), []
    monkeypatch.setenv("FXNN_AUTOTUNE", "1")
    monkeypatch.setattr(fxnn_paths, "_default", tuner(tmp_path, clock))

    def contenders(shape, dtype, train, input_grad, mode):
        seen.append((tuple(shape), train, input_grad))
        return clock.contenders({"fixed": 0.002, "folded": 0.001 if train else 0.003}, {})
    monkeypatch.setattr(pytensor_paths, "path_contenders", contenders)
    monkeypatch.setattr(pytensor_paths, "available_paths", lambda dtype: ("fixed", "folded"))
    from fxnn.models.pytensor.engine import PyTensorEngine
    engine = PyTensorEngine(net, net.init_params(np.random.default_rng(0)), batch_sizes={"train": 4, "valid": 6})
    assert sorted(seen) == [((4, 1, 32, 8, 8), True, False), ((4, 32, 64, 4, 4), True, True),
                            ((6, 1, 32, 8, 8), False, False), ((6, 32, 64, 4, 4), False, False)]
    assert engine.describe_paths()[0] == "conv0: train folded, valid fixed; conv1: train folded, valid fixed"
    x = np.random.default_rng(1).random((4, 1, 8, 8), dtype=np.float32)
    engine.train_step(x, np.arange(4, dtype=np.int32), 0.1)
    assert os.path.exists(fxnn_paths.tuner().cache)
