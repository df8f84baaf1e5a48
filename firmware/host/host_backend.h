/*
 * The host build's backend: a deterministic integer function instead of ESP-DL, so the whole core (codec,
 * scheduler, hand-over, batching) can be run and its outputs predicted exactly. Models are HCM1 text blobs;
 * README.md documents the format and the function.
 */
#ifndef HOST_BACKEND_H
#define HOST_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "runner_core.h"

typedef struct host_backend host_backend_t;

/* NULL when out of memory. */
host_backend_t *host_backend_create(rc_rounding_t rounding);
void host_backend_destroy(host_backend_t *backend);

/* The rc_backend_t operations, on a backend instead of the platform's context. */
rc_error_t host_model_load(host_backend_t *b, uint8_t slot, const uint8_t *data, uint32_t size, const char *name,
                           char *err, size_t errlen);
void host_model_unload(host_backend_t *b, uint8_t slot);
rc_error_t host_module_bind(host_backend_t *b, uint8_t module, const rc_module_config_t *cfg, uint16_t window,
                            rc_module_info_t *info, char *err, size_t errlen);
rc_error_t host_module_run(host_backend_t *b, uint8_t module, const void *input, void *output, rc_timing_t *timing,
                           char *err, size_t errlen);
void host_module_reset(host_backend_t *b, uint8_t module);
void host_modules_clear(host_backend_t *b);
/* Probes: the model's four tensors (README.md, "Probes"). */
rc_error_t host_probe_find(host_backend_t *b, uint8_t module, const char *name, rc_probe_tensor_t *tensor, char *err,
                           size_t errlen);
rc_error_t host_module_run_probed(host_backend_t *b, uint8_t module, const void *input, void *output,
                                  rc_timing_t *timing, rc_probe_tensor_t *tensors, unsigned count, char *err,
                                  size_t errlen);

#endif /* HOST_BACKEND_H */
