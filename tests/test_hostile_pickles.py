"""Hostile CIFAR-10 batches, built here, each loaded by fxnn.py in a child
process: pickles nested deeply enough to crash CPython, pickles whose
repeated references expand to gigabytes, non-UTF-8 keys and numpy arrays
without data. Each must end with exit code 2 and one line naming the file,
no traceback, no crash, and (for the bombs) a small peak RSS."""
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from fxnn.data import DataError, load_dataset, safe_pickle
from test_data_cifar import make_cifar

P2 = pickle.PROTO + b"\x02"
DATA = b"U\x04data" + pickle.dumps(np.zeros((8, 3072), np.uint8), protocol=2)[2:-1]


def batch_with(labels_opcodes):
    """A protocol-2 batch {b'labels': <opcodes>, b'data': zeros (8, 3072)}."""
    return P2 + b"}(U\x06labels" + labels_opcodes + DATA + b"u."


def deep_tuple_key(depth):
    """{((((...)))): 1}: hashing the key recurses once per level in C."""
    return P2 + b"})" + b"\x85" * depth + b"K\x01s."


def ndarray_called(shape):
    """numpy.ndarray(shape, 'u1') called directly: an array of uninitialised memory."""
    dims = b"(" + b"".join(b"J" + struct.pack("<i", d) for d in shape) + b"t"
    labels = pickle.dumps([0] * shape[0], protocol=2)[2:-1]
    return P2 + b"}(U\x06labels" + labels + b"U\x04datacnumpy\nndarray\n(" + dims + b"U\x02u1tRu."


def array_opcodes(state_opcodes):
    """numpy's own _reconstruct call, then BUILD with the given state."""
    return (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\nK\x00\x85U\x01btR" + state_opcodes)


def dtype_opcodes(name):
    """numpy.dtype(name, False, True) with the state numpy pickles for a plain dtype."""
    state = b"(K\x03U\x01|NNN" + b"J\xff\xff\xff\xff" * 2 + b"K\x00tb"
    return b"cnumpy\ndtype\n(U" + bytes([len(name)]) + name + b"K\x00K\x01tR" + state


NESTED_REFS = [[[1] * 1000] * 1000] * 1000  # 10**9 labels in 3 levels of repeated references
ZEROS = np.zeros((8, 3072), np.uint8)
STRING_REFS = ["x" * 20_000] * 200_000      # 200,000 references to one 20 kB string: 16 GB as numpy text

HOSTILE = {
    "deep tuple key (1 MB)": (deep_tuple_key(1_000_000), "nested more than 100 deep"),
    "deep labels (1 MB)": (batch_with(b"(" * 500_000 + b"]" + b"l" * 500_000), "nested more than 100 deep"),
    "labels: nested references": (pickle.dumps({b"labels": NESTED_REFS, b"data": ZEROS}, protocol=2),
                                  "expands to more than"),
    "labels: repeated string": (pickle.dumps({b"labels": STRING_REFS, b"data": ZEROS}, protocol=2),
                                "expands to more than"),
    "non-UTF-8 key": (pickle.dumps({b"\xff\xfelabels": [0] * 8, b"labels": [0] * 8,
                                    b"data": np.zeros((8, 3072), np.uint8)}, protocol=2), "not UTF-8"),
    "ndarray called": (ndarray_called((8, 3072)), "calls numpy.ndarray directly"),
    "array without state": (batch_with(b"]") [:-2] + b"U\x05other" + array_opcodes(b"") + b"u.",
                            "never gives"),
    "array of objects": (batch_with(b"]" + array_opcodes(b"(K\x01K\x01\x85" + dtype_opcodes(b"O8")
                                                              + b"\x89]K\x01atb")), "dtype 'O8'"),
    "array state without a buffer": (batch_with(b"]" + array_opcodes(b"(K\x01K\x01\x85" + dtype_opcodes(b"u1")
                                                                          + b"\x89]K\x01atb")), "bytes buffer"),
}


#: Runs argv[2:] and writes its peak RSS (kB) to argv[1]. A child's peak RSS
#: counts the memory of the process it was forked from, so the measured
#: process is forked from this small one, not from the test's.
MEASURE = """import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)"""


def run_fxnn(data_dir, out, *extra):
    """fxnn.py on CIFAR-10 in a child (the PyTensor engine: it imports nothing
    before the data are loaded); (exit code, stdout, stderr, peak RSS in MiB).
    A crash by a signal N gives exit code 128 + N."""
    peak = str(out) + ".peak"
    cmd = [sys.executable, "-c", MEASURE, peak, sys.executable, os.path.join(ROOT, "fxnn.py"), "-d", "CIFAR10",
           "--data-dir", str(data_dir), "-o", str(out), "-nrec", "1", "-ipr", "1", "--engine", "pytensor", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    with open(peak) as f:
        peak_mib = int(f.read()) / 1024
    os.unlink(peak)
    return proc.returncode, proc.stdout, proc.stderr, peak_mib


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_batch_is_refused_in_one_line_without_crashing(tmp_path, case):
    raw, words = HOSTILE[case]
    make_cifar(tmp_path / "cifar10")
    (tmp_path / "cifar10" / "data_batch_4").write_bytes(raw)
    code, out, err, peak_mib = run_fxnn(tmp_path, tmp_path / "rec.mat")
    assert code == 2, (code, err[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "data_batch_4" in lines[0] and "refused as untrusted" in lines[0] and words in lines[0], lines[0]
    assert "Iter" not in out and not (tmp_path / "rec.mat").exists()
    if "references" in case or "repeated" in case:  # the bombs: memory stays that of a small run
        assert peak_mib < 150, peak_mib


def test_the_bombs_would_expand_to_gigabytes():
    """The two expansion cases are what they claim: small files, huge as arrays."""
    for labels, gigabytes in ((NESTED_REFS, 8), (STRING_REFS, 16)):
        raw = pickle.dumps({b"labels": labels}, protocol=2)
        assert len(raw) < 1.1e6
        depth, count, leaf = 0, 1, labels
        while isinstance(leaf, list):
            depth, count, leaf = depth + 1, count * len(leaf), leaf[0]
        itemsize = 4 * len(leaf) if isinstance(leaf, str) else 8
        assert count * itemsize / 1e9 >= gigabytes


def test_genuine_arrays_and_batches_still_load(tmp_path):
    for array in (np.arange(12, dtype="<i8").reshape(3, 4), np.zeros((2, 3), np.float32),
                  np.asfortranarray(np.arange(6, dtype=np.uint8).reshape(2, 3)), np.array(b"x")):
        path = tmp_path / "a.pkl"
        path.write_bytes(pickle.dumps({b"a": array, "t": (1, (2, (3,)))}, protocol=2))
        loaded = safe_pickle.load(str(path))
        np.testing.assert_array_equal(loaded[b"a"], array)
        assert loaded[b"a"].dtype == array.dtype and loaded["t"] == (1, (2, (3,)))
    make_cifar(tmp_path / "cifar10", n=20)
    assert load_dataset("CIFAR10", str(tmp_path)).train_x.shape == (100, 3, 32, 32)


def test_each_bound_refuses_just_past_its_limit():
    nested = [[b"x" * 600_000]] * 2  # depth 3, 5 objects, 1.2 MB expanded
    safe_pickle.check_expansion(nested, 3, 5, 2**21)
    for args, words in (((2, 5, 2**21), "nested more than 2"), ((3, 4, 2**21), "more than 4 objects"),
                        ((3, 5, 2**20), "more than 1.0 MiB")):
        with pytest.raises(safe_pickle.UntrustedPickle, match=words):
            safe_pickle.check_expansion(nested, *args)


def test_reconstruct_is_accepted_only_as_numpy_calls_it(tmp_path):
    path = tmp_path / "r.pkl"
    path.write_bytes(P2 + b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\nK\x05\x85U\x01btR.")
    with pytest.raises(DataError, match="not as numpy pickles an array"):
        safe_pickle.load(str(path))
