//! virtio-vsock (VIRTIO 1.2 §5.10), served in the VMM and bridged to host Unix sockets with
//! Firecracker's "hybrid vsock" convention, so tools written for it work unchanged:
//!
//! - Host-initiated: a host program connects to the Unix socket at `PATH`, writes
//!   `CONNECT <port>\n`, and once the guest's listener on `<port>` accepts, reads
//!   `OK <host port>\n`; from then on the Unix stream is the connection.
//! - Guest-initiated: a guest connection to CID 2 (the host), port `P`, becomes a connection to
//!   the Unix socket `PATH_P`.
//!
//! Three queues: rx (device to driver), tx (driver to device) and event (unused: the device
//! never sends TRANSPORT_RESET). Everything runs on the VMM's event loop with non-blocking
//! sockets: [`worker`] holds the connections, their credit-based flow control and their bounded
//! buffers, so a slow or dead host peer only ever stalls its own connection.

pub mod packet;
mod worker;

#[cfg(test)]
mod tests;

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
#[cfg(test)]
use std::time::Duration;

use crate::virtio::chain::ChainLimits;
use crate::virtio::queue::DeviceQueue;
use crate::virtio::{
    ActivateContext, ActivateError, SharedSubscriber, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_ID_VSOCK,
};

use worker::{Timeouts, VsockWorker};

/// The host's CID: where the guest connects to reach host sockets.
pub const HOST_CID: u64 = 2;
/// The smallest CID a guest may have (0-2 are reserved, VIRTIO 1.2 §5.10.4).
pub const MIN_GUEST_CID: u64 = 3;
/// The largest queue the driver may set up.
pub const VSOCK_QUEUE_SIZE: u16 = 256;
/// Queue indices.
pub const RX_QUEUE: u16 = 0;
pub const TX_QUEUE: u16 = 1;
pub const EVENT_QUEUE: u16 = 2;
/// The receive buffer each connection offers the guest (its `buf_alloc`): the most bytes from
/// the guest that a connection holds while its host peer is not reading.
pub const CONN_BUFFER_SIZE: u32 = 64 * 1024;
/// The most payload one packet carries, in either direction (Linux uses 64 KiB buffers).
pub const MAX_PACKET_DATA: u32 = 64 * 1024;
/// The most connections at once, host clients still sending their `CONNECT` line included.
pub const MAX_CONNECTIONS: usize = 64;
/// What the device accepts of one chain: a header and a payload, in a few pieces.
const CHAIN_LIMITS: ChainLimits = ChainLimits {
    max_descriptors: 16,
    max_bytes: HEADER_SIZE_U64 + MAX_PACKET_DATA as u64 + 4096,
    indirect: false,
};
const HEADER_SIZE_U64: u64 = packet::HEADER_SIZE as u64;

/// Why the device could not be set up (user errors, each one line).
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock: cid {0} is reserved; use a cid of 3 or more")]
    ReservedCid(u64),
    #[error("vsock: cid {0} does not fit in 32 bits")]
    CidTooLarge(u64),
    #[error("vsock: socket {path} is in use by a running program")]
    SocketInUse { path: PathBuf },
    #[error("vsock: cannot create socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The vsock device.
pub struct Vsock {
    cid: u64,
    socket_path: PathBuf,
    listener: UnixListener,
    queue_max_sizes: [u16; 3],
    timeouts: Timeouts,
    worker: Option<Arc<Mutex<VsockWorker>>>,
}

impl Vsock {
    /// A device for a guest with `cid`, listening for host clients at `socket_path`. A stale
    /// socket file nobody listens on is replaced; one a running program listens on is an error.
    pub fn new(cid: u64, socket_path: &Path) -> Result<Vsock, VsockError> {
        if cid < MIN_GUEST_CID {
            return Err(VsockError::ReservedCid(cid));
        }
        // Linux's driver reads only the low 32 bits (and so do AF_VSOCK addresses).
        if cid > u64::from(u32::MAX) {
            return Err(VsockError::CidTooLarge(cid));
        }
        let listener = bind_listener(socket_path)?;
        listener
            .set_nonblocking(true)
            .map_err(|source| VsockError::Bind {
                path: socket_path.to_owned(),
                source,
            })?;
        Ok(Vsock {
            cid,
            socket_path: socket_path.to_owned(),
            listener,
            queue_max_sizes: [VSOCK_QUEUE_SIZE; 3],
            timeouts: Timeouts::default(),
            worker: None,
        })
    }

    /// Shorter waits for a host client's line and the guest's answer (tests).
    #[cfg(test)]
    pub(crate) fn with_timeouts(mut self, line: Duration, response: Duration) -> Vsock {
        self.timeouts = Timeouts { line, response };
        self
    }

    pub fn cid(&self) -> u64 {
        self.cid
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }
}

/// Binds `path`, replacing a socket file left by a program that is gone.
fn bind_listener(path: &Path) -> Result<UnixListener, VsockError> {
    let bind_error = |source| VsockError::Bind {
        path: path.to_owned(),
        source,
    };
    match UnixListener::bind(path) {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let is_socket = std::fs::symlink_metadata(path)
                .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                .unwrap_or(false);
            if !is_socket {
                return Err(bind_error(e));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(VsockError::SocketInUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(bind_error)?;
            UnixListener::bind(path).map_err(bind_error)
        }
        Err(e) => Err(bind_error(e)),
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // The socket file is ours (bound above); leave no stale file behind.
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    /// Stream sockets only: with no feature bit but VERSION_1, the driver uses
    /// VIRTIO_VSOCK_TYPE_STREAM (VIRTIO 1.2 §5.10.3).
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    /// `le64 guest_cid`.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| config.get(usize::try_from(at).ok()?))
                .copied()
                .unwrap_or(0);
        }
    }

    /// The configuration space is read-only.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, ctx: ActivateContext) -> Result<Vec<SharedSubscriber>, ActivateError> {
        let got = ctx.queues.len();
        let mut slots: [Option<crate::virtio::ActiveQueue>; 3] = [None, None, None];
        for active in ctx.queues {
            let index = usize::from(active.index);
            match slots.get_mut(index) {
                Some(slot @ None) => *slot = Some(active),
                _ => return Err(ActivateError::QueueCount { got, want: 3 }),
            }
        }
        let [Some(rx), Some(tx), Some(_event)] = slots else {
            return Err(ActivateError::QueueCount { got, want: 3 });
        };
        let listener = self.listener.try_clone().map_err(ActivateError::Worker)?;
        let queue = |active| {
            DeviceQueue::new(
                "virtio-vsock",
                active,
                ctx.mem.clone(),
                ctx.interrupt.clone(),
                ctx.acked_features,
                CHAIN_LIMITS,
            )
        };
        let worker = Arc::new(Mutex::new(VsockWorker::new(
            self.cid,
            self.socket_path.clone(),
            listener,
            queue(rx),
            queue(tx),
            self.timeouts,
        )));
        self.worker = Some(worker.clone());
        Ok(vec![worker])
    }

    fn reset(&mut self) {
        // The transport has already removed the subscriber from the event loop; dropping the
        // last handle closes every connection's socket and lets go of the queues.
        self.worker = None;
    }
}
