/*
 * The runner's state, shared by runner_core.c (link, requests, models, configuration) and rc_stream.c
 * (window buffer, scheduler, hand-over between modules, output batches). Not part of the public API.
 */
#ifndef RC_INTERNAL_H
#define RC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "rc_codec.h"
#include "runner_core.h"

/* Texts the core composes stay short enough for any max_payload >= RC_MIN_MAX_PAYLOAD. */
#define RC_TEXT_MAX 160u /* ERROR texts */
#define RC_LINE_MAX 240u /* LOG lines and the BOOT banner */
#define RC_STAGE_SIZE 256u /* the COBS encoder hands bytes to platform->write in blocks of this size */

typedef enum { RC_SLOT_EMPTY = 0, RC_SLOT_UPLOADING, RC_SLOT_LOADED } rc_slot_state_t;

/* A model slot: an upload in progress, or the bytes of a loaded model (the backend may keep pointing at them). */
typedef struct {
    uint8_t *data;
    uint32_t size;
    uint32_t received;
    uint8_t sha256[32];
    char name[RC_MAX_NAME];
    rc_slot_state_t state;
} rc_slot_t;

typedef struct {
    rc_module_config_t cfg;
    rc_module_info_t info;
    size_t in_bytes;     /* one window of its input */
    size_t out_bytes;    /* one window of its output */
    uint16_t part_frames; /* a window too large for one OUTPUT: frames per part (section 7.7); 0: whole windows */
} rc_module_t;

/* A window waiting for modules (section 7.4): the input of its next module, the timings of those that ran. */
typedef struct {
    uint32_t window;
    uint8_t module;
    rc_timing_t timings[RC_MAX_MODULES];
    uint8_t *data; /* native values, in module `module`'s input layout */
} rc_task_t;

/* Outputs of consecutive windows of one reported module, on their way into one OUTPUT (section 7.6); for a
 * module whose window goes out in parts (section 7.7) one window, stored part by part as the parts carry it. */
typedef struct {
    uint8_t *data; /* `count` window blocks, little-endian as on the wire */
    uint16_t count;
    uint32_t first_window;
    uint32_t step; /* of the last window's run */
    rc_timing_t sums[RC_MAX_MODULES];
} rc_batch_t;

struct rc_runner {
    rc_platform_t pf;

    /* link */
    rc_rx_t rx;
    uint8_t *tx; /* one body being encoded */
    size_t tx_cap;
    uint8_t stage[RC_STAGE_SIZE];
    size_t stage_len;
    int sending; /* a frame is being written: a log line now would split it, so it is dropped */
    uint16_t tx_seq;
    int greeted;
    int expecting; /* expected_seq holds the next host seq */
    uint16_t expected_seq;
    char text[RC_TEXT_MAX]; /* the ERROR text of the request being handled */

    rc_slot_t slots[RC_MAX_SLOTS];

    /* configuration (valid while configured) */
    int configured;
    uint16_t window;
    uint8_t schedule;
    uint8_t flags;
    uint16_t queue_depth;  /* 0 replaced by the default */
    uint16_t output_batch; /* 0 replaced by 1 */
    uint8_t module_count;
    rc_module_t modules[RC_MAX_MODULES];
    uint8_t ack_detail[RC_MAX_MODULES * RC_ACK_MODULE_SIZE];

    /* stream: every buffer lives in one allocation, the arena */
    void *arena;
    uint8_t *window_buf; /* the last W frames, native values, in module 0's input layout */
    rc_task_t *tasks;    /* ring of waiting windows, oldest at task_head */
    uint16_t task_cap;
    uint16_t task_head;
    uint16_t task_count;
    uint8_t *scratch; /* one module's output window, native values */
    rc_batch_t batches[RC_MAX_MODULES];
    uint32_t frames; /* frame counter */
    uint32_t steps;  /* step counter */
    int stopped;     /* BACKLOG_FULL: FRAMES are refused until RESET or CONFIGURE */
    int run_failed;  /* a module's run failed: the request's ERROR unconfigures the runner */
    char stopped_text[RC_TEXT_MAX];
    uint32_t runs[RC_MAX_MODULES]; /* module k's runs since RESET/CONFIGURE: its next run is on window runs[k] */

    /* the armed probe (section 7.8): descriptors and names in one allocation, the capture buffers in another */
    rc_probe_tensor_t *probe_tensors;
    void *probe_data;
    unsigned probe_count; /* 0: nothing armed */
    uint8_t probe_module;
    uint32_t probe_window;
};

/* runner_core.c */
rc_error_t rc_fail(rc_runner_t *r, rc_error_t code, const char *fmt, ...);
int rc_send(rc_runner_t *r, const rc_message_t *msg);
void rc_send_credit(rc_runner_t *r, uint16_t frames);
/* A code from the backend as an ERROR code: anything outside the protocol's list becomes INTERNAL. */
rc_error_t rc_error_code(rc_error_t code);
int rc_module_reported(const rc_runner_t *r, unsigned module);

/* rc_stream.c */
rc_error_t rc_stream_allocate(rc_runner_t *r);
void rc_stream_release(rc_runner_t *r);
void rc_stream_restart(rc_runner_t *r);
rc_error_t rc_stream_frames(rc_runner_t *r, const rc_frames_t *m);
rc_error_t rc_stream_flush(rc_runner_t *r);
/* Frees the armed probe's buffers; nothing is armed afterwards. */
void rc_probe_disarm(rc_runner_t *r);

#endif /* RC_INTERNAL_H */
