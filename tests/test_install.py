"""A non-editable ``pip install .`` (slow: pip installs; run by .ci/run with
``-m slow``): site-packages gets fxnn and its dist-info and no generic names
(models, data, ...); ``from fxnn import FixedConv2d`` works; every console
script runs from another directory; and the install without a C compiler
succeeds, builds no extension, and trains with the paths that remain."""
import csv
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from conftest import ROOT

pytestmark = pytest.mark.slow

SCRIPTS = ("fxnn", "fxnn-plot", "fxnn-csv", "fxnn-summary", "fxnn-sweep", "fxnn-pickle-mnist")
# the checkout's editable install (a finder after sys.path's) must not answer an import
NO_EDITABLE = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
               "if '__editable__' not in getattr(f, '__module__', '')]; ")


def install(tmp_path, env=None):
    """``pip install --target`` of a copy of the checkout's files; returns the target."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.split("\n")
    source = tmp_path / "src"
    for name in filter(None, listed):
        if os.path.isfile(os.path.join(ROOT, name)):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            with open(os.path.join(ROOT, name), "rb") as f:
                (source / name).write_bytes(f.read())
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                           "--target", str(site), str(source)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return site


def runner(site, cwd):
    env = dict(os.environ, PYTHONPATH=str(site))
    env.pop("PYTHONSAFEPATH", None)

    def run(*cmd):
        return subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return run


def test_the_install_holds_one_package_and_every_console_script_runs(tmp_path):
    import fxnn
    site = install(tmp_path)
    assert sorted(p.name for p in site.iterdir()) == sorted(["bin", f"fxnn-{fxnn.__version__}.dist-info", "fxnn"])
    package = site / "fxnn"
    assert {p.name for p in package.iterdir() if p.is_dir() and p.name != "__pycache__"} == \
        {"models", "data", "kernels", "files", "training", "analysis"}
    assert sorted(p.name for p in (package / "data" / "image" / "mnist-sample").glob("*.gz")) == sorted(
        p for p in os.listdir(os.path.join(ROOT, "data", "image", "mnist-sample")) if p.endswith(".gz"))
    assert (package / "kernels" / "simple_conv.cu").is_file() and (package / "kernels" / "fused_isa.h").is_file()
    assert list((package / "kernels").glob("_fixed_cpu*.so")), "the C extension was not built into fxnn/kernels"

    work = tmp_path / "elsewhere"
    work.mkdir()
    run = runner(site, work)
    code = (NO_EDITABLE + "import fxnn; from fxnn import FixedConv2d; import torch; "
            "layer = FixedConv2d(2, 3); print(fxnn.__file__, FixedConv2d.__module__, "
            "tuple(layer(torch.zeros(1, 2, 6, 6)).shape))")
    done = run(sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(package / "__init__.py"), "fxnn.models.torch.layer", "(1,", "3,", "6,", "6)"]

    for script in SCRIPTS:
        done = run(str(site / "bin" / script), "--help")
        assert done.returncode == 0 and done.stdout.startswith("usage: "), (script, done.stderr[-2000:])
    done = run(str(site / "bin" / "fxnn"), "-m", "fxnn", "-nrec", "1", "-ipr", "2", "--no-download")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "Saved recording to file rec-MNIST-fxnn.mat"
    meta = scipy.io.loadmat(str(work / "rec-MNIST-fxnn.mat"), squeeze_me=True)["meta"]
    assert str(meta["fxnn_version"]) == fxnn.__version__ and "sample" in str(meta["data_source"])

    done = run(str(site / "bin" / "fxnn-csv"), "rec-MNIST-fxnn.mat", "-o", "curves.csv")
    assert done.returncode == 0, done.stderr[-2000:]
    with open(work / "curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["iteration"] for r in rows] == ["0", "1", "2"]  # validation at 0 and 2, training at 1 and 2
    done = run(str(site / "bin" / "fxnn-plot"), "rec-MNIST-fxnn.mat", "-o", "curves.png")
    assert done.returncode == 0 and (work / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", done.stderr
    done = run(str(site / "bin" / "fxnn-summary"), "rec-MNIST-fxnn.mat")
    assert done.returncode == 0 and "fxnn" in done.stdout, done.stderr[-2000:]

    mnist = work / "mnist"
    mnist.mkdir()
    for name in os.listdir(package / "data" / "image" / "mnist-sample"):
        if name.endswith(".gz"):
            (mnist / name).write_bytes((package / "data" / "image" / "mnist-sample" / name).read_bytes())
    done = run(str(site / "bin" / "fxnn-pickle-mnist"), "mnist")
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(mnist / "mnist.npz", allow_pickle=False) as z:
        assert z["train_x"].shape == (5000, 28, 28) and z["test_x"].shape == (10000, 28, 28)


def test_installs_and_trains_without_a_c_compiler(tmp_path, small_mnist):
    site = install(tmp_path, env=dict(os.environ, CC="false", LDSHARED="false"))
    assert not list(site.glob("fxnn/kernels/_fixed_cpu*")), "the extension was built without a compiler"
    out = tmp_path / "r.mat"
    script = (NO_EDITABLE + "import fxnn; from fxnn.kernels import native; "
              "assert native.module is None, native.module; "
              f"sys.exit(fxnn.main(['-m', 'fxnn', '-nrec', '1', '-ipr', '2', '--engine', 'torch', "
              f"'--data-dir', {small_mnist!r}, '-o', {str(out)!r}]))")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(site), FXNN_AUTOTUNE="1"),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    meta = scipy.io.loadmat(str(out), squeeze_me=True)["meta"]
    assert "fused" not in str(meta["fxnn_path"]) and str(meta["fxnn_path"]).startswith("conv0: train ")
