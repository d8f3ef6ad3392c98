// Fixed 3x3 stage of fxnn on the GPU: forward and backward for contiguous NCHW
// tensors (float32, float16, bfloat16; arithmetic in float32).
//
// The five kernels and the channel layout are defined in kernels/fixed_kernels.py:
// input channel m of image b gives output channels 5*m + k. Treating the input
// as P = B*M planes of H x W, input plane p = b*M + m produces output planes
// 5*p + k, so both directions work plane by plane with no knowledge of B or M.
//
// Tiling. A block is 32 x FXNN_BLOCK_ROWS threads (one warp per block row) and
// owns a TILE_W x TILE_H = 32 x (FXNN_BLOCK_ROWS * FXNN_ROWS_PER_THREAD)
// output tile; thread (tx, ty) computes column tx of rows
// ty*ROWS_PER_THREAD ... + ROWS_PER_THREAD - 1. The tile's input with a
// 1-pixel halo, (TILE_H + 2) x (TILE_W + 2) values, is loaded into shared memory
// once (zero outside the image: the zero padding), converted to float.
//
// Separability. Every non-identity kernel is column (x) row of [1,2,1] and
// [1,0,-1]. Each thread computes the two vertical passes of its own column,
// S = [1,2,1] and D = [1,0,-1] down the column, once in registers; the
// horizontal passes need the S and D of the columns left and right, which come
// from the neighbouring lanes by warp shuffles (lanes 0 and 31 compute the halo
// column's value themselves). One vertical pair feeds four kernels:
//   smooth = S(x-1) + 2 S(x) + S(x+1)     sobel_y = D(x-1) + 2 D(x) + D(x+1)
//   sobel_x = S(x-1) - S(x+1)             cross   = D(x-1) - D(x+1)
//   identity = centre pixel
// Each warp writes 32 consecutive pixels of a row of each output plane, so all
// global stores are coalesced along W.
//
// Backward. dx = sum_k correlate(g_k, flip(K_k)), the adjoint of the forward.
// Flipping [1,2,1] leaves it unchanged and flipping [1,0,-1] negates it, so the
// flipped kernels are smooth, -sobel_y, -sobel_x, +cross and identity. Grouping
// by horizontal filter:
//   dx = Hs(A) + Hd(C) + g_4,   A = Vs(g_0) - Vd(g_1),   C = Vd(g_3) - Vs(g_2)
// with Vs/Vd the vertical [1,2,1]/[1,0,-1] and Hs/Hd the horizontal ones, which
// is the forward's structure again: two vertical quantities per column in
// registers, exchanged between lanes, over four halo tiles of g_0..g_3 in
// shared memory; g_4 needs no halo and is read straight from global memory.
//
// Grid. x over W tiles, y over H tiles, z over planes with a grid-stride loop
// (gridDim.z <= 65535 while B*M may be larger). Plane and pixel offsets are
// 64-bit: P * 5 * H * W exceeds 2^31 for large batches of large images.
//
// The launcher (kernels/cuda_fixed.py) compiles this file with
// -DFXNN_BLOCK_ROWS=... -DFXNN_ROWS_PER_THREAD=... and launches the extern "C"
// entry points at the end with block (32, FXNN_BLOCK_ROWS, 1).

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#if !defined(FXNN_BLOCK_ROWS) || !defined(FXNN_ROWS_PER_THREAD)
#error "compile with -DFXNN_BLOCK_ROWS=<n> -DFXNN_ROWS_PER_THREAD=<n> (see kernels/cuda_fixed.py)"
#endif

namespace fxnn {

constexpr int kTileW = 32;  // = warp size = blockDim.x; the shuffles rely on it
constexpr int kBlockRows = FXNN_BLOCK_ROWS;
constexpr int kRowsPerThread = FXNN_ROWS_PER_THREAD;
constexpr int kTileH = kBlockRows * kRowsPerThread;
constexpr int kThreads = kTileW * kBlockRows;
constexpr int kHaloW = kTileW + 2;
constexpr int kHaloH = kTileH + 2;
constexpr int kNumKernels = 5;
constexpr unsigned kFullWarp = 0xffffffffu;
// Blocks per SM that the register allocation must allow: 1024 threads per SM
// is what every architecture CUDA 13 targets offers at least (sm_75), and with
// 256-thread blocks it leaves up to 64 registers per thread, which both
// directions fit in without spilling.
constexpr int kMinBlocksPerSM = 1024 / kThreads;

static_assert(kBlockRows > 0 && kRowsPerThread > 0, "empty tile");
static_assert(kThreads <= 1024, "too many threads per block");

typedef float HaloTile[kHaloH][kHaloW];

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
    return __bfloat162float(v);
}

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

// Load the halo tile whose top-left output pixel is (y0, x0) from NP planes
// first, first + stride, ...: tiles[k][i][j] = plane_k[y0 - 1 + i][x0 - 1 + j],
// zero outside the h x w image. The block's threads sweep the tile row-major,
// so consecutive threads read consecutive pixels of a row.
template <int NP, typename T>
__device__ __forceinline__ void load_halo_tiles(HaloTile* tiles, const T* __restrict__ first,
                                                long long stride, int h, int w, int y0, int x0) {
    for (int i = threadIdx.y * kTileW + threadIdx.x; i < kHaloH * kHaloW; i += kThreads) {
        const int r = i / kHaloW;
        const int c = i - r * kHaloW;
        const int y = y0 - 1 + r;
        const int x = x0 - 1 + c;
        const bool inside = y >= 0 && y < h && x >= 0 && x < w;
        const long long offset = static_cast<long long>(y) * w + x;
#pragma unroll
        for (int k = 0; k < NP; ++k) {
            tiles[k][r][c] = inside ? to_float(first[k * stride + offset]) : 0.0f;
        }
    }
}

// Vertical passes at tile column c for output row r of the tile (rows r, r+1,
// r+2 of the halo tile are the image rows above, at and below it).
__device__ __forceinline__ float vsmooth(const HaloTile& t, int r, int c) {
    return t[r][c] + 2.0f * t[r + 1][c] + t[r + 2][c];
}
__device__ __forceinline__ float vdiff(const HaloTile& t, int r, int c) {
    return t[r][c] - t[r + 2][c];
}

// The horizontal neighbours (left, right) of a per-column value v: from the
// adjacent lanes, except at the tile edges where `halo` (the value of the halo
// column next to this lane, computed by the lane itself) is used.
__device__ __forceinline__ float2 neighbours(float v, float halo) {
    float left = __shfl_up_sync(kFullWarp, v, 1);
    float right = __shfl_down_sync(kFullWarp, v, 1);
    if (threadIdx.x == 0) left = halo;
    if (threadIdx.x == kTileW - 1) right = halo;
    return make_float2(left, right);
}

// Shared per-thread geometry: the tile origin, this thread's column in the
// halo tile, the halo column it stands in for (left for lane 0, right for the
// others, of which only lane 31 uses it) and its first row in the tile.
struct TileCoords {
    int x0, y0, col, halo_col, gx, row0;
    __device__ TileCoords()
        : x0(blockIdx.x * kTileW),
          y0(blockIdx.y * kTileH),
          col(threadIdx.x + 1),
          halo_col(threadIdx.x == 0 ? 0 : kHaloW - 1),
          gx(blockIdx.x * kTileW + threadIdx.x),
          row0(threadIdx.y * kRowsPerThread) {}
};

template <typename T>
__device__ __forceinline__ void forward_planes(const T* __restrict__ x, T* __restrict__ y,
                                               long long planes, int h, int w) {
    __shared__ HaloTile tile[1];
    const TileCoords tc;
    const long long hw = static_cast<long long>(h) * w;

    for (long long p = blockIdx.z; p < planes; p += gridDim.z) {
        load_halo_tiles<1>(tile, x + p * hw, hw, h, w, tc.y0, tc.x0);
        __syncthreads();

        T* out = y + kNumKernels * p * hw;
#pragma unroll
        for (int j = 0; j < kRowsPerThread; ++j) {
            const int r = tc.row0 + j;
            // Every lane takes part in the shuffles, inside the image or not.
            const float s = vsmooth(tile[0], r, tc.col);
            const float d = vdiff(tile[0], r, tc.col);
            const float2 sn = neighbours(s, vsmooth(tile[0], r, tc.halo_col));
            const float2 dn = neighbours(d, vdiff(tile[0], r, tc.halo_col));
            const int gy = tc.y0 + r;
            if (gy < h && tc.gx < w) {
                const long long o = static_cast<long long>(gy) * w + tc.gx;
                out[o] = from_float<T>(sn.x + 2.0f * s + sn.y);           // smooth
                out[hw + o] = from_float<T>(dn.x + 2.0f * d + dn.y);      // sobel_y
                out[2 * hw + o] = from_float<T>(sn.x - sn.y);             // sobel_x
                out[3 * hw + o] = from_float<T>(dn.x - dn.y);             // cross
                out[4 * hw + o] = from_float<T>(tile[0][r + 1][tc.col]);  // identity
            }
        }
        __syncthreads();  // the next plane overwrites the tile
    }
}

template <typename T>
__device__ __forceinline__ void backward_planes(const T* __restrict__ g, T* __restrict__ dx,
                                                long long planes, int h, int w) {
    __shared__ HaloTile tiles[kNumKernels - 1];  // g_0 .. g_3 of one input plane
    const TileCoords tc;
    const long long hw = static_cast<long long>(h) * w;

    for (long long p = blockIdx.z; p < planes; p += gridDim.z) {
        const T* gp = g + kNumKernels * p * hw;
        load_halo_tiles<kNumKernels - 1>(tiles, gp, hw, h, w, tc.y0, tc.x0);
        __syncthreads();

#pragma unroll
        for (int j = 0; j < kRowsPerThread; ++j) {
            const int r = tc.row0 + j;
            // A feeds the horizontal [1,2,1], C the horizontal [1,0,-1].
            const float a = vsmooth(tiles[0], r, tc.col) - vdiff(tiles[1], r, tc.col);
            const float c = vdiff(tiles[3], r, tc.col) - vsmooth(tiles[2], r, tc.col);
            const float2 an = neighbours(
                a, vsmooth(tiles[0], r, tc.halo_col) - vdiff(tiles[1], r, tc.halo_col));
            const float2 cn = neighbours(
                c, vdiff(tiles[3], r, tc.halo_col) - vsmooth(tiles[2], r, tc.halo_col));
            const int gy = tc.y0 + r;
            if (gy < h && tc.gx < w) {
                const long long o = static_cast<long long>(gy) * w + tc.gx;
                const float identity = to_float(gp[4 * hw + o]);
                dx[p * hw + o] = from_float<T>(an.x + 2.0f * a + an.y + cn.x - cn.y + identity);
            }
        }
        __syncthreads();  // the next plane overwrites the tiles
    }
}

}  // namespace fxnn

// extern "C" entry points, one per direction and element type, so that PyCUDA
// finds them by plain name. Arguments: source, destination, number of input
// planes P = B*M, height, width. Launch with block (32, FXNN_BLOCK_ROWS, 1) and
// grid (ceil(W / 32), ceil(H / TILE_H), min(P, 65535)).
#define FXNN_ENTRY_POINTS(SUFFIX, T)                                                          \
    extern "C" __global__ void __launch_bounds__(fxnn::kThreads, fxnn::kMinBlocksPerSM) fxnn_fixed_forward_##SUFFIX( \
        const T* __restrict__ x, T* __restrict__ y, long long planes, int h, int w) {         \
        fxnn::forward_planes<T>(x, y, planes, h, w);                                          \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(fxnn::kThreads, fxnn::kMinBlocksPerSM) fxnn_fixed_backward_##SUFFIX( \
        const T* __restrict__ g, T* __restrict__ dx, long long planes, int h, int w) {        \
        fxnn::backward_planes<T>(g, dx, planes, h, w);                                        \
    }

FXNN_ENTRY_POINTS(f32, float)
FXNN_ENTRY_POINTS(f16, __half)
FXNN_ENTRY_POINTS(bf16, __nv_bfloat16)

#undef FXNN_ENTRY_POINTS
