"""Downloading MNIST from mirrors, against HTTP servers on 127.0.0.1 serving
files the tests make (and the genuine test-set files with their published
MD5s), and the offline fallback to the bundled sample."""
import functools
import hashlib
import http.server
import os
import socket
import socketserver
import threading

import numpy as np
import pytest

from conftest import ROOT
from data import download, load_dataset
from data.idx import write_idx

SHARED = os.path.join(ROOT, "..", "shared", "data", "mnist-test")


@pytest.fixture
def serve(tmp_path):
    """serve(folder) -> base URL of a local HTTP server for that folder."""
    servers = []

    def start(folder):
        handler = functools.partial(QuietHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def made_files(folder, seed=0):
    """Four small MNIST-format files and their MD5s."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    shapes = {"train-images-idx3-ubyte.gz": (20, 28, 28), "train-labels-idx1-ubyte.gz": (20,),
              "t10k-images-idx3-ubyte.gz": (6, 28, 28), "t10k-labels-idx1-ubyte.gz": (6,)}
    sums = {}
    for name, shape in shapes.items():
        high = 10 if len(shape) == 1 else 256
        write_idx(os.path.join(folder, name), rng.integers(0, high, shape, dtype=np.uint8))
        sums[name] = hashlib.md5(open(os.path.join(folder, name), "rb").read()).hexdigest()
    return sums


class GarbageHandler(socketserver.BaseRequestHandler):
    """Answers any request with something that is not HTTP."""

    def handle(self):
        self.request.recv(4096)
        self.request.sendall(b"SSH-2.0-not-a-web-server\r\nline two\r\n\r\n")


@pytest.fixture
def garbage_url():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), GarbageHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data/mnist-test is not beside the project")
def test_genuine_files_download_with_the_published_md5s(tmp_path, serve, monkeypatch):
    names = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    monkeypatch.setenv("FXNN_MNIST_MIRRORS", serve(SHARED))
    download.download_mnist(str(tmp_path), log=lambda line: None,
                            checksums={n: download.CHECKSUMS[n] for n in names})
    for name in names:
        assert (tmp_path / name).read_bytes() == open(os.path.join(SHARED, name), "rb").read()


def test_load_dataset_downloads_skipping_a_bad_mirror(tmp_path, serve, monkeypatch):
    sums = made_files(tmp_path / "good")
    made_files(tmp_path / "bad", seed=1)  # same names, other bytes: MD5 mismatch
    monkeypatch.setattr(download, "CHECKSUMS", sums)
    monkeypatch.setenv("FXNN_MNIST_MIRRORS", f"{closed_port_url()} {serve(tmp_path / 'bad')},{serve(tmp_path / 'good')}")
    lines = []
    ds = load_dataset("MNIST", str(tmp_path / "data"), log=lines.append)
    assert ds.train_x.shape == (20, 1, 28, 28) and ds.test_x.shape == (6, 1, 28, 28)
    for name in sums:
        assert (tmp_path / "data" / "mnist" / name).read_bytes() == (tmp_path / "good" / name).read_bytes()
    assert len(lines) == 3 * 4  # each file tried on the closed port, the bad mirror, the good one
    assert sorted(os.listdir(tmp_path / "data" / "mnist")) == sorted(sums)  # no partial files left


def test_a_mirror_answering_garbage_is_skipped(tmp_path, serve, garbage_url, monkeypatch):
    sums = made_files(tmp_path / "good")
    monkeypatch.setenv("FXNN_MNIST_MIRRORS", f"{garbage_url} {serve(tmp_path / 'good')}")
    download.download_mnist(str(tmp_path / "got"), log=lambda line: None, checksums=sums)
    for name in sums:
        assert (tmp_path / "got" / name).read_bytes() == (tmp_path / "good" / name).read_bytes()


def test_when_every_mirror_fails_the_error_is_one_line_and_no_file_is_left(tmp_path, serve, garbage_url,
                                                                          monkeypatch):
    sums = made_files(tmp_path / "good")
    made_files(tmp_path / "bad", seed=1)
    monkeypatch.setenv("FXNN_MNIST_MIRRORS", f"{garbage_url} {serve(tmp_path / 'bad')} {closed_port_url()}")
    with pytest.raises(download.DownloadError) as e:
        download.download_mnist(str(tmp_path / "got"), log=lambda line: None, checksums=sums)
    message = str(e.value)
    assert "\n" not in message and "train-images-idx3-ubyte.gz" in message and "MD5" in message
    assert os.listdir(tmp_path / "got") == []


def test_offline_falls_back_to_the_bundled_sample_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("FXNN_MNIST_MIRRORS", closed_port_url())
    lines = []
    ds = load_dataset("MNIST", str(tmp_path), log=lines.append)
    assert ds.train_x.shape == (5000, 1, 28, 28) and "bundled sample" in ds.source
    announcement = [line for line in lines if "bundled sample" in line]
    assert len(announcement) == 1 and "download failed" in announcement[0]
    assert str(tmp_path / "mnist") in announcement[0] and "\n" not in announcement[0]
    assert os.listdir(tmp_path / "mnist") == []


def test_no_download_goes_straight_to_the_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "fetch", lambda *a: pytest.fail("must not download"))
    lines = []
    ds = load_dataset("MNIST", str(tmp_path), download=False, log=lines.append)
    assert "bundled sample" in ds.source and len(lines) == 1 and "downloading is off" in lines[0]
