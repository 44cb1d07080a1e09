/* peftkit's CPU kernels: dropout masks from a counter-based hash, the LoRA layer's dropout and low-rank products
 * fused around its base GEMM (lora.c), and encoder training attention per (batch, head) (attention.c). This header
 * holds what both use: the mask hash, horizontal sums, row blocks per thread. Built on first use by cpu_kernels.py
 * with the system C compiler (-O3 -march=native -fopenmp) into one library; loaded after torch, so OpenMP regions
 * run on torch's own thread pool (the same libgomp.so.1).
 *
 * Mask: element e of a call keyed by (k1, k2) reads lane e & 1 (low or high 16 bits) of
 * h = mix(mix((e >> 1) ^ k1) ^ k2), and is kept iff that lane >= t16 = round(p * 65536); kept elements are scaled
 * by 1 / (1 - p). The mask is a pure function of (key, e): backward regenerates it instead of storing it (the LoRA
 * layer keeps it as bits, cheaper than hashing again). mix is Chris Wellons' "lowbias32" integer hash.
 *
 * Tensors are float32 and row-major: contiguous, except where strides are passed. Sizes are int64.
 */
#ifndef PEFTKIT_KERNELS_H
#define PEFTKIT_KERNELS_H

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
    __m256i lanes_lo = _mm256_and_si256(h, _mm256_set1_epi32(0xFFFF));
    __m256 lo = _mm256_and_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(lanes_lo, t)), sv);
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
static inline void mask_span(float *buf, int64_t e0, int64_t len, uint32_t k1, uint32_t k2, uint32_t t16, float scale) {
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

#ifdef __AVX2__
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* The rows [t0, t1) that thread `id` of `n` takes. */
static inline void rows_of(int64_t rows, int id, int n, int64_t *t0, int64_t *t1) {
    *t0 = rows * id / n;
    *t1 = rows * (id + 1) / n;
}

#endif
