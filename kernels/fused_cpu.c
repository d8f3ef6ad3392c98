/* The fused fxnn layer on the CPU, float32: y = bias + W^T fixed(x) and its
 * two gradients, with the 5M fixed-stage channels never written to memory.
 *
 * A GEMM in the manner of BLIS whose packing step is the fixed stage: the
 * forward computes the five responses of each input channel for a
 * micro-panel of pixels straight into the operand panel the micro-kernel
 * reads (kernels/fused_isa.h); the weight gradient does the same for rows of
 * pixels and takes dot products with dY; the input gradient multiplies
 * W by dY into a cache-sized scratch of rows with a one-row halo and applies
 * the adjoint stencil of kernels/fixed_cpu.c there. Bias in the epilogue.
 *
 * One source, compiled for each instruction set: AVX-512 and AVX2+FMA on
 * x86-64 with GCC or clang (function target attributes, so the build needs no
 * special flags) and a portable version in GCC vector extensions (SSE2,
 * NEON or scalar, as the compiler maps it); the caller picks one that the
 * CPU supports (fxnn_isa_supported). Layouts are those of the fixed stage:
 * x (B, M, H, W), W (5M, N) with row 5m+k, y and dY (B, N, Ho, Wo), all
 * C-contiguous. Stride s (1 or 2): the layer's output pixel (i, j) is the
 * fixed stage at input pixel (s i, s j) (zero padding 1), Ho = (H-1)/s + 1,
 * Wo likewise; the forward and weight gradient compute the fixed stage
 * there only (their packing runs any s), the input gradient applies the
 * adjoint from W dY at those pixels (fxnn_adjoint_row_s2).
 * The numpy references are in kernels/fixed_kernels.py (fixed_conv_reference and the
 * gradients beside it).
 *
 * Channels_last (fxnn_nh_forward, fxnn_nh_wgrad, fxnn_nh_dgrad): the same
 * layer on x, dx (B, H, W, M) and y, dY (B, Ho, Wo, N) as they lie in
 * memory, for PyTorch's channels_last tensors. There the GEMMs' rows are
 * pixels and their vectors run along channels: the packing writes the fixed
 * stage of a block of pixels as rows of 5M floats (the stencil vectorised
 * over channels), one broadcasting micro-kernel serves all three passes, and
 * the input gradient adds dZ = dY W'^T back through the adjoint stencil.
 *
 * Numbers do not depend on the thread count: every output element is
 * computed by one thread in a fixed order, and the weight gradient's
 * partial sums are over pixel groups fixed by the problem's size.
 *
 * Plain C99 plus GCC vector extensions; also valid C++ (PyTensor compiles
 * it with g++, kernels/pytensor_fused_op.py).
 */
#ifndef FXNN_FUSED_CPU_C
#define FXNN_FUSED_CPU_C

#include "fixed_cpu.c"

#include <time.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FXNN_X86 1
#include <immintrin.h>
#else
#define FXNN_X86 0
#endif

#define FXNN_STR2(x) #x
#define FXNN_STR(x) FXNN_STR2(x)

/* Cache budgets of the blocking: the forward's packed panel stays in L1, the
 * weight gradient's and input gradient's blocks in L2. (Overridable with -D
 * for tuning experiments.) */
#ifndef FXNN_L1_PANEL_BYTES
#define FXNN_L1_PANEL_BYTES (16 * 1024)
#endif
#ifndef FXNN_L2_BLOCK_BYTES
#define FXNN_L2_BLOCK_BYTES (256 * 1024)
#endif
#ifndef FXNN_DGRAD_BLOCK_BYTES
#define FXNN_DGRAD_BLOCK_BYTES (1024 * 1024)
#endif
#define FXNN_WGRAD_GROUPS 16                       /* pixel groups (work items) of the weight gradient */
#define FXNN_WGRAD_GROUP_PIXELS 2048               /* at least, per group */
#define FXNN_WGRAD_PARTIAL_BYTES (32 * 1024 * 1024)  /* at most, for their partial sums */
#define FXNN_WGRAD_SPAN_BYTES (1024 * 1024)          /* packed dY of a span */

/* One call: the tensors, their sizes and the blocking (see fused_isa.h). */
struct fxnn_fused {
    const float *x, *weight, *bias, *dy;
    float *y, *dw, *dbias, *dx;
    long b, m, n, h, w, hw, c5;     /* h, w: the input's */
    long s, oh, ow, ohw, hwp;       /* stride; the output's size; its pixels rounded up to VW */
    const float *a;                 /* the weights, packed for the micro-kernel */
    const int *mask_left, *mask_right;
    long mc;                        /* input channels per chunk */
    long block, span;               /* weight gradient: pixels per block and per span */
    long groups;                    /* weight gradient: pixel groups */
    float *partial, *partial_bias;  /* weight gradient: one sum per group */
    long rows;                      /* input gradient: image rows per item */
    long npad;                      /* channels_last: row stride of the packed weights */
};

/* Flags of an output pixel's lane at stride s: inside the output, and which
 * neighbours of its input pixel lie inside the input plane. */
enum { FXNN_AT_IN = 1, FXNN_AT_UP = 2, FXNN_AT_DOWN = 4, FXNN_AT_LEFT = 8, FXNN_AT_RIGHT = 16 };

/* For the `lanes` output pixels p.. of an (oh, ow) plane (ohw pixels) at
 * stride s: each one's input pixel (s i, s j) as an index into the (h, w)
 * plane, and its flags (0 past the plane's end). */
static void fxnn_strided_at(long h, long w, long s, long ow, long ohw, long p, int lanes, int *idx, int *flags)
{
    long io = p / ow, jo = p % ow;  /* of lane i, advanced lane by lane (one division a call) */
    int i;
    for (i = 0; i < lanes; i++, jo = jo + 1 < ow ? jo + 1 : (io++, 0)) {
        long r = io * s, c = jo * s;
        idx[i] = p + i < ohw ? (int)(r * w + c) : 0;
        flags[i] = p + i >= ohw ? 0 : FXNN_AT_IN | (r > 0 ? FXNN_AT_UP : 0) | (r + 1 < h ? FXNN_AT_DOWN : 0)
                                      | (c > 0 ? FXNN_AT_LEFT : 0) | (c + 1 < w ? FXNN_AT_RIGHT : 0);
    }
}

/* Row i of the adjoint of the fixed stage at stride 2 of one plane into out
 * (w floats), straight from the gradient at the output's pixels: plane k at
 * g + k * ks, output row io at (io - oa) * ow, oh rows in all. Row 2io
 * takes the middle taps of output row io, row 2io+1 the bottom taps of io
 * and the top taps of io+1; likewise for columns; so with A and B the
 * vertical adjoints of the kernels sharing a horizontal filter ([1,2,1]:
 * g0, g1; [1,0,-1]: g2, g3), out[2jo] = 2 A[jo] (+ g4 at even rows) and
 * out[2jo+1] = A[jo] + A[jo+1] - B[jo] + B[jo+1]. buf: 2 (ow + 1) floats.
 * Inlined, so that it is compiled for the caller's instruction set. */
static inline __attribute__((always_inline)) void fxnn_adjoint_row_s2(const float *g, long ks, long oa, long oh, long ow, long i, long w, float *out,
                                float *buf)
{
    long io = i / 2, jo;
    const float *g0 = g + (io - oa) * ow, *g1 = g0 + ks, *g2 = g1 + ks, *g3 = g2 + ks, *g4 = g3 + ks;
    float *a = buf, *b = buf + ow + 1;
    if (i % 2 == 0) {
        for (jo = 0; jo < ow; jo++) {
            a[jo] = 2 * g0[jo];
            b[jo] = 2 * g2[jo];
        }
    } else if (io + 1 < oh) {
        for (jo = 0; jo < ow; jo++) {
            a[jo] = g0[jo] + g0[ow + jo] - g1[jo] + g1[ow + jo];
            b[jo] = g2[jo] + g2[ow + jo] - g3[jo] + g3[ow + jo];
        }
    } else {
        for (jo = 0; jo < ow; jo++) {
            a[jo] = g0[jo] - g1[jo];
            b[jo] = g2[jo] - g3[jo];
        }
    }
    a[ow] = b[ow] = 0;
    for (jo = 0; jo < w / 2; jo++) {
        out[2 * jo] = 2 * a[jo] + (i % 2 == 0 ? g4[jo] : 0.0f);
        out[2 * jo + 1] = a[jo] + a[jo + 1] - b[jo] + b[jo + 1];
    }
    if (w % 2)
        out[w - 1] = 2 * a[ow - 1] + (i % 2 == 0 ? g4[ow - 1] : 0.0f);
}

/* A loop of independent multiply-adds, run `iterations` times, for the
 * peaks (fxnn_loop_peak); returns the flops it did. */
typedef double (*fxnn_peak_loop)(long iterations);

static long fxnn_round_up(long v, long to) { return (v + to - 1) / to * to; }
static long fxnn_min(long a, long b) { return a < b ? a : b; }
static long fxnn_max(long a, long b) { return a > b ? a : b; }

/* Whether the channels_last weight gradient sums dW'^T (N x 5M), its
 * vectors along the fixed stage's 5M channels, rather than dW' (5M x N),
 * vectors along dY's N: where N fills less than two vectors of `vw` floats
 * and 5M is longer (ResNet-20's 16-channel layers, measured faster). */
#define FXNN_NH_WGRAD_BY_N(f, vw) ((f)->n < 2 * (vw) && (f)->c5 > (f)->n)

/* What fused_isa.h defines for one instruction set. */
struct fxnn_isa {
    const char *name;
    int vw, mr, nr, wr, wc;
    fxnn_items_fn forward, wgrad, dgrad;
    fxnn_peak_loop fma_loop;
    fxnn_items_fn nh_forward, nh_wgrad, nh_dgrad;  /* channels_last */
    int nh_mr;                                     /* their tiles' rows (the forward's divide 3 nh_mr) */
};

/* The AVX-512 build's geometry, shared with its stand-in below. */
#define FXNN_AVX512_VW 16
#define FXNN_AVX512_MR 8
#define FXNN_AVX512_NV 3
#define FXNN_AVX512_WR 5
#define FXNN_AVX512_WC 4

#if FXNN_X86
#define FXNN_ISA avx512
#define FXNN_VW FXNN_AVX512_VW
#define FXNN_MR FXNN_AVX512_MR
#define FXNN_NV FXNN_AVX512_NV
#define FXNN_WR FXNN_AVX512_WR
#define FXNN_WC FXNN_AVX512_WC
#define FXNN_TARGET __attribute__((target("avx512f,avx2,fma")))
#define FXNN_FMA(a, b, c) ((FX(vf))_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
#define FXNN_SPLAT(s) _mm512_set1_ps(s)
#define FXNN_MASKLOAD(p, m) _mm512_maskz_loadu_ps(_mm512_test_epi32_mask((__m512i)(m), (__m512i)(m)), (p))
#define FXNN_GATHER(p, i, m) \
    ((FX(vf))_mm512_mask_i32gather_ps(_mm512_setzero_ps(), _mm512_test_epi32_mask((__m512i)(m), (__m512i)(m)), \
                                      (__m512i)(i), (p), 4))
#define FXNN_EVEN(a, b) \
    ((FX(vf))_mm512_permutex2var_ps((__m512)(a), _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, \
                                                                  6, 4, 2, 0), (__m512)(b)))
#include "fused_isa.h"

#define FXNN_ISA avx2
#define FXNN_VW 8
#define FXNN_MR 6
#define FXNN_NV 2
#define FXNN_WR 3
#define FXNN_WC 3
#define FXNN_TARGET __attribute__((target("avx2,fma")))
#define FXNN_FMA(a, b, c) ((FX(vf))_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
#define FXNN_SPLAT(s) _mm256_set1_ps(s)
#define FXNN_MASKLOAD(p, m) _mm256_maskload_ps((p), (__m256i)(m))
#define FXNN_GATHER(p, i, m) ((FX(vf))_mm256_mask_i32gather_ps(_mm256_setzero_ps(), (p), (__m256i)(i), (__m256)(m), 4))
#include "fused_isa.h"
#endif

#define FXNN_ISA portable
#define FXNN_VW 4
#define FXNN_MR 4
#define FXNN_NV 2
#define FXNN_WR 3
#define FXNN_WC 3
#define FXNN_TARGET
#define FXNN_FMA(a, b, c) ((a) * (b) + (c))
#define FXNN_SPLAT(s) ((FX(vf)){0} + (s))
#define FXNN_MASKLOAD(p, m) FX(maskload_scalar)((p), (m))
#define FXNN_GATHER(p, i, m) FX(gather_scalar)((p), (i), (m))
#include "fused_isa.h"

#ifdef FXNN_AVX512_STANDIN
/* The AVX-512 build's geometry (16-float vectors, its tiles and blocking) in
 * portable vector code, which any CPU runs: built only by the tests
 * (tests/test_fused_kernel.py), so that machines without AVX-512 check the
 * index arithmetic the AVX-512 build will run elsewhere; its name comes last
 * in the list, so it is never chosen as the best. */
#define FXNN_ISA avx512_standin
#define FXNN_VW FXNN_AVX512_VW
#define FXNN_MR FXNN_AVX512_MR
#define FXNN_NV FXNN_AVX512_NV
#define FXNN_WR FXNN_AVX512_WR
#define FXNN_WC FXNN_AVX512_WC
#define FXNN_TARGET
#define FXNN_FMA(a, b, c) ((a) * (b) + (c))
#define FXNN_SPLAT(s) ((FX(vf)){0} + (s))
#define FXNN_MASKLOAD(p, m) FX(maskload_scalar)((p), (m))
#define FXNN_GATHER(p, i, m) FX(gather_scalar)((p), (i), (m))
#define FXNN_EVEN(a, b) FX(even_scalar)((a), (b))
#include "fused_isa.h"
#endif

/* Best first. */
static const struct fxnn_isa *const fxnn_isas[] = {
#if FXNN_X86
    &isa_avx512, &isa_avx2,
#endif
    &isa_portable,
#ifdef FXNN_AVX512_STANDIN
    &isa_avx512_standin,
#endif
};
#define FXNN_NUM_ISAS ((int)(sizeof(fxnn_isas) / sizeof(fxnn_isas[0])))

/* Whether this CPU (and its operating system) runs fxnn_isas[i]. */
static int fxnn_isa_supported(int i)
{
    if (i < 0 || i >= FXNN_NUM_ISAS)
        return 0;
#if FXNN_X86
    __builtin_cpu_init();
    if (fxnn_isas[i] == &isa_avx512)
        return __builtin_cpu_supports("avx512f");
    if (fxnn_isas[i] == &isa_avx2)
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    return 1;
}

/* The index of the named ISA ("" or NULL: the best) if this CPU runs it, else -1. */
static int fxnn_isa_lookup(const char *name)
{
    int i;
    for (i = 0; i < FXNN_NUM_ISAS; i++)
        if ((!name || !name[0] || strcmp(fxnn_isas[i]->name, name) == 0) && fxnn_isa_supported(i))
            return i;
    return -1;
}

#define FXNN_ERR_MEMORY (-1)
#define FXNN_ERR_ISA (-2)
#define FXNN_ERR_SIZE (-3)   /* an image of 2^31 pixels or more: lane indices are ints */

/* The lane masks of rows of w pixels, for vectors of vw lanes, in one
 * allocation (freed through *left): (*left)[t] is -1 where pixel t % w of its
 * row has a left neighbour, (*right)[t] where it has a right one (t < w +
 * vw). 0, or FXNN_ERR_MEMORY. */
static int fxnn_row_masks(long w, long vw, const int **left, const int **right)
{
    int *masks = (int *)malloc(2 * (size_t)(w + vw) * sizeof(int));
    long t;
    if (!masks)
        return FXNN_ERR_MEMORY;
    for (t = 0; t < w + vw; t++) {
        masks[t] = t % w != 0 ? -1 : 0;
        masks[w + vw + t] = t % w != w - 1 ? -1 : 0;
    }
    *left = masks;
    *right = masks + w + vw;
    return 0;
}

/* Sizes and lane masks shared by the three passes; the masks (W + VW ints
 * each) say which pixel of a row has a left / right neighbour. */
static int fxnn_setup(struct fxnn_fused *f, const struct fxnn_isa *isa, long b, long m, long n, long h, long w,
                      long s)
{
    memset(f, 0, sizeof(*f));
    if (h * w > 2147483647L - 64)
        return FXNN_ERR_SIZE;
    f->b = b; f->m = m; f->n = n; f->h = h; f->w = w; f->hw = h * w; f->c5 = FXNN_NUM_KERNELS * m;
    f->s = s; f->oh = (h - 1) / s + 1; f->ow = (w - 1) / s + 1; f->ohw = f->oh * f->ow;
    f->hwp = fxnn_round_up(f->ohw, isa->vw);
    return fxnn_row_masks(w, isa->vw, &f->mask_left, &f->mask_right);
}

static void fxnn_release(struct fxnn_fused *f)
{
    free((void *)f->mask_left);
    free((void *)f->a);
    free(f->partial);
    free(f->partial_bias);
}

static int fxnn_empty(long b, long m, long n, long h, long w)
{
    return b <= 0 || m <= 0 || n <= 0 || h <= 0 || w <= 0;
}

/* Whether a weight-gradient call is empty (fxnn_empty); if so, its outputs
 * dw (5M, N) and dbias (N; NULL: none) zeroed, of `size`-byte elements. */
static int fxnn_wgrad_empty(long b, long m, long n, long h, long w, void *dw, void *dbias, size_t size)
{
    if (!fxnn_empty(b, m, n, h, w))
        return 0;
    if (m > 0 && n > 0) {
        memset(dw, 0, (size_t)FXNN_NUM_KERNELS * m * n * size);
        if (dbias) memset(dbias, 0, (size_t)n * size);
    }
    return 1;
}

/* Whether an input-gradient call is empty; if so, its output dx (B, M, H,
 * W) zeroed, of `size`-byte elements. */
static int fxnn_dgrad_empty(long b, long m, long n, long h, long w, void *dx, size_t size)
{
    if (!fxnn_empty(b, m, n, h, w))
        return 0;
    if (b > 0 && m > 0 && h > 0 && w > 0)
        memset(dx, 0, (size_t)b * m * h * w * size);
    return 1;
}

/* The output's height or width for the input's `size` at stride s. */
static long fxnn_out_size(long size, long s) { return size > 0 ? (size - 1) / s + 1 : 0; }

/* y (B, N, Ho, Wo) = bias + W^T fixed(x) at stride s (>= 1); bias may be NULL. */
static int fxnn_fused_forward(int isa_index, const float *x, const float *weight, const float *bias, float *y,
                              long b, long m, long n, long h, long w, long s, int threads)
{
    const struct fxnn_isa *isa = fxnn_isas[isa_index];
    struct fxnn_fused f;
    float *a;
    long nb, c, r, rc;
    if (!fxnn_isa_supported(isa_index))
        return FXNN_ERR_ISA;
    if (fxnn_empty(b, m, n, h, w))
        return 0;
    if ((rc = fxnn_setup(&f, isa, b, m, n, h, w, s)) != 0)
        return (int)rc;
    f.x = x; f.weight = weight; f.bias = bias; f.y = y;
    /* W^T in blocks of MR output channels: block nb/MR at nb * 5M, row c at c * MR */
    a = (float *)malloc((size_t)fxnn_round_up(n, isa->mr) * f.c5 * sizeof(float));
    f.a = a;
    if (!a) {
        fxnn_release(&f);
        return FXNN_ERR_MEMORY;
    }
    for (nb = 0; nb < n; nb += isa->mr)
        for (c = 0; c < f.c5; c++)
            for (r = 0; r < isa->mr; r++)
                a[nb * f.c5 + c * isa->mr + r] = nb + r < n ? weight[c * n + nb + r] : 0.0f;
    f.mc = fxnn_max(1, fxnn_min(m, FXNN_L1_PANEL_BYTES / ((long)sizeof(float) * FXNN_NUM_KERNELS * isa->nr)));
    rc = fxnn_parallel(isa->forward, &f, fxnn_round_up(b * f.hwp, isa->nr) / isa->nr,
                       (size_t)FXNN_NUM_KERNELS * f.mc * isa->nr * sizeof(float), threads);
    fxnn_release(&f);
    return (int)rc;
}

/* The weight gradient's pixel groups (its work items, each summed into a
 * partial dW of c5 x n floats, added in order afterwards): a power of two
 * (so that they split evenly over 2, 4, 8 or 16 threads), at most 16, of
 * at least FXNN_WGRAD_GROUP_PIXELS pixels each (every group ends with its
 * own sums), within the memory cap; fixed by the problem's size, so the
 * numbers do not depend on the thread count. */
static long fxnn_wgrad_groups(long pixels, long c5, long n)
{
    long groups = 1;
    while (2 * groups <= FXNN_WGRAD_GROUPS && 2 * groups * FXNN_WGRAD_GROUP_PIXELS <= pixels
           && 2 * groups * (long)sizeof(float) * c5 * n <= FXNN_WGRAD_PARTIAL_BYTES)
        groups *= 2;
    return groups;
}

/* dw (5M, N) = fixed(x) . dY over batch and the output's pixels (stride s);
 * dbias (N,) = sums of dY (skipped when NULL). */
static int fxnn_fused_wgrad(int isa_index, const float *x, const float *dy, float *dw, float *dbias,
                            long b, long m, long n, long h, long w, long s, int threads)
{
    const struct fxnn_isa *isa = fxnn_isas[isa_index];
    struct fxnn_fused f;
    long kc_rows, n_rows, g, i, rc;
    if (!fxnn_isa_supported(isa_index))
        return FXNN_ERR_ISA;
    if (fxnn_wgrad_empty(b, m, n, h, w, dw, dbias, sizeof(float)))
        return 0;
    if ((rc = fxnn_setup(&f, isa, b, m, n, h, w, s)) != 0)
        return (int)rc;
    f.x = x; f.dy = dy; f.dw = dw; f.dbias = dbias;
    kc_rows = FXNN_NUM_KERNELS * isa->wr;
    n_rows = fxnn_round_up(n, isa->wc);
    f.groups = fxnn_wgrad_groups(b * f.hwp, f.c5, n);
    f.block = fxnn_min(4096, fxnn_max(isa->vw, FXNN_L2_BLOCK_BYTES / ((kc_rows + n_rows) * (long)sizeof(float))
                                                   / isa->vw * isa->vw));
    f.span = fxnn_max(f.block, FXNN_WGRAD_SPAN_BYTES / (n_rows * (long)sizeof(float)) / f.block * f.block);
    if (f.groups > 1) {
        f.partial = (float *)malloc((size_t)f.groups * f.c5 * n * sizeof(float));
        f.partial_bias = (float *)malloc((size_t)f.groups * n * sizeof(float));
        if (!f.partial || !f.partial_bias) {
            fxnn_release(&f);
            return FXNN_ERR_MEMORY;
        }
    }
    rc = fxnn_parallel(isa->wgrad, &f, f.groups,
                       ((size_t)kc_rows * f.block + (size_t)n_rows * f.span + (size_t)kc_rows * n_rows * isa->vw)
                       * sizeof(float), threads);
    if (rc == 0 && f.groups > 1) {
        memcpy(dw, f.partial, (size_t)f.c5 * n * sizeof(float));
        for (g = 1; g < f.groups; g++)
            for (i = 0; i < f.c5 * n; i++) dw[i] += f.partial[g * f.c5 * n + i];
        if (dbias) {
            memcpy(dbias, f.partial_bias, (size_t)n * sizeof(float));
            for (g = 1; g < f.groups; g++)
                for (i = 0; i < n; i++) dbias[i] += f.partial_bias[g * n + i];
        }
    }
    fxnn_release(&f);
    return (int)rc;
}

/* dx (B, M, H, W) = adjoint of the fixed stage at stride s applied to W dY
 * (B, N, Ho, Wo); h, w are the input's. */
static int fxnn_fused_dgrad(int isa_index, const float *dy, const float *weight, float *dx,
                            long b, long m, long n, long h, long w, long s, int threads)
{
    const struct fxnn_isa *isa = fxnn_isas[isa_index];
    struct fxnn_fused f;
    float *a;
    long c0, k, r, blocks, lp, rc;
    if (!fxnn_isa_supported(isa_index))
        return FXNN_ERR_ISA;
    if (fxnn_dgrad_empty(b, m, n, h, w, dx, sizeof(float)))
        return 0;
    if ((rc = fxnn_setup(&f, isa, b, m, n, h, w, s)) != 0)
        return (int)rc;
    f.dy = dy; f.weight = weight; f.dx = dx;
    /* W in blocks of MR fixed-stage channels: block c0/MR at c0 * N, row k at k * MR */
    a = (float *)malloc((size_t)fxnn_round_up(f.c5, isa->mr) * n * sizeof(float));
    f.a = a;
    if (!a) {
        fxnn_release(&f);
        return FXNN_ERR_MEMORY;
    }
    for (c0 = 0; c0 < f.c5; c0 += isa->mr)
        for (k = 0; k < n; k++)
            for (r = 0; r < isa->mr; r++)
                a[c0 * n + k * isa->mr + r] = c0 + r < f.c5 ? weight[(c0 + r) * n + k] : 0.0f;
    /* rows per item: whole images, unless the packed dY and the scratch
     * ((N + 5 MR) rows of (rows + 2) W pixels) outgrow FXNN_DGRAD_BLOCK_BYTES
     * or there are too few images to keep every thread busy */
    f.rows = fxnn_max(1, fxnn_min(h, FXNN_DGRAD_BLOCK_BYTES / ((long)sizeof(float) * (n + FXNN_NUM_KERNELS * isa->mr) * w) - 2));
    blocks = (4L * threads + b - 1) / b;
    if (blocks > 1)
        f.rows = fxnn_max(1, fxnn_min(f.rows, (h + blocks - 1) / blocks));
    /* as dgrad_items lays out its scratch */
    lp = fxnn_round_up((f.rows + 2 + s - 1) / s * f.ow, isa->nr);
    rc = fxnn_parallel(isa->dgrad, &f, b * ((h + f.rows - 1) / f.rows),
                       ((size_t)(FXNN_NUM_KERNELS * isa->mr + n) * lp + 6 * (size_t)w + 2) * sizeof(float), threads);
    fxnn_release(&f);
    return (int)rc;
}

/* ---- channels_last: x, dx (B, H, W, M), y, dy (B, Ho, Wo, N) ---- */

/* Output pixels per block (a multiple of `rows`, the tiles' rows), so that
 * a block's fixed stage, 5M floats a pixel, stays within about 128 KiB. */
static long fxnn_nh_block(long c5, long rows)
{
    return fxnn_max(rows, fxnn_min(256, 32768 / c5) / rows * rows);
}

/* W' (5M x ld), row k M + m = row 5m + k of W, columns past N zero; or its
 * transpose (N x ld) when `transposed`. NULL when out of memory. */
static float *fxnn_nh_weights(const float *weight, long m, long n, long ld, int transposed)
{
    float *a = (float *)calloc((size_t)(transposed ? n : FXNN_NUM_KERNELS * m) * ld, sizeof(float));
    long c, k, nn;
    if (a)
        for (c = 0; c < m; c++)
            for (k = 0; k < FXNN_NUM_KERNELS; k++)
                for (nn = 0; nn < n; nn++)
                    a[transposed ? nn * ld + k * m + c : (k * m + c) * ld + nn] = weight[(FXNN_NUM_KERNELS * c + k) * n + nn];
    return a;
}

static int fxnn_nh_forward(int isa_index, const float *x, const float *weight, const float *bias, float *y,
                           long b, long m, long n, long h, long w, long s, int threads)
{
    const struct fxnn_isa *isa = fxnn_isas[isa_index];
    struct fxnn_fused f;
    long rc;
    if (!fxnn_isa_supported(isa_index))
        return FXNN_ERR_ISA;
    if (fxnn_empty(b, m, n, h, w))
        return 0;
    if ((rc = fxnn_setup(&f, isa, b, m, n, h, w, s)) != 0)
        return (int)rc;
    f.x = x; f.bias = bias; f.y = y;
    f.npad = fxnn_round_up(n, 2 * isa->vw);
    f.block = fxnn_nh_block(f.c5, 3 * isa->nh_mr);
    f.a = fxnn_nh_weights(weight, m, n, f.npad, 0);
    if (!f.a) {
        fxnn_release(&f);
        return FXNN_ERR_MEMORY;
    }
    rc = fxnn_parallel(isa->nh_forward, &f, (b * f.ohw + f.block - 1) / f.block,
                       (size_t)f.block * f.c5 * sizeof(float), threads);
    fxnn_release(&f);
    return (int)rc;
}

static int fxnn_nh_wgrad(int isa_index, const float *x, const float *dy, float *dw, float *dbias,
                         long b, long m, long n, long h, long w, long s, int threads)
{
    const struct fxnn_isa *isa = fxnn_isas[isa_index];
    struct fxnn_fused f;
    long g, c, k, nn, rc;
    if (!fxnn_isa_supported(isa_index))
        return FXNN_ERR_ISA;
    if (fxnn_wgrad_empty(b, m, n, h, w, dw, dbias, sizeof(float)))
        return 0;
    if ((rc = fxnn_setup(&f, isa, b, m, n, h, w, s)) != 0)
        return (int)rc;
    f.x = x; f.dy = dy;
    f.block = fxnn_nh_block(f.c5, 3 * isa->nh_mr);
    f.groups = fxnn_wgrad_groups(b * f.ohw, f.c5, n);
    f.partial = (float *)malloc((size_t)f.groups * f.c5 * n * sizeof(float));
    f.partial_bias = (float *)malloc((size_t)f.groups * n * sizeof(float));
    if (!f.partial || !f.partial_bias) {
        fxnn_release(&f);
        return FXNN_ERR_MEMORY;
    }
    rc = fxnn_parallel(isa->nh_wgrad, &f, f.groups, (size_t)f.block * f.c5 * sizeof(float), threads);
    if (rc == 0) {
        int by_n = FXNN_NH_WGRAD_BY_N(&f, isa->vw);
        for (c = 0; c < m; c++)
            for (k = 0; k < FXNN_NUM_KERNELS; k++)
                for (nn = 0; nn < n; nn++) {
                    float sum = 0.0f;
                    for (g = 0; g < f.groups; g++)
                        sum += f.partial[g * f.c5 * n + (by_n ? nn * f.c5 + k * m + c : (k * m + c) * n + nn)];
                    dw[(FXNN_NUM_KERNELS * c + k) * n + nn] = sum;
                }
        if (dbias)
            for (nn = 0; nn < n; nn++) {
                float sum = 0.0f;
                for (g = 0; g < f.groups; g++) sum += f.partial_bias[g * n + nn];
                dbias[nn] = sum;
            }
    }
    fxnn_release(&f);
    return (int)rc;
}

/* Output rows a band of the channels_last input gradient: at least 4 tiles
 * of mr pixels and at most 256 KiB of dZ; within that, the fewest rows (up
 * to 4x the least) whose pixels fill whole tiles, or the whole image, as
 * the band's last tile computes mr rows however many are real. */
static long fxnn_nh_dgrad_rows(long oh, long ow, long npad, long mr)
{
    long cap = fxnn_max(1, 65536 / (ow * npad)), least = fxnn_max(1, fxnn_min((4 * mr + ow - 1) / ow, cap)), rows;
    for (rows = least; rows <= fxnn_min(cap, 4 * least); rows++)
        if ((rows * ow) % mr == 0 || rows >= oh)
            return rows;
    return least;
}

static int fxnn_nh_dgrad(int isa_index, const float *dy, const float *weight, float *dx,
                         long b, long m, long n, long h, long w, long s, int threads)
{
    const struct fxnn_isa *isa = fxnn_isas[isa_index];
    struct fxnn_fused f;
    long rc;
    if (!fxnn_isa_supported(isa_index))
        return FXNN_ERR_ISA;
    if (fxnn_dgrad_empty(b, m, n, h, w, dx, sizeof(float)))
        return 0;
    if ((rc = fxnn_setup(&f, isa, b, m, n, h, w, s)) != 0)
        return (int)rc;
    f.dy = dy; f.dx = dx;
    f.npad = fxnn_round_up(f.c5, isa->vw);
    f.a = fxnn_nh_weights(weight, m, n, f.npad, 1);
    if (!f.a) {
        fxnn_release(&f);
        return FXNN_ERR_MEMORY;
    }
    f.rows = fxnn_nh_dgrad_rows(f.oh, f.ow, f.npad, isa->nh_mr);
    /* scratch: a band's dZ, and a vector past it that the last channels'
     * loads may read (their lanes past M unused) */
    rc = fxnn_parallel(isa->nh_dgrad, &f, b, ((size_t)f.rows * f.ow * f.npad + isa->vw) * sizeof(float), threads);
    fxnn_release(&f);
    return (int)rc;
}

/* The CPU time of the calling thread: what a thread computed in it does not
 * depend on how long other tenants of a shared machine held its core. */
static double fxnn_thread_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- peaks, by each thread's own CPU time ---- */

struct fxnn_peak { fxnn_peak_loop loop; long iterations; double rate[FXNN_MAX_THREADS]; };

static void fxnn_peak_items(void *arg, long first, long last, void *scratch)
{
    struct fxnn_peak *p = (struct fxnn_peak *)arg;
    (void)scratch;
    for (; first < last; first++) {
        double t0 = fxnn_thread_seconds(), flops = p->loop(p->iterations), t = fxnn_thread_seconds() - t0;
        p->rate[first] = flops / (t > 1e-9 ? t : 1e-9);
    }
}

/* The throughput of `threads` threads each running `loop` for about
 * `seconds` of its own CPU time, in GFLOP/s: the sum of the threads' rates,
 * each measured in its own CPU time (CLOCK_THREAD_CPUTIME_ID), so that time
 * a thread spent descheduled on a shared machine does not count. The
 * iterations are calibrated on one thread first. Negative on error. */
static double fxnn_loop_peak(fxnn_peak_loop loop, int threads, double seconds)
{
    struct fxnn_peak p;
    double t0, t, sum = 0;
    int i;
    if (threads < 1) threads = 1;
    if (threads > FXNN_MAX_THREADS) threads = FXNN_MAX_THREADS;
    p.loop = loop;
    p.iterations = 100;
    for (;;) {
        t0 = fxnn_thread_seconds();
        loop(p.iterations);
        t = fxnn_thread_seconds() - t0;
        if (t > 0.02 || p.iterations > (1L << 40)) break;
        p.iterations *= 4;
    }
    p.iterations = (long)((double)p.iterations * seconds / (t > 1e-9 ? t : 1e-9)) + 1;
    if (fxnn_parallel(fxnn_peak_items, &p, threads, 0, threads))
        return FXNN_ERR_MEMORY;
    for (i = 0; i < threads; i++) sum += p.rate[i];
    return sum * 1e-9;
}

/* The FMA throughput of the ISA's widest independent FMAs (fxnn_loop_peak). */
static double fxnn_fma_peak(int isa_index, int threads, double seconds)
{
    if (!fxnn_isa_supported(isa_index))
        return FXNN_ERR_ISA;
    return fxnn_loop_peak(fxnn_isas[isa_index]->fma_loop, threads, seconds);
}

#endif /* FXNN_FUSED_CPU_C */
