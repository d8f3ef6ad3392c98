"""Hostile data files, tarballs and path caches (docs/bad-data.md), round
two: npy headers with negative, boolean, fractional or overflowing
dimensions, encrypted zip members, zip directories of 5,000 entries, bad
limit variables; idx headers and CIFAR arrays with impossible shapes;
tarballs 2,000 folders deep, through an existing link, with a name both a
file and a folder, with 300,000 empty members or a header declaring 16 MB;
path caches nested 100,000 deep. Each is refused in one line naming the
file, within a memory limit (a child under RLIMIT_AS, its peak from wait4),
and nothing outside the reader's own output changes."""
import gzip
import io
import json
import os
import tarfile
import time
import zipfile

import numpy as np
import pytest

from fuzz_cases import run_readers, tree
from fxnn.data import DataError
from fxnn.data.cifar import write_batch

MARGIN = 250 << 20
INFLATED = 300 << 20


def npy_bytes(header_dict, data=b""):
    text = repr(header_dict).encode("latin1")
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


def write_npz(path, members, deflate_zeros=0):
    """An npz holding ``members`` ({name: npy bytes}); the first member is
    followed by ``deflate_zeros`` zero bytes, deflated."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for i, (name, data) in enumerate(members.items()):
            with z.open(name + ".npy", "w", force_zip64=True) as f:
                f.write(data)
                left = deflate_zeros if i == 0 else 0
                while left > 0:
                    f.write(bytes(min(16 << 20, left)))
                    left -= 16 << 20
    return str(path)


def _raw_npy(text):
    text += b" " * (-(len(text) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + bytes(12)


def genuine_b():
    buf = io.BytesIO()
    np.save(buf, np.arange(4, dtype=np.uint8))
    return buf.getvalue()


def encrypted(path, keys=("a", "b")):
    write_npz(path, {k: genuine_b() for k in keys})
    data = bytearray(open(path, "rb").read())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            data[start + offset] |= 1
            start += 4
    open(path, "wb").write(bytes(data))
    return str(path)


def many_entries(path, n=5000):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for i in range(n):
            z.writestr(f"{i}", b"")
    return str(path)


NPZ_CASES = {
    "negative-dimension-then-300MB": (lambda p: write_npz(p, {"a": npy_bytes(
        {"descr": "<f8", "fortran_order": False, "shape": (-1000, 3)})}, INFLATED), "non-negative integer"),
    "two-negatives-make-a-positive": (lambda p: write_npz(p, {"a": npy_bytes(
        {"descr": "|u1", "fortran_order": False, "shape": (-2, -3)}, bytes(6)), "b": genuine_b()}),
        "non-negative integer"),
    "boolean-dimension": (lambda p: write_npz(p, {"a": npy_bytes(
        {"descr": "|u1", "fortran_order": False, "shape": (True, 4)}, bytes(4)), "b": genuine_b()}),
        "non-negative integer"),
    "fractional-dimension": (lambda p: write_npz(p, {"a": npy_bytes(
        {"descr": "|u1", "fortran_order": False, "shape": (1.5, 4)}, bytes(6)), "b": genuine_b()}), "unreadable"),
    "overflowing-dimension": (lambda p: write_npz(p, {"a": npy_bytes(
        {"descr": "|u1", "fortran_order": False, "shape": (0, 2**70)}), "b": genuine_b()}), "too large"),
    "overflowing-product": (lambda p: write_npz(p, {"a": npy_bytes(
        {"descr": "<f8", "fortran_order": False, "shape": (2**40, 2**40)}), "b": genuine_b()}), "over the limit"),
    "zero-size-dtype": (lambda p: write_npz(p, {"a": npy_bytes(
        {"descr": "|S0", "fortran_order": False, "shape": (10**12,)}), "b": genuine_b()}), "a"),
    "encrypted-member": (encrypted, "encrypted"),
    "5000-entries": (many_entries, "5,000 entries"),
    # found by test_fuzz_readers.py: numpy's header parser raised tokenize.TokenError, a traceback
    "header-unparseable": (lambda p: write_npz(p, {"a": _raw_npy(
        b"{'descr': '|u1', 'fortran_order': False, 'shape': (3, 4), }   (   \x7f"), "b": genuine_b()}),
        "npy header is malformed"),
}


def idx_header(magic, dims):
    return bytes([0, 0, 8, magic]) + b"".join(d.to_bytes(4, "big") for d in dims)


IDX_CASES = {
    "four-billion-images": ("idx_images", lambda p: p.write_bytes(idx_header(3, (2**32 - 1, 28, 28))),
                            "more than the 100"),
    "255-dimensions": ("idx_images", lambda p: p.write_bytes(bytes([0, 0, 8, 255]) + bytes(4 * 255)),
                       "not an idx image file"),
    "gzip-inflating-past-the-header": ("idx_labels", lambda p: _gzip_labels(p), "longer than its header says"),
}


def _gzip_labels(p):
    with gzip.open(p, "wb", compresslevel=1) as f:
        f.write(idx_header(1, (100,)))
        for _ in range(INFLATED >> 24):
            f.write(bytes(16 << 20))


def cifar_with_shape(path, old, new):
    write_batch(str(path), np.zeros((2, 3072), np.uint8), [0, 1])
    data = open(path, "rb").read()
    assert data.count(old) == 1
    open(path, "wb").write(data.replace(old, new))


CIFAR_CASES = {
    # the data array's shape (2, 3072) as pickled: K\x02 (2) M\x00\x0c (3072)
    "negative-rows": (lambda p: cifar_with_shape(p, b"K\x02M\x00\x0c", b"J\xfe\xff\xff\xffM\x00\x0c"), "pickle"),
    "rows-overflowing": (lambda p: cifar_with_shape(p, b"K\x02M\x00\x0c", b"\x8a\x09" + bytes(8) + b"\x01M\x00\x0c"),
                         "pickle"),
    "boolean-rows": (lambda p: cifar_with_shape(p, b"K\x02M\x00\x0c", b"\x88M\x00\x0c"), "pickle"),
    # found by test_fuzz_readers.py: a string declaring 2 GB (its length field) made the unpickler
    # allocate it before reading: a MemoryError under the limit, 2 GB without one
    "string-longer-than-the-file": (lambda p: p.write_bytes(b"\x80\x02X\xff\xff\xff\x7fabc"),
                                    "declares an object of 2,147,483,647 bytes"),
    "bytes-of-2-to-the-60": (lambda p: p.write_bytes(b"\x80\x04\x8e" + (2**60).to_bytes(8, "little") + b"abc"),
                             "declares an object of"),
    # found by test_fuzz_readers.py: BYTEARRAY8 (protocol 5) allocates its declared length before reading
    "bytearray-of-2-to-the-60": (lambda p: p.write_bytes(b"\x80\x05\x96" + (2**60).to_bytes(8, "little") + b"abc"),
                                 "declares an object of 1,152,921,504,606,846,976 bytes"),
}


@pytest.fixture(scope="module")
def data_cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    cases = []
    for name, (make, words) in NPZ_CASES.items():
        cases.append((name, "npz", make(folder / f"{name}.npz"), words))
    for name, (reader, make, words) in IDX_CASES.items():
        path = folder / (f"{name}.idx.gz" if "gzip" in name else f"{name}.idx")
        make(path)
        cases.append((name, reader, str(path), words))
    for name, (make, words) in CIFAR_CASES.items():
        make(folder / "data_batch_1")
        os.rename(folder / "data_batch_1", folder / f"{name}")
        # read_batch needs a batch's name for its size limit
        os.makedirs(folder / name.replace("-", "_"), exist_ok=True)
        os.rename(folder / name, folder / name.replace("-", "_") / "data_batch_1")
        cases.append((name, "cifar", str(folder / name.replace("-", "_") / "data_batch_1"), words))
    return folder, cases


def test_hostile_data_files_are_refused_in_one_line_within_the_memory_limit(data_cases):
    folder, cases = data_cases
    before = tree(folder)
    results, bare, peak = run_readers([(reader, path) for _, reader, path, _ in cases], str(folder))
    for (name, _, path, words), result in zip(cases, results):
        assert result["result"] == "refused", (name, result)
        assert result["message"].startswith(path + ":") and words in result["message"], (name, result["message"])
    assert peak < bare + MARGIN, f"peak {peak >> 20} MiB, after the imports {bare >> 20} MiB"
    assert tree(folder) == before


def test_the_bombs_are_small(data_cases):
    folder, cases = data_cases
    for name, _, path, _ in cases:
        if "300MB" in name or "inflating" in name:
            assert os.path.getsize(path) < 2 << 20, name


@pytest.mark.parametrize("value", ["abc", "-5", "0", "nan", "inf", "1e400", "8 GB", "0x10"])
def test_a_bad_limit_variable_is_refused_not_ignored(monkeypatch, value):
    from fxnn.data.npz import limit_from_env
    monkeypatch.setenv("FXNN_NPZ_LIMIT_MB", value)
    with pytest.raises(DataError) as e:
        limit_from_env("FXNN_NPZ_LIMIT_MB", 8192)
    assert "FXNN_NPZ_LIMIT_MB" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("value,expected", [("", 8192 << 20), ("1", 1 << 20), ("0.5", 1 << 19), (" 16 ", 16 << 20)])
def test_good_limit_values(monkeypatch, value, expected):
    from fxnn.data.npz import limit_from_env
    monkeypatch.setenv("FXNN_NPZ_LIMIT_MB", value)
    assert limit_from_env("FXNN_NPZ_LIMIT_MB", 8192) == expected


def test_the_npz_dataset_uses_the_checked_limit(monkeypatch, tmp_path):
    """data/npz_dataset.py reads FXNN_NPZ_LIMIT_MB; it must go through
    limit_from_env (a one-line change there, outside this test's files)."""
    from fxnn.data import npz_dataset
    monkeypatch.setenv("FXNN_NPZ_LIMIT_MB", "abc")
    try:
        npz_dataset.limit_bytes()
    except DataError as e:
        assert "FXNN_NPZ_LIMIT_MB" in str(e)
    else:
        pytest.xfail("npz_dataset.limit_bytes still ignores a bad FXNN_NPZ_LIMIT_MB (see the report)")


# ---- tarballs -----------------------------------------------------------------

def add_members(tar, members):
    """Add ``members``, (name, payload bytes or None for a folder) pairs, to the open TarFile ``tar``."""
    for name, payload in members:
        info = tarfile.TarInfo(name)
        if payload is None:
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        else:
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def tar_of(path, members, mode="w:gz"):
    """A tarball at ``path`` of ``members`` (see :func:`add_members`)."""
    with tarfile.open(path, mode) as tar:
        add_members(tar, members)
    return str(path)


def empty_members(path, n):
    """A gzipped tarball of ``n`` empty files, written block by block."""
    block = tarfile.TarInfo("f").tobuf(tarfile.GNU_FORMAT)  # one name throughout: the count stops them first
    with gzip.open(path, "wb", compresslevel=1) as f:
        for _ in range(n // 1000):
            f.write(block * 1000)
        f.write(bytes(1024))
    return str(path)


def pax_bomb(path, size):
    """A tarball whose first header is a pax header declaring ``size`` bytes."""
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, size
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(info.tobuf(tarfile.USTAR_FORMAT))
        left = size
        while left > 0:
            f.write(bytes(min(16 << 20, left)))
            left -= 16 << 20
        f.write(bytes(1024))
    return str(path)


def long_name_bomb(path, size):
    info = tarfile.TarInfo("././@LongLink")
    info.type, info.size = tarfile.GNUTYPE_LONGNAME, size
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(info.tobuf(tarfile.USTAR_FORMAT))
        f.write(b"a" * size + bytes(-size % 512) + bytes(1024))
    return str(path)


TAR_CASES = {
    "2000-folders-deep": (lambda p: tar_of(p, [("d/" * 2000 + "f", b"x")]), "deeper than 32"),
    "file-then-folder": (lambda p: tar_of(p, [("a", b"x"), ("a/b", b"y")]), "both a file and a folder"),
    "folder-then-file": (lambda p: tar_of(p, [("c/d", b"y"), ("c", b"x")]), "both a file and a folder"),
    "folder-member-and-file": (lambda p: tar_of(p, [("e", None), ("e", b"x")]), "both a file and a folder"),
    "same-file-twice": (lambda p: tar_of(p, [("g", b"x"), ("./g", b"y")]), "comes twice"),
    "300000-empty-members": (lambda p: empty_members(p, 300_000), "more than the 64 members"),
    "pax-header-of-16MB": (lambda p: pax_bomb(p, 16 << 20), "corrupt or truncated tarball"),
    "long-name-of-8MB": (lambda p: long_name_bomb(p, 8 << 20), "corrupt or truncated tarball"),
    "name-too-long": (lambda p: tar_of(p, [("n" * 300, b"x")]), "longer than"),
}


@pytest.fixture(scope="module")
def tar_cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tars")
    return folder, {name: (make(folder / f"{name}.tar.gz"), words) for name, (make, words) in TAR_CASES.items()}


def test_hostile_tarballs_are_refused_before_anything_is_written(tar_cases):
    folder, cases = tar_cases
    before = tree(folder)
    start = time.monotonic()
    results, bare, peak = run_readers([("tar", path) for path, _ in cases.values()], str(folder))
    for (name, (path, words)), result in zip(cases.items(), results):
        assert result["result"] == "refused", (name, result)
        assert result["message"].startswith(path + ":") and words in result["message"], (name, result["message"])
    assert tree(folder) == before  # no output folder was even made
    assert peak < bare + MARGIN, f"peak {peak >> 20} MiB, after the imports {bare >> 20} MiB"
    assert time.monotonic() - start < 60


def test_many_empty_members_stop_at_the_count(tar_cases):
    from fxnn.data.tarball import extract
    folder, cases = tar_cases
    start = time.monotonic()
    with pytest.raises(DataError, match="more than the 64 members"):
        extract(cases["300000-empty-members"][0], str(folder / "out"), 1 << 20, 1 << 20, 64)
    assert time.monotonic() - start < 2  # it was 21 s (and 134 MB) when every member was read first
    assert not (folder / "out").exists()


def test_an_existing_link_in_the_target_is_never_followed(tmp_path):
    from fxnn.data.tarball import extract
    outside, target = tmp_path / "outside", tmp_path / "target"
    outside.mkdir()
    target.mkdir()
    os.symlink(outside, target / "cifar-10-batches-py")
    tar = tar_of(tmp_path / "t.tar.gz", [("cifar-10-batches-py/data_batch_1", b"evil"), ("readme", b"x")])
    before = tree(tmp_path)
    with pytest.raises(DataError) as e:
        extract(tar, str(target), 1 << 20, 1 << 20)
    assert "is a link" in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(outside) == [] and tree(tmp_path) == before
    # a link to a file where a member goes is refused too (a rename would replace it, but never silently)
    os.remove(target / "cifar-10-batches-py")
    os.symlink(outside / "x", target / "readme")
    with pytest.raises(DataError, match="is a link"):
        extract(tar, str(target), 1 << 20, 1 << 20)


def test_a_clash_with_what_the_target_holds_is_refused_before_writing(tmp_path):
    from fxnn.data.tarball import extract
    target = tmp_path / "target"
    target.mkdir()
    (target / "a").write_text("a file where the tarball has a folder")
    tar = tar_of(tmp_path / "t.tar.gz", [("first", b"1"), ("a/b", b"2")])
    with pytest.raises(DataError, match="is a file where the tarball has a folder"):
        extract(tar, str(target), 1 << 20, 1 << 20)
    assert sorted(os.listdir(target)) == ["a"]  # "first" was not written either
    (target / "a").unlink()
    (target / "first").mkdir()
    with pytest.raises(DataError, match="is a folder where the tarball has a file"):
        extract(tar, str(target), 1 << 20, 1 << 20)
    assert sorted(os.listdir(target)) == ["first"]


def test_a_genuine_tarball_still_unpacks(tmp_path):
    from fxnn.data.tarball import extract
    tar = tar_of(tmp_path / "t.tar.gz", [("top", None), ("top/a", b"1"), ("top/sub/b", b"22")])
    written = extract(tar, str(tmp_path / "out"), 1 << 20, 1 << 20)
    assert sorted(os.path.relpath(w, tmp_path / "out") for w in written) == ["top/a", "top/sub/b"]
    assert (tmp_path / "out" / "top" / "sub" / "b").read_bytes() == b"22"
    # and again over its own output (a rerun after a deleted batch)
    (tmp_path / "out" / "top" / "a").unlink()
    extract(tar, str(tmp_path / "out"), 1 << 20, 1 << 20)
    assert (tmp_path / "out" / "top" / "a").read_bytes() == b"1"


# ---- the path cache -------------------------------------------------------------

def deep(n):
    return "[" * n + "]" * n


PATH_CACHES = {
    "list-100000-deep": deep(100_000),
    "entries-100000-deep": '{"format": 1, "entries": {"k": {"path": "fused", "ms": ' + deep(100_000) + "}}}",
    "dict-100000-deep": '{"a": ' * 100_000 + "1" + "}" * 100_000,
    "path-a-list": '{"format": 1, "entries": {"k": {"path": ["fused"], "ms": {}}}}',
    "ms-a-string": '{"format": 1, "entries": {"k": {"path": "fused", "ms": "fast"}}}',
    "ms-nested": '{"format": 1, "entries": {"k": {"path": "fused", "ms": {"fused": {"a": 1}}}}}',
    "too-large": '{"format": 1, "entries": {' + ", ".join(f'"k{i}": {{"path": "fused", "ms": {{}}}}'
                                                          for i in range(200_000)) + "}}",
    "huge-number": '{"format": 1, "entries": {"k": {"path": "fused", "ms": {"fused": 1' + "0" * 5000 + "}}}}",
    "nan-bytes": "\x00" * 100,
}


def test_a_broken_path_cache_of_any_shape_is_a_warning(tmp_path):
    paths = {}
    for name, text in PATH_CACHES.items():
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(text)
    before = tree(tmp_path)
    results, bare, peak = run_readers([("paths", str(p)) for p in paths.values()], str(tmp_path))
    for name, result in zip(paths, results):
        assert result["result"] == "refused", (name, result)  # the warning, not an exception
        assert "ignoring the fxnn path cache" in result["message"] and str(paths[name]) in result["message"]
    assert tree(tmp_path) == before
    assert peak < bare + MARGIN


def test_a_deeply_nested_cache_is_rebuilt(tmp_path):
    from fxnn.models.fxnn_paths import CACHE_FORMAT, PathTuner
    cache = tmp_path / "paths.json"
    cache.write_text(PATH_CACHES["entries-100000-deep"])
    tuner = PathTuner(str(cache), budget=0)
    with pytest.warns(RuntimeWarning, match="ignoring the fxnn path cache"):
        chosen = tuner.choose({"layer": 1}, ("fused", "fixed"), lambda: {"fused": lambda: None,
                                                                         "fixed": lambda: None})
    assert chosen in ("fused", "fixed")
    data = json.loads(cache.read_text())
    assert data["format"] == CACHE_FORMAT and list(data["entries"].values())[0]["path"] == chosen


LOAD = """
import sys
from fxnn.data import DataError, load_dataset
try:
    load_dataset(sys.argv[1], sys.argv[2], download=False)
except DataError as e:
    print(e, file=sys.stderr)
    sys.exit(2)
"""


OWN = ("x_train", "y_train", "x_test", "y_test")
OWN_CASES = {
    "negative-dimension-then-300MB": (lambda p: write_npz(p, {"x_train": npy_bytes(
        {"descr": "<f8", "fortran_order": False, "shape": (-1000, 3)})}, INFLATED), "non-negative integer"),
    "encrypted-member": (lambda p: encrypted(p, OWN), "encrypted"),
    "boolean-dimension": (lambda p: write_npz(p, {"x_train": npy_bytes(
        {"descr": "|u1", "fortran_order": False, "shape": (True, 4, 4)}, bytes(16))}), "non-negative integer"),
}


@pytest.mark.parametrize("name", list(OWN_CASES))
def test_loading_a_hostile_npz_exits_2_in_one_line(tmp_path, name):
    """As fxnn.py -d file.npz meets it: the loader in a fresh process (its
    peak RSS from wait4) against one that only imports."""
    from fuzz_cases import peak_of
    make, words = OWN_CASES[name]
    path = make(tmp_path / "own.npz")
    before = tree(tmp_path)
    _, _, _, bare = peak_of("import numpy, fxnn.data")
    rc, out, err, peak = peak_of(LOAD, [path, str(tmp_path / "data")], limit=4 << 30)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (rc, out, err)
    assert err.startswith(path + ":") and words in err and "Traceback" not in err, err
    assert peak < bare + MARGIN, f"peak {peak >> 20} MiB, bare {bare >> 20} MiB"
    assert tree(tmp_path) == before
