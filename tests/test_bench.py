"""The benchmarks' helpers, without timing anything: the machine's
description from /proc/cpuinfo's flags, the banner, the baseline and ratio
arithmetic of bench_fixed_layer, bench_network and bench_run, the GPU
check's summary and its quick exit without a GPU."""
import json
import os
import subprocess
import sys

import pytest

from bench import bench_network, bench_run, gpu_check, machine
from bench import bench_fixed_layer as layer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

INFO = {"cpu": "Some CPU", "machine": "x86_64", "threads": 2, "cores_visible": 2, "isa_flags": "avx512f",
        "vector_isa": "AVX-512", "matrix_engine": "AMX-BF16", "python": "3.11", "fused_isa": "avx512",
        "fma_peak_gflops": 200.0, "bf16_peak_gflops": 1000.0, "bf16_isa": "amx"}


@pytest.mark.parametrize("flags, engine, isa", [
    ("fpu avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile", "AMX-BF16", "AVX-512"),
    ("avx2 fma avx512f avx512_bf16", "AVX512-BF16", "AVX-512"),
    ("avx2 fma", "none", "AVX2+FMA"),
    ("sse2", "none", "no AVX2/AVX-512"),
])
def test_the_matrix_engine_and_vector_isa_come_from_the_flags(flags, engine, isa):
    assert machine.matrix_engine(flags.split()) == engine
    assert machine.vector_isa(flags.split()) == isa


def test_the_banner_names_the_cpu_engine_threads_and_both_peaks():
    lines = machine.banner(INFO).splitlines()
    assert len(lines) == 2
    assert "Some CPU" in lines[0] and "AMX-BF16" in lines[0] and "2 threads" in lines[0]
    assert "fp32 FMA peak 200.0" in lines[1] and "bf16 1000.0" in lines[1]
    assert machine.bf16_peak(INFO)[0] == 1000.0
    fallback = {k: v for k, v in INFO.items() if k != "bf16_peak_gflops"}
    assert machine.bf16_peak(fallback) == (None, None)
    assert "torch.mm" in machine.bf16_peak({**fallback, "bf16_gemm_gflops": 900.0})[1]


def test_describe_without_peaks_has_the_fields():
    info = machine.describe(1, peaks=False)
    for field in ("cpu", "threads", "vector_isa", "matrix_engine", "python"):
        assert field in info
    assert "fma_peak_gflops" not in info
    machine.banner(info)


def test_a_capped_onednn_is_named_in_the_banner(monkeypatch):
    """ONEDNN_MAX_CPU_ISA (e.g. AVX512_CORE_BF16: AMX off, an AVX512-BF16-only machine's
    oneDNN) changes what the dense baselines run, so the banner says so."""
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert "oneDNN" not in machine.banner(machine.describe(1, peaks=False))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    info = machine.describe(1, peaks=False)
    assert info["onednn_max_isa"] == "AVX512_CORE_BF16"
    assert "oneDNN capped at AVX512_CORE_BF16 (ONEDNN_MAX_CPU_ISA)" in machine.banner(info).splitlines()[0]


def samples(ms):
    return {k: [v / 1000] * 3 for k, v in ms.items()}


def test_the_layer_baseline_is_the_fastest_dense_and_ratios_follow():
    ms = {"dense fp32": 100.0, "dense fp32 cl": 80.0, "dense bf16 cl": 40.0,
          "fp32 fused": 60.0, "bf16 fused": 20.0, "bf16 folded": 44.0}
    row = layer.analyse("torch", "train", (64, 64, 64, 32), "goal", samples(ms), {}, INFO)
    assert row["baseline"] == "dense bf16 cl"
    assert row["same_precision_dense"] == {"fp32": "dense fp32 cl", "bf16": "dense bf16 cl"}
    assert row["vs_baseline"]["fp32 fused"] == pytest.approx(1.5)
    assert row["vs_same_precision"]["fp32 fused"] == pytest.approx(0.75)
    assert row["vs_baseline"]["bf16 fused"] == pytest.approx(0.5)
    # the fused kernels' rate on the 1x1 part against the peaks: 2 * 5MN * pixels * 3 flops
    flops = 2 * 5 * 64 * 64 * 64 * 32 * 32 * 3
    assert row["gemm_part_of_peak"]["bf16 fused"] == pytest.approx(flops / 0.020 / 1e9 / 1000.0)
    assert row["gemm_part_of_peak"]["fp32 fused"] == pytest.approx(flops / 0.060 / 1e9 / 200.0)
    layer.print_row(row, INFO)
    layer.print_summary([row])


def test_without_a_bf16_unit_dense_bf16_is_never_the_baseline():
    ms = {"dense fp32": 100.0, "dense fp32 cl": 80.0, "dense bf16 cl": 40.0, "bf16 fused": 30.0}
    row = layer.analyse("torch", "forward", (64, 32, 64, 14), "goal", samples(ms), {},
                        {**INFO, "matrix_engine": "none"})
    assert row["baseline"] == "dense fp32 cl"
    assert row["vs_same_precision"]["bf16 fused"] == pytest.approx(0.75)


def test_a_failed_contender_is_reported_not_timed():
    ms = {"dense fp32": 10.0}
    row = layer.analyse("torch", "train", (64, 1, 32, 28), "x", samples(ms),
                        {"bf16 fused": "failed: AttributeError"}, INFO)
    assert "bf16 fused" not in row["ms"] and row["notes"]["bf16 fused"].startswith("failed")
    assert "bf16 fused" not in row["gemm_part_of_peak"]
    layer.print_row(row, INFO)


def test_the_network_baseline_is_the_fastest_peer_per_pass():
    rows = {"peer fp32": (40.0, 10.0), "peer fp32 cl": (30.0, 12.0), "peer bf16 cl": (20.0, 15.0),
            "torch fp32 fxnn (fused)": (15.0, 6.0), "torch fp32 cnn": (30.0, 12.0),
            "torch bf16 fxnn (auto)": (10.0, 5.0), "torch bf16 cnn": (20.0, 10.0)}
    figures = bench_network.ratios(rows)
    assert figures["baseline"] == ["peer bf16 cl", "peer fp32"]
    assert figures["vs_baseline"]["torch bf16 fxnn (auto)"] == pytest.approx([0.5, 0.5])
    assert figures["same_precision_peer"]["fp32"] == ["peer fp32 cl", "peer fp32"]
    assert figures["vs_same_precision"]["torch fp32 fxnn (fused)"] == pytest.approx([0.5, 0.6])
    assert figures["fxnn_vs_cnn"]["torch bf16 fxnn (auto)"] == pytest.approx([0.5, 0.5])
    bench_network.print_table(rows, figures, {"torch bf16 fxnn (fused)": "failed: x"})


def test_the_run_baseline_is_the_fastest_cnn():
    figures = bench_run.summarise({"fxnn fp32": [10.0, 12.0, 11.0], "cnn fp32": [20.0, 20.0, 20.0],
                                   "fxnn bf16": [8.0], "cnn bf16": [16.0], "fxnn x": []})
    assert figures["baseline"] == "cnn bf16"
    assert figures["vs_baseline"]["fxnn fp32"] == pytest.approx(11 / 16)
    assert figures["fxnn_vs_cnn"] == pytest.approx({"fp32": 0.55, "bf16": 0.5})


def test_the_gpu_summary_takes_the_faster_dense_layout():
    rows = [{"B": 64, "M": 64, "N": 128, "H": 28, "W": 28, "precision": "bfloat16", "layout": layout,
             "dense_ms": dense, "fused_ms": fused}
            for layout, dense, fused in (("channels_last", 1.0, 0.7), ("nchw", 1.4, 0.6))]
    summary = gpu_check.layer_summary({"layer": rows})["64,64,128,28x28"]["bfloat16"]
    assert summary["baseline"] == "cuDNN channels_last" and summary["fused_layout"] == "nchw"
    assert summary["fused_over_best_dense"] == pytest.approx(0.6)
    assert gpu_check.layer_summary(None) == {}


def test_the_gpu_check_without_a_gpu_says_so_and_stops(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: the check would run")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no CUDA GPU" in done.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["gpu"] is False and "no CUDA GPU" in report["result"]
    assert report["environment"]["cuda_available"] is False
