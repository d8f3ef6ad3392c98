"""Resource bombs: files that are small on disk but declare or inflate to
gigabytes. Each is refused with one line, and the peak memory of the
refusing process (a child, measured by the kernel) stays far below what
reading the bomb would take."""
import gzip
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import ROOT
from fxnn.data.cifar import write_batch
from fxnn.data.idx import write_idx

INFLATED = 600 << 20   # what the bombs inflate to
MARGIN = 250 << 20     # what a refusing load may add to a bare process's peak


LOAD = """
from fxnn.data import DataError, load_dataset
try:
    load_dataset({name!r}, {data_dir!r}, download=False)
except DataError as e:
    print(e)
    sys.exit(2)
"""


def refused(tmp_path, name, data_dir):
    """Load in a fresh child; returns its message and asserts the refusal
    stayed within MARGIN of a child that loads nothing."""
    script = tmp_path / "load.py"
    script.write_text(LOAD.format(name=name, data_dir=str(data_dir)))
    _, _, bare = peak_rss("import numpy, fxnn.data")
    code, out, peak = peak_rss(f"exec(open({str(script)!r}).read())")
    assert code == 2, out
    assert len(out.strip().splitlines()) == 1 and "Traceback" not in out
    assert peak < bare + MARGIN, f"peak {peak >> 20} MiB, bare {bare >> 20} MiB"
    return out.strip()


def peak_rss(code):
    """(exit code, output, peak RSS in bytes) of a child Python running
    ``code``, the peak as the kernel reports it to wait4 (Linux: KiB)."""
    child = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {ROOT!r})\n{code}"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = child.stdout.read().decode()
    _, status, usage = os.wait4(child.pid, 0)
    return os.waitstatus_to_exitcode(status), out, usage.ru_maxrss * 1024


def small_mnist_files(folder):
    os.makedirs(folder, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((10, 28, 28), np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(10, np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((10, 28, 28), np.uint8))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(10, np.uint8))


def inflating(f, total):
    zeros = bytes(1 << 20)
    for _ in range(total >> 20):
        f.write(zeros)


def test_a_gzip_that_inflates_far_past_its_header_is_refused(tmp_path):
    small_mnist_files(tmp_path / "mnist")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(bytes([0, 0, 8, 3]) + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
        inflating(f, INFLATED)
    assert path.stat().st_size < INFLATED // 100
    message = refused(tmp_path, "MNIST", tmp_path)
    assert str(path) in message and "longer than its header says" in message


@pytest.mark.parametrize("dataset", ["MNIST", "FashionMNIST"])
def test_an_idx_header_declaring_a_billion_images_is_refused_before_reading(tmp_path, dataset):
    folder = tmp_path / ("mnist" if dataset == "MNIST" else "fashion-mnist")
    small_mnist_files(folder)
    path = folder / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (10**9).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + bytes(1000))
    message = refused(tmp_path, dataset, tmp_path)
    assert "1,000,000,000 images, more than the 60,000" in message


def npy_header(shape, dtype="|u1"):
    import io
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def npz_with(path, members):
    """An npz whose members are given as callables writing into them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, write in members.items():
            with z.open(name + ".npy", "w", force_zip64=True) as f:
                write(f)


def plain(array):
    return lambda f: np.lib.format.write_array(f, array)


@pytest.mark.parametrize("how", ["declares", "inflates"])
def test_npz_bombs_are_refused(tmp_path, how):
    if how == "declares":
        x_train = lambda f: f.write(npy_header((10**9, 28, 28)) + bytes(1000))  # noqa: E731
        words = "over the limit"
    else:
        x_train = lambda f: (f.write(npy_header((100, 28, 28))), inflating(f, INFLATED))  # noqa: E731
        words = "longer than its header says"
    npz_with(tmp_path / "bomb.npz", {"x_train": x_train, "y_train": plain(np.zeros(100, np.int64)),
                                     "x_test": plain(np.zeros((5, 28, 28), np.uint8)),
                                     "y_test": plain(np.arange(5))})
    message = refused(tmp_path, str(tmp_path / "bomb.npz"), "unused")
    assert "bomb.npz" in message and "x_train" in message and words in message
    # the same in mnist.npz, whose limit is the size of MNIST
    os.makedirs(tmp_path / "mnist")
    npz_with(tmp_path / "mnist" / "mnist.npz", {"train_x": x_train, "train_y": plain(np.zeros(100, np.uint8)),
                                                "test_x": plain(np.zeros((5, 28, 28), np.uint8)),
                                                "test_y": plain(np.zeros(5, np.uint8))})
    message = refused(tmp_path, "MNIST", tmp_path)
    assert "mnist.npz" in message and words in message


@pytest.mark.parametrize("labels", ["strings", "nested"])
def test_cifar_labels_that_would_expand_to_gigabytes_are_refused(tmp_path, labels):
    folder = tmp_path / "cifar10"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_batch(str(folder / name), np.zeros((4, 3072), np.uint8), [0, 1, 2, 3])
    # one object referenced 10,000 times: small in the pickle (its memo), huge as a numpy array
    shared = b"x" * 1_000_000 if labels == "strings" else list(range(100_000))
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({b"data": np.zeros((10000, 3072), np.uint8), b"labels": [shared] * 10000}, f, protocol=2)
    message = refused(tmp_path, "CIFAR10", tmp_path)
    # refused by the unpickler's expansion bound (data/safe_pickle.py), before the label check sees it
    assert "data_batch_2" in message and "expands" in message
