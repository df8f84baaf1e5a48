/*
 * The stream (protocol.md section 7, the same rules as harness/scheduler.py): frames slide into the window
 * buffer, a completed window becomes a task, tasks run one module per step (round-robin) or all modules at
 * once (sequential), module k's output is handed to module k+1, and reported outputs are batched into
 * OUTPUT messages.
 *
 * Every pending task is ready at the step it is looked at (a follow-up task waits exactly one step, and only
 * one task runs per step), and the oldest window always goes first, so the waiting windows form a FIFO: the
 * task to run is always the one at its head.
 */
#include <string.h>

#include "rc_internal.h"
#include "rc_tensor.h"

#define ARENA_ALIGN 8u

/* ----------------------------------------------------------------------------------------- values */

/* Buffers hold native values (rc_tensor.h, what the backend reads and writes); the wire is little-endian. */
static int32_t wire_get(const uint8_t *p, size_t index, unsigned bits)
{
    if (bits == 16) {
        int32_t u = (int32_t)p[2 * index] | ((int32_t)p[2 * index + 1] << 8);
        return u >= 0x8000 ? u - 0x10000 : u;
    }
    return p[index] >= 0x80 ? (int32_t)p[index] - 0x100 : (int32_t)p[index];
}

static void wire_set(uint8_t *p, size_t index, unsigned bits, int32_t value)
{
    uint32_t u = (uint32_t)value; /* two's complement: the low bytes are the encoding */
    if (bits == 16) {
        p[2 * index] = (uint8_t)u;
        p[2 * index + 1] = (uint8_t)(u >> 8);
    } else {
        p[index] = (uint8_t)u;
    }
}

/* ------------------------------------------------------------------------------------------ arena */

static size_t align_up(size_t n)
{
    return (n + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
}

/* Adds one part of `bytes` to the arena plan; 0 when the total overflows. */
static int plan(size_t *total, uint64_t bytes)
{
    uint64_t sum = (uint64_t)*total + bytes + ARENA_ALIGN;
    if (bytes > (uint64_t)SIZE_MAX || sum > (uint64_t)SIZE_MAX) {
        return 0;
    }
    *total = align_up(*total + (size_t)bytes);
    return 1;
}

static uint8_t *carve(uint8_t **cursor, size_t bytes)
{
    uint8_t *p = *cursor;
    *cursor += align_up(bytes);
    return p;
}

rc_error_t rc_stream_allocate(rc_runner_t *r)
{
    size_t max_in = 0, max_out = 0, total = 0;
    unsigned k;
    int ok;
    uint8_t *cursor;
    /* sequential runs every module in the step its window completes: one waiting window at most */
    r->task_cap = r->schedule == RC_SCHEDULE_SEQUENTIAL ? 1 : r->queue_depth;
    for (k = 0; k < r->module_count; k++) {
        max_in = r->modules[k].in_bytes > max_in ? r->modules[k].in_bytes : max_in;
        max_out = r->modules[k].out_bytes > max_out ? r->modules[k].out_bytes : max_out;
    }
    ok = plan(&total, (uint64_t)r->task_cap * sizeof(rc_task_t)) && plan(&total, r->modules[0].in_bytes) &&
         plan(&total, (uint64_t)r->task_cap * align_up(max_in)) && plan(&total, max_out); /* slots carved one by one */
    for (k = 0; ok && k < r->module_count; k++) {
        if (rc_module_reported(r, k)) {
            ok = plan(&total, (uint64_t)r->output_batch * r->modules[k].out_bytes);
        }
    }
    r->arena = ok ? r->pf.alloc(r->pf.ctx, total) : NULL;
    if (r->arena == NULL) {
        return rc_fail(r, RC_ERR_OUT_OF_MEMORY,
                       "stream buffers (window, %u queued windows, output batches) of %lu bytes do not fit",
                       r->task_cap, (unsigned long)total);
    }
    cursor = (uint8_t *)r->arena;
    r->tasks = (rc_task_t *)(void *)carve(&cursor, (size_t)r->task_cap * sizeof(rc_task_t));
    r->window_buf = carve(&cursor, r->modules[0].in_bytes);
    for (k = 0; k < r->task_cap; k++) {
        r->tasks[k].data = carve(&cursor, max_in);
    }
    r->scratch = carve(&cursor, max_out);
    for (k = 0; k < r->module_count; k++) {
        r->batches[k].data =
            rc_module_reported(r, k) ? carve(&cursor, (size_t)r->output_batch * r->modules[k].out_bytes) : NULL;
    }
    return RC_OK;
}

void rc_stream_release(rc_runner_t *r)
{
    rc_probe_disarm(r); /* CONFIGURE and MODEL_BEGIN discard an armed probe */
    if (r->arena != NULL) {
        r->pf.free(r->pf.ctx, r->arena);
    }
    r->arena = NULL;
    r->tasks = NULL;
    r->window_buf = NULL;
    r->scratch = NULL;
    memset(r->batches, 0, sizeof r->batches);
    r->task_cap = r->task_head = r->task_count = 0;
}

void rc_stream_restart(rc_runner_t *r)
{
    unsigned k;
    memset(r->window_buf, 0, r->modules[0].in_bytes);
    r->task_head = r->task_count = 0;
    for (k = 0; k < r->module_count; k++) {
        r->batches[k].count = 0; /* a partial batch is discarded, its OUTPUT never sent */
        r->pf.backend->module_reset(r->pf.ctx, (uint8_t)k);
    }
    r->frames = r->steps = 0;
    r->stopped = 0;
    memset(r->runs, 0, sizeof r->runs);
    rc_probe_disarm(r); /* RESET and CONFIGURE discard an armed probe */
}

/* --------------------------------------------------------------------------------------- batches */

/* Sends module k's batch: one OUTPUT of b->count windows, or, for a window too large for one OUTPUT, its parts
 * one after the other in frame order (section 7.7), each straight from the batch buffer (batch_add stored the
 * window part by part), all with the window's header, step and timings. A window's output has the module's
 * output_frames F (W before the last module; FLAT 1, never in parts). */
static void send_batch(rc_runner_t *r, unsigned k)
{
    const rc_module_t *m = &r->modules[k];
    rc_batch_t *b = &r->batches[k];
    uint8_t timings[RC_MAX_MODULES * RC_TIMING_SIZE];
    size_t frame_bytes = (size_t)m->info.output_channels * (m->info.output_bits / 8u);
    rc_message_t msg;
    unsigned i;
    uint32_t first;
    for (i = 0; i <= k; i++) {
        rc_timing_put(timings + i * RC_TIMING_SIZE, &b->sums[i]);
    }
    memset(&msg, 0, sizeof msg);
    msg.type = RC_MSG_OUTPUT;
    msg.u.output.window = b->first_window;
    msg.u.output.windows = b->count;
    msg.u.output.module = (uint8_t)k;
    msg.u.output.step = b->step;
    msg.u.output.layout = (uint8_t)m->cfg.output_layout;
    msg.u.output.bits = m->info.output_bits;
    msg.u.output.exponent = m->info.output_exponent;
    msg.u.output.frames = m->info.output_frames;
    msg.u.output.channels = m->info.output_channels;
    msg.u.output.timings.ptr = timings;
    msg.u.output.timings.len = (k + 1) * RC_TIMING_SIZE;
    if (m->part_frames == 0) {
        msg.u.output.data.ptr = b->data;
        msg.u.output.data.len = b->count * m->out_bytes;
        (void)rc_send(r, &msg); /* CONFIGURE made sure it fits max_payload */
        b->count = 0;
        return;
    }
    msg.u.output.windows = 0; /* parts of one window (the batch holds one: output_batch is 1) */
    for (first = 0; first < m->info.output_frames; first += m->part_frames) {
        uint32_t left = m->info.output_frames - first, frames = left < m->part_frames ? left : m->part_frames;
        msg.u.output.part_first_frame = (uint16_t)first;
        msg.u.output.part_frames = (uint16_t)frames;
        msg.u.output.data.ptr = b->data + first * frame_bytes; /* the parts before hold `first` frames */
        msg.u.output.data.len = frames * frame_bytes;
        (void)rc_send(r, &msg); /* CONFIGURE made sure a part of part_frames frames fits max_payload */
    }
    b->count = 0;
}

/* Where value v of a window in the module's output layout (native index, rc_value_at) goes in the batch block:
 * there, unless the window is sent in NCW parts, whose block holds part after part, each [channels][its frames]
 * (an NWC window is frame-major: its parts are consecutive already). */
static size_t block_index(const rc_module_t *m, size_t v)
{
    size_t frames = m->info.output_frames, channels = m->info.output_channels, t, c, first, count;
    if (m->part_frames == 0 || m->cfg.output_layout != RC_LAYOUT_NCW) {
        return v;
    }
    c = v / frames;
    t = v % frames;
    first = t / m->part_frames * m->part_frames;
    count = frames - first < m->part_frames ? frames - first : m->part_frames;
    return first * channels + c * count + (t - first);
}

/* Module k's output (in scratch) of task t joins k's batch; a full batch goes out at once. */
static void batch_add(rc_runner_t *r, unsigned k, const rc_task_t *t, uint32_t step)
{
    const rc_module_t *m = &r->modules[k];
    rc_batch_t *b = &r->batches[k];
    unsigned bits = m->info.output_bits, i;
    size_t values = m->out_bytes / (bits / 8u), v;
    uint8_t *block = b->data + (size_t)b->count * m->out_bytes;
    if (b->count == 0) {
        b->first_window = t->window;
        memset(b->sums, 0, sizeof b->sums);
    }
    for (v = 0; v < values; v++) {
        wire_set(block, block_index(m, v), bits, rc_value_get(r->scratch, v, bits));
    }
    for (i = 0; i <= k; i++) { /* u64 sums: no batch of runs comes near 2^64 cycles */
        b->sums[i].cycles += t->timings[i].cycles;
        b->sums[i].microseconds += t->timings[i].microseconds;
    }
    b->step = step;
    b->count++;
    if (b->count >= r->output_batch) {
        send_batch(r, k);
    }
}

/* ----------------------------------------------------------------------------------------- probes */

void rc_probe_disarm(rc_runner_t *r)
{
    if (r->probe_tensors != NULL) {
        r->pf.free(r->pf.ctx, r->probe_tensors);
    }
    if (r->probe_data != NULL) {
        r->pf.free(r->pf.ctx, r->probe_data);
    }
    r->probe_tensors = NULL;
    r->probe_data = NULL;
    r->probe_count = 0;
}

/* Native values to little-endian, in place (nothing to do on the little-endian chips and hosts the runner has). */
static void to_little_endian(uint8_t *p, uint64_t count, unsigned size)
{
    const uint16_t one = 1;
    uint64_t i;
    unsigned k;
    if (size == 1 || *(const uint8_t *)&one == 1) {
        return;
    }
    for (i = 0; i < count; i++, p += size) {
        for (k = 0; k < size / 2; k++) {
            uint8_t b = p[k];
            p[k] = p[size - 1 - k];
            p[size - 1 - k] = b;
        }
    }
}

/* The armed probe's tensors of the run of module k at `step` (section 7.8): tensor after tensor in PROBE's order,
 * each whole or in parts of rc_max_elements_per_tensor() elements, straight from its capture buffer. */
static void send_probe(rc_runner_t *r, uint32_t step)
{
    unsigned i, d;
    for (i = 0; i < r->probe_count; i++) {
        const rc_probe_tensor_t *t = &r->probe_tensors[i];
        size_t name_len = strlen(t->name), e = t->bits / 8u;
        uint64_t elements = 1, first = 0;
        uint32_t per;
        rc_message_t msg;
        memset(&msg, 0, sizeof msg);
        msg.type = RC_MSG_TENSOR;
        msg.u.tensor.module = r->probe_module;
        msg.u.tensor.window = r->probe_window;
        msg.u.tensor.step = step;
        msg.u.tensor.index = (uint8_t)i;
        msg.u.tensor.bits = t->bits;
        msg.u.tensor.exponent = t->exponent;
        msg.u.tensor.rank = t->shape.rank;
        for (d = 0; d < t->shape.rank; d++) {
            msg.u.tensor.shape[d] = t->shape.dims[d];
            elements *= t->shape.dims[d];
        }
        msg.u.tensor.name.ptr = (const uint8_t *)t->name;
        msg.u.tensor.name.len = name_len;
        to_little_endian((uint8_t *)t->data, elements, (unsigned)e);
        /* >= 1: PROBE checked it */
        per = rc_max_elements_per_tensor(r->pf.max_payload, t->shape.rank, name_len, t->bits);
        do { /* one message for a tensor without elements */
            uint64_t count = elements - first < per ? elements - first : per;
            msg.u.tensor.first_element = (uint32_t)first;
            msg.u.tensor.data.ptr = (const uint8_t *)t->data + first * e;
            msg.u.tensor.data.len = (size_t)(count * e);
            (void)rc_send(r, &msg);
            first += count;
        } while (first < elements);
    }
}

/* ------------------------------------------------------------------------------------- scheduling */

/* Module k's output (scratch) as module k+1's input: transposed if the layouts differ, requantized with the
 * target's rounding if the exponents differ, saturated to module k+1's integer range (section 7.1). Module k is
 * not the last, so its output has W frames (CONFIGURE checked it). */
static void hand_over(rc_runner_t *r, unsigned k, uint8_t *dst)
{
    const rc_module_t *from = &r->modules[k], *to = &r->modules[k + 1];
    int shift = to->info.input_exponent - from->info.output_exponent;
    size_t frames = r->window, channels = to->info.input_channels, t, c;
    for (t = 0; t < frames; t++) {
        for (c = 0; c < channels; c++) {
            int32_t v = rc_value_get(r->scratch, rc_value_at(from->cfg.output_layout, t, c, frames, channels),
                                     from->info.output_bits);
            rc_value_set(dst, rc_value_at(to->cfg.input_layout, t, c, frames, channels), to->info.input_bits,
                         rc_requantize(v, shift, r->pf.rounding, to->info.input_bits));
        }
    }
}

/* Runs the oldest waiting window's next module at `step`. */
static rc_error_t run_head(rc_runner_t *r, uint32_t step)
{
    rc_task_t *t = &r->tasks[r->task_head];
    unsigned k = t->module;
    rc_timing_t timing = {0, 0};
    char why[RC_TEXT_MAX / 2];
    rc_error_t code;
    const int probed = r->probe_count > 0 && r->probe_module == k && r->probe_window == t->window;
    why[0] = '\0';
    if (probed) {
        code = r->pf.backend->module_run_probed(r->pf.ctx, (uint8_t)k, t->data, r->scratch, &timing,
                                                r->probe_tensors, r->probe_count, why, sizeof why);
    } else {
        code = r->pf.backend->module_run(r->pf.ctx, (uint8_t)k, t->data, r->scratch, &timing, why, sizeof why);
    }
    if (code != RC_OK) {
        r->run_failed = 1;
        return rc_fail(r, rc_error_code(code), "module %u on window %lu: %s", k, (unsigned long)t->window, why);
    }
    r->runs[k]++;
    if (probed) { /* right after the run, before its OUTPUT and the step's CREDIT (section 7.8) */
        send_probe(r, step);
        rc_probe_disarm(r);
    }
    t->timings[k] = timing;
    if (rc_module_reported(r, k)) {
        batch_add(r, k, t, step);
    }
    if (k + 1 < r->module_count) {
        hand_over(r, k, t->data);
        t->module++;
    } else {
        r->task_head = (uint16_t)((r->task_head + 1) % r->task_cap);
        r->task_count--;
    }
    return RC_OK;
}

/* What runs at a step: round-robin one task, sequential every module of the waiting window. */
static rc_error_t run_ready(rc_runner_t *r, uint32_t step)
{
    rc_error_t code = RC_OK;
    while (code == RC_OK && r->task_count > 0) {
        code = run_head(r, step);
        if (r->schedule == RC_SCHEDULE_ROUND_ROBIN) {
            break;
        }
    }
    return code;
}

/* Slides one frame (little-endian, module 0's channels) into the window buffer, oldest frame out. */
static void push_frame(rc_runner_t *r, const uint8_t *frame)
{
    const rc_module_t *m = &r->modules[0];
    unsigned bits = m->info.input_bits, e = bits / 8u;
    size_t frames = r->window, channels = m->info.input_channels, c;
    if (m->cfg.input_layout == RC_LAYOUT_NWC) { /* [W][C]: move every frame up by one */
        memmove(r->window_buf, r->window_buf + channels * e, (frames - 1) * channels * e);
    } else { /* [C][W]: move each channel's row left by one */
        for (c = 0; c < channels; c++) {
            memmove(r->window_buf + c * frames * e, r->window_buf + (c * frames + 1) * e, (frames - 1) * e);
        }
    }
    for (c = 0; c < channels; c++) {
        rc_value_set(r->window_buf, rc_value_at(m->cfg.input_layout, frames - 1, c, frames, channels), bits,
                     wire_get(frame, c, bits));
    }
}

/* A completed window becomes task (j, 0), unless more than queue_depth windows would wait (section 7.4). */
static rc_error_t queue_window(rc_runner_t *r)
{
    unsigned waiting = r->task_count + 1u;
    rc_task_t *t;
    if (r->schedule == RC_SCHEDULE_ROUND_ROBIN && waiting > r->queue_depth) {
        r->stopped = 1;
        (void)rc_fail(r, RC_ERR_BACKLOG_FULL, "%u windows waiting, queue_depth %u", waiting, r->queue_depth);
        memcpy(r->stopped_text, r->text, sizeof r->stopped_text);
        return RC_ERR_BACKLOG_FULL;
    }
    t = &r->tasks[(r->task_head + r->task_count) % r->task_cap];
    t->window = r->frames / r->window;
    t->module = 0;
    memset(t->timings, 0, sizeof t->timings);
    memcpy(t->data, r->window_buf, r->modules[0].in_bytes);
    r->task_count++;
    return RC_OK;
}

/* One frame step (section 7.1). */
static rc_error_t step_frame(rc_runner_t *r, const uint8_t *frame)
{
    rc_error_t code;
    push_frame(r, frame);
    if (r->frames % r->window == r->window - 1u) {
        code = queue_window(r);
        if (code != RC_OK) {
            return code; /* the stopping frame takes no frame number and no step */
        }
    }
    r->frames++;
    code = run_ready(r, r->steps);
    r->steps++;
    return code;
}

rc_error_t rc_stream_frames(rc_runner_t *r, const rc_frames_t *m)
{
    unsigned e = r->modules[0].info.input_bits / 8u;
    size_t frame_bytes = (size_t)r->modules[0].info.input_channels * e, i;
    if (m->count > r->pf.credits) {
        return rc_fail(r, RC_ERR_CREDIT_EXCEEDED, "%u frames with %u credits", m->count, r->pf.credits);
    }
    if (r->stopped) {
        return rc_fail(r, RC_ERR_BACKLOG_FULL, "%s", r->stopped_text);
    }
    if (m->first_frame != r->frames) {
        return rc_fail(r, RC_ERR_FRAME_OUT_OF_ORDER, "first_frame %lu, expected %lu", (unsigned long)m->first_frame,
                       (unsigned long)r->frames);
    }
    if (m->count == 0) {
        return rc_fail(r, RC_ERR_BAD_PAYLOAD, "count 0: FRAMES carries at least one frame");
    }
    if (m->frame_bytes != frame_bytes) {
        return rc_fail(r, RC_ERR_BAD_PAYLOAD, "frames of %u bytes, the model takes %u x int%u", m->frame_bytes,
                       r->modules[0].info.input_channels, 8u * e);
    }
    for (i = 0; i < m->count; i++) {
        rc_error_t code = step_frame(r, m->data.ptr + i * frame_bytes);
        if (code != RC_OK) {
            return code;
        }
    }
    rc_send_credit(r, m->count); /* every frame has been stepped: its buffer space is free again */
    return RC_OK;
}

rc_error_t rc_stream_flush(rc_runner_t *r)
{
    unsigned k;
    while (r->task_count > 0) { /* one extra step per task (section 7.5) */
        rc_error_t code = run_ready(r, r->steps);
        r->steps++;
        if (code != RC_OK) {
            return code;
        }
    }
    for (k = 0; k < r->module_count; k++) { /* partial batches, lowest module first */
        if (r->batches[k].count > 0) {
            send_batch(r, k);
        }
    }
    return RC_OK;
}
