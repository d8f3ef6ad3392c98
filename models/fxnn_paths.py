"""Which computation an fxnn conv layer runs, per engine, device and pass.

- ``fixed``: the fixed stage (5M channels written out), then the 1x1 GEMM;
- ``folded``: the 1x1 weights folded into dense 3x3 kernels
  (:func:`models.fixed_kernels.fold_weights`), then one dense 3x3 conv.

Both compute the same function and gradient (tested); they differ in speed
and float rounding. ``auto`` takes the faster one as measured by
``bench/bench_fixed_layer.py`` and ``bench/bench_network.py`` on the CPU
machines (README "Which path runs when"): in PyTorch the dense conv is
1.3-3.3x faster than the fixed stage at every measured shape, so folded wins
for training and validation; PyTensor's dense conv is an im2col written in
graph ops, 1.1-1.6x slower than its fixed stage, so fixed wins there. On CUDA
nothing has been measured yet: the fixed stage (the PyCUDA kernel) stays
until ``bench/bench_gpu.py`` says otherwise.
"""
PATHS = ("auto", "fixed", "folded")
PASSES = ("train", "valid")

FASTEST = {
    ("torch", "cpu"): {"train": "folded", "valid": "folded"},
    ("torch", "cuda"): {"train": "fixed", "valid": "fixed"},
    ("pytensor", "cpu"): {"train": "fixed", "valid": "fixed"},
}


def resolve_paths(requested, engine, device):
    """{pass: path} for ``requested`` in PATHS ("auto" looks up FASTEST)."""
    if requested not in PATHS:
        raise ValueError(f"unknown fxnn path {requested!r}; one of {', '.join(PATHS)}")
    if requested != "auto":
        return {p: requested for p in PASSES}
    return dict(FASTEST[engine, device])
