/* PCI configuration mechanism #1 (ports 0xCF8/0xCFC), bus-0 enumeration, BARs, capabilities, MSI-X. */
#ifndef DG_PCI_H
#define DG_PCI_H

#include "util.h"

#define PCI_VENDOR_ID 0x00
#define PCI_DEVICE_ID 0x02
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_CLASS_REV 0x08
#define PCI_HEADER_TYPE 0x0e
#define PCI_BAR0 0x10
#define PCI_ROM 0x30
#define PCI_CAP_PTR 0x34
#define PCI_COMMAND_IO 0x1
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4
#define PCI_STATUS_CAP_LIST 0x10
#define PCI_CAP_ID_MSIX 0x11
#define PCI_CAP_ID_VENDOR 0x09

/* bus << 8 | device << 3 | function */
typedef u16 pci_bdf;
#define PCI_BDF(b, d, f) ((pci_bdf)((b) << 8 | (d) << 3 | (f)))
#define BDF_BUS(x) ((x) >> 8)
#define BDF_DEV(x) (((x) >> 3) & 0x1f)
#define BDF_FN(x) ((x) & 7)

u8 pci_read8(pci_bdf bdf, u8 off);
u16 pci_read16(pci_bdf bdf, u8 off);
u32 pci_read32(pci_bdf bdf, u8 off);
void pci_write8(pci_bdf bdf, u8 off, u8 v);
void pci_write16(pci_bdf bdf, u8 off, u16 v);
void pci_write32(pci_bdf bdf, u8 off, u32 v);

struct pci_bar {
    u64 addr; /* 0 when the BAR is unimplemented */
    u64 size;
    bool io, mem64, prefetch;
};

struct pci_dev {
    pci_bdf bdf;
    u16 vendor, device;
    u32 class_code; /* class << 16 | subclass << 8 | prog-if */
    u8 header_type;
    struct pci_bar bar[6];
};

/* Scans bus 0 (every device, and functions 1-7 of multi-function devices); fills up to max
 * entries and returns how many functions exist. BARs are not decoded yet. */
int pci_scan_bus0(struct pci_dev *out, int max);
/* Finds vendor:device on bus 0 and decodes its BARs; false when absent. */
bool pci_find(u16 vendor, u16 device, struct pci_dev *out);
/* Reads every BAR's address, and its size by writing all-ones (memory decoding off meanwhile;
 * the address is written back). Canto already placed the BARs: nothing is moved. */
void pci_decode_bars(struct pci_dev *dev);
/* Turns on memory space decoding and bus mastering (DMA, MSI-X) in the command register. */
void pci_enable(const struct pci_dev *dev);
/* Offset of the first capability with this id at or after `from` in the list (0 = from the
 * start), or 0. Walks at most 48 entries, so a looping list cannot hang the guest. */
u8 pci_find_cap(pci_bdf bdf, u8 id, u8 from);

/* MSI-X (PCI 3.0 §6.8.2): the table lives in a BAR; each entry is address lo/hi, data, control. */
struct msix {
    u8 cap;          /* capability offset in config space, 0 if none */
    u16 table_size;  /* entries */
    u64 table, pba;  /* MMIO addresses */
};
#define MSIX_CTRL_ENABLE 0x8000
#define MSIX_CTRL_FUNC_MASK 0x4000
#define MSIX_ENTRY_MASKED 1u

/* Finds the MSI-X capability and its table; NULL or a reason. */
const char *pci_msix_probe(const struct pci_dev *dev, struct msix *m);
/* Sets the enable bit (and clears the function mask) in the capability. */
void pci_msix_enable(const struct pci_dev *dev, const struct msix *m, bool on);
/* Programs entry i to send `vector` to the LAPIC with this id, unmasked or masked. */
void msix_set_entry(const struct msix *m, u16 i, u8 vector, u32 apic_id, bool masked);

#endif
