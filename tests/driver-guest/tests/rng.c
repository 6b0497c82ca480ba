/* virtio-rng tests: rng (round trips with MSI-X), reset (mid-request reset), bus-master (no DMA
 * or MSI-X while Bus Master Enable is clear), rtt (benchmark). */
#include "dg.h"
#include "irq.h"
#include "rng_util.h"
#include "serial.h"
#include "tests.h"

struct virtio_dev rng;

void rng_reinit(void)
{
    DG_CHECK(virtio_setup_msix(&rng, VEC_MSIX_BASE));
    DG_CHECK(virtio_init(&rng, 0, 1, 16));
}

void rng_up(void)
{
    DG_CHECK(virtio_probe(&rng, RNG_DEVICE_ID));
    if (!rng.msix.cap)
        dg_fail("virtio-rng has no MSI-X capability");
    rng_reinit();
}

static bool all_zero(const u8 *b, u32 n)
{
    for (u32 i = 0; i < n; i++)
        if (b[i])
            return false;
    return true;
}

u64 rng_round_trip(u8 *buf, u32 len, bool check)
{
    struct virtq *q = &rng.vq[0];
    u8 vec = virtq_vector(&rng, 0);
    u32 seen = irq_count[vec];
    if (check)
        memset(buf, 0, len);
    struct vbuf b = {buf, len, true};
    u64 t0 = rdtsc();
    int head = virtq_add(q, &b, 1);
    if (head < 0)
        dg_fail("no free descriptor (num_free %u)", q->num_free);
    virtq_kick(q);
    u32 got = 0;
    int id = virtq_wait_used(q, &got, RNG_TIMEOUT_MS);
    u64 cycles = rdtsc() - t0;
    if (id < 0)
        dg_fail("no used entry within %u ms (used idx %u, avail idx %u, status 0x%x, vector 0x%x count %u)",
                RNG_TIMEOUT_MS, *(volatile u16 *)&q->used->idx, q->avail_idx, virtio_status(&rng), vec,
                irq_count[vec]);
    if (id != head)
        dg_fail("used entry names descriptor %d, the request was %d", id, head);
    if (!check)
        return cycles;
    if (got != len)
        dg_fail("used len %u, expected %u", got, len);
    /* The interrupt is sent after the used ring update, so it may still be on its way. */
    if (!wait_irq(vec, seen, 1000))
        dg_fail("the used entry arrived but no MSI-X interrupt on vector 0x%x", vec);
    if (all_zero(buf, len))
        dg_fail("the device wrote %u bytes but the buffer is all zeros", len);
    return cycles;
}

static u8 buf64[64] ALIGNED(64);

void test_rng(void)
{
    rng_up();
    dg_log("virtio-rng at %02x:%02x.%x features 0x%lx queue size %u vector 0x%x",
           BDF_BUS(rng.pci.bdf), BDF_DEV(rng.pci.bdf), BDF_FN(rng.pci.bdf), rng.driver_features,
           rng.vq[0].size, virtq_vector(&rng, 0));
    for (int round = 1; round <= 2; round++) {
        u64 c = rng_round_trip(buf64, sizeof(buf64), true);
        dg_log("round %d: 64 bytes in %lu cycles, irq count %u: %02x%02x%02x%02x%02x%02x%02x%02x...",
               round, c, irq_count[virtq_vector(&rng, 0)], buf64[0], buf64[1], buf64[2], buf64[3],
               buf64[4], buf64[5], buf64[6], buf64[7]);
    }
}

static u8 pending_buf[256] ALIGNED(64);

void test_reset(void)
{
    rng_up();
    struct virtq *q = &rng.vq[0];
    /* Submit and reset at once, without waiting: the device may be anywhere in handling it. */
    memset(pending_buf, 0, sizeof(pending_buf));
    struct vbuf b = {pending_buf, sizeof(pending_buf), true};
    if (virtq_add(q, &b, 1) < 0)
        dg_fail("no free descriptor");
    virtq_kick(q);
    DG_CHECK(virtio_reset(&rng));
    dg_log("reset with a request in flight: status reads 0, used idx %u",
           *(volatile u16 *)&q->used->idx);

    /* Once device_status reads 0 the device must not touch the old queue or buffer any more
     * (§2.4): clear both and watch them for a while. */
    u16 used_idx = *(volatile u16 *)&q->used->idx;
    memset(pending_buf, 0, sizeof(pending_buf));
    sleep_ms(50);
    if (!all_zero(pending_buf, sizeof(pending_buf)))
        dg_fail("the device wrote the old buffer after the reset completed");
    if (*(volatile u16 *)&q->used->idx != used_idx)
        dg_fail("the device updated the old used ring after the reset completed");

    /* From scratch: the same device, the same queue memory, a new handshake. */
    rng_reinit();
    u64 c = rng_round_trip(buf64, sizeof(buf64), true);
    dg_log("after the reset: 64 bytes in %lu cycles", c);
}

#define RTT_SAMPLES 1000
static u64 samples[RTT_SAMPLES];
static u8 buf8[8] ALIGNED(8);

void test_rtt(void)
{
    char arg[24];
    u64 n = 1000;
    if (cmdline_get(dg_cmdline, "n", arg, sizeof(arg)) && (!parse_u64(arg, &n) || n == 0))
        dg_fail("bad n=%s", arg);
    rng_up();
    rng_round_trip(buf8, sizeof(buf8), true); /* warm-up, fully checked */
    u64 total = 0, min = ~0ull, max = 0;
    u32 vec = virtq_vector(&rng, 0), irqs0 = irq_count[vec];
    for (u64 i = 0; i < n; i++) {
        u64 c = rng_round_trip(buf8, sizeof(buf8), false);
        total += c;
        if (c < min)
            min = c;
        if (c > max)
            max = c;
        if (i < RTT_SAMPLES)
            samples[i] = c;
    }
    u64 m = n < RTT_SAMPLES ? n : RTT_SAMPLES;
    sort_u64(samples, m);
    /* The TSC rate, against the LAPIC timer (KVM's runs at 1 GHz): 5 ticks = 50 ms. Only so the
     * numbers can be read in microseconds; the result line stays in cycles. */
    u64 tsc_khz = 0;
    if (timer_works()) {
        u64 k = ticks;
        while (ticks == k)
            sti_hlt();
        u64 t0 = rdtsc(), k0 = ticks;
        while (ticks < k0 + 5)
            sti_hlt();
        tsc_khz = (rdtsc() - t0) / (5 * TICK_MS);
    }
    u64 med = samples[m / 2];
    dg_log("RTT min=%lu max=%lu interrupts=%u tsc_khz=%lu median_ns=%lu", min, max,
           irq_count[vec] - irqs0, tsc_khz, tsc_khz ? med * 1000000 / tsc_khz : 0);
    dg_log("RTT n=%lu median_cycles=%lu total_cycles=%lu", n, med, total);
}

/* Eight requests of different sizes in flight at once, two of them chains of two buffers: every
 * one must come back exactly once, with a length no larger than its chain. */
void test_rng_batch(void)
{
    static u8 bufs[8][48] ALIGNED(64);
    rng_up();
    struct virtq *q = &rng.vq[0];
    int heads[8];
    u32 want[8];
    bool done[8] = {0};
    memset(bufs, 0, sizeof(bufs));
    for (int i = 0; i < 8; i++) {
        struct vbuf b[2] = {{bufs[i], (u32)(4 + 4 * i), true}, {bufs[i] + 40, 8, true}};
        int n = (i % 4 == 3) ? 2 : 1;
        want[i] = b[0].len + (n == 2 ? 8 : 0);
        heads[i] = virtq_add(q, b, n);
        if (heads[i] < 0)
            dg_fail("request %d: no free descriptors (%u free)", i, q->num_free);
    }
    virtq_kick(q);
    for (int got = 0; got < 8; got++) {
        u32 len;
        int id = virtq_wait_used(q, &len, RNG_TIMEOUT_MS);
        if (id < 0)
            dg_fail("only %d of 8 requests came back within %u ms", got, RNG_TIMEOUT_MS);
        int i = 0;
        while (i < 8 && heads[i] != id)
            i++;
        if (i == 8 || done[i])
            dg_fail("used entry for descriptor %d, which is not an outstanding request", id);
        if (len == 0 || len > want[i])
            dg_fail("request %d: used len %u for a %u-byte chain", i, len, want[i]);
        done[i] = true;
    }
    if (q->num_free != q->size)
        dg_fail("%u of %u descriptors free after all requests completed", q->num_free, q->size);
    dg_log("8 requests in flight (2 chained) all completed once");
}

/* With VIRTIO_F_RING_EVENT_IDX, when the device offers it: interrupts and notifications follow
 * used_event/avail_event. */
void test_rng_event_idx(void)
{
    DG_CHECK(virtio_probe(&rng, RNG_DEVICE_ID));
    DG_CHECK(virtio_setup_msix(&rng, VEC_MSIX_BASE));
    DG_CHECK(virtio_init(&rng, VIRTIO_F_RING_EVENT_IDX, 1, 16));
    if (!(rng.driver_features & VIRTIO_F_RING_EVENT_IDX))
        dg_log("the device does not offer EVENT_IDX (features 0x%lx): plain rings", rng.device_features);
    for (int i = 0; i < 20; i++) /* wraps the 16-entry ring */
        rng_round_trip(buf64, sizeof(buf64), true);
    dg_log("20 round trips with features 0x%lx", rng.driver_features);
}

/* With the command register's Bus Master Enable clear a function may not write guest memory or
 * send MSI-X (both are bus-master writes). A request kicked meanwhile must stay untouched, with
 * no used entry and no interrupt; once BME is set again it completes, with its interrupt. */
void test_bus_master(void)
{
    static u8 buf[64] ALIGNED(64);
    rng_up();
    rng_round_trip(buf64, sizeof(buf64), true); /* it works with BME set */
    struct virtq *q = &rng.vq[0];
    u8 vec = virtq_vector(&rng, 0);
    u16 cmd = pci_read16(rng.pci.bdf, PCI_COMMAND);
    pci_write16(rng.pci.bdf, PCI_COMMAND, cmd & ~PCI_COMMAND_MASTER);

    u16 used_idx = *(volatile u16 *)&q->used->idx;
    u32 seen = irq_count[vec];
    memset(buf, 0, sizeof(buf));
    struct vbuf b = {buf, sizeof(buf), true};
    int head = virtq_add(q, &b, 1);
    if (head < 0)
        dg_fail("no free descriptor");
    virtq_kick(q);
    sleep_ms(100);
    if (*(volatile u16 *)&q->used->idx != used_idx)
        dg_fail("a used entry was written while Bus Master Enable was clear");
    if (!all_zero(buf, sizeof(buf)))
        dg_fail("the buffer was written while Bus Master Enable was clear");
    if (irq_count[vec] != seen)
        dg_fail("an MSI-X interrupt arrived while Bus Master Enable was clear");
    dg_log("BME clear: 100 ms after the kick, no used entry, buffer untouched, no interrupt");

    pci_write16(rng.pci.bdf, PCI_COMMAND, cmd);
    u32 got = 0;
    int id = virtq_wait_used(q, &got, RNG_TIMEOUT_MS);
    if (id < 0)
        dg_fail("no used entry within %u ms of setting Bus Master Enable again", RNG_TIMEOUT_MS);
    if (id != head || got != sizeof(buf))
        dg_fail("used entry %d len %u, expected %d len %u", id, got, head, (u32)sizeof(buf));
    if (!wait_irq(vec, seen, 1000))
        dg_fail("no MSI-X interrupt after Bus Master Enable was set again");
    if (all_zero(buf, sizeof(buf)))
        dg_fail("the request completed but the buffer is all zeros");
    dg_log("BME set: the request completed with its interrupt");
    rng_round_trip(buf64, sizeof(buf64), true);
}
