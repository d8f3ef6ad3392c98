#!/usr/bin/env python3
"""The command line in a source checkout: ``python3 fxnn.py --model=fxnn``.

The same as ``python3 -m fxnn`` and, after ``pip install``, ``fxnn``; the
code is the package's (``fxnn/cli.py``). Here ``import fxnn`` finds the
folder ``fxnn/``, not this file: a package wins over a module of its name.
"""
from fxnn.cli import cli

if __name__ == "__main__":
    cli()
