//! The modern virtio-pci transport (VIRTIO 1.2 §4.1).
//!
//! [`VirtioPciDevice`] wraps a [`VirtioDevice`] as a PCI function with one 32-bit,
//! non-prefetchable memory BAR (BAR 0, [`BAR_SIZE`] bytes) that holds every structure:
//!
//! | offset   | what                                              |
//! |----------|---------------------------------------------------|
//! | `0x0000` | common configuration (0x38 bytes)                 |
//! | `0x1000` | ISR status (1 byte, read-to-clear)                |
//! | `0x2000` | device-specific configuration (0x1000 bytes)      |
//! | `0x3000` | notify: queue `n` at `0x3000 + 4 * n`             |
//! | `0x4000` | MSI-X table (one vector per queue + config)       |
//! | `0x5000` | MSI-X PBA                                         |
//!
//! Queue notifications are KVM ioeventfds (through [`IoEventRegistrar`]) on the notify addresses,
//! registered whenever the BAR is mapped, so a kick never exits to the VMM. Interrupts go out as
//! MSI-X messages (through [`MsiInterruptGroup`]); the transport has no INTx.

mod common_config;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::SubscriberId;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use common_config::CommonConfig;
pub use common_config::{
    CommonConfigAction, QueueSettings, COMMON_CONFIG_LEN, STATUS_ACKNOWLEDGE,
    STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FAILED, STATUS_FEATURES_OK,
    VIRTIO_MSI_NO_VECTOR,
};

use crate::pci::config::{
    PciBar, PciBarKind, PciConfigError, PciConfigSpace, PciIdentity, COMMAND_REGISTER,
};
use crate::pci::msix::{MsiInterruptGroup, Msix, MsixCapability, MsixError};
use crate::pci::PciDevice;
use virtio_bindings::virtio_ids::{
    VIRTIO_ID_BLOCK, VIRTIO_ID_RNG, VIRTIO_ID_SOUND, VIRTIO_ID_VSOCK,
};

use crate::virtio::{
    ActivateContext, ActivateError, ActiveQueue, SubscriberRegistrar, VirtioDevice,
    VirtioInterrupt, VirtioInterruptType, VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_VERSION_1,
};

/// Red Hat's vendor id, which virtio uses.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern (non-transitional) virtio devices have device id 0x1040 + the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Revision 1: a modern-only device (VIRTIO 1.2 §4.1.2.1).
const VIRTIO_PCI_REVISION: u8 = 1;
/// The PCI class code (class, subclass, prog-if) each virtio device type is given, so a guest's
/// PCI listing says what the function is; types not listed are "unclassified, other".
const PCI_CLASS_OF_DEVICE_TYPE: &[(u32, u32)] = &[
    (VIRTIO_ID_BLOCK, 0x01_80_00), // mass storage, other
    (VIRTIO_ID_RNG, 0x00_ff_00),   // unclassified, other
    (VIRTIO_ID_VSOCK, 0x07_80_00), // communication, other
    (VIRTIO_ID_SOUND, 0x04_01_00), // multimedia, audio
];
const CLASS_UNCLASSIFIED_OTHER: u32 = 0x00_ff_00;

/// The class code a function carrying `device_type` gets.
fn pci_class_of(device_type: u32) -> u32 {
    PCI_CLASS_OF_DEVICE_TYPE
        .iter()
        .find(|(t, _)| *t == device_type)
        .map_or(CLASS_UNCLASSIFIED_OTHER, |(_, class)| *class)
}

/// The one BAR, its size, and where each structure sits in it.
pub const BAR_INDEX: u8 = 0;
pub const BAR_SIZE: u64 = 0x8000;
pub const COMMON_CONFIG_OFFSET: u64 = 0x0000;
pub const ISR_OFFSET: u64 = 0x1000;
pub const ISR_LEN: u64 = 1;
pub const DEVICE_CONFIG_OFFSET: u64 = 0x2000;
pub const DEVICE_CONFIG_LEN: u64 = 0x1000;
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notify addresses (notify_off_multiplier).
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Every region above gets 4 KiB of the BAR.
const REGION_SPAN: u64 = 0x1000;
/// The most queues the layout has room for: one MSI-X table entry each plus one for config
/// changes must fit in a region.
pub const MAX_QUEUES: usize = (REGION_SPAN / 16) as usize - 1;

/// ISR status bits (VIRTIO 1.2 §4.1.4.5).
pub const ISR_QUEUE: u8 = 1;
pub const ISR_CONFIG: u8 = 2;

/// Vendor-specific capability id, which virtio structures use.
const PCI_CAP_ID_VENDOR: u8 = 0x09;
/// virtio_pci_cap.cfg_type values.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
/// Length of struct virtio_pci_cap.
const VIRTIO_PCI_CAP_LEN: usize = 16;
/// Offsets inside struct virtio_pci_cfg_cap of the window fields and the data.
const PCI_CFG_CAP_BAR: usize = 4;
const PCI_CFG_CAP_OFFSET: usize = 8;
const PCI_CFG_CAP_LENGTH: usize = 12;
const PCI_CFG_CAP_DATA: usize = 16;

/// Feature bits that need transport support this transport lacks; never offered even if the
/// device asks: ACCESS_PLATFORM (33), RING_PACKED (34), SR_IOV (37), NOTIFICATION_DATA (38),
/// NOTIF_CONFIG_DATA (39), RING_RESET (40), ADMIN_VQ (41).
const UNSUPPORTED_TRANSPORT_FEATURES: u64 =
    1 << 33 | 1 << 34 | 1 << 37 | 1 << 38 | 1 << 39 | 1 << 40 | 1 << 41;

/// Registers the queue notify addresses as KVM ioeventfds; the VMM implements it.
pub trait IoEventRegistrar: Send + Sync {
    fn register(&self, addr: u64, evt: &EventFd) -> io::Result<()>;
    fn unregister(&self, addr: u64, evt: &EventFd) -> io::Result<()>;
}

/// Errors from building a virtio-pci function.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    #[error("a virtio-pci device needs 1..={MAX_QUEUES} queues, this one has {0}")]
    QueueCount(usize),
    #[error("queue {index}: maximum size {size} is not a power of two up to 32768")]
    QueueMaxSize { index: usize, size: u16 },
    #[error("virtio device type {0} does not fit a PCI device id")]
    DeviceType(u32),
    #[error("cannot create a queue eventfd: {0}")]
    EventFd(#[source] io::Error),
    #[error("MSI-X: {0}")]
    Msix(#[from] MsixError),
    #[error("configuration space: {0}")]
    Config(#[from] PciConfigError),
}

/// Why DRIVER_OK did not start the device.
#[derive(Debug, thiserror::Error)]
enum ActivationError {
    #[error("queue {0}: {1}")]
    Queue(usize, String),
    #[error("cannot duplicate the kick eventfd of queue {0}: {1}")]
    Kick(usize, #[source] io::Error),
    #[error("the device refused to start: {0}")]
    Device(#[from] ActivateError),
    #[error("cannot register the device's event-loop subscriber: {0}")]
    Subscriber(#[source] io::Error),
}

/// How many MSI-X vectors a virtio-pci function for `device` has (one per queue, one for
/// configuration changes): the size of the `MsiInterruptGroup` the VMM must provide.
pub fn msix_vector_count(device: &dyn VirtioDevice) -> u16 {
    (device.queue_max_sizes().len() + 1).min(usize::from(u16::MAX)) as u16
}

/// The MSI-X vector of each interrupt source and the ISR, shared between the transport (vCPU
/// threads change the vectors) and the devices' threads (which raise interrupts).
pub(crate) struct InterruptState {
    pub(crate) msix: Msix,
    isr: AtomicU8,
    pub(crate) config_generation: AtomicU8,
    pub(crate) config_vector: AtomicU16,
    pub(crate) queue_vectors: Vec<AtomicU16>,
    /// The command register's Bus Master Enable: devices do no DMA while it is clear.
    bus_master: AtomicBool,
}

impl InterruptState {
    fn raise(&self, isr_bit: u8, vector: u16) -> io::Result<()> {
        // The ISR bit goes up before the message goes out (VIRTIO 1.2 §4.1.4.5.1).
        self.isr.fetch_or(isr_bit, Ordering::AcqRel);
        if vector == VIRTIO_MSI_NO_VECTOR {
            return Ok(());
        }
        self.msix.trigger(vector)
    }

    fn raise_config(&self) -> io::Result<()> {
        self.raise(ISR_CONFIG, self.config_vector.load(Ordering::Acquire))
    }

    fn reset_vectors(&self) {
        self.config_vector
            .store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        for vector in &self.queue_vectors {
            vector.store(VIRTIO_MSI_NO_VECTOR, Ordering::Release);
        }
        self.isr.store(0, Ordering::Release);
    }
}

/// The interrupt handle given to a device on activation. A reset retires it, so a device thread
/// that outlives the reset briefly cannot raise interrupts the new driver session does not
/// expect.
struct ActivationInterrupt {
    state: Arc<InterruptState>,
    live: AtomicBool,
    /// The device asked for DEVICE_NEEDS_RESET. Kept here, per activation, rather than in the
    /// shared state: a device thread racing a reset cannot mark the next driver session.
    needs_reset: AtomicBool,
}

impl VirtioInterrupt for ActivationInterrupt {
    fn trigger(&self, kind: VirtioInterruptType) -> io::Result<()> {
        if !self.live.load(Ordering::Acquire) {
            return Ok(());
        }
        match kind {
            VirtioInterruptType::Config => {
                // The device's configuration changed: drivers re-read until the generation
                // stays put.
                self.state.config_generation.fetch_add(1, Ordering::AcqRel);
                self.state.raise_config()
            }
            VirtioInterruptType::Queue(index) => {
                let vector = self
                    .state
                    .queue_vectors
                    .get(usize::from(index))
                    .ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("interrupt for queue {index}, which does not exist"),
                        )
                    })?
                    .load(Ordering::Acquire);
                self.state.raise(ISR_QUEUE, vector)
            }
        }
    }

    fn needs_reset(&self) -> io::Result<()> {
        if !self.live.load(Ordering::Acquire) {
            return Ok(());
        }
        // Set before the notification: the driver reads the status when it arrives.
        if self.needs_reset.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.state.raise_config()
    }

    fn dma_allowed(&self) -> bool {
        self.live.load(Ordering::Acquire) && self.state.bus_master.load(Ordering::Acquire)
    }
}

/// Which structure of the BAR an access falls in, with the offset inside it.
enum BarRegion {
    Common(u64),
    Isr(u64),
    DeviceConfig(u64),
    Notify(u64),
    MsixTable(u64),
    MsixPba(u64),
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A virtio device as a PCI function.
pub struct VirtioPciDevice {
    config: PciConfigSpace,
    device: Arc<Mutex<dyn VirtioDevice>>,
    common: CommonConfig,
    interrupts: Arc<InterruptState>,
    msix_capability: MsixCapability,
    /// Offsets of capabilities whose registers have side effects.
    msix_cap_offset: usize,
    pci_cfg_cap_offset: usize,
    /// One kick eventfd per queue, alive as long as the function: the ioeventfds point at them.
    kicks: Vec<EventFd>,
    mem: GuestMemoryMmap,
    ioevents: Arc<dyn IoEventRegistrar>,
    subscribers: Arc<dyn SubscriberRegistrar>,
    /// Where the BAR is mapped, and which queues' ioeventfds are registered there.
    bar_address: Option<u64>,
    ioevents_registered: Vec<bool>,
    /// Present while the device runs.
    activation: Option<Activation>,
}

struct Activation {
    interrupt: Arc<ActivationInterrupt>,
    subscriber_ids: Vec<SubscriberId>,
}

impl VirtioPciDevice {
    /// Wraps `device`. `msi` must have [`msix_vector_count`] vectors; `mem` is the guest RAM the
    /// queues live in.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        msi: Arc<dyn MsiInterruptGroup>,
        ioevents: Arc<dyn IoEventRegistrar>,
        subscribers: Arc<dyn SubscriberRegistrar>,
    ) -> Result<Self, VirtioPciError> {
        let (device_type, queue_max_sizes, features, vectors) = {
            let locked = lock(&device);
            (
                locked.device_type(),
                locked.queue_max_sizes().to_vec(),
                locked.features(),
                msix_vector_count(&*locked),
            )
        };
        if queue_max_sizes.is_empty() || queue_max_sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::QueueCount(queue_max_sizes.len()));
        }
        for (index, size) in queue_max_sizes.iter().enumerate() {
            if Queue::new(*size).is_err() {
                return Err(VirtioPciError::QueueMaxSize { index, size: *size });
            }
        }
        let device_id = u16::try_from(device_type)
            .ok()
            .and_then(|t| VIRTIO_PCI_DEVICE_ID_BASE.checked_add(t))
            .ok_or(VirtioPciError::DeviceType(device_type))?;
        let class_code = pci_class_of(device_type);

        let mut config = PciConfigSpace::new(PciIdentity {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id,
            class_code,
            revision_id: VIRTIO_PCI_REVISION,
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            // At least 0x40 for a modern device (VIRTIO 1.2 §4.1.2.1); the device id says it all.
            subsystem_id: device_id,
            // MSI-X only: no INTx pin.
            interrupt_pin: 0,
        });
        config.add_bar(PciBar {
            index: BAR_INDEX,
            size: BAR_SIZE,
            kind: PciBarKind::Memory32,
            prefetchable: false,
        })?;

        let num_queues = queue_max_sizes.len();
        let notify_len = num_queues as u32 * NOTIFY_OFF_MULTIPLIER;
        let virtio_cap = |cfg_type: u8, offset: u64, length: u64, extra: &[u8]| {
            let mut body = vec![
                PCI_CAP_ID_VENDOR,
                0,
                (VIRTIO_PCI_CAP_LEN + extra.len()) as u8,
                cfg_type,
                BAR_INDEX,
                0,
                0,
                0,
            ];
            body.extend_from_slice(&(offset as u32).to_le_bytes());
            body.extend_from_slice(&(length as u32).to_le_bytes());
            body.extend_from_slice(extra);
            body
        };
        let read_only = |body: &[u8]| vec![0u8; body.len()];
        for body in [
            virtio_cap(
                VIRTIO_PCI_CAP_COMMON_CFG,
                COMMON_CONFIG_OFFSET,
                COMMON_CONFIG_LEN as u64,
                &[],
            ),
            virtio_cap(
                VIRTIO_PCI_CAP_NOTIFY_CFG,
                NOTIFY_OFFSET,
                notify_len.into(),
                &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
            ),
            virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, ISR_LEN, &[]),
            virtio_cap(
                VIRTIO_PCI_CAP_DEVICE_CFG,
                DEVICE_CONFIG_OFFSET,
                DEVICE_CONFIG_LEN,
                &[],
            ),
        ] {
            config.add_capability(&body, &read_only(&body))?;
        }
        // The PCI configuration access capability: a window into the BAR through configuration
        // space. Its bar, offset, length and data fields are the driver's to write.
        let pci_cfg_body = virtio_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, &[0; 4]);
        let mut pci_cfg_writable = vec![0u8; pci_cfg_body.len()];
        pci_cfg_writable[PCI_CFG_CAP_BAR] = 0xff;
        pci_cfg_writable[PCI_CFG_CAP_OFFSET..].fill(0xff);
        let pci_cfg_cap_offset = config.add_capability(&pci_cfg_body, &pci_cfg_writable)?;

        let msix_capability = MsixCapability::new(
            vectors,
            BAR_INDEX,
            MSIX_TABLE_OFFSET as u32,
            BAR_INDEX,
            MSIX_PBA_OFFSET as u32,
        )?;
        let (msix_body, msix_writable) = msix_capability.to_bytes();
        let msix_cap_offset = config.add_capability(&msix_body, &msix_writable)?;

        // Bus Master Enable is clear out of reset: no message until the driver sets it.
        let msix = Msix::new(vectors, msi)?;
        msix.set_bus_master(config.bus_master());
        let interrupts = Arc::new(InterruptState {
            msix,
            isr: AtomicU8::new(0),
            config_generation: AtomicU8::new(0),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: (0..num_queues)
                .map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR))
                .collect(),
            bus_master: AtomicBool::new(config.bus_master()),
        });
        let kicks = (0..num_queues)
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<Result<Vec<_>, _>>()
            .map_err(VirtioPciError::EventFd)?;
        let offered = (features | VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX)
            & !UNSUPPORTED_TRANSPORT_FEATURES;

        Ok(Self {
            config,
            device,
            common: CommonConfig::new(offered, &queue_max_sizes),
            interrupts,
            msix_capability,
            msix_cap_offset,
            pci_cfg_cap_offset,
            kicks,
            mem,
            ioevents,
            subscribers,
            bar_address: None,
            ioevents_registered: vec![false; num_queues],
            activation: None,
        })
    }

    /// The device status register.
    pub fn device_status(&self) -> u8 {
        let needs_reset = if self.activation_needs_reset() {
            STATUS_DEVICE_NEEDS_RESET
        } else {
            0
        };
        self.common.status() | needs_reset
    }

    /// Whether the device is running (DRIVER_OK accepted and activation succeeded).
    pub fn is_active(&self) -> bool {
        self.activation.is_some()
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.common.acked_features()
    }

    /// The notify address of each queue while the BAR is mapped.
    pub fn notify_addresses(&self) -> Vec<u64> {
        self.bar_address.map_or_else(Vec::new, |base| {
            (0..self.kicks.len() as u64)
                .map(|q| base + NOTIFY_OFFSET + q * u64::from(NOTIFY_OFF_MULTIPLIER))
                .collect()
        })
    }

    fn region(&self, offset: u64, len: usize) -> Option<BarRegion> {
        let end = offset.checked_add(len as u64)?;
        let within = |start: u64, span: u64| offset >= start && end <= start + span;
        if within(COMMON_CONFIG_OFFSET, REGION_SPAN) {
            Some(BarRegion::Common(offset - COMMON_CONFIG_OFFSET))
        } else if within(ISR_OFFSET, REGION_SPAN) {
            Some(BarRegion::Isr(offset - ISR_OFFSET))
        } else if within(DEVICE_CONFIG_OFFSET, DEVICE_CONFIG_LEN) {
            Some(BarRegion::DeviceConfig(offset - DEVICE_CONFIG_OFFSET))
        } else if within(NOTIFY_OFFSET, REGION_SPAN) {
            Some(BarRegion::Notify(offset - NOTIFY_OFFSET))
        } else if within(MSIX_TABLE_OFFSET, self.msix_capability.table_len()) {
            Some(BarRegion::MsixTable(offset - MSIX_TABLE_OFFSET))
        } else if within(MSIX_PBA_OFFSET, self.msix_capability.pba_len()) {
            Some(BarRegion::MsixPba(offset - MSIX_PBA_OFFSET))
        } else {
            None
        }
    }

    /// Whether the running device has asked for DEVICE_NEEDS_RESET.
    fn activation_needs_reset(&self) -> bool {
        self.activation
            .as_ref()
            .is_some_and(|a| a.interrupt.needs_reset.load(Ordering::Acquire))
    }

    /// Brings a device thread's DEVICE_NEEDS_RESET into the status register before the driver
    /// looks at it (or writes it: the bit survives every write but a reset).
    fn absorb_needs_reset(&mut self) {
        if self.activation_needs_reset() {
            self.common.set_needs_reset();
        }
    }

    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        self.absorb_needs_reset();
        match self.region(offset, data.len()) {
            Some(BarRegion::Common(at)) => self.common.read(at, data, &self.interrupts),
            Some(BarRegion::Isr(at)) => {
                // Reading the ISR clears it; bytes after the first are reserved zero.
                if at == 0 {
                    if let Some(first) = data.first_mut() {
                        *first = self.interrupts.isr.swap(0, Ordering::AcqRel);
                    }
                }
            }
            Some(BarRegion::DeviceConfig(at)) => lock(&self.device).read_config(at, data),
            Some(BarRegion::MsixTable(at)) => self.interrupts.msix.read_table(at, data),
            Some(BarRegion::MsixPba(at)) => self.interrupts.msix.read_pba(at, data),
            Some(BarRegion::Notify(_)) | None => {}
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        self.absorb_needs_reset();
        match self.region(offset, data.len()) {
            Some(BarRegion::Common(at)) => match self.common.write(at, data, &self.interrupts) {
                Some(CommonConfigAction::Activate) => self.activate(),
                Some(CommonConfigAction::Reset) => self.reset(),
                None => {}
            },
            Some(BarRegion::DeviceConfig(at)) => lock(&self.device).write_config(at, data),
            Some(BarRegion::Notify(at)) => {
                self.notify((at / u64::from(NOTIFY_OFF_MULTIPLIER)) as usize)
            }
            Some(BarRegion::MsixTable(at)) => self.interrupts.msix.write_table(at, data),
            // The ISR and the PBA are read-only.
            Some(BarRegion::Isr(_)) | Some(BarRegion::MsixPba(_)) | None => {}
        }
    }

    /// A notify write that reached the MMIO handler instead of an ioeventfd (KVM matched no
    /// ioeventfd, e.g. for an odd width): signal the queue's kick eventfd here.
    fn notify(&self, queue: usize) {
        if !self.common.queue_enabled(queue) {
            log::debug!("virtio-pci: notify for disabled or absent queue {queue}, ignored");
            return;
        }
        if let Err(e) = self.kicks[queue].write(1) {
            crate::error_limited!("virtio-pci: kicking queue {queue}: {e}");
        }
    }

    /// DRIVER_OK: check and hand over the enabled queues and start the device. On failure the
    /// device reports DEVICE_NEEDS_RESET and raises a configuration interrupt.
    fn activate(&mut self) {
        if self.activation.is_some() {
            return;
        }
        if let Err(e) = self.try_activate() {
            crate::error_limited!(
                "virtio-pci: activating device type {}: {e}",
                self.device_type()
            );
            self.common.set_needs_reset();
            if let Err(e) = self.interrupts.raise_config() {
                crate::error_limited!("virtio-pci: raising the needs-reset interrupt: {e}");
            }
        }
    }

    fn device_type(&self) -> u32 {
        lock(&self.device).device_type()
    }

    fn try_activate(&mut self) -> Result<(), ActivationError> {
        let acked = self.common.acked_features();
        let mut queues = Vec::new();
        for (index, settings) in self.common.queues().iter().enumerate() {
            if !settings.enabled {
                continue;
            }
            let queue = self.build_queue(index, settings, acked)?;
            let kick = self.kicks[index]
                .try_clone()
                .map_err(|e| ActivationError::Kick(index, e))?;
            queues.push(ActiveQueue {
                index: index as u16,
                queue,
                kick,
            });
        }
        let interrupt = Arc::new(ActivationInterrupt {
            state: self.interrupts.clone(),
            live: AtomicBool::new(true),
            needs_reset: AtomicBool::new(false),
        });
        let context = ActivateContext {
            mem: self.mem.clone(),
            interrupt: interrupt.clone(),
            queues,
            acked_features: acked,
        };
        // The device lock is released before the subscribers are registered: registration waits
        // for the event loop, and the event loop may be waiting for the device.
        let subscribers = lock(&self.device).activate(context)?;
        let mut subscriber_ids = Vec::new();
        for subscriber in subscribers {
            match self.subscribers.add(subscriber) {
                Ok(id) => subscriber_ids.push(id),
                Err(e) => {
                    interrupt.live.store(false, Ordering::Release);
                    self.remove_subscribers(subscriber_ids);
                    lock(&self.device).reset();
                    return Err(ActivationError::Subscriber(e));
                }
            }
        }
        self.activation = Some(Activation {
            interrupt,
            subscriber_ids,
        });
        Ok(())
    }

    /// A `Queue` from the driver's settings, checked against guest memory.
    fn build_queue(
        &self,
        index: usize,
        settings: &QueueSettings,
        acked: u64,
    ) -> Result<Queue, ActivationError> {
        let fail = |what: String| ActivationError::Queue(index, what);
        let mut queue = Queue::new(settings.max_size).map_err(|e| fail(e.to_string()))?;
        queue
            .try_set_size(settings.size)
            .map_err(|e| fail(format!("size {}: {e}", settings.size)))?;
        queue
            .try_set_desc_table_address(GuestAddress(settings.desc_table))
            .map_err(|e| fail(format!("descriptor table {:#x}: {e}", settings.desc_table)))?;
        queue
            .try_set_avail_ring_address(GuestAddress(settings.avail_ring))
            .map_err(|e| fail(format!("available ring {:#x}: {e}", settings.avail_ring)))?;
        queue
            .try_set_used_ring_address(GuestAddress(settings.used_ring))
            .map_err(|e| fail(format!("used ring {:#x}: {e}", settings.used_ring)))?;
        queue.set_event_idx(acked & VIRTIO_F_RING_EVENT_IDX != 0);
        queue.set_ready(true);
        if !queue.is_valid(&self.mem) {
            return Err(fail(format!(
                "rings at {:#x}/{:#x}/{:#x} (size {}) are not inside guest RAM",
                settings.desc_table, settings.avail_ring, settings.used_ring, settings.size
            )));
        }
        Ok(queue)
    }

    fn remove_subscribers(&self, ids: Vec<SubscriberId>) {
        for id in ids {
            if let Err(e) = self.subscribers.remove(id) {
                crate::error_limited!("virtio-pci: removing an event-loop subscriber: {e}");
            }
        }
    }

    /// Device reset (0 written to device_status): stop the device, then return every register
    /// to its initial value so the driver can set everything up again.
    fn reset(&mut self) {
        if let Some(activation) = self.activation.take() {
            activation.interrupt.live.store(false, Ordering::Release);
            // Subscribers first, without the device lock: the event loop stops calling into the
            // device before the device lets go of its queues.
            self.remove_subscribers(activation.subscriber_ids);
            lock(&self.device).reset();
        } else if self.common.status() & STATUS_DRIVER_OK != 0 {
            // Activation failed earlier; the device may hold partial state.
            lock(&self.device).reset();
        }
        self.common.reset();
        self.interrupts.reset_vectors();
    }

    /// The BAR moved (or went away): move the queue ioeventfds with it.
    fn move_ioevents(&mut self, address: Option<u64>) {
        if let Some(old) = self.bar_address.take() {
            for (queue, registered) in self.ioevents_registered.iter_mut().enumerate() {
                if *registered {
                    let addr =
                        old + NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
                    if let Err(e) = self.ioevents.unregister(addr, &self.kicks[queue]) {
                        crate::error_limited!(
                            "virtio-pci: unregistering ioeventfd at {addr:#x}: {e}"
                        );
                    }
                    *registered = false;
                }
            }
        }
        if let Some(new) = address {
            for (queue, registered) in self.ioevents_registered.iter_mut().enumerate() {
                let addr = new + NOTIFY_OFFSET + queue as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
                match self.ioevents.register(addr, &self.kicks[queue]) {
                    Ok(()) => *registered = true,
                    // Kicks still work, through the MMIO exit path.
                    Err(e) => {
                        crate::error_limited!("virtio-pci: registering ioeventfd at {addr:#x}: {e}")
                    }
                }
            }
            self.bar_address = Some(new);
        }
    }

    /// Follows the command register's Bus Master Enable. While it is clear, MSI-X messages stay
    /// pending and the device does no DMA ([`VirtioInterrupt::dma_allowed`]); once it is set
    /// again the pending messages go out and every enabled queue is kicked, so the work the
    /// driver queued meanwhile is done.
    fn sync_bus_master(&mut self) {
        let enabled = self.config.bus_master();
        let was = self.interrupts.bus_master.swap(enabled, Ordering::AcqRel);
        if enabled == was {
            return;
        }
        self.interrupts.msix.set_bus_master(enabled);
        if enabled && self.activation.is_some() {
            for (queue, kick) in self.kicks.iter().enumerate() {
                if self.common.queue_enabled(queue) {
                    if let Err(e) = kick.write(1) {
                        crate::error_limited!("virtio-pci: re-kicking queue {queue}: {e}");
                    }
                }
            }
        }
    }

    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let cap = self.pci_cfg_cap_offset;
        let mut bar = [0u8; 1];
        let mut offset = [0u8; 4];
        let mut length = [0u8; 4];
        self.config.read_bytes(cap + PCI_CFG_CAP_BAR, &mut bar);
        self.config
            .read_bytes(cap + PCI_CFG_CAP_OFFSET, &mut offset);
        self.config
            .read_bytes(cap + PCI_CFG_CAP_LENGTH, &mut length);
        let offset = u64::from(u32::from_le_bytes(offset));
        let length = u32::from_le_bytes(length) as usize;
        let fits = offset
            .checked_add(length as u64)
            .is_some_and(|end| end <= BAR_SIZE);
        (bar[0] == BAR_INDEX && matches!(length, 1 | 2 | 4) && fits).then_some((offset, length))
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_space(&self) -> &PciConfigSpace {
        &self.config
    }

    fn config_space_mut(&mut self) -> &mut PciConfigSpace {
        &mut self.config
    }

    fn read_config_register(&mut self, reg: usize) -> u32 {
        let data_reg = (self.pci_cfg_cap_offset + PCI_CFG_CAP_DATA) / 4;
        if reg == data_reg {
            // A read through the PCI configuration access window: fetch the BAR bytes now.
            if let Some((offset, length)) = self.pci_cfg_window() {
                let mut data = [0u8; 4];
                self.bar_read(offset, &mut data[..length]);
                self.config.set_register(reg, u32::from_le_bytes(data));
            }
        }
        self.config.read_register(reg)
    }

    fn write_config_register(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config.write_register(reg, offset, data);
        if reg == COMMAND_REGISTER {
            self.sync_bus_master();
        }
        if reg == self.msix_cap_offset / 4 {
            let mut control = [0u8; 2];
            self.config
                .read_bytes(self.msix_cap_offset + 2, &mut control);
            self.interrupts
                .msix
                .set_control(u16::from_le_bytes(control));
        }
        if reg == (self.pci_cfg_cap_offset + PCI_CFG_CAP_DATA) / 4 {
            if let Some((bar_offset, length)) = self.pci_cfg_window() {
                let value = self.config.read_register(reg).to_le_bytes();
                self.bar_write(bar_offset, &value[..length]);
            }
        }
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == BAR_INDEX {
            self.bar_read(offset, data);
        } else {
            data.fill(0);
        }
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == BAR_INDEX {
            self.bar_write(offset, data);
        }
    }

    fn bar_mapped(&mut self, bar: u8, address: Option<u64>) {
        if bar == BAR_INDEX {
            self.move_ioevents(address);
        }
    }
}

#[cfg(test)]
pub(crate) mod test_utils;
#[cfg(test)]
mod tests;
