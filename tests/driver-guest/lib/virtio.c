#include "virtio.h"
#include "dg.h"
#include "irq.h"
#include "serial.h"

/* Queue memory: one page per queue, handed out once per (device, queue) and reused on re-init,
 * so tests that reset and re-initialize a device many times do not run out. */
#define VQ_PAGES 24
static u8 vq_pages[VQ_PAGES][4096] ALIGNED(4096);
static int vq_pages_used;

static u64 alloc_page(void)
{
    if (vq_pages_used == VQ_PAGES)
        return 0;
    return (u64)vq_pages[vq_pages_used++];
}

/* ---- probing ------------------------------------------------------------------------------ */

const char *virtio_probe(struct virtio_dev *v, u16 device_id)
{
    struct pci_dev pci;
    if (!pci_find(VIRTIO_VENDOR, device_id, &pci))
        return "device not found on PCI bus 0";
    return virtio_probe_pci(v, &pci);
}

const char *virtio_probe_pci(struct virtio_dev *v, const struct pci_dev *pci)
{
    static char why[96];
    /* Keep the queue pages of an earlier probe of the same function. */
    u64 pages[VIRTIO_MAX_QUEUES];
    bool same = v->pci.bdf == pci->bdf && v->pci.vendor == pci->vendor;
    for (int i = 0; i < VIRTIO_MAX_QUEUES; i++)
        pages[i] = same ? v->vq[i].mem : 0;
    memset(v, 0, sizeof(*v));
    for (int i = 0; i < VIRTIO_MAX_QUEUES; i++)
        v->vq[i].mem = pages[i];
    v->pci = *pci;
    pci_decode_bars(&v->pci); /* again: the caller's copy may come from a bare scan */
    pci_enable(&v->pci);

    /* Walk the vendor-specific capabilities; the first of each type is the one to use (§4.1.4). */
    for (u8 cap = pci_find_cap(pci->bdf, PCI_CAP_ID_VENDOR, 0); cap;
         cap = pci_find_cap(pci->bdf, PCI_CAP_ID_VENDOR, cap)) {
        u8 type = pci_read8(pci->bdf, cap + 3);
        u8 bar = pci_read8(pci->bdf, cap + 4);
        u32 off = pci_read32(pci->bdf, cap + 8);
        u32 len = pci_read32(pci->bdf, cap + 12);
        if (type == VIRTIO_PCI_CAP_PCI_CFG) {
            if (!v->pci_cfg_cap)
                v->pci_cfg_cap = cap;
            continue;
        }
        if (type < VIRTIO_PCI_CAP_COMMON_CFG || type > VIRTIO_PCI_CAP_DEVICE_CFG)
            continue; /* shared memory and vendor types: not ours */
        if (bar > 5 || !v->pci.bar[bar].addr || v->pci.bar[bar].io) {
            ksnprintf(why, sizeof(why), "virtio cap type %u at 0x%x names unusable BAR %u", type, cap, bar);
            return why;
        }
        if ((u64)off + len > v->pci.bar[bar].size) {
            ksnprintf(why, sizeof(why), "virtio cap type %u: 0x%x+0x%x overflows BAR%u (size 0x%lx)",
                      type, off, len, bar, v->pci.bar[bar].size);
            return why;
        }
        u64 addr = v->pci.bar[bar].addr + off;
        switch (type) {
        case VIRTIO_PCI_CAP_COMMON_CFG:
            if (!v->common)
                v->common = addr, v->common_len = len;
            break;
        case VIRTIO_PCI_CAP_NOTIFY_CFG:
            if (!v->notify_base) {
                v->notify_base = addr, v->notify_len = len;
                v->notify_off_multiplier = pci_read32(pci->bdf, cap + 16);
            }
            break;
        case VIRTIO_PCI_CAP_ISR_CFG:
            if (!v->isr)
                v->isr = addr, v->isr_len = len;
            break;
        case VIRTIO_PCI_CAP_DEVICE_CFG:
            if (!v->device_cfg)
                v->device_cfg = addr, v->device_cfg_len = len;
            break;
        }
    }
    if (!v->common)
        return "no COMMON_CFG capability";
    if (v->common_len < 0x38)
        return "COMMON_CFG is shorter than struct virtio_pci_common_cfg";
    if (!v->notify_base)
        return "no NOTIFY_CFG capability";
    if (!v->isr)
        return "no ISR_CFG capability";
    const char *err = pci_msix_probe(&v->pci, &v->msix);
    if (err)
        v->msix.cap = 0; /* legal for virtio, but every Canto test wants MSI-X: callers check */
    return 0;
}

/* ---- status and features ------------------------------------------------------------------ */

u8 virtio_status(struct virtio_dev *v) { return mmio_read8(v->common + VCC_DEVICE_STATUS); }
void virtio_set_status(struct virtio_dev *v, u8 s) { mmio_write8(v->common + VCC_DEVICE_STATUS, s); }

static bool status_is_zero(void *arg) { return virtio_status(arg) == 0; }

const char *virtio_reset(struct virtio_dev *v)
{
    virtio_set_status(v, 0);
    /* Usually immediate; allow the device a second to finish in-flight work. */
    for (int i = 0; i < 100; i++)
        if (virtio_status(v) == 0)
            goto done;
    if (!wait_until(status_is_zero, v, 1000))
        return "device_status did not read back 0 within 1 s of the reset";
done:
    for (int i = 0; i < VIRTIO_MAX_QUEUES; i++)
        v->vq[i].enabled = false;
    return 0;
}

const char *virtio_setup_msix(struct virtio_dev *v, u8 base)
{
    if (!v->msix.cap)
        return "no MSI-X capability";
    v->vector_base = base;
    u32 apic = lapic_id();
    /* Program every entry (not only the ones used): whatever vector the device picks then reaches
     * a handler, also after a test wrote garbage into config_msix_vector/queue_msix_vector. */
    for (u16 i = 0; i < v->msix.table_size; i++)
        msix_set_entry(&v->msix, i, (u8)(base + (i & 15)), apic, false);
    pci_msix_enable(&v->pci, &v->msix, true);
    return 0;
}

const char *virtio_negotiate(struct virtio_dev *v, u64 extra)
{
    static char why[96];
    const char *err = virtio_reset(v);
    if (err)
        return err;
    virtio_set_status(v, VIRTIO_STATUS_ACKNOWLEDGE);
    virtio_set_status(v, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);

    mmio_write32(v->common + VCC_DEVICE_FEATURE_SELECT, 0);
    u64 f = mmio_read32(v->common + VCC_DEVICE_FEATURE);
    mmio_write32(v->common + VCC_DEVICE_FEATURE_SELECT, 1);
    f |= (u64)mmio_read32(v->common + VCC_DEVICE_FEATURE) << 32;
    v->device_features = f;
    if (!(f & VIRTIO_F_VERSION_1)) {
        ksnprintf(why, sizeof(why), "device features 0x%lx lack VERSION_1", f);
        return why;
    }
    v->driver_features = VIRTIO_F_VERSION_1 | (extra & f);
    mmio_write32(v->common + VCC_DRIVER_FEATURE_SELECT, 0);
    mmio_write32(v->common + VCC_DRIVER_FEATURE, (u32)v->driver_features);
    mmio_write32(v->common + VCC_DRIVER_FEATURE_SELECT, 1);
    mmio_write32(v->common + VCC_DRIVER_FEATURE, (u32)(v->driver_features >> 32));

    virtio_set_status(v, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
    u8 s = virtio_status(v);
    if (!(s & VIRTIO_STATUS_FEATURES_OK)) {
        ksnprintf(why, sizeof(why), "FEATURES_OK did not stick (status 0x%x, features 0x%lx)", s,
                  v->driver_features);
        return why;
    }
    v->num_queues = mmio_read16(v->common + VCC_NUM_QUEUES);
    if (v->msix.cap && v->vector_base) {
        mmio_write16(v->common + VCC_CONFIG_MSIX_VECTOR, 0);
        if (mmio_read16(v->common + VCC_CONFIG_MSIX_VECTOR) != 0)
            return "config_msix_vector 0 refused (reads back NO_VECTOR)";
    }
    return 0;
}

const char *virtio_setup_queue(struct virtio_dev *v, u16 qi, u16 want)
{
    static char why[96];
    if (qi >= VIRTIO_MAX_QUEUES || qi >= v->num_queues) {
        ksnprintf(why, sizeof(why), "queue %u does not exist (num_queues %u)", qi, v->num_queues);
        return why;
    }
    struct virtq *q = &v->vq[qi];
    mmio_write16(v->common + VCC_QUEUE_SELECT, qi);
    u16 max = mmio_read16(v->common + VCC_QUEUE_SIZE);
    if (max == 0) {
        ksnprintf(why, sizeof(why), "queue %u: queue_size reads 0 (unavailable)", qi);
        return why;
    }
    u16 size = 1;
    while (size * 2 <= want && size * 2 <= max && size * 2 <= VIRTQ_MAX_SIZE)
        size *= 2;
    if (!q->mem && !(q->mem = alloc_page()))
        return "out of queue pages (raise VQ_PAGES)";
    memset((void *)q->mem, 0, 4096);
    q->index = qi;
    q->size = size;
    q->desc = (struct virtq_desc *)q->mem;
    q->avail = (struct virtq_avail *)(q->mem + 0x400);
    q->used = (struct virtq_used *)(q->mem + 0x800);
    q->free_head = 0;
    q->num_free = size;
    for (u16 i = 0; i < size; i++)
        q->desc[i].next = (u16)(i + 1);
    q->avail_idx = q->last_used = q->kicked_at = 0;
    q->event_idx = v->driver_features & VIRTIO_F_RING_EVENT_IDX;

    mmio_write16(v->common + VCC_QUEUE_SIZE, size);
    mmio_write64(v->common + VCC_QUEUE_DESC, (u64)q->desc);
    mmio_write64(v->common + VCC_QUEUE_DRIVER, (u64)q->avail);
    mmio_write64(v->common + VCC_QUEUE_DEVICE, (u64)q->used);
    q->msix_vector = VIRTIO_MSI_NO_VECTOR;
    if (v->msix.cap && v->vector_base) {
        u16 entry = (u16)(qi + 1);
        mmio_write16(v->common + VCC_QUEUE_MSIX_VECTOR, entry);
        if (mmio_read16(v->common + VCC_QUEUE_MSIX_VECTOR) != entry) {
            ksnprintf(why, sizeof(why), "queue %u: queue_msix_vector %u refused", qi, entry);
            return why;
        }
        q->msix_vector = entry;
    }
    u16 notify_off = mmio_read16(v->common + VCC_QUEUE_NOTIFY_OFF);
    u64 off = (u64)notify_off * v->notify_off_multiplier;
    if (off + 2 > v->notify_len) {
        ksnprintf(why, sizeof(why), "queue %u: notify offset 0x%lx outside the notify region (0x%x)",
                  qi, off, v->notify_len);
        return why;
    }
    q->notify = v->notify_base + off;
    mmio_write16(v->common + VCC_QUEUE_ENABLE, 1);
    if (mmio_read16(v->common + VCC_QUEUE_ENABLE) != 1) {
        ksnprintf(why, sizeof(why), "queue %u: queue_enable does not read back 1", qi);
        return why;
    }
    q->enabled = true;
    return 0;
}

const char *virtio_driver_ok(struct virtio_dev *v)
{
    static char why[64];
    u8 s = virtio_status(v);
    virtio_set_status(v, s | VIRTIO_STATUS_DRIVER_OK);
    s = virtio_status(v);
    if (s & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED) || !(s & VIRTIO_STATUS_DRIVER_OK)) {
        ksnprintf(why, sizeof(why), "after DRIVER_OK the status reads 0x%x", s);
        return why;
    }
    return 0;
}

const char *virtio_init(struct virtio_dev *v, u64 extra, u16 nqueues, u16 qsize)
{
    const char *err = virtio_negotiate(v, extra);
    for (u16 q = 0; !err && q < nqueues; q++)
        err = virtio_setup_queue(v, q, qsize);
    if (!err)
        err = virtio_driver_ok(v);
    if (err)
        virtio_set_status(v, virtio_status(v) | VIRTIO_STATUS_FAILED);
    return err;
}

u32 virtio_cfg_read32(struct virtio_dev *v, u32 off)
{
    return v->device_cfg && off + 4 <= v->device_cfg_len ? mmio_read32(v->device_cfg + off) : 0;
}

u8 virtq_vector(struct virtio_dev *v, u16 q)
{
    u16 e = v->vq[q].msix_vector;
    return e == VIRTIO_MSI_NO_VECTOR ? 0 : (u8)(v->vector_base + (e & 15));
}

/* ---- split virtqueues --------------------------------------------------------------------- */

static volatile u16 *used_event(struct virtq *q) { return &q->avail->ring[q->size]; }
static volatile u16 *avail_event(struct virtq *q) { return (volatile u16 *)&q->used->ring[q->size]; }

int virtq_add(struct virtq *q, const struct vbuf *bufs, int n)
{
    if (n <= 0 || n > q->num_free)
        return -1;
    u16 head = q->free_head, i = head, last = head;
    for (int k = 0; k < n; k++) {
        struct virtq_desc *d = &q->desc[i];
        d->addr = (u64)bufs[k].addr; /* identity-mapped: virtual = guest physical */
        d->len = bufs[k].len;
        d->flags = (bufs[k].device_writes ? VIRTQ_DESC_F_WRITE : 0) | (k + 1 < n ? VIRTQ_DESC_F_NEXT : 0);
        last = i;
        i = d->next;
    }
    q->free_head = q->desc[last].next;
    q->num_free -= n;
    ((volatile u16 *)q->avail->ring)[q->avail_idx % q->size] = head;
    barrier(); /* the ring entry before the index that publishes it */
    q->avail_idx++;
    *(volatile u16 *)&q->avail->idx = q->avail_idx;
    return head;
}

void virtq_kick(struct virtq *q)
{
    barrier();
    if (q->event_idx) {
        /* The idx store must be visible before we read avail_event: store->load needs a fence. */
        mfence();
        u16 event = *avail_event(q), now = q->avail_idx;
        bool need = (u16)(now - event - 1) < (u16)(now - q->kicked_at);
        q->kicked_at = now;
        if (!need)
            return;
    } else if (*(volatile u16 *)&q->used->flags & 1 /* VIRTQ_USED_F_NO_NOTIFY */) {
        return;
    }
    mmio_write16(q->notify, q->index);
}

bool virtq_has_used(struct virtq *q) { return *(volatile u16 *)&q->used->idx != q->last_used; }

int virtq_get_used(struct virtq *q, u32 *len)
{
    if (!virtq_has_used(q))
        return -1;
    barrier(); /* read the entry only after seeing the index that covers it */
    volatile struct virtq_used_elem *e = &q->used->ring[q->last_used % q->size];
    u32 id = e->id;
    if (len)
        *len = e->len;
    q->last_used++;
    if (q->event_idx)
        *used_event(q) = q->last_used; /* interrupt me for the next one */
    if (id >= q->size)
        dg_fail("queue %u: used ring names descriptor %u (queue size %u)", q->index, id, q->size);
    /* Give the chain back to the free list. */
    u16 last = (u16)id;
    int n = 1;
    while ((q->desc[last].flags & VIRTQ_DESC_F_NEXT) && n < q->size) {
        last = q->desc[last].next;
        n++;
    }
    q->desc[last].next = q->free_head;
    q->free_head = (u16)id;
    q->num_free += n;
    return (int)id;
}

static bool has_used_cb(void *q) { return virtq_has_used(q); }

int virtq_wait_used(struct virtq *q, u32 *len, u32 timeout_ms)
{
    if (!wait_until(has_used_cb, q, timeout_ms))
        return -1;
    return virtq_get_used(q, len);
}
