"""The primitives of models/network.py on every backend against numpy
references written apart (kernels/fixed_kernels.py, models/fixed_bases.py, models/optimizers.py, a
dense correlation by scipy): cheap per-primitive checks, so that the whole
network, written once over them, needs only one end-to-end agreement
(tests/test_engines_agree.py)."""
import numpy as np
import pytest
from scipy.signal import correlate2d

from fxnn.models import network, optimizers
from fxnn.models.architecture import CONV_KINDS, ConvLayer
from fxnn.kernels.fixed_kernels import fixed_conv_reference, fold_weights
from fxnn.models.fixed_bases import BASES, ORTHONORMAL, project_kernels, span_projector

BACKENDS = ["pytensor", "torch"]


def run(backend, fn, *arrays):
    """``fn(be, *tensors)`` on ``backend`` for float64 numpy ``arrays`` (int32 kept), as numpy."""
    if backend == "torch":
        torch = pytest.importorskip("torch")
        from fxnn.models.torch.backend import BACKEND
        out = fn(BACKEND, *(torch.from_numpy(a) for a in arrays))
        return [o.detach().numpy() for o in out] if isinstance(out, (tuple, list)) else out.detach().numpy()
    import pytensor
    import pytensor.tensor as pt

    from fxnn.models.pytensor.engine import compile_mode
    from fxnn.models.pytensor.backend import BACKEND
    symbols = [pt.tensor(dtype=a.dtype, shape=(None,) * a.ndim) for a in arrays]
    out = fn(BACKEND, *symbols)
    return pytensor.function(symbols, out, mode=compile_mode(), on_unused_input="ignore")(*arrays)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fold_is_the_numpy_fold(backend):
    w = np.random.default_rng(0).normal(size=(6 * 3, 4))
    got = run(backend, lambda be, w: network.fold(be, w, BASES["gauss"]), w)
    np.testing.assert_allclose(got, fold_weights(w, BASES["gauss"]), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_projection_is_the_numpy_projection(backend):
    w = np.random.default_rng(1).normal(size=(4, 3, 3, 3))
    flat = ORTHONORMAL.reshape(5, 9)
    np.testing.assert_allclose(span_projector("fxnn"), flat.T @ flat, atol=1e-14)
    got = run(backend, lambda be, w: network.project(be, w, span_projector("fxnn")), w)
    np.testing.assert_allclose(got, project_kernels(w), atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_takes_the_window_maximum_and_drops_an_odd_edge(backend):
    h = np.random.default_rng(2).normal(size=(2, 3, 7, 6))
    got = run(backend, network.pool, h)
    np.testing.assert_array_equal(got, h[:, :, :6, :6].reshape(2, 3, 3, 2, 3, 2).max(axis=(3, 5)))


def pool_gradient(backend, h, g):
    """The gradient of sum(pool(h) * g) with respect to ``h``, by the backend's autodiff."""
    if backend == "torch":
        torch = pytest.importorskip("torch")
        from fxnn.models.torch.backend import BACKEND
        t = torch.from_numpy(h).requires_grad_()
        (network.pool(BACKEND, t) * torch.from_numpy(g)).sum().backward()
        return t.grad.numpy()
    import pytensor.tensor as pt
    return run(backend, lambda be, x: pt.grad((network.pool(be, x) * g).sum(), x), h)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_gives_the_gradient_to_every_maximum_of_a_window(backend):
    h = np.random.default_rng(4).integers(0, 3, size=(2, 3, 6, 6)).astype(np.float64)  # many ties
    g = np.random.default_rng(5).normal(size=(2, 3, 3, 3))
    windows = h.reshape(2, 3, 3, 2, 3, 2)
    is_max = windows == windows.max(axis=(3, 5), keepdims=True)
    expected = (is_max * g[:, :, :, None, :, None]).reshape(h.shape)
    assert (is_max.sum(axis=(3, 5)) > 1).any()
    np.testing.assert_array_equal(pool_gradient(backend, h, g), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path", ["fixed", "folded"])
def test_factored_conv_is_the_fixed_stage_then_the_1x1(backend, path):
    rng = np.random.default_rng(3)
    x, w, b = rng.normal(size=(2, 3, 6, 5)), rng.normal(size=(15, 4)), rng.normal(size=4)
    got = run(backend, lambda be, x, w, b: network.factored_conv(be, x, w, b, path, BASES["fxnn"]), x, w, b)
    np.testing.assert_allclose(got, fixed_conv_reference(x, w, b), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model", ["cnn", "cnn-x13", "fxnn-ortho", "fxnn-dct"])
def test_conv_layer_is_the_dense_correlation_its_data_says(backend, model):
    """Each layer kind against scipy: the effective kernels (folded basis,
    times the weight scale) correlated with the zero-padded input."""
    rng = np.random.default_rng(4)
    layer = ConvLayer("conv0", 2, 3, 3, CONV_KINDS[model])
    x, w, b = rng.normal(size=(1, 2, 6, 5)), rng.normal(size=layer.weight_shape()), rng.normal(size=3)
    got = run(backend, lambda be, x, w, b: network.conv_layer(be, layer, x, w, b, "folded"), x, w, b)
    kernels = fold_weights(w, layer.kernels) if layer.factored else w * layer.weight_scale
    want = [sum(correlate2d(x[0, m], kernels[n, m], mode="same") for m in range(2)) + b[n] for n in range(3)]
    np.testing.assert_allclose(got[0], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_objective_is_the_originals_loss_and_error_rate(backend):
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(10), size=7)
    y = rng.integers(0, 10, 7).astype(np.int64 if backend == "torch" else np.int32)
    loss, erate = run(backend, network.objective, probs, y)
    assert float(loss) == pytest.approx(np.mean(-np.eye(10)[y] * np.log(probs + 1e-3)), rel=1e-12)
    assert float(erate) == pytest.approx(np.mean(probs.argmax(1) != y))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", optimizers.OPTIMIZERS)
def test_update_rule_is_the_numpy_reference(backend, optimizer):
    """Three steps of the rule written once against models.optimizers.reference_step."""
    rng = np.random.default_rng(6)
    params = {"w": rng.normal(size=(3, 4))}
    state = optimizers.init_state(optimizer, params)
    for step in range(1, 4):
        grads = {"w": rng.normal(size=(3, 4))}
        slots = [state[s]["w"] for s in optimizers.state_slots(optimizer)]
        c1, c2 = optimizers.bias_corrections(step)

        def rule(be, p, g, *slot_values):
            named = dict(zip(optimizers.state_slots(optimizer), slot_values))
            new_p, new_slots = network.update(be, optimizer, p, g, named, 0.01, (c1, c2))
            return [new_p] + [new_slots[s] for s in optimizers.state_slots(optimizer)]
        got = run(backend, rule, params["w"], grads["w"], *slots)
        params, state = optimizers.reference_step(optimizer, params, grads, state, 0.01)
        np.testing.assert_allclose(got[0], params["w"], rtol=1e-12)
        for value, slot in zip(got[1:], optimizers.state_slots(optimizer)):
            np.testing.assert_allclose(value, state[slot]["w"], rtol=1e-12)
        params = {"w": got[0]}
