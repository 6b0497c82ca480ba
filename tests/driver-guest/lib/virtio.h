/* A virtio 1.2 driver core over the modern PCI transport (VIRTIO 1.2 §4.1): capabilities, the
 * status/feature handshake, split virtqueues (§2.7) and MSI-X vectors. */
#ifndef DG_VIRTIO_H
#define DG_VIRTIO_H

#include "pci.h"
#include "util.h"

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_DEV_MODERN_BASE 0x1040 /* device id = 0x1040 + virtio device type */
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_SOUND 25

/* device_status bits (§2.1) */
#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80

#define VIRTIO_F_RING_EVENT_IDX (1ull << 29)
#define VIRTIO_F_VERSION_1 (1ull << 32)

/* virtio_pci_cap cfg_type (§4.1.4) */
#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG 3
#define VIRTIO_PCI_CAP_DEVICE_CFG 4
#define VIRTIO_PCI_CAP_PCI_CFG 5

/* struct virtio_pci_common_cfg offsets (§4.1.4.3) */
#define VCC_DEVICE_FEATURE_SELECT 0x00
#define VCC_DEVICE_FEATURE 0x04
#define VCC_DRIVER_FEATURE_SELECT 0x08
#define VCC_DRIVER_FEATURE 0x0c
#define VCC_CONFIG_MSIX_VECTOR 0x10
#define VCC_NUM_QUEUES 0x12
#define VCC_DEVICE_STATUS 0x14
#define VCC_CONFIG_GENERATION 0x15
#define VCC_QUEUE_SELECT 0x16
#define VCC_QUEUE_SIZE 0x18
#define VCC_QUEUE_MSIX_VECTOR 0x1a
#define VCC_QUEUE_ENABLE 0x1c
#define VCC_QUEUE_NOTIFY_OFF 0x1e
#define VCC_QUEUE_DESC 0x20
#define VCC_QUEUE_DRIVER 0x28
#define VCC_QUEUE_DEVICE 0x30
#define VIRTIO_MSI_NO_VECTOR 0xffff

/* Split virtqueue layout (§2.7) */
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1

struct virtq_desc {
    u64 addr;
    u32 len;
    u16 flags, next;
};
struct virtq_avail {
    u16 flags, idx;
    u16 ring[]; /* then used_event */
};
struct virtq_used_elem {
    u32 id, len;
};
struct virtq_used {
    u16 flags, idx;
    struct virtq_used_elem ring[]; /* then avail_event */
};

/* The largest queue the library sets up: all three parts then fit in one 4 KiB page. */
#define VIRTQ_MAX_SIZE 64
#define VIRTIO_MAX_QUEUES 8

struct virtq {
    u16 index, size;
    bool enabled;
    u64 mem; /* its page: desc at +0, avail at +0x400, used at +0x800 */
    struct virtq_desc *desc;
    struct virtq_avail *avail;
    struct virtq_used *used;
    u64 notify; /* MMIO address this queue's notifications go to */
    u16 msix_vector;
    u16 free_head, num_free;
    u16 avail_idx;  /* next avail->idx we publish */
    u16 last_used;  /* used->idx we have consumed up to */
    u16 kicked_at;  /* avail_idx at the previous kick (EVENT_IDX's "old") */
    bool event_idx;
};

struct virtio_dev {
    struct pci_dev pci;
    struct msix msix;
    u64 common, isr, device_cfg, notify_base; /* MMIO addresses; 0 when absent */
    u32 common_len, isr_len, device_cfg_len, notify_len;
    u32 notify_off_multiplier;
    u8 pci_cfg_cap; /* VIRTIO_PCI_CAP_PCI_CFG capability offset, 0 if none */
    u64 device_features, driver_features;
    u16 num_queues;
    u8 vector_base; /* MSI-X entry i sends vector vector_base + i */
    struct virtq vq[VIRTIO_MAX_QUEUES];
};

/* One buffer of a descriptor chain. */
struct vbuf {
    const void *addr;
    u32 len;
    bool device_writes;
};

/* Finds the function with this device id on bus 0, decodes its BARs, enables memory + bus master
 * and locates its virtio capabilities and MSI-X table. NULL or a reason. */
const char *virtio_probe(struct virtio_dev *v, u16 device_id);
/* Same, for a function already found (by pci_scan_bus0 or pci_find). */
const char *virtio_probe_pci(struct virtio_dev *v, const struct pci_dev *pci);

/* Writes 0 to device_status and waits until it reads back 0 (§4.1.4.3.2). */
const char *virtio_reset(struct virtio_dev *v);
/* Enables MSI-X and points entry i at vector `base + i` (config uses entry 0, queue q entry q+1). */
const char *virtio_setup_msix(struct virtio_dev *v, u8 base);
/* The whole §3.1.1 sequence: reset, ACKNOWLEDGE, DRIVER, features (VERSION_1 plus `extra` if the
 * device offers them), FEATURES_OK (checked), `nqueues` queues of up to `qsize` entries (with MSI-X
 * vectors when virtio_setup_msix ran), then DRIVER_OK. */
const char *virtio_init(struct virtio_dev *v, u64 extra_features, u16 nqueues, u16 qsize);
/* The init steps up to and including FEATURES_OK, and a single queue's setup, for tests that want
 * to do something odd in between. */
const char *virtio_negotiate(struct virtio_dev *v, u64 extra_features);
const char *virtio_setup_queue(struct virtio_dev *v, u16 q, u16 qsize);
/* Sets DRIVER_OK; fails when the device then reports NEEDS_RESET or FAILED. */
const char *virtio_driver_ok(struct virtio_dev *v);

u8 virtio_status(struct virtio_dev *v);
void virtio_set_status(struct virtio_dev *v, u8 status);
/* Reads a byte/word/dword of the device configuration (0 when there is none). */
u32 virtio_cfg_read32(struct virtio_dev *v, u32 off);

/* Puts a chain of n buffers on the avail ring (not yet notified); returns its head descriptor
 * or -1 when the ring has no room. */
int virtq_add(struct virtq *q, const struct vbuf *bufs, int n);
/* Tells the device about new avail entries (honours EVENT_IDX's avail_event). */
void virtq_kick(struct virtq *q);
/* Takes the next used entry: its head descriptor id, and the bytes written in *len; -1 if none.
 * The chain's descriptors go back on the free list. */
int virtq_get_used(struct virtq *q, u32 *len);
/* True when the device has put entries on the used ring we have not taken. */
bool virtq_has_used(struct virtq *q);
/* Waits (sleeping in hlt) for a used entry; -1 on timeout. */
int virtq_wait_used(struct virtq *q, u32 *len, u32 timeout_ms);

/* The MSI-X vector a queue's interrupts arrive on (0 when it has none). */
u8 virtq_vector(struct virtio_dev *v, u16 q);

#endif
