"""SIGTERM and SIGHUP (a closed terminal) stop a program as Ctrl-C does: by
an exception in the main thread, so every ``finally`` runs (a temporary of
:mod:`fxnn.files.atomic` is removed, a run saves its record) before it exits.

A signal the process was started with ignored stays ignored: ``nohup``
ignores SIGHUP so that a run outlives its terminal, and that is kept.
:func:`restore_ctrl_c` undoes the other inheritance, a SIGINT ignored by a
shell script's ``&``, for programs whose Ctrl-C saves rather than kills.
"""
import signal
import sys

#: The signals that end a program cleanly, as SIGTERM does.
STOPPING = (signal.SIGTERM, signal.SIGHUP)
#: The exit code of a program stopped by one of them (as a shell reports SIGTERM).
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM or SIGHUP; ``signum`` says which."""

    def __init__(self, signum=signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self):
        return signal.Signals(self.signum).name


def _raise(signum, frame):
    raise Terminated(signum)


def raise_on_termination():
    """From now on SIGTERM and SIGHUP raise :class:`Terminated`, except one
    this process inherited as ignored."""
    for sig in STOPPING:
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _raise)


def restore_ctrl_c():
    """SIGINT raises KeyboardInterrupt again if this process was started with
    it ignored (a run started with ``&`` from a script); returns whether it
    was."""
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        return False
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return True


def stoppable(program, main):
    """``main`` (a function of argv returning an exit code) run with
    :func:`raise_on_termination`: a SIGTERM or SIGHUP leaves no temporary
    and ends it with one line and exit code :data:`EXIT_TERMINATED`."""
    def run(argv=None):
        raise_on_termination()
        try:
            return main(argv)
        except Terminated as e:
            print(f"{program}: stopped by {e.name}; a file it had not finished writing was not written (an "
                  f"earlier file of that name is untouched)", file=sys.stderr)
            return EXIT_TERMINATED
    return run
