/*
 * The runner's state machine (runner_core.h): receiving and sending frames, sequence numbers, HELLO, model
 * uploads, CONFIGURE, RESET, and the dispatch of every request. It behaves like harness/virtual_board.py's
 * Board, the reference; where docs/protocol.md says more than Board does, it follows the document. The
 * stream itself (FRAMES, FLUSH) is rc_stream.c.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "rc_internal.h"
#include "rc_sha256.h"

/* ------------------------------------------------------------------------------------- sending */

static void flush_stage(rc_runner_t *r)
{
    if (r->stage_len > 0) {
        r->pf.write(r->pf.ctx, r->stage, r->stage_len);
        r->stage_len = 0;
    }
}

/* COBS hands out a frame in small pieces: gather them so the platform sees few, large writes. */
static void stage_bytes(void *ctx, const uint8_t *data, size_t len)
{
    rc_runner_t *r = (rc_runner_t *)ctx;
    while (len > 0) {
        size_t take = sizeof r->stage - r->stage_len;
        take = take < len ? take : len;
        memcpy(r->stage + r->stage_len, data, take);
        r->stage_len += take;
        data += take;
        len -= take;
        if (r->stage_len == sizeof r->stage) {
            flush_stage(r);
        }
    }
}

/* Sends one frame with the next seq; 0 (and no seq used) when msg cannot be encoded. */
int rc_send(rc_runner_t *r, const rc_message_t *msg)
{
    static const uint8_t delimiter = 0;
    size_t n = r->tx == NULL ? 0 : rc_body_encode(msg, r->tx_seq, r->tx, r->tx_cap);
    if (n == 0) {
        return 0;
    }
    r->sending = 1;
    rc_cobs_encode_stream(r->tx, n, stage_bytes, r);
    stage_bytes(r, &delimiter, 1);
    flush_stage(r);
    r->sending = 0;
    r->tx_seq++;
    return 1;
}

static rc_bytes_t text_view(const char *text)
{
    rc_bytes_t v;
    v.ptr = (const uint8_t *)(text == NULL ? "" : text);
    v.len = strlen((const char *)v.ptr);
    return v;
}

static void send_log(rc_runner_t *r, rc_log_level_t level, const char *text)
{
    char line[RC_LINE_MAX];
    rc_message_t msg;
    if (r->sending) {
        return; /* a frame is being written (the platform logged from write()): LOG frames may be dropped */
    }
    (void)rc_utf8_sanitize(text == NULL ? "" : text, text == NULL ? 0 : strlen(text), line, sizeof line);
    msg.type = RC_MSG_LOG;
    msg.u.log.level = (uint8_t)level;
    msg.u.log.text = text_view(line);
    (void)rc_send(r, &msg);
}

static void send_error(rc_runner_t *r, rc_error_t code, uint8_t ref_type, uint16_t ref_seq, const char *text)
{
    char clean[RC_TEXT_MAX];
    rc_message_t msg;
    (void)rc_utf8_sanitize(text, strlen(text), clean, sizeof clean); /* names from the host may be cut mid-character */
    msg.type = RC_MSG_ERROR;
    msg.u.error.code = (uint16_t)code;
    msg.u.error.ref_type = ref_type;
    msg.u.error.ref_seq = ref_seq;
    msg.u.error.text = text_view(clean);
    (void)rc_send(r, &msg);
}

static void send_ack(rc_runner_t *r, uint8_t ref_type, uint16_t ref_seq, rc_bytes_t detail)
{
    rc_message_t msg;
    msg.type = RC_MSG_ACK;
    msg.u.ack.ref_type = ref_type;
    msg.u.ack.ref_seq = ref_seq;
    msg.u.ack.detail = detail;
    (void)rc_send(r, &msg);
}

void rc_send_credit(rc_runner_t *r, uint16_t frames)
{
    rc_message_t msg;
    msg.type = RC_MSG_CREDIT;
    msg.u.credit.frames = frames;
    (void)rc_send(r, &msg);
}

/* ------------------------------------------------------------------------------------- helpers */

rc_error_t rc_fail(rc_runner_t *r, rc_error_t code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    (void)vsnprintf(r->text, sizeof r->text, fmt, ap);
    va_end(ap);
    return code;
}

rc_error_t rc_error_code(rc_error_t code)
{
    return code >= RC_ERR_BAD_FRAME && code <= RC_ERR_INTERNAL ? code : RC_ERR_INTERNAL;
}

int rc_module_reported(const rc_runner_t *r, unsigned module)
{
    return module + 1u == r->module_count || (r->flags & RC_CONFIGURE_FLAG_ALL_OUTPUTS) != 0;
}

/* ------------------------------------------------------------------------------ configuration */

/* Forgets the configuration: until the next successful CONFIGURE, FRAMES/FLUSH/RESET are NOT_CONFIGURED. */
static void unconfigure(rc_runner_t *r)
{
    rc_stream_release(r);
    r->pf.backend->modules_clear(r->pf.ctx);
    r->configured = 0;
    r->module_count = 0;
}

static rc_error_t copy_name(rc_runner_t *r, unsigned k, const char *role, rc_bytes_t name, char *out)
{
    if (name.len >= RC_MAX_NAME) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: %s name of %lu bytes, this runner takes at most %u", k,
                       role, (unsigned long)name.len, RC_MAX_NAME - 1u);
    }
    if (memchr(name.ptr, 0, name.len) != NULL) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: %s name contains a 0x00 byte", k, role);
    }
    memcpy(out, name.ptr, name.len);
    out[name.len] = '\0';
    return RC_OK;
}

static int valid_bits(unsigned bits)
{
    return bits == 8 || bits == 16;
}

/* "[1, 3, 16]" into out. */
static void shape_text(const rc_shape_t *shape, char *out, size_t cap)
{
    size_t n = 0;
    unsigned i;
    out[0] = '\0';
    for (i = 0; i < shape->rank && i < RC_MAX_RANK && n < cap; i++) {
        int w = snprintf(out + n, cap - n, "%s%lu", i ? ", " : "[", (unsigned long)shape->dims[i]);
        n += w > 0 ? (size_t)w : 0;
    }
    if (n < cap) {
        (void)snprintf(out + n, cap - n, "%s", shape->rank ? "]" : "[]");
    }
}

/* Frames and channels of module k's output from the shape the backend reports (docs/protocol.md section 5,
 * CONFIGURE): NWC/NCW a 3-D [1, F, C] / [1, C, F] tensor with F = W before the last module and any F >= 1 in
 * it; FLAT (the last module only, checked before binding) any other tensor, as 1 frame of its elements. */
static rc_error_t output_geometry(rc_runner_t *r, unsigned k)
{
    rc_module_t *m = &r->modules[k];
    const rc_shape_t *s = &m->info.output_shape;
    const int last = k + 1u == r->module_count;
    uint32_t frames, channels;
    char dims[96];
    if (s->rank > RC_MAX_RANK) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: output '%s' has rank %u, this runner takes at most %u", k,
                       m->cfg.output, s->rank, RC_MAX_RANK);
    }
    shape_text(s, dims, sizeof dims);
    if (m->cfg.output_layout == RC_LAYOUT_FLAT) {
        uint64_t elements = 1;
        unsigned i;
        if (s->rank == 3) {
            return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: output '%s' is %s, 3-D: its layout is NWC or NCW, not FLAT",
                           k, m->cfg.output, dims);
        }
        for (i = 0; i < s->rank; i++) {
            elements = elements * s->dims[i] > 0xFFFFu ? 0x10000u : elements * s->dims[i];
        }
        if (elements < 1 || elements > 0xFFFFu) {
            return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: output '%s' is %s: a FLAT output has 1..65535 elements", k,
                           m->cfg.output, dims);
        }
        m->info.output_frames = 1;
        m->info.output_channels = (uint16_t)elements;
        return RC_OK;
    }
    if (s->rank != 3 || s->dims[0] != 1) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: output '%s' is %s, not 3-D [1, ., .]: %s", k, m->cfg.output,
                       dims, last ? "make its layout FLAT (2)" : "only the last module's output may be FLAT");
    }
    frames = m->cfg.output_layout == RC_LAYOUT_NWC ? s->dims[1] : s->dims[2];
    channels = m->cfg.output_layout == RC_LAYOUT_NWC ? s->dims[2] : s->dims[1];
    if (frames < 1 || frames > 0xFFFFu || channels < 1 || channels > 0xFFFFu) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: output '%s' is %s: NWC and NCW take 1..65535 frames and "
                       "channels", k, m->cfg.output, dims);
    }
    if (frames != r->window && !last) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: output '%s' has %lu frames per window, not %u: only the last "
                       "module's may differ", k, m->cfg.output, (unsigned long)frames, r->window);
    }
    m->info.output_frames = (uint16_t)frames;
    m->info.output_channels = (uint16_t)channels;
    return RC_OK;
}

/* Module k from its CONFIGURE record: the slot must hold a model, the backend resolves and checks the tensors. */
static rc_error_t bind_module(rc_runner_t *r, unsigned k, const rc_module_record_t *rec)
{
    rc_module_t *m = &r->modules[k];
    rc_error_t code;
    char why[RC_TEXT_MAX];
    if (rec->slot >= RC_MAX_SLOTS || r->slots[rec->slot].state != RC_SLOT_LOADED) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: slot %u holds no model", k, rec->slot);
    }
    memset(m, 0, sizeof *m);
    m->cfg.slot = rec->slot;
    m->cfg.input_layout = (rc_layout_t)rec->input_layout;
    m->cfg.output_layout = (rc_layout_t)rec->output_layout;
    if ((code = copy_name(r, k, "input", rec->input, m->cfg.input)) != RC_OK ||
        (code = copy_name(r, k, "output", rec->output, m->cfg.output)) != RC_OK ||
        (code = copy_name(r, k, "cache_input", rec->cache_input, m->cfg.cache_input)) != RC_OK ||
        (code = copy_name(r, k, "cache_output", rec->cache_output, m->cfg.cache_output)) != RC_OK) {
        return code;
    }
    if (m->cfg.output_layout == RC_LAYOUT_FLAT && k + 1u < r->module_count) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: output '%s' is FLAT: only the last module's output (module "
                       "%u) may be", k, m->cfg.output, r->module_count - 1u);
    }
    if ((rec->cache_input.len == 0) != (rec->cache_output.len == 0)) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: give both cache tensors or neither", k);
    }
    why[0] = '\0';
    code = r->pf.backend->module_bind(r->pf.ctx, (uint8_t)k, &m->cfg, r->window, &m->info, why, sizeof why);
    if (code != RC_OK) {
        return rc_fail(r, rc_error_code(code), "module %u: %s", k, why);
    }
    if ((code = output_geometry(r, k)) != RC_OK) {
        return code;
    }
    if (!valid_bits(m->info.input_bits) || !valid_bits(m->info.output_bits) || m->info.input_channels == 0) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: tensors of %u/%u bits, %u input channels are not supported",
                       k, m->info.input_bits, m->info.output_bits, m->info.input_channels);
    }
    m->in_bytes = (size_t)r->window * m->info.input_channels * (m->info.input_bits / 8u);
    m->out_bytes = (size_t)m->info.output_frames * m->info.output_channels * (m->info.output_bits / 8u);
    return RC_OK;
}

static rc_error_t bind_modules(rc_runner_t *r, const rc_configure_t *m)
{
    const uint8_t *p = m->modules.ptr;
    size_t left = m->modules.len;
    unsigned k;
    for (k = 0; k < m->module_count; k++) {
        rc_module_record_t rec;
        size_t used = rc_module_record_read(p, left, &rec); /* cannot fail: unpack checked every record */
        rc_error_t code = bind_module(r, k, &rec);
        if (code != RC_OK) {
            return code;
        }
        p += used;
        left -= used;
    }
    for (k = 1; k < m->module_count; k++) {
        if (r->modules[k - 1].info.output_channels != r->modules[k].info.input_channels) {
            return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u gives %u channels, module %u takes %u", k - 1,
                           r->modules[k - 1].info.output_channels, k, r->modules[k].info.input_channels);
        }
    }
    return RC_OK;
}

/* One OUTPUT of a reported module must fit max_payload (section 5, CONFIGURE), except that a single window too
 * large for one goes out in parts (section 7.7): output_batch 1 and at least one frame per part. A window's
 * output is F frames (the module's output_frames), not W: the last module's may be fewer, FLAT is 1 and never
 * goes in parts. */
static rc_error_t check_batches(rc_runner_t *r)
{
    unsigned k;
    for (k = 0; k < r->module_count; k++) {
        rc_module_t *m = &r->modules[k];
        uint32_t fit;
        m->part_frames = 0;
        if (!rc_module_reported(r, k)) {
            continue;
        }
        fit = rc_max_windows_per_output(r->pf.max_payload, m->info.output_frames, m->info.output_channels,
                                        m->info.output_bits, k + 1);
        if (fit == 0 && m->cfg.output_layout == RC_LAYOUT_FLAT) {
            return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: FLAT output of %u x int%u (%lu bytes) does not fit one "
                           "OUTPUT of %u bytes and cannot be sent in parts", k, m->info.output_channels,
                           m->info.output_bits, (unsigned long)m->out_bytes, r->pf.max_payload);
        }
        if (r->output_batch > 1 && r->output_batch > fit) {
            return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: %u windows of %u x %u do not fit one OUTPUT of %u bytes%s",
                           k, r->output_batch, m->info.output_frames, m->info.output_channels, r->pf.max_payload,
                           fit == 0 ? " (one window goes in parts with output_batch 1)" : "");
        }
        if (fit == 0) {
            uint32_t per_part = rc_max_frames_per_part(r->pf.max_payload, m->info.output_channels,
                                                       m->info.output_bits, k + 1);
            if (per_part == 0) {
                return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: one frame of %u x int%u does not fit an OUTPUT part "
                               "of %u bytes", k, m->info.output_channels, m->info.output_bits, r->pf.max_payload);
            }
            m->part_frames = (uint16_t)per_part;
        }
    }
    return RC_OK;
}

/* One run of every module on a window of zeros before the stream starts: ESP-DL allocates some buffers at a
 * model's first run (StreamingCache's cache, lookup tables), which would otherwise be timed as part of window
 * 0. Output and timing are dropped; rc_stream_restart(), which must follow, resets every module, so the
 * warm-up leaves no state behind. */
static rc_error_t warm_up(rc_runner_t *r)
{
    uint8_t *zeros = r->tasks[0].data; /* task_cap >= 1, each task's buffer holds any module's input */
    unsigned k;
    for (k = 0; k < r->module_count; k++) {
        rc_timing_t timing = {0, 0};
        char why[RC_TEXT_MAX / 2];
        rc_error_t code;
        memset(zeros, 0, r->modules[k].in_bytes);
        why[0] = '\0';
        code = r->pf.backend->module_run(r->pf.ctx, (uint8_t)k, zeros, r->scratch, &timing, why, sizeof why);
        if (code != RC_OK) {
            return rc_fail(r, rc_error_code(code), "module %u, warm-up run: %s", k, why);
        }
    }
    return RC_OK;
}

static rc_error_t handle_configure(rc_runner_t *r, const rc_configure_t *m, rc_bytes_t *detail)
{
    rc_error_t code;
    unsigned k;
    unconfigure(r); /* a failed CONFIGURE leaves the device unconfigured */
    if (m->flags & ~RC_CONFIGURE_FLAG_ALL_OUTPUTS) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "reserved flag bits set: 0x%02x", m->flags);
    }
    if (m->module_count == 0 || m->window < 1) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "need at least one module and a window of at least one frame");
    }
    if (m->module_count > RC_MAX_MODULES) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "%u modules, this runner takes at most %u", m->module_count,
                       RC_MAX_MODULES);
    }
    r->window = m->window;
    r->schedule = m->schedule;
    r->flags = m->flags;
    r->queue_depth = m->queue_depth ? m->queue_depth : RC_DEFAULT_QUEUE_DEPTH;
    r->output_batch = m->output_batch ? m->output_batch : 1;
    r->module_count = m->module_count;
    code = bind_modules(r, m);
    if (code == RC_OK) {
        code = check_batches(r);
    }
    if (code == RC_OK) {
        code = rc_stream_allocate(r);
    }
    if (code == RC_OK) {
        code = warm_up(r);
    }
    if (code != RC_OK) {
        unconfigure(r);
        return code;
    }
    r->configured = 1;
    rc_stream_restart(r); /* after warm_up(): every module back to its zero state */
    for (k = 0; k < r->module_count; k++) {
        rc_ack_module_put(r->ack_detail + k * RC_ACK_MODULE_SIZE, &r->modules[k].info);
    }
    detail->ptr = r->ack_detail;
    detail->len = (size_t)r->module_count * RC_ACK_MODULE_SIZE;
    return RC_OK;
}

/* -------------------------------------------------------------------------------------- models */

/* Empties a slot: an upload is abandoned, a loaded model is unloaded (and with it the configuration). */
static void release_slot(rc_runner_t *r, unsigned slot)
{
    rc_slot_t *s = &r->slots[slot];
    if (s->state == RC_SLOT_LOADED) {
        unconfigure(r); /* the configuration may run this model */
        r->pf.backend->model_unload(r->pf.ctx, (uint8_t)slot);
    }
    if (s->data != NULL) {
        r->pf.free(r->pf.ctx, s->data);
    }
    memset(s, 0, sizeof *s);
}

static rc_slot_t *upload_of(rc_runner_t *r, uint8_t slot)
{
    return slot < RC_MAX_SLOTS && r->slots[slot].state == RC_SLOT_UPLOADING ? &r->slots[slot] : NULL;
}

static rc_error_t handle_model_begin(rc_runner_t *r, const rc_model_begin_t *m, rc_bytes_t *detail)
{
    static const uint8_t kept = RC_MODEL_KEPT;
    uint8_t *data;
    rc_slot_t *s;
    if (m->slot >= RC_MAX_SLOTS) {
        return rc_fail(r, RC_ERR_BAD_PAYLOAD, "slot %u >= %u", m->slot, RC_MAX_SLOTS);
    }
    s = &r->slots[m->slot];
    if (s->state == RC_SLOT_LOADED && s->size == m->size && memcmp(s->sha256, m->sha256, sizeof s->sha256) == 0) {
        unconfigure(r); /* as for any MODEL_BEGIN: the host configures again */
        detail->ptr = &kept; /* already loaded (its SHA-256 was checked at MODEL_END): no chunks, no MODEL_END */
        detail->len = 1;
        return RC_OK;
    }
    /* allocated before the old model goes: a refused upload leaves the slot as it was */
    data = (uint8_t *)r->pf.alloc(r->pf.ctx, m->size > 0 ? m->size : 1);
    if (data == NULL) {
        return rc_fail(r, RC_ERR_OUT_OF_MEMORY, "model of %lu bytes does not fit in memory", (unsigned long)m->size);
    }
    release_slot(r, m->slot);
    s = &r->slots[m->slot];
    s->data = data;
    s->size = m->size;
    memcpy(s->sha256, m->sha256, sizeof s->sha256);
    (void)rc_utf8_sanitize((const char *)m->name.ptr, m->name.len, s->name, sizeof s->name);
    s->state = RC_SLOT_UPLOADING;
    return RC_OK;
}

static rc_error_t handle_model_chunk(rc_runner_t *r, const rc_model_chunk_t *m)
{
    rc_slot_t *s = upload_of(r, m->slot);
    if (s == NULL) {
        return rc_fail(r, RC_ERR_BAD_PAYLOAD, "no MODEL_BEGIN for slot %u", m->slot);
    }
    if (m->offset != s->received || (uint64_t)m->offset + m->data.len > s->size) {
        rc_error_t code = rc_fail(r, RC_ERR_BAD_PAYLOAD, "chunk at %lu (+%lu), have %lu of %lu",
                                  (unsigned long)m->offset, (unsigned long)m->data.len, (unsigned long)s->received,
                                  (unsigned long)s->size);
        release_slot(r, m->slot); /* the upload is abandoned: restart with MODEL_BEGIN */
        return code;
    }
    if (m->data.len > 0) {
        memcpy(s->data + s->received, m->data.ptr, m->data.len);
    }
    s->received += (uint32_t)m->data.len;
    return RC_OK;
}

/* Size, SHA-256, then the backend's load; any failure closes the upload. */
static rc_error_t check_and_load(rc_runner_t *r, uint8_t slot)
{
    rc_slot_t *s = &r->slots[slot];
    uint8_t digest[RC_SHA256_SIZE];
    char why[RC_TEXT_MAX];
    rc_error_t code;
    if (s->received != s->size) {
        return rc_fail(r, RC_ERR_BAD_PAYLOAD, "slot %u: received %lu of %lu bytes", slot, (unsigned long)s->received,
                       (unsigned long)s->size);
    }
    rc_sha256(s->data, s->size, digest);
    if (memcmp(digest, s->sha256, sizeof digest) != 0) {
        return rc_fail(r, RC_ERR_MODEL_SHA_MISMATCH, "slot %u: SHA-256 of the %lu bytes differs", slot,
                       (unsigned long)s->size);
    }
    why[0] = '\0';
    code = r->pf.backend->model_load(r->pf.ctx, slot, s->data, s->size, s->name, why, sizeof why);
    if (code != RC_OK) {
        return rc_fail(r, rc_error_code(code), "%s: %s", s->name, why);
    }
    return RC_OK;
}

static rc_error_t handle_model_end(rc_runner_t *r, const rc_model_end_t *m)
{
    rc_error_t code;
    if (upload_of(r, m->slot) == NULL) {
        return rc_fail(r, RC_ERR_BAD_PAYLOAD, "no MODEL_BEGIN for slot %u", m->slot);
    }
    code = check_and_load(r, m->slot);
    if (code != RC_OK) {
        release_slot(r, m->slot);
        return code;
    }
    r->slots[m->slot].state = RC_SLOT_LOADED;
    return RC_OK;
}

/* ------------------------------------------------------------------------------------ requests */

static rc_error_t handle_hello(rc_runner_t *r, const rc_hello_t *m)
{
    rc_message_t msg;
    r->tx_seq = 0; /* the reply to HELLO, INFO or ERROR, has seq 0 (section 4) */
    if (m->min_version > RC_PROTOCOL_VERSION || m->max_version < RC_PROTOCOL_VERSION) {
        return rc_fail(r, RC_ERR_VERSION_UNSUPPORTED, "supported versions: %u", RC_PROTOCOL_VERSION);
    }
    r->greeted = 1;
    msg.type = RC_MSG_INFO;
    msg.u.info.version = RC_PROTOCOL_VERSION;
    msg.u.info.max_payload = r->pf.max_payload;
    msg.u.info.credits = r->pf.credits; /* frames are stepped as they arrive: all of them are free again */
    msg.u.info.free_internal_bytes = r->pf.free_internal_bytes(r->pf.ctx);
    msg.u.info.free_psram_bytes = r->pf.free_psram_bytes(r->pf.ctx);
    msg.u.info.target = text_view(r->pf.target);
    msg.u.info.build_id = text_view(r->pf.build_id);
    msg.u.info.esp_dl_version = text_view(r->pf.esp_dl_version);
    msg.u.info.idf_version = text_view(r->pf.idf_version);
    msg.u.info.device_kind = text_view(r->pf.device_kind);
    if (!rc_send(r, &msg)) {
        return rc_fail(r, RC_ERR_INTERNAL, "INFO does not fit max_payload %u, or a platform string is not UTF-8",
                       r->pf.max_payload);
    }
    return RC_OK;
}

static rc_error_t require_configured(rc_runner_t *r, const char *request)
{
    return r->configured ? RC_OK : rc_fail(r, RC_ERR_NOT_CONFIGURED, "%s before CONFIGURE", request);
}

/* One name of the PROBE into *t, described by the backend, its NUL-terminated copy in `text` (RC_MAX_NAME bytes);
 * *bytes += the 8-byte aligned size of its capture buffer. */
static rc_error_t describe_probe_tensor(rc_runner_t *r, const rc_probe_msg_t *m, rc_bytes_t name,
                                        rc_probe_tensor_t *t, char *text, uint64_t *bytes)
{
    uint64_t elements = 1;
    char why[RC_TEXT_MAX];
    rc_error_t code;
    unsigned i;
    if (name.len >= RC_MAX_NAME) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: tensor name of %lu bytes, this runner takes at most %u",
                       m->module, (unsigned long)name.len, RC_MAX_NAME - 1u);
    }
    if (memchr(name.ptr, 0, name.len) != NULL) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: tensor name contains a 0x00 byte", m->module);
    }
    memcpy(text, name.ptr, name.len);
    text[name.len] = '\0';
    memset(t, 0, sizeof *t);
    t->name = text;
    why[0] = '\0';
    code = r->pf.backend->probe_find(r->pf.ctx, m->module, text, t, why, sizeof why);
    if (code != RC_OK) {
        return rc_fail(r, rc_error_code(code), "module %u: %s", m->module, why);
    }
    if ((t->bits != 8 && t->bits != 16 && t->bits != 32) || t->shape.rank > RC_MAX_TENSOR_RANK) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: tensor '%s' of %u bits and rank %u cannot be captured",
                       m->module, text, t->bits, t->shape.rank);
    }
    if (t->bits == 32) {
        t->exponent = 0;
    }
    for (i = 0; i < t->shape.rank; i++) {
        elements = elements > 0xFFFFFFFFu ? elements : elements * t->shape.dims[i];
    }
    if (elements > 0xFFFFFFFFu) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: tensor '%s' has more than 2^32 - 1 elements", m->module,
                       text);
    }
    if (elements > 0 && rc_max_elements_per_tensor(r->pf.max_payload, t->shape.rank, name.len, t->bits) == 0) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: tensor '%s' does not fit a TENSOR of %u bytes", m->module,
                       text, r->pf.max_payload);
    }
    *bytes += (elements * (t->bits / 8u) + 7u) / 8u * 8u; /* each buffer 8-byte aligned */
    return RC_OK;
}

/* PROBE (docs/protocol.md 0x0A): discards an armed probe, checks module, window and names, reserves the capture
 * buffers and arms the new one; run_head() in rc_stream.c captures and sends it. */
static rc_error_t handle_probe(rc_runner_t *r, const rc_probe_msg_t *m)
{
    const uint8_t *p = m->names.ptr;
    size_t left = m->names.len, table;
    uint64_t bytes = 0;
    rc_probe_tensor_t *tensors;
    char *text;
    uint8_t *data;
    unsigned i;
    rc_error_t code;
    rc_probe_disarm(r);
    if ((code = require_configured(r, "PROBE")) != RC_OK) {
        return code;
    }
    if (m->module >= r->module_count) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: the configuration has %u modules", m->module,
                       r->module_count);
    }
    if (r->pf.backend->probe_find == NULL || r->pf.backend->module_run_probed == NULL) {
        return rc_fail(r, RC_ERR_BAD_CONFIG, "module %u: this runner cannot capture tensors", m->module);
    }
    if (m->window < r->runs[m->module]) {
        return rc_fail(r, RC_ERR_BAD_CONFIG,
                       "module %u has already run window %lu (%lu runs since RESET): arm a probe before its window runs",
                       m->module, (unsigned long)m->window,
                       (unsigned long)r->runs[m->module]);
    }
    /* descriptors and names together; a name takes at most RC_MAX_NAME bytes with its NUL */
    table = (size_t)m->name_count * sizeof(rc_probe_tensor_t);
    tensors = (rc_probe_tensor_t *)r->pf.alloc(r->pf.ctx, table + (size_t)m->name_count * RC_MAX_NAME);
    if (tensors == NULL) {
        return rc_fail(r, RC_ERR_OUT_OF_MEMORY, "probe of %u tensors (%lu bytes) does not fit in memory",
                       m->name_count, (unsigned long)(table + (size_t)m->name_count * RC_MAX_NAME));
    }
    text = (char *)tensors + table;
    for (i = 0; i < m->name_count; i++) {
        rc_bytes_t name;
        size_t used = rc_probe_name_read(p, left, &name); /* cannot fail: unpack checked every name */
        code = describe_probe_tensor(r, m, name, &tensors[i], text + (size_t)i * RC_MAX_NAME, &bytes);
        if (code != RC_OK) {
            r->pf.free(r->pf.ctx, tensors);
            return code;
        }
        p += used;
        left -= used;
    }
    data = bytes <= (uint64_t)SIZE_MAX ? (uint8_t *)r->pf.alloc(r->pf.ctx, bytes > 0 ? (size_t)bytes : 1u) : NULL;
    if (data == NULL) {
        r->pf.free(r->pf.ctx, tensors);
        return rc_fail(r, RC_ERR_OUT_OF_MEMORY, "probe of %u tensors (%llu bytes) does not fit in memory",
                       m->name_count, (unsigned long long)bytes);
    }
    r->probe_tensors = tensors;
    r->probe_data = data;
    r->probe_count = m->name_count;
    r->probe_module = m->module;
    r->probe_window = m->window;
    for (i = 0; i < m->name_count; i++) {
        uint64_t elements = 1;
        unsigned d;
        for (d = 0; d < tensors[i].shape.rank; d++) {
            elements *= tensors[i].shape.dims[d];
        }
        tensors[i].data = data;
        data += (elements * (tensors[i].bits / 8u) + 7u) / 8u * 8u;
    }
    return RC_OK;
}

/* Runs a request of a greeted host; *detail is the ACK's detail. */
static rc_error_t handle_request(rc_runner_t *r, const rc_message_t *msg, rc_bytes_t *detail)
{
    rc_error_t code;
    switch (msg->type) {
    case RC_MSG_HELLO: return handle_hello(r, &msg->u.hello);
    case RC_MSG_MODEL_BEGIN: return handle_model_begin(r, &msg->u.model_begin, detail);
    case RC_MSG_MODEL_CHUNK: return handle_model_chunk(r, &msg->u.model_chunk);
    case RC_MSG_MODEL_END: return handle_model_end(r, &msg->u.model_end);
    case RC_MSG_CONFIGURE: return handle_configure(r, &msg->u.configure, detail);
    case RC_MSG_RESET:
        if ((code = require_configured(r, "RESET")) == RC_OK) {
            rc_stream_restart(r); /* no frames wait between messages, so no CREDIT precedes the ACK */
        }
        return code;
    case RC_MSG_PROBE: return handle_probe(r, &msg->u.probe);
    case RC_MSG_FRAMES:
        if ((code = require_configured(r, "FRAMES")) == RC_OK) {
            code = rc_stream_frames(r, &msg->u.frames);
        }
        break;
    default: /* RC_MSG_FLUSH */
        if ((code = require_configured(r, "FLUSH")) == RC_OK) {
            code = rc_stream_flush(r);
        }
        break;
    }
    if (r->run_failed) {
        unconfigure(r); /* a module failed to run: the stream cannot go on */
        r->run_failed = 0;
    }
    return code;
}

/* A gap in the host's numbering is logged, and counting goes on from the frame that arrived (section 4). */
static void track_seq(rc_runner_t *r, uint8_t type, uint16_t seq)
{
    if (type != RC_MSG_HELLO && r->expecting && seq != r->expected_seq) {
        char line[64];
        (void)snprintf(line, sizeof line, "seq gap: expected %u, got %u", r->expected_seq, seq);
        send_log(r, RC_LOG_WARNING, line);
    }
    r->expecting = 1;
    r->expected_seq = (uint16_t)(seq + 1u);
}

static void handle_message(rc_runner_t *r, uint16_t seq, const rc_message_t *msg)
{
    rc_bytes_t detail;
    rc_error_t code;
    detail.ptr = NULL;
    detail.len = 0;
    r->text[0] = '\0';
    track_seq(r, msg->type, seq);
    if (msg->type & 0x80u) {
        code = rc_fail(r, RC_ERR_UNKNOWN_MESSAGE, "%s is not a host request", rc_msg_name(msg->type));
    } else if (!r->greeted && msg->type != RC_MSG_HELLO) {
        code = rc_fail(r, RC_ERR_NOT_CONFIGURED, "send HELLO first");
    } else {
        code = handle_request(r, msg, &detail);
    }
    if (code != RC_OK) {
        send_error(r, code, msg->type, seq, r->text);
        if (msg->type == RC_MSG_FRAMES && code != RC_ERR_CREDIT_EXCEEDED) {
            rc_send_credit(r, msg->u.frames.count); /* a dropped message's frames are credited back */
        }
    } else if (msg->type != RC_MSG_HELLO && msg->type != RC_MSG_FRAMES) {
        send_ack(r, msg->type, seq, detail);
    }
}

/* ------------------------------------------------------------------------------------- receiving */

/* A chunk that is not a usable frame: BAD_FRAME for framing errors, else UNKNOWN_MESSAGE / BAD_PAYLOAD
 * referencing the frame (section 3.4). The frame itself is never acted on. */
static void frame_error(rc_runner_t *r, rc_frame_status_t status, const rc_frame_t *frame, const char *why)
{
    char text[RC_TEXT_MAX];
    (void)snprintf(text, sizeof text, "bad frame (%s)%s%s", rc_frame_reason(status), why[0] ? ": " : "", why);
    if (status == RC_FRAME_UNKNOWN_TYPE) {
        send_error(r, RC_ERR_UNKNOWN_MESSAGE, frame->type, frame->seq, text);
    } else if (status == RC_FRAME_PAYLOAD) {
        send_error(r, RC_ERR_BAD_PAYLOAD, frame->type, frame->seq, text);
    } else {
        send_error(r, RC_ERR_BAD_FRAME, 0, RC_BAD_FRAME_REF_SEQ, text);
    }
}

static void handle_chunk(rc_runner_t *r)
{
    rc_frame_t frame;
    rc_message_t msg;
    char why[RC_TEXT_MAX / 2];
    rc_frame_status_t status = rc_chunk_decode(r->rx.buf, r->rx.len, &frame);
    why[0] = '\0';
    if (status == RC_FRAME_OK) {
        status = rc_message_unpack(frame.type, frame.payload.ptr, frame.payload.len, &msg, why, sizeof why);
    }
    if (status == RC_FRAME_OK) {
        handle_message(r, frame.seq, &msg);
    } else {
        frame_error(r, status, &frame, why);
    }
}

/* --------------------------------------------------------------------------------------- public API */

size_t rc_runner_size(void)
{
    return sizeof(struct rc_runner);
}

void rc_runner_init(rc_runner_t *runner, const rc_platform_t *platform)
{
    size_t rx_cap;
    memset(runner, 0, sizeof *runner);
    runner->pf = *platform;
    if (runner->pf.max_payload < RC_MIN_MAX_PAYLOAD) {
        runner->pf.max_payload = RC_MIN_MAX_PAYLOAD; /* every device must take 256-byte payloads */
    }
    /* Without these two buffers the runner stays mute (nothing can be sent) or answers every frame with
     * BAD_FRAME (oversize); the platform sees the failed alloc() and can report it. */
    rx_cap = rc_max_wire_size(runner->pf.max_payload);
    rc_rx_init(&runner->rx, (uint8_t *)runner->pf.alloc(runner->pf.ctx, rx_cap), rx_cap);
    runner->tx_cap = RC_MIN_BODY_SIZE + runner->pf.max_payload;
    runner->tx = (uint8_t *)runner->pf.alloc(runner->pf.ctx, runner->tx_cap);
}

/* Drops everything a chip reset clears: models, uploads, configuration, link state. */
static void forget_everything(rc_runner_t *r)
{
    unsigned slot;
    unconfigure(r);
    for (slot = 0; slot < RC_MAX_SLOTS; slot++) {
        release_slot(r, slot);
    }
    rc_rx_clear(&r->rx);
    r->greeted = 0;
    r->expecting = 0;
    r->tx_seq = 0;
}

void rc_runner_boot(rc_runner_t *runner, const char *banner)
{
    static const uint8_t delimiter = 0;
    char line[RC_LINE_MAX];
    rc_message_t msg;
    forget_everything(runner);
    /* a leading 0x00 ends whatever the ROM printed, so that text is one bad chunk and BOOT survives */
    runner->pf.write(runner->pf.ctx, &delimiter, 1);
    (void)rc_utf8_sanitize(banner == NULL ? "" : banner, banner == NULL ? 0 : strlen(banner), line, sizeof line);
    msg.type = RC_MSG_BOOT;
    msg.u.boot.banner = text_view(line);
    (void)rc_send(runner, &msg);
}

void rc_runner_feed(rc_runner_t *runner, const uint8_t *data, size_t len)
{
    while (len > 0) {
        size_t used = 0;
        rc_rx_event_t event = rc_rx_push(&runner->rx, data, len, &used);
        data += used;
        len -= used;
        if (event == RC_RX_CHUNK) {
            handle_chunk(runner);
        } else if (event == RC_RX_OVERSIZE) {
            frame_error(runner, RC_FRAME_OVERSIZE, NULL, "");
        }
    }
}

void rc_runner_log(rc_runner_t *runner, rc_log_level_t level, const char *text)
{
    send_log(runner, level, text);
}

uint64_t rc_cycles_widen(uint32_t cycles32, uint64_t microseconds, uint32_t cpu_mhz)
{
    const uint64_t limit = UINT64_MAX >> 1; /* keeps expected + 2^31 and k x 2^32 below 2^64 */
    uint64_t expected, k;
    if (cpu_mhz == 0) {
        return cycles32;
    }
    expected = microseconds > limit / cpu_mhz ? limit : microseconds * cpu_mhz;
    if (expected <= cycles32) {
        return cycles32; /* k would round to 0 (or to -1, a negative count) */
    }
    k = (expected - cycles32 + 0x80000000u) >> 32; /* round to the nearest multiple of 2^32 */
    return cycles32 + (k << 32);
}

void rc_runner_deinit(rc_runner_t *runner)
{
    forget_everything(runner);
    if (runner->rx.buf != NULL) {
        runner->pf.free(runner->pf.ctx, runner->rx.buf);
    }
    if (runner->tx != NULL) {
        runner->pf.free(runner->pf.ctx, runner->tx);
    }
    runner->rx.buf = NULL;
    runner->tx = NULL;
}
