"""Both engines against tests/numpy_oracle.py, the original network's forward
and backward by hand in float64 numpy, which shares no code with
models/network.py (that both engines run): the loss, the probabilities and
every parameter's gradient of fxnn (on each path), cnn and baseline with
dropout off, and two training steps of every optimizer with dropout masks
against the oracle's gradients put through models/optimizers.reference_step
(whose update rule tests/test_network_primitives.py checks on its own).
The oracle itself is checked against finite differences.

Tolerances: the engines compute in float32 (unit roundoff 6e-8) and every
gradient entry here is a sum of at most a few hundred products (batch 3,
13x11 images, 384 dense inputs), so its rounding error is at most a few
hundred ulps of the tensor's largest entry; observed: under 2e-6 of it.
ATOL = 1e-5 of the largest entry leaves room for other summation orders and
still catches any wrong term (a missed tie, a wrong tap, a dropped
1/(1-p)), which moves entries by a sizeable fraction of the largest."""
import ast
import os

import numpy as np
import pytest

pytest.importorskip("torch")

import numpy_oracle  # noqa: E402
from numpy_oracle import dropout_factors, forward, loss_and_gradients, pool, pool_backward  # noqa: E402

from fxnn.kernels import capabilities  # noqa: E402
from fxnn.models import dropout, engines, optimizers  # noqa: E402
from fxnn.models.architecture import build_network  # noqa: E402

SHAPE = (2, 13, 11)   # odd sizes: every pooling drops a row or a column
CLASSES, BATCH = 7, 3
ENGINES = ("torch", "pytensor")
RTOL, ATOL = 1e-5, 1e-5  # of each value; of the tensor's largest entry
#: Adam's v holds (1 - 0.999) g^2, and 0.001 in float32 is off by up to 6e-5 of itself.
STATE_RTOL = 1e-4
DROPOUT, SEED = 0.25, 5
LEARN_RATES = {"sgd": 0.5, "momentum": 0.2, "adam": 1e-3}
#: (model, fxnn path, cnn filter size, optimizer): each path and model, each optimizer twice
CASES = [("fxnn", "fixed", 3, "sgd"), ("fxnn", "fused", 3, "adam"), ("fxnn", "folded", 3, "momentum"),
         ("cnn", "auto", 3, "adam"), ("cnn", "auto", 5, "sgd"), ("baseline", "auto", 3, "momentum")]
#: (engine, *case): PyTensor leaves out the 5x5 cnn, whose im2col graph takes half a minute to
#: compile, for the same graph code as the 3x3 one
ENGINE_CASES = [(engine,) + case for engine in ENGINES for case in CASES if engine == "torch" or case[2] == 3]
_engines = {}


def engine_for(engine, model, path, size, optimizer):
    """(network, initial params, engine) with dropout DROPOUT, built once per
    module (PyTensor compiles for seconds) and put back to its initial state
    (parameters, optimizer state, dropout generator) on every call."""
    fused = capabilities.capability("fused", engine)
    if path == "fused" and not fused:
        if os.environ.get("FXNN_REQUIRE_NATIVE") == "1":
            raise AssertionError(fused.reason)
        pytest.skip(fused.reason)
    key = (engine, model, path, size, optimizer)
    if key not in _engines:
        net = build_network(model, SHAPE, CLASSES, filter_size=size)
        params = net.init_params(np.random.default_rng(1))
        eng = engines.make_engine(engine, "cpu", net, params, optimizer, DROPOUT, SEED, fxnn_path=path)
        _engines[key] = net, params, eng, eng.get_state()
    net, params, eng, initial = _engines[key]
    eng.set_state(initial)
    return net, params, eng


def images(kind, seed=0):
    """A batch: "noise", uniform pixels; "flat", a constant image with a
    noisy 5x4 patch, whose flat part makes equal maxima in the pooling windows."""
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH,) + SHAPE)
    if kind == "flat":
        x[:] = rng.random((BATCH, SHAPE[0], 1, 1))
        x[:, :, 1:6, 2:6] = rng.random((BATCH, SHAPE[0], 5, 4))
    return x.astype(np.float32), rng.integers(0, CLASSES, BATCH).astype(np.int32)


def assert_close(got, want, name, rtol=RTOL):
    np.testing.assert_allclose(got, want, rtol=rtol, atol=ATOL * np.abs(want).max(), err_msg=name)


def tiny_params(model, rng, size, shape, widths=(2, 3), hidden=4, classes=3):
    """Float64 parameters of a network far narrower than fxnn's, in the project-wide layout."""
    c, h, w = shape
    params = {}
    if model == "baseline":
        return {"m_w": rng.normal(size=(c * h * w, classes)), "m_b": rng.normal(size=classes)}
    for i, n in enumerate(widths):
        params[f"conv{i}_w"] = rng.normal(size=(5 * c, n) if model == "fxnn" else (n, c, size, size))
        params[f"conv{i}_b"] = rng.normal(size=n) * 0.1
        c, h, w = n, h // 2, w // 2
    for i, (fan_in, fan_out) in enumerate([(c * h * w, hidden), (hidden, classes)]):
        params[f"mlp{i}_w"] = rng.normal(size=(fan_in, fan_out)) / np.sqrt(fan_in)
        params[f"mlp{i}_b"] = rng.normal(size=fan_out) * 0.1
    return params


def test_the_oracle_imports_numpy_only():
    """Nothing of fxnn, so a mistake there cannot reach the oracle."""
    tree = ast.parse(open(numpy_oracle.__file__).read())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert names == {"numpy"}


@pytest.mark.parametrize("model, size", [("fxnn", 3), ("cnn", 3), ("cnn", 5), ("baseline", 3)])
def test_oracle_gradients_are_finite_differences(model, size):
    """Every parameter entry of a tiny network, dropout on: central
    differences, step 1e-6 (truncation ~1e-12, rounding ~1e-10 in float64)."""
    rng = np.random.default_rng(3)
    shape = (1, 6, 5)
    params = tiny_params(model, rng, size, shape)
    x, y = rng.random((2,) + shape), np.array([0, 2])
    factors = [] if model == "baseline" else [
        dropout_factors(rng.integers(0, 65536, size=(2, n, 6 >> i, 5 >> i), dtype=np.uint16), DROPOUT)
        for i, n in enumerate((2, 3))]
    _, grads = loss_and_gradients(params, x, y, factors)
    step = 1e-6
    for name, value in params.items():
        numeric = np.zeros_like(value)
        for index in np.ndindex(value.shape):
            losses = []
            for sign in (1, -1):
                moved = dict(params, **{name: value.copy()})
                moved[name][index] += sign * step
                losses.append(loss_and_gradients(moved, x, y, factors)[0])
            numeric[index] = (losses[0] - losses[1]) / (2 * step)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-5, atol=1e-8, err_msg=name)


def test_oracle_pooling_gives_every_tied_maximum_the_gradient():
    """The rule finite differences cannot see; an odd last row and column get nothing."""
    h = np.array([[[[1.0, 1.0, 0.0], [0.0, 1.0, 5.0], [7.0, 7.0, 7.0]]]])
    np.testing.assert_array_equal(pool(h), [[[[1.0]]]])
    np.testing.assert_array_equal(pool_backward(h, np.array([[[[2.0]]]])),
                                  [[[[2.0, 2.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]]]])


def test_flat_images_tie_in_the_pooling():
    """The "flat" batch has many windows of several equal positive maxima,
    so the engines' gradients below are checked at ties."""
    net = build_network("fxnn", SHAPE, CLASSES)
    _, tape = forward(net.init_params(np.random.default_rng(1)), images("flat")[0])
    h = tape["convs"][0][3]  # the first conv layer's output after ReLU
    windows = h[:, :, :12, :10].reshape(BATCH, -1, 6, 2, 5, 2).transpose(0, 1, 2, 4, 3, 5).reshape(-1, 4)
    best = windows.max(axis=1)
    assert (((windows == best[:, None]).sum(axis=1) > 1) & (best > 0)).sum() > 100


@pytest.mark.parametrize("engine, model, path, size, optimizer", ENGINE_CASES)
def test_engine_loss_and_gradients_are_the_oracle(engine, model, path, size, optimizer):
    """Dropout off (``evaluate`` and ``gradients``), on noise and on flat images."""
    _, params, eng = engine_for(engine, model, path, size, optimizer)
    for kind in ("noise", "flat"):
        x, y = images(kind)
        probs, _ = forward(params, x)
        want_loss, want_grads = loss_and_gradients(params, x, y)
        loss, _, got_probs = eng.evaluate(x, y)
        assert loss == pytest.approx(want_loss, rel=1e-6)
        assert_close(got_probs, probs, f"{kind} probabilities")
        grads = eng.gradients(x, y)
        assert list(grads) == list(params)
        for name in params:
            assert_close(grads[name], want_grads[name], f"{kind} {name}")
    if path != "auto":  # the path asked for is the one that ran
        assert set(eng.layer_paths.values()) == {path}


def adam_slack(grads, lr):
    """How far one Adam step may move from the reference's when each
    gradient entry is off by up to ATOL of the largest: the step
    m_hat / sqrt(v_hat) is about g / |g|, which a change d of g moves by
    about 2 d / |g|, and by at most 2 (the step's sign is rounding where
    |g| < d); nothing where g is 0 (a dead or dropped unit's, 0 in float32 too)."""
    size = np.abs(grads)
    d = ATOL * size.max()
    return lr * np.where(size > 0, np.minimum(2.0, 2 * d / np.where(size > 0, size, 1.0)), 0.0)


@pytest.mark.parametrize("engine, model, path, size, optimizer", ENGINE_CASES)
def test_training_steps_are_oracle_gradients_through_the_reference_optimizer(engine, model, path, size,
                                                                             optimizer):
    """Two steps with dropout on: the engine draws its masks from numpy's
    generator of its seed (models/dropout.py), so the oracle gets the same
    ones. The loss each step reports, the optimizer state and the parameters
    after it are the oracle's gradients through the reference optimizer;
    Adam's parameters to within :func:`adam_slack`, and not at all moved
    where every gradient was zero."""
    net, params, eng = engine_for(engine, model, path, size, optimizer)
    lr, masks = LEARN_RATES[optimizer], np.random.default_rng(SEED)
    ref, state = params, optimizers.init_state(optimizer, params)
    slack = {name: 1e-3 * lr for name in params}  # float32 parameters and hyper-parameters: far less
    still = {name: True for name in params}
    for step in range(2):
        x, y = images("noise", seed=10 + step)
        factors = [dropout_factors(m, DROPOUT) for m in dropout.draw(masks, net, BATCH, DROPOUT)]
        want_loss, grads = loss_and_gradients(ref, x, y, factors)
        loss, _ = eng.train_step(x, y, lr)
        assert loss == pytest.approx(want_loss, rel=1e-5)
        ref, state = optimizers.reference_step(optimizer, ref, grads, state, lr)
        got = eng.get_state()
        for name, value in eng.get_params().items():
            for slot in optimizers.state_slots(optimizer):
                assert_close(got[f"{slot}/{name}"], state[slot][name], f"step {step} {slot}/{name}", STATE_RTOL)
            if optimizer != "adam":  # steps lr g: off by ATOL of the largest, and float32 rounding
                moved = np.abs(ref[name] - params[name]).max()
                np.testing.assert_allclose(value, ref[name], rtol=0, atol=1e-4 * moved, err_msg=f"step {step} {name}")
                continue
            slack[name] = slack[name] + adam_slack(grads[name], lr)
            still[name] = still[name] & (grads[name] == 0)
            assert np.all(np.abs(value - ref[name]) <= slack[name]), f"step {step} {name}"
            np.testing.assert_array_equal(value[still[name]], params[name][still[name]])
    if optimizer == "adam":  # the slack leaves most entries checked to a tenth of a step or better
        for name in params:
            assert np.mean(slack[name][ref[name] != params[name]] < 0.1 * lr) > 0.5, name
