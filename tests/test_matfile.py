"""The .mat writer against real parsers: scipy.io (v5), h5py (v7.3), and GNU
Octave (skipped where it is not installed, failed under CI=true)."""
import os
import subprocess

import numpy as np
import pytest
import scipy.io

from octave_tool import octave_cli
from fxnn.training import matfile
from fxnn.training.matfile import SnapshotSource, read_mat, write_mat


def make_sources(tmp_path, shapes, records, seed=0):
    """Spool files as the recorder writes them, and the stacks they hold."""
    rng = np.random.default_rng(seed)
    sources, stacks = [], {}
    for name, shape in shapes.items():
        stack = rng.standard_normal((records,) + shape).astype(np.float32)
        path = tmp_path / f"spool-{name}.f32"
        with open(path, "wb") as f:
            for snapshot in stack:
                f.write(snapshot.tobytes(order="F"))
        sources.append(SnapshotSource(name, shape, np.float32, records, str(path)))
        stacks[name] = stack
    return sources, stacks


SMALL = {"tloss": np.linspace(0, 1, 7), "meta": {"model": "fxnn", "seed": 3, "empty": "",
                                                  "flags": {"lr": 0.001}}}
SHAPES = {"conv0_w": (5, 32), "conv1_w": (64, 32, 3, 3), "mlp2_b": (10,)}


@pytest.fixture(params=["v5", "v7.3"])
def layout(request, monkeypatch):
    if request.param == "v7.3":  # force the HDF5 layout on small data
        monkeypatch.setattr(matfile, "V5_MAX_VARIABLE_BYTES", 0)
    return request.param


def test_round_trip_in_both_layouts(tmp_path, layout, monkeypatch):
    monkeypatch.setattr(matfile, "SLAB_BYTES", 4096)  # many slabs even for small stacks
    sources, stacks = make_sources(tmp_path, SHAPES, records=6)
    path = str(tmp_path / "rec.mat")
    assert write_mat(path, SMALL, sources) == layout
    got = read_mat(path)
    for name, stack in stacks.items():
        assert np.asarray(got[name]).shape == stack.shape
        np.testing.assert_array_equal(got[name], stack)
    np.testing.assert_array_equal(np.ravel(got["tloss"]), SMALL["tloss"])
    assert got["meta"]["model"] == "fxnn" and float(got["meta"]["flags"]["lr"]) == 0.001
    assert got["meta"]["empty"] == ""


def test_v5_file_is_read_by_scipy_directly(tmp_path):
    sources, stacks = make_sources(tmp_path, SHAPES, records=3)
    path = str(tmp_path / "rec.mat")
    write_mat(path, SMALL, sources)
    raw = scipy.io.loadmat(path)
    np.testing.assert_array_equal(raw["conv1_w"], stacks["conv1_w"])
    assert raw["mlp2_b"].shape == (3, 10)


def test_v73_file_is_read_by_h5py_directly(tmp_path, monkeypatch):
    """MATLAB's v7.3 conventions checked with h5py alone (not our reader):
    the 512-byte MATLAB header before the HDF5 superblock, every variable
    stored transposed (HDF5 row-major of MATLAB's column-major array) with
    its MATLAB_class, strings as UTF-16 code units, structs as groups."""
    h5py = pytest.importorskip("h5py")
    monkeypatch.setattr(matfile, "V5_MAX_VARIABLE_BYTES", 0)
    monkeypatch.setattr(matfile, "SLAB_BYTES", 4096)
    sources, stacks = make_sources(tmp_path, SHAPES, records=5, seed=1)
    path = str(tmp_path / "rec.mat")
    assert write_mat(path, SMALL, sources) == "v7.3"
    with open(path, "rb") as f:
        head = f.read(520)
    assert head.startswith(b"MATLAB 7.3 MAT-file") and head[126:128] == b"IM"
    assert head[512:520] == b"\x89HDF\r\n\x1a\n"  # the HDF5 superblock right after the userblock
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
        for name, stack in stacks.items():
            ds = f[name]
            assert ds.attrs["MATLAB_class"] == b"single" and ds.dtype == np.float32
            assert ds.shape == stack.shape[::-1]
            np.testing.assert_array_equal(ds[()], stack.transpose(tuple(range(stack.ndim))[::-1]))
        assert f["tloss"].attrs["MATLAB_class"] == b"double" and f["tloss"].shape == (1, 7)
        np.testing.assert_array_equal(f["tloss"][0], SMALL["tloss"])
        meta = f["meta"]
        assert meta.attrs["MATLAB_class"] == b"struct"
        assert meta["model"].attrs["MATLAB_class"] == b"char"
        assert meta["model"][()].astype(np.uint16).tobytes().decode("utf-16-le") == "fxnn"
        assert meta["seed"][()].item() == 3.0 and meta["flags"]["lr"][()].item() == 0.001
        assert meta["empty"].attrs["MATLAB_empty"] == 1


def test_failed_write_keeps_the_earlier_file(tmp_path):
    path = tmp_path / "rec.mat"
    path.write_bytes(b"earlier result")
    bad = [SnapshotSource("w", (4,), np.float32, 2, str(tmp_path / "missing.f32"))]
    with pytest.raises(FileNotFoundError):
        write_mat(str(path), SMALL, bad)
    assert path.read_bytes() == b"earlier result"
    assert [p.name for p in tmp_path.iterdir()] == ["rec.mat"]


def test_octave_loads_both_layouts(tmp_path, layout):
    octave = octave_cli()
    sources, stacks = make_sources(tmp_path, SHAPES, records=4)
    path = str(tmp_path / "rec.mat")
    write_mat(path, SMALL, sources)
    script = (f"r = load('{path}'); w = r.conv1_w; "
              "printf('%d ', size(w)); printf('\\n%.6f\\n', w(2, 5, 3, 2, 1)); "
              "printf('%s %d\\n', r.meta.model, r.meta.seed); printf('%d\\n', numel(r.tloss)); "
              "printf('%.9g ', r.conv0_w(:, 3, 7)); printf('\\n%.9g %d %.17g\\n', sum(double(w(:))), "
              "isempty(r.meta.empty), r.meta.flags.lr);")
    out = subprocess.run([octave, "--no-gui", "--quiet", "--eval", script], capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, HOME=str(tmp_path)))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0].split() == ["4", "64", "32", "3", "3"]
    assert float(lines[1]) == pytest.approx(stacks["conv1_w"][1, 4, 2, 1, 0], abs=1e-6)
    assert lines[2] == "fxnn 3" and lines[3] == "7"
    np.testing.assert_allclose([float(v) for v in lines[4].split()], stacks["conv0_w"][:, 2, 6], rtol=1e-7)
    total, empty, lr = lines[5].split()
    assert float(total) == pytest.approx(stacks["conv1_w"].astype(np.float64).sum(), rel=1e-6, abs=1e-3)
    assert float(lr) == 0.001
    if layout == "v7.3" and empty == "0":
        # MATLAB's convention for an empty char (a uint64 [0 0] dataset flagged
        # MATLAB_empty) comes back from Octave as that uint64 pair, not as ''
        pytest.xfail("Octave reads a v7.3 empty string as uint64 [0 0]")
    assert empty == "1"
