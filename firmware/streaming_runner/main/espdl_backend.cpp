/*
 * Every ESP-DL call of the runner: rc_backend_t (runner_core.h) on dl::Model. Written against esp-dl v3.3.8 /
 * v3.3.9 (identical esp-dl/ sources): dl_model_base.hpp, dl_tensor_base.hpp, fbs_loader.hpp/.cpp,
 * fbs_model.hpp.
 *
 * Loading from memory: dl::Model(address, fbs::MODEL_LOCATION_IN_FLASH_RODATA) parses the bytes where they
 * are. FbsLoader keeps the pointer, and for an EDL2 model whose FlatBuffer is 16-byte aligned in PSRAM
 * create_fbs_model() turns param_copy off, so the weights are used in place (the SD-card path does the same).
 * The core's buffer is therefore part of the model: it stays valid and unmoved until model_unload()
 * (runner_core.h guarantees that), and it is allocated ESPDL_MODEL_ALIGNMENT-aligned.
 *
 * One model instance holds one state (its StreamingCache modules and the cache tensors), so a slot that
 * several modules run gets one instance per module, as on the virtual board.
 *
 * ESP-DL aborts when an allocation fails (C++ exceptions are off): before every dl::Model is constructed, the
 * portable core's estimate of what it takes (rc_espdl.h) is checked against the free PSRAM and its largest
 * block, and a model that does not fit is refused with OUT_OF_MEMORY.
 *
 * Probes (docs/protocol.md PROBE, section 7.8): a probed run goes through
 * dl::Model::run(user_inputs, mode, user_outputs) (dl_model_base.hpp/.cpp of v3.3.8/v3.3.9), which assigns every
 * graph input from user_inputs and, after each module of the execution plan, copies that module's outputs named in
 * user_outputs (TensorBase::assign): an activation is taken before the memory planner gives its memory to a later
 * layer. user_outputs are views (deep = false) of the core's capture buffers, with the context tensor's shape, type
 * and exponent, so assign() is a plain copy. Graph inputs are copied by the backend before the run.
 */
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iterator>
#include <map>
#include <new>
#include <numeric>
#include <string>
#include <vector>

#include "dl_model_base.hpp"
#include "esp_clk_tree.h"
#include "esp_cpu.h"
#include "esp_heap_caps.h"
#include "esp_log.h"
#include "esp_timer.h"

#include "espdl_backend.h"
#include "rc_espdl.h"
#include "runner_log.h"

namespace {

const char *const TAG = "espdl_backend";

struct Slot {
    dl::Model *model; // nullptr: empty
    const uint8_t *data;
    rc_espdl_need_t need; // what one more instance of it takes
    std::string name;     // the file's, for error texts
};

struct Module {
    dl::Model *model; // the slot's instance, or `own`; nullptr: not bound
    dl::Model *own;   // this module's instance when another module already runs the slot's
    dl::TensorBase *input;
    dl::TensorBase *output;
    dl::TensorBase *cache_input; // nullptr: no explicit cache
    dl::TensorBase *cache_output;
    std::string input_name; // the configured names: run()'s user_inputs are keyed by them
    std::string cache_input_name;
    std::string model_name;
    void *probe_cache; // a probed run's copy of the cache (user_inputs must not alias the graph input they fill)
};

Slot s_slots[RC_MAX_SLOTS];
Module s_modules[RC_MAX_MODULES];

// The core's estimate of an instance (rc_espdl.h) against what PSRAM has now: free bytes and largest block.
rc_error_t fits(const rc_espdl_need_t &need, char *err, size_t errlen)
{
    return rc_memory_check(&need, heap_caps_get_free_size(MALLOC_CAP_SPIRAM),
                           heap_caps_get_largest_free_block(MALLOC_CAP_SPIRAM), err, errlen);
}

uint32_t cpu_mhz()
{
    uint32_t hz = 0;
    return esp_clk_tree_src_get_freq_hz(SOC_MOD_CLK_CPU, ESP_CLK_TREE_SRC_FREQ_PRECISION_CACHED, &hz) == ESP_OK
               ? hz / 1000000u
               : 0;
}

bool allocated(const std::map<std::string, dl::TensorBase *> &tensors)
{
    return !tensors.empty() && std::all_of(tensors.begin(), tensors.end(), [](const auto &entry) {
        return entry.second != nullptr && entry.second->data != nullptr;
    });
}

// A Model whose load or build failed still constructs (dl_model_base.cpp); it is usable when every graph
// input and output got its memory.
bool usable(dl::Model *model)
{
    return allocated(model->get_inputs()) && allocated(model->get_outputs());
}

// A new instance of the model at `data`, or nullptr with ESP-DL's reason (its first error line) in err.
dl::Model *new_model(const uint8_t *data, rc_error_t *code, char *err, size_t errlen)
{
    char reason[96];
    runner_log_error_reset();
    dl::Model *model =
        new (std::nothrow) dl::Model(reinterpret_cast<const char *>(data), fbs::MODEL_LOCATION_IN_FLASH_RODATA);
    if (model != nullptr && usable(model)) {
        return model;
    }
    *code = model == nullptr ? RC_ERR_OUT_OF_MEMORY : RC_ERR_MODEL_LOAD_FAILED;
    if (!runner_log_error_take(reason, sizeof reason)) {
        snprintf(reason, sizeof reason, "%s",
                 model == nullptr ? "no memory for the model object" : "the model has no usable inputs/outputs");
    }
    snprintf(err, errlen, "ESP-DL: %s", reason);
    delete model;
    return nullptr;
}

// "[1,3,64] int8 e-5", for logs and errors.
std::string describe(dl::TensorBase *t)
{
    std::string text = "[";
    for (int d : t->get_shape()) {
        text += (text.size() > 1 ? "," : "") + std::to_string(d);
    }
    text += "] ";
    text += t->get_dtype_string();
    text += " e" + std::to_string(t->get_exponent());
    return text;
}

std::string describe(const std::map<std::string, dl::TensorBase *> &tensors)
{
    std::string text;
    for (const auto &entry : tensors) {
        text += (text.empty() ? "" : ", ") + entry.first + " " + describe(entry.second);
    }
    return text;
}

void release(Module &m)
{
    delete m.own;
    heap_caps_free(m.probe_cache);
    m = Module();
}

void model_unload(void *ctx, uint8_t slot)
{
    (void)ctx;
    for (Module &m : s_modules) { // the core unbinds first; this only keeps the pointers honest
        if (m.model != nullptr && m.model == s_slots[slot].model) {
            release(m);
        }
    }
    delete s_slots[slot].model;
    s_slots[slot] = Slot();
}

rc_error_t model_load(void *ctx, uint8_t slot, const uint8_t *data, uint32_t size, const char *name, char *err,
                      size_t errlen)
{
    rc_error_t code = RC_OK;
    if (reinterpret_cast<uintptr_t>(data) % ESPDL_MODEL_ALIGNMENT != 0) {
        snprintf(err, errlen, "model buffer is not %d-byte aligned", ESPDL_MODEL_ALIGNMENT);
        return RC_ERR_INTERNAL;
    }
    rc_espdl_need_t need;
    char line[192];
    // refuses what ESP-DL would assert on (not EDL1/EDL2, packed, encrypted, a size beyond the file) and a
    // FlatBuffer whose offsets leave the buffer; then the memory ESP-DL would take, or it aborts
    code = rc_espdl_need(data, size, &need, err, errlen);
    if (code != RC_OK) {
        return code;
    }
    rc_espdl_describe(&need, line, sizeof line);
    ESP_LOGI(TAG, "slot %u: %s: %s", (unsigned)slot, name, line);
    model_unload(ctx, slot); // the core unloaded it already (MODEL_BEGIN); nothing of it counts against PSRAM
    code = fits(need, err, errlen);
    if (code != RC_OK) {
        return code;
    }
    dl::Model *model = new_model(data, &code, err, errlen);
    if (model == nullptr) {
        return code;
    }
    s_slots[slot].model = model;
    s_slots[slot].data = data;
    s_slots[slot].need = need;
    s_slots[slot].name = name;
    ESP_LOGI(TAG, "slot %u: %s, inputs %s; outputs %s", (unsigned)slot, name, describe(model->get_inputs()).c_str(),
             describe(model->get_outputs()).c_str());
    return RC_OK;
}

// The element size of an int8/int16 tensor whose exponent fits an i8 and whose elements are exactly its
// shape's (no padding: the core copies get_size() elements); 0 for anything else.
uint8_t element_bits(dl::TensorBase *t)
{
    std::vector<int> shape = t->get_shape();
    const int64_t elements = std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<int64_t>());
    dl::dtype_t dtype = t->get_dtype();
    uint8_t bits = dtype == dl::DATA_TYPE_INT8 ? 8 : dtype == dl::DATA_TYPE_INT16 ? 16 : 0;
    bool plain = elements == t->get_size() && t->get_exponent() >= INT8_MIN && t->get_exponent() <= INT8_MAX;
    return plain ? bits : 0;
}

// Frames and channels of a [1, ., .] int8/int16 tensor in `layout`; false for anything else.
bool geometry(dl::TensorBase *t, rc_layout_t layout, int *frames, int *channels, uint8_t *bits)
{
    std::vector<int> shape = t->get_shape();
    *bits = element_bits(t);
    if (shape.size() != 3 || shape[0] != 1 || *bits == 0) {
        return false;
    }
    *frames = layout == RC_LAYOUT_NWC ? shape[1] : shape[2];
    *channels = layout == RC_LAYOUT_NWC ? shape[2] : shape[1];
    return *channels <= UINT16_MAX;
}

// The output tensor's shape, whatever its rank (the core checks it against the output layout: NWC/NCW need
// [1, F, C] / [1, C, F], FLAT anything else); false when it is not int8/int16 or has too many dimensions.
bool output_shape(dl::TensorBase *t, rc_shape_t *shape, uint8_t *bits)
{
    std::vector<int> dims = t->get_shape();
    *bits = element_bits(t);
    if (*bits == 0 || dims.size() > RC_MAX_RANK) {
        return false;
    }
    shape->rank = static_cast<uint8_t>(dims.size());
    for (size_t i = 0; i < dims.size(); i++) {
        shape->dims[i] = dims[i] < 0 ? 0u : static_cast<uint32_t>(dims[i]);
    }
    return true;
}

dl::TensorBase *find(std::map<std::string, dl::TensorBase *> &tensors, const char *name)
{
    auto it = tensors.find(name);
    return it == tensors.end() ? nullptr : it->second;
}

// Resolves and checks the module's tensors (CONFIGURE's BAD_CONFIG rules, docs/protocol.md section 5).
rc_error_t resolve(Module &m, const rc_module_config_t *cfg, uint16_t window, rc_module_info_t *info, char *err,
                   size_t errlen)
{
    std::map<std::string, dl::TensorBase *> &inputs = m.model->get_inputs();
    std::map<std::string, dl::TensorBase *> &outputs = m.model->get_outputs();
    const bool cached = cfg->cache_input[0] != '\0';
    int frames = 0;
    int channels = 0;
    m.input = find(inputs, cfg->input);
    m.output = find(outputs, cfg->output);
    m.cache_input = cached ? find(inputs, cfg->cache_input) : nullptr;
    m.cache_output = cached ? find(outputs, cfg->cache_output) : nullptr;
    if (m.input == nullptr || (cached && m.cache_input == nullptr)) {
        snprintf(err, errlen, "no input '%s' (inputs: %s)", m.input == nullptr ? cfg->input : cfg->cache_input,
                 describe(inputs).c_str());
        return RC_ERR_BAD_CONFIG;
    }
    if (m.output == nullptr || (cached && m.cache_output == nullptr)) {
        snprintf(err, errlen, "no output '%s' (outputs: %s)", m.output == nullptr ? cfg->output : cfg->cache_output,
                 describe(outputs).c_str());
        return RC_ERR_BAD_CONFIG;
    }
    // an input nobody writes would keep whatever its memory holds: every input must be named
    if (inputs.size() != (cached ? 2u : 1u) || m.input == m.cache_input) {
        snprintf(err, errlen, "inputs %s: name the frame input and, for a second one, the cache pair",
                 describe(inputs).c_str());
        return RC_ERR_BAD_CONFIG;
    }
    if (!geometry(m.input, cfg->input_layout, &frames, &channels, &info->input_bits) || frames != window) {
        snprintf(err, errlen, "input '%s' is %s, not int8/int16 %s [1, ., .] with %u frames", cfg->input,
                 describe(m.input).c_str(), cfg->input_layout == RC_LAYOUT_NWC ? "NWC" : "NCW", window);
        return RC_ERR_BAD_CONFIG;
    }
    info->input_channels = static_cast<uint16_t>(channels);
    if (!output_shape(m.output, &info->output_shape, &info->output_bits)) {
        snprintf(err, errlen, "output '%s' is %s, not int8/int16 of at most %d dimensions", cfg->output,
                 describe(m.output).c_str(), RC_MAX_RANK);
        return RC_ERR_BAD_CONFIG;
    }
    info->input_exponent = static_cast<int8_t>(m.input->get_exponent());
    info->output_exponent = static_cast<int8_t>(m.output->get_exponent());
    m.input_name = cfg->input;
    m.cache_input_name = cached ? cfg->cache_input : "";
    // the cache is carried with a byte copy: same shape, type and exponent, or the copy would change values
    if (cached && (m.cache_input->get_shape() != m.cache_output->get_shape() ||
                   m.cache_input->get_dtype() != m.cache_output->get_dtype() ||
                   m.cache_input->get_exponent() != m.cache_output->get_exponent() ||
                   m.cache_input->get_bytes() != m.cache_output->get_bytes())) {
        snprintf(err, errlen, "cache '%s' %s cannot be copied into '%s' %s", cfg->cache_output,
                 describe(m.cache_output).c_str(), cfg->cache_input, describe(m.cache_input).c_str());
        return RC_ERR_BAD_CONFIG;
    }
    return RC_OK;
}

void module_reset(void *ctx, uint8_t module)
{
    Module &m = s_modules[module];
    (void)ctx;
    if (m.model == nullptr) {
        return;
    }
    if (m.cache_input != nullptr) {
        memset(m.cache_input->data, 0, m.cache_input->get_bytes());
    }
    m.model->reset(); // StreamingCache modules back to their zero window
}

bool slot_taken(const Module &self, const dl::Model *model)
{
    return std::any_of(std::begin(s_modules), std::end(s_modules),
                       [&](const Module &m) { return &m != &self && m.model == model; });
}

rc_error_t module_bind(void *ctx, uint8_t module, const rc_module_config_t *cfg, uint16_t window,
                       rc_module_info_t *info, char *err, size_t errlen)
{
    Module &m = s_modules[module];
    const Slot &slot = s_slots[cfg->slot];
    rc_error_t code = RC_OK;
    release(m);
    if (slot.model == nullptr) {
        snprintf(err, errlen, "slot %u holds no model", (unsigned)cfg->slot);
        return RC_ERR_BAD_CONFIG;
    }
    if (slot_taken(m, slot.model)) {
        code = fits(slot.need, err, errlen);
        if (code != RC_OK) {
            return code;
        }
        m.own = new_model(slot.data, &code, err, errlen);
        if (m.own == nullptr) {
            return RC_ERR_OUT_OF_MEMORY; // the same bytes loaded at MODEL_END: only memory can be missing now
        }
    }
    m.model = m.own != nullptr ? m.own : slot.model;
    m.model_name = slot.name;
    code = resolve(m, cfg, window, info, err, errlen);
    if (code != RC_OK) {
        release(m);
        return code;
    }
    module_reset(ctx, module);
    return RC_OK;
}

// `run` (module m's model on one window) timed on the runner task's core, then the output out and the cache
// carried to the next run. The cycle counter is 32 bits (10.7 s at 400 MHz): the 64-bit esp_timer tells how
// often it wrapped. The cache copy is a memmove, not TensorBase::assign(): assign() would silently requantize if
// the exponents differed (resolve() refuses that), and ESP-DL's memory planner may let the dead cache input share
// memory with the cache output.
template <typename Run> void timed_run(Module &m, Run run, void *output, rc_timing_t *timing)
{
    const esp_cpu_cycle_count_t before = esp_cpu_get_cycle_count();
    const int64_t start = esp_timer_get_time();
    run();
    const int64_t end = esp_timer_get_time();
    const esp_cpu_cycle_count_t after = esp_cpu_get_cycle_count();
    timing->microseconds = static_cast<uint64_t>(end - start);
    timing->cycles = rc_cycles_widen(static_cast<uint32_t>(after - before), timing->microseconds, cpu_mhz());
    memcpy(output, m.output->data, m.output->get_bytes());
    if (m.cache_input != nullptr) {
        memmove(m.cache_input->data, m.cache_output->data, m.cache_input->get_bytes());
    }
}

// One window: the input in, run, the output out, then the cache carried to the next run (timed_run).
rc_error_t module_run(void *ctx, uint8_t module, const void *input, void *output, rc_timing_t *timing, char *err,
                      size_t errlen)
{
    Module &m = s_modules[module];
    (void)ctx;
    if (m.model == nullptr) {
        snprintf(err, errlen, "module %u is not bound", (unsigned)module);
        return RC_ERR_INTERNAL;
    }
    memcpy(m.input->data, input, m.input->get_bytes());
    timed_run(m, [&m] { m.model->run(); }, output, timing); // single core, on the runner task's core
    return RC_OK;
}

// Whether `name` is an output of a node of the model: Model::load() makes one module of the execution plan per
// node of the graph's topological order, and run() copies a user_outputs entry after the module whose outputs hold
// it, so only node outputs are ever copied. Name lookups need FbsModel's maps, which Model::build() clears:
// loaded around the walk, as Model::get_module_info() does.
bool node_output(dl::Model *model, const std::string &name)
{
    fbs::FbsModel *fbs = model->get_fbs_model();
    bool found = false;
    if (fbs == nullptr) {
        return false;
    }
    fbs->load_map();
    for (const std::string &node : fbs->topological_sort()) {
        std::vector<std::string> inputs;
        std::vector<std::string> outputs;
        if (fbs->get_operation_inputs_and_outputs(node, inputs, outputs) == ESP_OK &&
            std::find(outputs.begin(), outputs.end(), name) != outputs.end()) {
            found = true;
            break;
        }
    }
    fbs->clear_map();
    return found;
}

// The probe's description of tensor `name` of module `module` (rc_backend_t.probe_find): a graph input, or a node
// output as ESP-DL's context holds it (get_intermediate), int8/int16/float32 without padding.
rc_error_t probe_find(void *ctx, uint8_t module, const char *name, rc_probe_tensor_t *tensor, char *err, size_t errlen)
{
    Module &m = s_modules[module];
    (void)ctx;
    if (m.model == nullptr) {
        snprintf(err, errlen, "module %u is not bound", (unsigned)module);
        return RC_ERR_INTERNAL;
    }
    dl::TensorBase *t = find(m.model->get_inputs(), name);
    const bool input = t != nullptr;
    if (!input && node_output(m.model, name)) {
        t = m.model->get_intermediate(name);
    }
    if (t == nullptr) {
        snprintf(err, errlen, "no tensor '%s' in model %s; graph inputs and node outputs only (inputs: %s)", name,
                 m.model_name.c_str(), describe(m.model->get_inputs()).c_str());
        return RC_ERR_BAD_CONFIG;
    }
    const dl::dtype_t dtype = t->get_dtype();
    const uint8_t bits = dtype == dl::DATA_TYPE_INT8    ? 8
                         : dtype == dl::DATA_TYPE_INT16 ? 16
                         : dtype == dl::DATA_TYPE_FLOAT ? 32
                                                        : 0;
    if (bits == 0) {
        snprintf(err, errlen, "tensor '%s' is %s: PROBE takes int8, int16 and float32 tensors", name,
                 t->get_dtype_string());
        return RC_ERR_BAD_CONFIG;
    }
    std::vector<int> dims = t->get_shape();
    const int64_t elements = std::accumulate(dims.begin(), dims.end(), int64_t{1}, std::multiplies<int64_t>());
    if (dims.size() > RC_MAX_RANK || elements != t->get_size() || t->get_exponent() < INT8_MIN ||
        t->get_exponent() > INT8_MAX) {
        snprintf(err, errlen, "tensor '%s' %s cannot be captured (padded, rank above %d or exponent beyond int8)", name,
                 describe(t).c_str(), RC_MAX_RANK);
        return RC_ERR_BAD_CONFIG;
    }
    if (m.cache_input != nullptr && m.probe_cache == nullptr) { // every probed run reads the cache from a copy
        m.probe_cache = heap_caps_aligned_alloc(16, m.cache_input->get_bytes(), MALLOC_CAP_SPIRAM);
        if (m.probe_cache == nullptr) {
            snprintf(err, errlen, "no memory for a copy of the module's cache (%d bytes)", m.cache_input->get_bytes());
            return RC_ERR_OUT_OF_MEMORY;
        }
    }
    tensor->bits = bits;
    tensor->exponent = bits == 32 ? 0 : static_cast<int8_t>(t->get_exponent());
    tensor->input = input ? 1 : 0;
    tensor->shape.rank = static_cast<uint8_t>(dims.size());
    for (size_t i = 0; i < dims.size(); i++) {
        tensor->shape.dims[i] = dims[i] < 0 ? 0u : static_cast<uint32_t>(dims[i]);
    }
    return RC_OK;
}

// module_run with the probe's tensors captured (rc_backend_t.module_run_probed): graph inputs copied as the run reads
// them, node outputs copied by run()'s user_outputs right after their module.
rc_error_t module_run_probed(void *ctx, uint8_t module, const void *input, void *output, rc_timing_t *timing,
                             rc_probe_tensor_t *tensors, unsigned count, char *err, size_t errlen)
{
    Module &m = s_modules[module];
    (void)ctx;
    if (m.model == nullptr || (m.cache_input != nullptr && m.probe_cache == nullptr)) {
        snprintf(err, errlen, "module %u is not bound for a probe", (unsigned)module);
        return RC_ERR_INTERNAL;
    }
    // user_inputs: the window, and the cache through a copy (assign() must not copy a tensor onto itself)
    dl::TensorBase window(m.input->get_shape(), input, m.input->get_exponent(), m.input->get_dtype(), false,
                          MALLOC_CAP_SPIRAM);
    std::map<std::string, dl::TensorBase *> inputs = {{m.input_name, &window}};
    std::vector<dl::TensorBase> caches;
    caches.reserve(1);
    if (m.cache_input != nullptr) {
        memcpy(m.probe_cache, m.cache_input->data, m.cache_input->get_bytes());
        caches.emplace_back(m.cache_input->get_shape(), m.probe_cache, m.cache_input->get_exponent(),
                            m.cache_input->get_dtype(), false, MALLOC_CAP_SPIRAM);
        inputs[m.cache_input_name] = &caches.back();
    }
    std::map<std::string, dl::TensorBase *> outputs;
    std::vector<dl::TensorBase> views;
    views.reserve(count);
    for (unsigned i = 0; i < count; i++) {
        rc_probe_tensor_t &t = tensors[i];
        dl::TensorBase *source = t.input ? find(m.model->get_inputs(), t.name) : m.model->get_intermediate(t.name);
        if (t.input) { // what the run reads: the window, or the cache before the run
            memcpy(t.data, source == m.input ? input : source->data, source->get_bytes());
            continue;
        }
        views.emplace_back(source->get_shape(), t.data, source->get_exponent(), source->get_dtype(), false,
                           MALLOC_CAP_SPIRAM);
        outputs[t.name] = &views.back();
    }
    // the same modules as run(), with the copies in between
    timed_run(m, [&] { m.model->run(inputs, dl::RUNTIME_MODE_SINGLE_CORE, outputs); }, output, timing);
    return RC_OK;
}

void modules_clear(void *ctx)
{
    (void)ctx;
    for (Module &m : s_modules) {
        release(m);
    }
}

const rc_backend_t s_backend = {model_load,   model_unload,  module_bind, module_run,
                                 module_reset, modules_clear, probe_find,  module_run_probed};

} // namespace

extern "C" const rc_backend_t *espdl_backend(void)
{
    // FbsLoader warns at every load from memory that "CONFIG_SPIRAM_RODATA ... is on, fbs model is copied to
    // PSRAM" (the buffer is in PSRAM, which it takes for relocated rodata; nothing is copied), and otherwise only
    // about unaligned buffers, which ESPDL_MODEL_ALIGNMENT rules out. Its errors still come through.
    esp_log_level_set("FbsLoader", ESP_LOG_ERROR);
    return &s_backend;
}
