//! The syscalls each kind of thread may make, found by tracing every test's threads
//! (`strace -f`, then `--seccomp log` and the kernel's log) and kept to what the code needs.
//!
//! Arguments are checked where they decide what a call can do: `ioctl` by request number (KVM
//! ioctls by number on the threads that make them, the terminal's, ALSA's by their 'A'/'U'
//! type), `socket` by domain (Unix only, and only on the threads that connect), `clone` only
//! for threads (CLONE_THREAD; `clone3`, whose flags a filter cannot read, fails with ENOSYS by
//! a second filter, and glibc falls back to `clone`), `mmap`/`mprotect` without PROT_EXEC
//! outside the main thread (only the main thread loads code: alsa-lib's plugins), `prctl` and
//! `seccomp` for naming a thread and installing its own filter, `kill`/`tgkill` only to this
//! process.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition as Cond,
    SeccompRule,
};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr};

use super::ThreadKind;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;
type Result<T> = std::result::Result<T, BackendError>;

const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_bindings::kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_bindings::kvm_sregs);
ioctl_iow_nr!(
    KVM_SET_GSI_ROUTING,
    KVMIO,
    0x6a,
    kvm_bindings::kvm_irq_routing
);
ioctl_iow_nr!(KVM_IRQFD, KVMIO, 0x76, kvm_bindings::kvm_irqfd);
ioctl_iow_nr!(KVM_IOEVENTFD, KVMIO, 0x79, kvm_bindings::kvm_ioeventfd);

/// The terminal ioctls: read and set its modes (raw mode and its restoring), read its size.
/// Not TIOCSTI (it types into the terminal) nor anything else of the tty's.
const TERMINAL_IOCTLS: [u64; 5] = [
    libc::TCGETS,
    libc::TCSETS,
    libc::TCSETSW,
    libc::TCSETSF,
    libc::TIOCGWINSZ,
];

/// The ioctl types ALSA's kernel interfaces use: 'A' (PCM) and 'U' (control).
const ALSA_IOCTL_TYPES: [u64; 2] = [b'A' as u64, b'U' as u64];

/// What every thread needs: memory, locks, time, signals' return, naming itself, installing
/// its own filter, and ending (the SIGSYS handler's write and _exit included).
const BASE: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_close,
    libc::SYS_futex,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_restart_syscall,
    libc::SYS_madvise,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_getrandom,
];

/// Starting threads (the child's first calls run under its parent's filter).
const THREADS: &[i64] = &[libc::SYS_set_robust_list, libc::SYS_rseq];

/// The main thread's event loop and teardown, and what alsa-lib and its PulseAudio plugin do
/// on it (a PCM is opened at PREPARE) and on the threads they start there (the plugin's main
/// loop): config files and plugins loaded, the server's Unix socket and its shared memory.
const MAIN: &[i64] = &[
    // libpulse makes its runtime directory, with the file mode mask set around it, when the
    // uid has none yet (in a jail); the jail and Landlock decide where that may happen.
    libc::SYS_umask,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    libc::SYS_pipe2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_getdents64,
    libc::SYS_access,
    libc::SYS_faccessat2,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_memfd_create,
    libc::SYS_uname,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_sysinfo,
    libc::SYS_prlimit64,
    libc::SYS_rt_sigaction,
    libc::SYS_sched_setscheduler,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_getparam,
    libc::SYS_sched_setparam,
    libc::SYS_connect,
    libc::SYS_accept4,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_wait4,
];

/// A vCPU: KVM_RUN and its exits' device work; device activation (eventfds duplicated,
/// ioeventfds and MSI routes registered, the virtio-blk worker started: its calls pass this
/// filter too) and reset (threads joined).
const VCPU: &[i64] = &[
    libc::SYS_eventfd2,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// The stop signals' thread: waits, tells the event loop, or ends the process (restoring the
/// terminal).
const SIGNALS: &[i64] = &[libc::SYS_rt_sigtimedwait];

/// `canto run`'s session: the agent through the vsock device's Unix socket, files copied in
/// and out, the command's output (and its stdin, from a thread of its own with `--stdin`), and
/// SIGTERM to this process when done.
const RUN_SESSION: &[i64] = &[
    libc::SYS_connect,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_shutdown,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_lseek,
    libc::SYS_fcntl,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_ftruncate,
    libc::SYS_fsync,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_rename,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_fchmod,
    libc::SYS_getdents64,
];

/// The virtio-blk worker: the disk file at offsets, flushes, and its wake-up eventfd.
const BLOCK: &[i64] = &[
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_poll,
    libc::SYS_ppoll,
];

/// An ALSA period thread: writei/readi and the PCM's poll descriptors (for the PulseAudio
/// plugin: its pipe or eventfd to the plugin's main loop, and the PI mutexes of that loop);
/// the hw plugin's PCM ioctls.
const SOUND_ALSA: &[i64] = &[
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_fcntl,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
];

/// A WAV period thread: the output file written (and its header rewritten at the end), or
/// the capture file read.
const SOUND_WAV: &[i64] = &[
    libc::SYS_lseek,
    libc::SYS_ftruncate,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
];

/// A null period thread: only its clock (in [`BASE`]).
const SOUND_NULL: &[i64] = &[];

fn cond(arg: u8, len: Len, op: Op, value: u64) -> Result<Cond> {
    Cond::new(arg, len, op, value)
}

fn allow(rules: &mut Rules, syscalls: &[i64]) {
    for &nr in syscalls {
        rules.insert(nr, Vec::new());
    }
}

/// Allows `nr` when any of `conditions` (each a rule: all its conditions hold) matches.
fn allow_when(rules: &mut Rules, nr: i64, conditions: Vec<Vec<Cond>>) -> Result<()> {
    let rule_list = conditions
        .into_iter()
        .map(SeccompRule::new)
        .collect::<Result<Vec<_>>>()?;
    rules.entry(nr).or_default().extend(rule_list);
    Ok(())
}

fn ioctls(rules: &mut Rules, requests: &[u64]) -> Result<()> {
    let conditions = requests
        .iter()
        .map(|&r| cond(1, Len::Dword, Op::Eq, r).map(|c| vec![c]))
        .collect::<Result<Vec<_>>>()?;
    allow_when(rules, libc::SYS_ioctl, conditions)
}

fn ioctl_types(rules: &mut Rules, types: &[u64]) -> Result<()> {
    let conditions = types
        .iter()
        .map(|&t| cond(1, Len::Dword, Op::MaskedEq(0xff00), t << 8).map(|c| vec![c]))
        .collect::<Result<Vec<_>>>()?;
    allow_when(rules, libc::SYS_ioctl, conditions)
}

/// mmap and mprotect, without PROT_EXEC unless `exec`.
fn memory(rules: &mut Rules, exec: bool) -> Result<()> {
    if exec {
        allow(rules, &[libc::SYS_mmap, libc::SYS_mprotect]);
        return Ok(());
    }
    let no_exec = || cond(2, Len::Dword, Op::MaskedEq(libc::PROT_EXEC as u64), 0);
    allow_when(rules, libc::SYS_mmap, vec![vec![no_exec()?]])?;
    allow_when(rules, libc::SYS_mprotect, vec![vec![no_exec()?]])
}

/// prctl to name the thread and to set no_new_privs; seccomp to install a filter (filters only
/// ever add restrictions). On the main thread also PR_CAPBSET_READ (libcap reads the bounding set as the PulseAudio
/// plugin loads it).
fn self_confinement(rules: &mut Rules, main: bool) -> Result<()> {
    let main_only: &[i32] = if main { &[libc::PR_CAPBSET_READ] } else { &[] };
    let prctl = [
        libc::PR_SET_NAME,
        libc::PR_GET_NAME,
        libc::PR_SET_NO_NEW_PRIVS,
    ]
    .iter()
    .chain(main_only)
    .map(|&op| cond(0, Len::Dword, Op::Eq, op as u64).map(|c| vec![c]))
    .collect::<Result<Vec<_>>>()?;
    allow_when(rules, libc::SYS_prctl, prctl)?;
    allow_when(
        rules,
        libc::SYS_seccomp,
        vec![vec![cond(
            0,
            Len::Dword,
            Op::Eq,
            libc::SECCOMP_SET_MODE_FILTER as u64,
        )?]],
    )
}

/// clone for threads only (CLONE_THREAD set), and clone3 (failed by the second filter, see
/// [`clone3_fails`]).
fn thread_creation(rules: &mut Rules) -> Result<()> {
    let thread = libc::CLONE_THREAD as u64;
    allow_when(
        rules,
        libc::SYS_clone,
        vec![vec![cond(0, Len::Qword, Op::MaskedEq(thread), thread)?]],
    )?;
    allow(rules, &[libc::SYS_clone3]);
    allow(rules, THREADS);
    Ok(())
}

/// socket for Unix domain sockets only.
fn unix_sockets(rules: &mut Rules) -> Result<()> {
    allow_when(
        rules,
        libc::SYS_socket,
        vec![vec![cond(0, Len::Dword, Op::Eq, libc::AF_UNIX as u64)?]],
    )
}

/// kill and tgkill to this process only.
fn signals_to_self(rules: &mut Rules, kill: bool, tgkill: bool) -> Result<()> {
    let pid = u64::from(std::process::id());
    if kill {
        allow_when(
            rules,
            libc::SYS_kill,
            vec![vec![cond(0, Len::Dword, Op::Eq, pid)?]],
        )?;
    }
    if tgkill {
        allow_when(
            rules,
            libc::SYS_tgkill,
            vec![vec![cond(0, Len::Dword, Op::Eq, pid)?]],
        )?;
    }
    Ok(())
}

/// The rules of `kind`'s filter, by syscall number.
pub fn rules(kind: ThreadKind) -> Result<Rules> {
    let mut rules = Rules::new();
    allow(&mut rules, BASE);
    self_confinement(&mut rules, kind == ThreadKind::Main)?;
    // Every thread: the panic hook restores the terminal (tcsetattr) on whichever thread
    // panics, before the panic message.
    ioctls(&mut rules, &TERMINAL_IOCTLS)?;
    // Every thread may close a descriptor, and Rust's standard library in a debug build first
    // checks it is open (fcntl F_GETFD, which only reads its flags): the tests run debug builds.
    // Kinds that need fcntl in full list it below, which replaces this rule.
    allow_when(
        &mut rules,
        libc::SYS_fcntl,
        vec![vec![cond(1, Len::Dword, Op::Eq, libc::F_GETFD as u64)?]],
    )?;
    match kind {
        ThreadKind::Main => {
            allow(&mut rules, MAIN);
            memory(&mut rules, true)?;
            thread_creation(&mut rules)?;
            unix_sockets(&mut rules)?;
            signals_to_self(&mut rules, true, true)?;
            ioctls(
                &mut rules,
                &[KVM_IOEVENTFD(), KVM_IRQFD(), KVM_SET_GSI_ROUTING()],
            )?;
            ioctls(&mut rules, &[libc::FIONBIO, libc::FIONREAD, libc::FIOCLEX])?;
            ioctl_types(&mut rules, &ALSA_IOCTL_TYPES)?;
        }
        ThreadKind::Vcpu => {
            allow(&mut rules, VCPU);
            memory(&mut rules, false)?;
            thread_creation(&mut rules)?;
            ioctls(
                &mut rules,
                &[
                    KVM_RUN(),
                    KVM_GET_REGS(),
                    KVM_GET_SREGS(),
                    KVM_IOEVENTFD(),
                    KVM_IRQFD(),
                    KVM_SET_GSI_ROUTING(),
                ],
            )?;
        }
        ThreadKind::Signals => {
            allow(&mut rules, SIGNALS);
            memory(&mut rules, false)?;
        }
        ThreadKind::RunSession => {
            allow(&mut rules, RUN_SESSION);
            memory(&mut rules, false)?;
            // `--stdin`: the thread that sends the command's stdin (it inherits this filter).
            thread_creation(&mut rules)?;
            unix_sockets(&mut rules)?;
            signals_to_self(&mut rules, true, false)?;
        }
        ThreadKind::Block => {
            allow(&mut rules, BLOCK);
            memory(&mut rules, false)?;
        }
        ThreadKind::SoundAlsa => {
            allow(&mut rules, SOUND_ALSA);
            memory(&mut rules, false)?;
            ioctl_types(&mut rules, &ALSA_IOCTL_TYPES)?;
            ioctls(&mut rules, &[libc::FIONREAD])?;
        }
        ThreadKind::SoundWav => {
            allow(&mut rules, SOUND_WAV);
            memory(&mut rules, false)?;
        }
        ThreadKind::SoundNull => {
            allow(&mut rules, SOUND_NULL);
            memory(&mut rules, false)?;
        }
    }
    Ok(rules)
}

/// The second filter every thread gets: clone3 fails with ENOSYS (its flags are in memory, out
/// of a filter's reach), so glibc starts threads with clone, whose flags the first filter
/// checks. Everything else passes to the first filter.
pub fn clone3_fails() -> Result<Rules> {
    let mut rules = Rules::new();
    allow(&mut rules, &[libc::SYS_clone3]);
    Ok(rules)
}

/// The name of some syscalls, for the SIGSYS line (those a compromised thread would want, and
/// those the filters allow somewhere); others are given by number only.
pub fn syscall_name(nr: i32) -> Option<&'static str> {
    let nr = i64::from(nr);
    const NAMES: &[(i64, &str)] = &[
        (libc::SYS_execve, "execve"),
        (libc::SYS_execveat, "execveat"),
        (libc::SYS_ptrace, "ptrace"),
        (libc::SYS_fork, "fork"),
        (libc::SYS_vfork, "vfork"),
        (libc::SYS_clone, "clone"),
        (libc::SYS_clone3, "clone3"),
        (libc::SYS_socket, "socket"),
        (libc::SYS_connect, "connect"),
        (libc::SYS_bind, "bind"),
        (libc::SYS_listen, "listen"),
        (libc::SYS_accept4, "accept4"),
        (libc::SYS_open, "open"),
        (libc::SYS_openat, "openat"),
        (libc::SYS_ioctl, "ioctl"),
        (libc::SYS_mmap, "mmap"),
        (libc::SYS_mprotect, "mprotect"),
        (libc::SYS_getpgid, "getpgid"),
        (libc::SYS_mknod, "mknod"),
        (libc::SYS_mknodat, "mknodat"),
        (libc::SYS_kill, "kill"),
        (libc::SYS_tgkill, "tgkill"),
        (libc::SYS_prctl, "prctl"),
        (libc::SYS_mount, "mount"),
        (libc::SYS_unshare, "unshare"),
        (libc::SYS_setuid, "setuid"),
        (libc::SYS_chroot, "chroot"),
        (libc::SYS_bpf, "bpf"),
        (libc::SYS_process_vm_readv, "process_vm_readv"),
        (libc::SYS_process_vm_writev, "process_vm_writev"),
        (libc::SYS_sendmsg, "sendmsg"),
        (libc::SYS_recvmsg, "recvmsg"),
        (libc::SYS_poll, "poll"),
        (libc::SYS_ppoll, "ppoll"),
        (libc::SYS_pread64, "pread64"),
        (libc::SYS_pwrite64, "pwrite64"),
        (libc::SYS_fsync, "fsync"),
        (libc::SYS_fdatasync, "fdatasync"),
        (libc::SYS_lseek, "lseek"),
        (libc::SYS_fcntl, "fcntl"),
        (libc::SYS_umask, "umask"),
        (libc::SYS_mkdir, "mkdir"),
        (libc::SYS_mkdirat, "mkdirat"),
        (libc::SYS_eventfd2, "eventfd2"),
        (libc::SYS_epoll_ctl, "epoll_ctl"),
        (libc::SYS_epoll_wait, "epoll_wait"),
        (libc::SYS_rt_sigaction, "rt_sigaction"),
        (libc::SYS_rt_sigtimedwait, "rt_sigtimedwait"),
        (libc::SYS_newfstatat, "newfstatat"),
        (libc::SYS_statx, "statx"),
        (libc::SYS_uname, "uname"),
        (libc::SYS_memfd_create, "memfd_create"),
    ];
    NAMES.iter().find(|(n, _)| *n == nr).map(|(_, name)| *name)
}
