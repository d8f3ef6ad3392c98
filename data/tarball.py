"""Unpacking a downloaded tarball safely: every member is checked before
anything is written. Only regular files and folders are accepted (no links,
devices or FIFOs), no name may leave the target folder (absolute paths,
``..``), and member sizes, their total and their number are bounded."""
import os
import shutil
import tarfile
import zlib

from fxnn.files.atomic import atomic_path

from .dataset import DataError, one_line


def check_members(members, path, max_member, max_total, max_count, fix):
    """Raise DataError unless every member is safe to unpack."""
    if len(members) > max_count:
        raise DataError(f"{path}: {len(members)} members, more than the {max_count} it should hold; {fix}")
    total = 0
    for m in members:
        name = m.name.replace("\\", "/")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if name.startswith("/") or ".." in parts or not parts or os.path.isabs(m.name):
            raise DataError(f"{path}: member {m.name!r} would be written outside the folder; {fix}")
        if not (m.isreg() or m.isdir()):
            kind = "a link" if (m.issym() or m.islnk()) else "a special file"
            raise DataError(f"{path}: member {m.name!r} is {kind}, which a dataset never needs; {fix}")
        if m.size > max_member:
            raise DataError(f"{path}: member {m.name!r} is {m.size:,} bytes, more than the {max_member:,} "
                            f"of any genuine one; {fix}")
        total += m.size
    if total > max_total:
        raise DataError(f"{path}: {total:,} bytes in all, more than the {max_total:,} it should hold; {fix}")


def extract(path, target, max_member, max_total, max_count=64, fix="delete it and run again"):
    """Unpack the tarball ``path`` into ``target`` (each file written
    atomically); returns the paths of the files written."""
    written = []
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
            check_members(members, path, max_member, max_total, max_count, fix)
            for m in members:
                dest = os.path.join(target, *[p for p in m.name.replace("\\", "/").split("/") if p not in ("", ".")])
                if m.isdir():
                    os.makedirs(dest, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with tar.extractfile(m) as src, atomic_path(dest) as tmp, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
                written.append(dest)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated tarball ({one_line(e)}); {fix}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot unpack it ({one_line(e.strerror or e)}); {fix}") from None
    return written
