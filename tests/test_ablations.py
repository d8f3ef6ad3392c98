"""The ablation models: the orthonormal basis, the subspace projector, the
initialisations, and both engines keeping cnn-sub in the subspace and giving
cnn-x13 its 13x step (each layer kind against a dense correlation on both
backends: tests/test_network_primitives.py)."""
import numpy as np
import pytest

import fxnn
from fxnn.kernels.fixed_kernels import KERNELS, fold_weights
from fxnn.models.architecture import ABLATIONS, build_network
from fxnn.models.fixed_bases import GRAM, GRAM_SQRT, ISOTROPIC, ORTHONORMAL, project_kernels, span_projector

PROJECTOR = span_projector("fxnn")
from fxnn.models.pytensor.engine import PyTensorEngine


def test_orthonormal_basis_is_orthonormal_and_spans_the_five_kernels():
    b = ORTHONORMAL.reshape(5, 9)
    np.testing.assert_allclose(b @ b.T, np.eye(5), atol=1e-12)
    k = KERNELS.reshape(5, 9)
    # each kernel is a combination of the orthonormal basis, and the other way round
    np.testing.assert_allclose((k @ b.T) @ b, k, atol=1e-12)
    np.testing.assert_allclose(np.linalg.lstsq(k.T, b.T, rcond=None)[0].T @ k, b, atol=1e-12)
    assert np.linalg.matrix_rank(np.vstack([k, b])) == 5


def test_isotropic_basis_has_fxnns_mean_gram():
    b = ISOTROPIC.reshape(5, 9)
    np.testing.assert_allclose(b @ b.T, 13 * np.eye(5), atol=1e-12)
    assert np.trace(GRAM) == 65
    np.testing.assert_allclose(b @ PROJECTOR, b, atol=1e-12)  # the same span


def test_gram_and_projector():
    np.testing.assert_array_equal(np.diag(GRAM), [36, 12, 12, 4, 1])
    assert GRAM[0, 4] == 4 and np.count_nonzero(GRAM - np.diag(np.diag(GRAM))) == 2
    np.testing.assert_allclose(GRAM_SQRT @ GRAM_SQRT, GRAM, atol=1e-12)
    np.testing.assert_allclose(PROJECTOR, PROJECTOR.T, atol=1e-15)
    np.testing.assert_allclose(PROJECTOR @ PROJECTOR, PROJECTOR, atol=1e-12)
    assert round(np.trace(PROJECTOR)) == 5
    # a kernel outside the span: the corners' checkerboard part is removed
    outside = np.zeros((1, 1, 3, 3))
    outside[0, 0, 0, 1] = 1.0
    projected = project_kernels(outside)
    assert np.abs(projected - outside).max() > 0.1
    np.testing.assert_allclose(project_kernels(projected), projected, atol=1e-12)


@pytest.mark.parametrize("model, shape", [("fxnn-ortho", (5, 32)), ("fxnn-iso", (5, 32)), ("cnn-sub", (32, 1, 3, 3)),
                                          ("cnn-fxinit", (32, 1, 3, 3))])
def test_parameter_shapes(model, shape):
    net = build_network(model, (1, 28, 28), filter_size=5)  # -fsize is cnn's only
    assert net.param_shapes()["conv0_w"] == shape
    assert net.param_shapes()["mlp0_w"] == (64 * 7 * 7, 384)
    assert model in ABLATIONS


def test_initialisations_match_fxnn_where_they_should():
    init = {m: build_network(m, (1, 28, 28)).init_params(np.random.default_rng(5))
            for m in ("fxnn", "fxnn-ortho", "fxnn-iso", "cnn-sub", "cnn-fxinit")}
    for name in ("conv0_w", "conv1_w"):
        fxnn_eff = fold_weights(init["fxnn"][name].astype(np.float64))
        for model, basis in (("fxnn-ortho", ORTHONORMAL), ("fxnn-iso", ISOTROPIC)):
            eff = fold_weights(init[model][name].astype(np.float64), basis)
            np.testing.assert_allclose(eff, fxnn_eff, rtol=1e-5, atol=1e-7, err_msg=model)
        np.testing.assert_allclose(init["cnn-fxinit"][name], fxnn_eff, rtol=1e-6, atol=1e-8)
        w = init["cnn-sub"][name].astype(np.float64)
        np.testing.assert_allclose(project_kernels(w), w, atol=1e-6)
        assert np.abs(w).max() > 0


def _engines(model, **kw):
    net = build_network(model, (1, 12, 10))
    params = net.init_params(np.random.default_rng(1))
    return [engine_class(net, params, **kw) for engine_class in _engine_classes()]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_cnn_sub_stays_in_the_subspace_while_training(optimizer):
    rng = np.random.default_rng(2)
    x, y = rng.random((8, 1, 12, 10), dtype=np.float32), rng.integers(0, 10, 8).astype(np.int32)
    for engine in _engines("cnn-sub", optimizer=optimizer):
        before = engine.get_params()
        for _ in range(3):
            engine.train_step(x, y, 0.1 if optimizer == "sgd" else 0.01)
        after = engine.get_params()
        for name in ("conv0_w", "conv1_w"):
            w = after[name].astype(np.float64)
            assert np.abs(w - before[name]).max() > 1e-4, engine.name  # it trains
            np.testing.assert_allclose(project_kernels(w), w, atol=1e-6, err_msg=engine.name)


def test_cnn_x13_starts_as_cnn_and_takes_13x_sgd_steps_on_its_conv_kernels():
    rng = np.random.default_rng(6)
    x, y = rng.random((8, 1, 12, 10)), rng.integers(0, 10, 8).astype(np.int32)
    cnn, x13 = (build_network(m, (1, 12, 10)) for m in ("cnn", "cnn-x13"))
    p_cnn, p_x13 = (n.init_params(np.random.default_rng(7), dtype=np.float64) for n in (cnn, x13))
    for name in ("conv0_w", "conv1_w"):  # the same initial kernels
        np.testing.assert_allclose(np.sqrt(13) * p_x13[name], p_cnn[name], rtol=1e-12)
    for engine_class in _engine_classes():
        e_cnn, e_x13 = engine_class(cnn, p_cnn, dtype="float64"), engine_class(x13, p_x13, dtype="float64")
        np.testing.assert_allclose(e_x13.evaluate(x, y)[2], e_cnn.evaluate(x, y)[2], rtol=1e-10)
        e_cnn.train_step(x, y, 0.1)
        e_x13.train_step(x, y, 0.1)
        for name in ("conv0_w", "conv1_w"):
            step_cnn = e_cnn.get_params()[name] - p_cnn[name]
            step_x13 = np.sqrt(13) * (e_x13.get_params()[name] - p_x13[name])  # the step on the kernels
            np.testing.assert_allclose(step_x13, 13 * step_cnn, rtol=1e-8, atol=1e-14)
        for name in ("conv0_b", "mlp0_w"):  # everything else: cnn's step
            np.testing.assert_allclose(e_x13.get_params()[name], e_cnn.get_params()[name], rtol=1e-8, atol=1e-14)


def _engine_classes():
    classes = [PyTensorEngine]
    try:
        from fxnn.models.torch.engine import TorchEngine
        classes.append(TorchEngine)
    except ImportError:
        pass
    return classes


def test_fxnn_ortho_layer_is_the_dense_conv_with_the_orthonormal_kernels():
    import pytensor
    import pytensor.tensor as pt
    from scipy.signal import correlate2d

    from fxnn.models import network
    from fxnn.models.pytensor.backend import BACKEND, conv2d_same
    rng = np.random.default_rng(4)
    x, w = rng.random((1, 2, 8, 7)), rng.normal(size=(10, 3))
    xs, ws = pt.tensor4(dtype="float64"), pt.matrix(dtype="float64")
    layer = pytensor.function([xs, ws], conv2d_same(xs, network.fold(BACKEND, ws, ORTHONORMAL), pt.zeros(3, dtype="float64"), 3))
    w_eff = np.einsum("mkn,kac->nmac", w.reshape(2, 5, 3), ORTHONORMAL)  # W_eff = sum_k W[5m+k] O_k
    want = np.array([sum(correlate2d(x[0, m], w_eff[n, m], mode="same") for m in range(2)) for n in range(3)])
    np.testing.assert_allclose(layer(x, w)[0], want, atol=1e-12)


@pytest.mark.parametrize("model", sorted(ABLATIONS))
def test_the_runner_trains_each_ablation_model(model, tmp_path, capsys, small_mnist):
    out = tmp_path / f"rec-{model}.mat"
    code = fxnn.main(["-m", model, "-nrec", "2", "-ipr", "5", "--data-dir", small_mnist, "-o", str(out),
                      "--seed", "1"])
    assert code == 0 and out.exists()
    assert f'Building model "{model}"' in capsys.readouterr().out


def test_preconditioners_are_the_gram_matrix_in_kernel_space_and_its_completion():
    from fxnn.models.fixed_bases import kernel_preconditioner
    p, full = kernel_preconditioner("fxnn"), kernel_preconditioner("fxnn", complete=True)
    # on the span, P acts as the Gram matrix does on coefficients: P B^T c = B^T (G c)
    b = KERNELS.reshape(5, 9)
    c = np.random.default_rng(0).normal(size=5)
    np.testing.assert_allclose(p @ (b.T @ c), b.T @ (GRAM @ c), atol=1e-12)
    np.testing.assert_allclose(np.sort(np.linalg.eigvalsh(p))[:4], 0, atol=1e-12)  # nothing outside the span
    outside = np.eye(9) - PROJECTOR
    np.testing.assert_allclose(full @ outside, outside, atol=1e-12)                 # the rest at rate 1
    np.testing.assert_allclose(full @ PROJECTOR, p, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_cnn_precond_follows_fxnns_trajectory_to_float_rounding(optimizer):
    """The theory's test: SGD on fxnn's 1x1 weights w moves the effective
    kernels B^T w by -lr B^T B g; a dense layer whose gradients are multiplied
    by B^T B, from the same effective kernels, follows the same trajectory."""
    rng = np.random.default_rng(11)
    x, y = rng.random((8, 1, 12, 10)), rng.integers(0, 10, 8).astype(np.int32)
    nets = {m: build_network(m, (1, 12, 10)) for m in ("fxnn", "cnn-precond")}
    params = {m: n.init_params(np.random.default_rng(3), dtype=np.float64) for m, n in nets.items()}
    for engine_class in _engine_classes():
        engines = {m: engine_class(nets[m], params[m], optimizer=optimizer, dropout=0.25, seed=4, dtype="float64")
                   for m in nets}
        for _ in range(4):
            losses = {m: e.train_step(x, y, 0.05) for m, e in engines.items()}
            assert losses["cnn-precond"][0] == pytest.approx(losses["fxnn"][0], rel=1e-10)
        after = {m: e.get_params() for m, e in engines.items()}
        for name in ("conv0_w", "conv1_w"):
            moved = fold_weights(after["fxnn"][name]) - fold_weights(params["fxnn"][name])
            assert np.abs(moved).max() > 1e-4, engine_class.__name__     # it trains
            np.testing.assert_allclose(after["cnn-precond"][name], fold_weights(after["fxnn"][name]),
                                       rtol=1e-9, atol=1e-12, err_msg=engine_class.__name__)
        np.testing.assert_allclose(after["cnn-precond"]["mlp0_w"], after["fxnn"]["mlp0_w"], rtol=1e-9, atol=1e-12)


def test_cnn_precond_full_also_steps_outside_the_span():
    rng = np.random.default_rng(12)
    x, y = rng.random((8, 1, 12, 10)), rng.integers(0, 10, 8).astype(np.int32)
    net = build_network("cnn-precond-full", (1, 12, 10))
    start = net.init_params(np.random.default_rng(3), dtype=np.float64)
    for engine_class in _engine_classes():
        engine = engine_class(net, start, dtype="float64")
        engine.train_step(x, y, 0.05)
        step = engine.get_params()["conv0_w"] - start["conv0_w"]
        outside = step.reshape(-1, 9) @ (np.eye(9) - PROJECTOR)
        assert np.abs(outside).max() > 1e-6, engine_class.__name__


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_conv_lr_scale_scales_the_conv_layers_rate_only(optimizer):
    rng = np.random.default_rng(13)
    x, y = rng.random((8, 1, 12, 10)), rng.integers(0, 10, 8).astype(np.int32)
    plain, scaled = build_network("fxnn", (1, 12, 10)), build_network("fxnn", (1, 12, 10), conv_lr_scale=4.0)
    start = plain.init_params(np.random.default_rng(3), dtype=np.float64)
    for engine_class in _engine_classes():
        runs = {}
        for tag, net, lr in (("plain", plain, 0.01), ("scaled", scaled, 0.01), ("fast", plain, 0.04)):
            engine = engine_class(net, start, optimizer=optimizer, dtype="float64")
            engine.train_step(x, y, lr)
            runs[tag] = engine.get_params()
        for name in start:  # one step: conv layers as at 4x the rate, the rest as at 1x
            want = runs["fast" if name.startswith("conv") else "plain"][name]
            np.testing.assert_allclose(runs["scaled"][name], want, rtol=1e-10, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("scale, message", [(0.0, "positive"), (float("nan"), "positive")])
def test_conv_lr_scale_refuses_what_is_not_a_rate(scale, message):
    with pytest.raises(ValueError, match=message):
        build_network("fxnn", (1, 12, 10), conv_lr_scale=scale)
    with pytest.raises(ValueError, match="baseline has no conv layers"):
        build_network("baseline", (1, 12, 10), conv_lr_scale=2.0)
