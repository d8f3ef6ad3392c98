"""The original network's forward and backward pass by hand in float64 numpy,
owing nothing to fxnn: an oracle both engines are checked against
(tests/test_numpy_oracle.py), written from the description in docs/network.md.

conv - ReLU - dropout - 2x2 max pool, twice, then dense layers with ReLU and a
softmax last; the loss is mean(-onehot(y) * log(p + 1e-3)) over batch and
classes. Parameters come in the project-wide layout, and the network is read
off them, so any widths work:

* ``conv{i}_w`` of shape (5M, N): an fxnn layer, the five fixed kernels below
  on each input channel m (channel 5m+k), then a 1x1; of shape (N, M, k, k):
  a dense k x k cross-correlation, zero padded to the same size;
* ``mlp{i}_w`` (in, out), ``mlp{i}_b``; ``m_w``, ``m_b``: the baseline,
  logistic regression on the pixels.

The 2x2 pooling drops an odd last row or column, and its gradient goes to
every element of a window equal to the window's maximum (ties included).
"""
import numpy as np

#: fxnn's five fixed kernels (cross-correlation): smooth, sobel_y, sobel_x, cross, identity.
FIXED_KERNELS = np.array([
    [[1, 2, 1], [2, 4, 2], [1, 2, 1]],
    [[1, 2, 1], [0, 0, 0], [-1, -2, -1]],
    [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
    [[1, 0, -1], [0, 0, 0], [-1, 0, 1]],
    [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
], dtype=np.float64)
LOG_EPS = 1e-3
DRAW_LEVELS = 65536  # dropout draws are uint16


def dropout_factors(draws, p):
    """What multiplies a conv layer's ReLU output for uint16 ``draws`` at
    dropout ``p``: 1/(1-p) where the draw is at least round(p * 65536), else 0."""
    return (draws >= round(p * DRAW_LEVELS)) / (1.0 - p)


def _taps(size):
    return [(a, c) for a in range(size) for c in range(size)]


def _pad(x, r):
    return np.pad(x, ((0, 0), (0, 0), (r, r), (r, r)))


def correlate(x, w):
    """(B, M, H, W) with (N, M, k, k) -> (B, N, H, W), zero padded, same size."""
    k = w.shape[-1]
    xp, (_, _, h, width) = _pad(x, k // 2), x.shape
    out = np.zeros((x.shape[0], w.shape[0], h, width))
    for a, c in _taps(k):
        out += np.einsum("bmhw,nm->bnhw", xp[:, :, a:a + h, c:c + width], w[:, :, a, c])
    return out


def correlate_backward(x, w, g):
    """Gradients (dx, dw) of :func:`correlate` for the output gradient ``g``."""
    k = w.shape[-1]
    r, xp, (_, _, h, width) = k // 2, _pad(x, k // 2), x.shape
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for a, c in _taps(k):
        dw[:, :, a, c] = np.einsum("bnhw,bmhw->nm", g, xp[:, :, a:a + h, c:c + width])
        dxp[:, :, a:a + h, c:c + width] += np.einsum("bnhw,nm->bmhw", g, w[:, :, a, c])
    return dxp[:, :, r:r + h, r:r + width], dw


def fixed_stage(x):
    """(B, M, H, W) -> (B, 5M, H, W): the five kernels on each channel, channel 5m+k."""
    xp, (b, m, h, width) = _pad(x, 1), x.shape
    out = np.zeros((b, m, 5, h, width))
    for a, c in _taps(3):
        out += xp[:, :, None, a:a + h, c:c + width] * FIXED_KERNELS[None, None, :, a, c, None, None]
    return out.reshape(b, 5 * m, h, width)


def fixed_stage_backward(g):
    """The input gradient of :func:`fixed_stage` for the output gradient ``g``."""
    b, c5, h, width = g.shape
    g = g.reshape(b, c5 // 5, 5, h, width)
    dxp = np.zeros((b, c5 // 5, h + 2, width + 2))
    for a, c in _taps(3):
        dxp[:, :, a:a + h, c:c + width] += np.einsum("bmkhw,k->bmhw", g, FIXED_KERNELS[:, a, c])
    return dxp[:, :, 1:1 + h, 1:1 + width]


def conv(x, w, bias):
    """A conv layer as its weight's shape says (fxnn 1x1 (5M, N), or dense)."""
    if w.ndim == 2:
        return np.einsum("bchw,cn->bnhw", fixed_stage(x), w) + bias[:, None, None]
    return correlate(x, w) + bias[:, None, None]


def conv_backward(x, w, g):
    """(dx, dw, dbias) of :func:`conv` for the output gradient ``g``."""
    db = g.sum(axis=(0, 2, 3))
    if w.ndim == 2:
        fixed = fixed_stage(x)
        dw = np.einsum("bchw,bnhw->cn", fixed, g)
        return fixed_stage_backward(np.einsum("bnhw,cn->bchw", g, w)), dw, db
    dx, dw = correlate_backward(x, w, g)
    return dx, dw, db


def pool(h):
    """2x2 max pooling, stride 2, an odd last row or column dropped."""
    b, c, rows, cols = h.shape
    windows = h[:, :, :rows // 2 * 2, :cols // 2 * 2].reshape(b, c, rows // 2, 2, cols // 2, 2)
    return windows.max(axis=(3, 5))


def pool_backward(h, g):
    """The gradient of :func:`pool`: ``g`` to every element equal to its window's maximum."""
    out = pool(h)
    dh = np.zeros_like(h)
    for i in (0, 1):
        for j in (0, 1):
            view = h[:, :, i:out.shape[2] * 2:2, j:out.shape[3] * 2:2]
            dh[:, :, i:out.shape[2] * 2:2, j:out.shape[3] * 2:2] = g * (view == out)
    return dh


def _layers(params, prefix):
    return [f"{prefix}{i}" for i in range(len(params)) if f"{prefix}{i}_w" in params]


def forward(params, x, factors=()):
    """Class probabilities (B, K) and the tape the backward pass reads:
    {"convs": [(name, input, output, after ReLU and dropout)], "denses":
    [(name, input, output)]}; ``factors``: one dropout factor array per conv
    layer (see :func:`dropout_factors`), or none for dropout off."""
    params = {n: np.asarray(v, dtype=np.float64) for n, v in params.items()}
    h, tape = np.asarray(x, dtype=np.float64), {"convs": [], "denses": []}
    for i, name in enumerate(_layers(params, "conv")):
        out = conv(h, params[name + "_w"], params[name + "_b"])
        dropped = np.maximum(out, 0) * (factors[i] if len(factors) else 1.0)
        tape["convs"].append((name, h, out, dropped))
        h = pool(dropped)
    h = h.reshape(h.shape[0], -1)
    denses = ["m"] if "m_w" in params else _layers(params, "mlp")
    for i, name in enumerate(denses):
        out = h @ params[name + "_w"] + params[name + "_b"]
        tape["denses"].append((name, h, out))
        h = np.maximum(out, 0) if i + 1 < len(denses) else _softmax(out)
    return h, tape


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def loss(probs, y):
    """The original's loss: mean(-onehot(y) * log(p + 1e-3)) over batch and classes."""
    return -np.log(probs[np.arange(len(y)), y] + LOG_EPS).sum() / probs.size


def loss_and_gradients(params, x, y, factors=()):
    """(loss, {name: d loss / d param}) in float64; ``factors`` as for :func:`forward`."""
    probs, tape = forward(params, x, factors)
    rows = np.arange(len(y))
    dprobs = np.zeros_like(probs)
    dprobs[rows, y] = -1.0 / ((probs[rows, y] + LOG_EPS) * probs.size)
    g = probs * (dprobs - (dprobs * probs).sum(axis=1, keepdims=True))  # through the softmax
    grads = {}
    for i, (name, h, out) in reversed(list(enumerate(tape["denses"]))):
        if i + 1 < len(tape["denses"]):
            g = g * (out > 0)
        w = np.asarray(params[name + "_w"], dtype=np.float64)
        grads[name + "_w"], grads[name + "_b"] = h.T @ g, g.sum(axis=0)
        g = g @ w.T
    for i, (name, h, out, dropped) in reversed(list(enumerate(tape["convs"]))):
        g = pool_backward(dropped, g.reshape(pool(dropped).shape))
        g = g * (factors[i] if len(factors) else 1.0) * (out > 0)
        w = np.asarray(params[name + "_w"], dtype=np.float64)
        g, grads[name + "_w"], grads[name + "_b"] = conv_backward(h, w, g)
    return loss(probs, y), grads
