"""Downloading from mirrors, against HTTP servers on 127.0.0.1 serving files
the tests make (and the genuine MNIST test-set files with their published
MD5s): bad mirrors skipped, recompressed copies accepted by their
decompressed bytes, a missing file fetched while the others stay, sizes and
time bounded, and the offline fallback to the bundled sample in one line."""
import dataclasses
import gzip
import hashlib
import http.server
import os
import socket
import socketserver
import threading
import time

import numpy as np
import pytest

from conftest import ROOT
from local_http import serve_folder, stop
from fxnn.data import download, load_dataset, mnist
from fxnn.data.download import RemoteFile
from fxnn.data.idx import write_idx

SHARED = os.path.join(ROOT, "..", "shared", "data", "mnist-test")


@pytest.fixture
def serve(tmp_path):
    """serve(folder) -> base URL of a local HTTP server for that folder."""
    servers = []

    def start(folder):
        server = serve_folder(folder)
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"
    yield start
    for server in servers:
        stop(server)


def made_files(folder, seed=0):
    """Four small MNIST-format files; {name: MD5}."""
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



def remote(sums, raw=None):
    """RemoteFiles for {name: MD5} (and {name: (raw MD5, raw size)})."""
    raw = raw or {}
    return [RemoteFile(n, md5, 1 << 20, *raw.get(n, ("", 0))) for n, md5 in sums.items()]


def with_sums(monkeypatch, source, sums, raw=None):
    """Make ``source`` (mnist.MNIST or mnist.FASHION_MNIST) publish ``sums``."""
    patched = dataclasses.replace(source, remote=tuple(remote(sums, raw)))
    monkeypatch.setattr(mnist, "MNIST" if source is mnist.MNIST else "FASHION_MNIST", patched)
    return patched


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data/mnist-test is not beside the project")
def test_genuine_files_download_with_the_published_md5s(tmp_path, serve):
    names = ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    files = [r for r in mnist.MNIST.remote if r.name in names]
    download.download_files(str(tmp_path), files, [serve(SHARED)], log=lambda line: None)
    for name in names:
        assert (tmp_path / name).read_bytes() == open(os.path.join(SHARED, name), "rb").read()


def test_load_dataset_downloads_skipping_a_bad_mirror(tmp_path, serve, monkeypatch):
    sums = made_files(tmp_path / "good")
    made_files(tmp_path / "bad", seed=1)  # same names, other bytes: MD5 mismatch
    with_sums(monkeypatch, mnist.MNIST, sums)
    bases = f"{closed_port_url()} {serve(tmp_path / 'bad')},{serve(tmp_path / 'good')}"
    monkeypatch.setenv("FXNN_MNIST_MIRRORS", bases)
    lines = []
    ds = load_dataset("MNIST", str(tmp_path / "data"), log=lines.append)
    assert ds.train_x.shape == (20, 1, 28, 28) and ds.test_x.shape == (6, 1, 28, 28)
    for name in sums:
        assert (tmp_path / "data" / "mnist" / name).read_bytes() == (tmp_path / "good" / name).read_bytes()
    assert len(lines) == 2 * 4  # each file from the bad mirror, then the good one; the closed port says nothing
    assert sorted(os.listdir(tmp_path / "data" / "mnist")) == sorted(sums)  # no partial files left


def test_a_mirror_answering_garbage_is_skipped(tmp_path, serve, garbage_url):
    sums = made_files(tmp_path / "good")
    download.download_files(str(tmp_path / "got"), remote(sums), [garbage_url, serve(tmp_path / "good")],
                            log=lambda line: None)
    for name in sums:
        assert (tmp_path / "got" / name).read_bytes() == (tmp_path / "good" / name).read_bytes()


def test_when_every_mirror_fails_the_error_is_one_line_and_no_file_is_left(tmp_path, serve, garbage_url):
    sums = made_files(tmp_path / "good")
    made_files(tmp_path / "bad", seed=1)
    with pytest.raises(download.DownloadError) as e:
        download.download_files(str(tmp_path / "got"), remote(sums),
                                [garbage_url, serve(tmp_path / "bad"), closed_port_url()], log=lambda line: None)
    message = str(e.value)
    assert "\n" not in message and "train-images-idx3-ubyte.gz" in message and "MD5" in message
    assert not (tmp_path / "got").exists()  # the folder it made is removed too


def test_offline_falls_back_to_the_bundled_sample_in_one_short_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FXNN_MNIST_MIRRORS", f"{closed_port_url()} {closed_port_url()} {closed_port_url()}")
    monkeypatch.delenv("FXNN_DOWNLOAD_DETAIL", raising=False)
    lines = []
    ds = load_dataset("MNIST", str(tmp_path), log=lines.append)
    assert ds.train_x.shape == (5000, 1, 28, 28) and "bundled sample" in ds.source
    assert len(lines) == 1 and "bundled sample" in lines[0] and "download failed" in lines[0]
    assert str(tmp_path / "mnist") in lines[0] and "FXNN_DOWNLOAD_DETAIL=1" in lines[0]
    assert "127.0.0.1" not in lines[0] and len(lines[0].replace(str(tmp_path), "")) < 160  # no mirror list
    assert not (tmp_path / "mnist").exists()  # no empty folder left behind


def test_the_detail_of_a_failed_download_on_request(tmp_path, monkeypatch):
    url = closed_port_url()
    monkeypatch.setenv("FXNN_MNIST_MIRRORS", url)
    monkeypatch.setenv("FXNN_DOWNLOAD_DETAIL", "1")
    lines = []
    load_dataset("MNIST", str(tmp_path), log=lines.append)
    assert len(lines) == 1 and url in lines[0] and "refused" in lines[0].lower()


def test_no_download_goes_straight_to_the_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "fetch", lambda *a: pytest.fail("must not download"))
    lines = []
    ds = load_dataset("MNIST", str(tmp_path), download=False, log=lines.append)
    assert "bundled sample" in ds.source and len(lines) == 1 and "downloading is off" in lines[0]


def test_a_deleted_file_is_downloaded_again_while_the_others_stay(tmp_path, serve, monkeypatch):
    sums = made_files(tmp_path / "good")
    with_sums(monkeypatch, mnist.MNIST, sums)
    monkeypatch.setenv("FXNN_MNIST_MIRRORS", serve(tmp_path / "good"))
    made_files(tmp_path / "data" / "mnist")
    kept = {n: (tmp_path / "data" / "mnist" / n).stat().st_mtime_ns for n in sums}
    os.unlink(tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz")
    lines = []
    ds = load_dataset("MNIST", str(tmp_path / "data"), log=lines.append)
    assert "bundled sample" not in ds.source and len(lines) == 1 and "t10k-labels" in lines[0]
    got = tmp_path / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz"
    assert got.read_bytes() == (tmp_path / "good" / got.name).read_bytes()
    for name in sums:
        if name != got.name:
            assert (tmp_path / "data" / "mnist" / name).stat().st_mtime_ns == kept[name]


def test_a_deleted_file_that_cannot_be_downloaded_is_named_not_replaced_by_the_sample(tmp_path, monkeypatch):
    made_files(tmp_path / "mnist")
    os.unlink(tmp_path / "mnist" / "train-images-idx3-ubyte.gz")
    monkeypatch.setenv("FXNN_MNIST_MIRRORS", closed_port_url())
    with pytest.raises(download.DataError) as e:
        load_dataset("MNIST", str(tmp_path), log=lambda line: None)
    assert "train-images-idx3-ubyte.gz" in str(e.value) and "\n" not in str(e.value)


def recompressed(path, out):
    """The same decompressed bytes, gzipped again another way."""
    raw = gzip.open(path).read()
    with open(out, "wb") as f:
        f.write(gzip.compress(raw, compresslevel=1, mtime=12345))
    return hashlib.md5(raw).hexdigest(), len(raw)


def test_a_recompressed_copy_is_accepted_by_its_decompressed_bytes(tmp_path, serve, monkeypatch):
    sums = made_files(tmp_path / "published")
    (tmp_path / "debian").mkdir()
    raw = {n: recompressed(tmp_path / "published" / n, tmp_path / "debian" / n) for n in sums}
    for name in sums:
        assert hashlib.md5((tmp_path / "debian" / name).read_bytes()).hexdigest() != sums[name]
    with_sums(monkeypatch, mnist.FASHION_MNIST, sums, raw)
    monkeypatch.setenv("FXNN_FASHION_MNIST_MIRRORS", serve(tmp_path / "debian"))
    ds = load_dataset("FashionMNIST", str(tmp_path / "data"), log=lambda line: None)
    assert ds.name == "FashionMNIST" and ds.train_x.shape == (20, 1, 28, 28)
    assert "the published files" in ds.source
    # a copy whose decompressed bytes differ is refused
    made_files(tmp_path / "other", seed=3)
    monkeypatch.setenv("FXNN_FASHION_MNIST_MIRRORS", serve(tmp_path / "other"))
    with pytest.raises(download.DataError, match="MD5"):
        load_dataset("FashionMNIST", str(tmp_path / "data2"), log=lambda line: None)
    assert not (tmp_path / "data2" / "fashion-mnist").exists()  # the folder it made is removed


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Sends a large announced length, then one byte every 0.2 s."""
    sent = 0

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        try:
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                SlowHandler.sent += 1
                time.sleep(0.2)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


def test_a_trickling_server_is_abandoned(tmp_path, monkeypatch):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(download, "GRACE", 1.0)  # the rule, scaled down: after GRACE s at least MIN_RATE B/s
    try:
        error = download.fetch(f"http://127.0.0.1:{server.server_address[1]}/f.gz", str(tmp_path / "f.gz"),
                               RemoteFile("f.gz", "0" * 32, 1 << 20), log=lambda line: None)
        assert error is not None and "too slow" in error
        assert SlowHandler.sent < 100  # cut off long before the server was done
        monkeypatch.setattr(download, "GRACE", 1e9)
        monkeypatch.setenv("FXNN_DOWNLOAD_TIMEOUT", "1")
        error = download.fetch(f"http://127.0.0.1:{server.server_address[1]}/f.gz", str(tmp_path / "f.gz"),
                               RemoteFile("f.gz", "0" * 32, 1 << 20), log=lambda line: None,
                               limit=download.deadline_seconds())
        assert error is not None and "FXNN_DOWNLOAD_TIMEOUT=1" in error
    finally:
        server.shutdown()
        server.server_close()
    assert os.listdir(tmp_path) == []


def test_a_file_larger_than_any_genuine_copy_is_cut_off(tmp_path, serve):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "big.gz").write_bytes(b"\0" * 300_000)
    base = serve(tmp_path / "srv")
    error = download.fetch(base + "big.gz", str(tmp_path / "big.gz"), RemoteFile("big.gz", "0" * 32, 100_000),
                           log=lambda line: None)
    assert error is not None and "100,000" in error and not (tmp_path / "big.gz").exists()


def test_progress_is_drawn_on_a_terminal_only(tmp_path, serve, monkeypatch, capsys):
    import pty
    sums = made_files(tmp_path / "srv")
    name = "train-images-idx3-ubyte.gz"
    files = [r for r in remote(sums) if r.name == name]
    download.download_files(str(tmp_path / "a"), files, [serve(tmp_path / "srv")], log=lambda line: None)
    assert capsys.readouterr().err == ""  # not a terminal: nothing
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as terminal:
        monkeypatch.setattr("sys.stderr", terminal)
        download.download_files(str(tmp_path / "b"), files, [serve(tmp_path / "srv")], log=lambda line: None)
    drawn = os.read(master, 4096).decode()
    os.close(master)
    size = (tmp_path / "srv" / name).stat().st_size
    assert f"{size / 1e6:.1f}/{size / 1e6:.1f} MB" in drawn and drawn.endswith("\r\033[K")
