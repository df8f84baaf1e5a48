/*
 * The serial link (runner_link.h). The receive task drains the driver continuously into a PSRAM stream
 * buffer sized for the credits (docs/protocol.md section 6, rule 5): while the runner task spends seconds in
 * a model, the bytes the host may send meanwhile wait there, not in a driver FIFO that would overflow (a
 * UART FIFO drops bytes silently; USB-Serial-JTAG drops what the application has not drained).
 */
#include "runner_link.h"

#include "esp_err.h"
#include "esp_heap_caps.h"
#include "esp_log.h"
#include "freertos/idf_additions.h" /* xStreamBufferCreateWithCaps, xTaskCreatePinnedToCore */
#include "freertos/stream_buffer.h"
#include "freertos/task.h"
#include "sdkconfig.h"

#if CONFIG_RUNNER_LINK_UART
#include "driver/uart.h"
#include "soc/soc_caps.h" /* SOC_UART_HP_NUM */
#else
#include "driver/usb_serial_jtag.h"
#endif

#define DRIVER_BUFFER_BYTES 8192 /* driver ring buffers (internal RAM): ~90 ms of traffic at 921600 baud */
#define RX_CHUNK_BYTES 512
#define RX_TASK_STACK 4096
#define RX_TASK_PRIORITY 12 /* above ordinary tasks on core 0: the driver buffer must not fill up */

#define STRINGIFY(x) #x
#define VALUE_STRING(x) STRINGIFY(x)

static const char *TAG = "runner_link";
static StreamBufferHandle_t s_ring;

#if CONFIG_RUNNER_LINK_UART

#define PORT ((uart_port_t)CONFIG_RUNNER_UART_PORT)
#if CONFIG_RUNNER_UART_PORT >= SOC_UART_HP_NUM /* Kconfig limits it per target; a stale sdkconfig may not */
#error "CONFIG_RUNNER_UART_PORT names a UART this chip does not have (ESP32-S3: 0-2, ESP32-P4: 0-4)"
#endif

const char RUNNER_LINK_NAME[] =
    "UART" VALUE_STRING(CONFIG_RUNNER_UART_PORT) " " VALUE_STRING(CONFIG_RUNNER_UART_BAUD_RATE);

static void driver_start(void)
{
    const uart_config_t config = {
        .baud_rate = CONFIG_RUNNER_UART_BAUD_RATE,
        .data_bits = UART_DATA_8_BITS,
        .parity = UART_PARITY_DISABLE,
        .stop_bits = UART_STOP_BITS_1,
        .flow_ctrl = UART_HW_FLOWCTRL_DISABLE,
        .source_clk = UART_SCLK_DEFAULT,
    };
    ESP_ERROR_CHECK(uart_driver_install(PORT, DRIVER_BUFFER_BYTES, DRIVER_BUFFER_BYTES, 0, NULL, 0));
    ESP_ERROR_CHECK(uart_param_config(PORT, &config));
#if CONFIG_RUNNER_UART_TX_PIN >= 0 || CONFIG_RUNNER_UART_RX_PIN >= 0
    ESP_ERROR_CHECK(uart_set_pin(PORT, CONFIG_RUNNER_UART_TX_PIN, CONFIG_RUNNER_UART_RX_PIN, UART_PIN_NO_CHANGE,
                                 UART_PIN_NO_CHANGE));
#endif
}

/* Waits for one byte, then takes whatever else the driver holds: low latency for a lone control message,
 * large chunks while a stream is running. */
static size_t driver_read(uint8_t *buf, size_t cap)
{
    size_t buffered = 0;
    int n = uart_read_bytes(PORT, buf, 1, portMAX_DELAY);
    if (n == 1 && uart_get_buffered_data_len(PORT, &buffered) == ESP_OK && buffered > 0) {
        int more = uart_read_bytes(PORT, buf + 1, (uint32_t)(buffered < cap - 1 ? buffered : cap - 1), 0);
        n += more > 0 ? more : 0;
    }
    return n > 0 ? (size_t)n : 0;
}

void runner_link_write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    while (len > 0) {
        int n = uart_write_bytes(PORT, data, len); /* blocks until the bytes are in the transmit buffer */
        if (n <= 0) {
            return; /* only on invalid arguments */
        }
        data += n;
        len -= (size_t)n;
    }
}

#else /* CONFIG_RUNNER_LINK_USB_SERIAL_JTAG */

#define TX_WAIT_MS 100
#define TX_GIVE_UP_MS 1000

const char RUNNER_LINK_NAME[] = "USB-Serial-JTAG";

static void driver_start(void)
{
    usb_serial_jtag_driver_config_t config = {
        .tx_buffer_size = DRIVER_BUFFER_BYTES,
        .rx_buffer_size = DRIVER_BUFFER_BYTES,
    };
    ESP_ERROR_CHECK(usb_serial_jtag_driver_install(&config));
}

static size_t driver_read(uint8_t *buf, size_t cap)
{
    int n = usb_serial_jtag_read_bytes(buf, cap, portMAX_DELAY); /* returns what is there, up to cap */
    return n > 0 ? (size_t)n : 0;
}

/* usb_serial_jtag_write_bytes() takes all bytes or none, at most the transmit buffer's size at once. A host
 * that closed the port stops draining USB: after a second without progress the rest is dropped, so the
 * runner stays alive for the next session (which starts over with HELLO). */
void runner_link_write(void *ctx, const uint8_t *data, size_t len)
{
    unsigned stalled_ms = 0;
    (void)ctx;
    while (len > 0 && stalled_ms < TX_GIVE_UP_MS) {
        size_t chunk = len < DRIVER_BUFFER_BYTES ? len : DRIVER_BUFFER_BYTES;
        if (usb_serial_jtag_write_bytes(data, chunk, pdMS_TO_TICKS(TX_WAIT_MS)) > 0) {
            data += chunk;
            len -= chunk;
            stalled_ms = 0;
        } else {
            stalled_ms += TX_WAIT_MS;
        }
    }
}

#endif

static void rx_task(void *arg)
{
    static uint8_t chunk[RX_CHUNK_BYTES];
    (void)arg;
    for (;;) {
        size_t n = driver_read(chunk, sizeof chunk);
        size_t kept = n > 0 ? xStreamBufferSend(s_ring, chunk, n, 0) : 0;
        if (kept < n) {
            /* the host sent more than its credits allow: the lost bytes surface as a BAD_FRAME */
            ESP_LOGW(TAG, "receive buffer full, %u bytes dropped", (unsigned)(n - kept));
        }
    }
}

void runner_link_start(size_t ring_bytes)
{
    s_ring = xStreamBufferCreateWithCaps(ring_bytes, 1, MALLOC_CAP_SPIRAM);
    ESP_ERROR_CHECK(s_ring != NULL ? ESP_OK : ESP_ERR_NO_MEM);
    driver_start();
    ESP_ERROR_CHECK(xTaskCreatePinnedToCore(rx_task, "runner_rx", RX_TASK_STACK, NULL, RX_TASK_PRIORITY, NULL,
                                            xPortGetCoreID()) == pdPASS
                        ? ESP_OK
                        : ESP_ERR_NO_MEM);
}

size_t runner_link_read(uint8_t *buf, size_t cap, TickType_t wait)
{
    return xStreamBufferReceive(s_ring, buf, cap, wait);
}
