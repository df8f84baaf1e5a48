/*
 * The streaming runner on ESP32-S3 / ESP32-P4 (firmware/README.md): the portable core (runner_core.h) with
 * this platform around it - the serial link (runner_link.c), ESP-IDF logs as LOG frames (runner_log.c), PSRAM
 * for models and buffers, and ESP-DL (espdl_backend.cpp).
 *
 * Tasks: the receive task and the driver's interrupt on core 0 keep draining the port into the receive
 * buffer; the runner task on the last core feeds the core, which runs the models. A model run may take
 * seconds: that core's idle task then starves, which is why sdkconfig.defaults leaves it out of the task
 * watchdog.
 */
#include <stdio.h> /* snprintf only: stdio I/O would corrupt the protocol port */

#include "esp_app_desc.h"
#include "esp_chip_info.h" /* esp_chip_info: the revision in the banner */
#include "esp_err.h"
#include "esp_heap_caps.h"
#include "esp_idf_version.h"
#include "esp_log.h"
#include "esp_system.h" /* esp_reset_reason */
#include "freertos/FreeRTOS.h"
#include "freertos/idf_additions.h" /* xTaskCreatePinnedToCore */
#include "freertos/task.h"
#include "sdkconfig.h"

#include "espdl_backend.h"
#include "runner_core.h"
#include "runner_link.h"
#include "runner_log.h"

#if CONFIG_IDF_TARGET_ESP32P4
#define TARGET_ROUNDING RC_ROUND_HALF_EVEN /* ESP-DL on P4: half to even (PIE v2 vxrm, fcvt rne) */
#elif CONFIG_IDF_TARGET_ESP32S3
#define TARGET_ROUNDING RC_ROUND_HALF_UP /* ESP-DL on S3: floor(x + 0.5) */
#else
#error "the streaming runner supports esp32p4 and esp32s3 (set its ESP-DL rounding here for another target)"
#endif

#ifndef RUNNER_ESP_DL_VERSION
#error "main/CMakeLists.txt defines RUNNER_ESP_DL_VERSION from the esp-dl component's version"
#endif

#define RUNNER_CORE_ID (portNUM_PROCESSORS - 1)
#define RUNNER_STACK_BYTES 16384 /* ESP-DL's model construction (std::map, FlatBuffers) runs on it */
#define RUNNER_PRIORITY 5
#define FEED_CHUNK_BYTES 1024
#define LOG_POLL_MS 50 /* the longest a log line of another task waits while no bytes arrive */

static const char *TAG = "runner";
static char s_build_id[65];
static char s_banner[128];
static rc_platform_t s_platform;

static void *psram_alloc(void *ctx, size_t bytes)
{
    void *p = heap_caps_aligned_alloc(ESPDL_MODEL_ALIGNMENT, bytes, MALLOC_CAP_SPIRAM);
    (void)ctx;
    if (p == NULL) {
        ESP_LOGW(TAG, "no PSRAM block of %u bytes (largest free %u)", (unsigned)bytes,
                 (unsigned)heap_caps_get_largest_free_block(MALLOC_CAP_SPIRAM));
    }
    return p;
}

static void psram_free(void *ctx, void *ptr)
{
    (void)ctx;
    heap_caps_free(ptr);
}

static uint32_t free_internal_bytes(void *ctx)
{
    (void)ctx;
    return (uint32_t)heap_caps_get_free_size(MALLOC_CAP_INTERNAL);
}

static uint32_t free_psram_bytes(void *ctx)
{
    (void)ctx;
    return (uint32_t)heap_caps_get_free_size(MALLOC_CAP_SPIRAM);
}

/* Why the chip last reset, for the BOOT banner: a BOOT in the middle of a session makes the host fail the run
 * with "rebooted unexpectedly: <banner>", which then says panic, task watchdog, brownout... (docs/protocol.md,
 * BOOT). Every esp_reset_reason_t value of ESP-IDF v5.5.2 to v6.0.2 (esp_system.h). */
static const char *reset_reason_name(esp_reset_reason_t reason)
{
    switch (reason) {
    case ESP_RST_UNKNOWN: return "unknown";
    case ESP_RST_POWERON: return "power-on"; /* also the EN pin, i.e. the host's hard reset */
    case ESP_RST_EXT: return "external pin";
    case ESP_RST_SW: return "software";
    case ESP_RST_PANIC: return "panic";
    case ESP_RST_INT_WDT: return "interrupt watchdog";
    case ESP_RST_TASK_WDT: return "task watchdog";
    case ESP_RST_WDT: return "other watchdog";
    case ESP_RST_DEEPSLEEP: return "deep sleep";
    case ESP_RST_BROWNOUT: return "brownout";
    case ESP_RST_SDIO: return "SDIO";
    case ESP_RST_USB: return "USB";
    case ESP_RST_JTAG: return "JTAG";
    case ESP_RST_EFUSE: return "efuse error";
    case ESP_RST_PWR_GLITCH: return "power glitch";
    case ESP_RST_CPU_LOCKUP: return "CPU lockup";
    default: return "not known to this firmware";
    }
}

/* The ELF SHA-256 in full (the harness compares it with the build's ELF to decide whether to flash);
 * esp_app_get_elf_sha256() would give only CONFIG_APP_RETRIEVE_LEN_ELF_SHA characters. */
static void format_build_id(const esp_app_desc_t *app)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof app->app_elf_sha256; i++) {
        s_build_id[2 * i] = hex[app->app_elf_sha256[i] >> 4];
        s_build_id[2 * i + 1] = hex[app->app_elf_sha256[i] & 0x0f];
    }
    s_build_id[sizeof s_build_id - 1] = '\0';
}

/* Room for `credits` FRAMES messages of the largest size plus one control message, each as it is on the wire:
 * COBS adds one byte per 254 and the delimiter one more (docs/protocol.md section 3.3). */
static size_t receive_buffer_bytes(void)
{
    const size_t body = 9u + CONFIG_RUNNER_MAX_PAYLOAD;
    const size_t wire = body + (body + 253u) / 254u + 1u;
    return ((size_t)CONFIG_RUNNER_CREDITS + 1u) * wire;
}

static void runner_task(void *arg)
{
    static uint8_t chunk[FEED_CHUNK_BYTES];
    rc_runner_t *runner = arg;
    rc_runner_boot(runner, s_banner);
    for (;;) {
        size_t n = runner_link_read(chunk, sizeof chunk, pdMS_TO_TICKS(LOG_POLL_MS));
        if (n > 0) {
            rc_runner_feed(runner, chunk, n);
        }
        runner_log_drain(runner);
    }
}

void app_main(void)
{
    const esp_app_desc_t *app = esp_app_get_description();
    rc_runner_t *runner;
    runner_log_install(); /* first: from here on, ESP_LOGx text never reaches the port unframed */
    esp_log_level_set("*", ESP_LOG_INFO); /* boot ran at WARN (sdkconfig.defaults) to keep the port quiet */
    format_build_id(app);
    /* app->version is PROJECT_VER (../CMakeLists.txt) */
    esp_chip_info_t chip; /* revision MXX: wafer major M, minor XX; for the report's provenance (display only) */
    esp_chip_info(&chip);
    (void)snprintf(s_banner, sizeof s_banner, "espdl-stream-runner %s %s rev v%u.%u %s; reset: %s", app->version,
                   CONFIG_IDF_TARGET, (unsigned)(chip.revision / 100), (unsigned)(chip.revision % 100),
                   RUNNER_LINK_NAME, reset_reason_name(esp_reset_reason()));
    s_platform = (rc_platform_t){
        .ctx = NULL,
        .write = runner_link_write,
        .alloc = psram_alloc,
        .free = psram_free,
        .free_internal_bytes = free_internal_bytes,
        .free_psram_bytes = free_psram_bytes,
        .backend = espdl_backend(),
        .target = CONFIG_IDF_TARGET,
        .build_id = s_build_id,
        .esp_dl_version = RUNNER_ESP_DL_VERSION,
        .idf_version = esp_get_idf_version(),
        .device_kind = "board",
        .rounding = TARGET_ROUNDING,
        .credits = CONFIG_RUNNER_CREDITS,
        .max_payload = CONFIG_RUNNER_MAX_PAYLOAD,
    };
    runner = heap_caps_malloc(rc_runner_size(), MALLOC_CAP_INTERNAL | MALLOC_CAP_8BIT);
    ESP_ERROR_CHECK(runner != NULL ? ESP_OK : ESP_ERR_NO_MEM);
    rc_runner_init(runner, &s_platform);
    runner_link_start(receive_buffer_bytes()); /* app_main runs on core 0: so do the driver's ISR and rx task */
    ESP_ERROR_CHECK(xTaskCreatePinnedToCore(runner_task, "runner", RUNNER_STACK_BYTES, runner, RUNNER_PRIORITY,
                                            NULL, RUNNER_CORE_ID) == pdPASS
                        ? ESP_OK
                        : ESP_ERR_NO_MEM);
}
