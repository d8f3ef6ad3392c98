"""What a record's ``meta`` says of how it was made: what ran and where it
came from.

:func:`what_ran`: the model, the data, the engine, device and precision, and
each layer's path; :func:`collect`: fxnn's version and git commit, the
versions of Python and the libraries, the CPU (and GPU when used), the
threads, and the network's parameter counts."""
import math
import os
import platform
import subprocess
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISA_FLAGS = ("avx512f", "avx2", "fma")


def git_commit(root=ROOT):
    """The commit of the checkout fxnn runs from ("... with local changes"
    when tracked files differ from it), or "" when it is no git checkout
    or git is missing."""
    if not os.path.exists(os.path.join(root, ".git")):
        return ""
    try:
        def git(*args):
            done = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=20)
            if done.returncode:
                raise OSError(done.stderr.strip())
            return done.stdout.strip()
        commit = git("rev-parse", "HEAD")
        return commit + (" with local changes" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def version(distribution):
    """The installed version of a Python distribution, or "not installed"."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu():
    """The CPU model, the cores this process may use and the vector
    instruction sets the kernels can use: "AMD EPYC, 2 cores, avx512f avx2 fma"."""
    from fxnn.kernels import threads
    from fxnn.models.fxnn_paths import cpu_model, cpuinfo

    flags = (cpuinfo("flags") or "").split()
    isa = " ".join(f for f in ISA_FLAGS if f in flags)
    return ", ".join(part for part in (cpu_model(), f"{threads.cores()} cores", isa) if part)


def gpu(device):
    """The GPU's name when the run used one, else ""."""
    if device != "cuda":
        return ""
    import torch
    return torch.cuda.get_device_name()


def parameter_counts(network):
    """(trainable, fixed) numbers of the network: fixed are the K 3x3
    kernels of each factored layer counted as a depthwise convolution (9K per
    input channel, 45 for fxnn's five), as a framework counts a frozen layer's weights."""
    trainable = sum(math.prod(shape) for shape in network.param_shapes().values())
    fixed = sum(layer.in_channels * layer.kernels.size for layer in network.convs if layer.factored)
    return trainable, fixed


def what_ran(network, dataset, data_identity, engine, device, precision):
    """The fields of a record's meta on what trained on what: the model and
    its fixed basis, the data (``data_identity``:
    :func:`fxnn.training.checkpoint.data_identity`), the engine, device and
    precision, and each layer's memory format and path (as they ran)."""
    paths, implementations = engine.describe_paths()
    return {"model": network.model, "basis": network.basis(), "dataset": dataset.name, **dataset.meta(),
            "data_sha256": data_identity["sha256"], "engine": engine.name, "device": device, "precision": precision,
            "memory_format": engine.describe_memory_formats(), "fxnn_path": paths, "fxnn_impl": implementations}


def collect(fxnn_version, engine, device, network):
    """The provenance fields of a record's meta."""
    import numpy

    from fxnn.kernels import threads

    trainable, fixed = parameter_counts(network)
    return {
        "fxnn_version": fxnn_version, "git_commit": git_commit(),
        "python": platform.python_version(), "numpy": numpy.__version__,
        "torch": version("torch"), "pytensor": version("pytensor"),
        "cpu": cpu(), "gpu": gpu(device), "threads": threads.describe(engine),
        "params_trainable": trainable, "params_fixed": fixed,
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
    }
