"""``--precision bf16``: the torch engine under bfloat16 autocast, float32
master weights, optimizer state and loss. The block after each conv layer
in bfloat16 against a float64 reference; the engine's dtypes; runs end to end
with their records' meta; learning close to float32's; resume after an
interruption, and the refusals (another precision on resume, the PyTensor
engine, a GPU without bfloat16)."""
import os

import numpy as np
import pytest
import scipy.io

torch = pytest.importorskip("torch")

import fxnn  # noqa: E402
from conftest import one_line, run_fxnn  # noqa: E402
from fxnn.models import dropout, engines  # noqa: E402
from fxnn.models.torch import block as torch_block  # noqa: E402
from fxnn.models.architecture import build_network  # noqa: E402
from fxnn.models.torch.engine import TorchEngine  # noqa: E402
from fxnn.training import checkpoint  # noqa: E402
from fxnn.training.matfile import read_mat  # noqa: E402

BF16 = torch.bfloat16
#: each conv layer's memory format under bf16: cnn's dense convs channels_last,
#: fxnn's layers as their kernels take them (NCHW)
FORMATS = {"cnn": "conv0: channels_last; conv1: channels_last", "fxnn": "conv0: NCHW; conv1: NCHW"}


def run(capsys, *argv):
    return run_fxnn(capsys, argv)


def loadmat_meta(path):
    return scipy.io.loadmat(str(path), simplify_cells=True)["meta"]


def folder_bytes(folder):
    return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


# ---- the block after each conv layer, in bfloat16 -----------------------------

def block_case(shape, p, crowded, seed=7):
    """bfloat16 conv outputs, dropout draws and an output gradient; crowded:
    values on a grid of 1/128 in [1.5, 2), where bfloat16 is spaced 1/128 and
    4/3 of them lands where it is spaced 1/64 (the scaled values collide;
    the unscaled ones tie only where equal)."""
    rng = np.random.default_rng(seed)
    if crowded:
        y = torch.from_numpy(1.5 + rng.integers(-70, 64, size=shape) / 128).to(BF16)
    else:
        y = torch.from_numpy(rng.standard_normal(shape)).to(BF16)
        y.view(-1)[:2] = 0.75  # a tie inside a window
    mask = rng.integers(0, dropout.LEVELS, size=shape, dtype=np.uint16) if p else None
    g = torch.from_numpy(rng.standard_normal((shape[0], shape[1], shape[2] // 2, shape[3] // 2))).to(BF16)
    return y, mask, g


@pytest.mark.parametrize("block", [torch_block.relu_dropout_pool, torch_block.low_precision_ops],
                         ids=["engine's block", "torch ops"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["NCHW", "NHWC"])
@pytest.mark.parametrize("p", [0.0, 0.25])
@pytest.mark.parametrize("shape,crowded", [((2, 3, 28, 28), False), ((2, 4, 9, 7), False), ((3, 2, 3, 4), False),
                                           ((1, 2, 1, 5), False), ((2, 8, 10, 10), True)])
def test_the_block_in_bf16_is_the_float64_reference_rounded_once(shape, crowded, p, memory_format, block):
    """ReLU, the keep and the maximum are exact in bfloat16, and the scale
    1/(1-p) is one rounding of the exact product: the forward and the
    gradient equal the float64 torch-ops reference on the same bfloat16
    inputs, rounded to bfloat16, bitwise; ties (common in bfloat16)
    included. So does the engine's block, the float32 C kernel on a float32
    copy where it is built. The results are bfloat16 (the torch ops keep
    the input's memory format)."""
    y, mask, g = block_case(shape, p, crowded)
    t = y.contiguous(memory_format=memory_format).requires_grad_(True)
    out = block(t, mask, p)
    out.backward(g)
    ref_in = y.detach().double().requires_grad_(True)
    want = torch_block.reference(ref_in, mask, p)
    want.backward(g.double())

    assert out.dtype == t.grad.dtype == BF16
    assert torch.equal(out, want.to(BF16))
    assert torch.equal(t.grad, ref_in.grad.to(BF16))
    if block is torch_block.low_precision_ops and min(shape[2:]) >= 2:
        assert out.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["NCHW", "NHWC"])
def test_without_a_gradient_the_bf16_block_runs_in_its_own_dtype(memory_format):
    """Validation's block (no gradient) takes the bfloat16 torch ops on a
    channels_last tensor, not the float32 copy the training block pays for:
    the same numbers, a channels_last result, no cast to float32 (and on a
    channels_last input, as a dense conv gives, no copy at all)."""
    y, _, _ = block_case((2, 8, 10, 10), 0.0, True)
    t = y.contiguous(memory_format=memory_format)
    want = torch_block.relu_dropout_pool(t.detach().clone().requires_grad_(True)).detach()
    with torch.no_grad(), torch.profiler.profile() as prof:
        got = torch_block.relu_dropout_pool(t)
    ran = {e.key for e in prof.key_averages()}
    assert torch.equal(got, want) and got.dtype == BF16
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert "aten::_to_copy" not in ran
    if memory_format == torch.channels_last:
        assert "aten::copy_" not in ran


def test_scaling_before_pooling_would_tie_what_differs():
    """Why the scale comes after the maximum: on the crowded grid some
    different bfloat16 values times 4/3 round to one bfloat16 number, and
    would both take a window's gradient."""
    y = torch.tensor([1.9765625, 1.984375], dtype=BF16)
    assert y[0] != y[1] and (y[0] * (4 / 3)).item() == (y[1] * (4 / 3)).item()


def test_the_bf16_block_operators_pass_opcheck():
    rng = np.random.default_rng(8)
    y = torch.from_numpy(rng.standard_normal((2, 3, 7, 6))).to(BF16)
    keep = torch.from_numpy(rng.integers(0, dropout.LEVELS, size=y.shape, dtype=np.uint16) >= 16384)
    for mask, threshold, scale in ((keep, 1, 1 / 0.75), (None, 0, 1.0)):
        torch.library.opcheck(torch_block.block_forward, (y.clone().requires_grad_(True), mask, threshold, scale))
        out = torch_block.block_forward(y, mask, threshold, scale)
        g = torch.randn(out.shape).to(BF16)
        torch.library.opcheck(torch_block.block_backward, (y, mask, threshold, scale, out, g))


# ---- the engine ----------------------------------------------------------------

def engine(model, precision, optimizer="momentum", dropout_p=0.25):
    network = build_network(model, (1, 28, 28), 10, 3)
    params = network.init_params(np.random.default_rng(0))
    return TorchEngine(network, params, optimizer, dropout_p, 0, "cpu", precision=precision), network


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
@pytest.mark.parametrize("model", ["cnn", "fxnn", "baseline", "fxnn-dct"])
def test_bf16_keeps_float32_weights_state_gradients_and_probabilities(model, optimizer):
    e, network = engine(model, "bf16", optimizer)
    rng = np.random.default_rng(1)
    x, y = rng.random((8, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 8)
    for _ in range(3):
        loss, erate = e.train_step(x, y, 0.05)
        assert np.isfinite(loss) and 0 <= erate <= 1
    assert all(p.dtype == torch.float32 for p in e._params.values())
    assert all(v.dtype == torch.float32 for slot in e._state.values() for v in slot.values())
    assert all(g.dtype == np.float32 and np.isfinite(g).all() for g in e.gradients(x, y).values())
    assert all(v.dtype == np.float32 for v in e.get_state().values() if v.dtype.kind == "f")
    loss, erate, probs = e.evaluate(x, y)
    assert probs.dtype == np.float32 and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    formats = e.describe_memory_formats()
    if model == "baseline":
        assert formats == "none (no conv layers)"
    else:
        assert formats == FORMATS.get(model, "conv0: channels_last; conv1: channels_last")  # folded: a dense conv


def test_bf16_computes_the_convolutions_and_matmuls_in_bf16_and_the_loss_in_float32():
    """What autocast runs: the conv outputs and the matmuls bfloat16, the
    probabilities and the loss float32 (the block sees what the conv gave)."""
    e, network = engine("cnn", "bf16")
    seen = []
    block = e.backend.block
    e.backend.block = lambda h, mask, p: seen.append(h.dtype) or block(h, mask, p)
    x = np.random.default_rng(2).random((4, 1, 28, 28), dtype=np.float32)
    x_t, y_t = e._batch(x, np.arange(4))
    probs = e._forward(x_t, (), "valid")
    assert seen == [BF16, BF16] and probs.dtype == torch.float32
    with e._autocast():
        assert (x_t.reshape(4, -1) @ e._params["mlp0_w"][:784]).dtype == BF16


def test_fp32_is_unchanged_and_nchw():
    e, _ = engine("cnn", "fp32")
    x = np.random.default_rng(3).random((4, 1, 28, 28), dtype=np.float32)
    e.train_step(x, np.arange(4), 0.05)
    e.evaluate(x, np.arange(4))
    assert e.describe_memory_formats() == "conv0: NCHW; conv1: NCHW"
    assert e.autocast_dtype is None


# ---- runs end to end -------------------------------------------------------------

@pytest.mark.parametrize("model", ["fxnn", "cnn"])
def test_a_bf16_run_records_its_precision_and_memory_formats(tmp_path, capsys, small_mnist, model):
    out = tmp_path / "rec.mat"
    code, stdout, err = run(capsys, "-m", model, "-nrec", 2, "-ipr", 10, "--data-dir", small_mnist, "-o", out,
                            "--seed", 4, "--engine", "torch", "--precision", "bf16", "--record-params", "last")
    assert code == 0, err
    assert stdout.splitlines()[-1] == f"Saved recording to file {out}"
    meta = loadmat_meta(out)
    assert meta["precision"] == "bf16" and meta["flags"]["precision"] == "bf16"
    assert meta["memory_format"] == FORMATS[model]
    assert meta["engine"] == "torch" and meta["status"] == "complete"
    rec = scipy.io.loadmat(str(out), simplify_cells=True)
    assert np.isfinite(rec["tloss"]).all() and np.isfinite(rec["vloss"]).all()
    assert rec["conv1_w"].dtype == np.float32


def test_an_fp32_run_says_so(tmp_path, capsys, small_mnist):
    out = tmp_path / "rec.mat"
    code, _, err = run(capsys, "-m", "cnn", "-nrec", 1, "-ipr", 2, "--data-dir", small_mnist, "-o", out,
                       "--seed", 4, "--engine", "torch", "--record-params", "none")
    assert code == 0, err
    meta = loadmat_meta(out)
    assert (meta["precision"], meta["memory_format"]) == ("fp32", "conv0: NCHW; conv1: NCHW")


def curves(capsys, small_mnist, out, model, precision, seed=11):
    code, _, err = run(capsys, "-m", model, "-nrec", 3, "-ipr", 100, "--data-dir", small_mnist, "-o", out,
                       "--seed", seed, "--engine", "torch", "--precision", precision, "--record-params", "none")
    assert code == 0, err
    return read_mat(str(out))


@pytest.mark.slow  # four runs of 300 iterations
@pytest.mark.parametrize("model", ["fxnn", "cnn"])
def test_bf16_learns_as_fp32_does(tmp_path, capsys, small_mnist, model):
    """300 iterations on the 600 training images: the bfloat16 run's losses
    are finite and fall, and its final validation error (200 test images,
    0.5 points each) is within 6 points of the float32 run's on the same
    seed (same batches, same dropout masks). The margin: bfloat16 rounds
    every activation to 8 bits, so the two runs part ways after the first
    steps and end as two runs of different seeds would. Measured on seeds
    11 to 15: bf16 minus fp32 was -0.5 to +0.5 points for cnn and -3.5 to
    +2 for fxnn, while fp32 runs of those seeds spread over 16.5-29 (cnn)
    and 11.5-14.5 points (fxnn); 6 points is twice fxnn's largest gap."""
    bf16 = curves(capsys, small_mnist, tmp_path / "bf16.mat", model, "bf16")
    fp32 = curves(capsys, small_mnist, tmp_path / "fp32.mat", model, "fp32")
    assert np.isfinite(bf16["tloss"]).all() and len(bf16["tloss"]) == 300
    assert bf16["tloss"][-50:].mean() < 0.6 * bf16["tloss"][:50].mean()
    assert np.all(np.diff(bf16["vloss"]) < 0)
    assert bf16["verate"][-1] < 0.35
    assert abs(bf16["verate"][-1] - fp32["verate"][-1]) <= 0.06
    # float32 rounding of the same numbers would agree to 1e-5; bfloat16's do not
    assert not np.array_equal(bf16["tloss"], fp32["tloss"])


# ---- resume ------------------------------------------------------------------------

def interrupted_run(tmp_path, capsys, small_mnist, monkeypatch, precision, after=15):
    """A run of 3 records of 10 iterations stopped by Ctrl-C in its second
    record (iteration ``after``): its record so far and a checkpoint at
    record 1."""
    out = tmp_path / "rec.mat"
    calls = [0]
    step = TorchEngine.train_step

    def train_step(self, x, y, lr):
        calls[0] += 1
        if calls[0] == after:
            raise KeyboardInterrupt
        return step(self, x, y, lr)
    with monkeypatch.context() as m:
        m.setattr(TorchEngine, "train_step", train_step)
        code, stdout, err = run(capsys, *argv(small_mnist, out, precision))
    assert code == 130, err
    assert f"Interrupted: saved the recording so far to file {out}" in stdout
    return out


def argv(small_mnist, out, precision, *extra):
    return ["-m", "cnn", "-nrec", 3, "-ipr", 10, "--data-dir", small_mnist, "-o", out, "--seed", 6,
            "--engine", "torch", "--precision", precision, *extra]


def test_an_interrupted_bf16_run_resumes_to_the_uninterrupted_result(tmp_path, capsys, small_mnist, monkeypatch):
    whole = tmp_path / "whole" / "rec.mat"
    whole.parent.mkdir()
    code, _, err = run(capsys, *argv(small_mnist, whole, "bf16"))
    assert code == 0, err

    out = interrupted_run(tmp_path, capsys, small_mnist, monkeypatch, "bf16")
    assert loadmat_meta(out)["status"] == "interrupted"
    code, stdout, err = run(capsys, *argv(small_mnist, out, "bf16", "--resume"))
    assert code == 0, err
    assert "Resuming at iteration 10" in stdout
    a, b = read_mat(str(whole)), read_mat(str(out))
    assert b["meta"]["precision"] == "bf16" and b["meta"]["status"] == "complete"
    for key in ("tloss", "terate", "vloss", "verate", "yprob", "conv0_w", "conv1_w", "mlp0_w", "mlp2_b"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert not os.path.exists(str(out) + ".run")


@pytest.mark.parametrize("was,now", [("bf16", "fp32"), ("fp32", "bf16")])
def test_resuming_in_another_precision_is_refused_in_one_line(tmp_path, capsys, small_mnist, monkeypatch, was, now):
    out = interrupted_run(tmp_path, capsys, small_mnist, monkeypatch, was)
    run_dir = str(out) + ".run"
    record, state = out.read_bytes(), folder_bytes(run_dir)
    code, stdout, err = run(capsys, *argv(small_mnist, out, now, "--resume"))
    assert code == 2 and "Iter" not in stdout
    assert one_line(err) == (
        f"fxnn: error: cannot resume {out}: its checkpoint {run_dir}/checkpoint.npz was trained with --precision "
        f"{was}, and this run asks for --precision {now}; resume with --precision {was}, or start over in {now} "
        f"with --force")
    assert out.read_bytes() == record and folder_bytes(run_dir) == state  # nothing destroyed


def test_a_checkpoint_from_before_the_flag_counts_as_fp32():
    assert checkpoint.precision_mismatch({"seed": 1}, "fp32", "r.mat", "r.mat.run") is None
    line = checkpoint.precision_mismatch({"seed": 1}, "bf16", "r.mat", "r.mat.run")
    assert "was trained with --precision fp32" in line and "--force" in line


# ---- refusals ------------------------------------------------------------------------

def test_the_pytensor_engine_refuses_bf16_in_one_line(tmp_path, capsys, small_mnist):
    out = tmp_path / "rec.mat"
    code, stdout, err = run(capsys, "--engine", "pytensor", "--precision", "bf16", "--data-dir", small_mnist,
                            "-o", out)
    assert code == 2 and stdout == ""
    assert one_line(err) == ("fxnn: error: the pytensor engine computes in float32 only; use --engine torch "
                             "for --precision bf16")
    assert not out.exists()


def test_auto_picks_torch_for_bf16_or_refuses_without_it(monkeypatch):
    assert engines.resolve("auto", "cpu", "bf16") == ("torch", "cpu")
    monkeypatch.setattr(engines, "torch_available", lambda: False)
    assert engines.resolve("auto", "cpu", "fp32") == ("pytensor", "cpu")
    with pytest.raises(ValueError) as e:
        engines.resolve("auto", "cpu", "bf16")
    assert str(e.value) == ("--precision bf16 needs the torch engine, and PyTorch is not installed: pip install "
                            "torch (see the README's Quick start), or use --precision fp32")


def test_a_gpu_without_bf16_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(engines, "cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    with pytest.raises(ValueError) as e:
        engines.resolve("torch", "cuda", "bf16")
    assert str(e.value) == ("--precision bf16 needs a CUDA GPU of compute capability 8.0 or newer (Ampere), and "
                            "Tesla T4 is 7.5: use --precision fp32, or --device cpu")
    assert engines.resolve("torch", "cuda", "fp32") == ("torch", "cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert engines.resolve("torch", "cuda", "bf16") == ("torch", "cuda")


def test_the_flag_is_checked_and_explained_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        fxnn.main(["--precision", "fp16"])
    assert e.value.code == 2 and "--precision" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fxnn.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--precision {fp32,bf16}" in text and "bfloat16 autocast" in text and "(default: fp32)" in text
