/* virtio-snd PCM I/O: snd-tx (1 s of paced playback into the WAV backend), snd-tx-late-write
 * (the device copies at consume time), snd-bad-io (malformed messages) and snd-release-flush
 * (RELEASE returns every message before it is answered). */
#include "dg.h"
#include "irq.h"
#include "serial.h"
#include "snd_util.h"
#include "tests.h"

/* ---- snd-tx ------------------------------------------------------------------------------- */

#define TX_PERIOD 4800 /* 25 ms of S16/48k/stereo */
#define TX_PERIODS 40  /* 1 s */
#define TX_SAMPLES_PER_PERIOD (TX_PERIOD / 2)
static u8 tx_pcm[4][TX_PERIOD] ALIGNED(64);
static struct snd_io tx_msgs[4];

void test_snd_tx(void)
{
    snd_up();
    struct virtq *tx = &snd.vq[SND_TXQ];
    u64 per_ms = snd_tsc_per_ms();
    snd_set_params_ok(0, 4 * TX_PERIOD, TX_PERIOD);
    snd_cmd_ok(SND_R_PCM_PREPARE, 0);

    /* The whole buffer queued before START, like the Linux driver. */
    u32 period_of[4], sent = 0;
    for (int i = 0; i < 4; i++) {
        /* Message 1 (periods 1, 5, 9, ...) split over 6 descriptors at odd places. */
        tx_msgs[i] = (struct snd_io){.stream_id = 0, .data = tx_pcm[i], .len = TX_PERIOD, .split = i == 1};
        snd_fill_counter(tx_pcm[i], TX_PERIOD, sent * TX_SAMPLES_PER_PERIOD);
        period_of[i] = sent++;
        snd_io_add(tx, &tx_msgs[i]);
    }
    virtq_kick(tx);
    u8 vec = virtq_vector(&snd, SND_TXQ);
    u32 irq0 = irq_count[vec];

    u64 t_start = rdtsc();
    snd_cmd_ok(SND_R_PCM_START, 0);
    u64 prev = t_start, first_us = 0, min_gap = ~0ull, max_gap = 0;
    u32 latency_max = 0, idle_waits = 0, lost = 0;
    for (u32 done = 0; done < TX_PERIODS; done++) {
        u32 len;
        /* Idle: every completion consumed (so with EVENT_IDX used_event == used idx too). The
         * next completion must then raise an interrupt; a waiter here also wakes on the 10 ms
         * timer, so a lost interrupt would otherwise only cost latency. */
        bool idle = !virtq_has_used(tx);
        u32 seen = irq_count[vec];
        struct snd_io *m = snd_io_wait(tx, tx_msgs, 4, &len, 1000, "snd-tx");
        if (idle) {
            idle_waits++;
            /* The interrupt follows the used-ring update: give it time to land. */
            if (irq_count[vec] == seen && !wait_irq(vec, seen, 20)) {
                lost++;
                dg_log("period %u completed after an idle wait without an MSI-X interrupt", done);
            }
        }
        int i = (int)(m - tx_msgs);
        if (period_of[i] != done)
            dg_fail("completion %u is period %u: out of order", done, period_of[i]);
        if (m->st.status != SND_S_OK)
            dg_fail("period %u: status 0x%x (%s)", done, m->st.status, snd_status_name(m->st.status));
        if (len != 8)
            dg_fail("period %u: used len %u, expected 8 (the status alone)", done, len);
        if (m->st.latency_bytes > latency_max)
            latency_max = m->st.latency_bytes;
        u64 gap_us = (m->done_tsc - prev) * 1000 / per_ms;
        if (done == 0)
            first_us = gap_us;
        else if (gap_us < min_gap)
            min_gap = gap_us;
        if (done > 0 && gap_us > max_gap)
            max_gap = gap_us;
        prev = m->done_tsc;
        if (sent < TX_PERIODS) {
            snd_fill_counter(m->data, TX_PERIOD, sent * TX_SAMPLES_PER_PERIOD);
            period_of[i] = sent++;
            snd_io_add(tx, m);
            virtq_kick(tx);
        }
    }
    u64 total_ms = (prev - t_start) / per_ms;
    u32 irqs = irq_count[vec] - irq0;
    snd_cmd_ok(SND_R_PCM_STOP, 0);
    snd_cmd_ok(SND_R_PCM_RELEASE, 0);
    dg_log("snd-tx: %u periods of 25 ms completed in %lu ms after START (first after %lu us, "
           "gaps %lu..%lu us), %u txq interrupts (%u idle waits, %u lost), latency_bytes max %u, "
           "tsc %lu/ms", TX_PERIODS, total_ms, first_us, min_gap, max_gap, irqs, idle_waits, lost,
           latency_max, per_ms);
    if (total_ms < 500)
        dg_fail("%u periods (1 s of audio) completed in %lu ms: completions come at arrival, "
                "not at consumption", TX_PERIODS, total_ms);
    /* Without EVENT_IDX every completion interrupts; with it, completions that find the guest
     * still behind are rightly coalesced: only idle waits must end in an interrupt. */
    if (lost)
        dg_fail("%u of %u idle waits ended without an MSI-X interrupt on the txq vector 0x%x "
                "(features 0x%lx)", lost, idle_waits, vec, snd.driver_features);
}

/* ---- snd-rx ------------------------------------------------------------------------------- */

#define RX_PERIOD 4800
#define RX_PERIODS 8
static u8 rx_pcm[4][RX_PERIOD] ALIGNED(64);
static struct snd_io rx_msgs[4];

/* Capture from input stream 1: the null and WAV backends capture silence, paced. */
void test_snd_rx(void)
{
    snd_up();
    struct virtq *rx = &snd.vq[SND_RXQ];
    snd_tsc_per_ms();
    snd_set_params_ok(1, 4 * RX_PERIOD, RX_PERIOD);
    snd_cmd_ok(SND_R_PCM_PREPARE, 1);
    for (int i = 0; i < 4; i++) {
        rx_msgs[i] = (struct snd_io){.stream_id = 1, .data = rx_pcm[i], .len = RX_PERIOD,
                                     .data_writable = true, .split = i == 2};
        snd_fill_const(rx_pcm[i], RX_PERIOD, 0xeeee);
        snd_io_add(rx, &rx_msgs[i]);
    }
    virtq_kick(rx);
    u64 t0 = rdtsc();
    snd_cmd_ok(SND_R_PCM_START, 1);
    int next = 0;
    for (u32 done = 0; done < RX_PERIODS; done++) {
        u32 len;
        struct snd_io *m = snd_io_wait(rx, rx_msgs, 4, &len, 1000, "snd-rx");
        if (m != &rx_msgs[next])
            dg_fail("RX completion %u is message %d, expected %d", done, (int)(m - rx_msgs), next);
        next = (next + 1) % 4;
        if (m->st.status != SND_S_OK)
            dg_fail("RX period %u: status 0x%x (%s)", done, m->st.status, snd_status_name(m->st.status));
        /* §5.14.6.8.2: the used length is the status plus the recorded frames. */
        if (len != RX_PERIOD + 8)
            dg_fail("RX period %u: used len %u, expected %u", done, len, RX_PERIOD + 8);
        const u32 *w = (const u32 *)m->data;
        for (u32 b = 0; b < RX_PERIOD / 4; b++)
            if (w[b])
                dg_fail("RX period %u: bytes %u..%u are 0x%08x, the backend captures silence", done,
                        4 * b, 4 * b + 3, w[b]);
        if (done + 4 < RX_PERIODS) {
            snd_fill_const(m->data, RX_PERIOD, 0xeeee);
            snd_io_add(rx, m);
            virtq_kick(rx);
        }
    }
    u64 ms = snd_ms_since(t0);
    snd_cmd_ok(SND_R_PCM_STOP, 1);
    snd_cmd_ok(SND_R_PCM_RELEASE, 1);
    dg_log("snd-rx: %u periods of 25 ms of silence captured in %lu ms", RX_PERIODS, ms);
    if (ms < RX_PERIODS * 25 / 2)
        dg_fail("%u capture periods completed in %lu ms: not paced", RX_PERIODS, ms);
}

/* ---- snd-tx-late-write -------------------------------------------------------------------- */

#define LATE_PERIOD 19200 /* 100 ms */
#define LATE_EDGE 2048
static u8 late_pcm[2][LATE_PERIOD] ALIGNED(64);
static struct snd_io late_msgs[2];

void test_snd_tx_late_write(void)
{
    snd_up();
    struct virtq *tx = &snd.vq[SND_TXQ];
    u64 per_ms = snd_tsc_per_ms();
    snd_set_params_ok(0, 2 * LATE_PERIOD, LATE_PERIOD);
    snd_cmd_ok(SND_R_PCM_PREPARE, 0);
    /* Both periods queued holding stale data X (the constant 0xdead): all of A, and B's first
     * and last LATE_EDGE bytes (the rest of B already holds its real data Y). The device has
     * them from here on. */
    snd_fill_const(late_pcm[0], LATE_PERIOD, 0xdead);
    snd_fill_counter(late_pcm[1], LATE_PERIOD, LATE_PERIOD / 2);
    snd_fill_const(late_pcm[1], LATE_EDGE, 0xdead);
    snd_fill_const(late_pcm[1] + LATE_PERIOD - LATE_EDGE, LATE_EDGE, 0xdead);
    for (int i = 0; i < 2; i++) {
        late_msgs[i] = (struct snd_io){.stream_id = 0, .data = late_pcm[i], .len = LATE_PERIOD};
        snd_io_add(tx, &late_msgs[i]);
    }
    virtq_kick(tx);
    sleep_ms(30); /* the device has taken them off the ring long ago */
    /* A gets its real data (Y) after it was queued, before START. */
    snd_fill_counter(late_pcm[0], LATE_PERIOD, 0);
    u64 t0 = rdtsc();
    snd_cmd_ok(SND_R_PCM_START, 0);
    u32 len;
    struct snd_io *m = snd_io_wait(tx, late_msgs, 2, &len, 1000, "message A");
    if (m != &late_msgs[0] || m->st.status != SND_S_OK || len != 8)
        dg_fail("first completion: message %d status 0x%x len %u", (int)(m - late_msgs),
                m->st.status, len);
    /* B was queued before START and is consumed one period after A: its stale edges are
     * rewritten only now, as the Linux 6.1 driver's application writes a period the driver
     * re-queued already. Only the edges, so this interpreted guest finishes well inside the
     * period even on a loaded host. */
    u64 t_a = rdtsc();
    snd_fill_counter(late_pcm[1], LATE_EDGE, LATE_PERIOD / 2);
    snd_fill_counter(late_pcm[1] + LATE_PERIOD - LATE_EDGE, LATE_EDGE,
                     (LATE_PERIOD + LATE_PERIOD - LATE_EDGE) / 2);
    u64 t_w = rdtsc();
    if (virtq_has_used(tx))
        dg_fail("message B completed before its overwrite finished (%lu ms after A): too slow to tell",
                (t_w - t_a) / per_ms);
    m = snd_io_wait(tx, late_msgs, 2, &len, 1000, "message B");
    if (m != &late_msgs[1] || m->st.status != SND_S_OK || len != 8)
        dg_fail("second completion: message %d status 0x%x len %u", (int)(m - late_msgs),
                m->st.status, len);
    snd_cmd_ok(SND_R_PCM_STOP, 0);
    snd_cmd_ok(SND_R_PCM_RELEASE, 0);
    dg_log("snd-tx-late-write: A completed %lu ms after START, B's edges rewritten in %lu ms, B completed "
           "%lu ms after A", (t_a - t0) / per_ms, (t_w - t_a) / per_ms,
           (late_msgs[1].done_tsc - t_a) / per_ms);
}

/* ---- snd-bad-io --------------------------------------------------------------------------- */

static u8 bad_pcm[4800] ALIGNED(64);
static u32 bad_hdr[4] ALIGNED(16);
static u8 bad_status[16] ALIGNED(16);
static bool strict_status;

enum expect {
    LEN0,         /* no room for a status: used len 0, nothing written */
    STATUS_ERR,   /* used len 8 and an error status in the status part */
    LEN0_OR_ERR,  /* either */
    ANY_STATUS,   /* used len 8 with any written status (the spec does not say) */
};

static bool is_err(u32 s) { return strict_status ? s == SND_S_IO_ERR : s == SND_S_BAD_MSG || s == SND_S_IO_ERR; }

/* Sends one chain on queue qi and checks how it comes back. The status part, if any, is
 * bad_status (pre-filled with 0xee). */
static void bad_msg(const char *name, u16 qi, const struct vbuf *b, int n, enum expect want)
{
    struct virtq *q = &snd.vq[qi];
    memset(bad_status, 0xee, sizeof(bad_status));
    int head = virtq_add(q, b, n);
    if (head < 0)
        dg_fail("%s: no free descriptors", name);
    virtq_kick(q);
    u32 len;
    int id = virtq_wait_used(q, &len, 1000);
    if (id < 0)
        dg_fail("%s: not returned within 1000 ms (the driver would wait forever)", name);
    if (id != head)
        dg_fail("%s: used entry names descriptor %d, expected %d", name, id, head);
    u32 status;
    memcpy(&status, bad_status, 4);
    bool untouched = true;
    for (u32 i = 0; i < sizeof(bad_status); i++)
        untouched &= bad_status[i] == 0xee;
    dg_log("bad-io %s: used len %u, status %s (0x%x)", name, len,
           untouched ? "not written" : snd_status_name(status), untouched ? 0 : status);
    bool ok;
    switch (want) {
    case LEN0: ok = len == 0 && untouched; break;
    case STATUS_ERR: ok = len == 8 && is_err(status); break;
    case LEN0_OR_ERR: ok = (len == 0 && untouched) || (len == 8 && is_err(status)); break;
    default: ok = len == 8 && !untouched; break;
    }
    if (!ok)
        dg_fail("%s: used len %u status 0x%x (%s): expected %s", name, len, status,
                untouched ? "not written" : snd_status_name(status),
                want == LEN0 ? "len 0 and nothing written"
                : want == STATUS_ERR ? (strict_status ? "len 8, IO_ERR (§5.14.6.8)" : "len 8, BAD_MSG or IO_ERR")
                : want == LEN0_OR_ERR ? "len 0, or len 8 with an error status"
                                      : "len 8 with a status");
    u8 st = virtio_status(&snd);
    if (st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
        dg_fail("%s: device status 0x%x", name, st);
}

static struct snd_io good_msgs[2];
static u8 good_pcm[2][4800] ALIGNED(64);

void test_snd_bad_io(void)
{
    char arg[8];
    strict_status = cmdline_get(dg_cmdline, "strict", arg, sizeof(arg)) && arg[0] == '1';
    snd_up();
    /* Stream 0 prepared, so stream 0 messages are legal where well-formed. */
    snd_set_params_ok(0, 4 * 4800, 4800);
    snd_cmd_ok(SND_R_PCM_PREPARE, 0);
    const u16 TX = SND_TXQ, RX = SND_RXQ;
    u32 *hdr = bad_hdr;
    const void *far = (const void *)0xf00000000000ull; /* far outside guest RAM */

    static const u32 bad_ids[3] = {1, 2, 0xffffffffu};
    static const char *const bad_id_names[3] = {"TX for stream 1 (an input)", "TX for stream 2 (none)",
                                                "TX for stream 0xffffffff"};
    for (int i = 0; i < 3; i++) {
        hdr[0] = bad_ids[i];
        struct vbuf b[3] = {{hdr, 4, false}, {bad_pcm, 4800, false}, {bad_status, 8, true}};
        bad_msg(bad_id_names[i], TX, b, 3, STATUS_ERR);
    }
    hdr[0] = 0;
    {
        struct vbuf b[1] = {{hdr, 4, false}};
        bad_msg("TX header only", TX, b, 1, LEN0);
    }
    {
        struct vbuf b[2] = {{hdr, 4, false}, {bad_pcm, 4800, false}};
        bad_msg("TX header + PCM, no status", TX, b, 2, LEN0);
    }
    {
        struct vbuf b[3] = {{hdr, 4, false}, {bad_pcm, 4800, false}, {bad_status, 8, false}};
        bad_msg("TX with a read-only status", TX, b, 3, LEN0);
    }
    {
        struct vbuf b[3] = {{hdr, 4, false}, {bad_pcm, 4800, false}, {bad_status, 4, true}};
        bad_msg("TX with a 4-byte status", TX, b, 3, LEN0);
    }
    {
        struct vbuf b[3] = {{hdr, 4, false}, {far, 4800, false}, {bad_status, 8, true}};
        bad_msg("TX with PCM at 0xF000_0000_0000", TX, b, 3, LEN0_OR_ERR);
    }
    {
        struct vbuf b[3] = {{hdr, 4, false}, {bad_pcm, 4800, false}, {far, 8, true}};
        bad_msg("TX with the status at 0xF000_0000_0000", TX, b, 3, LEN0);
    }
    {
        struct vbuf b[3] = {{hdr, 4, false}, {bad_pcm, 4800, true}, {bad_status, 8, true}};
        bad_msg("TX with a writable PCM descriptor", TX, b, 3, LEN0_OR_ERR);
    }
    {
        struct vbuf b[2] = {{hdr, 4, false}, {bad_status, 8, true}};
        bad_msg("TX without PCM", TX, b, 2, ANY_STATUS);
    }
    {
        struct vbuf b[3] = {{hdr, 2, false}, {bad_pcm, 4800, false}, {bad_status, 8, true}};
        /* 2 header bytes, then PCM: the device reads 0x0000 + the first PCM bytes as stream_id. */
        memset(bad_pcm, 0x77, 8);
        bad_msg("TX with a 2-byte header", TX, b, 3, LEN0_OR_ERR);
    }
    {
        /* 5 MiB of PCM in one message, inside guest RAM (16 MiB up, nothing lives there). */
        struct vbuf b[3] = {{hdr, 4, false}, {(const void *)0x1000000ull, 5u << 20, false}, {bad_status, 8, true}};
        bad_msg("TX with 5 MiB of PCM", TX, b, 3, ANY_STATUS);
    }
    {
        /* Readable after writable: not a valid chain at all. */
        struct vbuf b[3] = {{hdr, 4, false}, {bad_status, 8, true}, {bad_pcm, 4800, false}};
        bad_msg("TX with the PCM after the status", TX, b, 3, LEN0_OR_ERR);
    }
    {
        struct vbuf b[3] = {{hdr, 4, false}, {bad_pcm, 4800, false}, {bad_status, 8, true}};
        bad_msg("a TX message on the rxq", RX, b, 3, LEN0_OR_ERR);
    }
    {
        struct vbuf b[3] = {{hdr, 4, false}, {bad_pcm, 4800, true}, {bad_status, 8, true}};
        bad_msg("RX for stream 0 (an output)", RX, b, 3, STATUS_ERR);
    }
    hdr[0] = 1;
    {
        struct vbuf b[3] = {{hdr, 4, false}, {bad_pcm, 4800, true}, {bad_status, 8, true}};
        bad_msg("RX for stream 1 before PREPARE", RX, b, 3, STATUS_ERR);
    }
    for (u32 w = 0; w < 8; w++) {
        static char name[48];
        ksnprintf(name, sizeof(name), "RX for stream 1 with %u writable bytes", w);
        struct vbuf b[2] = {{hdr, 4, false}, {bad_status, w, true}};
        bad_msg(name, RX, b, w ? 2 : 1, LEN0);
    }
    {
        /* Only the 8-byte status part: no header to name a stream. */
        struct vbuf b[1] = {{bad_status, 8, true}};
        bad_msg("RX with no header", RX, b, 1, LEN0_OR_ERR);
    }
    dg_log("every malformed message came back; the device status is 0x%x", virtio_status(&snd));

    /* The device still works: two periods through stream 0. */
    struct virtq *tx = &snd.vq[SND_TXQ];
    for (int i = 0; i < 2; i++) {
        good_msgs[i] = (struct snd_io){.stream_id = 0, .data = good_pcm[i], .len = 4800};
        snd_io_add(tx, &good_msgs[i]);
    }
    virtq_kick(tx);
    snd_cmd_ok(SND_R_PCM_START, 0);
    for (int i = 0; i < 2; i++) {
        u32 len;
        struct snd_io *m = snd_io_wait(tx, good_msgs, 2, &len, 1000, "TX after the bad messages");
        if (m->st.status != SND_S_OK || len != 8)
            dg_fail("TX after the bad messages: status 0x%x len %u", m->st.status, len);
    }
    snd_cmd_ok(SND_R_PCM_STOP, 0);
    snd_cmd_ok(SND_R_PCM_RELEASE, 0);
    snd_expect("PREPARE after everything", snd_pcm_cmd(SND_R_PCM_PREPARE, 0), SND_S_OK);
    snd_cmd_ok(SND_R_PCM_RELEASE, 0);
    dg_log("then a normal TX round trip: OK");
}

/* ---- snd-release-flush -------------------------------------------------------------------- */

#define FLUSH_PERIOD 4800
static u8 flush_pcm[4][FLUSH_PERIOD] ALIGNED(64);
static struct snd_io flush_msgs[4];

static void flush_round(const char *name, bool start)
{
    struct virtq *tx = &snd.vq[SND_TXQ];
    snd_set_params_ok(0, 4 * FLUSH_PERIOD, FLUSH_PERIOD);
    snd_cmd_ok(SND_R_PCM_PREPARE, 0);
    for (int i = 0; i < 4; i++) {
        flush_msgs[i] = (struct snd_io){.stream_id = 0, .data = flush_pcm[i], .len = FLUSH_PERIOD};
        snd_io_add(tx, &flush_msgs[i]);
    }
    virtq_kick(tx);
    if (start) {
        snd_cmd_ok(SND_R_PCM_START, 0);
        snd_cmd_ok(SND_R_PCM_STOP, 0);
    }
    u16 before = tx->last_used;
    u64 t0 = rdtsc();
    u32 s = snd_pcm_cmd(SND_R_PCM_RELEASE, 0);
    /* Read the txq's used index as soon as the RELEASE reply is seen. */
    u16 at_reply = *(volatile u16 *)&tx->used->idx;
    u64 ms = snd_ms_since(t0);
    snd_expect("RELEASE", s, SND_S_OK);
    u16 returned = (u16)(at_reply - before);
    if (returned != 4)
        dg_fail("%s: when the RELEASE reply arrived only %u of 4 TX messages were on the used ring",
                name, returned);
    for (int i = 0; i < 4; i++) {
        u32 len;
        struct snd_io *m = snd_io_wait(tx, flush_msgs, 4, &len, 10, name);
        if (m->st.status != SND_S_OK || len != 8)
            dg_fail("%s: message %d came back with status 0x%x (%s) len %u", name,
                    (int)(m - flush_msgs), m->st.status, snd_status_name(m->st.status), len);
    }
    dg_log("%s: RELEASE answered after %lu ms with all 4 TX messages returned OK", name, ms);
}

void test_snd_release_flush(void)
{
    snd_up();
    flush_round("START, STOP, RELEASE", true);
    flush_round("PREPARE, RELEASE (never started)", false);
}
