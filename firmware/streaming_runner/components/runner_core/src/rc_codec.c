/* The wire protocol's codec: see rc_codec.h and docs/protocol.md (sections 2, 3 and 5). */
#include "rc_codec.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------ names */

const char *rc_frame_reason(rc_frame_status_t status)
{
    switch (status) {
    case RC_FRAME_OK: return "ok";
    case RC_FRAME_COBS: return "cobs";
    case RC_FRAME_SHORT: return "short";
    case RC_FRAME_LENGTH: return "length";
    case RC_FRAME_CRC: return "crc";
    case RC_FRAME_OVERSIZE: return "oversize";
    case RC_FRAME_UNKNOWN_TYPE: return "unknown-type";
    case RC_FRAME_PAYLOAD: return "payload";
    }
    return "?";
}

const char *rc_msg_name(uint8_t type)
{
    switch (type) {
    case RC_MSG_HELLO: return "HELLO";
    case RC_MSG_MODEL_BEGIN: return "MODEL_BEGIN";
    case RC_MSG_MODEL_CHUNK: return "MODEL_CHUNK";
    case RC_MSG_MODEL_END: return "MODEL_END";
    case RC_MSG_CONFIGURE: return "CONFIGURE";
    case RC_MSG_RESET: return "RESET";
    case RC_MSG_FRAMES: return "FRAMES";
    case RC_MSG_FLUSH: return "FLUSH";
    case RC_MSG_PROBE: return "PROBE";
    case RC_MSG_ACK: return "ACK";
    case RC_MSG_INFO: return "INFO";
    case RC_MSG_OUTPUT: return "OUTPUT";
    case RC_MSG_CREDIT: return "CREDIT";
    case RC_MSG_LOG: return "LOG";
    case RC_MSG_BOOT: return "BOOT";
    case RC_MSG_TENSOR: return "TENSOR";
    case RC_MSG_ERROR: return "ERROR";
    default: return NULL;
    }
}

/* ---------------------------------------------------------------------------------------------- CRC */

/* Four bits at a time: a 64-byte table instead of 1 KiB, still 4x faster than bit by bit. */
static const uint32_t crc_nibble[16] = {
    0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u, 0x4DB26158u, 0x5005713Cu,
    0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu, 0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu,
};

uint32_t rc_crc32(const uint8_t *data, size_t len)
{
    uint32_t c = 0xFFFFFFFFu;
    size_t i;
    for (i = 0; i < len; i++) {
        c = (c >> 4) ^ crc_nibble[(c ^ data[i]) & 0x0Fu];
        c = (c >> 4) ^ crc_nibble[(c ^ ((uint32_t)data[i] >> 4)) & 0x0Fu];
    }
    return c ^ 0xFFFFFFFFu;
}

/* --------------------------------------------------------------------------------------------- COBS */

size_t rc_cobs_max_encoded(size_t len)
{
    return len + (len == 0 ? 1 : (len + 253) / 254);
}

size_t rc_max_wire_size(size_t max_payload)
{
    return rc_cobs_max_encoded(RC_MIN_BODY_SIZE + max_payload);
}

void rc_cobs_encode_stream(const uint8_t *in, size_t len, rc_emit_fn emit, void *ctx)
{
    size_t i = 0;
    for (;;) {
        size_t run = 0;
        uint8_t code;
        while (i + run < len && in[i + run] != 0 && run < 254) {
            run++;
        }
        code = (uint8_t)(run + 1);
        emit(ctx, &code, 1);
        if (run > 0) {
            emit(ctx, in + i, run);
        }
        i += run;
        if (i == len) {
            break; /* the last run, or a 0xFF block ending the body: nothing follows (the edge case) */
        }
        if (run < 254) {
            i++; /* the 0x00 that ended this run is implied by its code byte */
        }
    }
}

typedef struct {
    uint8_t *out;
    size_t cap;
    size_t len;
    int overflow;
} sink_t;

static void sink_emit(void *ctx, const uint8_t *data, size_t len)
{
    sink_t *s = (sink_t *)ctx;
    if (s->overflow || len > s->cap - s->len) {
        s->overflow = 1;
        return;
    }
    memcpy(s->out + s->len, data, len);
    s->len += len;
}

size_t rc_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap)
{
    sink_t s;
    s.out = out;
    s.cap = cap;
    s.len = 0;
    s.overflow = 0;
    rc_cobs_encode_stream(in, len, sink_emit, &s);
    return s.overflow ? 0 : s.len;
}

int rc_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    size_t i = 0, o = 0;
    while (i < len) {
        size_t k, n = (size_t)in[i++] - 1; /* data bytes in this block */
        if (in[i - 1] == 0 || n > len - i || n > cap - o) {
            return -1;
        }
        for (k = 0; k < n; k++) { /* forward copy: o < i throughout, so in == out is safe */
            if (in[i] == 0) {
                return -1;
            }
            out[o++] = in[i++];
        }
        if (n != 254 && i < len) { /* every block but a 0xFF one stands for a 0x00 after its data */
            if (o == cap) {
                return -1;
            }
            out[o++] = 0;
        }
    }
    *out_len = o;
    return 0;
}

/* -------------------------------------------------------------------------------------------- UTF-8 */

/* Length of the valid UTF-8 sequence at p (1..4), or 0; Python's strict decoder rules: no overlong forms,
 * no surrogates, nothing above U+10FFFF. */
static size_t utf8_sequence(const uint8_t *p, size_t n)
{
    uint8_t b = p[0], lo = 0x80, hi = 0xBF;
    size_t need, k;
    if (b < 0x80) {
        return 1;
    }
    if (b >= 0xC2 && b <= 0xDF) {
        need = 1;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 2;
        lo = (b == 0xE0) ? 0xA0 : 0x80;
        hi = (b == 0xED) ? 0x9F : 0xBF;
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 3;
        lo = (b == 0xF0) ? 0x90 : 0x80;
        hi = (b == 0xF4) ? 0x8F : 0xBF;
    } else {
        return 0;
    }
    if (need >= n) {
        return 0;
    }
    for (k = 1; k <= need; k++) {
        uint8_t c = p[k];
        if (c < lo || c > hi) {
            return 0;
        }
        lo = 0x80; /* only the second byte has a narrower range */
        hi = 0xBF;
    }
    return need + 1;
}

int rc_utf8_valid(const uint8_t *data, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t n = utf8_sequence(data + i, len - i);
        if (n == 0) {
            return 0;
        }
        i += n;
    }
    return 1;
}

size_t rc_utf8_sanitize(const char *text, size_t len, char *out, size_t cap)
{
    const uint8_t *p = (const uint8_t *)text;
    size_t i = 0, o = 0;
    while (i < len) {
        size_t n = utf8_sequence(p + i, len - i);
        if (n == 0 || p[i] == 0) {
            if (o + 1 >= cap) {
                break;
            }
            out[o++] = '?';
            i++;
            continue;
        }
        if (o + n >= cap) {
            break; /* cut at a character boundary */
        }
        memcpy(out + o, p + i, n);
        o += n;
        i += n;
    }
    out[o] = '\0';
    return o;
}

/* ----------------------------------------------------------------------------------- payload reader */

/* Cursor over a payload; the first shortfall or bad value marks it failed and says why. */
typedef struct {
    const uint8_t *p;
    size_t n;
    size_t pos;
    const char *name; /* message name, for the reason */
    char *why;
    size_t whylen;
    int failed;
} reader_t;

static void r_fail(reader_t *r, const char *fmt, ...)
{
    va_list ap;
    int used;
    if (r->failed) {
        return;
    }
    r->failed = 1;
    if (r->why == NULL || r->whylen == 0) {
        return;
    }
    used = snprintf(r->why, r->whylen, "%s: ", r->name);
    if (used < 0 || (size_t)used >= r->whylen) {
        return;
    }
    va_start(ap, fmt);
    (void)vsnprintf(r->why + used, r->whylen - (size_t)used, fmt, ap);
    va_end(ap);
}

static int r_need(reader_t *r, size_t k)
{
    if (r->failed) {
        return 0;
    }
    if (k > r->n - r->pos) {
        r_fail(r, "payload ends at byte %lu, needs %lu", (unsigned long)r->n, (unsigned long)(r->pos + k));
        return 0;
    }
    return 1;
}

static uint8_t r_u8(reader_t *r)
{
    return r_need(r, 1) ? r->p[r->pos++] : 0;
}

static uint16_t r_u16(reader_t *r)
{
    uint16_t v;
    if (!r_need(r, 2)) {
        return 0;
    }
    v = (uint16_t)(r->p[r->pos] | (r->p[r->pos + 1] << 8));
    r->pos += 2;
    return v;
}

static uint32_t r_u32(reader_t *r)
{
    uint32_t v;
    if (!r_need(r, 4)) {
        return 0;
    }
    v = (uint32_t)r->p[r->pos] | ((uint32_t)r->p[r->pos + 1] << 8) | ((uint32_t)r->p[r->pos + 2] << 16) |
        ((uint32_t)r->p[r->pos + 3] << 24);
    r->pos += 4;
    return v;
}

static rc_bytes_t r_take(reader_t *r, size_t k)
{
    rc_bytes_t v;
    v.ptr = r->p + r->pos;
    v.len = 0;
    if (r_need(r, k)) {
        v.len = k;
        r->pos += k;
    }
    return v;
}

static rc_bytes_t r_rest(reader_t *r)
{
    return r_take(r, r->n - r->pos);
}

static rc_bytes_t r_str(reader_t *r)
{
    rc_bytes_t v = r_take(r, r_u16(r));
    if (!r->failed && !rc_utf8_valid(v.ptr, v.len)) {
        r_fail(r, "string is not UTF-8");
    }
    return v;
}

static void r_range(reader_t *r, unsigned value, unsigned lo, unsigned hi, const char *what)
{
    if (!r->failed && (value < lo || value > hi)) {
        r_fail(r, "%u is not a valid %s", value, what);
    }
}

static void r_done(reader_t *r)
{
    if (!r->failed && r->pos != r->n) {
        r_fail(r, "%lu trailing byte(s)", (unsigned long)(r->n - r->pos));
    }
}

/* ---------------------------------------------------------------------------------------- unpacking */

static void read_module(reader_t *r, rc_module_record_t *m)
{
    m->slot = r_u8(r);
    m->input_layout = r_u8(r);
    m->output_layout = r_u8(r);
    r_range(r, m->input_layout, RC_LAYOUT_NWC, RC_LAYOUT_FLAT, "Layout");
    r_range(r, m->output_layout, RC_LAYOUT_NWC, RC_LAYOUT_FLAT, "Layout");
    if (!r->failed && m->input_layout == RC_LAYOUT_FLAT) {
        r_fail(r, "input_layout 2 (FLAT): a module's input is NWC or NCW");
    }
    m->input = r_str(r);
    m->output = r_str(r);
    m->cache_input = r_str(r);
    m->cache_output = r_str(r);
}

size_t rc_module_record_read(const uint8_t *p, size_t n, rc_module_record_t *record)
{
    reader_t r;
    memset(&r, 0, sizeof r);
    r.p = p;
    r.n = n;
    r.name = "module";
    read_module(&r, record);
    return r.failed ? 0 : r.pos;
}

static void unpack_configure(reader_t *r, rc_configure_t *m)
{
    rc_module_record_t record;
    size_t start, i;
    m->window = r_u16(r);
    m->schedule = r_u8(r);
    m->flags = r_u8(r);
    m->queue_depth = r_u16(r);
    m->output_batch = r_u16(r);
    m->module_count = r_u8(r);
    r_range(r, m->schedule, RC_SCHEDULE_ROUND_ROBIN, RC_SCHEDULE_SEQUENTIAL, "Schedule");
    start = r->pos;
    for (i = 0; i < m->module_count && !r->failed; i++) {
        read_module(r, &record);
    }
    m->modules.ptr = r->p + start;
    m->modules.len = r->pos - start;
    r_done(r);
}

static void unpack_frames(reader_t *r, rc_frames_t *m)
{
    m->first_frame = r_u32(r);
    m->count = r_u16(r);
    m->frame_bytes = r_u16(r);
    m->data = r_rest(r);
    if (!r->failed && m->data.len != (size_t)m->count * m->frame_bytes) {
        r_fail(r, "%lu data bytes, count %u x frame_bytes %u", (unsigned long)m->data.len, m->count,
               m->frame_bytes);
    }
}

static void unpack_info(reader_t *r, rc_info_t *m)
{
    m->version = r_u16(r);
    m->max_payload = r_u16(r);
    m->credits = r_u16(r);
    m->free_internal_bytes = r_u32(r);
    m->free_psram_bytes = r_u32(r);
    m->target = r_str(r);
    m->build_id = r_str(r);
    m->esp_dl_version = r_str(r);
    m->idf_version = r_str(r);
    m->device_kind = r_str(r);
    r_done(r);
}

static void unpack_output(reader_t *r, rc_output_t *m)
{
    uint8_t timing_count;
    uint64_t size;
    m->window = r_u32(r);
    m->windows = r_u16(r);
    m->module = r_u8(r);
    m->step = r_u32(r);
    m->layout = r_u8(r);
    m->bits = r_u8(r);
    m->exponent = (int8_t)r_u8(r);
    m->frames = r_u16(r);
    m->channels = r_u16(r);
    timing_count = r_u8(r);
    r_range(r, m->layout, RC_LAYOUT_NWC, RC_LAYOUT_FLAT, "Layout");
    if (!r->failed && m->bits != 8 && m->bits != 16) {
        r_fail(r, "bits %u is not 8 or 16", m->bits);
    }
    if (!r->failed && m->layout == RC_LAYOUT_FLAT && m->frames != 1) {
        r_fail(r, "layout FLAT with frames %u: a FLAT output is one row of channels values per window", m->frames);
    }
    if (!r->failed && m->layout == RC_LAYOUT_FLAT && m->windows == 0) {
        r_fail(r, "layout FLAT in a part (windows 0): a FLAT output is never split into parts");
    }
    m->timings = r_take(r, (size_t)timing_count * RC_TIMING_SIZE);
    if (!r->failed && m->windows == 0) { /* a part: its frame range follows the timings */
        m->part_first_frame = r_u16(r);
        m->part_frames = r_u16(r);
        if (!r->failed && m->part_frames == 0) {
            r_fail(r, "part_frames 0: an OUTPUT part carries at least 1 frame");
        }
        if (!r->failed && (uint32_t)m->part_first_frame + m->part_frames > m->frames) {
            r_fail(r, "part of frames %u..%lu lies beyond a window of %u frames", m->part_first_frame,
                   (unsigned long)m->part_first_frame + m->part_frames - 1u, m->frames);
        }
    }
    m->data = r_rest(r);
    size = (m->windows == 0 ? (uint64_t)m->part_frames : (uint64_t)m->windows * m->frames) * m->channels *
           (m->bits / 8u);
    if (!r->failed && (uint64_t)m->data.len != size) {
        r_fail(r, "%lu data bytes, %s %u x channels %u x %u", (unsigned long)m->data.len,
               m->windows == 0 ? "part_frames" : "windows x frames",
               m->windows == 0 ? m->part_frames : (unsigned)(m->windows * m->frames), m->channels, m->bits / 8u);
    }
}

/* PROBE: 1..255 names, each non-empty, all distinct (protocol.md 0x0A). */
static void unpack_probe(reader_t *r, rc_probe_msg_t *m)
{
    size_t start, i, j;
    m->module = r_u8(r);
    m->window = r_u32(r);
    m->name_count = r_u8(r);
    start = r->pos;
    for (i = 0; i < m->name_count && !r->failed; i++) {
        rc_bytes_t name = r_str(r);
        if (!r->failed && name.len == 0) {
            r_fail(r, "name %lu is empty", (unsigned long)i);
        }
    }
    m->names.ptr = r->p + start;
    m->names.len = r->pos - start;
    r_done(r);
    if (!r->failed && m->name_count == 0) {
        r_fail(r, "name_count 0: a PROBE names 1..255 tensors");
    }
    for (i = 0, start = 0; i < m->name_count && !r->failed; i++) { /* distinct: each against those after it */
        rc_bytes_t a;
        size_t at = start + rc_probe_name_read(m->names.ptr + start, m->names.len - start, &a), next = at;
        for (j = i + 1; j < m->name_count && !r->failed; j++) {
            rc_bytes_t b;
            next += rc_probe_name_read(m->names.ptr + next, m->names.len - next, &b);
            if (a.len == b.len && memcmp(a.ptr, b.ptr, a.len) == 0) {
                r_fail(r, "name %lu appears twice", (unsigned long)i);
            }
        }
        start = at;
    }
}

/* TENSOR: the header, the shape, the name, then a whole number of elements within the tensor (protocol.md 0x87). */
static void unpack_tensor(reader_t *r, rc_tensor_msg_t *m)
{
    uint64_t elements = 1, count;
    unsigned i, size;
    m->module = r_u8(r);
    m->window = r_u32(r);
    m->step = r_u32(r);
    m->index = r_u8(r);
    m->bits = r_u8(r);
    m->exponent = (int8_t)r_u8(r);
    m->rank = r_u8(r);
    if (!r->failed && m->bits != 8 && m->bits != 16 && m->bits != 32) {
        r_fail(r, "bits %u is not 8, 16 or 32", m->bits);
    }
    if (!r->failed && m->rank > RC_MAX_TENSOR_RANK) {
        r_fail(r, "rank %u: a TENSOR has at most %u dimensions", m->rank, RC_MAX_TENSOR_RANK);
    }
    for (i = 0; i < m->rank && !r->failed; i++) {
        m->shape[i] = r_u32(r);
        elements = elements > 0xFFFFFFFFu ? elements : elements * m->shape[i]; /* stays below 2^64 */
    }
    m->first_element = r_u32(r);
    m->name = r_str(r);
    m->data = r_rest(r);
    if (r->failed) {
        return;
    }
    size = m->bits / 8u;
    count = m->data.len / size;
    if (m->bits == 32 && m->exponent != 0) {
        r_fail(r, "a float32 tensor has exponent 0, not %d", m->exponent);
    } else if (m->name.len == 0) {
        r_fail(r, "the name is empty");
    } else if (elements > 0xFFFFFFFFu) {
        r_fail(r, "a tensor of more than 2^32 - 1 elements");
    } else if (m->data.len % size != 0) {
        r_fail(r, "%lu data bytes are not whole %u-bit elements", (unsigned long)m->data.len, m->bits);
    } else if (count == 0 && elements > 0) {
        r_fail(r, "no data: a TENSOR carries at least one element of a tensor that has some");
    } else if ((uint64_t)m->first_element + count > elements) {
        r_fail(r, "elements %lu.. lie beyond a tensor of %lu elements", (unsigned long)m->first_element,
               (unsigned long)elements);
    }
}

static void unpack_host_message(reader_t *r, rc_message_t *msg)
{
    switch (msg->type) {
    case RC_MSG_HELLO:
        msg->u.hello.min_version = r_u16(r);
        msg->u.hello.max_version = r_u16(r);
        r_done(r);
        break;
    case RC_MSG_MODEL_BEGIN: {
        rc_bytes_t sha;
        msg->u.model_begin.slot = r_u8(r);
        msg->u.model_begin.size = r_u32(r);
        sha = r_take(r, sizeof msg->u.model_begin.sha256);
        if (!r->failed) {
            memcpy(msg->u.model_begin.sha256, sha.ptr, sha.len);
        }
        msg->u.model_begin.name = r_str(r);
        r_done(r);
        break;
    }
    case RC_MSG_MODEL_CHUNK:
        msg->u.model_chunk.slot = r_u8(r);
        msg->u.model_chunk.offset = r_u32(r);
        msg->u.model_chunk.data = r_rest(r);
        break;
    case RC_MSG_MODEL_END:
        msg->u.model_end.slot = r_u8(r);
        r_done(r);
        break;
    case RC_MSG_CONFIGURE: unpack_configure(r, &msg->u.configure); break;
    case RC_MSG_FRAMES: unpack_frames(r, &msg->u.frames); break;
    case RC_MSG_PROBE: unpack_probe(r, &msg->u.probe); break;
    default: r_done(r); break; /* RESET, FLUSH: empty */
    }
}

static void unpack_device_message(reader_t *r, rc_message_t *msg)
{
    switch (msg->type) {
    case RC_MSG_ACK:
        msg->u.ack.ref_type = r_u8(r);
        msg->u.ack.ref_seq = r_u16(r);
        msg->u.ack.detail = r_rest(r);
        break;
    case RC_MSG_INFO: unpack_info(r, &msg->u.info); break;
    case RC_MSG_OUTPUT: unpack_output(r, &msg->u.output); break;
    case RC_MSG_CREDIT:
        msg->u.credit.frames = r_u16(r);
        r_done(r);
        break;
    case RC_MSG_LOG:
        msg->u.log.level = r_u8(r);
        r_range(r, msg->u.log.level, RC_LOG_ERROR, RC_LOG_VERBOSE, "LogLevel");
        msg->u.log.text = r_str(r);
        r_done(r);
        break;
    case RC_MSG_BOOT:
        msg->u.boot.banner = r_str(r);
        r_done(r);
        break;
    case RC_MSG_TENSOR: unpack_tensor(r, &msg->u.tensor); break;
    default: /* RC_MSG_ERROR */
        msg->u.error.code = r_u16(r);
        msg->u.error.ref_type = r_u8(r);
        msg->u.error.ref_seq = r_u16(r);
        r_range(r, msg->u.error.code, RC_ERR_BAD_FRAME, RC_ERR_INTERNAL, "ErrorCode");
        msg->u.error.text = r_str(r);
        r_done(r);
        break;
    }
}

rc_frame_status_t rc_message_unpack(uint8_t type, const uint8_t *payload, size_t len, rc_message_t *msg,
                                    char *why, size_t whylen)
{
    reader_t r;
    const char *name = rc_msg_name(type);
    if (why != NULL && whylen > 0) {
        why[0] = '\0';
    }
    if (name == NULL) {
        if (why != NULL && whylen > 0) {
            (void)snprintf(why, whylen, "type 0x%02x", type);
        }
        return RC_FRAME_UNKNOWN_TYPE;
    }
    memset(msg, 0, sizeof *msg);
    msg->type = type;
    memset(&r, 0, sizeof r);
    r.p = payload;
    r.n = len;
    r.name = name;
    r.why = why;
    r.whylen = whylen;
    if (type & 0x80u) {
        unpack_device_message(&r, msg);
    } else {
        unpack_host_message(&r, msg);
    }
    return r.failed ? RC_FRAME_PAYLOAD : RC_FRAME_OK;
}

rc_frame_status_t rc_body_check(const uint8_t *body, size_t len, rc_frame_t *frame)
{
    size_t payload_len;
    uint32_t crc;
    if (len < RC_MIN_BODY_SIZE) {
        return RC_FRAME_SHORT;
    }
    payload_len = (size_t)body[3] | ((size_t)body[4] << 8);
    if (payload_len != len - RC_MIN_BODY_SIZE) {
        return RC_FRAME_LENGTH;
    }
    crc = (uint32_t)body[len - 4] | ((uint32_t)body[len - 3] << 8) | ((uint32_t)body[len - 2] << 16) |
          ((uint32_t)body[len - 1] << 24);
    if (crc != rc_crc32(body, len - RC_CRC_SIZE)) {
        return RC_FRAME_CRC;
    }
    frame->type = body[0];
    frame->seq = (uint16_t)(body[1] | (body[2] << 8));
    frame->payload.ptr = body + RC_HEADER_SIZE;
    frame->payload.len = payload_len;
    return RC_FRAME_OK;
}

rc_frame_status_t rc_chunk_decode(uint8_t *chunk, size_t len, rc_frame_t *frame)
{
    size_t body_len;
    if (rc_cobs_decode(chunk, len, chunk, len, &body_len) != 0) {
        return RC_FRAME_COBS;
    }
    return rc_body_check(chunk, body_len, frame);
}

/* ------------------------------------------------------------------------------------------ packing */

typedef struct {
    uint8_t *p;
    size_t cap;
    size_t len;
    int failed;
} writer_t;

static void w_bytes(writer_t *w, const uint8_t *data, size_t n)
{
    if (w->failed || n > w->cap - w->len) {
        w->failed = 1;
        return;
    }
    if (n > 0) {
        memcpy(w->p + w->len, data, n);
    }
    w->len += n;
}

static void w_u8(writer_t *w, unsigned v)
{
    uint8_t b = (uint8_t)v;
    w_bytes(w, &b, 1);
}

static void w_u16(writer_t *w, unsigned v)
{
    uint8_t b[2];
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    w_bytes(w, b, 2);
}

static void w_u32(writer_t *w, uint32_t v)
{
    uint8_t b[4];
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)(v >> 16);
    b[3] = (uint8_t)(v >> 24);
    w_bytes(w, b, 4);
}

static void w_u64(writer_t *w, uint64_t v)
{
    w_u32(w, (uint32_t)v);
    w_u32(w, (uint32_t)(v >> 32));
}

static void w_str(writer_t *w, rc_bytes_t s)
{
    if (s.len > 0xFFFFu) {
        w->failed = 1;
        return;
    }
    w_u16(w, (unsigned)s.len);
    w_bytes(w, s.ptr, s.len);
}

static void pack_configure(writer_t *w, const rc_configure_t *m)
{
    w_u16(w, m->window);
    w_u8(w, m->schedule);
    w_u8(w, m->flags);
    w_u16(w, m->queue_depth);
    w_u16(w, m->output_batch);
    w_u8(w, m->module_count);
    w_bytes(w, m->modules.ptr, m->modules.len);
}

static void pack_info(writer_t *w, const rc_info_t *m)
{
    w_u16(w, m->version);
    w_u16(w, m->max_payload);
    w_u16(w, m->credits);
    w_u32(w, m->free_internal_bytes);
    w_u32(w, m->free_psram_bytes);
    w_str(w, m->target);
    w_str(w, m->build_id);
    w_str(w, m->esp_dl_version);
    w_str(w, m->idf_version);
    w_str(w, m->device_kind);
}

static void pack_output(writer_t *w, const rc_output_t *m)
{
    if (m->timings.len % RC_TIMING_SIZE != 0 || m->timings.len / RC_TIMING_SIZE > 0xFFu ||
        (m->windows != 0 && (m->part_first_frame != 0 || m->part_frames != 0)) ||
        (m->layout == RC_LAYOUT_FLAT && (m->frames != 1 || m->windows == 0))) {
        w->failed = 1; /* whole windows carry no part fields; a FLAT output is whole windows of 1 frame */
        return;
    }
    w_u32(w, m->window);
    w_u16(w, m->windows);
    w_u8(w, m->module);
    w_u32(w, m->step);
    w_u8(w, m->layout);
    w_u8(w, m->bits);
    w_u8(w, (uint8_t)m->exponent);
    w_u16(w, m->frames);
    w_u16(w, m->channels);
    w_u8(w, (unsigned)(m->timings.len / RC_TIMING_SIZE));
    w_bytes(w, m->timings.ptr, m->timings.len);
    if (m->windows == 0) {
        w_u16(w, m->part_first_frame);
        w_u16(w, m->part_frames);
    }
    w_bytes(w, m->data.ptr, m->data.len);
}

static void pack_tensor(writer_t *w, const rc_tensor_msg_t *m)
{
    unsigned i;
    if (m->rank > RC_MAX_TENSOR_RANK) {
        w->failed = 1;
        return;
    }
    w_u8(w, m->module);
    w_u32(w, m->window);
    w_u32(w, m->step);
    w_u8(w, m->index);
    w_u8(w, m->bits);
    w_u8(w, (uint8_t)m->exponent);
    w_u8(w, m->rank);
    for (i = 0; i < m->rank; i++) {
        w_u32(w, m->shape[i]);
    }
    w_u32(w, m->first_element);
    w_str(w, m->name);
    w_bytes(w, m->data.ptr, m->data.len);
}

static void pack_fields(writer_t *w, const rc_message_t *msg)
{
    switch (msg->type) {
    case RC_MSG_HELLO:
        w_u16(w, msg->u.hello.min_version);
        w_u16(w, msg->u.hello.max_version);
        break;
    case RC_MSG_MODEL_BEGIN:
        w_u8(w, msg->u.model_begin.slot);
        w_u32(w, msg->u.model_begin.size);
        w_bytes(w, msg->u.model_begin.sha256, sizeof msg->u.model_begin.sha256);
        w_str(w, msg->u.model_begin.name);
        break;
    case RC_MSG_MODEL_CHUNK:
        w_u8(w, msg->u.model_chunk.slot);
        w_u32(w, msg->u.model_chunk.offset);
        w_bytes(w, msg->u.model_chunk.data.ptr, msg->u.model_chunk.data.len);
        break;
    case RC_MSG_MODEL_END: w_u8(w, msg->u.model_end.slot); break;
    case RC_MSG_CONFIGURE: pack_configure(w, &msg->u.configure); break;
    case RC_MSG_RESET:
    case RC_MSG_FLUSH: break;
    case RC_MSG_FRAMES:
        w_u32(w, msg->u.frames.first_frame);
        w_u16(w, msg->u.frames.count);
        w_u16(w, msg->u.frames.frame_bytes);
        w_bytes(w, msg->u.frames.data.ptr, msg->u.frames.data.len);
        break;
    case RC_MSG_PROBE:
        w_u8(w, msg->u.probe.module);
        w_u32(w, msg->u.probe.window);
        w_u8(w, msg->u.probe.name_count);
        w_bytes(w, msg->u.probe.names.ptr, msg->u.probe.names.len);
        break;
    case RC_MSG_ACK:
        w_u8(w, msg->u.ack.ref_type);
        w_u16(w, msg->u.ack.ref_seq);
        w_bytes(w, msg->u.ack.detail.ptr, msg->u.ack.detail.len);
        break;
    case RC_MSG_INFO: pack_info(w, &msg->u.info); break;
    case RC_MSG_OUTPUT: pack_output(w, &msg->u.output); break;
    case RC_MSG_CREDIT: w_u16(w, msg->u.credit.frames); break;
    case RC_MSG_LOG:
        w_u8(w, msg->u.log.level);
        w_str(w, msg->u.log.text);
        break;
    case RC_MSG_BOOT: w_str(w, msg->u.boot.banner); break;
    case RC_MSG_TENSOR: pack_tensor(w, &msg->u.tensor); break;
    case RC_MSG_ERROR:
        w_u16(w, msg->u.error.code);
        w_u8(w, msg->u.error.ref_type);
        w_u16(w, msg->u.error.ref_seq);
        w_str(w, msg->u.error.text);
        break;
    default: w->failed = 1; break;
    }
}

size_t rc_message_pack(const rc_message_t *msg, uint8_t *out, size_t cap)
{
    writer_t w;
    rc_message_t check;
    w.p = out;
    w.cap = cap;
    w.len = 0;
    w.failed = 0;
    pack_fields(&w, msg);
    /* Parsing what was written proves every field valid (enums, UTF-8, data sizes): the device never sends a
     * frame its peer would refuse, and the codec needs no second list of the rules. */
    if (w.failed || w.len > RC_MAX_PAYLOAD_LIMIT ||
        rc_message_unpack(msg->type, out, w.len, &check, NULL, 0) != RC_FRAME_OK) {
        return RC_PACK_FAILED;
    }
    return w.len;
}

size_t rc_body_encode(const rc_message_t *msg, uint16_t seq, uint8_t *body, size_t cap)
{
    size_t n;
    uint32_t crc;
    if (cap < RC_MIN_BODY_SIZE) {
        return 0;
    }
    n = rc_message_pack(msg, body + RC_HEADER_SIZE, cap - RC_MIN_BODY_SIZE);
    if (n == RC_PACK_FAILED) {
        return 0;
    }
    body[0] = msg->type;
    body[1] = (uint8_t)seq;
    body[2] = (uint8_t)(seq >> 8);
    body[3] = (uint8_t)n;
    body[4] = (uint8_t)(n >> 8);
    crc = rc_crc32(body, RC_HEADER_SIZE + n);
    body[RC_HEADER_SIZE + n] = (uint8_t)crc;
    body[RC_HEADER_SIZE + n + 1] = (uint8_t)(crc >> 8);
    body[RC_HEADER_SIZE + n + 2] = (uint8_t)(crc >> 16);
    body[RC_HEADER_SIZE + n + 3] = (uint8_t)(crc >> 24);
    return RC_MIN_BODY_SIZE + n;
}

/* ------------------------------------------------------------------------------------------ records */

size_t rc_module_record_write(const rc_module_record_t *record, uint8_t *out, size_t cap)
{
    writer_t w;
    w.p = out;
    w.cap = cap;
    w.len = 0;
    w.failed = 0;
    w_u8(&w, record->slot);
    w_u8(&w, record->input_layout);
    w_u8(&w, record->output_layout);
    w_str(&w, record->input);
    w_str(&w, record->output);
    w_str(&w, record->cache_input);
    w_str(&w, record->cache_output);
    return w.failed ? 0 : w.len;
}

size_t rc_probe_name_read(const uint8_t *p, size_t n, rc_bytes_t *name)
{
    reader_t r;
    memset(&r, 0, sizeof r);
    r.p = p;
    r.n = n;
    r.name = "name";
    *name = r_str(&r);
    return r.failed ? 0 : r.pos;
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    int i;
    for (i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

rc_timing_t rc_timing_get(const rc_output_t *output, size_t module)
{
    const uint8_t *p = output->timings.ptr + module * RC_TIMING_SIZE;
    rc_timing_t t;
    t.cycles = get_u64(p);
    t.microseconds = get_u64(p + 8);
    return t;
}

void rc_timing_put(uint8_t out[RC_TIMING_SIZE], const rc_timing_t *timing)
{
    writer_t w;
    w.p = out;
    w.cap = RC_TIMING_SIZE;
    w.len = 0;
    w.failed = 0;
    w_u64(&w, timing->cycles);
    w_u64(&w, timing->microseconds);
}

void rc_ack_module_put(uint8_t out[RC_ACK_MODULE_SIZE], const rc_module_info_t *info)
{
    writer_t w;
    w.p = out;
    w.cap = RC_ACK_MODULE_SIZE;
    w.len = 0;
    w.failed = 0;
    w_u8(&w, (uint8_t)info->input_exponent);
    w_u8(&w, (uint8_t)info->output_exponent);
    w_u8(&w, info->input_bits);
    w_u16(&w, info->input_channels);
    w_u16(&w, info->output_channels);
}

uint32_t rc_max_windows_per_output(size_t max_payload, uint32_t frames, uint32_t channels, unsigned bits,
                                   unsigned modules)
{
    size_t fixed = RC_OUTPUT_HEADER_SIZE + (size_t)RC_TIMING_SIZE * modules;
    uint64_t window_bytes = (uint64_t)frames * channels * (bits / 8u), fit;
    if (max_payload < fixed) {
        return 0;
    }
    if (window_bytes == 0) {
        return 0xFFFFu;
    }
    fit = (uint64_t)(max_payload - fixed) / window_bytes;
    return fit > 0xFFFFu ? 0xFFFFu : (uint32_t)fit;
}

uint32_t rc_max_frames_per_part(size_t max_payload, uint32_t channels, unsigned bits, unsigned modules)
{
    size_t fixed = RC_OUTPUT_HEADER_SIZE + (size_t)RC_TIMING_SIZE * modules + RC_OUTPUT_PART_SIZE;
    uint64_t frame_bytes = (uint64_t)channels * (bits / 8u), fit;
    if (max_payload < fixed || frame_bytes == 0) {
        return 0;
    }
    fit = (uint64_t)(max_payload - fixed) / frame_bytes;
    return fit > 0xFFFFu ? 0xFFFFu : (uint32_t)fit;
}

uint32_t rc_max_elements_per_tensor(size_t max_payload, unsigned rank, size_t name_len, unsigned bits)
{
    size_t fixed = RC_TENSOR_HEADER_SIZE + 4u * (size_t)rank + name_len;
    uint64_t fit;
    if (max_payload < fixed || (bits != 8 && bits != 16 && bits != 32)) {
        return 0;
    }
    fit = (uint64_t)(max_payload - fixed) / (bits / 8u);
    return fit > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)fit;
}

/* ----------------------------------------------------------------------------------------- receiver */

void rc_rx_init(rc_rx_t *rx, uint8_t *buf, size_t cap)
{
    rx->buf = buf;
    rx->cap = buf == NULL ? 0 : cap;
    rc_rx_clear(rx);
}

void rc_rx_clear(rc_rx_t *rx)
{
    rx->len = 0;
    rx->skipping = 0;
    rx->holding = 0;
}

rc_rx_event_t rc_rx_push(rc_rx_t *rx, const uint8_t *data, size_t len, size_t *used)
{
    size_t i;
    if (rx->holding) {
        rx->len = 0;
        rx->holding = 0;
    }
    for (i = 0; i < len; i++) {
        uint8_t b = data[i];
        if (rx->skipping) {
            rx->skipping = b != 0;
        } else if (b == 0) {
            if (rx->len > 0) { /* an empty chunk (stray or leading delimiter) is ignored silently */
                rx->holding = 1;
                *used = i + 1;
                return RC_RX_CHUNK;
            }
        } else if (rx->len == rx->cap) {
            rx->len = 0;
            rx->skipping = 1;
            *used = i + 1;
            return RC_RX_OVERSIZE;
        } else {
            rx->buf[rx->len++] = b;
        }
    }
    *used = len;
    return RC_RX_NONE;
}
