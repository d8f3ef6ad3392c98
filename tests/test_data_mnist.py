"""MNIST loading: idx files the tests write, every kind of damage rejected
with a one-line message naming the file, the npz made by mnist_pickler.py,
and the bundled genuine sample."""
import gzip
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from fxnn.data import DataError, load_dataset
from fxnn.data.idx import write_idx
from fxnn.data.mnist import SAMPLE_DIR, load_folder, load_sample

RNG = np.random.default_rng(0)
TRAIN_X = RNG.integers(0, 256, (30, 28, 28), dtype=np.uint8)
TRAIN_Y = RNG.integers(0, 10, 30).astype(np.uint8)
TEST_X = RNG.integers(0, 256, (12, 28, 28), dtype=np.uint8)
TEST_Y = RNG.integers(0, 10, 12).astype(np.uint8)


def make_mnist(folder, gz=True, **override):
    arrays = {**dict(train_x=TRAIN_X, train_y=TRAIN_Y, test_x=TEST_X, test_y=TEST_Y), **override}
    names = {"train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
             "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte"}
    os.makedirs(folder, exist_ok=True)
    for key, name in names.items():
        write_idx(os.path.join(folder, name + (".gz" if gz else "")), arrays[key])
    return {key: os.path.join(folder, name + (".gz" if gz else "")) for key, name in names.items()}


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_load_as_float_nchw_in_unit_range(tmp_path, gz):
    make_mnist(tmp_path / "mnist", gz=gz)
    ds = load_dataset("MNIST", str(tmp_path))
    assert ds.train_x.shape == (30, 1, 28, 28) and ds.train_x.dtype == np.float32
    np.testing.assert_array_equal(ds.train_x[:, 0], TRAIN_X / np.float32(255))
    np.testing.assert_array_equal(ds.test_y, TEST_Y)
    assert ds.train_y.dtype == np.int32 and len(ds.files) == 4


def damage(paths, key, how):
    path = paths[key]
    raw = gzip.open(path).read()
    if how == "magic":
        raw = (1234).to_bytes(4, "big") + raw[4:]
    elif how == "truncate":
        raw = raw[:-7]
    elif how == "extra":
        raw = raw + b"\0" * 5
    if how == "badgzip":
        with open(path, "r+b") as f:
            f.seek(30)
            f.write(b"\xff" * 16)
        return
    if how == "cutgzip":
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
        return
    with gzip.open(path, "wb") as f:
        f.write(raw)


@pytest.mark.parametrize("key,how,words", [
    ("train_x", "magic", "magic number 1234"),
    ("train_y", "magic", "magic number 1234"),
    ("test_x", "truncate", "truncated"),
    ("test_y", "extra", "longer than its header"),
    ("train_x", "badgzip", "gzip"),
    ("test_x", "cutgzip", "gzip"),
])
def test_damaged_files_are_rejected_naming_the_file(tmp_path, key, how, words):
    paths = make_mnist(tmp_path / "mnist")
    damage(paths, key, how)
    with pytest.raises(DataError) as e:
        load_dataset("MNIST", str(tmp_path), download=False)
    message = str(e.value)
    assert paths[key] in message and words in message and "\n" not in message


@pytest.mark.parametrize("override,words", [
    ({"train_y": TRAIN_Y[:29]}, "29 labels for 30 images"),
    ({"test_y": np.full(12, 10, np.uint8)}, "labels must be 0..9"),
    ({"train_x": np.zeros((30, 28, 27), np.uint8)}, "28x28"),
])
def test_inconsistent_files_are_rejected(tmp_path, override, words):
    make_mnist(tmp_path / "mnist", **override)
    with pytest.raises(DataError, match=words):
        load_dataset("MNIST", str(tmp_path), download=False)


def test_a_missing_file_among_the_four_is_named(tmp_path):
    paths = make_mnist(tmp_path / "mnist")
    os.unlink(paths["test_y"])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_dataset("MNIST", str(tmp_path), download=False)


def test_pickler_writes_an_npz_the_loader_prefers(tmp_path):
    make_mnist(tmp_path / "mnist")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "mnist_pickler.py"), str(tmp_path / "mnist")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    npz = tmp_path / "mnist" / "mnist.npz"
    with np.load(npz, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["train_x"], TRAIN_X)
    ds = load_folder(str(tmp_path / "mnist"))
    assert ds.files == [str(npz)]
    np.testing.assert_array_equal(ds.test_x[:, 0], TEST_X / np.float32(255))


def run_pickler(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "mnist_pickler.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)


def test_pickler_fails_cleanly_on_missing_input(tmp_path):
    out = run_pickler(tmp_path)
    assert out.returncode == 2 and str(tmp_path) in out.stderr and "Traceback" not in out.stderr
    assert os.listdir(tmp_path) == []


def test_pickler_fails_cleanly_on_a_damaged_file_and_writes_nothing(tmp_path):
    paths = make_mnist(tmp_path)
    damage(paths, "test_y", "truncate")
    out = run_pickler(tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and paths["test_y"] in out.stderr and "truncated" in out.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths.values())


def test_pickler_refuses_an_output_it_cannot_write_in_one_line(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "mnist.npz").mkdir()  # a folder where the npz goes: a traceback before
    out = run_pickler(tmp_path)
    assert out.returncode == 2 and out.stdout == "", out.stderr
    assert out.stderr == f"fxnn-pickle-mnist: error: cannot write {tmp_path / 'mnist.npz'}: it is a folder; name a file in it\n"
    assert os.listdir(tmp_path / "mnist.npz") == []


def test_pickler_help():
    out = run_pickler("--help")
    assert out.returncode == 0 and "mnist.npz" in out.stdout


def make_npz(path, **override):
    arrays = {**dict(train_x=TRAIN_X, train_y=TRAIN_Y, test_x=TEST_X, test_y=TEST_Y), **override}
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})


@pytest.mark.parametrize("override,words", [
    ({"test_y": None}, "test_y"),
    ({"train_x": TRAIN_X.astype(np.float32)}, "uint8"),
    ({"test_x": TEST_X.reshape(12, 784)}, "28x28"),
    ({"train_y": TRAIN_Y.astype(np.float64)}, "integers"),
    ({"train_y": TRAIN_Y.reshape(30, 1)}, "integers"),
    ({"test_y": TEST_Y[:5]}, "5 labels for 12 images"),
    ({"test_y": np.full(12, 11, np.uint8)}, "0..9"),
    ({"test_y": np.array(list("abcdefghijkl"), dtype=object)}, "object values"),
])
def test_a_bad_npz_is_rejected_naming_it(tmp_path, override, words):
    (tmp_path / "mnist").mkdir()
    npz = tmp_path / "mnist" / "mnist.npz"
    make_npz(npz, **override)
    with pytest.raises(DataError) as e:
        load_dataset("MNIST", str(tmp_path), download=False)
    assert str(npz) in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


def test_a_truncated_npz_is_rejected(tmp_path):
    (tmp_path / "mnist").mkdir()
    npz = tmp_path / "mnist" / "mnist.npz"
    make_npz(npz)
    npz.write_bytes(npz.read_bytes()[:3000])
    with pytest.raises(DataError, match="mnist.npz: unreadable"):
        load_dataset("MNIST", str(tmp_path), download=False)


def test_bundled_sample_is_genuine_balanced_mnist():
    ds = load_sample()
    assert ds.train_x.shape == (5000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.train_y).tolist() == [500] * 10
    assert ds.train_x.dtype == np.float32 and ds.train_x.flags.c_contiguous
    assert ds.train_x.min() == 0 and ds.train_x.max() == 1 and ds.test_x.max() == 1
    assert np.bincount(ds.test_y).sum() == 10000 and ds.test_y.dtype == np.int32
    assert ds.source == "bundled sample: 5,000 genuine MNIST training images, full 10,000-image test set"
    assert [os.path.dirname(f) for f in ds.files] == [SAMPLE_DIR] * 4


@pytest.mark.parametrize("key", ["train", "test"])
def test_a_dataset_without_training_or_test_images_is_refused(tmp_path, key):
    make_mnist(tmp_path / "mnist", **{f"{key}_x": np.zeros((0, 28, 28), np.uint8), f"{key}_y": np.zeros(0, np.uint8)})
    with pytest.raises(DataError) as e:
        load_dataset("MNIST", str(tmp_path), download=False)
    assert f"no {key}" in str(e.value) and str(tmp_path / "mnist") in str(e.value) and "\n" not in str(e.value)
