//! One virtio-blk request (VIRTIO 1.2 §5.2.6): checked, carried out on the disk, and answered
//! with its status byte. Guest memory is read and written only in copies under the queue's DMA
//! guard (`DeviceQueue::dma`), never during a host I/O call. The request is read as byte streams (§2.6.4, message framing): the
//! 16-byte header first in the device-readable part, the status byte last in the
//! device-writable part, the data in between, however the driver split them into descriptors.
//!
//! Every check gives the status the specification names and the device goes on serving:
//! a request it cannot answer at all (no writable byte for the status) is returned with used
//! length 0; a malformed or out-of-range one gets IOERR; a type it does not know (or a feature
//! the driver did not negotiate) gets UNSUPP.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::virtio::chain::{ChainBuffers, Segments};
use crate::virtio::queue::DeviceQueue;

use super::disk::{DiskFile, ID_BYTES, SECTOR_SIZE};

/// Request types (§5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// Status values (§5.2.6).
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// The header: le32 type, le32 reserved, le64 sector.
pub const HEADER_LEN: u64 = 16;
/// One DISCARD / WRITE_ZEROES segment: le64 sector, le32 num_sectors, le32 flags.
pub const RANGE_LEN: u64 = 16;
/// The unmap bit of a range's flags; the other bits are reserved.
const RANGE_FLAG_UNMAP: u32 = 1;

/// What the device does for DISCARD and WRITE_ZEROES (and tells the driver in its
/// configuration space): at most this many ranges per request, each of at most this many sectors.
pub const MAX_RANGES: u32 = 16;
pub const MAX_RANGE_SECTORS: u32 = 1 << 22;

/// What the driver negotiated that changes how requests are served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestFeatures {
    /// VIRTIO_BLK_F_FLUSH not negotiated: the device is write-through, every write is synced
    /// before it completes (§5.2.6.2).
    pub writethrough: bool,
    pub discard: bool,
    pub write_zeroes: bool,
}

/// Serves one walked request of `queue`; returns the used length: the bytes the device wrote into
/// the chain (data and the status byte), or 0 when it has no writable byte for a status. Data
/// moves through `buf` (`disk::IO_CHUNK` bytes) a chunk at a time, guest memory only under the
/// queue's DMA guard; long I/O stops early once `stop` is set or the queue is revoked (a reset:
/// nobody sees the answer).
pub fn serve(
    queue: &DeviceQueue,
    disk: &DiskFile,
    features: RequestFeatures,
    chain: &ChainBuffers,
    buf: &mut [u8],
    stop: &AtomicBool,
) -> u32 {
    let Some(status_at) = chain.writable.len().checked_sub(1) else {
        log::debug!(
            "virtio-blk: request {} has no writable status byte; returned empty",
            chain.head
        );
        return 0;
    };
    let (status, written) = execute(queue, disk, features, chain, buf, stop);
    // Bus Master Enable cleared meanwhile (or a reset): nothing more is written; the queue holds
    // the completion until DMA is allowed again.
    let Some(dma) = guest(queue, stop) else {
        return 0;
    };
    if let Err(e) = chain.writable.write_at(&dma, status_at, &[status]) {
        // Checked to lie in RAM by the walk; nothing the guest did can make this fail.
        log::debug!(
            "virtio-blk: request {}: writing the status: {e}",
            chain.head
        );
        return 0;
    }
    // Data is at most the chain, whose bytes the walk caps at u32::MAX.
    u32::try_from(written + 1).unwrap_or(u32::MAX)
}

/// Carries a request out: its status, and the data bytes written into the guest's buffers.
fn execute(
    queue: &DeviceQueue,
    disk: &DiskFile,
    features: RequestFeatures,
    chain: &ChainBuffers,
    buf: &mut [u8],
    stop: &AtomicBool,
) -> (u8, u64) {
    let ioerr = |why: &str| {
        log::debug!("virtio-blk: request {}: {why}: IOERR", chain.head);
        (VIRTIO_BLK_S_IOERR, 0)
    };
    let readable = &chain.readable;
    // The device-writable part less the status byte.
    let data_in = chain.writable.len() - 1;
    if readable.len() < HEADER_LEN {
        return ioerr("the header is not 16 device-readable bytes at the start");
    }
    let mut header = [0u8; HEADER_LEN as usize];
    let Some(dma) = guest(queue, stop) else {
        return (VIRTIO_BLK_S_IOERR, 0);
    };
    if readable.read_at(&dma, 0, &mut header).is_err() {
        return ioerr("cannot read the header");
    }
    drop(dma);
    let kind = u32::from_le_bytes(header[0..4].try_into().unwrap());
    let sector = u64::from_le_bytes(header[8..16].try_into().unwrap());
    let data_out = readable.len() - HEADER_LEN;
    match kind {
        VIRTIO_BLK_T_IN => {
            if data_out != 0 {
                return ioerr("a read with device-readable data");
            }
            let Some(offset) = checked_range(disk, sector, data_in) else {
                return ioerr("a read outside the disk, or not whole sectors");
            };
            let mut done = 0u64;
            while done < data_in {
                let n = (data_in - done).min(buf.len() as u64) as usize;
                if let Err(e) = disk.read_exact_at(&mut buf[..n], offset + done) {
                    crate::warn_limited!("virtio-blk: reading '{}': {e}", disk.path().display());
                    return (VIRTIO_BLK_S_IOERR, done);
                }
                let Some(dma) = guest(queue, stop) else {
                    return (VIRTIO_BLK_S_IOERR, done);
                };
                if chain.writable.write_at(&dma, done, &buf[..n]).is_err() {
                    return (VIRTIO_BLK_S_IOERR, done);
                }
                done += n as u64;
            }
            (VIRTIO_BLK_S_OK, done)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.readonly() {
                return ioerr("a write to a read-only disk");
            }
            if data_in != 0 {
                return ioerr("a write with device-writable data");
            }
            let Some(offset) = checked_range(disk, sector, data_out) else {
                return ioerr("a write outside the disk, or not whole sectors");
            };
            let mut done = 0u64;
            while done < data_out {
                let n = (data_out - done).min(buf.len() as u64) as usize;
                {
                    let Some(dma) = guest(queue, stop) else {
                        return (VIRTIO_BLK_S_IOERR, 0);
                    };
                    if readable
                        .read_at(&dma, HEADER_LEN + done, &mut buf[..n])
                        .is_err()
                    {
                        return ioerr("data buffers");
                    }
                }
                if let Err(e) = disk.write_all_at(&buf[..n], offset + done) {
                    return host_result(disk, "writing", Err(e));
                }
                done += n as u64;
            }
            let synced = if features.writethrough {
                disk.sync_data()
            } else {
                Ok(())
            };
            host_result(disk, "syncing", synced)
        }
        VIRTIO_BLK_T_FLUSH => {
            if disk.readonly() {
                return (VIRTIO_BLK_S_OK, 0);
            }
            host_result(disk, "syncing", disk.sync_data())
        }
        VIRTIO_BLK_T_GET_ID => {
            if data_out != 0 {
                return ioerr("GET_ID with device-readable data");
            }
            let n = data_in.min(ID_BYTES as u64) as usize;
            let Some(dma) = guest(queue, stop) else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            match chain.writable.write_at(&dma, 0, &disk.id()[..n]) {
                Ok(()) => (VIRTIO_BLK_S_OK, n as u64),
                Err(_) => ioerr("the id buffer"),
            }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = kind == VIRTIO_BLK_T_DISCARD;
            if (discard && !features.discard) || (!discard && !features.write_zeroes) {
                log::debug!(
                    "virtio-blk: request {}: type {kind} not negotiated",
                    chain.head
                );
                return (VIRTIO_BLK_S_UNSUPP, 0);
            }
            if disk.readonly() {
                return ioerr("a discard or write-zeroes on a read-only disk");
            }
            if data_in != 0 {
                return ioerr("ranges with device-writable data");
            }
            ranges(queue, disk, readable, discard, chain.head, stop)
        }
        other => {
            log::debug!("virtio-blk: request {}: unknown type {other}", chain.head);
            (VIRTIO_BLK_S_UNSUPP, 0)
        }
    }
}

/// Guest memory for one copy: under the queue's DMA guard, while Bus Master Enable is set and no
/// reset is under way.
fn guest<'q>(queue: &'q DeviceQueue, stop: &AtomicBool) -> Option<crate::virtio::queue::Dma<'q>> {
    if stop.load(Ordering::Acquire) || !queue.dma_allowed() {
        return None;
    }
    queue.dma()
}

/// The byte offset of `len` bytes at `sector`, if they are whole sectors inside the disk.
fn checked_range(disk: &DiskFile, sector: u64, len: u64) -> Option<u64> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return None;
    }
    let offset = sector.checked_mul(SECTOR_SIZE)?;
    (offset.checked_add(len)? <= disk.size()).then_some(offset)
}

fn host_result(disk: &DiskFile, what: &str, result: std::io::Result<()>) -> (u8, u64) {
    match result {
        Ok(()) => (VIRTIO_BLK_S_OK, 0),
        Err(e) => {
            crate::warn_limited!("virtio-blk: {what} '{}': {e}", disk.path().display());
            (VIRTIO_BLK_S_IOERR, 0)
        }
    }
}

/// DISCARD or WRITE_ZEROES: every range is checked before any is carried out.
fn ranges(
    queue: &DeviceQueue,
    disk: &DiskFile,
    readable: &Segments,
    discard: bool,
    head: u16,
    stop: &AtomicBool,
) -> (u8, u64) {
    let bytes = readable.len() - HEADER_LEN;
    let ioerr = |why: &str| {
        log::debug!("virtio-blk: request {head}: {why}: IOERR");
        (VIRTIO_BLK_S_IOERR, 0)
    };
    if bytes == 0 || !bytes.is_multiple_of(RANGE_LEN) || bytes / RANGE_LEN > u64::from(MAX_RANGES) {
        return ioerr("not 1 to 16 whole ranges");
    }
    let mut raw = [0u8; (RANGE_LEN * MAX_RANGES as u64) as usize];
    let raw = &mut raw[..bytes as usize];
    let Some(dma) = guest(queue, stop) else {
        return (VIRTIO_BLK_S_IOERR, 0);
    };
    if readable.read_at(&dma, HEADER_LEN, raw).is_err() {
        return ioerr("cannot read the ranges");
    }
    drop(dma);
    let mut checked = [(0u64, 0u64, false); MAX_RANGES as usize];
    let count = raw.len() / RANGE_LEN as usize;
    for (i, range) in raw.chunks_exact(RANGE_LEN as usize).enumerate() {
        let sector = u64::from_le_bytes(range[0..8].try_into().unwrap());
        let sectors = u32::from_le_bytes(range[8..12].try_into().unwrap());
        let flags = u32::from_le_bytes(range[12..16].try_into().unwrap());
        // §5.2.6.2: unmap is only for WRITE_ZEROES; reserved bits set are UNSUPP.
        if flags & !RANGE_FLAG_UNMAP != 0 || (discard && flags & RANGE_FLAG_UNMAP != 0) {
            log::debug!("virtio-blk: request {head}: range flags {flags:#x}: UNSUPP");
            return (VIRTIO_BLK_S_UNSUPP, 0);
        }
        if sectors > MAX_RANGE_SECTORS {
            return ioerr("a range longer than the device's maximum");
        }
        let len = u64::from(sectors) * SECTOR_SIZE;
        let Some(offset) = checked_range(disk, sector, len) else {
            return ioerr("a range outside the disk");
        };
        checked[i] = (offset, len, flags & RANGE_FLAG_UNMAP != 0);
    }
    for &(offset, len, unmap) in &checked[..count] {
        let result = if discard {
            disk.discard(offset, len)
        } else {
            disk.write_zeroes(offset, len, unmap, stop)
        };
        if result.is_err() {
            return host_result(disk, if discard { "discarding" } else { "zeroing" }, result);
        }
    }
    (VIRTIO_BLK_S_OK, 0)
}
