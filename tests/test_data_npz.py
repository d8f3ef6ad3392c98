"""Your own dataset as an .npz: layouts, sizes, channel and class counts the
network adapts to, every kind of bad file refused in one line, and short
training runs in both engines."""
import os
import zipfile

import numpy as np
import pytest

import fxnn
from fxnn.data import DataError, load_dataset
from fxnn.training.matfile import read_mat


def write(path, n_train=24, n_test=8, shape=(10, 12), classes=3, dtype=np.uint8, seed=0, **override):
    """An npz with random images of ``shape`` per image and labels 0..classes-1
    (every class present); ``override`` replaces or (None) drops arrays."""
    rng = np.random.default_rng(seed)

    def images(n):
        if dtype == np.uint8:
            return rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
        return rng.random((n,) + shape).astype(dtype)
    arrays = {"x_train": images(n_train), "y_train": np.arange(n_train) % classes,
              "x_test": images(n_test), "y_test": rng.integers(0, classes, n_test)}
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return arrays


@pytest.mark.parametrize("shape,layout,chw", [
    ((10, 12), None, (1, 10, 12)),          # (N, H, W): one channel
    ((3, 9, 7), None, (3, 9, 7)),           # NCHW
    ((9, 7, 3), None, (3, 9, 7)),           # NHWC: the last axis is the shortest
    ((2, 8, 8), None, (2, 8, 8)),
    ((8, 6, 6), "NHWC", (6, 8, 6)),         # ambiguous: the layout key decides
    ((6, 8, 8), "NCHW", (6, 8, 8)),
])
def test_layouts_and_sizes(tmp_path, shape, layout, chw):
    extra = {} if layout is None else {"layout": np.array(layout)}
    arrays = write(tmp_path / "d.npz", shape=shape, **extra)
    ds = load_dataset(str(tmp_path / "d.npz"), "unused")
    assert ds.train_x.shape == (24,) + chw and ds.test_x.shape == (8,) + chw
    assert ds.train_x.dtype == np.float32 and ds.train_x.flags.c_contiguous
    x = arrays["x_train"]
    expected = x[:, None] if x.ndim == 3 else (x.transpose(0, 3, 1, 2) if chw != shape else x)
    np.testing.assert_array_equal(ds.train_x, expected / np.float32(255))
    assert ds.name == "d" and ds.num_classes == 3 and ds.files == [str(tmp_path / "d.npz")]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_images_are_used_as_they_are(tmp_path, dtype):
    arrays = write(tmp_path / "f.npz", shape=(3, 8, 8), dtype=dtype)
    ds = load_dataset(str(tmp_path / "f.npz"), "unused")
    np.testing.assert_array_equal(ds.test_x, arrays["x_test"].astype(np.float32))


@pytest.mark.parametrize("classes", [2, 7, 120])
def test_the_class_count_is_the_largest_label_plus_one(tmp_path, classes):
    write(tmp_path / "c.npz", n_train=240, classes=classes)
    ds = load_dataset(str(tmp_path / "c.npz"), "unused")
    assert ds.num_classes == classes and ds.train_y.max() == classes - 1 and ds.train_y.dtype == np.int32


def object_npz(path):
    np.savez(path, x_train=np.array([None] * 4, dtype=object), y_train=np.zeros(4, int),
             x_test=np.zeros((2, 8, 8), np.uint8), y_test=np.zeros(2, int))


@pytest.mark.parametrize("override,words", [
    ({"x_train": np.array([[1, "a"]] * 4, dtype=object)}, "object"),
    ({"y_test": np.array(["a"] * 8, dtype=object)}, "object"),
    ({"y_train": np.zeros(23, int)}, "23 labels for 24 images"),
    ({"y_test": np.full(8, -1)}, "labels must be 0.."),
    ({"y_test": np.full(8, 10000)}, "labels must be 0..9999"),
    ({"y_train": np.zeros(24)}, "integers"),
    ({"y_train": np.zeros((24, 1), int)}, "integers"),
    ({"x_train": np.zeros((24, 120), np.uint8)}, "3-D (N, H, W) or 4-D"),
    ({"x_train": np.zeros((24, 1, 2, 3, 4), np.uint8)}, "3-D (N, H, W) or 4-D"),
    ({"x_train": np.zeros((24, 10, 12), np.int16)}, "uint8 or float"),
    ({"x_test": np.full((8, 10, 12), np.nan, np.float32)}, "NaN"),
    ({"x_test": np.zeros((8, 11, 12), np.uint8)}, "x_test images 1x11x12"),
    ({"x_train": np.zeros((0, 10, 12), np.uint8), "y_train": np.zeros(0, int)}, "no images"),
    ({"y_test": None}, "has no array y_test"),
    ({"layout": np.array("HWCN")}, "layout must be"),
    ({"y_train": np.zeros(24, int), "y_test": np.zeros(8, int)}, "a single class"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_files_are_refused_in_one_line_naming_the_file(tmp_path, override, words):
    write(tmp_path / "bad.npz", **override)
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path / "bad.npz"), "unused")
    message = str(e.value)
    assert str(tmp_path / "bad.npz") in message and words in message and "\n" not in message


def test_a_file_that_is_no_npz_is_refused(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"PK\3\4 not really")
    with pytest.raises(DataError, match="junk.npz: unreadable"):
        load_dataset(str(tmp_path / "junk.npz"), "unused")


def test_a_truncated_member_is_refused(tmp_path):
    write(tmp_path / "t.npz")
    with zipfile.ZipFile(tmp_path / "t.npz") as z:
        data = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(tmp_path / "t.npz", "w") as z:
        for name, raw in data.items():
            z.writestr(name, raw[:-10] if name == "x_test.npy" else raw)
    with pytest.raises(DataError, match="t.npz: unreadable .*x_test is truncated"):
        load_dataset(str(tmp_path / "t.npz"), "unused")


def test_a_missing_path_names_the_built_in_datasets_and_the_format(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        fxnn.main(["-d", str(tmp_path / "nothere.npz")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and "nothere.npz" in err
    assert all(name in err for name in ("MNIST", "FashionMNIST", "CIFAR10", "CIFAR100", "x_train", "y_test"))


def test_images_too_small_for_two_poolings_are_refused_before_training(tmp_path, capsys):
    write(tmp_path / "tiny.npz", shape=(1, 1))
    code = fxnn.main(["-d", str(tmp_path / "tiny.npz"), "-o", str(tmp_path / "r.mat"), "--engine", "torch"])
    err = capsys.readouterr().err
    assert code == 2 and "too small" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.mat").exists()


@pytest.mark.parametrize("engine,model,shape,classes", [
    ("torch", "fxnn", (9, 7, 3), 4),     # NHWC colour, odd sizes
    ("torch", "cnn", (2, 8, 8), 2),
    ("torch", "baseline", (5, 6), 13),
    ("pytensor", "fxnn", (3, 8, 8), 5),
])
def test_a_short_run_adapts_the_network(tmp_path, capsys, engine, model, shape, classes):
    if engine == "torch":
        pytest.importorskip("torch")
    write(tmp_path / "mine.npz", n_train=40, n_test=12, shape=shape, classes=classes)
    os.chdir(tmp_path)  # the default record name is rec-<npz name>-<model>.mat
    code = fxnn.main(["-d", "mine.npz", "-m", model, "-nrec", "2", "-ipr", "3", "--seed", "0", "--engine", engine])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[0] == 'Using dataset "mine.npz".'
    rec = read_mat(str(tmp_path / f"rec-mine-{model}.mat"))
    last = "m_w" if model == "baseline" else "mlp2_w"
    assert rec[last].shape[-1] == classes and rec["yprob"].shape == (3, 10, classes)
    meta = rec["meta"]
    assert meta["dataset"] == "mine" and meta["num_classes"] == classes
    c, h, w = (shape[2], shape[0], shape[1]) if shape[-1] == 3 else ((1,) + shape if len(shape) == 2 else shape)
    assert list(meta["image_shape"]) == [c, h, w] and rec["x"].shape == (10, c, h, w)
    assert (meta["train_images"], meta["test_images"]) == (40, 12) and meta["valid_set"] == "the test set"
