/* What follows every conv layer of the fxnn network, in one pass each way:
 * ReLU, inverted dropout, 2x2 max pooling (stride 2, an odd last row or
 * column dropped), for float32 planes of (H, W).
 *
 *   forward:  out[i][j] = max over the window of h,  h = max(y, 0) * s
 *   backward: gy = g[window] * [h == out[window]] * s * [y > 0]
 *
 * with s = scale where the uint16 dropout draw is at least `threshold` and 0
 * where it is below (models/dropout.py), or s = 1 without a mask. Every
 * element equal to its window's maximum gets the window's gradient, as in
 * PyTensor and Theano. The reference, in torch ops, is in
 * models/torch/block.py, the caller; the Python binding is in
 * kernels/fixed_cpu_module.c. Threads over planes (fxnn_parallel).
 */
#ifndef FXNN_BLOCK_CPU_C
#define FXNN_BLOCK_CPU_C

#include <stdint.h>

#include "fixed_cpu.c"

struct fxnn_block {
    const float *y, *out, *g;
    const uint16_t *mask;  /* NULL: no dropout */
    float *result;
    uint16_t threshold;
    float scale;
    long h, w;
};

/* Eight lanes in GCC vector extensions: AVX in the AVX clones, two SSE
 * registers in the default one. ``_u``: the same at any float's address. */
typedef float fxnn_v8f __attribute__((vector_size(32)));
typedef int fxnn_v8i __attribute__((vector_size(32)));
typedef float fxnn_v8f_u __attribute__((vector_size(32), aligned(4), may_alias));
typedef uint16_t fxnn_v8h_u __attribute__((vector_size(16), aligned(2), may_alias));
typedef uint16_t fxnn_v8h __attribute__((vector_size(16)));

/* a where the int lanes of m are -1, b where they are 0 */
#define fxnn_select(m, a, b) ((fxnn_v8f)(((m) & (fxnn_v8i)(a)) | (~(m) & (fxnn_v8i)(b))))

/* Rows in the scratch are padded to a whole number of 16 floats, so the vector
 * loops may run over their ends; the caller's rows are not, and their last
 * n % 8 elements go through 8-lane copies (fxnn_tail_*): every element takes
 * the same branch-free arithmetic, as a scalar loop of ternaries on random
 * signs and dropout draws costs a mispredicted branch an element. */
#define FXNN_ROW_PAD(w) (((w) + 15) / 16 * 16 + 16)

static inline fxnn_v8f fxnn_tail_load(const float *p, long n)
{
    fxnn_v8f v = {0};
    memcpy(&v, p, n * sizeof(float));
    return v;
}

static inline void fxnn_tail_store(float *p, fxnn_v8f v, long n) { memcpy(p, &v, n * sizeof(float)); }

/* The even and odd lanes of the 16 floats a, b (GCC's and Clang's spellings) */
#if defined(__clang__) || __GNUC__ >= 12
#define FXNN_EVEN(a, b) __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14)
#define FXNN_ODD(a, b) __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15)
#else
#define FXNN_EVEN(a, b) __builtin_shuffle(a, b, ((fxnn_v8i){0, 2, 4, 6, 8, 10, 12, 14}))
#define FXNN_ODD(a, b) __builtin_shuffle(a, b, ((fxnn_v8i){1, 3, 5, 7, 9, 11, 13, 15}))
#endif

/* max(a, b) lane by lane, keeping a NaN of a, as torch.maximum */
static inline fxnn_v8f fxnn_vmax_nan(fxnn_v8f a, fxnn_v8f b) { return fxnn_select((a > b) | (a != a), a, b); }

/* relu(v) * s and s for 8 lanes: relu as torch's (NaN stays NaN), s = scale
 * where the draw is >= threshold, 0 below (m: the draws; no mask: s = 1). */
static inline fxnn_v8f fxnn_relu_scaled(fxnn_v8f v, const fxnn_v8h *m, fxnn_v8i vthreshold, fxnn_v8f vscale,
                                        fxnn_v8f *s)
{
    const fxnn_v8f zero = {0};
    *s = m ? fxnn_select(__builtin_convertvector(*m, fxnn_v8i) >= vthreshold, vscale, zero) : zero + 1.0f;
    return fxnn_select((v > zero) | (v != v), v, zero) * *s;
}

/* h = relu(y) * s of one row of n elements into hrow, the factors s into
 * srow (both scratch rows); s = scale where mask >= threshold, 0 below, 1
 * without a mask. */
FXNN_CLONES static void fxnn_block_row(const float *y, const uint16_t *mask, uint16_t threshold, float scale,
                                       long n, float *hrow, float *srow)
{
    const fxnn_v8f vscale = (fxnn_v8f){0} + scale;
    const fxnn_v8i vthreshold = (fxnn_v8i){0} + (int)threshold;
    fxnn_v8f s;
    fxnn_v8h m = {0};
    long j = 0;
    for (; j + 8 <= n; j += 8) {
        if (mask)
            m = *(const fxnn_v8h_u *)(mask + j);
        *(fxnn_v8f_u *)(hrow + j) = fxnn_relu_scaled(*(const fxnn_v8f_u *)(y + j), mask ? &m : NULL, vthreshold,
                                                     vscale, &s);
        *(fxnn_v8f_u *)(srow + j) = s;
    }
    if (j < n) {
        if (mask)
            memcpy(&m, mask + j, (n - j) * sizeof(uint16_t));
        *(fxnn_v8f_u *)(hrow + j) = fxnn_relu_scaled(fxnn_tail_load(y + j, n - j), mask ? &m : NULL, vthreshold,
                                                     vscale, &s);
        *(fxnn_v8f_u *)(srow + j) = s;
    }
}

/* The gradient of one row: the window's (ob, gb: per input column) where
 * the element is the window's maximum and the ReLU let it through, times
 * its dropout factor. */
FXNN_CLONES static void fxnn_block_row_grad(const float *y, const float *hrow, const float *srow,
                                            const float *ob, const float *gb, long n, float *gy)
{
    const fxnn_v8f zero = {0};
    long j = 0;
    for (; j + 8 <= n; j += 8) {
        fxnn_v8f v = *(const fxnn_v8f_u *)(y + j), h = *(const fxnn_v8f_u *)(hrow + j);
        fxnn_v8f o = *(const fxnn_v8f_u *)(ob + j), g = *(const fxnn_v8f_u *)(gb + j);
        fxnn_v8f s = *(const fxnn_v8f_u *)(srow + j);
        *(fxnn_v8f_u *)(gy + j) = fxnn_select((v > zero) & (h == o), g * s, zero);
    }
    if (j < n) {
        fxnn_v8f v = fxnn_tail_load(y + j, n - j), h = *(const fxnn_v8f_u *)(hrow + j);
        fxnn_v8f o = *(const fxnn_v8f_u *)(ob + j), g = *(const fxnn_v8f_u *)(gb + j);
        fxnn_v8f s = *(const fxnn_v8f_u *)(srow + j);
        fxnn_tail_store(gy + j, fxnn_select((v > zero) & (h == o), g * s, zero), n - j);
    }
}

static void fxnn_block_h(const struct fxnn_block *k, long t, long n, float *hrow, float *srow)
{
    fxnn_block_row(k->y + t, k->mask ? k->mask + t : NULL, k->threshold, k->scale, n, hrow, srow);
}

/* Work items are planes; scratch holds 4 padded rows (FXNN_ROW_PAD). */
FXNN_CLONES static void fxnn_block_forward_planes(void *arg, long first, long last, void *scratch)
{
    const struct fxnn_block *k = (const struct fxnn_block *)arg;
    long h2 = k->h / 2, w2 = k->w / 2, p, i, j;
    float *h0 = (float *)scratch, *h1 = h0 + FXNN_ROW_PAD(k->w), *s = h1 + FXNN_ROW_PAD(k->w);
    for (p = first; p < last; p++) {
        long base = p * k->h * k->w;
        float *o = k->result + p * h2 * w2;
        for (i = 0; i < h2; i++) {
            fxnn_block_h(k, base + 2 * i * k->w, 2 * w2, h0, s);
            fxnn_block_h(k, base + (2 * i + 1) * k->w, 2 * w2, h1, s);
            for (j = 0; j < 2 * w2; j += 8)
                *(fxnn_v8f_u *)(h0 + j) = fxnn_vmax_nan(*(fxnn_v8f_u *)(h0 + j), *(fxnn_v8f_u *)(h1 + j));
            for (j = 0; j < w2; j += 8) {  /* the maxima of column pairs, 8 windows at a time */
                fxnn_v8f a = *(fxnn_v8f_u *)(h0 + 2 * j), b = *(fxnn_v8f_u *)(h0 + 2 * j + 8);
                fxnn_v8f m = fxnn_vmax_nan(FXNN_EVEN(a, b), FXNN_ODD(a, b));
                if (j + 8 <= w2)
                    *(fxnn_v8f_u *)(o + i * w2 + j) = m;
                else
                    fxnn_tail_store(o + i * w2 + j, m, w2 - j);
            }
        }
    }
}

FXNN_CLONES static void fxnn_block_backward_planes(void *arg, long first, long last, void *scratch)
{
    const struct fxnn_block *k = (const struct fxnn_block *)arg;
    long h2 = k->h / 2, w2 = k->w / 2, p, i, j, r;
    float *hrow = (float *)scratch, *srow = hrow + FXNN_ROW_PAD(k->w), *ob = srow + FXNN_ROW_PAD(k->w);
    float *gb = ob + FXNN_ROW_PAD(k->w);
    for (p = first; p < last; p++) {
        long base = p * k->h * k->w;
        const float *o = k->out + p * h2 * w2, *g = k->g + p * h2 * w2;
        float *gy = k->result + base;
        for (i = 0; i < h2; i++) {
            for (j = 0; j < w2; j++) {  /* the window's maximum and gradient, per input column */
                ob[2 * j] = ob[2 * j + 1] = o[i * w2 + j];
                gb[2 * j] = gb[2 * j + 1] = g[i * w2 + j];
            }
            for (r = 2 * i; r < 2 * i + 2; r++) {
                fxnn_block_h(k, base + r * k->w, 2 * w2, hrow, srow);
                fxnn_block_row_grad(k->y + base + r * k->w, hrow, srow, ob, gb, 2 * w2, gy + r * k->w);
                if (k->w % 2) gy[r * k->w + k->w - 1] = 0.0f;  /* the dropped column */
            }
        }
        if (k->h % 2) memset(gy + (k->h - 1) * k->w, 0, k->w * sizeof(float));  /* the dropped row */
    }
}

/* y (planes, h, w) -> out (planes, h/2, w/2); mask (planes, h, w) or NULL. */
static int fxnn_block_forward(const float *y, const uint16_t *mask, uint16_t threshold, float scale, float *out,
                              long planes, long h, long w, int threads)
{
    struct fxnn_block k;
    memset(&k, 0, sizeof(k));
    k.y = y; k.mask = mask; k.threshold = threshold; k.scale = scale; k.result = out; k.h = h; k.w = w;
    return fxnn_parallel(fxnn_block_forward_planes, &k, planes, 4 * (size_t)FXNN_ROW_PAD(w) * sizeof(float), threads);
}

/* gy (planes, h, w) from g and out (planes, h/2, w/2), y and the mask. */
static int fxnn_block_backward(const float *y, const uint16_t *mask, uint16_t threshold, float scale,
                               const float *out, const float *g, float *gy, long planes, long h, long w, int threads)
{
    struct fxnn_block k;
    memset(&k, 0, sizeof(k));
    k.y = y; k.mask = mask; k.threshold = threshold; k.scale = scale; k.out = out; k.g = g; k.result = gy;
    k.h = h; k.w = w;
    return fxnn_parallel(fxnn_block_backward_planes, &k, planes, 4 * (size_t)FXNN_ROW_PAD(w) * sizeof(float), threads);
}

#endif /* FXNN_BLOCK_CPU_C */
