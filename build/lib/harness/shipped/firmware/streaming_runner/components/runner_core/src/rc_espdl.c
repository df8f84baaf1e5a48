/* The memory estimate of an .espdl model (rc_espdl.h). The FlatBuffer schema is esp-dl's
 * fbs_loader/espdl.fbs; every offset read from the file is checked against its bounds before it is used. */
#include "rc_espdl.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "rc_codec.h" /* rc_bytes_t */

#define SATURATE (UINT64_C(1) << 62) /* sizes are clamped here: sums of a few of them cannot overflow */

/* espdl.fbs field slots (0 = the first field of the table; a union takes two, its type and its value) */
enum { MODEL_GRAPH = 7 };
enum { GRAPH_NODE = 0, GRAPH_INPUT = 4, GRAPH_OUTPUT = 5, GRAPH_VALUE_INFO = 6 };
enum { NODE_OUTPUT = 1, NODE_OP_TYPE = 3 };
enum { VALUE_INFO_NAME = 0, VALUE_INFO_TYPE = 1 };
enum { TYPE_INFO_VALUE_TYPE = 0, TYPE_INFO_VALUE = 1, TYPE_TENSOR = 1 /* TypeInfoValue.tensor_type */ };
enum { TENSOR_TYPE_ELEM = 0, TENSOR_TYPE_SHAPE = 1 };
enum { SHAPE_DIM = 0, DIMENSION_VALUE = 0, DIM_TYPE = 0, DIM_VALUE = 1, DIM_TYPE_VALUE = 1 };

/* ------------------------------------------------------------------------------------- FlatBuffer */

/* The FlatBuffer and whether a read went out of bounds (every later read then returns "absent"). */
typedef struct {
    const uint8_t *p;
    size_t n;
    const char *broken; /* the first structural error, or NULL */
} fb_t;

/* A position in the buffer; 0 means absent (the root offset occupies position 0, no table can be there). */
typedef size_t fb_pos_t;

static int fb_fits(const fb_t *b, size_t at, size_t len)
{
    return at <= b->n && len <= b->n - at;
}

static fb_pos_t fb_fail(fb_t *b, const char *why)
{
    if (b->broken == NULL) {
        b->broken = why;
    }
    return 0;
}

static uint32_t fb_u32(const fb_t *b, size_t at)
{
    return (uint32_t)b->p[at] | ((uint32_t)b->p[at + 1] << 8) | ((uint32_t)b->p[at + 2] << 16) |
           ((uint32_t)b->p[at + 3] << 24);
}

static unsigned fb_u16(const fb_t *b, size_t at)
{
    return (unsigned)b->p[at] | ((unsigned)b->p[at + 1] << 8);
}

/* Position of field `slot` of the table at t (width bytes checked), or 0 when the table does not store it. */
static fb_pos_t fb_field(fb_t *b, fb_pos_t t, unsigned slot, size_t width)
{
    int64_t vt;
    unsigned vsize, off;
    if (t == 0 || b->broken != NULL) {
        return 0;
    }
    if (!fb_fits(b, t, 4)) {
        return fb_fail(b, "a table lies outside the buffer");
    }
    vt = (int64_t)t - (int32_t)fb_u32(b, t);
    if (vt < 0 || !fb_fits(b, (size_t)vt, 4)) {
        return fb_fail(b, "a vtable lies outside the buffer");
    }
    vsize = fb_u16(b, (size_t)vt);
    if (vsize < 4 || !fb_fits(b, (size_t)vt, vsize)) {
        return fb_fail(b, "a vtable lies outside the buffer");
    }
    if (4u + 2u * slot + 2u > vsize) {
        return 0; /* an older schema's table: the field is absent */
    }
    off = fb_u16(b, (size_t)vt + 4u + 2u * slot);
    if (off == 0) {
        return 0;
    }
    if (!fb_fits(b, t + off, width)) {
        return fb_fail(b, "a field lies outside the buffer");
    }
    return t + off;
}

/* The table, vector or string an offset at position f points to; 0 when f is 0. */
static fb_pos_t fb_follow(fb_t *b, fb_pos_t f)
{
    uint64_t target;
    if (f == 0 || b->broken != NULL) {
        return 0;
    }
    target = (uint64_t)f + fb_u32(b, f);
    if (target >= b->n || target == 0) {
        return fb_fail(b, "an offset points outside the buffer");
    }
    return (fb_pos_t)target;
}

static fb_pos_t fb_table(fb_t *b, fb_pos_t t, unsigned slot)
{
    return fb_follow(b, fb_field(b, t, slot, 4));
}

/* A vector of `elem`-byte elements: its first element's position and its length (0 and 0 when absent). */
static fb_pos_t fb_vector(fb_t *b, fb_pos_t t, unsigned slot, size_t elem, uint32_t *count)
{
    fb_pos_t v = fb_table(b, t, slot);
    *count = 0;
    if (v == 0) {
        return 0;
    }
    if (!fb_fits(b, v, 4) || (uint64_t)fb_u32(b, v) * elem > (uint64_t)(b->n - v - 4)) {
        return fb_fail(b, "a vector runs past the end of the buffer");
    }
    *count = fb_u32(b, v);
    return v + 4;
}

/* Element k of a vector of tables or strings (offsets). */
static fb_pos_t fb_element(fb_t *b, fb_pos_t first, uint32_t k)
{
    return fb_follow(b, first + 4u * (size_t)k);
}

/* A string at s (its length prefix checked): its bytes, or len 0 when absent. */
static rc_bytes_t fb_string_at(fb_t *b, fb_pos_t s)
{
    rc_bytes_t v;
    v.ptr = NULL;
    v.len = 0;
    if (s == 0) {
        return v;
    }
    if (!fb_fits(b, s, 4) || !fb_fits(b, s + 4, fb_u32(b, s))) {
        (void)fb_fail(b, "a string runs past the end of the buffer");
        return v;
    }
    v.ptr = b->p + s + 4;
    v.len = fb_u32(b, s);
    return v;
}

static rc_bytes_t fb_string(fb_t *b, fb_pos_t t, unsigned slot)
{
    return fb_string_at(b, fb_table(b, t, slot));
}

static int fb_equal(rc_bytes_t s, const char *text)
{
    return s.len == strlen(text) && (s.len == 0 || memcmp(s.ptr, text, s.len) == 0);
}

/* --------------------------------------------------------------------------------------- tensors */

/* Bytes per element of espdl.fbs's TensorDataType; 0 for UNDEFINED, STRING and unknown codes. */
static unsigned element_bytes(int32_t type)
{
    switch (type) {
    case 2:  /* UINT8 */
    case 3:  /* INT8 */
    case 9:  /* BOOL */
        return 1;
    case 4:  /* UINT16 */
    case 5:  /* INT16 */
    case 10: /* FLOAT16 */
        return 2;
    case 1:  /* FLOAT */
    case 6:  /* INT32 */
    case 12: /* UINT32 */
        return 4;
    case 7:  /* INT64 */
    case 11: /* DOUBLE */
    case 13: /* UINT64 */
        return 8;
    default: return 0;
    }
}

static uint64_t saturating_mul(uint64_t a, uint64_t b)
{
    return a != 0 && b > SATURATE / a ? SATURATE : a * b;
}

static uint64_t saturating_add(uint64_t a, uint64_t b)
{
    return a + b > SATURATE ? SATURATE : a + b;
}

static uint64_t aligned(uint64_t bytes)
{
    return saturating_add(bytes, RC_ESPDL_TENSOR_ALIGN - 1u) / RC_ESPDL_TENSOR_ALIGN * RC_ESPDL_TENSOR_ALIGN;
}

/* The bytes of the ValueInfo at vi, unrounded; 0 and *sized = 0 when the file does not fix them. */
static uint64_t value_info_bytes(fb_t *b, fb_pos_t vi, int *sized)
{
    fb_pos_t type = fb_table(b, vi, VALUE_INFO_TYPE), tensor, shape, first, f;
    uint32_t dims, k;
    uint64_t bytes;
    int32_t elem = 0;
    *sized = 0;
    f = fb_field(b, type, TYPE_INFO_VALUE_TYPE, 1);
    if (f == 0 || b->p[f] != TYPE_TENSOR) {
        return 0;
    }
    tensor = fb_table(b, type, TYPE_INFO_VALUE);
    f = fb_field(b, tensor, TENSOR_TYPE_ELEM, 4);
    if (f != 0) {
        elem = (int32_t)fb_u32(b, f);
    }
    shape = fb_table(b, tensor, TENSOR_TYPE_SHAPE);
    if (element_bytes(elem) == 0 || shape == 0) {
        return 0;
    }
    bytes = element_bytes(elem);
    first = fb_vector(b, shape, SHAPE_DIM, 4, &dims);
    for (k = 0; k < dims && b->broken == NULL; k++) {
        fb_pos_t value = fb_table(b, fb_element(b, first, k), DIMENSION_VALUE);
        fb_pos_t kind = fb_field(b, value, DIM_TYPE, 1), v = fb_field(b, value, DIM_VALUE, 8);
        uint64_t dim = 0;
        if (kind == 0 || b->p[kind] != DIM_TYPE_VALUE) {
            return 0; /* unknown or symbolic */
        }
        if (v != 0) {
            dim = (uint64_t)fb_u32(b, v) | ((uint64_t)fb_u32(b, v + 4) << 32);
        }
        if (dim >= SATURATE) {
            return 0; /* negative: unknown */
        }
        bytes = saturating_mul(bytes, dim);
    }
    *sized = b->broken == NULL;
    return bytes;
}

/* The three lists of activation tensors of a graph. */
typedef struct {
    fb_pos_t first[3];
    uint32_t count[3];
} tensor_lists_t;

/* The unrounded bytes of the tensor named `name` (the first list entry with that name); -1: not found or its
 * size is not fixed by the file. */
static int64_t tensor_bytes_named(fb_t *b, const tensor_lists_t *lists, rc_bytes_t name)
{
    unsigned l;
    uint32_t k;
    for (l = 0; l < 3; l++) {
        for (k = 0; k < lists->count[l] && b->broken == NULL; k++) {
            fb_pos_t vi = fb_element(b, lists->first[l], k);
            rc_bytes_t have = fb_string(b, vi, VALUE_INFO_NAME);
            if (have.len == name.len && (name.len == 0 || memcmp(have.ptr, name.ptr, name.len) == 0)) {
                int sized;
                uint64_t bytes = value_info_bytes(b, vi, &sized);
                return sized ? (int64_t)bytes : -1;
            }
        }
    }
    return -1;
}

/* ------------------------------------------------------------------------------------------ estimate */

static rc_error_t refuse(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return RC_ERR_MODEL_LOAD_FAILED;
}

/* ESP-DL asserts (the chip reboots) on a header it cannot parse, and the runner loads only plain single
 * models: the container's layout is fbs_loader.hpp's FBS_FILE_FORMAT_*, read in create_fbs_model(). */
static rc_error_t check_container(const uint8_t *data, size_t size, rc_espdl_need_t *need, char *err, size_t errlen)
{
    uint32_t mode, body;
    size_t header;
    if (size < 16) {
        return refuse(err, errlen, "%lu bytes are too few for an .espdl file", (unsigned long)size);
    }
    if (memcmp(data, "PDL", 3) == 0) {
        return refuse(err, errlen, "packed models (%.4s) are not supported: upload one .espdl per slot",
                      (const char *)data);
    }
    if (memcmp(data, "EDL2", 4) != 0 && memcmp(data, "EDL1", 4) != 0) {
        return refuse(err, errlen, "not an .espdl file (magic %02x %02x %02x %02x)", data[0], data[1], data[2],
                      data[3]);
    }
    need->version = data[3] == '2' ? 2u : 1u;
    header = need->version == 2 ? 16u : 12u;
    mode = (uint32_t)data[4] | ((uint32_t)data[5] << 8) | ((uint32_t)data[6] << 16) | ((uint32_t)data[7] << 24);
    body = (uint32_t)data[8] | ((uint32_t)data[9] << 8) | ((uint32_t)data[10] << 16) | ((uint32_t)data[11] << 24);
    if (mode != 0) {
        return refuse(err, errlen, "encrypted model (mode %lu): the runner has no key", (unsigned long)mode);
    }
    if (body > size - header) {
        return refuse(err, errlen, "the header announces %lu bytes, the file holds %lu", (unsigned long)body,
                      (unsigned long)size);
    }
    need->flatbuffer_bytes = body;
    return RC_OK;
}

/* StreamingCache, GRU and LSTM allocate at their first run (dl_module_streaming_cache.hpp, _gru.hpp, _lstm.hpp). */
static uint64_t first_run_state(fb_t *b, fb_pos_t node, const tensor_lists_t *lists, uint64_t largest)
{
    rc_bytes_t op = fb_string(b, node, NODE_OP_TYPE);
    uint32_t outputs;
    fb_pos_t first;
    int64_t bytes;
    uint64_t out;
    int cache = fb_equal(op, "StreamingCache");
    if (!cache && !fb_equal(op, "GRU") && !fb_equal(op, "LSTM")) {
        return 0;
    }
    first = fb_vector(b, node, NODE_OUTPUT, 4, &outputs);
    bytes = outputs > 0 ? tensor_bytes_named(b, lists, fb_string_at(b, fb_element(b, first, 0))) : -1;
    out = bytes < 0 ? largest : (uint64_t)bytes;
    return cache ? aligned(out) : aligned(saturating_mul(out, 16u)); /* gates: 3 or 4 x hidden floats */
}

rc_error_t rc_espdl_need(const uint8_t *data, size_t size, rc_espdl_need_t *need, char *err, size_t errlen)
{
    static const unsigned slots[3] = {GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO};
    tensor_lists_t lists;
    fb_t b;
    fb_pos_t root, graph, nodes;
    rc_error_t code;
    unsigned l;
    uint32_t k;
    memset(need, 0, sizeof *need);
    if ((code = check_container(data, size, need, err, errlen)) != RC_OK) {
        return code;
    }
    b.p = data + (need->version == 2 ? 16u : 12u);
    b.n = need->flatbuffer_bytes;
    b.broken = NULL;
    if (b.n < 8) {
        return refuse(err, errlen, "a FlatBuffer of %lu bytes holds no model", (unsigned long)b.n);
    }
    root = fb_u32(&b, 0); /* the root table's offset, at position 0 */
    if (root == 0 || root >= b.n) {
        return refuse(err, errlen, "broken FlatBuffer: the root offset points outside the buffer");
    }
    graph = fb_table(&b, root, MODEL_GRAPH);
    if (graph == 0 && b.broken == NULL) {
        return refuse(err, errlen, "the model has no graph");
    }
    nodes = fb_vector(&b, graph, GRAPH_NODE, 4, &need->nodes);
    /* sized tensors first (the largest stands in for the unsized ones), then the rest */
    for (l = 0; l < 3; l++) {
        lists.first[l] = fb_vector(&b, graph, slots[l], 4, &lists.count[l]);
        for (k = 0; k < lists.count[l] && b.broken == NULL; k++) {
            int sized;
            uint64_t bytes = value_info_bytes(&b, fb_element(&b, lists.first[l], k), &sized);
            need->tensors++;
            if (!sized) {
                need->unsized++;
                continue;
            }
            need->tensor_bytes = saturating_add(need->tensor_bytes, aligned(bytes));
            need->largest_tensor = bytes > need->largest_tensor ? bytes : need->largest_tensor;
        }
    }
    need->tensor_bytes =
        saturating_add(need->tensor_bytes, saturating_mul(need->unsized, aligned(need->largest_tensor)));
    for (k = 0; k < need->nodes && b.broken == NULL; k++) {
        need->state_bytes = saturating_add(
            need->state_bytes, first_run_state(&b, fb_element(&b, nodes, k), &lists, need->largest_tensor));
    }
    if (b.broken != NULL) {
        return refuse(err, errlen, "broken FlatBuffer: %s", b.broken);
    }
    need->object_bytes = (uint64_t)need->nodes * RC_ESPDL_NODE_BYTES +
                         (uint64_t)need->tensors * RC_ESPDL_TENSOR_OBJECT_BYTES + RC_ESPDL_MODEL_BYTES;
    need->need_bytes = saturating_add(saturating_add(need->flatbuffer_bytes, need->tensor_bytes),
                                      saturating_add(need->state_bytes, need->object_bytes));
    need->block_bytes = need->tensor_bytes > need->flatbuffer_bytes ? need->tensor_bytes : need->flatbuffer_bytes;
    return RC_OK;
}

void rc_espdl_describe(const rc_espdl_need_t *need, char *out, size_t outlen)
{
    (void)snprintf(out, outlen,
                   "EDL%u, FlatBuffer %lu, %lu nodes, %lu tensors %llu (largest %llu, %lu unsized), first-run state "
                   "%llu, objects %llu: needs %llu bytes, one block of %llu",
                   need->version, (unsigned long)need->flatbuffer_bytes, (unsigned long)need->nodes,
                   (unsigned long)need->tensors, (unsigned long long)need->tensor_bytes,
                   (unsigned long long)need->largest_tensor, (unsigned long)need->unsized,
                   (unsigned long long)need->state_bytes, (unsigned long long)need->object_bytes,
                   (unsigned long long)need->need_bytes, (unsigned long long)need->block_bytes);
}

rc_error_t rc_memory_check(const rc_espdl_need_t *need, uint64_t free_bytes, uint64_t largest_free_block, char *err,
                           size_t errlen)
{
    if (need->need_bytes <= free_bytes && need->block_bytes <= largest_free_block) {
        return RC_OK;
    }
    (void)snprintf(err, errlen, "needs %llu bytes of PSRAM (one block of %llu), %llu free (largest block %llu)",
                   (unsigned long long)need->need_bytes, (unsigned long long)need->block_bytes,
                   (unsigned long long)free_bytes, (unsigned long long)largest_free_block);
    return RC_ERR_OUT_OF_MEMORY;
}
