/* Fused GCT for float32 CPU tensors, one batch row at a time (see _gct_kernel.py).
 *
 * A row (one sample, C x H x W) is reduced, its (C,) gate maths done in double, and it is
 * scaled while it is still in cache: forward reads x once and writes y once; backward reads
 * (dy, x) for the per-channel dot and again (from cache) to write dx. Rows are cut into
 * shares of a fixed size (k->rows rows, set by the caller from the shape alone, so results
 * do not depend on the thread count) that run on the process's OpenMP threads (torch's own
 * pool when torch has loaded libgomp). Layouts: NCHW contiguous (a channel's H*W values are contiguous) or channels_last
 * (NHWC: the C channels of one pixel are contiguous). No Python or torch headers: the
 * library is plain C, built with the system compiler on first use and called via ctypes.
 */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* P_GIVEN: E and h come from the caller (a p other than 1, 2, 3, 4, inf or gap) */
enum { P_GAP, P_INF, P_ONE, P_TWO, P_GIVEN, P_THREE, P_FOUR };
enum { N_L2, N_L1, N_LAYER, N_NONE };
enum { A_TANH, A_SIGMOID, A_SOFTSIGN, A_HARDTANH, A_ERF };

typedef struct {
    int64_t B, C, HW;
    int32_t channels_last, pmode, after_relu, norm, act, threads;
    int64_t rows;  /* rows per share */
    double p, eps;
} Cfg;

typedef struct {
    const Cfg *k;
    const float *x, *dy, *h, *alpha, *gamma, *beta;
    float *y, *dx, *stats;  /* stats (3, B, C): E, the gate, its derivative dgate/dz */
    int64_t *idx;
    double *part;           /* backward: this share's parameter gradients, (3, C) */
    int64_t b0, b1;
    double *w;              /* this share's scratch: 5 C doubles */
    float *coef, *tile;     /* C floats; 2 tiles (see tile_of) */
} Job;

/* ---------------------------------------------------------------- full-size passes */
/* Sums of a per-element term over n values: float partial sums in two 8-lane vectors
 * (no loop-carried latency to speak of) over blocks of BLOCK values, added up in double. */
#define BLOCK 1024
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

static inline v8f load8(const float *p) { v8f v; memcpy(&v, p, sizeof v); return v; }
static inline v8f abs8(v8f v) { return (v8f)((v8i)v & 0x7fffffff); }
static inline v8f sq8(v8f v) { return v * v; }
static inline float hsum8(v8f v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

#define DEFINE_REDUCE(name, vterm, term)                                            \
    static double name(const float *v, const float *w, int64_t n) {                 \
        (void)w;                                                                    \
        double total = 0.0;                                                         \
        for (int64_t start = 0; start < n; start += BLOCK) {                        \
            const int64_t end = n - start > BLOCK ? start + BLOCK : n;              \
            v8f a0 = {0.0f}, a1 = {0.0f};                                           \
            float rest = 0.0f;                                                      \
            int64_t i = start;                                                      \
            for (; i + 16 <= end; i += 16) { a0 += vterm(i); a1 += vterm(i + 8); }  \
            for (; i + 8 <= end; i += 8) a0 += vterm(i);                            \
            for (; i < end; i++) rest += term(i);                                   \
            total += rest + hsum8(a0 + a1);                                         \
        }                                                                           \
        return total;                                                               \
    }
#define SUM(i) (v[i])
#define ABS(i) (fabsf(v[i]))
#define SQUARE(i) (v[i] * v[i])
#define DOT(i) (v[i] * w[i])
#define CUBE(i) (fabsf(v[i]) * v[i] * v[i])
#define QUAD(i) ((v[i] * v[i]) * (v[i] * v[i]))
#define VSUM(i) (load8(v + (i)))
#define VABS(i) (abs8(load8(v + (i))))
#define VSQUARE(i) (load8(v + (i)) * load8(v + (i)))
#define VDOT(i) (load8(v + (i)) * load8(w + (i)))
#define VCUBE(i) (abs8(load8(v + (i))) * sq8(load8(v + (i))))
#define VQUAD(i) (sq8(sq8(load8(v + (i)))))
DEFINE_REDUCE(reduce_sum, VSUM, SUM)
DEFINE_REDUCE(reduce_abs, VABS, ABS)
DEFINE_REDUCE(reduce_square, VSQUARE, SQUARE)
DEFINE_REDUCE(reduce_dot, VDOT, DOT)
DEFINE_REDUCE(reduce_cube, VCUBE, CUBE)
DEFINE_REDUCE(reduce_quad, VQUAD, QUAD)

/* Short channels (H*W <= BLOCK, NCHW) are reduced 8 at a time: each channel's lane sums
 * stay in a vector, and one transpose folds the 8 vectors into the 8 channel sums. Folding
 * each channel on its own cost a tenth of the forward at H*W = 64. */
#if defined(__clang__) || __GNUC__ >= 12
#define GROUP 8
#define SHUF __builtin_shufflevector
static inline v8f fold8x8(const v8f *a) {
    v8f t[4], u[2];
    for (int i = 0; i < 4; i++)
        t[i] = SHUF(a[2 * i], a[2 * i + 1], 0, 8, 2, 10, 4, 12, 6, 14)
             + SHUF(a[2 * i], a[2 * i + 1], 1, 9, 3, 11, 5, 13, 7, 15);
    for (int i = 0; i < 2; i++)
        u[i] = SHUF(t[2 * i], t[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13)
             + SHUF(t[2 * i], t[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    return SHUF(u[0], u[1], 0, 1, 2, 3, 8, 9, 10, 11) + SHUF(u[0], u[1], 4, 5, 6, 7, 12, 13, 14, 15);
}
#define DEFINE_REDUCE8(name, vterm, term)                                           \
    static void name(const float *x, const float *y, int64_t n, double *out) {     \
        v8f lanes[GROUP];                                                           \
        float rest[GROUP];                                                          \
        for (int ch = 0; ch < GROUP; ch++) {                                        \
            const float *v = x + ch * n, *w = y ? y + ch * n : v;                   \
            v8f a0 = {0.0f}, a1 = {0.0f};                                           \
            float r = 0.0f;                                                         \
            int64_t i = 0;                                                          \
            (void)w;                                                                \
            for (; i + 16 <= n; i += 16) { a0 += vterm(i); a1 += vterm(i + 8); }    \
            for (; i + 8 <= n; i += 8) a0 += vterm(i);                              \
            for (; i < n; i++) r += term(i);                                        \
            lanes[ch] = a0 + a1;                                                    \
            rest[ch] = r;                                                           \
        }                                                                           \
        const v8f sums = fold8x8(lanes);                                            \
        for (int ch = 0; ch < GROUP; ch++) out[ch] = (double)(sums[ch] + rest[ch]); \
    }
#else
#define GROUP 1  /* no portable vector shuffle: every channel takes the reducers above */
#define DEFINE_REDUCE8(name, vterm, term)                                           \
    static void name(const float *x, const float *y, int64_t n, double *out) {     \
        (void)x; (void)y; (void)n; (void)out;                                       \
    }
#endif
DEFINE_REDUCE8(reduce8_sum, VSUM, SUM)
DEFINE_REDUCE8(reduce8_abs, VABS, ABS)
DEFINE_REDUCE8(reduce8_square, VSQUARE, SQUARE)
DEFINE_REDUCE8(reduce8_dot, VDOT, DOT)
DEFINE_REDUCE8(reduce8_cube, VCUBE, CUBE)
DEFINE_REDUCE8(reduce8_quad, VQUAD, QUAD)

/* The end of the channels that are reduced in groups of GROUP (the rest: one by one). */
static int64_t grouped_upto(int64_t C, int64_t HW) {
    return GROUP > 1 && HW <= BLOCK ? C - C % GROUP : 0;
}

/* The backward's dot pass over a row also asks for the cache lines of the dx row that the
 * next pass writes, a few at a time, so that their reads for ownership overlap the dot's
 * reads. It pays only when the tensors stream from memory and a row stays in L2 (it slows
 * tensors that sit in the last-level cache, and the forward gains nothing), hence the two
 * bounds below (benchmarks/gct_op measures them). */
#define PREFETCH_MIN_TENSOR_BYTES (6 << 20)
#define PREFETCH_MAX_ROW_BYTES (256 << 10)
/* always_inline: as a call, GCC finds the function free of side effects and drops it */
static inline __attribute__((always_inline)) void prefetch_out(float *o, int64_t n) {
    if (o) for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(o + i, 1, 3);
}

/* channels_last rows are walked in tiles of T values (T: a multiple of C, at least TILE
 * when C is smaller), so that the inner loops are long and need no per-pixel set-up: a
 * per-channel vector (a gate, a coefficient) is repeated over the tile, and per-channel
 * sums are gathered over it and folded at the end. */
#define TILE 256
static int64_t tile_of(int64_t C) { return C >= TILE ? C : C * ((TILE + C - 1) / C); }

static void repeat_tile(const float *v, int64_t C, int64_t T, float *restrict tile) {
    for (int64_t t = 0; t < T; t += C) memcpy(tile + t, v, (size_t)C * sizeof *v);
}

/* Per-channel sums over the H*W pixels of a channels_last row, in double: float partial
 * sums in the tile acc over blocks of 64 tiles, added up in double. A tile of TILE values
 * (C a divisor of TILE, or C = TILE) is summed in 16 vectors of 16 lanes, which stay in
 * registers (sums through memory dominated the forward). */
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
static inline v16f load16(const float *p) { v16f v; memcpy(&v, p, sizeof v); return v; }
static inline v16f abs16(v16f v) { return (v16f)((v16i)v & 0x7fffffff); }
static inline v16f sq16(v16f v) { return v * v; }
/* Adds a tile's sums, held in 16 registers, to out (C a multiple of 16 dividing TILE, or
 * TILE): register t holds channels 16 (t mod C/16) on, so the registers are folded in
 * halves down to C/16 of them, with constant indices (no round trip through memory). */
static inline void fold_tile(v16f *r, int64_t C, double *restrict out) {
    const int64_t per = C / 16;
    for (int half = TILE / 32; half >= 1; half /= 2) {
        if (per > half) break;
        for (int t = 0; t < half; t++) r[t] += r[t + half];
    }
    for (int t = 0; t < TILE / 16; t++)
        if (t < per)
            for (int j = 0; j < 16; j++) out[16 * t + j] += r[t][j];
}
#define VSUM16(i) (load16(v + (i)))
#define VABS16(i) (abs16(load16(v + (i))))
#define VSQUARE16(i) (load16(v + (i)) * load16(v + (i)))
#define VDOT16(i) (load16(v + (i)) * load16(w + (i)))
#define VCUBE16(i) (abs16(load16(v + (i))) * sq16(load16(v + (i))))
#define VQUAD16(i) (sq16(sq16(load16(v + (i)))))
#define DEFINE_REDUCE_CL(name, term, vterm16)                                       \
    static void name(const float *restrict x, const float *restrict y, int64_t C,   \
                     int64_t HW, double *restrict out, float *restrict acc,         \
                     float *pf) {                                                   \
        const int64_t n = C * HW, T = tile_of(C), span = 64 * T;                    \
        for (int64_t c = 0; c < C; c++) out[c] = 0.0;                               \
        for (int64_t start = 0; start < n; start += span) {                         \
            const int64_t end = n - start > span ? start + span : n;                \
            int64_t i = start;                                                      \
            if (T == TILE) {                                                        \
                v16f r[TILE / 16] = {{0.0f}};                                       \
                for (; i + TILE <= end; i += TILE) {                                \
                    const float *v = x + i, *w = y ? y + i : v;                     \
                    (void)w;                                                        \
                    for (int t = 0; t < TILE / 16; t++) r[t] += vterm16(16 * t);    \
                    prefetch_out(pf ? pf + i : NULL, TILE);                         \
                }                                                                   \
                if (i == end && C % 16 == 0) {                                      \
                    fold_tile(r, C, out);                                           \
                    continue;                                                       \
                }                                                                   \
                memcpy(acc, r, sizeof r);                                           \
            } else {                                                                \
                for (int64_t t = 0; t < T; t++) acc[t] = 0.0f;                      \
            }                                                                       \
            for (; i < end; i += T) {                                               \
                const float *v = x + i, *w = y ? y + i : v;                         \
                const int64_t m = end - i < T ? end - i : T;                        \
                (void)w;                                                            \
                for (int64_t t = 0; t < m; t++) acc[t] += term(t);                  \
                prefetch_out(pf ? pf + i : NULL, m);                                \
            }                                                                       \
            for (int64_t t = 0; t < T; t += C)                                      \
                for (int64_t c = 0; c < C; c++) out[c] += acc[t + c];               \
        }                                                                           \
    }
DEFINE_REDUCE_CL(reduce_sum_cl, SUM, VSUM16)
DEFINE_REDUCE_CL(reduce_abs_cl, ABS, VABS16)
DEFINE_REDUCE_CL(reduce_square_cl, SQUARE, VSQUARE16)
DEFINE_REDUCE_CL(reduce_dot_cl, DOT, VDOT16)
DEFINE_REDUCE_CL(reduce_cube_cl, CUBE, VCUBE16)
DEFINE_REDUCE_CL(reduce_quad_cl, QUAD, VQUAD16)

/* channels_last rows of C = 16 PER channels (PER = 1, 2, 4 or 8) written as
 * out = gate * a + coef * t(b), t by p mode as in dx_row below (P_INF: no second term; y is
 * gate * x), with the gate and coef vectors held in registers over the row's pixels rather
 * than repeated over a tile in memory: a load less per vector for y, two for dx. */
static inline void store16(float *p, v16f v) { memcpy(p, &v, sizeof v); }
static inline v16f sign16(v16f v) {
    return __builtin_convertvector((v < 0.0f) - (v > 0.0f), v16f);  /* true is -1 */
}
#define DEFINE_HELD_CL(PER)                                                                    \
    static void held_cl##PER(int mode, const float *restrict a, const float *restrict b,       \
                             const float *restrict h, const float *restrict gate,              \
                             const float *restrict coef, float *restrict out, int64_t HW) {    \
        v16f g[PER], q[PER];                                                                   \
        for (int j = 0; j < PER; j++) {                                                        \
            g[j] = load16(gate + 16 * j);                                                      \
            q[j] = load16(coef + 16 * j);                                                      \
        }                                                                                      \
        for (int64_t i = 0; i < HW * 16 * PER; i += 16 * PER)                                  \
            for (int j = 0; j < PER; j++) {                                                    \
                const int64_t at = i + 16 * j;                                                 \
                const v16f ga = g[j] * load16(a + at);                                         \
                if (mode == P_TWO) store16(out + at, ga + q[j] * load16(b + at));              \
                else if (mode == P_GIVEN) store16(out + at, ga + q[j] * load16(h + at));       \
                else if (mode == P_THREE) store16(out + at, ga + q[j] * (load16(b + at)          \
                                                  * abs16(load16(b + at))));                   \
                else if (mode == P_FOUR) store16(out + at, ga + q[j] * (load16(b + at)           \
                                                 * sq16(load16(b + at))));                     \
                else if (mode == P_ONE) store16(out + at, ga + q[j] * sign16(load16(b + at))); \
                else if (mode == P_GAP) store16(out + at, ga + q[j]);                          \
                else store16(out + at, ga);                                                    \
            }                                                                                  \
    }
DEFINE_HELD_CL(1)
DEFINE_HELD_CL(2)
DEFINE_HELD_CL(4)
DEFINE_HELD_CL(8)

/* Writes a channels_last row with the gate and coef held in registers (DEFINE_HELD_CL);
 * returns 0 where C is not 16, 32, 64 or 128 (the caller walks tiles instead). */
static int held_row_cl(int mode, int64_t C, int64_t HW, const float *a, const float *b,
                       const float *h, const float *gate, const float *coef, float *out) {
    switch (C) {
        case 16: held_cl1(mode, a, b, h, gate, coef, out, HW); return 1;
        case 32: held_cl2(mode, a, b, h, gate, coef, out, HW); return 1;
        case 64: held_cl4(mode, a, b, h, gate, coef, out, HW); return 1;
        case 128: held_cl8(mode, a, b, h, gate, coef, out, HW); return 1;
        default: return 0;
    }
}

/* p = inf: per channel, max |x| over the H*W pixels and the first pixel that holds it (as
 * torch's max does), 16 lanes at a time: 16 pixels of a channel (NCHW) or 16 channels of a
 * pixel (channels_last), each lane keeping its maximum and where it first saw it. A scalar
 * walk, strided over channels_last, took twice the rest of the GCT's forward. */
static inline v16f blend16(v16i take, v16f a, v16f b) {  /* take ? a : b, lane by lane */
    return (v16f)(((v16i)a & take) | ((v16i)b & ~take));
}
static void max_abs_scalar(const float *x, int64_t HW, int64_t step, double *e, int64_t *idx) {
    float m = -1.0f;
    int64_t a = 0;
    for (int64_t i = 0; i < HW; i++) {
        const float t = fabsf(x[i * step]);
        if (t > m) { m = t; a = i; }
    }
    *e = m;
    *idx = a;
}
static void max_abs_row(const float *x, int64_t C, int64_t HW, int cl, double *e, int64_t *idx) {
    const v16i lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    const v16f none = (v16f){0.0f} - 1.0f;  /* below any |x|; NaN is never taken (as above) */
    if (cl) {
        int64_t c = 0;
        for (; c + 16 <= C; c += 16) {          /* lanes: 16 channels of one pixel */
            v16f m = none;
            v16i at = {0};
            for (int64_t i = 0; i < HW; i++) {
                const v16f v = abs16(load16(x + i * C + c));
                const v16i gt = v > m;
                m = blend16(gt, v, m);
                at = (gt & (int32_t)i) | (at & ~gt);
            }
            for (int j = 0; j < 16; j++) { e[c + j] = m[j]; idx[c + j] = at[j]; }
        }
        for (; c < C; c++) max_abs_scalar(x + c, HW, C, e + c, idx + c);
        return;
    }
    for (int64_t c = 0; c < C; c++) {           /* lanes: 16 pixels of one channel */
        const float *v = x + c * HW;
        if (HW < 16) { max_abs_scalar(v, HW, 1, e + c, idx + c); continue; }
        v16f m = none;
        v16i at = lane;
        int64_t i = 0;
        for (; i + 16 <= HW; i += 16) {
            const v16f t = abs16(load16(v + i));
            const v16i gt = t > m;
            m = blend16(gt, t, m);
            at = ((lane + (int32_t)i) & gt) | (at & ~gt);
        }
        float best = m[0];
        int64_t a = at[0];
        for (int j = 1; j < 16; j++)            /* the first pixel among the lanes' maxima */
            if (m[j] > best || (m[j] == best && at[j] < a)) { best = m[j]; a = at[j]; }
        for (; i < HW; i++) {
            const float t = fabsf(v[i]);
            if (t > best) { best = t; a = i; }
        }
        e[c] = best;
        idx[c] = a;
    }
}

static void embed_row(const Cfg *k, const float *x, double *e, int64_t *idx, float *acc) {
    const int64_t C = k->C, HW = k->HW;
    const int pm = k->pmode, abs_ = pm == P_ONE && !k->after_relu;
    if (pm == P_INF) {
        max_abs_row(x, C, HW, k->channels_last, e, idx);
        return;
    }
    if (!k->channels_last) {
        const int64_t grouped = grouped_upto(C, HW);
        for (int64_t c = 0; c < grouped; c += GROUP) {
            const float *v = x + c * HW;
            if (pm == P_TWO) reduce8_square(v, NULL, HW, e + c);
            else if (pm == P_THREE) reduce8_cube(v, NULL, HW, e + c);
            else if (pm == P_FOUR) reduce8_quad(v, NULL, HW, e + c);
            else if (abs_) reduce8_abs(v, NULL, HW, e + c);
            else reduce8_sum(v, NULL, HW, e + c);
        }
        for (int64_t c = grouped; c < C; c++) {
            const float *v = x + c * HW;
            e[c] = pm == P_TWO ? reduce_square(v, NULL, HW)
                 : pm == P_THREE ? reduce_cube(v, NULL, HW)
                 : pm == P_FOUR ? reduce_quad(v, NULL, HW)
                 : abs_ ? reduce_abs(v, NULL, HW) : reduce_sum(v, NULL, HW);
        }
    } else if (pm == P_TWO) reduce_square_cl(x, NULL, C, HW, e, acc, NULL);
    else if (pm == P_THREE) reduce_cube_cl(x, NULL, C, HW, e, acc, NULL);
    else if (pm == P_FOUR) reduce_quad_cl(x, NULL, C, HW, e, acc, NULL);
    else if (abs_) reduce_abs_cl(x, NULL, C, HW, e, acc, NULL);
    else reduce_sum_cl(x, NULL, C, HW, e, acc, NULL);
    for (int64_t c = 0; c < C; c++) {
        if (pm == P_TWO) e[c] = sqrt(e[c] + k->eps);
        else if (pm == P_THREE) e[c] = cbrt(e[c] + k->eps);
        else if (pm == P_FOUR) e[c] = sqrt(sqrt(e[c] + k->eps));
        else if (pm == P_GAP) e[c] /= (double)HW;
    }
}

static void scale_row(const Cfg *k, const float *restrict x, const float *restrict gate,
                      float *restrict y, float *restrict tile) {
    const int64_t C = k->C, HW = k->HW;
    if (!k->channels_last) {
        for (int64_t c = 0; c < C; c++) {
            const float g = gate[c], *v = x + c * HW;
            float *o = y + c * HW;
            for (int64_t i = 0; i < HW; i++) o[i] = v[i] * g;
        }
    } else if (!held_row_cl(P_INF, C, HW, x, NULL, NULL, gate, gate, y)) {  /* coef unused */
        const int64_t n = C * HW, T = tile_of(C);
        repeat_tile(gate, C, T, tile);
        for (int64_t i = 0; i < n; i += T) {
            const int64_t m = n - i < T ? n - i : T;
            for (int64_t t = 0; t < m; t++) y[i + t] = x[i + t] * tile[t];
        }
    }
}

static void dot_row(const Cfg *k, const float *dy, const float *x, double *dot, float *acc,
                    float *pf) {
    const int64_t C = k->C, HW = k->HW;
    if (k->channels_last) {
        reduce_dot_cl(dy, x, C, HW, dot, acc, pf);
        return;
    }
    const int64_t grouped = pf ? 0 : grouped_upto(C, HW);  /* prefetch: channel by channel */
    for (int64_t c = 0; c < grouped; c += GROUP) reduce8_dot(dy + c * HW, x + c * HW, HW, dot + c);
    for (int64_t c = grouped; c < C; c++) {
        dot[c] = reduce_dot(dy + c * HW, x + c * HW, HW);
        prefetch_out(pf ? pf + c * HW : NULL, HW);
    }
}

static inline float sign_of(float x) { return (float)((x > 0.0f) - (x < 0.0f)); }

/* dx = gate * dy + coef * t, where t is x (p = 2), sign(x) (p = 1), x |x| (p = 3), x^3
 * (p = 4), 1 (gap, p = 1 after ReLU) or h (given p); nothing for p = inf (added at the
 * maximiser afterwards). */
static void dx_row(const Cfg *k, const float *restrict dy, const float *restrict x,
                   const float *restrict h, const float *restrict gate,
                   const float *restrict coef, float *restrict dx, float *restrict tile) {
    const int64_t C = k->C, HW = k->HW;
    int mode = k->pmode;
    if (mode == P_ONE && k->after_relu) mode = P_GAP;
    if (!k->channels_last) {
        for (int64_t c = 0; c < C; c++) {
            const float g = gate[c], q = coef[c];
            const float *u = dy + c * HW, *v = x + c * HW;
            float *o = dx + c * HW;
            if (mode == P_INF) for (int64_t i = 0; i < HW; i++) o[i] = g * u[i];
            else if (mode == P_GIVEN) {
                const float *w = h + c * HW;
                for (int64_t i = 0; i < HW; i++) o[i] = g * u[i] + q * w[i];
            } else if (mode == P_TWO) for (int64_t i = 0; i < HW; i++) o[i] = g * u[i] + q * v[i];
            else if (mode == P_THREE)
                for (int64_t i = 0; i < HW; i++) o[i] = g * u[i] + q * (v[i] * fabsf(v[i]));
            else if (mode == P_FOUR)
                for (int64_t i = 0; i < HW; i++) o[i] = g * u[i] + q * (v[i] * (v[i] * v[i]));
            else if (mode == P_ONE) for (int64_t i = 0; i < HW; i++) o[i] = g * u[i] + q * sign_of(v[i]);
            else for (int64_t i = 0; i < HW; i++) o[i] = g * u[i] + q;
        }
    } else if (!held_row_cl(mode, C, HW, dy, x, h, gate, coef, dx)) {
        const int64_t n = C * HW, T = tile_of(C);
        float *g = tile, *q = tile + T;
        repeat_tile(gate, C, T, g);
        repeat_tile(coef, C, T, q);
        for (int64_t i = 0; i < n; i += T) {
            const int64_t m = n - i < T ? n - i : T;
            const float *u = dy + i, *v = x + i;
            float *o = dx + i;
            if (mode == P_INF) for (int64_t t = 0; t < m; t++) o[t] = g[t] * u[t];
            else if (mode == P_GIVEN) {
                const float *w = h + i;
                for (int64_t t = 0; t < m; t++) o[t] = g[t] * u[t] + q[t] * w[t];
            } else if (mode == P_TWO) for (int64_t t = 0; t < m; t++) o[t] = g[t] * u[t] + q[t] * v[t];
            else if (mode == P_THREE)
                for (int64_t t = 0; t < m; t++) o[t] = g[t] * u[t] + q[t] * (v[t] * fabsf(v[t]));
            else if (mode == P_FOUR)
                for (int64_t t = 0; t < m; t++) o[t] = g[t] * u[t] + q[t] * (v[t] * (v[t] * v[t]));
            else if (mode == P_ONE) for (int64_t t = 0; t < m; t++) o[t] = g[t] * u[t] + q[t] * sign_of(v[t]);
            else for (int64_t t = 0; t < m; t++) o[t] = g[t] * u[t] + q[t];
        }
    }
}

/* ---------------------------------------------------------------- (C,) gate maths */
/* s = E alpha; u = normalized s; z = beta + gamma u (if z). Returns q, the normalizer. */
static double gate_pre(const Cfg *k, const float *restrict e, const float *restrict a,
                       const float *restrict g, const float *restrict b, double *restrict s,
                       double *restrict u, double *restrict z) {
    const int64_t C = k->C;
    const int norm = k->norm;
    double q = 1.0, mean = 0.0, acc = 0.0;
    for (int64_t c = 0; c < C; c++) s[c] = (double)e[c] * a[c];
    if (norm == N_L2) {
        for (int64_t c = 0; c < C; c++) acc += s[c] * s[c];
        q = 1.0 / sqrt(acc / C + k->eps);
    } else if (norm == N_L1) {
        for (int64_t c = 0; c < C; c++) acc += fabs(s[c]);
        q = 1.0 / (acc / C + k->eps);
    } else if (norm == N_LAYER) {
        for (int64_t c = 0; c < C; c++) mean += s[c];
        mean /= C;
        for (int64_t c = 0; c < C; c++) acc += (s[c] - mean) * (s[c] - mean);
        q = 1.0 / sqrt(acc / C + k->eps);
    }
    for (int64_t c = 0; c < C; c++) u[c] = (s[c] - mean) * q;  /* N_NONE: mean 0, q 1 */
    if (z)  /* the backward needs no z */
        for (int64_t c = 0; c < C; c++) z[c] = (double)b[c] + (double)g[c] * u[c];
    return q;
}

/* exp(x) for x <= 0 without a library call, so that the loops below vectorise: x = n ln2
 * + r with |r| <= ln2 / 2, exp(r) by its Taylor series to r^11, 2^n from the exponent bits.
 * Relative error at most 3e-14 over [-708, 0] (against libm). Below -708 it returns
 * exp(-708) (about 3e-308) instead of something smaller: zero once rounded to float. */
static inline double exp_nonpos(double x) {
    x = x < -708.0 ? -708.0 : x;
    const double kd = rint(x * 1.4426950408889634), shifted = kd + 0x1.8p52;
    int64_t bits;
    memcpy(&bits, &shifted, sizeof bits);      /* the low bits hold n = kd */
    const double r = (x - kd * 0x1.62e42fefa39efp-1) - kd * 0x1.abc9e3b39803fp-56;
    double e = 1.0 / 39916800.0;
    e = e * r + 1.0 / 3628800.0;
    e = e * r + 1.0 / 362880.0;
    e = e * r + 1.0 / 40320.0;
    e = e * r + 1.0 / 5040.0;
    e = e * r + 1.0 / 720.0;
    e = e * r + 1.0 / 120.0;
    e = e * r + 1.0 / 24.0;
    e = e * r + 1.0 / 6.0;
    e = e * r + 0.5;
    e = e * r + 1.0;
    e = e * r + 1.0;
    const int64_t scale_bits = (int64_t)((uint64_t)(bits + 1023) << 52);
    double two_n;
    memcpy(&two_n, &scale_bits, sizeof two_n);
    return e * two_n;
}

/* gate = 2 sigmoid(m z) and dgate/dz = m * 2 sigmoid'(m z), from one exp(-|m z|): no
 * overflow, and no cancellation where it saturates. tanh: m = 2 (1 + tanh z = 2 sigmoid(2z)). */
static void sigmoid2_row(int64_t C, double m, const double *restrict z, float *restrict gate,
                         float *restrict grad) {
    for (int64_t c = 0; c < C; c++) {
        const double w = m * z[c], t = exp_nonpos(-fabs(w)), d = 1.0 + t, inv = 1.0 / d;
        grad[c] = (float)(2.0 * m * t * inv * inv);
        gate[c] = (float)(2.0 * (w >= 0.0 ? 1.0 : t) * inv);
    }
}

/* The gate (1 at z = 0) of one row, and dgate/dz. */
static void activate_row(int act, int64_t C, const double *restrict z, float *restrict gate,
                         float *restrict grad) {
    switch (act) {
        case A_TANH: sigmoid2_row(C, 2.0, z, gate, grad); return;
        case A_SIGMOID: sigmoid2_row(C, 1.0, z, gate, grad); return;
        case A_SOFTSIGN:
            for (int64_t c = 0; c < C; c++) {
                const double d = 1.0 + fabs(z[c]);
                grad[c] = (float)(1.0 / (d * d));
                gate[c] = (float)(1.0 + z[c] / d);
            }
            return;
        case A_HARDTANH:
            for (int64_t c = 0; c < C; c++) {
                grad[c] = z[c] > -1.0 && z[c] < 1.0 ? 1.0f : 0.0f;
                gate[c] = (float)(1.0 + (z[c] < -1.0 ? -1.0 : z[c] > 1.0 ? 1.0 : z[c]));
            }
            return;
        default:
            for (int64_t c = 0; c < C; c++) {
                grad[c] = (float)(1.1283791670955126 * exp(-z[c] * z[c]));  /* 2 / sqrt(pi) */
                gate[c] = (float)(1.0 + erf(z[c]));
            }
    }
}

/* From dL/dgate (in dz), write dL/dE (in de) and add the row's (dalpha, dgamma, dbeta). */
static void gate_backward(const Cfg *k, const float *restrict e, const float *restrict dact,
                          const float *restrict a, const float *restrict g, double q,
                          const double *restrict s, const double *restrict u,
                          double *restrict dz, double *restrict de, double *restrict part) {
    const int64_t C = k->C;
    const int norm = k->norm;
    double proj = 0.0, mean = 0.0;
    for (int64_t c = 0; c < C; c++) {
        dz[c] *= dact[c];
        part[C + c] += dz[c] * u[c];
        part[2 * C + c] += dz[c];
        de[c] = dz[c] * g[c];                      /* du for now */
        proj += de[c] * u[c];
        mean += de[c];
    }
    proj /= C;
    mean /= C;
    for (int64_t c = 0; c < C; c++) {
        double ds = de[c];
        if (norm == N_L2) ds = (ds - u[c] * proj) * q;
        else if (norm == N_L1) ds = (ds - ((s[c] > 0.0) - (s[c] < 0.0)) * proj) * q;
        else if (norm == N_LAYER) ds = (ds - mean - u[c] * proj) * q;
        part[c] += ds * e[c];
        de[c] = ds * a[c];
    }
}

/* ---------------------------------------------------------------- row workers */
static void forward_rows(const Job *j) {
    const Cfg *k = j->k;
    const int64_t C = k->C, n = C * k->HW;
    double *w = j->w, *s = w + C, *u = s + C, *z = u + C;
    for (int64_t b = j->b0; b < j->b1; b++) {
        float *e = j->stats + b * C, *gate = e + k->B * C, *dact = gate + k->B * C;
        if (k->pmode != P_GIVEN) {
            embed_row(k, j->x + b * n, w, j->idx ? j->idx + b * C : NULL, j->tile);
            for (int64_t c = 0; c < C; c++) e[c] = (float)w[c];
        }
        gate_pre(k, e, j->alpha, j->gamma, j->beta, s, u, z);
        activate_row(k->act, C, z, gate, dact);
        if (j->y) scale_row(k, j->x + b * n, gate, j->y + b * n, j->tile);
    }
}

static void backward_rows(const Job *j) {
    const Cfg *k = j->k;
    const int64_t C = k->C, HW = k->HW, n = C * HW;
    double *w = j->w, *s = w + C, *u = s + C, *z = u + C, *de = z + C;
    float *coef = j->coef;
    const int prefetch = j->dx && n * 4 <= PREFETCH_MAX_ROW_BYTES
                         && k->B * n * 4 >= PREFETCH_MIN_TENSOR_BYTES;
    for (int64_t b = j->b0; b < j->b1; b++) {
        const float *e = j->stats + b * C, *gate = e + k->B * C, *dact = gate + k->B * C;
        const float *x = j->x + b * n;
        const float *dy = j->dy + b * n;
        /* recomputed, not kept from the forward: keeping u and q would be a little faster
         * but would grow the memory saved for backward (benchmarks/memory) */
        double q = gate_pre(k, e, j->alpha, j->gamma, j->beta, s, u, NULL);
        dot_row(k, dy, x, w, j->tile,                   /* dL/dgate */
                prefetch ? j->dx + b * n : NULL);
        gate_backward(k, e, dact, j->alpha, j->gamma, q, s, u, w, de, j->part);
        if (!j->dx) continue;
        for (int64_t c = 0; c < C; c++) {           /* dL/dE -> the factor of t in dx */
            double f = de[c];
            if (k->pmode == P_TWO) f /= e[c];
            else if (k->pmode == P_GAP) f /= (double)HW;
            else if (k->pmode == P_GIVEN || k->pmode == P_THREE || k->pmode == P_FOUR)
                f *= pow(e[c], 1.0 - k->p);
            coef[c] = (float)f;
        }
        float *dx = j->dx + b * n;
        dx_row(k, dy, x, j->h ? j->h + b * n : NULL, gate, coef, dx, j->tile);
        if (k->pmode == P_INF) {
            for (int64_t c = 0; c < C; c++) {
                int64_t at = k->channels_last ? j->idx[b * C + c] * C + c
                                              : c * HW + j->idx[b * C + c];
                dx[at] += (float)(sign_of(x[at]) * de[c]);
            }
        }
    }
}

/* ---------------------------------------------------------------- threads */
static void run_share(const Job *j, int backward) {
    if (backward) backward_rows(j);
    else forward_rows(j);
}

/* Cuts the rows into shares of k->rows rows (at most 256 shares) and runs them on up to
 * k->threads OpenMP threads; for the backward, sums the shares' parameter gradients into
 * pgrad (3, C) in share order. Returns 0, or -1 if out of memory. */
static int run_rows(const Job *job, int backward, float *pgrad) {
    const int64_t B = job->k->B, C = job->k->C;
    const int64_t per = 8 * C + (C + 2 * tile_of(C) + 1) / 2;  /* doubles per share */
    int64_t rows = job->k->rows < 1 ? 1 : job->k->rows;
    int64_t n = (B + rows - 1) / rows;
    if (n > 256) { rows = (B + 255) / 256; n = (B + rows - 1) / rows; }
    int threads = job->k->threads;
    if (threads > n) threads = (int)n;
    if (threads < 1) threads = 1;
    double *scratch = calloc((size_t)(n * per), sizeof(double));
    Job *jobs = malloc((size_t)n * sizeof(Job));
    if (!scratch || !jobs) { free(scratch); free(jobs); return -1; }
    for (int64_t i = 0; i < n; i++) {
        jobs[i] = *job;
        jobs[i].b0 = i * rows;
        jobs[i].b1 = (i + 1) * rows < B ? (i + 1) * rows : B;
        jobs[i].w = scratch + i * per;
        jobs[i].part = scratch + i * per + 5 * C;
        jobs[i].coef = (float *)(scratch + i * per + 8 * C);
        jobs[i].tile = jobs[i].coef + C;
    }
    #pragma omp parallel for num_threads(threads) schedule(static) if(threads > 1)
    for (int64_t i = 0; i < n; i++) run_share(&jobs[i], backward);
    if (backward) {
        for (int64_t c = 0; c < 3 * C; c++) {
            double acc = 0.0;
            for (int64_t i = 0; i < n; i++) acc += jobs[i].part[c];
            pgrad[c] = (float)acc;
        }
    }
    free(jobs);
    free(scratch);
    return 0;
}

/* ---------------------------------------------------------------- interface */
/* The layout of Cfg and the values of the enums this file was compiled with, as
 * "name=value" words: the loader compares them with its own copy before any call. */
const char *gct_interface(void) {
    static char text[640];
    snprintf(text, sizeof text,
             "sizeof=%zu B=%zu C=%zu HW=%zu channels_last=%zu pmode=%zu after_relu=%zu "
             "norm=%zu act=%zu threads=%zu rows=%zu p=%zu eps=%zu "
             "P_GAP=%d P_INF=%d P_ONE=%d P_TWO=%d P_GIVEN=%d P_THREE=%d P_FOUR=%d "
             "N_L2=%d N_L1=%d N_LAYER=%d N_NONE=%d "
             "A_TANH=%d A_SIGMOID=%d A_SOFTSIGN=%d A_HARDTANH=%d A_ERF=%d openmp=%d",
             sizeof(Cfg), offsetof(Cfg, B), offsetof(Cfg, C), offsetof(Cfg, HW),
             offsetof(Cfg, channels_last), offsetof(Cfg, pmode), offsetof(Cfg, after_relu),
             offsetof(Cfg, norm), offsetof(Cfg, act), offsetof(Cfg, threads),
             offsetof(Cfg, rows), offsetof(Cfg, p), offsetof(Cfg, eps),
             P_GAP, P_INF, P_ONE, P_TWO, P_GIVEN, P_THREE, P_FOUR,
             N_L2, N_L1, N_LAYER, N_NONE,
             A_TANH, A_SIGMOID, A_SOFTSIGN, A_HARDTANH, A_ERF,
#ifdef _OPENMP
             1
#else
             0
#endif
    );
    return text;
}

/* ---------------------------------------------------------------- entry points */
/* Writes stats (3, B, C) (the embedding E, the gate and dgate/dz), idx (B, C) for p = inf,
 * and y = x * gate when y is not NULL. For P_GIVEN, stats[0] already holds E (computed by
 * the caller). Returns 0, or -1 if out of memory. */
int gct_forward(const Cfg *k, const float *x, const float *alpha, const float *gamma,
                const float *beta, float *stats, int64_t *idx, float *y) {
    Job job = {k, x, NULL, NULL, alpha, gamma, beta, y, NULL, stats, idx, NULL, 0, 0, NULL,
               NULL, NULL};
    return run_rows(&job, 0, NULL);
}

/* Writes dx (when not NULL) and the parameter gradients pgrad (3, C): dalpha, dgamma,
 * dbeta. h is sign(x) |x|^(p-1) for P_GIVEN, else NULL. Returns 0, or -1 if out of memory. */
int gct_backward(const Cfg *k, const float *dy, const float *x, const float *h,
                 const float *alpha, const float *gamma, const float *beta,
                 const float *stats, const int64_t *idx, float *dx, float *pgrad) {
    Job job = {k, x, dy, h, alpha, gamma, beta, NULL, dx, (float *)stats, (int64_t *)idx,
               NULL, 0, 0, NULL, NULL, NULL};
    return run_rows(&job, 1, pgrad);
}
