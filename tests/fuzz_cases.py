"""Running readers on hostile files in a child process under a memory and
time limit, many files per child (a child costs about a second of imports).

:func:`run_readers` writes the cases, starts one child that sets
``RLIMIT_AS`` to its own size after the imports plus ``limit`` bytes, reads
each file with the named reader and reports one JSON line per case: "ok",
"refused" with the reader's documented one-line error, or "crash" with the
traceback (any other exception, or a refusal of more than one line, or one
that mentions a MemoryError: the limit was hit). A child killed by a signal
or the time limit names the case it was on. The peak RSS of the child and
its RSS after the imports come back too: the peak as the kernel keeps it for
the child's own memory (VmHWM; ``wait4``'s ru_maxrss would also count the
parent's size at the fork, which exec hands on to the child on Linux) once
it is done, else from ``wait4``.

Readers (name: call, documented error):

* ``npz``: fxnn.data.npz.read_npz(path, ["a", "b"], fix, 1 MiB, optional=["c"]): DataError
* ``idx_images``/``idx_labels``: fxnn.data.idx.read_idx_raw(path, magic, fix, (100, 28, 28)): DataError
* ``cifar``: fxnn.data.cifar.read_batch(path): DataError
* ``tar``: fxnn.data.tarball.extract(path, <case folder>/out, 1 MiB, 4 MiB, 64): DataError
* ``mat``: fxnn.analysis.records.load_run(path): RecordError
* ``mat_full``: fxnn.training.matfile.read_mat(path): MatError
* ``paths``: models.fxnn_paths.PathTuner(path)._read(): a RuntimeWarning, never an exception
"""
import json
import os
import subprocess
import sys

from conftest import ROOT

CHILD = r"""
import json, os, resource, sys, traceback, warnings
sys.path.insert(0, @ROOT@)
import numpy as np
from fxnn.data import DataError
from fxnn.data.npz import read_npz
from fxnn.data.idx import read_idx_raw, IMAGES_MAGIC, LABELS_MAGIC
from fxnn.data.cifar import read_batch
from fxnn.data.tarball import extract
from fxnn.analysis.records import RecordError, load_run
from fxnn.training.matfile import read_mat
from fxnn.files.mat_reader import MatError
from fxnn.models.fxnn_paths import PathTuner
import h5py, scipy.io

FIX = "the fix"

def paths_read(p):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entries = PathTuner(p)._read()
    lines = [str(w.message) for w in caught]
    if lines:
        raise DataError(lines[0])
    return entries

READERS = {
    "npz": (lambda p: read_npz(p, ["a", "b"], FIX, 1 << 20, optional=["c"]), DataError),
    "idx_images": (lambda p: read_idx_raw(p, IMAGES_MAGIC, FIX, (100, 28, 28)), DataError),
    "idx_labels": (lambda p: read_idx_raw(p, LABELS_MAGIC, FIX, (100,)), DataError),
    "cifar": (read_batch, DataError),
    "tar": (lambda p: extract(p, p + ".out", 1 << 20, 4 << 20, 64, FIX), DataError),
    "mat": (load_run, RecordError),
    "mat_full": (read_mat, MatError),
    "paths": (paths_read, DataError),
}

def rss():
    with open("/proc/self/statm") as f:
        size, resident = f.read().split()[:2]
    return int(size) * os.sysconf("SC_PAGE_SIZE"), int(resident) * os.sysconf("SC_PAGE_SIZE")

vsize, resident = rss()
if @LIMIT@:
    resource.setrlimit(resource.RLIMIT_AS, (vsize + @LIMIT@, vsize + @LIMIT@))
print(json.dumps({"bare": resident}), flush=True)
for i, (reader, path) in enumerate(json.load(open(@CASES@))):
    print(json.dumps({"start": i}), flush=True)
    call, error = READERS[reader]
    try:
        call(path)
        out = {"case": i, "result": "ok"}
    except error as e:
        text = str(e)
        bad = "\n" in text or "MemoryError" in text or "Traceback" in text or not text
        out = {"case": i, "result": "crash" if bad else "refused", "message": text}
    except BaseException as e:
        out = {"case": i, "result": "crash", "message": traceback.format_exc()[-3000:]}
    print(json.dumps(out), flush=True)
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print(json.dumps({"hwm": hwm}), flush=True)
"""


def _cases_file(cases):
    """A temporary file (outside the folders under test) holding ``cases`` as JSON."""
    import tempfile
    fd, path = tempfile.mkstemp(prefix="fxnn-cases-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(cases, f)
    return path


class ChildDied(AssertionError):
    pass


def _run(argv, cwd, timeout, preexec=None):
    """(exit code, stdout, stderr, peak RSS in bytes, timed out) of a child,
    its peak from wait4; killed after ``timeout`` seconds."""
    import tempfile
    import threading

    with tempfile.TemporaryFile() as err_file:
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err_file, cwd=cwd, preexec_fn=preexec)
        killed = []
        timer = threading.Timer(timeout, lambda: (killed.append(1), child.kill()))
        timer.start()
        try:
            out = child.stdout.read().decode(errors="replace")
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        err_file.seek(0)
        err = err_file.read().decode(errors="replace")
    return child.returncode, out, err, usage.ru_maxrss * 1024, bool(killed)


def run_readers(cases, folder, limit=1 << 30, timeout=120):
    """(results, bare, peak): per (reader, path) of ``cases`` a dict with
    "result" ("ok", "refused", "crash", "killed") and "message"; the
    child's RSS after its imports and its peak RSS, in bytes."""
    cases_file = _cases_file([[reader, str(path)] for reader, path in cases])
    code = CHILD.replace("@ROOT@", repr(ROOT)).replace("@LIMIT@", str(int(limit))).replace("@CASES@", repr(cases_file))
    try:
        rc, out, err, peak, timed_out = _run([sys.executable, "-c", code], folder, timeout)
    finally:
        os.remove(cases_file)
    results, bare, started = [None] * len(cases), 0, None
    for line in out.splitlines():
        item = json.loads(line)
        if "bare" in item:
            bare = item["bare"]
        elif "hwm" in item:
            peak = item["hwm"]
        elif "start" in item:
            started = item["start"]
        else:
            results[item["case"]] = item
    if started is not None and results[started] is None:
        why = "timed out" if timed_out else f"exit code {rc}"
        results[started] = {"case": started, "result": "killed", "message": f"{why}: {err[-2000:]}"}
    missing = [i for i, r in enumerate(results) if r is None]
    if missing and not any(r and r["result"] == "killed" for r in results):
        raise ChildDied(f"the child ended (exit code {rc}) before cases {missing[:5]}: {err[-3000:]}")
    return results, bare, peak


def peak_of(code, argv=(), cwd=None, limit=None, timeout=120):
    """(exit code, stdout, stderr, peak RSS in bytes) of ``python -c code
    *argv`` run fresh, its peak from wait4, and, with ``limit``, RLIMIT_AS
    set to that many bytes in the child."""
    def preexec():
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    rc, out, err, peak, timed_out = _run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r})\n{code}", *argv], cwd, timeout,
        preexec if limit else None)
    assert not timed_out, f"timed out after {timeout} s: {err[-2000:]}"
    return rc, out, err, peak


COMMANDS_CHILD = r"""
import contextlib, io, json, os, resource, sys, traceback
sys.path.insert(0, @ROOT@)
import numpy as np
from fxnn.analysis import plot, summary, to_csv, tune
MAINS = {"fxnn-summary": summary.main, "fxnn-csv": to_csv.main, "fxnn-plot": plot.main, "fxnn-tune": tune.main}
with open("/proc/self/statm") as f:
    vsize = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (vsize + @LIMIT@, vsize + @LIMIT@))
for i, (command, argv) in enumerate(json.load(open(@CASES@))):
    print(json.dumps({"start": i}), flush=True)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = MAINS[command](argv)
            except SystemExit as e:
                rc = e.code
    except BaseException:
        rc, err = "crash", io.StringIO(traceback.format_exc()[-3000:])
    print(json.dumps({"case": i, "rc": rc, "out": out.getvalue(), "err": err.getvalue()}), flush=True)
"""


def run_commands(cases, folder, limit=1 << 30, timeout=180):
    """Per (command, argv) of ``cases`` (commands: fxnn-summary, fxnn-csv,
    fxnn-plot, fxnn-tune) a dict with "rc", "out" and "err", all run by one
    child under RLIMIT_AS of its size plus ``limit``; and the child's peak RSS."""
    cases_file = _cases_file([[c, [str(a) for a in argv]] for c, argv in cases])
    code = (COMMANDS_CHILD.replace("@ROOT@", repr(ROOT)).replace("@LIMIT@", str(int(limit)))
            .replace("@CASES@", repr(cases_file)))
    try:
        rc, out, err, peak, timed_out = _run([sys.executable, "-c", code], folder, timeout)
    finally:
        os.remove(cases_file)
    results, started = [None] * len(cases), None
    for line in out.splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if "start" in item:
            started = item["start"]
        elif "case" in item:
            results[item["case"]] = item
    if started is not None and results[started] is None:
        why = "timed out" if timed_out else f"exit {rc}"
        results[started] = {"rc": "killed", "out": "", "err": f"{why}: {err[-2000:]}"}
    assert all(r is not None for r in results[:started]), err[-3000:]
    return results, peak


def tree(folder):
    """{relative path: (size, mtime_ns) or "folder"} of everything under ``folder``."""
    found = {}
    for base, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            # a folder by its entries (listed too), a file or link by its size and time
            found[os.path.relpath(path, folder)] = "folder" if os.path.isdir(path) and not os.path.islink(path) \
                else (st.st_size, st.st_mtime_ns)
    return found
