"""A validation split held out of the training set (``--valid-split F``):
from each class, round(F * its count) training images, chosen by a seeded
generator, move to the validation set; the rest stay for training. The test
set is left alone, to be evaluated once at the end."""
import numpy as np

from .dataset import DataError, Dataset


def hold_out(dataset, fraction, seed):
    """``dataset`` with a stratified ``fraction`` of its training set moved to
    ``valid_x``/``valid_y``; the same seed picks the same images."""
    rng = np.random.default_rng(seed)
    y = dataset.train_y
    picked = [rng.permutation(np.flatnonzero(y == c))[:int(round(fraction * np.count_nonzero(y == c)))]
              for c in range(dataset.num_classes)]
    held = np.zeros(len(y), dtype=bool)
    held[np.concatenate(picked)] = True
    if not held.any() or held.all():
        raise DataError(f"--valid-split {fraction:g} of {len(y):,} training images leaves "
                        f"{'no validation' if not held.any() else 'no training'} images; choose another fraction")
    return Dataset(dataset.name, dataset.train_x[~held], y[~held], dataset.test_x, dataset.test_y,
                   source=dataset.source, files=dataset.files, num_classes=dataset.num_classes,
                   valid_x=dataset.train_x[held], valid_y=y[held],
                   valid_set=f"{int(held.sum()):,} images ({fraction:g}) held out of the training set, "
                             f"stratified by class, chosen by the seed")
