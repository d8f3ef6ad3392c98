"""tools/make_sample.py, the script that rebuilds the bundled MNIST sample:
what it takes from a shared data folder, read back with the idx reader, and
its one-line error when the folder is not there."""
import os
import subprocess
import sys

import numpy as np

from conftest import ROOT
from fxnn.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, write_idx
from tools import make_sample


def _shared(tmp_path, full):
    rng = np.random.default_rng(0)
    shared = tmp_path / "shared"
    for folder, n in (("mnist-test", 30), ("mnist-5k-train", 50)) + ((("mnist", 10 * 1003),) if full else ()):
        os.makedirs(shared / folder)
        prefix = "t10k" if folder == "mnist-test" else "train"
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        write_idx(shared / folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(shared / folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return shared


def _read(folder, prefix):
    return (read_idx(str(folder / f"{prefix}-images-idx3-ubyte.gz"), IMAGES_MAGIC, "-"),
            read_idx(str(folder / f"{prefix}-labels-idx1-ubyte.gz"), LABELS_MAGIC, "-"))


def test_takes_the_first_thousand_of_each_class_from_a_full_training_set(tmp_path):
    shared, out = _shared(tmp_path, full=True), tmp_path / "out"
    assert make_sample.main([str(shared), "--out", str(out)]) == 0
    x, y = _read(out, "train")
    full_x, full_y = _read(shared / "mnist", "train")
    want = np.concatenate([np.flatnonzero(full_y == c)[:1000] for c in range(10)])
    assert len(want) == 10000
    np.testing.assert_array_equal(y, full_y[want])
    np.testing.assert_array_equal(x, full_x[want])
    for name in make_sample.TEST:
        assert (out / name).read_bytes() == (shared / "mnist-test" / name).read_bytes()


def test_copies_the_5k_subset_without_a_full_training_set(tmp_path):
    shared, out = _shared(tmp_path, full=False), tmp_path / "out"
    assert make_sample.main([str(shared), "--out", str(out)]) == 0
    for folder, names in (("mnist-5k-train", make_sample.TRAIN), ("mnist-test", make_sample.TEST)):
        for name in names:
            assert (out / name).read_bytes() == (shared / folder / name).read_bytes()


def test_a_missing_shared_folder_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "tools.make_sample", str(tmp_path / "nowhere"), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "mnist-test" in done.stderr and "nowhere" in done.stderr
    assert not out.exists()
