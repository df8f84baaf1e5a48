/*
 * ESP-IDF logs as protocol LOG frames. esp_log_set_vprintf() sends every ESP_LOGx line here instead of
 * stdout, so no unframed log text reaches the protocol port once app_main has started.
 *
 * What this cannot catch: the ROM and bootloader text before app_main (the host skips it as noise: the core
 * sends 0x00 before BOOT), and esp_rom_printf / ESP_EARLY_LOGx / panic output, which write to the console UART
 * directly. After BOOT that only happens on a crash; the board then reboots and the host fails the run on
 * the second BOOT.
 */
#ifndef RUNNER_LOG_H
#define RUNNER_LOG_H

#include <stdbool.h>
#include <stddef.h>

#include "runner_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Installs the hook. Call first in app_main: lines logged before it went to the console as boot noise. */
void runner_log_install(void);

/* Sends the queued lines as LOG frames. Only the runner task calls it, between rc_runner_feed() calls. */
void runner_log_drain(rc_runner_t *runner);

/* The first ERROR line the calling task logs after runner_log_error_reset(): ESP-DL's reason for a failure,
 * for the ERROR text (LOG frames go out only after the request's reply). */
void runner_log_error_reset(void);
bool runner_log_error_take(char *out, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* RUNNER_LOG_H */
