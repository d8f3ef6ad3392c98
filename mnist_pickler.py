#!/usr/bin/env python3
"""Turn the four downloaded MNIST idx files into the loader's fast format:
``python3 mnist_pickler.py [DIR]``, in a source checkout. The same as
``fxnn-pickle-mnist`` after ``pip install``; the code is
``fxnn/mnist_pickler.py``."""
import sys

from fxnn.mnist_pickler import main

if __name__ == "__main__":
    sys.exit(main())
