"""CIFAR-10 python batches as the CIFAR site ships them (built here), both
folder layouts, broken batches, and pickles that try to run code."""
import builtins
import codecs
import dataclasses
import hashlib
import io
import os
import pickle
import pickletools
import shutil
import socket
import struct
import tarfile
import tempfile

import numpy as np
import pytest
from numpy._core.multiarray import _reconstruct

from fxnn.data import DataError, cifar, load_dataset
from local_http import serve_folder, stop
from fxnn.data.cifar import TEST, TRAIN, write_batch


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


# ---- CIFAR-100, and both downloaded as tarballs from a local server ----

def make_tarball(path, source, n=6, seed=0, extra=()):
    """``source``'s tarball (its folder, every batch) with ``n`` images a
    batch; ``extra``: (TarInfo, bytes or None) members added; returns the
    batches' (data, labels) and the tarball's MD5."""
    rng = np.random.default_rng(seed)
    staging = tempfile.mkdtemp(prefix="fxnn-test-cifar-")
    batches = {}
    try:
        with tarfile.open(path, "w:gz") as tar:
            for name in source.train + (source.test,):
                data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
                labels = rng.integers(0, source.num_classes, n)
                write_batch(os.path.join(staging, name), data, labels, source.label_key)
                tar.add(os.path.join(staging, name), f"{source.subfolder}/{name}")
                batches[name] = (data, labels)
            for info, payload in extra:
                tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    finally:
        shutil.rmtree(staging)
    return batches, hashlib.md5(open(path, "rb").read()).hexdigest()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """served(source, md5=None, **kw) -> (batches, md5): a tarball of
    ``source`` served on 127.0.0.1, published with ``md5`` (default its own)."""
    servers = []

    def start(source, md5=None, **kw):
        folder = tmp_path / "server"
        folder.mkdir(exist_ok=True)
        batches, real = make_tarball(str(folder / source.remote.name), source, **kw)
        server = serve_folder(folder)
        servers.append(server)
        monkeypatch.setenv("FXNN_CIFAR_MIRRORS", f"http://127.0.0.1:{server.server_address[1]}/")
        monkeypatch.setattr(cifar, source.name, dataclasses.replace(
            source, remote=dataclasses.replace(source.remote, md5=md5 or real)))
        return batches, real
    yield start
    for server in servers:
        stop(server)


@pytest.mark.parametrize("source", [cifar.CIFAR10, cifar.CIFAR100], ids=lambda s: s.name)
def test_the_tarball_is_downloaded_checked_and_unpacked(tmp_path, served, source):
    batches, md5 = served(source)
    lines = []
    ds = load_dataset(source.name, str(tmp_path / "data"), log=lines.append)
    assert ds.name == source.name and ds.num_classes == source.num_classes
    folder = tmp_path / "data" / source.folder / source.subfolder
    assert ds.files == [str(folder / n) for n in source.train + (source.test,)]
    first, labels = batches[source.train[0]]
    assert ds.train_x[0, 2, 31, 0] == np.float32(first[0, 2048 + 31 * 32]) / 255
    np.testing.assert_array_equal(ds.train_y[:6], labels)
    np.testing.assert_array_equal(ds.test_y, batches[source.test][1])
    assert any("Downloading" in line for line in lines) and any("Unpacking" in line for line in lines)
    assert (tmp_path / "data" / source.folder / source.remote.name).is_file()  # kept, to unpack again
    # a deleted batch is unpacked again from the tarball, without a download
    os.unlink(folder / source.test)
    lines.clear()
    load_dataset(source.name, str(tmp_path / "data"), log=lines.append)
    assert not any("Downloading" in line for line in lines) and (folder / source.test).is_file()


def test_cifar100_takes_the_fine_labels(tmp_path):
    folder = tmp_path / "cifar100"
    folder.mkdir()
    write_batch(str(folder / "train"), np.zeros((4, 3072), np.uint8), [0, 99, 42, 7], "fine_labels")
    write_batch(str(folder / "test"), np.zeros((2, 3072), np.uint8), [98, 1], "fine_labels")
    ds = load_dataset("CIFAR100", str(tmp_path), download=False)
    assert ds.train_y.tolist() == [0, 99, 42, 7] and ds.num_classes == 100  # coarse would be 0, 19, 8, 1


def test_a_wrong_md5_is_refused_and_nothing_is_left(tmp_path, served):
    served(cifar.CIFAR10, md5="0" * 32)
    with pytest.raises(DataError) as e:
        load_dataset("CIFAR10", str(tmp_path / "data"), log=lambda line: None)
    assert "MD5" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "data" / "cifar10").exists()  # the folder the download made is gone too


def member(name, kind=tarfile.REGTYPE, payload=b"hello", linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(payload) if kind == tarfile.REGTYPE else 0
    return info, payload if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("extra,words", [
    (member("../escaped"), "outside the folder"),
    (member("cifar-10-batches-py/../../escaped"), "outside the folder"),
    (member("/tmp/fxnn-escaped-abs"), "outside the folder"),
    (member("cifar-10-batches-py/link", tarfile.SYMTYPE, linkname="/etc/passwd"), "a link"),
    (member("cifar-10-batches-py/hard", tarfile.LNKTYPE, linkname="cifar-10-batches-py/test_batch"), "a link"),
    (member("cifar-10-batches-py/fifo", tarfile.FIFOTYPE), "special file"),
    (member("cifar-10-batches-py/dev", tarfile.CHRTYPE), "special file"),
    (member("cifar-10-batches-py/huge", payload=b"\0" * 70_000_000), "more than the"),
], ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "fifo", "device", "oversized"])
def test_an_unsafe_tarball_is_refused_before_anything_is_written(tmp_path, served, extra, words):
    served(cifar.CIFAR10, extra=[extra])
    with pytest.raises(DataError) as e:
        load_dataset("CIFAR10", str(tmp_path / "data" / "x"), log=lambda line: None)
    assert words in str(e.value) and "cifar-10-python.tar.gz" in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path / "data" / "x" / "cifar10") == ["cifar-10-python.tar.gz"]  # nothing unpacked
    assert not (tmp_path / "data" / "escaped").exists() and not os.path.exists("/tmp/fxnn-escaped-abs")


def test_a_truncated_tarball_is_refused(tmp_path):
    base = tmp_path / "cifar10"
    base.mkdir()
    tar = base / cifar.CIFAR10.remote.name
    make_tarball(str(tar), cifar.CIFAR10, n=50)
    tar.write_bytes(tar.read_bytes()[:20000])
    # published as it is now, so that the unpacking itself meets the damage
    with pytest.raises(DataError) as e:
        cifar.fetch_and_unpack(str(base), dataclasses.replace(cifar.CIFAR10, remote=dataclasses.replace(
            cifar.CIFAR10.remote, md5=hashlib.md5(tar.read_bytes()).hexdigest())), True, lambda line: None)
    assert "corrupt or truncated tarball" in str(e.value) and "\n" not in str(e.value)
    assert not any(n.startswith("data_batch") for _, _, files in os.walk(base) for n in files)


def test_a_tarball_put_there_by_hand_with_a_wrong_md5_is_named(tmp_path):
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "cifar10" / "cifar-10-python.tar.gz").write_bytes(b"not it")
    with pytest.raises(DataError, match="cifar-10-python.tar.gz: MD5 .* delete it"):
        load_dataset("CIFAR10", str(tmp_path), download=False)


def test_offline_the_error_is_one_line(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/"
    monkeypatch.setenv("FXNN_CIFAR_MIRRORS", url)
    with pytest.raises(DataError) as e:
        load_dataset("CIFAR100", str(tmp_path), log=lambda line: None)
    assert "CIFAR-100 not found" in str(e.value) and "download failed" in str(e.value)
    assert "\n" not in str(e.value)


def test_a_full_batch_saved_by_python_3_is_within_the_limit(tmp_path):
    # protocol 2 from Python 3 spells the pixels as UTF-8 text: the largest a genuine batch gets
    path = tmp_path / "data_batch_1"
    write_batch(str(path), np.full((10000, 3072), 255, np.uint8), [0] * 10000)
    assert path.stat().st_size <= cifar.CIFAR10.max_file_bytes("data_batch_1")
    assert cifar.read_batch(str(path))[0].shape == (10000, 3, 32, 32)


def test_a_batch_larger_than_a_genuine_one_is_not_unpickled(tmp_path, monkeypatch):
    make_cifar(tmp_path / "cifar10")
    with open(tmp_path / "cifar10" / "data_batch_4", "ab") as f:
        f.truncate(cifar.CIFAR10.max_file_bytes("data_batch_4") + 1)
    unpickle = cifar.safe_pickle.load
    monkeypatch.setattr(cifar.safe_pickle, "load", lambda path, **kw: pytest.fail("must not unpickle")
                        if path.endswith("data_batch_4") else unpickle(path, **kw))
    with pytest.raises(DataError, match="data_batch_4: .* more than the"):
        load_dataset("CIFAR10", str(tmp_path))


@pytest.mark.parametrize("source,engine", [(cifar.CIFAR10, "torch"), (cifar.CIFAR100, "torch"),
                                           (cifar.CIFAR100, "pytensor")], ids=["cifar10-torch", "cifar100-torch",
                                                                                 "cifar100-pytensor"])
def test_a_short_run_on_each(tmp_path, capsys, source, engine):
    import fxnn
    from fxnn.training.matfile import read_mat
    if engine == "torch":
        pytest.importorskip("torch")
    base = tmp_path / source.folder
    base.mkdir()
    rng = np.random.default_rng(0)
    for name in source.train + (source.test,):
        write_batch(str(base / name), rng.integers(0, 256, (30, 3072), dtype=np.uint8),
                    rng.integers(0, source.num_classes, 30), source.label_key)
    out = tmp_path / "rec.mat"
    code = fxnn.main(["-d", source.name.lower(), "--data-dir", str(tmp_path), "-nrec", "2", "-ipr", "2",
                      "--engine", engine, "-m", "baseline" if engine == "pytensor" else "fxnn", "--seed", "1",
                      "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    rec = read_mat(str(out))
    assert rec["meta"]["num_classes"] == source.num_classes and rec["yprob"].shape == (3, 10, source.num_classes)
    assert rec["x"].shape == (10, 3, 32, 32) and rec["meta"]["dataset"] == source.name
