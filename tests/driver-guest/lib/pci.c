#include "pci.h"
#include "irq.h"

#define CONFIG_ADDRESS 0xcf8
#define CONFIG_DATA 0xcfc

/* Mechanism #1: bit 31 enables, then bus/device/function/dword register. Byte and word accesses
 * go to 0xCFC + (offset & 3). */
static void select(pci_bdf bdf, u8 off) { outl(CONFIG_ADDRESS, 0x80000000u | (u32)bdf << 8 | (off & 0xfc)); }

u8 pci_read8(pci_bdf bdf, u8 off) { select(bdf, off); return inb(CONFIG_DATA + (off & 3)); }
u16 pci_read16(pci_bdf bdf, u8 off) { select(bdf, off); return inw(CONFIG_DATA + (off & 2)); }
u32 pci_read32(pci_bdf bdf, u8 off) { select(bdf, off); return inl(CONFIG_DATA); }
void pci_write8(pci_bdf bdf, u8 off, u8 v) { select(bdf, off); outb(CONFIG_DATA + (off & 3), v); }
void pci_write16(pci_bdf bdf, u8 off, u16 v) { select(bdf, off); outw(CONFIG_DATA + (off & 2), v); }
void pci_write32(pci_bdf bdf, u8 off, u32 v) { select(bdf, off); outl(CONFIG_DATA, v); }

static bool read_function(pci_bdf bdf, struct pci_dev *d)
{
    u32 id = pci_read32(bdf, PCI_VENDOR_ID);
    if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0)
        return false;
    memset(d, 0, sizeof(*d));
    d->bdf = bdf;
    d->vendor = (u16)id;
    d->device = (u16)(id >> 16);
    d->class_code = pci_read32(bdf, PCI_CLASS_REV) >> 8;
    d->header_type = pci_read8(bdf, PCI_HEADER_TYPE);
    return true;
}

int pci_scan_bus0(struct pci_dev *out, int max)
{
    int n = 0;
    struct pci_dev d;
    for (u8 dev = 0; dev < 32; dev++) {
        if (!read_function(PCI_BDF(0, dev, 0), &d))
            continue;
        /* Functions 1-7 exist only when function 0 says it is multi-function (bit 7). */
        u8 fns = (d.header_type & 0x80) ? 8 : 1;
        for (u8 fn = 0; fn < fns; fn++) {
            if (fn && !read_function(PCI_BDF(0, dev, fn), &d))
                continue;
            if (n < max)
                out[n] = d;
            n++;
        }
    }
    return n;
}

bool pci_find(u16 vendor, u16 device, struct pci_dev *out)
{
    struct pci_dev all[32];
    int n = pci_scan_bus0(all, ARRAY_SIZE(all));
    for (int i = 0; i < n && i < (int)ARRAY_SIZE(all); i++) {
        if (all[i].vendor == vendor && all[i].device == device) {
            *out = all[i];
            pci_decode_bars(out);
            return true;
        }
    }
    return false;
}

void pci_decode_bars(struct pci_dev *d)
{
    if ((d->header_type & 0x7f) != 0)
        return; /* bridges have two BARs and a different layout: not needed here */
    u16 cmd = pci_read16(d->bdf, PCI_COMMAND);
    /* No decoding while a BAR briefly holds all-ones: it would claim addresses it must not. */
    pci_write16(d->bdf, PCI_COMMAND, cmd & ~(PCI_COMMAND_MEMORY | PCI_COMMAND_IO));
    for (int i = 0; i < 6; i++) {
        struct pci_bar *b = &d->bar[i];
        u8 off = PCI_BAR0 + 4 * i;
        u32 lo = pci_read32(d->bdf, off);
        memset(b, 0, sizeof(*b));
        pci_write32(d->bdf, off, 0xffffffff);
        u32 mask_lo = pci_read32(d->bdf, off);
        pci_write32(d->bdf, off, lo);
        if (lo & 1) { /* I/O BAR */
            b->io = true;
            b->addr = lo & ~3u;
            u32 m = mask_lo & ~3u;
            b->size = m ? (u16)(~m + 1) : 0;
            continue;
        }
        b->prefetch = lo & 8;
        u64 addr = lo & ~0xfull, mask = mask_lo & ~0xfull;
        if (((lo >> 1) & 3) == 2 && i < 5) { /* 64-bit: the next BAR holds the high half */
            u32 hi = pci_read32(d->bdf, off + 4);
            pci_write32(d->bdf, off + 4, 0xffffffff);
            u32 mask_hi = pci_read32(d->bdf, off + 4);
            pci_write32(d->bdf, off + 4, hi);
            b->mem64 = true;
            addr |= (u64)hi << 32;
            mask |= (u64)mask_hi << 32;
            i++;
            memset(&d->bar[i], 0, sizeof(d->bar[i]));
        } else {
            mask |= 0xffffffff00000000ull;
        }
        b->size = mask_lo ? ~mask + 1 : 0;
        b->addr = b->size ? addr : 0;
    }
    pci_write16(d->bdf, PCI_COMMAND, cmd);
}

void pci_enable(const struct pci_dev *d)
{
    u16 cmd = pci_read16(d->bdf, PCI_COMMAND);
    pci_write16(d->bdf, PCI_COMMAND, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
}

u8 pci_find_cap(pci_bdf bdf, u8 id, u8 from)
{
    if (!(pci_read16(bdf, PCI_STATUS) & PCI_STATUS_CAP_LIST))
        return 0;
    u8 off = from ? pci_read8(bdf, from + 1) : pci_read8(bdf, PCI_CAP_PTR);
    for (int guard = 0; guard < 48 && off >= 0x40; guard++) {
        off &= 0xfc;
        if (pci_read8(bdf, off) == id)
            return off;
        off = pci_read8(bdf, off + 1);
    }
    return 0;
}

const char *pci_msix_probe(const struct pci_dev *d, struct msix *m)
{
    memset(m, 0, sizeof(*m));
    m->cap = pci_find_cap(d->bdf, PCI_CAP_ID_MSIX, 0);
    if (!m->cap)
        return "no MSI-X capability";
    u16 ctrl = pci_read16(d->bdf, m->cap + 2);
    u32 table = pci_read32(d->bdf, m->cap + 4);
    u32 pba = pci_read32(d->bdf, m->cap + 8);
    m->table_size = (ctrl & 0x7ff) + 1;
    const struct pci_bar *tb = &d->bar[table & 7], *pb = &d->bar[pba & 7];
    if ((table & 7) > 5 || !tb->addr || tb->io)
        return "the MSI-X table's BAR is not a memory BAR";
    if ((table & ~7u) + (u64)m->table_size * 16 > tb->size)
        return "the MSI-X table does not fit in its BAR";
    m->table = tb->addr + (table & ~7u);
    m->pba = pb->addr + (pba & ~7u);
    return 0;
}

void pci_msix_enable(const struct pci_dev *d, const struct msix *m, bool on)
{
    u16 ctrl = pci_read16(d->bdf, m->cap + 2);
    ctrl &= ~(MSIX_CTRL_ENABLE | MSIX_CTRL_FUNC_MASK);
    if (on)
        ctrl |= MSIX_CTRL_ENABLE;
    pci_write16(d->bdf, m->cap + 2, ctrl);
}

void msix_set_entry(const struct msix *m, u16 i, u8 vector, u32 apic_id, bool masked)
{
    u64 e = m->table + 16ull * i;
    /* Mask while changing address and data, so a half-written entry is never used. */
    mmio_write32(e + 12, MSIX_ENTRY_MASKED);
    u64 addr = MSI_ADDRESS(apic_id);
    mmio_write32(e + 0, (u32)addr);
    mmio_write32(e + 4, (u32)(addr >> 32));
    mmio_write32(e + 8, vector); /* fixed delivery, edge */
    mmio_write32(e + 12, masked ? MSIX_ENTRY_MASKED : 0);
}
