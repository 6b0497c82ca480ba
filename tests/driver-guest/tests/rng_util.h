/* virtio-rng helpers shared by the rng, reset, garbage and rtt tests. */
#ifndef DG_RNG_UTIL_H
#define DG_RNG_UTIL_H

#include "virtio.h"

#define RNG_DEVICE_ID (VIRTIO_DEV_MODERN_BASE + VIRTIO_ID_RNG) /* 0x1044 */
#define RNG_TIMEOUT_MS 2000

extern struct virtio_dev rng;

/* Probes virtio-rng, enables MSI-X (entry i -> vector VEC_MSIX_BASE + i) and initializes it with
 * one request queue. Fails the test on any error. */
void rng_up(void);
/* Full initialization of an already probed device (after a reset). */
void rng_reinit(void);
/* One request: `len` device-writable bytes; checks the used entry, its length, the MSI-X
 * interrupt and that the bytes changed. Returns the cycles the round trip took. */
u64 rng_round_trip(u8 *buf, u32 len, bool check);

#endif
