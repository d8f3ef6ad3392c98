"""How large a record's parameter snapshots will be, said before training
when they are large (``--record-params all`` records every parameter at
every record, as the original did)."""
import numpy as np

#: Snapshots larger than this get a line before training.
WARN_BYTES = 100e6
SNAPSHOT_BYTES = np.dtype(np.float32).itemsize  # the recorder stores float32


def snapshot_bytes(param_shapes, snapshots):
    """Bytes of ``snapshots`` snapshots of parameters of ``param_shapes``."""
    return snapshots * SNAPSHOT_BYTES * sum(int(np.prod(shape)) for shape in param_shapes.values())


def megabytes(size):
    """``size`` bytes in words: "5.2 MB", "522 MB", "6.6 GB"."""
    if size >= 1e9:
        return f"{size / 1e9:,.1f} GB"
    return f"{size / 1e6:.1f} MB" if size < 100e6 else f"{size / 1e6:,.0f} MB"


def warning(out, param_shapes, num_records, record_params):
    """One line when the record ``out`` will hold more than WARN_BYTES of
    snapshots, else None."""
    if record_params != "all":
        return None
    size = snapshot_bytes(param_shapes, num_records + 1)
    if size <= WARN_BYTES:
        return None
    return (f"Note: {out} will hold {num_records + 1} snapshots of the parameters, about {megabytes(size)}; "
            f"--record-params last keeps only the final ones ({megabytes(snapshot_bytes(param_shapes, 1))}).")
