"""``auto`` for the PyTensor engine: each fxnn layer's path per pass, measured
on compiled single-layer functions (:mod:`fxnn.models.fxnn_paths` times and
remembers). PyTensor compiles a graph before it runs, so the choice is made
for the known batch sizes when the engine is built; compiling the contenders
the first time takes seconds, later PyTensor loads them from its cache, and
the choice itself is cached per machine."""
import numpy as np
import pytensor
import pytensor.tensor as pt

from fxnn.kernels import capabilities, native
from fxnn.kernels.pytensor_kernels import default_threads

from .. import fxnn_paths
from ..architecture import feature_sizes
from .backend import fxnn_conv


def available_paths(dtype):
    """The paths that can compute an fxnn layer of ``dtype`` (:func:`fxnn.kernels.capabilities.paths`)."""
    return capabilities.paths("pytensor", "cpu", dtype)


def layer_shapes(network, batch):
    """{layer name: (B, M, N, H, W)} of the fxnn conv layers at ``batch``
    (H, W: :func:`fxnn.models.architecture.feature_sizes`)."""
    sizes = feature_sizes(network.input_shape, len(network.convs))
    return {layer.name: (batch, layer.in_channels, layer.out_channels, h, w)
            for layer, (h, w) in zip(network.convs, sizes) if layer.fxnn_paths}


def path_contenders(shape, dtype, train, input_grad, mode):
    """{path: compiled function}: one pass of an fxnn layer of ``shape`` on
    each available path on random data (timing batch of
    :func:`fxnn.models.fxnn_paths.timing_batch`); ``train``: the gradients of
    weight and bias (and input, when ``input_grad``) too."""
    b, m, n, h, w = shape
    rng = np.random.default_rng(0)
    x = pytensor.shared(rng.standard_normal((fxnn_paths.timing_batch(b, h, w), m, h, w)).astype(dtype))
    weight = pytensor.shared((0.1 * rng.standard_normal((5 * m, n))).astype(dtype))
    bias = pytensor.shared(np.zeros(n, dtype))
    g = pt.constant(rng.standard_normal((x.get_value().shape[0], n, h, w)).astype(dtype))
    contenders = {}
    for path in available_paths(dtype):
        y = fxnn_conv(x, weight, bias, path)
        wrt = [weight, bias] + ([x] if input_grad else [])
        outputs = pytensor.grad(pt.sum(y * g), wrt) if train else [y]
        contenders[path] = pytensor.function([], outputs, mode=mode)
    return contenders


def choose(network, dtype, batches, mode):
    """{(layer name, pass): path} by measurement, for the training and
    validation batch sizes ``batches`` = {pass: B}."""
    chosen = {}
    paths = available_paths(dtype)
    for pass_, batch in batches.items():
        for i, (name, shape) in enumerate(layer_shapes(network, batch).items()):
            train, input_grad = pass_ == "train", pass_ == "train" and i > 0
            key = {"engine": "pytensor", "pytensor": pytensor.__version__, "dtype": dtype,
                   "threads": default_threads(), "shape": list(shape), "pass": pass_, "input_grad": input_grad,
                   "bias": True, "fused": (native.requested_isa() or "best") if "fused" in paths else None}
            chosen[name, pass_] = fxnn_paths.choose(
                key, paths, lambda: path_contenders(shape, dtype, train, input_grad, mode))
    return chosen
