"""Fashion-MNIST: idx files the tests write, the system package's folder,
the clear error offline, and a real run on the genuine files in
../shared/data/fashion-mnist/ where that folder exists."""
import dataclasses
import os

import numpy as np
import pytest

import fxnn
from fxnn import cli
from conftest import ROOT
from fxnn.data import DataError, load_dataset, mnist
from fxnn.data.idx import write_idx
from fxnn.training.matfile import read_mat

SHARED = os.path.join(ROOT, "..", "shared", "data")
NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
         "t10k-labels-idx1-ubyte.gz")


def make_fashion(folder, n_train=40, n_test=10, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    arrays = [rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_train, dtype=np.uint8),
              rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8), rng.integers(0, 10, n_test, dtype=np.uint8)]
    for name, array in zip(NAMES, arrays):
        write_idx(os.path.join(folder, name), array)
    return arrays


@pytest.mark.parametrize("spelling", ["FashionMNIST", "fashionmnist", "FASHIONMNIST"])
def test_idx_files_in_the_data_dir_load(tmp_path, spelling):
    train_x, train_y, test_x, test_y = make_fashion(tmp_path / "fashion-mnist")
    ds = load_dataset(cli.dataset_name(spelling), str(tmp_path), download=False)
    assert ds.name == "FashionMNIST" and ds.num_classes == 10
    np.testing.assert_array_equal(ds.train_x[:, 0], train_x / np.float32(255))
    np.testing.assert_array_equal(ds.test_y, test_y)
    assert ds.source.startswith(f"Fashion-MNIST from {tmp_path / 'fashion-mnist'}: 40 training and 10 test")
    assert "published" not in ds.source  # made-up files are not the published ones


def test_the_system_package_folder_is_looked_in_when_the_data_dir_has_none(tmp_path, monkeypatch):
    make_fashion(tmp_path / "usr-share" / "fashion-mnist", n_train=30)
    monkeypatch.setattr(mnist, "FASHION_MNIST", dataclasses.replace(
        mnist.FASHION_MNIST, system_folders=(str(tmp_path / "nowhere"), str(tmp_path / "usr-share" / "fashion-mnist"))))
    ds = load_dataset("FashionMNIST", str(tmp_path / "data"), download=False)
    assert len(ds.train_x) == 30 and str(tmp_path / "usr-share") in ds.source
    make_fashion(tmp_path / "data" / "fashion-mnist", n_train=20)  # the data dir's own copy comes first
    assert len(load_dataset("FashionMNIST", str(tmp_path / "data"), download=False).train_x) == 20


def test_the_default_system_folder_is_debians():
    # where dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb puts the files (dpkg -c lists them)
    assert mnist.FASHION_MNIST.system_folders == ("/usr/share/datasets/fashion-mnist",)


def test_without_files_and_without_download_the_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "FASHION_MNIST", dataclasses.replace(mnist.FASHION_MNIST, system_folders=()))
    with pytest.raises(DataError) as e:
        load_dataset("FashionMNIST", str(tmp_path), download=False)
    assert str(tmp_path / "fashion-mnist") in str(e.value) and "--no-download" in str(e.value)
    assert "\n" not in str(e.value)


def test_an_image_file_declaring_more_images_than_fashion_mnist_has_is_refused(tmp_path):
    make_fashion(tmp_path / "fashion-mnist")
    path = tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    write_idx(path, np.zeros(10001, np.uint8))
    with pytest.raises(DataError, match="10,001 labels, more than the 10,000"):
        load_dataset("FashionMNIST", str(tmp_path), download=False)


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "fashion-mnist")),
                    reason="the genuine Fashion-MNIST (../shared/data/fashion-mnist/) is not beside the project")
@pytest.mark.parametrize("model", ["baseline", pytest.param("fxnn", marks=pytest.mark.slow)])
def test_a_real_fashion_mnist_run(tmp_path, capsys, model):
    pytest.importorskip("torch")
    out = tmp_path / "rec.mat"
    code = fxnn.main(["-d", "FashionMNIST", "--data-dir", SHARED, "-nrec", "1", "-ipr", "30", "--seed", "2",
                      "--valid-split", "0.05", "--engine", "torch", "--record-params", "none", "-o", str(out),
                      "-m", model])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    meta = read_mat(str(out))["meta"]
    assert meta["dataset"] == "FashionMNIST" and meta["num_classes"] == 10
    assert "the published files" in meta["data_source"]  # the decompressed bytes have the published MD5s
    assert (meta["train_images"], meta["valid_images"], meta["test_images"]) == (57000, 3000, 10000)
    rec = read_mat(str(out))
    assert rec["verate"][-1] < rec["verate"][0] - 0.2  # 30 steps learn a lot of Fashion-MNIST
    assert rec["test_erate"][0] < 0.7
    assert stdout.count("Test loss|erate") == 1
