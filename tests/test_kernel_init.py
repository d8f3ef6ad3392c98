"""--kernel-init: every conv model's initial effective kernels at cnn's or
fxnn's scale. The folded kernels' mean squared norm against the expected value
written out from the init rules (a statistical test on large layers), the
default against an independent re-draw bit for bit, both engines and the
record, the summary's labels, checkpoints and resume, the refusals."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import fxnn
from conftest import ROOT, wait_for_line
from fxnn.analysis.records import load_run, tag_experiments
from fxnn.kernels.fixed_kernels import KERNELS, fold_weights
from fxnn.models.architecture import CONV_KINDS, MODEL_BASES, ConvLayer, build_network
from fxnn.models.fixed_bases import BASES
from fxnn.training import checkpoint
from fxnn.training.matfile import read_mat

M, N = 256, 256  # a large layer: 65,536 kernels


def expected_squared_norm(target, m=M, n=N):
    """E ||kernel||^2 of one initial 3x3 kernel of an (m, n) layer, from the
    rules: weights uniform in +-b have variance b^2/3; cnn draws 9 of them,
    b = 1.4/sqrt(9m + n); fxnn draws 5 coefficients of kernels of squared
    norms summing to 65, b = 0.3/sqrt(5m + n)."""
    if target == "cnn":
        return 9 * (1.4 / np.sqrt(9 * m + n)) ** 2 / 3
    return np.sum(KERNELS ** 2) * (0.3 / np.sqrt(5 * m + n)) ** 2 / 3


def effective_kernels(model, w):
    """(N, M, 3, 3) kernels the weights of ``model``'s conv layer compute with."""
    if model in MODEL_BASES:
        return fold_weights(w, BASES[MODEL_BASES[model]])
    return w * CONV_KINDS[model].weight_scale


def squared_norms(model, kernel_init, seed=0):
    layer = ConvLayer("conv1", M, N, 3, CONV_KINDS[model], kernel_init=kernel_init)
    w = layer.init_weight(np.random.default_rng(seed), np.float64)
    return np.sum(effective_kernels(model, w).reshape(-1, 9) ** 2, axis=1)


def test_fxnn_expected_norm_is_what_its_rule_gives():
    assert np.sum(KERNELS ** 2) == 65  # the five kernels' squared norms 36 + 12 + 12 + 4 + 1


@pytest.mark.parametrize("target", ["cnn", "fxnn"])
@pytest.mark.parametrize("model", sorted(CONV_KINDS))
def test_scaled_kernels_have_the_targets_mean_squared_norm(model, target):
    """The mean over 65,536 kernels within 5 standard errors (estimated from
    the sample) of the target's expected squared norm; a basis model's own
    initialisation, where it is not the target's, is far outside."""
    norms = squared_norms(model, target)
    expected = expected_squared_norm(target)
    se = norms.std() / np.sqrt(norms.size)
    assert abs(norms.mean() - expected) < 5 * se, (norms.mean(), expected, se)
    own = squared_norms(model, "model")
    own_rule_is_the_target = model in (("cnn", "cnn-x13") if target == "cnn" else
                                       ("fxnn", "fxnn-ortho", "fxnn-iso", "cnn-fxinit", "cnn-precond",
                                        "cnn-precond-full"))
    if own_rule_is_the_target:
        np.testing.assert_array_equal(norms, own)  # a no-op
    elif model in MODEL_BASES:  # (cnn-sub's own norm, 5/9 of cnn's, is within 1% of fxnn's)
        assert abs(own.mean() - expected) > 20 * se, model  # the test can fail


def reference_init(model, kernel_init, seed):
    """The documented rule, re-drawn: per conv layer then dense layer, weights
    uniform in +-bound from one Generator, biases zero; a basis model's 1x1
    bound 0.3/sqrt(K*m + n), cnn's 1.4/sqrt(9m + n), the dense layers'
    1.4/sqrt(fan_in + fan_out). With a ``kernel_init`` target, the conv
    weights times sqrt(target's expected squared norm / the model's), the
    model's (b^2/3) times the sum of its kernels' squared norms."""
    rng = np.random.default_rng(seed)
    params = {}
    for i, (m, n) in enumerate([(1, 32), (32, 64)]):
        if model == "cnn":
            b, shape, basis_norms = 1.4 / np.sqrt(9 * m + n), (n, m, 3, 3), 9.0
        else:
            basis = BASES[MODEL_BASES[model]]
            b, shape, basis_norms = 0.3 / np.sqrt(len(basis) * m + n), (len(basis) * m, n), np.sum(basis ** 2)
        w = rng.uniform(-b, b, shape)
        if kernel_init != "model":
            w = w * np.sqrt(expected_squared_norm(kernel_init, m, n) / (b ** 2 / 3 * basis_norms))
        params[f"conv{i}_w"], params[f"conv{i}_b"] = w, np.zeros(n)
    for i, (a, c) in enumerate([(64 * 7 * 7, 384), (384, 192), (192, 10)]):
        b = 1.4 / np.sqrt(a + c)
        params[f"mlp{i}_w"], params[f"mlp{i}_b"] = rng.uniform(-b, b, (a, c)), np.zeros(c)
    return params


@pytest.mark.parametrize("model", ["fxnn", "cnn", "fxnn-dct", "fxnn-gauss", "fxnn-random"])
def test_the_default_is_the_rule_bit_for_bit_and_a_target_only_scales_the_conv_weights(model):
    shape = (1, 28, 28)
    default = build_network(model, shape).init_params(np.random.default_rng(4), np.float64)
    assert build_network(model, shape).convs[0].kernel_init == "model"
    want = reference_init(model, "model", 4)
    assert list(default) == list(want)
    for name in want:
        np.testing.assert_array_equal(default[name], want[name], err_msg=name)
    for target in ("cnn", "fxnn"):
        scaled = build_network(model, shape, kernel_init=target).init_params(np.random.default_rng(4), np.float64)
        want = reference_init(model, target, 4)
        for name in want:
            if name.startswith("conv") and name.endswith("_w"):
                np.testing.assert_allclose(scaled[name], want[name], rtol=1e-13, atol=0, err_msg=name)
            else:  # the same draws: everything else bit for bit
                np.testing.assert_array_equal(scaled[name], want[name], err_msg=name)


def test_cnn_precond_still_starts_where_fxnn_does():
    """cnn-precond follows fxnn's trajectory from fxnn's initial kernels;
    scaled to cnn's norm, both start from the same scaled kernels."""
    fxnn_net, precond = (build_network(m, (1, 28, 28), kernel_init="cnn") for m in ("fxnn", "cnn-precond"))
    a, b = (n.init_params(np.random.default_rng(9), np.float64) for n in (fxnn_net, precond))
    for name in ("conv0_w", "conv1_w"):
        np.testing.assert_allclose(b[name], fold_weights(a[name]), rtol=1e-12, atol=1e-15)


def run_main(data_dir, out, *extra, engine="torch"):
    return fxnn.main(["-m", "fxnn-gauss", "-nrec", "1", "-ipr", "2", "--data-dir", str(data_dir), "--seed", "5",
                      "--engine", engine, "-o", str(out), *extra])


def test_both_engines_start_from_the_scaled_kernels_and_record_the_flag(tmp_path, small_mnist):
    init_seed = np.random.SeedSequence(5).generate_state(4)[0]
    want = build_network("fxnn-gauss", (1, 28, 28), kernel_init="cnn").init_params(np.random.default_rng(init_seed))
    runs = []
    for engine in ("pytensor", "torch"):
        out = tmp_path / f"{engine}.mat"
        assert run_main(small_mnist, out, "--kernel-init", "cnn", engine=engine) == 0
        record = read_mat(str(out))
        assert record["meta"]["flags"]["kernel_init"] == "cnn"
        for name in ("conv0_w", "conv1_w", "mlp0_w"):
            np.testing.assert_array_equal(record[name][0], want[name], err_msg=f"{engine} {name}")
        runs.append(load_run(str(out)))
    assert run_main(small_mnist, tmp_path / "default.mat") == 0
    default = read_mat(str(tmp_path / "default.mat"))
    assert default["meta"]["flags"]["kernel_init"] == "model"
    assert not np.array_equal(default["conv0_w"][0], want["conv0_w"])
    np.testing.assert_array_equal(default["mlp0_w"][0], want["mlp0_w"])
    # fxnn-summary tells the two apart; the engines' runs are one experiment each
    tagged, options = tag_experiments(runs[1:] + [load_run(str(tmp_path / "default.mat"))])
    assert options == ["--kernel-init"] and [r.tag for r in tagged] == ["--kernel-init cnn", "--kernel-init model"]


def test_records_and_checkpoints_from_before_the_flag_read_as_the_default():
    flags = {k: 1 for k in checkpoint.MUST_MATCH}
    saved = {k: v for k, v in flags.items() if k != "kernel_init"}
    assert checkpoint.mismatches(saved, dict(flags, kernel_init="model")) == []
    assert checkpoint.mismatches(saved, dict(flags, kernel_init="cnn")) == ["kernel_init"]


@pytest.mark.parametrize("model, extra, words", [
    ("baseline", [], "baseline has no conv layers: leave out --kernel-init"),
    ("cnn", ["-fsize", "5"], "--kernel-init fxnn matches 3x3 kernels"),
    ("fxnn", ["--arch", "resnet", "-pdpo", "0"], "--kernel-init is for --arch original"),
])
def test_where_it_means_nothing_it_is_refused_in_one_line(tmp_path, capsys, small_mnist, model, extra, words):
    code = fxnn.main(["-m", model, "--kernel-init", "fxnn", "-nrec", "1", "-ipr", "1", "--data-dir", small_mnist,
                      "--engine", "torch", "-o", str(tmp_path / "r.mat"), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "r.mat").exists()


def start(data_dir, out, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "fxnn.py"), "-m", "fxnn-dct", "-nrec", "6", "-ipr", "8",
           "--data-dir", str(data_dir), "-o", str(out), "--seed", "3", "--engine", "torch", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.mark.slow  # four fxnn.py processes end to end
def test_a_killed_run_resumes_only_with_its_kernel_init_and_to_the_uninterrupted_result(tmp_path, small_mnist):
    whole, resumed = tmp_path / "whole.mat", tmp_path / "resumed.mat"
    proc = start(small_mnist, whole, "--kernel-init", "cnn")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    proc = start(small_mnist, resumed, "--kernel-init", "cnn")
    wait_for_line(proc, n=3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _, err = start(small_mnist, resumed, "--resume").communicate(timeout=600)
    assert "--kernel-init (run: cnn, now: model)" in err, err
    proc = start(small_mnist, resumed, "--resume", "--kernel-init", "cnn")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "Resuming at iteration" in out, err
    a, b = read_mat(str(whole)), read_mat(str(resumed))
    assert b["meta"]["flags"]["kernel_init"] == "cnn"
    for key in ("tloss", "vloss", "verate", "yprob", "conv0_w", "conv1_w", "mlp2_w"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
