/* The fixed stage and its adjoint on the CPU, one pass over memory each.
 *
 * Plain C99 with no Python in it: kernels/fixed_cpu_module.c wraps it for
 * PyTorch (built by `pip install`), and kernels/pytensor_fixed_op.py pastes it
 * into a PyTensor C op. The numpy references they are tested against are
 * kernels.fixed_kernels.fixed_stage_reference and fixed_stage_grad_reference.
 *
 * Layout (kernels/fixed_kernels.py): a plane is one (H, W) channel of one image;
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
 * Threads: fxnn_parallel splits a range of work items (here planes) into
 * contiguous ranges that the threads (the OpenMP runtime's pool where the
 * build has OpenMP, else pthreads) take in turn; kernels/fused_cpu.c and
 * kernels/block_cpu.c use it too.
 */
#ifndef FXNN_FIXED_CPU_C
#define FXNN_FIXED_CPU_C
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200112L /* posix_memalign under -std=c99 */
#endif
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

/* ---- threading: split [0, items) into nthreads contiguous ranges ---- */

/* fn(arg, first, last, scratch) does items [first, last) with a private,
 * 64-byte aligned scratch buffer of the size fxnn_parallel was given. */
typedef void (*fxnn_items_fn)(void *arg, long first, long last, void *scratch);

#define FXNN_MAX_THREADS 64

/* The shared state of one fxnn_parallel call: the items go in CHUNKS
 * contiguous ranges, handed to whichever thread asks next (an atomic
 * counter), so a thread that is slowed down (a busy or shared machine) takes
 * fewer of them; which thread computes a range changes no number. */
struct fxnn_work {
    fxnn_items_fn fn;
    void *arg;
    long items, chunks, next;
    size_t scratch_bytes;
};

#define FXNN_CHUNKS_PER_THREAD 4

/* One thread's part: ranges until none are left, with its own scratch;
 * returns nonzero when the scratch could not be allocated. */
static int fxnn_work_share(struct fxnn_work *work)
{
    void *scratch = NULL;
    long c;
    if (posix_memalign(&scratch, 64, work->scratch_bytes ? work->scratch_bytes : 64) != 0)
        return 1;
    while ((c = __sync_fetch_and_add(&work->next, 1)) < work->chunks)
        work->fn(work->arg, work->items * c / work->chunks, work->items * (c + 1) / work->chunks, scratch);
    free(scratch);
    return 0;
}

#ifdef _OPENMP
/* With OpenMP (setup.py and the PyTensor ops build with it where the
 * compiler has it) the work runs on the OpenMP runtime's thread pool, the
 * one PyTorch's CPU operators use too: the threads are already there, and
 * none of them spins idle beside ours right after a PyTorch operator. */
#include <omp.h>

static int fxnn_run_work(struct fxnn_work *work, int nthreads)
{
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed)
    failed |= fxnn_work_share(work);
    return failed;
}
#else
struct fxnn_thread {
    struct fxnn_work *work;
    int failed;
};

static void *fxnn_thread_main(void *p)
{
    struct fxnn_thread *t = (struct fxnn_thread *)p;
    t->failed = fxnn_work_share(t->work);
    return NULL;
}

/* Without OpenMP: pthreads beside the caller, which works too. */
static int fxnn_run_work(struct fxnn_work *work, int nthreads)
{
    struct fxnn_thread threads[FXNN_MAX_THREADS];
    pthread_t ids[FXNN_MAX_THREADS];
    int started[FXNN_MAX_THREADS];
    int t, failed;
    for (t = 1; t < nthreads; t++) {
        threads[t].work = work;
        threads[t].failed = 0;
        started[t] = pthread_create(&ids[t], NULL, fxnn_thread_main, &threads[t]) == 0;
    }
    failed = fxnn_work_share(work);
    for (t = 1; t < nthreads; t++)
        if (started[t]) {
            pthread_join(ids[t], NULL);
            failed |= threads[t].failed;
        }
    return failed;
}
#endif

/* Runs fn over [0, items) on nthreads threads; 0 on success, -1 when
 * memory for a scratch buffer ran out. */
static int fxnn_parallel(fxnn_items_fn fn, void *arg, long items, size_t scratch_bytes, int nthreads)
{
    struct fxnn_work work;
    if (items <= 0)
        return 0;
    if (nthreads > FXNN_MAX_THREADS) nthreads = FXNN_MAX_THREADS;
    if (nthreads > items) nthreads = (int)items;
    if (nthreads < 1) nthreads = 1;
    work.fn = fn; work.arg = arg; work.items = items; work.next = 0; work.scratch_bytes = scratch_bytes;
    work.chunks = items < (long)FXNN_CHUNKS_PER_THREAD * nthreads ? items : (long)FXNN_CHUNKS_PER_THREAD * nthreads;
    return fxnn_run_work(&work, nthreads) ? -1 : 0;
}

/* The arguments of the plane loops below. */
struct fxnn_planes {
    const void *in;
    void *out;
    long h, w;
};

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
/* A and B of one row into a[0..w-1], b[0..w-1]; g0 is that row of plane k=0, \
 * plane k at g0 + k*ks. */                                                               \
FXNN_CLONES static void fxnn_horizontal_##SUFFIX(const T *g0, long ks, long w, T *a, T *b) \
{                                                                                         \
    long j;                                                                               \
    const T *g1 = g0 + ks, *g2 = g1 + ks, *g3 = g2 + ks;                                  \
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
/* Rows [i0, i1) of the adjoint of one plane into dx (the whole plane, row i  \
 * at dx + i*w). The five gradient planes are given for rows [ra, rb) only:    \
 * row i of plane k at g + k*ks + (i - ra)*w, where [ra, rb) holds [i0-1, i1+1) \
 * clipped to [0, h); rows outside [0, h) are zero. buf: 6 rows of w, A and B   \
 * of rows i-1, i, i+1, rotated as i advances. */                               \
FXNN_CLONES static void fxnn_adjoint_rows_##SUFFIX(const T *g, long ks, long ra, long i0, long i1, \
                                                   long h, long w, T *dx, T *buf)         \
{                                                                                         \
    long i, j;                                                                            \
    T *a[3] = {buf, buf + w, buf + 2 * w}, *b[3] = {buf + 3 * w, buf + 4 * w, buf + 5 * w}; \
    if (i0 > 0) fxnn_horizontal_##SUFFIX(g + (i0 - 1 - ra) * w, ks, w, a[0], b[0]);       \
    else { memset(a[0], 0, w * sizeof(T)); memset(b[0], 0, w * sizeof(T)); }              \
    fxnn_horizontal_##SUFFIX(g + (i0 - ra) * w, ks, w, a[1], b[1]);                       \
    for (i = i0; i < i1; i++) {                                                           \
        const T *a0, *a1, *a2, *b0, *b2, *gi = g + 4 * ks + (i - ra) * w;                 \
        T *o = dx + i * w, *t;                                                            \
        if (i + 1 < h) fxnn_horizontal_##SUFFIX(g + (i + 1 - ra) * w, ks, w, a[2], b[2]); \
        else { memset(a[2], 0, w * sizeof(T)); memset(b[2], 0, w * sizeof(T)); }          \
        a0 = a[0]; a1 = a[1]; a2 = a[2]; b0 = b[0]; b2 = b[2];                            \
        for (j = 0; j < w; j++)                                                           \
            o[j] = a0[j] + 2 * a1[j] + a2[j] - b0[j] + b2[j] + gi[j];                     \
        t = a[0]; a[0] = a[1]; a[1] = a[2]; a[2] = t;                                     \
        t = b[0]; b[0] = b[1]; b[1] = b[2]; b[2] = t;                                     \
    }                                                                                     \
}                                                                                         \
                                                                                          \
static void fxnn_adjoint_planes_##SUFFIX(const T *g, T *dx, long first, long last,        \
                                         long h, long w, T *buf)                          \
{                                                                                         \
    long hw = h * w, p;                                                                   \
    for (p = first; p < last; p++)                                                        \
        fxnn_adjoint_rows_##SUFFIX(g + p * FXNN_NUM_KERNELS * hw, hw, 0, 0, h, h, w, dx + p * hw, buf); \
}                                                                                         \
                                                                                          \
/* The two plane loops as work functions of fxnn_parallel (items = planes). */                \
static void fxnn_forward_job_##SUFFIX(void *arg, long first, long last, void *buf)        \
{                                                                                         \
    const struct fxnn_planes *pl = (const struct fxnn_planes *)arg;                       \
    fxnn_forward_planes_##SUFFIX((const T *)pl->in, (T *)pl->out, first, last, pl->h, pl->w, (T *)buf); \
}                                                                                         \
static void fxnn_adjoint_job_##SUFFIX(void *arg, long first, long last, void *buf)        \
{                                                                                         \
    const struct fxnn_planes *pl = (const struct fxnn_planes *)arg;                       \
    fxnn_adjoint_planes_##SUFFIX((const T *)pl->in, (T *)pl->out, first, last, pl->h, pl->w, (T *)buf); \
}

FXNN_DEFINE(float, f32)
FXNN_DEFINE(double, f64)

static int fxnn_run_planes(fxnn_items_fn fn, const void *in, void *out, long planes, long h, long w,
                           size_t buf_bytes, int nthreads)
{
    struct fxnn_planes pl;
    if (h <= 0 || w <= 0)
        return 0;
    pl.in = in; pl.out = out; pl.h = h; pl.w = w;
    return fxnn_parallel(fn, &pl, planes, buf_bytes, nthreads);
}

/* x (planes, h, w) -> out (planes, 5, h, w), both C-contiguous. */
static int fxnn_fixed_forward_f32(const float *x, float *out, long planes, long h, long w, int nthreads)
{
    return fxnn_run_planes(fxnn_forward_job_f32, x, out, planes, h, w, 2 * (size_t)(w + 2) * sizeof(float), nthreads);
}

static int fxnn_fixed_forward_f64(const double *x, double *out, long planes, long h, long w, int nthreads)
{
    return fxnn_run_planes(fxnn_forward_job_f64, x, out, planes, h, w, 2 * (size_t)(w + 2) * sizeof(double), nthreads);
}

/* g (planes, 5, h, w) -> dx (planes, h, w), both C-contiguous. */
static int fxnn_fixed_adjoint_f32(const float *g, float *dx, long planes, long h, long w, int nthreads)
{
    return fxnn_run_planes(fxnn_adjoint_job_f32, g, dx, planes, h, w, 6 * (size_t)w * sizeof(float), nthreads);
}

static int fxnn_fixed_adjoint_f64(const double *g, double *dx, long planes, long h, long w, int nthreads)
{
    return fxnn_run_planes(fxnn_adjoint_job_f64, g, dx, planes, h, w, 6 * (size_t)w * sizeof(double), nthreads);
}

#endif /* FXNN_FIXED_CPU_C */
