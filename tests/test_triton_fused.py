"""The fused fxnn layer's Triton kernels (kernels/fused_triton.py) without a
GPU, two ways:

* run by Triton's interpreter on CPU tensors against the numpy references
  (tests/triton_interpreted_cases.py, forward and both gradients, float32,
  bfloat16 and float16, small odd shapes). The interpreter must be switched
  on (``TRITON_INTERPRET=1``) before triton is imported, which would change
  the triton every other test sees, so those cases run in a Python process
  of their own, started here;
* compiled ahead of time to a cubin for sm_80 and sm_90 by Triton's own
  compiler and ptxas (no GPU needed), so that what the interpreter accepts
  also lowers for the GPU: one configuration of each kernel in each dtype
  at strides 1 and 2 by default (bfloat16 for sm_90, float32 and float16
  for sm_80), every autotune configuration (bfloat16, sm_90, both strides)
  as a slow test.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def test_the_kernels_match_the_references_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(ROOT / "tests" / "triton_interpreted_cases.py")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    assert result.returncode == 0 and " passed" in summary and "skipped" not in summary, \
        result.stdout[-6000:] + result.stderr[-3000:]


# ---- ahead-of-time compilation for the GPU -----------------------------------

POINTER = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def compile_for_gpu(kernel, config, dtype, arch, stride=1):
    """Compile ``kernel`` (an autotuned Triton kernel) with ``config`` for
    sm_``arch`` and ``stride`` to a cubin; its scalar arguments are int32,
    its pointers of ``dtype`` except the float32 scratch and partial sums."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn = kernel.fn
    constexprs = dict(config.kwargs, STRIDE=stride, PRECISION="ieee" if dtype != torch.float32 else "tf32")
    if "HAS_BIAS" in fn.arg_names:
        constexprs["HAS_BIAS"] = True
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*fp32" if name in ("scratch_ptr", "part_ptr") else POINTER[dtype]
        else:
            signature[name] = "i32"
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": config.num_warps, "num_stages": config.num_stages})


@pytest.fixture(scope="module")
def gpu_module():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the kernels are compiled for the GPU only without TRITON_INTERPRET=1")
    from fxnn.kernels import fused_triton
    return fused_triton


def test_the_gpu_tunes_among_several_configurations(gpu_module):
    for kernel in (gpu_module._forward_kernel, gpu_module._weight_grad_kernel, gpu_module._input_grad_kernel):
        assert len(kernel.configs) > 4


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", ["_forward_kernel", "_weight_grad_kernel", "_input_grad_kernel"])
def test_each_kernel_compiles_for_the_gpu(gpu_module, kernel, stride):
    tuned = getattr(gpu_module, kernel)
    compiled = compile_for_gpu(tuned, tuned.configs[0], torch.bfloat16, 90, stride)
    assert "cubin" in compiled.asm and len(compiled.asm["cubin"]) > 0


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_the_other_dtypes_compile_for_an_older_gpu(gpu_module, dtype, stride):
    for kernel in (gpu_module._forward_kernel, gpu_module._weight_grad_kernel, gpu_module._input_grad_kernel):
        assert "cubin" in compile_for_gpu(kernel, kernel.configs[0], dtype, 80, stride).asm


@pytest.mark.slow
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("kernel", ["_forward_kernel", "_weight_grad_kernel", "_input_grad_kernel"])
def test_every_autotune_configuration_compiles_for_the_gpu(gpu_module, kernel, stride):
    """bfloat16 for sm_90: a few minutes here."""
    tuned = getattr(gpu_module, kernel)
    for config in tuned.configs:
        assert "cubin" in compile_for_gpu(tuned, config, torch.bfloat16, 90, stride).asm, config
