"""One process at a time per record: the lock on ``<record>.lock``.

A run (fresh or ``--resume``) takes an exclusive ``flock`` on the file
``<record>.lock`` beside the record before it looks at the record or its
``<record>.run`` folder, and holds it until it exits. The kernel drops the
lock when the process dies, however it dies, so a lock left by a dead
process never blocks; the file itself holds the holder's pid, host, start
time and command line, only to name it in the refusal. On release the file
is removed; it is opened without following links
(:mod:`fxnn.files.nofollow`), so a link or a FIFO planted under its name is
refused, never written through; a run that finds the file it locked unlinked or replaced by
then locks again, so two runs never hold different files of one name.

Across machines the lock holds where the shared filesystem supports locks
(NFS with its lock manager, as Linux maps ``flock`` to NFS byte-range
locks); on one without (some FUSE and SMB mounts) two machines can still
write one record at once.
"""
import errno
import fcntl
import json
import os
import socket
import sys
import time

from fxnn.files.nofollow import UnsafePath, open_file

_held = []
#: errno values of flock on a filesystem without locks.
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LockHeld(Exception):
    """Another live process holds the record; the message names it."""


def _describe(path):
    try:
        with os.fdopen(open_file(path, os.O_RDONLY, "a lock"), errors="replace") as f:
            holder = json.loads(f.read(1 << 16) or "{}")
    except (OSError, ValueError, UnsafePath):
        holder = {}
    if not isinstance(holder, dict) or "pid" not in holder:
        return "a process that has not said which yet"
    return (f"pid {holder['pid']} on {holder.get('host', '?')}, started {holder.get('started', '?')}: "
            f"{holder.get('command', '?')}")


def acquire(record):
    """Lock ``record`` for this process (released by :func:`release_all` or
    at exit); :class:`LockHeld` naming the holder if another process has it;
    :class:`~fxnn.files.nofollow.UnsafePath` if the lock's name is a link or
    no plain file; OSError where the lock file cannot be written or the
    filesystem has no locks (errno in :data:`UNSUPPORTED`)."""
    return lock(os.path.abspath(record) + ".lock", "the record's lock",
                lambda holder: f"{record} is being written by another fxnn run ({holder}); wait for it to end, "
                               f"or write elsewhere with -o")


def lock(path, role, busy):
    """Lock the file ``path`` as :func:`acquire` does; ``busy(holder)`` is
    the message of the :class:`LockHeld` (``holder``: who holds it)."""
    while True:
        fd = open_file(path, os.O_RDWR | os.O_CREAT, role)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(busy(_describe(path))) from None
        except OSError:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.lstat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder released and removed it meanwhile: lock the new file
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(holder).encode())
    _held.append((path, fd))
    return path


def release_all():
    """Release every record lock this process holds, removing the files."""
    while _held:
        path, fd = _held.pop()
        try:
            os.unlink(path)
        except OSError:
            pass
        os.close(fd)
