"""The fused layer of kernels/fused_cpu.c (through fxnn.kernels._fixed_cpu) against
the float64 numpy references of kernels/fixed_kernels.py: forward, weight and
bias gradient, input gradient, on odd shapes, at strides 1 and 2, in
every instruction set this CPU runs, with any thread count, on NCHW and on
channels_last (NHWC) buffers; and its refusal of bad buffers (skipped
where the extension is not built: conftest.native_module)."""
import numpy as np
import pytest
from conftest import native_module
from fused_cases import SHAPES as COMMON_SHAPES
from fused_cases import (STRIDED_SHAPES, assert_bad_buffers_refused, assert_isas_refused, build_extension,
                         cpu_flags, shape_id)

from fxnn.kernels.fixed_kernels import NUM_KERNELS, fixed_conv_grad_reference, fixed_conv_reference

_fixed_cpu = native_module()

ISAS = _fixed_cpu.isas()

#: (B, M, N, H, W): the shared odd shapes and a 300x3 image.
SHAPES = COMMON_SHAPES + [(1, 2, 7, 300, 3)]


def layer(shape, seed=0):
    b, m, n, h, w = shape
    rng = np.random.default_rng(seed)
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    return f32(b, m, h, w), f32(NUM_KERNELS * m, n), f32(n), f32(b, n, h, w)


def run(x, w, bias, dy, isa, threads=2, kernels=_fixed_cpu, stride=1, nhwc=False):
    """(y, dx, dw, db) from the three kernels of module ``kernels``, outputs
    pre-filled with NaN so that any element a kernel leaves unwritten fails
    the comparison; dy is the output's (B, N, Ho, Wo). ``nhwc``: the kernels
    get (and give) the 4-D tensors as (B, H, W, C) buffers, channels_last
    memory; the results come back as (B, C, H, W) arrays."""
    if nhwc:
        to, back = (lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))), (lambda a: a.transpose(0, 3, 1, 2))
    else:
        to = back = lambda a: a  # noqa: E731
    extra = [stride, True] if nhwc else [stride] if stride != 1 else []
    x, dy = to(x), to(dy)
    y = np.full(dy.shape, np.nan, np.float32)
    dx = np.full(x.shape, np.nan, np.float32)
    dw, db = np.full(w.shape, np.nan, np.float32), np.full(w.shape[1], np.nan, np.float32)
    kernels.fused_forward(x, w, bias, y, threads, isa, *extra)
    kernels.fused_dgrad(dy, w, dx, threads, isa, *extra)
    kernels.fused_wgrad(x, dy, dw, db, threads, isa, *extra)
    return back(y), back(dx), dw, db


def strided_layer(shape, stride, seed=0):
    """x, w, bias and the output's dy (B, N, Ho, Wo) at ``stride``."""
    b, m, n, h, w = shape
    x, wt, bias, _ = layer(shape, seed)
    dy = np.random.default_rng(seed + 1).standard_normal((b, n, (h - 1) // stride + 1, (w - 1) // stride + 1))
    return x, wt, bias, dy.astype(np.float32)


def strided_references(x, w, bias, dy, stride):
    """(y, dx, dw, db) at ``stride`` from the stride-1 float64 references:
    y at the pixels (s i, s j); the gradients of dY placed there in zeros."""
    full = np.zeros(dy.shape[:2] + x.shape[2:])
    full[:, :, ::stride, ::stride] = dy
    return (fixed_conv_reference(x, w, bias)[:, :, ::stride, ::stride],) + fixed_conv_grad_reference(x, w, full)


def close(got, want):
    """float32 sums of up to a few thousand terms against float64."""
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * scale)


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_forward_and_gradients_match_the_references(shape, isa, nhwc):
    x, w, bias, dy = layer(shape)
    y, dx, dw, db = run(x, w, bias, dy, isa, nhwc=nhwc)
    close(y, fixed_conv_reference(x, w, bias))
    want_dx, want_dw, want_db = fixed_conv_grad_reference(x, w, dy)
    close(dx, want_dx)
    close(dw, want_dw)
    close(db, want_db)


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", STRIDED_SHAPES, ids=shape_id)
def test_strided_forward_and_gradients_match_the_references(shape, isa, nhwc):
    x, w, bias, dy = strided_layer(shape, 2)
    for got, want in zip(run(x, w, bias, dy, isa, stride=2, nhwc=nhwc), strided_references(x, w, bias, dy, 2)):
        close(got, want)


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("isa", ISAS)
def test_strided_numbers_do_not_depend_on_the_thread_count(isa, nhwc):
    x, w, bias, dy = strided_layer((5, 13, 11, 17, 19), 2, seed=4)
    seven, one = (run(x, w, bias, dy, isa, threads, stride=2, nhwc=nhwc) for threads in (7, 1))
    for got, want in zip(seven, one):
        np.testing.assert_array_equal(got, want)


def test_a_bad_stride_or_a_shape_of_another_stride_is_refused():
    x, w, bias, dy = strided_layer((1, 2, 3, 7, 8), 2)
    y = np.zeros(dy.shape, np.float32)
    for stride in (0, 3):
        with pytest.raises(ValueError, match=f"the fused kernels run stride 1 or 2, got {stride}"):
            _fixed_cpu.fused_forward(x, w, bias, y, 1, ISAS[0], stride)
    with pytest.raises(ValueError, match=r"y must be \(B, N, Ho, Wo\)"):
        _fixed_cpu.fused_forward(x, w, bias, y, 1, ISAS[0])
    with pytest.raises(ValueError, match=r"dy must be \(B, N, Ho, Wo\)"):
        _fixed_cpu.fused_wgrad(x, dy, np.zeros(w.shape, np.float32), None, 1, ISAS[0])
    with pytest.raises(ValueError, match=r"dx must be \(B, M, H, W\) for dy of shape \(B, N, Ho, Wo\)"):
        _fixed_cpu.fused_dgrad(dy, w, np.zeros((1, 2, 9, 8), np.float32), 1, ISAS[0], 2)


@pytest.mark.parametrize("isa", ISAS)
def test_without_bias(isa):
    x, w, _, dy = layer((2, 3, 5, 6, 7), seed=1)
    y = np.full((2, 5, 6, 7), np.nan, np.float32)
    _fixed_cpu.fused_forward(x, w, None, y, 1, isa)
    close(y, fixed_conv_reference(x, w))
    dw = np.full(w.shape, np.nan, np.float32)
    _fixed_cpu.fused_wgrad(x, dy, dw, None, 1, isa)
    close(dw, fixed_conv_grad_reference(x, w, dy)[1])


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("threads", [2, 3, 7, 64])
def test_the_thread_count_changes_no_number(isa, threads, nhwc):
    """Every output element is computed by one thread in a fixed order, and
    the weight gradient's partial sums are over groups fixed by the size
    (in channels_last too, where more pixels than one group's minimum give
    several groups)."""
    shape = (9, 13, 11, 23, 21) if nhwc else (5, 13, 11, 17, 19)
    x, w, bias, dy = layer(shape, seed=2)
    for got, want in zip(run(x, w, bias, dy, isa, threads, nhwc=nhwc), run(x, w, bias, dy, isa, 1, nhwc=nhwc)):
        np.testing.assert_array_equal(got, want)


def test_channels_last_buffers_of_the_wrong_shape_are_refused():
    """The shape errors speak of the tensors, (B, C, H, W), not of the
    channels_last buffers' (B, H, W, C) order."""
    x, w, bias, dy = layer((2, 3, 4, 5, 6))
    nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # noqa: E731
    with pytest.raises(ValueError, match=r"y must be \(B, N, Ho, Wo\)"):
        _fixed_cpu.fused_forward(nhwc(x), w, bias, np.zeros((2, 5, 6, 5), np.float32), 1, ISAS[0], 1, True)
    with pytest.raises(ValueError, match=r"\(5M, N\)"):
        _fixed_cpu.fused_forward(nhwc(x), w[:-1], bias, nhwc(np.zeros((2, 4, 5, 6), np.float32)), 1, ISAS[0], 1, True)
    with pytest.raises(ValueError, match="dx must be"):
        _fixed_cpu.fused_dgrad(nhwc(dy), w, np.zeros((2, 5, 5, 3), np.float32), 1, ISAS[0], 1, True)


def test_every_isa_this_cpu_runs_agrees_with_the_portable_one():
    assert ISAS[-1] == "portable"
    x, w, bias, dy = layer((3, 6, 20, 15, 17), seed=3)
    portable = run(x, w, bias, dy, "portable")
    for isa in ISAS:
        for got, want in zip(run(x, w, bias, dy, isa), portable):
            close(got, want)


def test_isas_name_what_the_cpu_supports():
    flags = cpu_flags()
    assert ("avx512" in ISAS) == ("avx512f" in flags)
    assert ("avx2" in ISAS) == ("avx2" in flags and "fma" in flags)


def test_an_isa_the_cpu_lacks_or_an_unknown_one_is_refused():
    x, w, bias, _ = layer((1, 1, 2, 3, 3))
    assert_isas_refused(_fixed_cpu.fused_forward, x, w, bias, "unknown instruction set", ("avx512", "avx2"), ISAS)


def test_bad_buffers_are_refused_not_read():
    x, w, bias, dy = layer((2, 3, 4, 5, 6))
    y = np.zeros((2, 4, 5, 6), np.float32)
    with pytest.raises(ValueError, match="float32"):
        _fixed_cpu.fused_forward(x.astype(np.float64), w, bias, y, 1, ISAS[0])
    assert_bad_buffers_refused(_fixed_cpu.fused_forward, _fixed_cpu.fused_wgrad, _fixed_cpu.fused_dgrad,
                               x, w, bias, dy, ISAS[0])


def test_the_fma_peak_is_measured():
    one = _fixed_cpu.fma_peak(ISAS[0], 1, 0.02)
    assert one > 0.1  # GFLOP/s: any CPU of this century


def test_the_fixed_stage_is_still_what_the_fused_kernels_pack():
    """A 1x1 weight that picks one fixed-stage channel gives that channel."""
    x, _, _, _ = layer((2, 2, 1, 9, 8), seed=4)
    from fxnn.kernels.fixed_kernels import fixed_stage_reference
    x5 = fixed_stage_reference(x.astype(np.float64))
    for c in range(NUM_KERNELS * 2):
        w = np.zeros((NUM_KERNELS * 2, 1), np.float32)
        w[c, 0] = 1.0
        y = np.zeros((2, 1, 9, 8), np.float32)
        _fixed_cpu.fused_forward(x, w, None, y, 1, ISAS[0])
        close(y[:, 0], x5[:, c])


@pytest.fixture(scope="module")
def avx512_standin(tmp_path_factory):
    """The extension built with FXNN_AVX512_STANDIN: the AVX-512 build's
    geometry (16-float vectors, its tiles and blocking) in portable code, so
    that a machine without AVX-512 checks the index arithmetic that build runs
    on machines with it. Needs a C compiler and Python's headers."""
    return build_extension(tmp_path_factory, "standin", ["-DFXNN_AVX512_STANDIN"], "the AVX-512 stand-in")


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_the_avx512_geometry_matches_the_references(avx512_standin, shape, nhwc):
    assert avx512_standin.isas()[-1] == "avx512_standin"  # listed, never the best
    x, w, bias, dy = layer(shape)
    y, dx, dw, db = run(x, w, bias, dy, "avx512_standin", kernels=avx512_standin, nhwc=nhwc)
    close(y, fixed_conv_reference(x, w, bias))
    for got, want in zip((dx, dw, db), fixed_conv_grad_reference(x, w, dy)):
        close(got, want)


@pytest.mark.parametrize("nhwc", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", STRIDED_SHAPES, ids=shape_id)
def test_the_avx512_geometry_matches_the_references_at_stride_2(avx512_standin, shape, nhwc):
    x, w, bias, dy = strided_layer(shape, 2)
    for got, want in zip(run(x, w, bias, dy, "avx512_standin", kernels=avx512_standin, stride=2, nhwc=nhwc),
                         strided_references(x, w, bias, dy, 2)):
        close(got, want)
