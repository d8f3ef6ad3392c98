"""The checkout's root, imported only when Python starts in the folder above a
clone named ``fxnn`` (the current folder comes first on ``sys.path``, so the
clone itself would be found as a namespace package ``fxnn``, ahead of the
install, and ``from fxnn import FixedConv2d`` would fail). It hands the import
over to the package itself, ``fxnn/`` below it, so that works from any folder.
The root is no package otherwise: nothing installs or imports this file."""
import importlib.util
import os
import sys

if __name__ == "fxnn":
    _package = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fxnn")
    _spec = importlib.util.spec_from_file_location(
        "fxnn", os.path.join(_package, "__init__.py"), submodule_search_locations=[_package])
    sys.modules["fxnn"] = importlib.util.module_from_spec(_spec)  # what the import statement returns
    _spec.loader.exec_module(sys.modules["fxnn"])
