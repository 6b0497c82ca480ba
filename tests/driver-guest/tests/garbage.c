/* garbage: every register a guest can reach on each virtio function gets garbage of every width,
 * then virtio-rng must still initialize and work; a queue outside guest RAM must be refused or
 * answered with DEVICE_NEEDS_RESET, and the device must recover through a reset. */
#include "dg.h"
#include "irq.h"
#include "rng_util.h"
#include "serial.h"
#include "tests.h"

/* Every offset and width of a region's first FULL_SWEEP bytes; past that one aligned dword of
 * every 4 (time: each access is a VM exit to canto, ~45 us on this kvm_pvm machine). */
#define FULL_SWEEP 128

static u32 xorshift(void)
{
    static u32 s = 0x2545f491;
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return s;
}

/* 0, all ones, a marker, and a fresh random value for every access. */
static u32 pattern(int p) { return p == 0 ? 0 : p == 1 ? 0xffffffff : p == 2 ? 0xdeadbeef : xorshift(); }
#define NPATTERNS 4

static u64 accesses;

static void poke(u64 a, int width, u32 v, bool read_back)
{
    if (width == 1)
        mmio_write8(a, (u8)v);
    else if (width == 2)
        mmio_write16(a, (u16)v);
    else
        mmio_write32(a, v);
    accesses++;
    if (!read_back)
        return;
    if (width == 1)
        (void)mmio_read8(a);
    else if (width == 2)
        (void)mmio_read16(a);
    else
        (void)mmio_read32(a);
    accesses++;
}

static void hammer_mmio(const char *what, u64 base, u32 len)
{
    if (!base || !len)
        return;
    u32 n = len < FULL_SWEEP ? len : FULL_SWEEP;
    for (int width = 1; width <= 4; width *= 2)
        for (u32 off = 0; off + width <= n; off++) /* every offset, unaligned ones too */
            for (int p = 0; p < NPATTERNS; p++) /* read back once per place: exits are dear */
                poke(base + off, width, pattern(p), p == NPATTERNS - 1);
    for (u32 off = n; off + 4 <= len; off += 4)
        poke(base + off, 4, xorshift(), true);
    /* Accesses that start inside the region and end past it. */
    for (int width = 2; width <= 4; width *= 2)
        for (u32 back = 1; back < (u32)width; back++)
            poke(base + len - back, width, xorshift(), true);
    dg_log("  %s: 0x%x bytes (every offset and width of the first 0x%x)", what, len, n);
}

/* Config-space bytes the garbage must not touch: command (it would turn off decoding of the
 * BARs we are about to use) and the BARs and ROM BAR (they would move the device). */
static bool protected_cfg(u32 off)
{
    return (off >= PCI_COMMAND && off < PCI_COMMAND + 2) || (off >= PCI_BAR0 && off < PCI_BAR0 + 24) ||
           (off >= PCI_ROM && off < PCI_ROM + 4);
}

static void hammer_config(pci_bdf bdf)
{
    u32 bars[6];
    for (int i = 0; i < 6; i++)
        bars[i] = pci_read32(bdf, PCI_BAR0 + 4 * i);
    u16 cmd = pci_read16(bdf, PCI_COMMAND);
    for (int width = 1; width <= 4; width *= 2) {
        for (u32 off = 0; off + width <= 256; off += width) {
            bool skip = false;
            for (int k = 0; k < width; k++)
                skip |= protected_cfg(off + k);
            if (skip)
                continue;
            for (int p = 0; p < NPATTERNS; p++) {
                u32 v = pattern(p);
                if (width == 1)
                    pci_write8(bdf, (u8)off, (u8)v);
                else if (width == 2)
                    pci_write16(bdf, (u8)off, (u16)v);
                else
                    pci_write32(bdf, (u8)off, v);
                accesses += 2;
            }
            (void)pci_read32(bdf, (u8)(off & ~3u));
            accesses += 2;
        }
    }
    /* Odd port accesses to the data window: a dword at 0xCFD, words at 0xCFD/0xCFF, and a
     * disabled (bit 31 clear) address followed by data. Aimed at the vendor ID, which is
     * read-only. */
    outl(0xcf8, 0x80000000u | (u32)bdf << 8);
    outl(0xcfd, 0xdeadbeef);
    (void)inl(0xcfd);
    outw(0xcff, 0xbeef);
    (void)inw(0xcff);
    outl(0xcf8, (u32)bdf << 8);
    outl(0xcfc, 0xffffffff);
    (void)inl(0xcfc);
    outb(0xcfb, 0xff); /* a byte write into the address register */
    for (int i = 0; i < 6; i++)
        if (pci_read32(bdf, PCI_BAR0 + 4 * i) != bars[i])
            dg_fail("BAR%d changed from 0x%x to 0x%x though it was never written", i, bars[i],
                    pci_read32(bdf, PCI_BAR0 + 4 * i));
    if (pci_read16(bdf, PCI_COMMAND) != cmd)
        dg_fail("the command register changed from 0x%x to 0x%x though it was never written", cmd,
                pci_read16(bdf, PCI_COMMAND));
    if (pci_read16(bdf, PCI_VENDOR_ID) != VIRTIO_VENDOR)
        dg_fail("the vendor id reads 0x%x after the garbage", pci_read16(bdf, PCI_VENDOR_ID));
    dg_log("  PCI config space: 256 bytes, widths 1/2/4, command/BARs/ROM kept");
}

/* The MSI-X table and PBA, with the function masked meanwhile (a garbage entry could ask for
 * INIT or SMI delivery; nothing may be sent while the function is masked). */
static void hammer_msix(struct virtio_dev *v)
{
    if (!v->msix.cap)
        return;
    u16 ctrl = pci_read16(v->pci.bdf, v->msix.cap + 2);
    pci_write16(v->pci.bdf, v->msix.cap + 2, ctrl | MSIX_CTRL_FUNC_MASK);
    hammer_mmio("MSI-X table", v->msix.table, v->msix.table_size * 16u);
    hammer_mmio("MSI-X PBA", v->msix.pba, 8 * ((v->msix.table_size + 63u) / 64));
    /* Every entry back to a handled vector, then unmask the function. */
    virtio_setup_msix(v, VEC_MSIX_BASE + 0x10);
}

/* Ring memory for garbage queues: every byte has its top bit set, so every 64-bit address a
 * descriptor holds is far outside guest RAM, and every index is out of range. The device may
 * write its used rings here and nowhere else. */
static u8 scratch[3][4096] ALIGNED(4096);

static void fill_scratch(void)
{
    u64 *p = (u64 *)scratch;
    for (size_t i = 0; i < sizeof(scratch) / 8; i++)
        p[i] = ((u64)xorshift() << 32 | xorshift()) | 0x8080808080808080ull;
}

/* Properly negotiated, then every queue set up with garbage (sizes, alignment, ring contents,
 * vectors) and DRIVER_OK, then every queue kicked: the device must either refuse (NEEDS_RESET) or
 * cope, and come back to 0 on reset. */
static void garbage_rings(struct virtio_dev *v)
{
    static const u16 sizes[] = {1, 16, 256, 3, 0, 0x8000};
    static const u32 desc_off[] = {0, 0x10, 0x1, 0x8};
    for (int round = 0; round < 4; round++) {
        fill_scratch();
        DG_CHECK(virtio_negotiate(v, round & 1 ? VIRTIO_F_RING_EVENT_IDX : 0));
        u64 c = v->common;
        u16 nq = v->num_queues < 8 ? v->num_queues : 8;
        for (u16 q = 0; q < nq; q++) {
            mmio_write16(c + VCC_QUEUE_SELECT, q);
            u16 max = mmio_read16(c + VCC_QUEUE_SIZE);
            u16 size = (round + q) % 3 == 0 ? max : sizes[(round * 3 + q) % ARRAY_SIZE(sizes)];
            mmio_write16(c + VCC_QUEUE_SIZE, size);
            /* Rounds 0 and 1 align the rings, so the device really starts on garbage contents;
             * 2 and 3 misalign the descriptor table (and 3 the driver area too). */
            mmio_write64(c + VCC_QUEUE_DESC, (u64)scratch[0] + desc_off[round]);
            mmio_write64(c + VCC_QUEUE_DRIVER, (u64)scratch[1] + (round == 3 ? 1 : 0));
            mmio_write64(c + VCC_QUEUE_DEVICE, (u64)scratch[1] + 0x800 + 4 * q);
            mmio_write16(c + VCC_QUEUE_MSIX_VECTOR, (u16)(xorshift() & 7));
            mmio_write16(c + VCC_QUEUE_ENABLE, 1);
        }
        virtio_set_status(v, virtio_status(v) | VIRTIO_STATUS_DRIVER_OK);
        u8 s1 = virtio_status(v);
        for (u16 q = 0; q <= nq; q++) { /* one past the last queue too */
            u64 off = (u64)q * v->notify_off_multiplier;
            if (off + 2 <= v->notify_len)
                mmio_write16(v->notify_base + off, q);
            mmio_write16(v->notify_base, q);
        }
        sleep_ms(20);
        u8 s2 = virtio_status(v);
        dg_log("  garbage rings round %d: status 0x%x after DRIVER_OK, 0x%x after kicks", round, s1, s2);
        DG_CHECK(virtio_reset(v));
    }
}

static void garbage_function(const struct pci_dev *d)
{
    static struct virtio_dev v;
    DG_CHECK(virtio_probe_pci(&v, d));
    dg_log("garbage into %02x:%02x.%x (virtio type %u)", BDF_BUS(d->bdf), BDF_DEV(d->bdf),
           BDF_FN(d->bdf), d->device - VIRTIO_DEV_MODERN_BASE);
    /* Every MSI-X entry goes to a handled vector, whatever vector numbers the garbage selects. */
    if (v.msix.cap)
        virtio_setup_msix(&v, VEC_MSIX_BASE + 0x10);
    hammer_mmio("common config", v.common, v.common_len);
    hammer_mmio("ISR", v.isr, v.isr_len);
    hammer_mmio("device config", v.device_cfg, v.device_cfg_len);
    hammer_mmio("notify", v.notify_base, v.notify_len);
    hammer_config(d->bdf);
    /* The config garbage may have switched MSI-X off or masked it; the reset below must work
     * regardless. */
    if (v.msix.cap)
        pci_msix_enable(&v.pci, &v.msix, true);
    DG_CHECK(virtio_reset(&v));
    hammer_msix(&v);
    garbage_rings(&v);
    dg_log("  reset after the garbage: status 0");
}

/* A queue whose descriptor table lies far outside guest RAM. */
static void queue_outside_ram(void)
{
    const u64 bad = 0xf00000000000ull;
    /* As virtio_setup_queue does, by hand, with a bad descriptor table (the driver and device
     * areas stay valid, in the queue page rng_up allocated). */
    DG_CHECK(virtio_negotiate(&rng, 0));
    struct virtq *q = &rng.vq[0];
    u64 c = rng.common;
    mmio_write16(c + VCC_QUEUE_SELECT, 0);
    mmio_write16(c + VCC_QUEUE_SIZE, 16);
    mmio_write64(c + VCC_QUEUE_DESC, bad);
    mmio_write64(c + VCC_QUEUE_DRIVER, (u64)q->avail);
    mmio_write64(c + VCC_QUEUE_DEVICE, (u64)q->used);
    mmio_write16(c + VCC_QUEUE_MSIX_VECTOR, 1);
    mmio_write16(c + VCC_QUEUE_ENABLE, 1);
    u16 enabled = mmio_read16(c + VCC_QUEUE_ENABLE);
    u8 cfg_vec = (u8)(rng.vector_base + 0);
    u32 cfg_irqs = irq_count[cfg_vec];
    virtio_set_status(&rng, virtio_status(&rng) | VIRTIO_STATUS_DRIVER_OK);
    u8 s = virtio_status(&rng);
    dg_log("queue 0 desc at 0x%lx: queue_enable reads %u, status after DRIVER_OK 0x%x", bad, enabled, s);
    bool refused = !enabled || !(s & VIRTIO_STATUS_DRIVER_OK) || (s & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED));
    if (!refused) {
        /* Accepted at DRIVER_OK: a request must then make the device give up on the queue. */
        memset((u8 *)q->mem + 0x400, 0, 0x800);
        q->avail->ring[0] = 0;
        barrier();
        *(volatile u16 *)&q->avail->idx = 1;
        mmio_write16(rng.notify_base + (u64)mmio_read16(c + VCC_QUEUE_NOTIFY_OFF) * rng.notify_off_multiplier, 0);
        for (int i = 0; i < 50 && !(virtio_status(&rng) & VIRTIO_STATUS_NEEDS_RESET); i++)
            sleep_ms(10);
        s = virtio_status(&rng);
        dg_log("after a notify: status 0x%x, used idx %u, config interrupts %u", s,
               *(volatile u16 *)&q->used->idx, irq_count[cfg_vec] - cfg_irqs);
        if (!(s & VIRTIO_STATUS_NEEDS_RESET))
            dg_fail("a descriptor table at 0x%lx (outside RAM) was accepted and used without "
                    "DEVICE_NEEDS_RESET (status 0x%x)", bad, s);
    }
    DG_CHECK(virtio_reset(&rng));
}

void test_garbage(void)
{
    struct pci_dev devs[32];
    int n = pci_scan_bus0(devs, ARRAY_SIZE(devs));
    int hit = 0;
    u64 t0 = rdtsc();
    for (int i = 0; i < n && i < (int)ARRAY_SIZE(devs); i++) {
        if (devs[i].vendor != VIRTIO_VENDOR || devs[i].device < VIRTIO_DEV_MODERN_BASE)
            continue;
        pci_decode_bars(&devs[i]);
        garbage_function(&devs[i]);
        hit++;
    }
    if (!hit)
        dg_fail("no virtio function on bus 0");
    dg_log("%lu garbage accesses on %d virtio functions in %lu cycles", accesses, hit, rdtsc() - t0);

    /* The VMM is still here (we are printing): now the rng must work from a clean init. */
    rng_up();
    u8 buf[64];
    rng_round_trip(buf, sizeof(buf), true);
    dg_log("virtio-rng works after the garbage");

    queue_outside_ram();
    rng_reinit();
    rng_round_trip(buf, sizeof(buf), true);
    dg_log("virtio-rng works after the out-of-RAM queue and a reset");
}
