"""Install fxnn: ``python3 -m pip install -e ".[test]" torch==2.13.0`` (see README)."""
import os
import re
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """Builds with OpenMP where the compiler has it, so the C kernels share
    the OpenMP thread pool that PyTorch's operators use (kernels/fixed_cpu.c);
    without it they start pthreads of their own."""

    def build_extension(self, ext):
        if self._compiles_with(["-fopenmp"]):
            ext.extra_compile_args = ext.extra_compile_args + ["-fopenmp"]
            ext.extra_link_args = ext.extra_link_args + ["-fopenmp"]
        super().build_extension(ext)

    def _compiles_with(self, flags):
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write("#include <omp.h>\nint main(void) { return omp_get_max_threads() < 1; }\n")
            try:
                objects = self.compiler.compile([src], output_dir=tmp, extra_postargs=flags)
                self.compiler.link_executable(objects, "probe", output_dir=tmp, extra_postargs=flags)
            except Exception:  # any compiler or linker failure: build without
                return False
        return True

# The C fixed stage and fused layer for the PyTorch engine (kernels/cpu_fixed.py,
# kernels/cpu_fused.py). Optional: without a C compiler the install still
# succeeds and the engine falls back to separable torch ops and library GEMMs.
FIXED_CPU = Extension(
    "kernels._fixed_cpu",
    sources=["kernels/fixed_cpu_module.c"],
    depends=["kernels/fixed_cpu.c", "kernels/fused_cpu.c", "kernels/fused_isa.h", "kernels/block_cpu.c"],
    extra_compile_args=["-O3", "-std=c99"],
    optional=True,
)

# One version, fxnn.__version__ (records store it in meta.fxnn_version).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "fxnn.py")) as f:
    VERSION = re.search(r'^__version__ = "(.+)"$', f.read(), re.M).group(1)

setup(
    name="fxnn",
    version=VERSION,
    description="Train CNNs with fixed 3x3 convolution kernels followed by a trainable 1x1",
    python_requires=">=3.10",
    py_modules=["fxnn", "mnist_pickler"],
    packages=["models", "data", "kernels", "files", "training", "analysis"],
    package_data={"data": ["image/mnist-sample/*"], "kernels": ["*.cu", "*.c", "*.h"]},
    ext_modules=[FIXED_CPU],
    cmdclass={"build_ext": BuildExt},
    install_requires=[
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "pytensor>=3.0,<4",
        "h5py>=3.8,<4",  # records larger than MATLAB v5 allows are written as v7.3 (HDF5)
        "matplotlib>=3.7,<4",  # analysis/: curves and sweep plots
        "threadpoolctl>=3.1,<4",  # --threads reaches numpy's OpenBLAS (PyTensor's dense layers)
    ],
    extras_require={
        # The PyTorch engine and FixedConv2d; any 2.x from 2.2 works.
        "torch": ["torch>=2.2,<3"],
        # The GPU path: the fixed-stage kernel kernels/simple_conv.cu launched
        # through PyCUDA, and the fused layer in Triton (kernels/fused_triton.py;
        # CUDA builds of torch bring the Triton they were built with).
        "cuda": ["torch>=2.2,<3", "pycuda>=2025.1.2,<2027", "triton>=3.2,<4"],
        # Seed sweeps (analysis/sweep.py) on Dask's distributed scheduler, on this machine or a cluster.
        "cluster": ["dask[distributed]>=2024.1,<2027"],
        # --tensorboard: event files written with TensorBoard's own writer.
        "tensorboard": ["tensorboard>=2.12,<3"],
        # The tests read those event files back with TensorBoard's reader, and
        # Triton's interpreter runs the fused Triton kernels on the CPU
        # (tests/test_triton_fused.py). Triton ships for Linux.
        "test": ["pytest>=7", "tensorboard>=2.12,<3", "triton>=3.2,<4; platform_system == 'Linux'"],
    },
    entry_points={"console_scripts": [
        "fxnn=fxnn:cli",
        "fxnn-plot=analysis.plot:cli",
        "fxnn-csv=analysis.to_csv:cli",
        "fxnn-summary=analysis.summary:cli",
        "fxnn-sweep=analysis.sweep:cli",
        "fxnn-tune=analysis.tune:cli",
    ]},
)
