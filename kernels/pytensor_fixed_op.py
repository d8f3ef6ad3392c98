"""The fixed stage as two PyTensor ops with C code: (B, M, H, W) -> (B, 5M, H, W)
and its adjoint, each the gradient of the other.

The C code is ``kernels/fixed_cpu.c``, the same source the PyTorch engine's
extension is built from, compiled by PyTensor into its cache on first use
(:mod:`fxnn.kernels.pytensor_kernels`): one pass over memory each way, where a
graph of pads and slices would write the 5M channels several times over in
its gradient. Without a C compiler PyTensor runs :meth:`perform`, the numpy
references, so the PyTensor engine has no fixed stage of its own in graph ops.
"""
import pytensor.tensor as pt
from pytensor.graph.basic import Apply

from .fixed_kernels import NUM_KERNELS, fixed_stage_grad_reference, fixed_stage_reference
from .pytensor_kernels import KernelsOp

DTYPES = ("float32", "float64")


class _FixedOpBase(KernelsOp):
    """Shared by the forward and the adjoint; ``forward`` says which one."""
    forward = True
    source = "fixed_cpu.c"  # not the fused kernels: a fraction of their compile time

    def make_node(self, x):
        x = pt.as_tensor_variable(x)
        if x.type.ndim != 4 or x.type.dtype not in DTYPES:
            raise TypeError(f"{type(self).__name__} takes a 4-D float32 or float64 tensor, got {x.type}")
        b, c, h, w = x.type.shape
        if c is not None:
            if not self.forward and c % NUM_KERNELS:
                raise ValueError(f"gradient has {c} channels, not a multiple of {NUM_KERNELS}")
            c = c * NUM_KERNELS if self.forward else c // NUM_KERNELS
        return Apply(self, [x], [x.type.clone(shape=(b, c, h, w))()])

    def infer_shape(self, fgraph, node, shapes):
        b, c, h, w = shapes[0]
        return [(b, c * NUM_KERNELS if self.forward else c // NUM_KERNELS, h, w)]

    def perform(self, node, inputs, outputs):
        reference = fixed_stage_reference if self.forward else fixed_stage_grad_reference
        outputs[0][0] = reference(inputs[0]).astype(node.inputs[0].dtype)

    def c_code(self, node, name, inputs, outputs, sub):
        (x,), (out,) = inputs, outputs
        dtype = node.inputs[0].dtype
        suffix, typenum = {"float32": ("f32", "NPY_FLOAT32"), "float64": ("f64", "NPY_FLOAT64")}[dtype]
        ctype = {"float32": "float", "float64": "double"}[dtype]
        fn = f"fxnn_fixed_{'forward' if self.forward else 'adjoint'}_{suffix}"
        # planes P = B*M; forward: (P, H, W) -> (P, 5, H, W), adjoint the reverse
        if self.forward:
            channels, planes = f"5 * PyArray_DIMS({x})[1]", f"PyArray_DIMS({x})[0] * PyArray_DIMS({x})[1]"
        else:
            channels, planes = f"PyArray_DIMS({x})[1] / 5", f"PyArray_DIMS({x})[0] * (PyArray_DIMS({x})[1] / 5)"
        fail = sub["fail"]
        return f"""
        {{
            npy_intp dims[4] = {{PyArray_DIMS({x})[0], {channels}, PyArray_DIMS({x})[2], PyArray_DIMS({x})[3]}};
            PyArrayObject *xc;
            int rc;
            if (!{int(self.forward)} && PyArray_DIMS({x})[1] % 5) {{
                PyErr_SetString(PyExc_ValueError, "fixed stage gradient: channels not a multiple of 5");
                {fail}
            }}
            if (!{out} || PyArray_NDIM({out}) != 4 || !PyArray_IS_C_CONTIGUOUS({out})
                || PyArray_TYPE({out}) != {typenum}
                || PyArray_DIMS({out})[0] != dims[0] || PyArray_DIMS({out})[1] != dims[1]
                || PyArray_DIMS({out})[2] != dims[2] || PyArray_DIMS({out})[3] != dims[3]) {{
                Py_XDECREF({out});
                {out} = (PyArrayObject *)PyArray_EMPTY(4, dims, {typenum}, 0);
                if (!{out}) {{ {fail} }}
            }}
            xc = PyArray_GETCONTIGUOUS({x});
            if (!xc) {{ {fail} }}
            rc = {fn}(({ctype} *)PyArray_DATA(xc), ({ctype} *)PyArray_DATA({out}), (long)({planes}),
                      (long)dims[2], (long)dims[3], {self.threads});
            Py_DECREF(xc);
            if (rc) {{ PyErr_NoMemory(); {fail} }}
        }}
        """


class FixedStageOp(_FixedOpBase):
    """(B, M, H, W) -> (B, 5M, H, W), channel ``5m+k``."""
    forward = True

    def pullback(self, inputs, outputs, cotangents):
        return [FixedAdjointOp(self.threads)(cotangents[0])]


class FixedAdjointOp(_FixedOpBase):
    """The adjoint (B, 5M, H, W) -> (B, M, H, W); its gradient is the forward."""
    forward = False

    def pullback(self, inputs, outputs, cotangents):
        return [FixedStageOp(self.threads)(cotangents[0])]


def fixed_stage_op(x):
    """The fixed stage of ``x`` by the C op."""
    return FixedStageOp()(x)
