"""fxnn: CNNs whose conv layers are a fixed 3x3 stage (5 kernels per input
channel) followed by a trainable 1x1.

The package is ``fxnn``; its parts are subpackages: ``fxnn.models`` (the
networks and engines), ``fxnn.kernels`` (the fixed-stage kernels),
``fxnn.data``, ``fxnn.training`` and ``fxnn.analysis``. Installed, they sit
inside this folder (pyproject.toml maps them). In a source checkout they are
the repository's top-level folders ``models/``, ``kernels/``, ... : the root
is appended to this package's search path below, so ``fxnn.models`` is
``models/`` and nothing is imported under a bare name like ``models``.

The public names load on first use, so ``import fxnn`` needs neither numpy
nor torch: ``FixedConv2d`` (the PyTorch layer; needs torch), ``functional``
(its functional form, ``fxnn.functional.fixed_conv2d``), ``convert`` (swaps
a model's 3x3 ``nn.Conv2d`` layers for it) and ``conversion`` (``convert``
and the report of what it does) and, from the command line (``fxnn.cli``),
``main(argv)``, which returns the exit code, and ``build_parser()``.
"""
import os

__version__ = "0.1.0"  # records store it in meta.fxnn_version

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.path.isdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")) \
        and os.path.isfile(os.path.join(_ROOT, "models", "__init__.py")) \
        and os.path.isfile(os.path.join(_ROOT, "pyproject.toml")):
    __path__.append(_ROOT)  # a source checkout: fxnn.models is <root>/models

_LAZY = {"FixedConv2d": "fxnn.models.torch.layer", "convert": "fxnn.conversion", "main": "fxnn.cli",
         "build_parser": "fxnn.cli"}
#: Modules of this package that are public names, imported when first asked for too.
_MODULES = ("functional", "conversion")
__all__ = ["__version__", *_LAZY, *_MODULES]


def __getattr__(name):
    """The public names, imported when first asked for (PEP 562)."""
    if name not in _LAZY and name not in _MODULES:
        raise AttributeError(f"module 'fxnn' has no attribute {name!r}")
    import importlib
    value = importlib.import_module(f"fxnn.{name}") if name in _MODULES \
        else getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_MODULES))
