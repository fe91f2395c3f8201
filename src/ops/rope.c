/* ROPE (docs/ops.md B.18): rotary position embedding, modes NORMAL, NEOX, MROPE,
 * IMROPE and VISION, with YaRN, frequency factors and a rotation offset.
 *
 * Rows are (head i1, token i2, batch i3) and are split between threads.
 * Each thread builds the cos/sin cache of a token once, when it reaches the
 * token's first row, with ggml's running f32 theta (theta *= theta_scale,
 * never powf per index), then rotates every head of that token with it. */
#include <math.h>

#include "common.h"
#include "convert.h"
#include "rowvec.h"
#include "scratch.h"

enum {
    ROPE_NORMAL = 0,
    ROPE_NEOX = 2,
    ROPE_MROPE = 8,
    ROPE_VISION = 24,
    ROPE_IMROPE = 40,
};

struct rope_params {
    int n_dims, mode, n_ctx_orig, n_offs;
    float freq_base, freq_scale, ext_factor, attn_factor, beta_fast, beta_slow;
    int sections[4];
};

static struct rope_params rope_params(const struct ferry_tensor *node) {
    struct rope_params rp = {
        .n_dims = ferry_param_i32(node, 1),
        .mode = ferry_param_i32(node, 2),
        .n_ctx_orig = ferry_param_i32(node, 4),
        .n_offs = ferry_param_i32(node, 15),
        .freq_base = ferry_param_f32(node, 5),
        .freq_scale = ferry_param_f32(node, 6),
        .ext_factor = ferry_param_f32(node, 7),
        .attn_factor = ferry_param_f32(node, 8),
        .beta_fast = ferry_param_f32(node, 9),
        .beta_slow = ferry_param_f32(node, 10),
    };
    for (int k = 0; k < 4; k++) rp.sections[k] = ferry_param_i32(node, 11 + k);
    return rp;
}

static bool is_mrope_family(int mode) { return (mode & ROPE_MROPE) != 0; }

/* ---- check ---- */

static int rope_invalid(struct ferry_error *err, const char *why) {
    return ferry_fail(err, FERRY_ERR_INVALID, "ROPE: %s", why);
}

static int check_rope_params(const struct ferry_tensor *node, const struct rope_params *rp,
                             struct ferry_error *err) {
    const int64_t head_dim = node->ne[0];
    switch (rp->mode) {
    case ROPE_NORMAL: case ROPE_NEOX: case ROPE_MROPE: case ROPE_VISION: case ROPE_IMROPE: break;
    default: return ferry_fail(err, FERRY_ERR_INVALID, "ROPE: invalid mode %d", rp->mode);
    }
    if (rp->n_dims < 0 || rp->n_dims % 2 != 0 || rp->n_dims > head_dim)
        return ferry_fail(err, FERRY_ERR_INVALID, "ROPE: n_dims %d is odd or not in [0, head_dim %lld]",
                          rp->n_dims, (long long)head_dim);
    if (rp->n_offs < 0 || rp->n_offs % 2 != 0 || (int64_t)rp->n_offs + rp->n_dims > head_dim)
        return ferry_fail(err, FERRY_ERR_INVALID, "ROPE: n_offs %d is odd, negative or past head_dim",
                          rp->n_offs);
    if (rp->mode == ROPE_VISION && 2 * (int64_t)rp->n_dims != head_dim)
        return rope_invalid(err, "vision mode needs n_dims = head_dim/2");
    if (rp->mode == ROPE_VISION && rp->n_offs != 0) return rope_invalid(err, "vision mode takes no n_offs");
    if (is_mrope_family(rp->mode)) {
        /* (i0/2) % (sum of sections) picks a section: the sum must be > 0 */
        const int *s = rp->sections;
        if (s[0] < 0 || s[1] < 0 || s[2] < 0 || s[3] < 0 || (int64_t)s[0] + s[1] + s[2] == 0)
            return rope_invalid(err, "M-RoPE sections must be >= 0, with one of the first three > 0");
        const int64_t total = (int64_t)s[0] + s[1] + s[2] + s[3];
        if (total > (rp->mode == ROPE_VISION ? head_dim / 2 : head_dim))
            return rope_invalid(err, "M-RoPE sections add up to more than the head has pairs for");
    }
    return FERRY_OK;
}

/* Positions and frequency factors are read densely from the data pointer:
 * the first row must exist and hold n elements. */
static bool first_row_holds(const struct ferry_tensor *t, int64_t n) {
    return n == 0 || (t->ne[0] >= n && !ferry_is_empty(t));
}

static int check_positions(const struct ferry_tensor *node, const struct ferry_tensor *pos,
                           int mode, struct ferry_error *err) {
    static const enum ferry_type i32[] = { FERRY_TYPE_I32 };
    int rc;
    if ((rc = check_type_in(node, "positions", pos->type, i32, 1, err)) ||
        (rc = check_rows_contiguous(node, pos, "positions", err)))
        return rc;
    /* read densely: one per token, or four blocks of them for M-RoPE */
    int64_t need;
    if (__builtin_mul_overflow(node->ne[2], is_mrope_family(mode) ? 4 : 1, &need) ||
        !first_row_holds(pos, need))
        return ferry_fail(err, FERRY_ERR_INVALID, "ROPE: %lld positions, %lld needed",
                          (long long)pos->ne[0], (long long)need);
    return FERRY_OK;
}

static int check_freq_factors(const struct ferry_tensor *node, const struct ferry_tensor *ff,
                              const struct rope_params *rp, struct ferry_error *err) {
    static const enum ferry_type f32[] = { FERRY_TYPE_F32 };
    int rc;
    if ((rc = check_type_in(node, "freq factors", ff->type, f32, 1, err)) ||
        (rc = check_rows_contiguous(node, ff, "freq factors", err)))
        return rc;
    /* one per rotated pair; vision rotates all head_dim/2 pairs */
    int64_t need = rp->mode == ROPE_VISION ? node->ne[0] / 2 : rp->n_dims / 2;
    if (!first_row_holds(ff, need))
        return ferry_fail(err, FERRY_ERR_INVALID, "ROPE: %lld frequency factors, %lld needed",
                          (long long)ff->ne[0], (long long)need);
    return FERRY_OK;
}

static int check_rope(const struct ferry_tensor *node, struct ferry_error *err) {
    static const enum ferry_type types[] = { FERRY_TYPE_F32, FERRY_TYPE_F16 };
    int rc = check_src_count(node, 2, err);
    if (rc) return rc;
    const struct ferry_tensor *x = node->src[0];
    if ((rc = check_type_in(node, "src0", x->type, types, 2, err))) return rc;
    if (node->type != x->type)
        return ferry_fail(err, FERRY_ERR_INVALID, "ROPE: output type %s differs from src0 type %s",
                          ferry_type_name(node->type), ferry_type_name(x->type));
    if ((rc = check_same_shape(node, x, node, err)) ||
        (rc = check_rows_contiguous(node, x, "src0", err)) ||
        (rc = check_rows_contiguous(node, node, "output", err)))
        return rc;
    const struct rope_params rp = rope_params(node);
    if ((rc = check_rope_params(node, &rp, err)) ||
        (rc = check_positions(node, node->src[1], rp.mode, err)))
        return rc;
    if (node->src[2] && (rc = check_freq_factors(node, node->src[2], &rp, err))) return rc;
    return FERRY_OK;
}

/* ---- the cos/sin cache ---- */

/* Per-op constants, the same for every token. */
struct rope_consts {
    struct rope_params rp;
    float theta_scale;
    float corr[2]; /* YaRN correction dims */
    const float *ff; /* frequency factors or NULL */
    int64_t npairs;  /* cache entries: n_dims/2, or head_dim/2 in vision mode */
};

static float yarn_corr_dim(int n_dims, int n_ctx_orig, float n_rot, float base) {
    return (float)n_dims * logf((float)n_ctx_orig / (n_rot * 2.0f * (float)M_PI)) / (2.0f * logf(base));
}

static struct rope_consts rope_consts(const struct ferry_tensor *node) {
    struct rope_consts k = { .rp = rope_params(node) };
    const struct rope_params *rp = &k.rp;
    k.theta_scale = powf(rp->freq_base, -2.0f / (float)rp->n_dims);
    float start = floorf(yarn_corr_dim(rp->n_dims, rp->n_ctx_orig, rp->beta_fast, rp->freq_base));
    float end = ceilf(yarn_corr_dim(rp->n_dims, rp->n_ctx_orig, rp->beta_slow, rp->freq_base));
    float last = (float)(rp->n_dims - 1);
    k.corr[0] = 0.0f > start ? 0.0f : start;
    k.corr[1] = last < end ? last : end;
    k.ff = node->src[2] ? (const float *)node->src[2]->data : NULL;
    k.npairs = rp->mode == ROPE_VISION ? node->ne[0] / 2 : rp->n_dims / 2;
    return k;
}

/* cos/sin of cache entry j (dimension i0 = 2j) for the running theta. */
static void rope_yarn(const struct rope_consts *k, float theta, int64_t j, float *c, float *s) {
    const struct rope_params *rp = &k->rp;
    const float theta_extrap = theta / (k->ff ? k->ff[j] : 1.0f);
    const float theta_interp = rp->freq_scale * theta_extrap;
    float t = theta_interp, mscale = rp->attn_factor;
    if (rp->ext_factor != 0.0f) {
        /* ramp from 1 (extrapolate) below corr0 to 0 (interpolate) above corr1 */
        float span = k->corr[1] - k->corr[0];
        span = 0.001f > span ? 0.001f : span;
        float y = ((float)j - k->corr[0]) / span;
        y = 0.0f > y ? 0.0f : y;
        const float ramp = 1.0f - (1.0f < y ? 1.0f : y);
        const float mix = ramp * rp->ext_factor;
        t = theta_interp * (1.0f - mix) + theta_extrap * mix;
        mscale *= 1.0f + 0.1f * logf(1.0f / rp->freq_scale);
    }
    *c = cosf(t) * mscale;
    *s = sinf(t) * mscale;
}

static void rope_cache_plain(const struct rope_consts *k, int32_t p, float *cs, float *sn) {
    float theta = (float)p;
    for (int64_t j = 0; j < k->npairs; j++) {
        rope_yarn(k, theta, j, &cs[j], &sn[j]);
        theta *= k->theta_scale;
    }
}

/* M-RoPE family: four running thetas (t, h, w, e), one picked per entry by
 * its section; vision mode restarts each section's theta. */
static void rope_cache_multi(const struct rope_consts *k, const int32_t p[4], float *cs, float *sn) {
    const int *sec = k->rp.sections;
    const int mode = k->rp.mode;
    const int64_t sect_dims = (int64_t)sec[0] + sec[1] + sec[2] + sec[3];
    const int64_t sec_w = (int64_t)sec[0] + sec[1], sec_e = sec_w + sec[2];
    float th_t = (float)p[0], th_h = (float)p[1], th_w = (float)p[2], th_e = (float)p[3];
    for (int64_t j = 0; j < k->npairs; j++) {
        const int64_t sector = j % sect_dims;
        if (mode == ROPE_VISION) {
            if (sector == 0) th_t = (float)p[0];
            else if (sector == sec[0]) th_h = (float)p[1];
            else if (sector == sec_w) th_w = (float)p[2];
            else if (sector == sec_e) th_e = (float)p[3];
        }
        float theta = th_t;
        if (mode == ROPE_IMROPE) {
            if (sector % 3 == 1 && sector < 3 * (int64_t)sec[1]) theta = th_h;
            else if (sector % 3 == 2 && sector < 3 * (int64_t)sec[2]) theta = th_w;
            else if (sector % 3 == 0 && sector < 3 * (int64_t)sec[0]) theta = th_t;
            else theta = th_e;
        } else {
            if (sector >= sec[0] && sector < sec_w) theta = th_h;
            else if (sector >= sec_w && sector < sec_e) theta = th_w;
            else if (sector >= sec_e) theta = th_e;
        }
        rope_yarn(k, theta, j, &cs[j], &sn[j]);
        th_t *= k->theta_scale;
        th_w *= k->theta_scale;
        th_h *= k->theta_scale;
        th_e *= k->theta_scale;
    }
}

/* ---- rotation ---- */

/* One thread's scratch, head_dim floats for each part: the cache, its
 * interleaved form for NORMAL mode, and a widened row for F16. */
struct rope_scratch {
    float *cs, *sn; /* npairs entries each */
    float *cc, *ss; /* n_dims entries each (NORMAL) */
    float *row;     /* the rotated window of an F16 row */
};

static size_t rope_scratch_floats(const struct ferry_tensor *node) {
    if ((uint64_t)node->ne[0] > SIZE_MAX / 8) return SIZE_MAX / 2; /* scratch_size saturates */
    return 5 * (size_t)node->ne[0];
}

static size_t rope_work_size(const struct ferry_tensor *node, int nth) {
    return scratch_size(nth, rope_scratch_floats(node), sizeof(float));
}

static void rope_build_cache(const struct rope_consts *k, const struct ferry_tensor *node,
                             int64_t i2, const struct rope_scratch *sc) {
    const int32_t *pos = node->src[1]->data;
    if (is_mrope_family(k->rp.mode)) {
        const int64_t n = node->ne[2];
        const int32_t p[4] = { pos[i2], pos[i2 + n], pos[i2 + 2 * n], pos[i2 + 3 * n] };
        rope_cache_multi(k, p, sc->cs, sc->sn);
    } else {
        rope_cache_plain(k, pos[i2], sc->cs, sc->sn);
    }
    if (k->rp.mode == ROPE_NORMAL) {
        for (int64_t j = 0; j < k->npairs; j++) {
            sc->cc[2 * j] = sc->cc[2 * j + 1] = sc->cs[j];
            sc->ss[2 * j] = -sc->sn[j];
            sc->ss[2 * j + 1] = sc->sn[j];
        }
    }
}

/* Rotates the window that the mode rotates, in f32; y may be x. */
static void rope_rotate(const struct rope_consts *k, const struct rope_scratch *sc, float *y,
                        const float *x) {
    const int64_t half = k->rp.n_dims / 2;
    switch (k->rp.mode) {
    case ROPE_NORMAL: rowvec_rope_adjacent(y, x, sc->cc, sc->ss, k->rp.n_dims); break;
    case ROPE_VISION: rowvec_rope_neox(y, x, sc->cs, sc->sn, k->npairs, k->rp.n_dims); break;
    default: rowvec_rope_neox(y, x, sc->cs, sc->sn, half, half); break;
    }
}

static void rope_row(const struct rope_consts *k, const struct rope_scratch *sc, enum ferry_type type,
                     char *dst, const char *src, int64_t head_dim) {
    const size_t es = ferry_type_size(type);
    /* the rotated window [o, o + width); the rest is copied unchanged */
    const int64_t o = k->rp.n_offs;
    const int64_t width = k->rp.mode == ROPE_VISION ? head_dim : k->rp.n_dims;
    if (type == FERRY_TYPE_F32) {
        rope_rotate(k, sc, (float *)dst + o, (const float *)src + o);
    } else {
        ferry_cvt_to_f32(type, src + o * es, sc->row, width);
        rope_rotate(k, sc, sc->row, sc->row);
        ferry_cvt_from_f32(type, sc->row, dst + o * es, width);
    }
    if (dst != src) {
        memmove(dst, src, (size_t)o * es);
        memmove(dst + (o + width) * es, src + (o + width) * es, (size_t)(head_dim - o - width) * es);
    }
}

static void rope_compute(const struct ferry_compute_params *p, struct ferry_tensor *node) {
    const struct ferry_tensor *x = node->src[0];
    const int64_t head_dim = x->ne[0];
    float *buf = scratch_slice(p, rope_scratch_floats(node), sizeof(float));
    if (!buf) {
        ferry_op_fail(p, FERRY_ERR_NOMEM, "ROPE: scratch too small");
        return;
    }
    const struct rope_consts k = rope_consts(node);
    const struct rope_scratch sc = {
        .cs = buf, .sn = buf + head_dim, .cc = buf + 2 * head_dim, .ss = buf + 3 * head_dim,
        .row = buf + 4 * head_dim,
    };
    int64_t r0, r1, cached = -1;
    split_range(ferry_nrows(x), p->ith, p->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        row_coords(x, r, &i1, &i2, &i3);
        if (i2 != cached) { /* the cache depends on the token only */
            rope_build_cache(&k, node, i2, &sc);
            cached = i2;
        }
        rope_row(&k, &sc, x->type, tensor_row(node, i1, i2, i3), tensor_row(x, i1, i2, i3), head_dim);
    }
}

const struct ferry_kernel ferry_kernel_rope = { check_rope, rope_work_size, rope_compute };
