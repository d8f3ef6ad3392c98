"""The other fixed bases (models/fixed_bases.py): their norms and spans
against independent constructions (scipy's DCT, the Gaussian's density and
finite differences), folding equal to the unfolded computation (a grouped
conv then a 1x1, a scipy correlation), the fxnn-<basis> models in both
engines and the runner, and FixedConv2d(basis=...)."""
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from scipy.fft import idctn
from scipy.signal import correlate2d
from scipy.stats import multivariate_normal

import fxnn
from conftest import ROOT
from fxnn.models.architecture import BASIS_MODELS, MODEL_BASES, MODELS, build_network
from fxnn.models.fixed_bases import BASES, GAUSS_SIGMA, basis_kernels, gram, mean_squared_norm
from fxnn.kernels.fixed_kernels import KERNELS, fold_weights

NEW_BASES = [MODEL_BASES[m] for m in BASIS_MODELS]


def one_hot_dct(u, v):
    """The (u, v) basis function of scipy's orthonormal 2-D DCT-II: the
    inverse transform of a unit coefficient."""
    coeff = np.zeros((3, 3))
    coeff[u, v] = 1.0
    return idctn(coeff, type=2, norm="ortho")


def test_dct_unit_is_scipys_orthonormal_dct_and_dct_is_it_unscaled():
    want = np.stack([one_hot_dct(u, v) for u in range(3) for v in range(3)])
    np.testing.assert_allclose(BASES["dct-unit"], want, atol=1e-12)
    np.testing.assert_allclose(gram("dct-unit"), np.eye(9), atol=1e-12)
    # raw: orthogonal, squared norms the products of the 1-D cosines' (3 for u = 0, 1.5 else)
    norms_1d = np.array([3.0, 1.5, 1.5])
    np.testing.assert_allclose(gram("dct"), np.diag(np.outer(norms_1d, norms_1d).ravel()), atol=1e-12)
    np.testing.assert_allclose(BASES["dct"], want * np.sqrt(np.outer(norms_1d, norms_1d).ravel())[:, None, None],
                               atol=1e-12)
    np.testing.assert_allclose(BASES["dct"][0], np.ones((3, 3)), atol=1e-15)  # the DC kernel
    # L1: each kernel's absolute values sum to 1, each parallel to its DCT kernel
    np.testing.assert_allclose(np.abs(BASES["dct-l1"]).sum(axis=(1, 2)), np.ones(9), atol=1e-12)
    np.testing.assert_allclose(BASES["dct-l1"] * np.abs(BASES["dct"]).sum(axis=(1, 2))[:, None, None], BASES["dct"],
                               atol=1e-12)


def test_gauss_is_the_sampled_gaussian_and_its_finite_difference_derivatives():
    density = multivariate_normal(mean=[0, 0], cov=GAUSS_SIGMA ** 2 * np.eye(2)).pdf
    h = 1e-4

    def g(x, y):
        return density(np.stack([x, y], axis=-1))
    y, x = np.mgrid[-1:2, -1:2].astype(float)   # row offset downwards, column offset rightwards
    want = [g(x, y),
            (g(x + h, y) - g(x - h, y)) / (2 * h),
            (g(x, y + h) - g(x, y - h)) / (2 * h),
            (g(x + h, y) - 2 * g(x, y) + g(x - h, y)) / h ** 2,
            (g(x + h, y + h) - g(x + h, y - h) - g(x - h, y + h) + g(x - h, y - h)) / (4 * h * h),
            (g(x, y + h) - 2 * g(x, y) + g(x, y - h)) / h ** 2]
    np.testing.assert_allclose(BASES["gauss"], np.stack(want), rtol=1e-5, atol=1e-7)
    assert BASES["gauss"][2][2, 1] < 0 < BASES["gauss"][1][1, 0]  # Gy falls downwards, Gx rightwards


def test_random_basis_is_seeded_and_in_range():
    b = BASES["random"]
    assert b.shape == (9, 3, 3) and np.abs(b).max() <= 1 / 3
    from fxnn.models.fixed_bases import random_basis
    np.testing.assert_array_equal(random_basis(), b)  # the same draw every time
    assert not np.array_equal(random_basis(seed=1), b)


@pytest.mark.parametrize("name", ["dct-unit", "gauss-unit", "random-unit"])
def test_unit_variants_have_unit_norm_and_the_raw_ones_directions(name):
    b = BASES[name]
    np.testing.assert_allclose(np.sqrt((b ** 2).sum(axis=(1, 2))), np.ones(len(b)), atol=1e-12)
    raw = BASES[name[:-len("-unit")]]
    np.testing.assert_allclose(b * np.sqrt((raw ** 2).sum(axis=(1, 2)))[:, None, None], raw, atol=1e-12)


@pytest.mark.parametrize("name, rank", [("fxnn", 5), ("dct", 9), ("dct-unit", 9), ("dct-l1", 9), ("gauss", 6),
                                        ("gauss-unit", 6), ("random", 9), ("random-unit", 9)])
def test_rank_and_span(name, rank):
    b = BASES[name].reshape(-1, 9)
    assert len(b) == rank and np.linalg.matrix_rank(b) == rank  # the kernels are independent
    target = np.random.default_rng(0).normal(size=9)  # a generic 3x3 kernel
    coeff, *_ = np.linalg.lstsq(b.T, target, rcond=None)
    residual = np.linalg.norm(b.T @ coeff - target)
    assert (residual < 1e-10) == (rank == 9)  # full rank: every 3x3 kernel is a combination


@pytest.mark.parametrize("name", sorted(BASES))
def test_mean_squared_norm_is_the_mean_of_the_squared_kernel_norms(name):
    b = BASES[name]
    assert mean_squared_norm(name) == pytest.approx(np.mean([np.sum(k * k) for k in b]), rel=1e-12)
    assert mean_squared_norm(name) == pytest.approx(np.trace(gram(name)) / len(b), rel=1e-12)


def test_stated_mean_squared_norms():
    assert mean_squared_norm("fxnn") == pytest.approx(13)
    assert mean_squared_norm("ortho") == pytest.approx(1)
    assert mean_squared_norm("dct") == pytest.approx(4)
    for name in ("dct-unit", "gauss-unit", "random-unit"):
        assert mean_squared_norm(name) == pytest.approx(1)


def test_manual_table_of_bases_states_each_basis_kernels_and_mean_squared_norm():
    readme = (Path(ROOT) / "docs" / "network.md").read_text()
    rows = {m.group(1): (int(m.group(2)), float(m.group(3)))
            for m in re.finditer(r"^\| `(fxnn-[a-z0-9-]+|fxnn)` \|[^|]*\|[^|]*\| (\d+) \| ([\d.]+) \|", readme, re.M)}
    for model in ("fxnn",) + tuple(BASIS_MODELS):
        kernels, msn = rows[model]
        basis = MODEL_BASES[model]
        assert kernels == len(BASES[basis]), model
        assert msn == pytest.approx(mean_squared_norm(basis), abs=0.006), model


def test_bad_bases_are_refused():
    with pytest.raises(ValueError, match="unknown basis 'nope'"):
        basis_kernels("nope")
    with pytest.raises(ValueError, match="K, 3, 3"):
        basis_kernels(np.zeros((4, 2, 3)))
    with pytest.raises(ValueError, match="finite"):
        basis_kernels(np.full((2, 3, 3), np.nan))


def dense_reference(x, w_eff):
    """sum_m correlate(x[b, m], w_eff[n, m]), zero padded, by scipy."""
    return np.array([[sum(correlate2d(x[i, j], w_eff[o, j], mode="same") for j in range(x.shape[1]))
                      for o in range(len(w_eff))] for i in range(len(x))])


@pytest.mark.parametrize("name", NEW_BASES)
def test_folding_equals_the_grouped_conv_then_1x1_and_the_numpy_reference(name):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from fxnn.models.torch.backend import fold
    basis = BASES[name]
    k, m, n = len(basis), 3, 4
    rng = np.random.default_rng(1)
    x, w = rng.normal(size=(2, m, 6, 5)), rng.normal(size=(k * m, n))
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    # the unfolded layer: channel K*m + k is input m correlated with kernel k, then the 1x1
    stage = F.conv2d(xt, torch.from_numpy(np.tile(basis, (m, 1, 1)))[:, None], padding=1, groups=m)
    unfolded = F.conv2d(stage, wt.t()[:, :, None, None])
    w_eff = fold_weights(w, basis)
    np.testing.assert_allclose(fold(wt, basis).numpy(), w_eff, rtol=1e-12, atol=1e-12)
    folded = F.conv2d(xt, torch.from_numpy(w_eff), padding=1)
    np.testing.assert_allclose(folded.numpy(), unfolded.numpy(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(folded.numpy(), dense_reference(x, w_eff), rtol=1e-10, atol=1e-10)
    # the row K*m + k carries kernel k of input channel m
    one = np.zeros((k * m, 1))
    one[k * 2 + k - 1, 0] = 2.0
    np.testing.assert_array_equal(fold_weights(one, basis)[0, 2], 2.0 * basis[k - 1])


@pytest.mark.parametrize("name", ["gauss"])  # K = 6; every basis model runs both engines below
def test_pytensor_fold_is_the_dense_reference(name):
    import pytensor
    import pytensor.tensor as pt

    from fxnn.models import network
    from fxnn.models.pytensor.backend import BACKEND, conv2d_same
    basis = BASES[name]
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(2, 2, 5, 7)), rng.normal(size=(2 * len(basis), 3))
    xs, ws = pt.tensor4(dtype="float64"), pt.matrix(dtype="float64")
    layer = pytensor.function([xs, ws], conv2d_same(xs, network.fold(BACKEND, ws, basis), pt.zeros(3, dtype="float64"), 3))
    np.testing.assert_allclose(layer(x, w), dense_reference(x, fold_weights(w, basis)), atol=1e-10)


@pytest.mark.parametrize("model", sorted(BASIS_MODELS))
def test_basis_model_shapes_and_init(model):
    net = build_network(model, (1, 28, 28))
    k = len(BASES[MODEL_BASES[model]])
    assert net.param_shapes()["conv0_w"] == (k, 32) and net.param_shapes()["conv1_w"] == (32 * k, 64)
    assert net.basis() == MODEL_BASES[model] and [c.factored and not c.fxnn_paths for c in net.convs] == [True] * 2
    w = net.init_params(np.random.default_rng(0))["conv1_w"]
    bound = 0.3 / np.sqrt(32 * k + 64)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound


@pytest.mark.parametrize("model", sorted(BASIS_MODELS))
def test_engines_agree_on_a_short_run_of_each_basis_model(model):
    pytest.importorskip("torch")
    from fxnn.models.pytensor.engine import PyTensorEngine
    from fxnn.models.torch.engine import TorchEngine
    net = build_network(model, (1, 12, 10))
    params = net.init_params(np.random.default_rng(1), dtype=np.float64)
    rng = np.random.default_rng(3)
    x, y = rng.random((6, 1, 12, 10)), rng.integers(0, 10, 6).astype(np.int32)
    engines = [cls(net, params, dtype="float64", dropout=0.5, seed=4) for cls in (PyTensorEngine, TorchEngine)]
    losses = [[e.train_step(x, y, 0.1) for _ in range(3)] for e in engines]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-9)
    after = [e.get_params() for e in engines]
    for name in after[0]:
        np.testing.assert_allclose(after[1][name], after[0][name], rtol=1e-8, atol=1e-12, err_msg=name)
    assert np.abs(after[0]["conv0_w"] - params["conv0_w"]).max() > 1e-6  # the conv layers train
    assert engines[1].describe_paths()[0] == f"conv0: folded ({MODEL_BASES[model]} basis); " \
                                             f"conv1: folded ({MODEL_BASES[model]} basis)"


def test_help_lists_the_basis_models():
    help_text = " ".join(fxnn.build_parser().format_help().split())
    for model in BASIS_MODELS:
        assert model in MODELS
        assert re.search(rf"(?<![\w-]){re.escape(model)}(?![\w-])", help_text.replace("- ", "-")), model
    assert "or fxnn over another fixed basis (docs/network.md)" in help_text
    assert "\n## Other fixed bases\n" in (Path(ROOT) / "docs" / "network.md").read_text(encoding="utf-8")


def test_the_record_names_the_basis(tmp_path, small_mnist):
    out = tmp_path / "rec.mat"
    code = fxnn.main(["-m", "fxnn-gauss", "-nrec", "2", "-ipr", "3", "--data-dir", small_mnist, "-o", str(out),
                      "--seed", "1"])
    assert code == 0
    meta = scipy.io.loadmat(str(out), simplify_cells=True)["meta"]
    assert meta["model"] == "fxnn-gauss" and meta["basis"] == "gauss"
    assert meta["fxnn_path"] == "conv0: folded (gauss basis); conv1: folded (gauss basis)"
    assert meta["params_fixed"] == (1 + 32) * 6 * 9  # six 3x3 kernels per input channel


# ---- FixedConv2d(basis=...) ------------------------------------------------

def _dense_twin(layer, basis):
    """The nn.Conv2d whose kernels are ``layer``'s folded over ``basis``."""
    import torch
    dense = torch.nn.Conv2d(layer.in_channels, layer.out_channels, 3, padding=1).double()
    with torch.no_grad():
        dense.weight.copy_(torch.from_numpy(fold_weights(layer.record_weight().detach().numpy(), basis)))
        dense.bias.copy_(layer.bias.detach())
    return dense


@pytest.mark.parametrize("basis", ["dct", "gauss-unit", "random", "array"])
def test_fixed_conv2d_over_a_basis_forward_and_gradients_match_a_dense_conv(basis):
    torch = pytest.importorskip("torch")
    from fxnn.models.torch.layer import FixedConv2d
    kernels = np.random.default_rng(5).normal(size=(4, 3, 3)) if basis == "array" else BASES[basis]
    k = len(kernels)
    layer = FixedConv2d(3, 5, basis=kernels if basis == "array" else basis).double()
    assert layer.weight.shape == (5, 3, k) and layer.path == "folded"
    torch.nn.init.normal_(layer.bias)
    dense = _dense_twin(layer, kernels)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    g = torch.randn(2, 5, 7, 6, dtype=torch.float64)
    out = layer(x)
    np.testing.assert_allclose(out.detach().numpy(), dense_reference(x.detach().numpy(), dense.weight.detach().numpy())
                               + layer.bias.detach().numpy()[:, None, None], rtol=1e-10, atol=1e-10)
    out.backward(g)
    dense(x2).backward(g)
    np.testing.assert_allclose(x.grad.numpy(), x2.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.bias.grad.numpy(), dense.bias.grad.numpy(), rtol=1e-12)
    want = np.einsum("nmab,kab->nmk", dense.weight.grad.numpy(), kernels)  # chain rule
    np.testing.assert_allclose(layer.weight.grad.numpy(), want, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda inp: layer(inp), (x.detach()[:1, :, :4, :3].requires_grad_(True),))


def test_fixed_conv2d_basis_conventions():
    torch = pytest.importorskip("torch")
    from fxnn.models.torch.layer import FixedConv2d
    layer = FixedConv2d(4, 6, basis="dct")
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert list(layer.state_dict()) == ["weight", "bias"]  # the basis is the constructor's, not state
    assert layer.weight.abs().max().item() <= 0.3 / np.sqrt(36 + 6)
    assert "basis=dct, path=folded" in repr(layer)
    assert layer(torch.randn(1, 4, 5, 5)).dtype == torch.float32
    assert layer.double()(torch.randn(1, 4, 5, 5).double()).dtype == torch.float64
    assert FixedConv2d(4, 6, basis="fxnn").weight.shape == (6, 4, 5)  # fxnn's kernels keep their fast paths
    assert FixedConv2d(4, 6, path="fixed").path == "fixed"
    with pytest.raises(ValueError, match="path 'fused' computes fxnn's five kernels only.*'folded' or 'auto'"):
        FixedConv2d(4, 6, basis="gauss", path="fused")
    with pytest.raises(ValueError, match="unknown basis"):
        FixedConv2d(4, 6, basis="dtc")
    np.testing.assert_array_equal(FixedConv2d(1, 1, basis=KERNELS).kernels.numpy(), KERNELS)


def test_fixed_conv2d_over_other_bases_compiles_without_a_graph_break():
    torch = pytest.importorskip("torch")
    from fxnn.models.torch.layer import FixedConv2d
    net = torch.nn.Sequential(FixedConv2d(2, 3, basis="gauss"), torch.nn.ReLU(), FixedConv2d(3, 4, basis="dct"))
    x = torch.randn(2, 2, 6, 5)
    np.testing.assert_allclose(torch.compile(net, fullgraph=True)(x).detach().numpy(), net(x).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
