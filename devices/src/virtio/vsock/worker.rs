//! The event-loop side of the vsock device: the rx and tx queues, the host listener, and every
//! connection between a guest port and a host Unix stream.
//!
//! Flow control is the spec's credit scheme (VIRTIO 1.2 §5.10.6.3): each connection offers the
//! guest [`CONN_BUFFER_SIZE`] bytes (`buf_alloc`) and reports what it has written on to the host
//! peer (`fwd_cnt`); a guest that sends past that credit is reset. In the other direction the
//! device reads from the host peer only as much as the guest's own credit allows, so a guest
//! that stops reading stalls only its connection's host peer (the socket's own buffer fills).
//!
//! Every host socket is non-blocking and watched edge-triggered: a readiness edge sets a flag,
//! and the flag is cleared when a read or write finds the socket not ready. Nothing here ever
//! waits on a host peer, so a slow or dead one holds only its own connection, and the work per
//! event is bounded by the queues' sizes and [`MAX_CONNECTIONS`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::timerfd::TimerFd;

use super::packet::{
    Header, HEADER_SIZE, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::{CONN_BUFFER_SIZE, HOST_CID, MAX_CONNECTIONS, MAX_PACKET_DATA};
use crate::virtio::chain::ChainBuffers;
use crate::virtio::drain::KickBudget;
use crate::virtio::queue::{Completion, DeviceQueue};

/// `(host port, guest port)`: a connection as both ends name it.
type ConnKey = (u32, u32);

/// The longest `CONNECT <port>\n` line a host client may send.
const MAX_CONNECT_LINE: usize = 32;
/// Host-initiated connections get host ports from here up (Firecracker does the same, so
/// the ports never clash with the small numbers host services listen on).
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// RSTs for packets that match no connection, waiting for rx buffers. Beyond this they are
/// dropped: the guest made them, and a guest cannot make the device hold more.
const MAX_PENDING_RESETS: usize = 64;
/// New host clients accepted per listener wake-up, so a flood of them cannot hold the loop.
const ACCEPTS_PER_EVENT: usize = 16;
/// How a host socket is watched.
const STREAM_EVENTS: EventSet = EventSet::IN
    .union(EventSet::OUT)
    .union(EventSet::READ_HANG_UP)
    .union(EventSet::EDGE_TRIGGERED);

/// How long the device waits for a host client's `CONNECT` line, and for the guest to answer a
/// host-initiated REQUEST (Linux answers at once, with RESPONSE or RST). Past them the host
/// client is closed (it reads EOF), so neither a silent client nor a silent guest keeps a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timeouts {
    pub line: Duration,
    pub response: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            line: Duration::from_secs(30),
            response: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Host-initiated: a REQUEST is (or will be) sent; waiting for the guest's RESPONSE.
    Connecting,
    Established,
    /// Reset (an RST is sent or pending); the connection ends once what the guest sent before
    /// has reached the host peer.
    Closing,
}

/// One connection.
struct Connection {
    stream: UnixStream,
    state: ConnState,
    /// When the state became [`ConnState::Connecting`].
    since: Instant,
    /// Bytes for the host peer: the `OK <port>\n` line first (host-initiated), then the guest's
    /// data. Bounded by [`CONN_BUFFER_SIZE`] plus the line, since the guest may not send more
    /// than its credit.
    to_host: VecDeque<u8>,
    /// How many of `to_host`'s first bytes are the `OK` line rather than guest data.
    line_bytes: usize,
    /// Guest bytes written on to the host peer (wrapping, as the spec counts).
    fwd_cnt: u32,
    /// The `fwd_cnt` last told to the guest.
    reported_fwd_cnt: u32,
    /// Bytes sent to the guest (wrapping).
    rx_cnt: u32,
    /// The guest's receive buffer and what it has consumed of it.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The host socket may have data (or EOF) to read.
    host_readable: bool,
    /// The host peer sent EOF.
    host_eof: bool,
    /// The guest will receive / send no more (SHUTDOWN flags it sent).
    guest_shut_rcv: bool,
    guest_shut_send: bool,
    /// The write half to the host peer is shut (after the guest's SHUTDOWN SEND was drained).
    host_write_shut: bool,
    /// Control packets owed to the guest.
    send_request: bool,
    send_response: bool,
    send_credit_update: bool,
    send_shutdown: bool,
    send_rst: bool,
}

impl Connection {
    fn new(stream: UnixStream, state: ConnState) -> Connection {
        Connection {
            stream,
            state,
            since: Instant::now(),
            to_host: VecDeque::new(),
            line_bytes: 0,
            fwd_cnt: 0,
            reported_fwd_cnt: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            host_readable: true,
            host_eof: false,
            guest_shut_rcv: false,
            guest_shut_send: false,
            host_write_shut: false,
            send_request: false,
            send_response: false,
            send_credit_update: false,
            send_shutdown: false,
            send_rst: false,
        }
    }

    /// What the guest may still be sent: its buffer less what is in flight.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Guest bytes held for the host peer.
    fn guest_bytes_held(&self) -> usize {
        self.to_host.len() - self.line_bytes
    }

    /// Resets the connection: an RST to the guest, nothing more either way.
    fn reset(&mut self) {
        self.state = ConnState::Closing;
        self.send_rst = true;
        self.send_request = false;
        self.send_response = false;
        self.send_credit_update = false;
        self.send_shutdown = false;
    }

    /// Whether the connection is over and can be dropped.
    fn finished(&self) -> bool {
        self.state == ConnState::Closing && !self.send_rst && self.to_host.is_empty()
    }

    /// Writes what the host peer takes of `to_host`. A write error resets the connection.
    fn flush_to_host(&mut self) {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host.drain(..n);
                    let line = n.min(self.line_bytes);
                    self.line_bytes -= line;
                    // At most CONN_BUFFER_SIZE at a time: fits.
                    self.fwd_cnt = self.fwd_cnt.wrapping_add((n - line) as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::debug!("virtio-vsock: writing to a host peer: {e}");
                    self.to_host.clear();
                    self.line_bytes = 0;
                    if self.state != ConnState::Closing {
                        self.reset();
                    }
                    return;
                }
            }
        }
        if self.state == ConnState::Closing {
            return;
        }
        let unreported = self.fwd_cnt.wrapping_sub(self.reported_fwd_cnt);
        if unreported >= CONN_BUFFER_SIZE / 2 || (unreported > 0 && self.to_host.is_empty()) {
            self.send_credit_update = true;
        }
        if self.to_host.is_empty() && self.guest_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
    }
}

/// A host client that has connected to the socket but not yet sent its `CONNECT` line.
struct PendingClient {
    stream: UnixStream,
    line: Vec<u8>,
    since: Instant,
}

/// The device's event-loop subscriber.
pub(super) struct VsockWorker {
    cid: u64,
    socket_path: PathBuf,
    listener: UnixListener,
    /// The listener is not watched: accepting failed (out of file descriptors, say), and a
    /// level-triggered listener would wake the loop again at once. Watched again when a
    /// connection ends.
    listener_paused: bool,
    rxq: DeviceQueue,
    txq: DeviceQueue,
    /// Rx chains the driver offered, not yet filled; at most the queue's size.
    rx_buffers: VecDeque<ChainBuffers>,
    connections: BTreeMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    pending: HashMap<RawFd, PendingClient>,
    /// RSTs owed for packets that matched no connection.
    resets: VecDeque<Header>,
    /// The connection served last, so the others go first next time.
    cursor: ConnKey,
    next_local_port: u32,
    /// Moves data between host sockets and guest buffers.
    scratch: Vec<u8>,
    timeouts: Timeouts,
    /// Ticks while a host client or a host-initiated connection is waiting (None: the timer
    /// could not be created, and nothing times out).
    timer: Option<TimerFd>,
    timer_armed: bool,
}

impl VsockWorker {
    pub(super) fn new(
        cid: u64,
        socket_path: PathBuf,
        listener: UnixListener,
        rxq: DeviceQueue,
        txq: DeviceQueue,
        timeouts: Timeouts,
    ) -> VsockWorker {
        let timer = TimerFd::new()
            .map_err(|e| crate::warn_limited!("virtio-vsock: no timer ({e}); nothing times out"))
            .ok();
        VsockWorker {
            cid,
            socket_path,
            listener,
            listener_paused: false,
            rxq,
            txq,
            rx_buffers: VecDeque::new(),
            connections: BTreeMap::new(),
            by_fd: HashMap::new(),
            pending: HashMap::new(),
            resets: VecDeque::new(),
            cursor: (0, 0),
            next_local_port: FIRST_LOCAL_PORT,
            scratch: vec![0; MAX_PACKET_DATA as usize],
            timeouts,
            timer,
            timer_armed: false,
        }
    }

    /// Closes the host clients whose `CONNECT` line, or whose guest's answer, is overdue.
    fn expire(&mut self, ops: &mut EventOps) {
        let now = Instant::now();
        let line = self.timeouts.line;
        let late: Vec<RawFd> = self
            .pending
            .iter()
            .filter(|(_, c)| now.duration_since(c.since) >= line)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            if let Some(client) = self.pending.remove(&fd) {
                log::debug!("virtio-vsock: host client sent no CONNECT line in time; closed");
                let _ = ops.remove(Events::empty(&client.stream));
            }
        }
        let response = self.timeouts.response;
        for conn in self.connections.values_mut() {
            if conn.state == ConnState::Connecting && now.duration_since(conn.since) >= response {
                log::debug!("virtio-vsock: the guest did not answer a connection in time");
                // The client reads EOF now; the entry goes once the guest has its RST.
                let _ = conn.stream.shutdown(Shutdown::Both);
                conn.reset();
            }
        }
    }

    /// Arms the timer while something waits on it, disarms it otherwise.
    fn update_timer(&mut self) {
        let Some(timer) = self.timer.as_mut() else {
            return;
        };
        let waiting = !self.pending.is_empty()
            || self
                .connections
                .values()
                .any(|c| c.state == ConnState::Connecting);
        if waiting == self.timer_armed {
            return;
        }
        let result = if waiting {
            let tick = (self.timeouts.line.min(self.timeouts.response) / 4)
                .clamp(Duration::from_millis(10), Duration::from_secs(1));
            timer.reset(tick, Some(tick))
        } else {
            timer.clear()
        };
        match result {
            Ok(()) => self.timer_armed = waiting,
            Err(e) => crate::warn_limited!("virtio-vsock: setting the timer: {e}"),
        }
    }

    fn connection_count(&self) -> usize {
        self.connections.len() + self.pending.len()
    }

    /// A header from the host end of `key` to the guest.
    fn header_for(&self, key: ConnKey, op: u16) -> Header {
        let conn = self.connections.get(&key);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUFFER_SIZE,
            fwd_cnt: conn.map_or(0, |c| c.fwd_cnt),
        }
    }

    /// Owes the guest an RST for a packet that matched no connection (never for an RST).
    fn reset_unknown(&mut self, packet: &Header) {
        if packet.op == OP_RST || self.resets.len() >= MAX_PENDING_RESETS {
            return;
        }
        self.resets.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: packet.dst_port,
            dst_port: packet.src_port,
            len: 0,
            type_: TYPE_STREAM,
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    // ---- the tx queue: packets from the guest ----

    fn process_tx(&mut self, ops: &mut EventOps) {
        let mut budget = KickBudget::new();
        let walks = self.txq.pop_available(&mut budget);
        let mut done = Vec::with_capacity(walks.len());
        for walk in walks {
            match walk.result {
                Ok(buffers) => self.handle_tx_packet(&buffers, ops),
                // Guest-caused: debug only, so a guest cannot fill the host's log.
                Err(e) => log::debug!("virtio-vsock: tx chain {} refused: {e}", walk.head),
            }
            // Tx buffers are only read: nothing written.
            done.push(Completion {
                head: walk.head,
                len: 0,
            });
        }
        self.txq.complete(&done);
    }

    fn handle_tx_packet(&mut self, buffers: &ChainBuffers, ops: &mut EventOps) {
        let mem = self.txq.mem().clone();
        let mut raw = [0u8; HEADER_SIZE];
        if buffers.readable.len() < HEADER_SIZE as u64
            || buffers.readable.read_at(&mem, 0, &mut raw).is_err()
        {
            // No header to answer: the packet is dropped.
            log::debug!("virtio-vsock: tx packet shorter than a header dropped");
            return;
        }
        let header = Header::decode(&raw);
        if header.src_cid != self.cid {
            log::debug!(
                "virtio-vsock: tx packet from cid {} (the guest is {}) dropped",
                header.src_cid,
                self.cid
            );
            return;
        }
        let key = (header.dst_port, header.src_port);
        let data_room = buffers.readable.len() - HEADER_SIZE as u64;
        let malformed = header.dst_cid != HOST_CID
            || header.type_ != TYPE_STREAM
            || header.len > MAX_PACKET_DATA
            || u64::from(header.len) > data_room
            || !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&header.op);
        if malformed {
            log::debug!("virtio-vsock: malformed tx packet {header:?} reset");
            match self.connections.get_mut(&key) {
                Some(conn) if header.op != OP_RST => conn.reset(),
                Some(_) => self.close(key, ops),
                None => self.reset_unknown(&header),
            }
            return;
        }
        if header.op == OP_REQUEST {
            self.guest_connect(&header, ops);
            return;
        }
        let Some(conn) = self.connections.get_mut(&key) else {
            self.reset_unknown(&header);
            return;
        };
        conn.peer_buf_alloc = header.buf_alloc;
        conn.peer_fwd_cnt = header.fwd_cnt;
        if conn.state == ConnState::Closing {
            if header.op == OP_RST {
                // The guest is done too: what is still held for the host peer goes.
                self.close(key, ops);
            }
            return;
        }
        match header.op {
            OP_RESPONSE if conn.state == ConnState::Connecting => {
                conn.state = ConnState::Established;
                let line = format!("OK {}\n", key.0);
                conn.line_bytes = line.len();
                conn.to_host.extend(line.as_bytes());
                conn.flush_to_host();
            }
            OP_RW if conn.state == ConnState::Established && !conn.guest_shut_send => {
                let len = header.len as usize;
                let room = (CONN_BUFFER_SIZE as usize).saturating_sub(conn.guest_bytes_held());
                if len > room {
                    log::debug!(
                        "virtio-vsock: the guest sent {len} bytes with {room} of credit; reset"
                    );
                    conn.reset();
                    return;
                }
                let data = &mut self.scratch[..len];
                if buffers
                    .readable
                    .read_at(&mem, HEADER_SIZE as u64, data)
                    .is_err()
                {
                    conn.reset();
                    return;
                }
                conn.to_host.extend(&*data);
                conn.flush_to_host();
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => conn.send_credit_update = true,
            OP_SHUTDOWN => {
                conn.guest_shut_rcv |= header.flags & SHUTDOWN_RCV != 0;
                conn.guest_shut_send |= header.flags & SHUTDOWN_SEND != 0;
                if conn.guest_shut_rcv && conn.guest_shut_send {
                    // The guest closed: RST ends it (VIRTIO 1.2 §5.10.6.5); what it sent before
                    // still reaches the host peer.
                    conn.reset();
                }
                conn.flush_to_host();
            }
            OP_RST => self.close(key, ops),
            // A RESPONSE to nothing, data before the handshake or after SHUTDOWN SEND.
            _ => conn.reset(),
        }
    }

    /// The guest connects to host port `dst_port`: a connection to `PATH_<port>`.
    fn guest_connect(&mut self, header: &Header, ops: &mut EventOps) {
        let key = (header.dst_port, header.src_port);
        if let Some(conn) = self.connections.get_mut(&key) {
            // A second REQUEST for a live connection: the guest lost track of it.
            conn.reset();
            return;
        }
        if self.connection_count() >= MAX_CONNECTIONS {
            log::debug!("virtio-vsock: connection cap reached; guest request reset");
            self.reset_unknown(header);
            return;
        }
        let mut path = self.socket_path.clone().into_os_string();
        path.push(format!("_{}", header.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => stream,
            Err(e) => {
                log::debug!("virtio-vsock: connecting to {path:?}: {e}; reset");
                self.reset_unknown(header);
                return;
            }
        };
        if let Err(e) = ops.add(Events::new(&stream, STREAM_EVENTS)) {
            crate::error_limited!("virtio-vsock: watching a host socket: {e}");
            self.reset_unknown(header);
            return;
        }
        let mut conn = Connection::new(stream, ConnState::Established);
        conn.peer_buf_alloc = header.buf_alloc;
        conn.peer_fwd_cnt = header.fwd_cnt;
        conn.send_response = true;
        self.by_fd.insert(conn.stream.as_raw_fd(), key);
        self.connections.insert(key, conn);
    }

    /// Drops a connection (closing its host socket).
    fn close(&mut self, key: ConnKey, ops: &mut EventOps) {
        if let Some(conn) = self.connections.remove(&key) {
            let fd = conn.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            // Removed before the fd is closed, so a reused fd number is not mistaken for it.
            let _ = ops.remove(Events::empty(&conn.stream));
            drop(conn);
            if self.listener_paused && ops.add(Events::new(&self.listener, EventSet::IN)).is_ok() {
                self.listener_paused = false;
            }
        }
    }

    /// Drops the connections that are over.
    fn sweep(&mut self, ops: &mut EventOps) {
        let finished: Vec<ConnKey> = self
            .connections
            .iter()
            .filter(|(_, c)| c.finished())
            .map(|(k, _)| *k)
            .collect();
        for key in finished {
            self.close(key, ops);
        }
    }

    // ---- the rx queue: packets to the guest ----

    /// Takes the rx chains the driver offered.
    fn take_rx_buffers(&mut self) {
        let mut budget = KickBudget::new();
        let walks = self.rxq.pop_available(&mut budget);
        let cap = usize::from(self.rxq.size());
        let mut refused = Vec::new();
        for walk in walks {
            match walk.result {
                Ok(buffers)
                    if buffers.writable.len() >= HEADER_SIZE as u64
                        && self.rx_buffers.len() < cap =>
                {
                    self.rx_buffers.push_back(buffers)
                }
                // Too small for a header, refused, or more than the ring holds (heads the
                // driver re-published): returned unused.
                _ => refused.push(Completion {
                    head: walk.head,
                    len: 0,
                }),
            }
        }
        self.rxq.complete(&refused);
    }

    /// Fills rx buffers with what the connections owe the guest, in turn.
    fn fill_rx(&mut self) {
        if !self.rxq.dma_allowed() {
            return;
        }
        let mut done = Vec::new();
        while let Some(buffers) = self.rx_buffers.pop_front() {
            match self.next_packet(&buffers) {
                Some(len) => done.push(Completion {
                    head: buffers.head,
                    len,
                }),
                None => {
                    self.rx_buffers.push_front(buffers);
                    break;
                }
            }
        }
        self.rxq.complete(&done);
    }

    /// Writes the next packet owed to the guest into `buffers`; returns its length, or `None`
    /// when nothing is owed.
    fn next_packet(&mut self, buffers: &ChainBuffers) -> Option<u32> {
        if let Some(header) = self.resets.pop_front() {
            return Some(self.write_packet(buffers, &header, 0));
        }
        let keys: Vec<ConnKey> = self
            .connections
            .range((
                std::ops::Bound::Excluded(self.cursor),
                std::ops::Bound::Unbounded,
            ))
            .chain(self.connections.range(..=self.cursor))
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            if let Some(len) = self.packet_of(key, buffers) {
                self.cursor = key;
                return Some(len);
            }
        }
        None
    }

    /// The next packet `key` owes the guest, written into `buffers`.
    fn packet_of(&mut self, key: ConnKey, buffers: &ChainBuffers) -> Option<u32> {
        let conn = self.connections.get_mut(&key)?;
        let op = if conn.send_rst {
            conn.send_rst = false;
            OP_RST
        } else if conn.send_request {
            conn.send_request = false;
            OP_REQUEST
        } else if conn.send_response {
            conn.send_response = false;
            OP_RESPONSE
        } else if conn.state != ConnState::Established {
            return None;
        } else if let Some(len) = self.read_host_data(key, buffers) {
            return Some(len);
        } else {
            let conn = self.connections.get_mut(&key)?;
            if conn.send_shutdown {
                conn.send_shutdown = false;
                OP_SHUTDOWN
            } else if conn.send_credit_update {
                conn.send_credit_update = false;
                OP_CREDIT_UPDATE
            } else {
                return None;
            }
        };
        let mut header = self.header_for(key, op);
        if op == OP_SHUTDOWN {
            header.flags = SHUTDOWN_SEND;
        }
        if let Some(conn) = self.connections.get_mut(&key) {
            conn.reported_fwd_cnt = conn.fwd_cnt;
        }
        Some(self.write_packet(buffers, &header, 0))
    }

    /// Reads from `key`'s host peer what the guest's credit and `buffers` allow, and writes it
    /// as an RW packet. `None`: nothing to send now (no data, no credit, or EOF noted).
    fn read_host_data(&mut self, key: ConnKey, buffers: &ChainBuffers) -> Option<u32> {
        let conn = self.connections.get_mut(&key)?;
        if !conn.host_readable || conn.host_eof || conn.guest_shut_rcv {
            return None;
        }
        let room = buffers.writable.len() - HEADER_SIZE as u64;
        let want = u64::from(conn.peer_credit())
            .min(room)
            .min(u64::from(MAX_PACKET_DATA)) as usize;
        if want == 0 {
            return None;
        }
        let data = &mut self.scratch[..want];
        let n = loop {
            match conn.stream.read(data) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.host_readable = false;
                    return None;
                }
                Err(e) => {
                    log::debug!("virtio-vsock: reading from a host peer: {e}");
                    conn.to_host.clear();
                    conn.line_bytes = 0;
                    conn.reset();
                    return None;
                }
            }
        };
        if n == 0 {
            conn.host_eof = true;
            conn.host_readable = false;
            if conn.guest_shut_send {
                // Both sides are done sending.
                conn.reset();
            } else {
                conn.send_shutdown = true;
            }
            return None;
        }
        // At most MAX_PACKET_DATA: fits.
        conn.rx_cnt = conn.rx_cnt.wrapping_add(n as u32);
        conn.reported_fwd_cnt = conn.fwd_cnt;
        let mut header = self.header_for(key, OP_RW);
        header.len = n as u32;
        Some(self.write_packet(buffers, &header, n))
    }

    /// Writes a header and the first `data_len` bytes of `scratch` into `buffers`; returns the
    /// used length (0 if guest memory refused the write).
    fn write_packet(&self, buffers: &ChainBuffers, header: &Header, data_len: usize) -> u32 {
        let mem = self.rxq.mem();
        let written = buffers
            .writable
            .write_at(mem, 0, &header.encode())
            .and_then(|()| {
                buffers
                    .writable
                    .write_at(mem, HEADER_SIZE as u64, &self.scratch[..data_len])
            });
        match written {
            // At most a header and MAX_PACKET_DATA: fits.
            Ok(()) => (HEADER_SIZE + data_len) as u32,
            Err(e) => {
                log::debug!("virtio-vsock: writing rx buffer {}: {e}", buffers.head);
                0
            }
        }
    }

    // ---- host sockets ----

    fn accept_clients(&mut self, ops: &mut EventOps) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    crate::warn_limited!(
                        "virtio-vsock: accepting a host client: {e}; not accepting more until a \
                         connection ends"
                    );
                    if ops
                        .remove(Events::new(&self.listener, EventSet::IN))
                        .is_ok()
                    {
                        self.listener_paused = true;
                    }
                    return;
                }
            };
            // At the cap the client is closed at once: it sees EOF instead of an `OK`.
            if self.connection_count() >= MAX_CONNECTIONS {
                log::debug!("virtio-vsock: connection cap reached; host client closed");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let events = EventSet::IN
                .union(EventSet::READ_HANG_UP)
                .union(EventSet::EDGE_TRIGGERED);
            if let Err(e) = ops.add(Events::new(&stream, events)) {
                crate::error_limited!("virtio-vsock: watching a host client: {e}");
                continue;
            }
            self.pending.insert(
                stream.as_raw_fd(),
                PendingClient {
                    stream,
                    line: Vec::new(),
                    since: Instant::now(),
                },
            );
        }
        // More may be waiting: the listener is level-triggered, so the loop comes back.
    }

    /// Reads a pending client's `CONNECT <port>\n`, a byte at a time so nothing past the
    /// newline (the connection's first data) is taken from the socket.
    fn read_connect_line(&mut self, fd: RawFd, ops: &mut EventOps) {
        let Some(client) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let outcome = loop {
            match client.stream.read(&mut byte) {
                Ok(0) => break Err("closed before its CONNECT line"),
                Ok(_) if byte[0] == b'\n' => break Ok(()),
                Ok(_) if client.line.len() >= MAX_CONNECT_LINE => {
                    break Err("CONNECT line too long")
                }
                Ok(_) => client.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break Err("read failed"),
            }
        };
        let client = self.pending.remove(&fd).expect("looked up above");
        let port = outcome.and_then(|()| parse_connect(&client.line).ok_or("not CONNECT <port>"));
        let port = match port {
            Ok(port) => port,
            Err(why) => {
                log::debug!("virtio-vsock: host client dropped: {why}");
                let _ = ops.remove(Events::empty(&client.stream));
                return;
            }
        };
        // Watched for writability too from now on (it was watched for the line only).
        if let Err(e) = ops.modify(Events::new(&client.stream, STREAM_EVENTS)) {
            crate::error_limited!("virtio-vsock: watching a host client: {e}");
            let _ = ops.remove(Events::empty(&client.stream));
            return;
        }
        let key = (self.allocate_local_port(), port);
        let mut conn = Connection::new(client.stream, ConnState::Connecting);
        conn.send_request = true;
        self.by_fd.insert(fd, key);
        self.connections.insert(key, conn);
    }

    /// A host port no connection uses.
    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            let used = self
                .connections
                .range((port, 0)..=(port, u32::MAX))
                .next()
                .is_some();
            if !used {
                return port;
            }
        }
    }

    fn host_event(&mut self, key: ConnKey, set: EventSet) {
        let Some(conn) = self.connections.get_mut(&key) else {
            return;
        };
        if set
            .intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR)
        {
            conn.host_readable = true;
        }
        if set.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            conn.flush_to_host();
        }
    }
}

/// `CONNECT <port>` (a trailing `\r` allowed).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

/// Connects to a Unix socket without waiting: a listener whose backlog is full refuses at once
/// rather than holding the event loop.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a socket just created and owned by nothing else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain old data; all zeroes is a valid (empty) value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // One byte is left for the terminating NUL.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes, alive for the call.
    let ret = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

impl MutEventSubscriber for VsockWorker {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let set = events.event_set();
        if fd == self.rxq.kick().as_raw_fd() {
            // Non-blocking: a spurious wake-up finds nothing to read, and that is fine.
            let _ = self.rxq.kick().read();
            self.take_rx_buffers();
        } else if fd == self.txq.kick().as_raw_fd() {
            let _ = self.txq.kick().read();
            self.process_tx(ops);
        } else if fd == self.listener.as_raw_fd() {
            self.accept_clients(ops);
        } else if let Some(timer) = self.timer.as_mut().filter(|t| t.as_raw_fd() == fd) {
            // Readable: the read returns the expirations at once.
            let _ = timer.wait();
            self.expire(ops);
        } else if self.pending.contains_key(&fd) {
            self.read_connect_line(fd, ops);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            self.host_event(key, set);
        } else {
            // Not ours any more: stop watching it.
            let _ = ops.remove(Events::empty_raw(fd));
        }
        self.fill_rx();
        self.sweep(ops);
        self.update_timer();
    }

    fn init(&mut self, ops: &mut EventOps) {
        let timer = self.timer.as_ref().map(|t| ("timer", t.as_raw_fd()));
        for (what, fd) in [
            ("rx kick", self.rxq.kick().as_raw_fd()),
            ("tx kick", self.txq.kick().as_raw_fd()),
            ("listener", self.listener.as_raw_fd()),
        ]
        .into_iter()
        .chain(timer)
        {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                crate::error_limited!("virtio-vsock: watching the {what}: {e}");
            }
        }
    }
}
