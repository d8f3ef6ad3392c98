"""Tests of the fixed-stage CUDA kernels (kernels/simple_conv.cu) and their
launcher (kernels/cuda_fixed.py) against the numpy references of
kernels.fixed_kernels.

Three groups:

* where ``nvcc`` is on PATH: the source compiles for several architectures
  with no warnings (spills and local memory count as warnings), and the kernels
  run on the CPU under a small emulation of the CUDA execution model (a block's
  threads are std::threads, __syncthreads a barrier, warp shuffles an exchange
  between barriers), so their indexing, halo, shuffles and grid-stride loop are
  checked without a GPU;
* everywhere: argument checks that fail before any GPU work;
* where a CUDA GPU, PyCUDA and the compiled kernel are available: the real
  thing (and the fixed stage of kernels/torch_fixed.py at stride 2 on it),
  skipped elsewhere with the reason.

GPU tests: ``python -m pytest tests/test_cuda_kernel.py -q -rs``.
"""
import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from fxnn.kernels import cuda_fixed
from fxnn.kernels.capabilities import capability
from fxnn.kernels import fixed_kernels as fk

try:
    import torch
except ImportError:
    torch = None

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")

GPU = capability("fixed", "torch", "cuda")
GPU_OK, GPU_REASON = bool(GPU), GPU.reason
needs_gpu = pytest.mark.skipif(not GPU_OK, reason=f"needs a CUDA GPU with PyCUDA: {GPU_REASON}")

#: (rtol, atol) against the float64 reference: float32 accumulation, then the
#: rounding of the result to the storage type (2**-11 for float16, 2**-8 for
#: bfloat16, relative).
TOLERANCE = {"float32": (1e-5, 1e-5), "float16": (1e-3, 1e-5), "bfloat16": (8e-3, 1e-5)}

#: Shapes (B, M, H, W): tiny, odd, non-power-of-two, exactly one tile, one past
#: a tile, single rows and columns, several batches and channels.
SHAPES = [(1, 1, 1, 1), (1, 1, 2, 3), (2, 3, 28, 28), (3, 2, 33, 17), (1, 1, 32, 32),
          (1, 1, 33, 65), (4, 3, 1, 37), (2, 2, 37, 1), (1, 2, 513, 700), (2, 3, 64, 96)]


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _grad_shape(shape):
    b, m, h, w = shape
    return (b, fk.NUM_KERNELS * m, h, w)


def _reference(direction, src):
    src = np.asarray(src, np.float64)
    return fk.fixed_stage_reference(src) if direction == "forward" else fk.fixed_stage_grad_reference(src)


def _assert_matches(actual, direction, src, dtype="float32"):
    rtol, atol = TOLERANCE[dtype]
    np.testing.assert_allclose(np.asarray(actual, np.float64), _reference(direction, src), rtol=rtol, atol=atol)


# --------------------------------------------------------------------------- compilation

@needs_nvcc
@pytest.mark.parametrize("arch", ["sm_75", "sm_80", "sm_90"])
def test_source_compiles_without_warnings(tmp_path, arch):
    cmd = [NVCC, "--cubin", f"-arch={arch}", *cuda_fixed.NVCC_DEFINES, "--Werror", "all-warnings",
           "-Xptxas", "-warn-spills,-warn-lmem-usage", "-o", str(tmp_path / "simple_conv.cubin"),
           str(cuda_fixed.SOURCE)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        f"{' '.join(cmd)}\n{result.stdout}{result.stderr}"


@needs_nvcc
def test_object_compiles_without_host_or_device_warnings(tmp_path):
    cmd = [NVCC, "-c", "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           *cuda_fixed.NVCC_DEFINES, "--Werror", "all-warnings", "-Xcompiler", "-Wall,-Wextra",
           "-o", str(tmp_path / "simple_conv.o"), str(cuda_fixed.SOURCE)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        f"{' '.join(cmd)}\n{result.stdout}{result.stderr}"


# --------------------------------------------------------------------------- CPU emulation

_EMULATOR = r"""
// CPU stand-in for the parts of the CUDA execution model that simple_conv.cu
// uses. All threads of a block are std::threads that run the grid's blocks one
// after another, in step, so __shared__ variables can simply be static.
#include <atomic>
#include <thread>
#include <vector>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_functions.h>

struct EmuDim { unsigned x, y, z; };
static thread_local EmuDim threadIdx, blockIdx;
static EmuDim blockDim, gridDim;

// Spinning (with yield) beats a condition variable by far with 256 threads.
class EmuBarrier {
  public:
    explicit EmuBarrier(unsigned n) : n_(n) {}
    void wait() {
        const unsigned generation = generation_.load();
        if (arrived_.fetch_add(1) + 1 == n_) {
            arrived_.store(0);
            generation_.fetch_add(1);
        } else {
            while (generation_.load() == generation) std::this_thread::yield();
        }
    }
  private:
    const unsigned n_;
    std::atomic<unsigned> arrived_{0};
    std::atomic<unsigned> generation_{0};
};

static EmuBarrier* emu_barrier;
static float emu_exchange[1024];

static void __syncthreads() { emu_barrier->wait(); }

// Lane l reads lane l + delta of its warp (a row of 32 threads), or keeps its
// own value when that lane does not exist, as __shfl_up/down_sync do.
static float emu_shuffle(float v, int delta) {
    const unsigned tid = threadIdx.y * blockDim.x + threadIdx.x;
    emu_exchange[tid] = v;
    __syncthreads();
    const int lane = int(threadIdx.x) + delta;
    const float result = (lane >= 0 && lane < 32) ? emu_exchange[int(tid) + delta] : v;
    __syncthreads();
    return result;
}
static float __shfl_up_sync(unsigned, float v, unsigned delta) { return emu_shuffle(v, -int(delta)); }
static float __shfl_down_sync(unsigned, float v, unsigned delta) { return emu_shuffle(v, int(delta)); }

#undef __global__
#undef __shared__
#undef __launch_bounds__
#define __global__
#define __shared__ static
#define __launch_bounds__(...)
#include "@SOURCE@"

template <typename T>
static void emu_launch(void (*kernel)(const T*, T*, long long, int, int), const void* src, void* dst,
                       long long planes, int h, int w, EmuDim grid, EmuDim block) {
    gridDim = grid;
    blockDim = block;
    const unsigned n = block.x * block.y * block.z;
    EmuBarrier barrier(n);
    emu_barrier = &barrier;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < n; ++t) {
        threads.emplace_back([=] {
            threadIdx = {t % block.x, t / block.x, 0};
            for (unsigned z = 0; z < grid.z; ++z)
                for (unsigned y = 0; y < grid.y; ++y)
                    for (unsigned x = 0; x < grid.x; ++x) {
                        blockIdx = {x, y, z};
                        kernel(static_cast<const T*>(src), static_cast<T*>(dst), planes, h, w);
                        __syncthreads();
                    }
        });
    }
    for (auto& thread : threads) thread.join();
}

extern "C" void emu_run(int backward, int dtype, const void* src, void* dst, long long planes, int h,
                        int w, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by) {
    const EmuDim grid = {gx, gy, gz}, block = {bx, by, 1};
    if (dtype == 0)
        emu_launch<float>(backward ? fxnn_fixed_backward_f32 : fxnn_fixed_forward_f32,
                          src, dst, planes, h, w, grid, block);
    else if (dtype == 1)
        emu_launch<__half>(backward ? fxnn_fixed_backward_f16 : fxnn_fixed_forward_f16,
                           src, dst, planes, h, w, grid, block);
    else
        emu_launch<__nv_bfloat16>(backward ? fxnn_fixed_backward_bf16 : fxnn_fixed_forward_bf16,
                                  src, dst, planes, h, w, grid, block);
}
"""

_EMU_DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc is not on PATH")
    build = tmp_path_factory.mktemp("emulator")
    (build / "emulator.cpp").write_text(_EMULATOR.replace("@SOURCE@", str(cuda_fixed.SOURCE.resolve())))
    cmd = [NVCC, "-x", "c++", "-shared", "-O1", "-Xcompiler", "-fPIC,-Wno-unknown-pragmas",
           *cuda_fixed.NVCC_DEFINES, "-o", str(build / "emulator.so"), str(build / "emulator.cpp")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stdout}{result.stderr}"
    lib = ctypes.CDLL(str(build / "emulator.so"))
    lib.emu_run.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_longlong, ctypes.c_int, ctypes.c_int] + [ctypes.c_uint] * 5
    lib.emu_run.restype = None
    return lib


def _encode(a, dtype):
    """float32 array -> storage array of ``dtype`` (bfloat16 as uint16 bits,
    rounded to nearest even)."""
    if dtype == "bfloat16":
        bits = np.ascontiguousarray(a, np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.ascontiguousarray(a, np.float16 if dtype == "float16" else np.float32)


def _decode(a, dtype):
    if dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32)
    return a.astype(np.float32)


def _emulate(lib, direction, src, dtype="float32", grid_z=None):
    """Run a kernel on the emulator with the launcher's geometry; returns
    (input as stored, output), both as float32."""
    b, c, h, w = src.shape
    m = c if direction == "forward" else c // fk.NUM_KERNELS
    out_c = fk.NUM_KERNELS * m if direction == "forward" else m
    stored = _encode(src, dtype)
    dst = np.zeros((b, out_c, h, w), stored.dtype)
    grid, block = cuda_fixed.launch_geometry(b * m, h, w)
    if grid_z is not None:
        grid = grid[:2] + (grid_z,)
    lib.emu_run(direction == "backward", _EMU_DTYPES[dtype], stored.ctypes.data, dst.ctypes.data,
                b * m, h, w, *grid, *block[:2])
    return _decode(stored, dtype), _decode(dst, dtype)


EMU_SHAPES = [s for s in SHAPES if s[2] * s[3] <= 64 * 96]


@needs_nvcc
@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("shape", EMU_SHAPES)
def test_emulated_kernel_matches_reference(emulator, direction, shape):
    src_shape = shape if direction == "forward" else _grad_shape(shape)
    src, out = _emulate(emulator, direction, _random(src_shape, seed=1))
    _assert_matches(out, direction, src)


@needs_nvcc
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_emulated_grid_stride_over_planes(emulator, direction):
    shape = (7, 1, 5, 40)  # 7 planes on gridDim.z = 3
    src_shape = shape if direction == "forward" else _grad_shape(shape)
    src, out = _emulate(emulator, direction, _random(src_shape, seed=2), grid_z=3)
    _assert_matches(out, direction, src)


@needs_nvcc
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_emulated_half_precision(emulator, direction, dtype):
    shape = (2, 2, 33, 17)
    src_shape = shape if direction == "forward" else _grad_shape(shape)
    src, out = _emulate(emulator, direction, _random(src_shape, seed=3), dtype=dtype)
    _assert_matches(out, direction, src, dtype)


# --------------------------------------------------------------------------- argument checks

def test_available_reports_a_reason():
    answer = capability("fixed", "torch", "cuda")
    assert bool(answer.name) != bool(answer.reason) and isinstance(answer.name or answer.reason, str)
    assert capability("fixed", "torch", "cuda") == answer


@needs_torch
@pytest.mark.parametrize("function, bad, error, message", [
    ("fixed_forward", lambda: torch.zeros(2, 3, 4), ValueError, "4-D"),
    ("fixed_backward", lambda: torch.zeros(1, 5, 4), ValueError, "4-D"),
    ("fixed_forward", lambda: torch.zeros(1, 1, 4, 4, dtype=torch.float64), TypeError, "float32"),
    ("fixed_forward", lambda: np.zeros((1, 1, 4, 4), np.float32), TypeError, "torch.Tensor"),
    ("fixed_forward", lambda: torch.zeros(1, 1, 4, 4), ValueError, "CUDA"),
    ("fixed_backward", lambda: torch.zeros(1, 4, 4, 4), ValueError, "multiple of 5"),
])
def test_rejects_bad_arguments_before_any_gpu_work(function, bad, error, message):
    with pytest.raises(error, match=message):
        getattr(cuda_fixed, function)(bad())


# --------------------------------------------------------------------------- on a GPU

def _cuda(a, dtype=None):
    return torch.from_numpy(np.ascontiguousarray(a)).to(device="cuda", dtype=dtype or torch.float32)


def _weights():
    """The five kernels as a float64 conv2d weight (5, 1, 3, 3) on the GPU."""
    return torch.tensor(fk.KERNELS, dtype=torch.float64, device="cuda")[:, None]


@needs_gpu
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference(shape):
    x = _random(shape, seed=4)
    _assert_matches(cuda_fixed.fixed_forward(_cuda(x)).cpu().numpy(), "forward", x)


@needs_gpu
@pytest.mark.parametrize("shape", SHAPES)
def test_backward_matches_reference(shape):
    g = _random(_grad_shape(shape), seed=5)
    _assert_matches(cuda_fixed.fixed_backward(_cuda(g)).cpu().numpy(), "backward", g)


@needs_gpu
def test_more_planes_than_grid_z():
    shape = (300, 250, 2, 3)  # B*M = 75000 > 65535
    x = _random(shape, seed=6)
    _assert_matches(cuda_fixed.fixed_forward(_cuda(x)).cpu().numpy(), "forward", x)
    g = _random(_grad_shape(shape), seed=7)
    _assert_matches(cuda_fixed.fixed_backward(_cuda(g)).cpu().numpy(), "backward", g)


@needs_gpu
def test_4096_image_matches_torch_conv():
    rtol, atol = TOLERANCE["float32"]
    gen = torch.Generator(device="cuda").manual_seed(8)
    x = torch.randn(1, 1, 4096, 4096, device="cuda", generator=gen)
    expected = torch.nn.functional.conv2d(x.double(), _weights(), padding=1)
    torch.testing.assert_close(cuda_fixed.fixed_forward(x).double(), expected, rtol=rtol, atol=atol)
    g = torch.randn(1, 5, 4096, 4096, device="cuda", generator=gen)
    expected = torch.nn.functional.conv_transpose2d(g.double(), _weights(), padding=1)
    torch.testing.assert_close(cuda_fixed.fixed_backward(g).double(), expected, rtol=rtol, atol=atol)


@needs_gpu
def test_offsets_beyond_int32():
    """32 planes of 4096 x 4096: the output holds 2.7e9 elements, so the last
    planes' offsets need 64 bits."""
    if torch.cuda.mem_get_info()[0] < 24 * 2**30:
        pytest.skip("needs 24 GiB of free GPU memory")
    rtol, atol = TOLERANCE["float32"]
    gen = torch.Generator(device="cuda").manual_seed(9)
    x = torch.randn(1, 32, 4096, 4096, device="cuda", generator=gen)
    y = cuda_fixed.fixed_forward(x)
    assert y.numel() > 2**31
    for m in (0, 31):
        expected = torch.nn.functional.conv2d(x[:, m:m + 1].double(), _weights(), padding=1)
        torch.testing.assert_close(y[:, 5 * m:5 * m + 5].double(), expected, rtol=rtol, atol=atol)
    del x, y
    g = torch.randn(1, 160, 4096, 4096, device="cuda", generator=gen)
    dx = cuda_fixed.fixed_backward(g)
    for m in (0, 31):
        expected = torch.nn.functional.conv_transpose2d(g[:, 5 * m:5 * m + 5].double(), _weights(), padding=1)
        torch.testing.assert_close(dx[:, m:m + 1].double(), expected, rtol=rtol, atol=atol)


@needs_gpu
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(2, 3, 33, 17), (1, 2, 128, 96)])
def test_half_precision_matches_reference(shape, dtype):
    torch_dtype = getattr(torch, dtype)
    x = _cuda(_random(shape, seed=10), torch_dtype)
    _assert_matches(cuda_fixed.fixed_forward(x).float().cpu().numpy(), "forward", x.float().cpu().numpy(), dtype)
    g = _cuda(_random(_grad_shape(shape), seed=11), torch_dtype)
    _assert_matches(cuda_fixed.fixed_backward(g).float().cpu().numpy(), "backward", g.float().cpu().numpy(), dtype)


@needs_gpu
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 33, 17), (4, 8, 56, 56), (1, 1, 1024, 777)])
def test_backward_is_the_adjoint_of_forward(shape):
    """<forward(x), g> == <x, backward(g)> to float32 accuracy."""
    x = _cuda(_random(shape, seed=12))
    g = _cuda(_random(_grad_shape(shape), seed=13))
    y = cuda_fixed.fixed_forward(x).double()
    lhs = (y * g.double()).sum().item()
    rhs = (x.double() * cuda_fixed.fixed_backward(g).double()).sum().item()
    assert abs(lhs - rhs) <= 1e-6 * (y.norm() * g.double().norm()).item()


@needs_gpu
def test_ordered_on_a_non_default_stream():
    """On a side stream: the kernel waits for the producer of its input and
    the consumer of its output waits for the kernel."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x = torch.randn(64, 32, 56, 56, device="cuda")
        y = cuda_fixed.fixed_forward(x)
        y_copy = y.clone()
        dx_copy = cuda_fixed.fixed_backward(y).clone()
    stream.synchronize()
    y_np = y_copy.cpu().numpy()
    _assert_matches(y_np, "forward", x.cpu().numpy())
    _assert_matches(dx_copy.cpu().numpy(), "backward", y_np)


@needs_gpu
def test_backward_from_the_autograd_thread():
    """Autograd runs CUDA backward functions in its own thread, where the
    launcher must make the context current itself."""

    class Fixed(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return cuda_fixed.fixed_forward(x)

        @staticmethod
        def backward(ctx, g):
            return cuda_fixed.fixed_backward(g.contiguous())

    shape = (2, 3, 33, 17)
    x = _cuda(_random(shape, seed=14)).requires_grad_()
    g = _random(_grad_shape(shape), seed=15)
    Fixed.apply(x).backward(_cuda(g))
    _assert_matches(x.grad.cpu().numpy(), "backward", g)


@needs_gpu
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 1, 2, 3), (2, 3, 7, 9), (1, 2, 8, 8), (3, 2, 33, 17)])
def test_the_stage_at_stride_2_keeps_every_other_pixel_of_the_kernel(shape, dtype):
    """kernels/torch_fixed.py at stride 2 on CUDA: this kernel's stride-1
    stage subsampled, its adjoint of the zero-upsampled gradient; against a
    strided grouped conv2d and its autograd."""
    from fxnn.kernels import capabilities, torch_fixed
    assert capabilities.fixed_stage("torch", "cuda", getattr(torch, dtype)).startswith("PyCUDA")
    rtol, atol = TOLERANCE[dtype]
    b, m, h, w = shape
    x = _cuda(_random(shape, seed=16), getattr(torch, dtype))
    xd = x.double().requires_grad_(True)
    expected = torch.nn.functional.conv2d(xd, _weights().repeat(m, 1, 1, 1), stride=2, padding=1, groups=m)
    got = torch_fixed.fixed_stage(x, 2)
    assert got.shape == expected.shape == (b, 5 * m, (h - 1) // 2 + 1, (w - 1) // 2 + 1)
    torch.testing.assert_close(got.double(), expected.detach(), rtol=rtol, atol=atol)
    g = _cuda(_random(expected.shape, seed=17), getattr(torch, dtype))
    (expected_dx,) = torch.autograd.grad(expected, xd, g.double())
    torch.testing.assert_close(torch_fixed.fixed_stage_adjoint(g, 2, h, w).double(), expected_dx,
                               rtol=rtol, atol=atol)


@needs_gpu
def test_empty_tensors():
    assert cuda_fixed.fixed_forward(torch.empty(0, 3, 5, 5, device="cuda")).shape == (0, 15, 5, 5)
    assert cuda_fixed.fixed_backward(torch.empty(2, 0, 4, 4, device="cuda")).shape == (2, 0, 4, 4)


@needs_gpu
@pytest.mark.parametrize("function, bad, error, message", [
    ("fixed_forward", lambda: torch.zeros(1, 2, 8, 6, device="cuda").transpose(2, 3), ValueError, "contiguous"),
    ("fixed_forward", lambda: torch.zeros(1, 1, 4, 4, device="cuda", dtype=torch.float64), TypeError, "float32"),
    ("fixed_forward", lambda: torch.zeros(3, 4, 4, device="cuda"), ValueError, "4-D"),
    ("fixed_backward", lambda: torch.zeros(1, 5, 8, 8, device="cuda")[:, :, ::2], ValueError, "contiguous"),
    ("fixed_backward", lambda: torch.zeros(1, 7, 4, 4, device="cuda"), ValueError, "multiple of 5"),
])
def test_rejects_bad_cuda_arguments(function, bad, error, message):
    with pytest.raises(error, match=message):
        getattr(cuda_fixed, function)(bad())
