/* virtio-vsock (VIRTIO 1.2 §5.10): an echo server on guest port 52. The host side
 * (tests/tests/driver_guest.rs) connects through Canto's hybrid Unix socket with `CONNECT 52`,
 * sends bytes, reads them back and closes its write half; the guest answers the SHUTDOWN with its
 * own and passes once the device's RST ends the connection. Other ports get RST. */
#include "dg.h"
#include "irq.h"
#include "serial.h"
#include "tests.h"
#include "virtio.h"

#define VIRTIO_ID_VSOCK 19
#define VSOCK_DEVICE_ID (VIRTIO_DEV_MODERN_BASE + VIRTIO_ID_VSOCK)
#define HOST_CID 2
#define ECHO_PORT 52
#define TYPE_STREAM 1
#define OP_REQUEST 1
#define OP_RESPONSE 2
#define OP_RST 3
#define OP_SHUTDOWN 4
#define OP_RW 5
#define OP_CREDIT_UPDATE 6
#define OP_CREDIT_REQUEST 7
#define SHUTDOWN_RCV 1
#define SHUTDOWN_SEND 2
#define BUF_ALLOC 65536
#define RXQ 0
#define TXQ 1
#define EVQ 2
#define RX_BUFS 16
#define RX_DATA 4096
#define TIMEOUT_MS 15000

struct vsock_hdr {
    u64 src_cid, dst_cid;
    u32 src_port, dst_port, len;
    u16 type, op;
    u32 flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

static struct virtio_dev vs;
static u8 rx_bufs[RX_BUFS][sizeof(struct vsock_hdr) + RX_DATA] ALIGNED(64);
static int rx_head_buf[VIRTQ_MAX_SIZE];
static u8 ev_bufs[2][8] ALIGNED(8);
static u8 tx_buf[sizeof(struct vsock_hdr) + RX_DATA] ALIGNED(64);
static u64 guest_cid;

/* The one connection: the host's port, and the flow-control counters. */
static u32 peer_port;
static bool connected;
static u32 fwd_cnt;                     /* bytes we have consumed (echoed) */
static u32 tx_cnt;                      /* bytes we have sent */
static u32 peer_buf_alloc, peer_fwd_cnt;

static void offer_rx(int i)
{
    struct vbuf b = {rx_bufs[i], sizeof(rx_bufs[i]), true};
    int head = virtq_add(&vs.vq[RXQ], &b, 1);
    if (head < 0)
        dg_fail("vsock: no free rx descriptor");
    rx_head_buf[head] = i;
    virtq_kick(&vs.vq[RXQ]);
}

/* Sends one packet (header + data) and waits for the device to take it. */
static void send_packet(u16 op, u32 dst_port, u32 src_port, u32 flags, const u8 *data, u32 len)
{
    struct vsock_hdr *h = (struct vsock_hdr *)tx_buf;
    h->src_cid = guest_cid;
    h->dst_cid = HOST_CID;
    h->src_port = src_port;
    h->dst_port = dst_port;
    h->len = len;
    h->type = TYPE_STREAM;
    h->op = op;
    h->flags = flags;
    h->buf_alloc = BUF_ALLOC;
    h->fwd_cnt = fwd_cnt;
    if (len)
        memcpy(tx_buf + sizeof(*h), data, len);
    struct vbuf b = {tx_buf, (u32)sizeof(*h) + len, false};
    int head = virtq_add(&vs.vq[TXQ], &b, 1);
    if (head < 0)
        dg_fail("vsock: no free tx descriptor");
    virtq_kick(&vs.vq[TXQ]);
    u32 used_len;
    if (virtq_wait_used(&vs.vq[TXQ], &used_len, 2000) != head)
        dg_fail("vsock: tx packet (op %u) not returned within 2 s", op);
}

void test_vsock(void)
{
    DG_CHECK(virtio_probe(&vs, VSOCK_DEVICE_ID));
    if (!vs.msix.cap)
        dg_fail("virtio-vsock has no MSI-X capability");
    DG_CHECK(virtio_setup_msix(&vs, VEC_MSIX_BASE));
    DG_CHECK(virtio_init(&vs, 0, 3, 64));
    guest_cid = virtio_cfg_read32(&vs, 0) | (u64)virtio_cfg_read32(&vs, 4) << 32;
    if (guest_cid < 3)
        dg_fail("vsock: guest_cid %lu is reserved", guest_cid);
    for (int i = 0; i < RX_BUFS; i++)
        offer_rx(i);
    for (int i = 0; i < 2; i++) {
        struct vbuf b = {ev_bufs[i], sizeof(ev_bufs[i]), true};
        if (virtq_add(&vs.vq[EVQ], &b, 1) < 0)
            dg_fail("vsock: no free event descriptor");
    }
    virtq_kick(&vs.vq[EVQ]);
    dg_log("vsock: cid %lu, listening on port %u", guest_cid, ECHO_PORT);

    u64 echoed = 0;
    bool shut_sent = false;
    u64 deadline = ticks + TIMEOUT_MS / TICK_MS;
    for (;;) {
        if (ticks > deadline)
            dg_fail("vsock: no end of the connection within %u ms (echoed %lu bytes)", TIMEOUT_MS,
                    echoed);
        u32 len;
        int head = virtq_wait_used(&vs.vq[RXQ], &len, 200);
        if (head < 0)
            continue;
        int i = rx_head_buf[head];
        struct vsock_hdr h;
        memcpy(&h, rx_bufs[i], sizeof(h));
        if (len < sizeof(h) || len != sizeof(h) + h.len)
            dg_fail("vsock: rx used len %u for a header saying %u data bytes", len, h.len);
        if (h.src_cid != HOST_CID || h.dst_cid != guest_cid || h.type != TYPE_STREAM)
            dg_fail("vsock: rx packet from cid %lu to %lu type %u", h.src_cid, h.dst_cid, h.type);
        static u8 data[RX_DATA];
        memcpy(data, rx_bufs[i] + sizeof(h), h.len);
        offer_rx(i);
        bool ours = connected && h.src_port == peer_port && h.dst_port == ECHO_PORT;
        if (ours) {
            peer_buf_alloc = h.buf_alloc;
            peer_fwd_cnt = h.fwd_cnt;
        }
        switch (h.op) {
        case OP_REQUEST:
            if (h.dst_port != ECHO_PORT || connected) {
                send_packet(OP_RST, h.src_port, h.dst_port, 0, 0, 0);
                break;
            }
            connected = true;
            peer_port = h.src_port;
            peer_buf_alloc = h.buf_alloc;
            peer_fwd_cnt = h.fwd_cnt;
            send_packet(OP_RESPONSE, peer_port, ECHO_PORT, 0, 0, 0);
            dg_log("vsock: connection from host port %u", peer_port);
            break;
        case OP_RW:
            if (!ours)
                dg_fail("vsock: data for an unknown connection (port %u)", h.dst_port);
            if (peer_buf_alloc - (tx_cnt - peer_fwd_cnt) < h.len)
                dg_fail("vsock: no credit to echo %u bytes", h.len);
            fwd_cnt += h.len;
            tx_cnt += h.len;
            send_packet(OP_RW, peer_port, ECHO_PORT, 0, data, h.len);
            echoed += h.len;
            break;
        case OP_CREDIT_REQUEST:
            if (ours)
                send_packet(OP_CREDIT_UPDATE, peer_port, ECHO_PORT, 0, 0, 0);
            break;
        case OP_CREDIT_UPDATE:
            break;
        case OP_SHUTDOWN:
            if (!ours)
                dg_fail("vsock: SHUTDOWN for an unknown connection");
            dg_log("vsock: the host is done sending (flags %u); closing", h.flags);
            send_packet(OP_SHUTDOWN, peer_port, ECHO_PORT, SHUTDOWN_RCV | SHUTDOWN_SEND, 0, 0);
            shut_sent = true;
            break;
        case OP_RST:
            if (!ours)
                dg_fail("vsock: RST for an unknown connection");
            if (!shut_sent)
                dg_fail("vsock: the device reset the connection after %lu bytes", echoed);
            dg_log("vsock: echoed %lu bytes; RST after our SHUTDOWN", echoed);
            return;
        default:
            dg_fail("vsock: rx op %u", h.op);
        }
    }
}
