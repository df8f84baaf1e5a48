/*
 * codec_check: the C codec (rc_codec.h) and SHA-256 on stdin/stdout, so tests/test_firmware_core.py can prove
 * that the C and Python codecs agree on every vector and on fuzzed input. One command per input line, one
 * JSON line per command (README.md lists them):
 *   wire <hex>          the stream through a receiver (max_payload as set): a JSON list of items, each
 *                       {"seq", "message", "body", "wire"} (body and wire re-encoded from the decoded fields)
 *                       or {"error": reason} (+ "type" and "seq" for unknown-type and payload)
 *   body <hex>          one COBS-decoded body: one item
 *   max_payload <n>     the receiver's bound for the next `wire` lines (default 65535)
 *   crc <hex>           {"crc": n}
 *   sha256 <hex>        {"sha256": hex}
 *   cobs <hex>          {"cobs": hex}
 *   uncobs <hex>        {"body": hex} or {"error": "cobs"}
 *   cycles <c32> <us> <mhz>            {"cycles": rc_cycles_widen(c32, us, mhz)}
 *   espdl <hex>                        rc_espdl_need() of the file: its fields, or {"code", "text"}
 *   memcheck <need> <block> <free> <largest>   rc_memory_check(): {"code", "text"}
 * Messages print as tests/test_protocol.py's to_json does: field names of harness/protocol.py, bytes as hex,
 * enums as integers, the type as its name.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rc_codec.h"
#include "rc_espdl.h"
#include "rc_sha256.h"
#include "runner_core.h"

#define BODY_MAX (RC_MIN_BODY_SIZE + RC_MAX_PAYLOAD_LIMIT)

static uint8_t body_buf[BODY_MAX];
static uint8_t wire_buf[BODY_MAX + BODY_MAX / 254 + 2];
static uint8_t scratch[RC_MAX_PAYLOAD_LIMIT]; /* re-encoded module records or timings */

/* ---------------------------------------------------------------------------------------- output */

static void put_hex(const uint8_t *p, size_t n)
{
    size_t i;
    putchar('"');
    for (i = 0; i < n; i++) {
        printf("%02x", p[i]);
    }
    putchar('"');
}

/* A valid UTF-8 string as a JSON string: only quotes, backslashes and control characters need escapes. */
static void put_str(rc_bytes_t s)
{
    size_t i;
    putchar('"');
    for (i = 0; i < s.len; i++) {
        uint8_t c = s.ptr[i];
        if (c == '"' || c == '\\') {
            printf("\\%c", c);
        } else if (c < 0x20) {
            printf("\\u%04x", c);
        } else {
            putchar(c);
        }
    }
    putchar('"');
}

static void key(const char *name)
{
    printf(", \"%s\": ", name);
}

static void put_uint(const char *name, unsigned long v)
{
    key(name);
    printf("%lu", v);
}

static void put_modules(const rc_configure_t *m)
{
    const uint8_t *p = m->modules.ptr;
    size_t left = m->modules.len, i;
    key("modules");
    putchar('[');
    for (i = 0; i < m->module_count; i++) {
        rc_module_record_t rec;
        size_t used = rc_module_record_read(p, left, &rec);
        printf("%s{\"slot\": %u, \"input_layout\": %u, \"output_layout\": %u, \"input\": ", i ? ", " : "", rec.slot,
               rec.input_layout, rec.output_layout);
        put_str(rec.input);
        key("output");
        put_str(rec.output);
        key("cache_input");
        put_str(rec.cache_input);
        key("cache_output");
        put_str(rec.cache_output);
        putchar('}');
        p += used;
        left -= used;
    }
    putchar(']');
}

static void put_timings(const rc_output_t *m)
{
    size_t i, n = m->timings.len / RC_TIMING_SIZE;
    key("timings");
    putchar('[');
    for (i = 0; i < n; i++) {
        rc_timing_t t = rc_timing_get(m, i);
        printf("%s{\"cycles\": %llu, \"microseconds\": %llu}", i ? ", " : "", (unsigned long long)t.cycles,
               (unsigned long long)t.microseconds);
    }
    putchar(']');
}

static void put_info(const rc_info_t *m)
{
    put_uint("version", m->version);
    put_uint("max_payload", m->max_payload);
    put_uint("credits", m->credits);
    put_uint("free_internal_bytes", m->free_internal_bytes);
    put_uint("free_psram_bytes", m->free_psram_bytes);
    key("target");
    put_str(m->target);
    key("build_id");
    put_str(m->build_id);
    key("esp_dl_version");
    put_str(m->esp_dl_version);
    key("idf_version");
    put_str(m->idf_version);
    key("device_kind");
    put_str(m->device_kind);
}

static void put_output(const rc_output_t *m)
{
    put_uint("window", m->window);
    put_uint("windows", m->windows);
    put_uint("module", m->module);
    put_uint("step", m->step);
    put_uint("layout", m->layout);
    put_uint("bits", m->bits);
    key("exponent");
    printf("%d", m->exponent);
    put_uint("frames", m->frames);
    put_uint("channels", m->channels);
    put_timings(m);
    put_uint("part_first_frame", m->part_first_frame);
    put_uint("part_frames", m->part_frames);
    key("data");
    put_hex(m->data.ptr, m->data.len);
}

static void put_names(const rc_probe_msg_t *m)
{
    const uint8_t *p = m->names.ptr;
    size_t left = m->names.len, i;
    key("names");
    putchar('[');
    for (i = 0; i < m->name_count; i++) {
        rc_bytes_t name;
        size_t used = rc_probe_name_read(p, left, &name);
        printf("%s", i ? ", " : "");
        put_str(name);
        p += used;
        left -= used;
    }
    putchar(']');
}

static void put_tensor(const rc_tensor_msg_t *m)
{
    unsigned i;
    put_uint("module", m->module);
    put_uint("window", m->window);
    put_uint("step", m->step);
    put_uint("index", m->index);
    put_uint("bits", m->bits);
    key("exponent");
    printf("%d", m->exponent);
    key("shape");
    putchar('[');
    for (i = 0; i < m->rank; i++) {
        printf("%s%lu", i ? ", " : "", (unsigned long)m->shape[i]);
    }
    putchar(']');
    put_uint("first_element", m->first_element);
    key("name");
    put_str(m->name);
    key("data");
    put_hex(m->data.ptr, m->data.len);
}

static void put_host_fields(const rc_message_t *msg)
{
    const rc_configure_t *c = &msg->u.configure;
    switch (msg->type) {
    case RC_MSG_HELLO:
        put_uint("min_version", msg->u.hello.min_version);
        put_uint("max_version", msg->u.hello.max_version);
        break;
    case RC_MSG_MODEL_BEGIN:
        put_uint("slot", msg->u.model_begin.slot);
        put_uint("size", msg->u.model_begin.size);
        key("sha256");
        put_hex(msg->u.model_begin.sha256, sizeof msg->u.model_begin.sha256);
        key("name");
        put_str(msg->u.model_begin.name);
        break;
    case RC_MSG_MODEL_CHUNK:
        put_uint("slot", msg->u.model_chunk.slot);
        put_uint("offset", msg->u.model_chunk.offset);
        key("data");
        put_hex(msg->u.model_chunk.data.ptr, msg->u.model_chunk.data.len);
        break;
    case RC_MSG_MODEL_END: put_uint("slot", msg->u.model_end.slot); break;
    case RC_MSG_CONFIGURE:
        put_uint("window", c->window);
        put_uint("schedule", c->schedule);
        put_uint("flags", c->flags);
        put_uint("queue_depth", c->queue_depth);
        put_uint("output_batch", c->output_batch);
        put_modules(c);
        break;
    case RC_MSG_FRAMES:
        put_uint("first_frame", msg->u.frames.first_frame);
        put_uint("count", msg->u.frames.count);
        put_uint("frame_bytes", msg->u.frames.frame_bytes);
        key("data");
        put_hex(msg->u.frames.data.ptr, msg->u.frames.data.len);
        break;
    case RC_MSG_PROBE:
        put_uint("module", msg->u.probe.module);
        put_uint("window", msg->u.probe.window);
        put_names(&msg->u.probe);
        break;
    default: break; /* RESET, FLUSH */
    }
}

static void put_device_fields(const rc_message_t *msg)
{
    switch (msg->type) {
    case RC_MSG_ACK:
        put_uint("ref_type", msg->u.ack.ref_type);
        put_uint("ref_seq", msg->u.ack.ref_seq);
        key("detail");
        put_hex(msg->u.ack.detail.ptr, msg->u.ack.detail.len);
        break;
    case RC_MSG_INFO: put_info(&msg->u.info); break;
    case RC_MSG_OUTPUT: put_output(&msg->u.output); break;
    case RC_MSG_CREDIT: put_uint("frames", msg->u.credit.frames); break;
    case RC_MSG_LOG:
        put_uint("level", msg->u.log.level);
        key("text");
        put_str(msg->u.log.text);
        break;
    case RC_MSG_BOOT:
        key("banner");
        put_str(msg->u.boot.banner);
        break;
    case RC_MSG_TENSOR: put_tensor(&msg->u.tensor); break;
    default: /* ERROR */
        put_uint("code", msg->u.error.code);
        put_uint("ref_type", msg->u.error.ref_type);
        put_uint("ref_seq", msg->u.error.ref_seq);
        key("text");
        put_str(msg->u.error.text);
        break;
    }
}

/* ----------------------------------------------------------------------------------- re-encoding */

/* The message rebuilt from its decoded fields: records and timings are written again one by one, so the
 * bytes that come out prove the encoders, not a copy of the input. */
static rc_message_t rebuilt(const rc_message_t *msg)
{
    rc_message_t out = *msg;
    size_t i;
    if (msg->type == RC_MSG_CONFIGURE) {
        const uint8_t *p = msg->u.configure.modules.ptr;
        size_t left = msg->u.configure.modules.len, n = 0;
        for (i = 0; i < msg->u.configure.module_count; i++) {
            rc_module_record_t rec;
            size_t used = rc_module_record_read(p, left, &rec);
            n += rc_module_record_write(&rec, scratch + n, sizeof scratch - n);
            p += used;
            left -= used;
        }
        out.u.configure.modules.ptr = scratch;
        out.u.configure.modules.len = n;
    } else if (msg->type == RC_MSG_OUTPUT) {
        for (i = 0; i < msg->u.output.timings.len / RC_TIMING_SIZE; i++) {
            rc_timing_t t = rc_timing_get(&msg->u.output, i);
            rc_timing_put(scratch + i * RC_TIMING_SIZE, &t);
        }
        out.u.output.timings.ptr = scratch;
    }
    return out;
}

static void put_packet(uint16_t seq, const rc_message_t *msg)
{
    rc_message_t again = rebuilt(msg);
    size_t body_len = rc_body_encode(&again, seq, body_buf, sizeof body_buf), wire_len;
    printf("{\"seq\": %u, \"message\": {\"type\": \"%s\"", seq, rc_msg_name(msg->type));
    if (msg->type & 0x80u) {
        put_device_fields(msg);
    } else {
        put_host_fields(msg);
    }
    printf("}, \"body\": ");
    put_hex(body_buf, body_len);
    wire_len = rc_cobs_encode(body_buf, body_len, wire_buf, sizeof wire_buf - 1);
    wire_buf[wire_len++] = 0;
    printf(", \"wire\": ");
    put_hex(wire_buf, wire_len);
    putchar('}');
}

/* ----------------------------------------------------------------------------------------- decoding */

/* A checked body as an item: the message, or the reason it is not one. */
static void put_frame(rc_frame_status_t status, const rc_frame_t *frame)
{
    rc_message_t msg;
    if (status == RC_FRAME_OK) {
        status = rc_message_unpack(frame->type, frame->payload.ptr, frame->payload.len, &msg, NULL, 0);
    }
    if (status == RC_FRAME_OK) {
        put_packet(frame->seq, &msg);
    } else if (status == RC_FRAME_UNKNOWN_TYPE || status == RC_FRAME_PAYLOAD) {
        printf("{\"error\": \"%s\", \"type\": %u, \"seq\": %u}", rc_frame_reason(status), frame->type, frame->seq);
    } else {
        printf("{\"error\": \"%s\"}", rc_frame_reason(status));
    }
}

static void cmd_wire(const uint8_t *data, size_t len, size_t max_payload)
{
    size_t cap = rc_max_wire_size(max_payload);
    uint8_t *buf = (uint8_t *)malloc(cap);
    rc_rx_t rx;
    int first = 1;
    rc_rx_init(&rx, buf, cap);
    putchar('[');
    while (len > 0) {
        size_t used = 0;
        rc_rx_event_t event = rc_rx_push(&rx, data, len, &used);
        rc_frame_t frame;
        data += used;
        len -= used;
        if (event == RC_RX_NONE) {
            continue;
        }
        printf("%s", first ? "" : ", ");
        first = 0;
        if (event == RC_RX_CHUNK) {
            put_frame(rc_chunk_decode(rx.buf, rx.len, &frame), &frame);
        } else {
            printf("{\"error\": \"%s\"}", rc_frame_reason(RC_FRAME_OVERSIZE));
        }
    }
    putchar(']');
    free(buf);
}

static void cmd_body(uint8_t *data, size_t len)
{
    rc_frame_t frame;
    put_frame(rc_body_check(data, len, &frame), &frame);
}

static void cmd_uncobs(uint8_t *data, size_t len)
{
    size_t n;
    if (rc_cobs_decode(data, len, data, len, &n) != 0) {
        printf("{\"error\": \"cobs\"}");
        return;
    }
    printf("{\"body\": ");
    put_hex(data, n);
    putchar('}');
}

static void cmd_digest(const char *name, const uint8_t *data, size_t len)
{
    if (strcmp(name, "crc") == 0) {
        printf("{\"crc\": %lu}", (unsigned long)rc_crc32(data, len));
    } else if (strcmp(name, "sha256") == 0) {
        uint8_t digest[RC_SHA256_SIZE];
        rc_sha256(data, len, digest);
        printf("{\"sha256\": ");
        put_hex(digest, sizeof digest);
        putchar('}');
    } else { /* cobs */
        uint8_t *out = (uint8_t *)malloc(rc_cobs_max_encoded(len));
        size_t n = rc_cobs_encode(data, len, out, rc_cobs_max_encoded(len));
        printf("{\"cobs\": ");
        put_hex(out, n);
        putchar('}');
        free(out);
    }
}

static void put_text(const char *text)
{
    rc_bytes_t s;
    s.ptr = (const uint8_t *)text;
    s.len = strlen(text);
    put_str(s);
}

static void cmd_espdl(const uint8_t *data, size_t len)
{
    rc_espdl_need_t need;
    char err[256] = "";
    rc_error_t code = rc_espdl_need(data, len, &need, err, sizeof err);
    if (code != RC_OK) {
        printf("{\"code\": %d, \"text\": ", (int)code);
        put_text(err);
        putchar('}');
        return;
    }
    printf("{\"version\": %u, \"flatbuffer_bytes\": %lu, \"nodes\": %lu, \"tensors\": %lu, \"unsized\": %lu, "
           "\"tensor_bytes\": %llu, \"largest_tensor\": %llu, \"state_bytes\": %llu, \"object_bytes\": %llu, "
           "\"need_bytes\": %llu, \"block_bytes\": %llu, \"description\": ",
           need.version, (unsigned long)need.flatbuffer_bytes, (unsigned long)need.nodes, (unsigned long)need.tensors,
           (unsigned long)need.unsized, (unsigned long long)need.tensor_bytes,
           (unsigned long long)need.largest_tensor, (unsigned long long)need.state_bytes,
           (unsigned long long)need.object_bytes, (unsigned long long)need.need_bytes,
           (unsigned long long)need.block_bytes);
    rc_espdl_describe(&need, err, sizeof err);
    put_text(err);
    putchar('}');
}

/* Numeric commands: 1 when `line` was one of them (and answered). */
static int numeric_command(const char *line, char *arg)
{
    unsigned long long v[4] = {0, 0, 0, 0};
    char *end = arg;
    int i, count = strcmp(line, "cycles") == 0 ? 3 : strcmp(line, "memcheck") == 0 ? 4 : 0;
    if (count == 0) {
        return 0;
    }
    for (i = 0; i < count; i++) {
        v[i] = strtoull(end, &end, 10);
    }
    if (strcmp(line, "cycles") == 0) {
        printf("{\"cycles\": %llu}",
               (unsigned long long)rc_cycles_widen((uint32_t)v[0], (uint64_t)v[1], (uint32_t)v[2]));
    } else {
        rc_espdl_need_t need;
        char err[256] = "";
        rc_error_t code;
        memset(&need, 0, sizeof need);
        need.need_bytes = v[0];
        need.block_bytes = v[1];
        code = rc_memory_check(&need, v[2], v[3], err, sizeof err);
        printf("{\"code\": %d, \"text\": ", (int)code);
        put_text(err);
        putchar('}');
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------- input */

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
        return c - 'a' + 10;
    }
    return c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Hex text into bytes, in place; -1 when it is not hex. */
static long unhex(char *text)
{
    size_t n = strlen(text), i;
    uint8_t *out = (uint8_t *)text;
    if (n % 2) {
        return -1;
    }
    for (i = 0; i < n / 2; i++) {
        int hi = hex_digit(text[2 * i]), lo = hex_digit(text[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            return -1;
        }
        out[i] = (uint8_t)(hi * 16 + lo);
    }
    return (long)(n / 2);
}

/* One line from stdin, any length; NULL at the end. */
static char *read_line(char **buf, size_t *cap)
{
    size_t n = 0;
    int c;
    while ((c = getchar()) != EOF && c != '\n') {
        if (n + 1 >= *cap) {
            char *grown = (char *)realloc(*buf, *cap ? *cap * 2 : 4096);
            if (grown == NULL) {
                return NULL;
            }
            *buf = grown;
            *cap = *cap ? *cap * 2 : 4096;
        }
        (*buf)[n++] = (char)c;
    }
    if (c == EOF && n == 0) {
        return NULL;
    }
    if (*buf == NULL) {
        *buf = (char *)malloc(1);
        *cap = 1;
    }
    (*buf)[n] = '\0';
    return *buf;
}

static void run_command(char *line, size_t *max_payload)
{
    char *arg = strchr(line, ' ');
    long n;
    arg = arg == NULL ? line + strlen(line) : (*arg = '\0', arg + 1);
    if (strcmp(line, "max_payload") == 0) {
        *max_payload = (size_t)strtoul(arg, NULL, 10);
        printf("{\"max_payload\": %lu}", (unsigned long)*max_payload);
        return;
    }
    if (numeric_command(line, arg)) {
        return;
    }
    n = unhex(arg);
    if (n < 0) {
        printf("{\"fatal\": \"not hex\"}");
    } else if (strcmp(line, "wire") == 0) {
        cmd_wire((const uint8_t *)arg, (size_t)n, *max_payload);
    } else if (strcmp(line, "body") == 0) {
        cmd_body((uint8_t *)arg, (size_t)n);
    } else if (strcmp(line, "uncobs") == 0) {
        cmd_uncobs((uint8_t *)arg, (size_t)n);
    } else if (strcmp(line, "crc") == 0 || strcmp(line, "sha256") == 0 || strcmp(line, "cobs") == 0) {
        cmd_digest(line, (const uint8_t *)arg, (size_t)n);
    } else if (strcmp(line, "espdl") == 0) {
        cmd_espdl((const uint8_t *)arg, (size_t)n);
    } else {
        printf("{\"fatal\": \"unknown command\"}");
    }
}

int main(void)
{
    char *buf = NULL, *line;
    size_t cap = 0, max_payload = RC_MAX_PAYLOAD_LIMIT;
    while ((line = read_line(&buf, &cap)) != NULL) {
        run_command(line, &max_payload);
        putchar('\n');
    }
    free(buf);
    return 0;
}
