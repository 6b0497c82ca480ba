//! vCPU threads: each runs KVM_RUN in a loop and dispatches port I/O and MMIO exits to the buses.
//!
//! Stopping: the VMM sets a shared stop flag and sends the thread a real-time signal. The signal
//! handler sets `immediate_exit` in the vCPU's kvm_run page, so a signal that lands just before
//! KVM_RUN still makes it return at once (EINTR), and the loop sees the flag.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use canto_devices::bus::Bus;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

/// Why the VM ended, as the first vCPU to see it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest rebooted (i8042 reset, or a triple fault): Canto ends the VM, as Firecracker does.
    Reset,
    /// The guest stopped for good: ACPI S5 (`poweroff`), KVM_SYSTEM_EVENT shutdown, or every way
    /// out halted.
    PowerOff,
    /// KVM could not go on: the message says where.
    Failed(String),
    /// A stop signal (SIGTERM, SIGINT or SIGHUP; its number) ended the VM.
    Signal(i32),
    /// The user typed Ctrl-A x on the console ([`crate::console`]).
    ConsoleExit,
}

/// Where vCPU threads report the VM's end: the first report wins, and the event loop is woken.
#[derive(Clone)]
pub struct ExitReporter {
    reason: Arc<Mutex<Option<VmExit>>>,
    evt: Arc<EventFd>,
}

impl ExitReporter {
    pub fn new(evt: Arc<EventFd>) -> Self {
        Self {
            reason: Arc::new(Mutex::new(None)),
            evt,
        }
    }

    pub fn report(&self, exit: VmExit) {
        let mut reason = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if reason.is_none() {
            *reason = Some(exit);
        }
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot wake the event loop to end the VM: {e}");
        }
    }

    pub fn reason(&self) -> Option<VmExit> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

thread_local! {
    /// The running vCPU's `immediate_exit` byte in its kvm_run page, for the signal handler.
    static IMMEDIATE_EXIT: Cell<*mut u8> = const { Cell::new(std::ptr::null_mut()) };
}

fn vcpu_kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    IMMEDIATE_EXIT.with(|p| {
        let ptr = p.get();
        if !ptr.is_null() {
            // SAFETY: the pointer is set by this thread to its own vCPU's kvm_run mapping, which
            // stays mapped until the thread clears the pointer before dropping the vCPU.
            unsafe { std::ptr::write_volatile(ptr, 1) };
        }
    });
}

/// Installs the kick signal's handler; call once before spawning vCPUs.
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    register_signal_handler(vcpu_kick_signal(), handle_kick)
}

/// A running vCPU thread.
pub struct VcpuThread {
    handle: JoinHandle<()>,
}

/// Where vCPU threads wait, their seccomp filters installed, until the main thread has
/// installed its own: no guest instruction runs before every filter is in place.
#[derive(Default)]
pub struct StartGate {
    /// None while closed; then whether to run the guest (false: the VM failed to start).
    state: Mutex<Option<bool>>,
    opened: Condvar,
}

impl StartGate {
    /// Lets the waiting vCPUs go: into the guest when `run`, out of their thread otherwise.
    pub fn open(&self, run: bool) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(run);
        self.opened.notify_all();
    }

    fn wait(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(run) = *state {
                return run;
            }
            state = self.opened.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Everything a vCPU thread needs.
pub struct VcpuContext {
    pub id: u8,
    /// Opened by the main thread once its own filter is installed.
    pub gate: Arc<StartGate>,
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: GuestMemoryMmap,
    pub stop: Arc<AtomicBool>,
    pub exit: ExitReporter,
}

impl VcpuThread {
    pub fn spawn(vcpu: VcpuFd, ctx: VcpuContext) -> std::io::Result<Self> {
        let handle = std::thread::Builder::new()
            .name(format!("canto-vcpu{}", ctx.id))
            .spawn(move || {
                crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Vcpu);
                if ctx.gate.wait() {
                    run_vcpu(vcpu, ctx);
                }
            })?;
        Ok(Self { handle })
    }

    /// Kicks the thread until it leaves KVM_RUN and ends (the stop flag must already be set).
    pub fn stop(self) {
        while !self.handle.is_finished() {
            if let Err(e) = self.handle.kill(vcpu_kick_signal()) {
                log::warn!("cannot signal a vCPU thread: {e}");
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if self.handle.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

fn run_vcpu(mut vcpu: VcpuFd, ctx: VcpuContext) {
    let immediate_exit: *mut u8 = &mut vcpu.get_kvm_run().immediate_exit;
    IMMEDIATE_EXIT.with(|p| p.set(immediate_exit));
    while !ctx.stop.load(Ordering::Acquire) {
        let exit = match vcpu.run() {
            Ok(VcpuExit::IoIn(port, data)) => {
                if !ctx.pio.read(u64::from(port), data) {
                    data.fill(0xff); // nothing there: the bus floats high
                }
                None
            }
            Ok(VcpuExit::IoOut(port, data)) => {
                ctx.pio.write(u64::from(port), data);
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                if !ctx.mmio.read(addr, data) {
                    log::debug!("vcpu{}: MMIO read of {addr:#x} hits nothing", ctx.id);
                    data.fill(0xff);
                }
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if !ctx.mmio.write(addr, data) {
                    log::debug!("vcpu{}: MMIO write to {addr:#x} hits nothing", ctx.id);
                }
                None
            }
            Ok(VcpuExit::Hlt) => Some(VmExit::PowerOff),
            Ok(VcpuExit::Shutdown) => Some(VmExit::Reset),
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => Some(VmExit::Reset),
                _ => Some(VmExit::PowerOff),
            },
            Ok(VcpuExit::InternalError) => Some(VmExit::Failed(describe_internal_error(
                &mut vcpu, ctx.id, &ctx.mem,
            ))),
            Ok(VcpuExit::FailEntry(reason, cpu)) => Some(VmExit::Failed(format!(
                "vcpu{}: KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})",
                ctx.id
            ))),
            Ok(VcpuExit::Intr) => None,
            Ok(other) => {
                log::debug!("vcpu{}: unhandled exit {other:?}", ctx.id);
                None
            }
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                None
            }
            Err(e) => Some(VmExit::Failed(format!(
                "vcpu{}: KVM_RUN failed: {e}",
                ctx.id
            ))),
        };
        if let Some(exit) = exit {
            ctx.exit.report(exit);
            break;
        }
    }
    IMMEDIATE_EXIT.with(|p| p.set(std::ptr::null_mut()));
}

/// Translates a guest virtual address with the vCPU's page tables (4-level paging or none).
fn guest_virt_to_phys(
    mem: &GuestMemoryMmap,
    sregs: &kvm_bindings::kvm_sregs,
    va: u64,
) -> Option<u64> {
    const PG: u64 = 1 << 31;
    const PS: u64 = 1 << 7;
    const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    if sregs.cr0 & PG == 0 {
        return Some(va & 0xffff_ffff);
    }
    let mut table = sregs.cr3 & ADDR_MASK;
    for (level, shift) in [(4, 39u32), (3, 30), (2, 21), (1, 12)] {
        let index = (va >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & 1 == 0 {
            return None;
        }
        let page_size = 1u64 << shift;
        if level == 1 || (level < 4 && entry & PS != 0) {
            return Some((entry & ADDR_MASK & !(page_size - 1)) | (va & (page_size - 1)));
        }
        table = entry & ADDR_MASK;
    }
    None
}

/// Where the guest was and what it was running when KVM gave up: enough to diagnose it in one run.
fn describe_internal_error(vcpu: &mut VcpuFd, id: u8, mem: &GuestMemoryMmap) -> String {
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is the live union member.
    let suberror = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal.suberror };
    let mut msg = format!("vcpu{id}: KVM internal error (suberror {suberror})");
    if let (Ok(regs), Ok(sregs)) = (vcpu.get_regs(), vcpu.get_sregs()) {
        let linear = sregs.cs.base.wrapping_add(regs.rip);
        msg.push_str(&format!(
            " at rip {:#x} (cs {:#x})",
            regs.rip, sregs.cs.selector
        ));
        if let Some(phys) = guest_virt_to_phys(mem, &sregs, linear) {
            let mut bytes = [0u8; 16];
            if mem.read_slice(&mut bytes, GuestAddress(phys)).is_ok() {
                let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
                msg.push_str(&format!(", instruction bytes: {}", hex.join(" ")));
            }
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virt_to_phys_walks_identity_tables() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let cr3 = canto_arch::paging::setup_identity_page_tables(&mem).unwrap();
        let sregs = kvm_bindings::kvm_sregs {
            cr0: 1 << 31 | 1,
            cr3,
            ..Default::default()
        };
        assert_eq!(guest_virt_to_phys(&mem, &sregs, 0x12_3456), Some(0x12_3456));
        let flat = kvm_bindings::kvm_sregs::default();
        assert_eq!(guest_virt_to_phys(&mem, &flat, 0x1_0000_1234), Some(0x1234));
    }

    #[test]
    fn first_exit_report_wins() {
        let evt = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let exit = ExitReporter::new(evt.clone());
        exit.report(VmExit::Reset);
        exit.report(VmExit::Failed("later".into()));
        assert_eq!(exit.reason(), Some(VmExit::Reset));
        assert_eq!(evt.read().unwrap(), 2);
    }
}
