"""Writing files so that a reader never sees a part of one (atomic.py); below
every other package, so that all of them may use it."""
