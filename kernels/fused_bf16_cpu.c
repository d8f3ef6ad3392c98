/* The fused fxnn layer on the CPU in bfloat16: y = bias + W^T fixed(x),
 * dW = fixed(x) dY^T, dbias = sum dY, dx = adjoint_fixed(W dY), every tensor
 * bf16 in and out (uint16_t bit patterns), the same layouts as the float32
 * kernel of kernels/fused_cpu.c: x (B, M, H, W), W (5M, N) with row 5m+k,
 * y and dY (B, N, Ho, Wo), all C-contiguous, at stride s as in fused_cpu.c.
 *
 * The fixed stage is computed in float32 from the bf16 input (exactly) and
 * rounded once to bf16 as it is packed, straight into the operand layout of
 * the matrix instruction (kernels/fused_bf16_isa.h); products accumulate in
 * float32; outputs are rounded to nearest even once, from float32.
 *
 * Instruction sets, best first (fxb_isas), chosen at run time by CPUID:
 *   amx                 TDPBF16PS on 2x2 C tiles (AMX-TILE, AMX-BF16; the
 *                       packing in AVX-512 with AVX512-BF16 conversions)
 *   avx512bf16          VDPBF16PS reading the same packed operands
 *   amx_standin         the amx build's packing and blocking in plain C,
 *   avx512bf16_standin  each instruction emulated exactly as defined
 * The stand-ins are always built and listed last, so never chosen as the
 * best: they let any CPU check the tile and pair index arithmetic. The real
 * ones are compiled with function target attributes (no special flags) where
 * the compiler can (GCC >= 11, clang >= 12 for AMX) and run where CPUID, XCR0
 * and (for AMX) Linux's arch_prctl permission say so.
 *
 * Numbers do not depend on the thread count: each output element is computed
 * by one micro-kernel call in a fixed order, and the weight gradient's
 * partial sums are over pixel groups fixed by the problem size, added in
 * order. Included by kernels/fixed_cpu_module.c only (not by fused_cpu.c,
 * which PyTensor compiles on its own).
 */
#ifndef FXNN_FUSED_BF16_CPU_C
#define FXNN_FUSED_BF16_CPU_C

#include "fused_cpu.c"

#include <stdint.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if FXNN_X86
#include <cpuid.h>
#endif

/* Which real instruction sets this compiler builds (-DFXB_HAVE_AMX=0 or
 * -DFXB_HAVE_AVX512BF16=0 leave them out, as an older compiler would). */
#ifndef FXB_HAVE_AMX
#if FXNN_X86 && ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define FXB_HAVE_AMX 1
#else
#define FXB_HAVE_AMX 0
#endif
#endif
#ifndef FXB_HAVE_AVX512BF16
#if FXNN_X86 && ((defined(__clang__) && __clang_major__ >= 9) || (!defined(__clang__) && __GNUC__ >= 10))
#define FXB_HAVE_AVX512BF16 1
#else
#define FXB_HAVE_AVX512BF16 0
#endif
#endif

#define FXB_AMX 1
#define FXB_DP 2
#define FXB_DGRAD_ROWS 160           /* input gradient: fixed-stage rows (32 input channels) per pass */
#ifndef FXB_DGRAD_BLOCK_BYTES
#define FXB_DGRAD_BLOCK_BYTES (1024 * 1024)  /* input gradient: scratch and packed dY of an item, at most */
#endif
#ifndef FXB_WGRAD_SPAN
#define FXB_WGRAD_SPAN 256           /* weight gradient: pixels packed at a time (a multiple of 32) */
#endif
#define FXB_WGRAD_GROUPS 16
#define FXB_WGRAD_GROUP_PIXELS 2048
#define FXB_WGRAD_PARTIAL_BYTES (64 * 1024 * 1024)

typedef int fxb_i32a __attribute__((may_alias, aligned(2)));

static inline float fxb_float(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* float32 to bf16, rounded to nearest even; NaN stays a (quiet) NaN. */
static inline uint16_t fxb_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* One call: tensors, sizes and blocking (see fused_bf16_isa.h). */
struct fxb_fused {
    const uint16_t *x, *weight, *bias, *dy;
    uint16_t *y, *dw, *dbias, *dx;
    long b, m, n, h, w, hw, c5;  /* h, w: the input's */
    long s, oh, ow, ohw, hwp;    /* stride; the output's size; its pixels rounded up to 16 */
    long kpad;        /* forward: pair rows of the packed fixed stage, a multiple of 16 */
    long kchunks;     /* forward: kpad / 16 */
    long npad;        /* N rounded up to 32 */
    long nchunks;     /* input gradient: npad / 32 */
    long cpad;        /* 5M rounded up to 32 */
    const uint16_t *a;  /* the packed weights */
    const int *mask_left, *mask_right;
    long groups, span;  /* weight gradient */
    float *partial, *partial_bias;
    long rows;        /* input gradient: image rows per item */
};

struct fxb_isa {
    const char *name;
    fxnn_items_fn forward, wgrad, dgrad;
    fxnn_peak_loop peak_loop;
};

/* The AMX tile configuration (palette 1). */
struct fxb_tilecfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* The stand-ins pass 64-byte vectors between inlined functions built without
 * AVX-512: GCC notes the ABI, which no caller outside this file sees (GCC
 * reports it at the end of the translation unit, so it stays off). */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#if FXB_HAVE_AMX
#define FXB_ISA amx
#define FXB_KIND FXB_AMX
#define FXB_REAL 1
#define FXB_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bf16,avx512bw,avx512vl,avx2,fma")))
#include "fused_bf16_isa.h"
#endif

#if FXB_HAVE_AVX512BF16
#define FXB_ISA avx512bf16
#define FXB_KIND FXB_DP
#define FXB_REAL 1
#define FXB_TARGET __attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl,avx2,fma")))
#include "fused_bf16_isa.h"
#endif

#define FXB_ISA amx_standin
#define FXB_KIND FXB_AMX
#define FXB_REAL 0
#define FXB_TARGET
#include "fused_bf16_isa.h"

#define FXB_ISA avx512bf16_standin
#define FXB_KIND FXB_DP
#define FXB_REAL 0
#define FXB_TARGET
#include "fused_bf16_isa.h"

/* Best first; the stand-ins last. */
static const struct fxb_isa *const fxb_isas[] = {
#if FXB_HAVE_AMX
    &isa_amx,
#endif
#if FXB_HAVE_AVX512BF16
    &isa_avx512bf16,
#endif
    &isa_amx_standin, &isa_avx512bf16_standin,
};
#define FXB_NUM_ISAS ((int)(sizeof(fxb_isas) / sizeof(fxb_isas[0])))

/* What CPUID, XCR0 and the OS say: bit 0 AVX-512 (F, BW, VL) with AVX512-BF16
 * and its register state enabled, bit 1 AMX-TILE and AMX-BF16 with tile state
 * enabled and permitted to this process. */
__attribute__((unused)) static int fxb_cpu_features(void)
{
    static int features = -1;
    if (features >= 0)
        return features;
    features = 0;
#if FXNN_X86
    {
        unsigned a, b, c, d, a1, b1, c1, d1;
        unsigned long long xcr0 = 0;
        if (__get_cpuid_max(0, NULL) < 7 || !__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27)))  /* OSXSAVE */
            return features;
        __asm__ volatile("xgetbv" : "=a"(a1), "=d"(d1) : "c"(0));
        xcr0 = ((unsigned long long)d1 << 32) | a1;
        __cpuid_count(7, 0, a, b, c, d);
        __cpuid_count(7, 1, a1, b1, c1, d1);
        if ((xcr0 & 0xe6) == 0xe6 && (b & (1u << 16)) && (b & (1u << 30)) && (b & (1u << 31)) && (a1 & (1u << 5)))
            features |= 1;
        if ((features & 1) && (d & (1u << 22)) && (d & (1u << 24)) && ((xcr0 >> 17) & 3) == 3) {
#if defined(__linux__) && defined(SYS_arch_prctl)
            /* ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA: once per process */
            if (syscall(SYS_arch_prctl, 0x1023, 18) == 0)
                features |= 2;
#endif
        }
    }
#endif
    return features;
}

static int fxb_isa_supported(int i)
{
    if (i < 0 || i >= FXB_NUM_ISAS)
        return 0;
#if FXB_HAVE_AMX
    if (fxb_isas[i] == &isa_amx)
        return (fxb_cpu_features() & 3) == 3;
#endif
#if FXB_HAVE_AVX512BF16
    if (fxb_isas[i] == &isa_avx512bf16)
        return fxb_cpu_features() & 1;
#endif
    return 1;
}

/* The index of a name (or -1); whether it is supported is fxb_isa_supported's. */
static int fxb_isa_find(const char *name)
{
    int i;
    for (i = 0; i < FXB_NUM_ISAS; i++)
        if (strcmp(fxb_isas[i]->name, name) == 0)
            return i;
    return -1;
}

static int fxb_setup(struct fxb_fused *f, long b, long m, long n, long h, long w, long s)
{
    memset(f, 0, sizeof(*f));
    if (h * w > 2147483647L - 64)
        return FXNN_ERR_SIZE;
    f->b = b; f->m = m; f->n = n; f->h = h; f->w = w; f->hw = h * w; f->c5 = FXNN_NUM_KERNELS * m;
    f->s = s; f->oh = fxnn_out_size(h, s); f->ow = fxnn_out_size(w, s); f->ohw = f->oh * f->ow;
    f->hwp = fxnn_round_up(f->ohw, 16);
    f->kpad = fxnn_round_up(FXNN_NUM_KERNELS * ((m + 1) / 2), 16);
    f->kchunks = f->kpad / 16;
    f->npad = fxnn_round_up(n, 32);
    f->nchunks = f->npad / 32;
    f->cpad = fxnn_round_up(f->c5, 32);
    return fxnn_row_masks(w, 16, &f->mask_left, &f->mask_right);
}

static void fxb_release(struct fxb_fused *f)
{
    free((void *)f->mask_left);
    free((void *)f->a);
    free(f->partial);
    free(f->partial_bias);
}

static void *fxb_alloc(size_t bytes)
{
    void *p = NULL;
    return posix_memalign(&p, 64, bytes ? bytes : 64) == 0 ? p : NULL;
}

/* y (B, N, Ho, Wo) = bias + W^T fixed(x) at stride s; bias may be NULL. */
static int fxb_fused_forward(int isa_index, const uint16_t *x, const uint16_t *weight, const uint16_t *bias, uint16_t *y,
                             long b, long m, long n, long h, long w, long s, int threads)
{
    struct fxb_fused f;
    uint16_t *a;
    long nn, p, k, t, rc;
    if (!fxb_isa_supported(isa_index))
        return FXNN_ERR_ISA;
    if (fxnn_empty(b, m, n, h, w))
        return 0;
    if ((rc = fxb_setup(&f, b, m, n, h, w, s)) != 0)
        return (int)rc;
    f.x = x; f.weight = weight; f.bias = bias; f.y = y;
    /* W^T: row n, K index 2P + t with pair row P = 5 mp + k and channel m = 2 mp + t;
     * 16-row block nb, chunk ch at (nb * kchunks + ch) * 512 */
    a = (uint16_t *)fxb_alloc((size_t)f.npad * f.kpad * 2 * sizeof(uint16_t));
    f.a = a;
    if (!a) {
        fxb_release(&f);
        return FXNN_ERR_MEMORY;
    }
    for (nn = 0; nn < f.npad; nn++)
        for (p = 0; p < f.kpad; p++)
            for (t = 0; t < 2; t++) {
                long mp = p / FXNN_NUM_KERNELS, ch = 2 * mp + t, kk = 2 * p + t;
                k = p % FXNN_NUM_KERNELS;
                a[(nn / 16 * f.kchunks + kk / 32) * 512 + (nn % 16) * 32 + kk % 32] =
                    nn < n && ch < m && p < FXNN_NUM_KERNELS * ((m + 1) / 2) ? weight[(FXNN_NUM_KERNELS * ch + k) * n + nn] : 0;
            }
    rc = fxnn_parallel(fxb_isas[isa_index]->forward, &f, (b * f.hwp / 16 + 1) / 2,
                       2 * (size_t)f.kpad * 32 * sizeof(uint16_t) + 32 * 32 * sizeof(float), threads);
    fxb_release(&f);
    return (int)rc;
}

/* dw (5M, N) = fixed(x) . dY over batch and the output's pixels (stride s);
 * dbias (N,) = sums of dY (skipped when NULL). */
static int fxb_fused_wgrad(int isa_index, const uint16_t *x, const uint16_t *dy, uint16_t *dw, uint16_t *dbias,
                           long b, long m, long n, long h, long w, long s, int threads)
{
    struct fxb_fused f;
    long g, c, j, rc, chunks;
    if (!fxb_isa_supported(isa_index))
        return FXNN_ERR_ISA;
    if (fxnn_wgrad_empty(b, m, n, h, w, dw, dbias, sizeof(uint16_t)))
        return 0;
    if ((rc = fxb_setup(&f, b, m, n, h, w, s)) != 0)
        return (int)rc;
    f.x = x; f.dy = dy;
    chunks = (b * f.hwp + 31) / 32;
    for (f.groups = 1; 2 * f.groups <= FXB_WGRAD_GROUPS && 2 * f.groups * FXB_WGRAD_GROUP_PIXELS <= b * f.hwp
                       && 2 * f.groups <= chunks
                       && 2 * f.groups * (long)sizeof(float) * f.cpad * f.npad <= FXB_WGRAD_PARTIAL_BYTES; )
        f.groups *= 2;
    f.span = FXB_WGRAD_SPAN;
    f.partial = (float *)fxb_alloc((size_t)f.groups * f.cpad * f.npad * sizeof(float));
    f.partial_bias = (float *)fxb_alloc((size_t)f.groups * n * sizeof(float));
    if (!f.partial || !f.partial_bias) {
        fxb_release(&f);
        return FXNN_ERR_MEMORY;
    }
    rc = fxnn_parallel(fxb_isas[isa_index]->wgrad, &f, f.groups,
                       (size_t)(f.cpad + f.npad) * f.span * sizeof(uint16_t), threads);
    if (rc == 0) {  /* the groups' sums added in group order (into group 0's), then rounded */
        long size = f.cpad * f.npad;
        for (g = 1; g < f.groups; g++) {
            const float *src = f.partial + g * size;
            for (j = 0; j < size; j++) f.partial[j] += src[j];
            for (j = 0; j < n; j++) f.partial_bias[j] += f.partial_bias[g * n + j];
        }
        for (c = 0; c < f.c5; c++)
            for (j = 0; j < n; j++) dw[c * n + j] = fxb_bf16(f.partial[c * f.npad + j]);
        for (j = 0; dbias && j < n; j++) dbias[j] = fxb_bf16(f.partial_bias[j]);
    }
    fxb_release(&f);
    return (int)rc;
}

/* dx (B, M, H, W) = adjoint of the fixed stage at stride s applied to W dY
 * (B, N, Ho, Wo); h, w are the input's. */
static int fxb_fused_dgrad(int isa_index, const uint16_t *dy, const uint16_t *weight, uint16_t *dx,
                           long b, long m, long n, long h, long w, long s, int threads)
{
    struct fxb_fused f;
    uint16_t *a;
    long c, k, blocks, lp, lu, rc, per_row;
    if (!fxb_isa_supported(isa_index))
        return FXNN_ERR_ISA;
    if (fxnn_dgrad_empty(b, m, n, h, w, dx, sizeof(uint16_t)))
        return 0;
    if ((rc = fxb_setup(&f, b, m, n, h, w, s)) != 0)
        return (int)rc;
    f.dy = dy; f.weight = weight; f.dx = dx;
    /* W: row c, K index n; 16-row block cb, chunk ch at (cb * nchunks + ch) * 512 */
    a = (uint16_t *)fxb_alloc((size_t)f.cpad * f.npad * sizeof(uint16_t));
    f.a = a;
    if (!a) {
        fxb_release(&f);
        return FXNN_ERR_MEMORY;
    }
    for (c = 0; c < f.cpad; c++)
        for (k = 0; k < f.npad; k++)
            a[(c / 16 * f.nchunks + k / 32) * 512 + (c % 16) * 32 + k % 32] = c < f.c5 && k < n ? weight[c * n + k] : 0;
    /* rows per item: whole images, unless the scratch and packed dY outgrow
     * FXB_DGRAD_BLOCK_BYTES or there are too few images for the threads */
    per_row = ((long)sizeof(float) * FXB_DGRAD_ROWS + (long)sizeof(uint16_t) * f.npad) * w;
    f.rows = fxnn_max(1, fxnn_min(h, FXB_DGRAD_BLOCK_BYTES / per_row - 2));
    blocks = (4L * threads + b - 1) / b;
    if (blocks > 1)
        f.rows = fxnn_max(1, fxnn_min(f.rows, (h + blocks - 1) / blocks));
    /* as dgrad_items lays out its scratch */
    lp = fxnn_round_up((f.rows + 2 + s - 1) / s * f.ow, 32);
    lu = fxnn_round_up((f.rows + 2) * w, 32);
    rc = fxnn_parallel(fxb_isas[isa_index]->dgrad, &f, b * ((h + f.rows - 1) / f.rows),
                       ((size_t)FXB_DGRAD_ROWS * lp + 2 * ((size_t)lu + 48)) * sizeof(float)
                       + (size_t)lp / 16 * (f.npad / 2) * 32 * sizeof(uint16_t), threads);
    fxb_release(&f);
    return (int)rc;
}

/* The bf16 matrix throughput of independent TDPBF16PS (amx) or VDPBF16PS
 * (avx512bf16), 2 flops per multiply-add (fxnn_loop_peak). */
static double fxb_matrix_peak(int isa_index, int threads, double seconds)
{
    if (!fxb_isa_supported(isa_index))
        return FXNN_ERR_ISA;
    return fxnn_loop_peak(fxb_isas[isa_index]->peak_loop, threads, seconds);
}

/* The stand-ins' emulation of one instruction, for the tests: "tdpbf16ps"
 * c (16x16) += a (16 rows x 32) b (16 pair rows x 32); "vdpbf16ps" c (16) +=
 * a (32) . b (32) pairwise. 0, or -1 for an unknown name. */
static int fxb_emulate(const char *op, const uint16_t *a, const uint16_t *b, float *c)
{
    if (strcmp(op, "tdpbf16ps") == 0) {
        tdp_emulated_amx_standin(c, 16, a, b);
        return 0;
    }
    if (strcmp(op, "vdpbf16ps") == 0) {
        vdp_emulated_avx512bf16_standin(c, a, b);
        return 0;
    }
    return -1;
}

#endif /* FXNN_FUSED_BF16_CPU_C */
