/* Encoder training attention per (batch, head): scores, padding mask, softmax, dropout and ·v in one loop, all the
 * gradients in the other (models/cpu_attention.py). */
#include "kernels.h"

/* row[j] = exp(row[j] - mx) for j < n; returns their sum. AVX2: Cephes' expf polynomial (float precision, ~1 ulp)
 * 8 at a time, the last < 8 through a small buffer, and 0 below -87 (masked keys), so no denormal weights slow the
 * products down. */
#ifdef __AVX2__
static inline __m256 exp8(__m256 x0) {
    __m256 x = _mm256_max_ps(x0, _mm256_set1_ps(-87.0f));
    __m256 e = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(e, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(e), _mm256_set1_epi32(127)), 23);
    __m256 big = _mm256_cmp_ps(x0, _mm256_set1_ps(-87.0f), _CMP_GE_OQ);  /* exp below -87: 0, as in torch */
    return _mm256_and_ps(big, _mm256_mul_ps(p, _mm256_castsi256_ps(pow2)));
}
#endif

static float exp_shifted(float *row, int64_t n, float mx) {
    int64_t j = 0;
#ifdef __AVX2__
    const __m256 m = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) {
        __m256 y = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + j), m));
        _mm256_storeu_ps(row + j, y);
        acc = _mm256_add_ps(acc, y);
    }
    if (j < n) {
        float tmp[8];
        for (int t = 0; t < 8; t++) tmp[t] = j + t < n ? row[j + t] : -INFINITY;  /* exp(-inf) = 0: adds nothing */
        __m256 y = exp8(_mm256_sub_ps(_mm256_loadu_ps(tmp), m));
        _mm256_storeu_ps(tmp, y);
        acc = _mm256_add_ps(acc, y);
        memcpy(row + j, tmp, sizeof(float) * (n - j));
    }
    return hsum(acc);
#else
    float sum = 0.0f;
    for (; j < n; j++) sum += (row[j] = expf(row[j] - mx));
    return sum;
#endif
}

/* Dot products and axpys along a head dimension D: AVX2 when D is a multiple of 8 (unaligned loads, no scalar
 * prologue), plain loops otherwise. The attention's rows are short (D = 32 or 64), where a compiler's generic
 * vector loop spends most of its time peeling. */
static inline float dot_d(const float *a, const float *b, int64_t D) {
#ifdef __AVX2__
    if (D % 8 == 0) {
        __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
        int64_t c = 0;
        for (; c + 16 <= D; c += 16) {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c + 8), _mm256_loadu_ps(b + c + 8), acc1);
        }
        if (c < D) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c), acc0);
        return hsum(_mm256_add_ps(acc0, acc1));
    }
#endif
    float sum = 0.0f;
    for (int64_t c = 0; c < D; c++) sum += a[c] * b[c];
    return sum;
}

static inline void axpy_d(float *y, float alpha, const float *x, int64_t D) {
#ifdef __AVX2__
    if (D % 8 == 0) {
        __m256 av = _mm256_set1_ps(alpha);
        for (int64_t c = 0; c < D; c += 8)
            _mm256_storeu_ps(y + c, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + c), _mm256_loadu_ps(y + c)));
        return;
    }
#endif
    for (int64_t c = 0; c < D; c++) y[c] += alpha * x[c];
}

/* out[j] = a·rows[j] for n rows of length D, `stride` floats apart: 8 rows at a time with one transposing
 * reduction for all eight (a horizontal sum per row stalled on its own latency: profiled, a third of the forward).
 * A last block of fewer than 8 rows repeats its last row and keeps only what it needs (short rows: S = 30 keys left
 * 6 to a scalar loop). */
#ifdef __AVX2__
static inline void dots8(float *out8, const float *a, const float *const *r, int64_t D) {
    __m256 acc[8];
    for (int t = 0; t < 8; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t c = 0; c < D; c += 8) {
        __m256 av = _mm256_loadu_ps(a + c);
        for (int t = 0; t < 8; t++) acc[t] = _mm256_fmadd_ps(av, _mm256_loadu_ps(r[t] + c), acc[t]);
    }
    __m256 t0 = _mm256_hadd_ps(acc[0], acc[1]), t1 = _mm256_hadd_ps(acc[2], acc[3]);
    __m256 t2 = _mm256_hadd_ps(acc[4], acc[5]), t3 = _mm256_hadd_ps(acc[6], acc[7]);
    t0 = _mm256_hadd_ps(t0, t1);
    t2 = _mm256_hadd_ps(t2, t3);
    _mm256_storeu_ps(out8, _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20), _mm256_permute2f128_ps(t0, t2, 0x31)));
}
#endif

static void dots(float *out, const float *a, const float *rows, int64_t stride, int64_t n, int64_t D) {
    int64_t j = 0;
#ifdef __AVX2__
    if (D % 8 == 0) {
        const float *r[8];
        for (; j + 8 <= n; j += 8) {
            for (int t = 0; t < 8; t++) r[t] = rows + (j + t) * stride;
            dots8(out + j, a, r, D);
        }
        if (j < n) {
            float tmp[8];
            for (int t = 0; t < 8; t++) r[t] = rows + (j + t < n ? j + t : n - 1) * stride;
            dots8(tmp, a, r, D);
            memcpy(out + j, tmp, sizeof(float) * (n - j));
        }
        return;
    }
#endif
    for (; j < n; j++) out[j] = dot_d(a, rows + j * stride, D);
}

/* out = Σ_j w[j]·rows[j] over n rows of length D, `stride` floats apart. For D = 32 or 64 the sum stays in
 * registers: accumulating in memory chained every row's update on the previous store (profiled: half the
 * attention's time). */
static inline __attribute__((always_inline)) void weighted_rows_nv(float *out, const float *w, int64_t ws,
                                                                   const float *rows, int64_t stride, int64_t n,
                                                                   const int nv) {
#ifdef __AVX2__
    /* D = 32 (nv = 4): even and odd rows in separate accumulators, so four FMAs are not waiting on the last four */
    __m256 acc[8], odd[4];
    for (int c = 0; c < nv; c++) acc[c] = _mm256_setzero_ps();
    for (int c = 0; c < 4; c++) odd[c] = _mm256_setzero_ps();
    int64_t j = 0;
    if (nv == 4) {
        for (; j + 2 <= n; j += 2) {
            __m256 w0 = _mm256_set1_ps(w[j * ws]), w1 = _mm256_set1_ps(w[(j + 1) * ws]);
            const float *r0 = rows + j * stride, *r1 = r0 + stride;
            for (int c = 0; c < 4; c++) {
                acc[c] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(r0 + 8 * c), acc[c]);
                odd[c] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(r1 + 8 * c), odd[c]);
            }
        }
    }
    for (; j < n; j++) {
        __m256 wv = _mm256_set1_ps(w[j * ws]);
        const float *rj = rows + j * stride;
        for (int c = 0; c < nv; c++) acc[c] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(rj + 8 * c), acc[c]);
    }
    for (int c = 0; c < nv; c++) _mm256_storeu_ps(out + 8 * c, nv == 4 ? _mm256_add_ps(acc[c], odd[c]) : acc[c]);
#else
    (void)out; (void)w; (void)ws; (void)rows; (void)stride; (void)n; (void)nv;
#endif
}

/* ... with the weights `ws` floats apart (a column of a row-major matrix). */
static void weighted_rows_s(float *out, const float *w, int64_t ws, const float *rows, int64_t stride, int64_t n,
                            int64_t D) {
#ifdef __AVX2__
    if (D == 32) {
        weighted_rows_nv(out, w, ws, rows, stride, n, 4);
        return;
    }
    if (D == 64) {
        weighted_rows_nv(out, w, ws, rows, stride, n, 8);
        return;
    }
#endif
    memset(out, 0, sizeof(float) * D);
    for (int64_t j = 0; j < n; j++) axpy_d(out, w[j * ws], rows + j * stride, D);
}

static void weighted_rows(float *out, const float *w, const float *rows, int64_t stride, int64_t n, int64_t D) {
    weighted_rows_s(out, w, 1, rows, stride, n, D);
}

/* Training attention for one (batch, head) pair per task: softmax(q·kᵀ·scale + mask) → dropout → ·v.
 * q, k, v: (B, H, S, D) views with the given batch/head/position strides and unit stride along D (transformers'
 * transposed projections, read in place). mask: additive float, indexed [b, i, j] with strides (0 to broadcast),
 * or NULL. probs: (B, H, Sq, Sk) contiguous, the softmax output kept for backward. out: (B, Sq, H, D) contiguous.
 * The dropout mask of probs[b, h, i, j] is element ((b·H + h)·Sq + i)·Sk + j of the key's mask: the mask
 * `mask_apply` would give a contiguous probs tensor. */
void attn_forward(const float *q, const float *k, const float *v, int64_t B, int64_t H, int64_t Sq, int64_t Sk,
                  int64_t D, const int64_t *qs, const int64_t *ks, const int64_t *vs, const float *mask,
                  const int64_t *ms, float scale, float *probs, float *out, int masked, uint32_t k1, uint32_t k2,
                  uint32_t t16, float dscale) {
#pragma omp parallel
    {
        float *m = malloc(sizeof(float) * Sk);
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            int64_t b = bh / H, h = bh % H;
            for (int64_t i = 0; i < Sq; i++) {
                const float *qi = q + b * qs[0] + h * qs[1] + i * qs[2];
                float *row = probs + (bh * Sq + i) * Sk, mx = -INFINITY;
                dots(row, qi, k + b * ks[0] + h * ks[1], ks[2], Sk, D);
                const float *mrow = mask ? mask + b * ms[0] + i * ms[1] : NULL;
                int64_t j = 0;
#ifdef __AVX2__
                if (!mrow || ms[2] == 1) {  /* scale, mask and running max 8 at a time */
                    __m256 sv = _mm256_set1_ps(scale), mv = _mm256_set1_ps(-INFINITY);
                    for (; j + 8 <= Sk; j += 8) {
                        __m256 x = _mm256_mul_ps(_mm256_loadu_ps(row + j), sv);
                        if (mrow) x = _mm256_add_ps(x, _mm256_loadu_ps(mrow + j));
                        _mm256_storeu_ps(row + j, x);
                        mv = _mm256_max_ps(mv, x);
                    }
                    float m8[8];
                    _mm256_storeu_ps(m8, mv);
                    for (int t = 0; t < 8; t++) mx = m8[t] > mx ? m8[t] : mx;
                }
#endif
                for (; j < Sk; j++) {
                    row[j] = row[j] * scale + (mrow ? mrow[j * ms[2]] : 0.0f);
                    mx = row[j] > mx ? row[j] : mx;
                }
                float inv = 1.0f / exp_shifted(row, Sk, mx);
                for (j = 0; j < Sk; j++) row[j] *= inv;
                if (masked) {
                    mask_span(m, (bh * Sq + i) * Sk, Sk, k1, k2, t16, dscale);
                    for (int64_t j = 0; j < Sk; j++) m[j] *= row[j];  /* the dropped weights */
                }
                weighted_rows(out + ((b * Sq + i) * H + h) * D, masked ? m : row, v + b * vs[0] + h * vs[1], vs[2],
                              Sk, D);
            }
        }
        free(m);
    }
}

/* Backward of attn_forward given g = dL/dout (B, Sq, H, D) contiguous: dq (B, Sq, H, D) and dk, dv (B, Sk, H, D),
 * contiguous, written whole. Per (batch, head): one pass over the queries gives dq and the dropped weights and
 * score gradients (rows of query × key, written in 8-wide vectors), one pass over the keys then sums dk and dv in
 * registers, reading those rows by column (updating dk/dv query by query chained every update on the previous
 * store: profiled, 60% of the backward). */
void attn_backward(const float *q, const float *k, const float *v, int64_t B, int64_t H, int64_t Sq, int64_t Sk,
                   int64_t D, const int64_t *qs, const int64_t *ks, const int64_t *vs, const float *probs,
                   const float *g, float scale, float *dq, float *dk, float *dv, int masked, uint32_t k1,
                   uint32_t k2, uint32_t t16, float dscale) {
#pragma omp parallel
    {
        float *m = malloc(sizeof(float) * Sk), *ds = malloc(sizeof(float) * Sk);
        float *wt = malloc(sizeof(float) * Sq * Sk), *st = malloc(sizeof(float) * Sq * Sk);  /* [i][j] */
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < B * H; bh++) {
            int64_t b = bh / H, h = bh % H;
            const float *g0 = g + (b * Sq * H + h) * D;  /* query i's gradient row: g0 + i·H·D */
            for (int64_t i = 0; i < Sq; i++) {
                const float *row = probs + (bh * Sq + i) * Sk, *gi = g0 + i * H * D;
                float *wrow = wt + i * Sk, *srow = st + i * Sk;
                if (masked) mask_span(m, (bh * Sq + i) * Sk, Sk, k1, k2, t16, dscale);
                dots(ds, gi, v + b * vs[0] + h * vs[1], vs[2], Sk, D);
                float c = 0.0f;
                int64_t j = 0;
#ifdef __AVX2__
                __m256 cv = _mm256_setzero_ps();
                for (; j + 8 <= Sk; j += 8) {
                    __m256 p = _mm256_loadu_ps(row + j), d = _mm256_loadu_ps(ds + j);
                    __m256 mj = masked ? _mm256_loadu_ps(m + j) : _mm256_set1_ps(1.0f);
                    d = _mm256_mul_ps(d, mj);  /* gradient at the softmax output */
                    _mm256_storeu_ps(ds + j, d);
                    cv = _mm256_fmadd_ps(p, d, cv);
                    _mm256_storeu_ps(wrow + j, _mm256_mul_ps(p, mj));  /* the dropped weight: dv_j = Σ_i w_ij·g_i */
                }
                c = hsum(cv);
#endif
                for (; j < Sk; j++) {
                    float mj = masked ? m[j] : 1.0f;
                    ds[j] *= mj;
                    c += row[j] * ds[j];
                    wrow[j] = row[j] * mj;
                }
                for (j = 0; j < Sk; j++) srow[j] = row[j] * (ds[j] - c) * scale;  /* gradient at the scores */
                weighted_rows(dq + ((b * Sq + i) * H + h) * D, srow, k + b * ks[0] + h * ks[1], ks[2], Sk, D);
            }
            for (int64_t j = 0; j < Sk; j++) {
                weighted_rows_s(dv + ((b * Sk + j) * H + h) * D, wt + j, Sk, g0, H * D, Sq, D);
                weighted_rows_s(dk + ((b * Sk + j) * H + h) * D, st + j, Sk, q + b * qs[0] + h * qs[1], qs[2], Sq, D);
            }
        }
        free(m);
        free(ds);
        free(wt);
        free(st);
    }
}
