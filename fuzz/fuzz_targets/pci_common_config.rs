//! pci_common_config: a virtio-pci function (virtio-rng or virtio-snd with the null backend) on
//! the PCI root bus, driven by reads and writes whose offset, width (1, 2, 4 or 8) and value the
//! input chooses: to its BAR (common configuration, ISR, device configuration, notify, MSI-X
//! table and PBA) through the MMIO bus, and to its configuration space through configuration
//! mechanism #1 (ports 0xCF8-0xCFF, so BAR moves, memory decoding and the PCI configuration
//! access capability are in play), with the fakes of what the VMM provides (MSI-X group,
//! ioeventfd registrar, event-loop registrar over a local event manager).
//!
//! Input: `u8 device` (bit 0: 0 = rng, 1 = sound), then operations until the input ends (at most
//! 256), `op % 12`:
//! - 0: BAR read `u16 offset, u8 width`; 1: BAR write `u16 offset, u8 width, u64 value`
//!   (offsets relative to where BAR 0 is mapped now);
//! - 2: config read `u8 reg, u8 width+offset`; 3: config write `u8 reg, u8 width+offset,
//!   u32 value` (function 00:01.0);
//! - 4: raw 0xCF8 address `u32`, then a 0xCFC read `u8 width+offset`;
//! - 5: guest RAM write `u32 addr, u8 len, bytes`;
//! - 6: driver bring-up: `u64 features`, then per queue `u16 size, u64 desc, u64 avail, u64 used,
//!   u16 vector, u8 enable`, then ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK;
//! - 7: run the event loop; 8: notify queue `u8` (then run the event loop);
//! - 9: any MMIO address: `u64 addr, u8 width, u8 write, u64 value`;
//! - 10: device_status `u8`; 11: pause `u8` (`Pauses`).
//!
//! Checked: nothing panics. The run ends with a device reset (status 0).
#![no_main]

use std::io;
use std::sync::{Arc, Mutex};

use canto_devices::bus::{Bus, BusDevice};
use canto_devices::pci::{MsiInterruptGroup, MsiMessage, PciRoot, SharedPciDevice};
use canto_devices::virtio::rng::Rng;
use canto_devices::virtio::snd::{BackendConfig, CaptureConfig, Sound, SoundConfig};
use canto_devices::virtio::transport::pci::{IoEventRegistrar, VirtioPciDevice};
use canto_devices::virtio::{SharedSubscriber, SubscriberRegistrar, VirtioDevice};
use canto_fuzz::{Pauses, Reader};
use event_manager::{EventManager, SubscriberId, SubscriberOps};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const RAM: u64 = 1 << 20;
const WINDOW: std::ops::Range<u64> = 0xc000_0000..0xd000_0000;
const MAX_OPS: usize = 256;
const WIDTHS: [usize; 4] = [1, 2, 4, 8];

struct NoMsi;

impl MsiInterruptGroup for NoMsi {
    fn update(&self, _index: u16, _msg: MsiMessage, _masked: bool) -> io::Result<()> {
        Ok(())
    }
    fn trigger(&self, _index: u16) -> io::Result<()> {
        Ok(())
    }
}

/// Records registered ioeventfd addresses and refuses a duplicate, as KVM does.
#[derive(Default)]
struct IoEvents {
    registered: Mutex<Vec<u64>>,
}

impl IoEventRegistrar for IoEvents {
    fn register(&self, addr: u64, _evt: &EventFd) -> io::Result<()> {
        let mut registered = self.registered.lock().unwrap();
        if registered.contains(&addr) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        registered.push(addr);
        Ok(())
    }

    fn unregister(&self, addr: u64, _evt: &EventFd) -> io::Result<()> {
        let mut registered = self.registered.lock().unwrap();
        let before = registered.len();
        registered.retain(|a| *a != addr);
        if registered.len() == before {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(())
    }
}

struct Registrar {
    manager: Mutex<EventManager<SharedSubscriber>>,
}

impl SubscriberRegistrar for Registrar {
    fn add(&self, subscriber: SharedSubscriber) -> io::Result<SubscriberId> {
        Ok(self.manager.lock().unwrap().add_subscriber(subscriber))
    }

    fn remove(&self, id: SubscriberId) -> io::Result<()> {
        self.manager
            .lock()
            .unwrap()
            .remove_subscriber(id)
            .map(|_| ())
            .map_err(|e| io::Error::other(e.to_string()))
    }
}

impl Registrar {
    fn run(&self) {
        let mut manager = self.manager.lock().unwrap();
        for _ in 0..16 {
            match manager.run_with_timeout(0) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

struct Rig {
    mem: GuestMemoryMmap,
    mmio: Arc<Bus>,
    root: PciRoot,
    registrar: Arc<Registrar>,
    queues: usize,
}

impl Rig {
    fn bar(&self) -> u64 {
        self.root.bar_mapping(1, 0).unwrap_or(WINDOW.start)
    }

    fn bar_write(&mut self, offset: u64, value: u64, width: usize) {
        let addr = self.bar().wrapping_add(offset);
        self.mmio.write(addr, &value.to_le_bytes()[..width]);
    }

    fn bar_read(&mut self, offset: u64, width: usize) {
        let addr = self.bar().wrapping_add(offset);
        let mut data = [0u8; 8];
        self.mmio.read(addr, &mut data[..width]);
    }

    fn config_address(&mut self, value: u32) {
        self.root.write(0xcf8, 0, &value.to_le_bytes());
    }

    /// `wo`: width (1, 2 or 4; bits 0-1) and byte offset in the data window (bits 2-3).
    fn config_read(&mut self, wo: u8) {
        let width = [1, 2, 4, 4][usize::from(wo & 3)];
        let offset = u64::from((wo >> 2) & 3);
        let mut data = [0u8; 4];
        self.root.read(0xcf8, 4 + offset, &mut data[..width]);
    }

    fn config_write(&mut self, wo: u8, value: u32) {
        let width = [1, 2, 4, 4][usize::from(wo & 3)];
        let offset = u64::from((wo >> 2) & 3);
        self.root
            .write(0xcf8, 4 + offset, &value.to_le_bytes()[..width]);
    }

    fn run(&self) {
        self.registrar.run();
    }
}

fn select(reg: u8) -> u32 {
    0x8000_0000 | 1 << 11 | u32::from(reg & 0x3f) << 2
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut pauses = Pauses::new();
    let kind = r.u8();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    let device: Arc<Mutex<dyn VirtioDevice>> = if kind & 1 == 0 {
        Arc::new(Mutex::new(Rng::new()))
    } else {
        let config = SoundConfig {
            backend: BackendConfig::Null,
            capture: Some(CaptureConfig::Null),
            outputs: 1,
            inputs: 1,
            jacks: 1,
        };
        Arc::new(Mutex::new(Sound::new(config).unwrap()))
    };
    let queues = device.lock().unwrap().queue_max_sizes().len();
    let registrar = Arc::new(Registrar {
        manager: Mutex::new(EventManager::new().unwrap()),
    });
    let pci = VirtioPciDevice::new(
        device,
        mem.clone(),
        Arc::new(NoMsi),
        Arc::new(IoEvents::default()),
        registrar.clone(),
    )
    .unwrap();
    let mmio = Arc::new(Bus::new());
    let mut root = PciRoot::new(mmio.clone(), WINDOW, RAM).unwrap();
    let shared: SharedPciDevice = Arc::new(Mutex::new(pci));
    root.add_device(shared).unwrap();
    let mut rig = Rig {
        mem,
        mmio,
        root,
        registrar,
        queues,
    };
    // Memory decoding and bus mastering on, as a driver sets them first: without Bus Master
    // Enable the device does no DMA. Inputs may still clear it through op 3.
    rig.config_address(select(1));
    rig.config_write(1, 0x6);

    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        match r.u8() % 12 {
            0 => {
                let offset = u64::from(r.u16());
                let width = WIDTHS[usize::from(r.u8() % 4)];
                rig.bar_read(offset, width);
            }
            1 => {
                let offset = u64::from(r.u16());
                let width = WIDTHS[usize::from(r.u8() % 4)];
                let value = r.u64();
                rig.bar_write(offset, value, width);
            }
            2 => {
                let reg = r.u8();
                let wo = r.u8();
                rig.config_address(select(reg));
                rig.config_read(wo);
            }
            3 => {
                let reg = r.u8();
                let wo = r.u8();
                let value = r.u32();
                rig.config_address(select(reg));
                rig.config_write(wo, value);
            }
            4 => {
                let address = r.u32();
                let wo = r.u8();
                rig.config_address(address);
                rig.config_read(wo);
            }
            5 => {
                let addr = u64::from(r.u32()) % RAM;
                let len = usize::from(r.u8());
                let bytes = r.bytes(len);
                let _ = rig.mem.write_slice(bytes, GuestAddress(addr));
            }
            6 => {
                let features = r.u64();
                rig.bar_write(0x14, 1, 1);
                rig.bar_write(0x14, 3, 1);
                rig.bar_write(0x08, 0, 4);
                rig.bar_write(0x0c, features & 0xffff_ffff, 4);
                rig.bar_write(0x08, 1, 4);
                rig.bar_write(0x0c, features >> 32, 4);
                rig.bar_write(0x14, 0xb, 1);
                for q in 0..rig.queues {
                    let size = r.u16();
                    let (desc, avail, used) = (r.u64(), r.u64(), r.u64());
                    let vector = r.u16();
                    let enable = r.u8();
                    rig.bar_write(0x16, q as u64, 2);
                    rig.bar_write(0x18, size.into(), 2);
                    rig.bar_write(0x1a, vector.into(), 2);
                    rig.bar_write(0x20, desc, 8);
                    rig.bar_write(0x28, avail, 8);
                    rig.bar_write(0x30, used, 8);
                    rig.bar_write(0x1c, enable.into(), 2);
                }
                rig.bar_write(0x14, 0xf, 1);
                rig.run();
            }
            7 => rig.run(),
            8 => {
                let q = r.u8();
                rig.bar_write(0x3000 + 4 * u64::from(q % 8), q.into(), 2);
                rig.run();
            }
            9 => {
                let addr = r.u64();
                let width = WIDTHS[usize::from(r.u8() % 4)];
                let write = r.u8() & 1 != 0;
                let value = r.u64();
                if write {
                    rig.mmio.write(addr, &value.to_le_bytes()[..width]);
                } else {
                    let mut data = [0u8; 8];
                    rig.mmio.read(addr, &mut data[..width]);
                }
            }
            10 => {
                let status = r.u8();
                rig.bar_write(0x14, status.into(), 1);
                rig.run();
            }
            _ => pauses.pause(r.u8()),
        }
    }
    // Device reset: the BAR may have moved or be unmapped, so go through the function's own
    // mapping if it has one, else re-enable decoding first.
    rig.config_address(select(1));
    rig.config_write(0b01, 0x6);
    rig.bar_write(0x14, 0, 1);
    rig.run();
});
