"""bench/bench_resnet.py runs the baselines it names: in fp32 the runner's
and the plain-PyTorch networks in NCHW and in channels_last, in bf16 under
bf16 autocast with channels_last; ``vs best dense`` is against the fastest
dense contender of the precision."""
import pytest

torch = pytest.importorskip("torch")

from bench import bench_resnet  # noqa: E402


def formats_seen(model, step):
    """(dtype it computed in, input channels_last) of every nn.Conv2d of ``model`` in one ``step``."""
    seen = []

    def hook(module, args, out):
        x = args[0]
        seen.append((out.dtype, x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()))
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    step()
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_contender_runs_in_its_precision_and_layout(precision):
    fns = bench_resnet.contenders((3, 8, 8), 4, precision, 2, 8)
    assert set(fns) == set(bench_resnet.CONTENDERS[precision])
    for name, step in fns.items():
        channels_last = precision == "bf16" or name.endswith(" cl")
        if name.startswith("peer"):
            seen = formats_seen(step.model, step)
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            # the stem sees the image (3 channels: NCHW and channels_last differ), every later conv too
            assert seen and all(s == (dtype, channels_last) for s in seen), (name, seen)
        else:
            step()
            engine = step.engine
            assert engine.precision == precision
            if name.startswith("cnn"):  # every dense conv's input in the layout named
                formats = {f.split(": ")[1] for f in engine.describe_memory_formats().split("; ")}
                assert formats == {"channels_last" if channels_last else "NCHW"}, (name, formats)
            else:
                assert engine.backend.channels_last == channels_last, name


def test_vs_best_dense_names_the_fastest_dense_contender():
    wall = {n: [1.0] for n in ("fxnn", "cnn", "peer")}
    cpu = {"fxnn": [0.7], "cnn": [0.5], "peer": [0.4]}
    figures, ratios = bench_resnet.summarise(wall, cpu, warmup=0)
    assert ratios["best_dense"] == "peer" and ratios["best fxnn/best dense"] == pytest.approx(1.75)
    assert figures["cnn"]["vs_best_dense"] == pytest.approx(1.25)
