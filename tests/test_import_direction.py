"""Dependencies point one way: every module's imports, read from its source
with ``ast`` (imports inside functions included), go only to its own package
or to a lower layer.

    kernels, files  <  models  <  data  <  training  <  the command line  <  analysis

``kernels/`` (the fixed stage, its implementations and bindings) and
``files/`` (atomic file writing) import nothing of fxnn; ``analysis/`` may
run the command line (``fxnn.py``, ``mnist_pickler.py``) for its flags.
Names under the ``fxnn`` package (``fxnn.models.x``) count as the folder
they name (``models``), so the check holds before and after the imports
name the package. ``tools/``, ``bench/`` and ``tests/`` stand above all and
are not checked."""
import ast
import os

import pytest

from conftest import ROOT

#: {top-level name: layer}; a module may import its own name or lower layers.
LAYERS = {"kernels": 0, "files": 0, "models": 1, "data": 2, "training": 3, "fxnn": 4, "analysis": 5}
#: The modules of fxnn/ and the two scripts: one layer, the command line.
COMMAND_LINE = ("cli", "run", "mnist_pickler", "__main__")
PACKAGES = ("kernels", "files", "models", "data", "training", "analysis", "fxnn")
SCRIPTS = ("fxnn.py", "mnist_pickler.py")


def modules(root):
    """(owner, path) of every Python module of the layers under ``root``."""
    found = [("fxnn", os.path.join(root, name)) for name in SCRIPTS if os.path.isfile(os.path.join(root, name))]
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(root, package)):
            found += [(package, os.path.join(folder, n)) for n in sorted(names) if n.endswith(".py")]
    return found


def imported(path, owner):
    """(line, top-level name) of every import in the module at ``path``, whose
    package is ``owner``; ``fxnn.x.y`` gives ``x``, a relative import
    ``owner`` (one dot) or the name after the dots (more)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1 or (node.level > 1 and not node.module):
                names = [owner]
            elif node.level > 1:
                names = [node.module]
            elif node.module == "fxnn":  # from fxnn import cli: the module it names
                names = ["fxnn"] + [f"fxnn.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "fxnn" and len(parts) > 1:
                parts = parts[1:]
            # the package's own modules (fxnn/cli.py, ...) are the command line, as fxnn.py is
            yield node.lineno, "fxnn" if parts[0] in COMMAND_LINE else parts[0]


def violations(root):
    """``path:line: owner imports name`` for every import against the layers."""
    found = []
    for owner, path in modules(root):
        for line, name in imported(path, owner):
            if name in LAYERS and name != owner and LAYERS[name] >= LAYERS[owner]:
                found.append(f"{os.path.relpath(path, root)}:{line}: {owner} (layer {LAYERS[owner]}) imports "
                             f"{name} (layer {LAYERS[name]})")
    return found


def test_every_import_points_down():
    owners = {owner for owner, _ in modules(ROOT)}
    assert {"kernels", "files", "models", "data", "training", "analysis", "fxnn"} <= owners
    assert violations(ROOT) == []


@pytest.mark.parametrize("source, bad", [
    ("from fxnn.models.fixed_bases import GRAM\n", True),
    ("def f():\n    from fxnn.data.atomic import atomic_path\n", True),
    ("import fxnn.training.loop\n", True),
    ("from fxnn.models import architecture\n", True),
    ("from ..models import x\n", True),
    ("from . import native\nfrom .fixed_kernels import KERNELS\nimport numpy\n", False),
    ("from fxnn.kernels.fixed_kernels import KERNELS\n", False),
])
def test_the_check_sees_an_upward_import(tmp_path, source, bad):
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "x.py").write_text(source)
    assert bool(violations(str(tmp_path))) == bad


def test_the_layers_below_may_not_import_the_command_line_but_analysis_may(tmp_path):
    for package, source in (("training", "import fxnn\n"), ("analysis", "import fxnn\nfrom training import loop\n")):
        (tmp_path / package).mkdir()
        (tmp_path / package / "x.py").write_text(source)
    assert [v.split(":")[0] for v in violations(str(tmp_path))] == [os.path.join("training", "x.py")]
