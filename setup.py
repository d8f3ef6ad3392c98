"""The C extension of ``pip install`` (see README; the rest is pyproject.toml):
``python3 -m pip install -e ".[test]" torch==2.13.0``."""
import os
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
    "fxnn.kernels._fixed_cpu",
    sources=["kernels/fixed_cpu_module.c"],
    depends=["kernels/fixed_cpu.c", "kernels/fused_cpu.c", "kernels/fused_isa.h", "kernels/fused_bf16_cpu.c",
             "kernels/fused_bf16_isa.h", "kernels/block_cpu.c"],
    extra_compile_args=["-O3", "-std=c99"],
    optional=True,
)

# Everything else (name, version, dependencies, extras, packages, console
# scripts) is in pyproject.toml; this file adds what it cannot say: the
# optional extension and its OpenMP probe. ``python3 setup.py build_ext
# --inplace`` builds it into kernels/ (package-dir maps fxnn.kernels there).
setup(ext_modules=[FIXED_CPU], cmdclass={"build_ext": BuildExt})
