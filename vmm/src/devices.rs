//! Putting the PCI bus and its virtio devices together, and wiring them to KVM.

use std::io;
use std::sync::{Arc, Mutex};

use canto_arch::layout;
use canto_devices::bus::Bus;
use canto_devices::pci::{PciDeviceInfo, PciRoot, PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN};
use canto_devices::virtio::block::{Block, DiskError, DiskFile};
use canto_devices::virtio::rng::Rng;
use canto_devices::virtio::snd::{self, BackendConfig, Sound, SoundConfig};
use canto_devices::virtio::transport::pci::{msix_vector_count, VirtioPciDevice};
use canto_devices::virtio::vsock::{Vsock, VsockError};
use canto_devices::virtio::{SharedSubscriber, VirtioDevice};
use event_manager::RemoteEndpoint;

use crate::config::{DevicesConfig, SoundSetting};
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
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error(transparent)]
    Vsock(#[from] VsockError),
}

/// One virtio device the VMM knows: how to build it from the configuration (none: the
/// configuration leaves it out; several: one per disk, say). Adding a virtio device is its
/// folder in `devices/src/virtio/` plus one entry in [`DEVICE_LIST`].
struct DeviceEntry {
    /// What the logs call it.
    name: &'static str,
    build: fn(&DevicesConfig) -> Result<Vec<BuiltDevice>, DeviceError>,
}

/// The virtio devices, in PCI slot order (the first present one is 00:01.0). Teardown resets
/// them in this order too, and their report lines come in it.
const DEVICE_LIST: &[DeviceEntry] = &[
    DeviceEntry {
        name: "sound",
        build: |config| Ok(build_sound(config)?.into_iter().collect()),
    },
    DeviceEntry {
        name: "rng",
        build: |config| {
            Ok(config
                .rng
                .then(|| BuiltDevice::new(Rng::new()))
                .into_iter()
                .collect())
        },
    },
    DeviceEntry {
        name: "disk",
        build: build_disks,
    },
    DeviceEntry {
        name: "vsock",
        build: |config| match &config.vsock {
            Some(v) => Ok(vec![BuiltDevice::new(Vsock::new(v.cid, &v.socket)?)]),
            None => Ok(Vec::new()),
        },
    },
];

/// A device built from its [`DeviceEntry`]: what the transport drives, and the line it reports at
/// exit.
pub struct BuiltDevice {
    name: &'static str,
    device: Arc<Mutex<dyn VirtioDevice>>,
    report: Option<Box<dyn Fn() -> String + Send>>,
}

impl BuiltDevice {
    fn new(device: impl VirtioDevice + 'static) -> Self {
        Self {
            name: "",
            device: Arc::new(Mutex::new(device)),
            report: None,
        }
    }

    /// `report` gives the line logged (at info) when the VM ends, after the device's reset.
    fn with_report(mut self, report: impl Fn() -> String + Send + 'static) -> Self {
        self.report = Some(Box::new(report));
        self
    }
}

fn build_sound(config: &DevicesConfig) -> Result<Option<BuiltDevice>, DeviceError> {
    let Some(sound) = choose_sound(&config.sound) else {
        return Ok(None);
    };
    let sound = Sound::new(sound)?;
    let stats = sound.stats_handle();
    let device = BuiltDevice::new(sound);
    Ok(Some(device.with_report(move || {
        format!("sound stats: {}", stats.snapshot())
    })))
}

/// A virtio-blk device per configured disk, every file opened and checked first (one line
/// naming the file for each problem, see `DiskError`).
fn build_disks(config: &DevicesConfig) -> Result<Vec<BuiltDevice>, DeviceError> {
    let configs: Vec<_> = config.disks.iter().map(|d| d.to_block_config()).collect();
    let disks = DiskFile::open_all(&configs)?;
    Ok(disks
        .into_iter()
        .map(|disk| BuiltDevice::new(Block::new(disk)))
        .collect())
}

/// The sound configuration to use: the configured one, or ALSA `default` falling back to null
/// (with one line on stderr saying so) when it cannot be opened.
pub fn choose_sound(setting: &SoundSetting) -> Option<SoundConfig> {
    let device = match setting {
        SoundSetting::Off => return None,
        SoundSetting::Device(device) => return Some(device.to_sound_config()),
        SoundSetting::Auto => SoundConfig::default(),
    };
    // alsa-lib prints its own multi-line complaints on stderr; the user gets our one line instead.
    let probed = with_stderr_silenced(|| snd::probe(&device));
    match probed {
        Ok(()) => Some(device),
        Err(e) => {
            eprintln!("canto: sound: cannot open ALSA 'default' ({e}); using the null backend (choose one with --sound)");
            Some(device.with_backend(BackendConfig::Null))
        }
    }
}

/// The PCI bus and its devices, built and mapped.
pub struct PciDevices {
    pub root: Arc<Mutex<PciRoot>>,
    /// In [`DEVICE_LIST`] order.
    devices: Vec<BuiltDevice>,
}

impl PciDevices {
    pub fn list(&self) -> Vec<PciDeviceInfo> {
        self.root
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .device_list()
    }

    /// Ends every device, in list order (the vCPUs must be stopped): their threads stop and
    /// backends flush (a WAV file gets its final header) even when the guest did not release
    /// them. Returns the devices' report lines, in list order.
    pub fn teardown(&self) -> Vec<String> {
        for built in &self.devices {
            log::debug!("teardown: resetting the {} device", built.name);
            built
                .device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reset();
        }
        self.devices
            .iter()
            .filter_map(|d| d.report.as_ref().map(|report| report()))
            .collect()
    }
}

/// Builds the devices of `list` that `config` asks for, in list order.
fn build_devices(
    list: &[DeviceEntry],
    config: &DevicesConfig,
) -> Result<Vec<BuiltDevice>, DeviceError> {
    let mut devices = Vec::new();
    for entry in list {
        for mut built in (entry.build)(config)? {
            built.name = entry.name;
            devices.push(built);
        }
    }
    Ok(devices)
}

/// Builds the PCI root bus on ports 0xCF8-0xCFF with the configured virtio devices.
pub fn build_pci(
    vm: &Vm,
    pio: &Bus,
    mmio: Arc<Bus>,
    router: &Arc<GsiRouter>,
    endpoint: RemoteEndpoint<SharedSubscriber>,
    config: &DevicesConfig,
) -> Result<PciDevices, DeviceError> {
    let low_ram_end = canto_arch::memory::low_ram_end(vm.mem_size);
    let window = layout::PCI_MMIO32_START..layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE;
    let mut root = PciRoot::new(mmio, window, low_ram_end)?;
    root.reserve_range(layout::IOAPIC_START..layout::IOAPIC_START + 0x1000);
    root.reserve_range(layout::APIC_START..layout::APIC_START + 0x1000);

    let ioevents = Arc::new(KvmIoEvents { vm: vm.fd.clone() });
    let registrar = Arc::new(RemoteRegistrar { endpoint });
    let devices = build_devices(DEVICE_LIST, config)?;
    for built in &devices {
        let device = built.device.clone();
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
    }

    let root = Arc::new(Mutex::new(root));
    pio.insert(root.clone(), PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN)?;
    Ok(PciDevices { root, devices })
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

#[cfg(test)]
mod tests {
    use canto_devices::virtio::{ActivateContext, ActivateError};

    use super::*;
    use crate::config::{SoundBackend, SoundCapture, SoundDeviceConfig};

    /// A device that records its resets in a shared log.
    struct Recorder {
        id: &'static str,
        log: Arc<Mutex<Vec<&'static str>>>,
    }

    impl VirtioDevice for Recorder {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[8]
        }
        fn features(&self) -> u64 {
            1 << 32
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn activate(
            &mut self,
            _ctx: ActivateContext,
        ) -> Result<Vec<SharedSubscriber>, ActivateError> {
            Ok(Vec::new())
        }
        fn reset(&mut self) {
            self.log.lock().unwrap().push(self.id);
        }
    }

    fn names(devices: &[BuiltDevice]) -> Vec<&'static str> {
        devices.iter().map(|d| d.name).collect()
    }

    #[test]
    fn the_config_chooses_the_devices_in_list_order() {
        let null_sound = SoundSetting::Device(SoundDeviceConfig {
            backend: SoundBackend::Null,
            capture: Some(SoundCapture::Null),
            outputs: 1,
            inputs: Some(1),
            jacks: 0,
        });
        let all = DevicesConfig {
            rng: true,
            sound: null_sound.clone(),
            disks: Vec::new(),
            vsock: None,
        };
        assert_eq!(
            names(&build_devices(DEVICE_LIST, &all).unwrap()),
            ["sound", "rng"]
        );
        let rng_only = DevicesConfig {
            rng: true,
            sound: SoundSetting::Off,
            disks: Vec::new(),
            vsock: None,
        };
        assert_eq!(
            names(&build_devices(DEVICE_LIST, &rng_only).unwrap()),
            ["rng"]
        );
        let sound_only = DevicesConfig {
            rng: false,
            sound: null_sound,
            disks: Vec::new(),
            vsock: None,
        };
        assert_eq!(
            names(&build_devices(DEVICE_LIST, &sound_only).unwrap()),
            ["sound"]
        );
        let none = DevicesConfig {
            rng: false,
            sound: SoundSetting::Off,
            disks: Vec::new(),
            vsock: None,
        };
        assert!(build_devices(DEVICE_LIST, &none).unwrap().is_empty());
        let bad_wav = DevicesConfig {
            rng: true,
            sound: SoundSetting::Device(SoundDeviceConfig {
                backend: SoundBackend::Wav {
                    path: "/nonexistent-dir/x.wav".into(),
                },
                capture: None,
                outputs: 1,
                inputs: Some(0),
                jacks: 0,
            }),
            disks: Vec::new(),
            vsock: None,
        };
        #[cfg(feature = "snd-wav")]
        assert!(matches!(
            build_devices(DEVICE_LIST, &bad_wav),
            Err(DeviceError::Sound(_))
        ));
        #[cfg(not(feature = "snd-wav"))]
        let _ = bad_wav;
    }

    #[test]
    fn each_disk_is_a_device_after_the_others() {
        let path = std::env::temp_dir().join(format!("canto-devices-{}.img", std::process::id()));
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let disk = |readonly| crate::config::DiskConfig {
            path: path.clone(),
            readonly,
            id: None,
        };
        let config = DevicesConfig {
            rng: true,
            sound: SoundSetting::Off,
            disks: vec![disk(true), disk(true)],
            vsock: None,
        };
        let built = build_devices(DEVICE_LIST, &config);
        let twice_writable = DevicesConfig {
            disks: vec![disk(false), disk(false)],
            ..config.clone()
        };
        let refused = build_devices(DEVICE_LIST, &twice_writable);
        let _ = std::fs::remove_file(&path);
        assert_eq!(names(&built.unwrap()), ["rng", "disk", "disk"]);
        assert!(matches!(refused, Err(DeviceError::Disk(_))));
    }

    #[test]
    fn vsock_entry_builds_the_device_or_says_why_not() {
        let dir = std::env::temp_dir().join(format!("canto-vsock-entry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let with_vsock = |socket: std::path::PathBuf| DevicesConfig {
            rng: false,
            sound: SoundSetting::Off,
            disks: Vec::new(),
            vsock: Some(crate::config::VsockConfig { cid: 3, socket }),
        };
        let built = build_devices(DEVICE_LIST, &with_vsock(dir.join("v.sock"))).unwrap();
        assert_eq!(names(&built), ["vsock"]);
        let e = build_devices(DEVICE_LIST, &with_vsock(dir.join("v.sock")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("in use"), "{e}");
        drop(built);
        let e = build_devices(DEVICE_LIST, &with_vsock("/nonexistent-dir/v.sock".into()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.starts_with("vsock: cannot create socket"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn teardown_resets_in_list_order_then_reports() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let recorder = |id: &'static str| {
            let log = log.clone();
            BuiltDevice::new(Recorder {
                id,
                log: log.clone(),
            })
            .with_report(move || format!("{id} saw {:?}", log.lock().unwrap()))
        };
        let devices = vec![recorder("first"), recorder("second"), recorder("third")];
        let mmio = Arc::new(Bus::new());
        let root = PciRoot::new(mmio, 0xc000_0000..0xd000_0000, 0x1000_0000).unwrap();
        let pci = PciDevices {
            root: Arc::new(Mutex::new(root)),
            devices,
        };
        let reports = pci.teardown();
        assert_eq!(*log.lock().unwrap(), ["first", "second", "third"]);
        // Every report comes after every reset.
        assert_eq!(
            reports,
            [
                r#"first saw ["first", "second", "third"]"#,
                r#"second saw ["first", "second", "third"]"#,
                r#"third saw ["first", "second", "third"]"#,
            ]
        );
    }

    #[test]
    fn the_sound_report_line_is_key_value_pairs() {
        let config = DevicesConfig {
            rng: false,
            sound: SoundSetting::Device(SoundDeviceConfig {
                backend: SoundBackend::Null,
                capture: Some(SoundCapture::Null),
                outputs: 1,
                inputs: Some(1),
                jacks: 0,
            }),
            disks: Vec::new(),
            vsock: None,
        };
        let built = build_sound(&config).unwrap().expect("a sound device");
        let line = (built.report.as_ref().expect("a report line"))();
        // canto-bench reads this line back (bench/src/kv.rs): `key=value` words only.
        let pairs = line
            .strip_prefix("sound stats: ")
            .unwrap_or_else(|| panic!("{line}"));
        assert!(pairs.starts_with("tx_bytes_copied=0 "), "{line}");
        assert!(
            pairs.split(' ').all(|word| word
                .split_once('=')
                .is_some_and(|(k, v)| !k.is_empty() && v.parse::<u64>().is_ok())),
            "{line}"
        );
    }
}
