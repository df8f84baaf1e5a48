/*
 * Integer tensors as the runner holds them, shared by the core and the host backend. Header-only, plain C99:
 *   - one window is W frames x C channels of native int8_t/int16_t values, stored NWC ([W][C]) or NCW ([C][W]);
 *   - rescaling with a target's rounding, as ESP-DL does it (harness/targets.py, Shifter): the core uses it to
 *     hand a module's output to the next module when their exponents differ (protocol.md section 7.1).
 */
#ifndef RC_TENSOR_H
#define RC_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "runner_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Value `index` of a buffer of `bits`-wide values; memcpy keeps it free of alignment and aliasing assumptions. */
static inline int32_t rc_value_get(const uint8_t *buf, size_t index, unsigned bits)
{
    if (bits == 16) {
        int16_t v;
        memcpy(&v, buf + 2 * index, sizeof v);
        return v;
    } else {
        int8_t v;
        memcpy(&v, buf + index, sizeof v);
        return v;
    }
}

/* Stores an in-range value. */
static inline void rc_value_set(uint8_t *buf, size_t index, unsigned bits, int32_t value)
{
    if (bits == 16) {
        int16_t v = (int16_t)value;
        memcpy(buf + 2 * index, &v, sizeof v);
    } else {
        int8_t v = (int8_t)value;
        memcpy(buf + index, &v, sizeof v);
    }
}

/* Position of frame t, channel c in a window of `frames` x `channels` stored in `layout`. */
static inline size_t rc_value_at(rc_layout_t layout, size_t t, size_t c, size_t frames, size_t channels)
{
    return layout == RC_LAYOUT_NWC ? t * channels + c : c * frames + t;
}

/* floor(v / 2^s) for 0 <= s <= 62, without relying on how >> treats negative numbers. */
static inline int64_t rc_floor_shift(int64_t v, unsigned s)
{
    return v >= 0 ? (int64_t)((uint64_t)v >> s) : -(int64_t)(((uint64_t)(-(v + 1))) >> s) - 1;
}

/* The largest value of a `bits`-wide (8 or 16) signed integer. */
static inline int32_t rc_int_max(unsigned bits)
{
    return bits == 16 ? 32767 : 127;
}

static inline int32_t rc_saturate(int64_t v, unsigned bits)
{
    int32_t hi = rc_int_max(bits);
    return v > hi ? hi : v < -(int64_t)hi - 1 ? -hi - 1 : (int32_t)v;
}

/* acc / 2^shift rounded like the target (shift <= 0: an exact left shift), saturated to `bits`.
 * For |acc| < 2^61. Half up is (acc + half) >> s; half to even adds half - 1 plus the quotient's low bit,
 * which carries exactly when the remainder is above half, or equal to it with an odd quotient. */
static inline int32_t rc_requantize(int64_t acc, int shift, rc_rounding_t rounding, unsigned bits)
{
    if (shift <= 0) {
        /* past 2^17 every nonzero value saturates: clamp first so the shift cannot overflow */
        int64_t limit = (int64_t)1 << 17;
        unsigned left = shift < -17 ? 17u : (unsigned)-shift;
        acc = acc > limit ? limit : acc < -limit ? -limit : acc;
        return rc_saturate(acc * ((int64_t)1 << left), bits);
    } else {
        unsigned s = shift > 62 ? 62u : (unsigned)shift; /* beyond 62 every |acc| < 2^61 rounds to 0 */
        int64_t half = (int64_t)1 << (s - 1);
        if (rounding == RC_ROUND_HALF_EVEN) {
            int64_t odd = (int64_t)((uint64_t)rc_floor_shift(acc, s) & 1u);
            return rc_saturate(rc_floor_shift(acc + half - 1 + odd, s), bits);
        }
        return rc_saturate(rc_floor_shift(acc + half, s), bits);
    }
}

#ifdef __cplusplus
}
#endif

#endif /* RC_TENSOR_H */
