/* Fused kernels of the CPU decode step (handlers/fast_decode.py), for float32 and bfloat16 rows:
 * its elementwise work and its attention. Built once per machine by handlers/cpu_kernels.py with the system's C compiler
 * (-O3 -march=native) and called through ctypes, which releases the GIL for the call.
 *
 * Each kernel does in one pass over a row what the eager step did in several torch ops, each with
 * its own dispatch, allocation and pass over memory: at 32 rows of SmolLM2 a torch op on 2 cores
 * costs 10-30 us whatever its size, and RMSNorm alone was eight of them.
 *
 * Arithmetic is float32 inside; a bfloat16 result is rounded once (round to nearest even, as torch
 * rounds). A row's result depends only on that row, never on how many rows are in the call: batched
 * and unbatched decoding stay token-for-token equal. The elementwise kernels are single-threaded:
 * their work per call is a few microseconds, less than waking a second thread. The attention shares
 * its (row, head) pairs out on OpenMP threads, but only when this file is built against the OpenMP
 * runtime torch loaded (handlers/cpu_kernels.py): a second runtime beside torch's would start its own
 * threads. Reductions keep 16 partial sums so that the compiler vectorizes them without -ffast-math.
 * With AVX-512 the attention for head sizes 64 and 128 is written with intrinsics (ATTEND_FAST):
 * 16 columns' scores at a time, accumulators in registers, and with AVX512-BF16 bfloat16 products
 * summed by the dot-product instruction (products exact in float32, subnormal inputs read as zero).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#define LANES 16

static inline float bf16_load(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* NaN stays a quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* The sum of LANES partial sums as a tree (halves added together); with AVX-512 one register's
 * reduction. A left-to-right sum would be LANES dependent scalar adds. */
static inline float lanes_sum(float *part) {
#if defined(__AVX512F__) && LANES == 16
    return _mm512_reduce_add_ps(_mm512_loadu_ps(part));
#else
    for (int width = LANES / 2; width > 0; width /= 2)
        for (int l = 0; l < width; l++) part[l] += part[l + width];
    return part[0];
#endif
}

/* A row in float32. */
static inline void widen_f32(float *restrict out, const float *restrict in, int64_t n) { memcpy(out, in, n * sizeof(float)); }

static inline void widen_bf16(float *restrict out, const uint16_t *restrict in, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = bf16_load(in[i]);
}

static float sum_squares(const float *x, int64_t n) {
    float acc[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) acc[l] += x[i + l] * x[i + l];
    float s = 0.f;
    for (int l = 0; l < LANES; l++) s += acc[l];
    for (; i < n; i++) s += x[i] * x[i];
    return s;
}

/* RMSNorm of each row of x, after adding delta into it when delta is not NULL:
 *   x[r] += delta[r]  (stored in x's dtype: the residual stream, as `x = x + delta` would)
 *   out[r] = x[r] * rsqrt(mean(x[r]^2) + eps) * weight
 * Strides are in elements between rows; each row is contiguous. Returns 0, or -1 when out of memory. */
int add_rms_norm_f32(float *x, const float *delta, const float *weight, float *out, int64_t rows, int64_t n,
                     int64_t x_stride, int64_t delta_stride, int64_t out_stride, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        float *xr = x + r * x_stride;
        if (delta) {
            const float *dr = delta + r * delta_stride;
            for (int64_t i = 0; i < n; i++) xr[i] += dr[i];
        }
        float rstd = 1.f / sqrtf(sum_squares(xr, n) / (float)n + eps);
        float *o = out + r * out_stride;
        for (int64_t i = 0; i < n; i++) o[i] = xr[i] * rstd * weight[i];
    }
    return 0;
}

int add_rms_norm_bf16(uint16_t *x, const uint16_t *delta, const uint16_t *weight, uint16_t *out, int64_t rows,
                      int64_t n, int64_t x_stride, int64_t delta_stride, int64_t out_stride, float eps) {
    float *scratch = malloc((size_t)n * sizeof(float)); /* the row in float32, after the add's rounding */
    if (!scratch) return -1;
    for (int64_t r = 0; r < rows; r++) {
        uint16_t *xr = x + r * x_stride;
        if (delta) {
            const uint16_t *dr = delta + r * delta_stride;
            for (int64_t i = 0; i < n; i++) {
                uint16_t v = bf16_round(bf16_load(xr[i]) + bf16_load(dr[i]));
                xr[i] = v;
                scratch[i] = bf16_load(v);
            }
        } else {
            widen_bf16(scratch, xr, n);
        }
        float rstd = 1.f / sqrtf(sum_squares(scratch, n) / (float)n + eps);
        uint16_t *o = out + r * out_stride;
        for (int64_t i = 0; i < n; i++) o[i] = bf16_round(scratch[i] * rstd * bf16_load(weight[i]));
    }
    free(scratch);
    return 0;
}

/* Rotary embedding in place on the first `rot_heads` heads of each token's row of qkv (the query
 * heads, then the key heads), Llama's rotate-half form:
 *   out[i]        = x[i] * cos[i] - x[i + half] * sin[i]
 *   out[i + half] = x[i + half] * cos[i + half] + x[i] * sin[i + half]
 * cos and sin are [tokens, dim] (row stride cs_stride). Then, for the first `store` tokens, token t's
 * key heads (rotated) and value heads (the `kv_heads` after the key heads) are copied into the caches
 * at [t, head, column]: k_cache + t * k_row + h * k_head (likewise v), each row of `dim` contiguous. */
#define ROPE_BODY(T, LOAD, STORE)                                                                              \
    int64_t half = dim / 2;                                                                                     \
    for (int64_t t = 0; t < tokens; t++) {                                                                      \
        T *row = qkv + t * token_stride;                                                                        \
        const T *c = cos + t * cs_stride, *s = sin + t * cs_stride;                                             \
        for (int64_t h = 0; h < rot_heads; h++) {                                                               \
            T *x = row + h * dim;                                                                               \
            for (int64_t i = 0; i < half; i++) {                                                                \
                float a = LOAD(x[i]), b = LOAD(x[i + half]);                                                    \
                x[i] = STORE(a * LOAD(c[i]) - b * LOAD(s[i]));                                                  \
                x[i + half] = STORE(b * LOAD(c[i + half]) + a * LOAD(s[i + half]));                             \
            }                                                                                                   \
        }                                                                                                       \
        if (t < store) {                                                                                        \
            for (int64_t h = 0; h < kv_heads; h++) {                                                            \
                memcpy(k_cache + t * k_row + h * k_head, row + (rot_heads - kv_heads + h) * dim, dim * sizeof(T)); \
                memcpy(v_cache + t * v_row + h * v_head, row + (rot_heads + h) * dim, dim * sizeof(T));         \
            }                                                                                                   \
        }                                                                                                       \
    }

#define F32_LOAD(v) (v)
#define F32_STORE(v) (v)

void rope_store_f32(float *qkv, int64_t tokens, int64_t token_stride, int64_t rot_heads, int64_t kv_heads,
                    int64_t dim, const float *cos, const float *sin, int64_t cs_stride, int64_t store, float *k_cache,
                    int64_t k_row, int64_t k_head, float *v_cache, int64_t v_row, int64_t v_head) {
    ROPE_BODY(float, F32_LOAD, F32_STORE)
}

void rope_store_bf16(uint16_t *qkv, int64_t tokens, int64_t token_stride, int64_t rot_heads, int64_t kv_heads,
                     int64_t dim, const uint16_t *cos, const uint16_t *sin, int64_t cs_stride, int64_t store,
                     uint16_t *k_cache, int64_t k_row, int64_t k_head, uint16_t *v_cache, int64_t v_row,
                     int64_t v_head) {
    ROPE_BODY(uint16_t, bf16_load, bf16_round)
}

/* exp(x) for float32 without branches, so that the compiler vectorizes the loops that call it: 2^n
 * times a degree-6 polynomial on [-ln2/2, ln2/2], within 3 ulp of expf where expf's result is a
 * normal float; below -87.33 (where expf's would be subnormal) it returns 0, above 88.72 infinity,
 * and NaN for NaN. 2^n is built as two powers of two, each a normal float over the whole range
 * (n runs from -126 to 128). */
static inline float exp_f32(float x) {
    const float hi = 88.7228393f, lo = -87.3365479f;
    int nan = x != x, over = x > hi, under = x < lo;
    float c = nan ? 0.f : (over ? hi : (under ? lo : x));
    float n = nearbyintf(c * 1.44269504088896341f);
    float r = c - n * 0.693145751953125f; /* ln2 in two parts: r exact to float precision */
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.f / 720;
    p = p * r + 1.f / 120;
    p = p * r + 1.f / 24;
    p = p * r + 1.f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.f;
    p = p * r + 1.f;
    int32_t k = (int32_t)n, k1 = k >> 1, k2 = k - k1;
    int32_t e1 = (k1 + 127) << 23, e2 = (k2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &e1, sizeof s1);
    memcpy(&s2, &e2, sizeof s2);
    float y = p * s1 * s2;
    y = under ? 0.f : y;
    y = over ? INFINITY : y;
    return nan ? x : y;
}

/* SwiGLU's product: out[r, i] = silu(gu[r, i]) * gu[r, n + i], silu(g) = g / (1 + exp(-g)); gu is
 * [rows, 2n] (gate then up, as the fused gate/up projection writes them), out [rows, n]. */
void silu_mul_f32(const float *gu, float *out, int64_t rows, int64_t n, int64_t gu_stride, int64_t out_stride) {
    for (int64_t r = 0; r < rows; r++) {
        const float *g = gu + r * gu_stride, *u = g + n;
        float *o = out + r * out_stride;
        for (int64_t i = 0; i < n; i++) o[i] = g[i] / (1.f + exp_f32(-g[i])) * u[i];
    }
}

void silu_mul_bf16(const uint16_t *gu, uint16_t *out, int64_t rows, int64_t n, int64_t gu_stride,
                   int64_t out_stride) {
    for (int64_t r = 0; r < rows; r++) {
        const uint16_t *g = gu + r * gu_stride, *u = g + n;
        uint16_t *o = out + r * out_stride;
        for (int64_t i = 0; i < n; i++) {
            float x = bf16_load(g[i]);
            o[i] = bf16_round(x / (1.f + exp_f32(-x)) * bf16_load(u[i]));
        }
    }
}

/* One query per row attending over its window of the cache (a decode step), grouped-query: query
 * head h reads key/value head h / (heads / kv_heads), as transformers' repeat_kv pairs them.
 *   q       [rows, heads, dim]            (row stride q_row, head stride q_head)
 *   keys    [rows, kv_heads, cols, dim]   (the window's first column; strides k_row, k_head, dim)
 *   values  likewise (v_row, v_head)
 *   mask    [rows, cols] bytes, 1 = a real column (row stride mask_row), or NULL: every column
 *   out     [rows, heads * dim]           (row stride out_row)
 * scores = q . k * scale, softmax over the row's real columns, out = sum p * v: float32 throughout,
 * the keys and values read once each from the cache in its own dtype (no float32 copy of the
 * window), a bfloat16 result rounded once. A row with no real column gets zeros. scratch holds
 * (heads / kv_heads) * (cols + dim) floats. */
#define MAX_GROUP 16

/* a . b over n floats (n a multiple of LANES), as LANES partial sums. */
static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    float part[LANES] = {0};
    for (int64_t i = 0; i < n; i += LANES)
        for (int l = 0; l < LANES; l++) part[l] += a[i + l] * b[i + l];
    return lanes_sum(part);
}

static inline void axpy(float *restrict y, float p, const float *restrict x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += p * x[i];
}

/* s[c] = exp(s[c] - top) for c in [first, n), 0 before first (a masked column's -inf gives 0 too);
 * returns their sum. The LANES partial sums are counted from `first`, the row's first real column:
 * the slot cache right-aligns its rows, so a row's left padding (where `first` lies) is set by the
 * longest row in the batch, and lanes counted from column 0 would round the sum differently in
 * another batch (batched greedy must stay unbatched greedy, bit for bit). */
static inline float softmax_numerators(float *restrict s, int64_t n, float top, int64_t first) {
    float part[LANES] = {0};
    for (int64_t c = 0; c < first; c++) s[c] = 0.f;
    s += first;
    n -= first;
    int64_t c = 0;
    for (; c + LANES <= n; c += LANES)
        for (int l = 0; l < LANES; l++) {
            float p = exp_f32(s[c + l] - top);
            s[c + l] = p;
            part[l] += p;
        }
    float total = lanes_sum(part);
    for (; c < n; c++) {
        s[c] = exp_f32(s[c] - top);
        total += s[c];
    }
    return total;
}

/* The row's softmax in place over its columns [first, n): s[c] = exp(s[c] - top) / their sum (top:
 * the row's greatest score). With no finite score (top -inf: no real column) every weight is 0 times
 * the score; the columns before `first` are padding, which p . v never reads. */
static inline void softmax_row(float *s, int64_t n, float top, int64_t first) {
    float total = top == -INFINITY ? 0.f : softmax_numerators(s, n, top, first);
    float inv = total > 0.f ? 1.f / total : 0.f;
    for (int64_t c = first; c < n; c++) s[c] *= inv;
}

/* The first real column of a row (its mask's first nonzero byte), or n when there is none; 0
 * without a mask. */
static inline int64_t first_real(const uint8_t *m, int64_t n) {
    int64_t c = 0;
    if (m)
        while (c < n && !m[c]) c++;
    return c;
}


/* One (row, key/value head): its `group` query heads over the row's columns. Always inlined, so
 * that a call with a constant dim (64, 128: the common head sizes) compiles to loops of known length
 * that stay in registers. */
#define ATTEND_ONE(NAME, T, LOAD, STORE, WIDEN)                                                                 \
    static inline __attribute__((always_inline)) void NAME(                                                     \
        const T *q, int64_t q_head, const T *kb, const T *vb, const uint8_t *m, int64_t cols, int64_t group,     \
        int64_t dim, float scale, float *scores, T *o) {                                                        \
        float qf[MAX_GROUP][256], acc[MAX_GROUP][256], kf[256], best[MAX_GROUP];                                 \
        for (int64_t g = 0; g < group; g++) {                                                                   \
            for (int64_t d = 0; d < dim; d++) qf[g][d] = LOAD(q[g * q_head + d]) * scale;                       \
            for (int64_t d = 0; d < dim; d++) acc[g][d] = 0.f;                                                  \
            best[g] = -INFINITY;                                                                                \
        }                                                                                                       \
        for (int64_t c = 0; c < cols; c++) {                                                                    \
            if (m && !m[c]) {                                                                                   \
                for (int64_t g = 0; g < group; g++) scores[g * cols + c] = -INFINITY;                           \
                continue;                                                                                       \
            }                                                                                                   \
            WIDEN(kf, kb + c * dim, dim);                                                                       \
            for (int64_t g = 0; g < group; g++) {                                                               \
                float s = dot(qf[g], kf, dim);                                                                  \
                scores[g * cols + c] = s;                                                                       \
                best[g] = s > best[g] ? s : best[g];                                                            \
            }                                                                                                   \
        }                                                                                                       \
        int64_t first = first_real(m, cols);                                                                    \
        for (int64_t g = 0; g < group; g++) softmax_row(scores + g * cols, cols, best[g], first);               \
        for (int64_t c = 0; c < cols; c++) {                                                                    \
            if (m && !m[c]) continue;                                                                           \
            WIDEN(kf, vb + c * dim, dim);                                                                       \
            for (int64_t g = 0; g < group; g++) axpy(acc[g], scores[g * cols + c], kf, dim);                    \
        }                                                                                                       \
        for (int64_t g = 0; g < group; g++)                                                                     \
            for (int64_t d = 0; d < dim; d++) o[g * dim + d] = STORE(acc[g][d]);                                \
    }

ATTEND_ONE(attend_one_f32, float, F32_LOAD, F32_STORE, widen_f32)
ATTEND_ONE(attend_one_bf16, uint16_t, bf16_load, bf16_round, widen_bf16)

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
/* With AVX-512, head sizes 64 and 128 take a path written for the registers (the loops above leave
 * the compiler a horizontal sum per (head, column) and accumulators in memory):
 *  - q . k for 16 columns at a time, each column's products as one register of partial sums (with
 *    AVX512-BF16, bfloat16 pairs multiplied exactly and summed in float32 by one instruction), then
 *    the 16 registers summed into one register of 16 scores by a transpose (46 instructions, where
 *    16 separate horizontal sums take ~130); a block whose 16 columns are all masked is skipped;
 *  - p . v with up to 4 (dim 64) or 2 (dim 128) query heads' accumulators in registers, each value
 *    row read and widened once for them all.
 * The same float32 arithmetic as the loops above, in another order; a row's result still depends
 * only on that row, not on the left padding the longest row in the batch gives it (each column's
 * score is summed the same way wherever it falls in a block; softmax_numerators counts from the
 * row's first real column). */
#define FAST_ATTENTION 1

/* Lane j of the result: the sum of the 16 lanes of s[j]. */
static inline __attribute__((always_inline)) __m512 sum16(const __m512 *s) {
    __m512 t[8], u[4], v[2];
    for (int i = 0; i < 8; i++) /* lanes 0-7: s[2i] folded to 8; lanes 8-15: s[2i+1] */
        t[i] = _mm512_add_ps(_mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(s[2 * i], s[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++) /* quad k: s[4i+k] folded to 4 */
        u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(t[2 * i], t[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++) /* quad k: s[8i+k] folded to 2, then s[8i+4+k] */
        v[i] = _mm512_add_ps(_mm512_shuffle_ps(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(u[2 * i], u[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* lane 4k+n: the sum of s[4n+k] */
    __m512 w = _mm512_add_ps(_mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_ps(v[0], v[1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), w);
}

static inline __m512 load16_f32(const float *x) { return _mm512_loadu_ps(x); }

static inline __m512 load16_bf16(const uint16_t *x) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)x)), 16));
}

/* Partial sums of q . k (dim a multiple of 32 for bfloat16 pairs): one register, summed by sum16. */
static inline __attribute__((always_inline)) __m512 qk_f32(const float *q, const float *k, int64_t dim) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), _mm512_loadu_ps(k + d), acc);
    return acc;
}

static inline __attribute__((always_inline)) __m512 qk_bf16(const uint16_t *q, const uint16_t *k, int64_t dim) {
    __m512 acc = _mm512_setzero_ps();
#if defined(__AVX512BF16__)
    for (int64_t d = 0; d < dim; d += 32)
        acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(q + d), (__m512bh)_mm512_loadu_si512(k + d));
#else
    for (int64_t d = 0; d < dim; d += 16) acc = _mm512_fmadd_ps(load16_bf16(q + d), load16_bf16(k + d), acc);
#endif
    return acc;
}

/* p . v for heads [0, HB) of the group at once (p: their softmax probabilities, one row of `cols`
 * each: the numerators already divided by their sums), accumulators in registers; written to o
 * (dim per head). */
#define PV_HEADS(NAME, T, LOAD16, STORE, D, HB)                                                                 \
    static inline __attribute__((always_inline)) void NAME(const T *vb, const uint8_t *m, int64_t cols,         \
                                                           const float *p, T *o) {                              \
        __m512 acc[HB][D / 16];                                                                                 \
        for (int h = 0; h < HB; h++)                                                                            \
            for (int j = 0; j < D / 16; j++) acc[h][j] = _mm512_setzero_ps();                                   \
        for (int64_t c = 0; c < cols; c++) {                                                                    \
            if (m && !m[c]) continue; /* never read: a padding column may hold anything, NaN included */       \
            __m512 v[D / 16];                                                                                   \
            for (int j = 0; j < D / 16; j++) v[j] = LOAD16(vb + c * D + 16 * j);                                 \
            for (int h = 0; h < HB; h++) {                                                                      \
                __m512 ph = _mm512_set1_ps(p[h * cols + c]);                                                    \
                for (int j = 0; j < D / 16; j++) acc[h][j] = _mm512_fmadd_ps(ph, v[j], acc[h][j]);              \
            }                                                                                                   \
        }                                                                                                       \
        for (int h = 0; h < HB; h++) {                                                                          \
            float out[D];                                                                                       \
            for (int j = 0; j < D / 16; j++) _mm512_storeu_ps(out + 16 * j, acc[h][j]);                          \
            for (int d = 0; d < D; d++) o[h * D + d] = STORE(out[d]);                                           \
        }                                                                                                       \
    }

#define PV_ALL(T, LOAD16, STORE, SUFFIX)                                                                        \
    PV_HEADS(pv64x1_##SUFFIX, T, LOAD16, STORE, 64, 1)                                                          \
    PV_HEADS(pv64x2_##SUFFIX, T, LOAD16, STORE, 64, 2)                                                          \
    PV_HEADS(pv64x3_##SUFFIX, T, LOAD16, STORE, 64, 3)                                                          \
    PV_HEADS(pv64x4_##SUFFIX, T, LOAD16, STORE, 64, 4)                                                          \
    PV_HEADS(pv128x1_##SUFFIX, T, LOAD16, STORE, 128, 1)                                                        \
    PV_HEADS(pv128x2_##SUFFIX, T, LOAD16, STORE, 128, 2)
PV_ALL(float, load16_f32, F32_STORE, f32)
PV_ALL(uint16_t, load16_bf16, bf16_round, bf16)

/* One (row, key/value head) for dim D (64 or 128): as ATTEND_ONE's, on the registers. */
#define ATTEND_FAST(NAME, T, QK, SUFFIX, D)                                                                     \
    static void NAME(const T *q, int64_t q_head, const T *kb, const T *vb, const uint8_t *m, int64_t cols,      \
                     int64_t group, float scale, float *scores, T *o) {                                         \
        __m512 best[MAX_GROUP];                                                                                 \
        for (int64_t g = 0; g < group; g++) best[g] = _mm512_set1_ps(-INFINITY);                               \
        const __m512 none = _mm512_set1_ps(-INFINITY), scaled = _mm512_set1_ps(scale);                          \
        for (int64_t c0 = 0; c0 < cols; c0 += 16) {                                                             \
            int64_t n = cols - c0 < 16 ? cols - c0 : 16;                                                        \
            __mmask16 valid = (__mmask16)(n == 16 ? 0xFFFFu : (1u << n) - 1u), real = valid;                     \
            if (m) {                                                                                            \
                __m128i bytes = _mm_maskz_loadu_epi8(valid, m + c0);                                            \
                real = _mm_test_epi8_mask(bytes, bytes);                                                        \
            }                                                                                                   \
            for (int64_t g = 0; g < group; g++) {                                                               \
                __m512 s = none;                                                                                \
                if (real) {                                                                                     \
                    __m512 part[16];                                                                            \
                    for (int j = 0; j < 16; j++)                                                                \
                        part[j] = j < n ? QK(q + g * q_head, kb + (c0 + j) * D, D) : _mm512_setzero_ps();         \
                    s = _mm512_mask_mul_ps(none, real, sum16(part), scaled);                                    \
                    best[g] = _mm512_max_ps(best[g], s);                                                        \
                }                                                                                               \
                _mm512_mask_storeu_ps(scores + g * cols + c0, valid, s);                                        \
            }                                                                                                   \
        }                                                                                                       \
        int64_t first = first_real(m, cols);                                                                    \
        for (int64_t g = 0; g < group; g++) /* before p . v: no sum of unscaled products */                     \
            softmax_row(scores + g * cols, cols, _mm512_reduce_max_ps(best[g]), first);                         \
        for (int64_t g = 0; g < group;) { /* the heads in blocks of 4 (dim 64) or 2 (dim 128), then the rest */ \
            const float *p = scores + g * cols;                                                                 \
            int64_t left = group - g;                                                                           \
            if (D == 64) {                                                                                      \
                int64_t hb = left < 4 ? left : 4;                                                               \
                switch (hb) {                                                                                   \
                case 4: pv64x4_##SUFFIX(vb, m, cols, p, o + g * D); break;                                      \
                case 3: pv64x3_##SUFFIX(vb, m, cols, p, o + g * D); break;                                      \
                case 2: pv64x2_##SUFFIX(vb, m, cols, p, o + g * D); break;                                      \
                default: pv64x1_##SUFFIX(vb, m, cols, p, o + g * D);                                            \
                }                                                                                               \
                g += hb;                                                                                        \
            } else {                                                                                            \
                int64_t hb = left < 2 ? left : 2;                                                               \
                if (hb == 2) pv128x2_##SUFFIX(vb, m, cols, p, o + g * D);                                       \
                else pv128x1_##SUFFIX(vb, m, cols, p, o + g * D);                                               \
                g += hb;                                                                                        \
            }                                                                                                   \
        }                                                                                                       \
    }
ATTEND_FAST(attend64_f32, float, qk_f32, f32, 64)
ATTEND_FAST(attend128_f32, float, qk_f32, f32, 128)
ATTEND_FAST(attend64_bf16, uint16_t, qk_bf16, bf16, 64)
ATTEND_FAST(attend128_bf16, uint16_t, qk_bf16, bf16, 128)
#endif

/* The register path for this head size when there is one (returns 1), else 0: ATTEND_ONE's. */
#define ATTEND_FAST_OR_NOT(NAME, T, SUFFIX)                                                                     \
    static inline int NAME(int64_t dim, const T *q, int64_t q_head, const T *kb, const T *vb, const uint8_t *m,  \
                           int64_t cols, int64_t group, float scale, float *scores, T *o) {                     \
        FAST_CASES(SUFFIX)                                                                                      \
        (void)dim, (void)q, (void)q_head, (void)kb, (void)vb, (void)m, (void)cols, (void)group, (void)scale,    \
            (void)scores, (void)o;                                                                              \
        return 0;                                                                                               \
    }
#ifdef FAST_ATTENTION
#define FAST_CASES(SUFFIX)                                                                                      \
    if (dim == 64) { attend64_##SUFFIX(q, q_head, kb, vb, m, cols, group, scale, scores, o); return 1; }        \
    if (dim == 128) { attend128_##SUFFIX(q, q_head, kb, vb, m, cols, group, scale, scores, o); return 1; }
#else
#define FAST_CASES(SUFFIX)
#endif
ATTEND_FAST_OR_NOT(attend_fast_f32, float, f32)
ATTEND_FAST_OR_NOT(attend_fast_bf16, uint16_t, bf16)

/* The (row, key/value head) pairs are shared out among `threads` threads of the OpenMP runtime torch
 * itself runs on (handlers/cpu_kernels.py links this library to that one: the same thread team, not
 * a second one beside it); built without OpenMP, one thread. */
#define ATTENTION_BODY(ONE, FAST)                                                                                     \
    int64_t group = heads / kv_heads;                                                                           \
    if (dim % LANES || dim > 256 || group > MAX_GROUP || group * kv_heads != heads) return -2;                  \
    int failed = 0;                                                                                             \
    _Pragma("omp parallel num_threads(threads) if (threads > 1 && rows * kv_heads > 1)")                        \
    {                                                                                                           \
        float *scores = malloc((size_t)(group * cols + 1) * sizeof(float));                                     \
        if (!scores) {                                                                                          \
            _Pragma("omp atomic write")                                                                         \
            failed = 1;                                                                                         \
        }                                                                                                       \
        _Pragma("omp for schedule(static)")                                                                     \
        for (int64_t task = 0; task < rows * kv_heads; task++) {                                                \
            if (!scores) continue;                                                                              \
            int64_t r = task / kv_heads, kh = task % kv_heads;                                                  \
            const uint8_t *m = mask ? mask + r * mask_row : NULL;                                               \
            if (FAST(dim, q + r * q_row + kh * group * q_head, q_head, keys + r * k_row + kh * k_head,          \
                     values + r * v_row + kh * v_head, m, cols, group, scale, scores,                           \
                     out + r * out_row + kh * group * dim))                                                     \
                continue;                                                                                       \
            switch (dim) {                                                                                      \
            case 64:                                                                                            \
                ONE(q + r * q_row + kh * group * q_head, q_head, keys + r * k_row + kh * k_head,                \
                    values + r * v_row + kh * v_head, m, cols, group, 64, scale, scores,                        \
                    out + r * out_row + kh * group * dim);                                                      \
                break;                                                                                          \
            case 128:                                                                                           \
                ONE(q + r * q_row + kh * group * q_head, q_head, keys + r * k_row + kh * k_head,                \
                    values + r * v_row + kh * v_head, m, cols, group, 128, scale, scores,                       \
                    out + r * out_row + kh * group * dim);                                                      \
                break;                                                                                          \
            default:                                                                                            \
                ONE(q + r * q_row + kh * group * q_head, q_head, keys + r * k_row + kh * k_head,                \
                    values + r * v_row + kh * v_head, m, cols, group, dim, scale, scores,                       \
                    out + r * out_row + kh * group * dim);                                                      \
            }                                                                                                   \
        }                                                                                                       \
        free(scores);                                                                                           \
    }                                                                                                           \
    return failed ? -1 : 0;

/* dim must be a multiple of 16 and at most 256 (returns -2 otherwise, before touching anything). */
int decode_attention_f32(const float *q, int64_t rows, int64_t heads, int64_t kv_heads, int64_t dim, int64_t q_row,
                         int64_t q_head, const float *keys, int64_t k_row, int64_t k_head, const float *values,
                         int64_t v_row, int64_t v_head, int64_t cols, const uint8_t *mask, int64_t mask_row,
                         float scale, float *out, int64_t out_row, int threads) {
    ATTENTION_BODY(attend_one_f32, attend_fast_f32)
}

int decode_attention_bf16(const uint16_t *q, int64_t rows, int64_t heads, int64_t kv_heads, int64_t dim,
                          int64_t q_row, int64_t q_head, const uint16_t *keys, int64_t k_row, int64_t k_head,
                          const uint16_t *values, int64_t v_row, int64_t v_head, int64_t cols, const uint8_t *mask,
                          int64_t mask_row, float scale, uint16_t *out, int64_t out_row, int threads) {
    ATTENTION_BODY(attend_one_bf16, attend_fast_bf16)
}
