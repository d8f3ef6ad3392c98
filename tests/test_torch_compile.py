"""FixedConv2d under torch.compile: a small network of them traces with no
graph break on every CPU path (fixed with the C stage, fused, folded, auto),
and the compiled outputs and gradients equal eager ones to float32 rounding;
every fast path is a torch.library operator that torch.library.opcheck
accepts (schema, fake shapes, autograd registration, AOT dispatch), the
engine's ReLU-dropout-pool block included, and the CUDA kernels are
registered (checkable without a GPU on fake CUDA tensors).

Compiling is what costs here: the default tests use the aot_eager backend
(Dynamo, the operators' fake and autograd registrations, AOTAutograd's
joint graph; no code generation) on tiny shapes; Inductor's C++ code
generation is the slow test."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402

from fxnn.kernels.capabilities import capability  # noqa: E402
from fxnn.kernels import torch_fixed, torch_fused  # noqa: E402
from fxnn.kernels.fixed_kernels import fixed_conv_reference  # noqa: E402
from fxnn.models.torch.layer import FixedConv2d  # noqa: E402

OPS = ("fixed_stage", "fixed_stage_adjoint", "fused_forward", "fused_weight_grad", "fused_input_grad")
PATHS = ("fixed", "fused", "folded", "auto")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def require_native():
    fused = capability("fused")
    if not fused:
        if os.environ.get("FXNN_REQUIRE_NATIVE") == "1":
            raise AssertionError(fused.reason)
        pytest.skip(fused.reason)


def network(path, seed=0, stride=1):
    """Two FixedConv2d layers on ``path``, the second of ``stride``."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(FixedConv2d(3, 6, path=path), torch.nn.ReLU(),
                              FixedConv2d(6, 4, stride=stride, path=path))
    with torch.no_grad():
        for layer in (net[0], net[2]):
            layer.bias.normal_()
    return net


def loss_and_grads(net, x):
    """The network's output and the gradients of a loss of it, of every
    parameter and of the input."""
    x = x.detach().clone().requires_grad_(True)
    y = net(x)
    grads = torch.autograd.grad((y ** 2).sum(), [x, *net.parameters()])
    return [y.detach(), *grads]


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("path", PATHS)
def test_a_network_traces_with_no_graph_break(path, stride):
    require_native()
    x = torch.randn(2, 3, 7, 5, requires_grad=True)
    explained = torch._dynamo.explain(network(path, stride=stride))(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("path", PATHS)
def test_compiled_outputs_and_gradients_equal_eager(path, stride):
    require_native()
    net = network(path, stride=stride)
    x = torch.randn(2, 3, 7, 5, generator=torch.Generator().manual_seed(1))
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    for got, want in zip(loss_and_grads(compiled, x), loss_and_grads(net, x)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the validation pass: a graph of its own, forward only
        torch.testing.assert_close(compiled(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("path", PATHS)
def test_dynamic_shapes_compile_and_agree_with_eager(path, stride):
    """A second input shape makes Dynamo recompile with symbolic sizes (as
    dynamic=True does from the start); auto's choice, made per shape,
    specializes them."""
    require_native()
    net = network(path, stride=stride)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager", dynamic=True)
    for seed, shape in enumerate([(2, 3, 7, 5), (3, 3, 9, 6)]):
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        for got, want in zip(loss_and_grads(compiled, x), loss_and_grads(net, x)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_auto_measures_on_real_tensors_when_the_graph_is_traced(monkeypatch, tmp_path):
    """``auto`` under torch.compile: each layer's paths are timed once, while
    the graph is traced, on real tensors (not the tracer's fake ones), and
    the graph runs the path its (injected) clock says is fastest."""
    require_native()
    from torch._subclasses.fake_tensor import FakeTensor
    from fxnn.models import fxnn_paths
    from fxnn.models.torch import paths as torch_paths
    clock, real_tensors = [0.0], []
    monkeypatch.setenv("FXNN_AUTOTUNE", "1")
    monkeypatch.setattr(fxnn_paths, "_default", fxnn_paths.PathTuner(str(tmp_path / "paths.json"),
                                                                     clock=lambda: clock[0], budget=0.0))
    monkeypatch.setattr(torch_paths, "_auto", {})
    real_contenders = torch_paths.path_contenders

    def contenders(*args, **kwargs):
        def timed(path, run):
            def one_pass():
                real_tensors.append(not isinstance(torch.empty(1), FakeTensor))
                run()
                clock[0] += 0.001 if path == "folded" else 0.002
            return one_pass
        return {path: timed(path, run) for path, run in real_contenders(*args, **kwargs).items()}
    monkeypatch.setattr(torch_paths, "path_contenders", contenders)
    x = torch.randn(2, 3, 7, 5, generator=torch.Generator().manual_seed(4))
    compiled = torch.compile(network("auto"), fullgraph=True, backend="aot_eager")
    got = loss_and_grads(compiled, x)
    assert real_tensors and all(real_tensors)
    assert len(json.loads((tmp_path / "paths.json").read_text())["entries"]) == 2  # two layers, training
    for g, want in zip(got, loss_and_grads(network("folded"), x)):
        torch.testing.assert_close(g, want, rtol=1e-5, atol=1e-5)


def test_the_compiled_fused_path_runs_the_c_kernels(monkeypatch):
    """The traced graph calls the operators, whose CPU kernels are the C ones."""
    require_native()
    from fxnn.kernels import cpu_fused
    calls = []
    for name in ("forward", "weight_grad", "input_grad"):
        real = getattr(cpu_fused, name)
        monkeypatch.setattr(cpu_fused, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    net = network("fused")
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    y = torch.compile(net, fullgraph=True, backend="aot_eager")(x)
    y.sum().backward()
    assert sorted(set(calls)) == ["forward", "input_grad", "weight_grad"]
    (w0, b0), (w1, b1) = [(layer.record_weight().detach().numpy(), layer.bias.detach().numpy())
                          for layer in (net[0], net[2])]
    want = fixed_conv_reference(np.maximum(fixed_conv_reference(x.detach().numpy(), w0, b0), 0), w1, b1)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-5, atol=1e-5)


def test_the_fixed_path_without_the_c_build_compiles_too(without_c_build):
    """Where the extension is missing, the operators run their torch ops."""
    net = network("fixed")
    x = torch.randn(1, 3, 5, 4)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    for got, want in zip(loss_and_grads(compiled, x), loss_and_grads(net, x)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def operator_samples():
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(2, 3, 5, 7, generator=g), torch.randn(15, 4, generator=g), torch.randn(4, generator=g)
    dy, g5 = torch.randn(2, 4, 5, 7, generator=g), torch.randn(2, 15, 5, 7, generator=g)
    return [
        (torch_fixed.fixed_stage_op, (x,)),
        (torch_fixed.fixed_stage_adjoint, (g5,)),
        (torch_fused.fused_forward, (x, w, b)),
        (torch_fused.fused_forward, (x, w, None)),
        (torch_fused.fused_weight_grad, (x, dy)),
        (torch_fused.fused_input_grad, (dy, w)),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32 (C kernels)", "float64 (torch ops)"])
@pytest.mark.parametrize("index", range(6))
def test_opcheck_accepts_every_operator(index, dtype):
    require_native()
    op, args = operator_samples()[index]
    args = [None if a is None else a.to(dtype).requires_grad_(True) for a in args]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32 (C kernel)", "float64 (torch ops)"])
def test_the_relu_dropout_pool_operators_pass_opcheck_and_equal_the_reference(dtype):
    """The engine's block (models/torch/block.py): both directions are
    operators; their torch-ops kernels equal the reference bitwise."""
    require_native()
    from fxnn.models import dropout
    from fxnn.models.torch import block as torch_block
    rng = np.random.default_rng(5)
    y = torch.from_numpy(rng.standard_normal((2, 3, 7, 6))).to(dtype).requires_grad_(True)
    draws = rng.integers(0, dropout.LEVELS, size=y.shape, dtype=np.uint16)
    mask, threshold, scale = torch.from_numpy(draws), dropout.threshold(0.25), 1 / 0.75
    torch.library.opcheck(torch_block.block_forward, (y, mask, threshold, scale))
    torch.library.opcheck(torch_block.block_forward, (y, None, 0, 1.0))
    out = torch_block.block_forward(y, mask, threshold, scale)
    g = torch.randn(out.shape, dtype=dtype)
    torch.library.opcheck(torch_block.block_backward, (y.detach(), mask, threshold, scale, out.detach(), g))
    want = torch_block.reference(y, draws, 0.25)
    assert torch.equal(torch_block._block_forward_ref(y, mask, threshold, scale), want)
    want_grad, = torch.autograd.grad(want, y, g)
    assert torch.equal(torch_block._block_backward_ref(y.detach(), mask, threshold, scale, want.detach(), g),
                       want_grad)


def test_a_network_with_the_engines_block_compiles_with_no_graph_break():
    require_native()
    from fxnn.models.torch import block as torch_block
    draws = np.random.default_rng(6).integers(0, 65536, size=(2, 6, 7, 5), dtype=np.uint16)

    def step(x, layer):
        return torch_block.relu_dropout_pool(layer(x), draws, 0.25)
    layer = network("fused")[0]
    x = torch.randn(2, 3, 7, 5, requires_grad=True)
    explained = torch._dynamo.explain(step)(x, layer)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    results = []
    for f in (compiled, step):
        xi = x.detach().clone().requires_grad_(True)
        out = f(xi, layer)
        results.append([out.detach(), *torch.autograd.grad((out ** 2).sum(), [xi, layer.weight])])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_derivatives_of_every_order_stay_correct():
    """Each fused operator's derivatives are the other two: gradcheck and
    gradgradcheck in float64 (their torch-ops kernels)."""
    args = [a.double().requires_grad_(True) for a in operator_samples()[2][1]]
    args = [a[:1, :2, :4, :3].contiguous().detach().requires_grad_(True) if a.dim() == 4 else a for a in args]
    args[1] = args[1][:10].detach().requires_grad_(True)
    assert torch.autograd.gradcheck(torch_fused.fused_forward, args)
    assert torch.autograd.gradgradcheck(torch_fused.fused_forward, args)
    x, w = args[0], args[1]
    dy = torch.randn(1, w.shape[1], 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(torch_fused.fused_weight_grad, (x, dy))
    assert torch.autograd.gradgradcheck(torch_fused.fused_input_grad, (dy, w))


@pytest.mark.parametrize("name", OPS)
def test_every_operator_has_a_cuda_kernel_and_fake_cuda_shapes(name):
    """The CUDA kernels (PyCUDA stage, Triton layer) are registered for the
    CUDA dispatch key; the fake implementations give shapes on CUDA too,
    which is what torch.compile traces with (no GPU needed for this)."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fxnn::{name}", "CUDA")
    with FakeTensorMode():
        x = torch.empty(2, 3, 5, 7, device="cuda", dtype=torch.bfloat16)
        w = torch.empty(15, 4, device="cuda", dtype=torch.bfloat16)
        dy = torch.empty(2, 4, 5, 7, device="cuda", dtype=torch.bfloat16)
        out = {"fixed_stage": lambda: torch.ops.fxnn.fixed_stage(x),
               "fixed_stage_adjoint": lambda: torch.ops.fxnn.fixed_stage_adjoint(torch.ops.fxnn.fixed_stage(x)),
               "fused_forward": lambda: torch.ops.fxnn.fused_forward(x, w, None),
               "fused_weight_grad": lambda: torch.ops.fxnn.fused_weight_grad(x, dy)[0],
               "fused_input_grad": lambda: torch.ops.fxnn.fused_input_grad(dy, w)}[name]()
        want = {"fixed_stage": (2, 15, 5, 7), "fixed_stage_adjoint": (2, 3, 5, 7), "fused_forward": (2, 4, 5, 7),
                "fused_weight_grad": (15, 4), "fused_input_grad": (2, 3, 5, 7)}[name]
        assert tuple(out.shape) == want and out.device.type == "cuda" and out.dtype == torch.bfloat16


@pytest.mark.slow
def test_inductor_compiles_every_path_to_the_eager_numbers():
    """The default backend (Inductor, C++ code generation around the
    operators), a minute or so here."""
    require_native()
    x = torch.randn(2, 3, 7, 5, generator=torch.Generator().manual_seed(3))
    for path in PATHS:
        torch._dynamo.reset()
        net = network(path)
        compiled = torch.compile(net, fullgraph=True)
        for got, want in zip(loss_and_grads(compiled, x), loss_and_grads(net, x)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
