"""``--memory-format``: the torch engine's conv layers on NCHW or channels_last
tensors, in either precision. A channels_last run records its layout and
trains to the NCHW run's numbers up to float32 rounding (the original network
and the residual one, dense convs and fxnn's fused kernels); the default keeps
every earlier record's layout; PyTensor refuses channels_last in one line;
a resume must keep the layout."""
import numpy as np
import pytest
import scipy.io

torch = pytest.importorskip("torch")

import fxnn  # noqa: E402
from fxnn.kernels import torch_fused  # noqa: E402
from fxnn.models import engines  # noqa: E402
from fxnn.training import checkpoint  # noqa: E402
from fxnn.training.matfile import read_mat  # noqa: E402

CL2 = "conv0: channels_last; conv1: channels_last"
NCHW2 = "conv0: NCHW; conv1: NCHW"
FXNN_PATH = "fused" if torch_fused.runs_fast("cpu", torch.float32) else "folded"


def run(capsys, *argv):
    code = fxnn.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def trained(capsys, small_mnist, out, *flags):
    code, _, err = run(capsys, "-nrec", 1, "-ipr", 5, "--data-dir", small_mnist, "-o", out, "--seed", 3,
                       "--engine", "torch", "--threads", 1, "--record-params", "last", *flags)
    assert code == 0, err
    return read_mat(str(out))


@pytest.mark.parametrize("model,extra,rtol", [
    ("cnn", (), 1e-4),
    ("fxnn", ("--fxnn-path", FXNN_PATH), 1e-4),
    # in the residual network a ReLU whose input lies within rounding of 0 (one of some 10^6)
    # can take the other side in the other layout, and BatchNorm spreads that through the
    # layer: the runs part by up to 1e-3 within five steps (on the folded path too, and NCHW
    # against float64 as well); a layout mistake would be off by tens of percent
    ("fxnn", ("--arch", "resnet", "--depth", 8, "--width", 8, "--fxnn-path", FXNN_PATH), 1e-2),
], ids=["cnn", "fxnn", "fxnn-resnet"])
def test_channels_last_in_fp32_trains_to_the_nchw_numbers(tmp_path, capsys, small_mnist, model, extra, rtol):
    flags = ("-m", model, *extra)
    nchw = trained(capsys, small_mnist, tmp_path / "nchw.mat", *flags)
    cl = trained(capsys, small_mnist, tmp_path / "cl.mat", *flags, "--memory-format", "channels_last")
    assert cl["meta"]["flags"]["memory_format"] == "channels_last"
    assert nchw["meta"]["flags"]["memory_format"] == "auto"
    stem, *layers = cl["meta"]["memory_format"].split("; ")
    assert layers and all(f.endswith(": channels_last") for f in layers), layers
    # the images have one channel, both layouts at once: dense convs follow the channels_last
    # strides they are given, the fused kernel reads and writes such a layer as NCHW
    assert stem == ("conv0: channels_last" if model == "cnn" else "conv0: NCHW")
    assert all(f.endswith(": NCHW") for f in nchw["meta"]["memory_format"].split("; "))
    assert cl["meta"]["fxnn_path"] == nchw["meta"]["fxnn_path"]
    # five steps: float32 rounding, not yet amplified by training (over tens of steps at this
    # rate two summation orders part by 1e-4 and more)
    np.testing.assert_allclose(cl["tloss"][0], nchw["tloss"][0], rtol=1e-5)  # before the first update
    weights = [k for k in nchw if k.endswith("_w")]
    assert weights
    for key in ("tloss", "vloss", "yprob", *weights):
        off = np.linalg.norm(cl[key] - nchw[key]) / np.linalg.norm(nchw[key])
        assert off <= rtol, (key, off)


def test_nchw_under_bf16_keeps_the_dense_convs_nchw(tmp_path, capsys, small_mnist):
    rec = trained(capsys, small_mnist, tmp_path / "rec.mat", "-m", "cnn", "--precision", "bf16",
                  "--memory-format", "nchw")
    assert (rec["meta"]["precision"], rec["meta"]["memory_format"]) == ("bf16", NCHW2)
    auto = trained(capsys, small_mnist, tmp_path / "auto.mat", "-m", "cnn", "--precision", "bf16")
    assert auto["meta"]["memory_format"] == CL2


def test_the_pytensor_engine_refuses_channels_last_in_one_line(tmp_path, capsys, small_mnist):
    out = tmp_path / "rec.mat"
    code, stdout, err = run(capsys, "--engine", "pytensor", "--memory-format", "channels_last",
                            "--data-dir", small_mnist, "-o", out)
    assert code == 2 and stdout == "" and "Traceback" not in err
    assert err.strip() == ("fxnn: error: the pytensor engine lays tensors out NCHW only; use --engine torch "
                           "(pip install torch) for --memory-format channels_last, or --memory-format nchw")
    assert not out.exists()
    assert engines.resolve("pytensor", "cpu", "fp32", "nchw") == ("pytensor", "cpu")


def test_an_unknown_memory_format_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as e:
        fxnn.build_parser().parse_args(["--memory-format", "nhwc"])
    assert e.value.code == 2
    assert "invalid choice: 'nhwc'" in capsys.readouterr().err


def test_a_resume_must_keep_the_memory_format():
    saved = {"seed": 1}  # a checkpoint from before the flag: it ran the default
    assert "memory_format" not in checkpoint.mismatches(saved, {"memory_format": "auto"})
    assert "memory_format" in checkpoint.mismatches(saved, {"memory_format": "channels_last"})
    assert "memory_format" in checkpoint.mismatches({"memory_format": "nchw"}, {"memory_format": "auto"})


def test_the_record_of_a_channels_last_run_reads_in_scipy(tmp_path, capsys, small_mnist):
    out = tmp_path / "rec.mat"
    trained(capsys, small_mnist, out, "-m", "cnn", "--memory-format", "channels_last")
    meta = scipy.io.loadmat(str(out), simplify_cells=True)["meta"]
    assert meta["memory_format"] == CL2 and meta["flags"]["memory_format"] == "channels_last"
