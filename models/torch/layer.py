"""``FixedConv2d``: the fxnn layer as a drop-in PyTorch module.

    layer = FixedConv2d(64, 128, 3, stride=2, padding=1)   # for nn.Conv2d(64, 128, 3, stride=2, padding=1)

The fixed stage (:func:`fxnn.kernels.torch_fixed.fixed_stage`, five fixed 3x3
kernels per input channel, nothing trainable) followed by a trainable 1x1
convolution, with ``nn.Conv2d``'s arguments (what a fixed 3x3 stage cannot
be is refused: :func:`refusal`). ``weight`` is in PyTorch's order,
(out_channels, in_channels, 5); the engines and fxnn's ``.mat`` records keep
the original's (5 * in_channels, out_channels) layout, row ``5*m + k`` (the
5M layout of :mod:`fxnn.kernels.fixed_kernels`): :func:`record_layout` and
:func:`pytorch_layout` are the two views of one another, and
:func:`fixed_conv2d_record` is the layer on the record layout (the engines'
and benchmarks' form). It computes on one of the paths of
:mod:`fxnn.models.fxnn_paths` (fixed, fused, folded), by default the one
measured fastest for its shape and stride. ``FixedConv2d(M, N, basis="dct")``
(a name of :mod:`fxnn.models.fixed_bases`, or a (K, 3, 3) array) runs its 1x1
over another fixed basis instead: weight (out_channels, in_channels, K),
always on the folded path (the fixed and fused paths compute fxnn's five
kernels only). :func:`fixed_conv2d` is the functional form
(``fxnn.functional``).
"""
import math
import numbers

import torch
from torch import nn

from fxnn.kernels.fixed_kernels import NUM_KERNELS

from .. import network
from ..fixed_bases import basis_kernels
from ..fxnn_paths import PATHS
from ..hyperparameters import HYP
from .backend import KERNELS_TENSOR, BACKEND
from .paths import fixed_conv2d_record

#: What a conv must be to be a FixedConv2d, in words (the refusals say it).
SUPPORTED = ("kernel_size=3, stride 1 or 2, padding=1 (or 'same' at stride 1), dilation=1, groups=1, "
             "padding_mode='zeros'")


def _pair(value):
    """``value`` as a pair of ints: an integer twice, a sequence of two as a
    tuple, else None."""
    def integer(v):
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if integer(value):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(integer(v) for v in value):
        return int(value[0]), int(value[1])
    return None


def refusal(kernel_size=3, stride=1, padding=1, dilation=1, groups=1, padding_mode="zeros"):
    """Why a conv with these ``nn.Conv2d`` arguments cannot be a
    :class:`FixedConv2d` (one line naming what is supported), or None."""
    got = []
    if _pair(kernel_size) != (3, 3):
        got.append(f"kernel_size={kernel_size!r}")
    if _pair(stride) not in ((1, 1), (2, 2)):
        got.append(f"stride={stride!r}")
    if not (_pair(padding) == (1, 1) or (padding == "same" and _pair(stride) == (1, 1))):
        got.append(f"padding={padding!r}" + (f" with stride={stride!r}" if padding == "same" else ""))
    if _pair(dilation) != (1, 1):
        got.append(f"dilation={dilation!r}")
    if groups != 1:
        got.append(f"groups={groups!r}")
    if padding_mode != "zeros":
        got.append(f"padding_mode={padding_mode!r}")
    return f"FixedConv2d supports {SUPPORTED}; got {', '.join(got)}" if got else None


def _check(**arguments):
    reason = refusal(**arguments)
    if reason:
        raise ValueError(reason)


def record_layout(weight):
    """A (N, M, K) FixedConv2d weight as the (K*M, N) record layout, row
    ``K*m + k`` (a view; differentiable)."""
    return weight.reshape(weight.shape[0], -1).t()


def pytorch_layout(record, num_kernels=NUM_KERNELS):
    """A (K*M, N) record-layout weight as FixedConv2d's (N, M, K) (a view)."""
    rows, n = record.shape
    return record.t().reshape(n, rows // num_kernels, num_kernels)


def _basis(basis):
    """The (K, 3, 3) kernels of ``basis`` (a name, an array or a tensor) as
    :func:`fxnn.models.network.fold` takes them."""
    if isinstance(basis, str) and basis == "fxnn":
        return KERNELS_TENSOR
    return basis if isinstance(basis, torch.Tensor) else basis_kernels(basis)


def dense_weight(weight, basis="fxnn"):
    """The (N, M, 3, 3) dense kernels ``sum_k weight[n, m, k] * basis[k]`` of a
    FixedConv2d weight (N, M, K): the ``nn.Conv2d`` weight computing the same
    (:func:`fxnn.functional.dense_weight`); differentiable."""
    return network.fold(BACKEND, record_layout(weight), _basis(basis))


def fixed_conv2d(input, weight, bias=None, stride=1, padding=1, path="auto", basis="fxnn"):
    """The functional form of :class:`FixedConv2d` (:func:`fxnn.functional.fixed_conv2d`):
    ``input`` (B, M, H, W) or (M, H, W), ``weight`` (N, M, K) in PyTorch's
    order, ``bias`` (N,) or None, ``stride`` 1 or 2, ``padding`` 1 or "same"
    (stride 1), ``path`` as :class:`FixedConv2d`'s; ``basis`` the name of a
    basis of :mod:`fxnn.models.fixed_bases`, a (K, 3, 3) array or tensor
    (not fxnn's: folded only). Returns (B, N, Ho, Wo), Ho = (H - 1) // stride + 1."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    fxnn_basis = isinstance(basis, str) and basis == "fxnn"
    if not fxnn_basis and path not in ("auto", "folded"):
        raise ValueError(f"path {path!r} computes fxnn's five kernels only; another basis runs folded: "
                         f"use path='folded' or 'auto'")
    kernels = _basis(basis)
    k = kernels.shape[0]
    if weight.dim() != 3 or weight.shape[2] != k:
        raise ValueError(f"weight must be (out_channels, in_channels, {k}) for a basis of {k} kernels, got shape "
                         f"{tuple(weight.shape)} (a ({k}M, N) record-layout weight takes fixed_conv2d_record)")
    _check(stride=stride, padding=padding)
    stride = _pair(stride)[0]
    if input.dim() not in (3, 4) or input.shape[-3] != weight.shape[1]:
        raise ValueError(f"input must be (B, {weight.shape[1]}, H, W) or ({weight.shape[1]}, H, W) for a weight "
                         f"of {weight.shape[1]} input channels, got shape {tuple(input.shape)}")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, as nn.Conv2d's (the weight is {weight.dtype}), "
                        f"got {input.dtype}: convert it first, e.g. input.float()")
    x = input if input.dim() == 4 else input[None]
    record = record_layout(weight)
    if fxnn_basis:
        y = fixed_conv2d_record(x, record, bias, path, stride)
    else:
        y = network.factored_conv(BACKEND, x, record, bias, "folded", kernels, stride)
    return y if input.dim() == 4 else y[0]


class FixedConv2d(nn.Module):
    r"""A 3x3 convolution over a fixed basis: each input channel is
    correlated with K fixed 3x3 kernels (fxnn's five by default: smooth,
    Sobel y, Sobel x, cross, identity; nothing trainable), then a trainable
    1x1 convolution mixes the K*M responses into ``out_channels``. It takes
    ``nn.Conv2d``'s arguments and computes what an ``nn.Conv2d(in_channels,
    out_channels, 3, stride, padding=1)`` would with the dense kernels
    ``W[n, m] = sum_k weight[n, m, k] * basis[k]`` (:func:`fold`), with 5/9 of
    its trainable weights.

    Args:
        in_channels: channels of the input, M.
        out_channels: channels of the output, N.
        kernel_size: 3 (the basis' kernels are 3x3).
        stride: 1 or 2 (an int or a pair of equal ints).
        padding: 1 or "same" (stride 1 only); zeros.
        dilation, groups: 1.
        bias: whether to add a trainable bias (N,).
        padding_mode: "zeros".
        device, dtype: of the parameters.
        basis: "fxnn" (the five kernels, every path), a name of
            :data:`fxnn.models.fixed_bases.BASES` or a (K, 3, 3) array:
            another basis, always computed folded.
        path: how to compute it (:mod:`fxnn.models.fxnn_paths`): "fixed"
            (the fixed stage, then the 1x1 as a GEMM), "fused" (one kernel,
            the K*M responses never stored), "folded" (a dense 3x3 conv
            with the folded kernels) or "auto" (the fastest, measured once
            per shape, stride, dtype and pass).

    Any other ``kernel_size``, ``stride``, ``padding``, ``dilation``,
    ``groups`` or ``padding_mode`` is refused with a ValueError naming what
    is supported.

    Shape:
        - Input: (B, M, H, W) or (M, H, W).
        - Output: (B, N, Ho, Wo) or (N, Ho, Wo), Ho = (H - 1) // stride + 1,
          Wo = (W - 1) // stride + 1.

    Attributes:
        weight: (out_channels, in_channels, K), ``weight[n, m, k]`` the
            coefficient of kernel k of input channel m in output channel n;
            ``nn.init`` sees fan_in = M*K. :meth:`record_weight` gives it in
            the (K*M, N) layout of fxnn's engines and ``.mat`` records (row
            ``K*m + k``), :meth:`load_record_weight` sets it from one.
        bias: (out_channels,), or None.

    Examples::

        >>> layer = FixedConv2d(16, 32, 3, stride=2, padding=1)
        >>> layer(torch.randn(8, 16, 28, 28)).shape
        torch.Size([8, 32, 14, 14])
        >>> layer.weight.shape
        torch.Size([32, 16, 5])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=1, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None,
                 basis="fxnn", path: str = "auto") -> None:
        super().__init__()
        _check(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation, groups=groups,
               padding_mode=padding_mode)
        if path not in PATHS:
            raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
        kernels = basis_kernels(basis)
        #: the basis' name, or "custom" for an array; None of the module's state
        self.basis = basis if isinstance(basis, str) else "custom"
        if self.basis != "fxnn":
            if path not in ("auto", "folded"):
                raise ValueError(f"path {path!r} computes fxnn's five kernels only; a layer over basis "
                                 f"{self.basis!r} runs folded: use path='folded' or 'auto'")
            path = "folded"
            # a buffer, so that .to(device) moves it, not in the state_dict; float64, cast
            # to the weight's dtype when folded, so that .double() after float32 loses nothing
            self.register_buffer("kernels", torch.tensor(kernels, dtype=torch.float64, device=device),
                                 persistent=False)
        self.in_channels, self.out_channels, self.path = in_channels, out_channels, path
        self.kernel_size, self.stride = (3, 3), _pair(stride)
        self.padding = padding if padding == "same" else (1, 1)
        self.dilation, self.groups, self.padding_mode = (1, 1), 1, "zeros"
        self.num_kernels = len(kernels)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, self.num_kernels, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """fxnn's initialisation: weight uniform in +-0.3/sqrt(K*M + N)
        (``fxnn_1x1_init_scale`` of :data:`fxnn.models.hyperparameters.HYP`;
        K = 5 for fxnn's kernels), bias zero."""
        bound = HYP.fxnn_1x1_init_scale / math.sqrt(self.num_kernels * self.in_channels + self.out_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def record_weight(self) -> torch.Tensor:
        """The weight in the record layout (K*M, N), row ``K*m + k``: a view."""
        return record_layout(self.weight)

    @torch.no_grad()
    def load_record_weight(self, record) -> None:
        """Set the weight from a (K*M, N) record-layout array or tensor (as
        a ``.mat`` record's ``conv*_w`` holds it)."""
        record = torch.as_tensor(record)
        expected = (self.num_kernels * self.in_channels, self.out_channels)
        if tuple(record.shape) != expected:
            raise ValueError(f"a record weight of this layer is {expected}, got {tuple(record.shape)}")
        self.weight.copy_(pytorch_layout(record, self.num_kernels))

    def _basis(self):
        return "fxnn" if self.basis == "fxnn" else self.kernels

    def dense_weight(self) -> torch.Tensor:
        """The (N, M, 3, 3) kernels of the ``nn.Conv2d`` computing the same
        (:func:`dense_weight`); differentiable."""
        return dense_weight(self.weight, self._basis())

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return fixed_conv2d(input, self.weight, self.bias, self.stride[0], self.padding, self.path, self._basis())

    def extra_repr(self) -> str:
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")
        if self.bias is None:
            text += ", bias=False"
        return text + f", basis={self.basis}, path={self.path}"
