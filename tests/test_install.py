"""The install without a C compiler (slow: a pip install; run by .ci/run with
``-m slow``): it succeeds, builds no extension, and fxnn trains with the
paths that remain, the fused one not offered."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def test_installs_and_trains_without_a_c_compiler(tmp_path, small_mnist):
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "src"
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        with open(os.path.join(ROOT, name), "rb") as f:
            (source / name).write_bytes(f.read())
    site = tmp_path / "site"
    env = dict(os.environ, CC="false", LDSHARED="false")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                           "--target", str(site), str(source)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert not list(site.glob("kernels/_fixed_cpu*")), "the extension was built without a compiler"
    out = tmp_path / "r.mat"
    # the checkout's own editable install (a finder ahead of PYTHONPATH) must not answer the imports
    script = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
              "if '__editable__' not in getattr(f, '__module__', '')]; "
              "import fxnn; from kernels import native; assert not native.available()[0], native.module; "
              f"sys.exit(fxnn.main(['-m', 'fxnn', '-nrec', '1', '-ipr', '2', '--engine', 'torch', "
              f"'--data-dir', {small_mnist!r}, '-o', {str(out)!r}]))")
    env = dict(os.environ, PYTHONPATH=str(site), FXNN_AUTOTUNE="1")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    import scipy.io
    meta = scipy.io.loadmat(str(out), squeeze_me=True)["meta"]
    assert "fused" not in str(meta["fxnn_path"]) and str(meta["fxnn_path"]).startswith("conv0: train ")
