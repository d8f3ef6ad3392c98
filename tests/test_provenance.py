"""A record says where it came from (meta: versions, commit, machine,
parameter counts), and a run says before training when its record will be
large."""
import os
import re
import subprocess

import numpy as np
import pytest

import fxnn
from conftest import ROOT
from fxnn.models.architecture import build_network
from fxnn.models.fxnn_paths import cpu_model
from fxnn.training import provenance, record_size
from fxnn.training.matfile import read_mat


def fxnn_reference_counts(c, h, w, conv_channels=(32, 64), hidden=(384, 192), classes=10, k=None):
    """(trainable, fixed) counted from the manual's description of the
    network: per conv layer a (5M, N) 1x1 or an (N, M, k, k) kernel plus N
    biases (fixed: five 3x3 kernels per input channel), two 2x2 poolings,
    then dense layers with biases."""
    trainable = fixed = 0
    m = c
    for n in conv_channels:
        if k is None:
            trainable += 5 * m * n + n
            fixed += 5 * 9 * m
        else:
            trainable += n * m * k * k + n
        m, h, w = n, h // 2, w // 2
    widths = (m * h * w,) + hidden + (classes,)
    trainable += sum(a * b + b for a, b in zip(widths, widths[1:]))
    return trainable, fixed


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_parameter_counts_follow_the_network_description(shape):
    assert provenance.parameter_counts(build_network("fxnn", shape)) == fxnn_reference_counts(*shape)
    assert provenance.parameter_counts(build_network("cnn", shape)) == fxnn_reference_counts(*shape, k=3)
    assert provenance.parameter_counts(build_network("cnn", shape, filter_size=5)) == fxnn_reference_counts(*shape, k=5)
    assert provenance.parameter_counts(build_network("baseline", shape)) == (np.prod(shape) * 10 + 10, 0)


def test_manual_lists_the_computed_parameter_counts():
    with open(os.path.join(ROOT, "docs", "network.md")) as f:
        readme = f.read()
    for model in ("fxnn", "cnn"):
        for dataset, shape in (("MNIST", (1, 28, 28)), ("CIFAR-10", (3, 32, 32))):
            network = build_network(model, shape)
            trainable, fixed = provenance.parameter_counts(network)
            conv = sum(int(np.prod(s)) for name, s in network.param_shapes().items() if name.startswith("conv"))
            row = f"| `{model}` | {dataset} | {trainable:,} | {conv:,} | {fixed:,} |"
            assert row in readme, row


def git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def test_git_commit_of_a_checkout_with_and_without_local_changes(tmp_path):
    assert provenance.git_commit(str(tmp_path)) == ""  # not a checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = git(tmp_path, "rev-parse", "HEAD")
    assert provenance.git_commit(str(tmp_path)) == head
    (tmp_path / "untracked.txt").write_text("not ours")
    assert provenance.git_commit(str(tmp_path)) == head  # untracked files are not the code that ran
    (tmp_path / "a.py").write_text("x = 2\n")
    assert provenance.git_commit(str(tmp_path)) == head + " with local changes"


def test_record_size_warning_only_above_the_limit():
    shapes = build_network("fxnn", (1, 28, 28)).param_shapes()
    n = sum(int(np.prod(s)) for s in shapes.values())
    line = record_size.warning("rec-MNIST-fxnn.mat", shapes, 100, "all")
    assert line == (f"Note: rec-MNIST-fxnn.mat will hold 101 snapshots of the parameters, about "
                    f"{101 * n * 4 / 1e6:,.0f} MB; --record-params last keeps only the final ones "
                    f"({n * 4 / 1e6:.1f} MB).")
    with open(os.path.join(ROOT, "docs", "running.md")) as f:
        assert f"\n{line}\n" in f.read()  # the manual shows the default run's line as it is
    cifar = record_size.warning("r.mat", build_network("fxnn", (3, 32, 32)).param_shapes(), 1000, "all")
    assert "1001 snapshots of the parameters, about 6.6 GB;" in cifar
    assert record_size.warning("r.mat", shapes, 100, "last") is None
    assert record_size.warning("r.mat", shapes, 100, "none") is None
    assert record_size.warning("r.mat", shapes, int(100e6 // (n * 4)) - 1, "all") is None  # just under 100 MB


def test_a_run_warns_before_training_and_records_its_provenance(tmp_path, capsys, small_mnist, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr(record_size, "WARN_BYTES", 1e6)  # this short run's 10 MB of snapshots count as large
    out = tmp_path / "r.mat"
    code = fxnn.main(["-m", "fxnn", "-nrec", "1", "-ipr", "2", "--data-dir", small_mnist, "-o", str(out),
                      "--seed", "3", "--engine", "torch"])
    stdout = capsys.readouterr().out.splitlines()
    assert code == 0
    note = next(i for i, line in enumerate(stdout) if line.startswith("Note: "))
    assert stdout[note - 1] == 'Building model "fxnn" ...  done.' and stdout[note + 1].startswith("Iter 00000/")
    predicted = float(re.search(r"about ([\d.,]+) MB", stdout[note]).group(1).replace(",", ""))
    assert abs(os.path.getsize(out) / 1e6 - predicted) < 0.03 * predicted  # the snapshots are the record

    meta = read_mat(str(out))["meta"]
    import torch
    assert meta["fxnn_version"] == fxnn.__version__
    assert meta["git_commit"].split()[0] == git(ROOT, "rev-parse", "HEAD")
    assert meta["numpy"] == np.__version__ and meta["torch"] == torch.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["python"]) and re.fullmatch(r"\d+\.\d+.*", meta["pytensor"])
    assert meta["cpu"].startswith(cpu_model()) and f"{len(os.sched_getaffinity(0))} cores" in meta["cpu"]
    assert meta["gpu"] == ""
    assert (meta["params_trainable"], meta["params_fixed"]) == fxnn_reference_counts(1, 28, 28)
    assert meta["threads"].startswith(f"C kernels {torch.get_num_threads()}, torch {torch.get_num_threads()}")


def test_the_gpu_is_named_only_when_the_run_used_one():
    assert provenance.gpu("cpu") == ""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here")
    name = provenance.gpu("cuda")
    assert name and name == torch.cuda.get_device_properties(0).name
