"""The memory preflight's estimate of a training step against what autograd
really keeps: the bytes of the tensors saved for the backward pass (a
saved-tensors hook), per image, on each path, in both networks; and the
refusal it gives, which names the paths that keep less."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fxnn.models.architecture import build_network  # noqa: E402
from fxnn.models.resnet import build_resnet  # noqa: E402
from fxnn.models.torch.engine import TorchEngine  # noqa: E402
from fxnn.training import preflight  # noqa: E402


def kept_bytes(engine, batch):
    """Bytes of the distinct storages autograd saves in one training step."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    rng = np.random.default_rng(0)
    x = rng.random((batch,) + engine.network.input_shape, dtype=np.float32)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        engine._loss_and_grads(*engine._batch(x, rng.integers(0, 10, batch)))
    return sum(storages.values())


NETWORKS = {"original": lambda model: build_network(model, (1, 16, 16)),
            "resnet": lambda model: build_resnet(model, (1, 16, 16), 10, 4, 8)}


@pytest.mark.parametrize("arch,model,path", [(a, "fxnn", p) for a in NETWORKS for p in ("fixed", "fused", "folded")]
                         + [(a, "cnn", "auto") for a in NETWORKS])
def test_the_estimate_covers_what_autograd_keeps_per_image_and_not_much_more(arch, model, path):
    network = NETWORKS[arch](model)
    engine = TorchEngine(network, network.init_params(np.random.default_rng(0)), "sgd", fxnn_path=path)
    per_image = (kept_bytes(engine, 16) - kept_bytes(engine, 8)) / 8
    estimate = (preflight.step_memory(network, 16, fxnn_path=path) - preflight.step_memory(network, 8, fxnn_path=path)) / 8
    assert per_image <= estimate <= 1.3 * per_image, (per_image, estimate)


def test_under_auto_the_fixed_stages_count_and_the_refusal_names_the_lean_paths():
    network = build_network("fxnn", (1, 28, 28))
    full, lean = (preflight.step_memory(network, 4096, fxnn_path=p) for p in ("auto", "fused"))
    assert lean < full == preflight.step_memory(network, 4096, fxnn_path="fixed")
    assert lean == preflight.step_memory(network, 4096, fxnn_path="folded")
    problem = preflight.check_resources(network, 4096, 3, "fxnn", available=(lean + full) // 2)
    assert problem.startswith("-bsize 4096 needs at least") and "use a smaller -bsize" in problem
    assert "with --fxnn-path fused or folded" in problem and "\n" not in problem
    assert preflight.check_resources(network, 4096, 3, "fxnn", available=(lean + full) // 2, fxnn_path="fused") is None
    cnn = build_network("cnn", (1, 28, 28))  # no fixed stages to keep: no such hint
    need = preflight.step_memory(cnn, 4096)
    assert "--fxnn-path" not in preflight.check_resources(cnn, 4096, 3, "cnn", available=need - 1)
