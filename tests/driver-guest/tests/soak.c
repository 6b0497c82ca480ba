/* soak: a guest that never ends (`make soak`, resources/soak.sh). One output stream plays steadily
 * while every other queue of virtio-snd and virtio-rng is kept full of work, legal and not, until
 * the host kills the VMM; the host samples canto's memory and CPU meanwhile. Needs
 * `--sound backend=null,capture=null,streams=2:1` (or wav): outputs 0 and 1, input 2.
 *
 * - txq: 8 proper 10 ms periods for stream 1 (the counter pattern; each completion must be OK and
 *   in order, and the stream must never stall for 5 s), next to one junk message of each kind
 *   for stream 0 (tiny PCM, garbage stream ids, header only, no/read-only/far status, far or
 *   writable PCM, no PCM, a short header), each re-queued the moment it comes back;
 * - stream 0 itself cycles through its whole lifecycle (SET_PARAMS with changing periods,
 *   PREPARE, START, ~1 s of junk, STOP, RELEASE, a pause) on the controlq, every step OK
 *   (`cycle=0`: only up to START, once);
 * - controlq: 14 more requests in flight, legal and not (PCM_INFO, CHMAP_INFO, a split request,
 *   JACK_INFO past the end, huge counts and sizes, an unknown code, short and empty requests,
 *   no reply buffer, START/PREPARE/SET_PARAMS on the running stream 1, bad stream ids), each
 *   checked against the status it must get and re-queued;
 * - rxq: 6 capture periods of input stream 2 (OK, full length) and junk RX messages;
 * - eventq: every descriptor posted, kicked every round;
 * - kicks on queues that do not exist, on both devices;
 * - virtio-rng: 24 requests in flight (single buffers of many sizes, 2-buffer chains, read-only
 *   and far buffers), and a full reset and re-initialization every `rng_reset=N` s (default 1).
 *
 * Every message must come back: a control request within 5 s, any other within 10 s. A progress
 * line every `report=N` s (default 10): `DG soak: <s> s: ...`. With `secs=N` it ends after N s
 * (for a quick check); without, it never ends. */
#include "dg.h"
#include "irq.h"
#include "rng_util.h"
#include "serial.h"
#include "snd_util.h"
#include "tests.h"

#define SOAK_PERIOD 1920 /* 480 frames of S16/48k/stereo: 10 ms */
#define JUNK_STREAM 0
#define PLAY_STREAM 1
#define CAP_STREAM 2
#define PLAY_MSGS 8 /* 24 txq descriptors */
#define CAP_MSGS 6  /* 18 rxq descriptors */
#define CTL_SLOTS 14 /* up to 4 descriptors each, + 2 for the lifecycle request: 58 of 64 */
#define RNG_REQS 24  /* up to 2 descriptors each */
#define CTL_MAX_AGE_MS 5000
#define IO_MAX_AGE_MS 10000
#define STALL_MS 5000

/* Owner of a descriptor head: NONE, or a tag (what kind of message) | index. */
#define OWNER_NONE 0xffff
#define TAG_PLAY 0x100
#define TAG_JUNK 0x200
#define TAG_CAP 0x300
#define TAG_CTL 0x400
#define TAG_LIFE 0x500
#define TAG_RNG 0x600
#define TAG_MASK 0xff00
static u16 owner[4][VIRTQ_MAX_SIZE];   /* per snd queue */
static u16 rng_owner[VIRTQ_MAX_SIZE];

static const void *const far = (const void *)0xf00000000000ull; /* far outside guest RAM */

/* Result classes, for the counters the progress lines print. */
enum { R_OK, R_BAD_MSG, R_NOT_SUPP, R_IO_ERR, R_LEN0, R_OTHER, NRES };
static u32 classify(u32 len, u32 status)
{
    if (len == 0)
        return R_LEN0;
    switch (status) {
    case SND_S_OK: return R_OK;
    case SND_S_BAD_MSG: return R_BAD_MSG;
    case SND_S_NOT_SUPP: return R_NOT_SUPP;
    case SND_S_IO_ERR: return R_IO_ERR;
    default: return R_OTHER;
    }
}

/* A junk message (txq, rxq) or a request (controlq, rng): its own buffers, so nothing the device
 * writes for one can be mistaken for another's. */
struct msg {
    u32 hdr[8];
    u32 st[4];
    u8 pcm[16];
    u8 kind;
    u32 max_len;  /* the chain's writable bytes: a used len above it is a device bug */
    u64 sent_tsc; /* 0 while not queued */
    u64 sent;
};

static u64 per_ms;

/* Queues the chain; records its owner and when it went out. */
static void queue_msg(struct virtq *q, u16 *owners, u16 tag_index, struct msg *m, const struct vbuf *b,
                      int n)
{
    u32 w = 0;
    for (int i = 0; i < n; i++)
        if (b[i].device_writes)
            w += b[i].len;
    m->max_len = w;
    int head = virtq_add(q, b, n);
    if (head < 0)
        dg_fail("queue %u: no room for a %d-descriptor message (%u free)", q->index, n, q->num_free);
    owners[head] = tag_index;
    m->sent_tsc = rdtsc();
    m->sent++;
}

static void check_age(const char *what, int i, struct msg *m, u64 now, u64 limit_ms)
{
    if (m->sent_tsc && (now - m->sent_tsc) / per_ms > limit_ms)
        dg_fail("%s %d (kind %u) not returned after %lu ms", what, i, m->kind,
                (now - m->sent_tsc) / per_ms);
}

/* ---- txq: stream 1 plays, junk for stream 0 --------------------------------------------- */

static u8 play_pcm[PLAY_MSGS][SOAK_PERIOD] ALIGNED(64);
static struct snd_io play_msgs[PLAY_MSGS];
static u64 play_sent_tsc[PLAY_MSGS];
static u32 play_period_of[PLAY_MSGS];
static u32 play_sent, play_done;
static u64 play_last_done_tsc;

enum { TJ_PCM4, TJ_PCM1, TJ_BAD_ID, TJ_HDR_ONLY, TJ_NO_STATUS, TJ_RO_STATUS, TJ_FAR_PCM, TJ_FAR_STATUS,
       TJ_WRITABLE_PCM, TJ_NO_PCM, TJ_SHORT_HDR, TJ_N };
static const char *const tj_name[TJ_N] = {"4-byte PCM", "1-byte PCM", "bad stream id", "header only",
                                          "no status", "read-only status", "far PCM", "far status",
                                          "writable PCM", "no PCM", "2-byte header"};
/* Stream ids no TX may use: 2 is the input, 3 does not exist. */
static const u32 bad_ids[4] = {0xdeadbeefu, 3, CAP_STREAM, 0x80000000u};
static struct msg tx_junk[TJ_N] ALIGNED(64);
static u32 tx_res[TJ_N][NRES];

static void play_add(struct virtq *tx, int i)
{
    snd_fill_counter(play_pcm[i], SOAK_PERIOD, play_sent * (SOAK_PERIOD / 2));
    play_period_of[i] = play_sent++;
    snd_io_add(tx, &play_msgs[i]);
    owner[SND_TXQ][play_msgs[i].head] = (u16)(TAG_PLAY | i);
    play_sent_tsc[i] = rdtsc();
}

static void play_done_check(int i, u32 len)
{
    struct snd_io *m = &play_msgs[i];
    if (play_period_of[i] != play_done)
        dg_fail("stream 1: completion %u is period %u: out of order", play_done, play_period_of[i]);
    if (len != 8 || m->st.status != SND_S_OK)
        dg_fail("stream 1 period %u: len %u status 0x%x (%s)", play_done, len, m->st.status,
                snd_status_name(m->st.status));
    m->head = -1;
    play_sent_tsc[i] = 0;
    play_done++;
    play_last_done_tsc = rdtsc();
}

static void tx_junk_add(struct virtq *tx, int i)
{
    struct msg *m = &tx_junk[i];
    memset(m->st, 0xff, sizeof(m->st));
    m->hdr[0] = JUNK_STREAM;
    struct vbuf b[3];
    int n = 0;
    b[n++] = (struct vbuf){m->hdr, 4, false};
    switch (m->kind) {
    case TJ_PCM4:
    case TJ_PCM1:
        b[n++] = (struct vbuf){m->pcm, m->kind == TJ_PCM4 ? 4 : 1, false};
        b[n++] = (struct vbuf){m->st, 8, true};
        break;
    case TJ_BAD_ID:
        m->hdr[0] = bad_ids[m->sent % ARRAY_SIZE(bad_ids)];
        b[n++] = (struct vbuf){m->pcm, 16, false};
        b[n++] = (struct vbuf){m->st, 8, true};
        break;
    case TJ_HDR_ONLY:
        break;
    case TJ_NO_STATUS:
        b[n++] = (struct vbuf){m->pcm, 16, false};
        break;
    case TJ_RO_STATUS:
        b[n++] = (struct vbuf){m->pcm, 16, false};
        b[n++] = (struct vbuf){m->st, 8, false};
        break;
    case TJ_FAR_PCM:
        b[n++] = (struct vbuf){far, 4800, false};
        b[n++] = (struct vbuf){m->st, 8, true};
        break;
    case TJ_FAR_STATUS:
        b[n++] = (struct vbuf){m->pcm, 16, false};
        b[n++] = (struct vbuf){far, 8, true};
        break;
    case TJ_WRITABLE_PCM:
        b[n++] = (struct vbuf){m->pcm, 16, true};
        b[n++] = (struct vbuf){m->st, 8, true};
        break;
    case TJ_NO_PCM:
        b[n++] = (struct vbuf){m->st, 8, true};
        break;
    default: /* TJ_SHORT_HDR */
        b[0].len = 2;
        b[n++] = (struct vbuf){m->pcm, 16, false};
        b[n++] = (struct vbuf){m->st, 8, true};
        break;
    }
    queue_msg(tx, owner[SND_TXQ], (u16)(TAG_JUNK | i), m, b, n);
}

static void junk_done(const char *q, struct msg *m, u32 len, u32 res[NRES])
{
    if (len > m->max_len)
        dg_fail("%s junk kind %u: used len %u, the chain has %u writable bytes", q, m->kind, len,
                m->max_len);
    res[classify(len, m->st[0])]++;
    m->sent_tsc = 0;
}

/* ---- rxq: stream 2 captures, junk RX --------------------------------------------------- */

static u8 cap_pcm[CAP_MSGS][SOAK_PERIOD] ALIGNED(64);
static struct snd_io cap_msgs[CAP_MSGS];
static u64 cap_sent_tsc[CAP_MSGS];
static u32 cap_done;

enum { RJ_OUTPUT_STREAM, RJ_BAD_ID, RJ_HDR_ONLY, RJ_SHORT, RJ_RO_PCM, RJ_FAR_PCM, RJ_ODD, RJ_N };
static const char *const rj_name[RJ_N] = {"RX for an output", "bad stream id", "header only",
                                          "4 writable bytes", "read-only PCM", "far PCM", "1-byte PCM"};
static struct msg rx_junk[RJ_N] ALIGNED(64);
static u32 rx_res[RJ_N][NRES];

static void cap_add(struct virtq *rx, int i)
{
    cap_msgs[i] = (struct snd_io){.stream_id = CAP_STREAM, .data = cap_pcm[i], .len = SOAK_PERIOD,
                                  .data_writable = true};
    snd_io_add(rx, &cap_msgs[i]);
    owner[SND_RXQ][cap_msgs[i].head] = (u16)(TAG_CAP | i);
    cap_sent_tsc[i] = rdtsc();
}

static void cap_done_check(int i, u32 len)
{
    struct snd_io *m = &cap_msgs[i];
    if (len != 8 + SOAK_PERIOD || m->st.status != SND_S_OK)
        dg_fail("stream 2 capture %u: len %u status 0x%x (%s)", cap_done, len, m->st.status,
                snd_status_name(m->st.status));
    cap_sent_tsc[i] = 0;
    cap_done++;
}

static void rx_junk_add(struct virtq *rx, int i)
{
    struct msg *m = &rx_junk[i];
    memset(m->st, 0xff, sizeof(m->st));
    m->hdr[0] = CAP_STREAM;
    struct vbuf b[3];
    int n = 0;
    b[n++] = (struct vbuf){m->hdr, 4, false};
    switch (m->kind) {
    case RJ_OUTPUT_STREAM:
    case RJ_BAD_ID:
        m->hdr[0] = m->kind == RJ_OUTPUT_STREAM ? JUNK_STREAM : 0xffffffffu;
        b[n++] = (struct vbuf){m->pcm, 16, true};
        b[n++] = (struct vbuf){m->st, 8, true};
        break;
    case RJ_HDR_ONLY:
        break;
    case RJ_SHORT:
        b[n++] = (struct vbuf){m->st, 4, true};
        break;
    case RJ_RO_PCM:
        b[n++] = (struct vbuf){m->pcm, 16, false};
        b[n++] = (struct vbuf){m->st, 8, true};
        break;
    case RJ_FAR_PCM:
        b[n++] = (struct vbuf){far, 4800, true};
        b[n++] = (struct vbuf){m->st, 8, true};
        break;
    default: /* RJ_ODD */
        b[n++] = (struct vbuf){m->pcm, 1, true};
        b[n++] = (struct vbuf){m->st, 8, true};
        break;
    }
    queue_msg(rx, owner[SND_RXQ], (u16)(TAG_JUNK | i), m, b, n);
}

/* ---- controlq: a flood of requests, and stream 0's lifecycle ---------------------------- */

enum expect { E_OK, E_ERR, E_LEN0 };
enum { C_PCM_INFO, C_CHMAP_INFO, C_SPLIT_PCM_INFO, C_JACK_PAST_END, C_HUGE_COUNT, C_HUGE_SIZE,
       C_UNKNOWN_CODE, C_SHORT, C_EMPTY, C_NO_REPLY, C_START_RUNNING, C_PREPARE_RUNNING,
       C_SET_PARAMS_RUNNING, C_SET_PARAMS_BAD_ID, C_RELEASE_BAD_ID, C_ONE_FRAME_BAD_ID, C_N };
static const struct {
    const char *name;
    enum expect expect;
} ck[C_N] = {
    {"PCM_INFO", E_OK},
    {"CHMAP_INFO", E_OK},
    {"PCM_INFO over 3 descriptors", E_OK},
    {"JACK_INFO past the end", E_ERR},
    {"PCM_INFO count 0xffffffff", E_ERR},
    {"PCM_INFO size 0xffffffff", E_ERR},
    {"unknown code", E_ERR},
    {"2-byte request", E_ERR},
    {"no readable part", E_ERR},
    {"no reply buffer", E_LEN0},
    {"START on running stream 1", E_ERR},
    {"PREPARE on running stream 1", E_ERR},
    {"SET_PARAMS on running stream 1", E_ERR},
    {"SET_PARAMS stream 0xffffffff", E_ERR},
    {"RELEASE stream 0xffffffff", E_ERR},
    {"SET_PARAMS 1-frame period, stream 7", E_ERR},
};
static struct msg ctl[CTL_SLOTS] ALIGNED(64);
static u8 ctl_resp[CTL_SLOTS][4 + 3 * SND_PCM_INFO_SIZE] ALIGNED(64);
static u32 ctl_res[C_N][NRES];
static u32 ctl_next_kind;

static void ctl_add(struct virtq *cq, int i)
{
    struct msg *m = &ctl[i];
    m->kind = (u8)(ctl_next_kind++ % C_N);
    if (m->kind == C_CHMAP_INFO && !snd_chmaps)
        m->kind = C_PCM_INFO;
    u32 *r = m->hdr;
    memset(r, 0, sizeof(m->hdr));
    memset(ctl_resp[i], 0xa5, sizeof(ctl_resp[i]));
    u32 req_len = 16, resp_len = 4;
    switch (m->kind) {
    case C_PCM_INFO:
    case C_SPLIT_PCM_INFO:
        r[0] = SND_R_PCM_INFO, r[1] = 0, r[2] = snd_streams, r[3] = SND_PCM_INFO_SIZE;
        resp_len = 4 + snd_streams * SND_PCM_INFO_SIZE;
        break;
    case C_CHMAP_INFO:
        r[0] = SND_R_CHMAP_INFO, r[1] = 0, r[2] = 1, r[3] = SND_CHMAP_INFO_SIZE;
        resp_len = 4 + SND_CHMAP_INFO_SIZE;
        break;
    case C_JACK_PAST_END:
        r[0] = SND_R_JACK_INFO, r[1] = 0, r[2] = snd_jacks + 1, r[3] = SND_JACK_INFO_SIZE;
        resp_len = 4 + (snd_jacks + 1) * SND_JACK_INFO_SIZE;
        break;
    case C_HUGE_COUNT:
        r[0] = SND_R_PCM_INFO, r[1] = 0, r[2] = 0xffffffffu, r[3] = SND_PCM_INFO_SIZE;
        resp_len = sizeof(ctl_resp[i]);
        break;
    case C_HUGE_SIZE:
        r[0] = SND_R_PCM_INFO, r[1] = 0, r[2] = 1, r[3] = 0xffffffffu;
        resp_len = sizeof(ctl_resp[i]);
        break;
    case C_UNKNOWN_CODE:
        r[0] = 0x7777;
        break;
    case C_SHORT:
        r[0] = SND_R_PCM_INFO;
        req_len = 2;
        break;
    case C_EMPTY:
        req_len = 0;
        break;
    case C_NO_REPLY:
        r[0] = SND_R_PCM_INFO, r[1] = 0, r[2] = 1, r[3] = SND_PCM_INFO_SIZE;
        resp_len = 0;
        break;
    case C_START_RUNNING:
    case C_PREPARE_RUNNING:
    case C_RELEASE_BAD_ID:
        r[0] = m->kind == C_START_RUNNING     ? SND_R_PCM_START
               : m->kind == C_PREPARE_RUNNING ? SND_R_PCM_PREPARE
                                              : SND_R_PCM_RELEASE;
        r[1] = m->kind == C_RELEASE_BAD_ID ? 0xffffffffu : PLAY_STREAM;
        req_len = 8;
        break;
    default: /* the SET_PARAMS kinds: code, stream, buffer, period, features, ch/fmt/rate */
        r[0] = SND_R_PCM_SET_PARAMS;
        r[1] = m->kind == C_SET_PARAMS_RUNNING ? PLAY_STREAM
               : m->kind == C_SET_PARAMS_BAD_ID ? 0xffffffffu
                                                : 7;
        r[2] = m->kind == C_ONE_FRAME_BAD_ID ? SND_FRAME_BYTES : PLAY_MSGS * SOAK_PERIOD;
        r[3] = m->kind == C_ONE_FRAME_BAD_ID ? SND_FRAME_BYTES : SOAK_PERIOD;
        r[4] = 0;
        r[5] = 2 | SND_FMT_S16 << 8 | SND_RATE_48000 << 16;
        req_len = 24;
        break;
    }
    struct vbuf b[4];
    int n = 0;
    if (m->kind == C_SPLIT_PCM_INFO) {
        b[n++] = (struct vbuf){r, 4, false};
        b[n++] = (struct vbuf){(u8 *)r + 4, 4, false};
        b[n++] = (struct vbuf){(u8 *)r + 8, 8, false};
    } else if (req_len) {
        b[n++] = (struct vbuf){r, req_len, false};
    }
    if (resp_len)
        b[n++] = (struct vbuf){ctl_resp[i], resp_len, true};
    queue_msg(cq, owner[SND_CONTROLQ], (u16)(TAG_CTL | i), m, b, n);
}

static void ctl_done(int i, u32 len)
{
    struct msg *m = &ctl[i];
    if (len > m->max_len)
        dg_fail("%s: used len %u, the reply buffer is %u bytes", ck[m->kind].name, len, m->max_len);
    u32 s;
    memcpy(&s, ctl_resp[i], 4);
    u32 res = classify(len, s);
    ctl_res[m->kind][res]++;
    bool ok = ck[m->kind].expect == E_OK    ? res == R_OK && len == m->max_len
              : ck[m->kind].expect == E_ERR ? len >= 4 && res != R_OK && res != R_OTHER
                                            : len == 0;
    if (!ok)
        dg_fail("controlq %s: used len %u status 0x%x (%s)", ck[m->kind].name, len, s,
                len >= 4 ? snd_status_name(s) : "none");
    m->sent_tsc = 0;
}

/* Stream 0's lifecycle, one request at a time on the controlq. */
enum { L_SET_PARAMS, L_PREPARE, L_START, L_STOP, L_RELEASE, L_N };
static const u32 life_code[L_N] = {SND_R_PCM_SET_PARAMS, SND_R_PCM_PREPARE, SND_R_PCM_START,
                                   SND_R_PCM_STOP, SND_R_PCM_RELEASE};
static struct msg life ALIGNED(64);
static u8 life_resp[4] ALIGNED(4);
static int life_step;       /* the request to send next */
static bool life_pending;
static u64 life_at_tsc;     /* when to send it */
static u32 life_cycles;
static bool life_cycling = true; /* cycle=0: SET_PARAMS, PREPARE, START once, then it just plays */

static void life_send(struct virtq *cq)
{
    u32 *r = life.hdr;
    r[0] = life_code[life_step];
    r[1] = JUNK_STREAM;
    u32 req_len = 8;
    if (life_step == L_SET_PARAMS) {
        /* 10, 20 or 30 ms periods, 2-4 of them: each cycle sets different params. */
        u32 period = SOAK_PERIOD * (1 + life_cycles % 3);
        r[2] = period * (2 + life_cycles % 3);
        r[3] = period;
        r[4] = 0;
        r[5] = 2 | SND_FMT_S16 << 8 | SND_RATE_48000 << 16;
        req_len = 24;
    }
    memset(life_resp, 0xa5, sizeof(life_resp));
    struct vbuf b[2] = {{r, req_len, false}, {life_resp, 4, true}};
    queue_msg(cq, owner[SND_CONTROLQ], TAG_LIFE, &life, b, 2);
    life_pending = true;
}

static void life_done(u32 len)
{
    u32 s;
    memcpy(&s, life_resp, 4);
    if (len != 4 || s != SND_S_OK)
        dg_fail("stream 0 lifecycle: %s (cycle %u): used len %u status 0x%x (%s)",
                snd_cmd_name(life_code[life_step]), life_cycles, len, s, snd_status_name(s));
    life.sent_tsc = 0;
    life_pending = false;
    /* After START it plays ~1 s of junk; after RELEASE it rests 200 ms. */
    u32 dwell = life_step == L_START ? 1000 : life_step == L_RELEASE ? 200 : 0;
    life_at_tsc = rdtsc() + dwell * per_ms;
    if (++life_step == L_N) {
        life_step = 0;
        life_cycles++;
    }
    if (!life_cycling && life_step == L_STOP)
        life_at_tsc = ~0ull;
}

/* ---- virtio-rng ------------------------------------------------------------------------- */

enum { G_ONE, G_CHAIN, G_READ_ONLY, G_FAR, G_N };
static struct msg rng_req[RNG_REQS] ALIGNED(64);
static u8 rng_buf[RNG_REQS][256] ALIGNED(64);
static u32 rng_res[G_N][2]; /* len > 0, len 0 */
static u32 rng_resets;
#define RNG_VEC_BASE (VEC_MSIX_BASE + 0x10) /* apart from virtio-snd's vectors */

static void rng_add(struct virtq *q, int i)
{
    struct msg *m = &rng_req[i];
    u32 size = 1 + (u32)((m->sent * 37 + (u64)i * 11) % 256);
    struct vbuf b[2];
    int n = 0;
    switch (m->kind) {
    case G_ONE:
        b[n++] = (struct vbuf){rng_buf[i], size, true};
        break;
    case G_CHAIN:
        b[n++] = (struct vbuf){rng_buf[i], 128, true};
        b[n++] = (struct vbuf){rng_buf[i] + 128, size > 128 ? 128 : size, true};
        break;
    case G_READ_ONLY:
        b[n++] = (struct vbuf){rng_buf[i], size, false};
        break;
    default:
        b[n++] = (struct vbuf){far, 4096, true};
        break;
    }
    queue_msg(q, rng_owner, (u16)(TAG_RNG | i), m, b, n);
}

static void rng_start(void)
{
    DG_CHECK(virtio_setup_msix(&rng, RNG_VEC_BASE));
    DG_CHECK(virtio_init(&rng, 0, 1, 64));
    memset(rng_owner, 0xff, sizeof(rng_owner));
    struct virtq *q = &rng.vq[0];
    for (int i = 0; i < RNG_REQS; i++) {
        rng_req[i].kind = (u8)(i % 8 == 7 ? G_FAR : i % 8 == 6 ? G_READ_ONLY : i % 3 == 2 ? G_CHAIN : G_ONE);
        rng_req[i].sent_tsc = 0;
        rng_add(q, i);
    }
    virtq_kick(q);
}

static void rng_restart(void)
{
    DG_CHECK(virtio_reset(&rng));
    rng_resets++;
    rng_start();
}

/* ---- draining --------------------------------------------------------------------------- */

NORETURN static void bad_tag(const char *q, int id, u16 o)
{
    dg_fail("%s: used entry names descriptor %d, which carries %s (owner 0x%x)", q, id,
            o == OWNER_NONE ? "nothing" : "something else", o);
}

static u32 drain_tx(struct virtq *tx)
{
    u32 n = 0, len;
    int id;
    while ((id = virtq_get_used(tx, &len)) >= 0) {
        u16 o = owner[SND_TXQ][id];
        owner[SND_TXQ][id] = OWNER_NONE;
        int i = o & 0xff;
        if ((o & TAG_MASK) == TAG_PLAY && i < PLAY_MSGS) {
            play_done_check(i, len);
            play_add(tx, i);
        } else if ((o & TAG_MASK) == TAG_JUNK && i < TJ_N) {
            junk_done("txq", &tx_junk[i], len, tx_res[i]);
            tx_junk_add(tx, i);
        } else {
            bad_tag("txq", id, o);
        }
        n++;
    }
    return n;
}

static u32 drain_rx(struct virtq *rx)
{
    u32 n = 0, len;
    int id;
    while ((id = virtq_get_used(rx, &len)) >= 0) {
        u16 o = owner[SND_RXQ][id];
        owner[SND_RXQ][id] = OWNER_NONE;
        int i = o & 0xff;
        if ((o & TAG_MASK) == TAG_CAP && i < CAP_MSGS) {
            cap_done_check(i, len);
            cap_add(rx, i);
        } else if ((o & TAG_MASK) == TAG_JUNK && i < RJ_N) {
            junk_done("rxq", &rx_junk[i], len, rx_res[i]);
            rx_junk_add(rx, i);
        } else {
            bad_tag("rxq", id, o);
        }
        n++;
    }
    return n;
}

static u32 drain_ctl(struct virtq *cq)
{
    u32 n = 0, len;
    int id;
    while ((id = virtq_get_used(cq, &len)) >= 0) {
        u16 o = owner[SND_CONTROLQ][id];
        owner[SND_CONTROLQ][id] = OWNER_NONE;
        int i = o & 0xff;
        if ((o & TAG_MASK) == TAG_CTL && i < CTL_SLOTS) {
            ctl_done(i, len);
            ctl_add(cq, i);
        } else if (o == TAG_LIFE && life_pending) {
            life_done(len);
        } else {
            bad_tag("controlq", id, o);
        }
        n++;
    }
    return n;
}

static u32 drain_rng(struct virtq *q)
{
    u32 n = 0, len;
    int id;
    while ((id = virtq_get_used(q, &len)) >= 0) {
        u16 o = rng_owner[id];
        rng_owner[id] = OWNER_NONE;
        int i = o & 0xff;
        if ((o & TAG_MASK) != TAG_RNG || i >= RNG_REQS)
            bad_tag("virtio-rng", id, o);
        struct msg *m = &rng_req[i];
        if (len > m->max_len)
            dg_fail("virtio-rng request kind %u: used len %u for %u writable bytes", m->kind, len,
                    m->max_len);
        rng_res[m->kind][len == 0]++;
        m->sent_tsc = 0;
        rng_add(q, i);
        n++;
    }
    return n;
}

static bool anything_used(void *arg)
{
    (void)arg;
    return virtq_has_used(&snd.vq[SND_TXQ]) || virtq_has_used(&snd.vq[SND_RXQ]) ||
           virtq_has_used(&snd.vq[SND_CONTROLQ]) || virtq_has_used(&rng.vq[0]);
}

/* Kicks for queues the devices do not have (4 queues on virtio-snd, 1 on virtio-rng): the
 * device must ignore them. */
static void bad_kicks(void)
{
    for (u16 q = 4; q < 8; q++)
        mmio_write16(snd.notify_base + (u64)q * snd.notify_off_multiplier, q);
    mmio_write16(rng.notify_base + 3ull * rng.notify_off_multiplier, 3);
    /* A kick naming another queue at the rxq's address (no VIRTIO_F_NOTIFICATION_DATA). */
    mmio_write16(snd.vq[SND_RXQ].notify, 0xffff);
}

static void check_ages(void)
{
    u64 now = rdtsc();
    for (int i = 0; i < PLAY_MSGS; i++)
        if (play_sent_tsc[i] && (now - play_sent_tsc[i]) / per_ms > IO_MAX_AGE_MS)
            dg_fail("stream 1 message %d not returned after %lu ms", i, (now - play_sent_tsc[i]) / per_ms);
    for (int i = 0; i < CAP_MSGS; i++)
        if (cap_sent_tsc[i] && (now - cap_sent_tsc[i]) / per_ms > IO_MAX_AGE_MS)
            dg_fail("stream 2 capture %d not returned after %lu ms", i, (now - cap_sent_tsc[i]) / per_ms);
    for (int i = 0; i < TJ_N; i++)
        check_age("txq junk", i, &tx_junk[i], now, IO_MAX_AGE_MS);
    for (int i = 0; i < RJ_N; i++)
        check_age("rxq junk", i, &rx_junk[i], now, IO_MAX_AGE_MS);
    for (int i = 0; i < CTL_SLOTS; i++)
        check_age("control request", i, &ctl[i], now, CTL_MAX_AGE_MS);
    check_age("stream 0 lifecycle request", life_step, &life, now, CTL_MAX_AGE_MS);
    for (int i = 0; i < RNG_REQS; i++)
        check_age("virtio-rng request", i, &rng_req[i], now, IO_MAX_AGE_MS);
    if ((now - play_last_done_tsc) / per_ms > STALL_MS)
        dg_fail("stream 1 stalled: no period completed for %lu ms", (now - play_last_done_tsc) / per_ms);
    u8 st = virtio_status(&snd);
    if (st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
        dg_fail("virtio-snd device status 0x%x", st);
    st = virtio_status(&rng);
    if (st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
        dg_fail("virtio-rng device status 0x%x", st);
}

static u32 sum_res(const u32 (*res)[NRES], int n, int r)
{
    u32 s = 0;
    for (int i = 0; i < n; i++)
        s += res[i][r];
    return s;
}

static void report(u64 t0)
{
    u64 ms = snd_ms_since(t0);
    dg_log("soak: %lu s: stream 1 %u periods (%lu%% of real time), stream 2 %u captures, stream 0 "
           "%u lifecycles; txq junk OK/IO_ERR/BAD_MSG/len0 %u/%u/%u/%u; rxq junk %u/%u/%u/%u; "
           "controlq OK %u err %u; rng %u+%u, %u resets",
           ms / 1000, play_done, ms >= 10 ? (u64)play_done * 1000 / ms : 0, cap_done, life_cycles,
           sum_res(tx_res, TJ_N, R_OK), sum_res(tx_res, TJ_N, R_IO_ERR), sum_res(tx_res, TJ_N, R_BAD_MSG),
           sum_res(tx_res, TJ_N, R_LEN0), sum_res(rx_res, RJ_N, R_OK), sum_res(rx_res, RJ_N, R_IO_ERR),
           sum_res(rx_res, RJ_N, R_BAD_MSG), sum_res(rx_res, RJ_N, R_LEN0),
           sum_res(ctl_res, C_N, R_OK),
           sum_res(ctl_res, C_N, R_BAD_MSG) + sum_res(ctl_res, C_N, R_NOT_SUPP) +
               sum_res(ctl_res, C_N, R_IO_ERR),
           rng_res[G_ONE][0] + rng_res[G_CHAIN][0], rng_res[G_READ_ONLY][1] + rng_res[G_FAR][1],
           rng_resets);
}

static u64 cmdline_u64(const char *key, u64 dflt, u64 max)
{
    char arg[16];
    u64 v = dflt;
    if (cmdline_get(dg_cmdline, key, arg, sizeof(arg)) && (!parse_u64(arg, &v) || v > max))
        dg_fail("%s=%s: expected 0..%lu", key, arg, max);
    return v;
}

void test_soak(void)
{
    u64 secs = cmdline_u64("secs", 0, 1ull << 32);  /* 0: forever */
    u64 report_s = cmdline_u64("report", 10, 3600);
    u64 rng_reset_s = cmdline_u64("rng_reset", 1, 3600); /* 0: never */
    if (!report_s)
        report_s = 10;
    life_cycling = cmdline_u64("cycle", 1, 1) != 0;
    snd_up();
    DG_CHECK(virtio_probe(&rng, RNG_DEVICE_ID));
    per_ms = snd_tsc_per_ms();
    if (snd_streams != 3)
        dg_fail("config: %u streams; soak needs capture=null,streams=2:1 (outputs 0 and 1, input 2)", snd_streams);
    struct virtq *tx = &snd.vq[SND_TXQ], *rx = &snd.vq[SND_RXQ], *cq = &snd.vq[SND_CONTROLQ],
                 *eq = &snd.vq[SND_EVENTQ];
    if (tx->size != 64 || rx->size != 64 || cq->size != 64 || eq->size != 64)
        dg_fail("queue sizes %u/%u/%u/%u, the soak is laid out for 64", cq->size, eq->size, tx->size,
                rx->size);
    memset(owner, 0xff, sizeof(owner));

    /* The eventq: snd_up posted 4 buffers; fill the rest of the ring (never used: no events). */
    static struct {
        u32 type, data;
    } evq_bufs[64] ALIGNED(64);
    for (int i = 0; eq->num_free; i++) {
        struct vbuf b = {&evq_bufs[i], sizeof(evq_bufs[i]), true};
        virtq_add(eq, &b, 1);
    }
    virtq_kick(eq);

    /* Stream 1 plays and stream 2 captures from here to the end; stream 0 starts its cycle in
     * the loop. These go through snd_ctl before the controlq flood begins. */
    snd_set_params_ok(PLAY_STREAM, PLAY_MSGS * SOAK_PERIOD, SOAK_PERIOD);
    snd_cmd_ok(SND_R_PCM_PREPARE, PLAY_STREAM);
    for (int i = 0; i < PLAY_MSGS; i++) {
        play_msgs[i] = (struct snd_io){.stream_id = PLAY_STREAM, .data = play_pcm[i], .len = SOAK_PERIOD};
        play_add(tx, i);
    }
    virtq_kick(tx);
    snd_cmd_ok(SND_R_PCM_START, PLAY_STREAM);
    play_last_done_tsc = rdtsc();
    snd_set_params_ok(CAP_STREAM, 2 * CAP_MSGS * SOAK_PERIOD, SOAK_PERIOD);
    snd_cmd_ok(SND_R_PCM_PREPARE, CAP_STREAM);
    snd_cmd_ok(SND_R_PCM_START, CAP_STREAM);
    for (int i = 0; i < CAP_MSGS; i++)
        cap_add(rx, i);
    virtq_kick(rx);

    for (int i = 0; i < TJ_N; i++) {
        tx_junk[i] = (struct msg){.kind = (u8)i, .pcm = {0x11, 0x22, 0x33, 0x44}};
        tx_junk_add(tx, i);
    }
    virtq_kick(tx);
    for (int i = 0; i < RJ_N; i++) {
        rx_junk[i] = (struct msg){.kind = (u8)i};
        rx_junk_add(rx, i);
    }
    virtq_kick(rx);
    for (int i = 0; i < CTL_SLOTS; i++)
        ctl_add(cq, i);
    virtq_kick(cq);
    rng_start();

    dg_log("soak: running %s: txq %u/64, rxq %u/64, controlq %u/64, eventq %u/64 descriptors in "
           "use, virtio-rng %u requests, rng reset every %lu s, stream 0 %s, a line every %lu s",
           secs ? "for secs= seconds" : "until killed", tx->size - tx->num_free,
           rx->size - rx->num_free, cq->size - cq->num_free, eq->size - eq->num_free, RNG_REQS,
           rng_reset_s, life_cycling ? "cycling" : "started once", report_s);
    kprintf("DG soak: started\n");

    /* Timed by the TSC: under load the LAPIC timer's ticks arrive late and fewer. */
    u64 t0 = rdtsc(), next_check = t0 + 1000 * per_ms, next_report = t0 + report_s * 1000 * per_ms;
    u64 next_rng_reset = t0 + rng_reset_s * 1000 * per_ms;
    life_at_tsc = t0;
    for (;;) {
        u64 now = rdtsc();
        if (secs && now - t0 >= secs * 1000 * per_ms)
            break;
        u32 t = drain_tx(tx), r = drain_rx(rx), c = drain_ctl(cq), g = drain_rng(&rng.vq[0]);
        if (!life_pending && now >= life_at_tsc) {
            life_send(cq);
            c++;
        }
        if (t)
            virtq_kick(tx);
        if (r)
            virtq_kick(rx);
        if (c)
            virtq_kick(cq);
        if (g)
            virtq_kick(&rng.vq[0]);
        mmio_write16(eq->notify, eq->index);
        bad_kicks();
        if (rng_reset_s && now >= next_rng_reset) {
            next_rng_reset += rng_reset_s * 1000 * per_ms;
            rng_restart();
        }
        if (now >= next_check) {
            next_check += 1000 * per_ms;
            check_ages();
        }
        if (now >= next_report) {
            next_report += report_s * 1000 * per_ms;
            report(t0);
        }
        if (!t && !r && !c && !g)
            wait_until(anything_used, 0, 20);
    }
    report(t0);
    for (int k = 0; k < TJ_N; k++)
        dg_log("soak: txq junk %s: OK %u, BAD_MSG %u, NOT_SUPP %u, IO_ERR %u, len 0 %u, other %u",
               tj_name[k], tx_res[k][R_OK], tx_res[k][R_BAD_MSG], tx_res[k][R_NOT_SUPP],
               tx_res[k][R_IO_ERR], tx_res[k][R_LEN0], tx_res[k][R_OTHER]);
    for (int k = 0; k < RJ_N; k++)
        dg_log("soak: rxq junk %s: OK %u, BAD_MSG %u, NOT_SUPP %u, IO_ERR %u, len 0 %u, other %u",
               rj_name[k], rx_res[k][R_OK], rx_res[k][R_BAD_MSG], rx_res[k][R_NOT_SUPP],
               rx_res[k][R_IO_ERR], rx_res[k][R_LEN0], rx_res[k][R_OTHER]);
    for (int k = 0; k < C_N; k++)
        dg_log("soak: controlq %s: OK %u, BAD_MSG %u, NOT_SUPP %u, IO_ERR %u, len 0 %u", ck[k].name,
               ctl_res[k][R_OK], ctl_res[k][R_BAD_MSG], ctl_res[k][R_NOT_SUPP], ctl_res[k][R_IO_ERR],
               ctl_res[k][R_LEN0]);
}
