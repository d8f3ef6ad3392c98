"""The network of fxnn computed once for every engine: its layers, loss and
update rules, over a small :class:`Backend` of primitives.

Each engine is a backend (the primitives on its framework's tensors) plus
what it must do differently: the PyTensor engine builds one graph from these
functions and compiles it (:mod:`fxnn.models.pytensor.engine`), the PyTorch
engine runs them eagerly (:mod:`fxnn.models.torch.engine`). What every engine keeps the same way
(parameters, optimizer state, dropout draws) is :class:`fxnn.models.engines.Engine`. What a layer is made
of (a fixed basis, a weight scale, a projection after each update) is data
of :mod:`fxnn.models.architecture`, read here, so the engines agree by
construction. The numpy references the primitives and the whole are tested
against stay apart: :mod:`fxnn.kernels.fixed_kernels` (the fixed stage, folding),
:mod:`fxnn.models.fixed_bases` (the projection) and :func:`fxnn.models.optimizers.reference_step`.
"""
from typing import Protocol

from . import dropout as dropout_masks
from .architecture import LOG_EPS
from .hyperparameters import HYP


class Backend(Protocol):
    """The primitives an engine supplies, on its own tensors (symbolic for
    PyTensor, eager for PyTorch). Shapes are those of :mod:`fxnn.models.architecture`:
    images (B, C, H, W), dense conv weights (N, M, k, k), 1x1 weights (C, N)."""

    def constant(self, array, like):
        """A float64 numpy array (a basis, a projector) as a tensor of ``like``'s dtype."""

    def scalar(self, value, like):
        """A python number as a scalar of ``like``'s dtype."""

    def conv(self, x, w, bias, size, stride=1):
        """Dense cross-correlation, zero padded by ``size // 2`` (``size``
        odd: 'same' size at stride 1), every ``stride``-th output: (H - 1) //
        stride + 1 rows."""

    def fixed_stage(self, x, stride=1):
        """(B, M, H, W) -> (B, 5M, Ho, Wo): fxnn's five kernels, channel 5m+k,
        at every ``stride``-th pixel (Ho = (H - 1) // stride + 1)."""

    def fused_conv(self, x, w, bias, stride=1):
        """The fixed stage then the 1x1 ``w`` (5M, N), without the 5M channels in memory."""

    def channel_matmul(self, x, w, bias):
        """(B, C, P) with ``w`` (C, N) and ``bias`` (N,) -> (B, N, P)."""

    def combine(self, w, kernels):
        """(M, K, N) coefficients and (K, 3, 3) kernels -> (N, M, 3, 3):
        ``sum_k w[m, k, n] kernels[k]``."""

    def matmul(self, a, b):
        """Matrix product of two 2-D tensors."""

    def block(self, h, mask, p):
        """What follows each conv layer: ReLU, inverted dropout (``mask``:
        uint16 draws of :mod:`fxnn.models.dropout`, or None) and 2x2 max pooling."""

    def relu(self, h):
        """max(h, 0), gradient 0 at 0."""

    def maximum(self, a, b):
        """Elementwise maximum, the gradient to each argument equal to it."""

    def keep(self, mask, threshold, like):
        """1 where ``mask >= threshold``, else 0, in ``like``'s dtype."""

    def softmax(self, h):
        """Row-wise softmax."""

    def log(self, h):
        """Natural logarithm, elementwise."""

    def pick(self, probs, y):
        """``probs[i, y[i]]`` for every row i."""

    def error_rate(self, probs, y):
        """Fraction of rows whose largest entry is not at ``y``."""

    def sqrt(self, h):
        """Square root, elementwise."""

    def batch_norm(self, x, gamma, beta, mean, var, train, momentum, eps):
        """(B, C, H, W) normalised per channel, times ``gamma`` plus ``beta``
        (C,): by the batch's mean and biased variance when ``train``, and then
        the running ``mean`` and ``var`` (None: none) moved in place by
        ``momentum`` towards the batch's mean and unbiased variance (an eager
        backend's); else by ``mean`` and ``var``; ``eps`` added to the variance."""

    def pad_channels(self, x, extra):
        """(B, C, H, W) -> (B, C + extra, H, W), the new channels zero."""

    def spatial_mean(self, h):
        """(B, C, H, W) -> (B, C): the mean over the pixels."""


# ---- layers, written once over a backend -----------------------------------

def fold(be, w, kernels):
    """(K*M, N) 1x1 weight over ``kernels`` (K, 3, 3) -> (N, M, 3, 3) dense
    kernels ``sum_k w[K*m+k, n] kernels[k]``; the numpy reference is
    :func:`fxnn.kernels.fixed_kernels.fold_weights`."""
    c, n = w.shape
    k = kernels.shape[0]
    return be.combine(w.reshape((c // k, k, n)), be.constant(kernels, w))


def project(be, w, projector):
    """Dense (N, M, 3, 3) weights ``w`` projected by the (9, 9) ``projector``
    acting on flattened kernels (any symmetric (9, 9) matrix: a
    preconditioner on gradients too); the numpy reference is
    :func:`fxnn.models.fixed_bases.project_kernels`."""
    return be.matmul(w.reshape((-1, 9)), be.constant(projector, w)).reshape(w.shape)


def pointwise(be, x, w, bias):
    """1x1 convolution: (B, C, H, W) with weight (C, N) -> (B, N, H, W)."""
    b, c, h, width = x.shape
    return be.channel_matmul(x.reshape((b, c, h * width)), w, bias).reshape((b, w.shape[1], h, width))


def pool(be, h):
    """2x2 max pooling, stride 2, an odd last row or column dropped: the
    maximum of the four strided views."""
    rows, cols = h.shape[2] // 2 * 2, h.shape[3] // 2 * 2
    a, b, c, d = (h[:, :, i:rows:2, j:cols:2] for i in (0, 1) for j in (0, 1))
    return be.maximum(be.maximum(a, b), be.maximum(c, d))


def relu_dropout_pool(be, h, mask, p):
    """The block after each conv layer from the primitives (a backend may
    run it as one op instead): pool(relu(h) * dropout factors)."""
    h = be.relu(h)
    if mask is not None:
        h = h * be.keep(mask, dropout_masks.threshold(p), h) * be.scalar(1.0 / (1.0 - p), h)
    return pool(be, h)


def factored_conv(be, x, w, bias, path, kernels, stride=1):
    """A 1x1 over a fixed basis ``kernels`` on ``path`` (see
    :mod:`fxnn.models.fxnn_paths`; fixed and fused compute fxnn's five
    kernels), every ``stride``-th output pixel (padding 1)."""
    if path == "folded":
        return be.conv(x, fold(be, w, kernels), bias, 3, stride)
    if path == "fused":
        return be.fused_conv(x, w, bias, stride)
    return pointwise(be, be.fixed_stage(x, stride), w, bias)


def conv_layer(be, layer, x, w, bias, path):
    """One conv layer of :mod:`fxnn.models.architecture` as its data says: the
    weight scale, then the 1x1 over its basis on ``path``, or a dense conv,
    at the layer's stride."""
    if layer.weight_scale != 1:
        w = w * be.scalar(layer.weight_scale, w)
    if layer.factored:
        return factored_conv(be, x, w, bias, path, layer.kernels, layer.stride)
    return be.conv(x, w, bias, layer.size, layer.stride)


def forward(be, network, params, x, masks=(), dropout=0.0, paths=None):
    """Class probabilities (B, classes) of ``network`` for images ``x``;
    inverted dropout of probability ``dropout`` with ``masks`` (one per conv
    layer) when given; ``paths(layer, h, w, b)`` names the path each
    factored layer runs (the engine's choice, which it records)."""
    h = x
    for i, layer in enumerate(network.convs):
        w, b = params[layer.name + "_w"], params[layer.name + "_b"]
        h = conv_layer(be, layer, h, w, b, paths(layer, h, w, b) if layer.factored else None)
        h = be.block(h, masks[i] if masks else None, dropout)
    h = h.reshape((h.shape[0], -1))
    for layer in network.denses:
        h = be.matmul(h, params[layer.name + "_w"]) + params[layer.name + "_b"]
        h = be.relu(h) if layer.relu else be.softmax(h)
    return h


def objective(be, probs, y):
    """The original's loss, mean(-onehot(y) * log(p + 1e-3)) over batch and
    classes, and the error rate of a batch."""
    picked = be.log(be.pick(probs, y) + be.scalar(LOG_EPS, probs))
    loss = -picked.sum() / be.scalar(probs.shape[0] * probs.shape[1], probs)
    return loss, be.error_rate(probs, y)


# ---- update rules, written once ---------------------------------------------

def update(be, optimizer, p, g, slots, lr, corrections):
    """(new p, {slot: new value}) after one step of ``optimizer``'s rule
    (:mod:`fxnn.models.optimizers`); ``slots`` {slot: value} of this parameter;
    ``corrections``: Adam's (1 - B1^t, 1 - B2^t) of this step."""
    if optimizer == "sgd":
        return p - lr * g, {}
    if optimizer == "momentum":
        v = be.scalar(HYP.momentum, p) * slots["velocity"] + g
        return p - lr * v, {"velocity": v}
    b1, b2 = be.scalar(HYP.adam_beta1, p), be.scalar(HYP.adam_beta2, p)
    m = b1 * slots["m"] + (1 - b1) * g
    v = b2 * slots["v"] + (1 - b2) * g * g
    m_hat, v_hat = m / corrections[0], v / corrections[1]
    return p - lr * m_hat / (be.sqrt(v_hat) + be.scalar(HYP.adam_eps, p)), {"m": m, "v": v}


def updates(be, network, optimizer, params, grads, state, lr, corrections):
    """[(variable, new value)] of one optimizer step on every parameter and
    its state: the gradient of each layer that has a preconditioner
    multiplied by it first, the rate of the conv layers' parameters scaled
    by ``network.conv_lr_scale``, and the projection of each layer that has
    one applied after it."""
    convs = {layer.name + suffix for layer in network.convs for suffix in ("_w", "_b")}
    projectors = {layer.name + "_w": layer.projector for layer in network.convs if layer.projection}
    preconditioners = {layer.name + "_w": layer.preconditioner for layer in network.convs
                       if layer.kind.preconditioner}
    conv_lr = lr * be.scalar(network.conv_lr_scale, lr) if network.conv_lr_scale != 1 else lr
    pairs = []
    for name, p in params.items():
        g = project(be, grads[name], preconditioners[name]) if name in preconditioners else grads[name]
        new_p, new_slots = update(be, optimizer, p, g, {s: state[s][name] for s in state},
                                  conv_lr if name in convs else lr, corrections)
        pairs += [(state[s][name], new_slots[s]) for s in state]
        pairs.append((p, project(be, new_p, projectors[name]) if name in projectors else new_p))
    return pairs
