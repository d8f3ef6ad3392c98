"""The fused path in PyTorch (kernels/torch_fused.py): FixedConv2d and the
torch engine on it, against the numpy references and the other paths,
gradients of every input, higher derivatives, and the fallback where the
fused kernels cannot run; stride 2 against the folded dense convolution in
float32 and bfloat16, gradcheck and torch.compile."""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fxnn.kernels import native, torch_fused  # noqa: E402
from fxnn.kernels.capabilities import capability  # noqa: E402
from fxnn.kernels.fixed_kernels import fixed_conv_grad_reference, fixed_conv_reference  # noqa: E402
from fxnn.models.torch.layer import FixedConv2d  # noqa: E402
from fxnn.models.torch.paths import available_paths, fixed_conv2d_record  # noqa: E402

FUSED = capability("fused")
if not FUSED:
    if os.environ.get("FXNN_REQUIRE_NATIVE") == "1":
        raise ImportError(FUSED.reason)
    pytest.skip(FUSED.reason, allow_module_level=True)


def tensors(b, m, n, h, w, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=dtype) for s in ((b, m, h, w), (5 * m, n), (n,), (b, n, h, w))]


@pytest.mark.parametrize("isa", native.isas())
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (2, 3, 17, 7, 5), (3, 4, 5, 1, 12), (1, 2, 32, 16, 16)])
def test_forward_and_every_gradient_match_the_references(shape, isa, monkeypatch):
    monkeypatch.setenv("FXNN_ISA", isa)
    x, w, b, dy = tensors(*shape)
    x.requires_grad_(True), w.requires_grad_(True), b.requires_grad_(True)
    y = fixed_conv2d_record(x, w, b, "fused")
    y.backward(dy)
    scale = lambda a: 2e-5 * max(1.0, float(np.abs(a).max()))  # noqa: E731
    want = fixed_conv_reference(x.detach().numpy(), w.detach().numpy(), b.detach().numpy())
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=2e-5, atol=scale(want))
    for got, ref in zip((x.grad, w.grad, b.grad),
                        fixed_conv_grad_reference(x.detach().numpy(), w.detach().numpy(), dy.numpy())):
        np.testing.assert_allclose(got.numpy(), ref, rtol=2e-5, atol=scale(ref))


def test_only_the_gradients_asked_for_are_computed():
    x, w, b, dy = tensors(2, 3, 4, 5, 6)
    w.requires_grad_(True)
    y = fixed_conv2d_record(x, w, b, "fused")
    dw, = torch.autograd.grad(y, [w], dy)
    np.testing.assert_allclose(dw.numpy(), fixed_conv_grad_reference(x.numpy(), w.detach().numpy(), dy.numpy())[1],
                               rtol=2e-5, atol=1e-4)
    assert x.grad is None and b.grad is None


def test_agrees_with_the_fixed_and_folded_paths():
    x, w, b, dy = tensors(4, 6, 10, 9, 11, seed=1)
    results = {}
    for path in ("fused", "fixed", "folded"):
        args = [t.clone().requires_grad_(True) for t in (x, w, b)]
        y = fixed_conv2d_record(*args, path)
        results[path] = [y] + list(torch.autograd.grad(y, args, dy))
    for path in ("fixed", "folded"):
        for got, want in zip(results["fused"], results[path]):
            np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-4, atol=1e-4)


def test_second_derivatives_equal_those_of_the_fixed_path():
    """create_graph=True: the backward runs differentiable ops."""
    x, w, b, dy = tensors(2, 3, 4, 6, 5, seed=2)
    results = {}
    for path in ("fused", "fixed"):
        args = [t.clone().requires_grad_(True) for t in (x, w, b)]
        gx, gw = torch.autograd.grad(fixed_conv2d_record(*args, path), args[:2], dy, create_graph=True)
        results[path] = torch.autograd.grad((gx ** 2).sum() + (gw ** 2).sum(), args[:2])
    for got, want in zip(results["fused"], results["fixed"]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-3)


def test_float64_and_its_gradcheck_run_the_fixed_path():
    """The fused kernels are float32; float64 (e.g. gradcheck) falls back."""
    x, w, b, _ = tensors(2, 2, 3, 5, 4, seed=3, dtype=torch.float64)
    args = [t.requires_grad_(True) for t in (x, w, b)]
    assert "fused" not in available_paths(x)
    assert torch.autograd.gradcheck(lambda *a: fixed_conv2d_record(*a, path="fused"), args)
    assert torch.equal(fixed_conv2d_record(*args, path="fused"), fixed_conv2d_record(*args, path="fixed"))


def test_a_module_on_the_fused_path_trains_and_works_without_grad():
    torch.manual_seed(0)
    layer = FixedConv2d(3, 5, path="fused")
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        y = layer(x)
    assert not y.requires_grad
    np.testing.assert_allclose(y.numpy(), fixed_conv_reference(x.numpy(), layer.record_weight().detach().numpy(),
                                                               layer.bias.detach().numpy()), rtol=1e-5, atol=1e-5)
    opt = torch.optim.SGD(layer.parameters(), 0.1)
    target = torch.randn(4, 5, 8, 8)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = ((layer(x) - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


def test_the_engine_on_the_fused_path_matches_the_fixed_path():
    from fxnn.models.architecture import build_network
    from fxnn.models.engines import make_engine
    rng = np.random.default_rng(0)
    net = build_network("fxnn", (1, 12, 12))
    params = net.init_params(rng)
    x, y = rng.random((8, 1, 12, 12), dtype=np.float32), rng.integers(0, 10, 8).astype(np.int32)
    engines = {p: make_engine("torch", "cpu", net, params, "sgd", 0.25, 7, p) for p in ("fused", "fixed")}
    for _ in range(3):
        losses = {p: e.train_step(x, y, 0.1) for p, e in engines.items()}
        np.testing.assert_allclose(losses["fused"], losses["fixed"], rtol=1e-4)
    for name, value in engines["fused"].get_params().items():
        np.testing.assert_allclose(value, engines["fixed"].get_params()[name], rtol=1e-4, atol=1e-5)
    engines["fused"].evaluate(x, y)
    paths, implementation = engines["fused"].describe_paths()
    assert paths == "conv0: train fused, valid fused; conv1: train fused, valid fused"
    assert implementation == f"fused: C fused kernel (kernels/fused_cpu.c), {native.isa()}"


def test_the_engine_refuses_the_fused_path_where_it_cannot_run():
    from fxnn.models.architecture import build_network
    from fxnn.models.torch.engine import TorchEngine
    net = build_network("fxnn", (1, 8, 8))
    with pytest.raises(ValueError, match="fused cannot run on cpu here: it needs the C kernels built \\(CPU, float32\\)"):
        TorchEngine(net, net.init_params(np.random.default_rng(0)), dtype="float64", fxnn_path="fused")


def test_an_isa_the_cpu_lacks_is_a_clear_error(monkeypatch):
    from fxnn.kernels import cpu_fused
    monkeypatch.setenv("FXNN_ISA", "sse9")
    with pytest.raises(RuntimeError, match="FXNN_ISA=sse9: this CPU runs the fused kernels as"):
        cpu_fused.forward(*tensors(1, 1, 1, 2, 2)[:3])


@pytest.mark.parametrize("engine", ["torch", "pytensor"])
def test_a_bad_fxnn_isa_stops_the_run_before_training_with_one_line(engine, monkeypatch, capsys, small_mnist,
                                                                      tmp_path):
    import fxnn
    monkeypatch.setenv("FXNN_ISA", "sse9")
    out = tmp_path / "r.mat"
    code = fxnn.main(["-nrec", "1", "-ipr", "1", "--engine", engine, "--data-dir", small_mnist, "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert err == ["fxnn: error: FXNN_ISA=sse9: this CPU runs the fused kernels as "
                   f"{', '.join(native.isas())}; unset FXNN_ISA or name one of those"]


# ---- stride 2 ---------------------------------------------------------------

def folded_conv(x, w, b, dy, stride):
    """(y, dx, dw, db) of F.conv2d(x, fold(w), b, stride, padding=1) in
    float64: the dense convolution the layer equals, an independent reference."""
    from fxnn.models.torch.backend import fold
    args = [t.detach().double().requires_grad_(True) for t in (x, w, b)]
    y = torch.nn.functional.conv2d(args[0], fold(args[1]), args[2], stride=stride, padding=1)
    return [y] + list(torch.autograd.grad(y, args, dy.double()))


def strided_tensors(b, m, n, h, w, stride, seed=0):
    x, wt, bias, _ = tensors(b, m, n, h, w, seed)
    dy = torch.randn(b, n, (h - 1) // stride + 1, (w - 1) // stride + 1, generator=torch.Generator().manual_seed(seed))
    return x, wt, bias, dy


STRIDED = [(1, 1, 1, 1, 1), (2, 3, 5, 2, 3), (1, 2, 17, 7, 8), (3, 4, 9, 9, 15), (2, 6, 33, 28, 28), (1, 3, 7, 15, 1)]


@pytest.mark.parametrize("isa", native.isas())
@pytest.mark.parametrize("shape", STRIDED, ids=lambda s: "x".join(map(str, s)))
def test_stride_2_matches_the_folded_dense_convolution(shape, isa, monkeypatch):
    monkeypatch.setenv("FXNN_ISA", isa)
    x, w, b, dy = strided_tensors(*shape, stride=2)
    args = [t.clone().requires_grad_(True) for t in (x, w, b)]
    y = torch_fused.fused_conv2d(*args, stride=2)
    got = [y] + list(torch.autograd.grad(y, args, dy))
    for g, want in zip(got, folded_conv(x, w, b, dy, 2)):
        assert g.shape == want.shape
        np.testing.assert_allclose(g.detach().numpy(), want.detach().numpy(), rtol=2e-5,
                                   atol=2e-5 * max(1.0, float(want.abs().max())))


@pytest.mark.parametrize("isa", native.bf16_isas() if hasattr(native.module, "fused_forward_bf16") else [])
@pytest.mark.parametrize("shape", STRIDED, ids=lambda s: "x".join(map(str, s)))
def test_stride_2_in_bfloat16_matches_the_reference_on_the_same_inputs(shape, isa, monkeypatch):
    """The bf16 kernels against the float64 dense convolution of the same
    bf16-rounded inputs, to bf16's precision (the kernels' element-wise
    bounds are tests/test_fused_bf16_kernel.py's)."""
    monkeypatch.setenv("FXNN_BF16_ISA", isa)
    x, w, b, dy = [t.bfloat16() for t in strided_tensors(*shape, stride=2)]
    args = [t.clone().requires_grad_(True) for t in (x, w, b)]
    y = torch_fused.fused_conv2d(*args, stride=2)
    assert y.dtype == torch.bfloat16
    got = [y] + list(torch.autograd.grad(y, args, dy))
    for g, want in zip(got, folded_conv(x, w, b, dy, 2)):
        scale = float(want.abs().max()) + 1e-30
        assert g.shape == want.shape
        assert float((g.double() - want).abs().max()) <= 2 ** -6 * scale


def test_stride_2_operators_pass_gradcheck_in_float64():
    """The torch-ops reference (float64) with its autograd formulas, odd sizes."""
    x, w, b, dy = [t.double() for t in strided_tensors(2, 2, 3, 5, 4, 2, seed=5)]
    x, w, b, dy = [t.requires_grad_(True) for t in (x, w, b, dy)]
    forward = lambda x, w, b: torch_fused.fused_forward(x, w, b, 2)  # noqa: E731
    weight_grad = lambda x, dy: torch_fused.fused_weight_grad(x, dy, 2)  # noqa: E731
    input_grad = lambda dy, w: torch_fused.fused_input_grad(dy, w, 2, 5, 4)  # noqa: E731
    assert torch.autograd.gradcheck(forward, (x, w, b)) and torch.autograd.gradgradcheck(forward, (x, w, b))
    assert torch.autograd.gradcheck(weight_grad, (x, dy)) and torch.autograd.gradgradcheck(weight_grad, (x, dy))
    assert torch.autograd.gradcheck(input_grad, (dy, w)) and torch.autograd.gradgradcheck(input_grad, (dy, w))


def eager_and_compiled(x, w, b, dy, stride):
    """(y, dx, dw, db) of fused_conv2d run eagerly and compiled with fullgraph."""
    results = []
    for fn in (torch_fused.fused_conv2d, torch.compile(torch_fused.fused_conv2d, fullgraph=True)):
        args = [t.clone().requires_grad_(True) for t in (x, w, b)]
        y = fn(*args, stride=stride)
        results.append([y] + list(torch.autograd.grad(y, args, dy)))
    return results


def test_stride_2_compiles_with_fullgraph_to_the_eager_numbers():
    x, w, b, dy = strided_tensors(2, 3, 4, 9, 8, 2, seed=6)
    for got, want in zip(*eager_and_compiled(x, w, b, dy, 2)):
        torch.testing.assert_close(got, want)


def channels_last(t):
    return t.contiguous(memory_format=torch.channels_last)


def is_channels_last(t):
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


@pytest.mark.parametrize("isa", native.isas())
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("shape", STRIDED[1:], ids=lambda s: "x".join(map(str, s)))
def test_channels_last_runs_as_it_lies_and_matches_the_folded_convolution(shape, stride, isa, monkeypatch):
    """A float32 channels_last input takes the channels_last kernels: the
    result and the input's gradient are channels_last, no copy to NCHW is
    made (no aten::copy_ runs), and every number matches the folded dense
    convolution."""
    monkeypatch.setenv("FXNN_ISA", isa)
    x, w, b, dy = strided_tensors(*shape, stride=stride)
    args = [channels_last(x).requires_grad_(True), w.clone().requires_grad_(True), b.clone().requires_grad_(True)]
    dy_cl = channels_last(dy)
    with torch.profiler.profile() as prof:
        y = torch_fused.fused_conv2d(*args, stride=stride)
        got = [y] + list(torch.autograd.grad(y, args, dy_cl))
    if shape[1] > 1 and shape[3] * shape[4] > 1:  # else the tensors are NCHW-contiguous too
        assert is_channels_last(y) and is_channels_last(got[1])
        assert "aten::copy_" not in {e.key for e in prof.key_averages()}
    for g, want in zip(got, folded_conv(x, w, b, dy, stride)):
        assert g.shape == want.shape
        np.testing.assert_allclose(g.detach().numpy(), want.detach().numpy(), rtol=2e-5,
                                   atol=2e-5 * max(1.0, float(want.abs().max())))


def test_channels_last_compiles_with_fullgraph_to_the_eager_numbers_and_layout():
    """The fakes promise torch.compile the layout the kernels give."""
    x, w, b, dy = strided_tensors(2, 3, 4, 9, 8, 2, seed=7)
    results = eager_and_compiled(channels_last(x), w, b, channels_last(dy), 2)
    for got, want in zip(*results):
        torch.testing.assert_close(got, want)
        assert got.stride() == want.stride()
    assert is_channels_last(results[1][0]) and is_channels_last(results[1][1])


def test_a_bad_stride_or_a_missing_input_size_is_refused():
    x, w, b, dy = strided_tensors(1, 2, 3, 7, 8, 2)
    with pytest.raises(ValueError, match="stride must be an int >= 1, got 0"):
        torch_fused.fused_conv2d(x, w, b, stride=0)
    with pytest.raises(ValueError, match="needs the input's height and width"):
        torch_fused.fused_input_grad(dy, w, 2)
