"""Creating and opening the files and folders a run keeps beside its record
(``<record>.lock``, ``<record>.run/`` and what it holds) without ever going
through a link or into a special file.

The output folder may be shared: another user could plant a symbolic link
named like one of these (so that the run would truncate, overwrite or fill
whatever it points to), a FIFO (which blocks whoever opens it) or a device.
Files are therefore opened with ``O_NOFOLLOW | O_NONBLOCK`` after an
``lstat`` and checked with ``fstat`` once open; folders are made with
``mkdir`` and checked with ``lstat``; a folder is removed only when it is one
(``shutil.rmtree`` itself never follows the links inside). Anything else is
:class:`UnsafePath`, whose message is one line naming it.
"""
import errno
import os
import shutil
import stat

KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"),
         (stat.S_ISREG, "a file"))


class UnsafePath(ValueError):
    """A path fxnn would write is a link or not the kind of thing expected;
    the message is one line naming it."""


def kind(path):
    """What ``path`` itself is ("a symbolic link to /x", "a FIFO", "a folder",
    "a file", ...), or None when nothing is there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        try:
            return f"a symbolic link to {os.readlink(path)}"
        except OSError:
            return "a symbolic link"
    return next((name for test, name in KINDS if test(mode)), "something that is neither a file nor a folder")


def refusal(path, found, role, want):
    return UnsafePath(f"{path} is {found}, where {role} goes (a plain {want}): fxnn never writes through links "
                      f"or into special files; remove it, or write elsewhere with -o")


def target_kind(path):
    """What ``path`` is when it is not a regular file: :func:`kind`, and for
    a link what it leads to ("a symbolic link to /tmp/f, which is a FIFO");
    None for a regular file, nothing, or a link to nothing."""
    found = kind(path)
    if found is None or found == "a file":
        return None
    if not found.startswith("a symbolic link"):
        return found
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # a dangling link: replacing it harms nothing
    if stat.S_ISREG(mode):
        return None
    return f"{found}, which is " + next((name for test, name in KINDS if test(mode)), "no file")


def check(path, role, want="file"):
    """:class:`UnsafePath` unless ``path`` is absent or a plain ``want``
    ("file" or "folder"), not a link to one."""
    found = kind(path)
    if found is not None and found != f"a {want}":
        raise refusal(path, found, role, want)


def open_file(path, flags, role, mode=0o666):
    """``os.open(path, flags)`` refusing a link or a non-regular file (checked
    before and, against a race, after opening); returns the descriptor."""
    check(path, role)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):  # a link, a FIFO without reader, a folder
            raise refusal(path, kind(path) or "not a file", role, "file") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refusal(path, kind(path) or "not a file", role, "file")
    os.set_blocking(fd, True)
    return fd


def open_stream(path, mode, role):
    """A Python file object of ``path`` opened as :func:`open_file` does;
    ``mode``: "rb", "ab", "wb" or "r+b"."""
    flags = {"rb": os.O_RDONLY, "ab": os.O_WRONLY | os.O_CREAT | os.O_APPEND,
             "wb": os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "r+b": os.O_RDWR}[mode]
    return os.fdopen(open_file(path, flags, role), mode)


def make_folder(path, role):
    """Create the folder ``path`` (its parent must exist) or accept an
    existing plain folder; :class:`UnsafePath` for anything else."""
    try:
        os.mkdir(path)
    except FileExistsError:
        check(path, role, "folder")
        if kind(path) is None:  # removed meanwhile
            make_folder(path, role)


def remove_folder(path):
    """Remove the folder ``path`` and what it holds, if it is a plain folder;
    a link there (or anything else) is left alone."""
    if kind(path) == "a folder":
        shutil.rmtree(path, ignore_errors=True)
