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

/* max(a, b) that keeps a NaN, as torch.maximum */
static inline float fxnn_max_nan(float a, float b) { return a > b || a != a ? a : b; }

/* h = relu(y) * s of one row of n elements into hrow, the factors s into
 * srow; relu as torch's (NaN stays NaN), s = scale where mask >= threshold,
 * 0 below, 1 without a mask. */
FXNN_CLONES static void fxnn_block_row(const float *y, const uint16_t *mask, uint16_t threshold, float scale,
                                       long n, float *hrow, float *srow)
{
    const fxnn_v8f zero = {0}, one = zero + 1.0f, vscale = zero + scale;
    const fxnn_v8i vthreshold = (fxnn_v8i){0} + (int)threshold;
    long j = 0;
    for (; j + 8 <= n; j += 8) {
        fxnn_v8f v = *(const fxnn_v8f_u *)(y + j), s = one;
        fxnn_v8f r = fxnn_select((v > zero) | (v != v), v, zero);
        if (mask)
            s = fxnn_select(__builtin_convertvector(*(const fxnn_v8h_u *)(mask + j), fxnn_v8i) >= vthreshold,
                            vscale, zero);
        *(fxnn_v8f_u *)(srow + j) = s;
        *(fxnn_v8f_u *)(hrow + j) = r * s;
    }
    for (; j < n; j++) {
        float v = y[j], sj = mask ? (mask[j] >= threshold ? scale : 0.0f) : 1.0f;
        srow[j] = sj;
        hrow[j] = (v > 0.0f || v != v ? v : 0.0f) * sj;
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
    for (; j < n; j++)
        gy[j] = y[j] > 0.0f && hrow[j] == ob[j] ? gb[j] * srow[j] : 0.0f;
}

static void fxnn_block_h(const struct fxnn_block *k, long t, long n, float *hrow, float *srow)
{
    fxnn_block_row(k->y + t, k->mask ? k->mask + t : NULL, k->threshold, k->scale, n, hrow, srow);
}

/* Work items are planes; scratch holds 4 rows of W floats. */
FXNN_CLONES static void fxnn_block_forward_planes(void *arg, long first, long last, void *scratch)
{
    const struct fxnn_block *k = (const struct fxnn_block *)arg;
    long h2 = k->h / 2, w2 = k->w / 2, p, i, j;
    float *h0 = (float *)scratch, *h1 = h0 + k->w, *s = h1 + k->w;
    for (p = first; p < last; p++) {
        long base = p * k->h * k->w;
        float *o = k->result + p * h2 * w2;
        for (i = 0; i < h2; i++) {
            fxnn_block_h(k, base + 2 * i * k->w, 2 * w2, h0, s);
            fxnn_block_h(k, base + (2 * i + 1) * k->w, 2 * w2, h1, s);
            for (j = 0; j < 2 * w2; j++) h0[j] = fxnn_max_nan(h0[j], h1[j]);
            for (j = 0; j < w2; j++) o[i * w2 + j] = fxnn_max_nan(h0[2 * j], h0[2 * j + 1]);
        }
    }
}

FXNN_CLONES static void fxnn_block_backward_planes(void *arg, long first, long last, void *scratch)
{
    const struct fxnn_block *k = (const struct fxnn_block *)arg;
    long h2 = k->h / 2, w2 = k->w / 2, p, i, j, r;
    float *hrow = (float *)scratch, *srow = hrow + k->w, *ob = srow + k->w, *gb = ob + k->w;
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
    return fxnn_parallel(fxnn_block_forward_planes, &k, planes, 4 * (size_t)(w + 1) * sizeof(float), threads);
}

/* gy (planes, h, w) from g and out (planes, h/2, w/2), y and the mask. */
static int fxnn_block_backward(const float *y, const uint16_t *mask, uint16_t threshold, float scale,
                               const float *out, const float *g, float *gy, long planes, long h, long w, int threads)
{
    struct fxnn_block k;
    memset(&k, 0, sizeof(k));
    k.y = y; k.mask = mask; k.threshold = threshold; k.scale = scale; k.out = out; k.g = g; k.result = gy;
    k.h = h; k.w = w;
    return fxnn_parallel(fxnn_block_backward_planes, &k, planes, 4 * (size_t)(w + 1) * sizeof(float), threads);
}

#endif /* FXNN_BLOCK_CPU_C */
