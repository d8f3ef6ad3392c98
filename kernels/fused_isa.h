/* The fused fxnn layer for one instruction set: packing, micro-kernels and
 * the three drivers (forward, weight gradient, input gradient).
 *
 * kernels/fused_cpu.c includes this file once per instruction set, with:
 *   FXNN_ISA        name suffix of everything defined here (avx512, avx2, portable)
 *   FXNN_VW         floats per vector
 *   FXNN_MR         rows of the GEMM tile: output channels (forward) or
 *                   fixed-stage channels (input gradient), broadcast one at a time
 *   FXNN_NV         vectors of pixels in a GEMM tile; NR = NV * VW pixels
 *   FXNN_WR, FXNN_WC  the dW tile (fixed-stage channels x output channels)
 *                   of the weight gradient's dot kernel: WR x WC accumulators
 *                   and the WR + WC vectors they multiply must all fit the
 *                   vector registers, or the compiler reloads operands and
 *                   the loads, not the FMAs, set the pace
 *   FXNN_TARGET     function attribute that enables the instruction set
 *   FXNN_FMA(a, b, c)  a * b + c on vectors, one fused instruction where the ISA has it
 *   FXNN_SPLAT(s)   a vector of VW copies of the float s
 *   FXNN_MASKLOAD(p, m)  the lanes of p where the int vector m is -1, zero elsewhere,
 *                   touching no memory in the other lanes
 *   FXNN_GATHER(p, i, m)  the lanes p[i[l]] where the int vector m is -1, zero
 *                   elsewhere, touching no memory in the other lanes
 *   FXNN_EVEN(a, b)  (optional) the even lanes of the 2 VW lanes of a then b:
 *                   where defined, stride 2 reads a row of taps with loads
 * and with struct fxnn_fused (fused_cpu.c) describing one call; it
 * undefines them all at its end, ready for the next instruction set.
 *
 * Names: g is a pixel in the padded pixel space of the batch, g = b * HWp + p
 * with HWp = Ho*Wo (the output's pixels) rounded up to VW, so no vector of
 * VW pixels crosses images; lanes with p >= Ho*Wo are padding, zero in every
 * packed operand and never stored. c = 5m + k is a fixed-stage channel
 * (kernels/fixed_kernels.py). With stride s, output pixel (i, j) is the
 * fixed stage at input pixel (s i, s j); at stride 1 the two coincide and
 * the packing reads whole vectors of neighbours, else it gathers them.
 */
#define FXNN_CAT2(a, b) a##_##b
#define FXNN_CAT(a, b) FXNN_CAT2(a, b)
#define FX(name) FXNN_CAT(name, FXNN_ISA)
#define FX_NR (FXNN_NV * FXNN_VW)

typedef float FX(vf) __attribute__((vector_size(FXNN_VW * 4)));
typedef int FX(vi) __attribute__((vector_size(FXNN_VW * 4)));
/* the same vectors at any float-aligned address */
typedef float FX(vf_u) __attribute__((vector_size(FXNN_VW * 4), aligned(4), may_alias));
typedef int FX(vi_u) __attribute__((vector_size(FXNN_VW * 4), aligned(4), may_alias));

#define FX_INLINE FXNN_TARGET static inline __attribute__((always_inline))

FX_INLINE FX(vf) FX(load)(const float *p) { return *(const FX(vf_u) *)p; }
FX_INLINE void FX(store)(float *p, FX(vf) v) { *(FX(vf_u) *)p = v; }
FX_INLINE FX(vf) FX(splat)(float s) { return (FX(vf))FXNN_SPLAT(s); }
FX_INLINE FX(vf) FX(mask)(FX(vf) v, FX(vi) m) { return (FX(vf))((FX(vi))v & m); }

FX_INLINE float FX(sum)(FX(vf) v)
{
    float s = 0;
    int i;
    for (i = 0; i < FXNN_VW; i++) s += v[i];
    return s;
}

/* FXNN_MASKLOAD in plain C, for instruction sets without masked loads. */
FX_INLINE FX(vf) FX(maskload_scalar)(const float *p, FX(vi) m)
{
    FX(vf) v;
    int i;
    for (i = 0; i < FXNN_VW; i++) v[i] = m[i] ? p[i] : 0.0f;
    return v;
}

/* x[q .. q+VW), zero where outside [0, n). */
FX_INLINE FX(vf) FX(load_clipped)(const float *x, long q, long n)
{
    float t[FXNN_VW];
    int i;
    for (i = 0; i < FXNN_VW; i++) t[i] = q + i >= 0 && q + i < n ? x[q + i] : 0.0f;
    return FX(load)(t);
}

/* ------------------------------------------------------------------------
 * Packing: the fixed stage, computed straight into a GEMM operand.
 *
 * One vector of VW pixels p..p+VW-1 of a plane (H, W), flattened: the
 * vertical passes s = [1,2,1], d = [1,0,-1] at p-1, p, p+1 (neighbours
 * p -+ W; zero outside the plane), then the horizontal ones, with the lane
 * masks left/right clearing neighbours that belong to another row.
 * ------------------------------------------------------------------------ */
/* x[q .. q+VW), zero where outside [0, n), without touching memory there. */
FX_INLINE FX(vf) FX(load_inside)(const float *x, long q, long n)
{
    FX(vi) lane, in;
    int i;
    for (i = 0; i < FXNN_VW; i++) lane[i] = i;
    lane += (int)q;
    in = (lane >= 0) & (lane < (int)n);
    return (FX(vf))FXNN_MASKLOAD(x + q, in);
}

/* The vertical passes of the three rows q - w, q, q + w (q = p-1, p, p+1)
 * into s[o], d[o], and the middle row at p into *mid; zeros outside [0, n). */
FX_INLINE void FX(vertical)(const float *x, long p, long w, long n, int inside, FX(vf) *s, FX(vf) *d, FX(vf) *mid)
{
    int o;
    for (o = 0; o < 3; o++) {
        long q = p + o - 1;
        FX(vf) up, md, dn;
        if (inside) {
            up = FX(load)(x + q - w); md = FX(load)(x + q); dn = FX(load)(x + q + w);
        } else {
            up = FX(load_inside)(x, q - w, n); md = FX(load_inside)(x, q, n); dn = FX(load_inside)(x, q + w, n);
        }
        s[o] = up + dn + (md + md);
        d[o] = up - dn;
        if (o == 1) *mid = md;
    }
}

FX_INLINE void FX(stencil)(const float *x, long h, long w, long p, FX(vi) left, FX(vi) right,
                           float *out, long ks)
{
    long n = h * w;
    FX(vf) s[3], d[3], mid = FX(splat)(0.0f);
    if (p - w - 1 >= 0 && p + FXNN_VW + w + 1 <= n)
        FX(vertical)(x, p, w, n, 1, s, d, &mid);
    else  /* first or last row */
        FX(vertical)(x, p, w, n, 0, s, d, &mid);
    {
        FX(vf) sl = FX(mask)(s[0], left), sr = FX(mask)(s[2], right);
        FX(vf) dl = FX(mask)(d[0], left), dr = FX(mask)(d[2], right);
        FX(store)(out, sl + sr + (s[1] + s[1]));
        FX(store)(out + ks, dl + dr + (d[1] + d[1]));
        FX(store)(out + 2 * ks, sl - sr);
        FX(store)(out + 3 * ks, dl - dr);
        FX(store)(out + 4 * ks, mid);
    }
    if (p + FXNN_VW > n) {  /* padding lanes: zero */
        int k, i;
        for (k = 0; k < FXNN_NUM_KERNELS; k++)
            for (i = (int)(n - p); i < FXNN_VW; i++) out[k * ks + i] = 0.0f;
    }
}

/* FXNN_GATHER in plain C, for instruction sets without gathers. */
FX_INLINE FX(vf) FX(gather_scalar)(const float *p, FX(vi) idx, FX(vi) m)
{
    FX(vf) v;
    int i;
    for (i = 0; i < FXNN_VW; i++) v[i] = m[i] ? p[idx[i]] : 0.0f;
    return v;
}

/* FXNN_EVEN in plain C (the AVX-512 stand-in's). */
__attribute__((unused)) FX_INLINE FX(vf) FX(even_scalar)(FX(vf) a, FX(vf) b)
{
    FX(vf) v;
    int i;
    for (i = 0; i < FXNN_VW / 2; i++) {
        v[i] = a[2 * i];
        v[FXNN_VW / 2 + i] = b[2 * i];
    }
    return v;
}

#ifdef FXNN_EVEN
/* The stencil at input pixels q0, q0 + 2, ..., q0 + 2 (VW - 1) of one input
 * row (stride 2, one output row; flags of fxnn_strided_at): each row of taps
 * from contiguous loads, its even lanes (FXNN_EVEN) at q - 1, q and q + 1. */
FX_INLINE void FX(stencil_row2)(const float *x, long w, long n, long q0, FX(vi) flags, float *out, long ks)
{
    FX(vi) left = (flags & (int)FXNN_AT_LEFT) != 0, right = (flags & (int)FXNN_AT_RIGHT) != 0;
    FX(vf) t[3][3], s[3], d[3];
    int r, c;
    for (r = 0; r < 3; r++) {
        long q = q0 + (r - 1) * w;
        int want = r == 1 || (flags[0] & (r == 0 ? FXNN_AT_UP : FXNN_AT_DOWN));
        for (c = 0; c < 3; c++) {
            long at = q + c - 1;
            FX(vf) a, b;
            if (!want) {
                t[r][c] = FX(splat)(0.0f);
                continue;
            }
            if (at >= 0 && at + 2 * FXNN_VW <= n) {
                a = FX(load)(x + at);
                b = FX(load)(x + at + FXNN_VW);
            } else {
                a = FX(load_inside)(x, at, n);
                b = FX(load_inside)(x, at + FXNN_VW, n);
            }
            t[r][c] = FXNN_EVEN(a, b);
        }
        t[r][0] = FX(mask)(t[r][0], left);
        t[r][2] = FX(mask)(t[r][2], right);
    }
    for (c = 0; c < 3; c++) {
        s[c] = t[0][c] + t[2][c] + (t[1][c] + t[1][c]);
        d[c] = t[0][c] - t[2][c];
    }
    FX(store)(out, s[0] + s[2] + (s[1] + s[1]));
    FX(store)(out + ks, d[0] + d[2] + (d[1] + d[1]));
    FX(store)(out + 2 * ks, s[0] - s[2]);
    FX(store)(out + 3 * ks, d[0] - d[2]);
    FX(store)(out + 4 * ks, t[1][1]);
}
#endif

/* The stencil at the input pixels idx of one plane (row length w), zero in
 * lanes without FXNN_AT_IN (flags of fxnn_strided_at); the same sums as
 * FX(stencil), from gathered taps. */
FX_INLINE void FX(stencil_strided)(const float *x, long w, FX(vi) idx, FX(vi) flags, float *out, long ks)
{
    FX(vi) in = (flags & (int)FXNN_AT_IN) != 0, up = (flags & (int)FXNN_AT_UP) != 0;
    FX(vi) down = (flags & (int)FXNN_AT_DOWN) != 0;
    FX(vi) column[3] = {(flags & (int)FXNN_AT_LEFT) != 0, in, (flags & (int)FXNN_AT_RIGHT) != 0};
    FX(vf) s[3], d[3], mid = FX(splat)(0.0f);
    int o;
    for (o = 0; o < 3; o++) {
        FX(vi) q = idx + (o - 1);
        FX(vf) u = FXNN_GATHER(x, q - (int)w, column[o] & up), md = FXNN_GATHER(x, q, column[o]);
        FX(vf) dn = FXNN_GATHER(x, q + (int)w, column[o] & down);
        s[o] = u + dn + (md + md);
        d[o] = u - dn;
        if (o == 1) mid = md;
    }
    FX(store)(out, s[0] + s[2] + (s[1] + s[1]));
    FX(store)(out + ks, d[0] + d[2] + (d[1] + d[1]));
    FX(store)(out + 2 * ks, s[0] - s[2]);
    FX(store)(out + 3 * ks, d[0] - d[2]);
    FX(store)(out + 4 * ks, mid);
}

/* The fixed stage of channels [m0, m0+mc) at padded pixels [g0, g1) (g0 and
 * g1 - g0 multiples of VW) into dst: channel c = 5(m - m0) + k of local pixel
 * l = g - g0 at dst[(l / grp) * grp_stride + c * c_stride + l % grp]. With
 * grp = NR, grp_stride = 5 mc NR, c_stride = NR these are the GEMM's
 * micro-panels; with grp > g1 - g0 and c_stride = row length, plain rows.
 * Channel by channel over runs of up to 64 vectors, so each input row is
 * read from L1 while it is used (at stride 1; else gathered at the output's
 * pixels). */
FXNN_TARGET static void FX(pack_fixed)(const struct fxnn_fused *f, long m0, long mc, long g0, long g1,
                                       float *dst, long grp, long grp_stride, long c_stride)
{
    enum { RUN = 64 };
    long plane[RUN], pixel[RUN], column[RUN], out[RUN], g, m;
    int idx[RUN][FXNN_VW], flags[RUN][FXNN_VW], count, j;
#ifdef FXNN_EVEN
    int row2[RUN];  /* stride 2, the vector in one output row */
#endif
    for (g = g0; g < g1; g += RUN * FXNN_VW) {
        for (count = 0; count < RUN && g + count * FXNN_VW < g1; count++) {
            long gc = g + count * FXNN_VW, b = gc / f->hwp, l = gc - g0;
            pixel[count] = gc % f->hwp;
            plane[count] = (b * f->m + m0) * f->hw;
            column[count] = pixel[count] % f->w;
            out[count] = (l / grp) * grp_stride + l % grp;
            if (f->s != 1)
                fxnn_strided_at(f->h, f->w, f->s, f->ow, f->ohw, pixel[count], FXNN_VW, idx[count], flags[count]);
#ifdef FXNN_EVEN
            row2[count] = f->s == 2 && pixel[count] % f->ow + FXNN_VW <= f->ow;
#endif
        }
        if (f->s != 1) {
            for (m = 0; m < mc; m++)
                for (j = 0; j < count; j++) {
                    const float *x = f->x + plane[j] + m * f->hw;
                    float *o = dst + out[j] + FXNN_NUM_KERNELS * m * c_stride;
#ifdef FXNN_EVEN
                    if (row2[j]) {
                        FX(stencil_row2)(x, f->w, f->hw, idx[j][0], *(const FX(vi_u) *)flags[j], o, c_stride);
                        continue;
                    }
#endif
                    FX(stencil_strided)(x, f->w, *(const FX(vi_u) *)idx[j], *(const FX(vi_u) *)flags[j], o, c_stride);
                }
            continue;
        }
        for (m = 0; m < mc; m++)
            for (j = 0; j < count; j++) {
                if (pixel[j] + 2 * f->w < f->hw)  /* the row this pixel's next-row neighbour will need */
                    __builtin_prefetch(f->x + plane[j] + m * f->hw + pixel[j] + 2 * f->w);
                FX(stencil)(f->x + plane[j] + m * f->hw, f->h, f->w, pixel[j],
                            *(const FX(vi_u) *)(f->mask_left + column[j]),
                            *(const FX(vi_u) *)(f->mask_right + column[j]),
                            dst + out[j] + FXNN_NUM_KERNELS * m * c_stride, c_stride);
            }
    }
}

/* ------------------------------------------------------------------------
 * The GEMM tile: C (rows x NR) = [C or bias] + A (rows x kc) B (kc x NR),
 * A packed as a[k * MR + r], B as b[k * NR + j]. Row r of vector v of C is
 * at c[v] + r * ldc and has valid[v] lanes (VW: all, 0: none).
 * ------------------------------------------------------------------------ */
FX_INLINE void FX(tile_mr)(const int mr, long kc, const float *a, const float *b, int rows, float *const *c,
                           const int *valid, int full, long ldc, const float *bias, int accumulate)
{
    FX(vf) acc[FXNN_MR][FXNN_NV];
    long k;
    int r, v, i;
    for (r = 0; r < mr; r++)
        for (v = 0; v < FXNN_NV; v++) acc[r][v] = FX(splat)(0.0f);
    for (k = 0; k < kc; k++) {
        FX(vf) bv[FXNN_NV];
        for (v = 0; v < FXNN_NV; v++) bv[v] = FX(load)(b + k * FX_NR + v * FXNN_VW);
        for (r = 0; r < mr; r++) {
            FX(vf) ar = FX(splat)(a[k * FXNN_MR + r]);
            for (v = 0; v < FXNN_NV; v++) acc[r][v] = FXNN_FMA(ar, bv[v], acc[r][v]);
        }
    }
    if (full) {  /* the common case: the NV vectors of a row contiguous and whole */
        for (r = 0; r < mr; r++)
            if (r < rows)
                for (v = 0; v < FXNN_NV; v++) {
                    float *dst = c[0] + r * ldc + v * FXNN_VW;
                    FX(vf) out = acc[r][v];
                    if (accumulate) out += FX(load)(dst);
                    else if (bias) out += FX(splat)(bias[r]);
                    FX(store)(dst, out);
                }
        return;
    }
    {  /* vectors split across images or past the batch: through a buffer, by element */
        float t[FXNN_MR * FX_NR] = {0};
        for (r = 0; r < mr; r++)  /* every row, so that the accumulators stay in registers */
            for (v = 0; v < FXNN_NV; v++) FX(store)(t + r * FX_NR + v * FXNN_VW, acc[r][v]);
        for (r = 0; r < rows; r++)
            for (v = 0; v < FXNN_NV; v++) {
                float *dst = c[v] + r * ldc;
                for (i = 0; i < valid[v]; i++)
                    dst[i] = t[r * FX_NR + v * FXNN_VW + i] + (accumulate ? dst[i] : bias ? bias[r] : 0.0f);
            }
    }
}

/* One tile, with the accumulators of the fewest rows that cover ``rows``. */
FXNN_TARGET static void FX(tile)(long kc, const float *a, const float *b, int rows, float *const *c,
                                 const int *valid, long ldc, const float *bias, int accumulate)
{
    int v, full = 1;
    for (v = 0; v < FXNN_NV; v++)
        full &= valid[v] == FXNN_VW && c[v] == c[0] + v * FXNN_VW;
    if (rows > FXNN_MR / 2)
        FX(tile_mr)(FXNN_MR, kc, a, b, rows, c, valid, full, ldc, bias, accumulate);
    else if (rows > 1)
        FX(tile_mr)(FXNN_MR / 2, kc, a, b, rows, c, valid, full, ldc, bias, accumulate);
    else
        FX(tile_mr)(1, kc, a, b, rows, c, valid, full, ldc, bias, accumulate);
}

/* ------------------------------------------------------------------------
 * The weight gradient's dot kernel: acc[r][s] += x[r * xs + l] y[s * ys + l]
 * lane by lane for l < len (a multiple of VW), WR x WC vectors of partial
 * sums kept in memory between calls (starting from zero when ``first``) and
 * summed across lanes once at the end.
 * ------------------------------------------------------------------------ */
FXNN_TARGET static void FX(dot)(long len, const float *x, long xs, const float *y, long ys, float *acc_mem, int first)
{
    FX(vf) acc[FXNN_WR][FXNN_WC];
    long l;
    int r, s;
    for (r = 0; r < FXNN_WR; r++)
        for (s = 0; s < FXNN_WC; s++)
            acc[r][s] = first ? FX(splat)(0.0f) : FX(load)(acc_mem + (r * FXNN_WC + s) * FXNN_VW);
    for (l = 0; l < len; l += FXNN_VW) {
        FX(vf) yv[FXNN_WC];
        for (s = 0; s < FXNN_WC; s++) yv[s] = FX(load)(y + s * ys + l);
        for (r = 0; r < FXNN_WR; r++) {
            FX(vf) xv = FX(load)(x + r * xs + l);
            for (s = 0; s < FXNN_WC; s++) acc[r][s] = FXNN_FMA(xv, yv[s], acc[r][s]);
        }
    }
    for (r = 0; r < FXNN_WR; r++)
        for (s = 0; s < FXNN_WC; s++) FX(store)(acc_mem + (r * FXNN_WC + s) * FXNN_VW, acc[r][s]);
}

/* Pointers and valid lanes of the NV vectors of an output micro-panel at
 * padded pixel g0 of the (B, C, H, W) tensor t, plane of channel 0. */
static void FX(panel_out)(const struct fxnn_fused *f, float *t, long channels, long g0, long g_end,
                          float **c, int *valid)
{
    int v;
    for (v = 0; v < FXNN_NV; v++) {
        long g = g0 + v * FXNN_VW, b = g / f->hwp, p = g % f->hwp;
        c[v] = t + b * channels * f->ohw + p;
        valid[v] = g >= g_end ? 0 : (int)(f->ohw - p < FXNN_VW ? f->ohw - p : FXNN_VW);
    }
}

/* ------------------------------------------------------------------------
 * Forward: y = bias + W^T X5. Items are runs of micro-panels of NR padded
 * pixels; for each micro-panel and chunk of mc input channels, the fixed
 * stage is packed into an L1-sized panel (5mc x NR) and multiplied by every
 * MR-row block of W^T (f->a: block nb at a + nb * 5M * MR, row c at c * MR).
 * ------------------------------------------------------------------------ */
FXNN_TARGET static void FX(forward_items)(void *arg, long first, long last, void *scratch)
{
    const struct fxnn_fused *f = (const struct fxnn_fused *)arg;
    float *panel = (float *)scratch;
    long q, m0, nb, total = f->b * f->hwp;
    for (q = first; q < last; q++) {
        long g0 = q * FX_NR, g1 = g0 + FX_NR < total ? g0 + FX_NR : total;
        float *c[FXNN_NV], *cn[FXNN_NV];
        int valid[FXNN_NV], v;
        FX(panel_out)(f, f->y, f->n, g0, g1, c, valid);
        for (m0 = 0; m0 < f->m; m0 += f->mc) {
            long mc = f->m - m0 < f->mc ? f->m - m0 : f->mc, kc = FXNN_NUM_KERNELS * mc;
            if (g1 - g0 < FX_NR)  /* the batch's last micro-panel: zero the lanes past its end */
                memset(panel, 0, kc * FX_NR * sizeof(float));
            FX(pack_fixed)(f, m0, mc, g0, g1, panel, FX_NR, kc * FX_NR, FX_NR);
            for (nb = 0; nb < f->n; nb += FXNN_MR) {
                for (v = 0; v < FXNN_NV; v++) cn[v] = c[v] + nb * f->ohw;
                FX(tile)(kc, f->a + nb * f->c5 + FXNN_NUM_KERNELS * m0 * FXNN_MR, panel,
                         (int)(f->n - nb < FXNN_MR ? f->n - nb : FXNN_MR), cn, valid, f->ohw,
                         f->bias ? f->bias + nb : NULL, m0 > 0);
            }
        }
    }
}

/* ------------------------------------------------------------------------
 * Weight gradient: dW = X5 dY^T, dbias = sum of dY. Items are groups of
 * padded pixels, each summed into its own partial dW (f->partial + group *
 * 5M N; f->dw itself when there is one group). A group goes in spans of
 * f->span pixels whose dY is packed once as rows (N x span, L3); for each
 * chunk of WR input channels the span goes in blocks of f->block pixels
 * whose fixed stage (5 WR x block rows) is packed beside the matching dY
 * (both in L2), and the dot kernel keeps vector sums until the span ends.
 * The groups depend on the problem only, so no number depends on the thread
 * count; fused_cpu.c adds the partial sums up in group order.
 * ------------------------------------------------------------------------ */
FXNN_TARGET static void FX(wgrad_items)(void *arg, long first, long last, void *scratch)
{
    const struct fxnn_fused *f = (const struct fxnn_fused *)arg;
    long group, pw = f->block, sp = f->span, kc_max = FXNN_NUM_KERNELS * FXNN_WR, total = f->b * f->hwp;
    long n_rows = (f->n + FXNN_WC - 1) / FXNN_WC * FXNN_WC, tiles = FXNN_NUM_KERNELS * (n_rows / FXNN_WC);
    float *xs = (float *)scratch, *ys = xs + kc_max * pw, *acc = ys + n_rows * sp;
    memset(ys + f->n * sp, 0, (n_rows - f->n) * sp * sizeof(float));  /* rows the dot kernel reads past N */
    for (group = first; group < last; group++) {
        long g_first = total / FXNN_VW * group / f->groups * FXNN_VW;
        long g_last = total / FXNN_VW * (group + 1) / f->groups * FXNN_VW;
        float *dw = f->groups == 1 ? f->dw : f->partial + group * f->c5 * f->n;
        float *db = !f->dbias ? NULL : f->groups == 1 ? f->dbias : f->partial_bias + group * f->n;
        long s0, m0, b0, t, n, l, r, c;
        memset(dw, 0, f->c5 * f->n * sizeof(float));
        if (db) memset(db, 0, f->n * sizeof(float));
        for (s0 = g_first; s0 < g_last; s0 += sp) {
            long slen = g_last - s0 < sp ? g_last - s0 : sp;
            for (l = 0; l < slen; ) {  /* dY rows, image by image, zero in the padding lanes */
                long g = s0 + l, b = g / f->hwp, p = g % f->hwp, run = f->hwp - p < slen - l ? f->hwp - p : slen - l;
                for (n = 0; n < f->n; n++) {
                    const float *src = f->dy + (b * f->n + n) * f->ohw;
                    float *dst = ys + n * sp + l - p;
                    long j;
                    for (j = p; j < p + run; j += FXNN_VW)
                        FX(store)(dst + j, j + FXNN_VW <= f->ohw ? FX(load)(src + j) : FX(load_clipped)(src + j, 0, f->ohw - j));
                }
                l += run;
            }
            for (n = 0; db && n < f->n; n++) {
                FX(vf) sum = FX(splat)(0.0f);
                for (l = 0; l < slen; l += FXNN_VW) sum += FX(load)(ys + n * sp + l);
                db[n] += FX(sum)(sum);
            }
            for (m0 = 0; m0 < f->m; m0 += FXNN_WR) {
                long mc = f->m - m0 < FXNN_WR ? f->m - m0 : FXNN_WR, kc = FXNN_NUM_KERNELS * mc;
                long blocks = (slen + pw - 1) / pw, step = (slen / FXNN_VW + blocks - 1) / blocks * FXNN_VW;
                memset(xs + kc * pw, 0, (kc_max - kc) * pw * sizeof(float));
                for (b0 = 0; b0 < slen; b0 += step) {  /* blocks of equal length, at most pw */
                    long len = slen - b0 < step ? slen - b0 : step;
                    FX(pack_fixed)(f, m0, mc, s0 + b0, s0 + b0 + len, xs, pw + 1, 0, pw);
                    for (t = 0; t < tiles; t++) {  /* fixed-stage rows outer: their block stays in L1 */
                        long r0 = t / (n_rows / FXNN_WC) * FXNN_WR, n0 = t % (n_rows / FXNN_WC) * FXNN_WC;
                        if (r0 < kc)
                            FX(dot)(len, xs + r0 * pw, pw, ys + n0 * sp + b0, sp,
                                    acc + t * FXNN_WR * FXNN_WC * FXNN_VW, b0 == 0);
                    }
                }
                for (t = 0; t < tiles; t++) {
                    long r0 = t / (n_rows / FXNN_WC) * FXNN_WR, n0 = t % (n_rows / FXNN_WC) * FXNN_WC;
                    for (r = 0; r < FXNN_WR && r0 + r < kc; r++)
                        for (c = 0; c < FXNN_WC && n0 + c < f->n; c++)
                            dw[(FXNN_NUM_KERNELS * m0 + r0 + r) * f->n + n0 + c] +=
                                FX(sum)(FX(load)(acc + ((t * FXNN_WR + r) * FXNN_WC + c) * FXNN_VW));
                }
            }
        }
    }
}

/* ------------------------------------------------------------------------
 * Input gradient: dx = adjoint(W dY). Items are (image, block of rows
 * [i0, i1)). dY of the output rows at input rows [i0-1, i1+1) is packed
 * once into micro-panels (N x NR each); then for each chunk of MR input
 * channels (5 MR fixed-stage channels: whole MR-row blocks of W, f->a: block
 * at a + block * N * MR, row n at n * MR) W dY goes into a scratch of 5 MR
 * rows of lp pixels, and the adjoint stencil of kernels/fixed_cpu.c turns
 * it into rows [i0, i1) of dx (at stride 2, fxnn_adjoint_row_s2 row by row).
 * ------------------------------------------------------------------------ */
FXNN_TARGET static void FX(dgrad_items)(void *arg, long first, long last, void *scratch)
{
    const struct fxnn_fused *f = (const struct fxnn_fused *)arg;
    long item, blocks = (f->h + f->rows - 1) / f->rows;
    long lp_max = ((f->rows + 2 + f->s - 1) / f->s * f->ow + FX_NR - 1) / FX_NR * FX_NR;
    float *s = (float *)scratch, *panels = s + FXNN_NUM_KERNELS * FXNN_MR * lp_max,
          *rowbuf = panels + f->n * lp_max;
    for (item = first; item < last; item++) {
        long b = item / blocks, i0 = item % blocks * f->rows, i1 = i0 + f->rows < f->h ? i0 + f->rows : f->h;
        long ra = i0 > 0 ? i0 - 1 : 0, rb = i1 < f->h ? i1 + 1 : f->h;
        long oa = (ra + f->s - 1) / f->s, ob = (rb - 1) / f->s + 1;  /* output rows at input rows [ra, rb) */
        long len = (ob - oa) * f->ow, lp = (len + FX_NR - 1) / FX_NR * FX_NR;
        const float *dy = f->dy + b * f->n * f->ohw + oa * f->ow;
        long m0, q, cb, n, j;
        int v, full[FXNN_NV];
        for (n = 0; n < f->n; n++)  /* dY rows, read in order, into micro-panels [q][n][NR] */
            for (q = 0; q < lp; q += FX_NR) {
                const float *src = dy + n * f->ohw + q;
                float *dst = panels + q * f->n + n * FX_NR;
                if (q + FX_NR <= len)
                    for (v = 0; v < FXNN_NV; v++) FX(store)(dst + v * FXNN_VW, FX(load)(src + v * FXNN_VW));
                else
                    for (j = 0; j < FX_NR; j++) dst[j] = q + j < len ? src[j] : 0.0f;
            }
        for (v = 0; v < FXNN_NV; v++) full[v] = FXNN_VW;
        for (m0 = 0; m0 < f->m; m0 += FXNN_MR) {
            long mc = f->m - m0 < FXNN_MR ? f->m - m0 : FXNN_MR, kc = FXNN_NUM_KERNELS * mc, m, i;
            for (q = 0; q < lp; q += FX_NR)
                for (cb = 0; cb < kc; cb += FXNN_MR) {
                    float *c[FXNN_NV];
                    for (v = 0; v < FXNN_NV; v++) c[v] = s + cb * lp + q + v * FXNN_VW;
                    FX(tile)(f->n, f->a + (FXNN_NUM_KERNELS * m0 + cb) * f->n, panels + q * f->n,
                             (int)(kc - cb < FXNN_MR ? kc - cb : FXNN_MR), c, full, lp, NULL, 0);
                }
            for (m = 0; m < mc; m++) {
                float *dx = f->dx + (b * f->m + m0 + m) * f->hw;
                if (f->s == 1)
                    fxnn_adjoint_rows_f32(s + FXNN_NUM_KERNELS * m * lp, lp, ra, i0, i1, f->h, f->w, dx, rowbuf);
                else
                    for (i = i0; i < i1; i++)
                        fxnn_adjoint_row_s2(s + FXNN_NUM_KERNELS * m * lp, lp, oa, f->oh, f->ow, i, f->w,
                                            dx + i * f->w, rowbuf);
            }
        }
    }
}

/* Seconds-long loops of independent FMAs: the machine's peak, measured.
 * Returns the flops done (the sum of the accumulators, times 0, keeps them
 * live). */
FXNN_TARGET static double FX(fma_loop)(long iterations)
{
    FX(vf) acc[FXNN_MR * FXNN_NV], b = FX(splat)(0.999999f), c = FX(splat)(1e-7f);
    float s = 0;
    long i;
    int k;
    for (k = 0; k < FXNN_MR * FXNN_NV; k++) acc[k] = FX(splat)((float)k);
    for (i = 0; i < iterations; i++) {
        /* unrolled, so the accumulators stay in registers (a loop over an
         * array in memory times store-to-load forwarding, not the FMAs) */
#pragma GCC unroll 64
        for (k = 0; k < FXNN_MR * FXNN_NV; k++) acc[k] = FXNN_FMA(acc[k], b, c);
    }
    for (k = 0; k < FXNN_MR * FXNN_NV; k++) s += FX(sum)(acc[k]);
    return 2.0 * FXNN_VW * FXNN_MR * FXNN_NV * (double)iterations + s * 0;
}

/* ------------------------------------------------------------------------
 * Channels_last (NHWC): x and dx (B, H, W, M), y and dY (B, Ho, Wo, N). The
 * GEMMs' rows are pixels and their vectors run along channels, so every
 * operand is read where it lies: the fixed stage Z of a block of pixels is
 * packed as rows of 5M floats (column k M + m), y = Z W' + bias, dW' = Z^T
 * dY (Z's columns broadcast), dZ = dY W'^T, then the adjoint stencil adds
 * dZ into dx. W' is W with rows reordered from 5m + k to k M + m.
 * One micro-kernel serves all three: C[r][0..NV VW) (+)= sum_l A(r, l)
 * B[l][..], A(r, l) = a[r ras + l cas] broadcast, B rows at b + l ldb.
 * ------------------------------------------------------------------------ */
#define FX_NMR (FXNN_VW == 16 ? 8 : FXNN_VW == 8 ? 6 : 4)  /* rows of its tile */
#define FX_NMR_F (FXNN_VW == 16 ? 12 : FX_NMR)  /* the forward's (faster there); 3 FX_NMR is a multiple */

FX_INLINE FX(vi) FX(lanes_below)(long count)
{
    FX(vi) lane;
    int i;
    for (i = 0; i < FXNN_VW; i++) lane[i] = i;
    return lane < (int)count;
}

/* The tile: mr rows (rows of them stored), nv vectors (cols lanes stored,
 * bcols lanes of B read, the rest zero); bias (per column) when not
 * accumulating, or NULL. */
FX_INLINE void FX(nh_tile_v)(const int nv, const int mr, long len, const float *a, long ras, long cas,
                             const float *b, long ldb, long bcols, int rows, long cols, float *c, long ldc,
                             const float *bias, int accumulate)
{
    FX(vf) acc[FX_NMR_F][2];
    const float *ar[FX_NMR_F];
    FX(vi) keep[2];
    long l;
    int r, v, i;
    for (r = 0; r < mr; r++) {
        ar[r] = a + (r < rows ? r : 0) * ras;
        for (v = 0; v < nv; v++) acc[r][v] = FX(splat)(0.0f);
    }
    for (v = 0; v < nv; v++) keep[v] = FX(lanes_below)(bcols - v * FXNN_VW);
    if (bcols >= nv * FXNN_VW)
        for (l = 0; l < len; l++) {
            FX(vf) bv[2];
            for (v = 0; v < nv; v++) bv[v] = FX(load)(b + l * ldb + v * FXNN_VW);
#pragma GCC unroll 16
            for (r = 0; r < mr; r++) {
                FX(vf) av = FX(splat)(ar[r][l * cas]);
                for (v = 0; v < nv; v++) acc[r][v] = FXNN_FMA(av, bv[v], acc[r][v]);
            }
        }
    else
        for (l = 0; l < len; l++) {
            FX(vf) bv[2];
            for (v = 0; v < nv; v++) bv[v] = (FX(vf))FXNN_MASKLOAD(b + l * ldb + v * FXNN_VW, keep[v]);
#pragma GCC unroll 16
            for (r = 0; r < mr; r++) {
                FX(vf) av = FX(splat)(ar[r][l * cas]);
                for (v = 0; v < nv; v++) acc[r][v] = FXNN_FMA(av, bv[v], acc[r][v]);
            }
        }
    for (r = 0; r < mr; r++)
        for (v = 0; v < nv; v++) {
            float *dst = c + r * ldc + v * FXNN_VW;
            long lanes = cols - v * FXNN_VW;
            if (r >= rows || lanes <= 0)
                continue;
            if (lanes >= FXNN_VW) {
                FX(vf) out = acc[r][v];
                if (accumulate) out += FX(load)(dst);
                else if (bias) out += FX(load)(bias + v * FXNN_VW);
                FX(store)(dst, out);
            } else
                for (i = 0; i < lanes; i++)
                    dst[i] = acc[r][v][i] + (accumulate ? dst[i] : bias ? bias[v * FXNN_VW + i] : 0.0f);
        }
}

/* One tile of up to FX_NMR rows (the forward's: FX_NMR_F) and 2 VW columns, or of VW. */
FXNN_TARGET static void FX(nh_tile)(long len, const float *a, long ras, long cas, const float *b, long ldb, long bcols,
                                    int rows, long cols, float *c, long ldc, const float *bias, int accumulate)
{
    if (cols > FXNN_VW)
        FX(nh_tile_v)(2, FX_NMR, len, a, ras, cas, b, ldb, bcols, rows, cols, c, ldc, bias, accumulate);
    else
        FX(nh_tile_v)(1, FX_NMR, len, a, ras, cas, b, ldb, bcols, rows, cols, c, ldc, bias, accumulate);
}

FXNN_TARGET static void FX(nh_tile_f)(long len, const float *a, long ras, const float *b, long ldb, int rows, long cols,
                                      float *c, long ldc, const float *bias)
{
    if (cols > FXNN_VW)
        FX(nh_tile_v)(2, FX_NMR_F, len, a, ras, 1, b, ldb, ldb, rows, cols, c, ldc, bias, 0);
    else
        FX(nh_tile_v)(1, FX_NMR_F, len, a, ras, 1, b, ldb, ldb, rows, cols, c, ldc, bias, 0);
}

/* One column of taps, VW channels: the vertical passes s, d and the middle tap. */
struct FX(ncol) {
    FX(vf) s, d, mid;
};

FX_INLINE struct FX(ncol) FX(ncol_at)(const float *const *at, long x, long w, long m, FX(vi) keep, int whole)
{
    struct FX(ncol) c;
    FX(vf) v[3];
    int r;
    if (x < 0 || x >= w) {
        c.s = c.d = c.mid = FX(splat)(0.0f);
        return c;
    }
    for (r = 0; r < 3; r++)
        v[r] = !at[r] ? FX(splat)(0.0f) : whole ? FX(load)(at[r] + x * m) : (FX(vf))FXNN_MASKLOAD(at[r] + x * m, keep);
    c.s = v[0] + v[2] + (v[1] + v[1]);
    c.d = v[0] - v[2];
    c.mid = v[1];
    return c;
}

/* Z rows of `count` output pixels g.. of one output row (z: pixel g's row,
 * rows ldz apart): per VW channels, the columns of taps slide along the row. */
FXNN_TARGET static void FX(nh_pack_run)(const struct fxnn_fused *f, long g, long count, float *z, long ldz)
{
    long bi = g / f->ohw, i = g % f->ohw / f->ow, j0 = g % f->ohw % f->ow, cg, t, q;
    const float *rows[3];
    int r, k;
    for (r = 0; r < 3; r++) {
        long y = f->s * i + r - 1;
        rows[r] = y >= 0 && y < f->h ? f->x + (bi * f->h + y) * f->w * f->m : NULL;
    }
    for (cg = 0; cg < f->m; cg += FXNN_VW) {
        const float *at[3] = {rows[0] ? rows[0] + cg : NULL, rows[1] ? rows[1] + cg : NULL, rows[2] ? rows[2] + cg : NULL};
        long lanes = fxnn_min(FXNN_VW, f->m - cg), x = f->s * j0;
        int whole = lanes == FXNN_VW;
        FX(vi) keep = FX(lanes_below)(lanes);
        struct FX(ncol) left = FX(ncol_at)(at, x - 1, f->w, f->m, keep, whole),
                        mid = FX(ncol_at)(at, x, f->w, f->m, keep, whole),
                        right = FX(ncol_at)(at, x + 1, f->w, f->m, keep, whole);
        for (t = 0; t < count; t++) {
            FX(vf) o[FXNN_NUM_KERNELS];
            float *dst = z + t * ldz + cg;
            o[0] = left.s + right.s + (mid.s + mid.s);
            o[1] = left.d + right.d + (mid.d + mid.d);
            o[2] = left.s - right.s;
            o[3] = left.d - right.d;
            o[4] = mid.mid;
            for (k = 0; k < FXNN_NUM_KERNELS; k++)
                if (whole)
                    FX(store)(dst + k * f->m, o[k]);
                else
                    for (q = 0; q < lanes; q++) dst[k * f->m + q] = o[k][q];
            x += f->s;
            if (f->s == 1) {
                left = mid;
                mid = right;
            } else {
                left = right;
                mid = FX(ncol_at)(at, x, f->w, f->m, keep, whole);
            }
            right = FX(ncol_at)(at, x + 1, f->w, f->m, keep, whole);
        }
    }
}

/* Z of the output pixels [g0, g0 + count) of the batch, row r at z + r ldz. */
FXNN_TARGET static void FX(nh_pack)(const struct fxnn_fused *f, long g0, long count, float *z, long ldz)
{
    long r = 0;
    while (r < count) {
        long g = g0 + r, run = fxnn_min(count - r, f->ow - g % f->ohw % f->ow);
        FX(nh_pack_run)(f, g, run, z + r * ldz, ldz);
        r += run;
    }
}

/* Forward: items are blocks of f->block output pixels. f->a: W' (5M x npad). */
FXNN_TARGET static void FX(nh_forward_items)(void *arg, long first, long last, void *scratch)
{
    const struct fxnn_fused *f = (const struct fxnn_fused *)arg;
    long total = f->b * f->ohw, ldz = f->c5, q, n0, p;
    float *z = (float *)scratch;
    for (q = first; q < last; q++) {
        long g0 = q * f->block, count = fxnn_min(f->block, total - g0);
        FX(nh_pack)(f, g0, count, z, ldz);
        for (n0 = 0; n0 < f->n; n0 += 2 * FXNN_VW) {
            long cols = fxnn_min(2 * FXNN_VW, f->n - n0);
            for (p = 0; p < count; p += FX_NMR_F)
                FX(nh_tile_f)(f->c5, z + p * ldz, ldz, f->a + n0, f->npad, (int)fxnn_min(FX_NMR_F, count - p), cols,
                              f->y + (g0 + p) * f->n + n0, f->n, f->bias ? f->bias + n0 : NULL);
        }
    }
}

/* Weight gradient: items are the f->groups groups of pixels (fixed by the
 * problem's size), each summed into its own partial dW' (5M x N) and dbias,
 * added in group order afterwards. */
FXNN_TARGET static void FX(nh_wgrad_items)(void *arg, long first, long last, void *scratch)
{
    const struct fxnn_fused *f = (const struct fxnn_fused *)arg;
    long total = f->b * f->ohw, ldz = f->c5, group;
    float *z = (float *)scratch;
    for (group = first; group < last; group++) {
        long g_first = total * group / f->groups, g_last = total * (group + 1) / f->groups, g0, k0, n0, l, n;
        float *dw = f->partial + group * f->c5 * f->n, *db = f->partial_bias + group * f->n;
        memset(dw, 0, f->c5 * f->n * sizeof(float));
        memset(db, 0, f->n * sizeof(float));
        for (g0 = g_first; g0 < g_last; g0 += f->block) {
            long count = fxnn_min(f->block, g_last - g0);
            FX(nh_pack)(f, g0, count, z, ldz);
            if (FXNN_NH_WGRAD_BY_N(f, FXNN_VW))  /* dW'^T (N x 5M): rows of output channels, vectors along Z's rows */
                for (k0 = 0; k0 < f->c5; k0 += 2 * FXNN_VW) {
                    long cols = fxnn_min(2 * FXNN_VW, f->c5 - k0);
                    for (n0 = 0; n0 < f->n; n0 += FX_NMR)
                        FX(nh_tile)(count, f->dy + g0 * f->n + n0, 1, f->n, z + k0, ldz, cols,
                                    (int)fxnn_min(FX_NMR, f->n - n0), cols, dw + n0 * f->c5 + k0, f->c5, NULL, 1);
                }
            else  /* dW' (5M x N): rows of fixed-stage channels, vectors along dY's rows */
                for (n0 = 0; n0 < f->n; n0 += 2 * FXNN_VW) {
                    long cols = fxnn_min(2 * FXNN_VW, f->n - n0);
                    for (k0 = 0; k0 < f->c5; k0 += FX_NMR)
                        FX(nh_tile)(count, z + k0, 1, ldz, f->dy + g0 * f->n + n0, f->n, cols,
                                    (int)fxnn_min(FX_NMR, f->c5 - k0), cols, dw + k0 * f->n + n0, f->n, NULL, 1);
                }
            for (l = 0; l < count; l++)
                for (n = 0; n < f->n; n++) db[n] += f->dy[(g0 + l) * f->n + n];
        }
    }
}

/* dx[(y, x), channels cg..] += v for the first `lanes` of VW channels. */
FX_INLINE void FX(nh_add)(const struct fxnn_fused *f, float *dx, long y, long x, long cg, long lanes, FX(vf) v)
{
    float *dst = dx + (y * f->w + x) * f->m + cg;
    long q;
    if (lanes == FXNN_VW)
        FX(store)(dst, FX(load)(dst) + v);
    else
        for (q = 0; q < lanes; q++) dst[q] += v[q];
}

/* One output row i of dZ (pixel j's 5 kernels at dz + j ldz + k M + cg)
 * back through the adjoint stencil into dx, VW channels from cg. Pixel j
 * reaches input columns x = s j - 1 + c (c = 0, 1, 2) of input rows
 * y = s i - 1 + r: with the column profiles A_c = w_c dZ0 + d_c dZ2 and
 * B_c = w_c dZ1 + d_c dZ3 (w = 1,2,1; d = 1,0,-1), row r gets w_r A_c +
 * d_r B_c, plus dZ4 at the centre. Per row r, the sums of a column are
 * kept in registers until no later pixel reaches it, then added to dx
 * once: one addition into dx per column and row (stride 1), instead of
 * one per tap. */
FXNN_TARGET static void FX(nh_adjoint_row)(const struct fxnn_fused *f, const float *dz, long ldz, float *dx, long i,
                                           long cg)
{
    long lanes = fxnn_min(FXNN_VW, f->m - cg), j;
    int r, live[3];
    FX(vf) acc[3][3];  /* per row r: the columns s j - 1, s j, s j + 1 */
    for (r = 0; r < 3; r++) {
        long y = f->s * i + r - 1;
        live[r] = y >= 0 && y < f->h;
        acc[r][0] = acc[r][1] = acc[r][2] = FX(splat)(0.0f);
    }
    for (j = 0; j < f->ow; j++) {
        const float *g = dz + j * ldz + cg;
        FX(vf) z0 = FX(load)(g), z1 = FX(load)(g + f->m), z2 = FX(load)(g + 2 * f->m), z3 = FX(load)(g + 3 * f->m),
               z4 = FX(load)(g + 4 * f->m);
        FX(vf) av[3] = {z0 + z2, z0 + z0, z0 - z2}, bv[3] = {z1 + z3, z1 + z1, z1 - z3};
        long x = f->s * j - 1;
        for (r = 0; r < 3; r++) {
            FX(vf) t[3];
            int c;
            if (!live[r])
                continue;
            for (c = 0; c < 3; c++) t[c] = r == 0 ? av[c] + bv[c] : r == 1 ? av[c] + av[c] : av[c] - bv[c];
            if (r == 1)
                t[1] += z4;
            if (f->s == 1) {  /* columns j-1 (complete now), j, j+1 */
                acc[r][0] += t[0];
                acc[r][1] += t[1];
                acc[r][2] = t[2];
                if (x >= 0)
                    FX(nh_add)(f, dx, f->s * i + r - 1, x, cg, lanes, acc[r][0]);
                acc[r][0] = acc[r][1];
                acc[r][1] = acc[r][2];
            } else {  /* columns 2j-1 (complete with the last pixel's), 2j, 2j+1 (pending) */
                t[0] += acc[r][2];
                if (x >= 0)
                    FX(nh_add)(f, dx, f->s * i + r - 1, x, cg, lanes, t[0]);
                FX(nh_add)(f, dx, f->s * i + r - 1, x + 1, cg, lanes, t[1]);
                acc[r][2] = t[2];
            }
        }
    }
    for (r = 0; r < 3; r++) {  /* the columns still held: s (ow-1) and, at stride 1, s (ow-1) + 1 */
        long y = f->s * i + r - 1, x = f->s * (f->ow - 1);
        if (!live[r])
            continue;
        if (f->s == 1) {
            FX(nh_add)(f, dx, y, x, cg, lanes, acc[r][0]);
            if (x + 1 < f->w)
                FX(nh_add)(f, dx, y, x + 1, cg, lanes, acc[r][1]);
        } else if (x + 1 < f->w)
            FX(nh_add)(f, dx, y, x + 1, cg, lanes, acc[r][2]);
    }
}

/* Input gradient: items are images. Per band of f->rows output rows, dZ
 * (ldz = 5M rounded up to VW floats a pixel) = dY W'^T (f->a: W'^T, N x
 * ldz) over the band's pixels, contiguous in dY; then each output row of dZ
 * goes back through the adjoint stencil into dx (FX(nh_adjoint_row)),
 * which the item zeroes first. */
FXNN_TARGET static void FX(nh_dgrad_items)(void *arg, long first, long last, void *scratch)
{
    const struct fxnn_fused *f = (const struct fxnn_fused *)arg;
    long ldz = f->npad, bi;
    float *dz = (float *)scratch;
    for (bi = first; bi < last; bi++) {
        float *dx = f->dx + bi * f->hw * f->m;
        long i0, i, c0, cg, p;
        memset(dx, 0, f->hw * f->m * sizeof(float));
        for (i0 = 0; i0 < f->oh; i0 += f->rows) {
            long band = fxnn_min(f->rows, f->oh - i0) * f->ow;
            const float *dyb = f->dy + (bi * f->oh + i0) * f->ow * f->n;
            for (c0 = 0; c0 < ldz; c0 += 2 * FXNN_VW) {
                long cols = fxnn_min(2 * FXNN_VW, ldz - c0);
                for (p = 0; p < band; p += FX_NMR)
                    FX(nh_tile)(f->n, dyb + p * f->n, f->n, 1, f->a + c0, ldz, cols, (int)fxnn_min(FX_NMR, band - p),
                                cols, dz + p * ldz + c0, ldz, NULL, 0);
            }
            for (i = i0; i < i0 + band / f->ow; i++)
                for (cg = 0; cg < f->m; cg += FXNN_VW)
                    FX(nh_adjoint_row)(f, dz + (i - i0) * f->ow * ldz, ldz, dx, i, cg);
        }
    }
}

/* Work functions of fxnn_parallel and the tile sizes, by ISA. */
static const struct fxnn_isa FX(isa) = {
    FXNN_STR(FXNN_ISA), FXNN_VW, FXNN_MR, FX_NR, FXNN_WR, FXNN_WC,
    FX(forward_items), FX(wgrad_items), FX(dgrad_items), FX(fma_loop),
    FX(nh_forward_items), FX(nh_wgrad_items), FX(nh_dgrad_items), FX_NMR,
};

#undef FX_NR
#undef FX_NMR
#undef FX_NMR_F
#undef FX_INLINE
#undef FXNN_ISA
#undef FXNN_VW
#undef FXNN_MR
#undef FXNN_NV
#undef FXNN_WR
#undef FXNN_WC
#undef FXNN_TARGET
#undef FXNN_FMA
#undef FXNN_SPLAT
#undef FXNN_MASKLOAD
#undef FXNN_GATHER
#undef FXNN_EVEN
