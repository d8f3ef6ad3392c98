"""The functional form of :class:`fxnn.FixedConv2d`, beside ``torch.nn.functional``.

    import fxnn.functional as FF
    y = FF.fixed_conv2d(x, weight, bias, stride=2)      # weight (N, M, 5)
    dense = FF.dense_weight(weight)                      # (N, M, 3, 3): F.conv2d(x, dense, bias, 2, 1) == y

``weight`` is in PyTorch's order, (out_channels, in_channels, K), as
``FixedConv2d.weight``; :func:`record_layout` and :func:`pytorch_layout`
move it to and from the (K*M, N) layout of fxnn's engines and ``.mat``
records. Needs torch.
"""
from fxnn.models.torch.layer import dense_weight, fixed_conv2d, pytorch_layout, record_layout

__all__ = ["fixed_conv2d", "dense_weight", "record_layout", "pytorch_layout"]
