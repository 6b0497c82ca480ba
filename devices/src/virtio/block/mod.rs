//! virtio-blk, the block device (VIRTIO 1.2 §5.2): one request queue served by a worker thread
//! per disk, so disk I/O never runs on the event loop (or near the sound threads).
//!
//! - [`disk`]: the image file, opened and checked at start-up, and the I/O on it.
//! - [`request`]: one request checked and carried out, with the status the spec names.
//! - This module: the device (features, configuration space) and its worker: the queue's kick
//!   eventfd wakes it, it pops the walked chains through [`DeviceQueue`] (with the device's
//!   [`ChainLimits`] and a [`KickBudget`]), serves each and completes it at once. A reset stops
//!   the worker and waits for it, but not forever: a file stuck in the kernel cannot hang the
//!   vCPU that wrote the reset (see [`RESET_WAIT`]). Guest memory is touched only in copies under
//!   the queue's DMA guard, never during host I/O (docs/architecture.md, the lock rules).
//!
//! docs/virtio-blk.md maps the spec's clauses to this code and its tests.

pub mod disk;
pub mod request;
#[cfg(test)]
mod tests;

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use disk::{DiskConfig, DiskError, DiskFile, SECTOR_SIZE};
use request::{RequestFeatures, MAX_RANGES, MAX_RANGE_SECTORS};

use crate::virtio::chain::ChainLimits;
use crate::virtio::drain::KickBudget;
use crate::virtio::queue::{Completion, DeviceQueue};
use crate::virtio::{
    ActivateContext, ActivateError, SharedSubscriber, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// The virtio device id of a block device (§5).
pub const VIRTIO_ID_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// The largest queue the driver may set up.
pub const BLOCK_QUEUE_SIZE: u16 = 256;
/// The most data segments of one request (`seg_max`); the header and status take two more
/// descriptors.
pub const SEG_MAX: u32 = 126;
/// The largest data segment (`size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// What the device accepts of one chain: the header, `SEG_MAX` data segments and the status.
/// A chain is read straight into or out of guest memory, so its byte count costs the host no
/// memory; the cap is the spec's.
const CHAIN_LIMITS: ChainLimits = ChainLimits {
    max_descriptors: SEG_MAX as usize + 2,
    max_bytes: u32::MAX as u64,
    indirect: false,
};
/// How long a reset (on the vCPU that wrote it) waits for the worker to end. The reset revokes
/// the queue first, so from then on the worker touches neither guest memory nor the used ring;
/// it checks for the reset between host I/O calls of at most [`disk::IO_CHUNK`] bytes. A disk
/// file that blocks longer (a hung network file system) leaves its thread in that call: the
/// thread is kept aside and joined once it has ended (at a later reset or when the device goes).
pub const RESET_WAIT: Duration = Duration::from_millis(250);
/// The size of the configuration space (`struct virtio_blk_config` up to the secure-erase
/// fields, §5.2.4).
const CONFIG_LEN: usize = 72;

fn bit(feature: u32) -> u64 {
    1 << feature
}

/// A virtio-blk device on one disk file.
pub struct Block {
    disk: Arc<DiskFile>,
    queue_max_sizes: [u16; 1],
    config: [u8; CONFIG_LEN],
    worker: Option<Worker>,
    /// Worker threads a reset did not wait for (stuck in a host call), joined once they end.
    stuck: Vec<JoinHandle<()>>,
}

impl Block {
    pub fn new(disk: DiskFile) -> Block {
        let config = config_space(&disk);
        Block {
            disk: Arc::new(disk),
            queue_max_sizes: [BLOCK_QUEUE_SIZE],
            config,
            worker: None,
            stuck: Vec::new(),
        }
    }

    pub fn disk(&self) -> &DiskFile {
        &self.disk
    }
}

/// `struct virtio_blk_config` (§5.2.4), little-endian.
fn config_space(disk: &DiskFile) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &disk.sectors().to_le_bytes()); // capacity
    put(8, &SIZE_MAX.to_le_bytes()); // size_max
    put(12, &SEG_MAX.to_le_bytes()); // seg_max
    put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
    put(34, &1u16.to_le_bytes()); // num_queues
    put(36, &MAX_RANGE_SECTORS.to_le_bytes()); // max_discard_sectors
    put(40, &MAX_RANGES.to_le_bytes()); // max_discard_seg
    put(44, &1u32.to_le_bytes()); // discard_sector_alignment
    put(48, &MAX_RANGE_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
    put(52, &MAX_RANGES.to_le_bytes()); // max_write_zeroes_seg
    put(56, &[1]); // write_zeroes_may_unmap
    c
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn features(&self) -> u64 {
        let common = VIRTIO_F_VERSION_1
            | bit(VIRTIO_BLK_F_SIZE_MAX)
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH);
        if self.disk.readonly() {
            common | bit(VIRTIO_BLK_F_RO)
        } else {
            common | bit(VIRTIO_BLK_F_DISCARD) | bit(VIRTIO_BLK_F_WRITE_ZEROES)
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| self.config.get(usize::try_from(at).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Nothing in the configuration space is writable (no CONFIG_WCE).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, ctx: ActivateContext) -> Result<Vec<SharedSubscriber>, ActivateError> {
        let got = ctx.queues.len();
        if got != 1 {
            return Err(ActivateError::QueueCount { got, want: 1 });
        }
        let Some(active) = ctx.queues.into_iter().find(|q| q.index == 0) else {
            return Err(ActivateError::QueueCount { got, want: 1 });
        };
        // A device activated twice without a reset: the old worker goes first.
        self.stop_worker();
        let acked = ctx.acked_features;
        let features = RequestFeatures {
            writethrough: acked & bit(VIRTIO_BLK_F_FLUSH) == 0,
            discard: acked & bit(VIRTIO_BLK_F_DISCARD) != 0,
            write_zeroes: acked & bit(VIRTIO_BLK_F_WRITE_ZEROES) != 0,
        };
        let queue = DeviceQueue::new(
            "virtio-blk",
            active,
            ctx.mem,
            ctx.interrupt,
            acked,
            CHAIN_LIMITS,
        );
        self.worker = Some(Worker::start(queue, self.disk.clone(), features)?);
        // The worker waits on the kick itself: nothing for the event loop.
        Ok(Vec::new())
    }

    fn reset(&mut self) {
        self.stop_worker();
    }
}

impl Block {
    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            if let Some(thread) = worker.stop(RESET_WAIT) {
                self.stuck.push(thread);
            }
        }
        // Join those that have ended since; the others stay (bounded: one per reset the host's
        // file held up).
        let (ended, stuck): (Vec<_>, Vec<_>) = self
            .stuck
            .drain(..)
            .partition(|thread| thread.is_finished());
        self.stuck = stuck;
        for thread in ended {
            let _ = thread.join();
        }
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

/// What the device and its worker thread share.
struct Shared {
    /// Set by a reset (after the queue was revoked): the worker ends at its next check.
    stopping: AtomicBool,
    /// Wakes the worker for a reset.
    wake: EventFd,
}

/// The running worker thread of one activated device.
struct Worker {
    shared: Arc<Shared>,
    /// Revoked at reset: from then on nothing touches the guest's buffers or used ring.
    queue: Arc<DeviceQueue>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the thread ends.
    ended: mpsc::Receiver<()>,
}

impl Worker {
    fn start(
        queue: DeviceQueue,
        disk: Arc<DiskFile>,
        features: RequestFeatures,
    ) -> Result<Worker, ActivateError> {
        let queue = Arc::new(queue);
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK).map_err(ActivateError::Worker)?,
        });
        let (ended_tx, ended) = mpsc::channel::<()>();
        let thread_shared = shared.clone();
        let thread_queue = queue.clone();
        let thread = std::thread::Builder::new()
            .name("virtio-blk".into())
            .spawn(move || {
                crate::thread_start::started(crate::thread_start::ThreadKind::BlockWorker);
                let _ended = ended_tx;
                serve_queue(&thread_queue, &disk, features, &thread_shared);
            })
            .map_err(ActivateError::Worker)?;
        Ok(Worker {
            shared,
            queue,
            thread: Some(thread),
            ended,
        })
    }

    /// Stops the thread: nothing touches guest memory or the used ring after this returns.
    /// Waits up to `wait` for it to end; returns it if it has not (stuck in a host call).
    fn stop(mut self, wait: Duration) -> Option<JoinHandle<()>> {
        // Waits only for a copy or ring update in progress, never for host I/O.
        self.queue.revoke();
        self.shared.stopping.store(true, Ordering::Release);
        if let Err(e) = self.shared.wake.write(1) {
            crate::error_limited!("virtio-blk: waking the worker for a reset: {e}");
        }
        match self.ended.recv_timeout(wait) {
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
                None
            }
            // Nothing is ever sent; a timeout means the disk is stuck in the kernel.
            _ => {
                crate::warn_limited!(
                    "virtio-blk: the worker is still in a host I/O call {wait:?} after a reset; \
                     it ends on its own and touches the guest no more"
                );
                self.thread.take()
            }
        }
    }
}

/// The worker thread: waits for kicks (or the reset's wake-up), serves what is available.
fn serve_queue(queue: &DeviceQueue, disk: &DiskFile, features: RequestFeatures, shared: &Shared) {
    let mut fds = [
        libc::pollfd {
            fd: queue.kick().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: shared.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // Data moves file <-> this buffer <-> guest memory, a chunk at a time.
    let mut buf = vec![0u8; disk::IO_CHUNK];
    loop {
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: `fds` is a valid array of two pollfds for the whole call.
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ret < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            crate::error_limited!("virtio-blk: waiting for the queue: {err}; the device stops");
            return;
        }
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            // Only read when readable: the kick eventfd may be a blocking one.
            let _ = queue.kick().read();
        }
        // Chains left over past the budget re-kick the queue: the next poll returns at once.
        let walks = queue.pop_available(&mut KickBudget::new());
        for walk in walks {
            if shared.stopping.load(Ordering::Acquire) {
                return;
            }
            let len = match &walk.result {
                Ok(chain) => {
                    request::serve(queue, disk, features, chain, &mut buf, &shared.stopping)
                }
                // The walk refused the chain: not even its status byte can be trusted.
                Err(e) => {
                    log::debug!("virtio-blk: request {} refused: {e}", walk.head);
                    0
                }
            };
            // Nothing once the queue is revoked (a reset).
            queue.complete(&[Completion {
                head: walk.head,
                len,
            }]);
        }
    }
}
