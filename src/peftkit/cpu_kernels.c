/* peftkit's CPU kernels: dropout masks from a counter-based hash, the LoRA layer's dropout and low-rank products
 * fused around its base GEMM, and encoder training attention per (batch, head). Built on first use by
 * cpu_kernels.py with the system C compiler (-O3 -march=native -fopenmp); loaded after torch, so OpenMP regions run
 * on torch's own thread pool (the same libgomp.so.1).
 *
 * Mask: element e of a call keyed by (k1, k2) reads lane e & 1 (low or high 16 bits) of
 * h = mix(mix((e >> 1) ^ k1) ^ k2), and is kept iff that lane >= t16 = round(p * 65536); kept elements are scaled
 * by 1 / (1 - p). The mask is a pure function of (key, e): backward regenerates it instead of storing it (the LoRA
 * layer keeps it as bits, cheaper than hashing again). mix is Chris Wellons' "lowbias32" integer hash.
 *
 * Tensors are float32 and row-major: contiguous, except where strides are passed. Sizes are int64.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <omp.h>

static inline uint32_t mix(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352dU;
    x ^= x >> 15;
    x *= 0x846ca68bU;
    x ^= x >> 16;
    return x;
}

#ifdef __AVX2__
#include <immintrin.h>

static inline __m256i mix8(__m256i x) {
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x7feb352dU));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x846ca68bU));
    return _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
}

/* The mask values of the 16 elements of pairs q0 .. q0 + 7 (elements 2·q0 ..), in element order, as two vectors. */
static inline void mask16v(__m256 *m0, __m256 *m1, uint32_t q0, uint32_t k1, uint32_t k2, uint32_t t16, float scale) {
    __m256i q = _mm256_add_epi32(_mm256_set1_epi32((int)q0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i h = mix8(_mm256_xor_si256(mix8(_mm256_xor_si256(q, _mm256_set1_epi32((int)k1))),
                                      _mm256_set1_epi32((int)k2)));
    /* lanes are in [0, 65535], so a signed compare with t16 - 1 is "lane >= t16" (t16 in [0, 65536]) */
    __m256i t = _mm256_set1_epi32((int)t16 - 1);
    __m256 sv = _mm256_set1_ps(scale);
    __m256 lo = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_and_si256(h, _mm256_set1_epi32(0xFFFF)), t)), sv);
    __m256 hi = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_srli_epi32(h, 16), t)), sv);
    __m256 a = _mm256_unpacklo_ps(lo, hi), b = _mm256_unpackhi_ps(lo, hi);  /* pairs 0,1,4,5 / 2,3,6,7 */
    *m0 = _mm256_permute2f128_ps(a, b, 0x20);
    *m1 = _mm256_permute2f128_ps(a, b, 0x31);
}

static inline void mask16(float *out, uint32_t q0, uint32_t k1, uint32_t k2, uint32_t t16, float scale) {
    __m256 m0, m1;
    mask16v(&m0, &m1, q0, k1, k2, t16, scale);
    _mm256_storeu_ps(out, m0);
    _mm256_storeu_ps(out + 8, m1);
}
#endif

/* buf[i] = mask value of element e0 + i, for i < len. AVX2: 16 elements (8 hashes) at a time, the ends through a
 * small buffer, so short rows (attention's keys) are not left to a scalar remainder loop. */
static void mask_span(float *buf, int64_t e0, int64_t len, uint32_t k1, uint32_t k2, uint32_t t16, float scale) {
    if (len <= 0) return;
#ifdef __AVX2__
    float tmp[16];
    uint32_t q = (uint32_t)(e0 >> 1);
    int64_t done = 0;
    if (e0 & 1) {  /* first element is a pair's high lane */
        mask16(tmp, q, k1, k2, t16, scale);
        int64_t n = len < 15 ? len : 15;
        memcpy(buf, tmp + 1, sizeof(float) * n);
        done = n;
        q += 8;
    }
    for (; done + 16 <= len; done += 16, q += 8) mask16(buf + done, q, k1, k2, t16, scale);
    if (done < len) {
        mask16(tmp, q, k1, k2, t16, scale);
        memcpy(buf + done, tmp, sizeof(float) * (len - done));
    }
#else
    for (int64_t i = 0; i < len; i++) {
        int64_t e = e0 + i;
        uint32_t h = mix(mix((uint32_t)(e >> 1) ^ k1) ^ k2);
        buf[i] = ((e & 1) ? (h >> 16) : (h & 0xFFFFU)) >= t16 ? scale : 0.0f;
    }
#endif
}

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

/* The rows [t0, t1) that thread `id` of `n` takes. */
static void rows_of(int64_t rows, int id, int n, int64_t *t0, int64_t *t1) {
    *t0 = rows * id / n;
    *t1 = rows * (id + 1) / n;
}

/* dst (m × n) = srcᵀ, src n × m. */
static void transpose(float *dst, const float *src, int64_t n, int64_t m) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < m; k++) dst[k * n + i] = src[i * m + k];
}

/* The rank-r rows below: an AVX2 version for r = 8 (one register holds a rank-8 row) and a plain one for any r. */
#ifdef __AVX2__

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

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

/* Phase 2 of a row's backward: pa (8 × d) += gl·(mask ⊙ x) and, when gxrow is given, gx += mask ⊙ (gl·A). */
static void phase2_row8(const float *xm, const float *mrow, int64_t d, const float *a, const float *gl, float *gxrow,
                        float *pa) {
    __m256 gk[8];
    for (int k = 0; k < 8; k++) gk[k] = _mm256_set1_ps(gl[k]);
    int64_t j = 0;
    for (; j + 8 <= d; j += 8) {
        __m256 xv = _mm256_loadu_ps(xm + j), dot0 = _mm256_setzero_ps(), dot1 = dot0;
        for (int k = 0; k < 8; k += 2) {  /* two dot accumulators: half the FMA latency chain */
            dot0 = _mm256_fmadd_ps(gk[k], _mm256_loadu_ps(a + k * d + j), dot0);
            dot1 = _mm256_fmadd_ps(gk[k + 1], _mm256_loadu_ps(a + (k + 1) * d + j), dot1);
            _mm256_storeu_ps(pa + k * d + j, _mm256_fmadd_ps(gk[k], xv, _mm256_loadu_ps(pa + k * d + j)));
            _mm256_storeu_ps(pa + (k + 1) * d + j,
                             _mm256_fmadd_ps(gk[k + 1], xv, _mm256_loadu_ps(pa + (k + 1) * d + j)));
        }
        __m256 dot = _mm256_add_ps(dot0, dot1);
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
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 sv = _mm256_set1_ps(scale);
    __m256 gk[8];
    for (int k = 0; k < 8; k++) gk[k] = _mm256_set1_ps(gl[k]);
    for (int64_t j = 0; j < d; j += 8) {
        __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(bits[j / 8]), sel), sel);
        __m256 mv = _mm256_and_ps(_mm256_castsi256_ps(on), sv);
        __m256 xv = _mm256_mul_ps(mv, _mm256_loadu_ps(x + j)), dot0 = _mm256_setzero_ps(), dot1 = dot0;
        for (int k = 0; k < 8; k += 2) {
            dot0 = _mm256_fmadd_ps(gk[k], _mm256_loadu_ps(a + k * d + j), dot0);
            dot1 = _mm256_fmadd_ps(gk[k + 1], _mm256_loadu_ps(a + (k + 1) * d + j), dot1);
            _mm256_storeu_ps(pa + k * d + j, _mm256_fmadd_ps(gk[k], xv, _mm256_loadu_ps(pa + k * d + j)));
            _mm256_storeu_ps(pa + (k + 1) * d + j,
                             _mm256_fmadd_ps(gk[k + 1], xv, _mm256_loadu_ps(pa + (k + 1) * d + j)));
        }
        if (gxrow)
            _mm256_storeu_ps(gxrow + j, _mm256_fmadd_ps(mv, _mm256_add_ps(dot0, dot1), _mm256_loadu_ps(gxrow + j)));
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
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 sv = _mm256_set1_ps(scale);
    for (; j + 8 <= d; j += 8) {
        __m256i on = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(src[j / 8]), sel), sel);
        _mm256_storeu_ps(m + j, _mm256_and_ps(_mm256_castsi256_ps(on), sv));
    }
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
 * score gradients (kept transposed), one pass over the keys then sums dk and dv in registers (updating them
 * query by query chained every update on the previous store: profiled, 60% of the backward). */
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
