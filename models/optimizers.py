"""Optimizers of fxnn: names, hyper-parameters and a numpy reference update.

Every engine runs these exact update rules (not its framework's built-ins,
whose details differ), written once in :func:`fxnn.models.network.update`, so
engines agree step for step and an optimizer's state has the same names and
shapes everywhere. The numpy ``reference_step``, written apart, is the
oracle they are tested against.

* ``sgd``:       p -= lr * g
* ``momentum``:  v = MOMENTUM * v + g;  p -= lr * v
* ``adam``:      m = B1*m + (1-B1)*g;  v = B2*v + (1-B2)*g^2;  t += 1
                 p -= lr * (m / (1-B1^t)) / (sqrt(v / (1-B2^t)) + EPS)
"""
import numpy as np

OPTIMIZERS = ("sgd", "momentum", "adam")
#: See docs/network.md, "Optimizer": plain SGD at 0.2 on the mean loss reproduces the
#: original's published fxnn and cnn curves best of the candidates measured.
DEFAULT_OPTIMIZER = "sgd"
DEFAULT_LEARN_RATE = 0.2
MOMENTUM = 0.9
ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8


def state_slots(optimizer):
    """Names of the per-parameter state arrays the optimizer keeps."""
    return {"sgd": (), "momentum": ("velocity",), "adam": ("m", "v")}[optimizer]


def init_state(optimizer, params):
    """Fresh optimizer state: {slot: {param name: zeros}} and a step count."""
    state = {slot: {name: np.zeros_like(value) for name, value in params.items()}
             for slot in state_slots(optimizer)}
    state["step"] = 0
    return state


def bias_corrections(step):
    """Adam's (1 - B1^t, 1 - B2^t) at step ``t`` (counted from 1)."""
    return 1 - ADAM_BETA1 ** step, 1 - ADAM_BETA2 ** step


def reference_step(optimizer, params, grads, state, lr):
    """One update in float64 numpy; returns new (params, state). Reference only."""
    new_params, new_state = {}, {slot: {} for slot in state_slots(optimizer)}
    step = state["step"] + 1
    for name, p in params.items():
        g = np.asarray(grads[name], dtype=np.float64)
        p = np.asarray(p, dtype=np.float64)
        if optimizer == "sgd":
            p = p - lr * g
        elif optimizer == "momentum":
            v = MOMENTUM * state["velocity"][name] + g
            new_state["velocity"][name] = v
            p = p - lr * v
        else:
            m = ADAM_BETA1 * state["m"][name] + (1 - ADAM_BETA1) * g
            v = ADAM_BETA2 * state["v"][name] + (1 - ADAM_BETA2) * g * g
            new_state["m"][name], new_state["v"][name] = m, v
            m_hat = m / (1 - ADAM_BETA1 ** step)
            v_hat = v / (1 - ADAM_BETA2 ** step)
            p = p - lr * m_hat / (np.sqrt(v_hat) + ADAM_EPS)
        new_params[name] = p
    new_state["step"] = step
    return new_params, new_state
