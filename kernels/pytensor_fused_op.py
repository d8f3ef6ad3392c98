"""The fused fxnn layer as three PyTensor ops with C code, the C of
``kernels/fused_cpu.c`` that the PyTorch engine's extension is built from:

- :class:`FusedConvOp` (x, w, b) -> y = b + W^T fixed(x), (B, N, H, W);
- :class:`FusedWeightGradOp` (x, dy) -> (dw, db);
- :class:`FusedInputGradOp` (dy, w) -> dx.

Each one's gradient is made of the three (the weight gradient is bilinear in
x and dy, the input gradient in dy and w), so derivatives of any order stay
fused. float32 only; without a C compiler PyTensor runs :meth:`perform`,
the numpy references of :mod:`fxnn.kernels.fixed_kernels`. The instruction set is
``$FXNN_ISA`` when set (read when an op is made), else the best this CPU runs.
"""
import numpy as np
import pytensor.tensor as pt
from pytensor.graph.basic import Apply

from . import native
from .fixed_kernels import NUM_KERNELS, fixed_conv_grad_reference, fixed_conv_reference
from .pytensor_kernels import KernelsOp


class _FusedOp(KernelsOp):
    __props__ = ("threads", "isa")

    def __init__(self, threads=None, isa=None):
        super().__init__(threads)
        self.isa = native.requested_isa() if isa is None else isa

    def _isa_code(self, sub):
        """C that looks the ISA up into ``isa`` or fails with a clear error."""
        return f"""
            int isa = fxnn_isa_lookup("{self.isa}");
            if (isa < 0) {{
                PyErr_SetString(PyExc_ValueError, "FXNN_ISA={self.isa}: this CPU does not run those fused kernels");
                {sub["fail"]}
            }}"""

    @staticmethod
    def _output(out, ndim, dims, sub):
        """C that (re)allocates float32 output ``out`` of shape ``dims``."""
        same = " || ".join(f"PyArray_DIMS({out})[{i}] != {d}" for i, d in enumerate(dims))
        return f"""
            if (!{out} || PyArray_NDIM({out}) != {ndim} || !PyArray_IS_C_CONTIGUOUS({out})
                || PyArray_TYPE({out}) != NPY_FLOAT32 || {same}) {{
                npy_intp shape[{ndim}] = {{{", ".join(dims)}}};
                Py_XDECREF({out});
                {out} = (PyArrayObject *)PyArray_EMPTY({ndim}, shape, NPY_FLOAT32, 0);
                if (!{out}) {{ {sub["fail"]} }}
            }}"""

    @staticmethod
    def _contiguous(names, sub):
        """C that makes contiguous copies c0, c1, ... of the inputs ``names``."""
        lines = [f"PyArrayObject *c{i} = PyArray_GETCONTIGUOUS({n});" for i, n in enumerate(names)]
        check = " || ".join(f"!c{i}" for i in range(len(names)))
        release = " ".join(f"Py_XDECREF(c{i});" for i in range(len(names)))
        return "\n".join(lines) + f"\n if ({check}) {{ {release} {sub['fail']} }}", release

    @staticmethod
    def _result(rc, release, sub):
        return f"""
            {release}
            if ({rc} == FXNN_ERR_MEMORY) {{ PyErr_NoMemory(); {sub["fail"]} }}
            if ({rc} != 0) {{
                PyErr_SetString(PyExc_ValueError, "fused kernel refused its arguments (images of 2^31 pixels?)");
                {sub["fail"]}
            }}"""

    @staticmethod
    def _tensor(v, ndim):
        v = pt.as_tensor_variable(v)
        if v.type.ndim != ndim or v.type.dtype != "float32":
            raise TypeError(f"the fused fxnn ops take {ndim}-D float32 tensors, got {v.type}")
        return v


class FusedConvOp(_FusedOp):
    """(x (B, M, H, W), w (5M, N), b (N,)) -> y = b + W^T fixed(x), (B, N, H, W)."""

    def make_node(self, x, w, b):
        x, w, b = self._tensor(x, 4), self._tensor(w, 2), self._tensor(b, 1)
        bs, _, h, wd = x.type.shape
        return Apply(self, [x, w, b], [pt.tensor4(dtype="float32", shape=(bs, w.type.shape[1], h, wd))])

    def infer_shape(self, fgraph, node, shapes):
        (b, _, h, w), (_, n), _ = shapes
        return [(b, n, h, w)]

    def perform(self, node, inputs, outputs):
        outputs[0][0] = fixed_conv_reference(*inputs).astype(np.float32)

    def pullback(self, inputs, outputs, cotangents):
        x, w, _ = inputs
        dy = cotangents[0]
        dw, db = FusedWeightGradOp(self.threads, self.isa)(x, dy)
        return [FusedInputGradOp(self.threads, self.isa)(dy, w), dw, db]

    def c_code(self, node, name, inputs, outputs, sub):
        (x, w, b), (y,) = inputs, outputs
        copies, release = self._contiguous([x, w, b], sub)
        d = lambda v, i: f"PyArray_DIMS({v})[{i}]"  # noqa: E731
        return f"""{{
            {self._isa_code(sub)}
            int rc;
            if ({d(w, 0)} != 5 * {d(x, 1)} || {d(b, 0)} != {d(w, 1)}) {{
                PyErr_SetString(PyExc_ValueError, "fused fxnn layer: w must be (5M, N) and b (N,) for x of M channels");
                {sub["fail"]}
            }}
            {self._output(y, 4, [d(x, 0), d(w, 1), d(x, 2), d(x, 3)], sub)}
            {copies}
            rc = fxnn_fused_forward(isa, (const float *)PyArray_DATA(c0), (const float *)PyArray_DATA(c1),
                                    (const float *)PyArray_DATA(c2), (float *)PyArray_DATA({y}),
                                    (long){d(x, 0)}, (long){d(x, 1)}, (long){d(w, 1)}, (long){d(x, 2)},
                                    (long){d(x, 3)}, 1, {self.threads});
            {self._result("rc", release, sub)}
        }}"""


class FusedWeightGradOp(_FusedOp):
    """(x (B, M, H, W), dy (B, N, H, W)) -> (dw (5M, N), db (N,))."""

    def make_node(self, x, dy):
        x, dy = self._tensor(x, 4), self._tensor(dy, 4)
        m, n = x.type.shape[1], dy.type.shape[1]
        return Apply(self, [x, dy], [pt.matrix(dtype="float32", shape=(None if m is None else NUM_KERNELS * m, n)),
                                     pt.vector(dtype="float32", shape=(n,))])

    def infer_shape(self, fgraph, node, shapes):
        (_, m, _, _), (_, n, _, _) = shapes
        return [(NUM_KERNELS * m, n), (n,)]

    def perform(self, node, inputs, outputs):
        x, dy = inputs
        _, dw, db = fixed_conv_grad_reference(x, np.zeros((NUM_KERNELS * x.shape[1], dy.shape[1])), dy)
        outputs[0][0], outputs[1][0] = dw.astype(np.float32), db.astype(np.float32)

    def pullback(self, inputs, outputs, cotangents):
        x, dy = inputs
        gw, gb = cotangents
        gw = pt.zeros((NUM_KERNELS * x.shape[1], dy.shape[1]), dtype="float32") if _disconnected(gw) else gw
        gb = pt.zeros((dy.shape[1],), dtype="float32") if _disconnected(gb) else gb
        return [FusedInputGradOp(self.threads, self.isa)(dy, gw), FusedConvOp(self.threads, self.isa)(x, gw, gb)]

    def c_code(self, node, name, inputs, outputs, sub):
        (x, dy), (dw, db) = inputs, outputs
        copies, release = self._contiguous([x, dy], sub)
        d = lambda v, i: f"PyArray_DIMS({v})[{i}]"  # noqa: E731
        return f"""{{
            {self._isa_code(sub)}
            int rc;
            if ({d(dy, 0)} != {d(x, 0)} || {d(dy, 2)} != {d(x, 2)} || {d(dy, 3)} != {d(x, 3)}) {{
                PyErr_SetString(PyExc_ValueError, "fused fxnn weight gradient: dy must be (B, N, H, W) for x (B, M, H, W)");
                {sub["fail"]}
            }}
            {self._output(dw, 2, [f"5 * {d(x, 1)}", d(dy, 1)], sub)}
            {self._output(db, 1, [d(dy, 1)], sub)}
            {copies}
            rc = fxnn_fused_wgrad(isa, (const float *)PyArray_DATA(c0), (const float *)PyArray_DATA(c1),
                                  (float *)PyArray_DATA({dw}), (float *)PyArray_DATA({db}),
                                  (long){d(x, 0)}, (long){d(x, 1)}, (long){d(dy, 1)}, (long){d(x, 2)},
                                  (long){d(x, 3)}, 1, {self.threads});
            {self._result("rc", release, sub)}
        }}"""


class FusedInputGradOp(_FusedOp):
    """(dy (B, N, H, W), w (5M, N)) -> dx (B, M, H, W)."""

    def make_node(self, dy, w):
        dy, w = self._tensor(dy, 4), self._tensor(w, 2)
        b, _, h, wd = dy.type.shape
        c = w.type.shape[0]
        return Apply(self, [dy, w], [pt.tensor4(dtype="float32",
                                                shape=(b, None if c is None else c // NUM_KERNELS, h, wd))])

    def infer_shape(self, fgraph, node, shapes):
        (b, _, h, w), (c, _) = shapes
        return [(b, c // NUM_KERNELS, h, w)]

    def perform(self, node, inputs, outputs):
        dy, w = inputs
        x = np.zeros((dy.shape[0], w.shape[0] // NUM_KERNELS) + dy.shape[2:])
        outputs[0][0] = fixed_conv_grad_reference(x, w, dy)[0].astype(np.float32)

    def pullback(self, inputs, outputs, cotangents):
        dy, w = inputs
        g = cotangents[0]
        zero_bias = pt.zeros((dy.shape[1],), dtype="float32")
        return [FusedConvOp(self.threads, self.isa)(g, w, zero_bias), FusedWeightGradOp(self.threads, self.isa)(g, dy)[0]]

    def c_code(self, node, name, inputs, outputs, sub):
        (dy, w), (dx,) = inputs, outputs
        copies, release = self._contiguous([dy, w], sub)
        d = lambda v, i: f"PyArray_DIMS({v})[{i}]"  # noqa: E731
        return f"""{{
            {self._isa_code(sub)}
            int rc;
            if ({d(w, 0)} % 5 || {d(w, 1)} != {d(dy, 1)}) {{
                PyErr_SetString(PyExc_ValueError, "fused fxnn input gradient: w must be (5M, N) for dy of N channels");
                {sub["fail"]}
            }}
            {self._output(dx, 4, [d(dy, 0), f"{d(w, 0)} / 5", d(dy, 2), d(dy, 3)], sub)}
            {copies}
            rc = fxnn_fused_dgrad(isa, (const float *)PyArray_DATA(c0), (const float *)PyArray_DATA(c1),
                                  (float *)PyArray_DATA({dx}), (long){d(dy, 0)}, (long)({d(w, 0)} / 5),
                                  (long){d(dy, 1)}, (long){d(dy, 2)}, (long){d(dy, 3)}, 1, {self.threads});
            {self._result("rc", release, sub)}
        }}"""


def _disconnected(v):
    from pytensor.gradient import DisconnectedType
    return isinstance(v.type, DisconnectedType)


def fused_conv(x, w, b):
    """The fxnn layer by the fused C ops."""
    return FusedConvOp()(x, w, b)
