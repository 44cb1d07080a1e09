/* Dropout masks applied to whole tensors (BERT's hidden dropouts) and the LoRA layer's dropout and low-rank
 * products around its base GEMM (the fused LoRA function in methods/lora_fast.py). */
#include "kernels.h"

#define CHUNK 4096

/* out = mask, or out = x * mask when x is given (out may be x). */
void mask_apply(float *out, const float *x, int64_t n, uint32_t k1, uint32_t k2, uint32_t t16, float scale) {
    int64_t chunks = (n + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) if (n > 4 * CHUNK)
    for (int64_t c = 0; c < chunks; c++) {
        int64_t e0 = c * CHUNK, len = n - e0 < CHUNK ? n - e0 : CHUNK;
        if (!x) {
            mask_span(out + e0, e0, len, k1, k2, t16, scale);
            continue;
        }
        float m[CHUNK];
        mask_span(m, e0, len, k1, k2, t16, scale);
        for (int64_t i = 0; i < len; i++) out[e0 + i] = x[e0 + i] * m[i];
    }
}

/* dst (m × n) = srcᵀ, src n × m. */
static void transpose(float *dst, const float *src, int64_t n, int64_t m) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < m; k++) dst[k * n + i] = src[i * m + k];
}

/* The rank-r rows below: an AVX2 version for r = 8 (one register holds a rank-8 row) and a plain one for any r. */
#ifdef __AVX2__
static void forward_row8(const float *xm, int64_t d, const float *a, float *low) {
    __m256 acc[8];
    for (int k = 0; k < 8; k++) acc[k] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) {
        __m256 v = _mm256_loadu_ps(xm + j);
        for (int k = 0; k < 8; k++) acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(a + k * d + j), v, acc[k]);
    }
    for (int k = 0; k < 8; k++) {
        float sum = hsum(acc[k]);
        for (int64_t jj = j; jj < d; jj++) sum += a[k * d + jj] * xm[jj];
        low[k] = sum;
    }
}

/* forward_row8 on mask ⊙ x for a row whose elements start at an even index (pair q0) and d % 16 == 0: the mask
 * is hashed, kept as bits and applied in the same loop that takes the A-product, 16 elements at a time. */
static void forward_row8_masked(const float *x, int64_t d, const float *a, float *low, uint32_t q0, uint32_t k1,
                                uint32_t k2, uint32_t t16, float scale, uint8_t *bits) {
    __m256 acc[8], acc2[8];
    for (int k = 0; k < 8; k++) acc[k] = acc2[k] = _mm256_setzero_ps();
    for (int64_t j = 0; j < d; j += 16, q0 += 8) {
        __m256 m0, m1;
        mask16v(&m0, &m1, q0, k1, k2, t16, scale);
        if (bits) {
            bits[j / 8] = (uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(m0, _mm256_setzero_ps(), _CMP_NEQ_OQ));
            bits[j / 8 + 1] = (uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(m1, _mm256_setzero_ps(), _CMP_NEQ_OQ));
        }
        __m256 v0 = _mm256_mul_ps(m0, _mm256_loadu_ps(x + j)), v1 = _mm256_mul_ps(m1, _mm256_loadu_ps(x + j + 8));
        for (int k = 0; k < 8; k++) {
            acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(a + k * d + j), v0, acc[k]);
            acc2[k] = _mm256_fmadd_ps(_mm256_loadu_ps(a + k * d + j + 8), v1, acc2[k]);
        }
    }
    for (int k = 0; k < 8; k++) low[k] = hsum(_mm256_add_ps(acc[k], acc2[k]));
}

/* Phase 1 of a row's backward: gl = s·g·B, and the block's g_b partial pb (o × 8) += s·g·lowᵀ. */
static void phase1_row8(const float *grow, int64_t o, const float *b, const float *lrow, float s, float *pb,
                        float *gl) {
    __m256 c = _mm256_mul_ps(_mm256_set1_ps(s), _mm256_loadu_ps(lrow));
    __m256 g0 = _mm256_setzero_ps(), g1 = g0;
    int64_t i = 0;
    for (; i + 2 <= o; i += 2) {
        __m256 v0 = _mm256_set1_ps(grow[i]), v1 = _mm256_set1_ps(grow[i + 1]);
        g0 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(b + 8 * i), g0);
        g1 = _mm256_fmadd_ps(v1, _mm256_loadu_ps(b + 8 * i + 8), g1);
        _mm256_storeu_ps(pb + 8 * i, _mm256_fmadd_ps(v0, c, _mm256_loadu_ps(pb + 8 * i)));
        _mm256_storeu_ps(pb + 8 * i + 8, _mm256_fmadd_ps(v1, c, _mm256_loadu_ps(pb + 8 * i + 8)));
    }
    for (; i < o; i++) {
        __m256 v = _mm256_set1_ps(grow[i]);
        g0 = _mm256_fmadd_ps(v, _mm256_loadu_ps(b + 8 * i), g0);
        _mm256_storeu_ps(pb + 8 * i, _mm256_fmadd_ps(v, c, _mm256_loadu_ps(pb + 8 * i)));
    }
    _mm256_storeu_ps(gl, _mm256_mul_ps(_mm256_set1_ps(s), _mm256_add_ps(g0, g1)));
}

/* Phase 1 for 4 rows at once (rows o floats apart): each B row and pb row is loaded and stored once for all four. */
static void phase1_rows4(const float *g, int64_t o, const float *b, const float *low, float s, float *pb, float *gl) {
    __m256 sv = _mm256_set1_ps(s);
    __m256 c0 = _mm256_mul_ps(sv, _mm256_loadu_ps(low)), c1 = _mm256_mul_ps(sv, _mm256_loadu_ps(low + 8));
    __m256 c2 = _mm256_mul_ps(sv, _mm256_loadu_ps(low + 16)), c3 = _mm256_mul_ps(sv, _mm256_loadu_ps(low + 24));
    __m256 g0 = _mm256_setzero_ps(), g1 = g0, g2 = g0, g3 = g0;
    const float *r0 = g, *r1 = g + o, *r2 = g + 2 * o, *r3 = g + 3 * o;
    for (int64_t i = 0; i < o; i++) {
        __m256 bi = _mm256_loadu_ps(b + 8 * i);
        __m256 v0 = _mm256_set1_ps(r0[i]), v1 = _mm256_set1_ps(r1[i]);
        __m256 v2 = _mm256_set1_ps(r2[i]), v3 = _mm256_set1_ps(r3[i]);
        g0 = _mm256_fmadd_ps(v0, bi, g0);
        g1 = _mm256_fmadd_ps(v1, bi, g1);
        g2 = _mm256_fmadd_ps(v2, bi, g2);
        g3 = _mm256_fmadd_ps(v3, bi, g3);
        __m256 acc0 = _mm256_fmadd_ps(v0, c0, _mm256_loadu_ps(pb + 8 * i)), acc1 = _mm256_mul_ps(v2, c2);
        acc0 = _mm256_fmadd_ps(v1, c1, acc0);  /* two short FMA chains, not one of four */
        acc1 = _mm256_fmadd_ps(v3, c3, acc1);
        _mm256_storeu_ps(pb + 8 * i, _mm256_add_ps(acc0, acc1));
    }
    _mm256_storeu_ps(gl, _mm256_mul_ps(sv, g0));
    _mm256_storeu_ps(gl + 8, _mm256_mul_ps(sv, g1));
    _mm256_storeu_ps(gl + 16, _mm256_mul_ps(sv, g2));
    _mm256_storeu_ps(gl + 24, _mm256_mul_ps(sv, g3));
}

/* One 8-column step of phase 2: pa[:, j:j+8] += gl·xv and the returned gl·A[:, j:j+8] (two dot accumulators: half
 * the FMA latency chain). */
static inline __m256 phase2_step(const __m256 *gk, __m256 xv, const float *a, int64_t d, int64_t j, float *pa) {
    __m256 dot0 = _mm256_setzero_ps(), dot1 = dot0;
    for (int k = 0; k < 8; k += 2) {
        dot0 = _mm256_fmadd_ps(gk[k], _mm256_loadu_ps(a + k * d + j), dot0);
        dot1 = _mm256_fmadd_ps(gk[k + 1], _mm256_loadu_ps(a + (k + 1) * d + j), dot1);
        _mm256_storeu_ps(pa + k * d + j, _mm256_fmadd_ps(gk[k], xv, _mm256_loadu_ps(pa + k * d + j)));
        _mm256_storeu_ps(pa + (k + 1) * d + j, _mm256_fmadd_ps(gk[k + 1], xv, _mm256_loadu_ps(pa + (k + 1) * d + j)));
    }
    return _mm256_add_ps(dot0, dot1);
}

/* The mask values of 8 elements from their byte of bits (bit i: element i kept). */
static inline __m256 bits_to_mask8(uint8_t byte, __m256 scale) {
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(byte), sel), sel);
    return _mm256_and_ps(_mm256_castsi256_ps(on), scale);
}

/* Phase 2 of a row's backward: pa (8 × d) += gl·(mask ⊙ x) and, when gxrow is given, gx += mask ⊙ (gl·A). */
static void phase2_row8(const float *xm, const float *mrow, int64_t d, const float *a, const float *gl, float *gxrow,
                        float *pa) {
    __m256 gk[8];
    for (int k = 0; k < 8; k++) gk[k] = _mm256_set1_ps(gl[k]);
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) {
        __m256 dot = phase2_step(gk, _mm256_loadu_ps(xm + j), a, d, j, pa);
        if (gxrow) {
            __m256 upd = mrow ? _mm256_mul_ps(_mm256_loadu_ps(mrow + j), dot) : dot;
            _mm256_storeu_ps(gxrow + j, _mm256_add_ps(_mm256_loadu_ps(gxrow + j), upd));
        }
    }
    for (; j < d; j++) {
        float dot = 0.0f;
        for (int k = 0; k < 8; k++) {
            dot += gl[k] * a[k * d + j];
            pa[k * d + j] += gl[k] * xm[j];
        }
        if (gxrow) gxrow[j] += mrow ? mrow[j] * dot : dot;
    }
}

/* phase2_row8 with the row's mask read from its bits (d % 8 == 0): x and the mask go straight into registers. */
static void phase2_row8_bits(const float *x, const uint8_t *bits, float scale, int64_t d, const float *a,
                             const float *gl, float *gxrow, float *pa) {
    const __m256 sv = _mm256_set1_ps(scale);
    __m256 gk[8];
    for (int k = 0; k < 8; k++) gk[k] = _mm256_set1_ps(gl[k]);
    for (int64_t j = 0; j < d; j += 8) {
        __m256 mv = bits_to_mask8(bits[j / 8], sv);
        __m256 dot = phase2_step(gk, _mm256_mul_ps(mv, _mm256_loadu_ps(x + j)), a, d, j, pa);
        if (gxrow) _mm256_storeu_ps(gxrow + j, _mm256_fmadd_ps(mv, dot, _mm256_loadu_ps(gxrow + j)));
    }
}
#endif

static void forward_row(const float *xm, int64_t d, const float *a, int64_t r, float *low) {
#ifdef __AVX2__
    if (r == 8) {
        forward_row8(xm, d, a, low);
        return;
    }
#endif
    for (int64_t k = 0; k < r; k++) {
        float sum = 0.0f;
        for (int64_t j = 0; j < d; j++) sum += a[k * d + j] * xm[j];
        low[k] = sum;
    }
}

/* One row of the backward: g_low = s·g·B, block partials pb (o × r) += s·g·lowᵀ and pa (r × d) += g_lowᵀ·(mask ⊙ x),
 * and gx += mask ⊙ (g_low·A) when gxrow is given. mrow: the row's mask (NULL: no dropout); xm: mask ⊙ x. */
static void backward_row(const float *xm, const float *mrow, const float *grow, int64_t d, int64_t o, const float *a,
                         const float *b, const float *lrow, int64_t r, float s, float *gxrow, float *pa, float *pb,
                         float *gl) {
#ifdef __AVX2__
    if (r == 8) {
        phase1_row8(grow, o, b, lrow, s, pb, gl);
        phase2_row8(xm, mrow, d, a, gl, gxrow, pa);
        return;
    }
#endif
    for (int64_t k = 0; k < r; k++) gl[k] = 0.0f;
    for (int64_t i = 0; i < o; i++)
        for (int64_t k = 0; k < r; k++) {
            gl[k] += grow[i] * b[i * r + k];
            pb[i * r + k] += grow[i] * s * lrow[k];
        }
    for (int64_t k = 0; k < r; k++) gl[k] *= s;
    for (int64_t j = 0; j < d; j++) {
        float dot = 0.0f;
        for (int64_t k = 0; k < r; k++) {
            dot += gl[k] * a[k * d + j];
            pa[k * d + j] += gl[k] * xm[j];
        }
        if (gxrow) gxrow[j] += mrow ? mrow[j] * dot : dot;
    }
}

/* A row's mask as bits (bit j % 8 of byte j / 8: kept) and back: the LoRA forward keeps d/8 bytes per row, so its
 * backward reads the mask instead of hashing it again. */
static void pack_bits(uint8_t *dst, const float *m, int64_t d) {
    int64_t j = 0;
#ifdef __AVX2__
    for (; j + 8 <= d; j += 8)
        dst[j / 8] = (uint8_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(m + j), _mm256_setzero_ps(), _CMP_NEQ_OQ));
#endif
    if (j < d) {
        uint8_t byte = 0;
        for (int64_t i = j; i < d; i++) byte |= (uint8_t)((m[i] != 0.0f) << (i - j));
        dst[j / 8] = byte;
    }
}

static void unpack_bits(float *m, const uint8_t *src, int64_t d, float scale) {
    int64_t j = 0;
#ifdef __AVX2__
    const __m256 sv = _mm256_set1_ps(scale);
    for (; j + 8 <= d; j += 8) _mm256_storeu_ps(m + j, bits_to_mask8(src[j / 8], sv));
#endif
    for (; j < d; j++) m[j] = (src[j / 8] >> (j % 8)) & 1 ? scale : 0.0f;
}

/* y[t, :] += bias + s·low[t, :]·Bᵀ for one row; bt is Bᵀ (r × o). One pass over the row, whatever r. */
static void add_low_row(float *yrow, int64_t o, const float *bt, int64_t r, float s, const float *lrow,
                        const float *bias) {
    int64_t i = 0;
#ifdef __AVX2__
    if (r == 8) {
        __m256 c[8];
        for (int k = 0; k < 8; k++) c[k] = _mm256_set1_ps(s * lrow[k]);
        for (; i + 8 <= o; i += 8) {  /* two accumulators: half the FMA latency chain */
            __m256 acc0 = _mm256_loadu_ps(yrow + i), acc1 = bias ? _mm256_loadu_ps(bias + i) : _mm256_setzero_ps();
            for (int k = 0; k < 8; k += 2) {
                acc0 = _mm256_fmadd_ps(c[k], _mm256_loadu_ps(bt + k * o + i), acc0);
                acc1 = _mm256_fmadd_ps(c[k + 1], _mm256_loadu_ps(bt + (k + 1) * o + i), acc1);
            }
            _mm256_storeu_ps(yrow + i, _mm256_add_ps(acc0, acc1));
        }
    }
#endif
    for (; i < o; i++) {
        float acc = yrow[i] + (bias ? bias[i] : 0.0f);
        for (int64_t k = 0; k < r; k++) acc += s * lrow[k] * bt[k * o + i];
        yrow[i] = acc;
    }
}

/* The forward of y = x·Wᵀ + bias + s·(mask ⊙ x)·Aᵀ·Bᵀ after y = x·Wᵀ (T × o): low[t, :] = A·(mask ⊙ x[t, :]) (A is
 * r × d, low T × r, kept for backward) and y[t, :] += bias + s·low[t, :]·Bᵀ (B is o × r; bias may be NULL), one
 * pass over the rows of x and y. masked = 0: no dropout. */
void lora_forward(const float *x, int64_t T, int64_t d, const float *a, int64_t r, float *low, int masked,
                  uint32_t k1, uint32_t k2, uint32_t t16, float scale, float *y, int64_t o, const float *b,
                  const float *bias, float s, uint8_t *bits) {
    float *bt = malloc(sizeof(float) * r * o);
    transpose(bt, b, o, r);
#pragma omp parallel
    {
        int64_t t0, t1;
        rows_of(T, omp_get_thread_num(), omp_get_num_threads(), &t0, &t1);
        float *xm = malloc(sizeof(float) * d);
        for (int64_t t = t0; t < t1; t++) {
            const float *row = x + t * d;
#ifdef __AVX2__
            if (masked && r == 8 && d % 16 == 0) {
                forward_row8_masked(row, d, a, low + t * 8, (uint32_t)((t * d) >> 1), k1, k2, t16, scale,
                                    bits ? bits + t * (d / 8) : NULL);
                add_low_row(y + t * o, o, bt, r, s, low + t * r, bias);
                continue;
            }
#endif
            if (masked) {
                mask_span(xm, t * d, d, k1, k2, t16, scale);
                if (bits) pack_bits(bits + t * ((d + 7) / 8), xm, d);
                for (int64_t j = 0; j < d; j++) xm[j] *= row[j];
                row = xm;
            }
            forward_row(row, d, a, r, low + t * r);
            add_low_row(y + t * o, o, bt, r, s, low + t * r, bias);
        }
        free(xm);
    }
    free(bt);
}

/* Backward of y = x·Wᵀ + s·(mask ⊙ x)·Aᵀ·Bᵀ given g = dL/dy (T × o), `low` the forward's (mask ⊙ x)·Aᵀ (T × r), B o × r:
 *   g_low = s·g·B;  g_b = s·gᵀ·low (o × r);  g_a = g_lowᵀ·(mask ⊙ x) (r × d);  gx += mask ⊙ (g_low·A) if gx.
 * Each thread takes a block of rows and sums its own g_a, g_b; the blocks are added at the end. */
void lora_backward(const float *x, const float *g, int64_t T, int64_t d, int64_t o, const float *a, const float *b,
                   const float *low, int64_t r, float s, float *gx, float *ga, float *gb, int masked,
                   uint32_t k1, uint32_t k2, uint32_t t16, float scale, const uint8_t *bits) {
    int nt = omp_get_max_threads();
    float *part_a = calloc((size_t)nt * r * d, sizeof(float));  /* per thread, r × d */
    float *part_b = calloc((size_t)nt * r * o, sizeof(float));  /* per thread, o × r */
    int used = 1;
#pragma omp parallel num_threads(nt)
    {
        int id = omp_get_thread_num(), n = omp_get_num_threads();
        if (id == 0) used = n;
        int64_t t0, t1;
        rows_of(T, id, n, &t0, &t1);
        float *pa = part_a + (size_t)id * r * d, *pb = part_b + (size_t)id * r * o;
        float *m = malloc(sizeof(float) * d), *xm = malloc(sizeof(float) * d), *gl = malloc(sizeof(float) * 4 * r);
        int64_t t = t0;
#ifdef __AVX2__
        for (; r == 8 && t + 4 <= t1; t += 4) {  /* phase 1 four rows at a time, then phase 2 row by row */
            phase1_rows4(g + t * o, o, b, low + t * 8, s, pb, gl);
            for (int q = 0; q < 4; q++) {
                const float *xrow = x + (t + q) * d;
                if (masked && bits && d % 8 == 0) {
                    phase2_row8_bits(xrow, bits + (t + q) * (d / 8), scale, d, a, gl + 8 * q,
                                     gx ? gx + (t + q) * d : NULL, pa);
                    continue;
                }
                if (masked) {
                    if (bits)
                        unpack_bits(m, bits + (t + q) * ((d + 7) / 8), d, scale);
                    else
                        mask_span(m, (t + q) * d, d, k1, k2, t16, scale);
                    for (int64_t j = 0; j < d; j++) xm[j] = m[j] * xrow[j];
                }
                phase2_row8(masked ? xm : xrow, masked ? m : NULL, d, a, gl + 8 * q, gx ? gx + (t + q) * d : NULL, pa);
            }
        }
#endif
        for (; t < t1; t++) {
            const float *xrow = x + t * d;
            if (masked) {
                if (bits)
                    unpack_bits(m, bits + t * ((d + 7) / 8), d, scale);
                else
                    mask_span(m, t * d, d, k1, k2, t16, scale);
                for (int64_t j = 0; j < d; j++) xm[j] = m[j] * xrow[j];
            }
            backward_row(masked ? xm : xrow, masked ? m : NULL, g + t * o, d, o, a, b, low + t * r, r, s,
                         gx ? gx + t * d : NULL, pa, pb, gl);
        }
        free(m); free(xm); free(gl);
    }
    for (int p = 1; p < used; p++) {
        for (int64_t i = 0; i < r * d; i++) part_a[i] += part_a[(size_t)p * r * d + i];
        for (int64_t i = 0; i < r * o; i++) part_b[i] += part_b[(size_t)p * r * o + i];
    }
    memcpy(ga, part_a, sizeof(float) * r * d);
    memcpy(gb, part_b, sizeof(float) * r * o);
    free(part_a); free(part_b);
}
