/* virtq-attacks: broken descriptor chains and ring indexes on virtio-snd's txq and controlq, as
 * a hostile driver would write them (they break driver MUSTs of VIRTIO 1.2 §2.7, which leaves the
 * device's answer open). Each attack runs on a freshly reset device (stream 0 started for the
 * txq ones, so a well-formed message would be played) and the guest prints what the device did:
 *
 *   returned, len 0              the chain came back with nothing written
 *   returned, <error status>     IO_ERR (txq) or BAD_MSG/IO_ERR/NOT_SUPP (controlq)
 *   ignored                      not on the used ring within 300 ms
 *   DEVICE_NEEDS_RESET           device_status bit 0x40
 *   returned, OK                 the device made sense of the chain and carried it out
 *
 * The first four are what the test accepts; `strict=1` also refuses the last (a device that
 * reads a looping or over-long chain as a valid one). Any used entry that names another head, or
 * claims more bytes than the chain's real buffers hold, fails the test, and so does a VMM that
 * dies or hangs. Afterwards, after a reset, a PCM_INFO round trip and a TX round trip must work.
 *
 * The device does not offer VIRTIO_F_INDIRECT_DESC (checked and printed): the over-long chain is
 * a next-chain of queue_size + 1 descriptors reusing the first one. An indirect descriptor
 * without the feature is tried too. */
#include "dg.h"
#include "irq.h"
#include "serial.h"
#include "snd_util.h"
#include "tests.h"

#define VIRTIO_F_INDIRECT_DESC (1ull << 28)
#define VIRTQ_DESC_F_INDIRECT 4
#define NF VIRTQ_DESC_F_NEXT
#define WF VIRTQ_DESC_F_WRITE
#define ATTACK_WAIT_MS 300
#define PERIOD 1920 /* 10 ms */
#define WRAP_ADDR 0xfffffffffffff000ull

static bool strict;
static u32 n_attacks, n_len0, n_err, n_ignored, n_reset, n_ok;

/* Buffers the chains point at. */
static struct {
    u32 hdr;
    u8 pcm[4];
} tx_hdr_pcm ALIGNED(16);
static u32 tx_hdr ALIGNED(16);
static u8 tx_pcm[4096] ALIGNED(64);
static u8 status_buf[64] ALIGNED(64);
static u32 ctl_req[4] ALIGNED(16);
static u8 ctl_resp[256] ALIGNED(64);
static struct virtq_desc indirect_table[300] ALIGNED(16);

static void desc(struct virtq *q, u16 i, const void *addr, u32 len, u16 flags, u16 next)
{
    volatile struct virtq_desc *d = &q->desc[i];
    d->addr = (u64)addr;
    d->len = len;
    d->flags = flags;
    d->next = next;
}

/* Puts `head` on the avail ring and publishes avail->idx + `extra` (0 for an honest driver),
 * then notifies unconditionally. */
static void publish(struct virtq *q, u16 head, u16 extra)
{
    ((volatile u16 *)q->avail->ring)[q->avail_idx % q->size] = head;
    barrier();
    q->avail_idx++;
    *(volatile u16 *)&q->avail->idx = (u16)(q->avail_idx + extra);
    barrier();
    mmio_write16(q->notify, q->index);
}

static bool used_or_reset(void *arg)
{
    struct virtq *q = arg;
    return virtq_has_used(q) || (virtio_status(&snd) & VIRTIO_STATUS_NEEDS_RESET);
}

/* A fresh device: reset, full init; for txq attacks stream 0 set up and started. */
static void fresh(bool tx_running)
{
    DG_CHECK(virtio_reset(&snd));
    snd_reinit();
    if (tx_running) {
        snd_set_params_ok(0, 4 * PERIOD, PERIOD);
        snd_cmd_ok(SND_R_PCM_PREPARE, 0);
        snd_cmd_ok(SND_R_PCM_START, 0);
    }
}

static bool is_ctl_err(u32 s) { return s == SND_S_BAD_MSG || s == SND_S_IO_ERR || s == SND_S_NOT_SUPP; }

/* Waits for the device's answer to the chain at `head` on queue qi and judges it. `writable` is
 * the real number of distinct writable bytes behind the chain; `status` where the status goes
 * (pre-filled with 0xee by the caller). */
static void judge(const char *name, u16 qi, u16 head, u32 writable, const u8 *status)
{
    struct virtq *q = &snd.vq[qi];
    const char *qn = qi == SND_TXQ ? "txq" : "controlq";
    n_attacks++;
    bool answered = wait_until(used_or_reset, q, ATTACK_WAIT_MS);
    u8 st = virtio_status(&snd);
    if (st & VIRTIO_STATUS_FAILED)
        dg_fail("%s %s: device status 0x%x (FAILED is the driver's bit)", qn, name, st);
    if (!answered || !virtq_has_used(q)) {
        if (st & VIRTIO_STATUS_NEEDS_RESET) {
            n_reset++;
            dg_log("attack %s %s: DEVICE_NEEDS_RESET (status 0x%x)", qn, name, st);
        } else {
            n_ignored++;
            dg_log("attack %s %s: ignored (nothing on the used ring after %u ms, status 0x%x)", qn,
                   name, ATTACK_WAIT_MS, st);
        }
        return;
    }
    barrier();
    volatile struct virtq_used_elem *e = &q->used->ring[q->last_used % q->size];
    u32 id = e->id, len = e->len;
    q->last_used++;
    u16 extra = (u16)(*(volatile u16 *)&q->used->idx - q->last_used);
    bool untouched = true;
    for (int i = 0; i < 8; i++)
        untouched &= status[i] == 0xee;
    u32 s;
    memcpy(&s, status, 4);
    const char *sname = untouched ? "not written" : snd_status_name(s);
    dg_log("attack %s %s: returned, used id %u len %u, status %s (0x%x), device status 0x%x", qn,
           name, id, len, sname, untouched ? 0 : s, st);
    if (id != head)
        dg_fail("%s %s: the used entry names descriptor %u, the chain's head is %u", qn, name, id, head);
    if (extra)
        dg_fail("%s %s: %u more used entries for one chain", qn, name, extra);
    if (len > writable)
        dg_fail("%s %s: used len %u, but the chain's writable buffers hold %u distinct bytes", qn,
                name, len, writable);
    bool err = qi == SND_TXQ ? len == 8 && s == SND_S_IO_ERR : len == 4 && is_ctl_err(s);
    if (len == 0 && untouched) {
        n_len0++;
    } else if (err) {
        n_err++;
    } else if (!untouched && s == SND_S_OK && len >= (qi == SND_TXQ ? 8u : 4u)) {
        n_ok++;
        if (strict)
            dg_fail("%s %s: carried out with status OK (used len %u): strict=1 wants len 0, an error "
                    "status, the chain ignored or DEVICE_NEEDS_RESET", qn, name, len);
    } else {
        dg_fail("%s %s: used len %u with status %s (0x%x): neither len 0, an error status nor OK",
                qn, name, len, sname, s);
    }
}

/* ---- the attacks: each builds its chain on a fresh device, publishes it and judges ------- */

static void prep_status(void) { memset(status_buf, 0xee, sizeof(status_buf)); }
static void prep_ctl(void)
{
    ctl_req[0] = SND_R_PCM_INFO;
    ctl_req[1] = 0;
    ctl_req[2] = snd_streams;
    ctl_req[3] = SND_PCM_INFO_SIZE;
    memset(ctl_resp, 0xee, sizeof(ctl_resp));
}
static u32 ctl_resp_len(void) { return 4 + snd_streams * SND_PCM_INFO_SIZE; }

/* A -> B -> A: the request and its status/response part, looping. */
static void attack_loop(u16 qi)
{
    struct virtq *q = &snd.vq[qi];
    fresh(qi == SND_TXQ);
    if (qi == SND_TXQ) {
        prep_status();
        tx_hdr = 0;
        desc(q, 0, &tx_hdr, 4, NF, 1);
        desc(q, 1, status_buf, 8, WF | NF, 0);
        publish(q, 0, 0);
        judge("loop A->B->A (header, status)", qi, 0, 8, status_buf);
    } else {
        prep_ctl();
        desc(q, 0, ctl_req, 16, NF, 1);
        desc(q, 1, ctl_resp, ctl_resp_len(), WF | NF, 0);
        publish(q, 0, 0);
        judge("loop A->B->A (request, response)", qi, 0, ctl_resp_len(), ctl_resp);
    }
}

/* A -> B -> B -> ...: the writable tail loops on itself. */
static void attack_self_loop(u16 qi)
{
    struct virtq *q = &snd.vq[qi];
    fresh(qi == SND_TXQ);
    if (qi == SND_TXQ) {
        prep_status();
        tx_hdr_pcm.hdr = 0;
        memset(tx_hdr_pcm.pcm, 0x42, 4);
        desc(q, 0, &tx_hdr_pcm, 8, NF, 1);
        desc(q, 1, status_buf, 8, WF | NF, 1);
        publish(q, 0, 0);
        judge("self-loop B->B on the status", qi, 0, 8, status_buf);
    } else {
        prep_ctl();
        desc(q, 0, ctl_req, 16, NF, 1);
        desc(q, 1, ctl_resp, ctl_resp_len(), WF | NF, 1);
        publish(q, 0, 0);
        judge("self-loop B->B on the response", qi, 0, ctl_resp_len(), ctl_resp);
    }
}

/* queue_size + 1 descriptors: 0 -> 1 -> ... -> size-1 -> 0 (the last one reuses the first). */
static void attack_overlong(u16 qi)
{
    struct virtq *q = &snd.vq[qi];
    u16 n = q->size;
    fresh(qi == SND_TXQ);
    if (qi == SND_TXQ) {
        prep_status();
        tx_hdr = 0;
        desc(q, 0, &tx_hdr, 4, NF, 1);
        for (u16 i = 1; i + 1 < n; i++)
            desc(q, i, tx_pcm + 4 * i, 4, NF, (u16)(i + 1));
        desc(q, (u16)(n - 1), status_buf, 8, WF | NF, 0);
        publish(q, 0, 0);
        judge("chain of queue_size+1 descriptors (header, 4-byte PCM pieces, status -> header)",
              qi, 0, 8, status_buf);
    } else {
        prep_ctl();
        /* The request, then the response in 1-byte pieces, its last piece -> the request. */
        u32 rl = ctl_resp_len();
        desc(q, 0, ctl_req, 16, NF, 1);
        for (u16 i = 1; i + 1 < n; i++)
            desc(q, i, ctl_resp + (i - 1), 1, WF | NF, (u16)(i + 1));
        desc(q, (u16)(n - 1), ctl_resp + (n - 2), rl - (n - 2), WF | NF, 0);
        publish(q, 0, 0);
        judge("chain of queue_size+1 descriptors (request, response in pieces -> request)", qi, 0,
              rl, ctl_resp);
    }
}

/* A buffer at 0xFFFF_FFFF_FFFF_F000 of 0x2000 bytes: it wraps the 64-bit address space. */
static void attack_wrap(u16 qi, bool writable_part)
{
    struct virtq *q = &snd.vq[qi];
    fresh(qi == SND_TXQ);
    const void *wrap = (const void *)WRAP_ADDR;
    if (qi == SND_TXQ) {
        prep_status();
        tx_hdr = 0;
        desc(q, 0, &tx_hdr, 4, NF, 1);
        if (!writable_part) {
            desc(q, 1, wrap, 0x2000, NF, 2);
            desc(q, 2, status_buf, 8, WF, 0);
            publish(q, 0, 0);
            judge("PCM at 0xFFFF_FFFF_FFFF_F000 len 0x2000 (wraps)", qi, 0, 8, status_buf);
        } else {
            desc(q, 1, tx_pcm, PERIOD, NF, 2);
            desc(q, 2, wrap, 0x2000, WF, 0);
            publish(q, 0, 0);
            judge("status at 0xFFFF_FFFF_FFFF_F000 len 0x2000 (wraps)", qi, 0, 0, status_buf);
        }
    } else {
        prep_ctl();
        if (!writable_part) {
            desc(q, 0, wrap, 0x2000, NF, 1);
            desc(q, 1, ctl_resp, ctl_resp_len(), WF, 0);
            publish(q, 0, 0);
            judge("request at 0xFFFF_FFFF_FFFF_F000 len 0x2000 (wraps)", qi, 0, ctl_resp_len(), ctl_resp);
        } else {
            desc(q, 0, ctl_req, 16, NF, 1);
            desc(q, 1, wrap, 0x2000, WF, 0);
            publish(q, 0, 0);
            judge("response at 0xFFFF_FFFF_FFFF_F000 len 0x2000 (wraps)", qi, 0, 0, ctl_resp);
        }
    }
}

/* Zero-length descriptors: the PCM (txq) / the request (controlq), then the status part. */
static void attack_len0(u16 qi, bool status_part)
{
    struct virtq *q = &snd.vq[qi];
    fresh(qi == SND_TXQ);
    if (qi == SND_TXQ) {
        prep_status();
        tx_hdr = 0;
        desc(q, 0, &tx_hdr, 4, NF, 1);
        desc(q, 1, tx_pcm, status_part ? PERIOD : 0, NF, 2);
        desc(q, 2, status_buf, status_part ? 0 : 8, WF, 0);
        publish(q, 0, 0);
        judge(status_part ? "status descriptor of len 0" : "PCM descriptor of len 0", qi, 0,
              status_part ? 0 : 8, status_buf);
    } else {
        prep_ctl();
        desc(q, 0, ctl_req, status_part ? 16 : 0, NF, 1);
        desc(q, 1, ctl_resp, status_part ? 0 : ctl_resp_len(), WF, 0);
        publish(q, 0, 0);
        judge(status_part ? "response descriptor of len 0" : "request descriptor of len 0", qi, 0,
              status_part ? 0 : ctl_resp_len(), ctl_resp);
    }
}

/* A well-formed chain, published with avail->idx 1000 ahead of the ring. */
static void attack_idx_jump(u16 qi)
{
    struct virtq *q = &snd.vq[qi];
    fresh(qi == SND_TXQ);
    if (qi == SND_TXQ) {
        prep_status();
        tx_hdr = 0;
        desc(q, 0, &tx_hdr, 4, NF, 1);
        desc(q, 1, tx_pcm, PERIOD, NF, 2);
        desc(q, 2, status_buf, 8, WF, 0);
        publish(q, 0, 1000 - 1);
        /* Kick a few more times: the device must not spin on the ring either. */
        for (int i = 0; i < 3; i++)
            mmio_write16(q->notify, q->index);
        judge("avail idx 1000 ahead of the ring (one real TX message)", qi, 0, 8, status_buf);
    } else {
        prep_ctl();
        desc(q, 0, ctl_req, 16, NF, 1);
        desc(q, 1, ctl_resp, ctl_resp_len(), WF, 0);
        publish(q, 0, 1000 - 1);
        for (int i = 0; i < 3; i++)
            mmio_write16(q->notify, q->index);
        judge("avail idx 1000 ahead of the ring (one real PCM_INFO)", qi, 0, ctl_resp_len(), ctl_resp);
    }
}

/* The avail ring names a descriptor past the table's end. */
static void attack_head_oob(u16 qi)
{
    struct virtq *q = &snd.vq[qi];
    fresh(qi == SND_TXQ);
    prep_status();
    prep_ctl();
    publish(q, 999, 0);
    judge("avail ring names descriptor 999 (queue size 64)", qi, 999, 0,
          qi == SND_TXQ ? status_buf : ctl_resp);
}

/* VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC: a 300-entry table (more than the queue
 * size and than any chain the device accepts). */
static void attack_indirect(u16 qi)
{
    struct virtq *q = &snd.vq[qi];
    fresh(qi == SND_TXQ);
    prep_status();
    prep_ctl();
    struct virtq_desc *t = indirect_table;
    u16 n = ARRAY_SIZE(indirect_table);
    if (qi == SND_TXQ) {
        tx_hdr = 0;
        t[0] = (struct virtq_desc){(u64)&tx_hdr, 4, NF, 1};
        for (u16 i = 1; i + 1 < n; i++)
            t[i] = (struct virtq_desc){(u64)(tx_pcm + 4 * (i % 1000)), 4, NF, (u16)(i + 1)};
        t[n - 1] = (struct virtq_desc){(u64)status_buf, 8, WF, 0};
    } else {
        t[0] = (struct virtq_desc){(u64)ctl_req, 16, NF, 1};
        for (u16 i = 1; i + 1 < n; i++)
            t[i] = (struct virtq_desc){(u64)ctl_req, 0, NF, (u16)(i + 1)};
        t[n - 1] = (struct virtq_desc){(u64)ctl_resp, ctl_resp_len(), WF, 0};
    }
    barrier();
    desc(q, 0, t, sizeof(indirect_table), VIRTQ_DESC_F_INDIRECT, 0);
    publish(q, 0, 0);
    judge("INDIRECT descriptor (not negotiated) to a 300-entry table", qi, 0,
          qi == SND_TXQ ? 8 : ctl_resp_len(), qi == SND_TXQ ? status_buf : ctl_resp);
}

/* ---- the test ----------------------------------------------------------------------------- */

static struct snd_io rt_msgs[2];
static u8 rt_pcm[2][PERIOD] ALIGNED(64);

void test_virtq_attacks(void)
{
    char arg[8];
    strict = cmdline_get(dg_cmdline, "strict", arg, sizeof(arg)) && arg[0] == '1';
    snd_up();
    dg_log("virtq-attacks: device features 0x%lx: VIRTIO_F_INDIRECT_DESC %s; queue size %u%s",
           snd.device_features, snd.device_features & VIRTIO_F_INDIRECT_DESC ? "offered" : "not offered",
           snd.vq[SND_TXQ].size, strict ? "; strict" : "");
    static const u16 queues[2] = {SND_TXQ, SND_CONTROLQ};
    for (int k = 0; k < 2; k++) {
        u16 qi = queues[k];
        attack_loop(qi);
        attack_self_loop(qi);
        attack_overlong(qi);
        attack_wrap(qi, false);
        attack_wrap(qi, true);
        attack_len0(qi, false);
        attack_len0(qi, true);
        attack_idx_jump(qi);
        attack_head_oob(qi);
        attack_indirect(qi);
    }
    dg_log("virtq-attacks: %u attacks: %u returned with len 0, %u with an error status, %u ignored, "
           "%u DEVICE_NEEDS_RESET, %u carried out (OK)", n_attacks, n_len0, n_err, n_ignored,
           n_reset, n_ok);

    /* After a reset everything works again: PCM_INFO, then two TX periods. */
    fresh(false);
    u32 len;
    struct {
        u32 code, start, count, size;
    } qinfo = {SND_R_PCM_INFO, 0, snd_streams, SND_PCM_INFO_SIZE};
    u32 s = snd_ctl_raw("PCM_INFO after the attacks", &qinfo, sizeof(qinfo),
                        4 + snd_streams * SND_PCM_INFO_SIZE, &len);
    if (s != SND_S_OK || len != 4 + snd_streams * SND_PCM_INFO_SIZE)
        dg_fail("PCM_INFO after the attacks: status 0x%x (%s) len %u", s, snd_status_name(s), len);
    if (snd_ctl_resp[4 + 24] != SND_D_OUTPUT)
        dg_fail("PCM_INFO after the attacks: stream 0 direction %u", snd_ctl_resp[4 + 24]);
    struct virtq *tx = &snd.vq[SND_TXQ];
    snd_set_params_ok(0, 4 * PERIOD, PERIOD);
    snd_cmd_ok(SND_R_PCM_PREPARE, 0);
    for (int i = 0; i < 2; i++) {
        rt_msgs[i] = (struct snd_io){.stream_id = 0, .data = rt_pcm[i], .len = PERIOD};
        snd_fill_counter(rt_pcm[i], PERIOD, (u32)i * PERIOD / 2);
        snd_io_add(tx, &rt_msgs[i]);
    }
    virtq_kick(tx);
    snd_cmd_ok(SND_R_PCM_START, 0);
    for (int i = 0; i < 2; i++) {
        struct snd_io *m = snd_io_wait(tx, rt_msgs, 2, &len, 1000, "TX after the attacks");
        if (m != &rt_msgs[i] || m->st.status != SND_S_OK || len != 8)
            dg_fail("TX after the attacks: completion %d is message %d, status 0x%x len %u", i,
                    (int)(m - rt_msgs), m->st.status, len);
    }
    snd_cmd_ok(SND_R_PCM_STOP, 0);
    snd_cmd_ok(SND_R_PCM_RELEASE, 0);
    u8 st = virtio_status(&snd);
    if (st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED))
        dg_fail("device status 0x%x after the round trips", st);
    dg_log("virtq-attacks: after a reset, PCM_INFO and 2 TX periods OK");
}
