/* virtio-blk test (blk): finds the block device, reads its configuration, writes a sector, flushes,
 * reads it back, and checks the device's answers to a read past the end (IOERR), an unknown
 * request type (UNSUPP) and GET_ID. The Rust test checks the sector in the disk file afterwards. */
#include "dg.h"
#include "irq.h"
#include "serial.h"
#include "tests.h"
#include "virtio.h"

#define VIRTIO_ID_BLOCK 2
#define BLK_DEVICE_ID (VIRTIO_DEV_MODERN_BASE + VIRTIO_ID_BLOCK) /* 0x1042 */
#define VIRTIO_BLK_F_RO (1ull << 5)
#define VIRTIO_BLK_F_FLUSH (1ull << 9)
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2
#define BLK_TIMEOUT_MS 5000
/* The sector the test writes; tests/tests/driver_guest.rs checks it in the file. */
#define BLK_TEST_SECTOR 7

struct blk_req_hdr {
    u32 type, reserved;
    u64 sector;
};

static struct virtio_dev blk;
static struct blk_req_hdr hdr ALIGNED(16);
static u8 data[512] ALIGNED(64);
static u8 back[512] ALIGNED(64);
static u8 status ALIGNED(8);

/* One request: the header, an optional data buffer, the status byte. Returns the used length
 * and leaves the status in `status`. */
static u32 blk_request(u32 type, u64 sector, u8 *buf, u32 len, bool device_writes)
{
    struct virtq *q = &blk.vq[0];
    hdr.type = type;
    hdr.reserved = 0;
    hdr.sector = sector;
    status = 0xff;
    struct vbuf b[3] = {{&hdr, sizeof(hdr), false}, {buf, len, device_writes}, {&status, 1, true}};
    int n = 0;
    struct vbuf chain[3];
    chain[n++] = b[0];
    if (len)
        chain[n++] = b[1];
    chain[n++] = b[2];
    int head = virtq_add(q, chain, n);
    if (head < 0)
        dg_fail("no free descriptors (%u free)", q->num_free);
    virtq_kick(q);
    u32 used = 0;
    int id = virtq_wait_used(q, &used, BLK_TIMEOUT_MS);
    if (id < 0)
        dg_fail("request type %u sector %lu: no used entry within %u ms", type, sector, BLK_TIMEOUT_MS);
    if (id != head)
        dg_fail("used entry names descriptor %d, the request was %d", id, head);
    return used;
}

static void expect(u32 type, u64 sector, u8 *buf, u32 len, bool device_writes, u8 want_status,
                   u32 want_used, const char *what)
{
    u32 used = blk_request(type, sector, buf, len, device_writes);
    if (status != want_status || used != want_used)
        dg_fail("%s: status %u used len %u, expected status %u used len %u", what, status, used,
                want_status, want_used);
    dg_log("%s: status %u, used len %u", what, status, used);
}

/* ro=1: the disk is read-only (--disk ...,readonly=on): RO offered, a write IOERR, a read OK,
 * FLUSH OK. */
static void blk_read_only(void)
{
    if (!(blk.device_features & VIRTIO_BLK_F_RO))
        dg_fail("a readonly=on disk does not offer VIRTIO_BLK_F_RO (features 0x%lx)", blk.device_features);
    for (u32 i = 0; i < sizeof(data); i++)
        data[i] = 0xee;
    expect(VIRTIO_BLK_T_OUT, BLK_TEST_SECTOR, data, sizeof(data), false, VIRTIO_BLK_S_IOERR, 1,
           "write to a read-only disk");
    expect(VIRTIO_BLK_T_FLUSH, 0, 0, 0, false, VIRTIO_BLK_S_OK, 1, "flush");
    memset(back, 0, sizeof(back));
    expect(VIRTIO_BLK_T_IN, BLK_TEST_SECTOR, back, sizeof(back), true, VIRTIO_BLK_S_OK, 513, "read");
    if (memcmp(back, data, sizeof(data)) == 0)
        dg_fail("the refused write reached the disk");
}

void test_blk(void)
{
    DG_CHECK(virtio_probe(&blk, BLK_DEVICE_ID));
    DG_CHECK(virtio_setup_msix(&blk, VEC_MSIX_BASE));
    DG_CHECK(virtio_init(&blk, VIRTIO_BLK_F_FLUSH, 1, 16));
    u64 capacity = virtio_cfg_read32(&blk, 0) | (u64)virtio_cfg_read32(&blk, 4) << 32;
    u32 blk_size = virtio_cfg_read32(&blk, 20);
    dg_log("virtio-blk at %02x:%02x.%x features 0x%lx capacity %lu sectors blk_size %u",
           BDF_BUS(blk.pci.bdf), BDF_DEV(blk.pci.bdf), BDF_FN(blk.pci.bdf), blk.driver_features,
           capacity, blk_size);
    if (!(blk.driver_features & VIRTIO_BLK_F_FLUSH))
        dg_fail("the device does not offer VIRTIO_BLK_F_FLUSH (features 0x%lx)", blk.device_features);
    char arg[8];
    if (cmdline_get(dg_cmdline, "ro", arg, sizeof(arg)) && arg[0] == '1') {
        blk_read_only();
        return;
    }
    if (blk.device_features & VIRTIO_BLK_F_RO)
        dg_fail("a writable disk offers VIRTIO_BLK_F_RO");
    if (capacity <= BLK_TEST_SECTOR)
        dg_fail("capacity %lu: the test needs more than %u sectors", capacity, BLK_TEST_SECTOR);

    for (u32 i = 0; i < sizeof(data); i++)
        data[i] = (u8)(i * 3 + 0x5a);
    memcpy(data, "canto driver-guest blk", 22);
    expect(VIRTIO_BLK_T_OUT, BLK_TEST_SECTOR, data, sizeof(data), false, VIRTIO_BLK_S_OK, 1, "write");
    expect(VIRTIO_BLK_T_FLUSH, 0, 0, 0, false, VIRTIO_BLK_S_OK, 1, "flush");
    memset(back, 0, sizeof(back));
    expect(VIRTIO_BLK_T_IN, BLK_TEST_SECTOR, back, sizeof(back), true, VIRTIO_BLK_S_OK, 513, "read back");
    if (memcmp(back, data, sizeof(data)) != 0)
        dg_fail("the sector read back differs from the one written");

    memset(back, 0xaa, sizeof(back));
    expect(VIRTIO_BLK_T_IN, capacity, back, sizeof(back), true, VIRTIO_BLK_S_IOERR, 1,
           "read past the end");
    for (u32 i = 0; i < sizeof(back); i++)
        if (back[i] != 0xaa)
            dg_fail("a refused read wrote the buffer at byte %u", i);
    expect(VIRTIO_BLK_T_OUT, ~0ull, data, sizeof(data), false, VIRTIO_BLK_S_IOERR, 1,
           "write at sector 2^64-1");
    expect(99, 0, 0, 0, false, VIRTIO_BLK_S_UNSUPP, 1, "unknown type");
    memset(back, 0xff, 20);
    expect(VIRTIO_BLK_T_GET_ID, 0, back, 20, true, VIRTIO_BLK_S_OK, 21, "get id");
    back[20] = 0;
    if (memcmp(back, "dg-disk", 8) != 0)
        dg_fail("GET_ID answered '%s', expected 'dg-disk' (the --disk id)", (const char *)back);
    /* The device keeps serving after the refusals. */
    memset(back, 0, sizeof(back));
    expect(VIRTIO_BLK_T_IN, BLK_TEST_SECTOR, back, sizeof(back), true, VIRTIO_BLK_S_OK, 513,
           "read back again");
    if (memcmp(back, data, sizeof(data)) != 0)
        dg_fail("the second read back differs");
}
