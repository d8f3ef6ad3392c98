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


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_floor_parts_are_the_networks_convs_as_3x3_and_1x1(precision):
    """--floor: one dense 3x3 conv per conv of the network at its input size
    and stride, a 1x1 conv from 5M channels at the same output pixels,
    and a BatchNorm+ReLU after each block's first conv; each runs forward
    and backward in the precision, channels_last."""
    from fxnn.models.resnet import build_resnet
    network = build_resnet("cnn", (3, 8, 8), 10, 2, 8)
    parts = bench_resnet.floor_parts((3, 8, 8), 4, precision, 2, 8)
    assert set(parts) == set(bench_resnet.FLOOR_PARTS)
    dense, floors, bns = (parts[p].layers for p in bench_resnet.FLOOR_PARTS)
    assert len(dense) == len(floors) == len(network.convs) and len(bns) == len(network.blocks)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for part in parts.values():
        part()
    for conv, (d, x, dy), (f, x5, dy5) in zip(network.convs, dense, floors):
        assert (d.in_channels, d.out_channels, d.stride) == (conv.in_channels, conv.out_channels, (conv.stride,) * 2)
        assert f.in_channels == 5 * conv.in_channels and f.kernel_size == (1, 1) and dy5 is dy
        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            y, y5 = d(x), f(x5)
        assert y.shape == y5.shape == dy.shape and y.dtype == y5.dtype == dtype
        assert x.dtype == dtype and x.is_contiguous(memory_format=torch.channels_last) and x.grad is not None
        assert x5.grad.shape == x5.shape and f.weight.grad is not None
    for (m, x, dy), block in zip(bns, network.blocks):
        assert x.shape == dy.shape and x.shape[1] == block.conv_a.out_channels and x.grad is not None


def test_floor_runs_cnns_channels_last_convs_at_five_ninths():
    cpu_ms = {"cnn": 500.0, "cnn cl": 400.0, "peer cl": 380.0,
              "3x3 convs": 270.0, "1x1 convs": 300.0, "inner BN+ReLU": 40.0}
    f = bench_resnet.floor(cpu_ms, "fp32", "peer cl")
    assert f["base"] == "cnn cl" and f["floor_ms"] == pytest.approx(400 - 120)
    assert f["floor/cnn"] == pytest.approx(0.7) and f["floor/best dense"] == pytest.approx(280 / 380)
    assert f["fused_floor_ms"] == pytest.approx(240.0) and f["fused_floor/cnn"] == pytest.approx(0.6)
    assert f["convs_share"] == pytest.approx(270 / 400) and f["1x1/3x3"] == pytest.approx(300 / 270)
    # 400 - 270 + 270 r = 0.75 * 400 at r = 1 - 100 / 270; less the 40 ms of BN+ReLU, r = 1 - 60 / 270
    assert f["layers_for_goal"] == pytest.approx(1 - 100 / 270)
    assert f["layers_for_goal_fused"] == pytest.approx(1 - 60 / 270)
    assert bench_resnet.floor(cpu_ms, "bf16", "cnn")["base"] == "cnn"  # bf16's cnn is channels_last


def test_a_tiny_run_with_floor(capsys):
    rows = bench_resnet.main(["--repeats", "1", "--batch", "2", "--width", "2", "--depth", "8",
                              "--inputs", "fashion", "--precisions", "bf16", "--floor"])
    assert sorted(rows[0]["ms"]) == sorted(bench_resnet.CONTENDERS["bf16"])  # the parts are not contenders
    assert set(rows[0]["floor"]["parts_ms"]) == set(bench_resnet.FLOOR_PARTS)
    assert "floor, inner BN+ReLU fused" in capsys.readouterr().out
