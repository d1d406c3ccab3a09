/* CPU kernels where torch's per-op cost and oneDNN's GEMV fall short of the machine: GEMV at memory speed for
 * decode batches (bf16 weights streamed row by row with AVX512-BF16 dot products, fp32 with FMAs), the same with
 * the MLP's SiLU-and-multiply fused in, causal attention over the paged K/V for extend and decode (rows read in
 * place), the per-layer element-wise ops (RMSNorm with the residual add, rotary, SiLU-and-multiply), and every
 * decoder layer of a decode step in one call (sgl_decode_layers: dense bf16/fp32 weights for batches of up to 4,
 * or packed fp32 copies for small models at any batch).
 *
 * Built once per machine by kernel/cpu_native.py (the system C compiler, -fopenmp: the library shares the
 * OpenMP runtime torch already loaded), called through ctypes. Plain-torch references: F.linear,
 * F.silu(gate) * up, reference.extend_attention_ref / decode_attention_ref, reference.rms_norm_ref and the
 * model's rotary embedding; tests/test_cpu_native.py holds them side by side (the fused layer: the model's
 * layer-by-layer path, tests/test_model_parity.py). Rounding follows torch's bf16
 * ops: fp32 accumulation, one round-to-nearest-even per op torch would run. */

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint16_t bf16;

/* Two prefetches per 64-byte load of a weight row: 1 KiB further along the row into L1, and the same place
 * in the next block of R rows (R * K elements on) into L2. Measured on Qwen2.5-0.5B's layer weights (2-core
 * Xeon): the gate-up projection's short rows (896) went from 20 to 25 GB/s, the whole layer from 23 to 25;
 * either prefetch alone, or a fixed 4 KiB, did worse. */
#define PREFETCH_BYTES 1024
#define PREFETCH_ROW(row, R, K)                                                                         \
    do {                                                                                                \
        _mm_prefetch((const char *)(row) + PREFETCH_BYTES, _MM_HINT_T0);                                \
        _mm_prefetch((const char *)((row) + (int64_t)(R) * (K)), _MM_HINT_T1);                          \
    } while (0)

static inline float bf16_to_f32(bf16 h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline bf16 f32_to_bf16(float f) { /* round to nearest even, NaN kept quiet, as torch does */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

static inline float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

/* Flush denormal results and inputs to zero on this thread (attention's tiny softmax weights: each denormal
 * operation costs a microcode assist); returns the old MXCSR to restore. */
static inline unsigned flush_denormals(void) {
    const unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u); /* FTZ | DAZ */
    return csr;
}

/* 16 lanes of bf16 (elem 2) or fp32 (elem 4) values as fp32, masked loads and stores for a row's tail. A bf16
 * result is rounded wherever torch's bf16 ops round (each op's output); fp32 needs no rounding. */
static inline __m512 load16m(const void *base, int64_t at, int elem, __mmask16 m) {
    if (elem == 4) return _mm512_maskz_loadu_ps(m, (const float *)base + at);
    const __m256i h = _mm256_maskz_loadu_epi16(m, (const bf16 *)base + at);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline void store16m(void *base, int64_t at, int elem, __mmask16 m, __m512 v) {
    if (elem == 4)
        _mm512_mask_storeu_ps((float *)base + at, m, v);
    else
        _mm256_mask_storeu_epi16((bf16 *)base + at, m, (__m256i)_mm512_cvtneps_pbh(v));
}

static inline __m512 round16(__m512 v, int elem) { /* to the storage dtype and back: torch's per-op rounding */
    if (elem == 4) return v;
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(v)), 16));
}

static inline __mmask16 tail16(int64_t left) { return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1); }

/* acc[b][r] += x[b, k:k+32] . w[r, k:k+32] for one chunk of 32 bf16 (a masked tail when mask != ~0). */
#define DOT_CHUNK_BF16(R, NB, mask)                                                                     \
    do {                                                                                                \
        __m512bh xv[NB];                                                                                \
        for (int b = 0; b < NB; b++)                                                                    \
            xv[b] = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + (int64_t)b * ldx + k);                 \
        for (int r = 0; r < R; r++) {                                                                   \
            const bf16 *row = w + (int64_t)r * K + k;                                                   \
            PREFETCH_ROW(row, R, K);                                                                    \
            __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, row);                                \
            for (int b = 0; b < NB; b++) acc[b][r] = _mm512_dpbf16_ps(acc[b][r], wv, xv[b]);            \
        }                                                                                               \
    } while (0)

/* The same for one chunk of 16 fp32 (one 64-byte load of each row, as bf16's 32). */
#define DOT_CHUNK_F32(R, NB, mask)                                                                      \
    do {                                                                                                \
        __m512 xv[NB];                                                                                  \
        for (int b = 0; b < NB; b++) xv[b] = _mm512_maskz_loadu_ps(mask, x + (int64_t)b * ldx + k);     \
        for (int r = 0; r < R; r++) {                                                                   \
            const float *row = w + (int64_t)r * K + k;                                                  \
            PREFETCH_ROW(row, R, K);                                                                    \
            __m512 wv = _mm512_maskz_loadu_ps(mask, row);                                               \
            for (int b = 0; b < NB; b++) acc[b][r] = _mm512_fmadd_ps(wv, xv[b], acc[b][r]);             \
        }                                                                                               \
    } while (0)

/* out[b][r] = x[b] . w[r] for R consecutive weight rows and NB input rows (R * NB accumulators), weights of
 * type T taken STEP at a time. */
#define DEFINE_BLOCK(T, STEP, CHUNK, MASK, R, NB)                                                       \
    static void block_##T##_##R##_##NB(const T *x, int64_t ldx, const T *w, int64_t K, float out[][16]) { \
        __m512 acc[NB][R];                                                                              \
        for (int b = 0; b < NB; b++)                                                                    \
            for (int r = 0; r < R; r++) acc[b][r] = _mm512_setzero_ps();                                \
        int64_t k = 0;                                                                                  \
        for (; k + STEP <= K; k += STEP) CHUNK(R, NB, (MASK)~0ull);                                     \
        if (k < K) CHUNK(R, NB, (MASK)((1ull << (K - k)) - 1));                                         \
        for (int b = 0; b < NB; b++)                                                                    \
            for (int r = 0; r < R; r++) out[b][r] = _mm512_reduce_add_ps(acc[b][r]);                    \
    }

#define DEFINE_BLOCKS(T, STEP, CHUNK, MASK)                                                             \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 16, 1)                                                           \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 8, 2)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 4, 3)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 4, 4)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 2, 5)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 2, 6)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 2, 7)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 2, 8)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 1, 1)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 1, 2)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 1, 3)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 1, 4)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 1, 5)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 1, 6)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 1, 7)                                                            \
    DEFINE_BLOCK(T, STEP, CHUNK, MASK, 1, 8)                                                            \
    /* out[b][r] for weight rows [0, rows) of w, rows being block_rows(nb) or 1. */                     \
    static void dot_block_##T(const T *x, int64_t ldx, const T *w, int64_t K, int nb, int rows, float out[][16]) {\
        if (rows == 1) {                                                                                \
            switch (nb) {                                                                               \
                case 1: block_##T##_1_1(x, ldx, w, K, out); return;                                     \
                case 2: block_##T##_1_2(x, ldx, w, K, out); return;                                     \
                case 3: block_##T##_1_3(x, ldx, w, K, out); return;                                     \
                case 4: block_##T##_1_4(x, ldx, w, K, out); return;                                     \
                case 5: block_##T##_1_5(x, ldx, w, K, out); return;                                     \
                case 6: block_##T##_1_6(x, ldx, w, K, out); return;                                     \
                case 7: block_##T##_1_7(x, ldx, w, K, out); return;                                     \
                default: block_##T##_1_8(x, ldx, w, K, out); return;                                    \
            }                                                                                           \
        }                                                                                               \
        switch (nb) {                                                                                   \
            case 1: block_##T##_16_1(x, ldx, w, K, out); return;                                        \
            case 2: block_##T##_8_2(x, ldx, w, K, out); return;                                         \
            case 3: block_##T##_4_3(x, ldx, w, K, out); return;                                         \
            case 4: block_##T##_4_4(x, ldx, w, K, out); return;                                         \
            case 5: block_##T##_2_5(x, ldx, w, K, out); return;                                         \
            case 6: block_##T##_2_6(x, ldx, w, K, out); return;                                         \
            case 7: block_##T##_2_7(x, ldx, w, K, out); return;                                         \
            default: block_##T##_2_8(x, ldx, w, K, out); return;                                        \
        }                                                                                               \
    }

typedef float f32;
DEFINE_BLOCKS(bf16, 32, DOT_CHUNK_BF16, __mmask32)
DEFINE_BLOCKS(f32, 16, DOT_CHUNK_F32, __mmask16)

enum { MAX_ROWS = 8 };

/* Weight rows sharing each load of the input rows: 16 accumulators a block. */
static int block_rows(int nb) { return nb == 1 ? 16 : nb == 2 ? 8 : nb <= 4 ? 4 : 2; }

static inline float load_elem(const void *base, int64_t at, int elem) {
    return elem == 4 ? ((const float *)base)[at] : bf16_to_f32(((const bf16 *)base)[at]);
}

/* y[b, n] = x[b] . w[n] + bias[n] for B <= MAX_ROWS rows and n < N; w is [N, K] row-major (bias may be NULL),
 * all of one dtype, bf16 (elem 2) or fp32 (elem 4). Each output sums the same chunks in the same order at any
 * B, so a row's result does not depend on the batch around it. With silu_mul, w is a gate-up projection [2N, K]
 * (gate rows, then up rows) and y[b, n] = silu(gate) * up: the MLP's projection and activation in one pass.
 * bf16 rounds gate, up, silu(gate) and the product as torch's ops do. Blocks of rows are shared among the
 * threads of the enclosing parallel region (an orphaned `omp for`, ending in its barrier), guided rather than
 * static: on this shared 2-core machine one thread often streams 10-15 % slower than the other, and a static
 * split made the faster one wait at every projection's barrier (Qwen2.5-0.5B's bf16 batch-1 layers: 0.93-0.985
 * of the time, alternated in one process). */
static void gemv_team(const void *x, int64_t ldx, const void *w, const void *bias, void *y, int64_t ldy, int B,
                      int64_t N, int64_t K, int silu_mul, int elem) {
    const int R = block_rows(B);
    const int64_t blocks = N / R;
#pragma omp for schedule(guided)
    for (int64_t i = 0; i < blocks + (N - blocks * R); i++) {
        const int64_t n = i < blocks ? i * R : blocks * R + (i - blocks);
        const int rows = i < blocks ? R : 1;
        float acc[MAX_ROWS][16], up[MAX_ROWS][16];
        if (elem == 4) {
            dot_block_f32(x, ldx, (const float *)w + n * K, K, B, rows, acc);
            if (silu_mul) dot_block_f32(x, ldx, (const float *)w + (N + n) * K, K, B, rows, up);
        } else {
            dot_block_bf16(x, ldx, (const bf16 *)w + n * K, K, B, rows, acc);
            if (silu_mul) dot_block_bf16(x, ldx, (const bf16 *)w + (N + n) * K, K, B, rows, up);
        }
        for (int b = 0; b < B; b++)
            for (int r = 0; r < rows; r++) {
                float v = acc[b][r] + (bias ? load_elem(bias, n + r, elem) : 0.0f);
                if (silu_mul) {
                    const float u = up[b][r] + (bias ? load_elem(bias, N + n + r, elem) : 0.0f);
                    if (elem == 4) {
                        v = v / (1.0f + expf(-v)) * u;
                    } else {
                        const float g = round_bf16(v);
                        v = round_bf16(g / (1.0f + expf(-g))) * round_bf16(u);
                    }
                }
                if (elem == 4)
                    ((float *)y)[b * ldy + n + r] = v;
                else
                    ((bf16 *)y)[b * ldy + n + r] = f32_to_bf16(v);
            }
    }
}

static int gemv_rows(const void *x, int64_t ldx, const void *w, const void *bias, void *y, int64_t ldy, int B,
                     int64_t N, int64_t K, int threads, int silu_mul, int elem) {
    if (B < 1 || B > MAX_ROWS || (elem != 2 && elem != 4)) return 1;
#pragma omp parallel num_threads(threads)
    gemv_team(x, ldx, w, bias, y, ldy, B, N, K, silu_mul, elem);
    return 0;
}

/* The GEMV entry points: weights [N, K] (silu_mul: [2N, K]) of dtype elem (2: bf16, 4: fp32). */
int sgl_gemv(const void *x, int64_t ldx, const void *w, const void *bias, void *y, int64_t ldy, int B, int64_t N,
             int64_t K, int threads, int elem) {
    return gemv_rows(x, ldx, w, bias, y, ldy, B, N, K, threads, 0, elem);
}

int sgl_gemv_silu_mul(const void *x, int64_t ldx, const void *w, const void *bias, void *y, int64_t ldy, int B,
                      int64_t I, int64_t K, int threads, int elem) {
    return gemv_rows(x, ldx, w, bias, y, ldy, B, I, K, threads, 1, elem);
}

/* One row of sgl_add_rms_norm (out may be x's own row: x is read before out is written). */
static inline void norm_row(const void *x, int64_t xi, void *residual, int64_t ri, const void *weight, void *out,
                            int64_t oi, int64_t dim, float eps, int elem) {
    __m512 sq = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; d += 16) {
        const __mmask16 m = tail16(dim - d);
        __m512 v = load16m(x, xi + d, elem, m);
        if (residual) {
            v = round16(_mm512_add_ps(v, load16m(residual, ri + d, elem, m)), elem);
            store16m(residual, ri + d, elem, m, v);
        }
        sq = _mm512_fmadd_ps(v, v, sq);
    }
    const __m512 scale = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(sq) / (float)dim + eps));
    for (int64_t d = 0; d < dim; d += 16) {
        const __mmask16 m = tail16(dim - d);
        const __m512 v = residual ? load16m(residual, ri + d, elem, m) : load16m(x, xi + d, elem, m);
        const __m512 normed = round16(_mm512_mul_ps(v, scale), elem);
        store16m(out, oi + d, elem, m, _mm512_mul_ps(load16m(weight, d, elem, m), normed));
    }
}

/* RMSNorm of rows, with the residual stream's add fused in front when residual is not NULL: s = x + residual
 * (rounded as torch's add) is written back to residual and normalised; else x itself is. Llama's RMSNorm:
 * fp32 math, the normalised row rounded to the dtype, then times the weight. For fp32 that is F.rms_norm's
 * function. A prefill's 512 x 896 bf16 rows take 0.1 ms, where torch's eight bf16 ops take several. */
int sgl_add_rms_norm(const void *x, int64_t ldx, void *residual, int64_t ldr, const void *weight, void *out,
                     int64_t ldo, int64_t rows, int64_t dim, float eps, int elem, int threads) {
    if (dim < 1 || (elem != 2 && elem != 4)) return 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (rows * dim >= 65536)
    for (int64_t i = 0; i < rows; i++) norm_row(x, i * ldx, residual, i * ldr, weight, out, i * ldo, dim, eps, elem);
    return 0;
}

/* Rotary embedding in place on q [tokens, heads, dim] and k [tokens, kv_heads, dim] (rows of ldq/ldk
 * elements, heads contiguous), dims in interleaved pairs (2i, 2i + 1) rotated by cis[position, i] =
 * (cos, sin) in fp32, each result rounded to the dtype: the complex multiply of llama.RotaryEmbedding. */
/* Token t of sgl_rope: its heads of q, then of k, rotated by c = cis[position] ((cos, sin) pairs). */
static inline void rope_token(void *q, int64_t qt, int heads, void *k, int64_t kt, int kv_heads, const float *c,
                              int dim, int elem) {
    /* lanes (2i, 2i + 1) of a 16-lane vector: re' = re c - im s, im' = re s + im c */
    const __m512i swap = _mm512_set_epi32(14, 15, 12, 13, 10, 11, 8, 9, 6, 7, 4, 5, 2, 3, 0, 1);
    const __m512 sign = _mm512_set_ps(1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1, 1, -1);
    const __m512i cos_lanes = _mm512_set_epi32(14, 14, 12, 12, 10, 10, 8, 8, 6, 6, 4, 4, 2, 2, 0, 0);
    const __m512i sin_lanes = _mm512_set_epi32(15, 15, 13, 13, 11, 11, 9, 9, 7, 7, 5, 5, 3, 3, 1, 1);
    for (int h = 0; h < heads + kv_heads; h++) {
        const int64_t at = h < heads ? qt + (int64_t)h * dim : kt + (int64_t)(h - heads) * dim;
        void *base = h < heads ? q : k;
        for (int d = 0; d < dim; d += 16) {
            const __mmask16 m = tail16(dim - d);
            const __m512 x = load16m(base, at + d, elem, m);
            const __m512 cs = _mm512_maskz_loadu_ps(m, c + d);      /* (cos, sin) pairs */
            const __m512 cc = _mm512_permutexvar_ps(cos_lanes, cs), ss = _mm512_permutexvar_ps(sin_lanes, cs);
            const __m512 xs = _mm512_mul_ps(_mm512_permutexvar_ps(swap, x), sign); /* (-im, re) */
            store16m(base, at + d, elem, m, _mm512_fmadd_ps(xs, ss, _mm512_mul_ps(x, cc)));
        }
    }
}

int sgl_rope(void *q, int64_t ldq, int heads, void *k, int64_t ldk, int kv_heads, const int64_t *positions,
             const float *cis, int64_t max_position, int64_t tokens, int dim, int elem, int threads) {
    if (dim % 2 || (elem != 2 && elem != 4)) return 1;
    for (int64_t t = 0; t < tokens; t++)
        if (positions[t] < 0 || positions[t] >= max_position) return 3;
#pragma omp parallel for schedule(static) num_threads(threads) if (tokens >= 64)
    for (int64_t t = 0; t < tokens; t++) rope_token(q, t * ldq, heads, k, t * ldk, kv_heads, cis + positions[t] * dim, dim, elem);
    return 0;
}

/* exp(x) for 16 lanes: n = round(x / ln 2), a degree-6 polynomial on the remainder, scaled by 2^n; within
 * 2 ulp of expf where the result is a normal float, 0 below (no denormals: they cost a microcode assist per
 * operation, which made attention over peaked softmaxes 8x slower), inf above 88.7. */
static inline __m512 exp16(__m512 x) {
    const __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7f)), _mm512_set1_ps(-87.3f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_mov_ps(normal, _mm512_scalef_ps(p, n));
}

/* exp(x) for lanes x <= 0 (softmax weights), lanes off in `keep` set to 0; for code running under
 * flush_denormals. Cheaper than exp16: x clamped at -87.3 only (the result may then underflow, flushed to 0),
 * n = round(x / ln 2) by adding and subtracting 1.5 * 2^23, the same degree-6 polynomial in Horner form, and the
 * mask applied by the final scaling. */
static inline __m512 softmax_exp16(__m512 x, __mmask16 keep) {
    const __m512 shifter = _mm512_set1_ps(12582912.0f);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    const __m512 n = _mm512_sub_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), shifter), shifter);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.9875691500e-4f), r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_scalef_ps(keep, p, n);
}

/* out[r, i] = silu(gate) * up of a gate-up projection's output [rows, 2I] (gate columns, then up), silu(gate)
 * rounded to the dtype first, as F.silu(gate).mul_(up) rounds: one pass instead of two torch ops (and no
 * strided silu over the chunk's view). */
int sgl_silu_mul(const void *gate_up, int64_t ld, void *out, int64_t ldo, int64_t rows, int64_t I, int elem,
                 int threads) {
    if (elem != 2 && elem != 4) return 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (rows * I >= 65536)
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t i = 0; i < I; i += 16) {
            const __mmask16 m = tail16(I - i);
            const __m512 g = load16m(gate_up, r * ld + i, elem, m), u = load16m(gate_up, r * ld + I + i, elem, m);
            const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
            const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
            store16m(out, r * ldo + i, elem, m, _mm512_mul_ps(round16(silu, elem), u));
        }
    }
    return 0;
}

/* In place: row i of the 16 x 16 block becomes column i (the classic unpack / shuffle / lane-shuffle ladder). */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 16; i += 8)
        for (int j = 0; j < 4; j++) {
            t[i + j] = _mm512_shuffle_f32x4(u[i + j], u[i + 4 + j], 0x88);
            t[i + 4 + j] = _mm512_shuffle_f32x4(u[i + j], u[i + 4 + j], 0xDD);
        }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
    }
}

/* Causal attention over paged K/V, flash-style, for extend (prefill) and decode alike: request r's n_r new
 * queries (rows qo_indptr[r] .. qo_indptr[r + 1] of q) attend to its kv_lens[r] slots, kv_indices[kv_start[r]
 * ..], the last n_r being the new tokens', query i seeing the first kv_lens[r] - n_r + i + 1 (a decode step:
 * n_r = 1, the whole context). A task is one request, one KV head and a block of its query rows (as many as
 * `attention_block_rows` allows) with all the head's query heads: each chunk of KC keys is gathered once for all
 * of them, K transposed in registers.
 * Scores are vectorised over keys, QG queries by up to KC / 16 key vectors at a time (independent FMA chains
 * held in registers). The online softmax takes one maximum per query per chunk (QP queries' at once, by a
 * shuffle tree), rescales without a branch (QP queries' factors in one vector exp, applied as PV loads its
 * accumulators) and keeps its running sum as a vector, reduced once at the end, in fp32 with denormals
 * flushed. PV takes QP queries by two vectors of the head per pass, so each weight is broadcast once for 2 FMAs
 * and the loads stay below the FMAs. At head size 32 torch's flash kernel spends its time in per-block GEMM
 * calls and exps; here a score costs a few instructions. q: [total_q, H, D] rows ldq apart; out: [total_q, H,
 * D] contiguous; elem 2 (bf16) or 4 (fp32). Returns 3, reading nothing, when an index or slot is out of range. */
enum { QB = 16, QB_MAX = 512, KC = 64, KB = KC / 16, QG = 4, QP = 2 * QG };

/* Lanes [0, left) of 16 set: a masked row's visible keys within one 16-key vector (none when left <= 0). */
static inline __mmask16 lanes16(int64_t left) { return left <= 0 ? 0 : tail16(left); }

/* s[e][16 b + lane] = q_e . k for QG queries e and the chunk's first 16 nb keys (kt: [D][KC], transposed). */
static inline __attribute__((always_inline)) void chunk_scores(const float *qs, size_t pad, const float *kt,
                                                               int D, int nb, float *s) {
    __m512 sc[QG][KB];
    for (int e = 0; e < QG; e++)
        for (int b = 0; b < nb; b++) sc[e][b] = _mm512_setzero_ps();
    for (int d = 0; d < D; d++) {
        __m512 kd[KB];
        for (int b = 0; b < nb; b++) kd[b] = _mm512_loadu_ps(kt + (size_t)d * KC + 16 * b);
        for (int e = 0; e < QG; e++) {
            const __m512 qd = _mm512_set1_ps(qs[(size_t)e * pad + d]);
            for (int b = 0; b < nb; b++) sc[e][b] = _mm512_fmadd_ps(qd, kd[b], sc[e][b]);
        }
    }
    for (int e = 0; e < QG; e++)
        for (int b = 0; b < nb; b++) _mm512_storeu_ps(s + e * KC + 16 * b, sc[e][b]);
}

/* Lane e < 8 of the result: the largest of t[e]'s 16 lanes (lanes 8-15: unspecified). A tree of quarter and
 * pair shuffles: 24 operations for the 8 rows, where one _mm512_reduce_max_ps a row takes 8. */
static inline __m512 max_lanes8(const __m512 t[8]) {
    __m512 u[4], w[2];
    for (int i = 0; i < 4; i++) /* quarters: row 2i's two halves' maxima, then row 2i + 1's */
        u[i] = _mm512_max_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xEE));
    for (int i = 0; i < 2; i++) /* quarter k of w[i]: row 4i + k's four candidates */
        w[i] = _mm512_max_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xDD));
    __m512 z = _mm512_max_ps(_mm512_shuffle_ps(w[0], w[1], 0x44), _mm512_shuffle_ps(w[0], w[1], 0xEE));
    z = _mm512_max_ps(z, _mm512_permute_ps(z, 0xB1)); /* quarter k: rows k, k, k + 4, k + 4 */
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 2, 6, 10, 14, 0, 0, 0, 0, 0, 0, 0, 0), z);
}

/* PV for qe (QG or QP, a constant where inlined) queries of a chunk: acc rows (pad floats apart) scaled by
 * their softmax rescale factors al[e], plus p[e][j] v_j over the chunk's first width keys (vc: [KC][pad]);
 * two 16-lane vectors of the head at a time, each weight broadcast once into a register for both. */
static inline __attribute__((always_inline)) void chunk_pv(float *acc, size_t pad, const float *vc, const float *p,
                                                           const float *al, int DV, int width, int qe) {
    for (int d = 0; d < DV; d += 2) {
        float *ad = acc + 16 * d;
        const int two = d + 1 < DV;
        __m512 o[QP], o2[QP];
        for (int e = 0; e < qe; e++) {
            const __m512 a = _mm512_set1_ps(al[e]);
            o[e] = _mm512_mul_ps(_mm512_loadu_ps(ad + e * pad), a);
            o2[e] = two ? _mm512_mul_ps(_mm512_loadu_ps(ad + e * pad + 16), a) : _mm512_setzero_ps();
        }
        if (two)
            for (int j = 0; j < width; j++) {
                const __m512 v0 = _mm512_loadu_ps(vc + j * pad + 16 * d);
                const __m512 v1 = _mm512_loadu_ps(vc + j * pad + 16 * d + 16);
                for (int e = 0; e < qe; e++) {
                    __m512 w = _mm512_set1_ps(p[e * KC + j]);
                    __asm__("" : "+v"(w)); /* one broadcast for both FMAs, not two folded loads */
                    o[e] = _mm512_fmadd_ps(w, v0, o[e]);
                    o2[e] = _mm512_fmadd_ps(w, v1, o2[e]);
                }
            }
        else
            for (int j = 0; j < width; j++) {
                const __m512 v0 = _mm512_loadu_ps(vc + j * pad + 16 * d);
                for (int e = 0; e < qe; e++) o[e] = _mm512_fmadd_ps(_mm512_set1_ps(p[e * KC + j]), v0, o[e]);
            }
        for (int e = 0; e < qe; e++) {
            _mm512_storeu_ps(ad + e * pad, o[e]);
            if (two) _mm512_storeu_ps(ad + e * pad + 16, o2[e]);
        }
    }
}

/* Tasks of an attention call after checking every index it will read (-1: one is out of range). */
static int64_t attention_tasks(const int64_t *qo_indptr, const int64_t *kv_start, const int64_t *kv_lens,
                               const int64_t *kv_indices, int64_t num_indices, int64_t num_slots, int R, int KVH,
                               int qb) {
    int64_t tasks = 0;
    for (int r = 0; r < R; r++) { /* every index read must lie in the list and every slot in the pool */
        const int64_t n = qo_indptr[r + 1] - qo_indptr[r], kv_len = kv_lens[r];
        if (n < 0 || n > kv_len || kv_start[r] < 0 || kv_start[r] + kv_len > num_indices) return -1;
        for (int64_t t = kv_start[r]; t < kv_start[r] + kv_len; t++)
            if (kv_indices[t] < 0 || kv_indices[t] >= num_slots) return -1;
        tasks += (n + qb - 1) / qb * KVH;
    }
    return tasks;
}

/* Query rows per task: a request's rows in as few blocks as keep every thread busy (at least 4 tasks a
 * thread), so each chunk of its keys is gathered and transposed once for all of them rather than once per 16
 * rows; multiples of QB, at most QB_MAX (the scratch grows with it). */
static int attention_block_rows(const int64_t *qo_indptr, int R, int KVH, int threads) {
    int64_t longest = 0;
    for (int r = 0; r < R; r++)
        if (qo_indptr[r + 1] - qo_indptr[r] > longest) longest = qo_indptr[r + 1] - qo_indptr[r];
    int qb = longest > QB_MAX ? QB_MAX : (int)((longest + QB - 1) / QB * QB);
    while (qb > QB) {
        int64_t tasks = 0;
        for (int r = 0; r < R; r++) tasks += (qo_indptr[r + 1] - qo_indptr[r] + qb - 1) / qb * KVH;
        if (tasks >= 4 * (int64_t)threads) break;
        qb = (qb / 2 + QB - 1) / QB * QB;
    }
    return qb < QB ? QB : qb;
}

/* Floats of scratch one thread of `attention_team` needs for tasks of qb query rows. */
static size_t attention_scratch(int G, int D, int qb) {
    const size_t rows = ((size_t)qb * G + QP - 1) / QP * QP, pad = (size_t)(D + 15) / 16 * 16;
    return (rows * pad * 2 + rows + rows * 16 + pad * KC * 2 + (size_t)QP * KC + 15) / 16 * 16;
}

/* The attention's tasks (qb query rows each) shared among the threads of the enclosing parallel region (each
 * passes its own scratch of attention_scratch(G, D, qb) floats, 64-byte aligned); indices checked by
 * attention_tasks. */
static void attention_team(const void *q, int64_t ldq, const void *k, const void *v, void *out,
                           const int64_t *qo_indptr, const int64_t *kv_start, const int64_t *kv_lens,
                           const int64_t *kv_indices, int64_t tasks, int qb_rows, int H, int KVH, int D,
                           float scale, int elem, float *scratch) {
    const int G = H / KVH, DV = (D + 15) / 16; /* 16-lane vectors per head row */
    const size_t rows = ((size_t)qb_rows * G + QP - 1) / QP * QP, pad = (size_t)DV * 16;
    const unsigned csr = flush_denormals();
    float *qs = scratch; /* [rows][pad], pre-scaled */
    float *acc = qs + rows * pad, *m = acc + rows * pad, *l = m + rows; /* l: [rows][16] running sums */
    float *kt = l + rows * 16, *vc = kt + pad * KC, *p = vc + (size_t)KC * pad; /* kt: [pad][KC]; vc: [KC][pad] */
    int64_t task = 0;
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < tasks; t++) {
        /* find task t: request, KV head, query block */
        int r = 0;
        for (task = t;; r++) {
            const int64_t here = (qo_indptr[r + 1] - qo_indptr[r] + qb_rows - 1) / qb_rows * KVH;
            if (task < here) break;
            task -= here;
        }
        const int kh = (int)(task % KVH);
        const int64_t n = qo_indptr[r + 1] - qo_indptr[r], kv_len = kv_lens[r];
        const int64_t prefix = kv_len - n, i0 = task / KVH * qb_rows, qb = n - i0 < qb_rows ? n - i0 : qb_rows;
        const int64_t *slots = kv_indices + kv_start[r];
        const int nq = (int)qb * G; /* query vectors: row i, head g at i * G + g */
        const size_t used = ((size_t)nq + QP - 1) / QP * QP; /* rows the QP-wide loops touch */
        memset(qs, 0, sizeof(float) * used * pad);
        memset(acc, 0, sizeof(float) * used * pad);
        memset(l, 0, sizeof(float) * used * 16);
        for (size_t a = 0; a < used; a++) m[a] = -INFINITY;
        for (int a = 0; a < nq; a++) {
            const int64_t at = (qo_indptr[r] + i0 + a / G) * ldq + (int64_t)(kh * G + a % G) * D;
            for (int j = 0; j < DV; j++)
                _mm512_storeu_ps(qs + a * pad + 16 * j, _mm512_mul_ps(load16m(q, at + 16 * j, elem, tail16(D - 16 * j)),
                                                                     _mm512_set1_ps(scale)));
        }
        const int64_t kv_end = prefix + i0 + qb; /* the block's last row sees this many */
        for (int64_t c = 0; c < kv_end; c += KC) {
            const int kc = kv_end - c < KC ? (int)(kv_end - c) : KC, nb = (kc + 15) / 16;
            for (int b = 0; b < nb; b++) /* gather the chunk: K transposed in registers, V as rows */
                for (int d = 0; d < DV; d++) {
                    const __mmask16 mk = tail16(D - 16 * d);
                    __m512 rows16[16];
                    for (int j = 0; j < 16; j++) {
                        const int key = 16 * b + j;
                        if (key >= kc) {
                            rows16[j] = _mm512_setzero_ps();
                            continue;
                        }
                        const int64_t at = (slots[c + key] * KVH + kh) * D + 16 * d;
                        rows16[j] = load16m(k, at, elem, mk);
                        _mm512_storeu_ps(vc + key * pad + 16 * d, load16m(v, at, elem, mk));
                    }
                    transpose16(rows16);
                    for (int e = 0; e < 16; e++) _mm512_storeu_ps(kt + (16 * d + e) * KC + 16 * b, rows16[e]);
                }
            for (int a0 = 0; a0 < nq; a0 += QP) {
                int valid[QP], width = 0; /* keys of this chunk each query sees */
                for (int e = 0; e < QP; e++) {
                    const int64_t sees = a0 + e < nq ? prefix + i0 + (a0 + e) / G + 1 - c : 0;
                    valid[e] = sees <= 0 ? 0 : sees < kc ? (int)sees : kc;
                    width = valid[e] > width ? valid[e] : width;
                }
                if (!width) continue;
                const int wb = (width + 15) / 16;
                const int qe = nq - a0 > QG ? QP : QG; /* queries of this group (the last may be padding) */
                for (int h = 0; h < qe; h += QG) {
                    float *ph = p + h * KC;
                    const float *qh = qs + (a0 + h) * pad;
                    switch (wb) { /* constant trip counts: the score accumulators stay in registers */
                    case 1: chunk_scores(qh, pad, kt, D, 1, ph); break;
                    case 2: chunk_scores(qh, pad, kt, D, 2, ph); break;
                    case 3: chunk_scores(qh, pad, kt, D, 3, ph); break;
                    default: chunk_scores(qh, pad, kt, D, 4, ph); break;
                    }
                }
                /* online softmax: each query's maximum so far, the factor rescaling what was summed under the
                 * old one (1 where it held; all queries at once, no branch), then the chunk's weights */
                __m512 tops[QP];
                float al[16];
                for (int e = 0; e < QP; e++) {
                    tops[e] = _mm512_set1_ps(-INFINITY);
                    if (e < qe)
                        for (int b = 0; b < wb; b++)
                            tops[e] = _mm512_mask_max_ps(tops[e], lanes16(valid[e] - 16 * b), tops[e],
                                                         _mm512_loadu_ps(p + e * KC + 16 * b));
                }
                const __mmask16 group = (__mmask16)((1u << qe) - 1);
                const __m512 m_old = _mm512_maskz_loadu_ps(group, m + a0);
                const __m512 m_new = _mm512_max_ps(m_old, max_lanes8(tops));
                _mm512_storeu_ps(al, softmax_exp16(_mm512_sub_ps(m_old, m_new), group));
                _mm512_mask_storeu_ps(m + a0, group, m_new);
                for (int e = 0; e < qe; e++) {
                    float *pe = p + e * KC;
                    const __m512 mx = _mm512_permutexvar_ps(_mm512_set1_epi32(e), m_new);
                    __m512 sum = _mm512_mul_ps(_mm512_loadu_ps(l + (a0 + e) * 16), _mm512_set1_ps(al[e]));
                    for (int b = 0; b < wb; b++) {
                        const __m512 w = softmax_exp16(_mm512_sub_ps(_mm512_loadu_ps(pe + 16 * b), mx),
                                                       lanes16(valid[e] - 16 * b));
                        sum = _mm512_add_ps(sum, w);
                        _mm512_storeu_ps(pe + 16 * b, w);
                    }
                    _mm512_storeu_ps(l + (a0 + e) * 16, sum);
                }
                if (qe == QP) chunk_pv(acc + (size_t)a0 * pad, pad, vc, p, al, DV, width, QP);
                else chunk_pv(acc + (size_t)a0 * pad, pad, vc, p, al, DV, width, QG);
            }
        }
        for (int a = 0; a < nq; a++) {
            const int64_t at = ((qo_indptr[r] + i0 + a / G) * H + kh * G + a % G) * D;
            const float total = _mm512_reduce_add_ps(_mm512_loadu_ps(l + a * 16));
            const __m512 inv = _mm512_set1_ps(total > 0.0f ? 1.0f / total : 0.0f);
            for (int d = 0; d < DV; d++)
                store16m(out, at + 16 * d, elem, tail16(D - 16 * d),
                         _mm512_mul_ps(_mm512_loadu_ps(acc + a * pad + 16 * d), inv));
        }
    }
    _mm_setcsr(csr);
}

int sgl_attention(const void *q, int64_t ldq, const void *k, const void *v, void *out, const int64_t *qo_indptr,
                  const int64_t *kv_start, const int64_t *kv_lens, const int64_t *kv_indices, int64_t num_indices,
                  int64_t num_slots, int R, int H, int KVH, int D, float scale, int elem, int threads) {
    if (KVH < 1 || H % KVH != 0 || D < 1 || D > 256 || (elem != 2 && elem != 4)) return 1;
    if (threads < 1) threads = 1;
    const int qb = attention_block_rows(qo_indptr, R, KVH, threads);
    const int64_t tasks = attention_tasks(qo_indptr, kv_start, kv_lens, kv_indices, num_indices, num_slots, R, KVH, qb);
    if (tasks < 0) return 3;
    const size_t per_thread = attention_scratch(H / KVH, D, qb);
    float *scratch = aligned_alloc(64, sizeof(float) * per_thread * (size_t)threads);
    if (!scratch) return 2;
#pragma omp parallel num_threads(threads)
    attention_team(q, ldq, k, v, out, qo_indptr, kv_start, kv_lens, kv_indices, tasks, qb, H, KVH, D, scale, elem,
                   scratch + per_thread * (size_t)omp_get_thread_num());
    free(scratch);
    return 0;
}

/* ------------------------------------------------------------------------------------ fused decode layer */

/* acc[r][c] = x[r, :K] . (column block c of the packed weight): wa and wb are two blocks of 16 output columns
 * ([K][16] each, k-major), MR rows of x at a time; the accumulators stay in registers (constant MR, NB). */
static inline __attribute__((always_inline)) void gemm_tile(const float *x, int64_t ldx, const float *wa,
                                                            const float *wb, int64_t K, int MR, int NB,
                                                            __m512 acc[8][2]) {
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NB; c++) acc[r][c] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        const __m512 w0 = _mm512_loadu_ps(wa + k * 16), w1 = NB > 1 ? _mm512_loadu_ps(wb + k * 16) : w0;
        for (int r = 0; r < MR; r++) {
            const __m512 xr = _mm512_set1_ps(x[r * ldx + k]);
            acc[r][0] = _mm512_fmadd_ps(xr, w0, acc[r][0]);
            if (NB > 1) acc[r][1] = _mm512_fmadd_ps(xr, w1, acc[r][1]);
        }
    }
}

#define GEMM_TILE_CASES(NB)                                                                                    \
    switch (mr) {                                                                                              \
    case 1: gemm_tile(xr, ldx, wa, wb, K, 1, NB, acc); break;                                                  \
    case 2: gemm_tile(xr, ldx, wa, wb, K, 2, NB, acc); break;                                                  \
    case 3: gemm_tile(xr, ldx, wa, wb, K, 3, NB, acc); break;                                                  \
    case 4: gemm_tile(xr, ldx, wa, wb, K, 4, NB, acc); break;                                                  \
    case 5: gemm_tile(xr, ldx, wa, wb, K, 5, NB, acc); break;                                                  \
    case 6: gemm_tile(xr, ldx, wa, wb, K, 6, NB, acc); break;                                                  \
    case 7: gemm_tile(xr, ldx, wa, wb, K, 7, NB, acc); break;                                                  \
    default: gemm_tile(xr, ldx, wa, wb, K, 8, NB, acc); break;                                                 \
    }

/* Rows of x one pass of gemm_team multiplies by every column block: about 256 KB of them, so they stay in the
 * core's L2 while its weight blocks stream by. In one pass over thousands of rows x was read again from memory
 * for every block: the embedded model's projections at 3,000 and 7,000 rows ran 1.1-1.4x faster in passes, with
 * the same output to the bit. Whole tiles of 8 rows, at least 64. */
static int gemm_row_block(int64_t K) {
    const int64_t rows = (256 * 1024 / 4) / (K > 0 ? K : 1) / 8 * 8;
    return rows < 64 ? 64 : rows > 4096 ? 4096 : (int)rows;
}

/* y[b, n] = x[b, :K] . w[n, :K] + bias[n] (bias may be NULL) for B rows and N columns, w packed by
 * cpu_native.pack_columns ([ceil(N / 16)][K][16], zero-padded). With silu_mul, w holds a gate-up projection of
 * 2N columns and y[b, n] = silu(gate) * up, gate and up being columns n and N + n (N a multiple of 16): the MLP's
 * activation fused in. Column blocks (pairs of them) are shared among the threads of the enclosing parallel
 * region; rows go 8 at a time, in passes of gemm_row_block(K) rows. Ends in a barrier. */
static void gemm_team(const float *x, int64_t ldx, const float *w, const float *bias, float *y, int64_t ldy, int B,
                      int64_t N, int64_t K, int silu_mul) {
    const int64_t blocks = (N + 15) / 16, units = silu_mul ? blocks : (blocks + 1) / 2;
    const int mb = gemm_row_block(K);
    /* the same units to the same thread in every pass (static schedule): its weights stay cached */
    for (int rb = 0; rb < B; rb += mb) {
        const int re = B - rb < mb ? B : rb + mb;
#pragma omp for schedule(static) nowait
        for (int64_t u = 0; u < units; u++) {
            const int64_t b0 = silu_mul ? u : 2 * u; /* first column block */
            const int two = silu_mul || b0 + 1 < blocks;
            const float *wa = w + b0 * K * 16, *wb = silu_mul ? w + (b0 + blocks) * K * 16 : wa + K * 16;
            for (int r0 = rb; r0 < re; r0 += 8) {
                const int mr = re - r0 < 8 ? re - r0 : 8;
                const float *xr = x + (int64_t)r0 * ldx;
                __m512 acc[8][2];
                if (two) {
                    GEMM_TILE_CASES(2)
                } else {
                    GEMM_TILE_CASES(1)
                }
                for (int r = 0; r < mr; r++) {
                    float *yr = y + (int64_t)(r0 + r) * ldy;
                    if (silu_mul) {
                        __m512 g = acc[r][0], up = acc[r][1];
                        if (bias) {
                            g = _mm512_add_ps(g, _mm512_loadu_ps(bias + b0 * 16));
                            up = _mm512_add_ps(up, _mm512_loadu_ps(bias + (b0 + blocks) * 16));
                        }
                        const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
                        const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
                        _mm512_storeu_ps(yr + b0 * 16, _mm512_mul_ps(silu, up));
                        continue;
                    }
                    for (int c = 0; c < 1 + two; c++) {
                        const int64_t n = (b0 + c) * 16;
                        const __mmask16 m = tail16(N - n);
                        __m512 v = acc[r][c];
                        if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + n));
                        _mm512_mask_storeu_ps(yr + n, m, v);
                    }
                }
            }
        }
    }
#pragma omp barrier
}

/* y[b, :N] = x[b, :K] w^T + bias for B rows, w packed by cpu_native.pack_columns (fp32; bias may be NULL): the
 * fused layer's register-tiled GEMM on its own, for a small model's lm-head at decode batches. */
int sgl_gemm_packed(const float *x, int64_t ldx, const float *w, const float *bias, float *y, int64_t ldy, int B,
                    int64_t N, int64_t K, int threads) {
    if (B < 0 || N < 1 || K < 1) return 1;
    if (threads < 1) threads = 1;
#pragma omp parallel num_threads(threads)
    gemm_team(x, ldx, w, bias, y, ldy, B, N, K, 0);
    return 0;
}

/* One projection of the fused layer: dense row-major weights through the GEMV (B <= MAX_ROWS, bf16 or fp32),
 * or packed fp32 ones through the register-tiled GEMM (any B). */
static inline void project(int dense, const void *x, int64_t ldx, const void *w, const void *bias, void *y,
                           int64_t ldy, int B, int64_t N, int64_t K, int silu_mul, int elem) {
    if (dense)
        gemv_team(x, ldx, w, bias, y, ldy, B, N, K, silu_mul, elem);
    else
        gemm_team(x, ldx, w, bias, y, ldy, B, N, K, silu_mul);
}

/* The per-layer pointers of sgl_decode_layers, a row of LAYER_PTRS int64 each (0: NULL). */
enum { LN1, LN2, Q_NORM, K_NORM, W_QKV, B_QKV, W_O, B_O, W_GU, B_GU, W_D, B_D, K_BUF, V_BUF, LAYER_PTRS };
#define LAYER_PTR(row, i) ((const void *)(intptr_t)(row)[i])

/* What every layer of one sgl_decode_layers call shares: shapes, the step's indices and the scratch. */
typedef struct {
    float eps, scale;
    const float *cis;
    const int64_t *positions, *out_loc, *slots, *lens, *qo_indptr, *kv_start;
    int64_t tasks, q_size, kv_size, n_qkv;
    int B, hidden, H, KVH, D, I, qb, dense, elem;
    char *h, *qkv, *att, *act; /* [B, hidden], [B, n_qkv], [B, H * D], [B, I] in the activations' dtype */
    float *att_scratch;        /* per thread */
    size_t per_thread;
} Step;

/* One layer by every thread of the enclosing parallel region: x (NULL on the first layer) is read by the first
 * stage only, so out may be x itself; every stage ends in a barrier, the last too. */
static void layer_team(const Step *s, const int64_t *w, const void *x, void *residual, void *out) {
    const int B = s->B, hidden = s->hidden, elem = s->elem, dense = s->dense;
    const int64_t n_qkv = s->n_qkv, q_size = s->q_size, kv_size = s->kv_size;
    const void *q_norm = LAYER_PTR(w, Q_NORM), *k_norm = LAYER_PTR(w, K_NORM);
    char *k_buf = (char *)LAYER_PTR(w, K_BUF), *v_buf = (char *)LAYER_PTR(w, V_BUF);
#pragma omp for schedule(static)
    for (int b = 0; b < B; b++)
        norm_row(x ? x : residual, (int64_t)b * hidden, x ? residual : NULL, (int64_t)b * hidden, LAYER_PTR(w, LN1),
                 s->h, (int64_t)b * hidden, hidden, s->eps, elem);
    project(dense, s->h, hidden, LAYER_PTR(w, W_QKV), LAYER_PTR(w, B_QKV), s->qkv, n_qkv, B, n_qkv, hidden, 0, elem);
#pragma omp for schedule(static)
    for (int b = 0; b < B; b++) {
        const int64_t row = (int64_t)b * n_qkv;
        if (q_norm)
            for (int hd = 0; hd < s->H + s->KVH; hd++) { /* in place: norm_row reads a row before writing it */
                const int64_t at = row + (int64_t)hd * s->D;
                norm_row(s->qkv, at, NULL, 0, hd < s->H ? q_norm : k_norm, s->qkv, at, s->D, s->eps, elem);
            }
        rope_token(s->qkv, row, s->H, s->qkv, row + q_size, s->KVH, s->cis + s->positions[b] * s->D, s->D, elem);
        memcpy(k_buf + s->out_loc[b] * kv_size * elem, s->qkv + (row + q_size) * elem, (size_t)(kv_size * elem));
        memcpy(v_buf + s->out_loc[b] * kv_size * elem, s->qkv + (row + q_size + kv_size) * elem,
               (size_t)(kv_size * elem));
    }
    attention_team(s->qkv, n_qkv, k_buf, v_buf, s->att, s->qo_indptr, s->kv_start, s->lens, s->slots, s->tasks, s->qb,
                   s->H, s->KVH, s->D, s->scale, elem,
                   s->att_scratch + s->per_thread * (size_t)omp_get_thread_num()); /* ends in a barrier */
    project(dense, s->att, q_size, LAYER_PTR(w, W_O), LAYER_PTR(w, B_O), s->h, hidden, B, hidden, q_size, 0, elem);
#pragma omp for schedule(static)
    for (int b = 0; b < B; b++) /* in place: norm_row reads the row before writing it */
        norm_row(s->h, (int64_t)b * hidden, residual, (int64_t)b * hidden, LAYER_PTR(w, LN2), s->h,
                 (int64_t)b * hidden, hidden, s->eps, elem);
    project(dense, s->h, hidden, LAYER_PTR(w, W_GU), LAYER_PTR(w, B_GU), s->act, s->I, B, s->I, hidden, 1, elem);
    project(dense, s->act, s->I, LAYER_PTR(w, W_D), LAYER_PTR(w, B_D), out, hidden, B, hidden, s->I, 0, elem);
}

/* L Llama decoder layers for a decode batch (one new token per request), or for an extend batch of R requests
 * whose rows qo[r] .. qo[r + 1] are request r's new tokens (qo not NULL; the attention is then the extend's,
 * causal over each request's context: see sgl_attention), in one call and one parallel region: where a step is
 * mostly the per-op cost of a dozen torch ops and C calls per layer, this is a barrier between stages (and one
 * ctypes call a step: against a call per layer, Qwen2.5-0.5B's 24 bf16 layers at batch 1 took 28.7 ms, not
 * 31.1). Layer l's weights and K/V buffers are row l of layers ([L, LAYER_PTRS]). Stages, each the contract
 * of the kernel or torch op the layer runs otherwise:
 *   h = RMSNorm(residual += x) (first layer: residual is the embedding, h = RMSNorm(residual));
 *   q, k, v = h W_qkv^T + b; per-head RMSNorm of q and k (Qwen3; when q_norm is not NULL); rotary on q and k
 *   at positions[b]; k, v stored at slot out_loc[b];
 *   a = attention of q over slots[r, :lens[r]] (sgl_attention's decode, or its extend when qo is given; every
 *   row's K/V is stored before any row attends);
 *   h = RMSNorm(residual += a W_o^T + b_o); x = (silu(h W_g^T) * h W_u^T) W_d^T + b_d.
 * Two layouts of the projections' weights: dense ([N, K] row-major, the model's own tensors; B <= MAX_ROWS;
 * activations, weights and K/V all bf16 (elem 2) or all fp32 (elem 4), rounded as torch's bf16 ops round), or
 * packed (pack_columns; fp32 only; any B). The gate-up's halves are I rows (columns) each (packed: I a multiple
 * of 16); biases and the per-head norms may be NULL (the two norms together). residual is updated in place;
 * out gets the last layer's output ([B, hidden]), the stream before it left in residual. Every position, slot
 * and length is checked before anything is written: 3 when one is out of range. */
int sgl_decode_layers(void *residual, void *out, int L, const int64_t *layers, float eps, const float *cis,
                      const int64_t *positions, int64_t max_position, int64_t num_slots, const int64_t *out_loc,
                      const int64_t *slots, int64_t ldslots, const int64_t *lens, const int64_t *qo, int R, int B,
                      int hidden, int H, int KVH, int D, int I, float scale, int dense, int elem, int threads) {
    if (L < 1 || B < 1 || KVH < 1 || H % KVH != 0 || D < 2 || D > 256 || D % 2 || hidden < 1 || I < 1) return 1;
    if (dense ? (B > MAX_ROWS || (elem != 2 && elem != 4)) : (elem != 4 || I % 16)) return 1;
    for (int l = 0; l < L; l++) {
        const int64_t *w = layers + (int64_t)l * LAYER_PTRS;
        if (!w[LN1] || !w[LN2] || !w[W_QKV] || !w[W_O] || !w[W_GU] || !w[W_D] || !w[K_BUF] || !w[V_BUF]) return 1;
        if ((w[Q_NORM] == 0) != (w[K_NORM] == 0)) return 1;
    }
    if (qo ? (R < 1 || qo[0] != 0 || qo[R] != B) : R != B) return 3;
    for (int b = 0; b < B; b++)
        if (positions[b] < 0 || positions[b] >= max_position || out_loc[b] < 0 || out_loc[b] >= num_slots) return 3;
    for (int r = 0; r < R; r++)
        if (lens[r] < 1 || lens[r] > ldslots || (qo && qo[r + 1] < qo[r])) return 3;
    int64_t *offsets = malloc(sizeof(int64_t) * (2 * (size_t)R + 1));
    if (!offsets) return 2;
    int64_t *qo_indptr = offsets, *kv_start = offsets + R + 1; /* decode (qo NULL): row b is request b's query */
    for (int r = 0; r <= R; r++) qo_indptr[r] = qo ? qo[r] : r;
    for (int r = 0; r < R; r++) kv_start[r] = (int64_t)r * ldslots;
    if (threads < 1) threads = 1;
    Step s = {.eps = eps, .scale = scale, .cis = cis, .positions = positions, .out_loc = out_loc, .slots = slots,
              .lens = lens, .qo_indptr = qo_indptr, .kv_start = kv_start, .B = B, .hidden = hidden, .H = H,
              .KVH = KVH, .D = D, .I = I, .dense = dense, .elem = elem};
    s.qb = attention_block_rows(qo_indptr, R, KVH, threads);
    s.tasks = attention_tasks(qo_indptr, kv_start, lens, slots, (int64_t)R * ldslots, num_slots, R, KVH, s.qb);
    if (s.tasks < 0) {
        free(offsets);
        return 3;
    }
    s.q_size = (int64_t)H * D, s.kv_size = (int64_t)KVH * D, s.n_qkv = s.q_size + 2 * s.kv_size;
    s.per_thread = attention_scratch(H / KVH, D, s.qb);
    const size_t rows_elems = (size_t)B * ((size_t)hidden + (size_t)s.n_qkv + (size_t)s.q_size + (size_t)I);
    const size_t rows_floats = (rows_elems * (size_t)elem / sizeof(float) + 15) / 16 * 16;
    float *scratch = aligned_alloc(64, sizeof(float) * (rows_floats + s.per_thread * (size_t)threads));
    if (!scratch) {
        free(offsets);
        return 2;
    }
    s.h = (char *)scratch, s.qkv = s.h + (size_t)B * hidden * elem, s.att = s.qkv + (size_t)B * s.n_qkv * elem;
    s.act = s.att + (size_t)B * s.q_size * elem;
    s.att_scratch = scratch + rows_floats;
#pragma omp parallel num_threads(threads)
    for (int l = 0; l < L; l++) /* layer l > 0 reads the previous one's output from out and writes its own there */
        layer_team(&s, layers + (int64_t)l * LAYER_PTRS, l ? out : NULL, residual, out);
    free(scratch);
    free(offsets);
    return 0;
}
