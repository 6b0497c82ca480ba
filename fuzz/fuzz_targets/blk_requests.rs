//! blk_requests: virtio-blk requests whose type, sector, data and descriptor layout the input
//! chooses, on a device over a 64-sector temp disk, served by the device's worker thread; with
//! resets in flight.
//!
//! Input: `u8 flags` (bit 0: the disk is read-only; bit 1: the driver accepts only VERSION_1,
//! no FLUSH/DISCARD/WRITE_ZEROES), then operations until the input ends (at most 64):
//! - `op % 4 == 0`: a request: `u8 kind` (`% 8`: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES,
//!   GET_LIFETIME, or a raw `u32` type), `u8 s` (the sector: `s % 66`, or a raw `u64` when
//!   `s >= 0xf0`), `u16 len` (data bytes after the header, `% 8192`; the first 48 come from the
//!   input, so DISCARD/WRITE_ZEROES ranges are the input's), then a chain layout
//!   (`decode_chain`) over the payload `header + data`; kicked unless `op & 0x80`.
//! - 1: kick.
//! - 2: make an earlier head available again: `u8 which`.
//! - 3: reset the device with whatever is in flight, and activate it again on fresh rings (at
//!   most 3 times; later ones only kick).
//!
//! Checked: nothing panics, and every chain made available since the last reset comes back
//! within 1 s (the per-input timeout is 2 s; unless the input wrote over the rings through a
//! writable descriptor). Then reset.
#![no_main]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canto_devices::virtio::block::{Block, DiskConfig, DiskFile};
use canto_devices::virtio::{ActivateContext, ActiveQueue, VirtioDevice, VIRTIO_F_VERSION_1};
use canto_fuzz::*;
use libfuzzer_sys::fuzz_target;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MAX_OPS: usize = 64;
const SECTORS: u64 = 64;
const QSIZE: u16 = 64;

fn disk_path() -> PathBuf {
    std::env::temp_dir().join(format!("canto-fuzz-blk-{}.img", std::process::id()))
}

struct Rig {
    mem: GuestMemoryMmap,
    bump: Bump,
    block: Block,
    interrupt: Arc<InterruptRecorder>,
    driver: DriverQueue,
    kick: EventFd,
    acked: u64,
    sessions: u64,
    tampered: bool,
}

impl Rig {
    /// Activates the device on the rings of queue slot `slot`.
    fn activate(&mut self, slot: u64) {
        let (driver, queue) = DriverQueue::new(slot * QUEUE_SPAN, QSIZE);
        self.driver = driver;
        self.kick = EventFd::new(EFD_NONBLOCK).expect("eventfd");
        self.tampered = false;
        self.block
            .activate(ActivateContext {
                mem: self.mem.clone(),
                interrupt: self.interrupt.clone(),
                queues: vec![ActiveQueue {
                    index: 0,
                    queue,
                    kick: self.kick.try_clone().expect("eventfd"),
                }],
                acked_features: self.acked,
            })
            .expect("activation");
    }

    fn kick(&self) {
        let _ = self.kick.write(1);
    }

    fn wait_all_returned(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.driver.outstanding(&self.mem) <= 0 {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let flags = r.u8();
    let path = disk_path();
    let image: Vec<u8> = (0..SECTORS * 512).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &image).expect("the temp disk");
    let disk = DiskFile::open(&DiskConfig {
        path: path.clone(),
        readonly: flags & 1 != 0,
        id: Some("fuzz".into()),
    })
    .expect("the temp disk");
    let block = Block::new(disk);
    let acked = if flags & 2 != 0 {
        VIRTIO_F_VERSION_1
    } else {
        block.features()
    };
    let (driver, _) = DriverQueue::new(0, QSIZE);
    let mut rig = Rig {
        mem: GuestRam::take(),
        bump: Bump::new(DATA_START, MEM_SIZE),
        block,
        interrupt: Arc::new(InterruptRecorder::default()),
        driver,
        kick: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        acked,
        sessions: 0,
        tampered: false,
    };
    rig.activate(0);
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        match op % 4 {
            0 => {
                let kind = match r.u8() % 8 {
                    0 => 0,
                    1 => 1,
                    2 => 4,
                    3 => 8,
                    4 => 11,
                    5 => 13,
                    6 => 10,
                    _ => r.u32(),
                };
                let s = r.u8();
                let sector = if s >= 0xf0 {
                    r.u64()
                } else {
                    u64::from(s) % (SECTORS + 2)
                };
                let len = usize::from(r.u16() % 8192);
                let mut payload = kind.to_le_bytes().to_vec();
                payload.extend_from_slice(&0u32.to_le_bytes());
                payload.extend_from_slice(&sector.to_le_bytes());
                let head = len.min(48);
                let given = r.bytes(head).to_vec();
                payload.extend_from_slice(&given);
                payload.resize(16 + head, 0);
                payload.extend((head..len).map(|i| i as u8));
                let (descs, opts) =
                    decode_chain(&mut r, &rig.mem, MEM_SIZE, &mut rig.bump, &payload);
                if descs
                    .iter()
                    .any(|d| d.flags & VRING_DESC_F_WRITE as u16 != 0 && d.addr < DATA_START)
                {
                    rig.tampered = true;
                }
                rig.driver.add_with(&rig.mem, &mut rig.bump, &descs, opts);
                if op & 0x80 == 0 {
                    rig.kick();
                }
            }
            1 => rig.kick(),
            2 => {
                let which = usize::from(r.u8());
                if !rig.driver.heads.is_empty() {
                    let head = rig.driver.heads[which % rig.driver.heads.len()];
                    rig.driver.publish(&rig.mem, head);
                    rig.kick();
                }
            }
            _ => {
                if rig.sessions < 3 {
                    rig.block.reset();
                    rig.sessions += 1;
                    let slot = rig.sessions;
                    rig.activate(slot);
                } else {
                    rig.kick();
                }
            }
        }
    }
    rig.kick();
    if !rig.tampered && rig.interrupt.needs_reset_count() == 0 {
        let returned = rig.wait_all_returned(Duration::from_secs(1));
        assert!(
            returned,
            "{} request(s) not returned within 1 s ({} published, {} returned)",
            rig.driver.outstanding(&rig.mem),
            rig.driver.published,
            rig.driver.returned
        );
    }
    rig.block.reset();
    GuestRam::give_back(rig.mem.clone(), &rig.bump);
    // The image is rewritten by the next run; this process's runs share it.
});
