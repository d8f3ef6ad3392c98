"""Shared test setup and small helpers (pytest.ini puts the repository root
on sys.path, so ``fxnn`` is this checkout's package).

The fxnn path cache goes to a temporary folder, never the user's, and
``auto`` does not time paths (FXNN_AUTOTUNE=0: it takes the default path,
the fused kernel where it runs) except in the tests of the measuring itself,
which turn it on; both hold for fxnn.py runs in subprocesses too."""
import os
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["FXNN_CACHE_DIR"] = tempfile.mkdtemp(prefix="fxnn-test-cache-")
os.environ["FXNN_AUTOTUNE"] = "0"

import numpy as np
import pytest

from fxnn.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, write_idx

SAMPLE = os.path.join(ROOT, "data", "image", "mnist-sample")


def native_module():
    """The C kernels' extension fxnn.kernels._fixed_cpu, built by ``pip install -e .``;
    where it was not (no C compiler), skips the calling test module, except
    under FXNN_REQUIRE_NATIVE=1 (set by .ci/run), where a missing build fails."""
    try:
        from fxnn.kernels import _fixed_cpu
    except ImportError as e:
        if os.environ.get("FXNN_REQUIRE_NATIVE") == "1":
            raise
        pytest.skip(f"fxnn.kernels._fixed_cpu not built ({e}); build it with: pip install -e .", allow_module_level=True)
    return _fixed_cpu


@pytest.fixture
def without_c_build(monkeypatch):
    """The C extension taken away, as where it could not be built: every
    capability (fxnn.kernels.capabilities) answered without it, and again
    with it after the test."""
    from fxnn.kernels import capabilities, native
    monkeypatch.setattr(native, "module", None)
    monkeypatch.setattr(native, "WHY", "fxnn.kernels._fixed_cpu taken away by the test")
    capabilities.forget()
    yield
    capabilities.forget()


@pytest.fixture(scope="session")
def small_mnist(tmp_path_factory):
    """A data dir whose mnist/ holds 600 genuine training and 200 test images
    (taken from the bundled sample), in the standard idx files."""
    root = tmp_path_factory.mktemp("data")
    (root / "mnist").mkdir()
    train_x, train_y, test_x, test_y = (
        read_idx(os.path.join(SAMPLE, name), magic, "")
        for name, magic in (("train-images-idx3-ubyte.gz", IMAGES_MAGIC), ("train-labels-idx1-ubyte.gz", LABELS_MAGIC),
                            ("t10k-images-idx3-ubyte.gz", IMAGES_MAGIC), ("t10k-labels-idx1-ubyte.gz", LABELS_MAGIC)))
    pick = np.random.default_rng(0).permutation(len(train_x))[:600]
    write_idx(root / "mnist" / "train-images-idx3-ubyte.gz", train_x[pick])
    write_idx(root / "mnist" / "train-labels-idx1-ubyte.gz", train_y[pick])
    write_idx(root / "mnist" / "t10k-images-idx3-ubyte", test_x[:200])
    write_idx(root / "mnist" / "t10k-labels-idx1-ubyte", test_y[:200])
    return str(root)


def wait_for_line(proc, prefix="Iter", n=1):
    """Read a running command's output until ``n`` lines starting with
    ``prefix`` (record lines by default) have been printed."""
    seen = 0
    while seen < n:
        line = proc.stdout.readline()
        assert line, f"process ended early: {proc.stderr.read()}"
        seen += line.startswith(prefix)


def run_fxnn(capsys, argv):
    """fxnn.py's main in this process: (exit code, stdout, stderr)."""
    import fxnn
    code = fxnn.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err):
    """The one line of an error message, asserting there is one and no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
