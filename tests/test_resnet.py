"""The residual network of ``--arch resnet`` (models/resnet.py): its forward
pass, gradients and BatchNorm statistics against a ResNet written with
torch.nn modules (nn.Conv2d with the folded kernels, nn.BatchNorm2d,
nn.Linear) loaded with the same parameters; the runner end to end on MNIST
and Fashion-MNIST (records with the BatchNorm state, resume after SIGKILL);
the refusals."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import torch
from torch import nn

import fxnn
from conftest import ROOT, wait_for_line
from fxnn.analysis.records import load_run
from fxnn.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, write_idx
from fxnn.kernels import torch_fused
from fxnn.kernels.fixed_kernels import fold_weights
from fxnn.models import network as net
from fxnn.models import resnet
from fxnn.models.architecture import LOG_EPS
from fxnn.models.torch.engine import TorchEngine
from fxnn.models.torch.backend import BACKEND
from fxnn.training.matfile import read_mat

SHARED_FASHION = os.path.join(ROOT, "..", "shared", "data", "fashion-mnist")


# ---- the reference: a ResNet of torch.nn modules -----------------------------

def dense_kernel(conv, w):
    """The (N, M, 3, 3) kernel a conv layer's weight ``w`` (numpy) computes."""
    kernel = fold_weights(w, conv.kernels) if conv.factored else w
    return kernel * conv.weight_scale


class Reference(nn.Module):
    """The network of ``layout`` (a resnet.ResNet) as a user would write it,
    loaded with ``params`` and ``buffers`` (numpy)."""

    def __init__(self, layout, params, buffers, dtype):
        super().__init__()
        self.layout = layout
        self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
        for conv in layout.convs:
            c = nn.Conv2d(conv.in_channels, conv.out_channels, 3, conv.stride, padding=1, bias=False, dtype=dtype)
            bn = nn.BatchNorm2d(conv.out_channels, eps=1e-5, momentum=0.1, dtype=dtype)
            name = resnet.bn_name(conv)
            with torch.no_grad():
                c.weight.copy_(torch.from_numpy(dense_kernel(conv, params[conv.name + "_w"])))
                bn.weight.copy_(torch.from_numpy(params[name + "_g"]))
                bn.bias.copy_(torch.from_numpy(params[name + "_b"]))
                bn.running_mean.copy_(torch.from_numpy(buffers[name + "_mean"]))
                bn.running_var.copy_(torch.from_numpy(buffers[name + "_var"]))
            self.convs.append(c)
            self.bns.append(bn)
        self.fc = nn.Linear(*layout.fc.weight_shape(), dtype=dtype)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(params["fc_w"].T))
            self.fc.bias.copy_(torch.from_numpy(params["fc_b"]))

    def forward(self, x):
        layers = iter(zip(self.convs, self.bns))

        def conv_bn(h):
            conv, bn = next(layers)
            return bn(conv(h))

        h = torch.relu(conv_bn(x))
        for block in self.layout.blocks:
            y = conv_bn(torch.relu(conv_bn(h)))
            s = block.conv_a.stride
            short = h[:, :, ::s, ::s]
            short = torch.cat([short, short.new_zeros(short.shape[0], block.new_channels, *short.shape[2:])], 1)
            h = torch.relu(y + short)
        return torch.softmax(self.fc(h.mean((2, 3))), 1)


def original_loss(probs, y):
    """The runner's loss, mean(-onehot(y) log(p + 1e-3)) over batch and classes."""
    return -torch.log(probs[torch.arange(len(y)), y] + LOG_EPS).sum() / probs.numel()


def setup(model="fxnn", shape=(2, 9, 11), width=3, depth=8, seed=0):
    """A small resnet (odd sizes: stride 2 leaves a remainder), its
    parameters, random non-default buffers, and a batch."""
    layout = resnet.build_resnet(model, shape, 10, width, depth)
    rng = np.random.default_rng(seed)
    params = layout.init_params(rng, np.float64)
    for name in params:  # BatchNorm's scale and shift away from 1 and 0
        if name.startswith("bn"):
            params[name] = params[name] + rng.normal(0, 0.3, params[name].shape)
    buffers = {n: (rng.uniform(0.5, 2, b.shape) if n.endswith("_var") else rng.normal(0, 0.5, b.shape))
               for n, b in layout.init_buffers(np.float64).items()}
    x = rng.normal(size=(6,) + shape)
    y = rng.integers(0, 10, 6)
    return layout, params, buffers, x, y


PATHS = ["folded", "fixed"] + (["fused"] if torch_fused.runs_fast("cpu", torch.float32) else [])


# ---- the forward pass, gradients and running statistics ---------------------

def test_resnet20_layout():
    """He et al.'s ResNet-20 for CIFAR: 19 convs, strides 2 at the first block
    of stages 2 and 3, 16/32/64 channels, about 0.27M parameters for cnn."""
    layout = resnet.build_resnet("cnn", (3, 32, 32), 10)
    assert len(layout.convs) == 19 and len(layout.blocks) == 9
    assert [c.name for c in layout.convs] == [f"conv{i}" for i in range(19)]
    assert [c.stride for c in layout.convs if c.stride != 1] == [2, 2]
    assert [c.name for c in layout.convs if c.stride == 2] == ["conv7", "conv13"]
    assert [b.conv_b.out_channels for b in layout.blocks] == [16] * 3 + [32] * 3 + [64] * 3
    count = sum(int(np.prod(s)) for s in layout.param_shapes().values())
    assert 0.26e6 < count < 0.28e6
    fx = resnet.build_resnet("fxnn", (3, 32, 32), 10)
    assert fx.param_shapes()["conv7_w"] == (5 * 16, 32)
    assert fx.buffer_shapes()["bn18_var"] == (64,)
    assert list(fx.snapshot_shapes())[-2:] == ["bn18_mean", "bn18_var"]


@pytest.mark.parametrize("model,path", [("fxnn", p) for p in PATHS] + [("cnn", None), ("cnn-x13", None),
                                                                        ("fxnn-dct", "folded")])
@pytest.mark.parametrize("train", [True, False])
def test_forward_matches_torch_nn(model, path, train):
    layout, params, buffers, x, y = setup(model)
    ref = Reference(layout, params, buffers, torch.float64).train(train)
    expected = ref(torch.from_numpy(x))
    dtype = torch.float32 if path == "fused" else torch.float64  # the C kernels compute float32
    tensors = {n: torch.tensor(v, dtype=dtype) for n, v in params.items()}
    running = {n: torch.tensor(v, dtype=dtype) for n, v in buffers.items()}
    probs = resnet.forward(BACKEND, layout, tensors, torch.tensor(x, dtype=dtype), running, train,
                           lambda layer, h, w, b: path)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    np.testing.assert_allclose(probs.detach().double().numpy(), expected.detach().numpy(), rtol=tol, atol=tol)
    for n, v in running.items():  # updated in training (as nn.BatchNorm2d), untouched in validation
        bn = ref.bns[int(n.split("_")[0][2:])]
        want = (bn.running_mean if n.endswith("_mean") else bn.running_var).detach().numpy()
        np.testing.assert_allclose(v.double().numpy(), want, rtol=tol, atol=tol, err_msg=n)
        if not train:
            np.testing.assert_array_equal(v.numpy(), buffers[n].astype(v.numpy().dtype))


def test_memory_preflight_counts_every_layer():
    from fxnn.training import preflight
    layout = resnet.build_resnet("fxnn", (3, 32, 32), 10)
    need = preflight.step_memory(layout, 128)
    assert need > 4 * 128 * 7 * 2 * 16 * 32 * 32  # stage 1 alone: 7 convs' and BatchNorms' outputs
    assert "use a smaller -bsize or --width" in preflight.check_resources(layout, 128, 3, "fxnn", available=need - 1)
    assert preflight.check_resources(layout, 128, 3, "fxnn", available=need) is None
    # a network too wide for any batch: the batch size is no cure, the width is
    one = preflight.step_memory(layout, 1)
    problem = preflight.check_resources(layout, 128, 3, "fxnn", available=one - 1)
    assert problem.startswith("the network, even at -bsize 1, needs") and "use a smaller --width (with --fxnn-path" in problem
    lean_one = preflight.step_memory(layout, 1, fxnn_path="fused")
    problem = preflight.check_resources(layout, 128, 3, "fxnn", available=lean_one - 1, fxnn_path="fused")
    assert problem.startswith("the network, even at -bsize 1, needs") and problem.endswith("use a smaller --width")


@pytest.mark.parametrize("model", ["fxnn", "cnn", "fxnn-ortho"])
def test_engine_gradients_match_torch_nn(model):
    """TorchEngine.gradients: BatchNorm in training mode, the running
    statistics left alone; against autograd through the torch.nn ResNet,
    the 1x1 weights' gradients taken through the folding."""
    layout, params, buffers, x, y = setup(model, depth=14)
    engine = TorchEngine(layout, params, dtype="float64", fxnn_path="folded")
    engine.set_state(dict(engine.get_state(), **{f"buffer/{n}": v for n, v in buffers.items()}))
    grads = engine.gradients(x, y)
    for n, v in engine.get_buffers().items():
        np.testing.assert_array_equal(v, buffers[n])

    weights = {n: torch.tensor(v, requires_grad=True) for n, v in params.items()}
    ref = Reference(layout, params, buffers, torch.float64).train(True)
    for conv, module in zip(layout.convs, ref.convs):  # the reference conv's weight as a function of ours
        w = weights[conv.name + "_w"]
        kernel = net.fold(BACKEND, w, conv.kernels) if conv.factored else w
        del module.weight
        module.weight = kernel * conv.weight_scale
    for conv, bn in zip(layout.convs, ref.bns):
        del bn.weight, bn.bias
        bn.weight, bn.bias = weights[resnet.bn_name(conv) + "_g"], weights[resnet.bn_name(conv) + "_b"]
    del ref.fc.weight, ref.fc.bias
    ref.fc.weight, ref.fc.bias = weights["fc_w"].t(), weights["fc_b"]
    original_loss(ref(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    assert set(grads) == set(params)
    for n, g in grads.items():
        np.testing.assert_allclose(g, weights[n].grad.numpy(), rtol=1e-8, atol=1e-12, err_msg=n)


def test_gradients_agree_with_finite_differences():
    """gradcheck in float64 of the whole network's loss (BatchNorm in training
    mode) in a few parameters, on the fixed path at stride 2."""
    layout, params, buffers, x, y = setup("fxnn", shape=(1, 5, 7), width=2)
    tensors = {n: torch.tensor(v) for n, v in params.items()}
    names = ["conv0_w", "bn3_g", "conv3_w", "fc_b"]  # conv3: the strided first conv of stage 2

    def loss(*chosen):
        p = dict(tensors, **dict(zip(names, chosen)))
        probs = resnet.forward(BACKEND, layout, p, torch.from_numpy(x), None, True, lambda *a: "fixed")
        return net.objective(BACKEND, probs, torch.from_numpy(y))[0]

    assert layout.convs[3].stride == 2
    assert torch.autograd.gradcheck(loss, [tensors[n].clone().requires_grad_() for n in names])


def test_train_step_moves_running_statistics_as_batchnorm2d():
    """One engine step: BatchNorm statistics move as nn.BatchNorm2d's on the
    batch, with the parameters before the step; the step itself (SGD); then
    validation normalises by the running statistics."""
    layout, params, buffers, x, y = setup("fxnn", shape=(1, 8, 8))
    engine = TorchEngine(layout, params, "sgd", dtype="float64", fxnn_path="fixed")
    ref = Reference(layout, params, layout.init_buffers(np.float64), torch.float64).train(True)
    grads = engine.gradients(x, y)
    ref(torch.from_numpy(x))
    engine.train_step(x, y, 0.5)
    got = engine.get_buffers()
    for conv, bn in zip(layout.convs, ref.bns):
        name = resnet.bn_name(conv)
        np.testing.assert_allclose(got[name + "_mean"], bn.running_mean.numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got[name + "_var"], bn.running_var.numpy(), rtol=1e-10, atol=1e-12)
    for n, v in engine.get_params().items():
        np.testing.assert_allclose(v, params[n] - 0.5 * grads[n], rtol=1e-10, atol=1e-12, err_msg=n)
    _, _, probs = engine.evaluate(x, y)
    after = Reference(layout, engine.get_params(), got, torch.float64).train(False)
    np.testing.assert_allclose(probs, after(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_state_round_trips_the_buffers():
    layout, params, buffers, x, y = setup("cnn")
    a = TorchEngine(layout, params, "momentum")
    a.train_step(x, y, 0.1)
    b = TorchEngine(layout, layout.init_params(np.random.default_rng(5)), "momentum")
    b.set_state(a.get_state())
    for n, v in a.snapshot().items():
        np.testing.assert_array_equal(b.snapshot()[n], v, err_msg=n)
    assert list(a.snapshot()) == list(layout.snapshot_shapes())
    assert a.train_step(x, y, 0.1) == b.train_step(x, y, 0.1)
    c = TorchEngine(layout, params, "momentum")
    c.set_params(a.snapshot())  # a record's snapshot (--valid-split's best) brings its statistics
    for n, v in a.get_buffers().items():
        np.testing.assert_array_equal(c.get_buffers()[n], v, err_msg=n)


def test_bench_ratios_and_a_tiny_run(capsys):
    from bench import bench_resnet
    wall = {"fxnn": [9.0, 1.0, 1.0], "fxnn cl": [9.0, 1.0, 1.0], "cnn": [9.0, 2.0, 2.0], "peer cl": [9.0, 4.0, 4.0]}
    cpu = {"fxnn": [5.0, 5.0, 0.3, 0.3, 0.3], "fxnn cl": [5.0, 5.0, 0.4, 0.4, 0.4],
           "cnn": [5.0, 5.0, 0.6, 0.6, 0.6], "peer cl": [5.0, 5.0, 0.5, 0.5, 0.5]}
    figures, ratios = bench_resnet.summarise(wall, cpu, warmup=2)
    assert figures["cnn"] == {"wall_ms": 2000.0, "cpu_ms": 600.0, "vs_best_dense": pytest.approx(1.2)}
    assert ratios == {"best_dense": "peer cl", "best_fxnn": "fxnn", "fxnn/cnn": pytest.approx(0.5),
                      "best fxnn/best dense": pytest.approx(0.6)}
    rows = bench_resnet.main(["--repeats", "1", "--batch", "2", "--width", "2", "--depth", "8",
                              "--inputs", "cifar", "--precisions", "fp32"])
    assert [(r["input"], r["precision"], sorted(r["ms"])) for r in rows] == [
        ("cifar", "fp32", ["cnn", "cnn cl", "fxnn", "fxnn cl", "peer", "peer cl"])]
    assert "best dense" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_resnet.main(["--inputs", "mnist"])
    assert "--inputs: unknown mnist" in capsys.readouterr().err


def test_bench_peer_is_the_same_network():
    """The plain-PyTorch peer has the runner's cnn ResNet's parameter count."""
    from bench import bench_resnet
    peer = bench_resnet.peer_resnet((3, 32, 32), 10, 16, 20)
    layout = resnet.build_resnet("cnn", (3, 32, 32), 10)
    assert sum(p.numel() for p in peer.parameters()) == sum(int(np.prod(s)) for s in layout.param_shapes().values())


@pytest.mark.parametrize("model,path", [("fxnn", p) for p in PATHS] + [("cnn", "auto")])
def test_bf16_trains_close_to_fp32(model, path):
    """--precision bf16: one step's loss and the validation probabilities
    near fp32's (bfloat16's 8 bits), channels_last dense convs recorded."""
    layout, params, buffers, x, y = setup(model, shape=(1, 12, 12))
    params = {n: v.astype(np.float32) for n, v in params.items()}
    runs = {p: TorchEngine(layout, params, fxnn_path=path, precision=p) for p in ("fp32", "bf16")}
    losses = {p: e.train_step(x, y, 0.1)[0] for p, e in runs.items()}
    assert abs(losses["bf16"] - losses["fp32"]) < 0.02 * losses["fp32"]
    np.testing.assert_allclose(runs["bf16"].evaluate(x, y)[2], runs["fp32"].evaluate(x, y)[2], atol=0.03)
    if path in ("folded", "auto"):  # dense convs: channels_last under bf16
        assert runs["bf16"].describe_memory_formats().startswith("conv0: channels_last")
    assert runs["fp32"].describe_memory_formats().startswith("conv0: NCHW")


# ---- the runner ---------------------------------------------------------------

def run(capsys, *argv):
    code = fxnn.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


SMALL = ("--arch", "resnet", "--width", 4, "--depth", 8, "-nrec", 2, "-ipr", 3, "--seed", 2, "-bsize", 16)


def test_runner_records_the_batchnorm_state(tmp_path, capsys, small_mnist):
    out_file = tmp_path / "rec.mat"
    code, out, err = run(capsys, *SMALL, "-m", "fxnn", "--data-dir", small_mnist, "-o", out_file)
    assert code == 0, err
    rec = scipy.io.loadmat(str(out_file), squeeze_me=True)
    assert rec["conv0_w"].shape == (3, 5, 4) and rec["conv3_w"].shape == (3, 20, 8)  # 3 records: 0, 1, 2
    assert rec["bn0_g"].shape == rec["bn0_mean"].shape == rec["bn0_var"].shape == (3, 4)
    assert rec["fc_w"].shape == (3, 16, 10) and "conv0_b" not in rec
    np.testing.assert_array_equal(rec["bn0_var"][0], 1)  # the untrained network's
    assert (rec["bn0_var"][-1] != 1).all() and np.isfinite(rec["bn6_mean"]).all()
    meta = rec["meta"]
    assert (meta["flags"].item()["arch"], meta["flags"].item()["width"], meta["flags"].item()["depth"]) == \
        ("resnet", 4, 8)
    assert meta["flags"].item()["dropout_prob"] == 0
    assert "conv3: train fused" in meta["fxnn_path"].item() or "conv3: train fixed" in meta["fxnn_path"].item()
    run_ = load_run(str(out_file))  # the analysis reads it, as a resnet experiment
    assert dict(run_.experiment)["arch"] == "resnet" and len(run_.verate) == 3


def test_runner_on_fashion_mnist_cnn(tmp_path, capsys):
    """Fashion-MNIST (a few hundred genuine images where ../shared/data has
    them, else random ones), cnn's dense convs, bf16."""
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    names = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
             "t10k-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(0)
    for name, magic, n in zip(names, (IMAGES_MAGIC, LABELS_MAGIC) * 2, (300, 300, 100, 100)):
        source = os.path.join(SHARED_FASHION, name)
        if os.path.exists(source):
            array = read_idx(source, magic, "")[:n]
        else:
            images = magic == IMAGES_MAGIC
            array = rng.integers(0, 256 if images else 10, (n, 28, 28) if images else n, dtype=np.uint8)
        write_idx(folder / name, array)
    out_file = tmp_path / "rec.mat"
    code, out, err = run(capsys, *SMALL, "-m", "cnn", "-d", "FashionMNIST", "--data-dir", tmp_path,
                         "--no-download", "--precision", "bf16", "-o", out_file)
    assert code == 0, err
    rec = read_mat(str(out_file))
    assert rec["meta"]["dataset"] == "FashionMNIST" and rec["meta"]["precision"] == "bf16"
    assert rec["conv0_w"].shape == (3, 4, 1, 3, 3) and rec["bn6_var"].shape == (3, 16)
    assert rec["meta"]["memory_format"].startswith("conv0: channels_last")


@pytest.mark.parametrize("flags,message", [
    (("-pdpo", 0.5), "--arch resnet has no dropout"),
    (("-fsize", 5, "-m", "cnn"), "--arch resnet's convolutions are 3x3"),
    (("--engine", "pytensor"), "--arch resnet runs on the torch engine only"),
    (("-m", "baseline"), "--arch resnet needs a model with conv layers"),
])
def test_refusals(tmp_path, capsys, small_mnist, flags, message):
    out_file = tmp_path / "rec.mat"
    code, out, err = run(capsys, "--arch", "resnet", *flags, "--data-dir", small_mnist, "-o", out_file)
    assert code == 2 and err.startswith(f"fxnn: error: {message}") and err.count("\n") == 1, err
    assert not out_file.exists()


def test_the_pytensor_engine_refuses_it():
    from fxnn.models.engines import make_engine
    layout, params, *_ = setup()
    with pytest.raises(ValueError, match="^the pytensor engine runs --arch original only: use --engine torch"):
        make_engine("pytensor", "cpu", layout, params, "sgd", 0.0, 0)


def test_size_flags_need_the_resnet(tmp_path, capsys, small_mnist):
    code, _, err = run(capsys, "--width", 8, "--data-dir", small_mnist, "-o", tmp_path / "rec.mat")
    assert code == 2 and err == "fxnn: error: --width size the residual network: add --arch resnet, or leave " \
                                "them out\n"


@pytest.mark.parametrize("argv,message", [
    (("--depth", 10), "argument --depth: the resnet's depth must be 6n+2"),
    (("--width", 0), "argument --width: must be a positive integer"),
])
def test_bad_sizes_refused(capsys, argv, message):
    with pytest.raises(SystemExit) as caught:
        fxnn.main(["--arch", "resnet", *map(str, argv)])
    err = capsys.readouterr().err
    assert caught.value.code == 2 and message in err.splitlines()[-1], err


def start(data_dir, out, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "fxnn.py"), *map(str, SMALL), "-nrec", "5", "-m", "fxnn",
           "--optimizer", "momentum", "--data-dir", data_dir, "-o", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))


@pytest.mark.slow  # three fxnn.py processes end to end
def test_sigkilled_resnet_resumes_to_the_uninterrupted_result(tmp_path, small_mnist):
    """BatchNorm's running statistics and the momentum included: a run killed
    with SIGKILL after its third record and resumed ends bit for bit where
    an uninterrupted one does."""
    whole, resumed = tmp_path / "whole.mat", tmp_path / "resumed.mat"
    proc = start(small_mnist, whole)
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    proc = start(small_mnist, resumed)
    wait_for_line(proc, n=3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not resumed.exists()
    proc = start(small_mnist, resumed, "--resume")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "Resuming at iteration" in out, err
    a, b = read_mat(str(whole)), read_mat(str(resumed))
    names = [k for k in a if k.startswith(("conv", "bn", "fc"))]
    assert {"bn0_mean", "bn6_var", "bn4_g", "fc_w"} <= set(names)
    for key in ["tloss", "vloss", "verate", "yprob"] + names:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
