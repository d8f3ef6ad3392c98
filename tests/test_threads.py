"""--threads reaches every pool both engines compute on: PyTorch's, the
OpenMP runtime, numpy's OpenBLAS, and the C kernels in either engine."""
import os
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from conftest import ROOT
from fxnn.kernels import threads
from fxnn.training.matfile import read_mat


@pytest.fixture
def one_thread(monkeypatch):
    """threads.use(1) for one test; everything it set is put back after."""
    torch = pytest.importorskip("torch")
    before_torch, before_blas = torch.get_num_threads(), threadpool_info()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored at teardown
    monkeypatch.setattr(threads, "_chosen", None)
    threads.use(1, torch=True)
    yield torch
    from threadpoolctl import threadpool_limits
    for lib in before_blas:
        threadpool_limits(lib["num_threads"], user_api=lib["user_api"])
    torch.set_num_threads(before_torch)


def test_use_sets_torch_openblas_and_openmp(one_thread):
    assert one_thread.get_num_threads() == 1 and threads.count() == 1
    loaded = {lib["internal_api"]: lib["num_threads"] for lib in threadpool_info()}
    assert loaded.get("openblas") == 1  # numpy's, which PyTensor's dense layers call
    assert all(lib["num_threads"] == 1 for lib in threadpool_info())
    assert threads.describe("torch").startswith("C kernels 1, torch 1")


KERNEL_CALLS = ("forward", "adjoint", "fused_forward", "fused_wgrad", "fused_dgrad", "block_forward", "block_backward")


def test_every_c_kernel_of_a_torch_training_step_gets_the_thread_count(one_thread, monkeypatch):
    from conftest import native_module
    from fxnn.models.architecture import build_network
    from fxnn.models.torch.engine import TorchEngine
    module = native_module()
    counts = {}

    def spy(name, real):
        def call(*args):
            counts.setdefault(name, set()).add([a for a in args if type(a) is int][-1])  # threads: the last int
            return real(*args)
        return call
    for name in KERNEL_CALLS:
        monkeypatch.setattr(module, name, spy(name, getattr(module, name)))
    network = build_network("fxnn", (1, 12, 12))
    rng = np.random.default_rng(0)
    for path in ("fused", "fixed"):
        engine = TorchEngine(network, network.init_params(rng), dropout=0.25, seed=1, device="cpu", fxnn_path=path)
        engine.train_step(rng.random((4, 1, 12, 12), dtype=np.float32), rng.integers(0, 10, 4).astype(np.int32), 0.1)
    assert {"fused_forward", "fused_wgrad", "fused_dgrad", "forward", "block_forward", "block_backward"} <= set(counts)
    assert all(seen == {1} for seen in counts.values()), counts


def test_pytensor_ops_take_the_thread_count_when_the_graph_is_built(one_thread):
    import pytensor
    import pytensor.tensor as pt
    from pytensor.graph.traversal import io_toposort

    from fxnn.kernels.pytensor_kernels import KernelsOp
    from fxnn.models.pytensor.backend import fxnn_conv
    if not pytensor.config.cxx:
        pytest.skip("PyTensor has no C compiler here: its C kernels do not run")
    x, w, b = pt.tensor4("x", dtype="float32"), pt.matrix("w", dtype="float32"), pt.vector("b", dtype="float32")
    for path in ("fused", "fixed"):
        y = fxnn_conv(x, w, b, path).sum()
        graph = pytensor.grad(y, [x, w])
        ops = [node.op for node in io_toposort([x, w, b], graph) if isinstance(node.op, KernelsOp)]
        assert ops and {op.threads for op in ops} == {1}, path


def test_without_the_flag_omp_num_threads_or_all_cores(monkeypatch):
    monkeypatch.setattr(threads, "_chosen", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.count() == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.count() == threads.cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("engine", ["torch", "pytensor"])
def test_fxnn_py_threads_flag_reaches_the_engine_and_the_record(tmp_path, small_mnist, engine):
    if engine == "torch":
        pytest.importorskip("torch")
    out = tmp_path / "r.mat"
    done = subprocess.run([sys.executable, "fxnn.py", "-m", "baseline", "-nrec", "1", "-ipr", "2", "--seed", "1",
                           "--data-dir", small_mnist, "-o", str(out), "--engine", engine, "--threads", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")})
    assert done.returncode == 0, done.stderr
    described = dict(part.rsplit(" ", 1) for part in read_mat(str(out))["meta"]["threads"].split(", "))
    assert described["C kernels"] == described["OpenBLAS"] == "1"
    assert described.get("torch", "1") == "1" and (engine == "pytensor" or "torch" in described)
    assert np.isfinite(read_mat(str(out))["vloss"]).all()


def test_the_same_numbers_to_float32_rounding_at_any_thread_count_on_the_same_paths(tmp_path, small_mnist):
    pytest.importorskip("torch")
    records = []
    for n in (1, 2):
        out = tmp_path / f"r{n}.mat"
        done = subprocess.run([sys.executable, "fxnn.py", "-m", "fxnn", "-nrec", "1", "-ipr", "3", "--seed", "4",
                               "--data-dir", small_mnist, "-o", str(out), "--engine", "torch", "--threads", str(n),
                               "--record-params", "last"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        records.append(read_mat(str(out)))
    a, b = records
    assert a["meta"]["fxnn_path"] == b["meta"]["fxnn_path"]  # FXNN_AUTOTUNE=0 (conftest): the same paths
    assert a["meta"]["threads"] != b["meta"]["threads"]
    # the C kernels are bitwise the same at any thread count (test_fused_kernel); library GEMMs to the last bits
    for key in ("tloss", "vloss", "conv0_w", "conv1_w", "mlp0_w", "yprob"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-7, err_msg=key)
