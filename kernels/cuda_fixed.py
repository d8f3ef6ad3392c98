"""Launcher for the fixed 3x3 stage CUDA kernels in ``kernels/simple_conv.cu``.

``fixed_forward`` maps (B, M, H, W) to (B, 5M, H, W) in the 5M layout of
:mod:`fxnn.kernels.fixed_kernels`; ``fixed_backward`` maps an output gradient
(B, 5M, H, W) to the input gradient (B, M, H, W). Both take and return
contiguous CUDA tensors (float32, float16 or bfloat16) and allocate the result
with torch.

How it runs:

* PyCUDA compiles the source lazily, once per process and device (its
  ``SourceModule`` also caches the cubin on disk), for the device's own
  architecture.
* The kernels run in PyTorch's CUDA context: the primary context of the
  tensor's device, the one the CUDA runtime (and so torch) uses, retained the
  way ``pycuda.autoprimaryctx`` does it. Unlike importing that module, which
  leaves the context pushed in the importing thread for good and picks the
  device by ``CUDA_DEVICE`` rather than torch's, the context is pushed only for
  the duration of a compile or a launch, in whichever thread makes it (autograd
  calls backward from its own worker thread; PyCUDA aborts if a thread ends
  with a context still pushed).
* Work is ordered on PyTorch's current stream. PyCUDA launches only on its own
  ``Stream`` objects or on handle 0 and cannot wrap a foreign stream handle, so
  when torch's current stream is the legacy default stream (handle 0, torch's
  default) the kernel is launched on it directly; otherwise it runs on a PyCUDA
  stream of ours, fenced with events both ways: it waits for the work queued
  on torch's stream, and torch's stream waits for it, which also keeps the
  caching allocator's reuse of the tensors' memory in order.

Importing this module needs neither pycuda nor a GPU;
:func:`fxnn.kernels.capabilities.capability` ("fixed" on "cuda") says whether
the kernels can run here, and why not.
"""
import atexit
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path

from .capabilities import capability
from .fixed_kernels import NUM_KERNELS

SOURCE = Path(__file__).with_name("simple_conv.cu")

#: Launch geometry. The block is one warp wide (the kernels exchange values
#: between lanes of a row) and BLOCK_ROWS warps tall; each thread computes
#: ROWS_PER_THREAD rows of its column, so a block owns a TILE_W x TILE_H tile.
WARP = 32
BLOCK_ROWS = 8
ROWS_PER_THREAD = 4
BLOCK = (WARP, BLOCK_ROWS, 1)
TILE_W = WARP
TILE_H = BLOCK_ROWS * ROWS_PER_THREAD
MAX_GRID_YZ = 65535  # CUDA's limit on gridDim.y and gridDim.z

#: Preprocessor definitions the source needs (it has no defaults of its own).
NVCC_DEFINES = (f"-DFXNN_BLOCK_ROWS={BLOCK_ROWS}", f"-DFXNN_ROWS_PER_THREAD={ROWS_PER_THREAD}")

#: Kernel argument types for PyCUDA: source, destination, planes, height, width.
_ARG_FORMAT = "PPqii"
_INT32_MAX = 2**31 - 1

_lock = threading.Lock()
_devices = {}     # device index -> _DeviceKernels


def launch_geometry(planes, height, width):
    """(grid, block) for ``planes`` images of height x width: x over column
    tiles, y over row tiles, z over planes (capped; the kernels loop over the
    rest)."""
    grid = (-(-width // TILE_W), -(-height // TILE_H), min(planes, MAX_GRID_YZ))
    return grid, BLOCK


def _dtype_suffixes():
    import torch
    return {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}


def _check(t, name, layout, channel_multiple=1):
    """Raise TypeError/ValueError unless ``t`` is a tensor the kernels accept."""
    import torch
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 4:
        raise ValueError(f"{name} must be a 4-D {layout} tensor, got shape {tuple(t.shape)}")
    if t.shape[1] % channel_multiple:
        raise ValueError(f"{name} has {t.shape[1]} channels, not a multiple of {channel_multiple}")
    if t.dtype not in _dtype_suffixes():
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if t.device.type != "cuda":
        raise ValueError(f"{name} must be a CUDA tensor, got one on {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous in NCHW order; call .contiguous() first")
    _, _, h, w = t.shape
    if w > _INT32_MAX or -(-h // TILE_H) > MAX_GRID_YZ:
        raise ValueError(f"{name}: image of {h} x {w} exceeds the kernel's limits "
                         f"(height <= {TILE_H * MAX_GRID_YZ}, width < 2**31)")


def nvcc():
    """The nvcc PyCUDA compiles with: on PATH, else in $CUDA_HOME/bin; None where neither."""
    found = shutil.which("nvcc")
    if found:
        return found
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidate = os.path.join(home, "bin", "nvcc")
    return candidate if os.access(candidate, os.X_OK) else None


class _DeviceKernels:
    """The compiled kernels of one device, its primary context and the side
    stream used when torch's current stream is not the legacy default one."""

    def __init__(self, index):
        import pycuda.driver as drv
        from pycuda.compiler import SourceModule

        drv.init()
        self.context = drv.Device(index).retain_primary_context()
        self._side = None
        with self.active():
            self.module = SourceModule(SOURCE.read_text(), nvcc=nvcc(), options=list(NVCC_DEFINES),
                                       no_extern_c=True)
            self.functions = {}
            for direction in ("forward", "backward"):
                for suffix in _dtype_suffixes().values():
                    function = self.module.get_function(f"fxnn_fixed_{direction}_{suffix}")
                    self.functions[direction, suffix] = function.prepare(_ARG_FORMAT)

    @contextmanager
    def active(self):
        """Make this device's primary context current in this thread, for PyCUDA too."""
        import pycuda.driver as drv
        self.context.push()
        try:
            yield
        finally:
            drv.Context.pop()

    def side_stream(self, torch_device):
        """(PyCUDA stream, the same stream as a torch stream); call inside active()."""
        with _lock:
            if self._side is None:
                import pycuda.driver as drv
                import torch
                stream = drv.Stream()
                self._side = (stream, torch.cuda.ExternalStream(stream.handle, device=torch_device))
            return self._side


def device_kernels(index):
    """The kernels of CUDA device ``index``, compiled and loaded on first use."""
    with _lock:
        if index not in _devices:
            _devices[index] = _DeviceKernels(index)
        return _devices[index]


@atexit.register
def _release():
    """Unload the modules and release the contexts while CUDA is still up."""
    with _lock:
        _devices.clear()


def _launch(direction, src, dst, planes, height, width):
    import torch
    kernel = capability("fixed", "torch", "cuda", src.dtype)
    if not kernel:
        raise RuntimeError(f"fxnn CUDA kernel unavailable: {kernel.reason}")
    kernels = device_kernels(src.device.index)
    function = kernels.functions[direction, _dtype_suffixes()[src.dtype]]
    grid, block = launch_geometry(planes, height, width)
    args = (src.data_ptr(), dst.data_ptr(), planes, height, width)
    current = torch.cuda.current_stream(src.device)
    with kernels.active():
        if current.cuda_stream == 0:
            function.prepared_async_call(grid, block, None, *args)
        else:
            stream, torch_stream = kernels.side_stream(src.device)
            torch_stream.wait_stream(current)
            function.prepared_async_call(grid, block, stream, *args)
            current.wait_stream(torch_stream)


def fixed_forward(x):
    """Correlate each channel of ``x`` (B, M, H, W) with the five fixed kernels:
    (B, 5M, H, W), output channel 5*m + k from input channel m and kernel k."""
    import torch
    _check(x, "x", "(B, M, H, W)")
    b, m, h, w = x.shape
    out = torch.empty((b, NUM_KERNELS * m, h, w), dtype=x.dtype, device=x.device)
    if out.numel():
        _launch("forward", x, out, b * m, h, w)
    return out


def fixed_backward(g):
    """Gradient of :func:`fixed_forward` with respect to its input, given the
    output gradient ``g`` (B, 5M, H, W): (B, M, H, W)."""
    import torch
    _check(g, "g", "(B, 5M, H, W)", channel_multiple=NUM_KERNELS)
    b, c, h, w = g.shape
    dx = torch.empty((b, c // NUM_KERNELS, h, w), dtype=g.dtype, device=g.device)
    if dx.numel():
        _launch("backward", g, dx, b * (c // NUM_KERNELS), h, w)
    return dx
