/* SHA-256 (FIPS 180-4), portable C99: the core checks every uploaded model with it (MODEL_END). */
#ifndef RC_SHA256_H
#define RC_SHA256_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RC_SHA256_SIZE 32u

typedef struct {
    uint32_t state[8];
    uint64_t length; /* bytes hashed so far */
    uint8_t block[64];
    size_t fill; /* bytes waiting in block */
} rc_sha256_t;

void rc_sha256_init(rc_sha256_t *ctx);
void rc_sha256_update(rc_sha256_t *ctx, const uint8_t *data, size_t len);
void rc_sha256_final(rc_sha256_t *ctx, uint8_t digest[RC_SHA256_SIZE]);
/* The digest of len bytes in one call. */
void rc_sha256(const uint8_t *data, size_t len, uint8_t digest[RC_SHA256_SIZE]);

#ifdef __cplusplus
}
#endif

#endif /* RC_SHA256_H */
