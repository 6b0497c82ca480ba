//! virtio-blk on the fake driver (test_utils): every request type, every malformed request, and
//! the device going on serving after each; the disk checks at start-up.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_RO};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::*;
use super::*;
use crate::virtio::test_utils::{Desc, DriverQueue, GuestRam, InterruptRecorder};
use crate::virtio::{ActiveQueue, VirtioDevice};

/// The test guest's RAM.
const RAM: u64 = 0x100_0000;

/// Sectors in the test disk; sector `s` holds bytes `(s * 7 + i) as u8`.
const SECTORS: u64 = 64;

fn pattern(sector: u64) -> Vec<u8> {
    (0..SECTOR_SIZE).map(|i| (sector * 7 + i) as u8).collect()
}

/// A disk image in the temp directory, removed when dropped.
struct TempDisk(PathBuf);

impl TempDisk {
    fn new(name: &str, len: u64) -> TempDisk {
        let path = std::env::temp_dir().join(format!(
            "canto-blk-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let data: Vec<u8> = (0..len / SECTOR_SIZE).flat_map(pattern).collect();
        let mut data = data;
        data.resize(len as usize, 0xee);
        std::fs::write(&path, data).unwrap();
        TempDisk(path)
    }

    fn config(&self, readonly: bool) -> DiskConfig {
        DiskConfig {
            path: self.0.clone(),
            readonly,
            id: Some("canto-test-disk".into()),
        }
    }

    fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }

    fn sector(&self, s: u64) -> Vec<u8> {
        let all = self.contents();
        all[(s * SECTOR_SIZE) as usize..((s + 1) * SECTOR_SIZE) as usize].to_vec()
    }
}

impl Drop for TempDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A header: type, reserved, sector.
fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

/// The device activated on a 16-entry queue, its worker running.
struct Rig {
    ram: GuestRam,
    driver: DriverQueue,
    kick: EventFd,
    interrupt: Arc<InterruptRecorder>,
    block: Block,
}

impl Rig {
    fn start(disk: &TempDisk, readonly: bool) -> Rig {
        Rig::with_features(disk, readonly, None)
    }

    /// `features`: what the driver accepts (default: everything offered).
    fn with_features(disk: &TempDisk, readonly: bool, features: Option<u64>) -> Rig {
        let ram = GuestRam::new(RAM, 0x1_0000);
        let driver = DriverQueue::at(0, 16);
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(InterruptRecorder::default());
        let mut block = Block::new(DiskFile::open(&disk.config(readonly)).unwrap());
        let acked = features.unwrap_or(block.features());
        let subscribers = block
            .activate(ActivateContext {
                mem: ram.mem.clone(),
                interrupt: interrupt.clone(),
                queues: vec![ActiveQueue {
                    index: 0,
                    queue: driver.device_queue(),
                    kick: kick.try_clone().unwrap(),
                }],
                acked_features: acked,
            })
            .unwrap();
        assert!(subscribers.is_empty(), "disk I/O stays off the event loop");
        Rig {
            ram,
            driver,
            kick,
            interrupt,
            block,
        }
    }

    /// Makes the chain available, kicks, waits for its used entry: (used len, status byte).
    fn submit(&mut self, descs: &[Desc], status_at: Option<u64>) -> (u32, Option<u8>) {
        let head = self.driver.add(&self.ram.mem, descs);
        self.kick.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some((id, len)) = self.driver.pop_used(&self.ram.mem) {
                assert_eq!(id, head);
                let status = status_at.map(|at| self.read(at, 1)[0]);
                return (len, status);
            }
            assert!(Instant::now() < deadline, "no used entry within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        vm_memory::Bytes::read_slice(&self.ram.mem, &mut buf, vm_memory::GuestAddress(addr))
            .unwrap();
        buf
    }

    /// A status byte buffer, preset to 0xff so a missing write shows.
    fn status(&mut self) -> u64 {
        self.ram.alloc_with(&[0xff])
    }

    /// A read of `sectors` at `sector` into one buffer: (used len, status, data).
    fn read_sectors(&mut self, sector: u64, sectors: u64) -> (u32, u8, Vec<u8>) {
        let h = self.ram.alloc_with(&header(VIRTIO_BLK_T_IN, sector));
        let len = sectors * SECTOR_SIZE;
        let data = self.ram.alloc_with(&vec![0xaa; len as usize]);
        let st = self.status();
        let (used, status) = self.submit(
            &[
                Desc::readable(h, 16),
                Desc::writable(data, len as u32),
                Desc::writable(st, 1),
            ],
            Some(st),
        );
        (used, status.unwrap(), self.read(data, len as usize))
    }

    /// A write of `data` at `sector`: (used len, status).
    fn write_sectors(&mut self, sector: u64, data: &[u8]) -> (u32, u8) {
        let h = self.ram.alloc_with(&header(VIRTIO_BLK_T_OUT, sector));
        let d = self.ram.alloc_with(data);
        let st = self.status();
        let (used, status) = self.submit(
            &[
                Desc::readable(h, 16),
                Desc::readable(d, data.len() as u32),
                Desc::writable(st, 1),
            ],
            Some(st),
        );
        (used, status.unwrap())
    }

    /// A request of just a header (FLUSH, GET_ID without data, unknown types).
    fn header_only(&mut self, kind: u32, sector: u64) -> (u32, u8) {
        let h = self.ram.alloc_with(&header(kind, sector));
        let st = self.status();
        let (used, status) = self.submit(&[Desc::readable(h, 16), Desc::writable(st, 1)], Some(st));
        (used, status.unwrap())
    }

    /// The device still serves: a read of sector 1 comes back right.
    fn still_serves(&mut self) {
        let (used, status, data) = self.read_sectors(1, 1);
        assert_eq!((used, status), (513, VIRTIO_BLK_S_OK));
        assert_eq!(data, pattern(1));
    }
}

#[test]
fn reads_sectors_with_the_data_length_as_used_len() {
    let disk = TempDisk::new("read", SECTORS * SECTOR_SIZE);
    let mut rig = Rig::start(&disk, false);
    let (used, status, data) = rig.read_sectors(3, 2);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert_eq!(used, 2 * 512 + 1, "data and status byte");
    assert_eq!(data, [pattern(3), pattern(4)].concat());
    // The last sector of the disk is in range.
    let (used, status, data) = rig.read_sectors(SECTORS - 1, 1);
    assert_eq!((used, status), (513, VIRTIO_BLK_S_OK));
    assert_eq!(data, pattern(SECTORS - 1));
    assert!(rig.interrupt.count(0) >= 1);
}

/// A request of several host I/O calls (`IO_CHUNK` each, the last call's vector cut inside a
/// descriptor) moves every byte, both ways.
#[test]
fn requests_larger_than_one_host_call_move_every_byte() {
    let sectors = 8 << 11; // 8 MiB
    let disk = TempDisk::new("large", sectors * SECTOR_SIZE);
    let mut rig = Rig::start(&disk, false);
    let len = 3 * disk::IO_CHUNK as u64 + 512;
    let first = (disk::IO_CHUNK + disk::IO_CHUNK / 2) as u32;
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_IN, 1));
    let a = rig.ram.alloc(u64::from(first));
    let b = rig.ram.alloc(len - u64::from(first));
    let st = rig.status();
    let (used, status) = rig.submit(
        &[
            Desc::readable(h, 16),
            Desc::writable(a, first),
            Desc::writable(b, (len - u64::from(first)) as u32),
            Desc::writable(st, 1),
        ],
        Some(st),
    );
    assert_eq!((used, status), (len as u32 + 1, Some(VIRTIO_BLK_S_OK)));
    let file = disk.contents();
    let want = &file[512..512 + len as usize];
    let got = [
        rig.read(a, first as usize),
        rig.read(b, (len - u64::from(first)) as usize),
    ]
    .concat();
    assert!(got == want, "the read differs from the file");
    // The same bytes, written back one sector further on.
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_OUT, 2));
    let st = rig.status();
    let (used, status) = rig.submit(
        &[
            Desc::readable(h, 16),
            Desc::readable(a, first),
            Desc::readable(b, (len - u64::from(first)) as u32),
            Desc::writable(st, 1),
        ],
        Some(st),
    );
    assert_eq!((used, status), (1, Some(VIRTIO_BLK_S_OK)));
    let file = disk.contents();
    assert!(
        &file[1024..1024 + len as usize] == want,
        "the write differs"
    );
}

#[test]
fn data_split_anyhow_over_descriptors_is_one_stream() {
    let disk = TempDisk::new("split", SECTORS * SECTOR_SIZE);
    let mut rig = Rig::start(&disk, false);
    // A write: header and data in one descriptor, the data then split 100 / 924.
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 13 % 251) as u8).collect();
    let mut first = header(VIRTIO_BLK_T_OUT, 10);
    first.extend_from_slice(&data[..100]);
    let a = rig.ram.alloc_with(&first);
    let b = rig.ram.alloc_with(&data[100..]);
    let st = rig.status();
    let (used, status) = rig.submit(
        &[
            Desc::readable(a, first.len() as u32),
            Desc::readable(b, 924),
            Desc::writable(st, 1),
        ],
        Some(st),
    );
    assert_eq!((used, status), (1, Some(VIRTIO_BLK_S_OK)));
    assert_eq!([disk.sector(10), disk.sector(11)].concat(), data);
    // A read whose last data descriptor also holds the status byte.
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_IN, 10));
    let x = rig.ram.alloc(300);
    let y = rig.ram.alloc(725);
    let (used, _) = rig.submit(
        &[
            Desc::readable(h, 16),
            Desc::writable(x, 300),
            Desc::writable(y, 725),
        ],
        None,
    );
    assert_eq!(used, 1025);
    assert_eq!([rig.read(x, 300), rig.read(y, 724)].concat(), data);
    assert_eq!(rig.read(y + 724, 1), [VIRTIO_BLK_S_OK]);
}

#[test]
fn writes_reach_the_file_and_flush_succeeds() {
    let disk = TempDisk::new("write", SECTORS * SECTOR_SIZE);
    let mut rig = Rig::start(&disk, false);
    let data = vec![0x5a; 512];
    assert_eq!(rig.write_sectors(5, &data), (1, VIRTIO_BLK_S_OK));
    assert_eq!(disk.sector(5), data);
    assert_eq!(disk.sector(4), pattern(4), "the neighbours are untouched");
    assert_eq!(disk.sector(6), pattern(6));
    assert_eq!(rig.header_only(VIRTIO_BLK_T_FLUSH, 0), (1, VIRTIO_BLK_S_OK));
    let (_, _, back) = rig.read_sectors(5, 1);
    assert_eq!(back, data);
}

#[test]
fn get_id_answers_the_serial_in_20_bytes() {
    let disk = TempDisk::new("id", SECTORS * SECTOR_SIZE);
    let mut rig = Rig::start(&disk, false);
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_GET_ID, 0));
    let id = rig.ram.alloc_with(&[0xff; 20]);
    let st = rig.status();
    let (used, status) = rig.submit(
        &[
            Desc::readable(h, 16),
            Desc::writable(id, 20),
            Desc::writable(st, 1),
        ],
        Some(st),
    );
    assert_eq!((used, status), (21, Some(VIRTIO_BLK_S_OK)));
    let mut want = b"canto-test-disk".to_vec();
    want.resize(20, 0);
    assert_eq!(rig.read(id, 20), want);
    // A larger buffer gets 20 bytes, a smaller one what fits.
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_GET_ID, 0));
    let small = rig.ram.alloc_with(&[0xff; 5]);
    let (used, _) = rig.submit(&[Desc::readable(h, 16), Desc::writable(small, 6)], None);
    assert_eq!(used, 6);
    assert_eq!(rig.read(small, 5), b"canto");
}

#[test]
fn out_of_range_and_overflowing_sectors_are_ioerr() {
    let disk = TempDisk::new("range", SECTORS * SECTOR_SIZE);
    let before = disk.contents();
    let mut rig = Rig::start(&disk, false);
    // One sector past the end, and two sectors starting at the last one.
    for (sector, sectors) in [(SECTORS, 1), (SECTORS - 1, 2)] {
        let (used, status, data) = rig.read_sectors(sector, sectors);
        assert_eq!((used, status), (1, VIRTIO_BLK_S_IOERR), "read at {sector}");
        assert!(data.iter().all(|b| *b == 0xaa), "the buffer is untouched");
        assert_eq!(
            rig.write_sectors(sector, &vec![1; (sectors * 512) as usize]),
            (1, VIRTIO_BLK_S_IOERR),
            "write at {sector}"
        );
    }
    // sector * 512 overflows; sector * 512 + len overflows.
    for sector in [u64::MAX, u64::MAX / 512 + 1, u64::MAX / 512] {
        let (used, status, _) = rig.read_sectors(sector, 1);
        assert_eq!((used, status), (1, VIRTIO_BLK_S_IOERR), "sector {sector}");
        assert_eq!(
            rig.write_sectors(sector, &[2; 512]),
            (1, VIRTIO_BLK_S_IOERR)
        );
    }
    assert_eq!(disk.contents(), before);
    rig.still_serves();
}

#[test]
fn data_that_is_not_whole_sectors_is_ioerr() {
    let disk = TempDisk::new("partial", SECTORS * SECTOR_SIZE);
    let before = disk.contents();
    let mut rig = Rig::start(&disk, false);
    assert_eq!(rig.write_sectors(2, &[3; 100]), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(rig.write_sectors(2, &[3; 513]), (1, VIRTIO_BLK_S_IOERR));
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_IN, 2));
    let d = rig.ram.alloc_with(&[0xaa; 511]);
    let st = rig.status();
    let (used, status) = rig.submit(
        &[
            Desc::readable(h, 16),
            Desc::writable(d, 511),
            Desc::writable(st, 1),
        ],
        Some(st),
    );
    assert_eq!((used, status), (1, Some(VIRTIO_BLK_S_IOERR)));
    assert_eq!(disk.contents(), before);
    rig.still_serves();
}

#[test]
fn writes_to_a_read_only_disk_are_ioerr_and_leave_the_file() {
    let disk = TempDisk::new("ro", SECTORS * SECTOR_SIZE);
    let before = disk.contents();
    let mut rig = Rig::start(&disk, true);
    assert_ne!(rig.block.features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(
        rig.block.features() & (1 << VIRTIO_BLK_F_DISCARD),
        0,
        "no discard on a read-only disk"
    );
    assert_eq!(rig.write_sectors(0, &[9; 512]), (1, VIRTIO_BLK_S_IOERR));
    // Write-zeroes and discard were not offered: UNSUPP.
    let mut req = header(VIRTIO_BLK_T_WRITE_ZEROES, 0);
    req.extend_from_slice(&0u64.to_le_bytes());
    req.extend_from_slice(&1u32.to_le_bytes());
    req.extend_from_slice(&0u32.to_le_bytes());
    let r = rig.ram.alloc_with(&req);
    let st = rig.status();
    let (used, status) = rig.submit(&[Desc::readable(r, 32), Desc::writable(st, 1)], Some(st));
    assert_eq!((used, status), (1, Some(VIRTIO_BLK_S_UNSUPP)));
    assert_eq!(rig.header_only(VIRTIO_BLK_T_FLUSH, 0), (1, VIRTIO_BLK_S_OK));
    assert_eq!(disk.contents(), before);
    rig.still_serves();
}

#[test]
fn unknown_types_are_unsupp() {
    let disk = TempDisk::new("unknown", SECTORS * SECTOR_SIZE);
    let mut rig = Rig::start(&disk, false);
    // SCSI, GET_LIFETIME, SECURE_ERASE, a zone command, nonsense.
    for kind in [2, 10, 14, 16, 0xdead_beef] {
        assert_eq!(
            rig.header_only(kind, 0),
            (1, VIRTIO_BLK_S_UNSUPP),
            "type {kind}"
        );
    }
    rig.still_serves();
}

#[test]
fn a_request_without_a_writable_status_byte_comes_back_empty() {
    let disk = TempDisk::new("nostatus", SECTORS * SECTOR_SIZE);
    let before = disk.contents();
    let mut rig = Rig::start(&disk, false);
    // A write whose "status" descriptor is device-readable: nothing is written anywhere.
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_OUT, 0));
    let d = rig.ram.alloc_with(&[7; 512]);
    let st = rig.status();
    let (used, status) = rig.submit(
        &[
            Desc::readable(h, 16),
            Desc::readable(d, 512),
            Desc::readable(st, 1),
        ],
        Some(st),
    );
    assert_eq!((used, status), (0, Some(0xff)));
    // A status descriptor outside RAM: the whole chain is refused.
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_OUT, 0));
    let (used, _) = rig.submit(
        &[
            Desc::readable(h, 16),
            Desc::readable(d, 512),
            Desc::writable(RAM, 1),
        ],
        None,
    );
    assert_eq!(used, 0);
    // A readable descriptor after the writable status: refused too.
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_OUT, 0));
    let (used, status) = rig.submit(
        &[
            Desc::readable(h, 16),
            Desc::writable(st, 1),
            Desc::readable(d, 512),
        ],
        Some(st),
    );
    assert_eq!((used, status), (0, Some(0xff)));
    assert_eq!(disk.contents(), before);
    rig.still_serves();
}

#[test]
fn a_short_or_writable_header_is_ioerr() {
    let disk = TempDisk::new("header", SECTORS * SECTOR_SIZE);
    let mut rig = Rig::start(&disk, false);
    // 8 header bytes.
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_IN, 0)[..8]);
    let d = rig.ram.alloc_with(&[0xaa; 512]);
    let st = rig.status();
    let (used, status) = rig.submit(
        &[
            Desc::readable(h, 8),
            Desc::writable(d, 512),
            Desc::writable(st, 1),
        ],
        Some(st),
    );
    assert_eq!((used, status), (1, Some(VIRTIO_BLK_S_IOERR)));
    // The header in the device-writable part (no readable part at all).
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_IN, 0));
    let (used, status) = rig.submit(&[Desc::writable(h, 16), Desc::writable(st, 1)], Some(st));
    assert_eq!((used, status), (1, Some(VIRTIO_BLK_S_IOERR)));
    assert_eq!(rig.read(d, 512), vec![0xaa; 512]);
    // A read with device-readable data after its header.
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_IN, 0));
    let (used, status) = rig.submit(
        &[
            Desc::readable(h, 16),
            Desc::readable(d, 512),
            Desc::writable(st, 1),
        ],
        Some(st),
    );
    assert_eq!((used, status), (1, Some(VIRTIO_BLK_S_IOERR)));
    rig.still_serves();
}

#[test]
fn write_zeroes_and_discard() {
    let disk = TempDisk::new("zeroes", SECTORS * SECTOR_SIZE);
    let mut rig = Rig::start(&disk, false);
    let range = |kind: u32, sector: u64, sectors: u32, flags: u32| {
        let mut r = header(kind, 0);
        r.extend_from_slice(&sector.to_le_bytes());
        r.extend_from_slice(&sectors.to_le_bytes());
        r.extend_from_slice(&flags.to_le_bytes());
        r
    };
    let mut run = |req: Vec<u8>| {
        let r = rig.ram.alloc_with(&req);
        let st = rig.status();
        let (used, status) = rig.submit(
            &[Desc::readable(r, req.len() as u32), Desc::writable(st, 1)],
            Some(st),
        );
        assert_eq!(used, 1);
        status.unwrap()
    };
    assert_eq!(
        run(range(VIRTIO_BLK_T_WRITE_ZEROES, 8, 3, 0)),
        VIRTIO_BLK_S_OK
    );
    assert_eq!(
        run(range(VIRTIO_BLK_T_WRITE_ZEROES, 20, 1, 1)),
        VIRTIO_BLK_S_OK
    );
    assert_eq!(run(range(VIRTIO_BLK_T_DISCARD, 30, 2, 0)), VIRTIO_BLK_S_OK);
    // Discard with unmap, reserved flags: UNSUPP; past the end, too many sectors: IOERR.
    assert_eq!(
        run(range(VIRTIO_BLK_T_DISCARD, 0, 1, 1)),
        VIRTIO_BLK_S_UNSUPP
    );
    assert_eq!(
        run(range(VIRTIO_BLK_T_WRITE_ZEROES, 0, 1, 2)),
        VIRTIO_BLK_S_UNSUPP
    );
    assert_eq!(
        run(range(VIRTIO_BLK_T_WRITE_ZEROES, SECTORS - 1, 2, 0)),
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        run(range(
            VIRTIO_BLK_T_WRITE_ZEROES,
            0,
            MAX_RANGE_SECTORS + 1,
            0
        )),
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(
        run(header(VIRTIO_BLK_T_DISCARD, 0)),
        VIRTIO_BLK_S_IOERR,
        "no range"
    );
    let zero = vec![0u8; 512];
    for s in [8, 9, 10, 20] {
        assert_eq!(disk.sector(s), zero, "sector {s} zeroed");
    }
    assert_eq!(disk.sector(7), pattern(7));
    assert_eq!(disk.sector(11), pattern(11));
    assert_eq!(disk.sector(0), pattern(0), "refused ranges did nothing");
    assert_eq!(
        disk.contents().len() as u64,
        SECTORS * SECTOR_SIZE,
        "size kept"
    );
}

#[test]
fn without_discard_negotiated_it_is_unsupp() {
    let disk = TempDisk::new("nodiscard", SECTORS * SECTOR_SIZE);
    let mut rig = Rig::with_features(&disk, false, Some(VIRTIO_F_VERSION_1));
    let mut req = header(VIRTIO_BLK_T_DISCARD, 0);
    req.extend_from_slice(&[0; 16]);
    let r = rig.ram.alloc_with(&req);
    let st = rig.status();
    let (used, status) = rig.submit(&[Desc::readable(r, 32), Desc::writable(st, 1)], Some(st));
    assert_eq!((used, status), (1, Some(VIRTIO_BLK_S_UNSUPP)));
    // Without FLUSH the device is write-through: writes still succeed.
    assert_eq!(rig.write_sectors(0, &[1; 512]), (1, VIRTIO_BLK_S_OK));
    assert_eq!(disk.sector(0), vec![1; 512]);
}

#[test]
fn reset_stops_the_worker_and_nothing_is_served_after() {
    let disk = TempDisk::new("reset", SECTORS * SECTOR_SIZE);
    let before = disk.contents();
    let mut rig = Rig::start(&disk, false);
    rig.still_serves();
    let started = Instant::now();
    rig.block.reset();
    assert!(
        started.elapsed() < RESET_WAIT,
        "an idle worker ends at once"
    );
    assert!(rig.block.worker.is_none());
    // A request and a kick after the reset: the old queue is left alone.
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_OUT, 0));
    let d = rig.ram.alloc_with(&[4; 512]);
    let st = rig.status();
    rig.driver.add(
        &rig.ram.mem,
        &[
            Desc::readable(h, 16),
            Desc::readable(d, 512),
            Desc::writable(st, 1),
        ],
    );
    rig.kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rig.driver.pop_used(&rig.ram.mem), None);
    assert_eq!(rig.read(st, 1), [0xff]);
    assert_eq!(disk.contents(), before);
}

/// With Bus Master Enable clear the device neither reads the ring nor touches the file or the
/// guest's buffers; once it is set again the request is served.
#[test]
fn nothing_happens_while_bus_master_is_clear() {
    let disk = TempDisk::new("bme", SECTORS * SECTOR_SIZE);
    let before = disk.contents();
    let mut rig = Rig::start(&disk, false);
    rig.interrupt.set_dma_allowed(false);
    let h = rig.ram.alloc_with(&header(VIRTIO_BLK_T_OUT, 3));
    let d = rig.ram.alloc_with(&[6; 512]);
    let st = rig.status();
    rig.driver.add(
        &rig.ram.mem,
        &[
            Desc::readable(h, 16),
            Desc::readable(d, 512),
            Desc::writable(st, 1),
        ],
    );
    rig.kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(rig.driver.pop_used(&rig.ram.mem), None);
    assert_eq!(rig.read(st, 1), [0xff], "no status written");
    assert_eq!(disk.contents(), before, "the file untouched");
    rig.interrupt.set_dma_allowed(true);
    rig.kick.write(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let used = loop {
        if let Some(used) = rig.driver.pop_used(&rig.ram.mem) {
            break used;
        }
        assert!(Instant::now() < deadline, "not served after BME was set");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(used.1, 1);
    assert_eq!(rig.read(st, 1), [VIRTIO_BLK_S_OK]);
    assert_eq!(disk.sector(3), vec![6; 512]);
}

#[test]
fn config_space_describes_the_disk() {
    let disk = TempDisk::new("config", SECTORS * SECTOR_SIZE);
    let block = Block::new(DiskFile::open(&disk.config(false)).unwrap());
    assert_eq!(block.device_type(), 2);
    let mut c = [0u8; 8];
    block.read_config(0, &mut c);
    assert_eq!(u64::from_le_bytes(c), SECTORS, "capacity in sectors");
    let mut w = [0u8; 4];
    block.read_config(12, &mut w);
    assert_eq!(u32::from_le_bytes(w), SEG_MAX);
    block.read_config(20, &mut w);
    assert_eq!(u32::from_le_bytes(w), 512, "blk_size");
    block.read_config(u64::MAX - 1, &mut w);
    assert_eq!(w, [0; 4], "out of range reads as zero");
}

#[test]
fn bad_disks_are_refused_with_one_line() {
    let dir = std::env::temp_dir();
    let cfg = |path: PathBuf, readonly: bool| DiskConfig {
        path,
        readonly,
        id: None,
    };
    let err = |configs: &[DiskConfig]| DiskFile::open_all(configs).unwrap_err().to_string();
    let missing = err(&[cfg("/nonexistent/disk.img".into(), false)]);
    assert_eq!(missing, "disk '/nonexistent/disk.img': no such file");
    assert!(err(&[cfg(dir.clone(), true)]).contains("is a directory"));
    let odd = TempDisk::new("odd", 1000);
    assert!(err(&[cfg(odd.0.clone(), false)]).contains("not a multiple of 512"));
    let a = TempDisk::new("dup", 4096);
    for (ro1, ro2) in [(false, false), (true, false), (false, true)] {
        let line = err(&[cfg(a.0.clone(), ro1), cfg(a.0.clone(), ro2)]);
        assert!(line.contains("the same file as disk"), "{line}");
    }
    assert_eq!(
        DiskFile::open_all(&[cfg(a.0.clone(), true), cfg(a.0.clone(), true)])
            .unwrap()
            .len(),
        2,
        "read-only twice is fine"
    );
    let long = DiskConfig {
        id: Some("x".repeat(21)),
        ..cfg(a.0.clone(), false)
    };
    assert!(err(&[long]).contains("longer than 20 bytes"));
    assert!(!missing.contains('\n'));
}
