/* The fixed stage and its adjoint on the CPU, one pass over memory each.
 *
 * Plain C99 with no Python in it: kernels/fixed_cpu_module.c wraps it for
 * PyTorch (built by `pip install`), and models/pytensor_fixed_op.py pastes it
 * into a PyTensor C op. The numpy references they are tested against are
 * models.fixed_kernels.fixed_stage_reference and fixed_stage_grad_reference.
 *
 * Layout (models/fixed_kernels.py): a plane is one (H, W) channel of one image;
 * input plane p yields the five output planes 5p+k, k = smooth, sobel_y,
 * sobel_x, cross, identity, each the zero-padded 3x3 cross-correlation.
 *
 * Forward, per output row i: the two vertical passes of rows i-1..i+1
 * (s = [1,2,1], d = [1,0,-1]) go into two zero-bordered row buffers, then the
 * four horizontal passes read those buffers, so each input row is read about
 * three times from cache and each output written once.
 *
 * Adjoint: correlation with each kernel flipped in both axes. Kernels sharing
 * a column filter are summed after their horizontal pass (rows A from the
 * smooth column, B from the diff column), then one vertical pass of each:
 *   dx[i] = A[i-1] + 2 A[i] + A[i+1] - B[i-1] + B[i+1] + g_identity[i]
 * with A = hs(g0) + hd'(g2), B = hs(g1) + hd'(g3), hs = [1,2,1], hd' = [-1,0,1].
 *
 * Threads: planes are split into contiguous ranges, one pthread each.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define FXNN_NUM_KERNELS 5

/* Vector widths the compiler may pick at load time (glibc ifunc); the loops
 * are written so that GCC vectorises them at -O3. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FXNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FXNN_CLONES
#endif

#define FXNN_DEFINE(T, SUFFIX)                                                             \
/* Vertical passes of input row i into s[1..w], d[1..w]; rows outside are zero. */        \
static inline void fxnn_vertical_##SUFFIX(const T *x, long h, long w, long i, T *s, T *d)        \
{                                                                                         \
    const T *mid = x + i * w;                                                             \
    const T *up = i > 0 ? mid - w : NULL, *down = i + 1 < h ? mid + w : NULL;             \
    long j;                                                                               \
    if (up && down)                                                                       \
        for (j = 0; j < w; j++) { s[j + 1] = up[j] + 2 * mid[j] + down[j]; d[j + 1] = up[j] - down[j]; } \
    else if (up)                                                                          \
        for (j = 0; j < w; j++) { s[j + 1] = up[j] + 2 * mid[j]; d[j + 1] = up[j]; }      \
    else if (down)                                                                        \
        for (j = 0; j < w; j++) { s[j + 1] = 2 * mid[j] + down[j]; d[j + 1] = -down[j]; } \
    else                                                                                  \
        for (j = 0; j < w; j++) { s[j + 1] = 2 * mid[j]; d[j + 1] = 0; }                  \
}                                                                                         \
                                                                                          \
FXNN_CLONES static void fxnn_forward_planes_##SUFFIX(const T *x, T *out, long first,      \
                                                     long last, long h, long w, T *buf)   \
{                                                                                         \
    T *s = buf, *d = buf + (w + 2);                                                       \
    long hw = h * w, p, i, j;                                                             \
    s[0] = s[w + 1] = d[0] = d[w + 1] = 0;                                                \
    for (p = first; p < last; p++) {                                                      \
        const T *xp = x + p * hw;                                                         \
        T *o = out + p * FXNN_NUM_KERNELS * hw;                                           \
        for (i = 0; i < h; i++) {                                                         \
            T *o0 = o + i * w, *o1 = o0 + hw, *o2 = o1 + hw, *o3 = o2 + hw, *o4 = o3 + hw; \
            fxnn_vertical_##SUFFIX(xp, h, w, i, s, d);                                    \
            for (j = 0; j < w; j++) {                                                     \
                o0[j] = s[j] + 2 * s[j + 1] + s[j + 2];                                   \
                o1[j] = d[j] + 2 * d[j + 1] + d[j + 2];                                   \
                o2[j] = s[j] - s[j + 2];                                                  \
                o3[j] = d[j] - d[j + 2];                                                  \
            }                                                                             \
            memcpy(o4, xp + i * w, w * sizeof(T));                                        \
        }                                                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* A and B of row i (0 <= i < h) of plane g into a[0..w-1], b[0..w-1]. */                \
FXNN_CLONES static void fxnn_horizontal_##SUFFIX(const T *g, long h, long w, long i, T *a, T *b) \
{                                                                                         \
    long hw = h * w, j;                                                                   \
    const T *g0 = g + i * w, *g1 = g0 + hw, *g2 = g1 + hw, *g3 = g2 + hw;                 \
    if (w == 1) { a[0] = 2 * g0[0]; b[0] = 2 * g1[0]; return; }                           \
    a[0] = 2 * g0[0] + g0[1] + g2[1];                                                     \
    b[0] = 2 * g1[0] + g1[1] + g3[1];                                                     \
    for (j = 1; j < w - 1; j++) {                                                         \
        a[j] = g0[j - 1] + 2 * g0[j] + g0[j + 1] - g2[j - 1] + g2[j + 1];                 \
        b[j] = g1[j - 1] + 2 * g1[j] + g1[j + 1] - g3[j - 1] + g3[j + 1];                 \
    }                                                                                     \
    a[w - 1] = g0[w - 2] + 2 * g0[w - 1] - g2[w - 2];                                     \
    b[w - 1] = g1[w - 2] + 2 * g1[w - 1] - g3[w - 2];                                     \
}                                                                                         \
                                                                                          \
/* buf holds 6 rows of w: A and B of rows i-1, i, i+1, rotated as i advances. */          \
FXNN_CLONES static void fxnn_adjoint_planes_##SUFFIX(const T *g, T *dx, long first,       \
                                                     long last, long h, long w, T *buf)   \
{                                                                                         \
    long hw = h * w, p, i, j;                                                             \
    for (p = first; p < last; p++) {                                                     \
        const T *gp = g + p * FXNN_NUM_KERNELS * hw;                                      \
        T *a[3] = {buf, buf + w, buf + 2 * w}, *b[3] = {buf + 3 * w, buf + 4 * w, buf + 5 * w}; \
        memset(a[0], 0, w * sizeof(T));                                                   \
        memset(b[0], 0, w * sizeof(T));                                                   \
        fxnn_horizontal_##SUFFIX(gp, h, w, 0, a[1], b[1]);                                \
        for (i = 0; i < h; i++) {                                                         \
            const T *a0, *a1, *a2, *b0, *b2, *gi = gp + 4 * hw + i * w;              \
            T *o = dx + p * hw + i * w, *t;                                               \
            if (i + 1 < h) fxnn_horizontal_##SUFFIX(gp, h, w, i + 1, a[2], b[2]);         \
            else { memset(a[2], 0, w * sizeof(T)); memset(b[2], 0, w * sizeof(T)); }      \
            a0 = a[0]; a1 = a[1]; a2 = a[2]; b0 = b[0]; b2 = b[2];             \
            for (j = 0; j < w; j++)                                                       \
                o[j] = a0[j] + 2 * a1[j] + a2[j] - b0[j] + b2[j] + gi[j];                 \
            t = a[0]; a[0] = a[1]; a[1] = a[2]; a[2] = t;                                 \
            t = b[0]; b[0] = b[1]; b[1] = b[2]; b[2] = t;                                 \
        }                                                                                 \
    }                                                                                     \
}                                                                                         \
                                                                                          \
/* The two plane loops behind the untyped signature fxnn_run takes. */                   \
static void fxnn_forward_job_##SUFFIX(const void *in, void *out, long first, long last,   \
                                      long h, long w, void *buf)                          \
{ fxnn_forward_planes_##SUFFIX((const T *)in, (T *)out, first, last, h, w, (T *)buf); }   \
static void fxnn_adjoint_job_##SUFFIX(const void *in, void *out, long first, long last,   \
                                      long h, long w, void *buf)                          \
{ fxnn_adjoint_planes_##SUFFIX((const T *)in, (T *)out, first, last, h, w, (T *)buf); }

FXNN_DEFINE(float, f32)
FXNN_DEFINE(double, f64)

/* ---- threading: split [0, planes) into nthreads contiguous ranges ---- */

typedef void (*fxnn_planes_fn)(const void *in, void *out, long first, long last, long h, long w, void *buf);

struct fxnn_job {
    fxnn_planes_fn fn;
    const void *in;
    void *out;
    long first, last, h, w;
    size_t buf_bytes;
    int failed;
};

static void *fxnn_run_job(void *arg)
{
    struct fxnn_job *job = (struct fxnn_job *)arg;
    void *buf = malloc(job->buf_bytes);
    if (!buf) {
        job->failed = 1;
        return NULL;
    }
    job->fn(job->in, job->out, job->first, job->last, job->h, job->w, buf);
    free(buf);
    return NULL;
}

#define FXNN_MAX_THREADS 64

/* Returns 0 on success, -1 when memory for the row buffers ran out. */
static int fxnn_run(fxnn_planes_fn fn, const void *in, void *out, long planes, long h, long w,
                    size_t buf_bytes, int nthreads)
{
    struct fxnn_job jobs[FXNN_MAX_THREADS];
    pthread_t ids[FXNN_MAX_THREADS];
    int started[FXNN_MAX_THREADS];
    int t, failed = 0;
    if (planes <= 0 || h <= 0 || w <= 0)
        return 0;
    if (nthreads > FXNN_MAX_THREADS) nthreads = FXNN_MAX_THREADS;
    if (nthreads > planes) nthreads = (int)planes;
    if (nthreads < 1) nthreads = 1;
    for (t = 0; t < nthreads; t++) {
        jobs[t].fn = fn; jobs[t].in = in; jobs[t].out = out;
        jobs[t].first = planes * t / nthreads; jobs[t].last = planes * (t + 1) / nthreads;
        jobs[t].h = h; jobs[t].w = w; jobs[t].buf_bytes = buf_bytes; jobs[t].failed = 0;
    }
    /* Thread 0 is the caller; a thread that cannot start runs inline too. */
    for (t = 1; t < nthreads; t++)
        started[t] = pthread_create(&ids[t], NULL, fxnn_run_job, &jobs[t]) == 0;
    fxnn_run_job(&jobs[0]);
    for (t = 1; t < nthreads; t++) {
        if (started[t]) pthread_join(ids[t], NULL);
        else fxnn_run_job(&jobs[t]);
    }
    for (t = 0; t < nthreads; t++) failed |= jobs[t].failed;
    return failed ? -1 : 0;
}

/* x (planes, h, w) -> out (planes, 5, h, w), both C-contiguous. */
static int fxnn_fixed_forward_f32(const float *x, float *out, long planes, long h, long w, int nthreads)
{
    return fxnn_run(fxnn_forward_job_f32, x, out, planes, h, w,
                    2 * (size_t)(w + 2) * sizeof(float), nthreads);
}

static int fxnn_fixed_forward_f64(const double *x, double *out, long planes, long h, long w, int nthreads)
{
    return fxnn_run(fxnn_forward_job_f64, x, out, planes, h, w,
                    2 * (size_t)(w + 2) * sizeof(double), nthreads);
}

/* g (planes, 5, h, w) -> dx (planes, h, w), both C-contiguous. */
static int fxnn_fixed_adjoint_f32(const float *g, float *dx, long planes, long h, long w, int nthreads)
{
    return fxnn_run(fxnn_adjoint_job_f32, g, dx, planes, h, w,
                    6 * (size_t)w * sizeof(float), nthreads);
}

static int fxnn_fixed_adjoint_f64(const double *g, double *dx, long planes, long h, long w, int nthreads)
{
    return fxnn_run(fxnn_adjoint_job_f64, g, dx, planes, h, w,
                    6 * (size_t)w * sizeof(double), nthreads);
}
