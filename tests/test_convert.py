"""fxnn.convert and fxnn.conversion.report: a residual network of twenty 3x3
convolutions (strided ones among them) converted, against its folded dense
twin forward and backward; the projection against numpy's least squares;
the counts against hand arithmetic; what is left alone; torch.compile
without a graph break."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import fxnn  # noqa: E402
from fxnn.models.fixed_bases import BASES, project_kernels  # noqa: E402
from fxnn.models.torch.layer import FixedConv2d  # noqa: E402


class Block(nn.Module):
    """A basic residual block: two 3x3 convs with BatchNorm; a strided one
    takes a 1x1 strided shortcut."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding="same", bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNetish(nn.Module):
    """A stem conv, three stages of three blocks (strides 1, 2, 2) and a
    head conv: twenty 3x3 convs, two 1x1 shortcuts, a linear classifier."""

    def __init__(self, widths=(4, 6, 8)):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1)
        layers, cin = [], widths[0]
        for width, stride in zip(widths, (1, 2, 2)):
            for i in range(3):
                layers.append(Block(cin, width, stride if i == 0 else 1))
                cin = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Conv2d(cin, cin, 3, padding=1)
        self.fc = nn.Linear(cin, 10)

    def forward(self, x):
        h = self.head(self.stages(torch.relu(self.stem(x))))
        return self.fc(h.mean((2, 3)))


def resnet(seed=0):
    torch.manual_seed(seed)
    model = ResNetish()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # not the identity, so that errors would show
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


def dense_twin(converted):
    """A deep copy of ``converted`` with each FixedConv2d replaced by the
    nn.Conv2d of its folded kernels."""
    twin = copy.deepcopy(converted)
    for parent in twin.modules():
        for name, child in parent.named_children():
            if isinstance(child, FixedConv2d):
                dense = nn.Conv2d(child.in_channels, child.out_channels, 3, child.stride, 1,
                                  bias=child.bias is not None)
                with torch.no_grad():
                    dense.weight.copy_(child.dense_weight())
                    if child.bias is not None:
                        dense.bias.copy_(child.bias)
                setattr(parent, name, dense)
    return twin


def forward_backward(model, x):
    """Output, input gradient and {parameter name: gradient} of a loss."""
    x = x.detach().clone().requires_grad_(True)
    y = model(x)
    names, params = zip(*model.named_parameters())
    grads = torch.autograd.grad((y ** 2).sum(), [x, *params])
    return y.detach(), grads[0], dict(zip(names, grads[1:]))


@pytest.mark.parametrize("init", ["project", "fresh"])
def test_a_converted_resnet_matches_its_folded_dense_twin_forward_and_backward(init):
    model = fxnn.convert(resnet(), init=init)
    fixed = [name for name, m in model.named_modules() if isinstance(m, FixedConv2d)]
    assert len(fixed) == 20 and sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 2
    assert model.stages[3].conv1.stride == (2, 2) and model.stages[3].conv1.padding == (1, 1)
    assert model.stages[0].conv2.padding == "same"
    twin = dense_twin(model)
    x = torch.randn(3, 3, 11, 9, generator=torch.Generator().manual_seed(1))
    y, gx, grads = forward_backward(model, x)
    y_twin, gx_twin, grads_twin = forward_backward(twin, x)
    torch.testing.assert_close(y, y_twin, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gx, gx_twin, rtol=1e-4, atol=1e-5)
    basis = torch.from_numpy(BASES["fxnn"].copy()).float()
    for name, g in grads.items():
        want = grads_twin[name]
        if name.rsplit(".", 1)[0] in fixed and name.endswith("weight"):  # chain rule through the folding
            want = torch.einsum("nmab,kab->nmk", want, basis)
        torch.testing.assert_close(g, want, rtol=1e-3, atol=1e-4, msg=name)


def test_a_dense_model_inside_the_span_converts_exactly():
    model = resnet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3):
                m.weight.copy_(torch.from_numpy(project_kernels(m.weight.double().numpy())))
    report = fxnn.conversion.report(model)
    assert all(r.energy_min > 1 - 1e-12 for r in report.layers)
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(2))
    model.train()
    want = forward_backward(model, x)
    got = forward_backward(fxnn.convert(copy.deepcopy(model)), x)
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("basis", ["fxnn", "gauss", "dct"])
def test_the_projection_is_numpys_least_squares(basis):
    torch.manual_seed(3)
    conv = nn.Conv2d(3, 4, 3, padding=1).double()
    b = BASES[basis].reshape(-1, 9)
    w = conv.weight.detach().numpy().reshape(12, 9)
    coefficients = np.stack([np.linalg.lstsq(b.T, kernel, rcond=None)[0] for kernel in w])
    kept = ((coefficients @ b) ** 2).sum(1) / (w ** 2).sum(1)
    report = fxnn.conversion.report(conv, basis=basis)
    assert len(report.layers) == 1
    np.testing.assert_allclose(report.layers[0].energy_mean, kept.mean(), rtol=1e-10)
    np.testing.assert_allclose(report.layers[0].energy_min, kept.min(), rtol=1e-10)
    if basis == "dct":  # nine kernels span every 3x3 kernel
        np.testing.assert_allclose(kept, 1, rtol=1e-12)
    layer = fxnn.convert(conv, basis=basis)
    assert isinstance(layer, FixedConv2d) and layer.weight.dtype == torch.float64
    np.testing.assert_allclose(layer.weight.detach().numpy().reshape(12, -1), coefficients, rtol=1e-8, atol=1e-12)
    assert torch.equal(layer.bias, conv.bias)


def test_the_counts_are_the_arithmetic():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1, bias=False),
                          nn.Conv2d(16, 16, 1), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    report = fxnn.conversion.report(model, torch.zeros(1, 3, 8, 8))
    params = (3 * 8 * 9 + 8) + 8 * 16 * 9 + (16 * 16 + 16) + (256 * 10 + 10)
    macs = 8 * 8 * 8 * (3 * 9) + 16 * 4 * 4 * (8 * 9) + 16 * 4 * 4 * 16 + 10 * 256
    assert (report.params_before, report.macs_before) == (params, macs)
    assert report.params_after == params - (3 * 8 + 8 * 16) * (9 - 5)
    assert report.macs_after == macs - (8 * 8 * 8 * 3 + 16 * 4 * 4 * 8) * (9 - 5)
    assert [(r.name, r.stride, r.params_before, r.params_after) for r in report.layers] == \
        [("0", 1, 224, 128), ("2", 2, 1152, 640)]
    assert report.left == [("3", "kernel_size=(1, 1), padding=(0, 0)")]
    text = str(report)
    assert text.startswith("Conv2d layers to FixedConv2d (basis fxnn): 2 of 3\n")
    assert "  2: 8->16 stride 2, energy of its kernels kept " in text
    assert "  3: left as it is: kernel_size=(1, 1), padding=(0, 0)" in text
    assert f"parameters: {params:,} -> {report.params_after:,}" in text
    assert f"for a 1x3x8x8 input: {macs:,} -> {report.macs_after:,}" in text
    fxnn.convert(model)
    assert sum(p.numel() for p in model.parameters()) == report.params_after
    assert fxnn.conversion.report(model, torch.zeros(1, 3, 8, 8)).macs_before == report.macs_after


def test_what_is_left_alone_and_how_layers_are_made():
    shared = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), shared, shared, nn.Conv2d(4, 4, 3, padding=1, dilation=2),
                          nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 4, 3, padding=1,
                                                                              padding_mode="reflect"),
                          nn.Conv2d(4, 4, 3, stride=3, padding=1), nn.Conv2d(4, 4, 3)).double().eval()
    asked = []
    fxnn.convert(model, init="fresh", path="fixed", filter=lambda name, m: asked.append(name) or name != "0")
    assert asked == ["0", "1"]  # the shared conv once, the ineligible never
    assert isinstance(model[1], FixedConv2d) and model[1] is model[2] and isinstance(model[0], nn.Conv2d)
    assert all(type(model[i]) is nn.Conv2d for i in range(3, 8))
    layer = model[1]
    assert layer.weight.dtype == torch.float64 and not layer.training and layer.path == "fixed"
    assert layer.weight.abs().max() <= 0.3 / np.sqrt(20 + 4) and layer.bias.abs().max() == 0  # fxnn's init
    left = dict(fxnn.conversion.report(model, filter=lambda name, m: name != "0").left)
    assert left == {"0": "left out by the filter", "3": "dilation=(2, 2)", "4": "groups=2",
                    "5": "padding_mode='reflect'", "6": "stride=(3, 3)", "7": "padding=(0, 0)"}
    class Standardised(nn.Conv2d):
        pass
    kept = nn.Sequential(Standardised(2, 4, 3, padding=1), nn.LazyConv2d(4, 3, padding=1))
    assert fxnn.conversion.report(kept).left == [
        ("0", "Standardised, a subclass of nn.Conv2d, may compute something else"),
        ("1", "lazy, not yet initialised: run a forward pass first")]
    frozen = fxnn.convert(nn.Conv2d(2, 4, 3, padding=1).requires_grad_(False))
    assert not frozen.weight.requires_grad and not frozen.bias.requires_grad


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="init must be one of project, fresh, got 'zeros'"):
        fxnn.convert(nn.Conv2d(2, 2, 3, padding=1), init="zeros")
    with pytest.raises(TypeError, match="convert takes an nn.Module, got dict"):
        fxnn.convert({})
    with pytest.raises(TypeError, match="filter must be a function"):
        fxnn.convert(nn.Conv2d(2, 2, 3, padding=1), filter="conv")
    with pytest.raises(ValueError, match="unknown basis 'dtc'"):
        fxnn.convert(nn.Conv2d(2, 2, 3, padding=1), basis="dtc")


def test_a_converted_model_state_dict_round_trips():
    model = fxnn.convert(resnet(0))
    other = fxnn.convert(resnet(1), init="fresh")
    other.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    model.eval(), other.eval()
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_a_converted_resnet_compiles_with_no_graph_break():
    model = fxnn.convert(resnet())
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(4))
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        got, want = forward_backward(compiled, x), forward_backward(model, x)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)


def test_the_example_of_docs_layer_md_prints_what_the_page_says():
    """docs/layer.md's conversion example, run: its output is the page's."""
    import contextlib
    import io
    import os
    import re

    from conftest import ROOT
    with open(os.path.join(ROOT, "docs", "layer.md"), encoding="utf-8") as f:
        page = f.read()
    code, output = re.search(r"tests/test_convert\.py\. -->\s*```python\n(.*?)```\s*```text\n(.*?)```",
                             page, re.S).groups()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "docs/layer.md", "exec"), {})
    assert printed.getvalue() == output
