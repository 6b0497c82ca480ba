//! seccomp-bpf filters on Canto's own threads, one per kind of thread ([`ThreadKind`]).
//!
//! Each thread installs its filter itself, first thing ([`install`]): the vCPU threads before
//! their first KVM_RUN (they wait at a gate until the main thread has installed its own), the
//! main thread (the event loop) once the VM is built, the device threads through the
//! [`canto_devices::thread_start`] hook. A filter is inherited by the threads its thread starts
//! and stacks with theirs (the kernel applies every filter, the strictest answer wins): a sound
//! period thread, started by the event loop, is bound by both filters, and so are the threads
//! alsa-lib's plugins start (PulseAudio's main loop), which get the event loop's.
//!
//! A syscall outside a filter, with `--seccomp on` (the default), traps (SECCOMP_RET_TRAP): the
//! SIGSYS handler writes one line naming the syscall and the thread's kind, with write(2) only,
//! and ends the process with status [`EXIT_STATUS`] (128 + SIGSYS, as a shell reports a process
//! SIGSYS killed). The syscall itself never runs, whatever the handler does. With `log` it runs
//! and the kernel logs it (SECCOMP_RET_LOG, `dmesg`), for writing rules; `off` installs nothing.
//!
//! Test hook: `CANTO_SECCOMP_TEST_TRIGGER=<kind>` (read once, at [`init`]) makes every thread
//! of that kind call a syscall no filter allows (`getpgid`) right after installing its filter.

mod filters;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use crate::config::SeccompMode;

/// The exit status after a syscall outside a filter (128 + SIGSYS).
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// The environment variable of the test hook (see the module's documentation).
pub const TEST_TRIGGER_ENV: &str = "CANTO_SECCOMP_TEST_TRIGGER";

/// The kinds of thread Canto runs, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread once the VM is built: the event loop (device queues, vsock connections,
    /// sound control requests: PCMs are opened here), then the teardown.
    Main,
    /// A vCPU: KVM_RUN, port I/O and MMIO exits, device activation and reset.
    Vcpu,
    /// The thread that waits for the stop signals.
    Signals,
    /// `canto run`'s session with the guest's agent (vsock through a Unix socket, copies).
    RunSession,
    /// The virtio-blk worker.
    Block,
    /// A sound period thread on the ALSA backend (alsa-lib and its plugins).
    SoundAlsa,
    /// A sound period thread on the WAV backend (output file or capture file).
    SoundWav,
    /// A sound period thread on the null backend (a clock).
    SoundNull,
}

impl ThreadKind {
    /// Every kind, in a fixed order (the filters' index).
    pub const ALL: [ThreadKind; 8] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Signals,
        ThreadKind::RunSession,
        ThreadKind::Block,
        ThreadKind::SoundAlsa,
        ThreadKind::SoundWav,
        ThreadKind::SoundNull,
    ];

    /// Its name in messages and in the test hook.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Signals => "signals",
            ThreadKind::RunSession => "run-session",
            ThreadKind::Block => "block",
            ThreadKind::SoundAlsa => "sound-alsa",
            ThreadKind::SoundWav => "sound-wav",
            ThreadKind::SoundNull => "sound-null",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }

    /// The kind of a device thread.
    pub fn of_device_thread(kind: canto_devices::thread_start::ThreadKind) -> ThreadKind {
        use canto_devices::thread_start::ThreadKind as Device;
        match kind {
            Device::BlockWorker => ThreadKind::Block,
            // Re-opening an ALSA PCM (alsa-lib's config, plugins, the sound server's socket) is
            // what the main thread's filter allows for PREPARE; the other backends' watchers
            // never open anything (their devices are always there).
            Device::JackWatcher { backend: "alsa" } => ThreadKind::Main,
            Device::JackWatcher { .. } => ThreadKind::SoundNull,
            Device::SoundPeriod { backend: "alsa" } => ThreadKind::SoundAlsa,
            Device::SoundPeriod { backend: "wav" } => ThreadKind::SoundWav,
            // null, and any backend without a filter of its own: the clock-only filter.
            Device::SoundPeriod { .. } => ThreadKind::SoundNull,
        }
    }
}

/// Why the filters cannot be set up or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter of the {kind} threads: {source}")]
    Build {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter of the {kind} thread: {source}")]
    Install {
        kind: &'static str,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
    #[error("the seccomp filters are already set up")]
    AlreadySet,
}

/// The compiled filters (by [`ThreadKind::index`]), or none with `--seccomp off`.
struct Filters {
    programs: Vec<BpfProgram>,
    /// Installed after each kind's: clone3 fails with ENOSYS ([`filters::clone3_fails`]).
    clone3_fails: BpfProgram,
    trigger: Option<String>,
}

static FILTERS: OnceLock<Option<Filters>> = OnceLock::new();

thread_local! {
    /// This thread's kind, for the SIGSYS handler's line: a const-initialized `Cell` of a static
    /// string (reading it in a signal handler needs no allocation or lock). A thread a library
    /// started (alsa-lib's PulseAudio loop) runs under its creator's filter and says
    /// "inherited-filter".
    static KIND: Cell<&'static str> = const { Cell::new("inherited-filter") };
}

/// Compiles every kind's filter for `mode` and installs the SIGSYS handler; call once, on the
/// main thread, before any thread installs its filter. With `off` nothing is compiled and
/// [`install`] does nothing.
pub fn init(mode: SeccompMode) -> Result<(), SeccompError> {
    let filters = match mode {
        SeccompMode::Off => None,
        SeccompMode::On | SeccompMode::Log => {
            let mismatch = if mode == SeccompMode::On {
                SeccompAction::Trap
            } else {
                SeccompAction::Log
            };
            let mut programs = Vec::with_capacity(ThreadKind::ALL.len());
            for kind in ThreadKind::ALL {
                programs.push(compile(kind, mismatch.clone())?);
            }
            if mode == SeccompMode::On {
                install_sigsys_handler()?;
            }
            let clone3 = filters::clone3_fails().map_err(|source| SeccompError::Build {
                kind: "clone3",
                source,
            })?;
            let clone3_fails = SeccompFilter::new(
                clone3,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
                TargetArch::x86_64,
            )
            .and_then(BpfProgram::try_from)
            .map_err(|source| SeccompError::Build {
                kind: "clone3",
                source,
            })?;
            Some(Filters {
                programs,
                clone3_fails,
                trigger: std::env::var(TEST_TRIGGER_ENV).ok(),
            })
        }
    };
    FILTERS.set(filters).map_err(|_| SeccompError::AlreadySet)?;
    canto_devices::thread_start::set_hook(device_thread_started);
    Ok(())
}

/// Compiles `kind`'s filter.
fn compile(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram, SeccompError> {
    let fail = |source| SeccompError::Build {
        kind: kind.name(),
        source,
    };
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = filters::rules(kind).map_err(fail)?;
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(fail)?;
    filter.try_into().map_err(fail)
}

/// How many syscalls `kind`'s filter allows (some only with the arguments it checks).
pub fn syscall_count(kind: ThreadKind) -> usize {
    filters::rules(kind).map(|r| r.len()).unwrap_or(0)
}

/// Installs `kind`'s filter on the calling thread (nothing with `--seccomp off`, or before
/// [`init`]).
pub fn install(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(Some(filters)) = FILTERS.get() else {
        return Ok(());
    };
    KIND.with(|k| k.set(kind.name()));
    let fail = |source| SeccompError::Install {
        kind: kind.name(),
        source,
    };
    seccompiler::apply_filter(&filters.programs[kind.index()]).map_err(fail)?;
    seccompiler::apply_filter(&filters.clone3_fails).map_err(fail)?;
    if filters.trigger.as_deref() == Some(kind.name()) {
        // The test hook: a syscall no filter allows.
        // SAFETY: getpgid takes no pointers; the filter traps it before it runs.
        unsafe { libc::syscall(libc::SYS_getpgid, 0) };
    }
    Ok(())
}

/// [`install`], for a thread that cannot go on unconfined: a failure ends the process with
/// one line (a filter that compiled and installed on other threads does not fail here in
/// practice).
pub fn install_or_exit(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        crate::terminal::restore();
        eprintln!("canto: {e}");
        // SAFETY: _exit ends the process at once; nothing runs after it.
        unsafe { libc::_exit(1) }
    }
}

/// The hook the devices' threads run first.
fn device_thread_started(kind: canto_devices::thread_start::ThreadKind) {
    install_or_exit(ThreadKind::of_device_thread(kind));
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: sigaction is plain data; zeroed is a valid empty mask with no flags.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) = on_sigsys;
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `action` is valid; the handler only writes to stderr and exits, with
    // async-signal-safe calls.
    let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(SeccompError::Handler(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The offset of `si_syscall` in x86_64's siginfo_t for SIGSYS: after si_signo, si_errno and
/// si_code (12 bytes, padded to 16) comes the union: `_call_addr` (8 bytes), then `_syscall`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let number = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t for SIGSYS (SA_SIGINFO); the read is
        // within it and aligned (offset 24 of an 8-aligned struct).
        unsafe { std::ptr::read((info as *const u8).add(SI_SYSCALL_OFFSET) as *const i32) }
    };
    let kind = KIND.with(|k| k.get());
    let mut line = LineBuffer::default();
    line.push(b"\r\ncanto: seccomp: the ");
    line.push(kind.as_bytes());
    line.push(b" thread made syscall ");
    line.push_number(number);
    if let Some(name) = filters::syscall_name(number) {
        line.push(b" (");
        line.push(name.as_bytes());
        line.push(b")");
    }
    line.push(b", which its filter does not allow; exiting (--seccomp log lets it through)\n");
    // SAFETY: write and _exit are async-signal-safe; the buffer is valid for its length.
    unsafe {
        libc::write(2, line.bytes.as_ptr().cast(), line.len);
        libc::_exit(EXIT_STATUS);
    }
}

/// A fixed buffer the signal handler formats into (no allocation).
struct LineBuffer {
    bytes: [u8; 256],
    len: usize,
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self {
            bytes: [0; 256],
            len: 0,
        }
    }
}

impl LineBuffer {
    fn push(&mut self, text: &[u8]) {
        let n = text.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    fn push_number(&mut self, n: i32) {
        if n < 0 {
            self.push(b"-");
        }
        let mut value = n.unsigned_abs();
        let mut digits = [0u8; 10];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_s_filter_compiles_in_both_modes() {
        for kind in ThreadKind::ALL {
            eprintln!("COUNT {} {}", kind.name(), syscall_count(kind));
        }
        for kind in ThreadKind::ALL {
            compile(kind, SeccompAction::Trap).unwrap();
            compile(kind, SeccompAction::Log).unwrap();
            assert!(syscall_count(kind) > 5, "{}", kind.name());
        }
    }

    #[test]
    fn no_filter_allows_exec_ptrace_or_the_test_trigger() {
        for kind in ThreadKind::ALL {
            let rules = filters::rules(kind).unwrap();
            for forbidden in [
                libc::SYS_execve,
                libc::SYS_execveat,
                libc::SYS_ptrace,
                libc::SYS_getpgid,
                libc::SYS_fork,
                libc::SYS_vfork,
            ] {
                assert!(
                    !rules.contains_key(&forbidden),
                    "{} {forbidden}",
                    kind.name()
                );
            }
        }
    }

    #[test]
    fn device_threads_map_to_their_backend_s_filter() {
        use canto_devices::thread_start::ThreadKind as Device;
        let of = ThreadKind::of_device_thread;
        assert_eq!(of(Device::BlockWorker), ThreadKind::Block);
        assert_eq!(
            of(Device::SoundPeriod { backend: "alsa" }),
            ThreadKind::SoundAlsa
        );
        assert_eq!(
            of(Device::SoundPeriod { backend: "wav" }),
            ThreadKind::SoundWav
        );
        assert_eq!(
            of(Device::SoundPeriod { backend: "null" }),
            ThreadKind::SoundNull
        );
    }

    #[test]
    fn the_handler_s_line_formats_numbers_without_allocating() {
        let mut line = LineBuffer::default();
        line.push_number(121);
        line.push(b" ");
        line.push_number(0);
        line.push(b" ");
        line.push_number(-1);
        assert_eq!(&line.bytes[..line.len], b"121 0 -1");
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    /// docs/security.md's table gives each filter's syscall count: it must stay true.
    #[test]
    fn the_security_page_counts_every_filter_s_syscalls() {
        let page =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md"))
                .expect("docs/security.md");
        for kind in ThreadKind::ALL {
            let row = format!("| `{}` | {} |", kind.name(), syscall_count(kind));
            assert!(page.contains(&row), "docs/security.md has no row '{row}'");
        }
    }
}
