"""Console output in the original fxnn's format, plus a progress bar on
terminals (:class:`fxnn.files.progress.Progress`, drawn by the training loop).

The record lines are exactly the original's::

    Iter 00100/10000: loss|erate 0.125169| 39.05% valid loss|erate 0.053871| 16.81%

The progress bar (the iterations of a record, then the images of its
validation) is drawn on stderr only when stderr is a terminal, and is erased
before the next record line, so logs redirected to a file stay clean.
"""


def record_line(iteration, total, tloss, terate, vloss, verate):
    """One record line; ``tloss``/``terate`` None before any training."""
    width = max(5, len(str(total)))
    train = "--------|------%" if tloss is None else f"{tloss:8.6f}|{terate * 100:6.2f}%"
    return (f"Iter {iteration:0{width}d}/{total:0{width}d}: loss|erate {train} "
            f"valid loss|erate {vloss:8.6f}|{verate * 100:6.2f}%")
