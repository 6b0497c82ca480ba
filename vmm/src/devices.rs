//! Putting the PCI bus and its virtio devices together, and wiring them to KVM.

use std::io;
use std::sync::{Arc, Mutex};

use canto_arch::layout;
use canto_devices::bus::Bus;
use canto_devices::pci::{PciDeviceInfo, PciRoot, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN};
use canto_devices::virtio::rng::Rng;
use canto_devices::virtio::snd::{self, BackendConfig, Sound, SoundConfig};
use canto_devices::virtio::transport::pci::{msix_vector_count, VirtioPciDevice};
use canto_devices::virtio::{SharedSubscriber, VirtioDevice};
use event_manager::RemoteEndpoint;

use crate::interrupts::{GsiRouter, KvmIoEvents, KvmMsiGroup, RemoteRegistrar};
use crate::vm::Vm;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot set up the PCI bus: {0}")]
    Pci(#[from] canto_devices::pci::PciError),
    #[error("cannot set up a virtio-pci device: {0}")]
    VirtioPci(#[from] canto_devices::virtio::transport::pci::VirtioPciError),
    #[error("cannot set up interrupts: {0}")]
    Interrupts(#[source] io::Error),
    #[error("cannot set up the sound device: {0}")]
    Sound(#[from] snd::Error),
    #[error(transparent)]
    Bus(#[from] canto_devices::bus::BusError),
}

/// What the user asked for in the way of devices.
pub struct DeviceOptions {
    pub rng: bool,
    /// None: no sound device.
    pub sound: Option<SoundConfig>,
}

/// The sound configuration to use: the user's, or ALSA `default` falling back to null (with one
/// line on stderr saying so) when it cannot be opened.
pub fn choose_sound(user: Option<SoundConfig>, disabled: bool) -> Option<SoundConfig> {
    if disabled {
        return None;
    }
    if let Some(config) = user {
        return Some(config);
    }
    let default = SoundConfig::default();
    // alsa-lib prints its own multi-line complaints on stderr; the user gets our one line instead.
    let probed = with_stderr_silenced(|| snd::probe(&default));
    match probed {
        Ok(()) => Some(default),
        Err(e) => {
            eprintln!("canto: sound: cannot open ALSA 'default' ({e}); using the null backend (choose one with --sound)");
            Some(default.with_backend(BackendConfig::Null))
        }
    }
}

/// The PCI bus and its devices, built and mapped.
pub struct PciDevices {
    pub root: Arc<Mutex<PciRoot>>,
    pub sound: Option<Arc<Mutex<Sound>>>,
}

impl PciDevices {
    pub fn list(&self) -> Vec<PciDeviceInfo> {
        self.root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .device_list()
    }
}

/// Builds the PCI root bus on ports 0xCF8-0xCFF with the requested virtio devices.
pub fn build_pci(
    vm: &Vm,
    pio: &Bus,
    mmio: Arc<Bus>,
    router: &Arc<GsiRouter>,
    endpoint: RemoteEndpoint<SharedSubscriber>,
    options: DeviceOptions,
) -> Result<PciDevices, DeviceError> {
    let low_ram_end = canto_arch::memory::low_ram_end(vm.mem_size);
    let window = layout::PCI_MMIO32_START..layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE;
    let mut root = PciRoot::new(mmio, window, low_ram_end)?;
    root.reserve_range(layout::IOAPIC_START..layout::IOAPIC_START + 0x1000);
    root.reserve_range(layout::APIC_START..layout::APIC_START + 0x1000);

    let ioevents = Arc::new(KvmIoEvents { vm: vm.fd.clone() });
    let registrar = Arc::new(RemoteRegistrar { endpoint });
    let mut add = |device: Arc<Mutex<dyn VirtioDevice>>| -> Result<(), DeviceError> {
        let vectors = msix_vector_count(&*device.lock().unwrap_or_else(|e| e.into_inner()));
        let msi =
            KvmMsiGroup::new(router.clone(), &vm.fd, vectors).map_err(DeviceError::Interrupts)?;
        let transport = VirtioPciDevice::new(
            device,
            vm.mem.clone(),
            Arc::new(msi),
            ioevents.clone(),
            registrar.clone(),
        )?;
        root.add_device(Arc::new(Mutex::new(transport)))?;
        Ok(())
    };

    let mut sound = None;
    if let Some(config) = options.sound {
        let device = Arc::new(Mutex::new(Sound::new(config)?));
        sound = Some(device.clone());
        add(device)?;
    }
    if options.rng {
        add(Arc::new(Mutex::new(Rng::new())))?;
    }

    let root = Arc::new(Mutex::new(root));
    pio.insert(root.clone(), PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN)?;
    Ok(PciDevices { root, sound })
}

/// Runs `f` with file descriptor 2 pointed at /dev/null (only at startup, before other threads).
fn with_stderr_silenced<T>(f: impl FnOnce() -> T) -> T {
    let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") else {
        return f();
    };
    // SAFETY: dup only creates a new descriptor for stderr; we check the result.
    let saved = unsafe { libc::dup(libc::STDERR_FILENO) };
    if saved < 0 {
        return f();
    }
    // SAFETY: both descriptors are open; dup2 atomically repoints stderr.
    unsafe {
        libc::dup2(
            std::os::unix::io::AsRawFd::as_raw_fd(&null),
            libc::STDERR_FILENO,
        )
    };
    let result = f();
    // SAFETY: `saved` is the duplicate made above; restoring and closing it is our business.
    unsafe {
        libc::dup2(saved, libc::STDERR_FILENO);
        libc::close(saved);
    }
    result
}
