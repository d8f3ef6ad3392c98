"""Fuzzing the readers of outside files (docs/bad-data.md): genuine small
files made here by the project's own writers (and numpy, pickle, tarfile),
mutated by Hypothesis (bit flips, bytes set to boundary values, 32-bit
fields set to 0, -1, 2**31..., slices inserted, deleted, duplicated,
truncation), at the raw level and inside their compression (the npy inside
the zip, the idx inside the gzip, the tar inside the gzip, the inflated
variable of a compressed .mat), and read in a child process under a memory
limit (RLIMIT_AS: its size after the imports plus 1 GiB) and a time limit,
many files per child.

A case passes when the reader returns or raises its documented one-line
error (DataError, RecordError, MatError; for the path cache a warning);
anything else (another exception, a multi-line message, a MemoryError, a
crash or a hang of the child, a file written outside the tarball's target)
fails, naming the seed and the mutations, which reproduce it.

The default run is short; ``-m slow`` runs a longer one. Both draw the same
cases every run (a gate must not fail by chance); to search afresh, as a
fuzzer should between releases, set ``FXNN_FUZZ_SEED=random`` (or another
integer) and ``FXNN_FUZZ_EXAMPLES`` for the longer runs' count, e.g.
``FXNN_FUZZ_SEED=random FXNN_FUZZ_EXAMPLES=800 python3 -m pytest -m slow
tests/test_fuzz_readers.py``. A failure names the seed and mutations, which
reproduce it; each one found becomes a test of its own in
test_hostile_inputs.py."""
import gzip
import io
import json
import os
import shutil
import struct
import tarfile
import zipfile
import zlib

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fuzz_cases import run_readers, tree  # noqa: E402
from test_hostile_inputs import add_members  # noqa: E402

BATCH = 120
INTERESTING32 = [0, 1, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
                 0xFFFFFFFE, 0x40000000, 3072, 60000, 2**31 - 8]


# ---- genuine seeds --------------------------------------------------------------

def _npz_member(arr):
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _zip(members, method=zipfile.ZIP_DEFLATED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name + ".npy", data)
    return buf.getvalue()


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_members(tar, members)
    return buf.getvalue()


def _idx(array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()


def _record_bytes(folder, layout):
    from test_hostile_records import write_genuine
    path = write_genuine(folder / f"seed-{layout}.mat", layout)
    return open(path, "rb").read()


def _compressed_v5(folder):
    """(header and other variables, inflated meta element): a record as MATLAB
    saves it, each variable compressed."""
    from test_hostile_records import genuine_small
    buf = io.BytesIO()
    import scipy.io
    scipy.io.savemat(buf, genuine_small(), do_compression=True, oned_as="column")
    data = buf.getvalue()
    pos, parts = 128, []
    while pos < len(data):
        kind, size = struct.unpack_from("<II", data, pos)
        parts.append(data[pos:pos + 8 + size])
        pos += 8 + size
    inner = [zlib.decompress(p[8:]) for p in parts]
    return data[:128], parts, inner


def seeds(folder):
    """{name: (reader, genuine bytes, wrap)}: ``wrap(mutated)`` is the file
    the reader gets (the identity for raw mutations)."""
    images = (np.arange(5 * 28 * 28) % 251).reshape(5, 28, 28)
    labels = np.arange(5) % 10
    a, b = np.arange(12, dtype=np.uint8).reshape(3, 4), np.arange(3, dtype=np.uint8)
    header, parts, inner = _compressed_v5(folder)
    from fxnn.data.cifar import write_batch
    write_batch(str(folder / "cifar-seed"), np.arange(3 * 3072).reshape(3, 3072) % 256, [1, 2, 3])
    cifar = open(folder / "cifar-seed", "rb").read()
    tar_members = [("cifar-10-batches-py", None), ("cifar-10-batches-py/data_batch_1", b"x" * 100),
                   ("cifar-10-batches-py/readme.html", b"<html></html>")]
    paths_cache = json.dumps({"format": 1, "entries": {json.dumps({"shape": [1, 2]}): {"path": "fused",
                                                                                          "ms": {"fused": 1.0}}}})

    def meta_index():
        return next(i for i, x in enumerate(inner) if b"meta" in x[:64])

    def v5z(mutated):
        i = meta_index()
        out = list(parts)
        packed = zlib.compress(mutated)
        out[i] = struct.pack("<II", 15, len(packed)) + packed
        return header + b"".join(out)

    def tloss_v5z(mutated):
        i = next(i for i, x in enumerate(inner) if b"tloss" in x[:64])
        out = list(parts)
        packed = zlib.compress(mutated)
        out[i] = struct.pack("<II", 15, len(packed)) + packed
        return header + b"".join(out)

    return {
        "npz-raw": ("npz", _zip({"a": _npz_member(a), "b": _npz_member(b)}), None),
        "npz-stored-raw": ("npz", _zip({"a": _npz_member(a), "b": _npz_member(b)}, zipfile.ZIP_STORED), None),
        "npz-member": ("npz", _npz_member(a), lambda m: _zip({"a": m, "b": _npz_member(b)})),
        "idx-images": ("idx_images", _idx(images), None),
        "idx-images-gz-inner": ("idx_images", _idx(images), gzip.compress),
        "idx-labels-gz-raw": ("idx_labels", gzip.compress(_idx(labels)), None),
        "cifar": ("cifar", cifar, None),
        "tar-raw": ("tar", _tar(tar_members), None),
        "tar-gz-inner": ("tar", _tar(tar_members), gzip.compress),
        "mat-v5": ("mat", _record_bytes(folder, "v5"), None),
        "mat-v5-full": ("mat_full", _record_bytes(folder, "v5"), None),
        "mat-v5z-raw": ("mat", header + b"".join(parts), None),
        "mat-v5z-meta-inner": ("mat", inner[meta_index()], v5z),
        "mat-v5z-tloss-inner": ("mat", next(x for x in inner if b"tloss" in x[:64]), tloss_v5z),
        "mat-v73": ("mat", _record_bytes(folder, "v7.3"), None),
        "mat-v73-full": ("mat_full", _record_bytes(folder, "v7.3"), None),
        "paths": ("paths", paths_cache.encode(), None),
    }


SUFFIX = {"idx-images-gz-inner": ".gz", "idx-labels-gz-raw": ".gz"}


# ---- mutations ------------------------------------------------------------------

def mutation():
    pos = st.integers(0, 1 << 20)
    return st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(0, 7)),
        st.tuples(st.just("byte"), pos, st.sampled_from([0, 1, 0x7F, 0x80, 0xFF])),
        st.tuples(st.just("int32"), pos, st.sampled_from(INTERESTING32), st.sampled_from("<>")),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=16)),
        st.tuples(st.just("delete"), pos, st.integers(1, 64)),
        st.tuples(st.just("dup"), pos, st.integers(1, 256), pos),
        st.tuples(st.just("truncate"), pos),
    )


def mutate(data, ops):
    data = bytearray(data)
    for op in ops:
        if not data:
            break
        at = op[1] % len(data)
        if op[0] == "flip":
            data[at] ^= 1 << op[2]
        elif op[0] == "byte":
            data[at] = op[2]
        elif op[0] == "int32":
            data[at:at + 4] = struct.pack(op[3] + "I", op[2])
        elif op[0] == "insert":
            data[at:at] = op[2]
        elif op[0] == "delete":
            del data[at:at + op[2]]
        elif op[0] == "dup":
            piece = data[at:at + op[2]]
            dest = op[3] % len(data)
            data[dest:dest] = piece
        elif op[0] == "truncate":
            del data[at:]
    return bytes(data)


def cases_strategy(names):
    one = st.tuples(st.sampled_from(names), st.lists(mutation(), min_size=1, max_size=6))
    return st.lists(one, min_size=BATCH, max_size=BATCH)


def check_batch(folder, seed_table, batch, tag):
    """Write ``batch`` ([(seed name, ops)]) under ``folder``, read them all in
    one child, and fail naming the first case that is neither read nor
    refused in one line."""
    work = folder / tag
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    files = []
    for i, (name, ops) in enumerate(batch):
        reader, genuine, wrap = seed_table[name]
        data = mutate(genuine, ops)
        data = wrap(data) if wrap else data
        sub = work / str(i)
        sub.mkdir()
        path = sub / ("data_batch_1" if reader == "cifar" else f"case{SUFFIX.get(name, '')}")
        path.write_bytes(data)
        files.append((reader, str(path)))
    before = tree(work)
    results, bare, peak = run_readers(files, str(work), limit=1 << 30, timeout=240)
    bad = [(batch[i], r) for i, r in enumerate(results) if r["result"] not in ("ok", "refused")]
    assert not bad, f"{len(bad)} of {len(batch)} cases failed; the first: seed {bad[0][0][0]!r}, mutations " \
                    f"{bad[0][0][1]!r}: {bad[0][1]}"
    after = {k: v for k, v in tree(work).items() if ".out" not in k}
    changed = sorted(set(after.items()) ^ set(before.items()))
    assert not changed, f"a reader changed files other than its own output: {changed[:5]}"
    for reader, path in files:  # a tarball writes only under its target
        if reader == "tar" and os.path.isdir(path + ".out"):
            for base, _, names in os.walk(path + ".out"):
                assert os.path.realpath(base).startswith(os.path.realpath(path + ".out"))
    shutil.rmtree(work, ignore_errors=True)
    return results


@pytest.fixture(scope="module")
def seed_table(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seeds")
    return folder, seeds(folder)


def test_the_genuine_seeds_are_read(seed_table):
    folder, table = seed_table
    results = check_batch(folder, table, [(name, []) for name in table], "genuine")
    assert [r["result"] for r in results] == ["ok"] * len(table), results


def fuzz_seed():
    """The longer runs' Hypothesis seed: FXNN_FUZZ_SEED, an integer, or
    "random" for None (a fresh search); 0 when unset."""
    text = os.environ.get("FXNN_FUZZ_SEED", "0").strip()
    if text == "random":
        return None
    try:
        return int(text)
    except ValueError:
        raise pytest.UsageError(f"FXNN_FUZZ_SEED={text!r}: give an integer or 'random'") from None


def longer_examples(default):
    text = os.environ.get("FXNN_FUZZ_EXAMPLES", str(default)).strip()
    if not text.isdigit() or int(text) < 1:
        raise pytest.UsageError(f"FXNN_FUZZ_EXAMPLES={text!r}: give a whole number of batches, 1 or more")
    return int(text)


def fuzz(batches, check, examples, seed_value):
    """``check(batch, i)`` on ``examples`` batches drawn from the strategy
    ``batches``, the i-th call's i counting from 0; no deadline and no
    example database; the same batches every run for the same ``seed_value``
    (None: random ones, and Hypothesis prints the seed of a failure)."""
    counter = iter(range(10**9))

    @settings(max_examples=examples, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(batches)
    def run(batch):
        check(batch, next(counter))

    (run if seed_value is None else seed(seed_value)(run))()


def _fuzz(seed_table, examples, seed_value):
    folder, table = seed_table
    fuzz(cases_strategy(sorted(table)), lambda batch, i: check_batch(folder, table, batch, f"batch{i}"),
         examples, seed_value)


def test_fuzz_the_readers_briefly(seed_table):
    _fuzz(seed_table, examples=12, seed_value=1)


@pytest.mark.slow
def test_fuzz_the_readers_longer(seed_table):
    _fuzz(seed_table, examples=longer_examples(80), seed_value=fuzz_seed())


# ---- records with fields of any value, in both layouts ----------------------------

def values():
    """Values a record's field may be given: numbers of every awkward kind,
    text, arrays of any small shape, booleans, nested structs."""
    number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**63, 2**63 - 1),
                       st.sampled_from([0, 1, -1, 0.5, 2**31, 2**53 + 1, 1e300, -0.0]))
    array = st.builds(lambda shape, fill: np.full(shape, fill, dtype=float),
                      st.lists(st.integers(0, 3), min_size=1, max_size=3).map(tuple), st.floats(-10, 10))
    leaf = st.one_of(number, st.text(max_size=8), st.booleans(), array, st.just(np.zeros(0)))
    return st.recursive(leaf, lambda inner: st.dictionaries(st.sampled_from(["a", "b", "seed", "flags"]), inner,
                                                            max_size=3), max_leaves=6)


FIELDS = ["meta.seed", "meta.model", "meta.engine", "meta.status", "meta.dataset", "meta.data_source", "meta.flags",
          "meta.flags.iters_per_record", "meta.flags.num_records", "meta.flags.learn_rate", "meta.flags.learn_decay",
          "meta.flags.optimizer", "meta.flags.batch_size", "meta", "tloss", "terate", "vloss", "verate", "test_erate"]


def edited_record(edits):
    from test_hostile_records import genuine_small
    small = genuine_small()
    for field, value in edits:
        where, *path = field.split(".")
        target, key = small, where
        for p in path:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target, key = target[key], p
        target[key] = value
    return small


def check_records(folder, batch, tag):
    from test_hostile_records import write_genuine
    work = folder / tag
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    files, written = [], []
    for i, (layout, edits) in enumerate(batch):
        try:
            path = write_genuine(work / f"{i}.mat", layout, small=edited_record(edits))
        except Exception:  # a value the writer itself cannot write (scipy refuses some): not a reader's case
            continue
        files.append(("mat", path))
        written.append((layout, edits))
    results, bare, peak = run_readers(files, str(work), limit=1 << 30, timeout=240)
    bad = [(written[i], r) for i, r in enumerate(results) if r["result"] not in ("ok", "refused")]
    assert not bad, f"{len(bad)} of {len(files)} records failed; the first: {bad[0][0]!r}: {bad[0][1]}"
    shutil.rmtree(work, ignore_errors=True)
    return results


def _fuzz_fields(folder, examples, seed_value):
    edit = st.tuples(st.sampled_from(FIELDS), values())
    record = st.tuples(st.sampled_from(["v5", "v7.3"]), st.lists(edit, min_size=1, max_size=3))
    fuzz(st.lists(record, min_size=60, max_size=60), lambda batch, i: check_records(folder, batch, f"fields{i}"),
         examples, seed_value)


def test_fuzz_record_fields_briefly(tmp_path):
    _fuzz_fields(tmp_path, examples=4, seed_value=1)


@pytest.mark.slow
def test_fuzz_record_fields_longer(tmp_path):
    _fuzz_fields(tmp_path, examples=longer_examples(40), seed_value=fuzz_seed())
