/*
 * The ESP-DL backend of the runner (rc_backend_t). espdl_backend.cpp holds every ESP-DL call of the firmware.
 */
#ifndef ESPDL_BACKEND_H
#define ESPDL_BACKEND_H

#include "runner_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ESP-DL's FlatBuffer must start 16-byte aligned (EDL2 puts it 16 bytes into the file): model buffers are
 * allocated with this alignment, which also lets ESP-DL use the weights in place. */
#define ESPDL_MODEL_ALIGNMENT 16

/* The backend; its state is static (one runner per firmware), so it ignores the platform's ctx. The first
 * call also sets ESP-DL's log levels (espdl_backend.cpp). */
const rc_backend_t *espdl_backend(void);

#ifdef __cplusplus
}
#endif

#endif /* ESPDL_BACKEND_H */
