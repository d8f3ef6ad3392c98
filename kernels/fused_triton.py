"""The fused fxnn layer in Triton: forward, weight gradient and input
gradient, each without writing the 5M fixed-stage channels to memory.

Layouts as everywhere (``kernels/fixed_kernels.py``): x (B, M, H, W), weight
(5M, N) with row ``5*m + k``, y and dy (B, N, Ho, Wo), all contiguous and of
one dtype: float32, float16 or bfloat16. Every product accumulates in
float32; float16 and bfloat16 operands go to the tensor cores as they are,
float32 ones as TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is on
(PyTorch's switch for its own matmuls; off by default), else in full float32.

With stride s (a compile-time constant of each kernel), the output keeps
the pixels (s*i, s*j) of the stride-1 layer, Ho = (H - 1) // s + 1, as
``F.conv2d(..., stride=s, padding=1)`` does; the forward and the weight
gradient compute the fixed stage at those pixels only.

* **forward**, y = bias + W^T fixed(x): a program owns a tile of output
  pixels (flattened over batch and image) and of output channels. For each chunk
  of input channels it loads the input at the nine 3x3 offsets (the 1-pixel
  halo comes from the masked neighbouring loads), forms the five responses
  in registers by the separable passes ([1,2,1] and [1,0,-1] vertically,
  then horizontally), and ``tl.dot``\\ s each with the matching rows
  ``5*m + k`` of W; the bias is added in the epilogue.
* **weight gradient**, dW = fixed(x) dY^T: the same prologue on a tile of
  pixels, ``tl.dot`` with the matching dY tile, accumulated over the pixels
  of the program's share; the shares' partial sums (float32) are added in a
  fixed order afterwards, so the result does not depend on scheduling.
  dbias = sum dY is a torch reduction.
* **input gradient**, dx = adjoint(W dY): a program owns a 2-D tile of an
  image with a 1-pixel halo and a chunk of input channels; for each kernel
  k it computes (W dY) for the rows ``5*m + k`` on the whole haloed tile
  with ``tl.dot``, parks it in a per-program scratch buffer (at most 32 KB,
  read back at once by the same program, so it stays in cache), and adds the
  adjoint stencil of kernel k (the kernel flipped in both axes) on the
  tile's interior. Programs loop over the tiles (a persistent grid), so the
  scratch is bounded by the number of programs, not the problem. At stride
  s > 1 the tile is one of dY's grid: the five (W dY) planes are parked
  first (five times the scratch), then each of the s*s phases of the input
  (the pixels (s*i + a, s*j + b) for 0 <= a, b < s) gathers from them the
  taps of the kernels that reach it, so no product is formed with the zeros
  that striding leaves between dY's pixels.

Tile sizes are chosen by ``triton.autotune`` per shape; under Triton's
interpreter (``TRITON_INTERPRET=1``, which runs these kernels on CPU tensors
for the tests) a single small configuration is used so that tuning does not
multiply the run time. The reference is ``kernels.fixed_kernels``
(``fixed_conv_reference``, ``fixed_conv_grad_reference``).
"""
import os

import torch
import triton
import triton.language as tl

from .fixed_kernels import KERNELS, NUM_KERNELS
from .torch_fixed import check_stride, out_size

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

#: Pixels per share of the weight gradient's reduction: at least this many
#: per program, at most MAX_SHARES shares and WGRAD_PARTIAL_FLOATS floats
#: of partial sums.
SHARE_PIXELS = 1024
MAX_SHARES = 64
WGRAD_PARTIAL_FLOATS = 1 << 24


def _configs(names, interpreter, gpu):
    """Autotune configurations: the ``interpreter`` row alone under the
    interpreter, else the ``gpu`` rows; a row holds the values of ``names``,
    then num_warps and num_stages."""
    rows = [interpreter] if INTERPRETED else gpu
    return [triton.Config(dict(zip(names, row[:-2])), num_warps=row[-2], num_stages=row[-1]) for row in rows]


# The GPU rows leave out the tiles for which ptxas reports register spills
# (sm_90, bfloat16).
_FORWARD_CONFIGS = _configs(("BLOCK_P", "BLOCK_N", "BLOCK_M"), (32, 16, 16, 1, 1), [
    (64, 32, 16, 4, 2), (64, 32, 16, 8, 3), (64, 64, 16, 4, 2), (64, 64, 16, 8, 3), (64, 128, 16, 8, 3),
    (128, 32, 16, 4, 2), (128, 32, 16, 8, 3), (128, 64, 16, 8, 3), (128, 128, 16, 8, 3)])
_WGRAD_CONFIGS = _configs(("BLOCK_P", "BLOCK_N", "BLOCK_M"), (32, 16, 16, 1, 1), [
    (32, 32, 16, 4, 2), (32, 32, 16, 8, 3), (32, 64, 16, 4, 2), (32, 64, 16, 8, 3), (32, 32, 32, 4, 2),
    (32, 32, 32, 8, 3)])
_DGRAD_CONFIGS = _configs(("TILE_H", "TILE_W", "BLOCK_N", "BLOCK_M"), (8, 8, 16, 16, 1, 1), [
    (16, 16, 32, 16, 4, 2), (16, 16, 32, 16, 8, 3), (16, 16, 64, 16, 4, 2), (16, 16, 64, 16, 8, 3),
    (8, 32, 32, 16, 4, 2), (8, 32, 32, 16, 8, 3), (8, 32, 64, 16, 4, 2), (8, 32, 64, 16, 8, 3),
    (16, 32, 32, 16, 8, 3), (16, 32, 64, 16, 8, 3)])

#: Scratch floats per program of the input gradient at stride 1 (five times
#: as many at stride > 1): enough for any configuration.
_DGRAD_SCRATCH = max(c.kwargs["BLOCK_M"] * c.kwargs["TILE_H"] * c.kwargs["TILE_W"] for c in _DGRAD_CONFIGS)


#: The number of fixed kernels, for the kernels' static loops.
_KERNELS = tl.constexpr(NUM_KERNELS)


#: Triton 3.9's interpreter multiplies bfloat16 ``tl.dot`` operands as their
#: bit patterns (it stores them as uint16), so under the interpreter the
#: operands, already rounded to their dtype, are widened to float32 before
#: the dot: the same products, accumulated in float32 as on the GPU.
_WIDEN_DOT = tl.constexpr(INTERPRETED)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    """a @ b accumulated in float32 (see _WIDEN_DOT)."""
    if _WIDEN_DOT:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _load_f32(ptr, offset, ok):
    return tl.load(ptr + offset, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _responses(x_ptr, plane, h, w, H, W, ok):
    """The five fixed-kernel responses (float32) of the channels whose plane
    offsets are ``plane`` (BLOCK_M, 1) at pixels (h, w) (1, BLOCK_P)."""
    up, down = h - 1 >= 0, h + 1 < H
    left, right = w - 1 >= 0, w + 1 < W
    at = plane + h * W + w
    # rows h-1, h, h+1 at columns w-1, w, w+1
    a_l = _load_f32(x_ptr, at - W - 1, ok & up & left)
    a_c = _load_f32(x_ptr, at - W, ok & up)
    a_r = _load_f32(x_ptr, at - W + 1, ok & up & right)
    b_l = _load_f32(x_ptr, at - 1, ok & left)
    b_c = _load_f32(x_ptr, at, ok)
    b_r = _load_f32(x_ptr, at + 1, ok & right)
    c_l = _load_f32(x_ptr, at + W - 1, ok & down & left)
    c_c = _load_f32(x_ptr, at + W, ok & down)
    c_r = _load_f32(x_ptr, at + W + 1, ok & down & right)
    # vertical passes: smooth [1,2,1] and difference [1,0,-1] (top minus bottom)
    s_l, s_c, s_r = a_l + 2.0 * b_l + c_l, a_c + 2.0 * b_c + c_c, a_r + 2.0 * b_r + c_r
    d_l, d_c, d_r = a_l - c_l, a_c - c_c, a_r - c_r
    smooth = s_l + 2.0 * s_c + s_r
    sobel_y = d_l + 2.0 * d_c + d_r
    sobel_x = s_l - s_r
    cross = d_l - d_r
    return smooth, sobel_y, sobel_x, cross, b_c


@triton.jit
def _weight_rows(w_ptr, m, k, n, N, ok):
    """Rows 5*m + k of W at columns n: (BLOCK_M, BLOCK_N) for m (BLOCK_M, 1)
    and n (1, BLOCK_N)."""
    return tl.load(w_ptr + (5 * m + k) * N + n, mask=ok, other=0.0)


@triton.jit
def _out_size(size, STRIDE: tl.constexpr):
    return (size - 1) // STRIDE + 1


@triton.autotune(configs=_FORWARD_CONFIGS, key=["M", "N", "H", "W", "STRIDE"])
@triton.jit
def _forward_kernel(x_ptr, w_ptr, b_ptr, y_ptr, B, M, N, H, W,
                    STRIDE: tl.constexpr, HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    HW = H * W
    WO = _out_size(W, STRIDE)
    HWO = _out_size(H, STRIDE) * WO
    q = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    q_ok, n_ok = q < B * HWO, n < N
    img, p = q // HWO, (q % HWO).to(tl.int32)
    h, w = (p // WO * STRIDE)[None, :], (p % WO * STRIDE)[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_P), dtype=tl.float32)
    dot_type = x_ptr.dtype.element_ty
    for m0 in range(0, M, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        m_ok = m < M
        plane = (img[None, :] * M + m[:, None]) * HW
        r0, r1, r2, r3, r4 = _responses(x_ptr, plane, h, w, H, W, m_ok[:, None] & q_ok[None, :])
        w_ok = m_ok[:, None] & n_ok[None, :]
        acc += _dot(tl.trans(_weight_rows(w_ptr, m[:, None], 0, n[None, :], N, w_ok)), r0.to(dot_type), PRECISION)
        acc += _dot(tl.trans(_weight_rows(w_ptr, m[:, None], 1, n[None, :], N, w_ok)), r1.to(dot_type), PRECISION)
        acc += _dot(tl.trans(_weight_rows(w_ptr, m[:, None], 2, n[None, :], N, w_ok)), r2.to(dot_type), PRECISION)
        acc += _dot(tl.trans(_weight_rows(w_ptr, m[:, None], 3, n[None, :], N, w_ok)), r3.to(dot_type), PRECISION)
        acc += _dot(tl.trans(_weight_rows(w_ptr, m[:, None], 4, n[None, :], N, w_ok)), r4.to(dot_type), PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    out = (img[None, :] * N + n[:, None]) * HWO + p[None, :]
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=n_ok[:, None] & q_ok[None, :])


@triton.jit
def _store_rows(part_ptr, acc, m, k, n, N, ok):
    tl.store(part_ptr + (5 * m + k) * N + n, acc, mask=ok)


@triton.autotune(configs=_WGRAD_CONFIGS, key=["M", "N", "H", "W", "STRIDE"])
@triton.jit
def _weight_grad_kernel(x_ptr, dy_ptr, part_ptr, B, M, N, H, W, SHARE,
                        STRIDE: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    HW = H * W
    WO = _out_size(W, STRIDE)
    HWO = _out_size(H, STRIDE) * WO
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    share = tl.program_id(2)
    m_ok, n_ok = m < M, n < N
    dot_type = x_ptr.dtype.element_ty
    acc0 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc4 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    start = share.to(tl.int64) * SHARE
    end = tl.minimum(start + SHARE, B * HWO)
    for q0 in range(start, end, BLOCK_P):
        q = q0 + tl.arange(0, BLOCK_P)
        q_ok = q < end
        img, p = q // HWO, (q % HWO).to(tl.int32)
        h, w = (p // WO * STRIDE)[None, :], (p % WO * STRIDE)[None, :]
        plane = (img[None, :] * M + m[:, None]) * HW
        r0, r1, r2, r3, r4 = _responses(x_ptr, plane, h, w, H, W, m_ok[:, None] & q_ok[None, :])
        dy_t = tl.load(dy_ptr + (img[:, None] * N + n[None, :]) * HWO + p[:, None],
                       mask=q_ok[:, None] & n_ok[None, :], other=0.0)  # (BLOCK_P, BLOCK_N)
        acc0 += _dot(r0.to(dot_type), dy_t, PRECISION)
        acc1 += _dot(r1.to(dot_type), dy_t, PRECISION)
        acc2 += _dot(r2.to(dot_type), dy_t, PRECISION)
        acc3 += _dot(r3.to(dot_type), dy_t, PRECISION)
        acc4 += _dot(r4.to(dot_type), dy_t, PRECISION)
    part_ptr += share.to(tl.int64) * 5 * M * N
    ok = m_ok[:, None] & n_ok[None, :]
    _store_rows(part_ptr, acc0, m[:, None], 0, n[None, :], N, ok)
    _store_rows(part_ptr, acc1, m[:, None], 1, n[None, :], N, ok)
    _store_rows(part_ptr, acc2, m[:, None], 2, n[None, :], N, ok)
    _store_rows(part_ptr, acc3, m[:, None], 3, n[None, :], N, ok)
    _store_rows(part_ptr, acc4, m[:, None], 4, n[None, :], N, ok)


@triton.jit
def _tap(acc, s_ptr, shift, ok, coefficient: tl.constexpr):
    """acc + coefficient * scratch[e + shift]; no load when it is 0."""
    if coefficient != 0:
        acc += coefficient * tl.load(s_ptr + shift, mask=ok, other=0.0)
    return acc


#: The five kernels as nested tuples of ints (a global the compiler can compare).
_COEFFICIENTS = tuple(tuple(tuple(int(v) for v in row) for row in kernel) for kernel in KERNELS)


@triton.constexpr_function
def _coefficient(k, a, c):
    """Kernel k's coefficient at row a, column c; 0 off the 3x3 kernel."""
    return _COEFFICIENTS[k][a][c] if 0 <= a <= 2 and 0 <= c <= 2 else 0


@triton.jit
def _adjoint_taps(dx, s_ptr, ok, K: tl.constexpr, STRIDE: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                  TILE_W: tl.constexpr):
    """dx + kernel K's adjoint stencil on the scratch's G = (W dY)[5*m + K]
    for the input pixels (STRIDE*i + PH, STRIDE*j + PW) at dY's grid
    positions (i, j) of the tile: each gets G[i + di, j + dj] times the
    kernel's coefficient at (PH + 1 - STRIDE*di, PW + 1 - STRIDE*dj), which
    at stride 1 is the kernel flipped in both axes."""
    for di in tl.static_range(-1, 2):
        for dj in tl.static_range(-1, 2):
            dx = _tap(dx, s_ptr, di * TILE_W + dj, ok,
                      _coefficient(K, PH + 1 - STRIDE * di, PW + 1 - STRIDE * dj))
    return dx


@triton.jit
def _w_dy(w_ptr, dy_ptr, img, m, m_ok, pixel, on_grid, N, HWO,
          K: tl.constexpr, PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
          TILE: tl.constexpr):
    """G = rows 5*m + K of W times dY at the tile's positions (``pixel`` in
    a plane of dY, zero where not ``on_grid``): (BLOCK_M, TILE) float32."""
    g = tl.zeros((BLOCK_M, TILE), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < N
        wk = _weight_rows(w_ptr, m[:, None], K, n[None, :], N, m_ok[:, None] & n_ok[None, :])
        dy_t = tl.load(dy_ptr + (img * N + n[:, None]).to(tl.int64) * HWO + pixel[None, :],
                       mask=n_ok[:, None] & on_grid[None, :], other=0.0)  # (BLOCK_N, TILE)
        g += _dot(wk, dy_t, PRECISION)
    return g


@triton.jit
def _adjoint_plane(w_ptr, dy_ptr, s_ptr, img, m, m_ok, pixel, on_grid, interior, N, HWO,
                   K: tl.constexpr, TILE_W: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, TILE: tl.constexpr):
    """Kernel K's share of dx at stride 1: G on the haloed tile, into the
    scratch, then the adjoint stencil on the interior."""
    g = _w_dy(w_ptr, dy_ptr, img, m, m_ok, pixel, on_grid, N, HWO, K, PRECISION, BLOCK_N, BLOCK_M, TILE)
    tl.debug_barrier()  # the previous kernel's stencil has read the scratch
    tl.store(s_ptr, g)
    tl.debug_barrier()  # the whole tile is in the scratch
    return _adjoint_taps(tl.zeros((BLOCK_M, TILE), dtype=tl.float32), s_ptr, interior[None, :], K, 1, 0, 0, TILE_W)


@triton.autotune(configs=_DGRAD_CONFIGS, key=["M", "N", "H", "W", "STRIDE"])
@triton.jit
def _input_grad_kernel(dy_ptr, w_ptr, dx_ptr, scratch_ptr, B, M, N, H, W, PROGRAMS, SCRATCH,
                       STRIDE: tl.constexpr, PRECISION: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    HW = H * W
    HO, WO = _out_size(H, STRIDE), _out_size(W, STRIDE)
    TILE: tl.constexpr = TILE_H * TILE_W
    e = tl.arange(0, TILE)
    r, c = e // TILE_W, e % TILE_W
    tiles_h, tiles_w = tl.cdiv(HO, TILE_H - 2), tl.cdiv(WO, TILE_W - 2)
    chunks = tl.cdiv(M, BLOCK_M)
    items = B * tiles_h * tiles_w * chunks
    s_ptr = scratch_ptr + tl.program_id(0).to(tl.int64) * SCRATCH \
        + tl.arange(0, BLOCK_M)[:, None] * TILE + e[None, :]
    for item in range(tl.program_id(0), items, PROGRAMS):
        chunk = item % chunks
        tile = item // chunks
        tw, th, img = tile % tiles_w, (tile // tiles_w) % tiles_h, tile // (tiles_w * tiles_h)
        ii, jj = th * (TILE_H - 2) - 1 + r, tw * (TILE_W - 2) - 1 + c  # the haloed tile of dY's grid
        pixel = ii * WO + jj
        on_grid = (ii >= 0) & (ii < HO) & (jj >= 0) & (jj < WO)
        inner = (r >= 1) & (r < TILE_H - 1) & (c >= 1) & (c < TILE_W - 1)
        m = chunk * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = m < M
        planes = (img * M + m[:, None]).to(tl.int64) * HW
        if STRIDE == 1:
            interior = on_grid & inner
            dx = _adjoint_plane(w_ptr, dy_ptr, s_ptr, img, m, m_ok, pixel, on_grid, interior, N, HW,
                                0, TILE_W, PRECISION, BLOCK_N, BLOCK_M, TILE)
            for k in tl.static_range(1, _KERNELS):
                dx += _adjoint_plane(w_ptr, dy_ptr, s_ptr, img, m, m_ok, pixel, on_grid, interior, N, HW,
                                     k, TILE_W, PRECISION, BLOCK_N, BLOCK_M, TILE)
            tl.store(dx_ptr + planes + pixel[None, :], dx.to(dx_ptr.dtype.element_ty),
                     mask=m_ok[:, None] & interior[None, :])
        else:
            tl.debug_barrier()  # the previous item's phases have read the scratch
            for k in tl.static_range(_KERNELS):
                tl.store(s_ptr + k * BLOCK_M * TILE, _w_dy(w_ptr, dy_ptr, img, m, m_ok, pixel, on_grid, N, HO * WO,
                                                           k, PRECISION, BLOCK_N, BLOCK_M, TILE))
            tl.debug_barrier()  # all five planes are in the scratch
            for ph in tl.static_range(STRIDE):
                for pw in tl.static_range(STRIDE):
                    hh, ww = ii * STRIDE + ph, jj * STRIDE + pw
                    ok = inner & (hh < H) & (ww < W)
                    dx = tl.zeros((BLOCK_M, TILE), dtype=tl.float32)
                    for k in tl.static_range(_KERNELS):
                        dx = _adjoint_taps(dx, s_ptr + k * BLOCK_M * TILE, ok[None, :], k, STRIDE, ph, pw, TILE_W)
                    tl.store(dx_ptr + planes + (hh * W + ww)[None, :], dx.to(dx_ptr.dtype.element_ty),
                             mask=m_ok[:, None] & ok[None, :])


# ---- launchers ---------------------------------------------------------------

def _validate(**tensors):
    """TypeError/ValueError unless the tensors are what the kernels take:
    4-D activations, a 2-D weight, one dtype the kernels support."""
    for name, t in tensors.items():
        if t.dim() != (2 if name == "weight" else 4):
            raise ValueError(f"{name} must be {'2' if name == 'weight' else '4'}-D, got shape {tuple(t.shape)}")
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1 or not dtypes <= set(DTYPES):
        raise TypeError(f"{' and '.join(tensors)} must share one dtype of float32, float16 or bfloat16, "
                        f"got {', '.join(str(t.dtype) for t in tensors.values())}")


def _precision(dtype):
    """tl.dot's input precision for float32 operands (see the module docstring)."""
    return "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def forward(x, weight, bias=None, stride=1):
    """y = bias + W^T fixed(x) at every ``stride``-th pixel: (B, M, H, W) ->
    (B, N, Ho, Wo)."""
    _validate(x=x, weight=weight)
    check_stride(stride, "fused_triton.forward")
    b, m, h, w = x.shape
    if weight.shape[0] != NUM_KERNELS * m:
        raise ValueError(f"weight has {weight.shape[0]} rows, want {NUM_KERNELS * m} for {m} input channels")
    n = weight.shape[1]
    x, weight = x.contiguous(), weight.contiguous()
    ho, wo = out_size(h, stride), out_size(w, stride)
    y = torch.empty((b, n, ho, wo), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    if bias is not None:
        bias = bias.contiguous()
    grid = lambda meta: (triton.cdiv(b * ho * wo, meta["BLOCK_P"]), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    _forward_kernel[grid](x, weight, weight if bias is None else bias, y, b, m, n, h, w,
                          STRIDE=stride, HAS_BIAS=bias is not None, PRECISION=_precision(x.dtype))
    return y


def shares(pixels, m, n):
    """How many shares the weight gradient's pixels are split into."""
    return max(1, min(triton.cdiv(pixels, SHARE_PIXELS), MAX_SHARES,
                      WGRAD_PARTIAL_FLOATS // (NUM_KERNELS * m * n)))


def weight_grad(x, dy, stride=1):
    """(dweight (5M, N), dbias (N,)) for output gradient dy (B, N, Ho, Wo)."""
    _validate(x=x, dy=dy)
    check_stride(stride, "fused_triton.weight_grad")
    b, m, h, w = x.shape
    n = dy.shape[1]
    ho, wo = out_size(h, stride), out_size(w, stride)
    if dy.shape[0] != b or dy.shape[2:] != (ho, wo):
        raise ValueError(f"dy of shape {tuple(dy.shape)} does not match x of shape {tuple(x.shape)} "
                         f"at stride {stride}")
    x, dy = x.contiguous(), dy.contiguous()
    pixels = b * ho * wo
    count = shares(pixels, m, n)
    share = triton.cdiv(triton.cdiv(pixels, count), 256) * 256  # a multiple of every BLOCK_P
    count = triton.cdiv(pixels, share) if pixels else 1
    partial = torch.zeros((count, NUM_KERNELS * m, n), dtype=torch.float32, device=x.device)
    if pixels and m and n:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), count)  # noqa: E731
        _weight_grad_kernel[grid](x, dy, partial, b, m, n, h, w, share, STRIDE=stride,
                                  PRECISION=_precision(x.dtype))
    dbias = dy.sum((0, 2, 3), dtype=torch.float32)
    return partial.sum(0).to(x.dtype), dbias.to(x.dtype)


def _programs(device, items):
    """Programs of the input gradient's persistent grid."""
    if device.type == "cuda":
        return max(1, min(items, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(items, 4))


def input_grad(dy, weight, stride=1, size=None):
    """dx (B, M, H, W) for output gradient dy (B, N, Ho, Wo); ``size`` is the
    input's (H, W), needed at stride > 1 (dy's own at stride 1)."""
    _validate(dy=dy, weight=weight)
    check_stride(stride, "fused_triton.input_grad")
    b, n, ho, wo = dy.shape
    if weight.shape[1] != n or weight.shape[0] % NUM_KERNELS:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not fit dy with {n} channels")
    if size is None:
        if stride != 1:
            raise ValueError(f"input_grad at stride {stride} needs the input's size=(H, W)")
        size = (ho, wo)
    h, w = size
    if (ho, wo) != (out_size(h, stride), out_size(w, stride)):
        raise ValueError(f"dy of {ho} x {wo} pixels is not the stride-{stride} output of a {h} x {w} input")
    m = weight.shape[0] // NUM_KERNELS
    dy, weight = dy.contiguous(), weight.contiguous()
    dx = torch.empty((b, m, h, w), dtype=dy.dtype, device=dy.device)
    if dx.numel() == 0:
        return dx
    items = max(b * triton.cdiv(ho, c.kwargs["TILE_H"] - 2) * triton.cdiv(wo, c.kwargs["TILE_W"] - 2)
                * triton.cdiv(m, c.kwargs["BLOCK_M"]) for c in _DGRAD_CONFIGS)
    programs = _programs(dy.device, items)
    per_program = _DGRAD_SCRATCH * (1 if stride == 1 else NUM_KERNELS)
    scratch = torch.empty((programs, per_program), dtype=torch.float32, device=dy.device)
    _input_grad_kernel[(programs,)](dy, weight, dx, scratch, b, m, n, h, w, programs, per_program,
                                    STRIDE=stride, PRECISION=_precision(dy.dtype))
    return dx
