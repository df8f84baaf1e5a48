/*
 * The log hook (runner_log.h). Any task may log: the receive task, ESP-DL inside the runner task, ESP-IDF's
 * own tasks. The core, however, may only be called by the runner task between feeds (runner_core.h). So the
 * hook only assembles lines and queues them, and the runner task sends them (runner_log_drain). The hook
 * never calls the core or a driver: a line logged while a frame is being written cannot recurse into the
 * transport or split that frame.
 */
#include <stdarg.h>
#include <stdio.h> /* vsnprintf/snprintf only: formatting, no stdio I/O */
#include <string.h>

#include "esp_err.h"
#include "esp_log.h"
#include "freertos/FreeRTOS.h"
#include "freertos/queue.h"
#include "freertos/semphr.h"
#include "freertos/task.h"

#include "runner_log.h"

#define LINE_CHARS 200 /* longer lines are cut; LOG frames carry at most 240 bytes of text */
#define QUEUE_LINES 32 /* lines waiting for the runner task; more are counted and dropped */
#define LOCK_WAIT_MS 20

typedef struct {
    uint8_t level; /* rc_log_level_t */
    char text[LINE_CHARS];
} log_line_t;

static QueueHandle_t s_queue;
static SemaphoreHandle_t s_lock; /* guards the partial line and the error capture */
static uint32_t s_dropped;       /* lines lost; atomic, counted outside the lock too */

/* ESP_LOGx hands over a line in one call (log v1) or in pieces: prefix, message, newline (log v2). The pieces
 * of one line come from one task, so a piece from another task first closes the pending line: lines of two
 * tasks may be cut, never interleaved. */
static char s_partial[LINE_CHARS];
static size_t s_partial_len;
static TaskHandle_t s_partial_task;

static TaskHandle_t s_error_task;
static char s_error[LINE_CHARS];
static bool s_error_set;

static void count_dropped(void)
{
    __atomic_fetch_add(&s_dropped, 1u, __ATOMIC_RELAXED);
}

/* Removes ANSI colour sequences (CONFIG_LOG_COLORS) and CR/LF: the LOG text is the bare line. */
static size_t clean(const char *in, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 1 < cap; i++) {
        if (in[i] == '\x1b') {
            while (i + 1 < len && !(in[i + 1] >= '@' && in[i + 1] <= '~' && in[i + 1] != '[')) {
                i++;
            }
            i++; /* the final byte of the sequence */
        } else if (in[i] != '\r' && in[i] != '\n') {
            out[o++] = in[i];
        }
    }
    out[o] = '\0';
    return o;
}

/* "E (1234) tag: text" -> level ERROR, "tag: text". Lines without the prefix are INFO. */
static uint8_t take_level(const char **text)
{
    static const char letters[] = "EWIDV"; /* ESP_LOG levels 1..5, as the protocol's LOG levels */
    const char *s = *text;
    const char *letter = s[0] != '\0' ? strchr(letters, s[0]) : NULL;
    if (letter == NULL || s[1] != ' ') {
        return RC_LOG_INFO;
    }
    s += 2;
    if (*s == '(') {
        const char *close = strchr(s, ')');
        if (close != NULL && close[1] == ' ') {
            s = close + 2;
        }
    }
    *text = s;
    return (uint8_t)(RC_LOG_ERROR + (letter - letters));
}

/* One complete line: queued for the runner task, and kept as the error capture's result when it applies.
 * Called with s_lock held, hence the static buffers: the logging task's stack may be small. */
static void emit(const char *raw, size_t len, TaskHandle_t task)
{
    static char bare[LINE_CHARS];
    static log_line_t line;
    const char *text = bare;
    if (clean(raw, len, bare, sizeof bare) == 0) {
        return;
    }
    line.level = take_level(&text);
    (void)snprintf(line.text, sizeof line.text, "%s", text);
    if (line.level == RC_LOG_ERROR && task == s_error_task && !s_error_set) { /* the first: the cause */
        memcpy(s_error, line.text, sizeof s_error);
        s_error_set = true;
    }
    if (xQueueSend(s_queue, &line, 0) != pdTRUE) {
        count_dropped();
    }
}

/* Emits every complete line of the partial buffer; a full buffer without a newline is emitted as it is. */
static void emit_complete_lines(void)
{
    char *newline;
    while ((newline = memchr(s_partial, '\n', s_partial_len)) != NULL) {
        size_t used = (size_t)(newline - s_partial) + 1;
        emit(s_partial, used, s_partial_task);
        s_partial_len -= used;
        memmove(s_partial, s_partial + used, s_partial_len);
    }
    if (s_partial_len + 1 >= sizeof s_partial) {
        emit(s_partial, s_partial_len, s_partial_task);
        s_partial_len = 0;
    }
}

static int log_hook(const char *format, va_list args)
{
    TaskHandle_t self;
    int n;
    /* ESP_LOGx is not allowed in ISRs (they use ESP_DRAM_LOGx, which bypasses this hook); a blocked scheduler
     * would make the lock wait impossible. Such lines are dropped rather than risk a deadlock. */
    if (xPortInIsrContext() || xTaskGetSchedulerState() != taskSCHEDULER_RUNNING) {
        count_dropped();
        return 0;
    }
    if (xSemaphoreTake(s_lock, pdMS_TO_TICKS(LOCK_WAIT_MS)) != pdTRUE) {
        count_dropped();
        return 0;
    }
    self = xTaskGetCurrentTaskHandle();
    if (s_partial_len > 0 && s_partial_task != self) {
        emit(s_partial, s_partial_len, s_partial_task);
        s_partial_len = 0;
    }
    s_partial_task = self;
    /* formatted straight into the line buffer, no copy on the calling task's stack */
    n = vsnprintf(s_partial + s_partial_len, sizeof s_partial - s_partial_len, format, args);
    if (n > 0) {
        size_t room = sizeof s_partial - s_partial_len - 1;
        s_partial_len += (size_t)n < room ? (size_t)n : room;
        emit_complete_lines();
    }
    xSemaphoreGive(s_lock);
    return n;
}

void runner_log_install(void)
{
    s_queue = xQueueCreate(QUEUE_LINES, sizeof(log_line_t));
    s_lock = xSemaphoreCreateMutex();
    ESP_ERROR_CHECK(s_queue != NULL && s_lock != NULL ? ESP_OK : ESP_ERR_NO_MEM);
    (void)esp_log_set_vprintf(log_hook);
}

void runner_log_drain(rc_runner_t *runner)
{
    log_line_t line;
    uint32_t dropped;
    while (xQueueReceive(s_queue, &line, 0) == pdTRUE) {
        rc_runner_log(runner, (rc_log_level_t)line.level, line.text);
    }
    dropped = __atomic_exchange_n(&s_dropped, 0u, __ATOMIC_RELAXED);
    if (dropped > 0) {
        char text[64];
        (void)snprintf(text, sizeof text, "%lu log lines dropped", (unsigned long)dropped);
        rc_runner_log(runner, RC_LOG_WARNING, text);
    }
}

void runner_log_error_reset(void)
{
    if (xSemaphoreTake(s_lock, portMAX_DELAY) == pdTRUE) {
        s_error_task = xTaskGetCurrentTaskHandle();
        s_error_set = false;
        xSemaphoreGive(s_lock);
    }
}

bool runner_log_error_take(char *out, size_t len)
{
    bool found = false;
    if (xSemaphoreTake(s_lock, portMAX_DELAY) == pdTRUE) {
        found = s_error_set && s_error_task == xTaskGetCurrentTaskHandle();
        if (found) {
            (void)snprintf(out, len, "%s", s_error);
        }
        s_error_set = false;
        s_error_task = NULL;
        xSemaphoreGive(s_lock);
    }
    return found;
}
