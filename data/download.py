"""Downloading dataset files from mirrors: each file checked against its
published MD5, bounded in size and time, and written atomically.

Bounds: a file larger than its ``max_bytes`` is cut off and refused; a
connection or read that stalls for :data:`TIMEOUT` seconds fails; after
:data:`GRACE` seconds a transfer slower on average than :data:`MIN_RATE`
bytes/s is abandoned (a server trickling bytes cannot hold a run); and no
file may take longer than ``FXNN_DOWNLOAD_TIMEOUT`` seconds in all (default
:data:`DEADLINE`).
"""
import gzip
import hashlib
import http.client
import os
import time
import urllib.request
import zlib
from dataclasses import dataclass

from fxnn.files.atomic import atomic_path
from fxnn.files.progress import Progress

from .dataset import DataError, one_line

TIMEOUT = 10        # seconds a connection or a read may stall
GRACE = 15          # seconds before the average rate is checked
MIN_RATE = 20_000   # bytes/s, on average after GRACE
DEADLINE = 1800     # seconds per file, overridden by FXNN_DOWNLOAD_TIMEOUT
DEADLINE_ENV = "FXNN_DOWNLOAD_TIMEOUT"
CHUNK = 1 << 16
#: Set to 1 for the full reasons of a failed download in the offline notice.
DETAIL_ENV = "FXNN_DOWNLOAD_DETAIL"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    md5: str           # the published file's MD5
    max_bytes: int     # no genuine copy is larger
    raw_md5: str = ""  # for a .gz: MD5 of the decompressed bytes, which a recompressed copy shares
    raw_size: int = 0  # for a .gz: the decompressed size


class DownloadError(DataError):
    """No mirror delivered a file with the right checksum; the message gives
    every mirror's reason."""


class Refused(ValueError):
    """The server's answer is not the file (checksum, size, rate)."""


def mirrors(env, default):
    """Base URLs (ending in /) from the environment variable ``env``
    (space- or comma-separated), else ``default``."""
    text = os.environ.get(env)
    bases = text.replace(",", " ").split() if text else default
    return [b if b.endswith("/") else b + "/" for b in bases]


def deadline_seconds():
    """Seconds from FXNN_DOWNLOAD_TIMEOUT (a positive number; unset or
    empty: :data:`DEADLINE`); DataError on any other value."""
    text = os.environ.get(DEADLINE_ENV, "").strip()
    if not text:
        return DEADLINE
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1e9:
        raise DataError(f"{DEADLINE_ENV}={text[:40]!r} is not a number of seconds; set it to a positive number "
                        f"such as {DEADLINE} (the default), or unset it")
    return value


def file_md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def raw_md5(path, size):
    """MD5 of a gzip file's decompressed bytes, reading at most ``size`` + 1
    of them; None when it is no gzip or inflates to another size."""
    digest, total = hashlib.md5(), 0
    try:
        with gzip.open(path, "rb") as f:
            while total <= size and (chunk := f.read(min(CHUNK, size + 1 - total))):
                digest.update(chunk)
                total += len(chunk)
    except (OSError, EOFError, zlib.error):
        return None
    return digest.hexdigest() if total == size else None


def matches(path, md5, remote):
    """True when ``path`` (whose MD5 is ``md5``) is the published file, or a
    recompressed copy with the published decompressed bytes."""
    if md5 == remote.md5:
        return True
    return bool(remote.raw_md5) and raw_md5(path, remote.raw_size) == remote.raw_md5


def fetch(url, path, remote, log=print, limit=DEADLINE):
    """Download ``url`` to ``path`` if it is ``remote`` (a RemoteFile) within
    ``limit`` seconds; returns an error string, or None on success. Never
    leaves a partial file."""
    start = time.monotonic()
    try:
        with atomic_path(path) as tmp:
            digest, size = hashlib.md5(), 0
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response, open(tmp, "wb") as out:
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > remote.max_bytes:
                    raise Refused(f"{int(declared):,} bytes announced, more than the {remote.max_bytes:,} "
                                  f"of any genuine copy")
                log(f"Downloading {url} ...")
                total = int(declared) if declared and declared.isdigit() else 0
                progress = Progress(interval=0.5, scale=1e6, unit=" MB")
                try:
                    while chunk := response.read1(CHUNK):
                        size += len(chunk)
                        if size > remote.max_bytes:
                            raise Refused(f"more than the {remote.max_bytes:,} bytes of any genuine copy")
                        digest.update(chunk)
                        out.write(chunk)
                        progress.update(size, total, "download")
                        elapsed = time.monotonic() - start
                        if elapsed > limit:
                            raise Refused(f"not done within FXNN_DOWNLOAD_TIMEOUT={limit:g} s")
                        if elapsed > GRACE and size < MIN_RATE * elapsed:
                            raise Refused(f"too slow ({size:,} bytes in {elapsed:.0f} s)")
                finally:
                    progress.clear()
            if not matches(tmp, digest.hexdigest(), remote):
                raise Refused(f"MD5 {digest.hexdigest()} is not the published {remote.md5}")
        return None
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
        return f"{url}: {one_line(getattr(e, 'reason', None) or e)}"


def missing_folders(folder):
    """``folder`` and those above it that do not exist, deepest first."""
    missing = []
    while folder and not os.path.lexists(folder):
        missing.append(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return missing


def download_files(folder, files, bases, log=print):
    """Put each RemoteFile of ``files`` that ``folder`` lacks there, trying
    each base URL in turn; DownloadError when one cannot be had, after
    removing the folders this call created if they are still empty (a
    failed download offline leaves no empty data/image/mnist behind);
    DataError for a bad FXNN_DOWNLOAD_TIMEOUT."""
    limit = deadline_seconds()
    created = missing_folders(os.path.abspath(folder))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {folder} ({e.strerror})") from None
    try:
        for remote in files:
            if os.path.exists(os.path.join(folder, remote.name)):
                continue
            errors = []
            for base in bases:
                error = fetch(base + remote.name, os.path.join(folder, remote.name), remote, log, limit)
                if error is None:
                    break
                errors.append(error)
            else:
                raise DownloadError(f"could not download {remote.name}: " + "; ".join(errors))
    except BaseException:  # Ctrl-C included
        for made in created:
            try:
                os.rmdir(made)  # only an empty folder: whatever is in it stays
            except OSError:
                break
        raise
