"""Hostile record files for the readers of fxnn-summary, fxnn-csv, fxnn-plot
and fxnn-tune: bombs (a compressed v5 variable inflating to hundreds of MB,
HDF5 datasets declaring gigabytes never written), loops and depth (HDF5
self-links, soft-link loops, 3,000-deep groups and structs), links out of the
file, malformed fields (inf or fractional seeds, zero record spacing, empty
or 2-D curves, arrays where a flag belongs, MATLAB_class of the wrong type)
and the same run given twice. Each is refused in one line naming the file
(and the field), exit code 2, within a memory limit, touching nothing; the
same run twice is counted once and said so."""
import io
import os
import re
import struct
import zlib

import h5py
import numpy as np
import pytest
import scipy.io

from fuzz_cases import peak_of, run_commands, run_readers, tree
from fxnn.training.matfile import write_mat

MARGIN = 250 << 20   # what refusing may add to the peak RSS of a child that has imported everything


def genuine_small(verate=(0.9, 0.3, 0.1), ipr=4, seed=1, model="fxnn", **flags):
    """The variables of a small genuine record (as fxnn.py writes them)."""
    verate = np.asarray(verate, dtype=float)
    iters = (len(verate) - 1) * ipr
    terate = np.linspace(verate[0], verate[-1], iters)
    return {"tloss": terate / 4, "terate": terate, "vloss": verate / 4, "verate": verate,
            "x": np.zeros((2, 3), np.float32),
            "meta": {"model": model, "dataset": "MNIST", "data_source": "test data", "data_files": "",
                     "engine": "torch", "device": "cpu", "seed": seed, "status": "complete",
                     "iterations_done": iters,
                     "flags": {"iters_per_record": ipr, "num_records": len(verate) - 1, "learn_rate": 0.1,
                               "learn_decay": 0.5, "optimizer": "sgd", "force": False, **flags}}}


def write_genuine(path, layout="v5", **kw):
    import fxnn.training.matfile as matfile
    small = kw.pop("small", None) or genuine_small(**kw)
    if layout == "v7.3":
        old = matfile.V5_MAX_VARIABLE_BYTES
        matfile.V5_MAX_VARIABLE_BYTES = 0
        try:
            src = _one_snapshot(path)
            write_mat(str(path), small, [src])
        finally:
            matfile.V5_MAX_VARIABLE_BYTES = old
        os.remove(src.path)
    else:
        write_mat(str(path), small, [])
    return str(path)


def _one_snapshot(path):
    from fxnn.training.matfile import SnapshotSource
    spool = str(path) + ".spool"
    np.arange(6, dtype=np.float32).tofile(spool)
    return SnapshotSource("w", (2, 3), np.float32, 1, spool)


# ---- v5, built element by element ---------------------------------------------

def element(kind, data):
    return struct.pack("<II", kind, len(data)) + data + b"\0" * (-len(data) % 8)


def matrix(name, cls, dims, body=b"", flags=0, declared=None):
    inner = (element(6, struct.pack("<II", cls | flags, 0)) + element(5, struct.pack(f"<{len(dims)}i", *dims))
             + element(1, name.encode()) + body)
    return struct.pack("<II", 14, len(inner) if declared is None else declared) + inner


def header():
    return b"MATLAB 5.0 MAT-file, hostile".ljust(116, b" ") + b"\0" * 8 + b"\x00\x01IM"


def savemat_bytes(variables):
    """The data elements scipy writes for ``variables`` (no header)."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables, oned_as="column")
    return buf.getvalue()[128:]


def v5_with(path, replace):
    """A genuine record with the variables of ``replace`` ({name: raw element
    bytes}) instead of scipy's."""
    small = genuine_small()
    keep = {k: v for k, v in small.items() if k not in replace}
    path.write_bytes(header() + savemat_bytes(keep) + b"".join(replace.values()))
    return str(path)


def compressed(raw_parts):
    """A miCOMPRESSED element of the bytes in ``raw_parts`` (an iterable of
    byte strings, deflated as they come)."""
    z = zlib.compressobj(9)
    out = b"".join(z.compress(part) for part in raw_parts) + z.flush()
    return struct.pack("<II", 15, len(out)) + out


def zeros(total, chunk=16 << 20):
    while total > 0:
        yield bytes(min(chunk, total))
        total -= chunk


def deep_struct(depth):
    """meta as a struct of one field nested ``depth`` deep."""
    body = matrix("", 6, (1, 1), element(9, struct.pack("<d", 1.0)))[8:]
    for _ in range(depth):
        fields = element(5, struct.pack("<i", 32)) + element(1, b"x".ljust(32, b"\0"))
        inner = matrix("", 2, (1, 1), fields + struct.pack("<II", 14, len(body)) + body)
        body = inner[8:]
    return matrix("meta", 2, (1, 1), fields + struct.pack("<II", 14, len(body)) + body)


BOMB = 300 << 20


def v5_cases(folder):
    """{name: path} of hostile v5 records."""
    dims = (1, BOMB // 8)
    big_tloss = [matrix("tloss", 6, dims, struct.pack("<II", 9, BOMB), declared=BOMB + 56)]
    cases = {
        # declares 300 MB of zeros, deflated to 300 kB
        "compressed-declares-300MB": {"tloss": compressed(big_tloss + list(zeros(BOMB)))},
        # declares 10 values but its compressed stream goes on for 300 MB
        "compressed-inflates-past-its-size": {"tloss": compressed(
            [matrix("tloss", 6, (8, 1), element(9, np.zeros(8).tobytes()))] + list(zeros(BOMB)))},
        "declares-2G-values": {"tloss": matrix("tloss", 6, (1, 2**31 - 1), struct.pack("<II", 9, 0xFFFFFFF8))},
        "negative-dimension": {"tloss": matrix("tloss", 6, (1, -5), element(9, b""))},
        "struct-3000-deep": {"meta": deep_struct(3000)},
        "cell-of-a-billion": {"tloss": matrix("tloss", 1, (1, 10**9))},
        "struct-array-of-a-billion": {"tloss": matrix("tloss", 2, (1, 10**9),
                                                      element(5, struct.pack("<i", 8)) + element(1, b""))},
        "sparse": {"tloss": matrix("tloss", 5, (3, 3))},
        "object": {"tloss": matrix("tloss", 3, (1, 1))},
        "function-handle": {"tloss": matrix("tloss", 16, (1, 1))},
        "complex": {"tloss": matrix("tloss", 6, (2, 1), element(9, bytes(16)) + element(9, bytes(16)), flags=0x800)},
        "truncated": {"tloss": matrix("tloss", 6, (4, 1), element(9, bytes(32)))[:-12]},
        # not deflate data at all (zlib.error, a traceback before it was caught)
        "compressed-garbage": {"tloss": struct.pack("<II", 15, 16) + b"\x78\x9c" + b"\xff" * 14},
    }
    out = {}
    for name, replace in cases.items():
        out[name] = v5_with(folder / f"{name}.mat", replace)
    return out


# ---- v7.3 ----------------------------------------------------------------------

def v73_with(path, edit):
    write_genuine(path, "v7.3")
    with h5py.File(path, "r+") as f:
        edit(f)
    return str(path)


def _cls(obj, name):
    obj.attrs.create("MATLAB_class", np.bytes_(name))


def v73_cases(folder):
    other = write_genuine(folder / "other.h5mat", "v7.3")
    raw = folder / "raw.bin"
    np.zeros(8).tofile(raw)

    def unwritten(name, shape):
        def edit(f):
            del f[name]
            _cls(f.create_dataset(name, shape=shape, dtype="f8", chunks=(1, min(shape[1], 1 << 20)),
                                  compression="gzip"), "double")
        return edit

    def self_link(f):
        f["meta"]["loop"] = f["meta"]

    def soft_loop(f):
        f["meta"]["a"] = h5py.SoftLink("/meta/b")
        f["meta"]["b"] = h5py.SoftLink("/meta/a")

    def deep(f):
        g = f["meta"]
        for i in range(3000):
            g = g.create_group("d")
            _cls(g, "struct")

    def external_link(f):
        del f["meta"]
        f["meta"] = h5py.ExternalLink(os.path.basename(other), "/meta")

    def external_storage(f):
        del f["tloss"]
        _cls(f.create_dataset("tloss", shape=(1, 8), dtype="f8", external=[(str(raw), 0, 64)]), "double")

    def virtual(f):
        del f["tloss"]
        layout = h5py.VirtualLayout(shape=(1, 8), dtype="f8")
        layout[0, :] = h5py.VirtualSource(os.path.basename(other), "tloss", shape=(1, 8))[0, :]
        _cls(f.create_virtual_dataset("tloss", layout), "double")

    def huge_class(f):
        f["tloss"].attrs.create("MATLAB_class", np.bytes_("double" + " " * 60_000))

    def class_as_number(f):
        f["meta"]["seed"].attrs.create("MATLAB_class", np.int32(7))

    def huge_chunk(f):
        del f["tloss"]
        ds = f.create_dataset("tloss", shape=(1, 4), maxshape=(None, None), dtype="f8", chunks=(4096, 65536))
        _cls(ds, "double")

    def reference(f):
        del f["tloss"]
        _cls(f.create_dataset("tloss", data=[f["verate"].ref], dtype=h5py.ref_dtype), "cell")

    cases = {"unwritten-tloss-4.8GB": unwritten("tloss", (1, 600_000_000)),
             "self-link": self_link, "soft-link-loop": soft_loop, "3000-deep-groups": deep,
             "external-link": external_link, "external-storage": external_storage, "virtual-dataset": virtual,
             "huge-MATLAB_class": huge_class, "MATLAB_class-a-number": class_as_number, "huge-chunk": huge_chunk,
             "reference": reference}
    return {name: v73_with(folder / f"{name}.mat", edit) for name, edit in cases.items()}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return folder, {**v5_cases(folder), **v73_cases(folder)}


EXPECTED = {
    "compressed-declares-300MB": "more than the 67,108,864 bytes it may hold",
    "compressed-inflates-past-its-size": "inflates to more than",
    "declares-2G-values": "declares",
    "negative-dimension": "negative size",
    "struct-3000-deep": "nested more than 32 deep",
    "cell-of-a-billion": "cell array",
    "struct-array-of-a-billion": "struct of 0 fields",
    "sparse": "sparse array",
    "object": "an object",
    "function-handle": "function handle",
    "complex": "complex",
    "truncated": "truncated",
    "compressed-garbage": "unreadable (error: Error -3 while decompressing",
    "unwritten-tloss-4.8GB": "more than the 67,108,864 bytes",
    "self-link": "nested more than 32 deep",
    "soft-link-loop": "soft link",
    "3000-deep-groups": "nested more than 32 deep",
    "external-link": "link to another file",
    "external-storage": "other files",
    "virtual-dataset": "other files",
    "huge-MATLAB_class": "MATLAB_class attribute",
    "MATLAB_class-a-number": "MATLAB_class attribute",
    "huge-chunk": "more than the",
    "reference": "not numbers",
}


def test_every_hostile_record_is_refused_in_one_line_within_the_memory_limit(hostile):
    folder, cases = hostile
    before = tree(folder)
    names = list(EXPECTED)
    results, bare, peak = run_readers([("mat", cases[n]) for n in names], str(folder), limit=1 << 30)
    for name, result in zip(names, results):
        assert result["result"] == "refused", (name, result)
        message = result["message"]
        assert message.startswith(cases[name] + ": not an fxnn record file"), (name, message)
        assert EXPECTED[name] in message, (name, message)
    assert peak < bare + MARGIN, f"peak {peak >> 20} MiB, after the imports {bare >> 20} MiB"
    assert tree(folder) == before


def test_the_bombs_are_small_files(hostile):
    """What the refusals above stand for: files of kB that declare or inflate
    to hundreds of MB or GBs."""
    folder, cases = hostile
    for name in ("compressed-declares-300MB", "compressed-inflates-past-its-size", "unwritten-tloss-4.8GB"):
        assert os.path.getsize(cases[name]) < 1 << 20, name


def test_a_huge_unwritten_snapshot_is_never_read(tmp_path):
    """The analysis reads only the curves and meta: a v7.3 record whose
    parameter snapshot declares 4.8 GB (never written) loads with little memory."""
    path = v73_with(tmp_path / "big.mat", lambda f: _cls(
        f.create_dataset("conv0_w", shape=(1, 600_000_000), dtype="f8", chunks=(1, 1 << 20)), "single"))
    assert os.path.getsize(path) < 100_000
    results, bare, peak = run_readers([("mat", path)], str(tmp_path))
    assert results[0]["result"] == "ok", results
    assert peak < bare + MARGIN


def test_the_full_reader_is_bounded_too(hostile):
    """read_mat without names (tests and users reading everything) refuses
    the same bombs and loops with its MatError."""
    folder, cases = hostile
    names = [n for n in EXPECTED if n not in ("unwritten-tloss-4.8GB", "compressed-declares-300MB")]
    results, bare, peak = run_readers([("mat_full", cases[n]) for n in names], str(folder))
    assert all(r["result"] == "refused" for r in results), [(n, r) for n, r in zip(names, results)
                                                           if r["result"] != "refused"]
    assert peak < bare + MARGIN


# ---- malformed fields ----------------------------------------------------------

def meta_with(**changes):
    small = genuine_small()
    for key, value in changes.items():
        where = small["meta"]
        *path, last = key.split("__")
        for p in path:
            where = where[p]
        if value is DELETE:
            del where[last]
        else:
            where[last] = value
    return small


DELETE = object()

FIELD_CASES = {
    "seed-inf": (meta_with(seed=np.inf), "meta.seed"),
    "seed-fraction": (meta_with(seed=1.5), "meta.seed"),
    "seed-negative": (meta_with(seed=-3), "meta.seed"),
    "seed-array": (meta_with(seed=np.array([1.0, 2.0])), "meta.seed"),
    "seed-struct": (meta_with(seed={"a": 1}), "meta.seed"),
    "seed-text": (meta_with(seed="one"), "meta.seed"),
    "ipr-zero": (meta_with(flags__iters_per_record=0), "meta.flags.iters_per_record"),
    "ipr-negative": (meta_with(flags__iters_per_record=-4), "meta.flags.iters_per_record"),
    "ipr-inf": (meta_with(flags__iters_per_record=np.inf), "meta.flags.iters_per_record"),
    "ipr-nan": (meta_with(flags__iters_per_record=np.nan), "meta.flags.iters_per_record"),
    "ipr-fraction": (meta_with(flags__iters_per_record=2.5), "meta.flags.iters_per_record"),
    "ipr-huge": (meta_with(flags__iters_per_record=1e300), "meta.flags.iters_per_record"),
    "ipr-missing": (meta_with(flags__iters_per_record=DELETE), "meta.flags.iters_per_record"),
    "nrec-inf": (meta_with(flags__num_records=np.inf), "meta.flags.num_records"),
    "nrec-zero": (meta_with(flags__num_records=0), "meta.flags.num_records"),
    "learn-rate-array": (meta_with(flags__learn_rate=np.array([0.1, 0.2])), "meta.flags.learn_rate"),
    "learn-rate-text": (meta_with(flags__learn_rate="fast"), "meta.flags.learn_rate"),
    "flag-struct": (meta_with(flags__optimizer={"name": "sgd"}), "meta.flags.optimizer"),
    "flag-matrix": (meta_with(flags__batch_size=np.ones((2, 2))), "meta.flags.batch_size"),
    "flags-not-a-struct": (meta_with(flags=3.0), "meta.flags"),
    "model-number": (meta_with(model=4.0), "meta.model"),
    "status-array": (meta_with(status=np.zeros(3)), "meta.status"),
    "meta-not-a-struct": ({**genuine_small(), "meta": np.zeros(3)}, "meta"),
    "verate-empty": ({**genuine_small(), "verate": np.zeros(0), "vloss": np.zeros(0)}, "verate"),
    "tloss-2d": ({**genuine_small(), "tloss": np.zeros((4, 2))}, "tloss"),
    "verate-text": ({**genuine_small(), "verate": "0.1"}, "verate"),
    "vloss-short": ({**genuine_small(), "vloss": np.zeros(2)}, "vloss"),
    "records-past-tloss": ({**genuine_small(), "tloss": np.zeros(3), "terate": np.zeros(3)}, "verate"),
    "test-erate-three": ({**genuine_small(), "test_erate": np.zeros(3)}, "test_erate"),
}


@pytest.fixture(scope="module")
def malformed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("malformed")
    paths = {}
    for name, (small, _) in FIELD_CASES.items():
        paths[name] = write_genuine(folder / f"{name}.mat", small=small)
    # the same faults in the v7.3 layout, where MATLAB_class decides
    for name in ("seed-inf", "ipr-zero", "tloss-2d", "flag-struct", "verate-empty"):
        paths[name + "-v73"] = write_genuine(folder / f"{name}-v73.mat", "v7.3", small=FIELD_CASES[name][0])
    return folder, paths


def field_of(name):
    return FIELD_CASES[name.removesuffix("-v73")][1]


COMMAND_ARGS = {"fxnn-summary": ["--csv", "out.csv", "--png", "out.png"], "fxnn-csv": ["-o", "out.csv"],
                "fxnn-plot": ["-o", "out.png"], "fxnn-tune": ["--csv", "out.csv"]}


@pytest.mark.parametrize("command", list(COMMAND_ARGS))
def test_malformed_fields_are_one_line_naming_file_and_field_for_every_command(malformed, command):
    folder, paths = malformed
    good = write_genuine(folder / "good.mat", seed=7)
    before = tree(folder)
    names = list(paths)
    cases = [(command, [paths[n], good] + COMMAND_ARGS[command]) for n in names]
    results, _ = run_commands(cases, str(folder), timeout=240)
    for name, r in zip(names, results):
        assert r["rc"] == 2, (name, r)
        lines = r["err"].strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r["err"], (name, r)
        assert paths[name] in lines[0] and field_of(name) in lines[0], (name, lines[0])
    assert tree(folder) == before  # no out.csv, no out.png, nothing touched


def test_a_malformed_field_names_every_other_problem_too(tmp_path):
    from fxnn.analysis.records import RecordError, load_run
    small = meta_with(seed=np.inf, flags__iters_per_record=0)
    path = write_genuine(tmp_path / "two.mat", small=small)
    with pytest.raises(RecordError) as e:
        load_run(path)
    assert "meta.seed" in str(e.value) and "1 more: meta.flags.iters_per_record" in str(e.value)
    assert "\n" not in str(e.value)


# ---- the same run twice --------------------------------------------------------

def test_the_same_run_twice_is_counted_once_and_said_so(tmp_path, monkeypatch):
    from fxnn.analysis import summary, tune
    monkeypatch.chdir(tmp_path)
    a = write_genuine(tmp_path / "a.mat", seed=1)
    write_genuine(tmp_path / "b.mat", seed=2)
    os.symlink("a.mat", tmp_path / "link.mat")
    copy = tmp_path / "copy.mat"
    copy.write_bytes(open(a, "rb").read())
    for given in (["a.mat", "./a.mat", "b.mat"], ["a.mat", "link.mat", "b.mat"], ["a.mat", "copy.mat", "b.mat"],
                  [a, "a.mat", "b.mat"]):
        out = io.StringIO()
        import contextlib
        with contextlib.redirect_stdout(out):
            assert summary.main(given) == 0
        text = out.getvalue()
        assert "NOTE: counted once: " in text and re.search(r"fxnn \(torch\) +2 ", text), (given, text)
        out = io.StringIO()
        assert tune.main(given, out=out) == 0
        assert "counted once" in out.getvalue()


def test_two_seeds_are_still_two(tmp_path, capsys):
    from fxnn.analysis import summary
    paths = [write_genuine(tmp_path / f"s{s}.mat", seed=s) for s in (1, 2)]
    assert summary.main(paths) == 0
    out = capsys.readouterr().out
    assert "counted once" not in out and re.search(r"fxnn \(torch\) +2 ", out)


# ---- end to end: the commands on the bombs --------------------------------------

@pytest.mark.parametrize("command", list(COMMAND_ARGS))
def test_each_command_refuses_the_bombs_with_exit_code_2(hostile, command, tmp_path):
    folder, cases = hostile
    names = ["compressed-inflates-past-its-size", "unwritten-tloss-4.8GB"]
    good = write_genuine(tmp_path / "good.mat", seed=9)
    before = tree(folder)
    module = dict(zip(COMMAND_ARGS, ("summary", "to_csv", "plot", "tune")))[command]
    code = f"import sys\nfrom fxnn.analysis import {module} as m\nsys.exit(m.main(sys.argv[1:]))"
    # wait4 counts the parent's size at the fork too: compare with a child that reads the good record only
    (tmp_path / "bare").mkdir()
    _, _, _, bare = peak_of(code, [good], cwd=str(tmp_path / "bare"))
    for name in names:
        rc, out, err, peak = peak_of(code, [cases[name], good] + COMMAND_ARGS[command], cwd=str(tmp_path),
                                     limit=4 << 30)
        assert rc == 2, (name, out, err)
        assert len(err.strip().splitlines()) == 1 and cases[name] in err and "Traceback" not in err, (name, err)
        assert peak < bare + MARGIN, (name, peak >> 20, bare >> 20)
    assert sorted(os.listdir(tmp_path)) == ["bare", "good.mat"]
    assert tree(folder) == before


def test_fields_only_one_command_needs_are_named_by_it(tmp_path, capsys):
    """fxnn-tune needs the learn rate (an older record may lack it: the other
    commands read it); fxnn-csv computes learn rates only for the records the
    curves reach, so a num_records of a billion costs nothing."""
    from fxnn.analysis import to_csv, tune
    older = write_genuine(tmp_path / "older.mat", small=meta_with(flags__learn_rate=DELETE))
    assert tune.main([older]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "older.mat: meta.flags.learn_rate is missing" in err
    for nrec in (1, 10**9):
        path = write_genuine(tmp_path / f"nrec{nrec}.mat", small=meta_with(flags__num_records=nrec))
        assert to_csv.main([path, "-o", str(tmp_path / "out.csv")]) == 0
        assert len((tmp_path / "out.csv").read_text().splitlines()) == 1 + 9
