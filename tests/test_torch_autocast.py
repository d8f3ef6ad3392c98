"""FixedConv2d and ``fixed_conv2d_record`` under bfloat16 autocast and with
channels_last inputs: the dtype that comes out, the values against the
float64 numpy references (bfloat16 tolerances), gradients reaching float32
parameters as float32, the memory format kept, the fused path running the
bfloat16 kernels (not a float32 round trip), and ``auto`` measuring the
bfloat16 contenders, folded among them."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fxnn.kernels import cpu_fused, torch_fused  # noqa: E402
from fxnn.kernels.capabilities import capability  # noqa: E402
from fxnn.kernels.fixed_kernels import fixed_conv_grad_reference, fixed_conv_reference  # noqa: E402
from fxnn.models.torch import paths as torch_paths  # noqa: E402
from fxnn.models.torch.layer import FixedConv2d  # noqa: E402
from fxnn.models.torch.paths import available_paths, fixed_conv2d_record  # noqa: E402

BF16 = torch.bfloat16


def tensors(b, m, n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g) for s in ((b, m, h, w), (5 * m, n), (n,), (b, n, h, w))]


def bf16_exact(t):
    """``t`` rounded to bfloat16 and back: the values autocast will compute
    on, so that the reference sees the same inputs."""
    return t.to(BF16).float()


def assert_close_bf16(got, want, terms):
    """Within bfloat16 rounding of the result and of its ``terms``-term sums
    of products of bfloat16-rounded operands (float32 accumulation): a
    relative error of a few 2^-8 of the result's scale."""
    want = np.asarray(want, dtype=np.float64)
    scale = max(1e-3, float(np.abs(want).max()))
    tol = 2.0 ** -8 * scale * (2 + np.sqrt(terms) / 4)
    np.testing.assert_allclose(got.detach().float().numpy(), want, rtol=0, atol=tol)


def test_autocast_dtype_follows_the_autocast_state():
    x = torch.ones(1, 1, 2, 2)
    assert torch_fused.autocast_dtype(x) == torch.float32
    with torch.autocast("cpu", dtype=BF16):
        assert torch_fused.autocast_dtype(x) == BF16
        assert torch_fused.autocast_dtype(x.double()) == torch.float64  # autocast leaves float64 alone
        with torch.autocast("cpu", enabled=False):
            assert torch_fused.autocast_dtype(x) == torch.float32


@pytest.mark.parametrize("path", ["fused", "fixed", "folded"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 9), (1, 1, 17, 1, 13), (3, 8, 4, 6, 1)])
def test_every_path_computes_in_bf16_and_matches_the_references(path, shape):
    x, w, b, dy = tensors(*shape)
    x, w, b = (bf16_exact(t).requires_grad_(True) for t in (x, w, b))
    dy = bf16_exact(dy)
    with torch.autocast("cpu", dtype=BF16):
        y = fixed_conv2d_record(x, w, b, path)
    assert y.dtype == BF16
    y.backward(dy.to(BF16))
    m = shape[1]
    want = fixed_conv_reference(x.detach().double().numpy(), w.detach().double().numpy(), b.detach().double().numpy())
    assert_close_bf16(y, want, 5 * m)
    refs = fixed_conv_grad_reference(x.detach().double().numpy(), w.detach().double().numpy(), dy.double().numpy())
    for got, ref, terms in zip((x.grad, w.grad, b.grad), refs, (9 * shape[2], shape[0] * shape[3] * shape[4],
                                                                shape[0] * shape[3] * shape[4])):
        assert got.dtype == torch.float32  # the float32 parameters get float32 gradients
        assert_close_bf16(got, ref, terms)


@pytest.mark.parametrize("path", ["fused", "fixed", "folded"])
def test_a_channels_last_input_gives_a_channels_last_result(path):
    x, w, b, _ = tensors(2, 4, 6, 5, 7, seed=2)
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=BF16), torch.no_grad():
        y, yc = fixed_conv2d_record(x, w, b, path), fixed_conv2d_record(xc, w, b, path)
    assert yc.is_contiguous(memory_format=torch.channels_last) and not yc.is_contiguous()
    torch.testing.assert_close(yc, y, rtol=0, atol=0)


def test_the_fused_path_runs_the_bf16_kernels_without_a_float32_round_trip(monkeypatch):
    bf16 = capability("fused", "torch", "cpu", BF16)
    if not bf16:
        pytest.skip(bf16.reason)
    seen = []
    for name in ("forward", "weight_grad", "input_grad"):
        real = getattr(cpu_fused, name)

        def recording(*args, _real=real, _name=name, **kwargs):
            seen.append((_name, {a.dtype for a in args if isinstance(a, torch.Tensor)}))
            return _real(*args, **kwargs)
        monkeypatch.setattr(cpu_fused, name, recording)
    x, w, b, dy = tensors(2, 3, 4, 6, 6, seed=3)
    x, w, b = (t.requires_grad_(True) for t in (x, w, b))
    with torch.autocast("cpu", dtype=BF16):
        y = fixed_conv2d_record(x, w, b, "fused")
    y.backward(dy.to(BF16))
    assert sorted(name for name, _ in seen) == ["forward", "input_grad", "weight_grad"]
    assert all(dtypes == {BF16} for _, dtypes in seen), seen


def test_fixed_conv2d_module_under_autocast_trains_float32_parameters():
    layer = FixedConv2d(3, 5, path="fused")
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=BF16):
        y = layer(x)
    assert y.dtype == BF16
    y.float().square().mean().backward()
    assert layer.weight.dtype == layer.weight.grad.dtype == torch.float32
    assert layer.bias.grad.dtype == torch.float32 and torch.isfinite(layer.weight.grad).all()


def test_the_contenders_under_autocast_include_folded_and_run_in_bf16(monkeypatch):
    seen = {}
    real = torch_paths.fixed_conv2d_record

    def recording(x, weight, bias, path, stride=1):
        y = real(x, weight, bias, path, stride)
        seen[path] = (y.dtype, y.is_contiguous(memory_format=torch.channels_last))
        return y
    monkeypatch.setattr(torch_paths, "fixed_conv2d_record", recording)
    runs = torch_paths.path_contenders([3, 2, 4, 6, 5], torch.float32, torch.device("cpu"), train=True,
                                        input_grad=True, autocast=BF16, channels_last=True)
    assert "folded" in runs
    assert tuple(runs) == available_paths(torch.empty(0), BF16)
    for run in runs.values():
        run()
    assert seen == {path: (BF16, True) for path in runs}


class Clock:
    """A clock that moves only when a contender runs: by 1 ms for the path
    named fastest, 2 ms for the others."""

    def __init__(self, fastest):
        self.now, self.fastest = 0.0, fastest

    def __call__(self):
        return self.now


def test_auto_under_autocast_is_measured_and_cached_apart_from_float32(monkeypatch, tmp_path):
    from fxnn.models import fxnn_paths
    clock = Clock("folded")
    monkeypatch.setenv("FXNN_AUTOTUNE", "1")
    monkeypatch.setattr(fxnn_paths, "_default", fxnn_paths.PathTuner(str(tmp_path / "paths.json"), clock=clock,
                                                                     budget=0.0))
    monkeypatch.setattr(torch_paths, "_auto", {})
    timed = []
    real_contenders = torch_paths.path_contenders

    def contenders(*args, **kwargs):
        def timed_run(path, run):
            def one_pass():
                run()
                clock.now += 0.001 if path == clock.fastest else 0.002
            return one_pass
        runs = real_contenders(*args, **kwargs)
        timed.append((args, kwargs, tuple(runs)))
        return {path: timed_run(path, run) for path, run in runs.items()}
    monkeypatch.setattr(torch_paths, "path_contenders", contenders)
    x, w, b, _ = tensors(2, 3, 4, 6, 6, seed=4)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=BF16):
            y = fixed_conv2d_record(x, w, b, "auto")
            want = fixed_conv2d_record(x, w, b, "folded")
        torch.testing.assert_close(y, want, rtol=0, atol=0)
        clock.fastest = "fixed"
        fixed_conv2d_record(x, w, b, "auto")  # float32: its own measurement
    assert len(timed) == 2
    keys = [json.loads(k) for k in json.loads((tmp_path / "paths.json").read_text())["entries"]]
    assert sorted(k.get("autocast", "-") for k in keys) == ["-", "torch.bfloat16"]


@pytest.mark.parametrize("path", ["fused", "fixed", "folded"])
def test_torch_compile_traces_every_path_under_autocast(path):
    layer = FixedConv2d(3, 4, path=path)
    x = torch.randn(2, 3, 8, 7, generator=torch.Generator().manual_seed(5))

    def step(x):
        with torch.autocast("cpu", dtype=BF16):
            return layer(x)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    assert y.dtype == BF16
    torch.testing.assert_close(y, step(x), rtol=0, atol=0)
