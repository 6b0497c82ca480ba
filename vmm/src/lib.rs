//! The Canto VMM: builds a KVM virtual machine from a [`config::Cli`], runs its vCPU threads and
//! its event loop, and reports how the guest ended.
//!
//! Threads: one per vCPU (KVM_RUN, port I/O and MMIO dispatch to the buses), and the main thread,
//! which runs the event loop (event-manager): the VM's end, serial input, and device work such as
//! virtio queue kicks (ioeventfds). Devices live in `canto-devices` and never call KVM directly.

pub mod cmdline;
pub mod config;
pub mod devices;
mod event_loop;
pub mod interrupts;
pub mod loader;
pub mod vcpu;
pub mod vm;

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use canto_arch::regs::{self, BootEntry};
use canto_devices::bus::Bus;
use canto_devices::legacy::{
    I8042Reset, SerialConsole, I8042_PORT_BASE, I8042_PORT_LEN, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
};
use canto_devices::virtio::{SharedSubscriber, VirtioDevice};
use event_manager::{EventManager, SubscriberOps};
use kvm_ioctls::Kvm;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::terminal::Terminal;

use config::{Cli, SerialMode};
use event_loop::{ExitWatcher, StdinToSerial};
use vcpu::{ExitReporter, VcpuContext, VcpuThread, VmExit};

/// The serial console's legacy interrupt (COM1).
const SERIAL_IRQ: u32 = 4;

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

fn serial_output(mode: &SerialMode) -> Result<Box<dyn Write + Send>, Error> {
    Ok(match mode {
        SerialMode::Stdio => Box::new(SerialOutput::new(io::stdout())),
        SerialMode::Null => Box::new(io::sink()),
        SerialMode::File(path) => {
            Box::new(SerialOutput::new(File::create(path).map_err(|source| {
                Error::SerialFile {
                    path: path.clone(),
                    source,
                }
            })?))
        }
    })
}

/// Puts the terminal in raw mode for the guest's console and restores it when dropped.
struct RawTerminal;

impl RawTerminal {
    fn enter() -> Option<Self> {
        let stdin = io::stdin();
        if !io::IsTerminal::is_terminal(&stdin) {
            return None;
        }
        match stdin.lock().set_raw_mode() {
            Ok(()) => Some(Self),
            Err(e) => {
                log::warn!("cannot put the terminal in raw mode: {e}");
                None
            }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Err(e) = io::stdin().lock().set_canon_mode() {
            log::warn!("cannot restore the terminal: {e}");
        }
    }
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

fn eventfd(what: &'static str) -> Result<EventFd, Error> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|source| Error::Io { what, source })
}

/// Builds the VM described by `cli`, runs it to the end, and says how the guest ended.
pub fn run(cli: &Cli) -> Result<VmExit, Error> {
    // Mistakes in the command line are reported before KVM is touched.
    vm::check_memory_size(cli.memory)?;
    loader::check_inputs(&cli.kernel, cli.initramfs.as_deref())?;
    let kvm = vm::open_kvm()?;
    let vm = vm::Vm::new(&kvm, cli.memory)?;

    let kernel = loader::load_kernel(&vm.mem, &cli.kernel)?;
    let initrd = cli
        .initramfs
        .as_deref()
        .map(|p| loader::load_initramfs(&vm.mem, vm.mem_size, p))
        .transpose()?;
    let line = cmdline::build(&cli.cmdline, cmdline::host_is_kvm_pvm());
    log::info!("kernel command line: {line}");
    loader::write_boot_structures(&vm.mem, vm.mem_size, cli.cpus, &line, &kernel, initrd)?;

    let pio = Arc::new(Bus::new());
    let mmio = Arc::new(Bus::new());

    let (serial, reset_evt) = add_legacy_devices(&vm, &pio, &cli.serial)?;

    let mut events: EventManager<SharedSubscriber> =
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
        devices::DeviceOptions {
            rng: !cli.no_rng,
            sound: devices::choose_sound(cli.sound.clone(), cli.no_sound),
        },
    )?;
    if cli.print_devices {
        for device in pci.list() {
            println!("{device}");
        }
        return Ok(VmExit::PowerOff);
    }

    let vcpus = create_vcpus(&kvm, &vm, cli.cpus, &kernel.entry)?;

    let vcpu_exit_evt = Arc::new(eventfd("exit eventfd")?);
    let exit = ExitReporter::new(vcpu_exit_evt.clone());
    let done = Arc::new(AtomicBool::new(false));
    events.add_subscriber(Arc::new(Mutex::new(ExitWatcher {
        vcpu_exit: vcpu_exit_evt,
        reset: reset_evt,
        exit: exit.clone(),
        done: done.clone(),
    })));
    let _raw_terminal = match (&cli.serial, RawTerminal::enter()) {
        (SerialMode::Stdio, Some(raw)) => {
            events.add_subscriber(Arc::new(Mutex::new(StdinToSerial {
                serial: serial.clone(),
            })));
            Some(raw)
        }
        _ => None,
    };

    vcpu::install_kick_handler().map_err(|e| Error::Io {
        what: "vCPU kick signal handler",
        source: io::Error::from_raw_os_error(e.errno()),
    })?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(vcpus.len());
    for (id, fd) in vcpus.into_iter().enumerate() {
        let ctx = VcpuContext {
            id: id as u8,
            pio: pio.clone(),
            mmio: mmio.clone(),
            mem: vm.mem.clone(),
            stop: stop.clone(),
            exit: exit.clone(),
        };
        let thread = VcpuThread::spawn(fd, ctx).map_err(|source| Error::Io {
            what: "cannot start a vCPU thread",
            source,
        })?;
        threads.push(thread);
    }

    let result = loop {
        if let Err(e) = events.run() {
            break Err(Error::EventLoop(e));
        }
        if done.load(Ordering::Acquire) {
            break Ok(());
        }
    };
    // A vCPU may be waiting on the event loop (a device activating); dropping the loop answers it.
    drop(events);
    stop.store(true, Ordering::Release);
    for thread in threads {
        thread.stop();
    }
    // The sound device's streams end here: their threads stop and backends flush (a WAV file
    // gets its final header) even when the guest did not release them.
    if let Some(sound) = &pci.sound {
        let mut sound = sound.lock().unwrap_or_else(|e| e.into_inner());
        sound.reset();
        log::info!("sound stats: {:?}", sound.stats());
    }
    result?;
    match exit.reason() {
        Some(VmExit::Failed(msg)) => Err(Error::Guest(msg)),
        Some(reason) => Ok(reason),
        None => Ok(VmExit::PowerOff),
    }
}

/// COM1 (its interrupt an irqfd on IRQ 4) and the i8042 reset line on the port I/O bus.
/// Returns the console (for host input) and the eventfd the reset line signals.
fn add_legacy_devices(
    vm: &vm::Vm,
    pio: &Bus,
    serial_mode: &SerialMode,
) -> Result<(Arc<Mutex<SerialConsole>>, Arc<EventFd>), Error> {
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
    let reset_dup = reset_evt.try_clone().map_err(|source| Error::Io {
        what: "reset eventfd",
        source,
    })?;
    pio.insert(
        Arc::new(Mutex::new(I8042Reset::new(reset_dup))),
        I8042_PORT_BASE,
        I8042_PORT_LEN,
    )?;

    Ok((serial, reset_evt))
}

/// Creates the vCPUs; all get CPUID, MSRs and LAPIC LINTs, the boot vCPU its entry registers
/// (the others wait for INIT/SIPI from the guest).
fn create_vcpus(
    kvm: &Kvm,
    vm: &vm::Vm,
    count: u8,
    entry: &BootEntry,
) -> Result<Vec<kvm_ioctls::VcpuFd>, Error> {
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
