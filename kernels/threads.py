"""How many threads a run computes on (``fxnn.py --threads``), set once per process.

A run's work goes to up to four pools: PyTorch's intra-op pool (its operators
and MKL; the torch engine's C kernels take ``torch.get_num_threads()``), the
OpenMP runtime (one per process; PyTorch sets its size, the C kernels ask for
their count explicitly), numpy's OpenBLAS (PyTensor's dense layers call it)
and the C kernels of PyTensor's ops, which take :func:`count` when the graph
is built. PyTensor's own elementwise C code runs on one thread (its
``openmp`` option is off unless the user sets it).

:func:`use` sets every pool that is loaded, and the environment variables
that size the ones loaded later; :func:`describe` reads back what each pool
has, for the record.
"""
import os
import sys

_chosen = None


def cores():
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def count():
    """The thread count of this run: the one given to :func:`use`; else
    OMP_NUM_THREADS when it is a positive integer (as PyTorch and OpenBLAS
    read it; a sweep gives each run its share this way); else all cores."""
    if _chosen:
        return _chosen
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else cores()


def use(threads, torch=False):
    """Compute on ``threads`` threads from now on; PyTorch too when it is
    loaded, or ``torch`` (then this imports it). Call before the engine is built: PyTensor's ops take
    their count then."""
    global _chosen
    from threadpoolctl import threadpool_limits

    _chosen = int(threads)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(_chosen)  # pools whose library loads after this call
    threadpool_limits(_chosen)  # pools already loaded (numpy's and scipy's OpenBLAS, OpenMP)
    if torch or "torch" in sys.modules:
        import torch as _torch
        _torch.set_num_threads(_chosen)


def pools():
    """{pool: threads} of the pools loaded in this process: torch's first,
    then by name (threadpoolctl's order varies with what loaded when)."""
    from threadpoolctl import threadpool_info

    found = {}
    for lib in threadpool_info():
        name = {"openblas": "OpenBLAS", "mkl": "MKL", "openmp": "OpenMP"}.get(lib["internal_api"], lib["internal_api"])
        found.setdefault(name, set()).add(lib["num_threads"])
    found = {name: "/".join(str(n) for n in sorted(counts)) for name, counts in sorted(found.items())}
    if "torch" in sys.modules:
        found = {"torch": str(sys.modules["torch"].get_num_threads()), **found}
    return found


def describe(engine):
    """The threads each pool computes on, in words for the record's meta:
    "C kernels 2, torch 2, OpenBLAS 2, OpenMP 2"."""
    kernels = sys.modules["torch"].get_num_threads() if engine == "torch" else count()
    return ", ".join([f"C kernels {kernels}"] + [f"{name} {n}" for name, n in pools().items()])
