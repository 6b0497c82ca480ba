/* snd-flood: a driver that keeps every virtio-snd queue full of work for `secs=N` seconds
 * (default 5), while one stream must keep playing correctly. Run with two output streams
 * (`--sound backend=wav,path=F,capture=null,streams=2:1`): the Rust test watches canto's memory meanwhile and
 * checks stream 1's WAV afterwards.
 *
 * - txq (64 descriptors, all of them in use all the time): 16 junk messages for stream 0 (4-byte
 *   and 1-byte PCM, garbage stream ids, header-only), each re-queued the moment it comes back,
 *   and 8 proper 10 ms periods for stream 1 carrying the counter pattern, each refilled with the
 *   next period when it completes (status OK, in order);
 * - controlq: 32 PCM_INFO requests in flight, re-queued as they are answered;
 * - eventq: all 64 descriptors posted as event buffers, and kicked over and over.
 *
 * At the end STOP and RELEASE both streams (RELEASE returns every queued message) and print
 * `DG snd-flood: stream1_periods=<P>`: stream 1's WAV must hold exactly P periods of the pattern. */
#include "dg.h"
#include "irq.h"
#include "serial.h"
#include "snd_util.h"
#include "tests.h"

#define FLOOD_PERIOD 1920 /* 480 frames of S16/48k/stereo: 10 ms */
#define S1_MSGS 8          /* stream 1 periods in flight: 24 descriptors */
#define JUNK_MSGS 16       /* 4 of each kind: 40 descriptors */
#define CTL_MSGS 32        /* 2 descriptors each: the whole controlq */
#define EVQ_BUFS 64

enum junk_kind { PCM4, PCM1, BAD_ID, HDR_ONLY, NKINDS };
static const char *const kind_name[NKINDS] = {"4-byte PCM", "1-byte PCM", "garbage stream id",
                                              "header only"};
/* Garbage stream ids for BAD_ID: stream 2 is the input (not on the txq), 3 does not exist. */
static const u32 garbage_ids[4] = {0xdeadbeefu, 3, 2, 0x80000000u};

struct junk {
    u32 hdr;
    struct snd_pcm_status st;
    u8 pcm[4];
    enum junk_kind kind;
    u32 sent, ok, io_err, len0, other;
};

static struct junk junk[JUNK_MSGS] ALIGNED(64);
static u8 s1_pcm[S1_MSGS][FLOOD_PERIOD] ALIGNED(64);
static struct snd_io s1_msgs[S1_MSGS];
static u32 s1_period_of[S1_MSGS];
static u32 ctl_req[CTL_MSGS][4] ALIGNED(64);
static u8 ctl_resp[CTL_MSGS][4 + 3 * SND_PCM_INFO_SIZE] ALIGNED(64);
static struct {
    u32 type, data;
} evq_bufs[EVQ_BUFS] ALIGNED(64);

/* What each txq/controlq descriptor head carries: OWNER_NONE, a junk/request index, or
 * OWNER_S1 | the stream-1 message. */
#define OWNER_NONE 0xff
#define OWNER_S1 0x80
static u8 tx_owner[VIRTQ_MAX_SIZE];
static u8 ctl_owner[VIRTQ_MAX_SIZE];

static u32 s1_sent, s1_done;
static u64 ctl_ok, evq_kicks;

static void junk_add(struct virtq *tx, int i)
{
    struct junk *j = &junk[i];
    j->st.status = 0xffffffffu;
    j->st.latency_bytes = 0xffffffffu;
    struct vbuf b[3];
    int n = 0;
    switch (j->kind) {
    case PCM4:
    case PCM1:
        j->hdr = 0;
        b[n++] = (struct vbuf){&j->hdr, 4, false};
        b[n++] = (struct vbuf){j->pcm, j->kind == PCM4 ? 4 : 1, false};
        b[n++] = (struct vbuf){&j->st, 8, true};
        break;
    case BAD_ID:
        j->hdr = garbage_ids[j->sent % 4];
        b[n++] = (struct vbuf){&j->hdr, 4, false};
        b[n++] = (struct vbuf){j->pcm, 4, false};
        b[n++] = (struct vbuf){&j->st, 8, true};
        break;
    default:
        j->hdr = 0;
        b[n++] = (struct vbuf){&j->hdr, 4, false};
        break;
    }
    int head = virtq_add(tx, b, n);
    if (head < 0)
        dg_fail("txq: no room to re-queue junk message %d (%u free)", i, tx->num_free);
    tx_owner[head] = (u8)i;
    j->sent++;
}

static void junk_done(int i, u32 len)
{
    struct junk *j = &junk[i];
    u32 s = j->st.status;
    bool status_written = s != 0xffffffffu;
    switch (j->kind) {
    case PCM4:
    case PCM1:
        /* Well-formed messages for a running stream: played, OK. A 1-byte message is not
         * whole frames; IO_ERR would be a fair answer too. */
        if (len == 8 && s == SND_S_OK)
            j->ok++;
        else if (len == 8 && s == SND_S_IO_ERR && j->kind == PCM1)
            j->io_err++;
        else
            dg_fail("%s message for stream 0 came back with len %u status 0x%x (%s)",
                    kind_name[j->kind], len, s, snd_status_name(s));
        break;
    case BAD_ID:
        if (len == 8 && s == SND_S_IO_ERR)
            j->io_err++;
        else
            dg_fail("TX for stream 0x%x came back with len %u status 0x%x (%s), expected IO_ERR",
                    j->hdr, len, s, snd_status_name(s));
        break;
    default:
        if (len == 0 && !status_written)
            j->len0++;
        else
            dg_fail("a header-only TX message came back with len %u", len);
        break;
    }
}

static void s1_add(struct virtq *tx, int i)
{
    snd_fill_counter(s1_pcm[i], FLOOD_PERIOD, s1_sent * (FLOOD_PERIOD / 2));
    s1_period_of[i] = s1_sent++;
    snd_io_add(tx, &s1_msgs[i]);
    tx_owner[s1_msgs[i].head] = (u8)(OWNER_S1 | i);
}

static void s1_done_check(int i, u32 len)
{
    struct snd_io *m = &s1_msgs[i];
    if (s1_period_of[i] != s1_done)
        dg_fail("stream 1: completion %u is period %u: out of order", s1_done, s1_period_of[i]);
    if (len != 8 || m->st.status != SND_S_OK)
        dg_fail("stream 1 period %u: len %u status 0x%x (%s)", s1_done, len, m->st.status,
                snd_status_name(m->st.status));
    m->head = -1;
    s1_done++;
}

static void ctl_add(struct virtq *cq, int i)
{
    ctl_req[i][0] = SND_R_PCM_INFO;
    ctl_req[i][1] = 0;
    ctl_req[i][2] = snd_streams;
    ctl_req[i][3] = SND_PCM_INFO_SIZE;
    ctl_resp[i][0] = ctl_resp[i][1] = 0xa5;
    struct vbuf b[2] = {{ctl_req[i], 16, false}, {ctl_resp[i], 4 + snd_streams * SND_PCM_INFO_SIZE, true}};
    int head = virtq_add(cq, b, 2);
    if (head < 0)
        dg_fail("controlq: no room to re-queue request %d (%u free)", i, cq->num_free);
    ctl_owner[head] = (u8)i;
}

static void ctl_done(int i, u32 len)
{
    u32 s;
    memcpy(&s, ctl_resp[i], 4);
    if (len == 4 + snd_streams * SND_PCM_INFO_SIZE && s == SND_S_OK)
        ctl_ok++;
    else
        dg_fail("flooded PCM_INFO came back with len %u status 0x%x (%s)", len, s, snd_status_name(s));
}

/* Takes every completion on the txq; with `refill`, re-queues each message. */
static u32 drain_tx(struct virtq *tx, bool refill)
{
    u32 n = 0, len;
    int id;
    while ((id = virtq_get_used(tx, &len)) >= 0) {
        u8 owner = tx_owner[id];
        tx_owner[id] = OWNER_NONE;
        if (owner == OWNER_NONE)
            dg_fail("txq: used entry names descriptor %d, which carries nothing", id);
        if (owner & OWNER_S1) {
            int i = owner & 0x7f;
            s1_done_check(i, len);
            if (refill)
                s1_add(tx, i);
        } else {
            junk_done(owner, len);
            if (refill)
                junk_add(tx, owner);
        }
        n++;
    }
    return n;
}

static u32 drain_ctl(struct virtq *cq, bool refill)
{
    u32 n = 0, len;
    int id;
    while ((id = virtq_get_used(cq, &len)) >= 0) {
        u8 owner = ctl_owner[id];
        ctl_owner[id] = OWNER_NONE;
        if (owner == OWNER_NONE)
            dg_fail("controlq: used entry names descriptor %d, which carries nothing", id);
        ctl_done(owner, len);
        if (refill)
            ctl_add(cq, owner);
        n++;
    }
    return n;
}

static bool flood_has_used(void *arg)
{
    (void)arg;
    return virtq_has_used(&snd.vq[SND_TXQ]) || virtq_has_used(&snd.vq[SND_CONTROLQ]);
}

static bool all_back(void *arg)
{
    (void)arg;
    drain_tx(&snd.vq[SND_TXQ], false);
    drain_ctl(&snd.vq[SND_CONTROLQ], false);
    return snd.vq[SND_TXQ].num_free == snd.vq[SND_TXQ].size &&
           snd.vq[SND_CONTROLQ].num_free == snd.vq[SND_CONTROLQ].size;
}

void test_snd_flood(void)
{
    char arg[16];
    u64 secs = 5;
    if (cmdline_get(dg_cmdline, "secs", arg, sizeof(arg)) && (!parse_u64(arg, &secs) || !secs || secs > 3600))
        dg_fail("secs=%s: expected 1..3600", arg);
    snd_up();
    u64 per_ms = snd_tsc_per_ms();
    if (snd_streams != 3)
        dg_fail("config: %u streams; snd-flood needs capture=null,streams=2:1 (outputs 0 and 1, input 2)", snd_streams);
    struct virtq *tx = &snd.vq[SND_TXQ], *cq = &snd.vq[SND_CONTROLQ], *eq = &snd.vq[SND_EVENTQ];
    if (tx->size != 64 || cq->size != 64 || eq->size != 64)
        dg_fail("queue sizes %u/%u/%u, the flood is laid out for 64", tx->size, cq->size, eq->size);
    memset(tx_owner, OWNER_NONE, sizeof(tx_owner));
    memset(ctl_owner, OWNER_NONE, sizeof(ctl_owner));

    /* The eventq: snd_up posted 4 buffers; fill the rest of the ring. */
    for (int i = 0; eq->num_free; i++) {
        struct vbuf b = {&evq_bufs[i], sizeof(evq_bufs[i]), true};
        virtq_add(eq, &b, 1);
    }
    virtq_kick(eq);

    /* Both outputs: 10 ms periods; stream 0 a 4-period buffer, stream 1 an 8-period one. */
    snd_set_params_ok(0, 4 * FLOOD_PERIOD, FLOOD_PERIOD);
    snd_set_params_ok(1, S1_MSGS * FLOOD_PERIOD, FLOOD_PERIOD);
    snd_cmd_ok(SND_R_PCM_PREPARE, 0);
    snd_cmd_ok(SND_R_PCM_PREPARE, 1);
    for (int i = 0; i < S1_MSGS; i++) {
        s1_msgs[i] = (struct snd_io){.stream_id = 1, .data = s1_pcm[i], .len = FLOOD_PERIOD};
        s1_add(tx, i);
    }
    virtq_kick(tx);
    snd_cmd_ok(SND_R_PCM_START, 1);
    snd_cmd_ok(SND_R_PCM_START, 0);
    for (int i = 0; i < JUNK_MSGS; i++) {
        junk[i] = (struct junk){.kind = (enum junk_kind)(i % NKINDS), .pcm = {0x11, 0x22, 0x33, 0x44}};
        junk_add(tx, i);
    }
    virtq_kick(tx);
    if (tx->num_free)
        dg_fail("txq: %u descriptors left free, the flood must fill it", tx->num_free);
    for (int i = 0; i < CTL_MSGS; i++)
        ctl_add(cq, i);
    virtq_kick(cq);

    dg_log("snd-flood: flooding for %lu s: txq %u/64 descriptors (8 stream-1 periods, %u junk), "
           "controlq %u PCM_INFO, eventq %u buffers", secs, tx->size - tx->num_free, JUNK_MSGS,
           CTL_MSGS, eq->size - eq->num_free);
    /* Timed by the TSC: under load the LAPIC timer's ticks arrive late and fewer. */
    u64 t0 = rdtsc(), end_tsc = t0 + secs * 1000 * per_ms, next_report = t0 + 1000 * per_ms;
    u64 loops = 0, idle = 0, tx_done = 0, ctl_done_n = 0;
    while (rdtsc() < end_tsc) {
        loops++;
        u32 t = drain_tx(tx, true);
        u32 c = drain_ctl(cq, true);
        tx_done += t;
        ctl_done_n += c;
        if (t)
            virtq_kick(tx);
        if (c)
            virtq_kick(cq);
        /* Kick the eventq every round: its buffers are all posted already, the device must just
         * hold them. */
        mmio_write16(eq->notify, eq->index);
        evq_kicks++;
        if (!t && !c) {
            idle++;
            wait_until(flood_has_used, 0, 20);
        }
        if (rdtsc() >= next_report) {
            next_report += 1000 * per_ms;
            dg_log("snd-flood: %lu ms: stream 1 %u periods done, %lu txq / %lu controlq completions, "
                   "status 0x%x", snd_ms_since(t0), s1_done, tx_done, ctl_done_n, virtio_status(&snd));
        }
        u8 st = virtio_status(&snd);
        if (st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
            dg_fail("device status 0x%x during the flood", st);
    }
    u64 flood_ms = snd_ms_since(t0);

    /* The end: let the controlq empty, then STOP and RELEASE both (RELEASE returns every queued
     * message of its stream), then everything must be back. */
    u64 t_end = ticks + 100;
    while (cq->num_free != cq->size && ticks < t_end) {
        drain_ctl(cq, false);
        drain_tx(tx, false);
        wait_until(flood_has_used, 0, 20);
    }
    if (cq->num_free != cq->size)
        dg_fail("controlq: %u requests not answered within 1 s of the flood's end", cq->size - cq->num_free);
    snd_cmd_ok(SND_R_PCM_STOP, 0);
    snd_cmd_ok(SND_R_PCM_STOP, 1);
    snd_cmd_ok(SND_R_PCM_RELEASE, 0);
    snd_cmd_ok(SND_R_PCM_RELEASE, 1);
    if (!wait_until(all_back, 0, 1000))
        dg_fail("txq: %u descriptors still out 1 s after RELEASE of both streams",
                tx->size - tx->num_free);
    if (s1_done != s1_sent)
        dg_fail("stream 1: %u periods sent, %u completed", s1_sent, s1_done);
    u8 st = virtio_status(&snd);
    if (st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
        dg_fail("device status 0x%x after the flood", st);

    u32 sums[NKINDS][4] = {{0}};
    for (int i = 0; i < JUNK_MSGS; i++) {
        sums[junk[i].kind][0] += junk[i].sent;
        sums[junk[i].kind][1] += junk[i].ok;
        sums[junk[i].kind][2] += junk[i].io_err;
        sums[junk[i].kind][3] += junk[i].len0;
    }
    for (int k = 0; k < NKINDS; k++)
        dg_log("snd-flood: junk %s: %u sent, %u OK, %u IO_ERR, %u len 0", kind_name[k], sums[k][0],
               sums[k][1], sums[k][2], sums[k][3]);
    dg_log("snd-flood: %lu ms of flood, %lu loops (%lu idle waits), %lu txq and %lu controlq "
           "completions, %lu PCM_INFO OK, %lu eventq kicks, tsc %lu/ms", flood_ms, loops, idle,
           tx_done, ctl_done_n, ctl_ok, evq_kicks, per_ms);
    dg_log("snd-flood: stream 1 got %u of %lu periods of audio time (%lu%%), all OK and in order",
           s1_sent, flood_ms / 10, flood_ms >= 10 ? (u64)s1_sent * 1000 / flood_ms : 0);
    kprintf("DG snd-flood: stream1_periods=%u\n", s1_sent);
}
