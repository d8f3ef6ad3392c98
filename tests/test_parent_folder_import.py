"""`from fxnn import FixedConv2d` in a Python started in the folder above a
clone named fxnn (the default after `git clone .../fxnn`): the clone comes
first on sys.path there and must hand over to its package (the root's
__init__.py), not be taken as an empty namespace package ahead of the install."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.fixture
def parent_of_a_clone(tmp_path):
    """A folder holding ``fxnn/``: a clone's shape, its entries linked to this checkout's."""
    clone = tmp_path / "fxnn"
    clone.mkdir()
    for name in os.listdir(ROOT):
        if not name.startswith(".") and name not in ("build", "site"):
            (clone / name).symlink_to(os.path.join(ROOT, name))
    return tmp_path


def python(cwd, code):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_package_imports_from_the_folder_above_a_clone_named_fxnn(parent_of_a_clone):
    done = python(parent_of_a_clone, "import fxnn, fxnn.models.architecture as a; "
                                     "print(fxnn.__file__); print(a.__file__); print(fxnn.__version__)")
    assert done.returncode == 0, done.stderr
    package, module, version = done.stdout.split()
    assert package == str(parent_of_a_clone / "fxnn" / "fxnn" / "__init__.py")  # the clone's package, not its root
    assert module == str(parent_of_a_clone / "fxnn" / "models" / "architecture.py")
    import fxnn
    assert version == fxnn.__version__


def test_fixed_conv2d_from_the_folder_above_a_clone_named_fxnn(parent_of_a_clone):
    pytest.importorskip("torch")
    done = python(parent_of_a_clone, "import torch; from fxnn import FixedConv2d; "
                                     "print(tuple(FixedConv2d(2, 3)(torch.randn(1, 2, 5, 5)).shape))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(1,", "3,", "5,", "5)"]


def test_the_roots_init_does_nothing_under_another_name(tmp_path):
    (tmp_path / "myclone").symlink_to(ROOT)
    done = python(tmp_path, "import myclone, sys; print(myclone.__name__, 'fxnn' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["myclone", "False"]
