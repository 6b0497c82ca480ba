/* virtio-snd: the shared helpers, snd-control (every control request, legal and illegal) and
 * snd-reset (a device reset with a stream running). */
#include "dg.h"
#include "irq.h"
#include "serial.h"
#include "snd_util.h"
#include "tests.h"

struct virtio_dev snd;
u32 snd_jacks, snd_streams, snd_chmaps;

/* ---- device setup ------------------------------------------------------------------------- */

#define SND_NEVENTS 4
static struct {
    u32 type, data;
} snd_events[SND_NEVENTS] ALIGNED(64);

void snd_reinit(void)
{
    char arg[8];
    bool event_idx = cmdline_get(dg_cmdline, "event_idx", arg, sizeof(arg)) && arg[0] == '1';
    DG_CHECK(virtio_setup_msix(&snd, VEC_MSIX_BASE));
    DG_CHECK(virtio_init(&snd, event_idx ? VIRTIO_F_RING_EVENT_IDX : 0, 4, 64));
    if (event_idx && !(snd.driver_features & VIRTIO_F_RING_EVENT_IDX))
        dg_fail("event_idx=1 but the device does not offer EVENT_IDX (features 0x%lx)",
                snd.device_features);
    snd_jacks = virtio_cfg_read32(&snd, SND_CFG_JACKS);
    snd_streams = virtio_cfg_read32(&snd, SND_CFG_STREAMS);
    snd_chmaps = virtio_cfg_read32(&snd, SND_CFG_CHMAPS);
    /* The eventq gets empty buffers (Canto sends no events; it must just hold them). */
    struct virtq *eq = &snd.vq[SND_EVENTQ];
    for (int i = 0; i < SND_NEVENTS; i++) {
        struct vbuf b = {&snd_events[i], sizeof(snd_events[i]), true};
        if (virtq_add(eq, &b, 1) < 0)
            dg_fail("eventq: no free descriptor");
    }
    virtq_kick(eq);
}

void snd_up(void)
{
    DG_CHECK(virtio_probe(&snd, SND_DEVICE_ID));
    if (!snd.msix.cap)
        dg_fail("virtio-snd has no MSI-X capability");
    snd_reinit();
    if (snd.device_cfg_len < 12)
        dg_fail("device config is %u bytes, struct virtio_snd_config needs 12+", snd.device_cfg_len);
}

/* ---- status and control requests --------------------------------------------------------- */

const char *snd_status_name(u32 s)
{
    switch (s) {
    case SND_S_OK: return "OK";
    case SND_S_BAD_MSG: return "BAD_MSG";
    case SND_S_NOT_SUPP: return "NOT_SUPP";
    case SND_S_IO_ERR: return "IO_ERR";
    case 0xa5a5a5a5u: return "not written";
    case 0xffffffffu: return "not written";
    default: return "?";
    }
}

const char *snd_cmd_name(u32 code)
{
    switch (code) {
    case SND_R_PCM_SET_PARAMS: return "SET_PARAMS";
    case SND_R_PCM_PREPARE: return "PREPARE";
    case SND_R_PCM_RELEASE: return "RELEASE";
    case SND_R_PCM_START: return "START";
    case SND_R_PCM_STOP: return "STOP";
    case SND_R_PCM_INFO: return "PCM_INFO";
    case SND_R_JACK_INFO: return "JACK_INFO";
    case SND_R_CHMAP_INFO: return "CHMAP_INFO";
    default: return "?";
    }
}

void snd_expect(const char *what, u32 got, u32 want)
{
    if (got != want)
        dg_fail("%s: status 0x%x (%s), expected 0x%x (%s)", what, got, snd_status_name(got), want,
                snd_status_name(want));
}

static u8 ctl_req[64] ALIGNED(64);
u8 snd_ctl_resp[SND_CTL_RESP_MAX] ALIGNED(64);

static u32 le32_at(const u8 *p) { return p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24; }
static u64 le64_at(const u8 *p) { return le32_at(p) | (u64)le32_at(p + 4) << 32; }

u32 snd_ctl_raw(const char *what, const void *req, u32 req_len, u32 resp_len, u32 *used_len)
{
    struct virtq *q = &snd.vq[SND_CONTROLQ];
    if (req_len > sizeof(ctl_req) || resp_len > SND_CTL_RESP_MAX)
        dg_fail("%s: request/response too large for the test's buffers", what);
    memcpy(ctl_req, req, req_len);
    memset(snd_ctl_resp, 0xa5, resp_len);
    struct vbuf b[2];
    int n = 0;
    if (req_len)
        b[n++] = (struct vbuf){ctl_req, req_len, false};
    if (resp_len)
        b[n++] = (struct vbuf){snd_ctl_resp, resp_len, true};
    int head = virtq_add(q, b, n);
    if (head < 0)
        dg_fail("%s: no free controlq descriptor (%u free)", what, q->num_free);
    virtq_kick(q);
    u32 len = 0;
    int id = virtq_wait_used(q, &len, SND_CTL_TIMEOUT_MS);
    if (id < 0)
        dg_fail("%s: no reply within %u ms (controlq used idx %u, avail idx %u, status 0x%x)", what,
                SND_CTL_TIMEOUT_MS, *(volatile u16 *)&q->used->idx, q->avail_idx, virtio_status(&snd));
    if (id != head)
        dg_fail("%s: the reply names descriptor %d, the request was %d", what, id, head);
    if (len > resp_len)
        dg_fail("%s: used len %u exceeds the %u-byte writable part", what, len, resp_len);
    if (used_len)
        *used_len = len;
    return resp_len >= 4 ? le32_at(snd_ctl_resp) : 0;
}

u32 snd_ctl(const char *what, const void *req, u32 req_len)
{
    u32 len;
    u32 status = snd_ctl_raw(what, req, req_len, 4, &len);
    if (len != 4)
        dg_fail("%s: used len %u for a status reply (status 0x%x %s), expected 4", what, len, status,
                snd_status_name(status));
    return status;
}

u32 snd_pcm_cmd(u32 code, u32 stream_id)
{
    static char what[48];
    u32 req[2] = {code, stream_id};
    ksnprintf(what, sizeof(what), "%s stream %u", snd_cmd_name(code), stream_id);
    return snd_ctl(what, req, sizeof(req));
}

void snd_cmd_ok(u32 code, u32 stream_id)
{
    static char what[48];
    u32 s = snd_pcm_cmd(code, stream_id);
    ksnprintf(what, sizeof(what), "%s stream %u", snd_cmd_name(code), stream_id);
    snd_expect(what, s, SND_S_OK);
}

struct set_params_req {
    u32 code, stream_id, buffer_bytes, period_bytes, features;
    u8 channels, format, rate, padding;
};

static u32 set_params_full(const char *what, u32 stream_id, u32 buffer, u32 period, u8 channels,
                           u8 format, u8 rate, u32 features)
{
    struct set_params_req r = {SND_R_PCM_SET_PARAMS, stream_id, buffer, period, features,
                               channels, format, rate, 0};
    _Static_assert(sizeof(r) == 24, "virtio_snd_pcm_set_params is 24 bytes");
    return snd_ctl(what, &r, sizeof(r));
}

u32 snd_set_params(u32 stream_id, u32 buffer_bytes, u32 period_bytes, u8 channels, u8 format, u8 rate)
{
    return set_params_full("SET_PARAMS", stream_id, buffer_bytes, period_bytes, channels, format, rate, 0);
}

void snd_set_params_ok(u32 stream_id, u32 buffer_bytes, u32 period_bytes)
{
    u32 s = snd_set_params(stream_id, buffer_bytes, period_bytes, 2, SND_FMT_S16, SND_RATE_48000);
    snd_expect("SET_PARAMS S16/48k/2ch", s, SND_S_OK);
}

/* ---- I/O messages ------------------------------------------------------------------------- */

void snd_io_add(struct virtq *q, struct snd_io *m)
{
    m->st.status = 0xffffffffu;
    m->st.latency_bytes = 0xffffffffu;
    u8 *hdr = (u8 *)&m->stream_id, *st = (u8 *)&m->st;
    struct vbuf b[6];
    int n = 0;
    if (m->split && m->len > 1000) {
        b[n++] = (struct vbuf){hdr, 2, false};
        b[n++] = (struct vbuf){hdr + 2, 2, false};
        b[n++] = (struct vbuf){m->data, 1000, m->data_writable};
        b[n++] = (struct vbuf){m->data + 1000, m->len - 1000, m->data_writable};
        b[n++] = (struct vbuf){st, 3, true};
        b[n++] = (struct vbuf){st + 3, 5, true};
    } else {
        b[n++] = (struct vbuf){hdr, 4, false};
        b[n++] = (struct vbuf){m->data, m->len, m->data_writable};
        b[n++] = (struct vbuf){st, sizeof(m->st), true};
    }
    m->head = virtq_add(q, b, n);
    if (m->head < 0)
        dg_fail("queue %u: no room for a %d-descriptor I/O message (%u free)", q->index, n, q->num_free);
}

struct snd_io *snd_io_wait(struct virtq *q, struct snd_io *msgs, int n, u32 *len, u32 timeout_ms,
                           const char *what)
{
    int id = virtq_wait_used(q, len, timeout_ms);
    if (id < 0)
        dg_fail("%s: no I/O completion within %u ms (queue %u used idx %u, avail idx %u)", what,
                timeout_ms, q->index, *(volatile u16 *)&q->used->idx, q->avail_idx);
    u64 now = rdtsc();
    for (int i = 0; i < n; i++) {
        if (msgs[i].head == id) {
            msgs[i].head = -1;
            msgs[i].done_tsc = now;
            return &msgs[i];
        }
    }
    dg_fail("%s: used entry names descriptor %d, which is no outstanding message", what, id);
}

/* ---- the PCM pattern ---------------------------------------------------------------------- */

void snd_fill_counter(u8 *buf, u32 bytes, u32 first)
{
    /* Two samples per 32-bit store: each store is an interpreted instruction here. */
    volatile u32 *w = (volatile u32 *)buf;
    u32 c = first;
    for (u32 i = 0; i < bytes / 4; i++, c += 2)
        w[i] = (c & 0xffff) | ((c + 1) & 0xffff) << 16;
}

void snd_fill_const(u8 *buf, u32 bytes, u16 sample)
{
    volatile u32 *w = (volatile u32 *)buf;
    u32 v = sample | (u32)sample << 16;
    for (u32 i = 0; i < bytes / 4; i++)
        w[i] = v;
}

i64 snd_check_counter(const u8 *buf, u32 bytes, u32 first)
{
    const u32 *w = (const u32 *)buf;
    u32 c = first;
    for (u32 i = 0; i < bytes / 4; i++, c += 2)
        if (w[i] != ((c & 0xffff) | ((c + 1) & 0xffff) << 16))
            return (i64)i * 4;
    return -1;
}

/* ---- time --------------------------------------------------------------------------------- */

u64 snd_tsc_per_ms(void)
{
    static u64 per_ms;
    if (per_ms)
        return per_ms;
    if (!timer_works())
        dg_fail("the LAPIC timer does not tick: cannot calibrate the TSC");
    u64 k = ticks;
    while (ticks == k)
        sti_hlt();
    u64 t0 = rdtsc(), k0 = ticks;
    while (ticks < k0 + 10)
        sti_hlt();
    per_ms = (rdtsc() - t0) / (10 * TICK_MS);
    if (!per_ms)
        per_ms = 1;
    return per_ms;
}

u64 snd_ms_since(u64 tsc0) { return (rdtsc() - tsc0) / snd_tsc_per_ms(); }

/* ---- snd-control -------------------------------------------------------------------------- */

struct query_info {
    u32 code, start_id, count, size;
};

/* An *_INFO request; returns the status and checks the used length of an OK reply. */
static u32 info(const char *what, u32 code, u32 start, u32 count, u32 size, u32 resp_len)
{
    struct query_info q = {code, start, count, size};
    u32 len;
    u32 s = snd_ctl_raw(what, &q, sizeof(q), resp_len, &len);
    u32 want = s == SND_S_OK ? 4 + count * size : 4;
    if (len != want)
        dg_fail("%s: status %s with used len %u, expected %u", what, snd_status_name(s), len, want);
    return s;
}

#define MAX_STREAMS 16

static void check_zero(const char *what, u32 id, const u8 *p, u32 n)
{
    for (u32 i = 0; i < n; i++)
        if (p[i])
            dg_fail("%s %u: padding byte %u is 0x%x, the device MUST zero it", what, id, i, p[i]);
}

/* PCM_INFO and CHMAP_INFO for every stream, checked. */
static void query_items(void)
{
    if (snd_streams < 2 || snd_streams > MAX_STREAMS)
        dg_fail("config: %u streams (the default topology has 2, this test handles 2..%d)",
                snd_streams, MAX_STREAMS);
    snd_expect("PCM_INFO all streams",
               info("PCM_INFO", SND_R_PCM_INFO, 0, snd_streams, SND_PCM_INFO_SIZE,
                    4 + snd_streams * SND_PCM_INFO_SIZE),
               SND_S_OK);
    for (u32 i = 0; i < snd_streams; i++) {
        const u8 *p = snd_ctl_resp + 4 + i * SND_PCM_INFO_SIZE;
        u64 formats = le64_at(p + 8), rates = le64_at(p + 16);
        u8 dir = p[24], cmin = p[25], cmax = p[26];
        dg_log("stream %u: nid %u features 0x%x formats 0x%lx rates 0x%lx %s channels %u..%u", i,
               le32_at(p), le32_at(p + 4), formats, rates, dir == SND_D_OUTPUT ? "output" : "input",
               cmin, cmax);
        /* The default topology: stream 0 output, stream 1 input. */
        u8 want_dir = i == 0 ? SND_D_OUTPUT : i == 1 ? SND_D_INPUT : dir;
        if (dir != want_dir || dir > SND_D_INPUT)
            dg_fail("stream %u: direction %u, expected %u", i, dir, want_dir);
        if (!(formats & (1ull << SND_FMT_S16)))
            dg_fail("stream %u: formats 0x%lx lack S16", i, formats);
        if (!(rates & (1ull << SND_RATE_48000)))
            dg_fail("stream %u: rates 0x%lx lack 48000", i, rates);
        if (cmin != 1 || cmax < 2)
            dg_fail("stream %u: channels %u..%u, expected 1..2+", i, cmin, cmax);
        if (le32_at(p + 4))
            dg_fail("stream %u: features 0x%x, but Canto offers none", i, le32_at(p + 4));
        check_zero("stream", i, p + 27, 5);
    }
    /* Canto: one channel map per channel count (1 to 8) per stream. */
    if (snd_chmaps > MAX_STREAMS * 8)
        dg_fail("config: %u channel maps", snd_chmaps);
    if (snd_chmaps) {
        snd_expect("CHMAP_INFO all",
                   info("CHMAP_INFO", SND_R_CHMAP_INFO, 0, snd_chmaps, SND_CHMAP_INFO_SIZE,
                        4 + snd_chmaps * SND_CHMAP_INFO_SIZE),
                   SND_S_OK);
        for (u32 i = 0; i < snd_chmaps; i++) {
            const u8 *p = snd_ctl_resp + 4 + i * SND_CHMAP_INFO_SIZE;
            u8 dir = p[4], ch = p[5];
            dg_log("chmap %u: %s %u channels: %u %u", i, dir ? "input" : "output", ch, p[6], p[7]);
            if (dir > SND_D_INPUT || ch == 0 || ch > SND_CHMAP_MAX_SIZE)
                dg_fail("chmap %u: direction %u channels %u", i, dir, ch);
            for (u32 c = 0; c < ch; c++)
                if (p[6 + c] > 36) /* VIRTIO_SND_CHMAP_BRC is the last position */
                    dg_fail("chmap %u: position %u is %u, undefined", i, c, p[6 + c]);
        }
    }
}

void snd_control_happy_path(void)
{
    dg_log("config: jacks %u streams %u chmaps %u", snd_jacks, snd_streams, snd_chmaps);
    query_items();
    /* 25 ms periods, 4 of them. */
    snd_set_params_ok(0, 19200, 4800);
    snd_cmd_ok(SND_R_PCM_PREPARE, 0);
    snd_cmd_ok(SND_R_PCM_PREPARE, 0); /* idempotent (sox play does this) */
    snd_cmd_ok(SND_R_PCM_START, 0);
    snd_cmd_ok(SND_R_PCM_STOP, 0);
    snd_cmd_ok(SND_R_PCM_START, 0);
    snd_cmd_ok(SND_R_PCM_STOP, 0);
    snd_cmd_ok(SND_R_PCM_RELEASE, 0);
    dg_log("stream 0: SET_PARAMS PREPARE PREPARE START STOP START STOP RELEASE all OK");
}

static void expect_cmd(u32 code, u32 stream, u32 want, const char *when)
{
    static char what[96];
    ksnprintf(what, sizeof(what), "%s stream %u %s", snd_cmd_name(code), stream, when);
    snd_expect(what, snd_pcm_cmd(code, stream), want);
}

void test_snd_control(void)
{
    snd_up();
    dg_log("virtio-snd at %02x:%02x.%x features 0x%lx, queues %u", BDF_BUS(snd.pci.bdf),
           BDF_DEV(snd.pci.bdf), BDF_FN(snd.pci.bdf), snd.device_features, snd.num_queues);
    if (snd.num_queues < 4)
        dg_fail("num_queues %u, virtio-snd has 4", snd.num_queues);
    dg_log("config: jacks %u streams %u chmaps %u", snd_jacks, snd_streams, snd_chmaps);
    query_items();

    /* Items out of range and malformed queries. */
    u32 s = info("JACK_INFO 1 of 0 jacks", SND_R_JACK_INFO, 0, snd_jacks + 1, SND_JACK_INFO_SIZE,
                 4 + (snd_jacks + 1) * SND_JACK_INFO_SIZE);
    snd_expect("JACK_INFO for one jack more than the config has", s, SND_S_BAD_MSG);
    s = info("JACK_INFO count 0", SND_R_JACK_INFO, 0, 0, SND_JACK_INFO_SIZE, 4);
    dg_log("JACK_INFO start 0 count 0: %s", snd_status_name(s));
    if (s != SND_S_OK && s != SND_S_BAD_MSG)
        dg_fail("JACK_INFO count 0: status 0x%x", s);
    snd_expect("PCM_INFO count 0xffffffff",
               info("PCM_INFO count 0xffffffff", SND_R_PCM_INFO, 0, 0xffffffffu, SND_PCM_INFO_SIZE,
                    SND_CTL_RESP_MAX),
               SND_S_BAD_MSG);
    snd_expect("PCM_INFO start 0xffffffff count 2",
               info("PCM_INFO start ~0", SND_R_PCM_INFO, 0xffffffffu, 2, SND_PCM_INFO_SIZE, 68),
               SND_S_BAD_MSG);
    snd_expect("PCM_INFO start streams count 1",
               info("PCM_INFO past the end", SND_R_PCM_INFO, snd_streams, 1, SND_PCM_INFO_SIZE, 36),
               SND_S_BAD_MSG);
    snd_expect("PCM_INFO size 31",
               info("PCM_INFO size 31", SND_R_PCM_INFO, 0, 1, 31, 36), SND_S_BAD_MSG);
    snd_expect("PCM_INFO size 0xffffffff",
               info("PCM_INFO size ~0", SND_R_PCM_INFO, 0, 1, 0xffffffffu, SND_CTL_RESP_MAX),
               SND_S_BAD_MSG);
    /* A larger structure (a newer driver): OK, the unknown tail zeroed. */
    snd_expect("PCM_INFO size 40", info("PCM_INFO size 40", SND_R_PCM_INFO, 0, 1, 40, 44), SND_S_OK);
    check_zero("PCM_INFO size 40: tail of stream", 0, snd_ctl_resp + 4 + 27, 13);
    /* A response buffer too small for the items asked for. */
    s = info("PCM_INFO, room for 1 of 2", SND_R_PCM_INFO, 0, 2, SND_PCM_INFO_SIZE, 4 + SND_PCM_INFO_SIZE);
    snd_expect("PCM_INFO count 2 with room for 1", s, SND_S_BAD_MSG);
    snd_expect("CHMAP_INFO past the end",
               info("CHMAP_INFO past the end", SND_R_CHMAP_INFO, snd_chmaps, 1, SND_CHMAP_INFO_SIZE, 28),
               SND_S_BAD_MSG);

    /* Requests that are not well-formed. */
    u32 unknown = 0xdeadbeefu;
    snd_expect("unknown code 0xdeadbeef", snd_ctl("unknown code", &unknown, 4), SND_S_NOT_SUPP);
    u32 unknown8[2] = {0x0300, 0}; /* VIRTIO_SND_R_CTL_INFO: F_CTLS not negotiated */
    snd_expect("CTL_INFO without F_CTLS", snd_ctl("CTL_INFO", unknown8, 8), SND_S_NOT_SUPP);
    u16 short_hdr = (u16)SND_R_PCM_INFO;
    snd_expect("a 2-byte request", snd_ctl("2-byte request", &short_hdr, 2), SND_S_BAD_MSG);
    snd_expect("a request with no readable part", snd_ctl("empty request", 0, 0), SND_S_BAD_MSG);
    u32 short_pcm = SND_R_PCM_PREPARE;
    snd_expect("PREPARE without stream_id (4 bytes)", snd_ctl("short PREPARE", &short_pcm, 4),
               SND_S_BAD_MSG);
    struct query_info short_q = {SND_R_PCM_INFO, 0, 1, SND_PCM_INFO_SIZE};
    u32 len;
    s = snd_ctl_raw("15-byte PCM_INFO", &short_q, 15, 36, &len);
    snd_expect("PCM_INFO of 15 bytes", s, SND_S_BAD_MSG);
    struct set_params_req short_sp = {SND_R_PCM_SET_PARAMS, 0, 19200, 4800, 0, 2, SND_FMT_S16,
                                      SND_RATE_48000, 0};
    snd_expect("SET_PARAMS of 23 bytes", snd_ctl("23-byte SET_PARAMS", &short_sp, 23), SND_S_BAD_MSG);
    /* No writable part: nowhere to answer, but the chain must still come back. */
    u32 prep0[2] = {SND_R_PCM_PREPARE, 0};
    snd_ctl_raw("PREPARE with no response buffer", prep0, 8, 0, &len);
    if (len != 0)
        dg_fail("PREPARE with no response buffer: used len %u", len);
    snd_ctl_raw("PREPARE with a 3-byte response", prep0, 8, 3, &len);
    if (len != 0)
        dg_fail("PREPARE with a 3-byte response buffer: used len %u", len);
    dg_log("malformed requests: BAD_MSG / NOT_SUPP / len 0 as expected");

    /* Framing (§2.6.4): the same requests split over several descriptors at odd places. */
    {
        struct virtq *q = &snd.vq[SND_CONTROLQ];
        static struct set_params_req sp ALIGNED(16);
        static struct query_info qi ALIGNED(16);
        sp = (struct set_params_req){SND_R_PCM_SET_PARAMS, 0, 19200, 4800, 0, 2, SND_FMT_S16,
                                     SND_RATE_48000, 0};
        qi = (struct query_info){SND_R_PCM_INFO, 0, snd_streams, SND_PCM_INFO_SIZE};
        u32 resp_len = 4 + snd_streams * SND_PCM_INFO_SIZE;
        memset(snd_ctl_resp, 0xa5, resp_len);
        /* SET_PARAMS as 3 + 18 + 3 bytes, its status as 1 + 3 bytes. */
        struct vbuf b1[5] = {{&sp, 3, false}, {(u8 *)&sp + 3, 18, false}, {(u8 *)&sp + 21, 3, false},
                             {snd_ctl_resp, 1, true}, {snd_ctl_resp + 1, 3, true}};
        int head = virtq_add(q, b1, 5);
        virtq_kick(q);
        int id = virtq_wait_used(q, &len, SND_CTL_TIMEOUT_MS);
        if (id != head || len != 4 || le32_at(snd_ctl_resp) != SND_S_OK)
            dg_fail("SET_PARAMS split 3+18+3 / 1+3: used id %d (want %d) len %u status 0x%x", id,
                    head, len, le32_at(snd_ctl_resp));
        /* PCM_INFO as 5 + 11 bytes, its reply as 2 + 33 + the rest. */
        memset(snd_ctl_resp, 0xa5, resp_len);
        struct vbuf b2[5] = {{&qi, 5, false}, {(u8 *)&qi + 5, 11, false}, {snd_ctl_resp, 2, true},
                             {snd_ctl_resp + 2, 33, true}, {snd_ctl_resp + 35, resp_len - 35, true}};
        head = virtq_add(q, b2, 5);
        virtq_kick(q);
        id = virtq_wait_used(q, &len, SND_CTL_TIMEOUT_MS);
        if (id != head || len != resp_len || le32_at(snd_ctl_resp) != SND_S_OK)
            dg_fail("PCM_INFO split 5+11 / 2+33+rest: used id %d (want %d) len %u (want %u) status 0x%x",
                    id, head, len, resp_len, le32_at(snd_ctl_resp));
        const u8 *p = snd_ctl_resp + 4;
        if (!(le64_at(p + 8) & (1ull << SND_FMT_S16)) || p[24] != SND_D_OUTPUT || p[25] != 1)
            dg_fail("PCM_INFO split: stream 0's info is garbled (formats 0x%lx dir %u ch %u..%u)",
                    le64_at(p + 8), p[24], p[25], p[26]);
        /* Back to the initial state for the state machine tests below. */
        snd_reinit();
        dg_log("control requests split over several descriptors: OK");
    }

    /* Stream ids that do not exist. */
    static const u32 bad_ids[2] = {2, 0xffffffffu};
    static const u32 cmds[4] = {SND_R_PCM_PREPARE, SND_R_PCM_START, SND_R_PCM_STOP, SND_R_PCM_RELEASE};
    for (int i = 0; i < 2; i++) {
        u32 id = bad_ids[i] == 2 ? snd_streams : bad_ids[i];
        s = set_params_full("SET_PARAMS bad stream", id, 19200, 4800, 2, SND_FMT_S16, SND_RATE_48000, 0);
        snd_expect("SET_PARAMS on a stream that does not exist", s, SND_S_BAD_MSG);
        for (int c = 0; c < 4; c++)
            expect_cmd(cmds[c], id, SND_S_BAD_MSG, "(no such stream)");
    }

    /* The state machine (§5.14.6.6.1), on stream 0 from its initial state. */
    expect_cmd(SND_R_PCM_START, 0, SND_S_BAD_MSG, "in the initial state");
    expect_cmd(SND_R_PCM_STOP, 0, SND_S_BAD_MSG, "in the initial state");
    expect_cmd(SND_R_PCM_RELEASE, 0, SND_S_BAD_MSG, "in the initial state");
    expect_cmd(SND_R_PCM_PREPARE, 0, SND_S_BAD_MSG, "before SET_PARAMS");

    /* Invalid parameters: each BAD_MSG, and the stream stays as it was. */
    static const struct {
        const char *what;
        u32 buffer, period;
        u8 channels, format, rate;
        u32 features;
    } bad[] = {
        {"format 64", 19200, 4800, 2, 64, SND_RATE_48000, 0},
        {"format 255", 19200, 4800, 2, 255, SND_RATE_48000, 0},
        {"format 63 (not offered)", 19200, 4800, 2, 63, SND_RATE_48000, 0},
        {"format 0 (IMA_ADPCM, not offered)", 19200, 4800, 2, 0, SND_RATE_48000, 0},
        {"rate 40", 19200, 4800, 2, SND_FMT_S16, 40, 0},
        {"rate 255", 19200, 4800, 2, SND_FMT_S16, 255, 0},
        {"rate 0 (5512, not offered)", 19200, 4800, 2, SND_FMT_S16, 0, 0},
        {"channels 0", 19200, 4800, 0, SND_FMT_S16, SND_RATE_48000, 0},
        {"channels 255", 19200, 4800, 255, SND_FMT_S16, SND_RATE_48000, 0},
        {"period_bytes 0", 19200, 0, 2, SND_FMT_S16, SND_RATE_48000, 0},
        {"buffer 0", 0, 4800, 2, SND_FMT_S16, SND_RATE_48000, 0},
        {"buffer < period", 4796, 4800, 2, SND_FMT_S16, SND_RATE_48000, 0},
        {"buffer not a multiple of period", 12000, 4800, 2, SND_FMT_S16, SND_RATE_48000, 0},
        {"period not whole frames", 4 * 4798, 4798, 2, SND_FMT_S16, SND_RATE_48000, 0},
        {"features 1 (SHMEM_HOST, not offered)", 19200, 4800, 2, SND_FMT_S16, SND_RATE_48000, 1},
        {"features ~0", 19200, 4800, 2, SND_FMT_S16, SND_RATE_48000, 0xffffffffu},
    };
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        s = set_params_full(bad[i].what, 0, bad[i].buffer, bad[i].period, bad[i].channels,
                            bad[i].format, bad[i].rate, bad[i].features);
        if (s != SND_S_BAD_MSG)
            dg_fail("SET_PARAMS %s: status 0x%x (%s), expected BAD_MSG", bad[i].what, s,
                    snd_status_name(s));
    }
    /* Too large for the device, but valid: NOT_SUPP is what Canto answers; BAD_MSG would do. */
    s = set_params_full("huge", 0, 4u << 24, 4u << 22, 2, SND_FMT_S16, SND_RATE_48000, 0);
    if (s != SND_S_NOT_SUPP && s != SND_S_BAD_MSG)
        dg_fail("SET_PARAMS with 16 MiB periods: status 0x%x (%s)", s, snd_status_name(s));
    dg_log("SET_PARAMS with 16 MiB periods, 64 MiB buffer: %s", snd_status_name(s));
    expect_cmd(SND_R_PCM_PREPARE, 0, SND_S_BAD_MSG, "after only invalid SET_PARAMS");
    dg_log("invalid SET_PARAMS: %u cases BAD_MSG, none took effect", (u32)ARRAY_SIZE(bad));

    /* The lifecycle, with every illegal step on the way. */
    snd_set_params_ok(0, 19200, 4800);
    expect_cmd(SND_R_PCM_START, 0, SND_S_BAD_MSG, "before PREPARE");
    expect_cmd(SND_R_PCM_STOP, 0, SND_S_BAD_MSG, "before PREPARE");
    expect_cmd(SND_R_PCM_RELEASE, 0, SND_S_BAD_MSG, "before PREPARE");
    snd_cmd_ok(SND_R_PCM_PREPARE, 0);
    snd_set_params_ok(0, 9600, 4800); /* prepared -> set parameters is legal */
    snd_cmd_ok(SND_R_PCM_PREPARE, 0);
    snd_cmd_ok(SND_R_PCM_PREPARE, 0); /* idempotent */
    expect_cmd(SND_R_PCM_STOP, 0, SND_S_BAD_MSG, "when prepared, not started");
    snd_cmd_ok(SND_R_PCM_START, 0);
    expect_cmd(SND_R_PCM_START, 0, SND_S_BAD_MSG, "when already started");
    expect_cmd(SND_R_PCM_PREPARE, 0, SND_S_BAD_MSG, "while started");
    expect_cmd(SND_R_PCM_RELEASE, 0, SND_S_BAD_MSG, "while started");
    s = snd_set_params(0, 19200, 4800, 2, SND_FMT_S16, SND_RATE_48000);
    snd_expect("SET_PARAMS while started", s, SND_S_BAD_MSG);
    snd_cmd_ok(SND_R_PCM_STOP, 0);
    expect_cmd(SND_R_PCM_STOP, 0, SND_S_BAD_MSG, "when already stopped");
    snd_cmd_ok(SND_R_PCM_START, 0);
    snd_cmd_ok(SND_R_PCM_STOP, 0);
    snd_cmd_ok(SND_R_PCM_RELEASE, 0);
    expect_cmd(SND_R_PCM_RELEASE, 0, SND_S_BAD_MSG, "when already released");
    expect_cmd(SND_R_PCM_START, 0, SND_S_BAD_MSG, "when released");
    expect_cmd(SND_R_PCM_STOP, 0, SND_S_BAD_MSG, "when released");
    snd_cmd_ok(SND_R_PCM_PREPARE, 0); /* released -> prepare is legal */
    snd_cmd_ok(SND_R_PCM_RELEASE, 0);
    dg_log("stream 0 state machine: legal steps OK, illegal ones BAD_MSG");

    /* The brief's happy path, then the input stream's lifecycle. */
    snd_control_happy_path();
    snd_set_params_ok(1, 19200, 4800);
    snd_cmd_ok(SND_R_PCM_PREPARE, 1);
    snd_cmd_ok(SND_R_PCM_START, 1);
    snd_cmd_ok(SND_R_PCM_STOP, 1);
    snd_cmd_ok(SND_R_PCM_RELEASE, 1);
    dg_log("stream 1 (input): SET_PARAMS PREPARE START STOP RELEASE OK");

    /* After all that the device still answers. */
    snd_expect("PCM_INFO at the end",
               info("PCM_INFO at the end", SND_R_PCM_INFO, 0, snd_streams, SND_PCM_INFO_SIZE,
                    4 + snd_streams * SND_PCM_INFO_SIZE),
               SND_S_OK);
    u8 st = virtio_status(&snd);
    if (st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
        dg_fail("device status 0x%x after the control tests", st);
}

/* ---- snd-reset ---------------------------------------------------------------------------- */

#define RESET_PERIOD 4800
static u8 reset_pcm[4][RESET_PERIOD] ALIGNED(64);
static struct snd_io reset_msgs[4];

void test_snd_reset(void)
{
    snd_up();
    struct virtq *tx = &snd.vq[SND_TXQ];
    snd_set_params_ok(0, 4 * RESET_PERIOD, RESET_PERIOD);
    snd_cmd_ok(SND_R_PCM_PREPARE, 0);
    for (int i = 0; i < 4; i++) {
        reset_msgs[i] = (struct snd_io){.stream_id = 0, .data = reset_pcm[i], .len = RESET_PERIOD};
        snd_fill_counter(reset_pcm[i], RESET_PERIOD, (u32)i * RESET_PERIOD / 2);
        snd_io_add(tx, &reset_msgs[i]);
    }
    virtq_kick(tx);
    snd_cmd_ok(SND_R_PCM_START, 0);
    u32 len;
    struct snd_io *m = snd_io_wait(tx, reset_msgs, 4, &len, 1000, "first period");
    if (m != &reset_msgs[0] || m->st.status != SND_S_OK)
        dg_fail("first completion: message %d status 0x%x", (int)(m - reset_msgs), m->st.status);
    /* Three messages in flight, the stream running: reset. */
    u64 t0 = rdtsc();
    DG_CHECK(virtio_reset(&snd));
    dg_log("reset with the stream started and 3 TX messages in flight: status 0 after %lu ms",
           snd_ms_since(t0));

    /* §2.4: once the reset reads back 0 the device must not touch the rings or buffers. */
    u16 used_idx = *(volatile u16 *)&tx->used->idx;
    for (int i = 1; i < 4; i++)
        reset_msgs[i].st.status = 0x5a5a5a5au;
    sleep_ms(150); /* 6 periods */
    if (*(volatile u16 *)&tx->used->idx != used_idx)
        dg_fail("the txq used idx moved from %u to %u after the reset completed", used_idx,
                *(volatile u16 *)&tx->used->idx);
    for (int i = 1; i < 4; i++)
        if (reset_msgs[i].st.status != 0x5a5a5a5au)
            dg_fail("TX message %d's status was written (0x%x) after the reset completed", i,
                    reset_msgs[i].st.status);

    /* From scratch: the happy path again, then a TX round trip. */
    snd_reinit();
    snd_control_happy_path();
    snd_set_params_ok(0, 4 * RESET_PERIOD, RESET_PERIOD);
    snd_cmd_ok(SND_R_PCM_PREPARE, 0);
    for (int i = 0; i < 2; i++)
        snd_io_add(tx, &reset_msgs[i]);
    virtq_kick(tx);
    snd_cmd_ok(SND_R_PCM_START, 0);
    for (int i = 0; i < 2; i++) {
        m = snd_io_wait(tx, reset_msgs, 2, &len, 1000, "TX after the reset");
        if (m->st.status != SND_S_OK || len != 8)
            dg_fail("TX after the reset: status 0x%x len %u", m->st.status, len);
    }
    snd_cmd_ok(SND_R_PCM_STOP, 0);
    snd_cmd_ok(SND_R_PCM_RELEASE, 0);
    dg_log("after the reset: control happy path and 2 TX periods OK");
}
