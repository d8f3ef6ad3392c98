"""The network of fxnn, described once in plain Python/numpy for every engine.

conv(32)-pool-conv(64)-pool-fc384-fc192-fcK (K classes, 10 for MNIST) with ReLU, dropout after each
conv layer (training only), 2x2 max pooling (odd sizes floor, as ignore_border)
and a softmax. ``fxnn`` and ``cnn`` differ only in the conv layer; ``baseline``
is logistic regression on the pixels. The ablation models (:data:`ABLATIONS`)
change one thing each about the conv layers of fxnn or cnn; the basis models
(:data:`BASIS_MODELS`) are fxnn over another fixed basis of :mod:`fxnn.models.fixed_bases`.

Parameter names, shapes and layouts are the original's and are shared by all
engines, so parameters move between engines and every ``.mat`` reads the same:

* fxnn (and fxnn-ortho, fxnn-iso) conv layer ``conv{i}_w``: (5*M, N), rows in the 5M layout of
  :mod:`fxnn.kernels.fixed_kernels`; ``conv{i}_b``: (N,); over another basis of K
  kernels (:data:`BASIS_MODELS`) (K*M, N) in the same layout
* cnn (and cnn-sub, cnn-fxinit, cnn-x13, cnn-precond*) conv layer ``conv{i}_w``: (N, M, k, k)
  (cross-correlation); ``conv{i}_b``: (N,)
* dense ``mlp{i}_w``: (fan_in, fan_out); ``mlp{i}_b``: (fan_out,)
* baseline ``m_w``: (C*H*W, K); ``m_b``: (K,)

The residual network of ``--arch resnet`` (:mod:`fxnn.models.resnet`) is made
of the same :class:`ConvLayer` s, so every model's conv layers are what they are here.
"""
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from fxnn.kernels.fixed_kernels import fold_weights

from .fixed_bases import BASES, kernel_preconditioner, mean_squared_norm, span_projector
from .hyperparameters import HYP

#: The ablations: each changes one thing about fxnn or cnn (docs/network.md, "Ablations").
ABLATIONS = {
    "fxnn-ortho": "fxnn with an orthonormal basis of the same 5-dim span, from the same initial effective "
                  "kernels (no preconditioning by the Gram matrix)",
    "fxnn-iso": "fxnn-ortho's basis scaled to fxnn's mean preconditioning (Gram matrix 13 I), from the same "
                "initial effective kernels (fxnn's step size without its anisotropy)",
    "cnn-sub": "cnn's dense 3x3 weights, projected onto the span of the five kernels after every update",
    "cnn-fxinit": "cnn whose initial kernels are drawn as fxnn's effective kernels (fxnn's init, folded)",
    "cnn-x13": "cnn whose conv weights are trained as W = sqrt(13) V, from cnn's initial kernels: with SGD, "
               "a 13x learn rate on them, fxnn's mean preconditioning without its basis or subspace",
    "cnn-precond": "cnn whose conv gradients are multiplied by P = B^T B of fxnn's five kernels before each "
                   "update, from fxnn's initial effective kernels: fxnn's exact trajectory (SGD, momentum) "
                   "in dense weights",
    "cnn-precond-full": "cnn-precond with P = B^T B + (I - projector): the four directions outside fxnn's span "
                        "also stepped, at cnn's rate",
}
#: fxnn over another fixed basis of :mod:`fxnn.models.fixed_bases` (docs/network.md, "Other fixed bases").
BASIS_MODELS = {
    "fxnn-dct": "the 3x3 DCT basis of Harmonic networks, 9 orthogonal kernels, unscaled",
    "fxnn-dct-unit": "the orthonormal 3x3 DCT basis",
    "fxnn-dct-l1": "the 3x3 DCT basis, each kernel divided by its L1 norm (the Harmonic networks code's default)",
    "fxnn-gauss": "RFNN's Gaussian derivatives up to second order, 6 kernels",
    "fxnn-gauss-unit": "RFNN's Gaussian derivatives, each of unit norm",
    "fxnn-random": "9 frozen random kernels (the LC-block of Gavrikov and Keuper)",
    "fxnn-random-unit": "the 9 frozen random kernels, each of unit norm",
}

#: Mean eigenvalue of the five kernels' Gram matrix (trace 65 / 5): the factor
#: by which fxnn's basis scales the step on the effective kernels, on average.
MEAN_GRAM = mean_squared_norm("fxnn")
CONV_CHANNELS = (32, 64)
HIDDEN_UNITS = (384, 192)
LOG_EPS = 1e-3             # the original's loss: mean(-onehot(y) * log(p + 1e-3)) over batch and classes


#: Floats per image the loss keeps for its gradient: the label's index (an int64) and its probability.
LOSS_FLOATS = 3


@dataclass(frozen=True)
class ConvKind:
    """What a model's conv layers are made of: ``basis``, a name of
    :data:`fxnn.models.fixed_bases.BASES` for a 1x1 over that fixed basis (None:
    a dense k x k conv); ``weight_scale``, the conv uses ``weight_scale * w``;
    ``projection``, the name of a basis onto whose span dense 3x3 weights
    are projected after every update (None: no projection); ``init``,
    "own" (uniform in +-init_bound) or "fxnn" (drawn as fxnn's 1x1 weights
    and expressed in this layer's weights, so it starts from fxnn's
    effective kernels); ``preconditioner``, the name of a basis whose (9, 9)
    B^T B multiplies a dense 3x3 layer's gradients before every update
    (``complete_preconditioner``: plus the complement of its span), None: none."""
    basis: str = None
    weight_scale: float = 1.0
    projection: str = None
    init: str = "own"
    preconditioner: str = None
    complete_preconditioner: bool = False


#: {model: ConvKind} of every model with conv layers: a new ablation or basis is one entry.
CONV_KINDS = {
    "fxnn": ConvKind(basis="fxnn"),
    "cnn": ConvKind(),
    "fxnn-ortho": ConvKind(basis="ortho", init="fxnn"),
    "fxnn-iso": ConvKind(basis="iso", init="fxnn"),
    "cnn-sub": ConvKind(projection="fxnn"),
    "cnn-fxinit": ConvKind(init="fxnn"),
    "cnn-x13": ConvKind(weight_scale=float(np.sqrt(MEAN_GRAM))),
    "cnn-precond": ConvKind(preconditioner="fxnn", init="fxnn"),
    "cnn-precond-full": ConvKind(preconditioner="fxnn", complete_preconditioner=True, init="fxnn"),
    **{model: ConvKind(basis=model[len("fxnn-"):]) for model in BASIS_MODELS},
}
#: {model: name in models.fixed_bases.BASES} of the models whose conv layers
#: are a fixed basis then a 1x1 (factored); the others' are dense.
MODEL_BASES = {model: kind.basis for model, kind in CONV_KINDS.items() if kind.basis}
MODELS = ("fxnn", "cnn", "baseline") + tuple(ABLATIONS) + tuple(BASIS_MODELS)
#: ``--kernel-init``: "model", each model's own initialisation; "cnn" or "fxnn", every conv
#: layer's initial effective kernels drawn by the model's own rule, then scaled to the expected
#: squared norm of that model's (:meth:`ConvLayer.kernel_init_scale`).
KERNEL_INITS = ("model", "cnn", "fxnn")


@dataclass(frozen=True)
class ConvLayer:
    name: str        # "conv0", "conv1"
    in_channels: int
    out_channels: int
    size: int        # kernel size (3 for all but cnn)
    kind: ConvKind = ConvKind()
    stride: int = 1  # every stride-th output pixel (2 in the residual network's downsampling blocks)
    kernel_init: str = "model"  # a name of KERNEL_INITS

    @property
    def basis(self):
        """The fixed basis' name of a factored layer, None for a dense one."""
        return self.kind.basis

    @property
    def factored(self):
        """True for a 1x1 over a fixed basis (weight (K*M, N)), False for a
        dense k x k conv (weight (N, M, k, k))."""
        return self.basis is not None

    @property
    def fxnn_paths(self):
        """True when the basis is fxnn's five kernels, which have the fixed
        and fused paths; a factored layer over any other basis runs folded."""
        return self.basis == "fxnn"

    @property
    def kernels(self):
        """The fixed basis of a factored layer, (K, 3, 3)."""
        return BASES[self.basis]

    @property
    def weight_scale(self):
        return self.kind.weight_scale

    @property
    def projection(self):
        return self.kind.projection

    @property
    def projector(self):
        """(9, 9) projector onto the span of the projection's basis."""
        return span_projector(self.projection)

    @property
    def preconditioner(self):
        """(9, 9) matrix the dense weights' gradients are multiplied by before
        each update (:func:`fxnn.models.fixed_bases.kernel_preconditioner`), or None."""
        kind = self.kind
        return kernel_preconditioner(kind.preconditioner, kind.complete_preconditioner) if kind.preconditioner \
            else None

    def bias_shape(self):
        return (self.out_channels,)

    def weight_shape(self):
        if self.factored:
            return (len(self.kernels) * self.in_channels, self.out_channels)
        return (self.out_channels, self.in_channels, self.size, self.size)

    def init_bound(self):
        if self.factored:  # fxnn's rule, with the basis' K in place of 5
            return HYP.fxnn_1x1_init_scale / np.sqrt(len(self.kernels) * self.in_channels + self.out_channels)
        fan_in = self.in_channels * self.size * self.size
        return HYP.init_scale / np.sqrt(fan_in + self.out_channels)

    def init_weight(self, rng, dtype):
        """Fresh weights, times :meth:`kernel_init_scale` (1 by default). "own":
        uniform in +-init_bound, projected when the layer projects, divided by
        the weight scale (so that the initial kernels are the unscaled
        layer's). "fxnn": fxnn's 1x1 weights, folded for a dense layer, for a
        factored one the coefficients over its basis of the same effective
        kernels (least squares, exact when the basis spans fxnn's kernels)."""
        scale = self.kernel_init_scale()
        if self.kind.init == "fxnn":
            fxnn = ConvLayer(self.name, self.in_channels, self.out_channels, 3, CONV_KINDS["fxnn"])
            effective = fold_weights(fxnn.init_weight(rng, np.float64))
            if not self.factored:
                return (effective * scale).astype(dtype)
            k = len(self.kernels)
            flat = effective.transpose(1, 0, 2, 3).reshape(-1, 9)          # (M*N, 9)
            coefficients = np.linalg.lstsq(self.kernels.reshape(k, 9).T, flat.T, rcond=None)[0]  # (K, M*N)
            w = coefficients.reshape(k, self.in_channels, self.out_channels).transpose(1, 0, 2)
            return (w.reshape(self.weight_shape()) * scale).astype(dtype)
        w = rng.uniform(-self.init_bound(), self.init_bound(), size=self.weight_shape())
        if self.projection:
            w = (w.reshape(-1, 9) @ self.projector).reshape(w.shape)
        return (w / self.weight_scale * scale).astype(dtype)

    def kernel_covariance(self):
        """(k*k, k*k) covariance of one initial effective kernel (one
        input-output channel pair, flattened) under the layer's own rule,
        before :meth:`kernel_init_scale`. Weights uniform in +-b have variance
        b^2/3, so "own" gives b^2/3 times B^T B for a factored layer over B,
        the identity for a dense one, the projector for a projected one;
        "fxnn" gives fxnn's, restricted to a factored layer's span (the least
        squares of :meth:`init_weight`). The weight scale cancels."""
        if self.kind.init == "fxnn":
            fxnn = ConvLayer(self.name, self.in_channels, self.out_channels, 3, CONV_KINDS["fxnn"]).kernel_covariance()
            span = span_projector(self.basis) if self.factored else np.eye(9)
            return span @ fxnn @ span
        variance = self.init_bound() ** 2 / 3
        if self.factored:
            flat = self.kernels.reshape(len(self.kernels), 9)
            return variance * flat.T @ flat
        return variance * (self.projector if self.projection else np.eye(self.size * self.size))

    def kernel_init_scale(self):
        """The factor :meth:`init_weight` multiplies the model's own draw by
        (``--kernel-init``): 1 for "model"; for "cnn" or "fxnn", the one that
        makes the expected squared Frobenius norm of each initial effective
        kernel (one input-output channel pair; the pairs are drawn alike, so
        also of each output channel's M kernels and of the whole folded
        layer) that model's, in a layer of the same channels. The norm, not
        the forward gain, is matched: it does not depend on the data, and it
        is what the SGD step on the effective kernels (lr B^T B g) is measured
        against; at equal norm a basis whose kernels lie along the patches'
        dominant (smooth) direction still passes more of an image through."""
        if self.kernel_init == "model":
            return 1.0
        target = ConvLayer(self.name, self.in_channels, self.out_channels, 3, CONV_KINDS[self.kernel_init])
        return float(np.sqrt(np.trace(target.kernel_covariance()) / np.trace(self.kernel_covariance())))


@dataclass(frozen=True)
class DenseLayer:
    name: str        # "mlp0".. or "m" for the baseline
    in_features: int
    out_features: int
    relu: bool       # False for the last (softmax) layer

    def bias_shape(self):
        return (self.out_features,)

    def weight_shape(self):
        return (self.in_features, self.out_features)

    def init_bound(self):
        return HYP.init_scale / np.sqrt(self.in_features + self.out_features)

    def init_weight(self, rng, dtype):
        return rng.uniform(-self.init_bound(), self.init_bound(), size=self.weight_shape()).astype(dtype)


class Layout:
    """What every network description shares (``--arch``: this module's
    :class:`Network`, :class:`fxnn.models.resnet.ResNet`); a subclass has
    ``convs`` and supplies ``param_shapes`` and ``buffer_shapes``."""

    def basis(self):
        """The name of the fixed basis of its factored conv layers (for
        records), or "none" when its conv layers are dense or absent."""
        return next((layer.basis for layer in self.convs if layer.factored), "none")

    def snapshot_shapes(self):
        """Ordered {name: shape} of what a record stores of the network: the
        parameters, then the buffers (state that is not trained, as
        BatchNorm's running statistics)."""
        return OrderedDict(self.param_shapes(), **self.buffer_shapes())


@dataclass(frozen=True)
class Network(Layout):
    model: str
    input_shape: tuple   # (C, H, W)
    convs: tuple         # ConvLayer, each followed by ReLU, dropout, 2x2 max pool
    denses: tuple        # DenseLayer
    conv_lr_scale: float = 1.0  # the conv layers' learn rate is this times the others'
    arch = "original"    # the --arch it is (a class attribute, not a field)

    def buffer_shapes(self):
        """Ordered {name: shape} of its buffers: none."""
        return OrderedDict()

    def init_buffers(self, dtype=np.float32):
        return OrderedDict()

    def activations_per_sample(self, fixed_stage=False):
        """Floats the backward pass keeps per image (for the memory
        preflight): the input, every conv layer's output and its pooled
        block, every dense layer's output, and with ``fixed_stage`` (the
        fixed path) each fxnn layer's 5M-channel fixed stage."""
        c, h, w = self.input_shape
        sizes = feature_sizes(self.input_shape, len(self.convs))
        total = c * h * w + sum(d.out_features for d in self.denses) + LOSS_FLOATS
        for conv, (rows, cols) in zip(self.convs, sizes):
            total += conv.out_channels * (rows * cols + (rows // 2) * (cols // 2))
            if fixed_stage and conv.fxnn_paths:
                total += conv.weight_shape()[0] * rows * cols  # K*M channels
        return total

    def param_shapes(self):
        """Ordered {name: shape} of all trainable parameters."""
        shapes = OrderedDict()
        for layer in self.convs + self.denses:
            shapes[layer.name + "_w"] = layer.weight_shape()
            shapes[layer.name + "_b"] = layer.bias_shape()
        return shapes

    def init_params(self, rng, dtype=np.float32):
        """Fresh parameters drawn from ``rng`` (a numpy Generator): weights
        uniform in +-bound, biases zero. Engine-independent, so one seed gives
        the same starting point on every engine."""
        params = OrderedDict()
        for layer in self.convs + self.denses:
            params[layer.name + "_w"] = layer.init_weight(rng, dtype)
            params[layer.name + "_b"] = np.zeros(layer.bias_shape(), dtype=dtype)
        return params


def feature_sizes(input_shape, convs):
    """(H, W) of the images each of ``convs`` conv layers of a :class:`Network`
    sees (the same at its output: it pads), then after the last pooling: the
    input's (C, H, W), halved by each 2x2 max pooling, which drops an odd last
    row or column. Zipped with the layers, the last is left out."""
    _, h, w = input_shape
    return [(h >> i, w >> i) for i in range(convs + 1)]


def build_network(model, input_shape, num_classes=10, filter_size=HYP.filter_size, conv_lr_scale=1.0,
                  kernel_init="model"):
    """The :class:`Network` for ``model`` on images of ``input_shape`` (C, H, W)
    in ``num_classes`` classes (the last layer's outputs); its conv layers
    train at ``conv_lr_scale`` times the learn rate of the others and start
    at the scale ``kernel_init`` names (:data:`KERNEL_INITS`; the model's own
    is a no-op: cnn's for cnn, fxnn's for fxnn)."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if not (np.isfinite(conv_lr_scale) and conv_lr_scale > 0):
        raise ValueError(f"the conv layers' learn-rate scale must be a positive number, got {conv_lr_scale}")
    if kernel_init not in KERNEL_INITS:
        raise ValueError(f"unknown kernel init {kernel_init!r}; choose one of {', '.join(KERNEL_INITS)}")
    c, h, w = input_shape
    if model == "baseline":
        if conv_lr_scale != 1:
            raise ValueError("baseline has no conv layers: leave out the conv learn-rate scale")
        if kernel_init != "model":
            raise ValueError("baseline has no conv layers: leave out --kernel-init")
        return Network(model, tuple(input_shape), (), (DenseLayer("m", c * h * w, num_classes, False),))
    if filter_size < 1 or filter_size % 2 == 0:
        raise ValueError(f"filter size must be a positive odd number, got {filter_size}")
    if filter_size != 3 and kernel_init != "model":
        raise ValueError(f"--kernel-init {kernel_init} matches 3x3 kernels: leave out -fsize or --kernel-init")
    size = filter_size if model == "cnn" else 3
    convs = []
    channels = c
    for i, out in enumerate(CONV_CHANNELS):
        convs.append(ConvLayer(f"conv{i}", channels, out, size, CONV_KINDS[model], kernel_init=kernel_init))
        channels = out
    h, w = feature_sizes(input_shape, len(convs))[-1]
    if h < 1 or w < 1:
        raise ValueError(f"images of shape {tuple(input_shape)} are too small for two 2x2 poolings")
    widths = (channels * h * w,) + HIDDEN_UNITS + (num_classes,)
    denses = tuple(DenseLayer(f"mlp{i}", widths[i], widths[i + 1], i + 1 < len(widths) - 1)
                   for i in range(len(widths) - 1))
    return Network(model, tuple(input_shape), tuple(convs), denses, conv_lr_scale)
