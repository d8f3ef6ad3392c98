"""The bfloat16 fused layer of kernels/fused_bf16_cpu.c (through
fxnn.kernels._fixed_cpu) against the float64 numpy references of
kernels/fixed_kernels.py, computed from the bf16-rounded inputs: forward,
weight and bias gradient, input gradient, on odd shapes, at strides 1 and 2
(the stride-2 references: the stride-1 ones at the pixels (2i, 2j), dY
placed there in zeros), in every bf16
instruction set this CPU runs (amx and avx512bf16 where it has them, and the
portable stand-ins everywhere), with any thread count; the stand-ins'
emulation of one instruction against its definition; and the refusal of bad
calls (skipped where the extension is not built: conftest.native_module).

Tolerances are bounds, element by element, not guesses: the inputs are bf16
(exact in float32), the fixed stage is exact in float32 and rounded once to
bf16 (relative error at most u = 2^-8), products of bf16 are exact in
float32, a float32 sum of K terms in any order is off by at most K 2^-24
times the sum of their magnitudes, and the output is rounded once (u). So a
forward output is within u (|ref| + sum |W| |X5|) + K 2^-24 sum |W| |X5| of
the float64 reference, and likewise for the gradients.
"""
import os

import numpy as np
import pytest
from conftest import native_module
from fused_cases import SHAPES as COMMON_SHAPES
from fused_cases import (STRIDED_SHAPES, assert_bad_buffers_refused, assert_isas_refused, build_extension,
                         cpu_flags, shape_id)

from fxnn.kernels.fixed_kernels import (NUM_KERNELS, fixed_conv_grad_reference, fixed_conv_reference,
                                        fixed_stage_reference)

_fixed_cpu = native_module()

if not hasattr(_fixed_cpu, "fused_forward_bf16"):
    pytest.skip("fxnn.kernels._fixed_cpu predates the bf16 kernels; rebuild it: pip install -e .",
                allow_module_level=True)

ISAS = _fixed_cpu.bf16_isas()
U = 2.0 ** -8           # unit roundoff of bfloat16 (8 significant bits), round to nearest
NAN = np.uint16(0x7FC0)  # a bf16 NaN: an output element left unwritten fails

#: (B, M, N, H, W): the shared odd shapes (here M = 70 is 11 chunks of the
#: forward's K and three 32-channel passes of the input gradient, N = 33 two
#: K chunks of the input gradient) and a 40x3 image.
SHAPES = COMMON_SHAPES + [(1, 2, 7, 40, 3)]


def to_bf16(a):
    """float32 -> bf16 bits (uint16), rounded to nearest even."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def to_f64(bits):
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def layer(shape, seed=0):
    b, m, n, h, w = shape
    rng = np.random.default_rng(seed)
    bf = lambda *s: to_bf16(rng.standard_normal(s))  # noqa: E731
    return bf(b, m, h, w), bf(NUM_KERNELS * m, n), bf(n), bf(b, n, h, w)


def run(x, w, bias, dy, isa, threads=2, stride=1):
    """(y, dx, dw, db) as bf16 bits, outputs pre-filled with NaN; dy is the
    output's (B, N, Ho, Wo)."""
    y = np.full(dy.shape, NAN)
    dx = np.full(x.shape, NAN)
    dw, db = np.full(w.shape, NAN), np.full(w.shape[1], NAN)
    _fixed_cpu.fused_forward_bf16(x, w, bias, y, threads, isa, stride)
    _fixed_cpu.fused_dgrad_bf16(dy, w, dx, threads, isa, stride)
    _fixed_cpu.fused_wgrad_bf16(x, dy, dw, db, threads, isa, stride)
    return y, dx, dw, db


def within(got, want, magnitude, terms):
    """got (bf16 bits) within the bound of the module docstring of want."""
    got = to_f64(got)
    assert not np.isnan(got).any(), "an output element was left unwritten (NaN)"
    bound = U * 1.01 * (np.abs(want) + magnitude) + terms * 2.0 ** -24 * magnitude + 1e-30
    bad = np.abs(got - want) > bound
    assert not bad.any(), (f"{bad.sum()} of {bad.size} elements out of bounds; worst excess "
                           f"{np.max(np.abs(got - want) - bound):.3g}")


def check(x, w, bias, dy, y, dx, dw, db, stride=1):
    x64, w64, c5 = to_f64(x), to_f64(w), w.shape[0]
    dy64 = np.zeros(dy.shape[:2] + x.shape[2:])  # dY at the pixels (s i, s j), zeros elsewhere
    dy64[:, :, ::stride, ::stride] = to_f64(dy)
    b64 = None if bias is None else to_f64(bias)
    absx5 = np.abs(fixed_stage_reference(x64))
    sub = (slice(None), slice(None), slice(None, None, stride), slice(None, None, stride))
    within(y, fixed_conv_reference(x64, w64, b64)[sub],
           np.einsum("bchw,cn->bnhw", absx5, np.abs(w64))[sub]
           + (0 if b64 is None else np.abs(b64)[None, :, None, None]), c5 + 1)
    want_dx, want_dw, want_db = fixed_conv_grad_reference(x64, w64, dy64)
    pixels = dy.shape[0] * dy.shape[2] * dy.shape[3]
    within(dw, want_dw, np.einsum("bchw,bnhw->cn", absx5, np.abs(dy64)), pixels)
    if db is not None:
        # the bias gradient: inputs exact, so only the float32 sum and the rounding
        got = to_f64(db)
        assert not np.isnan(got).any()
        mag = np.abs(dy64).sum(axis=(0, 2, 3))
        assert np.all(np.abs(got - want_db) <= U * 1.01 * np.abs(want_db) + pixels * 2.0 ** -24 * mag + 1e-30)
    # the input gradient: W dY in float32 (N terms), the adjoint stencil (at most 16 of
    # those, with weights summing to 36 in magnitude), one rounding
    gmag = np.einsum("cn,bnhw->bchw", np.abs(w64), np.abs(dy64)).reshape(
        dy.shape[0], c5 // NUM_KERNELS, NUM_KERNELS, *dy64.shape[2:]).sum(axis=2).max()
    got = to_f64(dx)
    assert not np.isnan(got).any(), "an input gradient element was left unwritten"
    bound = U * 1.01 * np.abs(want_dx) + 36 * (w.shape[1] + 16) * 2.0 ** -24 * gmag + 1e-30
    assert np.all(np.abs(got - want_dx) <= bound), np.max(np.abs(got - want_dx) - bound)


def test_the_isas_are_listed_best_first_with_the_standins_last():
    assert ISAS[-2:] == ["amx_standin", "avx512bf16_standin"]
    assert set(ISAS) <= {"amx", "avx512bf16", "amx_standin", "avx512bf16_standin"}
    flags = cpu_flags()
    if "amx" in ISAS:
        assert {"amx_bf16", "amx_tile", "avx512_bf16"} <= set(flags)
    if "avx512bf16" in ISAS:
        assert {"avx512_bf16", "avx512f", "avx512bw", "avx512vl"} <= set(flags)
    elif flags:  # the kernel may hide AMX (no permission), never AVX512-BF16
        assert "avx512_bf16" not in flags or "avx512vl" not in flags


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_forward_and_gradients_match_the_references(shape, isa):
    x, w, bias, dy = layer(shape)
    check(x, w, bias, dy, *run(x, w, bias, dy, isa))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", STRIDED_SHAPES, ids=shape_id)
def test_strided_forward_and_gradients_match_the_references(shape, isa):
    b, m, n, h, w = shape
    x, wt, bias, _ = layer(shape)
    dy = to_bf16(np.random.default_rng(1).standard_normal((b, n, (h - 1) // 2 + 1, (w - 1) // 2 + 1)))
    check(x, wt, bias, dy, *run(x, wt, bias, dy, isa, stride=2), stride=2)


@pytest.mark.parametrize("isa", ISAS)
def test_without_bias_and_int16_buffers(isa):
    """torch hands bf16 tensors over as int16 (t.view(torch.int16).numpy())."""
    x, w, _, dy = layer((2, 3, 5, 6, 7), seed=1)
    y = np.full((2, 5, 6, 7), NAN).view(np.int16)
    _fixed_cpu.fused_forward_bf16(x.view(np.int16), w.view(np.int16), None, y, 1, isa)
    dw = np.full(w.shape, NAN)
    _fixed_cpu.fused_wgrad_bf16(x, dy.view(np.int16), dw, None, 1, isa)
    x64, w64 = to_f64(x), to_f64(w)
    absx5 = np.abs(fixed_stage_reference(x64))
    within(y.view(np.uint16), fixed_conv_reference(x64, w64), np.einsum("bchw,cn->bnhw", absx5, np.abs(w64)), 15)
    within(dw, fixed_conv_grad_reference(x64, w64, to_f64(dy))[1],
           np.einsum("bchw,bnhw->cn", absx5, np.abs(to_f64(dy))), 84)


@pytest.mark.parametrize("isa", ISAS)
def test_the_thread_count_changes_no_number(isa):
    """Each output element is computed by one micro-kernel call in a fixed
    order; the weight gradient's partial sums are over groups fixed by the size."""
    shape = (5, 13, 11, 17, 19) if not isa.endswith("standin") else (3, 7, 11, 17, 19)
    x, w, bias, dy = layer(shape, seed=2)
    one = run(x, w, bias, dy, isa, 1)
    for threads in (2, 3, 7):
        for got, want in zip(run(x, w, bias, dy, isa, threads), one):
            np.testing.assert_array_equal(got, want)


def test_the_real_instructions_agree_with_their_standins():
    """Same packing and blocking; only the hardware's summation order may differ."""
    x, w, bias, dy = layer((3, 6, 20, 15, 17), seed=3)
    for real in {"amx", "avx512bf16"} & set(ISAS):
        got, want = run(x, w, bias, dy, real), run(x, w, bias, dy, real + "_standin")
        for g, s in zip(got, want):
            np.testing.assert_allclose(to_f64(g), to_f64(s), rtol=2 * U, atol=1e-6 * np.abs(to_f64(s)).max())


def test_the_emulated_tile_product_is_the_instructions_definition():
    """TDPBF16PS (Intel SDM): for each row m, for k ascending, for each column n,
    c[m][n] += a[m][2k] b[k][2n], then += a[m][2k+1] b[k][2n+1], in float32."""
    rng = np.random.default_rng(5)
    a, b = to_bf16(rng.standard_normal((16, 32)) * 4), to_bf16(rng.standard_normal((16, 32)))
    c = rng.standard_normal((16, 16)).astype(np.float32)
    want = c.copy()
    af, bf = to_f64(a).astype(np.float32), to_f64(b).astype(np.float32)
    for k in range(16):
        want = (want + af[:, 2 * k, None] * bf[None, k, 0::2]).astype(np.float32)
        want = (want + af[:, 2 * k + 1, None] * bf[None, k, 1::2]).astype(np.float32)
    _fixed_cpu.bf16_emulate("tdpbf16ps", a, b, c)
    np.testing.assert_array_equal(c, want)


def test_the_emulated_vector_product_is_the_instructions_definition():
    """VDPBF16PS (Intel SDM): c[j] += a[2j+1] b[2j+1], then += a[2j] b[2j], in float32."""
    rng = np.random.default_rng(6)
    a, b = to_bf16(rng.standard_normal(32) * 100), to_bf16(rng.standard_normal(32))
    c = rng.standard_normal(16).astype(np.float32)
    af, bf = to_f64(a).astype(np.float32), to_f64(b).astype(np.float32)
    want = ((c + af[1::2] * bf[1::2]).astype(np.float32) + af[0::2] * bf[0::2]).astype(np.float32)
    _fixed_cpu.bf16_emulate("vdpbf16ps", a, b, c)
    np.testing.assert_array_equal(c, want)


def test_rounding_is_to_nearest_even_from_float32():
    """A 1x1 layer that picks the identity channel, weight 1 and a bias: y =
    x + bias rounded once from float32 (ties to even), as numpy rounds it."""
    rng = np.random.default_rng(7)
    x = to_bf16(rng.standard_normal((1, 1, 4, 8)))
    w = np.zeros((NUM_KERNELS, 1), np.uint16)
    w[4, 0] = to_bf16(np.ones(1))[0]
    bias = to_bf16(np.array([2.0 ** -9 * 3]))
    want = to_bf16((to_f64(x) + to_f64(bias)[0]).astype(np.float32))
    for isa in ISAS:
        y = np.full((1, 1, 4, 8), NAN)
        _fixed_cpu.fused_forward_bf16(x, w, bias, y, 1, isa)
        np.testing.assert_array_equal(y, want)


def test_an_isa_the_cpu_lacks_or_an_unknown_one_is_refused():
    x, w, bias, _ = layer((1, 1, 2, 3, 3))
    assert_isas_refused(_fixed_cpu.fused_forward_bf16, x, w, bias, "unknown bf16 instruction set",
                        ("amx", "avx512bf16"), ISAS)


def test_an_unsupported_isa_from_the_environment_is_a_one_line_error(monkeypatch):
    from fxnn.kernels import native
    monkeypatch.setenv("FXNN_BF16_ISA", "sse9")
    with pytest.raises(RuntimeError) as e:
        native.bf16_isa()
    assert "\n" not in str(e.value) and "FXNN_BF16_ISA=sse9" in str(e.value)
    monkeypatch.setenv("FXNN_BF16_ISA", ISAS[-1])
    assert native.bf16_isa() == ISAS[-1]


def test_bad_buffers_are_refused_not_read():
    x, w, bias, dy = layer((2, 3, 4, 5, 6))
    y = np.zeros((2, 4, 5, 6), np.uint16)
    dw, db = np.zeros(w.shape, np.uint16), np.zeros(4, np.uint16)
    isa = ISAS[0]
    with pytest.raises(ValueError, match="bfloat16"):
        _fixed_cpu.fused_forward_bf16(to_f64(x).astype(np.float32), w, bias, y, 1, isa)
    with pytest.raises(ValueError, match="bfloat16"):
        _fixed_cpu.fused_forward_bf16(x, w, bias, y.astype(np.float16), 1, isa)
    with pytest.raises(ValueError, match="bfloat16"):
        _fixed_cpu.fused_wgrad_bf16(x.astype(np.uint32), dy, dw, db, 1, isa)
    assert_bad_buffers_refused(_fixed_cpu.fused_forward_bf16, _fixed_cpu.fused_wgrad_bf16,
                               _fixed_cpu.fused_dgrad_bf16, x, w, bias, dy, isa)
    with pytest.raises(ValueError, match="dimensions"):
        _fixed_cpu.fused_forward_bf16(x[0], w, bias, y, 1, isa)
    with pytest.raises(ValueError, match="dw must be"):
        _fixed_cpu.fused_wgrad_bf16(x, dy, dw[1:], db, 1, isa)
    with pytest.raises(ValueError, match=r"\(5M, N\)"):
        _fixed_cpu.fused_dgrad_bf16(dy, w[:, :-1].copy(), np.zeros((2, 3, 5, 6), np.uint16), 1, isa)
    with pytest.raises(ValueError, match="unknown instruction"):
        _fixed_cpu.bf16_emulate("vfmadd", x, w, np.zeros(16, np.float32))


def test_the_matrix_peak_is_measured():
    for isa in ISAS[:2]:
        assert _fixed_cpu.matrix_peak(isa, 1, 0.01) > 0.001  # GFLOP/s


def test_the_torch_launcher_takes_bf16_tensors():
    torch = pytest.importorskip("torch")
    from fxnn.kernels import cpu_fused
    x, w, bias, dy = layer((2, 3, 5, 6, 7), seed=8)
    t = lambda a: torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)  # noqa: E731
    y = cpu_fused.forward(t(x), t(w), t(bias))
    dw, db = cpu_fused.weight_grad(t(x), t(dy))
    dx = cpu_fused.input_grad(t(dy), t(w))
    assert (y.dtype, dw.dtype, db.dtype, dx.dtype) == (torch.bfloat16,) * 4
    assert (y.shape, dw.shape, db.shape, dx.shape) == ((2, 5, 6, 7), (15, 5), (5,), (2, 3, 6, 7))
    bits = lambda a: a.view(torch.int16).numpy().view(np.uint16)  # noqa: E731
    check(x, w, bias, dy, bits(y), bits(dx), bits(dw), bits(db))
    with pytest.raises(ValueError, match="all tensors float32 or all bfloat16"):
        cpu_fused.forward(t(x), t(w).float())
    from fxnn.kernels.capabilities import capability
    bf16 = capability("fused", "torch", "cpu", "bfloat16")
    assert bool(bf16) == bool({"amx", "avx512bf16"} & set(ISAS)) or os.environ.get("FXNN_BF16_ISA"), bf16.reason


@pytest.fixture(scope="module")
def standins_only(tmp_path_factory):
    """The extension as a compiler without AMX or AVX512-BF16 support builds
    it (-DFXB_HAVE_AMX=0 -DFXB_HAVE_AVX512BF16=0): the stand-ins alone. Needs
    a C compiler and Python's headers."""
    return build_extension(tmp_path_factory, "bf16_standins", ["-DFXB_HAVE_AMX=0", "-DFXB_HAVE_AVX512BF16=0"],
                           "the stand-ins alone")


def test_a_build_without_the_instructions_runs_the_standins(standins_only):
    assert standins_only.bf16_isas() == ["amx_standin", "avx512bf16_standin"]
    x, w, bias, dy = layer((2, 3, 17, 7, 9), seed=9)
    for isa in ("amx_standin", "avx512bf16_standin"):
        y = np.full((2, 17, 7, 9), NAN)
        standins_only.fused_forward_bf16(x, w, bias, y, 2, isa)
        np.testing.assert_array_equal(y, run(x, w, bias, dy, isa)[0])  # the same C, bit for bit
    y = np.zeros((2, 17, 7, 9), np.uint16)
    for isa in ("amx", "avx512bf16"):
        with pytest.raises(ValueError, match=f"does not support the {isa} kernels"):
            standins_only.fused_forward_bf16(x, w, bias, y, 1, isa)
