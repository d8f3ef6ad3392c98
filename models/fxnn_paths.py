"""Which computation an fxnn conv layer runs, chosen per layer by measurement.

- ``fixed``: the fixed stage (5M channels written out), then the 1x1 GEMM;
- ``fused``: one C kernel (``kernels/fused_cpu.c``) that computes the fixed
  stage into the GEMM's packed operand, so the 5M channels never reach
  memory; on the CPU float32 and, under bfloat16 autocast, the bfloat16
  kernels (AMX or AVX512-BF16, chosen by CPUID); on CUDA the Triton kernels
  of ``kernels/fused_triton.py`` (float32, float16, bfloat16);
- ``folded``: the 1x1 weights folded into dense 3x3 kernels
  (:func:`fxnn.kernels.fixed_kernels.fold_weights`), then one dense 3x3 conv.

All compute the same function and gradient (tested); they differ in speed
and float rounding. ``auto`` times every path available for a layer's
shape, dtype (the autocast dtype included), memory format, thread count
and pass (training: forward and backward; validation: forward) on first
use, like cuDNN's benchmark mode, and keeps the fastest (on a GPU as on the CPU): in memory for the process and in a
small JSON file in the user's cache directory (``$FXNN_CACHE_DIR``, else ``$XDG_CACHE_HOME/fxnn``,
else ``~/.cache/fxnn``), keyed by the machine (CPU model, instruction set,
threads, library versions), the kernels' build (:func:`kernel_build`: a
rebuilt kernel is measured again) and the layer. ``FXNN_AUTOTUNE=0`` switches the
measuring off; ``auto`` then takes :func:`default_path`.

How it measures (:meth:`PathTuner.measure`): the paths in alternated rounds,
each round in another order, by the process's CPU time on the CPU (time other
processes held the cores does not count; the wall clock on CUDA), and
compares their medians. Where the two fastest are closer than the rounds'
noise can tell apart, it times more rounds; still undecided, the entry is
cached as such and measured again by later processes (a few times at most,
keeping the clearest measurement), so one busy moment does not fix a choice
for good.

The engines supply what to time (:func:`fxnn.models.torch_paths.path_contenders`,
:func:`fxnn.models.pytensor.paths.path_contenders`); this module only times,
chooses and remembers, so it is tested with an injected clock.
"""
import functools
import hashlib
import json
import logging
import math
import os
import platform
import statistics
import time
import warnings

PATHS = ("auto", "fixed", "fused", "folded")
PASSES = ("train", "valid")

CACHE_VARIABLE = "FXNN_CACHE_DIR"
SWITCH_VARIABLE = "FXNN_AUTOTUNE"
CACHE_FORMAT = 1
#: Seconds (of the timing clock) of timed rounds per choice, after one
#: warm-up call of each path: at least MIN_ROUNDS rounds, at most
#: MAX_ROUNDS, or MAX_UNDECIDED_ROUNDS while the two fastest are undecided.
BUDGET_S = 0.25
MIN_ROUNDS, MAX_ROUNDS, MAX_UNDECIDED_ROUNDS = 5, 7, 21
#: Relative differences of the medians below this are ties, not worth more rounds.
TIE = 0.02
#: How many processes measure an undecided entry, at most.
MAX_MEASUREMENTS = 3
#: Contenders are timed on at most this many pixels (B*H*W) of the layer's
#: batch: whole images, at least one.
TIMING_PIXELS = 16384

log = logging.getLogger("fxnn")


def check_path(requested):
    """``requested`` if it names a path, else ValueError."""
    if requested not in PATHS:
        raise ValueError(f"unknown fxnn path {requested!r}; one of {', '.join(PATHS)}")
    return requested


#: The values of ``$FXNN_AUTOTUNE`` that switch measuring off, and those that leave it on.
SWITCH_OFF, SWITCH_ON = ("0", "off", "no", "false"), ("1", "on", "yes", "true", "")
_said_switch = set()


def measuring_enabled():
    """False when ``$FXNN_AUTOTUNE`` is 0, off, no or false; any other value
    leaves measuring on, and one that is not 1, on, yes or true says so (a
    warning, once a value)."""
    value = os.environ.get(SWITCH_VARIABLE, "1").strip().lower()
    if value not in SWITCH_OFF + SWITCH_ON and value not in _said_switch:
        _said_switch.add(value)
        warnings.warn(f"{SWITCH_VARIABLE}={value!r} is neither off ({', '.join(SWITCH_OFF)}) nor on "
                      f"({', '.join(SWITCH_ON[:-1])}): auto measures the paths", RuntimeWarning, stacklevel=2)
    return value not in SWITCH_OFF


def default_path(available):
    """What ``auto`` takes without measuring: fused where it runs (5/9 of a
    dense conv's multiply-adds, and no 5M channels written to memory), else
    fixed."""
    return "fused" if "fused" in available else "fixed"


def timing_batch(batch, height, width):
    """The batch the contenders are timed on (see :data:`TIMING_PIXELS`)."""
    return max(1, min(batch, TIMING_PIXELS // max(1, height * width)))


def cache_file():
    """Where chosen paths are kept between processes."""
    folder = os.environ.get(CACHE_VARIABLE)
    if not folder:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "fxnn")
    return os.path.join(folder, "paths.json")


def cpuinfo(field):
    """The first value of ``field`` in /proc/cpuinfo ("model name", "flags",
    "cpu MHz"), or None where there is no such file or field."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == field:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model():
    """The CPU's marketing name, as the kernel reports it."""
    return cpuinfo("model name") or platform.processor() or platform.machine()


def describe_paths(network, layer_paths, implementation):
    """(paths, implementations) in words for a record's meta: each conv
    layer's path in each pass ("conv0: train fused, valid fused; ..."; "-"
    for a pass not run yet; layers over other bases than fxnn's always fold), and what
    runs each path used (``implementation(path)``)."""
    parts, used = [], []
    for layer in network.convs:
        if layer.fxnn_paths:
            chosen = [layer_paths.get((layer.name, p), "-") for p in PASSES]
            parts.append(f"{layer.name}: " + ", ".join(f"{p} {c}" for p, c in zip(PASSES, chosen)))
            used += [c for c in chosen if c != "-"]
        elif layer.factored:
            parts.append(f"{layer.name}: folded ({layer.basis} basis)")
            used.append("folded")
    if not parts:
        return "none (no fxnn layers)", "none"
    names = [p for p in ("fused", "fixed", "folded") if p in used]
    return "; ".join(parts), "; ".join(f"{p}: {implementation(p)}" for p in names)


def timing_clock(key):
    """The clock paths are timed by for ``key``: the wall clock on CUDA (the
    GPU's work is not the process's CPU time), else the process's CPU time
    (all its threads: the intra-op and OpenMP pools' work counts, other
    processes' does not)."""
    return time.perf_counter if key.get("device") == "cuda" else time.process_time


def median_error(samples):
    """The standard error of the median of ``samples``, from their median
    absolute deviation (1.4826 MAD estimates the standard deviation, 1.2533
    its ratio to the median's error at large n)."""
    m = statistics.median(samples)
    mad = statistics.median(abs(x - m) for x in samples)
    return 1.4826 * 1.2533 * mad / math.sqrt(len(samples))


def undecided(times):
    """Whether the two fastest medians of ``times`` ({path: [seconds]})
    differ by less than their noise (twice the standard error of their
    difference), unless the noise itself is below :data:`TIE`."""
    if len(times) < 2:
        return False
    first, second = sorted(times, key=lambda p: statistics.median(times[p]))[:2]
    best = statistics.median(times[first])
    if best <= 0:
        return False
    gap = (statistics.median(times[second]) - best) / best
    return noise(times, first, second) > max(gap, TIE)


def noise(times, first, second):
    """The noise of two paths' difference of medians, relative to the first's."""
    best = statistics.median(times[first])
    return 2 * math.hypot(median_error(times[first]), median_error(times[second])) / best if best > 0 else 0.0


def summary(times):
    """The cache entry of a measurement ``times`` ({path: [seconds]}): the
    fastest median, the medians in ms, the rounds, the noise of the two
    fastest and whether it told them apart."""
    ranked = sorted(times, key=lambda p: statistics.median(times[p]))
    return {"path": ranked[0], "ms": {p: round(1000 * statistics.median(t), 3) for p, t in times.items()},
            "rounds": min(len(t) for t in times.values()),
            "noise": round(noise(times, *ranked[:2]), 4) if len(ranked) > 1 else 0.0,
            "settled": not undecided(times), "measurements": 1}


class PathTuner:
    """Times contenders and remembers the fastest per key.

    ``clock`` (seconds, monotonic; default :func:`timing_clock` of the key)
    and ``budget`` are injectable so that tests can decide what the timings
    say; ``cache`` is the JSON file (None: no file)."""

    def __init__(self, cache=None, clock=None, budget=BUDGET_S):
        self.cache, self.clock, self.budget = cache, clock, budget
        self._memory = {}
        self._loaded = None

    def choose(self, key, paths, build):
        """The fastest of ``paths`` for ``key`` (a JSON-able dict naming
        machine and layer): from memory, from the cache file, or measured now
        on the contenders ``build()`` returns ({path: callable running one
        pass}) and remembered. A cached entry that was undecided is measured
        again (once a process, :data:`MAX_MEASUREMENTS` in all), and the
        clearer of the two measurements kept."""
        name = json.dumps(key, sort_keys=True)
        if name not in self._memory:
            entry = self._entries().get(name)
            usable = entry is not None and entry["path"] in paths
            if not usable or (not entry.get("settled", True) and entry.get("measurements", 1) < MAX_MEASUREMENTS):
                fresh = summary(self.measure(build(), self.clock or timing_clock(key)))
                if usable:
                    fresh["measurements"] = entry.get("measurements", 1) + 1
                    if not fresh["settled"] and fresh["noise"] > entry.get("noise", 0.0):
                        fresh = dict(entry, measurements=fresh["measurements"])  # the old one was clearer
                entry = fresh
                log.info("fxnn path for %s: %s (medians %s; noise %.0f%%%s)", describe(key), entry["path"],
                         ", ".join(f"{p} {ms:.2f} ms" for p, ms in entry["ms"].items()), 100 * entry["noise"],
                         "" if entry["settled"] else f", undecided after {entry['measurements']} measurement(s)")
                self._save(name, entry)
            self._memory[name] = entry["path"]
        return self._memory[name]

    def measure(self, contenders, clock=None):
        """{path: [seconds of each timed call]}: one untimed call each, then
        rounds of one call each, every round starting one path further on
        (so none always runs right after the same other one), by ``clock``
        (default: this tuner's, else the process's CPU time): at least
        :data:`MIN_ROUNDS`, on until the budget is spent (at most
        :data:`MAX_ROUNDS`), and on while the two fastest are
        :func:`undecided`, to :data:`MAX_UNDECIDED_ROUNDS` or four times the
        budget. Medians, not minima, are compared: the CPU time of a call is
        not shortened by luck."""
        clock = clock or self.clock or time.process_time
        for run in contenders.values():
            run()
        names = list(contenders)
        times = {p: [] for p in names}
        start = clock()
        for rounds in range(MAX_UNDECIDED_ROUNDS):
            spent = clock() - start
            if rounds >= MIN_ROUNDS and (rounds >= MAX_ROUNDS or spent >= self.budget) \
                    and (spent >= 4 * self.budget or not undecided(times)):
                break
            for p in names[rounds % len(names):] + names[:rounds % len(names)]:
                t0 = clock()
                contenders[p]()
                times[p].append(clock() - t0)
        return times

    def _entries(self):
        if self._loaded is None:
            self._loaded = self._read()
        return self._loaded

    #: The largest cache file read (a real one holds a few kB per layer shape).
    MAX_CACHE_BYTES = 4 << 20

    def _read(self):
        """The cache file's entries; a missing file is empty, an unreadable,
        foreign or malformed one (of any shape: too large, nested too deeply,
        entries that are not ``{"path": name, "ms": {name: number}}`` with
        the optional fields of :func:`summary`) is ignored with a warning,
        and rebuilt as paths are measured again."""
        if not self.cache or not os.path.exists(self.cache):
            return {}
        try:
            with open(self.cache, "rb") as f:
                raw = f.read(self.MAX_CACHE_BYTES + 1)
            if len(raw) > self.MAX_CACHE_BYTES:
                raise ValueError(f"larger than {self.MAX_CACHE_BYTES:,} bytes")
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("entries"), dict):
                raise ValueError(f"not an fxnn path cache of format {CACHE_FORMAT}")
            entries = {}
            for k, v in data["entries"].items():
                if not (isinstance(v, dict) and isinstance(v.get("path"), str) and isinstance(v.get("ms", {}), dict)
                        and all(isinstance(p, str) and _is_number(t) for p, t in v.get("ms", {}).items())
                        and all(_is_number(v.get(f, 0)) for f in ("noise", "rounds", "measurements"))
                        and isinstance(v.get("settled", True), bool)):
                    raise ValueError(f"its entry {k[:80]!r} is not a path and its timings")
                entries[k] = dict(v, ms=dict(v.get("ms", {})))
            return entries
        except (OSError, ValueError, UnicodeDecodeError, RecursionError, MemoryError) as e:
            reason = "nested too deeply" if isinstance(e, RecursionError) else " ".join(str(e).split())[:200]
            warnings.warn(f"ignoring the fxnn path cache {self.cache} ({reason}); paths will be measured again "
                          f"and the file rewritten", RuntimeWarning, stacklevel=4)
            return {}

    def _save(self, name, entry):
        """Add an entry to the cache file (merged with what other processes
        wrote meanwhile, replaced atomically); a file that cannot be written
        costs a warning, not the run."""
        self._entries()[name] = entry
        if not self.cache:
            return
        from fxnn.files.atomic import atomic_path
        try:
            os.makedirs(os.path.dirname(self.cache), exist_ok=True)
            entries = dict(self._read_quietly())
            entries[name] = entry
            with atomic_path(self.cache) as tmp:
                with open(tmp, "w") as f:
                    json.dump({"format": CACHE_FORMAT, "entries": entries}, f, indent=1, sort_keys=True)
        except OSError as e:
            warnings.warn(f"could not write the fxnn path cache {self.cache}: {e}", RuntimeWarning, stacklevel=4)

    def _read_quietly(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self._read()


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_default = None


def tuner():
    """The process-wide tuner, on :func:`cache_file`."""
    global _default
    if _default is None:
        _default = PathTuner(cache_file())
    return _default


def describe(key):
    """A layer's key in a few words, for messages."""
    shape = "x".join(str(v) for v in key.get("shape", ()))
    return f"{key.get('engine')} {key.get('pass')} (B,M,N,H,W)={shape}"


@functools.lru_cache(maxsize=None)
def kernel_build():
    """A short digest of fxnn's kernels as built here: the compiled C
    extension (fixed stage and fused kernels) and the Triton kernels'
    source, "none" where there is neither. Part of every cached choice's
    key, so that a rebuilt or edited kernel is measured again rather than
    judged by the timings of its previous build."""
    from fxnn.kernels import native
    digest = hashlib.sha256()
    files = [getattr(native.module, "__file__", None),
             os.path.join(os.path.dirname(native.__file__), "fused_triton.py")]
    found = False
    for path in files:
        if path and os.path.isfile(path):
            with open(path, "rb") as f:
                digest.update(f.read())
            found = True
    return digest.hexdigest()[:16] if found else "none"


def choose(key, paths, build):
    """``auto``'s choice among ``paths`` for ``key`` (the CPU model and the
    :func:`kernel_build` are added here): measured on ``build()``'s
    contenders, or :func:`default_path` when measuring is off."""
    if len(paths) == 1:
        return paths[0]
    if not measuring_enabled():
        return default_path(paths)
    return tuner().choose(dict(key, cpu=cpu_model(), build=kernel_build()), paths, build)
