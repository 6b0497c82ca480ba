//! PCM I/O messages (§5.14.6.8) and their return to the driver.
//!
//! An I/O message is kept as a reference into guest memory (head index, ranges); its PCM is read
//! (TX) or written (RX) only when the period thread consumes it, and the finished message goes
//! back through the txq's or rxq's [`crate::virtio::queue::DeviceQueue`].

use vm_memory::{GuestMemoryError, GuestMemoryMmap};

use super::wire::{pcm_status, PCM_STATUS_SIZE, PCM_XFER_SIZE};
use crate::virtio::chain::ChainBuffers;
pub use crate::virtio::queue::Completion;

/// The most PCM bytes one I/O message may carry (4 MiB, far above any period the Linux driver
/// uses). Larger messages are malformed.
pub const MAX_IO_DATA_BYTES: u64 = 4 << 20;

/// Which way a stream's PCM flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Playback: PCM flows from the driver to the device, on the txq.
    Output,
    /// Capture: PCM flows from the device to the driver, on the rxq.
    Input,
}

impl Direction {
    /// The `VIRTIO_SND_D_*` value.
    pub fn wire(self) -> u8 {
        match self {
            Direction::Output => super::wire::D_OUTPUT,
            Direction::Input => super::wire::D_INPUT,
        }
    }
}

/// Why an I/O message was refused at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IoError {
    #[error("the header is {0} bytes, not {PCM_XFER_SIZE}")]
    ShortHeader(u64),
    #[error("the writable part is {0} bytes, too small for the {PCM_STATUS_SIZE}-byte status")]
    NoStatus(u64),
    #[error("the message carries no PCM")]
    NoData,
    #[error("the message carries {0} bytes of PCM, more than {MAX_IO_DATA_BYTES}")]
    TooLong(u64),
}

/// A validated I/O message waiting in its stream's queue.
#[derive(Debug)]
pub struct IoMessage {
    pub stream_id: u32,
    buffers: ChainBuffers,
    direction: Direction,
    data_len: u32,
}

impl IoMessage {
    /// Validates a chain from the txq (`Output`) or rxq (`Input`): a readable 4-byte header, then
    /// PCM (readable for TX, writable for RX), then an 8-byte writable status. A message that
    /// cannot hold a status is returned with length 0; any other malformed message gets status
    /// IO_ERR (§5.14.6.8: an I/O status is OK or IO_ERR).
    pub fn parse(
        buffers: ChainBuffers,
        direction: Direction,
        mem: &GuestMemoryMmap,
    ) -> Result<IoMessage, (Completion, IoError)> {
        let writable = buffers.writable.len();
        if writable < PCM_STATUS_SIZE as u64 {
            let completion = Completion {
                head: buffers.head,
                len: 0,
            };
            return Err((completion, IoError::NoStatus(writable)));
        }
        let readable = buffers.readable.len();
        let header = PCM_XFER_SIZE as u64;
        // Extra writable bytes in a TX message, or extra readable bytes in an RX message, are
        // ignored: the status goes in the last 8 writable bytes either way.
        let data_len = match direction {
            _ if readable < header => Err(IoError::ShortHeader(readable)),
            Direction::Output => Ok(readable - header),
            Direction::Input => Ok(writable - PCM_STATUS_SIZE as u64),
        };
        let data_len = data_len.and_then(|len| match len {
            0 => Err(IoError::NoData),
            len if len > MAX_IO_DATA_BYTES => Err(IoError::TooLong(len)),
            // Bounded by MAX_IO_DATA_BYTES.
            len => Ok(len as u32),
        });
        let mut stream_id = [0u8; PCM_XFER_SIZE];
        let message = data_len.and_then(|data_len| {
            buffers
                .readable
                .read_at(mem, 0, &mut stream_id)
                .map_err(|_| IoError::ShortHeader(readable))?;
            Ok(data_len)
        });
        match message {
            Ok(data_len) => Ok(IoMessage {
                stream_id: u32::from_le_bytes(stream_id),
                buffers,
                direction,
                data_len,
            }),
            Err(error) => {
                let message = IoMessage {
                    stream_id: u32::MAX,
                    buffers,
                    direction,
                    data_len: 0,
                };
                // §5.14.6.8: an I/O status is OK or IO_ERR; BAD_MSG is for control requests.
                Err((message.reject(mem, super::wire::S_IO_ERR), error))
            }
        }
    }

    /// The PCM bytes the message carries (TX) or has room for (RX).
    pub fn data_len(&self) -> usize {
        self.data_len as usize
    }

    /// Copies PCM bytes `[offset, offset + dst.len())` of a TX message out of guest memory.
    pub fn read_data(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        dst: &mut [u8],
    ) -> Result<(), GuestMemoryError> {
        self.buffers
            .readable
            .read_at(mem, (PCM_XFER_SIZE + offset) as u64, dst)
    }

    /// Copies captured bytes into an RX message's PCM area at `offset`.
    pub fn write_data(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        src: &[u8],
    ) -> Result<(), GuestMemoryError> {
        self.buffers.writable.write_at(mem, offset as u64, src)
    }

    /// Writes the status and returns the used-ring entry. `captured` is the number of PCM bytes
    /// written into an RX message (ignored for TX, whose used length is the status alone).
    pub fn complete(
        self,
        mem: &GuestMemoryMmap,
        status: u32,
        latency_bytes: u32,
        captured: usize,
    ) -> Completion {
        let status_at = self.buffers.writable.len() - PCM_STATUS_SIZE as u64;
        let written =
            self.buffers
                .writable
                .write_at(mem, status_at, &pcm_status(status, latency_bytes));
        let len = match (written, self.direction) {
            (Err(e), _) => {
                crate::warn_limited!("virtio-snd: cannot write an I/O status: {e}");
                0
            }
            (Ok(()), Direction::Output) => PCM_STATUS_SIZE as u32,
            // Bounded by data_len, itself bounded by MAX_IO_DATA_BYTES.
            (Ok(()), Direction::Input) => (captured.min(self.data_len()) + PCM_STATUS_SIZE) as u32,
        };
        Completion {
            head: self.buffers.head,
            len,
        }
    }

    /// Completes the message at once, with no PCM consumed or captured.
    pub fn reject(self, mem: &GuestMemoryMmap, status: u32) -> Completion {
        self.complete(mem, status, 0, 0)
    }
}
