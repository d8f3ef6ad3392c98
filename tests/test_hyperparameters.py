"""The hyperparameters are stated once (fxnn.models.hyperparameters.HYP): the
command line's defaults, the run's configuration, the engines, the update
rules and the manual all say the numbers HYP holds."""
import os
import re

import numpy as np
import pytest

from conftest import ROOT

from fxnn.cli import build_parser
from fxnn.run import RunConfig
from fxnn.models import optimizers
from fxnn.models.hyperparameters import HYP

#: {HYP field: the flag whose default it is}
FLAGS = {"num_records": "--num-records", "iters_per_record": "--iters-per-record", "batch_size": "--batch-size",
         "optimizer": "--optimizer", "learn_rate": "--learn-rate", "learn_decay": "--learn-decay",
         "conv_lr_scale": "--conv-lr-scale", "filter_size": "--filter-size"}


def doc(name):
    with open(os.path.join(ROOT, "docs", name), encoding="utf-8") as f:
        return f.read()


def table_default(text, flag):
    """The second column of ``flag``'s row in a markdown table of flags."""
    row = next(line for line in text.splitlines()
               if line.startswith("|") and re.search(rf"`{re.escape(flag)}[` ]", line.split("|")[1]))
    return row.split("|")[2].strip()


@pytest.mark.parametrize("field, flag", FLAGS.items())
def test_the_parser_defaults_are_the_hyperparameters(field, flag):
    parser = build_parser()
    dest = flag[2:].replace("-", "_")
    assert parser.get_default(dest) == getattr(HYP, field)


@pytest.mark.parametrize("argv, expected", [
    ([], {"dropout_prob": HYP.dropout, "width": None, "depth": None}),
    (["--arch", "resnet", "--engine", "torch"], {"dropout_prob": 0.0, "width": HYP.resnet_width,
                                                 "depth": HYP.resnet_depth}),
    (["--arch", "resnet", "--engine", "torch", "--width", "4", "--depth", "8"],
     {"dropout_prob": 0.0, "width": 4, "depth": 8}),
    (["-pdpo", "0.5"], {"dropout_prob": 0.5, "width": None, "depth": None}),
])
def test_the_configuration_fills_in_the_defaults_that_depend_on_the_architecture(argv, expected):
    config = RunConfig.from_args(build_parser().parse_args(argv + ["--device", "cpu"]))
    assert {k: getattr(config, k) for k in expected} == expected
    assert ("width" in config.given()) == ("--arch" in argv)  # a record of --arch original names no resnet flags


@pytest.mark.parametrize("field, flag", [(f, flag) for f, flag in FLAGS.items() if f != "conv_lr_scale"]
                         + [("dropout", "--dropout-prob")])
def test_the_manuals_flag_table_states_the_hyperparameters(field, flag):
    stated = table_default(doc("running.md"), flag)
    value = getattr(HYP, field)
    assert (float(stated) == value) if isinstance(value, float) else (stated == str(value))


def test_the_manual_states_the_update_rules_init_and_batchnorm_constants():
    network, resnet = (" ".join(doc(name).split()) for name in ("network.md", "resnet.md"))
    momentum, b1, b2, eps = map(float, re.search(r"momentum ([\d.]+) and Adam \(([\d.]+), ([\d.]+), ([\d.e-]+)\)",
                                                 network).groups())
    assert (momentum, b1, b2, eps) == (HYP.momentum, HYP.adam_beta1, HYP.adam_beta2, HYP.adam_eps)
    assert float(re.search(r"±([\d.]+)/sqrt\(fan_in \+ fan_out\)", network).group(1)) == HYP.init_scale
    assert float(re.search(r"±([\d.]+)/sqrt\(5M \+ N\)", network).group(1)) == HYP.fxnn_1x1_init_scale
    assert float(re.search(r"unbiased variance with momentum ([\d.]+);", resnet).group(1)) == HYP.bn_momentum
    assert float(re.search(r"eps is ([\d.e-]+)\.", resnet).group(1)) == HYP.bn_eps
    assert f"(default {HYP.resnet_width}:" in table_default(doc("resnet.md"), "--width")
    assert f" {HYP.resnet_depth} (default)," in table_default(doc("resnet.md"), "--depth")


def test_the_reference_update_rules_use_the_hyperparameters():
    """One step of each rule from a state of ones, against the rule written
    out here with HYP's constants."""
    p, g = {"w": np.array([1.0, -2.0])}, {"w": np.array([0.5, 0.25])}
    lr = 0.1
    momentum, _ = optimizers.reference_step("momentum", p, g, {"velocity": {"w": np.ones(2)}, "step": 0}, lr)
    np.testing.assert_allclose(momentum["w"], p["w"] - lr * (HYP.momentum * 1 + g["w"]), rtol=1e-15)
    adam, _ = optimizers.reference_step("adam", p, g, {"m": {"w": np.ones(2)}, "v": {"w": np.ones(2)}, "step": 0}, lr)
    m = (HYP.adam_beta1 + (1 - HYP.adam_beta1) * g["w"]) / (1 - HYP.adam_beta1)
    v = (HYP.adam_beta2 + (1 - HYP.adam_beta2) * g["w"] ** 2) / (1 - HYP.adam_beta2)
    np.testing.assert_allclose(adam["w"], p["w"] - lr * m / (np.sqrt(v) + HYP.adam_eps), rtol=1e-12)


def test_pytensor_chooses_paths_for_the_runs_batch_sizes(monkeypatch):
    """Without batch sizes, the PyTensor engine's ``auto`` times the paths at
    HYP's training and validation batches (stopped there, before compiling)."""
    pytest.importorskip("pytensor")
    from fxnn.models.architecture import build_network
    from fxnn.models.pytensor import engine, paths

    class Chosen(Exception):
        pass

    def choose(network, dtype, batches, mode):
        raise Chosen(batches)

    monkeypatch.setattr(paths, "choose", choose)
    network = build_network("fxnn", (1, 12, 12))
    with pytest.raises(Chosen) as chosen:
        engine.PyTensorEngine(network, network.init_params(np.random.default_rng(0)), fxnn_path="auto")
    assert chosen.value.args[0] == {"train": HYP.batch_size, "valid": HYP.valid_batch}
