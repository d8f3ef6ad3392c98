/* The fused fxnn layer in bfloat16 for one matrix instruction set: packing
 * (the fixed stage, straight into the operand layout), the micro-kernel and
 * the three drivers (forward, weight gradient, input gradient).
 *
 * kernels/fused_bf16_cpu.c includes this file once per instruction set, with:
 *   FXB_ISA      name suffix of everything defined here (amx, avx512bf16,
 *                amx_standin, avx512bf16_standin)
 *   FXB_KIND     FXB_AMX or FXB_DP: the instruction the micro-kernel uses,
 *                TDPBF16PS on tiles or VDPBF16PS on vectors
 *   FXB_REAL     1: the instructions themselves (and AVX-512 packing);
 *                0: plain C that emulates them exactly (the stand-ins)
 *   FXB_TARGET   function attribute that enables the instruction set
 * and undefines them at its end.
 *
 * Operands (all bf16, as uint16_t): a "tile" is 16 rows of 32 bf16 (64
 * bytes a row, 1 KiB), the shape of one AMX operand tile. The micro-kernel
 * multiplies two A tiles (16 rows each, 32 values of the reduction index K
 * a row) by two B tiles (16 "pair rows", each 16 columns x 2 consecutive K
 * values, the VNNI layout) into 2x2 C tiles of 16x16 floats, over `chunks`
 * chunks of 32 K, the chunk ch of an operand at base + ch * 512.
 *
 *   forward  C (n x pixel)  A = W^T (n x K), B = fixed stage of 16 pixels,
 *            K ordered (channel pair mp, kernel k, m parity): pair row
 *            P = 5 mp + k holds channels 2mp and 2mp+1 of kernel k
 *   dgrad    C (c x pixel)  A = W (c x n),   B = dY, pair row = (n, n+1)
 *   wgrad    C (c x n)      A = fixed stage rows (c x pixels),
 *                           B = dY, pair row = (pixel, pixel+1)
 *
 * Pixels: g = b * HWp + p with HWp = Ho*Wo (the output's pixels) rounded up
 * to 16, so no group of 16 pixels crosses images; padding lanes are zero in
 * every packed operand and never stored. With stride s, output pixel (i, j)
 * is the fixed stage at input pixel (s i, s j) (fused_cpu.c); at stride 1
 * the two coincide.
 */
#define FXB_CAT2(a, b) a##_##b
#define FXB_CAT(a, b) FXB_CAT2(a, b)
#define FXB(name) FXB_CAT(name, FXB_ISA)
#define FXB_INLINE FXB_TARGET static inline __attribute__((always_inline))

typedef float FXB(vf) __attribute__((vector_size(64)));
typedef int FXB(vi) __attribute__((vector_size(64)));
typedef unsigned int FXB(vu) __attribute__((vector_size(64)));
typedef unsigned short FXB(vh) __attribute__((vector_size(32)));
typedef float FXB(vf_u) __attribute__((vector_size(64), aligned(4), may_alias));
typedef int FXB(vi_u) __attribute__((vector_size(64), aligned(4), may_alias));
typedef unsigned int FXB(vu_u) __attribute__((vector_size(64), aligned(4), may_alias));
typedef unsigned short FXB(vh_u) __attribute__((vector_size(32), aligned(2), may_alias));

FXB_INLINE FXB(vf) FXB(lanes_below)(long count)  /* -1 in lanes < count, as a mask */
{
    FXB(vi) lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    return (FXB(vf))(lane < (int)count);
}

FXB_INLINE FXB(vf) FXB(mask)(FXB(vf) v, FXB(vi) m) { return (FXB(vf))((FXB(vi))v & m); }

/* 16 bf16 to floats (exact). */
FXB_INLINE FXB(vf) FXB(widen)(FXB(vh) h) { return (FXB(vf))(__builtin_convertvector(h, FXB(vu)) << 16); }
FXB_INLINE FXB(vf) FXB(load)(const uint16_t *p) { return FXB(widen)(*(const FXB(vh_u) *)p); }

/* x[q .. q+16) as floats, zero where outside [0, n), touching no memory there. */
FXB_INLINE FXB(vf) FXB(load_inside)(const uint16_t *x, long q, long n)
{
    long lo = q < 0 ? -q : 0, hi = n - q < 16 ? n - q : 16;
#if FXB_REAL
    __mmask16 m = hi <= lo ? 0 : (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u));
    return FXB(widen)((FXB(vh))_mm256_maskz_loadu_epi16(m, x + q));
#else
    FXB(vh) h = {0};
    long i;
    for (i = lo; i < hi; i++) h[i] = x[q + i];
    return FXB(widen)(h);
#endif
}

/* The first `count` of 16 bf16 to dst. */
FXB_INLINE void FXB(store_partial)(uint16_t *dst, FXB(vh) v, int count)
{
#if FXB_REAL
    _mm256_mask_storeu_epi16(dst, (__mmask16)((1u << count) - 1u), (__m256i)v);
#else
    int j;
    for (j = 0; j < count; j++) dst[j] = v[j];
#endif
}

/* Floats to bf16, rounded to nearest even (NaN stays NaN, quietened): the
 * conversion of VCVTNEPS2BF16, emulated in integers for the stand-ins. */
FXB_INLINE FXB(vu) FXB(round_bits)(FXB(vf) v)
{
    FXB(vu) u = (FXB(vu))v, r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    FXB(vu) nan = (FXB(vu))((u & 0x7fffffffu) > 0x7f800000u);
    return (r & ~nan) | (((u >> 16) | 0x40u) & nan);
}

/* 16 floats to 16 bf16. */
FXB_INLINE FXB(vh) FXB(narrow)(FXB(vf) v)
{
#if FXB_REAL
    return (FXB(vh))_mm512_cvtneps_pbh((__m512)v);
#else
    return __builtin_convertvector(FXB(round_bits)(v), FXB(vh));
#endif
}

/* 32 floats (lo, then hi) to 32 bf16 at dst. */
FXB_INLINE void FXB(store32)(uint16_t *dst, FXB(vf) lo, FXB(vf) hi)
{
#if FXB_REAL
    _mm512_storeu_si512(dst, (__m512i)_mm512_cvtne2ps_pbh((__m512)hi, (__m512)lo));
#else
    *(FXB(vh_u) *)dst = FXB(narrow)(lo);
    *(FXB(vh_u) *)(dst + 16) = FXB(narrow)(hi);
#endif
}

/* Two channels' 16 floats to one VNNI pair row: lane j = bf16(even[j]) | bf16(odd[j]) << 16. */
FXB_INLINE FXB(vu) FXB(pair)(FXB(vf) even, FXB(vf) odd)
{
#if FXB_REAL
    const short idx[32] __attribute__((aligned(64))) = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                        8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    __m512i r = (__m512i)_mm512_cvtne2ps_pbh((__m512)odd, (__m512)even);  /* low half: even */
    return (FXB(vu))_mm512_permutexvar_epi16(_mm512_load_si512(idx), r);
#else
    return FXB(round_bits)(even) | (FXB(round_bits)(odd) << 16);
#endif
}

/* Where one vector of 16 pixels p.. of an (h, w) plane of n pixels reads:
 * inside (every tap within the plane: plain loads), else the masks of the 32
 * bf16 at q-1 within [0, n) for the rows q = p-w, p, p+w; tail: the lanes
 * past n, zeroed through keep. The same for every channel at p, so computed
 * once. */
struct FXB(at) {
    int inside, tail;
    unsigned rows[3];
};

FXB_INLINE void FXB(at_init)(struct FXB(at) *a, long w, long n, long p)
{
    int t;
    a->inside = p - w - 1 >= 0 && p + 31 + w <= n;
    a->tail = p + 16 > n;
    for (t = 0; t < 3; t++) {
        long q = p + (t - 1) * w, lo = 1 - q > 0 ? 1 - q : 0, hi = n - q + 1 < 32 ? n - q + 1 : 32;
        a->rows[t] = hi <= lo ? 0u : (hi >= 32 ? ~0u : (1u << hi) - 1u) & ~((1u << lo) - 1u);
    }
}

#if FXB_REAL
/* Row x at pixels q-1, q, q+1 (16 each) as floats from one load of 32 bf16
 * at q-1 (masked unless inside) and three word permutations that put each
 * bf16 in the high half of a float lane. */
FXB_INLINE void FXB(row3)(const uint16_t *x, long q, long n, int inside, unsigned mask, FXB(vf) *v)
{
    static const short idx[3][32] __attribute__((aligned(64))) = {
        {0, 0, 0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8, 0, 9, 0, 10, 0, 11, 0, 12, 0, 13, 0, 14, 0, 15},
        {0, 1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8, 0, 9, 0, 10, 0, 11, 0, 12, 0, 13, 0, 14, 0, 15, 0, 16},
        {0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0, 8, 0, 9, 0, 10, 0, 11, 0, 12, 0, 13, 0, 14, 0, 15, 0, 16, 0, 17}};
    __m512i raw = inside ? _mm512_loadu_si512(x + q - 1) : _mm512_maskz_loadu_epi16((__mmask32)mask, x + q - 1);
    (void)n;
    v[0] = (FXB(vf))_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, _mm512_load_si512(idx[0]), raw);
    v[1] = (FXB(vf))_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, _mm512_load_si512(idx[1]), raw);
    v[2] = (FXB(vf))_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, _mm512_load_si512(idx[2]), raw);
}
#else
FXB_INLINE void FXB(row3)(const uint16_t *x, long q, long n, int inside, unsigned mask, FXB(vf) *v)
{
    int t;
    (void)inside; (void)mask;
    for (t = 0; t < 3; t++) v[t] = FXB(load_inside)(x, q + t - 1, n);
}
#endif

/* The fixed stage of 16 pixels p..p+15 of one bf16 plane (flattened, n = HW
 * pixels) in float32: o[k] for the five kernels, zero in lanes past n.
 * Vertical passes s = [1,2,1], d = [1,0,-1] at p-1, p, p+1, then the
 * horizontal ones with the lane masks of the row edges. */
FXB_INLINE void FXB(stencil)(const uint16_t *x, long w, long n, long p, FXB(vi) left, FXB(vi) right,
                             const struct FXB(at) *at, FXB(vf) *o)
{
    FXB(vf) s[3], d[3], up[3], md[3], dn[3];
    int t;
    FXB(row3)(x, p - w, n, at->inside, at->rows[0], up);
    FXB(row3)(x, p, n, at->inside, at->rows[1], md);
    FXB(row3)(x, p + w, n, at->inside, at->rows[2], dn);
    for (t = 0; t < 3; t++) {
        s[t] = up[t] + dn[t] + (md[t] + md[t]);
        d[t] = up[t] - dn[t];
    }
    {
        FXB(vf) sl = FXB(mask)(s[0], left), sr = FXB(mask)(s[2], right);
        FXB(vf) dl = FXB(mask)(d[0], left), dr = FXB(mask)(d[2], right);
        o[0] = sl + sr + (s[1] + s[1]);
        o[1] = dl + dr + (d[1] + d[1]);
        o[2] = sl - sr;
        o[3] = dl - dr;
        o[4] = md[1];
    }
    if (at->tail) {
        FXB(vi) keep = (FXB(vi))FXB(lanes_below)(n - p);
        for (t = 0; t < FXNN_NUM_KERNELS; t++) o[t] = FXB(mask)(o[t], keep);
    }
}

/* Row taps of the strided stencil: t[c] = x[q + c - 1] (c = 0, 1, 2) in the
 * lanes of `want` (zero elsewhere), for 16 pixels q of a plane of n pixels;
 * `row`: the q are q0, q0 + 2, ..., q0 + 30 (stride 2, one output row). */
#if FXB_REAL
/* In one output row: two loads of 32 bf16 (at q0 - 1 and q0 + 1, masked to
 * the plane) and three word permutations (as FXB(row3)). Else two gathers
 * of four bf16 (x[q-1 .. q+2]) a lane, for the lanes whose four lie in the
 * plane; the others (a plane's first or last pixel) lane by lane. */
FXB_INLINE void FXB(row_taps)(const uint16_t *x, long n, const int *q_lanes, __mmask16 want, int row, FXB(vf) *t)
{
    if (row && want == 0xffff) {
        static const short idx[2][32] __attribute__((aligned(64))) = {  /* even, odd words to high halves */
            {0, 0, 0, 2, 0, 4, 0, 6, 0, 8, 0, 10, 0, 12, 0, 14, 0, 16, 0, 18, 0, 20, 0, 22, 0, 24, 0, 26, 0, 28, 0, 30},
            {0, 1, 0, 3, 0, 5, 0, 7, 0, 9, 0, 11, 0, 13, 0, 15, 0, 17, 0, 19, 0, 21, 0, 23, 0, 25, 0, 27, 0, 29,
             0, 31}};
        long q0 = q_lanes[0], lo, hi, k;
        __m512i v[2];
        for (k = 0; k < 2; k++) {  /* x[q0 - 1 + 2k ..] within [0, n) */
            long at = q0 - 1 + 2 * k;
            lo = at < 0 ? -at : 0;
            hi = n - at < 32 ? n - at : 32;
            v[k] = _mm512_maskz_loadu_epi16((__mmask32)((hi >= 32 ? ~0u : (1u << hi) - 1u) & ~((1u << lo) - 1u)),
                                            x + at);
        }
        t[0] = (FXB(vf))_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, _mm512_load_si512(idx[0]), v[0]);
        t[1] = (FXB(vf))_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, _mm512_load_si512(idx[1]), v[0]);
        t[2] = (FXB(vf))_mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, _mm512_load_si512(idx[0]), v[1]);
        return;
    }
    __m512i q = _mm512_loadu_si512(q_lanes), start = _mm512_sub_epi32(q, _mm512_set1_epi32(1));
    __mmask16 safe = want & _mm512_cmpge_epi32_mask(q, _mm512_set1_epi32(1))
                     & _mm512_cmplt_epi32_mask(q, _mm512_set1_epi32((int)n - 2));
    __m512i lo = _mm512_mask_i32gather_epi64(_mm512_setzero_si512(), (__mmask8)safe, _mm512_castsi512_si256(start),
                                             x, 2);
    __m512i hi = _mm512_mask_i32gather_epi64(_mm512_setzero_si512(), (__mmask8)(safe >> 8),
                                             _mm512_extracti64x4_epi64(start, 1), x, 2);
    int c, i;
    for (c = 0; c < 3; c++) {
        __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(_mm512_srli_epi64(lo, 16 * c))),
                                       _mm512_cvtepi64_epi32(_mm512_srli_epi64(hi, 16 * c)), 1);
        t[c] = (FXB(vf))_mm512_slli_epi32(v, 16);
    }
    for (i = 0; i < 16; i++)
        if ((want & ~safe) >> i & 1)
            for (c = 0; c < 3; c++) {
                long at = (long)q_lanes[i] + c - 1;
                t[c][i] = at >= 0 && at < n ? fxb_float(x[at]) : 0.0f;
            }
}
#else
FXB_INLINE void FXB(row_taps)(const uint16_t *x, long n, const int *q_lanes, unsigned want, int row, FXB(vf) *t)
{
    int c, i;
    (void)row;
    for (c = 0; c < 3; c++) {
        FXB(vh) h = {0};
        for (i = 0; i < 16; i++) {
            long at = (long)q_lanes[i] + c - 1;
            if ((want >> i & 1) && at >= 0 && at < n) h[i] = x[at];
        }
        t[c] = FXB(widen)(h);
    }
}
#endif

/* Where the strided stencil of 16 output pixels reads, the same for every
 * channel, so computed once: per row of taps r (above, at, below), the
 * pixels q and the lanes `want` where that row lies in the plane; the lanes
 * whose left and right neighbours do; `row` as FXB(row_taps)'s. */
struct FXB(sat) {
    int q[3][16], row;
    unsigned want[3];
    FXB(vi) left, right;
};

/* From fxnn_strided_at's idx and flags of the 16 lanes. */
FXB_INLINE void FXB(sat_init)(struct FXB(sat) *a, const int *idx, const int *flags, long w, int row)
{
    static const int need_row[3] = {FXNN_AT_IN | FXNN_AT_UP, FXNN_AT_IN, FXNN_AT_IN | FXNN_AT_DOWN};
    FXB(vi) fl = *(const FXB(vi_u) *)flags;
    int r, i;
    for (r = 0; r < 3; r++) {
        a->want[r] = 0;
        for (i = 0; i < 16; i++) {
            a->q[r][i] = idx[i] + (r - 1) * (int)w;
            a->want[r] |= (unsigned)((flags[i] & need_row[r]) == need_row[r]) << i;
        }
    }
    a->row = row;
    a->left = (fl & (int)FXNN_AT_LEFT) != 0;
    a->right = (fl & (int)FXNN_AT_RIGHT) != 0;
}

/* The fixed stage at the 16 input pixels of `at` in one bf16 plane of n
 * pixels, zero in lanes outside the output: the sums of FXB(stencil), from
 * the taps of FXB(row_taps). */
FXB_INLINE void FXB(stencil_strided)(const uint16_t *x, long n, const struct FXB(sat) *at, FXB(vf) *o)
{
    FXB(vf) t[3][3], s[3], d[3];
    int r, c;
    for (r = 0; r < 3; r++) {
        FXB(row_taps)(x, n, at->q[r], at->want[r], at->row, t[r]);
        t[r][0] = FXB(mask)(t[r][0], at->left);
        t[r][2] = FXB(mask)(t[r][2], at->right);
    }
    for (c = 0; c < 3; c++) {
        s[c] = t[0][c] + t[2][c] + (t[1][c] + t[1][c]);
        d[c] = t[0][c] - t[2][c];
    }
    o[0] = s[0] + s[2] + (s[1] + s[1]);
    o[1] = d[0] + d[2] + (d[1] + d[1]);
    o[2] = s[0] - s[2];
    o[3] = d[0] - d[2];
    o[4] = t[1][1];
}

/* ------------------------------------------------------------------------
 * Emulations of the two instructions, exactly as their definitions read:
 * products of bf16 are exact in float32; each is added to the float32
 * accumulator in turn, rounding to nearest even (denormals not flushed).
 * ------------------------------------------------------------------------ */
#if !FXB_REAL
/* TDPBF16PS: c[m][n] += a[m][2k] b[k][2n] + a[m][2k+1] b[k][2n+1], k ascending, even first. */
__attribute__((unused)) static void FXB(tdp_emulated)(float *c, long ldc, const uint16_t *a, const uint16_t *b)
{
    int m, k, n;
    for (m = 0; m < 16; m++) {
        float *row = c + m * ldc;
        for (k = 0; k < 16; k++) {
            float a0 = fxb_float(a[m * 32 + 2 * k]), a1 = fxb_float(a[m * 32 + 2 * k + 1]);
            for (n = 0; n < 16; n++) {
                float p0 = a0 * fxb_float(b[k * 32 + 2 * n]), p1 = a1 * fxb_float(b[k * 32 + 2 * n + 1]);
                row[n] += p0;
                row[n] += p1;
            }
        }
    }
}

/* VDPBF16PS: acc[j] += a[2j+1] b[2j+1], then += a[2j] b[2j] (the odd product first). */
__attribute__((unused)) static inline void FXB(vdp_emulated)(float *acc, const uint16_t *a, const uint16_t *b)
{
    int j;
    for (j = 0; j < 16; j++) {
        float p1 = fxb_float(a[2 * j + 1]) * fxb_float(b[2 * j + 1]), p0 = fxb_float(a[2 * j]) * fxb_float(b[2 * j]);
        acc[j] += p1;
        acc[j] += p0;
    }
}
#endif

/* ------------------------------------------------------------------------
 * The micro-kernel: C (32 x 32 floats at c, row stride ldc; C[i*16 + r]
 * [j*16 + col] = tile (i, j)) = [C +] (A0; A1) (B0 B1) over `chunks` chunks.
 * begin/end around a run of calls (the AMX tile configuration).
 * ------------------------------------------------------------------------ */
#if FXB_KIND == FXB_AMX && FXB_REAL
FXB_TARGET static void FXB(begin)(void)
{
    struct fxb_tilecfg cfg;
    int t;
    memset(&cfg, 0, sizeof(cfg));
    cfg.palette = 1;
    for (t = 0; t < 8; t++) {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    /* not _tile_loadconfig: GCC 12's asm tells the compiler it reads 8 bytes
     * only, so at -O2 the rest of cfg may never be written (#GP) */
    __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory");
}

FXB_TARGET static void FXB(end)(void) { _tile_release(); }

FXB_TARGET static void FXB(kernel)(const uint16_t *a0, const uint16_t *a1, const uint16_t *b0, const uint16_t *b1,
                                   long chunks, float *c, long ldc, int accumulate)
{
    long ch, stride = ldc * (long)sizeof(float);
    /* GCC's tile loads are asm without a memory operand: make the operands'
     * stores (the packing, before the call) happen first */
    __asm__ volatile("" : : : "memory");
    if (accumulate) {
        _tile_loadd(0, c, stride);
        _tile_loadd(1, c + 16, stride);
        _tile_loadd(2, c + 16 * ldc, stride);
        _tile_loadd(3, c + 16 * ldc + 16, stride);
    } else {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    }
    for (ch = 0; ch < chunks; ch++) {
        _tile_loadd(4, a0 + ch * 512, 64);
        _tile_loadd(6, b0 + ch * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_loadd(7, b1 + ch * 512, 64);
        _tile_dpbf16ps(1, 4, 7);
        _tile_loadd(5, a1 + ch * 512, 64);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, stride);
    _tile_stored(1, c + 16, stride);
    _tile_stored(2, c + 16 * ldc, stride);
    _tile_stored(3, c + 16 * ldc + 16, stride);
}

/* Independent TDPBF16PS on six C tiles, operands in registers. */
FXB_TARGET static double FXB(peak_loop)(long iterations)
{
    static const uint16_t zero[512] __attribute__((aligned(64)));
    float out[256] __attribute__((aligned(64)));
    long i;
    FXB(begin)();
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3); _tile_zero(4); _tile_zero(5);
    _tile_loadd(6, zero, 64);
    _tile_loadd(7, zero, 64);
    for (i = 0; i < iterations; i++) {
        _tile_dpbf16ps(0, 6, 7); _tile_dpbf16ps(1, 6, 7); _tile_dpbf16ps(2, 6, 7);
        _tile_dpbf16ps(3, 6, 7); _tile_dpbf16ps(4, 6, 7); _tile_dpbf16ps(5, 6, 7);
    }
    _tile_stored(0, out, 64);
    FXB(end)();
    return 6.0 * 16 * 16 * 32 * 2 * (double)iterations + out[0];
}

#elif FXB_KIND == FXB_AMX
FXB_TARGET static void FXB(begin)(void) {}
FXB_TARGET static void FXB(end)(void) {}

/* The AMX kernel's steps, each tile product emulated. */
FXB_TARGET static void FXB(kernel)(const uint16_t *a0, const uint16_t *a1, const uint16_t *b0, const uint16_t *b1,
                                   long chunks, float *c, long ldc, int accumulate)
{
    float t[4][256];
    long ch;
    int i, r;
    for (i = 0; i < 4; i++)
        for (r = 0; r < 16; r++) {
            const float *src = c + (i / 2 * 16 + r) * ldc + i % 2 * 16;
            int j;
            for (j = 0; j < 16; j++) t[i][r * 16 + j] = accumulate ? src[j] : 0.0f;
        }
    for (ch = 0; ch < chunks; ch++) {
        FXB(tdp_emulated)(t[0], 16, a0 + ch * 512, b0 + ch * 512);
        FXB(tdp_emulated)(t[1], 16, a0 + ch * 512, b1 + ch * 512);
        FXB(tdp_emulated)(t[2], 16, a1 + ch * 512, b0 + ch * 512);
        FXB(tdp_emulated)(t[3], 16, a1 + ch * 512, b1 + ch * 512);
    }
    for (i = 0; i < 4; i++)
        for (r = 0; r < 16; r++)
            memcpy(c + (i / 2 * 16 + r) * ldc + i % 2 * 16, t[i] + r * 16, 16 * sizeof(float));
}

FXB_TARGET static double FXB(peak_loop)(long iterations)
{
    static const uint16_t zero[512];
    float t[256] = {0};
    long i;
    for (i = 0; i < iterations; i++) FXB(tdp_emulated)(t, 16, zero, zero);
    return 16.0 * 16 * 32 * 2 * (double)iterations + t[0];
}

#else /* FXB_DP */
FXB_TARGET static void FXB(begin)(void) {}
FXB_TARGET static void FXB(end)(void) {}

/* 8 rows x 32 columns at a time: 16 accumulators, B's two pair rows loaded
 * once per pair and A's pair broadcast. */
FXB_TARGET static void FXB(kernel)(const uint16_t *a0, const uint16_t *a1, const uint16_t *b0, const uint16_t *b1,
                                   long chunks, float *c, long ldc, int accumulate)
{
    int i, h, r, k;
    long ch;
    for (i = 0; i < 2; i++) {
        const uint16_t *a = i ? a1 : a0;
        for (h = 0; h < 2; h++) {
            float *cr = c + (i * 16 + h * 8) * ldc;
#if FXB_REAL
            __m512 acc[8][2];
            for (r = 0; r < 8; r++) {
                acc[r][0] = accumulate ? _mm512_loadu_ps(cr + r * ldc) : _mm512_setzero_ps();
                acc[r][1] = accumulate ? _mm512_loadu_ps(cr + r * ldc + 16) : _mm512_setzero_ps();
            }
            for (ch = 0; ch < chunks; ch++) {
                const uint16_t *ac = a + ch * 512 + h * 8 * 32;
                const uint16_t *bc0 = b0 + ch * 512, *bc1 = b1 + ch * 512;
                for (k = 0; k < 16; k++) {
                    __m512bh v0 = (__m512bh)_mm512_loadu_si512(bc0 + k * 32), v1 = (__m512bh)_mm512_loadu_si512(bc1 + k * 32);
                    for (r = 0; r < 8; r++) {
                        __m512bh av = (__m512bh)_mm512_set1_epi32(*(const fxb_i32a *)(ac + r * 32 + 2 * k));
                        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], av, v0);
                        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], av, v1);
                    }
                }
            }
            for (r = 0; r < 8; r++) {
                _mm512_storeu_ps(cr + r * ldc, acc[r][0]);
                _mm512_storeu_ps(cr + r * ldc + 16, acc[r][1]);
            }
#else
            float acc[8][32];
            for (r = 0; r < 8; r++)
                for (k = 0; k < 32; k++) acc[r][k] = accumulate ? cr[r * ldc + k] : 0.0f;
            for (ch = 0; ch < chunks; ch++) {
                const uint16_t *ac = a + ch * 512 + h * 8 * 32;
                for (k = 0; k < 16; k++) {
                    const uint16_t *v0 = b0 + ch * 512 + k * 32, *v1 = b1 + ch * 512 + k * 32;
                    for (r = 0; r < 8; r++) {
                        uint16_t av[32];
                        int j;
                        for (j = 0; j < 16; j++) {
                            av[2 * j] = ac[r * 32 + 2 * k];
                            av[2 * j + 1] = ac[r * 32 + 2 * k + 1];
                        }
                        FXB(vdp_emulated)(acc[r], av, v0);
                        FXB(vdp_emulated)(acc[r] + 16, av, v1);
                    }
                }
            }
            for (r = 0; r < 8; r++) memcpy(cr + r * ldc, acc[r], 32 * sizeof(float));
#endif
        }
    }
}

/* Chains of independent VDPBF16PS. */
FXB_TARGET static double FXB(peak_loop)(long iterations)
{
#if FXB_REAL
    __m512 acc[24];
    __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0);
    float s = 0;
    long i;
    int k;
    for (k = 0; k < 24; k++) acc[k] = _mm512_set1_ps((float)k);
    for (i = 0; i < iterations; i++)
        for (k = 0; k < 24; k++) acc[k] = _mm512_dpbf16_ps(acc[k], a, b);
    for (k = 0; k < 24; k++) s += _mm512_reduce_add_ps(acc[k]);
    return 24.0 * 64 * (double)iterations + s * 0;
#else
    uint16_t a[32] = {0}, b[32] = {0};
    float acc[16] = {0};
    long i;
    for (i = 0; i < iterations; i++) FXB(vdp_emulated)(acc, a, b);
    return 64.0 * (double)iterations + acc[0];
#endif
}
#endif

/* ------------------------------------------------------------------------
 * Forward: y = bias + W^T X5. Items are pairs of 16-pixel panels: the fixed
 * stage of all M channels of the two panels is packed as B (5 ceil(M/2) pair
 * rows each, padded to whole chunks, in L1/L2), then multiplied by every
 * 32-row block of W^T (f->a: 16-row block nb at a + nb * chunks * 512).
 * ------------------------------------------------------------------------ */
/* The panel at stride s > 1: the taps of the output pixels' input pixels. */
FXB_TARGET static void FXB(pack_panel_strided)(const struct fxb_fused *f, long g, uint16_t *dst)
{
    long bi = g / f->hwp, mp;
    const uint16_t *plane = f->x + bi * f->m * f->hw;
    long p = g % f->hwp;
    int idx[16], flags[16], k;
    struct FXB(sat) at;
    fxnn_strided_at(f->h, f->w, f->s, f->ow, f->ohw, p, 16, idx, flags);
    FXB(sat_init)(&at, idx, flags, f->w, f->s == 2 && p % f->ow + 16 <= f->ow);
    for (mp = 0; 2 * mp < f->m; mp++) {
        FXB(vf) e[FXNN_NUM_KERNELS], o[FXNN_NUM_KERNELS];
        FXB(stencil_strided)(plane + 2 * mp * f->hw, f->hw, &at, e);
        if (2 * mp + 1 < f->m)
            FXB(stencil_strided)(plane + (2 * mp + 1) * f->hw, f->hw, &at, o);
        else
            for (k = 0; k < FXNN_NUM_KERNELS; k++) o[k] = (FXB(vf)){0};
        for (k = 0; k < FXNN_NUM_KERNELS; k++)
            *(FXB(vu_u) *)(dst + (FXNN_NUM_KERNELS * mp + k) * 32) = FXB(pair)(e[k], o[k]);
    }
}

FXB_TARGET static void FXB(pack_panel)(const struct fxb_fused *f, long g, uint16_t *dst)
{
    long bi = g / f->hwp, p = g % f->hwp, mp;
    const uint16_t *plane = f->x + bi * f->m * f->hw;
    FXB(vi) left = *(const FXB(vi_u) *)(f->mask_left + p % f->w), right = *(const FXB(vi_u) *)(f->mask_right + p % f->w);
    struct FXB(at) at;
    FXB(at_init)(&at, f->w, f->hw, p);
    if (at.inside && !at.tail && f->m % 2 == 0) {  /* the common case, specialised */
        for (mp = 0; 2 * mp < f->m; mp++) {
            FXB(vf) e[FXNN_NUM_KERNELS], o[FXNN_NUM_KERNELS];
            int k;
            if (p + f->w + 48 < f->hw) {
                __builtin_prefetch(plane + 2 * mp * f->hw + p + f->w + 48);
                __builtin_prefetch(plane + (2 * mp + 1) * f->hw + p + f->w + 48);
            }
            FXB(stencil)(plane + 2 * mp * f->hw, f->w, f->hw, p, left, right, &(const struct FXB(at)){1, 0, {0, 0, 0}}, e);
            FXB(stencil)(plane + (2 * mp + 1) * f->hw, f->w, f->hw, p, left, right,
                         &(const struct FXB(at)){1, 0, {0, 0, 0}}, o);
            for (k = 0; k < FXNN_NUM_KERNELS; k++)
                *(FXB(vu_u) *)(dst + (FXNN_NUM_KERNELS * mp + k) * 32) = FXB(pair)(e[k], o[k]);
        }
        return;
    }
    for (mp = 0; 2 * mp < f->m; mp++) {
        FXB(vf) e[FXNN_NUM_KERNELS], o[FXNN_NUM_KERNELS];
        int k;
        if (p + f->w + 48 < f->hw) {  /* the next items' lower row */
            __builtin_prefetch(plane + 2 * mp * f->hw + p + f->w + 48);
            __builtin_prefetch(plane + (2 * mp + 1 < f->m ? 2 * mp + 1 : 2 * mp) * f->hw + p + f->w + 48);
        }
        FXB(stencil)(plane + 2 * mp * f->hw, f->w, f->hw, p, left, right, &at, e);
        if (2 * mp + 1 < f->m)
            FXB(stencil)(plane + (2 * mp + 1) * f->hw, f->w, f->hw, p, left, right, &at, o);
        else
            for (k = 0; k < FXNN_NUM_KERNELS; k++) o[k] = (FXB(vf)){0};
        for (k = 0; k < FXNN_NUM_KERNELS; k++)
            *(FXB(vu_u) *)(dst + (FXNN_NUM_KERNELS * mp + k) * 32) = FXB(pair)(e[k], o[k]);
    }
}

FXB_TARGET static void FXB(forward_items)(void *arg, long first, long last, void *scratch)
{
    const struct fxb_fused *f = (const struct fxb_fused *)arg;
    long kp = f->kpad * 32, total = f->b * f->hwp, q, nb;
    uint16_t *panel = (uint16_t *)scratch;
    float *c = (float *)(panel + 2 * kp);
    memset(panel, 0, 2 * kp * sizeof(uint16_t));  /* the pair rows past 5 ceil(M/2): zero */
    FXB(begin)();
    for (q = first; q < last; q++) {
        long g[2], t, valid[2];
        uint16_t *ybase[2];
        int contiguous;
        for (t = 0; t < 2; t++) {
            g[t] = (2 * q + t) * 16;
            valid[t] = g[t] < total ? fxnn_min(16, f->ohw - g[t] % f->hwp) : 0;
            if (valid[t] > 0 && f->s != 1)
                FXB(pack_panel_strided)(f, g[t], panel + t * kp);
            else if (valid[t] > 0)
                FXB(pack_panel)(f, g[t], panel + t * kp);
            else
                memset(panel + t * kp, 0, kp * sizeof(uint16_t));
        }
        for (t = 0; t < 2; t++)
            ybase[t] = valid[t] > 0 ? f->y + (g[t] / f->hwp * f->n) * f->ohw + g[t] % f->hwp : NULL;
        contiguous = valid[0] == 16 && valid[1] == 16 && ybase[1] == ybase[0] + 16;
        for (nb = 0; nb < f->npad; nb += 32) {
            int r;
            FXB(kernel)(f->a + (nb / 16) * f->kchunks * 512, f->a + (nb / 16 + 1) * f->kchunks * 512, panel,
                        panel + kp, f->kchunks, c, 32, 0);
            for (r = 0; r < 32 && nb + r < f->n; r++) {
                long n = nb + r;
                float bias = f->bias ? fxb_float(f->bias[n]) : 0.0f;
                if (contiguous) {  /* both panels whole and side by side: one 64-byte store */
                    FXB(store32)(ybase[0] + n * f->ohw, *(const FXB(vf_u) *)(c + r * 32) + bias,
                                 *(const FXB(vf_u) *)(c + r * 32 + 16) + bias);
                    continue;
                }
                for (t = 0; t < 2; t++) {
                    uint16_t *dst = ybase[t] + n * f->ohw;
                    FXB(vh) out;
                    if (valid[t] <= 0)
                        continue;
                    out = FXB(narrow)(*(const FXB(vf_u) *)(c + r * 32 + t * 16) + bias);
                    if (valid[t] == 16)
                        *(FXB(vh_u) *)dst = out;
                    else
                        FXB(store_partial)(dst, out, (int)valid[t]);
                }
            }
        }
    }
    FXB(end)();
}

/* ------------------------------------------------------------------------
 * Weight gradient: dW = X5 dY^T, dbias = sum of dY. Items are groups of
 * pixels (multiples of 32), each summed into its own float32 partial dW
 * (f->partial + group * cpad * npad, row c, column n). A group goes in spans
 * of f->span pixels: the fixed stage of the span is packed as A tiles
 * (16 c x 32 pixels: block c/16, chunk l/32 at (c/16 * chunks + l/32) * 512),
 * dY as B tiles (16 pixel pairs x 16 n), and every 2x2 block of C tiles
 * accumulates over the span's chunks.
 * ------------------------------------------------------------------------ */
FXB_TARGET static void FXB(wgrad_items)(void *arg, long first, long last, void *scratch)
{
    const struct fxb_fused *f = (const struct fxb_fused *)arg;
    long total = f->b * f->hwp, chunks_all = (total + 31) / 32, group;
    uint16_t *as = (uint16_t *)scratch, *bs = as + f->cpad * f->span;
    FXB(begin)();
    for (group = first; group < last; group++) {
        long g_first = chunks_all * group / f->groups * 32, g_last = chunks_all * (group + 1) / f->groups * 32;
        float *dw = f->partial + group * f->cpad * f->npad, *db = f->partial_bias + group * f->n;
        long s0;
        memset(dw, 0, f->cpad * f->npad * sizeof(float));
        memset(db, 0, f->n * sizeof(float));
        for (s0 = g_first; s0 < g_last; s0 += f->span) {
            long slen = fxnn_min(f->span, g_last - s0), nch = slen / 32, l, m, c, n, cb, nb;
            /* A: the fixed stage, channel by channel, each along its plane */
            {
                enum { RUN = FXB_WGRAD_SPAN / 16 };
                long vb[RUN], vp[RUN];
                struct FXB(at) at[RUN];
                int idx[16], flags[16];
                struct FXB(sat) sat[RUN];
                int nv = (int)(slen / 16), j;
                for (j = 0; j < nv; j++) {
                    long g = s0 + 16L * j;
                    vb[j] = g < total ? g / f->hwp : -1;
                    vp[j] = g % f->hwp;
                    if (vb[j] >= 0 && vp[j] >= f->ohw) vb[j] = -1;
                    if (f->s != 1) {
                        fxnn_strided_at(f->h, f->w, f->s, f->ow, f->ohw, vp[j], 16, idx, flags);
                        FXB(sat_init)(&sat[j], idx, flags, f->w, f->s == 2 && vp[j] % f->ow + 16 <= f->ow);
                    } else
                        FXB(at_init)(&at[j], f->w, f->hw, vp[j]);
                }
                for (m = 0; m < f->m; m++) {
                    uint16_t *rows[FXNN_NUM_KERNELS];
                    int k;
                    for (k = 0; k < FXNN_NUM_KERNELS; k++) {
                        c = FXNN_NUM_KERNELS * m + k;
                        rows[k] = as + (c / 16 * nch) * 512 + (c % 16) * 32;
                    }
                    for (j = 0; j < nv; j++) {
                        long off = (j / 2) * 512L + (j % 2) * 16L;
                        FXB(vf) o[FXNN_NUM_KERNELS];
                        if (vb[j] < 0) {
                            for (k = 0; k < FXNN_NUM_KERNELS; k++) memset(rows[k] + off, 0, 32);
                            continue;
                        }
                        if (f->s != 1)
                            FXB(stencil_strided)(f->x + (vb[j] * f->m + m) * f->hw, f->hw, &sat[j], o);
                        else
                            FXB(stencil)(f->x + (vb[j] * f->m + m) * f->hw, f->w, f->hw, vp[j],
                                         *(const FXB(vi_u) *)(f->mask_left + vp[j] % f->w),
                                         *(const FXB(vi_u) *)(f->mask_right + vp[j] % f->w), &at[j], o);
                        for (k = 0; k < FXNN_NUM_KERNELS; k++)
                            *(FXB(vh_u) *)(rows[k] + off) = FXB(narrow)(o[k]);
                    }
                }
            }
            for (c = f->c5; c < f->cpad; c++)  /* rows past 5M: zero */
                for (l = 0; l < nch; l++) memset(as + (c / 16 * nch + l) * 512 + (c % 16) * 32, 0, 64);
            /* B: dY as pixel pairs (a transpose of 32-bit pixel pairs), and the bias gradient */
            for (nb = 0; nb < f->npad; nb += 16) {
                FXB(vf) sum = {0};
                for (l = 0; l < slen; l += 16) {
                    long g = s0 + l, bi = g / f->hwp, p = g % f->hwp, valid = g < total ? fxnn_min(16, f->ohw - p) : 0;
                    uint16_t *dst = bs + (nb / 16 * nch + l / 32) * 512 + (l % 32) / 2 * 32;
                    const uint16_t *src = f->dy + (bi * f->n + nb) * f->ohw + p;
                    int j;
#if FXB_REAL
                    if (valid == 16 && nb + 16 <= f->n && f->ohw < (1L << 25)) {
                        __m512i offsets = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                                             _mm512_set1_epi32((int)(2 * f->ohw)));
                        for (j = 0; j < 8; j++)
                            _mm512_storeu_si512(dst + j * 32, _mm512_i32gather_epi32(offsets, src + 2 * j, 1));
                    } else
#endif
                    for (n = 0; n < 16; n++)
                        for (j = 0; j < 16; j++)
                            dst[j / 2 * 32 + 2 * n + j % 2] = nb + n < f->n && j < valid ? src[n * f->ohw + j] : 0;
                    for (j = 0; j < 8; j++) {
                        FXB(vu) row = *(const FXB(vu_u) *)(dst + j * 32);
                        sum += (FXB(vf))(row << 16);
                        sum += (FXB(vf))(row & 0xffff0000u);
                    }
                }
                for (n = 0; n < 16 && nb + n < f->n; n++) db[nb + n] += sum[n];
            }
            for (cb = 0; cb < f->cpad; cb += 32)
                for (nb = 0; nb < f->npad; nb += 32)
                    FXB(kernel)(as + (cb / 16) * nch * 512, as + (cb / 16 + 1) * nch * 512, bs + (nb / 16) * nch * 512,
                                bs + (nb / 16 + 1) * nch * 512, nch, dw + cb * f->npad + nb, f->npad, 1);
        }
    }
    FXB(end)();
}

/* ------------------------------------------------------------------------
 * The adjoint of the fixed stage at 16 pixels p..p+15 of a float32 plane
 * of n pixels (flattened rows of w; zero outside), the five gradient planes
 * g_k at g + k * ks. Flipping the kernels negates sobel_y and sobel_x, so
 *   dx = hs(vs(g0) - vd(g1)) + hd(vd(g3) - vs(g2)) + g4
 * with vs, vd the vertical passes [1,2,1], [1,0,-1] and hs, hd the
 * horizontal ones, as in the forward stencil.
 * ------------------------------------------------------------------------ */
FXB_INLINE FXB(vf) FXB(load_f32)(const float *g, long q, long n, int inside)
{
    if (inside)
        return *(const FXB(vf_u) *)(g + q);
    {
        long lo = q < 0 ? -q : 0, hi = n - q < 16 ? n - q : 16;
#if FXB_REAL
        __mmask16 m = hi <= lo ? 0 : (__mmask16)(((1u << hi) - 1u) & ~((1u << lo) - 1u));
        return (FXB(vf))_mm512_maskz_loadu_ps(m, g + q);
#else
        FXB(vf) v = {0};
        long i;
        for (i = lo; i < hi; i++) v[i] = g[q + i];
        return v;
#endif
    }
}

/* a = vs(g0) - vd(g1), b = vd(g3) - vs(g2) at the 16 pixels p.. */
FXB_INLINE void FXB(adjoint_vertical)(const float *g, long ks, long w, long n, long p, float *a, float *b)
{
    const float *g0 = g, *g1 = g + ks, *g2 = g + 2 * ks, *g3 = g + 3 * ks;
    int inside = p - w >= 0 && p + 16 + w <= n;
    FXB(vf) s0 = FXB(load_f32)(g0, p - w, n, inside) + FXB(load_f32)(g0, p + w, n, inside)
                 + 2.0f * FXB(load_f32)(g0, p, n, inside);
    FXB(vf) d1 = FXB(load_f32)(g1, p - w, n, inside) - FXB(load_f32)(g1, p + w, n, inside);
    FXB(vf) s2 = FXB(load_f32)(g2, p - w, n, inside) + FXB(load_f32)(g2, p + w, n, inside)
                 + 2.0f * FXB(load_f32)(g2, p, n, inside);
    FXB(vf) d3 = FXB(load_f32)(g3, p - w, n, inside) - FXB(load_f32)(g3, p + w, n, inside);
    *(FXB(vf_u) *)a = s0 - d1;
    *(FXB(vf_u) *)b = d3 - s2;
}

/* dx = hs(a) + hd(b) + g4 at the 16 pixels p.. (a, b at those pixels, their
 * neighbours at a[-1], a[16], which the row-edge masks clear where needed). */
FXB_INLINE FXB(vf) FXB(adjoint_horizontal)(const float *g4, long n, long p, const float *a, const float *b,
                                           FXB(vi) left, FXB(vi) right)
{
    FXB(vf) am = *(const FXB(vf_u) *)a;
    FXB(vf) al = FXB(mask)(*(const FXB(vf_u) *)(a - 1), left), ar = FXB(mask)(*(const FXB(vf_u) *)(a + 1), right);
    FXB(vf) bl = FXB(mask)(*(const FXB(vf_u) *)(b - 1), left), br = FXB(mask)(*(const FXB(vf_u) *)(b + 1), right);
    return al + ar + (am + am) + (bl - br) + FXB(load_f32)(g4, p, n, p + 16 <= n);
}

/* ------------------------------------------------------------------------
 * Input gradient: dx = adjoint(W dY). Items are (image, block of rows
 * [i0, i1)): dY of rows [i0-1, i1+1) is packed once as B panels (16 pixels,
 * npad/2 pair rows of output channels each); then for each chunk of 32
 * input channels W dY goes into a float32 scratch (160 rows of lp pixels),
 * and the adjoint stencil above (the one of kernels/fixed_cpu.c, on the
 * flattened rows 16 pixels at a time, vertical passes first into two rows
 * a, b: faster than fxnn_adjoint_rows_f32 on short rows of 14 or 28
 * pixels) turns it into rows [i0, i1) of dx, rounded to bf16. At stride 2,
 * dY is that of the output rows at input rows [i0-1, i1+1), and
 * fxnn_adjoint_row_s2 makes dx row by row.
 * ------------------------------------------------------------------------ */
FXB_TARGET static void FXB(dgrad_items)(void *arg, long first, long last, void *scratch)
{
    const struct fxb_fused *f = (const struct fxb_fused *)arg;
    long item, blocks = (f->h + f->rows - 1) / f->rows, lu = fxnn_round_up((f->rows + 2) * f->w, 32);
    long lp_max = fxnn_round_up((f->rows + 2 + f->s - 1) / f->s * f->ow, 32);
    long pr = f->npad / 2 * 32;  /* u16 per B panel */
    float *s = (float *)scratch, *abuf = s + FXB_DGRAD_ROWS * lp_max, *bbuf = abuf + lu + 48;
    uint16_t *panels = (uint16_t *)(bbuf + lu + 48);
    FXB(begin)();
    for (item = first; item < last; item++) {
        long b = item / blocks, i0 = item % blocks * f->rows, i1 = fxnn_min(i0 + f->rows, f->h);
        long ra = i0 > 0 ? i0 - 1 : 0, rb = i1 < f->h ? i1 + 1 : f->h;
        long oa = (ra + f->s - 1) / f->s, ob = (rb - 1) / f->s + 1;  /* output rows at input rows [ra, rb) */
        long len = (ob - oa) * f->ow, lp = fxnn_round_up(len, 32), q, np, m0, cb;
        const uint16_t *dy = f->dy + b * f->n * f->ohw + oa * f->ow;
        /* the next item's dY, fetched a few lines per micro-kernel call while
         * this item computes (its reading is otherwise a phase of its own) */
        const uint16_t *pf_base = NULL;
        long pf_lines = 0, pf_row = 0, pf_next = 0, pf_step = 0;
        if (item + 1 < last) {
            long bn = (item + 1) / blocks, j0 = (item + 1) % blocks * f->rows, j1 = fxnn_min(j0 + f->rows, f->h);
            long ran = j0 > 0 ? j0 - 1 : 0, rbn = j1 < f->h ? j1 + 1 : f->h;
            long oan = (ran + f->s - 1) / f->s, obn = (rbn - 1) / f->s + 1;
            pf_base = f->dy + bn * f->n * f->ohw + oan * f->ow;
            pf_row = ((obn - oan) * f->ow + 31) / 32;
            pf_lines = f->n * pf_row;
            pf_step = pf_lines / ((lp / 32) * ((FXNN_NUM_KERNELS * f->m + 31) / 32)) + 1;
        }
        for (np = 0; np < f->npad / 2; np++)  /* along the rows of dY */
            for (q = 0; q < lp; q += 16) {
                uint16_t *dst = panels + q / 16 * pr + np * 32;
                long n0 = 2 * np;
                if (n0 < f->n && q + 16 <= len) {
                    FXB(vu) e = __builtin_convertvector(*(const FXB(vh_u) *)(dy + n0 * f->ohw + q), FXB(vu));
                    FXB(vu) o = n0 + 1 < f->n
                                    ? __builtin_convertvector(*(const FXB(vh_u) *)(dy + (n0 + 1) * f->ohw + q), FXB(vu))
                                    : (FXB(vu)){0};
                    *(FXB(vu_u) *)dst = e | (o << 16);
                } else {
                    int j;
                    for (j = 0; j < 16; j++) {
                        dst[2 * j] = n0 < f->n && q + j < len ? dy[n0 * f->ohw + q + j] : 0;
                        dst[2 * j + 1] = n0 + 1 < f->n && q + j < len ? dy[(n0 + 1) * f->ohw + q + j] : 0;
                    }
                }
            }
        for (m0 = 0; m0 < f->m; m0 += FXB_DGRAD_ROWS / FXNN_NUM_KERNELS) {
            long mc = fxnn_min(FXB_DGRAD_ROWS / FXNN_NUM_KERNELS, f->m - m0), rows = fxnn_round_up(FXNN_NUM_KERNELS * mc, 32);
            long m;
            for (q = 0; q < lp; q += 32)  /* the pixels' dY in L1, this chunk's W (5 x 32 rows x N) in L1/L2 */
                for (cb = 0; cb < rows; cb += 32) {
                    long blk = (FXNN_NUM_KERNELS * m0 + cb) / 16, e;
                    for (e = 0; e < pf_step && pf_next < pf_lines; e++, pf_next++)
                        __builtin_prefetch(pf_base + pf_next / pf_row * f->ohw + pf_next % pf_row * 32);
                    FXB(kernel)(f->a + blk * f->nchunks * 512, f->a + (blk + 1) * f->nchunks * 512, panels + q / 16 * pr,
                                panels + (q / 16 + 1) * pr, f->nchunks, s + cb * lp + q, lp, 0);
                }
            for (m = 0; m < mc && f->s != 1; m++) {  /* stride 2: row by row, through abuf */
                uint16_t *dst = f->dx + (b * f->m + m0 + m) * f->hw;
                long i;
                for (i = i0; i < i1; i++) {
                    fxnn_adjoint_row_s2(s + FXNN_NUM_KERNELS * m * lp, lp, oa, f->oh, f->ow, i, f->w, abuf, bbuf);
                    for (q = 0; q < f->w; q += 16) {
                        FXB(vh) v = FXB(narrow)(*(const FXB(vf_u) *)(abuf + q));
                        if (q + 16 <= f->w)
                            *(FXB(vh_u) *)(dst + i * f->w + q) = v;
                        else
                            FXB(store_partial)(dst + i * f->w + q, v, (int)(f->w - q));
                    }
                }
            }
            for (m = 0; m < mc && f->s == 1; m++) {
                uint16_t *dst = f->dx + (b * f->m + m0 + m) * f->hw + i0 * f->w;
                const float *g = s + FXNN_NUM_KERNELS * m * lp;
                long q0 = (i0 - ra) * f->w, cnt = (i1 - i0) * f->w;
                for (q = 0; q < cnt; q += 16)  /* the vertical passes, once per pixel */
                    FXB(adjoint_vertical)(g, lp, f->w, len, q0 + q, abuf + 16 + q, bbuf + 16 + q);
                for (q = 0; q < cnt; q += 16) {
                    FXB(vf) v = FXB(adjoint_horizontal)(g + 4 * lp, len, q0 + q, abuf + 16 + q, bbuf + 16 + q,
                                                        *(const FXB(vi_u) *)(f->mask_left + (q0 + q) % f->w),
                                                        *(const FXB(vi_u) *)(f->mask_right + (q0 + q) % f->w));
                    if (q + 16 <= cnt)
                        *(FXB(vh_u) *)(dst + q) = FXB(narrow)(v);
                    else
                        FXB(store_partial)(dst + q, FXB(narrow)(v), (int)(cnt - q));
                }
            }
        }
    }
    FXB(end)();
}

static const struct fxb_isa FXB(isa) = {
    FXNN_STR(FXB_ISA), FXB(forward_items), FXB(wgrad_items), FXB(dgrad_items), FXB(peak_loop),
};

#undef FXB_INLINE
#undef FXB_ISA
#undef FXB_KIND
#undef FXB_REAL
#undef FXB_TARGET
