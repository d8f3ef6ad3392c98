"""CIFAR-10 python batches as the CIFAR site ships them (built here), both
folder layouts, broken batches, and pickles that try to run code."""
import builtins
import codecs
import os
import pickle
import pickletools
import struct

import numpy as np
import pytest
from numpy._core.multiarray import _reconstruct

from data import DataError, load_dataset
from data.cifar import TEST, TRAIN, write_batch


def make_cifar(folder, n=8, **replace):
    """Six batches of random images; ``replace`` pickles other objects instead."""
    os.makedirs(folder, exist_ok=True)
    batches = {}
    for i, name in enumerate(TRAIN + (TEST,)):
        path = os.path.join(folder, name)
        if name in replace:
            with open(path, "wb") as f:
                pickle.dump(replace[name], f, protocol=2)
            continue
        rng = np.random.default_rng(i)
        batches[name] = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}
        write_batch(path, batches[name][b"data"], batches[name][b"labels"])
    return batches


@pytest.mark.parametrize("sub", ["cifar10", os.path.join("cifar10", "cifar-10-batches-py")])
def test_batches_load_with_the_right_pixel_layout(tmp_path, sub):
    batches = make_cifar(tmp_path / sub)
    ds = load_dataset("CIFAR10", str(tmp_path))
    assert ds.train_x.shape == (40, 3, 32, 32) and ds.test_x.shape == (8, 3, 32, 32)
    first = batches["data_batch_1"][b"data"][0]
    # row layout: 1024 red, then green, then blue values, each 32x32 row-major
    assert ds.train_x[0, 1, 2, 3] == np.float32(first[1024 + 2 * 32 + 3]) / 255
    assert ds.train_x[0, 2, 31, 0] == np.float32(first[2048 + 31 * 32]) / 255
    np.testing.assert_array_equal(ds.test_y, batches[TEST][b"labels"])
    np.testing.assert_array_equal(ds.train_y[8:16], batches["data_batch_2"][b"labels"])


@pytest.mark.parametrize("bad,words", [
    ({b"data": np.zeros((8, 3072), np.uint8)}, "no labels key"),
    ({b"labels": [0] * 8, b"data": np.zeros((8, 1024), np.uint8)}, "N x 3072"),
    ({b"labels": [0] * 7, b"data": np.zeros((8, 3072), np.uint8)}, "7 labels for 8 images"),
    ({b"labels": [12] * 8, b"data": np.zeros((8, 3072), np.uint8)}, "0..9"),
    ({b"labels": ["cat"] * 8, b"data": np.zeros((8, 3072), np.uint8)}, "integers"),
    ({b"labels": [[1, 2], [3]] + [0] * 6, b"data": np.zeros((8, 3072), np.uint8)}, "integers"),
    ([1, 2, 3], "not a dict"),
])
def test_broken_batches_are_rejected_naming_the_file(tmp_path, bad, words):
    make_cifar(tmp_path / "cifar10", data_batch_3=bad)
    with pytest.raises(DataError) as e:
        load_dataset("CIFAR10", str(tmp_path))
    assert "data_batch_3" in str(e.value) and words in str(e.value)


def test_truncated_batch_is_rejected(tmp_path):
    make_cifar(tmp_path / "cifar10")
    path = tmp_path / "cifar10" / TEST
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="test_batch.*not a readable pickle"):
        load_dataset("CIFAR10", str(tmp_path))


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2 did for CIFAR-10's own batches: bytes and str as
    Python 2 str opcodes, numpy's _reconstruct under its numpy 1.x module."""
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = dispatch[str] = save_py2_str

    def save_global(self, obj, name=None):
        if obj is _reconstruct:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def test_a_batch_pickled_as_python_2_did_loads_with_only_numpy_globals(tmp_path):
    batches = make_cifar(tmp_path / "cifar10")
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": batches["data_batch_1"][b"labels"],
             b"data": batches["data_batch_1"][b"data"], b"filenames": [b"a.png"] * 8}
    path = tmp_path / "cifar10" / "data_batch_1"
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(batch)
    ops = list(pickletools.genops(path.read_bytes()))
    assert {arg for op, arg, _ in ops if op.name == "GLOBAL"} == {
        "numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert not any(op.name in ("STACK_GLOBAL", "BINUNICODE", "SHORT_BINBYTES") for op, _, _ in ops)
    ds = load_dataset("CIFAR10", str(tmp_path))
    first = batch[b"data"][0]
    assert ds.train_x[0, 0, 0, 5] == np.float32(first[5]) / 255
    assert ds.train_x[0, 1, 2, 3] == np.float32(first[1024 + 2 * 32 + 3]) / 255
    np.testing.assert_array_equal(ds.train_y[:8], batch[b"labels"])


class Payload:
    """Unpickling this calls ``func(*args)``, which would create a file."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


PAYLOADS = {
    "os.system": lambda target: Payload(os.system, f"touch {target}"),
    "builtins.open": lambda target: Payload(builtins.open, str(target), "w"),
}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
@pytest.mark.parametrize("wrap", [lambda p: p, lambda p: {b"data": p, b"labels": [0]}])
def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path, wrap, payload):
    make_cifar(tmp_path / "cifar10")
    target = tmp_path / "pwned"
    with open(tmp_path / "cifar10" / "data_batch_2", "wb") as f:
        pickle.dump(wrap(PAYLOADS[payload](target)), f, protocol=2)
    with pytest.raises(DataError) as e:
        load_dataset("CIFAR10", str(tmp_path))
    message = str(e.value)
    assert "data_batch_2" in message and "refused as untrusted" in message
    assert payload.split(".")[1] in message and "\n" not in message
    assert not target.exists()


def test_codecs_encode_is_allowed_only_to_spell_bytes(tmp_path):
    make_cifar(tmp_path / "cifar10")
    with open(tmp_path / "cifar10" / "test_batch", "wb") as f:
        pickle.dump({b"data": Payload(codecs.encode, "abc", "rot13"), b"labels": []}, f, protocol=2)
    with pytest.raises(DataError, match="test_batch: refused as untrusted.*'rot13'"):
        load_dataset("CIFAR10", str(tmp_path))


def test_missing_cifar_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("CIFAR10", str(tmp_path))
    assert str(tmp_path / "cifar10") in str(e.value) and "python version" in str(e.value)
