"""What the tests of the two fused CPU kernels share (tests/test_fused_kernel.py,
float32; tests/test_fused_bf16_kernel.py, bfloat16): the odd layer shapes
they run, the refusals of bad buffers both make, the CPU's feature flags,
and the extension built again with other defines (to run code paths this
CPU would not choose)."""
import importlib.util
import os
import shutil
import subprocess
import sysconfig

import numpy as np
import pytest

from conftest import ROOT

#: (B, M, N, H, W) at stride 1, each test file adding an image of few, tall
#: columns: single pixels, 1xN and Nx1 images, H and W no multiple of a vector
#: or a panel, M = 1 and 3, N = 1, 5, 17, batch 1, padded pixels crossing
#: tiles and panels, M = 70 (more channels than one chunk or pass), N = 33,
#: and more pixels than one span of the weight gradient.
SHAPES = [(1, 1, 1, 1, 1), (1, 1, 5, 1, 9), (2, 3, 17, 7, 1), (1, 3, 1, 13, 11), (3, 1, 17, 14, 14),
          (2, 3, 5, 33, 65), (5, 3, 16, 9, 10), (2, 70, 13, 5, 6), (1, 9, 33, 17, 40)]

#: (B, M, N, H, W) at stride 2: H, W odd and even (stride 2 leaves a
#: remainder row and column, or none), 1 and 2 pixels, rows shorter and
#: longer than a vector or a panel, M odd (a channel pair of one), N no
#: multiple of a tile or of 32, M over one chunk or pass, output rows of 16
#: pixels (one panel) ending at the plane's end.
STRIDED_SHAPES = [(1, 1, 1, 1, 1), (2, 3, 5, 2, 3), (1, 2, 17, 7, 8), (3, 1, 4, 9, 15), (2, 5, 33, 28, 28),
                  (1, 3, 7, 15, 9), (2, 70, 13, 8, 7), (1, 2, 5, 1, 28), (4, 3, 16, 3, 7), (1, 4, 9, 40, 33),
                  (2, 3, 5, 32, 31), (1, 2, 3, 33, 32)]


def assert_bad_buffers_refused(forward, wgrad, dgrad, x, w, bias, dy, isa):
    """The kernels ``forward``, ``wgrad`` and ``dgrad`` of one dtype refuse,
    before reading them, buffers of the wrong shape, not C-contiguous or
    read-only; ``x, w, bias, dy``: a layer of shape (2, 3, 4, 5, 6) in that dtype."""
    y = np.zeros((2, 4, 5, 6), x.dtype)
    dw, db = np.zeros(w.shape, x.dtype), np.zeros(4, x.dtype)
    with pytest.raises(ValueError, match=r"\(5M, N\)"):
        forward(x, w[:-1], bias, y, 1, isa)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        forward(x, w, bias[:-1], y, 1, isa)
    with pytest.raises(ValueError, match=r"\(B, N, Ho, Wo\)"):
        forward(x, w, bias, np.zeros((2, 4, 5, 5), x.dtype), 1, isa)
    with pytest.raises(ValueError, match="dy must be"):
        wgrad(x, dy[:1], dw, db, 1, isa)
    with pytest.raises(ValueError, match="dbias"):
        wgrad(x, dy, dw, db[:-1], 1, isa)
    with pytest.raises(ValueError, match="dx must be"):
        dgrad(dy, w, np.zeros((2, 3, 4, 6), x.dtype), 1, isa)
    with pytest.raises((ValueError, BufferError)):  # not C-contiguous
        forward(x[:, :, :, ::2], w, bias, y[:, :, :, :3], 1, isa)
    readonly = y.copy()
    readonly.setflags(write=False)
    with pytest.raises((ValueError, BufferError)):
        forward(x, w, bias, readonly, 1, isa)


def assert_isas_refused(forward, x, w, bias, unknown, real, isas):
    """``forward`` refuses the instruction set "sse9", saying ``unknown``
    ("unknown instruction set"), and each one of ``real`` that this CPU
    lacks (not in ``isas``); ``x, w, bias``: a layer of shape (1, 1, 2, 3, 3)."""
    y = np.zeros((1, 2, 3, 3), x.dtype)
    with pytest.raises(ValueError, match=f"{unknown} 'sse9'"):
        forward(x, w, bias, y, 1, "sse9")
    for isa in set(real) - set(isas):
        with pytest.raises(ValueError, match=f"does not support the {isa} kernels"):
            forward(x, w, bias, y, 1, isa)


def shape_id(shape):
    """A test id for a shape: "2x3x5x6x7"."""
    return "x".join(map(str, shape))


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (none where it is missing)."""
    if not os.path.exists("/proc/cpuinfo"):
        return set()
    with open("/proc/cpuinfo") as f:
        return set(next((line for line in f if line.startswith("flags")), "").split())


def build_extension(tmp_path_factory, name, defines, what):
    """kernels/fixed_cpu_module.c compiled with ``defines`` (["-DX=0", ...])
    and loaded as a module of its own, ``name``._fixed_cpu; skips the test,
    saying it could not build ``what``, without a C compiler or Python's headers."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    include = sysconfig.get_paths()["include"]
    if not cc or not os.path.exists(os.path.join(include, "Python.h")):
        pytest.skip(f"no C compiler or Python headers to build {what}")
    out = tmp_path_factory.mktemp(name) / "_fixed_cpu.so"
    subprocess.run([cc, "-O1", "-std=c99", "-fPIC", "-shared", "-Wno-psabi", f"-I{include}", *defines,
                    os.path.join(ROOT, "kernels", "fixed_cpu_module.c"), "-o", str(out)], check=True)
    spec = importlib.util.spec_from_file_location(f"{name}._fixed_cpu", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
