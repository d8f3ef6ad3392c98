"""Optimizers of fxnn: names, state and a numpy reference update.

Every engine runs these exact update rules (not its framework's built-ins,
whose details differ), written once in :func:`fxnn.models.network.update`, so
engines agree step for step and an optimizer's state has the same names and
shapes everywhere. The numpy ``reference_step``, written apart, is the
oracle they are tested against. Their constants (momentum MU, Adam's B1, B2,
EPS) and the default rule and learn rate are in
:data:`fxnn.models.hyperparameters.HYP`.

* ``sgd``:       p -= lr * g
* ``momentum``:  v = MU * v + g;  p -= lr * v
* ``adam``:      m = B1*m + (1-B1)*g;  v = B2*v + (1-B2)*g^2;  t += 1
                 p -= lr * (m / (1-B1^t)) / (sqrt(v / (1-B2^t)) + EPS)
"""
import numpy as np

from .hyperparameters import HYP

OPTIMIZERS = ("sgd", "momentum", "adam")


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
    return 1 - HYP.adam_beta1 ** step, 1 - HYP.adam_beta2 ** step


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
            v = HYP.momentum * state["velocity"][name] + g
            new_state["velocity"][name] = v
            p = p - lr * v
        else:
            b1, b2 = HYP.adam_beta1, HYP.adam_beta2
            m = b1 * state["m"][name] + (1 - b1) * g
            v = b2 * state["v"][name] + (1 - b2) * g * g
            new_state["m"][name], new_state["v"][name] = m, v
            m_hat = m / (1 - b1 ** step)
            v_hat = v / (1 - b2 ** step)
            p = p - lr * m_hat / (np.sqrt(v_hat) + HYP.adam_eps)
        new_params[name] = p
    new_state["step"] = step
    return new_params, new_state
