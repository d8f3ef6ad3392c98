"""Dropout masks, drawn in numpy and fed to every engine.

Each conv layer's output gets a mask of uint16 draws; a unit is kept when its
draw is at least ``threshold(p) = round(p * 65536)``, so it is dropped with
probability p (exactly, for p a multiple of 1/65536, e.g. 0.25) and kept
units are scaled by 1/(1-p). Drawing the masks outside the engines makes
them cheap (uint16 draws cost a fraction of float ones, and PyTensor's own
random op is slower still) and identical across engines: with one seed both
engines train on the same masks, so they can be compared with dropout on.
"""
import numpy as np

from .architecture import feature_sizes

LEVELS = 65536


def threshold(p):
    return int(round(p * LEVELS))


def mask_shapes(network, batch):
    """Shapes of the conv layers' outputs (before pooling) for a batch."""
    sizes = feature_sizes(network.input_shape, len(network.convs))
    return [(batch, layer.out_channels, h, w) for layer, (h, w) in zip(network.convs, sizes)]


def draw(rng, network, batch, p):
    """One mask per conv layer, or none when p == 0."""
    if p == 0:
        return []
    return [rng.integers(0, LEVELS, size=shape, dtype=np.uint16) for shape in mask_shapes(network, batch)]


def scaled(mask, p, dtype=np.float32):
    """A drawn mask as the factor to multiply by: 1/(1-p) where kept, 0 where
    dropped (one multiply in the engine instead of a compare and two)."""
    return (mask >= threshold(p)) * np.asarray(1.0 / (1.0 - p), dtype=dtype)
