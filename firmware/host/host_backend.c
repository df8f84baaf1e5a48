/* The deterministic HCM1 backend (host_backend.h, README.md). */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include "host_backend.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rc_tensor.h"

#define HCM1_MAGIC "HCM1\n"
#define MAX_CONTEXT 256
#define MAX_CHANNELS 4096

/* One parsed model. The numbers are kept as long: the parser checks each one's range. */
typedef struct {
    int loaded;
    char name[RC_MAX_NAME];
    char input[RC_MAX_NAME];
    char output[RC_MAX_NAME];
    char cache_input[RC_MAX_NAME]; /* "" = no cache */
    char cache_output[RC_MAX_NAME];
    long cin, cout, bits, obits, ein, eout, mul, add, shift, context, window;
    long oframes, orank;                /* the output: its last `oframes` frames (0: all), its rank (README.md) */
    long cycles, first_cycles, counter; /* timings and state for the core's tests (README.md) */
} hcm1_model_t;

/* A bound module: its model's parameters, its layouts and its cache (the last `context` input frames, NWC). */
typedef struct {
    int bound;
    hcm1_model_t model;
    rc_layout_t input_layout;
    rc_layout_t output_layout;
    uint16_t window;
    uint16_t frames; /* of one window's output: the last `frames` of the window's */
    int32_t *cache; /* context x cin */
    int32_t *next;  /* the cache being built by a run */
    long runs;      /* since the last reset or bind (counter=1 adds it to every output) */
    int ran;        /* since bind: the first run costs first_cycles more */
} host_module_t;

struct host_backend {
    rc_rounding_t rounding;
    hcm1_model_t models[RC_MAX_SLOTS];
    host_module_t modules[RC_MAX_MODULES];
};

static rc_error_t fail(rc_error_t code, char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return code;
}

host_backend_t *host_backend_create(rc_rounding_t rounding)
{
    host_backend_t *b = (host_backend_t *)calloc(1, sizeof *b);
    if (b != NULL) {
        b->rounding = rounding;
    }
    return b;
}

void host_backend_destroy(host_backend_t *backend)
{
    if (backend != NULL) {
        host_modules_clear(backend);
        free(backend);
    }
}

/* --------------------------------------------------------------------------------------- parsing */

typedef enum { KEY_NAME, KEY_CACHE_NAME, KEY_NUMBER, KEY_BITS } key_kind_t;

typedef struct {
    const char *key;
    key_kind_t kind;
    long lo, hi;      /* KEY_NUMBER, KEY_BITS: the allowed range (KEY_BITS: 8 or 16 only) */
    int required;
    size_t offset;    /* of the char[] or long field in hcm1_model_t */
} key_spec_t;

#define FIELD(f) offsetof(hcm1_model_t, f)
static const key_spec_t KEYS[] = {
    {"input", KEY_NAME, 0, 0, 1, FIELD(input)},
    {"output", KEY_NAME, 0, 0, 1, FIELD(output)},
    {"cache_input", KEY_CACHE_NAME, 0, 0, 1, FIELD(cache_input)},
    {"cache_output", KEY_CACHE_NAME, 0, 0, 1, FIELD(cache_output)},
    {"cin", KEY_NUMBER, 1, MAX_CHANNELS, 1, FIELD(cin)},
    {"cout", KEY_NUMBER, 1, MAX_CHANNELS, 1, FIELD(cout)},
    {"bits", KEY_BITS, 8, 16, 1, FIELD(bits)},
    {"obits", KEY_BITS, 8, 16, 0, FIELD(obits)}, /* default: bits */
    {"ein", KEY_NUMBER, -128, 127, 1, FIELD(ein)},
    {"eout", KEY_NUMBER, -128, 127, 1, FIELD(eout)},
    {"mul", KEY_NUMBER, -2147483647L - 1, 2147483647L, 1, FIELD(mul)},
    {"add", KEY_NUMBER, -2147483647L - 1, 2147483647L, 1, FIELD(add)},
    {"shift", KEY_NUMBER, -16, 30, 1, FIELD(shift)},
    {"context", KEY_NUMBER, 0, MAX_CONTEXT, 1, FIELD(context)},
    {"window", KEY_NUMBER, 0, 65535, 0, FIELD(window)},
    {"oframes", KEY_NUMBER, 0, 65535, 0, FIELD(oframes)},
    {"orank", KEY_NUMBER, 1, 4, 0, FIELD(orank)}, /* default 3 */
    {"cycles", KEY_NUMBER, 0, 2147483647L, 0, FIELD(cycles)},
    {"first_cycles", KEY_NUMBER, 0, 2147483647L, 0, FIELD(first_cycles)},
    {"counter", KEY_NUMBER, 0, 1, 0, FIELD(counter)},
};
#define KEY_COUNT (sizeof KEYS / sizeof KEYS[0])

static size_t key_index(const char *key)
{
    size_t k = 0;
    while (k < KEY_COUNT && strcmp(KEYS[k].key, key) != 0) {
        k++;
    }
    return k;
}

static int is_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* A decimal integer filling the whole token, within [lo, hi]. */
static int parse_number(const uint8_t *p, size_t n, long lo, long hi, long *out)
{
    size_t i = (n > 0 && (p[0] == '-' || p[0] == '+')) ? 1 : 0;
    long long v = 0;
    if (i == n || n - i > 11) {
        return 0;
    }
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }
        v = v * 10 + (p[i] - '0');
    }
    v = p[0] == '-' ? -v : v;
    if (v < lo || v > hi) {
        return 0;
    }
    *out = (long)v;
    return 1;
}

/* key=value into the model; seen[] catches repeated keys. */
static rc_error_t parse_token(hcm1_model_t *m, const uint8_t *tok, size_t n, int seen[], char *err, size_t errlen)
{
    const uint8_t *eq = (const uint8_t *)memchr(tok, '=', n);
    size_t klen = eq == NULL ? n : (size_t)(eq - tok), vlen = eq == NULL ? 0 : n - klen - 1, k;
    const uint8_t *value = tok + klen + 1;
    for (k = 0; k < KEY_COUNT; k++) {
        if (strlen(KEYS[k].key) == klen && memcmp(KEYS[k].key, tok, klen) == 0) {
            break;
        }
    }
    if (eq == NULL || k == KEY_COUNT) {
        return fail(RC_ERR_MODEL_LOAD_FAILED, err, errlen, "'%.*s' is not a key=value of HCM1", (int)n, tok);
    }
    if (seen[k]++) {
        return fail(RC_ERR_MODEL_LOAD_FAILED, err, errlen, "key '%s' given twice", KEYS[k].key);
    }
    if (KEYS[k].kind == KEY_NUMBER || KEYS[k].kind == KEY_BITS) {
        long *field = (long *)(void *)((char *)m + KEYS[k].offset);
        if (!parse_number(value, vlen, KEYS[k].lo, KEYS[k].hi, field) ||
            (KEYS[k].kind == KEY_BITS && *field != 8 && *field != 16)) {
            return fail(RC_ERR_MODEL_LOAD_FAILED, err, errlen, "%s=%.*s is not an integer in %ld..%ld", KEYS[k].key,
                        (int)vlen, value, KEYS[k].lo, KEYS[k].hi);
        }
        return RC_OK;
    }
    if (vlen == 0 || vlen >= RC_MAX_NAME || (KEYS[k].kind == KEY_NAME && vlen == 1 && value[0] == '-')) {
        return fail(RC_ERR_MODEL_LOAD_FAILED, err, errlen, "%s needs a tensor name of 1..%d bytes", KEYS[k].key,
                    RC_MAX_NAME - 1);
    }
    if (!(vlen == 1 && value[0] == '-')) { /* "-": no cache */
        memcpy((char *)m + KEYS[k].offset, value, vlen);
    }
    return RC_OK;
}

/* The rules a parsed model must keep beyond each key's own range. */
static rc_error_t check_model(const hcm1_model_t *m, const int seen[], char *err, size_t errlen)
{
    size_t k;
    int has_cache = m->cache_input[0] != '\0';
    for (k = 0; k < KEY_COUNT; k++) {
        if (KEYS[k].required && !seen[k]) {
            return fail(RC_ERR_MODEL_LOAD_FAILED, err, errlen, "missing key '%s'", KEYS[k].key);
        }
    }
    if (has_cache != (m->cache_output[0] != '\0')) {
        return fail(RC_ERR_MODEL_LOAD_FAILED, err, errlen, "give both cache tensors or neither");
    }
    if (has_cache != (m->context > 0)) {
        return fail(RC_ERR_MODEL_LOAD_FAILED, err, errlen, "context=%ld needs %s", m->context,
                    has_cache ? "context >= 1 with a cache" : "a cache (context frames are 0 without one)");
    }
    if (strcmp(m->input, m->cache_input) == 0 || strcmp(m->output, m->cache_output) == 0) {
        return fail(RC_ERR_MODEL_LOAD_FAILED, err, errlen, "a cache tensor has the name of a data tensor");
    }
    return RC_OK;
}

static rc_error_t parse_model(hcm1_model_t *m, const uint8_t *data, size_t size, char *err, size_t errlen)
{
    int seen[KEY_COUNT] = {0};
    size_t i = sizeof HCM1_MAGIC - 1;
    rc_error_t code;
    memset(m, 0, sizeof *m);
    if (size < i || memcmp(data, HCM1_MAGIC, i) != 0) {
        return fail(RC_ERR_MODEL_LOAD_FAILED, err, errlen, "not an HCM1 model (it must start with \"HCM1\\n\")");
    }
    while (i < size) {
        size_t start;
        if (is_space(data[i])) {
            i++;
            continue;
        }
        start = i;
        while (i < size && !is_space(data[i])) {
            i++;
        }
        code = parse_token(m, data + start, i - start, seen, err, errlen);
        if (code != RC_OK) {
            return code;
        }
    }
    if (!seen[key_index("obits")]) {
        m->obits = m->bits;
    }
    if (!seen[key_index("orank")]) {
        m->orank = 3;
    }
    return check_model(m, seen, err, errlen);
}

rc_error_t host_model_load(host_backend_t *b, uint8_t slot, const uint8_t *data, uint32_t size, const char *name,
                           char *err, size_t errlen)
{
    hcm1_model_t model;
    rc_error_t code = parse_model(&model, data, size, err, errlen);
    if (code != RC_OK) {
        return code;
    }
    model.loaded = 1;
    (void)snprintf(model.name, sizeof model.name, "%s", name);
    b->models[slot] = model;
    return RC_OK;
}

void host_model_unload(host_backend_t *b, uint8_t slot)
{
    memset(&b->models[slot], 0, sizeof b->models[slot]);
}

/* ---------------------------------------------------------------------------------------- binding */

/* A configured tensor name must be the model's tensor of that role: `have` ("" for no cache); `other` is the
 * model's second tensor of the role, for the list in the error. */
static rc_error_t check_tensor(const hcm1_model_t *m, const char *role, const char *wanted, const char *have,
                               const char *other, char *err, size_t errlen)
{
    char names[3 * RC_MAX_NAME];
    if (strcmp(wanted, have) == 0) {
        return RC_OK;
    }
    if (wanted[0] == '\0') {
        return fail(RC_ERR_BAD_CONFIG, err, errlen, "model %s keeps a cache: name '%s' and '%s' as cache tensors",
                    m->name, m->cache_input, m->cache_output);
    }
    if (have[0] == '\0' || other[0] == '\0') {
        (void)snprintf(names, sizeof names, "'%s'", have[0] ? have : other);
    } else {
        (void)snprintf(names, sizeof names, "'%s', '%s'", have, other);
    }
    if (strcmp(wanted, other) == 0) { /* a data tensor named as the cache, or the other way round */
        return fail(RC_ERR_BAD_CONFIG, err, errlen, "model %s: %s '%s' has another role here (%ss: %s)", m->name,
                    role, wanted, role, names);
    }
    return fail(RC_ERR_BAD_CONFIG, err, errlen, "model %s has no %s '%s' (%ss: %s)", m->name, role, wanted, role,
                names);
}

static rc_error_t check_tensors(const hcm1_model_t *m, const rc_module_config_t *cfg, char *err, size_t errlen)
{
    rc_error_t code;
    if ((code = check_tensor(m, "input", cfg->input, m->input, m->cache_input, err, errlen)) != RC_OK ||
        (code = check_tensor(m, "output", cfg->output, m->output, m->cache_output, err, errlen)) != RC_OK ||
        (code = check_tensor(m, "input", cfg->cache_input, m->cache_input, m->input, err, errlen)) != RC_OK ||
        (code = check_tensor(m, "output", cfg->cache_output, m->cache_output, m->output, err, errlen)) != RC_OK) {
        return code;
    }
    return RC_OK;
}

/* The output tensor of one window (README.md, `orank`): rank 3 follows the configured layout, [1, F, cout] or
 * [1, cout, F]; rank 1 is [F x cout], 2 [1, F x cout], 4 [1, 1, F, cout], each frame-major in memory. */
static void output_shape(const host_module_t *mod, rc_shape_t *shape)
{
    uint32_t f = mod->frames, c = (uint32_t)mod->model.cout;
    memset(shape, 0, sizeof *shape);
    shape->rank = (uint8_t)mod->model.orank;
    switch (mod->model.orank) {
    case 1: shape->dims[0] = f * c; break;
    case 2: shape->dims[0] = 1; shape->dims[1] = f * c; break;
    case 3:
        shape->dims[0] = 1;
        shape->dims[1] = mod->output_layout == RC_LAYOUT_NCW ? c : f;
        shape->dims[2] = mod->output_layout == RC_LAYOUT_NCW ? f : c;
        break;
    default: shape->dims[0] = 1; shape->dims[1] = 1; shape->dims[2] = f; shape->dims[3] = c; break;
    }
}

/* Where output value (frame t of the output's F, channel c) goes in the output tensor's memory. */
static size_t output_at(const host_module_t *mod, size_t t, size_t c)
{
    return mod->model.orank == 3 && mod->output_layout == RC_LAYOUT_NCW ? c * mod->frames + t
                                                                         : t * (size_t)mod->model.cout + c;
}

rc_error_t host_module_bind(host_backend_t *b, uint8_t module, const rc_module_config_t *cfg, uint16_t window,
                            rc_module_info_t *info, char *err, size_t errlen)
{
    host_module_t *mod = &b->modules[module];
    const hcm1_model_t *m = &b->models[cfg->slot];
    size_t cache_values;
    rc_error_t code;
    if (!m->loaded) {
        return fail(RC_ERR_BAD_CONFIG, err, errlen, "slot %u holds no model", cfg->slot);
    }
    if ((code = check_tensors(m, cfg, err, errlen)) != RC_OK) {
        return code;
    }
    if (m->window != 0 && m->window != window) {
        return fail(RC_ERR_BAD_CONFIG, err, errlen, "input '%s' takes %ld frames, not %u", m->input, m->window,
                    window);
    }
    if (m->oframes > window) {
        return fail(RC_ERR_BAD_CONFIG, err, errlen, "output '%s' holds the last %ld frames of a window, not %u",
                    m->output, m->oframes, window);
    }
    cache_values = (size_t)(m->context * m->cin);
    free(mod->cache);
    free(mod->next);
    memset(mod, 0, sizeof *mod);
    mod->cache = (int32_t *)calloc(cache_values + 1, sizeof *mod->cache);
    mod->next = (int32_t *)calloc(cache_values + 1, sizeof *mod->next);
    if (mod->cache == NULL || mod->next == NULL) {
        return fail(RC_ERR_OUT_OF_MEMORY, err, errlen, "no memory for the cache of %lu values",
                    (unsigned long)cache_values);
    }
    mod->bound = 1;
    mod->model = *m;
    mod->input_layout = cfg->input_layout;
    mod->output_layout = cfg->output_layout;
    mod->window = window;
    mod->frames = (uint16_t)(m->oframes ? m->oframes : window);
    info->input_exponent = (int8_t)m->ein;
    info->output_exponent = (int8_t)m->eout;
    info->input_bits = (uint8_t)m->bits;
    info->output_bits = (uint8_t)m->obits;
    info->input_channels = (uint16_t)m->cin;
    output_shape(mod, &info->output_shape);
    return RC_OK;
}

void host_module_reset(host_backend_t *b, uint8_t module)
{
    host_module_t *mod = &b->modules[module];
    if (mod->bound) {
        memset(mod->cache, 0, (size_t)(mod->model.context * mod->model.cin) * sizeof *mod->cache);
        mod->runs = 0;
    }
}

void host_modules_clear(host_backend_t *b)
{
    unsigned k;
    for (k = 0; k < RC_MAX_MODULES; k++) {
        free(b->modules[k].cache);
        free(b->modules[k].next);
        memset(&b->modules[k], 0, sizeof b->modules[k]);
    }
}

/* ---------------------------------------------------------------------------------------- running */

/* Input frame s of the stream as seen from this window: s < 0 reaches back into the cache. */
static int32_t history(const host_module_t *mod, const uint8_t *x, long s, long c)
{
    const hcm1_model_t *m = &mod->model;
    if (s >= 0) {
        return rc_value_get(x, rc_value_at(mod->input_layout, (size_t)s, (size_t)c, mod->window, (size_t)m->cin),
                            (unsigned)m->bits);
    }
    return mod->cache[(m->context + s) * m->cin + c];
}

static uint64_t elapsed_us(const struct timespec *start)
{
    struct timespec now;
    (void)clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)((int64_t)(now.tv_sec - start->tv_sec) * 1000000 + (now.tv_nsec - start->tv_nsec) / 1000);
}

rc_error_t host_module_run(host_backend_t *b, uint8_t module, const void *input, void *output, rc_timing_t *timing,
                           char *err, size_t errlen)
{
    host_module_t *mod = &b->modules[module];
    const hcm1_model_t *m = &mod->model;
    const uint8_t *x = (const uint8_t *)input;
    long w = mod->window, t, c, d;
    struct timespec start;
    int32_t *swap;
    if (!mod->bound) {
        return fail(RC_ERR_INTERNAL, err, errlen, "module %u is not bound", module);
    }
    (void)clock_gettime(CLOCK_MONOTONIC, &start);
    for (t = w - mod->frames; t < w; t++) { /* the output holds the window's last `frames` frames */
        for (c = 0; c < m->cout; c++) {
            long ci = c % m->cin;
            int64_t acc = (int64_t)m->mul * history(mod, x, t, ci) + m->add + (m->counter ? mod->runs : 0);
            for (d = 1; d <= m->context; d++) {
                acc += history(mod, x, t - d, ci);
            }
            rc_value_set((uint8_t *)output, output_at(mod, (size_t)(t - (w - mod->frames)), (size_t)c),
                         (unsigned)m->obits, rc_requantize(acc, (int)m->shift, b->rounding, (unsigned)m->obits));
        }
    }
    /* the cache carries the stream on: the last `context` input frames, this window's included */
    for (t = 0; t < m->context; t++) {
        for (c = 0; c < m->cin; c++) {
            mod->next[t * m->cin + c] = history(mod, x, w - m->context + t, c);
        }
    }
    swap = mod->cache;
    mod->cache = mod->next;
    mod->next = swap;
    timing->cycles = (uint64_t)(m->cycles ? m->cycles : w * m->cout * (m->context + 1));
    timing->cycles += mod->ran ? 0u : (uint64_t)m->first_cycles; /* like ESP-DL's allocations at a first run */
    timing->microseconds = elapsed_us(&start);
    mod->ran = 1;
    mod->runs++;
    return RC_OK;
}

/* ----------------------------------------------------------------------------------------- probes */

typedef enum { T_INPUT, T_CACHE_INPUT, T_OUTPUT, T_CACHE_OUTPUT, T_NONE } tensor_role_t;

static tensor_role_t role_of(const hcm1_model_t *m, const char *name)
{
    if (strcmp(name, m->input) == 0) {
        return T_INPUT;
    }
    if (strcmp(name, m->output) == 0) {
        return T_OUTPUT;
    }
    if (m->cache_input[0] != '\0' && strcmp(name, m->cache_input) == 0) {
        return T_CACHE_INPUT;
    }
    if (m->cache_output[0] != '\0' && strcmp(name, m->cache_output) == 0) {
        return T_CACHE_OUTPUT;
    }
    return T_NONE;
}

/* The shape of a cache tensor: [1, context, cin] (NWC). */
static void cache_shape(const hcm1_model_t *m, rc_shape_t *shape)
{
    memset(shape, 0, sizeof *shape);
    shape->rank = 3;
    shape->dims[0] = 1;
    shape->dims[1] = (uint32_t)m->context;
    shape->dims[2] = (uint32_t)m->cin;
}

rc_error_t host_probe_find(host_backend_t *b, uint8_t module, const char *name, rc_probe_tensor_t *tensor, char *err,
                           size_t errlen)
{
    const host_module_t *mod = &b->modules[module];
    const hcm1_model_t *m = &mod->model;
    if (!mod->bound) {
        return fail(RC_ERR_INTERNAL, err, errlen, "module %u is not bound", module);
    }
    switch (role_of(m, name)) {
    case T_INPUT: /* the window as the run reads it, in the configured input layout */
        memset(&tensor->shape, 0, sizeof tensor->shape);
        tensor->shape.rank = 3;
        tensor->shape.dims[0] = 1;
        tensor->shape.dims[1] = mod->input_layout == RC_LAYOUT_NCW ? (uint32_t)m->cin : mod->window;
        tensor->shape.dims[2] = mod->input_layout == RC_LAYOUT_NCW ? mod->window : (uint32_t)m->cin;
        tensor->bits = (uint8_t)m->bits;
        tensor->exponent = (int8_t)m->ein;
        tensor->input = 1;
        return RC_OK;
    case T_CACHE_INPUT:
    case T_CACHE_OUTPUT:
        cache_shape(m, &tensor->shape);
        tensor->bits = (uint8_t)m->bits;
        tensor->exponent = (int8_t)m->ein;
        tensor->input = role_of(m, name) == T_CACHE_INPUT;
        return RC_OK;
    case T_OUTPUT:
        output_shape(mod, &tensor->shape);
        tensor->bits = (uint8_t)m->obits;
        tensor->exponent = (int8_t)m->eout;
        tensor->input = 0;
        return RC_OK;
    default:
        break;
    }
    if (m->cache_input[0] != '\0') {
        return fail(RC_ERR_BAD_CONFIG, err, errlen, "no tensor '%s' in model %s; it has '%s', '%s', '%s', '%s'", name,
                    m->name, m->input, m->cache_input, m->output, m->cache_output);
    }
    return fail(RC_ERR_BAD_CONFIG, err, errlen, "no tensor '%s' in model %s; it has '%s', '%s'", name, m->name,
                m->input, m->output);
}

/* The cache (context x cin values, NWC) as `bits`-wide values into out. */
static void copy_cache(const host_module_t *mod, uint8_t *out)
{
    const hcm1_model_t *m = &mod->model;
    size_t i, n = (size_t)(m->context * m->cin);
    for (i = 0; i < n; i++) {
        rc_value_set(out, i, (unsigned)m->bits, mod->cache[i]);
    }
}

rc_error_t host_module_run_probed(host_backend_t *b, uint8_t module, const void *input, void *output,
                                  rc_timing_t *timing, rc_probe_tensor_t *tensors, unsigned count, char *err,
                                  size_t errlen)
{
    const host_module_t *mod = &b->modules[module];
    const hcm1_model_t *m = &mod->model;
    size_t out_values = (size_t)mod->frames * (size_t)m->cout;
    unsigned i;
    rc_error_t code;
    for (i = 0; i < count && mod->bound; i++) { /* graph inputs: what the run reads */
        tensor_role_t role = role_of(m, tensors[i].name);
        if (role == T_INPUT) {
            memcpy(tensors[i].data, input, (size_t)mod->window * (size_t)m->cin * (size_t)(m->bits / 8));
        } else if (role == T_CACHE_INPUT) {
            copy_cache(mod, (uint8_t *)tensors[i].data);
        }
    }
    code = host_module_run(b, module, input, output, timing, err, errlen);
    for (i = 0; i < count && code == RC_OK; i++) { /* outputs: what the run wrote */
        tensor_role_t role = role_of(m, tensors[i].name);
        if (role == T_OUTPUT) {
            memcpy(tensors[i].data, output, out_values * (size_t)(m->obits / 8));
        } else if (role == T_CACHE_OUTPUT) {
            copy_cache(mod, (uint8_t *)tensors[i].data);
        }
    }
    return code;
}
