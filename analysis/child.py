"""Start a sweep's run so that it dies with the worker that started it.

``python3 analysis/child.py PARENT_PID CMD ...`` asks Linux to kill this
process when its parent goes (``PR_SET_PDEATHSIG``), makes sure the parent
had not already gone, and then becomes ``CMD`` (the request survives
``exec``). A Dask worker killed mid-run so leaves no orphan training on in
the output folder while the retried run resumes from the checkpoint
elsewhere. Run as a script, with the standard library only, so that no
``preexec_fn`` runs in the threaded worker between fork and exec. Elsewhere
than Linux it just becomes ``CMD``.

The run gets SIGINT's default action back before it starts: a sweep started
in the background (``nohup``, ``&`` in a script) inherits SIGINT ignored and
would pass that on through ``exec``, so the Ctrl-C with which the sweep stops
its runs would never reach them.
"""
import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def guarded(cmd):
    """``cmd`` run through this launcher, bound to the calling process."""
    return [sys.executable, os.path.abspath(__file__), str(os.getpid())] + list(cmd)


def main(argv):
    parent, cmd = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            sys.exit(f"fxnn-sweep: error: cannot bind the run to its worker (prctl errno {ctypes.get_errno()})")
        if os.getppid() != parent:  # the worker died before the request took effect
            sys.exit(1)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main(sys.argv[1:])
