//! The Canto VMM: [`Vmm::build`] makes a KVM virtual machine from a [`config::VmConfig`] (which
//! the command line, [`cli::Cli`], produces), [`Vmm::run`] runs its vCPU threads and its event
//! loop until the guest ends or a stop signal arrives, tears it down and says how it ended.
//!
//! Threads: one per vCPU (KVM_RUN, port I/O and MMIO dispatch to the buses), and the main thread,
//! which runs the event loop (event-manager): the VM's end, serial input, and device work such as
//! virtio queue kicks (ioeventfds). Devices live in `canto-devices` and never call KVM directly.
//! Every thread runs under a seccomp filter of its kind ([`seccomp`]), installed before the
//! guest's first instruction.

pub mod agent_client;
pub mod cli;
pub mod cmdline;
pub mod config;
pub mod console;
pub mod devices;
mod event_loop;
pub mod interrupts;
pub mod jail;
pub mod landlock;
pub mod loader;
pub mod sandbox;
pub mod seccomp;
pub mod signals;
pub mod terminal;
pub mod vcpu;
pub mod vm;

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use canto_arch::regs::{self, BootEntry};
use canto_devices::bus::Bus;
use canto_devices::legacy::{
    AcpiPmRegisters, I8042Reset, SerialConsole, ACPI_PM_PORT_BASE, ACPI_PM_PORT_LEN,
    I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};
use canto_devices::pci::PciDeviceInfo;
use canto_devices::virtio::SharedSubscriber;
use event_manager::{EventManager, SubscriberOps};
use kvm_ioctls::{Kvm, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use config::{SerialConfig, VmConfig};
use event_loop::{ExitWatcher, StdinToSerial, StopSignalWatcher};
use signals::StopSignals;
use terminal::RawTerminal;
use vcpu::{ExitReporter, VcpuContext, VcpuThread, VmExit};

/// The serial console's legacy interrupt (COM1).
pub(crate) const SERIAL_IRQ: u32 = 4;

/// Everything that can stop Canto before or while the guest runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error(transparent)]
    Load(#[from] loader::LoadError),
    #[error(transparent)]
    Devices(#[from] devices::DeviceError),
    #[error("cannot open the serial output file '{path}': {source}")]
    SerialFile {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up {what}: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot set up vCPU {id}: {reason}")]
    Vcpu { id: u8, reason: String },
    #[error("cannot set up the device bus: {0}")]
    Bus(#[from] canto_devices::bus::BusError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the event loop failed: {0:?}")]
    EventLoop(event_manager::Error),
    #[error("the guest stopped with an error: {0}")]
    Guest(String),
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
}

/// Serial output that reaches its destination byte by byte, so a crash loses nothing. When the
/// destination goes away (a closed pipe, a full disk) it says so once and discards the rest, so
/// the guest keeps running.
struct SerialOutput<W: Write> {
    out: W,
    broken: bool,
}

impl<W: Write> SerialOutput<W> {
    fn new(out: W) -> Self {
        Self { out, broken: false }
    }
}

impl<W: Write> Write for SerialOutput<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.broken {
            if let Err(e) = self.out.write_all(buf).and_then(|()| self.out.flush()) {
                log::warn!("serial output stopped: {e}; further guest output is discarded");
                self.broken = true;
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn serial_output(mode: &SerialConfig) -> Result<Box<dyn Write + Send>, Error> {
    Ok(match mode {
        SerialConfig::Stdio => Box::new(SerialOutput::new(io::stdout())),
        SerialConfig::Null => Box::new(io::sink()),
        SerialConfig::File { path } => {
            Box::new(SerialOutput::new(File::create(path).map_err(|source| {
                Error::SerialFile {
                    path: path.clone(),
                    source,
                }
            })?))
        }
    })
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

fn eventfd(what: &'static str) -> Result<EventFd, Error> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Io { what, source })
}

/// A virtual machine, built and ready to run.
pub struct Vmm {
    // Kept open for the VM's lifetime, as KVM's documentation asks.
    _kvm: Kvm,
    vm: vm::Vm,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    serial: Arc<Mutex<SerialConsole>>,
    serial_mode: SerialConfig,
    reset_evt: Arc<EventFd>,
    power_off_evt: Arc<EventFd>,
    events: EventManager<SharedSubscriber>,
    pci: devices::PciDevices,
    vcpus: Vec<VcpuFd>,
    stop_signals: Option<StopSignals>,
}

impl Vmm {
    /// Builds the VM `config` describes: guest memory with the kernel, initramfs and boot
    /// structures loaded, the legacy and PCI devices, and the vCPUs (not yet running).
    pub fn build(config: &VmConfig) -> Result<Self, Error> {
        // Mistakes in the configuration are reported before KVM is touched.
        config.validate().map_err(Error::Config)?;
        vm::check_memory_size(config.memory)?;
        loader::check_inputs(&config.kernel, config.initramfs.as_deref())?;
        let kvm = vm::open_kvm()?;
        let vm = vm::Vm::new(&kvm, config.memory)?;

        let kernel = loader::load_kernel(&vm.mem, &config.kernel)?;
        let initrd = config
            .initramfs
            .as_deref()
            .map(|p| loader::load_initramfs(&vm.mem, vm.mem_size, p))
            .transpose()?;
        let line = cmdline::build(&config.cmdline, cmdline::host_is_kvm_pvm());
        log::info!("kernel command line: {line}");
        loader::write_boot_structures(&vm.mem, vm.mem_size, config.cpus, &line, &kernel, initrd)?;

        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());

        let (serial, reset_evt, power_off_evt) = add_legacy_devices(&vm, &pio, &config.serial)?;

        let events: EventManager<SharedSubscriber> =
            EventManager::new().map_err(Error::EventLoop)?;
        let router = Arc::new(interrupts::GsiRouter::new(vm.fd.clone()));
        router.install_legacy().map_err(|source| Error::Io {
            what: "cannot install the interrupt routes",
            source,
        })?;
        let pci = devices::build_pci(
            &vm,
            &pio,
            mmio.clone(),
            &router,
            events.remote_endpoint(),
            &config.devices,
        )?;
        let vcpus = create_vcpus(&kvm, &vm, config.cpus, &kernel.entry)?;
        Ok(Self {
            _kvm: kvm,
            vm,
            pio,
            mmio,
            serial,
            serial_mode: config.serial.clone(),
            reset_evt,
            power_off_evt,
            events,
            pci,
            vcpus,
            stop_signals: None,
        })
    }

    /// The guest's PCI functions, as `--print-devices` lists them.
    pub fn pci_devices(&self) -> Vec<PciDeviceInfo> {
        self.pci.list()
    }

    /// Makes a stop signal ([`signals::install`]) end [`Vmm::run`] cleanly, with
    /// [`VmExit::Signal`].
    pub fn stop_on(&mut self, signals: &StopSignals) {
        self.stop_signals = Some(signals.clone());
    }

    /// Runs the guest to its end (or a stop signal), tears the VM down and says how it ended.
    ///
    /// Teardown, whatever ended the run: the event loop goes (answering any vCPU waiting on
    /// it), the vCPU threads stop, the devices are reset in their list order (every backend
    /// flushes), their report lines are logged, and the terminal is restored.
    pub fn run(self) -> Result<VmExit, Error> {
        let Self {
            _kvm,
            vm,
            pio,
            mmio,
            serial,
            serial_mode,
            reset_evt,
            power_off_evt,
            mut events,
            pci,
            vcpus,
            stop_signals,
        } = self;
        let vcpu_exit_evt = Arc::new(eventfd("exit eventfd")?);
        let exit = ExitReporter::new(vcpu_exit_evt.clone());
        let done = Arc::new(AtomicBool::new(false));
        events.add_subscriber(Arc::new(Mutex::new(ExitWatcher {
            vcpu_exit: vcpu_exit_evt,
            reset: reset_evt,
            power_off: power_off_evt,
            exit: exit.clone(),
            done: done.clone(),
        })));
        if let Some(signals) = stop_signals {
            events.add_subscriber(Arc::new(Mutex::new(StopSignalWatcher {
                signals,
                exit: exit.clone(),
                done: done.clone(),
            })));
        }
        let raw_terminal = match (&serial_mode, RawTerminal::enter()) {
            (SerialConfig::Stdio, Some(raw)) => {
                let stdin = StdinToSerial::new(serial.clone(), exit.clone(), done.clone())
                    .map_err(|source| Error::Io {
                        what: "cannot set up the serial input timer",
                        source,
                    })?;
                events.add_subscriber(Arc::new(Mutex::new(stdin)));
                Some(raw)
            }
            _ => None,
        };

        vcpu::install_kick_handler().map_err(|e| Error::Io {
            what: "vCPU kick signal handler",
            source: io::Error::from_raw_os_error(e.errno()),
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(vcpu::StartGate::default());
        let mut threads = Vec::with_capacity(vcpus.len());
        let mut spawned = Ok(());
        for (id, fd) in vcpus.into_iter().enumerate() {
            let ctx = VcpuContext {
                id: id as u8,
                gate: gate.clone(),
                pio: pio.clone(),
                mmio: mmio.clone(),
                mem: vm.mem.clone(),
                stop: stop.clone(),
                exit: exit.clone(),
            };
            match VcpuThread::spawn(fd, ctx) {
                Ok(thread) => threads.push(thread),
                Err(source) => {
                    spawned = Err(Error::Io {
                        what: "cannot start a vCPU thread",
                        source,
                    });
                    break;
                }
            }
        }

        // The event loop's filter, then the guest: each vCPU has installed its own and waits.
        let spawned = spawned
            .and_then(|()| seccomp::install(seccomp::ThreadKind::Main).map_err(Error::Seccomp));
        gate.open(spawned.is_ok());
        let result = spawned.and_then(|()| loop {
            if let Err(e) = events.run() {
                break Err(Error::EventLoop(e));
            }
            if done.load(Ordering::Acquire) {
                break Ok(());
            }
        });
        // A vCPU may be waiting on the event loop (a device activating); dropping the loop
        // answers it.
        drop(events);
        stop.store(true, Ordering::Release);
        for thread in threads {
            thread.stop();
        }
        for line in pci.teardown() {
            log::info!("{line}");
        }
        drop(raw_terminal);
        result?;
        match exit.reason() {
            Some(VmExit::Failed(msg)) => Err(Error::Guest(msg)),
            Some(reason) => Ok(reason),
            None => Ok(VmExit::PowerOff),
        }
    }
}

/// The serial console (for host input), the eventfd a reset signals, the one a power-off signals.
type LegacyDevices = (Arc<Mutex<SerialConsole>>, Arc<EventFd>, Arc<EventFd>);

/// COM1 (its interrupt an irqfd on IRQ 4), the i8042 reset line and the ACPI power-management
/// registers on the port I/O bus. Returns the console (for host input), the eventfd a reset
/// signals and the one a power-off signals.
fn add_legacy_devices(
    vm: &vm::Vm,
    pio: &Bus,
    serial_mode: &SerialConfig,
) -> Result<LegacyDevices, Error> {
    let serial_irq = eventfd("serial interrupt eventfd")?;
    vm.fd
        .register_irqfd(&serial_irq, SERIAL_IRQ)
        .map_err(kvm_err("the serial interrupt"))?;
    let serial = Arc::new(Mutex::new(SerialConsole::new(
        serial_irq,
        serial_output(serial_mode)?,
    )));
    pio.insert(serial.clone(), SERIAL_PORT_BASE, SERIAL_PORT_LEN)?;
    let reset_evt = Arc::new(eventfd("reset eventfd")?);
    let dup = |evt: &EventFd, what| evt.try_clone().map_err(|source| Error::Io { what, source });
    pio.insert(
        Arc::new(Mutex::new(I8042Reset::new(dup(
            &reset_evt,
            "reset eventfd",
        )?))),
        I8042_PORT_BASE,
        I8042_PORT_LEN,
    )?;
    let power_off_evt = Arc::new(eventfd("power-off eventfd")?);
    pio.insert(
        Arc::new(Mutex::new(AcpiPmRegisters::new(
            dup(&power_off_evt, "power-off eventfd")?,
            dup(&reset_evt, "reset eventfd")?,
        ))),
        ACPI_PM_PORT_BASE,
        ACPI_PM_PORT_LEN,
    )?;

    Ok((serial, reset_evt, power_off_evt))
}

/// Creates the vCPUs; all get CPUID, MSRs and LAPIC LINTs, the boot vCPU its entry registers
/// (the others wait for INIT/SIPI from the guest).
fn create_vcpus(
    kvm: &Kvm,
    vm: &vm::Vm,
    count: u8,
    entry: &BootEntry,
) -> Result<Vec<VcpuFd>, Error> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("CPUID"))?;
    (0..count)
        .map(|id| {
            let fail = |reason: String| Error::Vcpu { id, reason };
            let fd = vm
                .fd
                .create_vcpu(u64::from(id))
                .map_err(|e| fail(e.to_string()))?;
            let mut cpuid = supported.clone();
            canto_arch::cpuid::filter_cpuid(&mut cpuid, id, count)
                .map_err(|e| fail(e.to_string()))?;
            fd.set_cpuid2(&cpuid).map_err(|e| fail(e.to_string()))?;
            regs::setup_msrs(&fd).map_err(|e| fail(e.to_string()))?;
            if id == 0 {
                regs::setup_vcpu_regs(&fd, &vm.mem, entry).map_err(|e| fail(e.to_string()))?;
                regs::setup_fpu(&fd).map_err(|e| fail(e.to_string()))?;
            }
            regs::setup_lapic_lints(&fd).map_err(|e| fail(e.to_string()))?;
            Ok(fd)
        })
        .collect()
}
