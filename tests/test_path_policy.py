"""How ``auto`` measures (models/fxnn_paths.py), with scripted clocks: medians
of alternated rounds decide, not one lucky call; paths too close for the
rounds' noise get more rounds, and an entry still undecided is measured
again by later processes (a bounded number of times, the clearer
measurement kept); a rebuilt kernel is measured again; on the CPU the
process's CPU time is the clock, so time spent off the CPU does not count."""
import itertools
import json
import time

import pytest

from fxnn.models import fxnn_paths
from fxnn.models.fxnn_paths import MAX_MEASUREMENTS, MAX_ROUNDS, MAX_UNDECIDED_ROUNDS, MIN_ROUNDS, PathTuner

KEY = {"engine": "test", "shape": [8, 3, 4, 5, 5], "pass": "train"}
MS = 1e-3


class ScriptedClock:
    """A clock that only the scripted contenders move; they log their calls."""

    def __init__(self):
        self.now, self.log = 0.0, []

    def __call__(self):
        return self.now

    def contenders(self, durations):
        """{path: callable} whose successive calls take the seconds of the
        cycled list ``durations[path]`` (the first call is the warm-up)."""
        cycles = {p: itertools.cycle(d) for p, d in durations.items()}

        def run(path):
            def one_pass():
                self.log.append(path)
                self.now += next(cycles[path])
            return one_pass
        return {p: run(p) for p in durations}


def entry_of(tmp_path, key=KEY):
    return json.loads((tmp_path / "paths.json").read_text())["entries"][json.dumps(key, sort_keys=True)]


def tuner(tmp_path, clock, budget=10.0):
    return PathTuner(str(tmp_path / "paths.json"), clock=clock, budget=budget)


def test_the_median_decides_not_one_lucky_call(tmp_path):
    clock = ScriptedClock()
    # fused has one call far faster than any of fixed's, but is slower in every other round
    durations = {"fused": [1 * MS, 0.5 * MS] + [3 * MS] * 30, "fixed": [2 * MS]}
    assert tuner(tmp_path, clock).choose(KEY, ("fused", "fixed"), lambda: clock.contenders(durations)) == "fixed"
    assert entry_of(tmp_path)["ms"] == {"fused": 3.0, "fixed": 2.0}


def test_rounds_alternate_which_path_runs_first(tmp_path):
    clock = ScriptedClock()
    durations = {"fused": [1 * MS], "fixed": [2 * MS], "folded": [3 * MS]}
    times = tuner(tmp_path, clock).measure(clock.contenders(durations))
    rounds = [clock.log[i:i + 3] for i in range(3, len(clock.log), 3)]  # after the three warm-up calls
    assert [r[0] for r in rounds[:3]] == ["fused", "fixed", "folded"]
    assert all(sorted(r) == ["fixed", "folded", "fused"] for r in rounds)
    assert len(rounds) == MAX_ROUNDS == len(times["fused"])  # clear apart: no extra rounds


def test_paths_closer_than_the_noise_get_more_rounds_and_stay_undecided(tmp_path):
    clock = ScriptedClock()
    # medians 8% apart, each call +-20%: no number of rounds up to the cap tells them apart
    durations = {"fused": [1.0 * MS, 1.25 * MS, 1.5 * MS], "folded": [1.1 * MS, 1.35 * MS, 1.6 * MS]}
    chosen = tuner(tmp_path, clock).choose(KEY, ("fused", "folded"), lambda: clock.contenders(durations))
    entry = entry_of(tmp_path)
    assert entry["rounds"] == MAX_UNDECIDED_ROUNDS and not entry["settled"] and entry["noise"] > 0.08
    assert chosen == entry["path"] == "fused" and entry["measurements"] == 1


def test_a_clear_gap_with_the_same_noise_is_decided(tmp_path):
    clock = ScriptedClock()
    durations = {"fused": [1.0 * MS, 1.25 * MS, 1.5 * MS], "folded": [3.0 * MS, 3.25 * MS, 3.5 * MS]}
    assert tuner(tmp_path, clock).choose(KEY, ("fused", "folded"), lambda: clock.contenders(durations)) == "fused"
    entry = entry_of(tmp_path)
    assert entry["settled"] and entry["rounds"] == MAX_ROUNDS


def test_extra_rounds_stop_at_four_times_the_budget(tmp_path):
    clock = ScriptedClock()
    durations = {"fused": [1.0 * MS, 1.25 * MS, 1.5 * MS], "folded": [1.1 * MS, 1.35 * MS, 1.6 * MS]}
    times = tuner(tmp_path, clock, budget=0.002).measure(clock.contenders(durations))
    assert len(times["fused"]) == MIN_ROUNDS  # 5 rounds of 2.6 ms already spent 4 x 2 ms


def test_an_undecided_entry_is_measured_again_a_few_times_then_trusted(tmp_path):
    close = {"fused": [1.0 * MS, 1.25 * MS, 1.5 * MS], "folded": [1.1 * MS, 1.35 * MS, 1.6 * MS]}
    builds = []

    def process():
        """A new process: a fresh tuner on the same cache file, counting its measurements."""
        clock = ScriptedClock()
        t = tuner(tmp_path, clock)
        return t.choose(KEY, ("fused", "folded"), lambda: builds.append(1) or clock.contenders(close))
    for n in range(1, MAX_MEASUREMENTS + 1):
        process()
        assert len(builds) == n and entry_of(tmp_path)["measurements"] == n
    assert process() == "fused" and len(builds) == MAX_MEASUREMENTS  # then the cache is trusted


def test_a_clearer_measurement_replaces_an_undecided_one(tmp_path):
    clock = ScriptedClock()
    close = {"fused": [1.0 * MS, 1.25 * MS, 1.5 * MS], "folded": [1.1 * MS, 1.35 * MS, 1.6 * MS]}
    tuner(tmp_path, clock).choose(KEY, ("fused", "folded"), lambda: clock.contenders(close))
    # a later, quieter process: folded clearly faster
    clear = {"fused": [1.3 * MS], "folded": [1.0 * MS]}
    clock2 = ScriptedClock()
    assert tuner(tmp_path, clock2).choose(KEY, ("fused", "folded"), lambda: clock2.contenders(clear)) == "folded"
    entry = entry_of(tmp_path)
    assert entry["settled"] and entry["path"] == "folded" and entry["measurements"] == 2

    def no_timing():
        raise AssertionError("measured a settled entry again")
    assert tuner(tmp_path, ScriptedClock()).choose(KEY, ("fused", "folded"), no_timing) == "folded"


def test_a_noisier_remeasurement_keeps_the_clearer_entry(tmp_path):
    clock = ScriptedClock()
    somewhat = {"fused": [1.0 * MS, 1.1 * MS, 1.2 * MS], "folded": [1.05 * MS, 1.15 * MS, 1.25 * MS]}
    tuner(tmp_path, clock).choose(KEY, ("fused", "folded"), lambda: clock.contenders(somewhat))
    first = entry_of(tmp_path)
    assert not first["settled"] and first["path"] == "fused"
    noisier = {"fused": [1.0 * MS, 2.0 * MS, 3.0 * MS], "folded": [0.9 * MS, 1.9 * MS, 2.9 * MS]}
    clock2 = ScriptedClock()
    assert tuner(tmp_path, clock2).choose(KEY, ("fused", "folded"), lambda: clock2.contenders(noisier)) == "fused"
    second = entry_of(tmp_path)
    assert second["ms"] == first["ms"] and second["measurements"] == 2


@pytest.mark.parametrize("field, value", [("settled", "yes"), ("noise", "low"), ("measurements", None)])
def test_a_cache_entry_with_malformed_fields_is_ignored_with_a_warning(tmp_path, field, value):
    (tmp_path / "paths.json").write_text(json.dumps({"format": 1, "entries": {
        json.dumps(KEY, sort_keys=True): {"path": "fused", "ms": {}, field: value}}}))
    clock = ScriptedClock()
    durations = {"fused": [2 * MS], "fixed": [1 * MS]}
    with pytest.warns(RuntimeWarning, match="ignoring the fxnn path cache"):
        assert tuner(tmp_path, clock).choose(KEY, ("fused", "fixed"), lambda: clock.contenders(durations)) == "fixed"


def test_a_rebuilt_kernel_is_measured_again(monkeypatch, tmp_path):
    clock, builds = ScriptedClock(), []
    monkeypatch.setenv("FXNN_AUTOTUNE", "1")
    monkeypatch.setattr(fxnn_paths, "_default", tuner(tmp_path, clock))

    def build():
        builds.append(1)
        return clock.contenders({"fused": [1 * MS], "fixed": [2 * MS]})
    for build_id, measured in (("a", 1), ("a", 1), ("b", 2)):
        monkeypatch.setattr(fxnn_paths, "kernel_build", lambda build_id=build_id: build_id)
        fxnn_paths._default._memory.clear()  # as a new process would start
        assert fxnn_paths.choose(KEY, ("fused", "fixed"), build) == "fused"
        assert len(builds) == measured
    keys = [json.loads(k) for k in json.loads((tmp_path / "paths.json").read_text())["entries"]]
    assert sorted(k["build"] for k in keys) == ["a", "b"]


def test_the_build_digest_follows_the_extension_file(monkeypatch, tmp_path):
    from fxnn.kernels import native

    class Extension:
        __file__ = str(tmp_path / "ext.so")
    (tmp_path / "ext.so").write_bytes(b"one build")
    monkeypatch.setattr(native, "module", Extension)
    fxnn_paths.kernel_build.cache_clear()
    try:
        first = fxnn_paths.kernel_build()
        (tmp_path / "ext.so").write_bytes(b"another build")
        fxnn_paths.kernel_build.cache_clear()
        assert fxnn_paths.kernel_build() != first
    finally:
        fxnn_paths.kernel_build.cache_clear()


def test_the_cpu_clock_is_process_cpu_time_and_cuda_the_wall_clock():
    assert fxnn_paths.timing_clock({"device": "cpu"}) is time.process_time
    assert fxnn_paths.timing_clock({"engine": "pytensor"}) is time.process_time
    assert fxnn_paths.timing_clock({"device": "cuda"}) is time.perf_counter


def test_time_off_the_cpu_does_not_count(tmp_path):
    """The default clock, for real: a path that computes less but waits
    (as a call descheduled on a loaded machine would) is still the faster."""
    def spin(seconds):
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    def waits():
        spin(0.001)
        time.sleep(0.02)

    def computes():
        spin(0.006)
    t = PathTuner(None, budget=0.05)
    assert t.choose(dict(KEY, device="cpu"), ("fused", "folded"),
                    lambda: {"fused": waits, "folded": computes}) == "fused"
