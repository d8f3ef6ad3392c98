"""Atomic file replacement, for every file fxnn writes that a reader may see
(downloads, mnist.npz, records, checkpoints): write a temporary file beside
the target, then rename it over the target, so a crash or a kill at any
moment leaves either the old file or the new one, never a part."""
import os
import tempfile
from contextlib import contextmanager


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on a clean exit it replaces
    ``path`` with the permissions of a plainly created file, on an exception
    it is removed."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1],
                               dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
