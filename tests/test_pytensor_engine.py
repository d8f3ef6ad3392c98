"""The PyTensor engine: gradients against finite differences, the original's
loss and error rate, dropout in training only (the update rules:
tests/test_network_primitives.py, tests/test_engines_agree.py)."""
import numpy as np
import pytest

from fxnn.models.architecture import build_network
from fxnn.models.pytensor.engine import PyTensorEngine

SHAPE = (1, 8, 8)


def batch(n=16, seed=0, shape=SHAPE):
    rng = np.random.default_rng(seed)
    return rng.random((n,) + shape, dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)


@pytest.fixture(scope="module", params=["fxnn", "cnn", "baseline"])
def engine(request):
    """A float64 engine: ReLU and max-pool kinks are dense, so finite
    differences need a step (1e-7) that float32 cannot resolve."""
    net = build_network(request.param, SHAPE)
    return PyTensorEngine(net, net.init_params(np.random.default_rng(0)), "sgd", dropout=0.0, dtype="float64")


def test_gradients_match_finite_differences(engine):
    """Directional derivative along a random direction, central differences."""
    x, y = batch()
    x = x.astype(np.float64)
    params = engine.get_params()
    grads = engine.gradients(x, y)
    rng = np.random.default_rng(5)
    for name in params:
        direction = rng.standard_normal(params[name].shape)
        eps = 1e-7

        def loss_at(step):
            engine.set_params({**params, name: params[name] + step * direction})
            return engine.evaluate(x, y)[0]

        numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
        analytic = float(np.sum(grads[name].astype(np.float64) * direction))
        assert numeric == pytest.approx(analytic, rel=1e-4, abs=1e-9), name
    engine.set_params(params)


def test_evaluate_reports_the_original_loss_and_error_rate(engine):
    x, y = batch(n=10)
    loss, erate, probs = engine.evaluate(x.astype(np.float64), y)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    onehot = np.eye(10)[y]
    assert loss == pytest.approx(np.mean(-onehot * np.log(probs + 1e-3)), rel=1e-5)
    assert erate == pytest.approx(np.mean(probs.argmax(1) != y))


def test_dropout_is_random_in_training_only():
    net = build_network("fxnn", SHAPE)
    params = net.init_params(np.random.default_rng(2))
    eng = PyTensorEngine(net, params, "sgd", dropout=0.5, seed=3)
    x, y = batch()
    first = eng.train_step(x, y, lr=0.0)
    second = eng.train_step(x, y, lr=0.0)
    assert first[0] != second[0]  # new masks each step, parameters unchanged (lr 0)
    assert eng.evaluate(x, y)[0] == eng.evaluate(x, y)[0]
