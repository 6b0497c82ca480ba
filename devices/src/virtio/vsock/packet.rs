//! The 44-byte virtio-vsock packet header (VIRTIO 1.2 §5.10.6), read and written through the
//! rust-vmm `virtio-vsock` crate's accessors (which own the layout and the little-endian
//! conversions).
//!
//! The crate's chain constructors take virtio-queue's descriptor chains, which would bypass the
//! device's [`ChainLimits`](crate::virtio::chain::ChainLimits) walk; so the device copies the
//! header bytes out of the walked chain into a host buffer and lets the crate interpret that
//! buffer. Payload bytes never go through the crate: they are copied straight between guest
//! memory and the host socket's buffers.

use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};

/// The size of the header in guest memory.
pub const HEADER_SIZE: usize = PKT_HEADER_SIZE;

/// VIRTIO_VSOCK_TYPE_STREAM: the only socket type the device offers.
pub const TYPE_STREAM: u16 = 1;

/// The operations (VIRTIO 1.2 §5.10.6).
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive no more data / send no more data.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet header, as plain values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    /// Interprets the header's bytes.
    pub fn decode(raw: &[u8; HEADER_SIZE]) -> Header {
        let mut scratch = [0u8; HEADER_SIZE];
        // SAFETY: `scratch` outlives `packet` (both are locals of this function and `packet` is
        // dropped first), and nothing else accesses `scratch` while `packet` exists.
        let mut packet = unsafe { VsockPacket::new(&mut scratch, None) }
            .expect("the header buffer has the header's size");
        packet
            .set_header_from_raw(raw)
            .expect("the raw header has the header's size");
        Header {
            src_cid: packet.src_cid(),
            dst_cid: packet.dst_cid(),
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            len: packet.len(),
            type_: packet.type_(),
            op: packet.op(),
            flags: packet.flags(),
            buf_alloc: packet.buf_alloc(),
            fwd_cnt: packet.fwd_cnt(),
        }
    }

    /// The header's bytes, as the guest reads them.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut raw = [0u8; HEADER_SIZE];
        {
            // SAFETY: `raw` outlives `packet` (dropped at the end of this block), and nothing
            // else accesses `raw` while `packet` exists.
            let mut packet = unsafe { VsockPacket::new(&mut raw, None) }
                .expect("the header buffer has the header's size");
            packet
                .set_src_cid(self.src_cid)
                .set_dst_cid(self.dst_cid)
                .set_src_port(self.src_port)
                .set_dst_port(self.dst_port)
                .set_len(self.len)
                .set_type(self.type_)
                .set_op(self.op)
                .set_flags(self.flags)
                .set_buf_alloc(self.buf_alloc)
                .set_fwd_cnt(self.fwd_cnt);
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_the_spec_layout() {
        let header = Header {
            src_cid: 0x0102_0304_0506_0708,
            dst_cid: 2,
            src_port: 1234,
            dst_port: 52,
            len: 7,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 3,
            buf_alloc: 0x1_0000,
            fwd_cnt: 99,
        };
        let raw = header.encode();
        assert_eq!(HEADER_SIZE, 44);
        assert_eq!(raw[0..8], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(raw[8..16], 2u64.to_le_bytes());
        assert_eq!(raw[16..20], 1234u32.to_le_bytes());
        assert_eq!(raw[20..24], 52u32.to_le_bytes());
        assert_eq!(raw[24..28], 7u32.to_le_bytes());
        assert_eq!(raw[28..30], 1u16.to_le_bytes());
        assert_eq!(raw[30..32], 5u16.to_le_bytes());
        assert_eq!(raw[32..36], 3u32.to_le_bytes());
        assert_eq!(raw[36..40], 0x1_0000u32.to_le_bytes());
        assert_eq!(raw[40..44], 99u32.to_le_bytes());
        assert_eq!(Header::decode(&raw), header);
    }
}
