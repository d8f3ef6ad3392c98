"""``python3 -m fxnn``: the command line, as ``python3 fxnn.py`` and ``fxnn``."""
from fxnn.cli import cli

if __name__ == "__main__":
    cli()
