"""The package arrangement in a checkout (docs/layout.md):
``fxnn`` is the folder fxnn/ with the checkout's models/, kernels/, ... as
its subpackages; nothing imports them under their bare names; the scripts
fxnn.py and ``python3 -m fxnn`` are the same command line; a sweep's runs
import the sweep's own fxnn. The install itself: tests/test_install.py."""
import ast
import os
import subprocess
import sys

import pytest

import fxnn
import fxnn.data
import fxnn.kernels
import fxnn.models
from conftest import ROOT
from fxnn.analysis.cluster import fxnn_program, run_environment

SUBPACKAGES = ("models", "data", "kernels", "files", "training", "analysis")
SOURCES = ("fxnn", *SUBPACKAGES, "tests", "bench", "tools", "fxnn.py", "mnist_pickler.py")


def python_files():
    for name in SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isfile(path):
            yield path
        for folder, _, files in os.walk(path):
            yield from (os.path.join(folder, f) for f in sorted(files) if f.endswith(".py"))


def test_the_subpackages_are_the_checkouts_folders():
    assert fxnn.__file__ == os.path.join(ROOT, "fxnn", "__init__.py")
    for name, module in (("models", fxnn.models), ("data", fxnn.data), ("kernels", fxnn.kernels)):
        assert module.__file__ == os.path.join(ROOT, name, "__init__.py")


def test_no_import_names_a_bare_subpackage():
    """Every import of fxnn's own code names the package (``from fxnn.models.x
    import``, or relative inside a subpackage): a bare ``models`` would load a
    second copy of each module beside fxnn.models' (its caches twice, its
    torch.library ops registered twice)."""
    bare = []
    for path in python_files():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            bare += [f"{os.path.relpath(path, ROOT)}:{node.lineno}: {n}" for n in names
                     if n and n.split(".")[0] in SUBPACKAGES]
    assert not bare, "imports by bare name:\n" + "\n".join(bare)


def test_importing_every_module_loads_nothing_under_a_bare_name():
    """In a fresh interpreter: the command line, both engines and every
    other module of the package (those whose optional dependency is missing
    left out), then no module named models, data, ... or below them."""
    code = """if True:
        import pkgutil, sys
        import fxnn, fxnn.cli, fxnn.mnist_pickler
        from fxnn.models.pytensor import engine as pytensor_engine
        from fxnn.models.torch import engine as torch_engine
        for sub in %r:
            package = __import__("fxnn." + sub, fromlist=["_"])
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                try:
                    __import__(info.name)
                except ImportError:  # an optional dependency (pycuda, triton, dask, ...)
                    pass
        print("fxnn modules:", len([m for m in sys.modules if m.startswith("fxnn.")]),
              "bare:", *sorted(m for m in sys.modules if m.split(".")[0] in %r))
    """ % (SUBPACKAGES, SUBPACKAGES)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [line for line in done.stdout.splitlines() if line.startswith("fxnn modules:")]
    count, bare = line.split()[2], line.split()[4:]
    assert int(count) > 40 and bare == [], f"imported under bare names: {bare}"


def test_fxnn_py_and_the_package_are_the_same_command_line(tmp_path):
    by_script = subprocess.run([sys.executable, os.path.join(ROOT, "fxnn.py"), "--help"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=120)
    by_module = subprocess.run([*fxnn_program(), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert by_script.returncode == 0 and by_module.returncode == 0, by_script.stderr + by_module.stderr
    assert by_script.stdout.startswith("usage: fxnn.py ") and by_module.stdout.startswith("usage: fxnn ")
    assert by_script.stdout.split("\n\n", 1)[1] == by_module.stdout.split("\n\n", 1)[1]  # all but the usage
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "fxnn.py"), "-nrec", "0"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.splitlines()[-1].startswith("fxnn.py: error: argument -nrec")


def test_a_sweeps_run_imports_the_sweeps_own_fxnn(tmp_path):
    """Started where a folder fxnn/ of another kind sits in the working
    directory, with another fxnn first on PYTHONPATH, the run's
    ``python3 -m fxnn`` still imports this checkout's."""
    for decoy in (tmp_path / "cwd" / "fxnn", tmp_path / "path" / "fxnn"):
        decoy.mkdir(parents=True)
        (decoy / "__init__.py").write_text("raise SystemExit('imported the decoy fxnn')\n")
    env = run_environment(dict(os.environ, PYTHONPATH=str(tmp_path / "path")))
    assert env["PYTHONPATH"].split(os.pathsep) == [ROOT, str(tmp_path / "path")]
    if sys.version_info < (3, 11):
        pytest.skip("before Python 3.11 (PYTHONSAFEPATH) -m puts the working directory first")
    code = "import fxnn; print(fxnn.__file__)"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path / "cwd", env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == os.path.join(ROOT, "fxnn", "__init__.py")
    done = subprocess.run([*fxnn_program(), "--help"], cwd=tmp_path / "cwd", env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("usage: fxnn "), done.stderr


def test_import_fxnn_needs_neither_numpy_nor_torch():
    code = "import sys, fxnn; print(fxnn.__version__, 'numpy' in sys.modules, 'torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == [fxnn.__version__, "False", "False"], done.stderr
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        fxnn.nothing  # noqa: B018
