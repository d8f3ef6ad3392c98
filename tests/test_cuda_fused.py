"""The fused fxnn layer's Triton kernels and the CUDA paths of the torch
operators on a GPU (skipped without a CUDA GPU and triton): the kernels
against the numpy references in every precision, and at stride 2 against
a dense strided conv2d with the folded kernel (tests/strided_conv.py), the
layer on CUDA against the CPU at strides 1 and 2, torch.compile on the CUDA
paths (PyCUDA stage, Triton layer) with no graph break, and ``auto``
measuring among the three paths.

GPU tests: ``python -m pytest tests/test_cuda_fused.py tests/test_cuda_kernel.py tests/test_cuda_engine.py -rs``.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from strided_conv import dense_conv_reference  # noqa: E402

from fxnn.kernels import cuda_fused  # noqa: E402
from fxnn.kernels.capabilities import capability  # noqa: E402
from fxnn.kernels.fixed_kernels import fixed_conv_grad_reference, fixed_conv_reference  # noqa: E402

FUSED = capability("fused", "torch", "cuda")
FUSED_OK, FUSED_WHY = bool(FUSED), FUSED.reason
pytestmark = pytest.mark.skipif(not FUSED_OK, reason=f"needs a CUDA GPU and triton: {FUSED_WHY}")

#: (rtol, atol as a fraction of the largest reference value)
TOLERANCE = {"float32": (1e-5, 1e-5), "tf32": (2e-3, 2e-3), "float16": (2 ** -9, 2 ** -9),
             "bfloat16": (2 ** -6, 2 ** -6)}
DTYPES = {"float32": torch.float32, "tf32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: (B, M, N, H, W): odd and tiny, more channels than any tile, the issue's shapes (smaller batches)
SHAPES = [(1, 1, 1, 1, 1), (2, 3, 5, 7, 5), (3, 17, 4, 9, 6), (1, 2, 20, 1, 13), (2, 1, 3, 13, 1),
          (5, 130, 70, 13, 31), (4, 64, 64, 28, 28), (2, 128, 128, 28, 28), (2, 64, 64, 56, 56), (3, 32, 32, 14, 14)]


@pytest.fixture
def precision(request):
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = request.param == "tf32"
    yield request.param
    torch.backends.cuda.matmul.allow_tf32 = saved


def tensors(shape, dtype, device="cuda", seed=0):
    b, m, n, h, w = shape
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).to(device, dtype) for s in ((b, m, h, w), (5 * m, n), (n,), (b, n, h, w))]


def assert_matches(got, want, precision):
    rtol, atol = TOLERANCE[precision]
    np.testing.assert_allclose(got.float().cpu().numpy(), want, rtol=rtol,
                               atol=atol * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("precision", list(TOLERANCE), indirect=True)
@pytest.mark.parametrize("shape", SHAPES)
def test_the_triton_kernels_match_the_references(shape, precision):
    x, w, b, dy = tensors(shape, DTYPES[precision])
    f64 = [t.double().cpu().numpy() for t in (x, w, b, dy)]
    assert_matches(cuda_fused.forward(x, w, b), fixed_conv_reference(*f64[:3]), precision)
    dx, dw, db = fixed_conv_grad_reference(f64[0], f64[1], f64[3])
    got_dw, got_db = cuda_fused.weight_grad(x, dy)
    assert_matches(got_dw, dw, precision)
    assert_matches(got_db, db, precision)
    assert_matches(cuda_fused.input_grad(dy, w), dx, precision)


#: (B, M, N, H, W) at stride 2: odd sizes with a remainder, even ones, single
#: pixels, more channels than any tile, several tiles of dY's grid. Full
#: float32 and bfloat16 only: each precision and shape is compiled and tuned
#: anew, and the stride changes nothing in how a precision's products are made.
STRIDED_SHAPES = [(2, 3, 5, 7, 9), (1, 2, 3, 8, 8), (2, 1, 2, 1, 1), (1, 2, 3, 2, 3), (5, 130, 70, 13, 31),
                  (2, 32, 48, 57, 33)]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"], indirect=True)
@pytest.mark.parametrize("shape", STRIDED_SHAPES)
def test_the_triton_kernels_at_stride_2_match_a_strided_dense_conv2d(shape, precision):
    x, w, b, _ = tensors(shape, DTYPES[precision])
    bsz, _, n, h, wd = shape
    dy = torch.randn(bsz, n, (h - 1) // 2 + 1, (wd - 1) // 2 + 1, generator=torch.Generator().manual_seed(1))
    dy = dy.to("cuda", DTYPES[precision])
    y, dx, dw, db = dense_conv_reference(x, w, b, dy, 2)
    assert_matches(cuda_fused.forward(x, w, b, stride=2), y, precision)
    got_dw, got_db = cuda_fused.weight_grad(x, dy, stride=2)
    assert_matches(got_dw, dw, precision)
    assert_matches(got_db, db, precision)
    assert_matches(cuda_fused.input_grad(dy, w, stride=2, size=(h, wd)), dx, precision)


@pytest.mark.parametrize("stride", [1, 2])
def test_fixed_conv2d_fused_on_cuda_equals_the_cpu(stride):
    from fxnn.models.torch.paths import fixed_conv2d_record
    cpu = [t.requires_grad_(True) for t in tensors((3, 6, 10, 9, 11), torch.float32, "cpu")[:3]]
    dy = torch.randn(3, 10, (9 - 1) // stride + 1, (11 - 1) // stride + 1)
    gpu = [t.detach().cuda().requires_grad_(True) for t in cpu]
    y_cpu, y_gpu = fixed_conv2d_record(*cpu, "fused", stride), fixed_conv2d_record(*gpu, "fused", stride)
    y_cpu.backward(dy)
    y_gpu.backward(dy.cuda())
    for got, want in zip([y_gpu] + [t.grad for t in gpu], [y_cpu] + [t.grad for t in cpu]):
        np.testing.assert_allclose(got.detach().cpu().numpy(), want.detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_second_derivatives_on_cuda_equal_the_fixed_path(stride):
    from fxnn.models.torch.paths import fixed_conv2d_record
    x, w, b, dy = tensors((2, 3, 4, 6, 5), torch.float32, seed=2)
    dy = dy[..., ::stride, ::stride].contiguous()
    results = {}
    for path in ("fused", "fixed"):
        args = [t.clone().requires_grad_(True) for t in (x, w, b)]
        gx, gw = torch.autograd.grad(fixed_conv2d_record(*args, path, stride), args[:2], dy, create_graph=True)
        results[path] = torch.autograd.grad((gx ** 2).sum() + (gw ** 2).sum(), args[:2])
    for got, want in zip(results["fused"], results["fixed"]):
        np.testing.assert_allclose(got.cpu().numpy(), want.cpu().numpy(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("path", ["fused", "fixed", "folded"])
def test_torch_compile_on_cuda_has_no_graph_break_and_the_eager_numbers(path, stride):
    stage = capability("fixed", "torch", "cuda")
    if path == "fixed" and not stage:
        pytest.skip(f"the PyCUDA stage is unavailable: {stage.reason}")
    from fxnn.models.torch.layer import FixedConv2d
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(FixedConv2d(3, 16, stride=stride, path=path), torch.nn.ReLU(),
                              FixedConv2d(16, 8, path=path)).cuda()
    x = torch.randn(4, 3, 17, 13, device="cuda", requires_grad=True)
    explained = torch._dynamo.explain(net)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(net, fullgraph=True)
    results = []
    for model in (compiled, net):
        xi = x.detach().clone().requires_grad_(True)
        y = model(xi)
        results.append([y.detach(), *torch.autograd.grad((y ** 2).sum(), [xi, *net.parameters()])])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride", [1, 2])
def test_opcheck_on_cuda(stride):
    from fxnn.kernels import torch_fixed, torch_fused
    x, w, b, dy = [t.requires_grad_(True) for t in tensors((2, 3, 4, 5, 7), torch.float32)]
    dy = dy[..., ::stride, ::stride].detach().contiguous().requires_grad_(True)
    g = torch.randn(2, 15, dy.shape[2], dy.shape[3], device="cuda", requires_grad=True)
    for op, args in ((torch_fused.fused_forward, (x, w, b, stride)), (torch_fused.fused_weight_grad, (x, dy, stride)),
                     (torch_fused.fused_input_grad, (dy, w, stride, 5, 7)),
                     (torch_fixed.fixed_stage_op, (x, stride)), (torch_fixed.fixed_stage_adjoint, (g, stride, 5, 7))):
        torch.library.opcheck(op, args)


def test_auto_on_cuda_measures_among_the_three_paths(monkeypatch, tmp_path):
    import json
    from fxnn.models import fxnn_paths
    from fxnn.models.torch import paths as torch_paths
    monkeypatch.setenv("FXNN_AUTOTUNE", "1")
    monkeypatch.setattr(fxnn_paths, "_default", fxnn_paths.PathTuner(str(tmp_path / "paths.json")))
    monkeypatch.setattr(torch_paths, "_auto", {})
    x, w, b, _ = tensors((8, 32, 32, 28, 28), torch.float32)
    assert torch_paths.available_paths(x) == ("fused", "fixed", "folded")
    with torch.no_grad():
        chosen = torch_paths.auto_path(x, w, b)
    assert chosen in ("fused", "fixed", "folded")
    (key, entry), = json.loads((tmp_path / "paths.json").read_text())["entries"].items()
    assert json.loads(key)["gpu"] == torch.cuda.get_device_name() and set(entry["ms"]) == {"fused", "fixed", "folded"}
