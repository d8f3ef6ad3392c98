"""Downloading the four MNIST files from well-known mirrors, each checked
against its published MD5 and written atomically."""
import hashlib
import http.client
import os
import urllib.request

from .atomic import atomic_path
from .dataset import DataError, one_line

#: Base URLs tried in order; the environment variable FXNN_MNIST_MIRRORS
#: (space- or comma-separated) replaces the list.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
#: The published MD5 sums of the official files.
CHECKSUMS = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
TIMEOUT = 10  # seconds to connect or wait for data
CHUNK = 1 << 16


class DownloadError(DataError):
    """No mirror delivered a file with the right checksum."""


def mirrors():
    env = os.environ.get("FXNN_MNIST_MIRRORS")
    bases = env.replace(",", " ").split() if env else MIRRORS
    return [b if b.endswith("/") else b + "/" for b in bases]


class ChecksumMismatch(ValueError):
    pass


def fetch(url, folder, name, md5):
    """Download ``url`` into ``folder/name`` if its MD5 is ``md5``; returns an
    error string, or None on success. Never leaves a partial file."""
    try:
        with atomic_path(os.path.join(folder, name)) as tmp:
            digest = hashlib.md5()
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                while chunk := response.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != md5:
                raise ChecksumMismatch(f"MD5 {digest.hexdigest()} is not the published {md5}")
        return None
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError is an OSError
        return f"{url}: {one_line(getattr(e, 'reason', None) or e)}"


def download_mnist(folder, log=print, checksums=None):
    """Put the files of ``checksums`` ({name: MD5}, default the four of
    :data:`CHECKSUMS`) into ``folder``, trying each mirror in turn;
    DownloadError when a file cannot be had from any of them."""
    checksums = CHECKSUMS if checksums is None else checksums
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {folder} ({e.strerror})") from None
    for name, md5 in checksums.items():
        if os.path.exists(os.path.join(folder, name)):
            continue
        errors = []
        for base in mirrors():
            log(f"Downloading {base}{name} ...")
            error = fetch(base + name, folder, name, md5)
            if error is None:
                break
            errors.append(error)
        else:
            raise DownloadError(f"could not download {name}: " + "; ".join(errors))
