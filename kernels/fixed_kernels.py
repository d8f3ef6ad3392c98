"""The five fixed 3x3 kernels of fxnn, defined once, and the 5M channel layout.

Every implementation of the fixed stage (the C, PyCUDA and Triton kernels
beside this module, their PyTorch and PyTensor bindings, the separable torch
ops) computes the same thing; this module is the single definition they are
all tested against, at the bottom of the dependencies: it imports numpy only.

Kernels (cross-correlation, zero padding, 'same' output size)::

    k=0 SMOOTH   k=1 SOBEL_Y   k=2 SOBEL_X   k=3 CROSS    k=4 IDENTITY
    [1,2,1]      [ 1, 2, 1]    [1,0,-1]      [ 1,0,-1]    [0,0,0]
    [2,4,2]      [ 0, 0, 0]    [2,0,-2]      [ 0,0, 0]    [0,1,0]
    [1,2,1]      [-1,-2,-1]    [1,0,-1]      [-1,0, 1]    [0,0,0]

Each non-identity kernel is an outer product ``column (x) row`` of the 1-D
filters ``SMOOTH_1D = [1,2,1]`` and ``DIFF_1D = [1,0,-1]``, so a fast path
needs two vertical passes (smooth, diff) shared by four horizontal passes.

Channel layout: input channel ``m`` produces output channels ``5*m + k``,
i.e. each input channel's five responses are adjacent ("channel-major").
An output of shape (B, 5*M, H, W) is a free reshape of (B, M, 5, H, W).
The fxnn 1x1 weight of shape (5*M, N) is indexed by that same ``5*m + k``.
"""
import numpy as np

NUM_KERNELS = 5
NAMES = ("smooth", "sobel_y", "sobel_x", "cross", "identity")

SMOOTH_1D = np.array([1.0, 2.0, 1.0])
DIFF_1D = np.array([1.0, 0.0, -1.0])

#: (column filter, row filter) of each separable kernel; None for the identity.
SEPARABLE = (
    (SMOOTH_1D, SMOOTH_1D),
    (DIFF_1D, SMOOTH_1D),
    (SMOOTH_1D, DIFF_1D),
    (DIFF_1D, DIFF_1D),
    None,
)


def _identity_3x3():
    k = np.zeros((3, 3))
    k[1, 1] = 1.0
    return k


#: The five kernels, shape (5, 3, 3), float64.
KERNELS = np.stack([np.outer(*sep) if sep else _identity_3x3() for sep in SEPARABLE])
KERNELS.setflags(write=False)


def fixed_stage_reference(x):
    """Dense reference: correlate each channel of ``x`` (B, M, H, W) with the five
    kernels, zero padded, and return (B, 5*M, H, W) in ``x``'s dtype.

    Plain loops over the nine taps, no separability: the independent oracle
    that every fast path is tested against.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"fixed stage expects a 4-D (B, M, H, W) array, got shape {x.shape}")
    b, m, h, w = x.shape
    xp = np.zeros((b, m, h + 2, w + 2), dtype=np.float64)
    xp[:, :, 1:-1, 1:-1] = x
    out = np.zeros((b, m, NUM_KERNELS, h, w), dtype=np.float64)
    for k in range(NUM_KERNELS):
        for a in range(3):
            for c in range(3):
                if KERNELS[k, a, c]:
                    out[:, :, k] += KERNELS[k, a, c] * xp[:, :, a:a + h, c:c + w]
    return out.reshape(b, m * NUM_KERNELS, h, w).astype(x.dtype, copy=False)


def fixed_stage_grad_reference(g):
    """Gradient of :func:`fixed_stage_reference` w.r.t. its input, given the
    output gradient ``g`` (B, 5*M, H, W): the adjoint, a dense correlation
    with each kernel flipped in both axes, summed over the five kernels."""
    g = np.asarray(g)
    b, c, h, w = g.shape
    if c % NUM_KERNELS:
        raise ValueError(f"gradient has {c} channels, not a multiple of {NUM_KERNELS}")
    g5 = g.reshape(b, c // NUM_KERNELS, NUM_KERNELS, h, w).astype(np.float64)
    gp = np.zeros(g5.shape[:3] + (h + 2, w + 2))
    gp[..., 1:-1, 1:-1] = g5
    dx = np.zeros((b, c // NUM_KERNELS, h, w))
    for k in range(NUM_KERNELS):
        flipped = KERNELS[k, ::-1, ::-1]
        for a in range(3):
            for cc in range(3):
                if flipped[a, cc]:
                    dx += flipped[a, cc] * gp[:, :, k, a:a + h, cc:cc + w]
    return dx.astype(g.dtype, copy=False)


def fixed_conv_reference(x, w, bias=None):
    """The whole fxnn layer in float64 numpy: the fixed stage of ``x``
    (B, M, H, W), then the 1x1 weight ``w`` (5M, N) and ``bias`` (N,):
    (B, N, H, W). The reference of every fused implementation."""
    y = np.einsum("bchw,cn->bnhw", fixed_stage_reference(np.asarray(x, dtype=np.float64)), np.asarray(w, np.float64))
    return y if bias is None else y + np.asarray(bias, np.float64)[None, :, None, None]


def fixed_conv_grad_reference(x, w, dy):
    """Gradients of :func:`fixed_conv_reference` for output gradient ``dy``
    (B, N, H, W): (dx (B, M, H, W), dw (5M, N), dbias (N,)), float64."""
    x5 = fixed_stage_reference(np.asarray(x, dtype=np.float64))
    dy = np.asarray(dy, dtype=np.float64)
    dx = fixed_stage_grad_reference(np.einsum("cn,bnhw->bchw", np.asarray(w, np.float64), dy))
    return dx, np.einsum("bchw,bnhw->cn", x5, dy), dy.sum(axis=(0, 2, 3))


def fold_weights(w, basis=KERNELS):
    """The dense 3x3 kernels equal to the fixed stage of ``basis`` (K, 3, 3),
    fxnn's five by default, followed by the 1x1 weight ``w`` (K*M, N):
    (N, M, 3, 3) with ``W_eff[n, m] = sum_k w[K*m+k, n] * basis[k]``. With
    nothing between the two stages they are one linear map, a dense 3x3
    convolution whose kernels lie in the span of the basis."""
    w = np.asarray(w)
    c, n = w.shape
    k = len(basis)
    if c % k:
        raise ValueError(f"1x1 weight has {c} rows, not a multiple of {k}")
    return np.einsum("mkn,kac->nmac", w.reshape(c // k, k, n), basis).astype(w.dtype)
