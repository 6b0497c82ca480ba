/* virtio-snd helpers shared by the snd-* tests: the wire format of VIRTIO 1.2 §5.14, control
 * requests, I/O messages, the PCM test pattern and a TSC clock for pacing checks. */
#ifndef DG_SND_UTIL_H
#define DG_SND_UTIL_H

#include "virtio.h"

#define SND_DEVICE_ID (VIRTIO_DEV_MODERN_BASE + VIRTIO_ID_SOUND) /* 0x1059 */

/* Queues (§5.14.2) */
#define SND_CONTROLQ 0
#define SND_EVENTQ 1
#define SND_TXQ 2
#define SND_RXQ 3

/* Device configuration (§5.14.4) */
#define SND_CFG_JACKS 0
#define SND_CFG_STREAMS 4
#define SND_CFG_CHMAPS 8

/* Control request codes (§5.14.6) */
#define SND_R_JACK_INFO 1u
#define SND_R_JACK_REMAP 2u
#define SND_R_PCM_INFO 0x0100u
#define SND_R_PCM_SET_PARAMS 0x0101u
#define SND_R_PCM_PREPARE 0x0102u
#define SND_R_PCM_RELEASE 0x0103u
#define SND_R_PCM_START 0x0104u
#define SND_R_PCM_STOP 0x0105u
#define SND_R_CHMAP_INFO 0x0200u

/* Status codes */
#define SND_S_OK 0x8000u
#define SND_S_BAD_MSG 0x8001u
#define SND_S_NOT_SUPP 0x8002u
#define SND_S_IO_ERR 0x8003u

#define SND_D_OUTPUT 0
#define SND_D_INPUT 1

#define SND_FMT_S16 5
#define SND_RATE_48000 7

/* Structure sizes */
#define SND_PCM_INFO_SIZE 32
#define SND_CHMAP_INFO_SIZE 24
#define SND_JACK_INFO_SIZE 24
#define SND_CHMAP_MAX_SIZE 18

/* S16, 48 kHz, stereo: 4-byte frames, 192 bytes per millisecond. */
#define SND_FRAME_BYTES 4
#define SND_BYTES_PER_MS 192

/* The Linux driver's control timeout (msg_timeout_ms): a slower reply is a failure. */
#define SND_CTL_TIMEOUT_MS 1000

extern struct virtio_dev snd;
/* Configuration read at snd_up/snd_reinit. */
extern u32 snd_jacks, snd_streams, snd_chmaps;

/* Probes virtio-snd, enables MSI-X and initializes all four queues (64 entries) with 4 event
 * buffers on the eventq (§5.14.5: the driver populates it). With `event_idx=1` on the command
 * line it negotiates VIRTIO_F_RING_EVENT_IDX (the Linux driver does). Fails the test on any
 * error. */
void snd_up(void);
/* The full initialization again (after a reset). */
void snd_reinit(void);

const char *snd_status_name(u32 status);
/* Fails with `what` unless got == want. */
void snd_expect(const char *what, u32 got, u32 want);

/* One control request: `req_len` device-readable bytes, then a `resp_len`-byte device-writable
 * response (pre-filled with 0xa5), either may be 0 (then that part is absent). Waits up to
 * SND_CTL_TIMEOUT_MS; returns the response's status (0xa5a5a5a5 if the device did not write it,
 * 0 if resp_len < 4) and the used length in *used_len. The response is in snd_ctl_resp. */
u32 snd_ctl_raw(const char *what, const void *req, u32 req_len, u32 resp_len, u32 *used_len);
extern u8 snd_ctl_resp[];
/* Room for CHMAP_INFO of an 8:8 device: 4 + 128 maps of 24 bytes. */
#define SND_CTL_RESP_MAX 3100

/* A status-only request (PREPARE, START, ... or anything answered by a bare status): also checks
 * that the used length is 4. */
u32 snd_ctl(const char *what, const void *req, u32 req_len);
/* PREPARE/RELEASE/START/STOP on a stream. */
u32 snd_pcm_cmd(u32 code, u32 stream_id);
/* SET_PARAMS with these fields (features 0). */
u32 snd_set_params(u32 stream_id, u32 buffer_bytes, u32 period_bytes, u8 channels, u8 format, u8 rate);
/* S16 / 48 kHz / stereo, or fails the test. */
void snd_set_params_ok(u32 stream_id, u32 buffer_bytes, u32 period_bytes);
/* Fails unless the code succeeds on the stream. */
void snd_cmd_ok(u32 code, u32 stream_id);
const char *snd_cmd_name(u32 code);

/* The control happy path: config, PCM_INFO/CHMAP_INFO of every stream checked, then the full
 * lifecycle on stream 0 (S16/48k/2ch, 25 ms periods): SET_PARAMS, PREPARE twice, START, STOP,
 * START, STOP, RELEASE. */
void snd_control_happy_path(void);

/* A PCM I/O message (§5.14.6.8): header, PCM, status, as three descriptors. */
struct snd_pcm_status {
    u32 status, latency_bytes;
};
struct snd_io {
    u32 stream_id;               /* the virtio_snd_pcm_xfer header */
    struct snd_pcm_status st;    /* the device-writable status */
    u8 *data;
    u32 len;
    bool data_writable;          /* RX messages */
    bool split;                  /* header 2+2, PCM 1000+rest, status 3+5 bytes (§2.6.4 framing) */
    int head;                    /* descriptor head while queued, -1 otherwise */
    u64 done_tsc;                /* when the guest saw it complete */
};
/* Queues the message (status pre-set to 0xffffffff) without kicking: 3 descriptors, or 6 when
 * split (the device must not assume any particular arrangement of descriptors). */
void snd_io_add(struct virtq *q, struct snd_io *m);
/* Waits for the next used entry on q and returns the message among msgs[0..n) it names (its
 * head is cleared); fails on a timeout or an unknown head. *len gets the used length. */
struct snd_io *snd_io_wait(struct virtq *q, struct snd_io *msgs, int n, u32 *len, u32 timeout_ms,
                           const char *what);

/* The PCM pattern: the stream's 16-bit samples count up from 0 (sample k = k mod 65536).
 * Fills `bytes` (a multiple of 4) starting at sample `first`. */
void snd_fill_counter(u8 *buf, u32 bytes, u32 first);
/* Fills with a constant 16-bit sample. */
void snd_fill_const(u8 *buf, u32 bytes, u16 sample);
/* Returns the byte index of the first mismatch with the counter pattern, or -1. */
i64 snd_check_counter(const u8 *buf, u32 bytes, u32 first);

/* TSC cycles per millisecond, measured once against the LAPIC timer (100 ms). */
u64 snd_tsc_per_ms(void);
u64 snd_ms_since(u64 tsc0);

#endif
