use std::sync::atomic::AtomicUsize;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_memory::GuestMemoryMmap;

use super::test_utils::{FakeIoEvents, LocalRegistrar};
use super::*;
use crate::bus::{Bus, BusDevice};
use crate::pci::config::{COMMAND_BUS_MASTER, COMMAND_REGISTER};
use crate::pci::msix::test_utils::{MsiEvent, RecordingMsiGroup};
use crate::pci::msix::MSIX_CONTROL_ENABLE;
use crate::pci::PciRoot;
use crate::virtio::SharedSubscriber;

const RAM_SIZE: u64 = 0x10_0000;
const FAKE_FEATURE: u64 = 1 << 3;

/// Counts kicks of one queue from the event loop.
struct KickCounter {
    kick: EventFd,
    count: Arc<AtomicUsize>,
}

impl MutEventSubscriber for KickCounter {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.kick.read();
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps) {
        ops.add(Events::new(&self.kick, EventSet::IN)).unwrap();
    }
}

/// A two-queue device that records what the transport does to it.
struct FakeDevice {
    device_type: u32,
    max_sizes: Vec<u16>,
    config: [u8; 8],
    fail_activate: bool,
    activations: Vec<(Vec<u16>, u64)>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    resets: usize,
    kicks: Arc<AtomicUsize>,
}

impl FakeDevice {
    fn new(device_type: u32) -> Self {
        Self {
            device_type,
            max_sizes: vec![16, 256],
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            fail_activate: false,
            activations: Vec::new(),
            interrupt: None,
            resets: 0,
            kicks: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        self.device_type
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | FAKE_FEATURE
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| self.config.get(at as usize).copied())
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            if let Some(slot) = offset
                .checked_add(i as u64)
                .and_then(|at| self.config.get_mut(at as usize))
            {
                *slot = *byte;
            }
        }
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<Vec<SharedSubscriber>, ActivateError> {
        if self.fail_activate {
            return Err(ActivateError::Backend("the test said no".into()));
        }
        self.activations.push((
            ctx.queues.iter().map(|q| q.index).collect(),
            ctx.acked_features,
        ));
        self.interrupt = Some(ctx.interrupt.clone());
        Ok(ctx
            .queues
            .into_iter()
            .map(|q| {
                Arc::new(Mutex::new(KickCounter {
                    kick: q.kick,
                    count: self.kicks.clone(),
                })) as SharedSubscriber
            })
            .collect())
    }
    fn reset(&mut self) {
        self.resets += 1;
        self.interrupt = None;
    }
}

struct Harness {
    dev: VirtioPciDevice,
    fake: Arc<Mutex<FakeDevice>>,
    msi: Arc<RecordingMsiGroup>,
    ioevents: Arc<FakeIoEvents>,
    registrar: Arc<LocalRegistrar>,
}

/// Sets or clears Bus Master Enable in the command register, leaving the other bits.
fn set_bus_master(dev: &mut VirtioPciDevice, enabled: bool) {
    let command = dev.read_config_register(COMMAND_REGISTER) as u16;
    let command = if enabled {
        command | COMMAND_BUS_MASTER
    } else {
        command & !COMMAND_BUS_MASTER
    };
    dev.write_config_register(COMMAND_REGISTER, 0, &command.to_le_bytes());
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)]).unwrap()
}

impl Harness {
    fn new(device_type: u32) -> Self {
        let fake = Arc::new(Mutex::new(FakeDevice::new(device_type)));
        let msi = Arc::new(RecordingMsiGroup::default());
        let ioevents = Arc::new(FakeIoEvents::default());
        let registrar = LocalRegistrar::new();
        let mut dev = VirtioPciDevice::new(
            fake.clone(),
            memory(),
            msi.clone(),
            ioevents.clone(),
            registrar.clone(),
        )
        .unwrap();
        // Bus mastering on, as every driver does first (Linux's pci_set_master).
        set_bus_master(&mut dev, true);
        Self {
            dev,
            fake,
            msi,
            ioevents,
            registrar,
        }
    }

    fn read(&mut self, offset: u64, len: usize) -> u64 {
        let mut data = [0u8; 8];
        self.dev.read_bar(BAR_INDEX, offset, &mut data[..len]);
        u64::from_le_bytes(data)
    }

    fn write(&mut self, offset: u64, value: u64, len: usize) {
        self.dev
            .write_bar(BAR_INDEX, offset, &value.to_le_bytes()[..len]);
    }

    fn status(&mut self) -> u8 {
        self.read(0x14, 1) as u8
    }

    fn set_status(&mut self, status: u8) {
        self.write(0x14, status.into(), 1);
    }

    fn ack_features(&mut self, features: u64) {
        self.write(0x08, 0, 4);
        self.write(0x0c, features & 0xffff_ffff, 4);
        self.write(0x08, 1, 4);
        self.write(0x0c, features >> 32, 4);
    }

    /// ACKNOWLEDGE, DRIVER, features, FEATURES_OK.
    fn negotiate(&mut self, features: u64) {
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.ack_features(features);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    }

    fn setup_queue(&mut self, index: u16, size: u16, base: u64) {
        self.write(0x16, index.into(), 2);
        self.write(0x18, size.into(), 2);
        self.write(0x1a, u64::from(index) + 1, 2);
        self.write(0x20, base, 4);
        self.write(0x24, base >> 32, 4);
        self.write(0x28, base + 0x1000, 8);
        self.write(0x30, base + 0x2000, 4);
        self.write(0x34, (base + 0x2000) >> 32, 4);
        self.write(0x1c, 1, 2);
    }

    fn driver_ok(&mut self) {
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }

    /// The whole driver bring-up with both queues in RAM.
    fn bring_up(&mut self) {
        self.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | FAKE_FEATURE);
        self.write(0x10, 0, 2); // config vector 0
        self.setup_queue(0, 16, 0x1_0000);
        self.setup_queue(1, 128, 0x2_0000);
        self.driver_ok();
    }

    fn enable_msix(&mut self) {
        let control_reg = self.dev.msix_cap_offset / 4;
        self.dev.write_config_register(
            control_reg,
            2,
            &(MSIX_CONTROL_ENABLE | (msix_vector_count(&*self.fake.lock().unwrap()) - 1))
                .to_le_bytes(),
        );
        for vector in 0..3u64 {
            self.write(MSIX_TABLE_OFFSET + vector * 16, 0xfee0_0000, 4);
            self.write(MSIX_TABLE_OFFSET + vector * 16 + 8, 0x40 + vector, 4);
            self.write(MSIX_TABLE_OFFSET + vector * 16 + 12, 0, 4);
        }
        self.msi.take();
    }
}

fn config_byte(dev: &mut VirtioPciDevice, at: usize) -> u8 {
    (dev.read_config_register(at / 4) >> (at % 4 * 8)) as u8
}

fn config_dword(dev: &mut VirtioPciDevice, at: usize) -> u32 {
    dev.read_config_register(at / 4)
}

/// Capabilities as (offset, id) following the chain from the capabilities pointer.
fn capabilities(dev: &mut VirtioPciDevice) -> Vec<(usize, u8)> {
    let mut caps = Vec::new();
    let mut at = usize::from(config_byte(dev, 0x34));
    while at != 0 && caps.len() < 48 {
        caps.push((at, config_byte(dev, at)));
        at = usize::from(config_byte(dev, at + 1));
    }
    caps
}

#[test]
fn identity_class_and_header() {
    let mut snd = Harness::new(25);
    assert_eq!(config_dword(&mut snd.dev, 0), 0x1059_1af4);
    assert_eq!(
        config_dword(&mut snd.dev, 8),
        0x0401_0001,
        "audio class, revision 1"
    );
    assert_eq!(config_dword(&mut snd.dev, 0x2c), 0x1059_1af4);
    assert_eq!(config_byte(&mut snd.dev, 0x3d), 0, "no INTx pin");
    assert_ne!(
        config_dword(&mut snd.dev, 4) & (1 << 20),
        0,
        "capability list"
    );
    let mut rng = Harness::new(4);
    assert_eq!(config_dword(&mut rng.dev, 0), 0x1044_1af4);
    assert_eq!(config_dword(&mut rng.dev, 8) >> 8, 0x00_ff_00);
    // BAR 0 is a 32-bit memory BAR of BAR_SIZE bytes.
    rng.dev.write_config_register(4, 0, &[0xff; 4]);
    assert_eq!(config_dword(&mut rng.dev, 0x10), !(BAR_SIZE as u32 - 1));
    assert_eq!(config_dword(&mut rng.dev, 0x14), 0, "BAR 1 unused");
}

#[test]
fn bad_devices_are_refused() {
    let build = |fake: FakeDevice| {
        VirtioPciDevice::new(
            Arc::new(Mutex::new(fake)),
            memory(),
            Arc::new(RecordingMsiGroup::default()),
            Arc::new(FakeIoEvents::default()),
            LocalRegistrar::new(),
        )
    };
    let mut no_queues = FakeDevice::new(4);
    no_queues.max_sizes.clear();
    assert!(matches!(
        build(no_queues),
        Err(VirtioPciError::QueueCount(0))
    ));
    let mut odd = FakeDevice::new(4);
    odd.max_sizes = vec![100];
    assert!(matches!(
        build(odd),
        Err(VirtioPciError::QueueMaxSize { .. })
    ));
    assert!(matches!(
        build(FakeDevice::new(0x1_0000)),
        Err(VirtioPciError::DeviceType(_))
    ));
}

#[test]
fn capability_walk_finds_every_structure() {
    let mut h = Harness::new(25);
    let caps = capabilities(&mut h.dev);
    let mut virtio = std::collections::BTreeMap::new();
    for (at, id) in &caps {
        if *id == PCI_CAP_ID_VENDOR {
            let cfg_type = config_byte(&mut h.dev, at + 3);
            let bar = config_byte(&mut h.dev, at + 4);
            let offset = config_dword(&mut h.dev, at + 8);
            let length = config_dword(&mut h.dev, at + 12);
            assert_eq!(bar, BAR_INDEX);
            assert!(u64::from(offset) + u64::from(length) <= BAR_SIZE);
            virtio.entry(cfg_type).or_insert((*at, offset, length));
        }
    }
    assert_eq!(
        virtio[&VIRTIO_PCI_CAP_COMMON_CFG].1..virtio[&VIRTIO_PCI_CAP_COMMON_CFG].2,
        0..0x38
    );
    assert_eq!(virtio[&VIRTIO_PCI_CAP_ISR_CFG].1, 0x1000);
    assert_eq!(virtio[&VIRTIO_PCI_CAP_DEVICE_CFG].1, 0x2000);
    let (notify_at, notify_offset, notify_len) = virtio[&VIRTIO_PCI_CAP_NOTIFY_CFG];
    assert_eq!((notify_offset, notify_len), (0x3000, 8));
    assert_eq!(
        config_byte(&mut h.dev, notify_at + 2),
        20,
        "cap_len with the multiplier"
    );
    assert_eq!(config_dword(&mut h.dev, notify_at + 16), 4);
    let (pci_cfg_at, ..) = virtio[&VIRTIO_PCI_CAP_PCI_CFG];
    assert_eq!(config_byte(&mut h.dev, pci_cfg_at + 2), 20);

    let (msix_at, _) = *caps.iter().find(|(_, id)| *id == 0x11).unwrap();
    let control = config_dword(&mut h.dev, msix_at) >> 16;
    assert_eq!(control & 0x7ff, 2, "three vectors: config + two queues");
    assert_eq!(config_dword(&mut h.dev, msix_at + 4), 0x4000);
    assert_eq!(config_dword(&mut h.dev, msix_at + 8), 0x5000);
    assert_eq!(caps.len(), 6);
}

#[test]
fn pci_cfg_window_reaches_the_bar() {
    let mut h = Harness::new(4);
    let caps = capabilities(&mut h.dev);
    let at = caps
        .iter()
        .map(|(at, _)| *at)
        .find(|at| config_byte(&mut h.dev, at + 3) == VIRTIO_PCI_CAP_PCI_CFG)
        .unwrap();
    let set_window = |dev: &mut VirtioPciDevice, offset: u32, length: u32| {
        dev.write_config_register((at + 4) / 4, 0, &[BAR_INDEX]);
        dev.write_config_register((at + 8) / 4, 0, &offset.to_le_bytes());
        dev.write_config_register((at + 12) / 4, 0, &length.to_le_bytes());
    };
    set_window(&mut h.dev, 0x12, 2);
    assert_eq!(config_dword(&mut h.dev, at + 16) & 0xffff, 2, "num_queues");
    set_window(&mut h.dev, 0x14, 1);
    h.dev
        .write_config_register((at + 16) / 4, 0, &[STATUS_ACKNOWLEDGE, 0, 0, 0]);
    assert_eq!(h.status(), STATUS_ACKNOWLEDGE);
    // A bad window (length 3, past the BAR, another BAR) does nothing.
    for (offset, length) in [(0x14, 3), (BAR_SIZE as u32 - 2, 4), (u32::MAX, 4)] {
        set_window(&mut h.dev, offset, length);
        h.dev.write_config_register((at + 16) / 4, 0, &[0; 4]);
        let _ = config_dword(&mut h.dev, at + 16);
    }
    h.dev.write_config_register((at + 4) / 4, 0, &[3]);
    set_window(&mut h.dev, 0x14, 1);
    h.dev.write_config_register((at + 4) / 4, 0, &[3]);
    h.dev.write_config_register((at + 16) / 4, 0, &[0; 4]);
    assert_eq!(
        h.status(),
        STATUS_ACKNOWLEDGE,
        "no reset through a window on BAR 3"
    );
}

#[test]
fn feature_negotiation() {
    let mut h = Harness::new(4);
    h.write(0x00, 0, 4);
    assert_eq!(
        h.read(0x04, 4),
        (VIRTIO_F_RING_EVENT_IDX | FAKE_FEATURE) & 0xffff_ffff
    );
    h.write(0x00, 1, 4);
    assert_eq!(h.read(0x04, 4), VIRTIO_F_VERSION_1 >> 32);
    h.write(0x00, 7, 4);
    assert_eq!(h.read(0x04, 4), 0);
    h.write(0x04, 0xffff_ffff, 4); // read-only
    assert_eq!(h.read(0x04, 4), 0);

    h.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    // Unoffered bits are dropped; select 2 goes nowhere.
    h.ack_features(u64::MAX);
    h.write(0x08, 2, 4);
    h.write(0x0c, 0xffff_ffff, 4);
    assert_eq!(h.read(0x0c, 4), 0);
    assert_eq!(
        h.dev.acked_features(),
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | FAKE_FEATURE
    );

    // Without VERSION_1, FEATURES_OK does not stick.
    h.ack_features(FAKE_FEATURE);
    h.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    assert_eq!(h.status(), STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    h.ack_features(VIRTIO_F_VERSION_1);
    h.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    assert_eq!(
        h.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
    );
    // Feature writes after FEATURES_OK change nothing.
    h.ack_features(VIRTIO_F_VERSION_1 | FAKE_FEATURE);
    assert_eq!(h.dev.acked_features(), VIRTIO_F_VERSION_1);
}

#[test]
fn status_state_machine() {
    let mut h = Harness::new(4);
    h.set_status(STATUS_DRIVER);
    assert_eq!(h.status(), 0, "DRIVER before ACKNOWLEDGE");
    h.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER_OK);
    assert_eq!(
        h.status(),
        STATUS_ACKNOWLEDGE,
        "DRIVER_OK out of order is dropped"
    );
    h.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    h.ack_features(VIRTIO_F_VERSION_1);
    h.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK);
    assert_eq!(
        h.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER,
        "DRIVER_OK before FEATURES_OK"
    );
    h.set_status(STATUS_ACKNOWLEDGE);
    assert_eq!(
        h.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER,
        "bits are never cleared"
    );
    h.set_status(
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DEVICE_NEEDS_RESET,
    );
    assert_eq!(
        h.status(),
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        "driver cannot set NEEDS_RESET"
    );
    h.setup_queue(0, 16, 0x1_0000);
    h.driver_ok();
    assert!(h.dev.is_active());
    assert_eq!(
        h.fake.lock().unwrap().activations,
        [(vec![0], VIRTIO_F_VERSION_1)]
    );
    h.driver_ok(); // again: no second activation
    assert_eq!(h.fake.lock().unwrap().activations.len(), 1);
    let status = h.status();
    h.set_status(status | STATUS_FAILED);
    assert_ne!(h.status() & STATUS_FAILED, 0);
    h.set_status(0);
    assert_eq!(h.status(), 0);
    assert!(!h.dev.is_active());
}

#[test]
fn queue_setup_rules() {
    let mut h = Harness::new(4);
    assert_eq!(h.read(0x12, 2), 2, "num_queues");
    h.write(0x16, 1, 2);
    assert_eq!(h.read(0x18, 2), 256, "starts at the maximum");
    assert_eq!(h.read(0x1e, 2), 1, "notify_off is the queue index");
    for bad in [0u64, 3, 100, 512, 0xffff] {
        h.write(0x18, bad, 2);
        assert_eq!(h.read(0x18, 2), 256, "size {bad}");
    }
    h.write(0x18, 64, 2);
    assert_eq!(h.read(0x18, 2), 64);
    h.write(0x16, 0, 2);
    h.write(0x18, 32, 2);
    assert_eq!(h.read(0x18, 2), 16, "queue 0 max is 16");

    // MSI-X vectors: three exist (0..=2); others read back as NO_VECTOR.
    h.write(0x1a, 2, 2);
    assert_eq!(h.read(0x1a, 2), 2);
    h.write(0x1a, 3, 2);
    assert_eq!(h.read(0x1a, 2), 0xffff);
    h.write(0x10, 5, 2);
    assert_eq!(h.read(0x10, 2), 0xffff);
    h.write(0x10, 1, 2);
    assert_eq!(h.read(0x10, 2), 1);

    // 64-bit addresses in halves or whole.
    h.write(0x20, 0x1234_5670, 4);
    h.write(0x24, 0x9, 4);
    assert_eq!(h.read(0x20, 8), 0x9_1234_5670);
    h.write(0x28, 0xabcd_0000_0002, 8);
    assert_eq!(h.read(0x2c, 4), 0xabcd);

    // Out-of-range queue_select: reads zero, writes go nowhere.
    h.write(0x16, 2, 2);
    assert_eq!(h.read(0x16, 2), 2);
    for field in [0x18u64, 0x1a, 0x1c, 0x1e, 0x20, 0x28, 0x30] {
        h.write(field, 0x10, 2);
        assert_eq!(h.read(field, 2), 0, "field {field:#x}");
    }
    h.write(0x16, 0xffff, 2);
    h.write(0x1c, 1, 2);
    assert_eq!(h.read(0x1c, 2), 0);

    // An enabled queue keeps its settings; queue_enable 0 does not disable it.
    h.write(0x16, 0, 2);
    h.write(0x1c, 1, 2);
    h.write(0x18, 8, 2);
    h.write(0x20, 0, 8);
    h.write(0x1c, 0, 2);
    assert_eq!(h.read(0x18, 2), 16);
    assert_eq!(h.read(0x20, 8), 0x9_1234_5670);
    assert_eq!(h.read(0x1c, 2), 1);
    // Reads past the structure are zero.
    assert_eq!(h.read(0x38, 8), 0);
    assert_eq!(h.read(0xff8, 8), 0);
}

#[test]
fn rings_outside_ram_need_reset_and_raise_config_interrupt() {
    let mut h = Harness::new(4);
    h.enable_msix();
    h.negotiate(VIRTIO_F_VERSION_1);
    h.write(0x10, 0, 2);
    h.setup_queue(0, 16, 0xf000_0000_0000);
    h.driver_ok();
    assert!(!h.dev.is_active());
    assert_ne!(h.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(h.fake.lock().unwrap().activations.is_empty());
    assert_eq!(h.msi.triggers(), [0], "config vector");
    assert_eq!(h.read(ISR_OFFSET, 1) as u8, ISR_CONFIG);
    assert_eq!(h.read(ISR_OFFSET, 1), 0, "read-to-clear");

    // Rings straddling the end of RAM, misaligned rings: the same.
    for base in [RAM_SIZE - 0x1800, 0x1_0008] {
        h.set_status(0);
        h.negotiate(VIRTIO_F_VERSION_1);
        h.setup_queue(0, 16, base);
        h.write(0x20, base + 8, 8); // misaligned descriptor table for the second case
        h.driver_ok();
        assert_ne!(h.status() & STATUS_DEVICE_NEEDS_RESET, 0, "base {base:#x}");
        h.driver_ok();
        assert!(!h.dev.is_active());
    }

    h.set_status(0);
    assert_eq!(h.status(), 0);
    h.bring_up();
    assert!(h.dev.is_active());
}

#[test]
fn device_activation_failure_needs_reset() {
    let mut h = Harness::new(4);
    h.fake.lock().unwrap().fail_activate = true;
    h.bring_up();
    assert_ne!(h.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert!(!h.dev.is_active());
    h.fake.lock().unwrap().fail_activate = false;
    h.set_status(0);
    // A subscriber the event loop refuses: the device is stopped again.
    *h.registrar.fail_add.lock().unwrap() = true;
    h.bring_up();
    assert_ne!(h.status() & STATUS_DEVICE_NEEDS_RESET, 0);
    assert_eq!(h.registrar.live_count(), 0);
    assert!(h.fake.lock().unwrap().resets >= 1);
    h.set_status(0);
    h.bring_up();
    assert!(h.dev.is_active());
    assert_eq!(h.registrar.live_count(), 2);
}

#[test]
fn device_asked_needs_reset_until_the_driver_resets() {
    let mut h = Harness::new(4);
    h.enable_msix();
    h.bring_up();
    let driver_ok = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
    assert_eq!(h.status(), driver_ok);
    let interrupt = h.fake.lock().unwrap().interrupt.clone().unwrap();
    interrupt.needs_reset().unwrap();
    assert_eq!(h.dev.device_status(), driver_ok | STATUS_DEVICE_NEEDS_RESET);
    assert_eq!(h.msi.triggers(), [0], "a configuration change notification");
    h.msi.take();
    assert_eq!(h.read(ISR_OFFSET, 1) as u8, ISR_CONFIG);
    assert_eq!(h.status(), driver_ok | STATUS_DEVICE_NEEDS_RESET);
    // Asking again does not notify again; the driver cannot clear the bit by writing.
    interrupt.needs_reset().unwrap();
    assert!(h.msi.triggers().is_empty());
    h.driver_ok();
    assert_eq!(h.status(), driver_ok | STATUS_DEVICE_NEEDS_RESET);
    assert!(
        h.dev.is_active(),
        "the device is not stopped behind the driver's back"
    );

    h.set_status(0);
    assert_eq!(h.status(), 0);
    h.msi.take();
    // The retired activation's handle cannot mark the next session.
    interrupt.needs_reset().unwrap();
    h.bring_up();
    assert_eq!(h.status(), driver_ok);
    assert!(h.msi.triggers().is_empty());
}

#[test]
fn reset_mid_use_returns_to_a_clean_state() {
    let mut h = Harness::new(4);
    h.enable_msix();
    h.bring_up();
    assert!(h.dev.is_active());
    assert_eq!(h.registrar.live_count(), 2);
    let first_interrupt = h.fake.lock().unwrap().interrupt.clone().unwrap();
    h.write(NOTIFY_OFFSET, 0, 2);
    h.registrar.run_once(100);
    assert_eq!(h.fake.lock().unwrap().kicks.load(Ordering::SeqCst), 1);

    h.set_status(0);
    assert!(!h.dev.is_active());
    assert_eq!(h.registrar.live_count(), 0, "subscribers removed");
    assert_eq!(h.fake.lock().unwrap().resets, 1);
    assert_eq!(h.status(), 0);
    assert_eq!(h.dev.acked_features(), 0);
    assert_eq!(h.read(0x10, 2), 0xffff);
    for (queue, max) in [(0u64, 16u64), (1, 256)] {
        h.write(0x16, queue, 2);
        assert_eq!(h.read(0x18, 2), max);
        assert_eq!(h.read(0x1a, 2), 0xffff);
        assert_eq!(h.read(0x1c, 2), 0);
        assert_eq!(h.read(0x20, 8), 0);
        assert_eq!(h.read(0x28, 8), 0);
        assert_eq!(h.read(0x30, 8), 0);
    }
    // The old interrupt handle is dead.
    h.msi.take();
    first_interrupt
        .trigger(VirtioInterruptType::Queue(0))
        .unwrap();
    assert!(h.msi.triggers().is_empty());

    h.bring_up();
    assert!(h.dev.is_active());
    assert_eq!(h.fake.lock().unwrap().activations.len(), 2);
    h.write(NOTIFY_OFFSET + 4, 1, 2);
    h.registrar.run_once(100);
    assert_eq!(h.fake.lock().unwrap().kicks.load(Ordering::SeqCst), 2);
}

#[test]
fn notify_reaches_only_enabled_queues() {
    let mut h = Harness::new(4);
    h.negotiate(VIRTIO_F_VERSION_1);
    h.setup_queue(0, 16, 0x1_0000);
    h.driver_ok();
    h.write(NOTIFY_OFFSET + 4, 1, 2); // queue 1 never enabled
    h.write(NOTIFY_OFFSET + 8, 2, 2); // no queue 2
    h.write(NOTIFY_OFFSET + 0xffc, 2, 4);
    assert_eq!(h.registrar.run_once(0), 0);
    assert!(h.dev.kicks[1].read().is_err(), "nothing pending");
    h.write(NOTIFY_OFFSET, 0, 4); // a 4-byte write still counts
    assert_eq!(h.registrar.run_once(100), 1);
    assert_eq!(h.fake.lock().unwrap().kicks.load(Ordering::SeqCst), 1);
}

#[test]
fn interrupts_follow_vectors_and_set_isr() {
    let mut h = Harness::new(4);
    h.enable_msix();
    h.bring_up();
    let interrupt = h.fake.lock().unwrap().interrupt.clone().unwrap();
    interrupt.trigger(VirtioInterruptType::Queue(1)).unwrap();
    interrupt.trigger(VirtioInterruptType::Queue(0)).unwrap();
    assert_eq!(h.msi.triggers(), [2, 1], "queue n was given vector n + 1");
    assert_eq!(h.read(ISR_OFFSET, 1) as u8, ISR_QUEUE);
    assert!(interrupt.trigger(VirtioInterruptType::Queue(2)).is_err());

    h.msi.take();
    let generation = h.read(0x15, 1);
    interrupt.trigger(VirtioInterruptType::Config).unwrap();
    assert_eq!(h.msi.triggers(), [0]);
    assert_eq!(h.read(0x15, 1), generation + 1);
    assert_eq!(
        h.read(ISR_OFFSET, 4) as u8,
        ISR_CONFIG,
        "any width at offset 0"
    );

    // NO_VECTOR: only the ISR bit.
    h.msi.take();
    h.write(0x10, 0xffff, 2);
    interrupt.trigger(VirtioInterruptType::Config).unwrap();
    assert!(h.msi.triggers().is_empty());
    assert_eq!(
        h.read(ISR_OFFSET + 1, 1),
        0,
        "other bytes read zero, no clear"
    );
    assert_eq!(h.read(ISR_OFFSET, 1) as u8, ISR_CONFIG);

    // A masked vector goes pending and fires once on unmask.
    h.write(MSIX_TABLE_OFFSET + 16 + 12, 1, 4);
    interrupt.trigger(VirtioInterruptType::Queue(0)).unwrap();
    assert_eq!(h.read(MSIX_PBA_OFFSET, 8), 0b10);
    assert!(h.msi.triggers().is_empty());
    h.write(MSIX_TABLE_OFFSET + 16 + 12, 0, 4);
    assert_eq!(h.msi.triggers(), [1]);
    assert_eq!(h.read(MSIX_PBA_OFFSET, 8), 0);
    assert_eq!(h.read(MSIX_TABLE_OFFSET + 16 + 8, 4), 0x41);
}

#[test]
fn msix_control_goes_through_config_space() {
    let mut h = Harness::new(4);
    let reg = h.dev.msix_cap_offset / 4;
    assert!(!h.dev.interrupts.msix.enabled());
    h.dev.write_config_register(reg, 3, &[0xc0]);
    assert!(h.dev.interrupts.msix.enabled());
    assert!(h.dev.interrupts.msix.function_masked());
    assert_eq!(
        h.dev.read_config_register(reg) >> 16,
        0xc002,
        "table size stays"
    );
    h.dev.write_config_register(reg, 0, &[0xff; 4]);
    let cap = h.dev.msix_cap_offset;
    assert_eq!(config_byte(&mut h.dev, cap), 0x11);
    h.dev.write_config_register(reg, 2, &[0, 0]);
    assert!(!h.dev.interrupts.msix.enabled());
    assert!(h
        .msi
        .take()
        .iter()
        .all(|e| matches!(e, MsiEvent::Update(..))));
}

#[test]
fn ioeventfds_follow_the_bar() {
    let mut h = Harness::new(4);
    assert!(h.dev.notify_addresses().is_empty());
    h.dev.bar_mapped(BAR_INDEX, Some(0xc000_0000));
    assert_eq!(h.ioevents.registered(), [0xc000_3000, 0xc000_3004]);
    assert_eq!(h.dev.notify_addresses(), [0xc000_3000, 0xc000_3004]);
    h.dev.bar_mapped(BAR_INDEX, Some(0xd000_0000));
    assert_eq!(h.ioevents.registered(), [0xd000_3000, 0xd000_3004]);
    h.dev.bar_mapped(BAR_INDEX, None);
    assert!(h.ioevents.registered().is_empty());
    h.dev.bar_mapped(3, Some(0xe000_0000)); // not our BAR
    assert!(h.ioevents.registered().is_empty());
}

#[test]
fn plugged_into_the_root_bus() {
    let bus = Arc::new(Bus::new());
    let mut root = PciRoot::new(bus.clone(), 0xc000_0000..0xe000_0000, 0x8000_0000).unwrap();
    let h = Harness::new(25);
    let ioevents = h.ioevents.clone();
    let dev = Arc::new(Mutex::new(h.dev));
    assert_eq!(root.add_device(dev.clone()).unwrap().to_string(), "00:01.0");
    assert_eq!(ioevents.registered(), [0xc000_3000, 0xc000_3004]);
    let mut data = [0u8; 2];
    assert!(bus.read(0xc000_0012, &mut data));
    assert_eq!(
        u16::from_le_bytes(data),
        2,
        "num_queues through the MMIO bus"
    );
    assert_eq!(
        root.device_list()[1].to_string(),
        "00:01.0 1af4:1059 Red Hat, Inc. Virtio 1.0 sound"
    );

    // Memory decoding off through CF8/CFC: BAR and ioeventfds go away; on: they come back.
    let cfg_write = |root: &mut PciRoot, reg: u32, value: u32| {
        root.write(0xcf8, 0, &(0x8000_0800 | reg << 2).to_le_bytes());
        root.write(0xcf8, 4, &value.to_le_bytes());
    };
    cfg_write(&mut root, 1, 0);
    assert!(ioevents.registered().is_empty());
    assert!(!bus.read(0xc000_0012, &mut data));
    cfg_write(&mut root, 4, 0xd000_0000);
    cfg_write(&mut root, 1, 2);
    assert_eq!(ioevents.registered(), [0xd000_3000, 0xd000_3004]);
    assert!(bus.read(0xd000_0012, &mut data));
}

#[test]
fn garbage_everywhere_never_panics() {
    let mut h = Harness::new(25);
    h.enable_msix();
    h.bring_up();
    let patterns = [
        0u64,
        u64::MAX,
        0xdead_beef_dead_beef,
        0x8000_0001_0000_0001,
        0x0f,
    ];
    for pattern in patterns {
        for offset in 0..BAR_SIZE + 8 {
            for len in [1usize, 2, 4, 8] {
                let mut data = [0u8; 8];
                h.dev.read_bar(BAR_INDEX, offset, &mut data[..len]);
                h.dev
                    .write_bar(BAR_INDEX, offset, &pattern.to_le_bytes()[..len]);
            }
        }
        h.dev.write_bar(1, 0, &[1]);
        h.dev.write_bar(BAR_INDEX, u64::MAX - 1, &[1, 2, 3, 4]);
        h.dev.read_bar(BAR_INDEX, u64::MAX, &mut [0u8; 8]);
        h.dev.write_bar(BAR_INDEX, 0, &[]);
        h.dev.write_bar(BAR_INDEX, 0, &[0xff; 64]);
        for reg in 0..70 {
            for offset in 0..4 {
                for len in 1..=4 {
                    let _ = h.dev.read_config_register(reg);
                    h.dev
                        .write_config_register(reg, offset, &pattern.to_le_bytes()[..len]);
                }
            }
        }
        let _ = h.registrar.run_once(0);
    }
    // It still works after a reset.
    h.set_status(0);
    assert_eq!(h.status(), 0);
    let id_reg = h.dev.read_config_register(0);
    assert_eq!(id_reg, 0x1059_1af4);
    h.enable_msix();
    h.bring_up();
    assert!(h.dev.is_active());
}

/// Issue 12 finding 4: each of these logged a warning per write, so 3000 register writes gave
/// 3000 host log lines. Now each call site logs a bounded number a minute.
#[test]
fn guest_register_abuse_adds_a_bounded_number_of_log_lines() {
    use crate::log_limit::{capture, LINES_PER_WINDOW};

    let bus = Arc::new(Bus::new());
    let mut root = PciRoot::new(bus.clone(), 0xc000_0000..0xe000_0000, 0x8000_0000).unwrap();
    let mut h = Harness::new(25);
    h.bring_up();
    assert!(h.dev.is_active());
    let dev = Arc::new(Mutex::new(h.dev));
    root.add_device(dev.clone()).unwrap();
    let bar_write = |offset: u64, value: u64, len: usize| {
        lock(&dev).write_bar(BAR_INDEX, offset, &value.to_le_bytes()[..len]);
    };
    let cfg_write = |root: &mut PciRoot, reg: u32, value: u32| {
        root.write(0xcf8, 0, &(0x8000_0800 | reg << 2).to_le_bytes());
        root.write(0xcf8, 4, &value.to_le_bytes());
    };
    const WRITES: usize = 3000;
    let lines = capture::lines_logged_by(|| {
        for i in 0..WRITES {
            match i % 5 {
                // An enabled queue's size.
                0 => bar_write(0x18, 8, 2),
                // device_status clearing DRIVER_OK.
                1 => bar_write(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1),
                // A driver_feature write after FEATURES_OK.
                2 => bar_write(0x0c, 1, 4),
                // BAR 0 moved over RAM.
                3 => cfg_write(&mut root, 4, 0x1000),
                // A reset, then DRIVER_OK skipping FEATURES_OK.
                _ => {
                    bar_write(0x14, 0, 1);
                    bar_write(0x14, u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER), 1);
                    bar_write(
                        0x14,
                        u64::from(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_DRIVER_OK),
                        1,
                    );
                }
            }
        }
    });
    // Five kinds of write, each a call site or two: a few dozen lines at most, not thousands.
    let bound = 8 * (LINES_PER_WINDOW as usize + 1);
    assert!(
        lines.len() <= bound,
        "{WRITES} guest register writes logged {} lines (bound {bound}); the first: {:?}",
        lines.len(),
        lines.first()
    );
}

/// Issue 12 finding 5, at the transport: while Bus Master Enable is clear the device is told no
/// DMA and MSI-X messages stay pending; setting it sends them and kicks every enabled queue, so
/// work the driver queued meanwhile is picked up.
#[test]
fn bus_master_enable_gates_dma_and_msix_and_resumes_the_queues() {
    let mut h = Harness::new(4);
    h.enable_msix();
    h.bring_up();
    let interrupt = h.fake.lock().unwrap().interrupt.clone().unwrap();
    let kicks = h.fake.lock().unwrap().kicks.clone();
    assert!(interrupt.dma_allowed());

    set_bus_master(&mut h.dev, false);
    assert!(!interrupt.dma_allowed());
    interrupt.trigger(VirtioInterruptType::Queue(0)).unwrap();
    interrupt.trigger(VirtioInterruptType::Config).unwrap();
    assert!(h.msi.triggers().is_empty(), "no MSI-X while BME is clear");
    assert_eq!(h.read(MSIX_PBA_OFFSET, 8), 0b11, "both vectors pending");
    // Writing other command bits leaves it clear.
    let command = h.dev.read_config_register(COMMAND_REGISTER) as u16;
    h.dev
        .write_config_register(COMMAND_REGISTER, 0, &(command | 0x40).to_le_bytes());
    assert!(!interrupt.dma_allowed());
    assert!(h.msi.triggers().is_empty());
    assert_eq!(h.registrar.run_once(0), 0, "no kick while BME stays clear");

    set_bus_master(&mut h.dev, true);
    assert!(interrupt.dma_allowed());
    let mut sent = h.msi.triggers();
    sent.sort_unstable();
    assert_eq!(sent, [0, 1], "the pending messages go out");
    assert_eq!(h.read(MSIX_PBA_OFFSET, 8), 0);
    assert_eq!(h.registrar.run_once(100), 2, "both enabled queues kicked");
    assert_eq!(kicks.load(Ordering::SeqCst), 2);

    // A reset retires the activation's handle: no DMA for a device thread that outlives it.
    h.set_status(0);
    assert!(!interrupt.dma_allowed());
}

/// build.rs keeps only the PCI ID database's names of the functions Canto can present: each
/// virtio device Canto has (every type with a class here) and the host bridge still get theirs.
#[test]
fn every_function_canto_presents_has_its_database_name() {
    for &(device_type, _) in PCI_CLASS_OF_DEVICE_TYPE {
        let device_id = VIRTIO_PCI_DEVICE_ID_BASE + device_type as u16;
        let name = crate::pci::pci_device_name(VIRTIO_PCI_VENDOR_ID, device_id);
        assert!(
            name.starts_with("Red Hat, Inc. Virtio 1.0 ") && !name.ends_with("unknown"),
            "type {device_type}: {name}"
        );
    }
    assert_eq!(
        crate::pci::pci_device_name(VIRTIO_PCI_VENDOR_ID, VIRTIO_PCI_DEVICE_ID_BASE + 4),
        "Red Hat, Inc. Virtio 1.0 RNG"
    );
    // A vendor build.rs does not keep is unknown, like one the database does not have.
    assert_eq!(crate::pci::pci_device_name(0x10de, 0x1eb8), "unknown");
}
