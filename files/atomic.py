"""Atomic file replacement, for every file fxnn writes that a reader may see
(downloads, mnist.npz, records, checkpoints): write a temporary file beside
the target, then rename it over the target, so a crash or a kill at any
moment leaves either the old file or the new one, never a part.

A temporary is named ``.tmp-<pid>@<host>-<random><suffix>``, so that one left
by a process killed with SIGKILL can be told from one still being written:
:func:`remove_stale_temporaries` deletes those whose process on this host is
gone, and every :func:`atomic_path` does so in its folder first. A
temporary is created with ``O_EXCL | O_NOFOLLOW`` (never through a link
planted under its name) and renamed only if its name still holds the file
created, so another user of a shared folder cannot redirect it.

A full disk (or a quota, or a file-size limit) while writing becomes a
:class:`WriteError` whose message is one line naming the file, the space it
needs and the space free; a folder that cannot take the file (missing, not a
folder, no permission) a :class:`FolderError`, one line naming both.
"""
import errno
import os
import re
import secrets
import socket
from contextlib import contextmanager

#: errno values that mean "there is no room for this file".
NO_ROOM = {errno.ENOSPC: ("no space left on device", "free some space"),
           errno.EDQUOT: ("disk quota exceeded", "free some space in your quota"),
           errno.EFBIG: ("file too large for this process's file-size limit", "raise the limit (ulimit -f)")}


class WriteError(OSError):
    """A file could not be written for lack of room; ``strerror`` is one line,
    ``remedy`` what makes room."""

    @property
    def remedy(self):
        return NO_ROOM[self.errno][1]


class FolderError(OSError):
    """The folder of a file to be written cannot take it (missing, not a
    folder, no permission, read-only); ``str()`` is one line naming the file."""

    def __str__(self):
        return self.strerror


#: What each errno of creating a file says about its folder.
FOLDER_PROBLEMS = {errno.ENOENT: "the folder {} does not exist (create it first)",
                   errno.ENOTDIR: "{} is not a folder",
                   errno.EACCES: "no permission to create files in {}",
                   errno.EPERM: "no permission to create files in {}",
                   errno.EROFS: "{} is on a read-only file system"}


def _host():
    return socket.gethostname().replace("/", "_") or "localhost"


def _size(n):
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n / 2**10:,.0f} kiB" if n >= 2**10 else f"{n} bytes"


@contextmanager
def room_for(path, needed=None):
    """Turn a lack-of-room OSError inside the block into a :class:`WriteError`
    naming ``path``, the ``needed`` bytes (when known) and the free space."""
    try:
        yield
    except (OSError, RuntimeError) as e:  # h5py raises either, naming the C library's errno in its message
        code = getattr(e, "errno", None)
        if code is None:
            found = re.search(r"errno = (\d+)", str(e))
            code = int(found.group(1)) if found else None
        if code not in NO_ROOM or isinstance(e, WriteError):
            raise
        try:
            free = os.statvfs(os.path.dirname(os.path.abspath(path)))
            free = f"{_size(free.f_bavail * free.f_frsize)} free there"
        except OSError:
            free = "free space unknown"
        need = f"it needs about {_size(needed)}, " if needed else ""
        raise WriteError(code, f"cannot write {path}: {NO_ROOM[code][0]} ({need}{free})") from None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(folder):
    """Delete the temporaries in ``folder`` left by dead processes of this
    host; those of live processes, other hosts or other programs stay.
    Returns the paths removed."""
    removed, host = [], _host()
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(".tmp-") or "@" not in name:
            continue
        pid, _, rest = name[len(".tmp-"):].partition("@")
        if not pid.isdigit() or "-" not in rest or rest[:rest.rindex("-")] != host or _alive(int(pid)):
            continue
        try:
            os.unlink(os.path.join(folder, name))
            removed.append(os.path.join(folder, name))
        except OSError:
            pass
    return removed


@contextmanager
def atomic_path(path, needed=None):
    """Yield a temporary path beside ``path``; on a clean exit it replaces
    ``path`` with the permissions of a plainly created file, on an exception
    (Ctrl-C included) it is removed. ``needed``: the bytes it will take, for
    the message of a :class:`WriteError` when the disk is full."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise FolderError(errno.EISDIR, f"cannot write {path}: it is a folder; name a file in it")
    remove_stale_temporaries(folder)
    tmp = None
    fd = None
    with room_for(path, needed):
        try:
            while fd is None:
                # named before it is created, so that an exception at any moment after (a Ctrl-C
                # included, which blocking signals cannot hold off: another thread may take it)
                # finds the name and removes the file
                tmp = os.path.join(folder, f".tmp-{os.getpid()}@{_host()}-{secrets.token_hex(4)}"
                                           f"{os.path.splitext(path)[1]}")
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                except FileExistsError:
                    tmp = None
                except OSError as e:
                    tmp = None
                    if e.errno not in FOLDER_PROBLEMS:
                        raise
                    problem = (FOLDER_PROBLEMS[e.errno].format(folder)
                               if e.errno != errno.ENOENT or not os.path.isdir(folder)
                               else f"{folder} takes no new files ({e.strerror})")
                    raise FolderError(e.errno, f"cannot write {path}: {problem}") from None
            yield tmp
            if not os.path.samestat(os.fstat(fd), os.lstat(tmp)):  # replaced meanwhile: not ours to rename
                raise FileExistsError(errno.EEXIST, f"the temporary {tmp} of {path} was replaced while "
                                                    f"it was written")
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
            os.replace(tmp, path)
            tmp = None
        finally:
            if fd is not None:
                os.close(fd)
            if tmp is not None and os.path.lexists(tmp):
                os.unlink(tmp)
