/*
 * Portable core of the streaming runner: the wire protocol (docs/protocol.md), the window buffer and the
 * scheduler. Plain C99, no ESP-IDF or ESP-DL headers, so the same code runs on the chip and, built with the
 * host compiler, in CI. The platform supplies two things:
 *   - a transport: rc_platform_t.write() sends bytes; the platform calls rc_runner_feed() with every byte it
 *     receives (from the UART / USB-Serial-JTAG driver, or a pty on the host);
 *   - a backend: loads models into slots and runs one module on one window (ESP-DL on the chip, a
 *     deterministic integer function on the host).
 */
#ifndef RUNNER_CORE_H
#define RUNNER_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RC_PROTOCOL_VERSION 1
#define RC_MAX_SLOTS 16
#define RC_MAX_MODULES 8
#define RC_MAX_NAME 64 /* tensor and model names, including the terminating NUL */
#define RC_MAX_RANK 8  /* dimensions of a module's output tensor a backend can report */

/* Error codes, as in the protocol's ERROR message (0 = no error). */
typedef enum {
    RC_OK = 0,
    RC_ERR_BAD_FRAME = 1,
    RC_ERR_UNKNOWN_MESSAGE = 2,
    RC_ERR_VERSION_UNSUPPORTED = 3,
    RC_ERR_BAD_PAYLOAD = 4,
    RC_ERR_MODEL_SHA_MISMATCH = 5,
    RC_ERR_MODEL_LOAD_FAILED = 6,
    RC_ERR_OUT_OF_MEMORY = 7,
    RC_ERR_BAD_CONFIG = 8,
    RC_ERR_NOT_CONFIGURED = 9,
    RC_ERR_CREDIT_EXCEEDED = 10,
    RC_ERR_FRAME_OUT_OF_ORDER = 11,
    RC_ERR_BACKLOG_FULL = 12,
    RC_ERR_INTERNAL = 13,
} rc_error_t;

/* NWC: [1, frames, channels]; NCW: [1, channels, frames]; FLAT (the last module's output only, never an input): a
 * tensor that is not 3-D, sent as 1 frame of all its elements in memory order (docs/protocol.md section 5). */
typedef enum { RC_LAYOUT_NWC = 0, RC_LAYOUT_NCW = 1, RC_LAYOUT_FLAT = 2 } rc_layout_t;
typedef enum { RC_ROUND_HALF_EVEN = 0, RC_ROUND_HALF_UP = 1 } rc_rounding_t;
typedef enum { RC_LOG_ERROR = 1, RC_LOG_WARNING = 2, RC_LOG_INFO = 3, RC_LOG_DEBUG = 4, RC_LOG_VERBOSE = 5 } rc_log_level_t;

/* One module of the pipeline, as CONFIGURE names it. Empty cache names = no explicit cache. */
typedef struct {
    uint8_t slot;
    rc_layout_t input_layout;
    rc_layout_t output_layout;
    char input[RC_MAX_NAME];
    char output[RC_MAX_NAME];
    char cache_input[RC_MAX_NAME];
    char cache_output[RC_MAX_NAME];
} rc_module_config_t;

/* The dimensions of a tensor, outermost first (its memory order is row-major over them). */
typedef struct {
    uint8_t rank; /* 0..RC_MAX_RANK */
    uint32_t dims[RC_MAX_RANK];
} rc_shape_t;

/* A bound module (the CONFIGURE ACK detail): the backend fills every field but the last two, which the core
 * derives from output_shape and the configured output layout (docs/protocol.md section 5, CONFIGURE). */
typedef struct {
    int8_t input_exponent;
    int8_t output_exponent;
    uint8_t input_bits;  /* 8 or 16 */
    uint8_t output_bits; /* 8 or 16 */
    uint16_t input_channels;
    rc_shape_t output_shape;  /* the output tensor's shape for one window, as the model gives it */
    uint16_t output_frames;   /* set by the core: F of one window's output (W before the last module; FLAT 1) */
    uint16_t output_channels; /* set by the core: its channels (FLAT: its element count) */
} rc_module_info_t;

/* One tensor of an armed probe (docs/protocol.md PROBE, section 7.8). The backend's probe_find() describes it,
 * the core owns its buffer, module_run_probed() fills it. */
typedef struct {
    const char *name;  /* NUL-terminated, set by the core */
    uint8_t bits;      /* 8 int8, 16 int16, 32 float32 */
    int8_t exponent;   /* value = integer x 2^exponent; 0 for float32 */
    uint8_t input;     /* 1: a graph input, captured as the run reads it; 0: a node's output, captured after it */
    rc_shape_t shape;  /* its shape in the run, ESP-DL's on-chip layout; elements in row-major (memory) order */
    void *data;        /* set by the core: room for every element, native byte order */
} rc_probe_tensor_t;

/* Timings are 64-bit end to end (OUTPUT carries u64 sums): a run of more than 2^32 cycles (10.7 s at 400 MHz)
 * and a batch's sum of many runs must not wrap. */
typedef struct {
    uint64_t cycles;       /* CPU cycles of the run (0 where not counted) */
    uint64_t microseconds; /* wall time of the run */
} rc_timing_t;

/* The backend: models and their execution. Every function returns RC_OK or an error code; on error it may
 * write a one-line reason into err (errlen bytes, NUL-terminated), which the core sends in the ERROR text. */
typedef struct {
    /* Take a complete, SHA-256-checked model into a slot (replacing any). data stays valid until
     * model_unload() of that slot: the backend may keep the pointer (the core allocated it with alloc()). */
    rc_error_t (*model_load)(void *ctx, uint8_t slot, const uint8_t *data, uint32_t size, const char *name,
                             char *err, size_t errlen);
    void (*model_unload)(void *ctx, uint8_t slot);
    /* Make module `module` run the model in cfg->slot with windows of `window` frames: resolve the tensors,
     * check the input (3-D with `window` frames on the frame axis of its layout), the output's element type
     * (int8/int16) and the cache tensors (equal shape and exponent), zero the cache, and fill *info with the
     * output's shape for one window, whatever its rank: the core checks it against the output layout. */
    rc_error_t (*module_bind)(void *ctx, uint8_t module, const rc_module_config_t *cfg, uint16_t window,
                              rc_module_info_t *info, char *err, size_t errlen);
    /* Run module `module` once: input holds one window in the module's input layout and bits, output
     * receives the output tensor's elements for that window in its memory order (NWC/NCW: the configured
     * layout). Afterwards cache_output is copied into cache_input.
     * CONFIGURE calls it once per module on a window of zeros before the stream starts (a warm-up that takes
     * the inference library's first-run allocations out of the timings; its output and timing are dropped),
     * then module_reset(), so the warm-up leaves no state behind. */
    rc_error_t (*module_run)(void *ctx, uint8_t module, const void *input, void *output, rc_timing_t *timing,
                             char *err, size_t errlen);
    /* Zero the module's cache and reset the model's internal state (dl::Model::reset()). */
    void (*module_reset)(void *ctx, uint8_t module);
    /* Forget every bound module (before a new CONFIGURE). */
    void (*modules_clear)(void *ctx);
    /* Probes (PROBE, docs/protocol.md section 7.8); both NULL when the backend cannot capture tensors (PROBE is then
     * refused). probe_find describes tensor `name` of the model bound to module `module` (bits, exponent, input,
     * shape; it may prepare what capturing it needs): RC_ERR_BAD_CONFIG with err "no tensor '<name>' in model <m>"
     * (optionally continued "; " and names it has) when the model has no such graph input or node output, or
     * "tensor '<name>' is <type>: PROBE takes int8, int16 and float32 tensors"; RC_ERR_OUT_OF_MEMORY when what it
     * prepares does not fit. The core prefixes "module k: ". */
    rc_error_t (*probe_find)(void *ctx, uint8_t module, const char *name, rc_probe_tensor_t *tensor, char *err,
                             size_t errlen);
    /* module_run, and capture the `count` tensors (each described by probe_find, for this module) into their data:
     * a graph input as the run reads it, any other tensor right after the node that produced it ran. */
    rc_error_t (*module_run_probed)(void *ctx, uint8_t module, const void *input, void *output, rc_timing_t *timing,
                                    rc_probe_tensor_t *tensors, unsigned count, char *err, size_t errlen);
} rc_backend_t;

/* The platform around the core. */
typedef struct {
    void *ctx; /* passed back to every callback */
    /* Send bytes to the host; must send all of them (block if needed). */
    void (*write)(void *ctx, const uint8_t *data, size_t len);
    /* Memory for models and stream buffers (PSRAM on the chip). NULL = out of memory. */
    void *(*alloc)(void *ctx, size_t bytes);
    void (*free)(void *ctx, void *ptr);
    uint32_t (*free_internal_bytes)(void *ctx);
    uint32_t (*free_psram_bytes)(void *ctx);
    const rc_backend_t *backend;
    /* Device description for INFO. */
    const char *target;         /* "esp32p4", "esp32s3" */
    const char *build_id;       /* identifies the firmware build (the app's ELF SHA-256 on the chip) */
    const char *esp_dl_version; /* version of the inference library */
    const char *idf_version;    /* version of the SDK */
    const char *device_kind;    /* "board" or "virtual" */
    rc_rounding_t rounding;     /* the target's rounding, for requantizing between modules */
    uint16_t credits;           /* frames the platform buffers between the driver and the core */
    uint16_t max_payload;       /* largest payload the core receives and sends, <= 65535 */
} rc_platform_t;

/* The runner's state lives in an opaque object the platform allocates with rc_runner_size() bytes. */
typedef struct rc_runner rc_runner_t;

size_t rc_runner_size(void);
/* Initialise (does not send anything). */
void rc_runner_init(rc_runner_t *runner, const rc_platform_t *platform);
/* After boot or reset: send the leading 0x00 and the BOOT banner; drops every model and configuration. */
void rc_runner_boot(rc_runner_t *runner, const char *banner);
/* Every byte received from the host, in any chunking. Runs whatever the messages ask, sends the replies. */
void rc_runner_feed(rc_runner_t *runner, const uint8_t *data, size_t len);
/* A log line, sent as a LOG frame (never as bare text). Safe to call between feeds. */
void rc_runner_log(rc_runner_t *runner, rc_log_level_t level, const char *text);
/* Release everything allocated through the platform. */
void rc_runner_deinit(rc_runner_t *runner);

/* The 64-bit cycle count of a run from what a platform can measure: `cycles32`, the difference of a 32-bit
 * cycle counter read before and after (correct modulo 2^32), and `microseconds`, the run's wall time from a
 * 64-bit timer, with the CPU at `cpu_mhz`. The full count is cycles32 + k x 2^32 with
 * k = round((microseconds x cpu_mhz - cycles32) / 2^32): exact while the two clocks disagree by less than 2^31
 * cycles (5.3 s at 400 MHz) and the CPU frequency stays fixed during the run. cpu_mhz 0: cycles32 as it is. */
uint64_t rc_cycles_widen(uint32_t cycles32, uint64_t microseconds, uint32_t cpu_mhz);

#ifdef __cplusplus
}
#endif

#endif /* RUNNER_CORE_H */
