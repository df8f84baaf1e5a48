/*
 * The wire protocol's codec (docs/protocol.md): CRC-32, COBS, frame bodies and every message in both
 * directions. Plain C99 without allocation: decoded messages point into the caller's buffer (strings and
 * byte fields are views), encoders write into caller-provided buffers and refuse what does not fit.
 * The device uses half of the messages; the other half is here so that the whole codec is checked against
 * docs/protocol-vectors.json and the Python codec (tests/test_firmware_core.py).
 */
#ifndef RC_CODEC_H
#define RC_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "runner_core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RC_HEADER_SIZE 5u            /* type u8, seq u16, len u16 */
#define RC_CRC_SIZE 4u
#define RC_MIN_BODY_SIZE 9u          /* header + CRC */
#define RC_MAX_PAYLOAD_LIMIT 65535u  /* len is a u16 */
#define RC_MIN_MAX_PAYLOAD 256u      /* every device accepts at least this */
#define RC_DEFAULT_MAX_PAYLOAD 4096u
#define RC_DEFAULT_QUEUE_DEPTH 4u    /* CONFIGURE.queue_depth 0 */
#define RC_FRAMES_HEADER_SIZE 8u
#define RC_MODEL_CHUNK_HEADER_SIZE 5u
#define RC_MODEL_BEGIN_FIXED_SIZE 37u /* slot, size, sha256; then the name */
#define RC_MODEL_KEPT 0x01u /* ACK detail of MODEL_BEGIN: the slot already holds this model */
#define RC_CONFIGURE_HEADER_SIZE 9u
#define RC_OUTPUT_HEADER_SIZE 19u
#define RC_OUTPUT_PART_SIZE 4u       /* a part (windows 0): part_first_frame u16, part_frames u16 */
#define RC_TIMING_SIZE 16u           /* cycles u64, microseconds u64 */
#define RC_ACK_MODULE_SIZE 7u        /* one CONFIGURE ACK detail record */
#define RC_CONFIGURE_FLAG_ALL_OUTPUTS 0x01u
#define RC_BAD_FRAME_REF_SEQ 0xFFFFu
#define RC_PROBE_HEADER_SIZE 6u      /* module u8, window u32, name_count u8; then the names */
#define RC_TENSOR_HEADER_SIZE 19u    /* module .. rank, first_element u32, the name's u16 length (+ shape, name) */
#define RC_MAX_TENSOR_RANK 8u

typedef enum {
    RC_MSG_HELLO = 0x01,
    RC_MSG_MODEL_BEGIN = 0x02,
    RC_MSG_MODEL_CHUNK = 0x03,
    RC_MSG_MODEL_END = 0x04,
    RC_MSG_CONFIGURE = 0x05,
    RC_MSG_RESET = 0x06,
    RC_MSG_FRAMES = 0x07,
    RC_MSG_FLUSH = 0x08,
    RC_MSG_PROBE = 0x0A,
    RC_MSG_ACK = 0x80,
    RC_MSG_INFO = 0x81,
    RC_MSG_OUTPUT = 0x82,
    RC_MSG_CREDIT = 0x83,
    RC_MSG_LOG = 0x84,
    RC_MSG_BOOT = 0x85,
    RC_MSG_TENSOR = 0x87,
    RC_MSG_ERROR = 0x8F
} rc_msg_type_t;

typedef enum { RC_SCHEDULE_ROUND_ROBIN = 0, RC_SCHEDULE_SEQUENTIAL = 1 } rc_schedule_t;

/* What a receiver makes of a chunk (protocol.md section 3.4); the checks run in this order. */
typedef enum {
    RC_FRAME_OK = 0,
    RC_FRAME_COBS,
    RC_FRAME_SHORT,
    RC_FRAME_LENGTH,
    RC_FRAME_CRC,
    RC_FRAME_OVERSIZE,
    RC_FRAME_UNKNOWN_TYPE, /* a good frame of an undefined type: type and seq are known */
    RC_FRAME_PAYLOAD       /* a good frame whose payload does not parse: type and seq are known */
} rc_frame_status_t;

/* A view of bytes inside some buffer: `bytes` fields, and `str` fields (UTF-8, not NUL-terminated). */
typedef struct {
    const uint8_t *ptr;
    size_t len;
} rc_bytes_t;

typedef struct {
    uint16_t min_version;
    uint16_t max_version;
} rc_hello_t;

typedef struct {
    uint8_t slot;
    uint32_t size;
    uint8_t sha256[32];
    rc_bytes_t name;
} rc_model_begin_t;

typedef struct {
    uint8_t slot;
    uint32_t offset;
    rc_bytes_t data;
} rc_model_chunk_t;

typedef struct {
    uint8_t slot;
} rc_model_end_t;

/* One CONFIGURE module record (read them with rc_module_record_read). */
typedef struct {
    uint8_t slot;
    uint8_t input_layout;  /* rc_layout_t, never FLAT (the codec refuses it) */
    uint8_t output_layout; /* rc_layout_t */
    rc_bytes_t input;
    rc_bytes_t output;
    rc_bytes_t cache_input;
    rc_bytes_t cache_output;
} rc_module_record_t;

typedef struct {
    uint16_t window;
    uint8_t schedule; /* rc_schedule_t */
    uint8_t flags;
    uint16_t queue_depth;
    uint16_t output_batch;
    uint8_t module_count;
    rc_bytes_t modules; /* module_count packed records, module 0 first */
} rc_configure_t;

typedef struct {
    uint32_t first_frame;
    uint16_t count;
    uint16_t frame_bytes;
    rc_bytes_t data; /* count x frame_bytes, time-major, LE */
} rc_frames_t;

/* PROBE (protocol.md 0x0A): capture `names` of module `module` when it runs window `window`. */
typedef struct {
    uint8_t module;
    uint32_t window;
    uint8_t name_count; /* >= 1 (the codec refuses 0) */
    rc_bytes_t names;   /* name_count packed str fields, non-empty and distinct (read them with rc_probe_name_read) */
} rc_probe_msg_t;

typedef struct {
    uint8_t ref_type;
    uint16_t ref_seq;
    rc_bytes_t detail; /* CONFIGURE: RC_ACK_MODULE_SIZE bytes per module; otherwise empty */
} rc_ack_t;

typedef struct {
    uint16_t version;
    uint16_t max_payload;
    uint16_t credits;
    uint32_t free_internal_bytes;
    uint32_t free_psram_bytes;
    rc_bytes_t target;
    rc_bytes_t build_id;
    rc_bytes_t esp_dl_version;
    rc_bytes_t idf_version;
    rc_bytes_t device_kind;
} rc_info_t;

/* Whole windows (windows >= 1), or with windows 0 a part of window `window` (protocol.md section 7.7): its
 * frames part_first_frame .. part_first_frame + part_frames - 1, whose values `data` holds in `layout` order
 * (NCW: per channel). part_first_frame and part_frames are 0 in an OUTPUT of whole windows. */
typedef struct {
    uint32_t window;
    uint16_t windows; /* 0: a part */
    uint8_t module;
    uint32_t step;
    uint8_t layout; /* rc_layout_t; FLAT: frames 1 and never a part */
    uint8_t bits;
    int8_t exponent;
    uint16_t frames;   /* F of one whole window's output, also in a part */
    uint16_t channels; /* FLAT: the output's element count */
    rc_bytes_t timings; /* RC_TIMING_SIZE bytes per module 0..k (rc_timing_get / rc_timing_put) */
    uint16_t part_first_frame;
    uint16_t part_frames;
    rc_bytes_t data;
} rc_output_t;

typedef struct {
    uint16_t frames;
} rc_credit_t;

/* TENSOR (protocol.md 0x87): a captured tensor, or with fewer elements than its shape holds a part of it. */
typedef struct {
    uint8_t module;
    uint32_t window;
    uint32_t step;
    uint8_t index; /* position of the name in PROBE's list */
    uint8_t bits;  /* 8, 16 (int8, int16) or 32 (float32, exponent 0) */
    int8_t exponent;
    uint8_t rank;  /* 0..RC_MAX_TENSOR_RANK */
    uint32_t shape[RC_MAX_TENSOR_RANK];
    uint32_t first_element;
    rc_bytes_t name;
    rc_bytes_t data; /* elements first_element.., little-endian, a whole number of them */
} rc_tensor_msg_t;

typedef struct {
    uint8_t level; /* rc_log_level_t */
    rc_bytes_t text;
} rc_log_t;

typedef struct {
    rc_bytes_t banner;
} rc_boot_t;

typedef struct {
    uint16_t code; /* rc_error_t */
    uint8_t ref_type;
    uint16_t ref_seq;
    rc_bytes_t text;
} rc_error_msg_t;

typedef struct {
    uint8_t type; /* rc_msg_type_t: selects the member of u */
    union {
        rc_hello_t hello;
        rc_model_begin_t model_begin;
        rc_model_chunk_t model_chunk;
        rc_model_end_t model_end;
        rc_configure_t configure;
        rc_frames_t frames;
        rc_probe_msg_t probe;
        rc_ack_t ack;
        rc_info_t info;
        rc_output_t output;
        rc_credit_t credit;
        rc_log_t log;
        rc_boot_t boot;
        rc_tensor_msg_t tensor;
        rc_error_msg_t error;
    } u; /* RESET and FLUSH have no fields */
} rc_message_t;

/* A body that passed the framing checks. */
typedef struct {
    uint8_t type;
    uint16_t seq;
    rc_bytes_t payload;
} rc_frame_t;

/* ------------------------------------------------------------------------------------------ names */

/* "cobs", "short", "length", "crc", "oversize", "unknown-type", "payload" (the Python FrameError.reason). */
const char *rc_frame_reason(rc_frame_status_t status);
/* "HELLO" ... "ERROR", or NULL for an undefined type. */
const char *rc_msg_name(uint8_t type);

/* ------------------------------------------------------------------------------------ CRC and COBS */

/* CRC-32/ISO-HDLC (zlib's crc32): check value 0xCBF43926 for "123456789". */
uint32_t rc_crc32(const uint8_t *data, size_t len);

/* Largest COBS encoding of len bytes (the Python cobs.max_encoded_length). */
size_t rc_cobs_max_encoded(size_t len);
/* Largest wire chunk (without its delimiter) for payloads up to max_payload: the receiver's bound. */
size_t rc_max_wire_size(size_t max_payload);

/* Canonical COBS of in (section 3.3) handed out block by block: emit() gets each code byte and each run of
 * data bytes, in order. Needs no buffer, so a frame can go straight to a serial driver. */
typedef void (*rc_emit_fn)(void *ctx, const uint8_t *data, size_t len);
void rc_cobs_encode_stream(const uint8_t *in, size_t len, rc_emit_fn emit, void *ctx);
/* The same into out (cap bytes): returns the encoded length, or 0 when it does not fit. */
size_t rc_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t cap);
/* Decodes len bytes without 0x00; out may equal in (decoding in place is safe: it never overtakes its input).
 * Returns 0 and sets *out_len, or -1 when the block structure is broken or out (cap bytes) is too small. */
int rc_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len);

/* ---------------------------------------------------------------------------------- UTF-8 and text */

/* 1 when the bytes are strict UTF-8 (what Python's bytes.decode("utf-8") accepts). */
int rc_utf8_valid(const uint8_t *data, size_t len);
/* Copies text into out (cap >= 1 bytes, NUL-terminated) as valid UTF-8 without NUL: every byte that is not
 * part of a valid sequence becomes '?', and the text is cut at a character boundary if it does not fit.
 * Returns the length written. For log lines and error texts, which must never make a frame invalid. */
size_t rc_utf8_sanitize(const char *text, size_t len, char *out, size_t cap);

/* ------------------------------------------------------------------------------------------ bodies */

/* Framing checks of a COBS-decoded body: short, length, crc. On RC_FRAME_OK fills *frame (a view of body). */
rc_frame_status_t rc_body_check(const uint8_t *body, size_t len, rc_frame_t *frame);
/* COBS-decodes a received chunk in place and checks the body: cobs, short, length, crc. */
rc_frame_status_t rc_chunk_decode(uint8_t *chunk, size_t len, rc_frame_t *frame);
/* Parses a payload: RC_FRAME_UNKNOWN_TYPE or RC_FRAME_PAYLOAD (with a one-line reason in why, if given),
 * or RC_FRAME_OK with *msg filled (its views point into payload). */
rc_frame_status_t rc_message_unpack(uint8_t type, const uint8_t *payload, size_t len, rc_message_t *msg,
                                    char *why, size_t whylen);
/* Writes msg's payload into out: its length, or RC_PACK_FAILED when it does not fit in cap bytes or is not
 * a valid message (what rc_message_unpack would refuse is never produced). */
#define RC_PACK_FAILED ((size_t)-1)
size_t rc_message_pack(const rc_message_t *msg, uint8_t *out, size_t cap);
/* type | seq | len | payload | crc into body: the body length, or 0 when msg cannot be packed into cap. */
size_t rc_body_encode(const rc_message_t *msg, uint16_t seq, uint8_t *body, size_t cap);

/* --------------------------------------------------------------------------- records inside payloads */

/* Reads one CONFIGURE module record from p (n bytes): the bytes it takes, or 0 when it is cut short or
 * invalid. Records are checked by rc_message_unpack, so reading the modules of a parsed CONFIGURE succeeds. */
size_t rc_module_record_read(const uint8_t *p, size_t n, rc_module_record_t *record);
/* Writes a module record into out: its size, or 0 when it does not fit. */
size_t rc_module_record_write(const rc_module_record_t *record, uint8_t *out, size_t cap);
/* Reads one name of a PROBE's list from p (n bytes): the bytes it takes, or 0 when it is cut short. Names are
 * checked by rc_message_unpack, so reading the names of a parsed PROBE succeeds. */
size_t rc_probe_name_read(const uint8_t *p, size_t n, rc_bytes_t *name);
rc_timing_t rc_timing_get(const rc_output_t *output, size_t module);
void rc_timing_put(uint8_t out[RC_TIMING_SIZE], const rc_timing_t *timing);
void rc_ack_module_put(uint8_t out[RC_ACK_MODULE_SIZE], const rc_module_info_t *info);

/* Most windows of frames x channels values of bits that fit one OUTPUT with `modules` timing records
 * (0: none; at most 0xFFFF): the Python max_windows_per_output. `frames` is F of one window's output. */
uint32_t rc_max_windows_per_output(size_t max_payload, uint32_t frames, uint32_t channels, unsigned bits,
                                   unsigned modules);
/* Most frames of one window an OUTPUT part of `modules` timing records carries (0: not even one; at most
 * 0xFFFF): the Python max_frames_per_part. A window that does not fit one OUTPUT goes out in parts of this many
 * frames, the last one the rest (protocol.md section 7.7). */
uint32_t rc_max_frames_per_part(size_t max_payload, uint32_t channels, unsigned bits, unsigned modules);
/* Most elements of a tensor of `rank` dimensions, named with `name_len` bytes, of `bits` (8, 16, 32) that one
 * TENSOR carries (0: not even one): the Python max_elements_per_tensor. A larger tensor goes in parts of this
 * many elements, the last one the rest (protocol.md section 7.8). */
uint32_t rc_max_elements_per_tensor(size_t max_payload, unsigned rank, size_t name_len, unsigned bits);

/* ------------------------------------------------------------------------------------------ receiver */

/* Splits a byte stream at 0x00 into chunks, bounded by a caller-provided buffer (section 3.4 rules 1-2). */
typedef struct {
    uint8_t *buf;
    size_t cap; /* rc_max_wire_size(max_payload) */
    size_t len;
    int skipping; /* after an oversize run: drop everything up to the next 0x00 */
    int holding;  /* buf holds the chunk last returned: start over at the next push */
} rc_rx_t;

typedef enum {
    RC_RX_NONE,    /* every byte consumed, no chunk complete */
    RC_RX_CHUNK,   /* rx->buf holds rx->len bytes of a non-empty chunk until the next rc_rx_push */
    RC_RX_OVERSIZE /* more than cap bytes without 0x00: one frame error; the rest of the run is dropped */
} rc_rx_event_t;

void rc_rx_init(rc_rx_t *rx, uint8_t *buf, size_t cap);
void rc_rx_clear(rc_rx_t *rx);
/* Consumes data up to and including the first event; *used tells how many bytes that took. */
rc_rx_event_t rc_rx_push(rc_rx_t *rx, const uint8_t *data, size_t len, size_t *used);

#ifdef __cplusplus
}
#endif

#endif /* RC_CODEC_H */
