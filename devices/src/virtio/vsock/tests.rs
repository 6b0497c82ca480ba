//! The vsock device against the fake driver (test_utils) and real host Unix sockets.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventManager, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::*;
use super::*;
use crate::virtio::test_utils::{Desc, DriverQueue, GuestRam, InterruptRecorder};
use crate::virtio::{ActiveQueue, VirtioInterrupt};

const CID: u64 = 3;
const QUEUE: u16 = 64;
const RX_BUFFER: u32 = 4096;
const RAM: u64 = 32 << 20;
const RX_AREA: u64 = 0x10_0000;
const DATA_START: u64 = 0x80_0000;
const GUEST_BUF_ALLOC: u32 = 256 * 1024;

/// A fresh directory for this test's sockets.
fn socket_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "canto-vsock-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A packet the guest sent or got.
#[derive(Debug, Clone)]
struct Packet {
    header: Header,
    data: Vec<u8>,
}

/// The vsock device activated on fake rx/tx/event queues, on an event loop the test turns.
struct Rig {
    ram: GuestRam,
    rx: DriverQueue,
    tx: DriverQueue,
    manager: EventManager<SharedSubscriber>,
    rx_kick: EventFd,
    tx_kick: EventFd,
    /// Rx buffers offered so far (their heads are `offered % QUEUE`).
    offered: u64,
    rx_addr: HashMap<u16, u64>,
    path: PathBuf,
    dir: PathBuf,
    _vsock: Vsock,
}

impl Rig {
    fn new(name: &str) -> Rig {
        Rig::with(name, |v| v)
    }

    /// A rig whose device is adjusted by `adjust` before activation.
    fn with(name: &str, adjust: impl FnOnce(Vsock) -> Vsock) -> Rig {
        let dir = socket_dir(name);
        let path = dir.join("v.sock");
        let ram = GuestRam::new(RAM, DATA_START);
        let span = DriverQueue::span(QUEUE).next_multiple_of(4096);
        let rx = DriverQueue::at(0, QUEUE);
        let tx = DriverQueue::at(span, QUEUE);
        let event = DriverQueue::at(2 * span, QUEUE);
        let rx_kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let tx_kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt: Arc<dyn VirtioInterrupt> = Arc::new(InterruptRecorder::default());
        let mut vsock = adjust(Vsock::new(CID, &path).unwrap());
        let active = |index, driver: &DriverQueue, kick: &EventFd| ActiveQueue {
            index,
            queue: driver.device_queue(),
            kick: kick.try_clone().unwrap(),
        };
        let subscribers = vsock
            .activate(ActivateContext {
                mem: ram.mem.clone(),
                interrupt,
                queues: vec![
                    active(RX_QUEUE, &rx, &rx_kick),
                    active(TX_QUEUE, &tx, &tx_kick),
                    active(EVENT_QUEUE, &event, &EventFd::new(EFD_NONBLOCK).unwrap()),
                ],
                acked_features: VIRTIO_F_VERSION_1,
            })
            .unwrap();
        let mut manager = EventManager::new().unwrap();
        for subscriber in subscribers {
            manager.add_subscriber(subscriber);
        }
        let mut rig = Rig {
            ram,
            rx,
            tx,
            manager,
            rx_kick,
            tx_kick,
            offered: 0,
            rx_addr: HashMap::new(),
            path,
            dir,
            _vsock: vsock,
        };
        rig.offer_rx(16);
        rig
    }

    /// Turns the event loop until it has nothing more to do.
    fn run(&mut self) {
        for _ in 0..200 {
            if self.manager.run_with_timeout(20).unwrap() == 0 {
                return;
            }
        }
    }

    /// Offers `n` more rx buffers of [`RX_BUFFER`] bytes.
    fn offer_rx(&mut self, n: usize) {
        for _ in 0..n {
            let slot = (self.offered % u64::from(QUEUE)) as u16;
            let addr = RX_AREA + u64::from(slot) * u64::from(RX_BUFFER);
            let head = self
                .rx
                .add(&self.ram.mem, &[Desc::writable(addr, RX_BUFFER)]);
            assert_eq!(head, slot);
            self.rx_addr.insert(head, addr);
            self.offered += 1;
        }
        self.rx_kick.write(1).unwrap();
        self.run();
    }

    /// The packets the device put on the rx queue since the last look (buffers re-offered).
    fn received(&mut self) -> Vec<Packet> {
        self.run();
        let used = self.rx.take_used(&self.ram.mem);
        let mut packets = Vec::new();
        for (head, len) in &used {
            let addr = self.rx_addr[head];
            assert!(*len as usize >= HEADER_SIZE, "rx packet of {len} bytes");
            let mut raw = [0u8; HEADER_SIZE];
            self.ram
                .mem
                .read_slice(&mut raw, GuestAddress(addr))
                .unwrap();
            let header = Header::decode(&raw);
            assert_eq!(header.len as usize, *len as usize - HEADER_SIZE);
            let mut data = vec![0u8; header.len as usize];
            self.ram
                .mem
                .read_slice(&mut data, GuestAddress(addr + HEADER_SIZE as u64))
                .unwrap();
            packets.push(Packet { header, data });
        }
        if !used.is_empty() {
            self.offer_rx(used.len());
        }
        packets
    }

    /// Puts one chain on the tx queue and runs the device; returns the tx used length.
    fn send_raw(&mut self, descs: &[Desc]) {
        self.tx.add(&self.ram.mem, descs);
        self.tx_kick.write(1).unwrap();
        self.run();
    }

    fn send(&mut self, header: Header, data: &[u8]) {
        let mut bytes = header.encode().to_vec();
        bytes.extend_from_slice(data);
        let addr = self.ram.alloc_with(&bytes);
        self.send_raw(&[Desc::readable(addr, bytes.len() as u32)]);
        let used = self.tx.take_used(&self.ram.mem);
        assert_eq!(used.len(), 1, "the tx chain comes back");
    }

    /// Sends `op` from guest port `guest_port` to host port `host_port`.
    fn send_op(&mut self, op: u16, guest_port: u32, host_port: u32, fwd_cnt: u32) {
        self.send(guest_header(op, guest_port, host_port, fwd_cnt), &[]);
    }

    fn send_data(&mut self, guest_port: u32, host_port: u32, data: &[u8]) {
        let mut header = guest_header(OP_RW, guest_port, host_port, 0);
        header.len = data.len() as u32;
        self.send(header, data);
    }

    /// A host listener at `PATH_<port>`.
    fn host_listener(&self, port: u32) -> UnixListener {
        let mut path = self.path.clone().into_os_string();
        path.push(format!("_{port}"));
        UnixListener::bind(path).unwrap()
    }

    /// A guest-initiated connection from `guest_port` to a host listener on `host_port`,
    /// accepted: the host end.
    fn guest_connect(
        &mut self,
        listener: &UnixListener,
        guest_port: u32,
        host_port: u32,
    ) -> UnixStream {
        self.send_op(OP_REQUEST, guest_port, host_port, 0);
        let got = without_credit_updates(self.received());
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].header.op, OP_RESPONSE);
        assert_eq!(
            (got[0].header.src_port, got[0].header.dst_port),
            (host_port, guest_port)
        );
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    /// A host-initiated connection to guest `port`, answered by the guest: the host end and the
    /// host port it was given.
    fn host_connect(&mut self, port: u32) -> (UnixStream, u32) {
        let mut host = UnixStream::connect(&self.path).unwrap();
        host.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        let got = self.received();
        assert_eq!(got.len(), 1, "{got:?}");
        let request = got[0].header;
        assert_eq!(request.op, OP_REQUEST);
        assert_eq!((request.src_cid, request.dst_cid), (HOST_CID, CID));
        assert_eq!(request.dst_port, port);
        assert_eq!(request.buf_alloc, CONN_BUFFER_SIZE);
        let host_port = request.src_port;
        self.send_op(OP_RESPONSE, port, host_port, 0);
        let expected = format!("OK {host_port}\n");
        let mut line = vec![0u8; expected.len()];
        host.read_exact(&mut line).unwrap();
        assert_eq!(String::from_utf8(line).unwrap(), expected);
        (host, host_port)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A header from the guest.
fn guest_header(op: u16, guest_port: u32, host_port: u32, fwd_cnt: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: guest_port,
        dst_port: host_port,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF_ALLOC,
        fwd_cnt,
    }
}

/// Reads what the host end has, waiting up to `len` bytes (or EOF).
fn read_n(stream: &mut UnixStream, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    stream.read_exact(&mut out).unwrap();
    out
}

/// The host end sees the connection end: EOF, or a reset when the device closed it with bytes
/// unread.
fn assert_closed(stream: &mut UnixStream, what: &str) {
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("{what}: {other:?}"),
    }
}

/// The packets other than credit updates (which the device sends whenever it forwarded bytes).
fn without_credit_updates(packets: Vec<Packet>) -> Vec<Packet> {
    packets
        .into_iter()
        .filter(|p| p.header.op != OP_CREDIT_UPDATE)
        .collect()
}

fn data_of(packets: &[Packet]) -> Vec<u8> {
    packets
        .iter()
        .filter(|p| p.header.op == OP_RW)
        .flat_map(|p| p.data.clone())
        .collect()
}

#[test]
fn host_connects_and_data_flows_both_ways() {
    let mut rig = Rig::new("host-connect");
    let (mut host, host_port) = rig.host_connect(52);
    assert!(host_port >= 1 << 30);

    host.write_all(b"hello guest").unwrap();
    let got = rig.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let header = got[0].header;
    assert_eq!(header.op, OP_RW);
    assert_eq!((header.src_port, header.dst_port), (host_port, 52));
    assert_eq!(got[0].data, b"hello guest");

    rig.send_data(52, host_port, b"hello host");
    assert_eq!(read_n(&mut host, 10), b"hello host");
}

#[test]
fn bytes_sent_before_the_ok_are_not_lost() {
    let mut rig = Rig::new("early-bytes");
    let mut host = UnixStream::connect(&rig.path).unwrap();
    host.write_all(b"CONNECT 7\nearly").unwrap();
    let got = rig.received();
    let request = got[0].header;
    assert_eq!((request.op, request.dst_port), (OP_REQUEST, 7));
    rig.send_op(OP_RESPONSE, 7, request.src_port, 0);
    let got = rig.received();
    assert_eq!(data_of(&got), b"early");
}

#[test]
fn guest_connects_to_host_port_socket() {
    let mut rig = Rig::new("guest-connect");
    let listener = rig.host_listener(1234);
    let mut host = rig.guest_connect(&listener, 5000, 1234);
    rig.send_data(5000, 1234, b"ping");
    assert_eq!(read_n(&mut host, 4), b"ping");
    host.write_all(b"pong").unwrap();
    let got = rig.received();
    assert_eq!(data_of(&got), b"pong");
    assert_eq!(got[0].header.buf_alloc, CONN_BUFFER_SIZE);
    // 4 bytes forwarded to the host peer so far.
    assert_eq!(got[0].header.fwd_cnt, 4);
}

#[test]
fn guest_credit_exhaustion_holds_host_data() {
    let mut rig = Rig::new("credit");
    let listener = rig.host_listener(80);
    // The guest offers a 16-byte receive buffer.
    let mut request = guest_header(OP_REQUEST, 9, 80, 0);
    request.buf_alloc = 16;
    rig.send(request, &[]);
    assert_eq!(rig.received()[0].header.op, OP_RESPONSE);
    let (mut host, _) = listener.accept().unwrap();
    host.write_all(&[7u8; 100]).unwrap();
    let got = rig.received();
    assert_eq!(data_of(&got).len(), 16, "only the guest's credit is sent");
    assert!(rig.received().is_empty(), "nothing more without credit");
    // The guest consumed 16 bytes: 16 more.
    let mut update = guest_header(OP_CREDIT_UPDATE, 9, 80, 16);
    update.buf_alloc = 16;
    rig.send(update, &[]);
    assert_eq!(data_of(&rig.received()).len(), 16);
    // A bigger buffer: the rest, in rx-buffer-sized packets at most.
    let mut update = guest_header(OP_CREDIT_UPDATE, 9, 80, 32);
    update.buf_alloc = 1 << 20;
    rig.send(update, &[]);
    assert_eq!(data_of(&rig.received()), vec![7u8; 68]);
}

#[test]
fn credit_request_gets_an_update_and_a_guest_past_its_credit_is_reset() {
    let mut rig = Rig::new("overrun");
    let listener = rig.host_listener(81);
    let host = rig.guest_connect(&listener, 10, 81);
    rig.send_op(OP_CREDIT_REQUEST, 10, 81, 0);
    let got = rig.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header.op, OP_CREDIT_UPDATE);
    assert_eq!(got[0].header.buf_alloc, CONN_BUFFER_SIZE);
    // The host peer never reads: once its socket is full the device holds the guest's bytes,
    // at most its buffer; the guest keeps sending full packets regardless.
    let chunk = vec![1u8; MAX_PACKET_DATA as usize];
    let mut reset = false;
    for _ in 0..64 {
        rig.send_data(10, 81, &chunk);
        let got = rig.received();
        if got.iter().any(|p| p.header.op == OP_RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "a guest sending past its credit is reset");
    drop(host);
}

#[test]
fn unknown_ports_get_rst() {
    let mut rig = Rig::new("unknown");
    // No listener at PATH_999.
    rig.send_op(OP_REQUEST, 20, 999, 0);
    let got = rig.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header.op, OP_RST);
    assert_eq!((got[0].header.src_port, got[0].header.dst_port), (999, 20));
    assert_eq!(got[0].header.dst_cid, CID);
    // Data or a credit update for no connection.
    rig.send_data(21, 1000, b"x");
    rig.send_op(OP_CREDIT_UPDATE, 22, 1000, 0);
    let got = rig.received();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|p| p.header.op == OP_RST));
    // An RST for nothing gets nothing back.
    rig.send_op(OP_RST, 23, 1000, 0);
    assert!(rig.received().is_empty());
}

#[test]
fn bad_packets_are_refused_and_the_device_keeps_serving() {
    let mut rig = Rig::new("bad");
    // A header cut short: dropped, the chain returned.
    let addr = rig.ram.alloc_with(&[0u8; 20]);
    rig.send_raw(&[Desc::readable(addr, 20)]);
    assert_eq!(rig.tx.take_used(&rig.ram.mem).len(), 1);
    assert!(rig.received().is_empty());
    // A writable-only tx chain: refused by the walk, returned.
    let addr = rig.ram.alloc(64);
    rig.send_raw(&[Desc::writable(addr, 64)]);
    assert_eq!(rig.tx.take_used(&rig.ram.mem).len(), 1);
    assert!(rig.received().is_empty());

    let listener = rig.host_listener(82);
    let mut host = rig.guest_connect(&listener, 30, 82);
    // A wrong socket type, to a new port: RST.
    let mut header = guest_header(OP_REQUEST, 31, 82, 0);
    header.type_ = 2;
    rig.send(header, &[]);
    // Another CID than the host: RST.
    let mut header = guest_header(OP_REQUEST, 32, 82, 0);
    header.dst_cid = 7;
    rig.send(header, &[]);
    // An unknown op.
    rig.send_op(99, 33, 82, 0);
    let got = rig.received();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|p| p.header.op == OP_RST));
    // A len past the buffer, on the live connection: it is reset.
    let mut header = guest_header(OP_RW, 30, 82, 0);
    header.len = 100;
    rig.send(header, b"only ten!!");
    let got = rig.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header.op, OP_RST);
    assert_eq!((got[0].header.src_port, got[0].header.dst_port), (82, 30));
    let mut buf = [0u8; 8];
    assert_eq!(
        host.read(&mut buf).unwrap(),
        0,
        "the host peer sees the end"
    );
    // And the device still serves.
    let _host = rig.guest_connect(&listener, 34, 82);
}

#[test]
fn orderly_shutdown_both_ways() {
    let mut rig = Rig::new("shutdown");
    let listener = rig.host_listener(83);
    let mut host = rig.guest_connect(&listener, 40, 83);
    // The host peer is done sending: the guest gets SHUTDOWN SEND after the data.
    host.write_all(b"last words").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    let got = rig.received();
    assert_eq!(data_of(&got), b"last words");
    let shutdown = got.iter().find(|p| p.header.op == OP_SHUTDOWN).unwrap();
    assert_eq!(shutdown.header.flags, SHUTDOWN_SEND);
    // The guest still sends, then closes: its data reaches the host, then RST and EOF.
    rig.send_data(40, 83, b"reply");
    let mut header = guest_header(OP_SHUTDOWN, 40, 83, 10);
    header.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    rig.send(header, &[]);
    let got = without_credit_updates(rig.received());
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].header.op, OP_RST);
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"reply");
    // The connection is gone: more data for it is answered with RST.
    rig.send_data(40, 83, b"late");
    assert_eq!(rig.received()[0].header.op, OP_RST);
}

#[test]
fn guest_shutdown_send_is_eof_to_the_host_peer() {
    let mut rig = Rig::new("half-close");
    let (mut host, host_port) = rig.host_connect(60);
    rig.send_data(60, host_port, b"bye");
    let mut header = guest_header(OP_SHUTDOWN, 60, host_port, 0);
    header.flags = SHUTDOWN_SEND;
    rig.send(header, &[]);
    let mut all = Vec::new();
    host.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"bye");
    // The host can still send.
    host.write_all(b"ack").unwrap();
    assert_eq!(data_of(&rig.received()), b"ack");
}

#[test]
fn guest_rst_closes_the_host_stream() {
    let mut rig = Rig::new("rst");
    let (mut host, host_port) = rig.host_connect(61);
    rig.send_op(OP_RST, 61, host_port, 0);
    let mut buf = [0u8; 4];
    assert_eq!(host.read(&mut buf).unwrap(), 0);
    // A refused host connection: the guest answers the REQUEST with RST; the client sees EOF.
    let mut client = UnixStream::connect(&rig.path).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"CONNECT 62\n").unwrap();
    let request = rig.received()[0].header;
    rig.send_op(OP_RST, 62, request.src_port, 0);
    assert_eq!(client.read(&mut buf).unwrap(), 0);
}

#[test]
fn bad_connect_lines_are_dropped() {
    let mut rig = Rig::new("bad-line");
    for line in [&b"HELLO 5\n"[..], b"CONNECT x\n", &[b'C'; 40]] {
        let mut client = UnixStream::connect(&rig.path).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.write_all(line).unwrap();
        rig.run();
        assert_closed(&mut client, &format!("{line:?}"));
    }
    assert!(rig.received().is_empty());
}

/// Turns the event loop until `done` (at most 10 s, far past the 100 ms timeouts used).
fn run_until(rig: &mut Rig, mut done: impl FnMut(&mut Rig) -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        rig.manager.run_with_timeout(50).unwrap();
        if done(rig) {
            return true;
        }
    }
    false
}

fn is_closed(stream: &mut UnixStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    let closed = match stream.read(&mut buf) {
        Ok(0) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
        Ok(_) => false,
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

#[test]
fn silent_host_clients_and_silent_guests_time_out() {
    let short = Duration::from_millis(100);
    let mut rig = Rig::with("timeouts", |v| v.with_timeouts(short, short));
    // A client that never finishes its line.
    let mut silent = UnixStream::connect(&rig.path).unwrap();
    silent.write_all(b"CONNE").unwrap();
    // A client whose guest never answers the REQUEST.
    let mut unanswered = UnixStream::connect(&rig.path).unwrap();
    unanswered.write_all(b"CONNECT 52\n").unwrap();
    // (On a slow machine the RST may already follow the REQUEST here.)
    let mut got = rig.received();
    let request = got.iter().find(|p| p.header.op == OP_REQUEST).unwrap();
    let host_port = request.header.src_port;
    assert!(
        run_until(&mut rig, |_| is_closed(&mut silent)),
        "the silent client is closed"
    );
    assert!(
        run_until(&mut rig, |_| is_closed(&mut unanswered)),
        "the unanswered client is closed"
    );
    // The guest hears the connection is gone.
    got.extend(rig.received());
    assert!(
        got.iter()
            .any(|p| p.header.op == OP_RST && p.header.src_port == host_port),
        "{got:?}"
    );
    // The device still serves (a guest connection: no timeout involved, so no race with a slow
    // test machine).
    let listener = rig.host_listener(87);
    let mut host = rig.guest_connect(&listener, 53, 87);
    rig.send_data(53, 87, b"ok");
    assert_eq!(read_n(&mut host, 2), b"ok");
}

#[test]
fn connections_are_capped() {
    let mut rig = Rig::new("cap");
    let listener = rig.host_listener(84);
    listener.set_nonblocking(true).unwrap();
    rig.offer_rx(usize::from(QUEUE) - 16);
    let mut responses = 0;
    let mut resets = 0;
    for port in 0..MAX_CONNECTIONS as u32 + 2 {
        rig.send_op(OP_REQUEST, 100 + port, 84, 0);
        for p in rig.received() {
            match p.header.op {
                OP_RESPONSE => responses += 1,
                OP_RST => resets += 1,
                op => panic!("op {op}"),
            }
        }
    }
    assert_eq!(responses, MAX_CONNECTIONS);
    assert_eq!(resets, 2);
    // A host client over the cap is closed at once.
    let mut client = UnixStream::connect(&rig.path).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"CONNECT 1\n").unwrap();
    rig.run();
    assert_closed(&mut client, "over the cap");
    // One closes (guest RST): a new one fits.
    rig.send_op(OP_RST, 100, 84, 0);
    rig.send_op(OP_REQUEST, 500, 84, 0);
    assert_eq!(rig.received()[0].header.op, OP_RESPONSE);
}

/// Sends the guest's data on `(guest_port, host_port)` as fast as the device's credit allows
/// while the host peer does not read, until the credit is gone; returns the bytes sent.
fn send_until_no_credit(rig: &mut Rig, guest_port: u32, host_port: u32) -> usize {
    let mut sent = 0usize;
    let mut fwd_cnt = 0u32;
    for _ in 0..1000 {
        let credit = CONN_BUFFER_SIZE as usize - (sent - fwd_cnt as usize);
        if credit == 0 {
            return sent;
        }
        let chunk = vec![(sent % 251) as u8; credit.min(MAX_PACKET_DATA as usize)];
        rig.send_data(guest_port, host_port, &chunk);
        sent += chunk.len();
        for p in rig.received() {
            assert_eq!(p.header.op, OP_CREDIT_UPDATE, "{p:?}");
            fwd_cnt = fwd_cnt.max(p.header.fwd_cnt);
        }
    }
    panic!("the device kept granting credit to a host peer that does not read");
}

#[test]
fn a_stalled_host_peer_does_not_hold_the_others() {
    let mut rig = Rig::new("stall");
    let listener = rig.host_listener(85);
    // The first host peer does not read; the guest fills its socket and then the device's
    // buffer, within its credit.
    let mut stalled = rig.guest_connect(&listener, 50, 85);
    let sent = send_until_no_credit(&mut rig, 50, 85);
    assert!(sent >= CONN_BUFFER_SIZE as usize);
    // The second connection still works both ways.
    let mut other = rig.guest_connect(&listener, 51, 85);
    rig.send_data(51, 85, b"through");
    assert_eq!(read_n(&mut other, 7), b"through");
    other.write_all(b"back").unwrap();
    assert_eq!(data_of(&rig.received()), b"back");
    // The stalled peer reads at last: everything arrives, and the guest hears of the room.
    let mut all = Vec::new();
    let mut updates = 0;
    while all.len() < sent {
        let mut buf = vec![0u8; 256 * 1024];
        let n = stalled.read(&mut buf).unwrap();
        assert!(n > 0);
        all.extend_from_slice(&buf[..n]);
        updates += rig.received().len();
    }
    assert_eq!(all.len(), sent);
    assert!(updates > 0, "credit updates once the host peer drained");
}

/// The same for a host-initiated connection (its socket was first watched for the CONNECT line
/// only): once its peer reads again the device's buffer drains.
#[test]
fn a_host_client_that_stalls_gets_everything_once_it_reads() {
    let mut rig = Rig::new("stall-host");
    let (mut host, host_port) = rig.host_connect(90);
    let sent = send_until_no_credit(&mut rig, 90, host_port);
    let mut all = Vec::new();
    while all.len() < sent {
        let mut buf = vec![0u8; 256 * 1024];
        let n = host.read(&mut buf).unwrap();
        assert!(n > 0);
        all.extend_from_slice(&buf[..n]);
        rig.received();
    }
    assert_eq!(all.len(), sent);
}

#[test]
fn config_space_and_activation() {
    let dir = socket_dir("config");
    let path = dir.join("v.sock");
    let mut vsock = Vsock::new(0x1234_5678, &path).unwrap();
    assert_eq!(vsock.device_type(), 19);
    assert_eq!(vsock.queue_max_sizes().len(), 3);
    let mut config = [0xffu8; 12];
    vsock.read_config(0, &mut config);
    assert_eq!(config, [0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut high = [0xffu8; 2];
    vsock.read_config(u64::MAX, &mut high);
    assert_eq!(high, [0, 0]);
    let ram = GuestRam::new(0x10_0000, 0x8_0000);
    let interrupt: Arc<dyn VirtioInterrupt> = Arc::new(InterruptRecorder::default());
    let queue = |index| ActiveQueue {
        index,
        queue: Queue::new(16).unwrap(),
        kick: EventFd::new(0).unwrap(),
    };
    let ctx = |queues| ActivateContext {
        mem: ram.mem.clone(),
        interrupt: interrupt.clone(),
        queues,
        acked_features: VIRTIO_F_VERSION_1,
    };
    assert!(vsock.activate(ctx(vec![queue(0), queue(1)])).is_err());
    assert!(vsock
        .activate(ctx(vec![queue(0), queue(0), queue(2)]))
        .is_err());
    assert!(vsock
        .activate(ctx(vec![queue(0), queue(1), queue(5)]))
        .is_err());
    assert_eq!(
        vsock
            .activate(ctx(vec![queue(2), queue(0), queue(1)]))
            .unwrap()
            .len(),
        1
    );
    vsock.reset();
    drop(vsock);
    assert!(!path.exists(), "the socket file is removed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_user_input_is_one_line() {
    let dir = socket_dir("input");
    let path = dir.join("v.sock");
    for cid in [0, 1, 2] {
        let e = Vsock::new(cid, &path).err().unwrap().to_string();
        assert!(e.contains("reserved"), "{e}");
    }
    assert!(Vsock::new(1 << 32, &path).is_err());
    // In use by a live device.
    let live = Vsock::new(3, &path).unwrap();
    let e = Vsock::new(4, &path).err().unwrap().to_string();
    assert!(e.contains("in use"), "{e}");
    assert!(!e.contains('\n'));
    drop(live);
    // A stale socket file (its program gone) is replaced.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let again = Vsock::new(3, &path).unwrap();
    drop(again);
    // A path that cannot be created; a regular file in the way.
    let e = Vsock::new(3, Path::new("/nonexistent-dir/v.sock"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("cannot create socket"), "{e}");
    let file = dir.join("file");
    std::fs::write(&file, b"").unwrap();
    assert!(Vsock::new(3, &file).is_err());
    assert!(file.exists(), "a file that is not a socket is left alone");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn host_socket_errors_do_not_reach_the_loop() {
    // Writing into a host peer that went away resets the connection, nothing else.
    let mut rig = Rig::new("gone");
    let listener = rig.host_listener(86);
    let host = rig.guest_connect(&listener, 70, 86);
    drop(host);
    rig.send_data(70, 86, b"into the void");
    let got = rig.received();
    assert!(
        got.iter()
            .any(|p| p.header.op == OP_RST || p.header.op == OP_SHUTDOWN),
        "{got:?}"
    );
    let _ = ErrorKind::BrokenPipe;
}
