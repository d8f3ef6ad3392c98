"""Unpacking a downloaded tarball safely: every member is checked before
anything is written. Only regular files and folders are accepted (no links,
devices or FIFOs), no name may leave the target folder (absolute paths,
``..``), names are bounded in depth and length, no name may be both a file
and a folder (within the tarball or against what the target folder already
holds), no folder on the way to a member may be a link (an existing symlink
inside the target would otherwise carry the write outside it), and member
sizes, their total and their number are bounded: members are counted as they
are read, so a tarball of millions of empty members stops at the first one
past the count."""
import bz2
import gzip
import lzma
import os
import shutil
import stat
import tarfile
import zlib

from fxnn.files.atomic import atomic_path

from .dataset import DataError, one_line

#: The most folders a member's name may go down, and the longest name.
MAX_DEPTH = 32
MAX_NAME = 1024


def _parts(name):
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def check_members(members, path, max_member, max_total, max_count, fix):
    """Raise DataError unless every member is safe to unpack (on its own and
    together: no name both a file and a folder, none twice a file)."""
    if len(members) > max_count:
        raise DataError(f"{path}: {len(members)} members, more than the {max_count} it should hold; {fix}")
    total = 0
    files, folders = set(), set()
    for m in members:
        name = m.name.replace("\\", "/")
        parts = _parts(name)
        shown = one_line(repr(m.name))[:120]
        if name.startswith("/") or ".." in parts or not parts or os.path.isabs(m.name):
            raise DataError(f"{path}: member {shown} would be written outside the folder; {fix}")
        if len(parts) > MAX_DEPTH or len(name) > MAX_NAME or any(len(p.encode("utf-8", "surrogateescape")) > 255
                                                                 for p in parts) or "\0" in name:
            raise DataError(f"{path}: member {shown} has a name deeper than {MAX_DEPTH} folders or longer than "
                            f"{MAX_NAME} characters, which a dataset never needs; {fix}")
        if not (m.isreg() or m.isdir()):
            kind = "a link" if (m.issym() or m.islnk()) else "a special file"
            raise DataError(f"{path}: member {shown} is {kind}, which a dataset never needs; {fix}")
        if m.size > max_member:
            raise DataError(f"{path}: member {shown} is {m.size:,} bytes, more than the {max_member:,} "
                            f"of any genuine one; {fix}")
        total += m.size
        key = tuple(parts)
        folders.update(key[:i] for i in range(1, len(key)))
        if m.isdir():
            folders.add(key)
        elif key in files:
            raise DataError(f"{path}: member {shown} comes twice, which a genuine tarball never has; {fix}")
        else:
            files.add(key)
    clash = files & folders
    if clash:
        raise DataError(f"{path}: member {'/'.join(min(clash))!r} is both a file and a folder; {fix}")
    if total > max_total:
        raise DataError(f"{path}: {total:,} bytes in all, more than the {max_total:,} it should hold; {fix}")


def check_target(target, members, path, fix):
    """Raise DataError if unpacking ``members`` into ``target`` would follow
    a link or meet a file where a folder must go (or a folder where a file
    must go); nothing is written."""
    seen = {}
    for m in members:
        parts = _parts(m.name)
        for i in range(1, len(parts) + 1):
            sub = tuple(parts[:i])
            if sub in seen:
                continue
            where = os.path.join(target, *sub)
            try:
                mode = os.lstat(where).st_mode
            except FileNotFoundError:
                seen[sub] = None
                break  # nothing below it exists either
            except OSError as e:
                raise DataError(f"{path}: cannot unpack it ({where}: {one_line(e.strerror or e)}); {fix}") from None
            seen[sub] = mode
            is_last = i == len(parts)
            if stat.S_ISLNK(mode):
                raise DataError(f"{path}: cannot unpack it: {where} is a link, and unpacking through it could write "
                                f"outside {target}; remove the link and run again")
            wants_folder = not is_last or m.isdir()
            if wants_folder and not stat.S_ISDIR(mode):
                raise DataError(f"{path}: cannot unpack it: {where} is a file where the tarball has a folder; "
                                f"remove it and run again")
            if not wants_folder and stat.S_ISDIR(mode):
                raise DataError(f"{path}: cannot unpack it: {where} is a folder where the tarball has a file; "
                                f"remove it and run again")


def read_members(tar, path, max_count, fix):
    """The members of the open tarball, counted as they are read: DataError
    at the first one past ``max_count``."""
    members = []
    while True:
        m = tar.next()
        if m is None:
            return members
        members.append(m)
        if len(members) > max_count:
            raise DataError(f"{path}: more than the {max_count} members it should hold; {fix}")


#: The most tarfile may read in one go: headers (a pax header or GNU long name
#: declares its own size and is read whole) are far smaller, and member data
#: is copied in chunks of 64 kB.
MAX_READ = 1 << 20


class _BoundedReads:
    """The decompressed stream under tarfile, refusing any single read larger
    than MAX_READ (or unbounded), so that a header declaring gigabytes is
    refused before it is read."""

    def __init__(self, f):
        self._f = f

    def read(self, n=-1):
        if n is None or n < 0 or n > MAX_READ:
            raise tarfile.ReadError(f"a header of {n:,} bytes" if n and n > 0 else "an unbounded read")
        return self._f.read(n)

    def __getattr__(self, name):
        return getattr(self._f, name)


def _open_stream(path):
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(path, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(path, "rb")
    if magic.startswith(b"\xfd7zXZ"):
        return lzma.open(path, "rb")
    return open(path, "rb")


def _makedirs(target, parts):
    """Make the folders ``parts`` under ``target`` one by one (no recursion)."""
    where = target
    for p in parts:
        where = os.path.join(where, p)
        try:
            os.mkdir(where)
        except FileExistsError:
            pass
    return where


def extract(path, target, max_member, max_total, max_count=64, fix="delete it and run again"):
    """Unpack the tarball ``path`` into ``target`` (each file written
    atomically); returns the paths of the files written."""
    written = []
    try:
        with _open_stream(path) as stream, tarfile.open(fileobj=_BoundedReads(stream), mode="r:") as tar:
            members = read_members(tar, path, max_count, fix)
            check_members(members, path, max_member, max_total, max_count, fix)
            check_target(target, members, path, fix)
            os.makedirs(target, exist_ok=True)
            for m in members:
                parts = _parts(m.name)
                if m.isdir():
                    _makedirs(target, parts)
                    continue
                dest = os.path.join(_makedirs(target, parts[:-1]), parts[-1])
                with tar.extractfile(m) as src, atomic_path(dest) as tmp, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
                written.append(dest)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, ValueError, UnicodeError) as e:
        raise DataError(f"{path}: corrupt or truncated tarball ({one_line(e)}); {fix}") from None
    except OSError as e:
        if e.errno is None:  # gzip, bz2 and lzma say "corrupt" this way
            raise DataError(f"{path}: corrupt or truncated tarball ({one_line(e)}); {fix}") from None
        raise DataError(f"{path}: cannot unpack it ({one_line(e.strerror or e)}); {fix}") from None
    return written
