"""FixedConv2d as a PyTorch module: numbers against numpy and a dense conv
with the folded kernels on every path and stride, gradients, the
``nn.Conv2d`` conventions (arguments, refusals, weight order, init, state
dicts, repr), and training."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from fxnn.kernels.fixed_kernels import KERNELS, fixed_stage_reference, fold_weights  # noqa: E402
from fxnn.models import fxnn_paths  # noqa: E402
from fxnn.models.torch import layer as torch_layer  # noqa: E402
from fxnn.models.torch import paths as torch_paths  # noqa: E402
from fxnn.models.torch.layer import FixedConv2d  # noqa: E402
from fxnn.models.torch.paths import fixed_conv2d_record  # noqa: E402

PATHS = ("fixed", "fused", "folded", "auto")
SIZES = ((7, 9), (8, 8), (5, 1))


def folded_kernels(layer):
    """The layer's dense (N, M, 3, 3) kernels from numpy: W_eff[n, m] = sum_k weight[n, m, k] K_k."""
    return torch.from_numpy(fold_weights(layer.record_weight().detach().double().numpy()))


def folded_conv(layer):
    """The dense nn.Conv2d equal to ``layer``."""
    dense = nn.Conv2d(layer.in_channels, layer.out_channels, 3, stride=layer.stride, padding=1).double()
    with torch.no_grad():
        dense.weight.copy_(folded_kernels(layer))
        dense.bias.copy_(layer.bias.detach().double())
    return dense


def test_output_is_fixed_stage_then_a_1x1():
    layer = FixedConv2d(3, 4, path="fixed").double()
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    want = np.einsum("bmkhw,nmk->bnhw", fixed_stage_reference(x.numpy()).reshape(2, 3, 5, 6, 5),
                     layer.weight.detach().numpy())
    want += layer.bias.detach().numpy()[:, None, None]
    np.testing.assert_allclose(layer(x).detach().numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", SIZES)
def test_every_path_and_stride_equals_the_folded_dense_conv_with_its_gradients(path, stride, size):
    """float32 on each path against F.conv2d in float64 with the folded
    kernels: output, input gradient and weight gradient (chain rule through
    W_eff = sum_k weight[n, m, k] K_k), odd sizes leaving a remainder at stride 2."""
    torch.manual_seed(stride)
    layer = FixedConv2d(3, 6, stride=stride, path=path)
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, *size, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, 6, (size[0] - 1) // stride + 1, (size[1] - 1) // stride + 1)
    g = torch.randn(y.shape)
    gx, gw, gb = torch.autograd.grad(y, (x, layer.weight, layer.bias), g)

    x64 = x.detach().double().requires_grad_(True)
    w64 = folded_kernels(layer).requires_grad_(True)
    want = F.conv2d(x64, w64, layer.bias.detach().double(), stride=stride, padding=1)
    want_gx, want_gw = torch.autograd.grad(want, (x64, w64), g.double())
    tol = {"rtol": 1e-4, "atol": 1e-4}
    np.testing.assert_allclose(y.detach().numpy(), want.detach().numpy(), **tol)
    np.testing.assert_allclose(gx.numpy(), want_gx.numpy(), **tol)
    np.testing.assert_allclose(gw.numpy(), np.einsum("nmab,kab->nmk", want_gw.numpy(), KERNELS), **tol)
    np.testing.assert_allclose(gb.numpy(), g.double().sum((0, 2, 3)).numpy(), **tol)


@pytest.mark.parametrize("path", ["fixed", "folded"])
def test_gradcheck_at_stride_2(path):
    torch.manual_seed(0)
    layer = FixedConv2d(2, 3, stride=2, path=path).double()
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp, w, b: torch_layer.fixed_conv2d(inp, w, b, 2, path=path),
                                    (x, layer.weight, layer.bias))


def test_unbatched_input_as_nn_conv2d():
    layer = FixedConv2d(3, 4, stride=2, path="fixed").double()
    x = torch.randn(3, 7, 6, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (4, 4, 3)
    np.testing.assert_allclose(y.detach().numpy(), layer(x[None])[0].detach().numpy(), rtol=1e-12)


def test_other_bases_take_stride_2():
    layer = FixedConv2d(3, 4, stride=2, basis="dct").double()
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    dense = torch.from_numpy(fold_weights(layer.record_weight().detach().numpy(), layer.kernels.numpy()))
    want = F.conv2d(x, dense, layer.bias.detach(), stride=2, padding=1)
    np.testing.assert_allclose(layer(x).detach().numpy(), want.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.dense_weight().detach().numpy(), dense.numpy(), rtol=1e-12)


def test_same_padding_and_pairs_are_nn_conv2d_spellings():
    x = torch.randn(1, 2, 5, 6)
    a = FixedConv2d(2, 3, path="fixed")
    for kwargs in ({"padding": "same"}, {"kernel_size": (3, 3), "stride": (1, 1), "padding": (1, 1)},
                   {"dilation": (1, 1), "groups": 1, "padding_mode": "zeros"}):
        b = FixedConv2d(2, 3, path="fixed", **kwargs)
        b.load_state_dict(a.state_dict())
        assert torch.equal(b(x), a(x)), kwargs
    assert FixedConv2d(2, 3, stride=(2, 2)).stride == (2, 2)


@pytest.mark.parametrize("kwargs, got", [
    ({"kernel_size": 5}, "kernel_size=5"), ({"kernel_size": (3, 1)}, "kernel_size=(3, 1)"),
    ({"stride": 3}, "stride=3"), ({"stride": (1, 2)}, "stride=(1, 2)"), ({"stride": 0}, "stride=0"),
    ({"padding": 0}, "padding=0"), ({"padding": 2}, "padding=2"), ({"padding": "valid"}, "padding='valid'"),
    ({"padding": "same", "stride": 2}, "padding='same' with stride=2"), ({"dilation": 2}, "dilation=2"),
    ({"groups": 2}, "groups=2"), ({"padding_mode": "reflect"}, "padding_mode='reflect'"),
])
def test_each_refused_argument_gives_one_line_naming_what_is_supported(kwargs, got):
    with pytest.raises(ValueError) as raised:
        FixedConv2d(4, 4, **kwargs)
    message = str(raised.value)
    assert "\n" not in message
    assert message == f"FixedConv2d supports {torch_layer.SUPPORTED}; got {got}"
    if set(kwargs) <= {"stride", "padding"}:
        with pytest.raises(ValueError, match="FixedConv2d supports kernel_size=3, stride 1 or 2"):
            torch_layer.fixed_conv2d(torch.zeros(1, 4, 5, 5), torch.zeros(4, 4, 5), **kwargs)


def test_conv2d_attributes_match_nn_conv2d():
    layer, dense = FixedConv2d(16, 32, 3, 2, 1, bias=False), nn.Conv2d(16, 32, 3, 2, 1, bias=False)
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(layer, name) == getattr(dense, name), name
    assert repr(layer) == ("FixedConv2d(16, 32, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False, "
                           "basis=fxnn, path=auto)")
    assert repr(FixedConv2d(4, 6, padding="same")) == ("FixedConv2d(4, 6, kernel_size=(3, 3), stride=(1, 1), "
                                                      "padding=same, basis=fxnn, path=auto)")
    assert FixedConv2d.__doc__ and "Args:" in FixedConv2d.__doc__ and "Shape:" in FixedConv2d.__doc__


def test_weight_order_and_the_record_layout():
    """weight[n, m, k] is row 5m+k, column n of the record layout, both ways."""
    layer = FixedConv2d(3, 4)
    record = layer.record_weight()
    assert record.shape == (15, 4)
    for n, m, k in ((0, 0, 0), (3, 2, 4), (1, 1, 3)):
        assert record[5 * m + k, n] == layer.weight[n, m, k]
    other = FixedConv2d(3, 4)
    other.load_record_weight(record.detach().numpy())
    assert torch.equal(other.weight, layer.weight)
    with pytest.raises(ValueError, match=r"a record weight of this layer is \(15, 4\), got \(4, 15\)"):
        other.load_record_weight(record.t())


def test_nn_init_sees_fan_in_of_inputs_times_kernels():
    """PyTorch's initialisers read weight (N, M, K) as fan_in = M*K, fan_out = N*K."""
    torch.manual_seed(0)
    layer = FixedConv2d(40, 30)
    nn.init.kaiming_uniform_(layer.weight, nonlinearity="linear")  # bound sqrt(3 / fan_in)
    bound = np.sqrt(3 / (40 * 5))
    assert bound * 0.98 < layer.weight.abs().max().item() <= bound
    nn.init.xavier_uniform_(layer.weight)  # bound sqrt(6 / (fan_in + fan_out))
    bound = np.sqrt(6 / (40 * 5 + 30 * 5))
    assert bound * 0.98 < layer.weight.abs().max().item() <= bound


def test_module_conventions_and_state_dict_round_trip():
    torch.manual_seed(0)
    layer = FixedConv2d(4, 6, stride=2)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert layer.weight.shape == (6, 4, 5)
    bound = 0.3 / np.sqrt(20 + 6)  # fxnn's init law, on K*M + N
    assert 0.9 * bound < layer.weight.abs().max().item() <= bound and layer.bias.abs().max().item() == 0
    nn.init.normal_(layer.bias)
    copy = FixedConv2d(4, 6, stride=2)
    copy.load_state_dict(layer.state_dict())
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        assert torch.equal(copy(x), layer(x)) and not layer(x).requires_grad
    assert FixedConv2d(4, 6, bias=False).bias is None
    with pytest.raises(RuntimeError, match="size mismatch"):
        FixedConv2d(4, 7).load_state_dict(layer.state_dict())


def test_trains_inside_a_sequential():
    """Tell horizontal from vertical bars: loss must fall far within 60 steps."""
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 1, 8, 8)
    y = torch.arange(64) % 2
    for i in range(64):
        pos = int(torch.randint(1, 7, (1,), generator=gen))
        if y[i]:
            x[i, 0, :, pos] = 1
        else:
            x[i, 0, pos, :] = 1
    torch.manual_seed(0)
    net = nn.Sequential(FixedConv2d(1, 8), nn.ReLU(), FixedConv2d(8, 8, stride=2), nn.Flatten(),
                        nn.Linear(8 * 16, 2))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert net[0].weight.grad is not None


@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 1, 1, 1), (3, 2, 4, 9)])
def test_folded_path_equals_the_fixed_path_forward_and_gradient(shape):
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5 * shape[1], 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: fixed_conv2d_record(*a, path="folded"), (x, w, b))
    g = torch.randn(shape[0], 4, *shape[2:], dtype=torch.float64)
    results = []
    for path in ("fixed", "folded"):
        out = fixed_conv2d_record(x, w, b, path)
        results.append([out] + list(torch.autograd.grad(out, (x, w, b), g)))
    for a, c in zip(*results):
        np.testing.assert_allclose(c.detach().numpy(), a.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_an_unknown_path_is_refused():
    with pytest.raises(ValueError, match="path must be one of"):
        FixedConv2d(2, 3, path="fast")


def test_auto_measures_each_stride_on_its_own(monkeypatch, tmp_path):
    """The tuner's key holds the stride (stride-1 keys stay as they were),
    and what is timed runs at that stride."""
    monkeypatch.setenv("FXNN_AUTOTUNE", "1")
    monkeypatch.setattr(fxnn_paths, "_default", fxnn_paths.PathTuner(str(tmp_path / "paths.json"), budget=0.0))
    monkeypatch.setattr(torch_paths, "_auto", {})
    seen, real = [], torch_paths.path_contenders

    def contenders(*args, **kwargs):
        seen.append(args[-1])
        return real(*args, **kwargs)
    monkeypatch.setattr(torch_paths, "path_contenders", contenders)
    x = torch.randn(2, 3, 7, 6)
    for stride in (1, 2):
        layer = FixedConv2d(3, 4, stride=stride)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), F.conv2d(x, folded_kernels(layer).float(), layer.bias,
                                                          stride=stride, padding=1), rtol=1e-4, atol=1e-4)
    assert seen == [1, 2]
    keys = [json.loads(k) for k in json.loads((tmp_path / "paths.json").read_text())["entries"]]
    assert sorted(k.get("stride", 1) for k in keys) == [1, 2]


@pytest.mark.parametrize("path", ["fixed", "folded"])
def test_the_pytensor_backend_strides_as_the_torch_one(path):
    """network.factored_conv at stride 2 on PyTensor's symbolic backend, a
    7x9 input leaving a remainder, against F.conv2d with the folded kernels."""
    pytensor = pytest.importorskip("pytensor")
    import pytensor.tensor as pt
    from fxnn.models.pytensor import backend as pytensor_backend
    g = torch.Generator().manual_seed(7)
    x, w, b = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((2, 3, 7, 9), (15, 4), (4,)))
    xs, ws, bs = pt.tensor4(dtype="float64"), pt.matrix(dtype="float64"), pt.vector(dtype="float64")
    y = pytensor.function([xs, ws, bs], pytensor_backend.fxnn_conv(xs, ws, bs, path, stride=2))(
        x.numpy(), w.numpy(), b.numpy())
    want = F.conv2d(x, torch.from_numpy(fold_weights(w.numpy())), b, stride=2, padding=1)
    np.testing.assert_allclose(y, want.numpy(), rtol=1e-10, atol=1e-12)


def test_the_pytensor_fused_op_refuses_stride_2_in_one_line():
    pytest.importorskip("pytensor")
    import pytensor.tensor as pt
    from fxnn.models import network
    from fxnn.models.pytensor import backend as pytensor_backend
    with pytest.raises(ValueError, match="PyTensor fused op computes stride 1 only, not 2: a strided fused layer "
                                         "needs the torch engine"):
        network.factored_conv(pytensor_backend.BACKEND, pt.tensor4(dtype="float32"), pt.matrix(dtype="float32"),
                              pt.vector(dtype="float32"), "fused", KERNELS, 2)


@pytest.mark.parametrize("path", ["auto", "fixed", "fused", "folded"])
def test_on_the_meta_device_it_infers_shapes_as_nn_conv2d(path, monkeypatch, tmp_path):
    """Tensors without data (shape inference, deferred initialisation): every
    path, auto included (which, measuring on, has nothing to time there and
    takes its default), gives nn.Conv2d's output shape, strided too."""
    monkeypatch.setenv("FXNN_AUTOTUNE", "1")
    monkeypatch.setattr(fxnn_paths, "_default", fxnn_paths.PathTuner(str(tmp_path / "paths.json"), budget=0.0))
    monkeypatch.setattr(torch_paths, "_auto", {})
    for stride in (1, 2):
        layer = FixedConv2d(3, 8, 3, stride=stride, padding=1, device="meta", path=path)
        dense = torch.nn.Conv2d(3, 8, 3, stride=stride, padding=1, device="meta")
        x = torch.empty(2, 3, 9, 9, device="meta")
        y = layer(x)
        assert y.device.type == "meta" and y.shape == dense(x).shape


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8, torch.bool])
def test_an_integer_input_is_refused_in_one_line(dtype):
    """An image tensor not yet converted (uint8 pixels, say): one line naming
    its dtype and the fix, on every path (auto used to fail inside its timing)."""
    for path in ("auto", "fixed", "fused", "folded"):
        with pytest.raises(TypeError) as raised:
            FixedConv2d(3, 8, path=path)(torch.ones(1, 3, 8, 8, dtype=dtype))
        message = str(raised.value)
        assert "\n" not in message and str(dtype) in message and "input.float()" in message
