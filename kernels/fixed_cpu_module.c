/* kernels._fixed_cpu: the C fixed stage of fixed_cpu.c and the fused layer of
 * fused_cpu.c as a Python module.
 *
 *   forward(x, out, threads)   x (P, H, W)    -> out (P, 5, H, W)
 *   adjoint(g, dx, threads)    g (P, 5, H, W) -> dx (P, H, W)
 *   fused_forward(x, w, bias, y, threads, isa[, stride[, nhwc]])  y = bias + W^T fixed(x)
 *   fused_wgrad(x, dy, dw, dbias, threads, isa[, stride[, nhwc]]) dW, dbias (bias may be None)
 *   fused_dgrad(dy, w, dx, threads, isa[, stride[, nhwc]])        dx; nhwc: the 4-D buffers
 *                                                   are channels_last, (B, H, W, C) in memory
 *   isas()                                          the ISAs this CPU runs, best first
 *   block_forward(y, mask, threshold, scale, out, threads)           ReLU, dropout, 2x2 max pool
 *   block_backward(y, mask, threshold, scale, out, g, gy, threads)   and its gradient (block_cpu.c)
 *   fma_peak(isa, threads, seconds)                 measured FMA throughput, GFLOP/s
 *   fused_forward_bf16(x, w, bias, y, threads, isa[, stride])   the fused layer in bfloat16
 *   fused_wgrad_bf16(x, dy, dw, dbias, threads, isa[, stride])  (kernels/fused_bf16_cpu.c): buffers of
 *   fused_dgrad_bf16(dy, w, dx, threads, isa[, stride])         bf16 bit patterns, uint16 or int16
 *   bf16_isas()                                     the bf16 ISAs this CPU runs, best first
 *   matrix_peak(isa, threads, seconds)              measured bf16 matrix throughput, GFLOP/s
 *   bf16_emulate(op, a, b, c)                       a stand-in's emulation of one instruction
 *
 * Arguments are C-contiguous buffers (numpy arrays, or torch CPU tensors
 * through .numpy()): float32 or float64 for the fixed stage, float32 for the
 * fused layer (x and dx (B, M, H, W), w (5M, N), y and dy (B, N, Ho, Wo) with
 * Ho = (H-1)/stride + 1, Wo likewise; stride 1 unless given); the outputs
 * are written in place with the GIL released. Shapes and dtypes are checked
 * here, so a wrong call is a ValueError, never a bad memory access. Built by
 * setup.py; the callers are kernels/cpu_fixed.py and kernels/cpu_fused.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "fused_cpu.c"
#include "fused_bf16_cpu.c"
#include "block_cpu.c"

static int get_buffer(PyObject *obj, Py_buffer *view, int writable, int ndim, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0)
        return -1;
    if (view->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must have %d dimensions, got %d", name, ndim, view->ndim);
        PyBuffer_Release(view);
        return -1;
    }
    if (strcmp(view->format, "f") != 0 && strcmp(view->format, "d") != 0) {
        PyErr_Format(PyExc_ValueError, "%s must be float32 or float64, got format '%s'", name, view->format);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* single: the (P, H, W) buffer; five: the (P, 5, H, W) one. */
static PyObject *run(PyObject *args, int forward)
{
    PyObject *in_obj, *out_obj;
    Py_buffer in, out, *single, *five;
    int threads, rc;
    long planes, h, w;
    if (!PyArg_ParseTuple(args, "OOi", &in_obj, &out_obj, &threads))
        return NULL;
    if (get_buffer(in_obj, &in, 0, forward ? 3 : 4, "input") < 0)
        return NULL;
    if (get_buffer(out_obj, &out, 1, forward ? 4 : 3, "output") < 0) {
        PyBuffer_Release(&in);
        return NULL;
    }
    single = forward ? &in : &out;
    five = forward ? &out : &in;
    planes = (long)single->shape[0];
    h = (long)single->shape[1];
    w = (long)single->shape[2];
    if (strcmp(in.format, out.format) != 0 || five->shape[0] != planes || five->shape[1] != FXNN_NUM_KERNELS
        || five->shape[2] != h || five->shape[3] != w) {
        PyErr_SetString(PyExc_ValueError, "fixed stage buffers must be (P, H, W) and (P, 5, H, W) of one dtype");
        PyBuffer_Release(&in);
        PyBuffer_Release(&out);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    if (in.format[0] == 'f')
        rc = forward ? fxnn_fixed_forward_f32(in.buf, out.buf, planes, h, w, threads)
                     : fxnn_fixed_adjoint_f32(in.buf, out.buf, planes, h, w, threads);
    else
        rc = forward ? fxnn_fixed_forward_f64(in.buf, out.buf, planes, h, w, threads)
                     : fxnn_fixed_adjoint_f64(in.buf, out.buf, planes, h, w, threads);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyBuffer_Release(&out);
    if (rc < 0)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *forward(PyObject *self, PyObject *args) { (void)self; return run(args, 1); }
static PyObject *adjoint(PyObject *self, PyObject *args) { (void)self; return run(args, 0); }

/* ---- the fused layer ---- */

/* A float32 C-contiguous buffer of ndim dimensions, or None when allowed. */
static int get_f32(PyObject *obj, Py_buffer *view, int writable, int ndim, const char *name, int optional)
{
    view->obj = NULL;
    if (optional && obj == Py_None)
        return 0;
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (view->ndim != ndim || strcmp(view->format, "f") != 0) {
        PyErr_Format(PyExc_ValueError, "%s must be a %d-dimensional float32 buffer, got %d dimensions of format '%s'",
                     name, ndim, view->ndim, view->format);
        PyBuffer_Release(view);
        view->obj = NULL;
        return -1;
    }
    return 0;
}

static void release_all(Py_buffer *views, int count)
{
    int i;
    for (i = 0; i < count; i++)
        if (views[i].obj) PyBuffer_Release(&views[i]);
}

/* One buffer argument of a fused call. */
struct buffer_arg {
    const char *name;
    int ndim, writable, optional;
};

/* A buffer reader: get_f32, or get_bf16 below. */
typedef int (*buffer_getter)(PyObject *, Py_buffer *, int, int, const char *, int);

/* The buffers of objs as spec says, read by get, all or none (0, or -1 with an error). */
static int get_args(PyObject *const *objs, const struct buffer_arg *spec, int count, Py_buffer *v, buffer_getter get)
{
    int i;
    memset(v, 0, count * sizeof(*v));
    for (i = 0; i < count; i++)
        if (get(objs[i], &v[i], spec[i].writable, spec[i].ndim, spec[i].name, spec[i].optional) < 0) {
            release_all(v, count);
            return -1;
        }
    return 0;
}

/* The ISA index of a name this CPU supports; -1 with ValueError otherwise. */
static int isa_index(const char *name)
{
    int i = fxnn_isa_lookup(name);
    if (i >= 0 && name[0])
        return i;
    for (i = 0; i < FXNN_NUM_ISAS; i++)
        if (strcmp(fxnn_isas[i]->name, name) == 0) {
            PyErr_Format(PyExc_ValueError, "this CPU does not support the %s kernels", name);
            return -1;
        }
    PyErr_Format(PyExc_ValueError, "unknown instruction set '%s'", name);
    return -1;
}

static PyObject *fused_result(int rc)
{
    if (rc == FXNN_ERR_MEMORY)
        return PyErr_NoMemory();
    if (rc == FXNN_ERR_SIZE) {
        PyErr_SetString(PyExc_ValueError, "images of 2^31 pixels or more are not supported by the fused kernels");
        return NULL;
    }
    if (rc != 0) {
        PyErr_SetString(PyExc_RuntimeError, "fused kernel failed");
        return NULL;
    }
    Py_RETURN_NONE;
}

#define SHAPE_ERROR(msg) do { PyErr_SetString(PyExc_ValueError, msg); release_all(v, count); return NULL; } while (0)

/* A stride the fused kernels do not run (they run 1 and 2): ValueError. */
static int bad_stride(long stride)
{
    if (stride == 1 || stride == 2)
        return 0;
    PyErr_Format(PyExc_ValueError, "the fused kernels run stride 1 or 2, got %ld", stride);
    return 1;
}

/* Whether a 4-d buffer is (b, c, h, w). */
static int shaped(const Py_buffer *v, long b, long c, long h, long w)
{
    return v->shape[0] == b && v->shape[1] == c && v->shape[2] == h && v->shape[3] == w;
}

/* The sizes of a fused call, read from its buffers. */
struct fused_dims { long b, m, n, h, w; };

/* Reads and checks the buffers (x, w, bias, y) of a fused forward: NULL, or what is wrong. */
static const char *forward_shapes(const Py_buffer *v, long stride, struct fused_dims *d)
{
    d->b = (long)v[0].shape[0]; d->m = (long)v[0].shape[1]; d->h = (long)v[0].shape[2]; d->w = (long)v[0].shape[3];
    d->n = (long)v[1].shape[1];
    if (v[1].shape[0] != FXNN_NUM_KERNELS * d->m)
        return "w must be (5M, N) for x of M channels";
    if (v[2].obj && v[2].shape[0] != d->n)
        return "bias must be (N,)";
    if (!shaped(&v[3], d->b, d->n, fxnn_out_size(d->h, stride), fxnn_out_size(d->w, stride)))
        return "y must be (B, N, Ho, Wo), Ho = (H-1)/stride + 1, Wo likewise";
    return NULL;
}

/* The same for (x, dy, dw, dbias) of a fused weight gradient. */
static const char *wgrad_shapes(const Py_buffer *v, long stride, struct fused_dims *d)
{
    d->b = (long)v[0].shape[0]; d->m = (long)v[0].shape[1]; d->h = (long)v[0].shape[2]; d->w = (long)v[0].shape[3];
    d->n = (long)v[1].shape[1];
    if (!shaped(&v[1], d->b, d->n, fxnn_out_size(d->h, stride), fxnn_out_size(d->w, stride)))
        return "dy must be (B, N, Ho, Wo) for x of shape (B, M, H, W), Ho = (H-1)/stride + 1, Wo likewise";
    if (v[2].shape[0] != FXNN_NUM_KERNELS * d->m || v[2].shape[1] != d->n)
        return "dw must be (5M, N)";
    if (v[3].obj && v[3].shape[0] != d->n)
        return "dbias must be (N,)";
    return NULL;
}

/* The same for (dy, w, dx) of a fused input gradient. */
static const char *dgrad_shapes(const Py_buffer *v, long stride, struct fused_dims *d)
{
    d->b = (long)v[0].shape[0]; d->n = (long)v[0].shape[1];
    d->m = (long)v[2].shape[1]; d->h = (long)v[2].shape[2]; d->w = (long)v[2].shape[3];
    if (v[2].shape[0] != d->b || v[0].shape[2] != fxnn_out_size(d->h, stride)
        || v[0].shape[3] != fxnn_out_size(d->w, stride))
        return "dx must be (B, M, H, W) for dy of shape (B, N, Ho, Wo), Ho = (H-1)/stride + 1, Wo likewise";
    if (v[1].shape[0] != FXNN_NUM_KERNELS * d->m || v[1].shape[1] != d->n)
        return "w must be (5M, N)";
    return NULL;
}

/* Shape checks see channels_last buffers, (B, H, W, C) in memory, as the
 * (B, C, H, W) tensors they are: copies of the views with their 4-D shapes
 * permuted (the views themselves are released as they came). */
static const Py_buffer *as_nchw(const Py_buffer *v, int count, int nhwc, Py_buffer *t, Py_ssize_t (*shapes)[4])
{
    int i;
    if (!nhwc)
        return v;
    for (i = 0; i < count; i++) {
        t[i] = v[i];
        if (v[i].obj && v[i].ndim == 4) {
            shapes[i][0] = v[i].shape[0]; shapes[i][1] = v[i].shape[3];
            shapes[i][2] = v[i].shape[1]; shapes[i][3] = v[i].shape[2];
            t[i].shape = shapes[i];
        }
    }
    return t;
}

enum fused_op { FUSED_FORWARD, FUSED_WGRAD, FUSED_DGRAD };

/* The buffers of each fused call, in order (the input gradient has three). */
static const struct buffer_arg fused_specs[3][4] = {
    {{"x", 4, 0, 0}, {"w", 2, 0, 0}, {"bias", 1, 0, 1}, {"y", 4, 1, 0}},
    {{"x", 4, 0, 0}, {"dy", 4, 0, 0}, {"dw", 2, 1, 0}, {"dbias", 1, 1, 1}},
    {{"dy", 4, 0, 0}, {"w", 2, 0, 0}, {"dx", 4, 1, 0}, {NULL, 0, 0, 0}},
};

static const char *(*const fused_shapes[3])(const Py_buffer *, long, struct fused_dims *) = {
    forward_shapes, wgrad_shapes, dgrad_shapes};

static int bf16_isa_index(const char *name);
static int get_bf16(PyObject *obj, Py_buffer *view, int writable, int ndim, const char *name, int optional);

#define BUF(i, T) ((T *)v[i].buf)
#define OPTIONAL_BUF(i, T) (v[i].obj ? (T *)v[i].buf : NULL)

/* Runs one float32 fused kernel on checked buffers (no Python calls: the GIL is released). */
static int run_f32(int op, int isa, int nhwc, const Py_buffer *v, const struct fused_dims *d, long stride, int threads)
{
    switch (op) {
    case FUSED_FORWARD:
        return (nhwc ? fxnn_nh_forward : fxnn_fused_forward)(isa, BUF(0, const float), BUF(1, const float),
                                                             OPTIONAL_BUF(2, const float), BUF(3, float),
                                                             d->b, d->m, d->n, d->h, d->w, stride, threads);
    case FUSED_WGRAD:
        return (nhwc ? fxnn_nh_wgrad : fxnn_fused_wgrad)(isa, BUF(0, const float), BUF(1, const float), BUF(2, float),
                                                         OPTIONAL_BUF(3, float), d->b, d->m, d->n, d->h, d->w, stride,
                                                         threads);
    default:
        return (nhwc ? fxnn_nh_dgrad : fxnn_fused_dgrad)(isa, BUF(0, const float), BUF(1, const float), BUF(2, float),
                                                         d->b, d->m, d->n, d->h, d->w, stride, threads);
    }
}

/* The same for the bfloat16 kernels (NCHW only). */
static int run_bf16(int op, int isa, const Py_buffer *v, const struct fused_dims *d, long stride, int threads)
{
    switch (op) {
    case FUSED_FORWARD:
        return fxb_fused_forward(isa, BUF(0, const uint16_t), BUF(1, const uint16_t), OPTIONAL_BUF(2, const uint16_t),
                                 BUF(3, uint16_t), d->b, d->m, d->n, d->h, d->w, stride, threads);
    case FUSED_WGRAD:
        return fxb_fused_wgrad(isa, BUF(0, const uint16_t), BUF(1, const uint16_t), BUF(2, uint16_t),
                               OPTIONAL_BUF(3, uint16_t), d->b, d->m, d->n, d->h, d->w, stride, threads);
    default:
        return fxb_fused_dgrad(isa, BUF(0, const uint16_t), BUF(1, const uint16_t), BUF(2, uint16_t),
                               d->b, d->m, d->n, d->h, d->w, stride, threads);
    }
}

/* One fused call, (buffers..., threads, isa[, stride[, nhwc]]) (nhwc: float32 only): parses and
 * checks the arguments, then runs the kernel with the GIL released. */
static PyObject *fused_call(PyObject *args, int op, int bf16)
{
    const struct buffer_arg *spec = fused_specs[op];
    const int count = op == FUSED_DGRAD ? 3 : 4;
    PyObject *o[4] = {NULL, NULL, NULL, NULL};
    Py_buffer v[4], t[4];
    Py_ssize_t shapes[4][4];
    struct fused_dims d;
    const char *isa_name, *problem;
    int threads, isa, nhwc = 0, rc, parsed;
    long stride = 1;
    if (count == 4)
        parsed = PyArg_ParseTuple(args, bf16 ? "OOOOis|l" : "OOOOis|lp", &o[0], &o[1], &o[2], &o[3], &threads,
                                  &isa_name, &stride, &nhwc);
    else
        parsed = PyArg_ParseTuple(args, bf16 ? "OOOis|l" : "OOOis|lp", &o[0], &o[1], &o[2], &threads, &isa_name,
                                  &stride, &nhwc);
    if (!parsed || bad_stride(stride) || (isa = (bf16 ? bf16_isa_index : isa_index)(isa_name)) < 0
        || get_args(o, spec, count, v, bf16 ? get_bf16 : get_f32) < 0)
        return NULL;
    if ((problem = fused_shapes[op](as_nchw(v, count, nhwc, t, shapes), stride, &d)) != NULL)
        SHAPE_ERROR(problem);
    Py_BEGIN_ALLOW_THREADS
    rc = bf16 ? run_bf16(op, isa, v, &d, stride, threads) : run_f32(op, isa, nhwc, v, &d, stride, threads);
    Py_END_ALLOW_THREADS
    release_all(v, count);
    return fused_result(rc);
}

static PyObject *fused_forward(PyObject *self, PyObject *args) { (void)self; return fused_call(args, FUSED_FORWARD, 0); }
static PyObject *fused_wgrad(PyObject *self, PyObject *args) { (void)self; return fused_call(args, FUSED_WGRAD, 0); }
static PyObject *fused_dgrad(PyObject *self, PyObject *args) { (void)self; return fused_call(args, FUSED_DGRAD, 0); }

/* The names of an ISA table's entries that this CPU runs, best first. */
static PyObject *supported_names(int count, int (*supported)(int), const char *(*name_of)(int))
{
    PyObject *names = PyList_New(0);
    int i;
    for (i = 0; names && i < count; i++) {
        PyObject *name;
        if (!supported(i))
            continue;
        name = PyUnicode_FromString(name_of(i));
        if (!name || PyList_Append(names, name) < 0) {
            Py_XDECREF(name);
            Py_DECREF(names);
            return NULL;
        }
        Py_DECREF(name);
    }
    return names;
}

/* A peak measurement (isa name, threads, seconds) -> GFLOP/s, the GIL released. */
static PyObject *peak_call(PyObject *args, int (*index_of)(const char *), double (*peak)(int, int, double))
{
    const char *isa_name;
    int threads, isa;
    double seconds, gflops;
    if (!PyArg_ParseTuple(args, "sid", &isa_name, &threads, &seconds) || (isa = index_of(isa_name)) < 0)
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    gflops = peak(isa, threads, seconds);
    Py_END_ALLOW_THREADS
    if (gflops < 0)
        return PyErr_NoMemory();
    return PyFloat_FromDouble(gflops);
}

static const char *isa_name_of(int i) { return fxnn_isas[i]->name; }

static PyObject *isas(PyObject *self, PyObject *args)
{
    (void)self; (void)args;
    return supported_names(FXNN_NUM_ISAS, fxnn_isa_supported, isa_name_of);
}

static PyObject *fma_peak(PyObject *self, PyObject *args)
{
    (void)self;
    return peak_call(args, isa_index, fxnn_fma_peak);
}

/* ---- the fused layer in bfloat16 (fused_bf16_cpu.c) ---- */

/* A C-contiguous buffer of bf16 bit patterns (uint16 'H' or int16 'h'), or None when allowed. */
static int get_bf16(PyObject *obj, Py_buffer *view, int writable, int ndim, const char *name, int optional)
{
    view->obj = NULL;
    if (optional && obj == Py_None)
        return 0;
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0)) < 0)
        return -1;
    if (view->ndim != ndim || view->itemsize != 2 || (strcmp(view->format, "H") != 0 && strcmp(view->format, "h") != 0)) {
        PyErr_Format(PyExc_ValueError,
                     "%s must be a %d-dimensional buffer of bfloat16 bits (uint16 or int16), got %d dimensions of format '%s'",
                     name, ndim, view->ndim, view->format);
        PyBuffer_Release(view);
        view->obj = NULL;
        return -1;
    }
    return 0;
}

/* The bf16 ISA index of a name this CPU supports; -1 with ValueError otherwise. */
static int bf16_isa_index(const char *name)
{
    static const char *const known[] = {"amx", "avx512bf16"};  /* also where the compiler could not build them */
    int i = fxb_isa_find(name), k;
    if (i >= 0 && fxb_isa_supported(i))
        return i;
    for (k = 0; i < 0 && k < 2; k++)
        if (strcmp(name, known[k]) == 0)
            i = FXB_NUM_ISAS;
    if (i >= 0)
        PyErr_Format(PyExc_ValueError, "this CPU does not support the %s kernels", name);
    else
        PyErr_Format(PyExc_ValueError, "unknown bf16 instruction set '%s'", name);
    return -1;
}

static PyObject *fused_forward_bf16(PyObject *self, PyObject *args) { (void)self; return fused_call(args, FUSED_FORWARD, 1); }
static PyObject *fused_wgrad_bf16(PyObject *self, PyObject *args) { (void)self; return fused_call(args, FUSED_WGRAD, 1); }
static PyObject *fused_dgrad_bf16(PyObject *self, PyObject *args) { (void)self; return fused_call(args, FUSED_DGRAD, 1); }

static const char *bf16_isa_name_of(int i) { return fxb_isas[i]->name; }

static PyObject *bf16_isas(PyObject *self, PyObject *args)
{
    (void)self; (void)args;
    return supported_names(FXB_NUM_ISAS, fxb_isa_supported, bf16_isa_name_of);
}

static PyObject *matrix_peak(PyObject *self, PyObject *args)
{
    (void)self;
    return peak_call(args, bf16_isa_index, fxb_matrix_peak);
}

static PyObject *bf16_emulate(PyObject *self, PyObject *args)
{
    const char *op;
    PyObject *ao, *bo, *co;
    Py_buffer v[3];
    int tile, rc;
    (void)self;
    memset(v, 0, sizeof(v));
    if (!PyArg_ParseTuple(args, "sOOO", &op, &ao, &bo, &co))
        return NULL;
    tile = strcmp(op, "tdpbf16ps") == 0;
    if (!tile && strcmp(op, "vdpbf16ps") != 0) {
        PyErr_Format(PyExc_ValueError, "unknown instruction '%s'", op);
        return NULL;
    }
    if (get_bf16(ao, &v[0], 0, tile ? 2 : 1, "a", 0) < 0 || get_bf16(bo, &v[1], 0, tile ? 2 : 1, "b", 0) < 0
        || get_f32(co, &v[2], 1, tile ? 2 : 1, "c", 0) < 0) {
        release_all(v, 3);
        return NULL;
    }
    if (tile ? v[0].shape[0] != 16 || v[0].shape[1] != 32 || v[1].shape[0] != 16 || v[1].shape[1] != 32
                   || v[2].shape[0] != 16 || v[2].shape[1] != 16
             : v[0].shape[0] != 32 || v[1].shape[0] != 32 || v[2].shape[0] != 16) {
        PyErr_SetString(PyExc_ValueError, tile ? "tdpbf16ps: a and b must be (16, 32), c (16, 16)"
                                               : "vdpbf16ps: a and b must be (32,), c (16,)");
        release_all(v, 3);
        return NULL;
    }
    rc = fxb_emulate(op, (const uint16_t *)v[0].buf, (const uint16_t *)v[1].buf, (float *)v[2].buf);
    release_all(v, 3);
    (void)rc;
    Py_RETURN_NONE;
}

/* ---- ReLU, dropout, 2x2 max pooling ---- */

/* y, mask (or None), out, g, gy: planes (P, H, W) and pooled (P, H/2, W/2). */
static PyObject *block(PyObject *args, int forward)
{
    PyObject *yo, *mo, *oo, *go = NULL, *gyo = NULL;
    Py_buffer v[5];
    const int count = 5;
    int threads, rc;
    unsigned int threshold;
    float scale;
    long p, h, w;
    memset(v, 0, sizeof(v));
    if (forward ? !PyArg_ParseTuple(args, "OOIfOi", &yo, &mo, &threshold, &scale, &oo, &threads)
                : !PyArg_ParseTuple(args, "OOIfOOOi", &yo, &mo, &threshold, &scale, &oo, &go, &gyo, &threads))
        return NULL;
    if (threshold > 65535) {
        PyErr_SetString(PyExc_ValueError, "threshold must fit 16 bits");
        return NULL;
    }
    if (get_f32(yo, &v[0], 0, 3, "y", 0) || get_f32(oo, &v[2], forward, 3, "out", 0)
        || (!forward && (get_f32(go, &v[3], 0, 3, "g", 0) || get_f32(gyo, &v[4], 1, 3, "gy", 0)))) {
        release_all(v, count);
        return NULL;
    }
    if (mo != Py_None) {
        if (PyObject_GetBuffer(mo, &v[1], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
            release_all(v, count);
            return NULL;
        }
        if (v[1].ndim != 3 || strcmp(v[1].format, "H") != 0 || v[1].shape[0] != v[0].shape[0]
            || v[1].shape[1] != v[0].shape[1] || v[1].shape[2] != v[0].shape[2])
            SHAPE_ERROR("mask must be uint16 of y's shape");
    }
    p = (long)v[0].shape[0]; h = (long)v[0].shape[1]; w = (long)v[0].shape[2];
    if (v[2].shape[0] != p || v[2].shape[1] != h / 2 || v[2].shape[2] != w / 2)
        SHAPE_ERROR("out must be (P, H/2, W/2) for y of shape (P, H, W)");
    if (!forward && (v[3].shape[0] != p || v[3].shape[1] != h / 2 || v[3].shape[2] != w / 2
                     || v[4].shape[0] != p || v[4].shape[1] != h || v[4].shape[2] != w))
        SHAPE_ERROR("g must be shaped as out and gy as y");
    Py_BEGIN_ALLOW_THREADS
    if (forward)
        rc = fxnn_block_forward((const float *)v[0].buf, v[1].obj ? (const uint16_t *)v[1].buf : NULL,
                                (uint16_t)threshold, scale, (float *)v[2].buf, p, h, w, threads);
    else
        rc = fxnn_block_backward((const float *)v[0].buf, v[1].obj ? (const uint16_t *)v[1].buf : NULL,
                                 (uint16_t)threshold, scale, (const float *)v[2].buf, (const float *)v[3].buf,
                                 (float *)v[4].buf, p, h, w, threads);
    Py_END_ALLOW_THREADS
    release_all(v, count);
    return fused_result(rc);
}

static PyObject *block_forward(PyObject *self, PyObject *args) { (void)self; return block(args, 1); }
static PyObject *block_backward(PyObject *self, PyObject *args) { (void)self; return block(args, 0); }

static PyMethodDef methods[] = {
    {"forward", forward, METH_VARARGS, "forward(x, out, threads): x (P, H, W) -> out (P, 5, H, W)"},
    {"adjoint", adjoint, METH_VARARGS, "adjoint(g, dx, threads): g (P, 5, H, W) -> dx (P, H, W)"},
    {"fused_forward", fused_forward, METH_VARARGS,
     "fused_forward(x, w, bias, y, threads, isa[, stride]): y (B, N, Ho, Wo) = bias + W^T fixed(x); bias may be None"},
    {"fused_wgrad", fused_wgrad, METH_VARARGS,
     "fused_wgrad(x, dy, dw, dbias, threads, isa[, stride]): dw (5M, N) and dbias (N,) from x and dy; dbias may be None"},
    {"fused_dgrad", fused_dgrad, METH_VARARGS,
     "fused_dgrad(dy, w, dx, threads, isa[, stride]): dx (B, M, H, W), the input gradient"},
    {"isas", isas, METH_NOARGS, "isas(): the instruction sets of the fused kernels this CPU runs, best first"},
    {"block_forward", block_forward, METH_VARARGS,
     "block_forward(y, mask, threshold, scale, out, threads): out = 2x2 max pool of relu(y) * dropout factor"},
    {"block_backward", block_backward, METH_VARARGS,
     "block_backward(y, mask, threshold, scale, out, g, gy, threads): gy, the gradient of block_forward"},
    {"fma_peak", fma_peak, METH_VARARGS,
     "fma_peak(isa, threads, seconds): measured FMA throughput of that many threads, GFLOP/s"},
    {"fused_forward_bf16", fused_forward_bf16, METH_VARARGS,
     "fused_forward_bf16(x, w, bias, y, threads, isa[, stride]): y = bias + W^T fixed(x) in bfloat16 (uint16/int16 bits)"},
    {"fused_wgrad_bf16", fused_wgrad_bf16, METH_VARARGS,
     "fused_wgrad_bf16(x, dy, dw, dbias, threads, isa[, stride]): dw (5M, N) and dbias (N,) in bfloat16; dbias may be None"},
    {"fused_dgrad_bf16", fused_dgrad_bf16, METH_VARARGS,
     "fused_dgrad_bf16(dy, w, dx, threads, isa[, stride]): dx (B, M, H, W) in bfloat16"},
    {"bf16_isas", bf16_isas, METH_NOARGS, "bf16_isas(): the bfloat16 instruction sets this CPU runs, best first"},
    {"matrix_peak", matrix_peak, METH_VARARGS,
     "matrix_peak(isa, threads, seconds): measured bf16 matrix throughput (2 flops per multiply-add), GFLOP/s, "
     "summed over the threads' rates in their own CPU time"},
    {"bf16_emulate", bf16_emulate, METH_VARARGS,
     "bf16_emulate(op, a, b, c): the stand-ins' emulation of 'tdpbf16ps' (a, b (16, 32) bf16 bits, c (16, 16) "
     "float32) or 'vdpbf16ps' (a, b (32,), c (16,)), c updated in place"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fixed_cpu",
    .m_doc = "The fxnn fixed stage (kernels/fixed_cpu.c) and fused layer (kernels/fused_cpu.c) in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fixed_cpu(void) { return PyModule_Create(&module); }
