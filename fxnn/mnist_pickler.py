"""Turn the four downloaded MNIST idx files into the loader's fast format.

    fxnn-pickle-mnist [DIR]              (default: data/image/mnist)
    python3 mnist_pickler.py [DIR]       the same, in a source checkout

Reads DIR's idx files (gzipped or not), checks them as fxnn would, and writes
DIR/mnist.npz (uint8 images and labels, no pickled objects) atomically; fxnn
uses it when present. The original made a Python pickle at this step; a .npz
loads as fast and cannot carry code.
"""
import argparse
import os
import sys

import numpy as np

from fxnn.data import DataError
from fxnn.data.mnist import FILES, NPZ, read_idx_files, validate
from fxnn.files.atomic import FolderError, WriteError, atomic_path, room_for

PROG = "fxnn-pickle-mnist"


def main(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog="Writes <folder>/mnist.npz (uint8 arrays, no pickled objects), "
                                       "which fxnn then loads instead of the idx files. "
                                       "Exit codes: 0 written, 2 bad or missing input files or a folder that "
                                       "cannot take the file, 4 a full disk.")
    p.add_argument("folder", nargs="?", default=os.path.join("data", "image", "mnist"),
                   help="folder holding the four MNIST idx files (default: %(default)s)")
    args = p.parse_args(argv)
    fix = f"download the four files from the MNIST site into {args.folder}"
    try:
        arrays, files, _ = read_idx_files(args.folder, fix)
        validate(arrays, dict(zip((key for key, _, _ in FILES), files)), fix)
    except DataError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    out = os.path.join(args.folder, NPZ)
    try:
        with room_for(out), atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)
    except WriteError as e:  # the disk is full: exit code 4, as fxnn.py's
        print(f"{PROG}: error: {e}; {e.remedy}", file=sys.stderr)
        return 4
    except OSError as e:  # the folder cannot take the file (FolderError says why in one line)
        print(f"{PROG}: error: {e if isinstance(e, FolderError) else f'cannot write {out}: {e.strerror or e}'}",
              file=sys.stderr)
        return 2
    print(f"Wrote {out}: {len(arrays['train_x']):,} training and {len(arrays['test_x']):,} test images "
          f"from {len(files)} idx files.")
    return 0


def cli():
    """Console-script entry point (``fxnn-pickle-mnist`` after ``pip install``)."""
    sys.exit(main())
