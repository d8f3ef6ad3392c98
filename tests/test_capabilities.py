"""kernels/capabilities.py: every question answered with a name or a one-line
reason, never an exception; the ISA overrides change the answers as the
kernels' own ISA selection does; without the C build every native CPU part
gives the build's reason and the dispatch follows the answers."""
import pytest

from fxnn.kernels import capabilities, native
from fxnn.kernels.capabilities import Capability, capability

DEVICES = ("cpu", "cuda", "cuda:1", "mps")
DTYPES = ("float32", "float64", "float16", "bfloat16")
built = pytest.mark.skipif(not hasattr(native.module, "fused_forward"),
                           reason="fxnn.kernels._fixed_cpu not built with its fused kernels (pip install -e .)")


@pytest.mark.parametrize("engine", capabilities.ENGINES)
@pytest.mark.parametrize("part", capabilities.PARTS)
def test_every_question_has_a_name_or_a_one_line_reason(part, engine):
    for device in DEVICES:
        for dtype in DTYPES:
            answer = capability(part, engine, device, dtype)
            assert isinstance(answer, Capability)
            assert (answer.name is None) != (answer.reason is None), answer
            words = str(answer)
            assert isinstance(words, str) and words and "\n" not in words
            assert bool(answer) == (words == answer.name)
            assert capability(part, engine, device, dtype) == answer
    for path in ("fused", "fixed", "folded"):
        assert capabilities.implementation(path, engine, "cpu", "float32")


def test_torch_dtypes_and_devices_ask_the_same_questions_as_their_names():
    torch = pytest.importorskip("torch")
    for part in capabilities.PARTS:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            name = str(dtype).removeprefix("torch.")
            assert capability(part, "torch", torch.device("cpu"), dtype) == capability(part, "torch", "cpu", name)


def test_an_unknown_part_or_engine_is_a_clear_error():
    with pytest.raises(ValueError, match="part 'conv'.*parts fixed, fused, block"):
        capability("conv")
    with pytest.raises(ValueError, match="engine 'jax'.*engines torch, pytensor"):
        capability("fixed", "jax")


def test_what_runs_nowhere_says_why():
    assert capability("fused", "torch", "cpu", "float64").reason == \
        "the C fused kernels take float32 or bfloat16 tensors, not float64"
    assert capability("fused", "pytensor", "cpu", "float64").reason == \
        "the PyTensor fused ops take float32, not float64"
    assert "CPU only" in capability("fixed", "pytensor", "cuda").reason
    assert capability("block", "torch", "mps").reason == "no native kernel of the block part for mps tensors"
    assert capabilities.paths("torch", "cpu", "float64") == ("fixed", "folded")
    assert capabilities.paths("pytensor", "cpu", "float64") == ("fixed", "folded")


@built
def test_forcing_an_isa_names_it_and_one_the_cpu_lacks_is_the_reason(monkeypatch):
    for isa in native.isas():
        monkeypatch.setenv(native.ISA_VARIABLE, isa)
        assert capability("fused").name == f"C fused kernel (kernels/fused_cpu.c), {isa}"
        assert capability("fused", "pytensor").name == f"PyTensor C op of kernels/fused_cpu.c, {isa}"
        assert capabilities.implementation("fused") == capability("fused").name
        assert capabilities.paths() == ("fused", "fixed", "folded")
    monkeypatch.setenv(native.ISA_VARIABLE, "sse9")
    with pytest.raises(RuntimeError) as error:
        native.isa()
    for engine in capabilities.ENGINES:
        answer = capability("fused", engine)
        assert not answer and answer.reason == str(error.value)
        assert answer.reason.startswith("FXNN_ISA=sse9: this CPU runs the fused kernels as")
        assert capabilities.paths(engine) == ("fixed", "folded")
    assert capability("fixed")  # the override concerns the fused kernels only
    monkeypatch.delenv(native.ISA_VARIABLE)
    assert capability("fused").name.endswith(native.isas()[0])


def test_a_bad_isa_override_stops_the_torch_fused_path_rather_than_falling_back(monkeypatch):
    torch = pytest.importorskip("torch")
    from fxnn.kernels import torch_fused
    if not hasattr(native.module, "fused_forward"):
        pytest.skip(native.WHY or "the extension predates the fused kernels")
    monkeypatch.setenv(native.ISA_VARIABLE, "sse9")
    with pytest.raises(RuntimeError, match="FXNN_ISA=sse9"):
        torch_fused.runs_fast("cpu", torch.float32)


@pytest.mark.skipif(not hasattr(native.module, "fused_forward_bf16"), reason="no bfloat16 fused kernels built")
def test_forcing_a_bf16_isa_names_it_and_stand_ins_alone_are_not_offered(monkeypatch):
    for isa in native.bf16_isas():
        monkeypatch.setenv(native.BF16_ISA_VARIABLE, isa)
        assert capability("fused", dtype="bfloat16").name == f"C fused bf16 kernel (kernels/fused_bf16_cpu.c), {isa}"
    monkeypatch.setenv(native.BF16_ISA_VARIABLE, "sse9")
    assert capability("fused", dtype="bfloat16").reason.startswith("FXNN_BF16_ISA=sse9: ")
    assert capability("fused")  # float32 keeps its own ISA
    monkeypatch.delenv(native.BF16_ISA_VARIABLE)
    best = native.bf16_isas()[0]
    answer = capability("fused", dtype="bfloat16")
    if best.endswith("_standin"):
        assert not answer and f"set FXNN_BF16_ISA={best} to use them anyway" in answer.reason
    else:
        assert answer.name.endswith(best)


def test_without_the_c_build_every_native_cpu_part_gives_the_builds_reason(without_c_build):
    for part, dtype in (("fixed", "float32"), ("fixed", "float64"), ("fused", "float32"), ("fused", "bfloat16"),
                        ("block", "float32"), ("block", "bfloat16")):
        assert capability(part, "torch", "cpu", dtype).reason == native.WHY
    assert capabilities.paths("torch") == ("fixed", "folded")
    assert capabilities.fixed_stage("torch") == f"separable torch ops (native kernel unavailable: {native.WHY})"
    assert capabilities.implementation("fixed") == capabilities.fixed_stage("torch") + ", then torch bmm"
    # PyTensor compiles the C sources itself; the ISA is then what the environment names
    if capability("fixed", "pytensor"):
        assert capability("fused", "pytensor").name == "PyTensor C op of kernels/fused_cpu.c, best ISA of this CPU"


def test_an_older_build_without_the_newer_kernels_says_rebuild(monkeypatch):
    class FixedStageOnly:  # an extension built before the fused and block kernels
        forward = adjoint = staticmethod(lambda *args: None)
    monkeypatch.setattr(native, "module", FixedStageOnly)
    capabilities.forget()
    try:
        assert capability("fixed").name == "C fixed stage (kernels/fixed_cpu.c)"
        assert capability("fused").reason == \
            "fxnn.kernels._fixed_cpu predates the fused kernels; rebuild it: pip install -e ."
        assert "predates the bfloat16 fused kernels" in capability("fused", dtype="bfloat16").reason
        assert "predates the block kernel" in capability("block").reason
    finally:
        monkeypatch.undo()
        capabilities.forget()
    assert bool(capability("fused")) == hasattr(native.module, "fused_forward")


def test_the_torch_dispatch_follows_the_answers(monkeypatch, request):
    """The fixed stage calls the C kernel exactly where the capability says
    it runs, the block likewise, and the torch paths offer fused likewise."""
    torch = pytest.importorskip("torch")
    from fxnn.kernels import cpu_fixed, torch_fixed
    from fxnn.models.torch import block
    from fxnn.models.torch.paths import available_paths
    calls = []
    monkeypatch.setattr(cpu_fixed, "fixed_forward", lambda x: calls.append(x) or torch_fixed.forward_torch(x))
    x = torch.randn(2, 3, 5, 4)
    for taken_away in (False, True):
        if taken_away:
            request.getfixturevalue("without_c_build")
            assert not capability("fixed") and not capability("block") and not capability("fused")
        for t in (x, x.double()):
            calls.clear()
            torch.testing.assert_close(torch_fixed.fixed_stage(t), torch_fixed.forward_torch(t))
            assert bool(calls) == bool(capability("fixed", "torch", "cpu", t.dtype))
        assert block.native_available(x) == bool(capability("block"))
        assert block.casts_to_native(x.bfloat16()) == bool(capability("block", dtype="bfloat16"))
        assert not block.native_available(x.double())
        assert ("fused" in available_paths(x)) == bool(capability("fused"))
