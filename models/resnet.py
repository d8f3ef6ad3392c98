"""The residual network of ``--arch resnet``: its layout in plain Python/numpy,
and its forward pass written once over the primitives of :mod:`fxnn.models.network`.

He et al.'s CIFAR ResNet (2016, section 4.2), depth 6n+2 (20 by default): a 3x3
conv from the image to ``w`` channels, BatchNorm and ReLU; three stages of n
basic blocks at ``w``, ``2w`` and ``4w`` channels; global average pooling; one
fully connected layer and a softmax. A basic block is conv-BN-ReLU-conv-BN,
plus its input, then ReLU. The first block of stages 2 and 3 has stride 2 in
its first conv; its shortcut is the paper's option A, parameter-free: the
input at every other pixel (rows and columns 0, 2, ...) with zero channels
appended for the new ones. Every 3x3 conv is a :class:`fxnn.models.architecture.ConvLayer`
of the model's :class:`~fxnn.models.architecture.ConvKind` (dense for cnn, a
1x1 over a fixed basis for fxnn, each ablation's change), without a bias
(the BatchNorm after it has one).

Names (the parameters' layouts are :mod:`fxnn.models.architecture`'s):
``conv{i}_w`` in the order the convs run (``conv0`` the stem, block j's two
``conv{2j+1}``, ``conv{2j+2}``); BatchNorm ``bn{i}_g`` (scale) and ``bn{i}_b``
(shift) after ``conv{i}``, trained like the other parameters, and its
buffers ``bn{i}_mean``, ``bn{i}_var``, the running statistics (PyTorch's:
the batch's unbiased variance, momentum and eps of :data:`~fxnn.models.hyperparameters.HYP`) that training updates
and validation normalises with; ``fc_w`` (4w, classes), ``fc_b``.
"""
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from .architecture import CONV_KINDS, LOSS_FLOATS, ConvLayer, DenseLayer, Layout
from .hyperparameters import HYP
from .network import conv_layer

#: The stride of each stage's first block.
STAGE_STRIDES = (1, 2, 2)


def bn_name(conv):
    """The BatchNorm after conv layer ``conv``: "conv3" -> "bn3"."""
    return "bn" + conv.name[len("conv"):]


@dataclass(frozen=True)
class Block:
    """A basic block: ``conv_a`` (which has the block's stride), BN, ReLU,
    ``conv_b``, BN, plus the shortcut, ReLU."""
    conv_a: ConvLayer
    conv_b: ConvLayer

    @property
    def new_channels(self):
        """Channels the shortcut appends as zeros (option A)."""
        return self.conv_b.out_channels - self.conv_a.in_channels


@dataclass(frozen=True)
class ResNet(Layout):
    model: str
    input_shape: tuple   # (C, H, W)
    stem: ConvLayer
    blocks: tuple        # Block
    fc: DenseLayer
    conv_lr_scale: float = 1.0
    arch = "resnet"

    @property
    def convs(self):
        """Every conv layer, in the order they run."""
        return (self.stem,) + tuple(c for block in self.blocks for c in (block.conv_a, block.conv_b))

    @property
    def denses(self):
        return (self.fc,)

    def param_shapes(self):
        shapes = OrderedDict()
        for conv in self.convs:
            shapes[conv.name + "_w"] = conv.weight_shape()
            shapes[bn_name(conv) + "_g"] = shapes[bn_name(conv) + "_b"] = (conv.out_channels,)
        shapes["fc_w"], shapes["fc_b"] = self.fc.weight_shape(), self.fc.bias_shape()
        return shapes

    def buffer_shapes(self):
        return OrderedDict((bn_name(c) + suffix, (c.out_channels,)) for c in self.convs
                           for suffix in ("_mean", "_var"))

    def init_params(self, rng, dtype=np.float32):
        """Conv and fc weights drawn as :mod:`fxnn.models.architecture` draws
        them (each ConvKind's init), BatchNorm scale 1 and shift 0, fc bias 0."""
        params = OrderedDict()
        for conv in self.convs:
            params[conv.name + "_w"] = conv.init_weight(rng, dtype)
            params[bn_name(conv) + "_g"] = np.ones(conv.out_channels, dtype)
            params[bn_name(conv) + "_b"] = np.zeros(conv.out_channels, dtype)
        params["fc_w"] = self.fc.init_weight(rng, dtype)
        params["fc_b"] = np.zeros(self.fc.bias_shape(), dtype)
        return params

    def init_buffers(self, dtype=np.float32):
        """Running means 0 and variances 1, as PyTorch starts them."""
        return OrderedDict((name, (np.zeros if name.endswith("_mean") else np.ones)(shape, dtype))
                           for name, shape in self.buffer_shapes().items())

    def activations_per_sample(self, fixed_stage=False):
        """Floats the backward pass keeps per image (for the memory
        preflight): the input, each conv's and BatchNorm's output, the
        pooled features, the logits and their softmax, the loss's terms, and
        with ``fixed_stage`` (the fixed path) each fxnn layer's 5M-channel
        fixed stage, at its output's pixels."""
        c, h, w = self.input_shape
        total = c * h * w
        for conv in self.convs:
            h, w = out_size(h, conv.stride), out_size(w, conv.stride)
            total += 2 * conv.out_channels * h * w
            if fixed_stage and conv.fxnn_paths:
                total += conv.weight_shape()[0] * h * w  # K*M channels
        return total + self.fc.in_features + 2 * self.fc.out_features + LOSS_FLOATS


def out_size(size, stride):
    """Rows (or columns) a padded 3x3 conv of ``stride`` leaves of ``size``."""
    return (size - 1) // stride + 1


def check_depth(depth):
    """``depth`` if it is 6n+2 with n >= 1, else ValueError (one line)."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"the resnet's depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110), got {depth}")
    return depth


def build_resnet(model, input_shape, num_classes=10, width=HYP.resnet_width, depth=HYP.resnet_depth,
                 conv_lr_scale=1.0):
    """The :class:`ResNet` of ``model`` (any model with conv layers) on
    images of ``input_shape`` (C, H, W), stages of ``width``, 2 ``width``
    and 4 ``width`` channels, ``depth`` = 6n+2 layers; ValueError (one line)
    for what it cannot be."""
    if model not in CONV_KINDS:
        raise ValueError(f"--arch resnet needs a model with conv layers, not {model!r}: fxnn, cnn, an ablation "
                         f"or a basis model")
    if int(width) != width or width < 1:
        raise ValueError(f"the resnet's width must be a positive integer, got {width}")
    if not (np.isfinite(conv_lr_scale) and conv_lr_scale > 0):
        raise ValueError(f"the conv layers' learn-rate scale must be a positive number, got {conv_lr_scale}")
    n, kind = (check_depth(depth) - 2) // 6, CONV_KINDS[model]
    stem = ConvLayer("conv0", input_shape[0], width, 3, kind)
    blocks, channels = [], width
    for stage, stride in enumerate(STAGE_STRIDES):
        out = width * 2 ** stage
        for j in range(n):
            i = 2 * len(blocks) + 1
            blocks.append(Block(ConvLayer(f"conv{i}", channels, out, 3, kind, stride if j == 0 else 1),
                                ConvLayer(f"conv{i + 1}", out, out, 3, kind)))
            channels = out
    return ResNet(model, tuple(input_shape), stem, tuple(blocks), DenseLayer("fc", channels, num_classes, False),
                  conv_lr_scale)


# ---- the forward pass, written once over a backend ---------------------------

def conv_bn(be, conv, params, buffers, h, train, paths):
    """``conv`` (on the path ``paths`` names when factored), then its BatchNorm."""
    w = params[conv.name + "_w"]
    h = conv_layer(be, conv, h, w, None, paths(conv, h, w, None) if conv.factored else None)
    bn = bn_name(conv)
    mean, var = (None, None) if buffers is None else (buffers[bn + "_mean"], buffers[bn + "_var"])
    return be.batch_norm(h, params[bn + "_g"], params[bn + "_b"], mean, var, train, HYP.bn_momentum, HYP.bn_eps)


def shortcut(be, block, h):
    """Option A: ``h`` at every ``stride``-th pixel, zero channels appended."""
    stride = block.conv_a.stride
    if stride != 1:
        h = h[:, :, ::stride, ::stride]
    return be.pad_channels(h, block.new_channels) if block.new_channels else h


def forward(be, network, params, x, buffers, train, paths):
    """Class probabilities (B, classes) of the :class:`ResNet` ``network``
    for images ``x``. ``train``: BatchNorm normalises by the batch's
    statistics and updates the running ones in ``buffers`` ({name: tensor},
    in place; None: leaves them); else by ``buffers``. ``paths(layer, h, w,
    b)`` names each factored layer's path, as in :func:`fxnn.models.network.forward`."""
    h = be.relu(conv_bn(be, network.stem, params, buffers, x, train, paths))
    for block in network.blocks:
        y = be.relu(conv_bn(be, block.conv_a, params, buffers, h, train, paths))
        y = conv_bn(be, block.conv_b, params, buffers, y, train, paths)
        h = be.relu(y + shortcut(be, block, h))
    h = be.matmul(be.spatial_mean(h), params["fc_w"]) + params["fc_b"]
    return be.softmax(h)
