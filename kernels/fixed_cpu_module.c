/* kernels._fixed_cpu: the C fixed stage of fixed_cpu.c as a Python module.
 *
 *   forward(x, out, threads)   x (P, H, W)    -> out (P, 5, H, W)
 *   adjoint(g, dx, threads)    g (P, 5, H, W) -> dx (P, H, W)
 *
 * Arguments are C-contiguous float32 or float64 buffers (numpy arrays, or
 * torch CPU tensors through .numpy()); the outputs are written in place with
 * the GIL released. Shapes and dtypes are checked here, so a wrong call is a
 * ValueError, never a bad memory access. Built by setup.py; the caller is
 * kernels/cpu_fixed.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "fixed_cpu.c"

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

static PyMethodDef methods[] = {
    {"forward", forward, METH_VARARGS, "forward(x, out, threads): x (P, H, W) -> out (P, 5, H, W)"},
    {"adjoint", adjoint, METH_VARARGS, "adjoint(g, dx, threads): g (P, 5, H, W) -> dx (P, H, W)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fixed_cpu",
    .m_doc = "The fxnn fixed stage in C (kernels/fixed_cpu.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__fixed_cpu(void) { return PyModule_Create(&module); }
