"""The torch engine and FixedConv2d on a CUDA GPU (skipped without one)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fxnn  # noqa: E402
from fxnn.models.torch.layer import FixedConv2d  # noqa: E402
from fxnn.training.matfile import read_mat  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")


def test_fixed_conv2d_on_cuda_equals_cpu():
    layer = FixedConv2d(16, 24)
    x = torch.randn(4, 16, 33, 17, requires_grad=True)
    y = layer(x)
    y.backward(torch.ones_like(y))
    layer_gpu = FixedConv2d(16, 24).cuda()
    layer_gpu.load_state_dict(layer.state_dict())
    xg = x.detach().cuda().requires_grad_(True)
    yg = layer_gpu(xg)
    yg.backward(torch.ones_like(yg))
    np.testing.assert_allclose(yg.detach().cpu().numpy(), y.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(xg.grad.cpu().numpy(), x.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer_gpu.weight.grad.cpu().numpy(), layer.weight.grad.numpy(), rtol=1e-3, atol=1e-3)


def test_gradcheck_on_cuda():
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(FixedConv2d(3, 4).double().cuda(), (x,))


def test_full_run_on_cuda_matches_the_cpu_run(tmp_path, capsys, small_mnist):
    recs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.mat"
        code = fxnn.main(["-m", "fxnn", "-nrec", "2", "-ipr", "10", "--data-dir", small_mnist, "-o", str(out),
                          "--seed", "1", "--engine", "torch", "--device", device, "-lr", "0.05"])
        assert code == 0, capsys.readouterr().err
        recs[device] = read_mat(str(out))
    assert recs["cuda"]["meta"]["device"] == "cuda"
    np.testing.assert_allclose(recs["cuda"]["tloss"], recs["cpu"]["tloss"], rtol=1e-3)
    np.testing.assert_allclose(recs["cuda"]["vloss"], recs["cpu"]["vloss"], rtol=1e-3)
