/*
 * What loading an .espdl file into ESP-DL's dl::Model may take from PSRAM, estimated from the file alone, and
 * the decision whether it fits. ESP-DL aborts on a failed allocation (C++ exceptions are off), so the runner
 * refuses a model with ERROR OUT_OF_MEMORY before ESP-DL sees it. Portable (no ESP-DL headers): the ESP-IDF
 * backend calls it with heap_caps' numbers, the host build tests it (codec_check `espdl`, `memcheck`).
 *
 * The estimate, read in esp-dl v3.3.8/v3.3.9 (firmware/README.md, "Memory check before loading"):
 *   flatbuffer  the FlatBuffer's size: an EDL1 model's parameters are always copied (create_fbs_model() forces
 *               param_copy), and what the prebuilt FbsModel does with a PSRAM buffer cannot be read, so a full
 *               copy is assumed even for an EDL2 model whose weights ESP-DL may use in place;
 *   tensors     every activation tensor of the graph (graph.input, graph.output and graph.value_info, which
 *               esp-ppq fills with every non-parameter variable), element count x element size, each rounded up
 *               to 16 bytes: MemoryManagerGreedy puts them all into one arena (root_alloc) at 16-byte offsets and
 *               reuses memory between tensors whose lifetimes do not overlap, so the sum bounds the arena. A
 *               tensor whose size the file does not fix (no tensor type, no shape, a symbolic dimension, an
 *               unknown element type) counts as the largest fixed one;
 *   state       what modules allocate at their first run: StreamingCache's cache (its output shape with
 *               window_size - 1 frames, at most the output) and GRU/LSTM gate buffers (3 or 4 x hidden floats,
 *               at most 16 x the output's bytes);
 *   objects     margins for the objects around them: RC_ESPDL_NODE_BYTES per node (the Module, allocated in
 *               PSRAM, its vectors, 256-entry lookup tables), RC_ESPDL_TENSOR_OBJECT_BYTES per tensor
 *               (TensorBase, shape, map entries, names) and RC_ESPDL_MODEL_BYTES once (Model, FbsLoader,
 *               FbsModel, ModelContext and their maps).
 * need = flatbuffer + tensors + state + objects; the largest single allocation is the larger of the FlatBuffer
 * copy and the arena. Both are upper bounds by construction, not measurements.
 */
#ifndef RC_ESPDL_H
#define RC_ESPDL_H

#include <stddef.h>
#include <stdint.h>

#include "runner_core.h"

#ifdef __cplusplus
extern "C" {
#endif

#define RC_ESPDL_TENSOR_ALIGN 16u          /* MemoryManagerGreedy's alignment */
#define RC_ESPDL_NODE_BYTES 1024u          /* per node */
#define RC_ESPDL_TENSOR_OBJECT_BYTES 256u  /* per activation tensor */
#define RC_ESPDL_MODEL_BYTES 16384u        /* per model instance */

typedef struct {
    unsigned version;          /* 1: EDL1 (12-byte header), 2: EDL2 (16-byte header) */
    uint32_t flatbuffer_bytes; /* the header's size field */
    uint32_t nodes;
    uint32_t tensors;       /* activation tensors counted (inputs, outputs, value_info) */
    uint32_t unsized;       /* of which the file fixes no size (counted as the largest) */
    uint64_t tensor_bytes;  /* their sum, each rounded up to RC_ESPDL_TENSOR_ALIGN */
    uint64_t largest_tensor;
    uint64_t state_bytes;   /* first-run allocations of StreamingCache, GRU, LSTM */
    uint64_t object_bytes;  /* the per-node, per-tensor and per-model margins */
    uint64_t need_bytes;    /* flatbuffer + tensors + state + objects */
    uint64_t block_bytes;   /* the largest single allocation: max(flatbuffer, tensors) */
} rc_espdl_need_t;

/* Checks the container (refusing what ESP-DL would assert on: not EDL1/EDL2, packed PDLx, encrypted, a size
 * field beyond the file) and walks the FlatBuffer with every offset bounds-checked: RC_OK with *need filled,
 * or RC_ERR_MODEL_LOAD_FAILED with the reason in err. */
rc_error_t rc_espdl_need(const uint8_t *data, size_t size, rc_espdl_need_t *need, char *err, size_t errlen);

/* One line with the estimate's parts, for the log. */
void rc_espdl_describe(const rc_espdl_need_t *need, char *out, size_t outlen);

/* Whether a model instance fits: RC_OK, or RC_ERR_OUT_OF_MEMORY with the need and the free bytes in err, when
 * need_bytes exceeds free_bytes or block_bytes exceeds largest_free_block. */
rc_error_t rc_memory_check(const rc_espdl_need_t *need, uint64_t free_bytes, uint64_t largest_free_block, char *err,
                           size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* RC_ESPDL_H */
