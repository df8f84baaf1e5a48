/*
 * The serial link of the runner: the UART or USB-Serial-JTAG driver chosen in menuconfig (Kconfig.projbuild),
 * used through its driver API, never through stdio/VFS (binary bytes would meet CR/LF translation and line
 * buffering there).
 */
#ifndef RUNNER_LINK_H
#define RUNNER_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "freertos/FreeRTOS.h"

/* "UART0 921600" or "USB-Serial-JTAG", for the boot banner. */
extern const char RUNNER_LINK_NAME[];

/* Installs the driver (its interrupt lands on the calling core) and starts the receive task on that core,
 * which drains the driver into a PSRAM buffer of ring_bytes. Aborts when either cannot be created: without
 * its link the runner is of no use. */
void runner_link_start(size_t ring_bytes);

/* Received bytes, up to cap; waits up to `wait` ticks for the first one. Only the runner task reads. */
size_t runner_link_read(uint8_t *buf, size_t cap, TickType_t wait);

/* rc_platform_t.write: sends every byte (blocks while the driver's transmit buffer is full). */
void runner_link_write(void *ctx, const uint8_t *data, size_t len);

#endif /* RUNNER_LINK_H */
