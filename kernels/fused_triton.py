"""The fused fxnn layer in Triton: forward, weight gradient and input
gradient, each without writing the 5M fixed-stage channels to memory.

Layouts as everywhere (``kernels/fixed_kernels.py``): x (B, M, H, W), weight
(5M, N) with row ``5*m + k``, y and dy (B, N, H, W), all contiguous and of
one dtype: float32, float16 or bfloat16. Every product accumulates in
float32; float16 and bfloat16 operands go to the tensor cores as they are,
float32 ones as TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is on
(PyTorch's switch for its own matmuls; off by default), else in full float32.

* **forward**, y = bias + W^T fixed(x): a program owns a tile of pixels
  (flattened over batch and image) and of output channels. For each chunk
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
  scratch is bounded by the number of programs, not the problem.

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

from .fixed_kernels import NUM_KERNELS

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

#: Scratch floats per program of the input gradient: enough for any configuration.
_DGRAD_SCRATCH = max(c.kwargs["BLOCK_M"] * c.kwargs["TILE_H"] * c.kwargs["TILE_W"] for c in _DGRAD_CONFIGS)


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


@triton.autotune(configs=_FORWARD_CONFIGS, key=["M", "N", "H", "W"])
@triton.jit
def _forward_kernel(x_ptr, w_ptr, b_ptr, y_ptr, B, M, N, H, W,
                    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    HW = H * W
    q = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    q_ok, n_ok = q < B * HW, n < N
    img, p = q // HW, (q % HW).to(tl.int32)
    h, w = (p // W)[None, :], (p % W)[None, :]
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
    out = (img[None, :] * N + n[:, None]) * HW + p[None, :]
    tl.store(y_ptr + out, acc.to(y_ptr.dtype.element_ty), mask=n_ok[:, None] & q_ok[None, :])


@triton.jit
def _store_rows(part_ptr, acc, m, k, n, N, ok):
    tl.store(part_ptr + (5 * m + k) * N + n, acc, mask=ok)


@triton.autotune(configs=_WGRAD_CONFIGS, key=["M", "N", "H", "W"])
@triton.jit
def _weight_grad_kernel(x_ptr, dy_ptr, part_ptr, B, M, N, H, W, SHARE,
                        PRECISION: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    HW = H * W
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
    end = tl.minimum(start + SHARE, B * HW)
    for q0 in range(start, end, BLOCK_P):
        q = q0 + tl.arange(0, BLOCK_P)
        q_ok = q < end
        img, p = q // HW, (q % HW).to(tl.int32)
        h, w = (p // W)[None, :], (p % W)[None, :]
        plane = (img[None, :] * M + m[:, None]) * HW
        r0, r1, r2, r3, r4 = _responses(x_ptr, plane, h, w, H, W, m_ok[:, None] & q_ok[None, :])
        dy_t = tl.load(dy_ptr + (img[:, None] * N + n[None, :]) * HW + p[:, None],
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


@triton.jit
def _adjoint_plane(w_ptr, dy_ptr, s_ptr, img, m, m_ok, hh, ww, in_image, interior, N, H, W, HW,
                   K: tl.constexpr, V0: tl.constexpr, V1: tl.constexpr, V2: tl.constexpr,
                   H0: tl.constexpr, H1: tl.constexpr, H2: tl.constexpr, TILE_W: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, TILE: tl.constexpr):
    """Kernel K's share of dx on a tile: G = rows 5*m + K of W times dY on
    the haloed tile, into the scratch, then the adjoint stencil on the
    interior, whose vertical taps (rows -1, 0, +1) are V0, V1, V2 and
    horizontal ones H0, H1, H2."""
    g = tl.zeros((BLOCK_M, TILE), dtype=tl.float32)
    pixel = (hh * W + ww)[None, :]
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_ok = n < N
        wk = _weight_rows(w_ptr, m[:, None], K, n[None, :], N, m_ok[:, None] & n_ok[None, :])
        dy_t = tl.load(dy_ptr + (img * N + n[:, None]).to(tl.int64) * HW + pixel,
                       mask=n_ok[:, None] & in_image[None, :], other=0.0)  # (BLOCK_N, TILE)
        g += _dot(wk, dy_t, PRECISION)
    tl.debug_barrier()  # the previous kernel's stencil has read the scratch
    tl.store(s_ptr, g)
    tl.debug_barrier()  # the whole tile is in the scratch
    ok = interior[None, :]
    # dx[h, w] += sum over taps of coefficient * G[h - dr, w - dc] for the
    # kernel's coefficient at (1 + dr, 1 + dc): row offsets -dr, column -dc
    dx = tl.zeros((BLOCK_M, TILE), dtype=tl.float32)
    dx = _tap(dx, s_ptr, -TILE_W - 1, ok, V2 * H2)
    dx = _tap(dx, s_ptr, -TILE_W, ok, V2 * H1)
    dx = _tap(dx, s_ptr, -TILE_W + 1, ok, V2 * H0)
    dx = _tap(dx, s_ptr, -1, ok, V1 * H2)
    dx = _tap(dx, s_ptr, 0, ok, V1 * H1)
    dx = _tap(dx, s_ptr, 1, ok, V1 * H0)
    dx = _tap(dx, s_ptr, TILE_W - 1, ok, V0 * H2)
    dx = _tap(dx, s_ptr, TILE_W, ok, V0 * H1)
    dx = _tap(dx, s_ptr, TILE_W + 1, ok, V0 * H0)
    return dx


@triton.autotune(configs=_DGRAD_CONFIGS, key=["M", "N", "H", "W"])
@triton.jit
def _input_grad_kernel(dy_ptr, w_ptr, dx_ptr, scratch_ptr, B, M, N, H, W, PROGRAMS, SCRATCH,
                       PRECISION: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    HW = H * W
    TILE: tl.constexpr = TILE_H * TILE_W
    e = tl.arange(0, TILE)
    r, c = e // TILE_W, e % TILE_W
    tiles_h, tiles_w = tl.cdiv(H, TILE_H - 2), tl.cdiv(W, TILE_W - 2)
    chunks = tl.cdiv(M, BLOCK_M)
    items = B * tiles_h * tiles_w * chunks
    s_ptr = scratch_ptr + tl.program_id(0).to(tl.int64) * SCRATCH \
        + tl.arange(0, BLOCK_M)[:, None] * TILE + e[None, :]
    for item in range(tl.program_id(0), items, PROGRAMS):
        chunk = item % chunks
        tile = item // chunks
        tw, th, img = tile % tiles_w, (tile // tiles_w) % tiles_h, tile // (tiles_w * tiles_h)
        hh, ww = th * (TILE_H - 2) - 1 + r, tw * (TILE_W - 2) - 1 + c  # the haloed tile's pixels
        in_image = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        interior = in_image & (r >= 1) & (r < TILE_H - 1) & (c >= 1) & (c < TILE_W - 1)
        m = chunk * BLOCK_M + tl.arange(0, BLOCK_M)
        m_ok = m < M
        # each kernel as (vertical taps, horizontal taps): smooth [1,2,1], difference [1,0,-1]
        dx = _adjoint_plane(w_ptr, dy_ptr, s_ptr, img, m, m_ok, hh, ww, in_image, interior, N, H, W, HW,
                            0, 1, 2, 1, 1, 2, 1, TILE_W, PRECISION, BLOCK_N, BLOCK_M, TILE)
        dx += _adjoint_plane(w_ptr, dy_ptr, s_ptr, img, m, m_ok, hh, ww, in_image, interior, N, H, W, HW,
                             1, 1, 0, -1, 1, 2, 1, TILE_W, PRECISION, BLOCK_N, BLOCK_M, TILE)
        dx += _adjoint_plane(w_ptr, dy_ptr, s_ptr, img, m, m_ok, hh, ww, in_image, interior, N, H, W, HW,
                             2, 1, 2, 1, 1, 0, -1, TILE_W, PRECISION, BLOCK_N, BLOCK_M, TILE)
        dx += _adjoint_plane(w_ptr, dy_ptr, s_ptr, img, m, m_ok, hh, ww, in_image, interior, N, H, W, HW,
                             3, 1, 0, -1, 1, 0, -1, TILE_W, PRECISION, BLOCK_N, BLOCK_M, TILE)
        dx += _adjoint_plane(w_ptr, dy_ptr, s_ptr, img, m, m_ok, hh, ww, in_image, interior, N, H, W, HW,
                             4, 0, 1, 0, 0, 1, 0, TILE_W, PRECISION, BLOCK_N, BLOCK_M, TILE)
        out = (img * M + m[:, None]).to(tl.int64) * HW + (hh * W + ww)[None, :]
        tl.store(dx_ptr + out, dx.to(dx_ptr.dtype.element_ty), mask=m_ok[:, None] & interior[None, :])


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


def forward(x, weight, bias=None):
    """y = bias + W^T fixed(x): (B, M, H, W) -> (B, N, H, W)."""
    _validate(x=x, weight=weight)
    b, m, h, w = x.shape
    if weight.shape[0] != NUM_KERNELS * m:
        raise ValueError(f"weight has {weight.shape[0]} rows, want {NUM_KERNELS * m} for {m} input channels")
    n = weight.shape[1]
    x, weight = x.contiguous(), weight.contiguous()
    y = torch.empty((b, n, h, w), dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    if bias is not None:
        bias = bias.contiguous()
    grid = lambda meta: (triton.cdiv(b * h * w, meta["BLOCK_P"]), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    _forward_kernel[grid](x, weight, weight if bias is None else bias, y, b, m, n, h, w,
                          HAS_BIAS=bias is not None, PRECISION=_precision(x.dtype))
    return y


def shares(pixels, m, n):
    """How many shares the weight gradient's pixels are split into."""
    return max(1, min(triton.cdiv(pixels, SHARE_PIXELS), MAX_SHARES,
                      WGRAD_PARTIAL_FLOATS // (NUM_KERNELS * m * n)))


def weight_grad(x, dy):
    """(dweight (5M, N), dbias (N,)) for output gradient dy (B, N, H, W)."""
    _validate(x=x, dy=dy)
    b, m, h, w = x.shape
    n = dy.shape[1]
    if dy.shape[0] != b or dy.shape[2:] != x.shape[2:]:
        raise ValueError(f"dy of shape {tuple(dy.shape)} does not match x of shape {tuple(x.shape)}")
    x, dy = x.contiguous(), dy.contiguous()
    pixels = b * h * w
    count = shares(pixels, m, n)
    share = triton.cdiv(triton.cdiv(pixels, count), 256) * 256  # a multiple of every BLOCK_P
    count = triton.cdiv(pixels, share) if pixels else 1
    partial = torch.zeros((count, NUM_KERNELS * m, n), dtype=torch.float32, device=x.device)
    if pixels and m and n:
        grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]), count)  # noqa: E731
        _weight_grad_kernel[grid](x, dy, partial, b, m, n, h, w, share, PRECISION=_precision(x.dtype))
    dbias = dy.sum((0, 2, 3), dtype=torch.float32)
    return partial.sum(0).to(x.dtype), dbias.to(x.dtype)


def _programs(device, items):
    """Programs of the input gradient's persistent grid."""
    if device.type == "cuda":
        return max(1, min(items, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(items, 4))


def input_grad(dy, weight):
    """dx (B, M, H, W) for output gradient dy (B, N, H, W)."""
    _validate(dy=dy, weight=weight)
    b, n, h, w = dy.shape
    if weight.shape[1] != n or weight.shape[0] % NUM_KERNELS:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not fit dy with {n} channels")
    m = weight.shape[0] // NUM_KERNELS
    dy, weight = dy.contiguous(), weight.contiguous()
    dx = torch.empty((b, m, h, w), dtype=dy.dtype, device=dy.device)
    if dx.numel() == 0:
        return dx
    items = max(b * triton.cdiv(h, c.kwargs["TILE_H"] - 2) * triton.cdiv(w, c.kwargs["TILE_W"] - 2)
                * triton.cdiv(m, c.kwargs["BLOCK_M"]) for c in _DGRAD_CONFIGS)
    programs = _programs(dy.device, items)
    scratch = torch.empty((programs, _DGRAD_SCRATCH), dtype=torch.float32, device=dy.device)
    _input_grad_kernel[(programs,)](dy, weight, dx, scratch, b, m, n, h, w, programs, _DGRAD_SCRATCH,
                                    PRECISION=_precision(dy.dtype))
    return dx
