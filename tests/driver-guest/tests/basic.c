/* hello and enumerate: the boot path and the PCI bus. */
#include "dg.h"
#include "irq.h"
#include "pci.h"
#include "serial.h"
#include "tests.h"
#include "virtio.h"

void test_hello(void)
{
    dg_log("LAPIC id %u, timer %s", lapic_id(), timer_works() ? "ticks" : "DOES NOT TICK");
    /* The LAPIC timer against the TSC: both should agree that 100 ms passed. */
    u64 t0 = rdtsc(), k0 = ticks;
    sleep_ms(100);
    dg_log("100 ms sleep: %lu ticks, %lu TSC cycles", ticks - k0, rdtsc() - t0);
}

/* Deliberately runs an undefined instruction: the IDT must catch it and report a FAIL line. */
void test_exception(void)
{
    __asm__ volatile("ud2");
}

static void print_bars(const struct pci_dev *d)
{
    for (int i = 0; i < 6; i++) {
        const struct pci_bar *b = &d->bar[i];
        if (!b->size)
            continue;
        dg_log("  BAR%d %s 0x%lx size 0x%lx%s", i, b->io ? "io" : b->mem64 ? "mem64" : "mem32",
               b->addr, b->size, b->prefetch ? " prefetchable" : "");
    }
}

void test_enumerate(void)
{
    struct pci_dev devs[64];
    int n = pci_scan_bus0(devs, ARRAY_SIZE(devs));
    if (n > (int)ARRAY_SIZE(devs))
        n = ARRAY_SIZE(devs);
    bool host_bridge = false;
    int virtio = 0;
    for (int i = 0; i < n; i++) {
        struct pci_dev *d = &devs[i];
        kprintf("DG PCI %02x:%02x.%x %04x:%04x class %06x\n", BDF_BUS(d->bdf), BDF_DEV(d->bdf),
                BDF_FN(d->bdf), d->vendor, d->device, d->class_code);
        pci_decode_bars(d);
        print_bars(d);
        if (d->bdf == PCI_BDF(0, 0, 0) && (d->class_code >> 8) == 0x0600)
            host_bridge = true;
        if (d->vendor == VIRTIO_VENDOR && d->device >= VIRTIO_DEV_MODERN_BASE) {
            virtio++;
            /* A modern virtio function must carry the capabilities a driver needs. */
            static struct virtio_dev v;
            const char *err = virtio_probe_pci(&v, d);
            if (err)
                dg_fail("%02x:%02x.%x virtio type %u: %s", BDF_BUS(d->bdf), BDF_DEV(d->bdf),
                        BDF_FN(d->bdf), d->device - VIRTIO_DEV_MODERN_BASE, err);
            dg_log("  virtio type %u: common 0x%lx+0x%x notify 0x%lx+0x%x (x%u) isr 0x%lx device 0x%lx+0x%x "
                   "msix %u entries at 0x%lx",
                   d->device - VIRTIO_DEV_MODERN_BASE, v.common, v.common_len, v.notify_base,
                   v.notify_len, v.notify_off_multiplier, v.isr, v.device_cfg, v.device_cfg_len,
                   v.msix.cap ? v.msix.table_size : 0, v.msix.table);
        }
    }
    dg_log("%d PCI functions, %d virtio", n, virtio);
    if (!host_bridge)
        dg_fail("no host bridge (class 0600) at 00:00.0");
    if (!virtio)
        dg_fail("no modern virtio device (1af4:1040+) on bus 0");
}
