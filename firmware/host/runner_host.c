/*
 * runner_host: the streaming runner's portable core on the host, behind a pseudo-terminal, with the
 * deterministic HCM1 backend. Same process contract as the virtual board (harness/virtual_board.py):
 *   runner_host --target esp32p4|esp32s3 [--max-payload N]
 * (N: INFO max_payload, 256..65535, default 4096) prints "PTY <path>" on stdout, then serves the pty; control lines on stdin: "reset [reason]" (the EN pin:
 * models, configuration and state dropped, 0x00 + BOOT sent, whose banner ends "; reset: <reason>", power-on
 * unless given, as a board's names esp_reset_reason()), "flash <build id>" (report that build ID, then reset),
 * "quit" or end of input (power off). One thread: poll() on stdin and the pty master.
 */
#define _XOPEN_SOURCE 700 /* posix_openpt, grantpt, unlockpt, ptsname */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "host_backend.h"
#include "rc_espdl.h"
#include "runner_core.h"

#ifndef RC_HOST_BUILD_ID
#define RC_HOST_BUILD_ID "host-unversioned"
#endif

#define PSRAM_BYTES (32u << 20) /* what alloc() hands out, as a board's PSRAM would */
#define INTERNAL_BYTES (512u << 10)
#define CREDITS 256
#define MAX_PAYLOAD 4096 /* INFO max_payload unless --max-payload says otherwise */
#define CONTROL_LINE_MAX 256

typedef struct {
    host_backend_t *backend;
    size_t allocated; /* bytes handed out by host_alloc */
    uint8_t *tx;      /* bytes written by the core, not yet taken by the pty */
    size_t tx_len, tx_cap, tx_sent;
    char build_id[CONTROL_LINE_MAX];
    const char *target;
} host_t;

/* ------------------------------------------------------------------------------------ platform */

/* Every block starts with its size, so free() can give the budget back; 16 bytes keep the rest aligned for
 * any type. */
#define BLOCK_HEADER 16u

static void *host_alloc(void *ctx, size_t bytes)
{
    host_t *h = (host_t *)ctx;
    uint8_t *block;
    if (bytes > PSRAM_BYTES - h->allocated) {
        return NULL;
    }
    block = (uint8_t *)malloc(BLOCK_HEADER + bytes);
    if (block == NULL) {
        return NULL;
    }
    memcpy(block, &bytes, sizeof bytes);
    h->allocated += bytes;
    return block + BLOCK_HEADER;
}

static void host_free(void *ctx, void *ptr)
{
    host_t *h = (host_t *)ctx;
    uint8_t *block = (uint8_t *)ptr - BLOCK_HEADER;
    size_t bytes;
    memcpy(&bytes, block, sizeof bytes);
    h->allocated -= bytes;
    free(block);
}

static uint32_t host_free_internal(void *ctx)
{
    (void)ctx;
    return INTERNAL_BYTES;
}

static uint32_t host_free_psram(void *ctx)
{
    return (uint32_t)(PSRAM_BYTES - ((host_t *)ctx)->allocated);
}

/* The core's bytes wait here until the pty takes them: the loop keeps reading while the host is slow to read,
 * as a chip's UART driver receives while it transmits. */
static void host_write(void *ctx, const uint8_t *data, size_t len)
{
    host_t *h = (host_t *)ctx;
    if (len > h->tx_cap - h->tx_len) {
        size_t cap = h->tx_cap ? h->tx_cap : 65536;
        uint8_t *grown;
        while (cap - h->tx_len < len) {
            cap *= 2;
        }
        grown = (uint8_t *)realloc(h->tx, cap);
        if (grown == NULL) {
            fprintf(stderr, "runner_host: out of memory for %lu bytes of output\n", (unsigned long)cap);
            exit(1);
        }
        h->tx = grown;
        h->tx_cap = cap;
    }
    memcpy(h->tx + h->tx_len, data, len);
    h->tx_len += len;
}

/* An .espdl goes through what the ESP-IDF backend does before ESP-DL sees it (espdl_backend.cpp): the
 * container and FlatBuffer checks and the memory decision, against this process's PSRAM budget (one free
 * block). Without ESP-DL a model that passes is then refused with MODEL_LOAD_FAILED. */
static rc_error_t espdl_load(host_t *h, const uint8_t *data, uint32_t size, char *err, size_t errlen)
{
    const uint64_t free_bytes = PSRAM_BYTES - h->allocated;
    rc_espdl_need_t need;
    rc_error_t code = rc_espdl_need(data, size, &need, err, errlen);
    if (code == RC_OK) {
        code = rc_memory_check(&need, free_bytes, free_bytes, err, errlen);
    }
    if (code == RC_OK) {
        (void)snprintf(err, errlen, "fits (needs %llu bytes of %llu free), but the host build runs HCM1 models only",
                       (unsigned long long)need.need_bytes, (unsigned long long)free_bytes);
        code = RC_ERR_MODEL_LOAD_FAILED;
    }
    return code;
}

/* The rc_backend_t operations get the platform's context: hand them to the HCM1 backend. */
static rc_error_t be_load(void *ctx, uint8_t slot, const uint8_t *data, uint32_t size, const char *name, char *err,
                          size_t errlen)
{
    if (size >= 3 && (memcmp(data, "EDL", 3) == 0 || memcmp(data, "PDL", 3) == 0)) {
        return espdl_load((host_t *)ctx, data, size, err, errlen);
    }
    return host_model_load(((host_t *)ctx)->backend, slot, data, size, name, err, errlen);
}

static void be_unload(void *ctx, uint8_t slot)
{
    host_model_unload(((host_t *)ctx)->backend, slot);
}

static rc_error_t be_bind(void *ctx, uint8_t module, const rc_module_config_t *cfg, uint16_t window,
                          rc_module_info_t *info, char *err, size_t errlen)
{
    return host_module_bind(((host_t *)ctx)->backend, module, cfg, window, info, err, errlen);
}

static rc_error_t be_run(void *ctx, uint8_t module, const void *input, void *output, rc_timing_t *timing, char *err,
                         size_t errlen)
{
    return host_module_run(((host_t *)ctx)->backend, module, input, output, timing, err, errlen);
}

static void be_reset(void *ctx, uint8_t module)
{
    host_module_reset(((host_t *)ctx)->backend, module);
}

static void be_clear(void *ctx)
{
    host_modules_clear(((host_t *)ctx)->backend);
}

static rc_error_t be_probe_find(void *ctx, uint8_t module, const char *name, rc_probe_tensor_t *tensor, char *err,
                                size_t errlen)
{
    return host_probe_find(((host_t *)ctx)->backend, module, name, tensor, err, errlen);
}

static rc_error_t be_run_probed(void *ctx, uint8_t module, const void *input, void *output, rc_timing_t *timing,
                                rc_probe_tensor_t *tensors, unsigned count, char *err, size_t errlen)
{
    return host_module_run_probed(((host_t *)ctx)->backend, module, input, output, timing, tensors, count, err, errlen);
}

static const rc_backend_t BACKEND = {be_load, be_unload, be_bind, be_run, be_reset, be_clear, be_probe_find,
                                     be_run_probed};

/* ------------------------------------------------------------------------------------------ pty */

/* The device side of a pty in raw mode (no echo, no CR/LF translation), before anyone opens it. The slave
 * stays open here, so the master never reads EIO while the host has the port closed. */
static int open_pty(const char **path, int *slave)
{
    struct termios tio;
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0 || (*path = ptsname(master)) == NULL) {
        return -1;
    }
    *slave = open(*path, O_RDWR | O_NOCTTY);
    if (*slave < 0 || tcgetattr(*slave, &tio) != 0) {
        return -1;
    }
    tio.c_iflag &= ~(tcflag_t)(IGNBRK | BRKINT | PARMRK | ISTRIP | INLCR | IGNCR | ICRNL | IXON);
    tio.c_oflag &= ~(tcflag_t)OPOST;
    tio.c_lflag &= ~(tcflag_t)(ECHO | ECHONL | ICANON | ISIG | IEXTEN);
    tio.c_cflag &= ~(tcflag_t)(CSIZE | PARENB);
    tio.c_cflag |= CS8;
    tio.c_cc[VMIN] = 1;
    tio.c_cc[VTIME] = 0;
    if (tcsetattr(*slave, TCSANOW, &tio) != 0 || fcntl(master, F_SETFL, O_NONBLOCK) != 0) {
        return -1;
    }
    return master;
}

/* ------------------------------------------------------------------------------------ the loop */

static void press_reset(host_t *h, rc_runner_t *runner, const char *reason)
{
    char banner[96 + CONTROL_LINE_MAX];
    h->tx_len = h->tx_sent = 0; /* what the old firmware had not sent yet dies with it */
    (void)snprintf(banner, sizeof banner, "espdl-hil streaming runner (host-core %s) ready; reset: %s", h->target,
                   reason);
    rc_runner_boot(runner, banner);
}

/* One control line; 0 means power off. */
static int control(host_t *h, rc_runner_t *runner, const char *line)
{
    if (strcmp(line, "quit") == 0) {
        return 0;
    }
    if (strncmp(line, "flash ", 6) == 0) { /* a flash tool wrote another build: report its ID, then reboot */
        (void)snprintf(h->build_id, sizeof h->build_id, "%s", line + 6);
        press_reset(h, runner, "power-on"); /* the flash tool's hard reset */
    } else if (strcmp(line, "reset") == 0) {
        press_reset(h, runner, "power-on");
    } else if (strncmp(line, "reset ", 6) == 0) { /* a test's stand-in for a crash: "reset panic" */
        press_reset(h, runner, line + 6);
    } else if (line[0] != '\0') {
        fprintf(stderr, "runner_host: unknown control line '%s' (reset [reason], flash <id>, quit)\n", line);
        return 1;
    }
    /* like the EN pin, the reset has happened when the caller continues: it may talk to the new boot at once */
    printf("done %s\n", line);
    fflush(stdout);
    return 1;
}

/* Reads what stdin has and runs every complete line; 0 means power off (quit or end of input). */
static int read_control(host_t *h, rc_runner_t *runner, char *line, size_t *len)
{
    char buf[CONTROL_LINE_MAX];
    ssize_t n = read(STDIN_FILENO, buf, sizeof buf), i;
    if (n <= 0) {
        return n < 0 && errno == EINTR;
    }
    for (i = 0; i < n; i++) {
        if (buf[i] == '\n') {
            line[*len] = '\0';
            *len = 0;
            if (!control(h, runner, line)) {
                return 0;
            }
        } else if (buf[i] != '\r' && *len + 1 < CONTROL_LINE_MAX) {
            line[(*len)++] = buf[i];
        }
    }
    return 1;
}

static void receive(int master, rc_runner_t *runner)
{
    uint8_t buf[65536];
    ssize_t n = read(master, buf, sizeof buf);
    if (n > 0) {
        rc_runner_feed(runner, buf, (size_t)n);
    }
}

static void transmit(int master, host_t *h)
{
    ssize_t n = write(master, h->tx + h->tx_sent, h->tx_len - h->tx_sent);
    if (n > 0) {
        h->tx_sent += (size_t)n;
    }
    if (h->tx_sent == h->tx_len) {
        h->tx_len = h->tx_sent = 0;
    }
}

static void serve(int master, host_t *h, rc_runner_t *runner)
{
    char line[CONTROL_LINE_MAX];
    size_t line_len = 0;
    for (;;) {
        struct pollfd fds[2];
        fds[0].fd = STDIN_FILENO;
        fds[0].events = POLLIN;
        fds[1].fd = master;
        fds[1].events = (short)(POLLIN | (h->tx_len > h->tx_sent ? POLLOUT : 0));
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("runner_host: poll");
            return;
        }
        if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) && !read_control(h, runner, line, &line_len)) {
            return;
        }
        if (fds[1].revents & POLLIN) {
            receive(master, runner);
        }
        if (fds[1].revents & POLLOUT) {
            transmit(master, h);
        }
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: runner_host --target esp32p4|esp32s3 [--max-payload 256..65535]\n");
    return 2;
}

int main(int argc, char **argv)
{
    static host_t host;
    rc_platform_t platform;
    rc_runner_t *runner;
    const char *target = (argc == 3 || argc == 5) && strcmp(argv[1], "--target") == 0 ? argv[2] : "";
    const char *path = NULL;
    int master, slave = -1;
    unsigned long max_payload = MAX_PAYLOAD;
    rc_rounding_t rounding = RC_ROUND_HALF_EVEN;
    if (argc == 5) {
        char *end = NULL;
        max_payload = strcmp(argv[3], "--max-payload") == 0 ? strtoul(argv[4], &end, 10) : 0;
        if (end == NULL || *end != '\0' || max_payload < 256 || max_payload > 65535) {
            return usage();
        }
    }
    if (strcmp(target, "esp32s3") == 0) {
        rounding = RC_ROUND_HALF_UP;
    } else if (strcmp(target, "esp32p4") != 0) {
        return usage();
    }
    (void)snprintf(host.build_id, sizeof host.build_id, "%s", RC_HOST_BUILD_ID);
    host.target = target;
    host.backend = host_backend_create(rounding);
    memset(&platform, 0, sizeof platform);
    platform.ctx = &host;
    platform.write = host_write;
    platform.alloc = host_alloc;
    platform.free = host_free;
    platform.free_internal_bytes = host_free_internal;
    platform.free_psram_bytes = host_free_psram;
    platform.backend = &BACKEND;
    platform.target = target;
    platform.build_id = host.build_id;
    platform.esp_dl_version = "none (deterministic backend)";
    platform.idf_version = "none (host process)";
    platform.device_kind = "host-core";
    platform.rounding = rounding;
    platform.credits = CREDITS;
    platform.max_payload = (uint16_t)max_payload;
    runner = (rc_runner_t *)malloc(rc_runner_size());
    master = open_pty(&path, &slave);
    if (host.backend == NULL || runner == NULL || master < 0) {
        perror("runner_host: cannot start");
        return 1;
    }
    rc_runner_init(runner, &platform); /* like a board before the host opens the port: BOOT comes with reset */
    printf("PTY %s\n", path);
    fflush(stdout);
    serve(master, &host, runner);
    rc_runner_deinit(runner);
    free(runner);
    host_backend_destroy(host.backend);
    free(host.tx);
    close(slave);
    close(master);
    return 0;
}
