"""The fixed 3x3 bases a factored conv layer can run its 1x1 over, by name.

A factored layer is a fixed basis of K 3x3 kernels applied to every input
channel (row ``K*m + k`` of its (K*M, N) 1x1 weight, the layout of
:mod:`fxnn.kernels.fixed_kernels` with K in place of 5), then a trainable 1x1;
folded, it is a dense 3x3 conv with kernels ``sum_k w[K*m+k, n] basis[k]``.
Only fxnn's five kernels have fast fixed/fused paths; every other basis
runs folded. A new basis is one entry of :data:`BASES`.

The span of fxnn's five kernels is here too: their Gram matrix, the
orthonormal and isotropic bases of the ablations and the projector of
``cnn-sub`` onto it.

The published bases besides fxnn's (docs/network.md, "Other fixed bases"), each raw
and normalised to unit kernel norm (``-unit``):

* ``dct``: the 3x3 DCT-II basis functions ``cos(pi u (a+1/2)/3) cos(pi v (c+1/2)/3)``
  of Harmonic networks (Ulicny, Krylov and Dahyot), unscaled: orthogonal,
  squared norms 9, 4.5, 2.25. ``dct-unit`` is the orthonormal DCT;
  ``dct-l1`` each kernel divided by its L1 norm, the default of the
  ``dct_filters`` of the Harmonic networks code.
* ``gauss``: the Gaussian and its derivatives up to second order (G, Gx, Gy,
  Gxx, Gxy, Gyy) of RFNN (Jacobsen et al.), sampled on the 3x3 grid at
  :data:`GAUSS_SIGMA`; x is the column offset (rightwards), y the row
  offset (downwards), G integrates to 1 over the plane.
* ``random``: :data:`RANDOM_KERNELS` kernels drawn once, seed
  :data:`RANDOM_SEED`, uniform in +-1/3 (PyTorch's default initialisation
  of a 3x3 depthwise conv), frozen: the random kernels of the LC-block of
  Gavrikov and Keuper, shared here by every input channel.
"""
import functools

import numpy as np

from fxnn.kernels.fixed_kernels import KERNELS, NUM_KERNELS

#: Scale of the Gaussian-derivative basis, in pixels. At sigma = 1 the
#: second derivatives' zero crossings (x = +-sigma) fall on the grid's
#: border, so Gxx and Gyy would vanish on two of its three columns/rows;
#: at 1/sqrt(2) they change sign halfway.
GAUSS_SIGMA = 1 / np.sqrt(2)
#: Kernels of the random basis: 9, enough to span all 3x3 kernels (the
#: LC-block's expansion needs at least that to equal a dense conv).
RANDOM_KERNELS = 9
RANDOM_SEED = 0


def _frozen(array):
    array = np.array(array, dtype=np.float64)
    array.setflags(write=False)
    return array


def dct_basis():
    """(9, 3, 3): the unscaled 2-D DCT-II basis functions, frequency (u, v)
    at index 3u + v (u along rows)."""
    n = np.arange(3)
    cos = np.cos(np.pi * np.outer(n, n + 0.5) / 3)   # cos[u, a]
    return np.einsum("ua,vc->uvac", cos, cos).reshape(9, 3, 3)


def gauss_basis(sigma=GAUSS_SIGMA):
    """(6, 3, 3): G, Gx, Gy, Gxx, Gxy, Gyy of the unit-integral Gaussian of
    scale ``sigma``, sampled at offsets -1, 0, 1."""
    y, x = np.meshgrid([-1.0, 0.0, 1.0], [-1.0, 0.0, 1.0], indexing="ij")
    s2 = sigma ** 2
    g = np.exp(-(x ** 2 + y ** 2) / (2 * s2)) / (2 * np.pi * s2)
    return np.stack([g, -x / s2 * g, -y / s2 * g, (x ** 2 - s2) / s2 ** 2 * g, x * y / s2 ** 2 * g,
                     (y ** 2 - s2) / s2 ** 2 * g])


def random_basis(k=RANDOM_KERNELS, seed=RANDOM_SEED):
    """(k, 3, 3) kernels uniform in +-1/3, drawn from numpy's seeded generator."""
    return np.random.default_rng(seed).uniform(-1 / 3, 1 / 3, size=(k, 3, 3))


def unit(basis):
    """``basis`` with each kernel divided by its Frobenius (L2) norm."""
    return basis / np.linalg.norm(basis.reshape(len(basis), -1), axis=1)[:, None, None]


def l1_unit(basis):
    """``basis`` with each kernel divided by the sum of its absolute values."""
    return basis / np.abs(basis).reshape(len(basis), -1).sum(axis=1)[:, None, None]


# ---- the span of fxnn's five kernels, for the ablation models of models/architecture.py ----

#: Gram matrix of the five kernels as 9-vectors: diag(36, 12, 12, 4, 1) plus
#: <smooth, identity> = 4; training W through this basis is gradient descent
#: on W_eff preconditioned by it.
GRAM = np.einsum("kac,jac->kj", KERNELS, KERNELS)


def _gram_powers():
    """GRAM^(1/2) and GRAM^(-1/2), from its eigendecomposition."""
    values, vectors = np.linalg.eigh(GRAM)
    return vectors @ np.diag(values ** 0.5) @ vectors.T, vectors @ np.diag(values ** -0.5) @ vectors.T


#: GRAM^(1/2): maps coefficients over KERNELS to coefficients over ORTHONORMAL
#: giving the same effective kernel.
GRAM_SQRT, _GRAM_INV_SQRT = _gram_powers()
GRAM_SQRT.setflags(write=False)

#: An orthonormal basis (5, 3, 3) of the span of the five kernels: the
#: symmetric (Loewdin) orthonormalisation GRAM^(-1/2) @ KERNELS, the one
#: closest to the five kernels.
ORTHONORMAL = np.einsum("kj,jac->kac", _GRAM_INV_SQRT, KERNELS)
ORTHONORMAL.setflags(write=False)

#: ORTHONORMAL scaled so that its Gram matrix is (trace(GRAM) / 5) * I = 13 I:
#: the five kernels' mean preconditioning, without their anisotropy.
ISOTROPIC = ORTHONORMAL * np.sqrt(np.trace(GRAM) / NUM_KERNELS)
ISOTROPIC.setflags(write=False)

def project_kernels(w):
    """Dense weights (N, M, 3, 3) projected onto the span of the five kernels,
    through their orthonormal basis: the numpy reference of the engines'
    projection (:func:`span_projector`, which finds the span by an SVD)."""
    w = np.asarray(w)
    flat = ORTHONORMAL.reshape(NUM_KERNELS, 9)
    return ((w.reshape(-1, 9) @ flat.T) @ flat).reshape(w.shape).astype(w.dtype)


#: {name: (K, 3, 3) float64, read-only}. "fxnn" is the five kernels (the
#: only basis with the fixed and fused paths); "ortho" and "iso" are the
#: ablations' bases of their span (above).
BASES = {
    "fxnn": KERNELS, "ortho": ORTHONORMAL, "iso": ISOTROPIC,
    "dct": _frozen(dct_basis()), "dct-unit": _frozen(unit(dct_basis())), "dct-l1": _frozen(l1_unit(dct_basis())),
    "gauss": _frozen(gauss_basis()), "gauss-unit": _frozen(unit(gauss_basis())),
    "random": _frozen(random_basis()), "random-unit": _frozen(unit(random_basis())),
}


def basis_kernels(basis):
    """The (K, 3, 3) float64 kernels of ``basis``: a name of :data:`BASES`
    or an array of K >= 1 finite 3x3 kernels."""
    if isinstance(basis, str):
        if basis not in BASES:
            raise ValueError(f"unknown basis {basis!r}; choose one of {', '.join(BASES)} or pass a (K, 3, 3) array")
        return BASES[basis]
    array = np.asarray(basis, dtype=np.float64)
    if array.ndim != 3 or array.shape[1:] != (3, 3) or not len(array):
        raise ValueError(f"a basis must be a (K, 3, 3) array of K >= 1 kernels, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("a basis must hold finite numbers")
    return array


def gram(basis):
    """(K, K) Gram matrix of the kernels as 9-vectors."""
    b = basis_kernels(basis)
    return np.einsum("kac,jac->kj", b, b)


def mean_squared_norm(basis):
    """Mean squared kernel norm, trace(Gram) / K: with SGD on the 1x1
    weights, the factor by which the basis scales the step on the effective
    kernels on average (13 for fxnn's five, 1 for an orthonormal basis)."""
    return float(np.trace(gram(basis))) / len(basis_kernels(basis))


@functools.lru_cache(maxsize=None)
def kernel_preconditioner(basis, complete=False):
    """(9, 9) matrix P = B^T B of the basis named ``basis`` (B: its kernels
    as rows of 9): SGD on the coefficients of a 1x1 over the basis moves the
    effective 3x3 kernel by -lr P g, so a dense layer whose gradients are
    multiplied by P follows that layer's trajectory. ``complete``: P + (I -
    projector), the directions outside the span stepped at the dense rate."""
    flat = BASES[basis].reshape(len(BASES[basis]), 9)
    p = flat.T @ flat
    return _frozen(p + np.eye(9) - span_projector(basis) if complete else p)


@functools.lru_cache(maxsize=None)
def span_projector(basis):
    """(9, 9) orthogonal projector onto the span of the kernels of the basis
    named ``basis``, acting on flattened 3x3 kernels from the right (for
    fxnn's five, what :func:`project_kernels` projects onto)."""
    flat = BASES[basis].reshape(len(BASES[basis]), 9)
    _, s, vt = np.linalg.svd(flat)
    span = vt[:int(np.sum(s > s[0] * 1e-10))]
    return _frozen(span.T @ span)
