//! `--jail DIR`: the VMM runs confined, as Firecracker's jailer confines its VMM (ideas only).
//!
//! Started as root, [`enter`] (called by `main` before any thread exists):
//! 1. checks the request (root, the directory, the uid and gid, the VM's files) and plans where
//!    each of the VM's files appears inside the jail ([`Plan`]), rewriting the configuration's
//!    host paths to in-jail ones;
//! 2. closes every inherited descriptor but 0-2, optionally joins a cgroup with CPU and memory
//!    limits (v1 or v2, whichever the host mounts);
//! 3. unshares the mount, pid, ipc and network namespaces and forks (a new pid namespace starts
//!    with the next child): the parent only waits, forwards SIGTERM, SIGINT and SIGHUP, and exits
//!    with the child's status;
//! 4. the child (pid 1 of the new namespace) bind-mounts the VM's files into DIR (read-only where
//!    the VM only reads them), gives it a tiny /dev (kvm, null, zero, random, urandom) and /proc,
//!    pivot_roots into it and drops the old root; the network namespace has only a loopback
//!    interface, left down;
//! 5. sets the rlimits, no_new_privs, and drops to the uid and gid (supplementary groups
//!    cleared), which also drops every capability, before the VM is built: the guest's first
//!    instruction runs unprivileged.
//!
//! The uid needs the host permissions the VM needs: read its kernel and initramfs, read (and
//! write, unless read-only) its disks, write the vsock socket's directory and the WAV output's
//! directory. The serial output file is created by the jail, owned by the uid.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{SerialConfig, SoundBackend, SoundCapture, SoundSetting, VmConfig};

/// The unprivileged user a jail runs as unless told otherwise: `nobody`.
pub const DEFAULT_ID: u32 = 65534;

/// Descriptors the jailed VMM may have open (RLIMIT_NOFILE) unless told otherwise.
pub const DEFAULT_MAX_FDS: u64 = 4096;

/// The address space (RLIMIT_AS) the jailed VMM may use beyond the guest's memory unless told
/// otherwise: the VMM's own heap, thread stacks, malloc arenas and the sound libraries.
pub const DEFAULT_ADDRESS_SPACE_HEADROOM: u64 = 4 << 30;

/// Where the VM's files appear inside the jail.
const VM_DIR: &str = "/vm";
/// Where the sound server's sockets and cookie appear (the jail's XDG_RUNTIME_DIR).
const SOUND_RUNTIME_DIR: &str = "/run/sound";

/// The jail's settings (`--jail DIR` and the `--jail-*` options; `jail` in a config file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    /// The host directory that becomes the VMM's root. It should be empty and the VMM's alone:
    /// the jail makes its mount points in it.
    pub dir: PathBuf,
    /// The user the VMM runs as (not 0; it must exist on the host).
    #[serde(default = "default_id")]
    pub uid: u32,
    /// The group the VMM runs as (it must exist on the host).
    #[serde(default = "default_id")]
    pub gid: u32,
    /// A cgroup to join, relative to the host's cgroup root (v2) or to each controller's (v1,
    /// the cpu and memory hierarchies); created when missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The cgroup's CPU limit, in percent of one CPU (150 = one and a half CPUs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u32>,
    /// The cgroup's memory limit in bytes (a file may say "1G").
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::config::opt_bytes_or_size"
    )]
    pub memory_limit: Option<u64>,
    /// RLIMIT_NOFILE; [`DEFAULT_MAX_FDS`] when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_fds: Option<u64>,
    /// RLIMIT_AS in bytes; the guest's memory plus [`DEFAULT_ADDRESS_SPACE_HEADROOM`] when not
    /// given.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::config::opt_bytes_or_size"
    )]
    pub max_address_space: Option<u64>,
}

fn default_id() -> u32 {
    DEFAULT_ID
}

impl JailConfig {
    /// A jail in `dir` with every other setting at its default.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            uid: DEFAULT_ID,
            gid: DEFAULT_ID,
            cgroup: None,
            cpu_percent: None,
            memory_limit: None,
            max_fds: None,
            max_address_space: None,
        }
    }

    /// The checks that need no host lookups.
    pub fn validate(&self) -> Result<(), String> {
        if self.dir.as_os_str().is_empty() {
            return Err("jail: --jail needs a directory".into());
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(
                "jail: the jail drops root; give --jail-uid and --jail-gid other than 0".into(),
            );
        }
        if let Some(cgroup) = &self.cgroup {
            let path = Path::new(cgroup);
            if cgroup.is_empty()
                || path.is_absolute()
                || path
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
            {
                return Err(format!(
                    "jail: cgroup '{cgroup}' must be a relative path below the cgroup root, e.g. canto/vm1"
                ));
            }
        }
        if (self.cpu_percent.is_some() || self.memory_limit.is_some()) && self.cgroup.is_none() {
            return Err("jail: CPU and memory limits need a cgroup (--jail-cgroup NAME)".into());
        }
        if self.cpu_percent == Some(0) || self.memory_limit == Some(0) {
            return Err("jail: a CPU or memory limit of 0 would stop the VM at once".into());
        }
        if self.max_fds == Some(0) || self.max_address_space == Some(0) {
            return Err("jail: an rlimit of 0 would stop the VM at once".into());
        }
        Ok(())
    }
}

/// How [`enter`] returned.
pub enum Entered {
    /// In the jail, as the unprivileged uid: build and run this VM (its paths are in-jail ones).
    Jailed(Box<VmConfig>),
    /// The parent outside the jail, after the jailed VMM ended: exit with this status.
    Parent(u8),
}

/// A user's uid by number or name, as `--jail-uid` takes it.
pub fn parse_uid(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let name = CString::new(s).map_err(|_| format!("jail: unknown user '{s}'"))?;
    // SAFETY: `name` is a valid C string; the result is read at once, before any other passwd
    // call (the command line is parsed before any thread exists).
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(format!(
            "jail: unknown user '{s}' (not in the host's passwd)"
        ));
    }
    // SAFETY: non-null: getpwnam returned a valid entry.
    Ok(unsafe { (*entry).pw_uid })
}

/// A group's gid by number or name, as `--jail-gid` takes it.
pub fn parse_gid(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Ok(n);
    }
    let name = CString::new(s).map_err(|_| format!("jail: unknown group '{s}'"))?;
    // SAFETY: as in parse_uid.
    let entry = unsafe { libc::getgrnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(format!(
            "jail: unknown group '{s}' (not in the host's group file)"
        ));
    }
    // SAFETY: non-null: getgrnam returned a valid entry.
    Ok(unsafe { (*entry).gr_gid })
}

fn user_exists(uid: u32) -> bool {
    // SAFETY: getpwuid takes a number; the result is only compared with null (single thread).
    !unsafe { libc::getpwuid(uid) }.is_null()
}

fn group_exists(gid: u32) -> bool {
    // SAFETY: as in user_exists.
    !unsafe { libc::getgrgid(gid) }.is_null()
}

/// One host file or directory made visible inside the jail.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BindMount {
    host: PathBuf,
    /// Absolute, inside the jail.
    jail: PathBuf,
    readonly: bool,
}

/// A file the jail writes into its own /run (a copy, owned by the uid).
#[derive(Debug, Clone, PartialEq, Eq)]
struct CopiedFile {
    contents: Vec<u8>,
    jail: PathBuf,
}

/// Everything the child sets up, decided (and checked) before the fork.
#[derive(Debug, Default)]
struct Plan {
    binds: Vec<BindMount>,
    copies: Vec<CopiedFile>,
    /// Host files the jail creates for the VM (serial output), owned by the uid.
    created: Vec<PathBuf>,
    /// Host symlinks (/lib -> usr/lib) to repeat inside the jail.
    symlinks: Vec<(PathBuf, PathBuf)>,
    /// Environment for the jailed VMM (the sound server's in-jail paths).
    env_set: Vec<(String, String)>,
    env_remove: Vec<String>,
}

fn file_name(path: &Path, fallback: &str) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| fallback.to_string())
}

/// An existing host path, absolute; the error names what it is for.
fn existing(path: &Path, what: &str) -> Result<PathBuf, String> {
    std::fs::canonicalize(path).map_err(|e| {
        format!(
            "jail: cannot give the VM its {what} '{}': {e}",
            path.display()
        )
    })
}

/// Whether the VM's sound goes through ALSA (and so needs alsa-lib's plugins, configuration and
/// the sound server's socket inside the jail).
pub(crate) fn uses_alsa(config: &VmConfig) -> bool {
    match &config.devices.sound {
        SoundSetting::Auto => true,
        SoundSetting::Off => false,
        SoundSetting::Device(d) => {
            matches!(d.backend, SoundBackend::Alsa { .. })
                || matches!(d.capture, Some(SoundCapture::Alsa { .. }))
        }
    }
}

/// The PulseAudio (or PipeWire's pulse) socket a client here would use: `$PULSE_SERVER` when it
/// is a Unix socket, else `$XDG_RUNTIME_DIR/pulse/native`. Err for a server the jail's empty
/// network namespace cannot reach.
pub(crate) fn pulse_socket() -> Result<Option<PathBuf>, String> {
    if let Some(server) = std::env::var_os("PULSE_SERVER") {
        let server = server.to_string_lossy().into_owned();
        // A list of servers: the first Unix one.
        for entry in server.split_whitespace() {
            let entry = entry
                .strip_prefix('{')
                .map_or(entry, |e| e.split_once('}').map_or(e, |(_, rest)| rest));
            if let Some(path) = entry.strip_prefix("unix:") {
                return Ok(Some(PathBuf::from(path)));
            }
            if entry.starts_with('/') {
                return Ok(Some(PathBuf::from(entry)));
            }
        }
        return Err(format!(
            "jail: PULSE_SERVER '{server}' is not a Unix socket, and the jail has no network; point it at the server's socket (unix:PATH)"
        ));
    }
    Ok(std::env::var_os("XDG_RUNTIME_DIR")
        .map(|dir| PathBuf::from(dir).join("pulse/native"))
        .filter(|p| p.exists()))
}

/// The PulseAudio cookie a client here would send: `$PULSE_COOKIE`, else
/// `~/.config/pulse/cookie`.
pub(crate) fn pulse_cookie() -> Option<PathBuf> {
    std::env::var_os("PULSE_COOKIE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/pulse/cookie")))
        .filter(|p| p.is_file())
}

/// Host files alsa-lib and its plugins read (configuration; plugins and the libraries they
/// load).
pub(crate) const ALSA_READ_ONLY: &[&str] = &[
    "/usr/share/alsa",
    "/etc/alsa",
    "/etc/asound.conf",
    "/etc/pulse",
    "/etc/ld.so.cache",
    "/etc/machine-id",
    "/usr/lib",
    "/usr/lib64",
];

impl Plan {
    fn bind(&mut self, host: PathBuf, jail: PathBuf, readonly: bool) {
        self.binds.push(BindMount {
            host,
            jail,
            readonly,
        });
    }

    /// Decides where each of the VM's files goes and rewrites `config` to those paths.
    fn make(config: &mut VmConfig) -> Result<Self, String> {
        let mut plan = Plan::default();
        let vm = Path::new(VM_DIR);

        let kernel = existing(&config.kernel, "kernel")?;
        config.kernel = vm.join(format!("kernel-{}", file_name(&kernel, "kernel")));
        plan.bind(kernel, config.kernel.clone(), true);
        if let Some(initramfs) = &config.initramfs {
            let host = existing(initramfs, "initramfs")?;
            let jail = vm.join(format!("initramfs-{}", file_name(&host, "initramfs")));
            plan.bind(host, jail.clone(), true);
            config.initramfs = Some(jail);
        }
        for (i, disk) in config.devices.disks.iter_mut().enumerate() {
            let host = existing(&disk.path, "disk")?;
            let jail = vm.join(format!("disk{i}-{}", file_name(&host, "disk")));
            plan.bind(host, jail.clone(), disk.readonly);
            disk.path = jail;
        }
        if let SerialConfig::File { path } = &mut config.serial {
            // Created (or truncated) here, as Canto would, and owned by the uid.
            plan.created.push(path.clone());
            let jail = vm.join(format!("serial-{}", file_name(path, "serial")));
            plan.bind(path.clone(), jail.clone(), false);
            *path = jail;
        }
        if let Some(vsock) = &mut config.devices.vsock {
            // The directory: the listener is made there and guest connections go to PATH_P.
            let parent = vsock
                .socket
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let host = existing(parent, "vsock socket directory")?;
            let jail = vm.join("vsock");
            plan.bind(host, jail.clone(), false);
            vsock.socket = jail.join(file_name(&vsock.socket, "vsock.sock"));
        }
        let alsa = uses_alsa(config);
        if let SoundSetting::Device(sound) = &mut config.devices.sound {
            if let SoundBackend::Wav { path } = &mut sound.backend {
                // The directory: streams past the first and format changes write files beside it.
                let parent = path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let host = existing(parent, "WAV output directory")?;
                let jail = vm.join("sound-out");
                plan.bind(host, jail.clone(), false);
                *path = jail.join(file_name(path, "out.wav"));
            }
            if let Some(SoundCapture::Wav { path }) = &mut sound.capture {
                let host = existing(path, "capture WAV file")?;
                let jail = vm.join(format!("capture-{}", file_name(&host, "in.wav")));
                plan.bind(host, jail.clone(), true);
                *path = jail;
            }
        }
        if alsa {
            plan.add_sound_server()?;
        }
        Ok(plan)
    }

    /// alsa-lib's files and the sound server's socket and cookie, at their in-jail places.
    fn add_sound_server(&mut self) -> Result<(), String> {
        for path in ALSA_READ_ONLY {
            let host = Path::new(path);
            if host.exists() {
                self.bind(host.to_path_buf(), host.to_path_buf(), true);
            }
        }
        for link in ["/lib", "/lib64", "/bin", "/sbin"] {
            if let Ok(target) = std::fs::read_link(link) {
                self.symlinks.push((PathBuf::from(link), target));
            } else if Path::new(link).is_dir() && (link == "/lib" || link == "/lib64") {
                self.bind(PathBuf::from(link), PathBuf::from(link), true);
            }
        }
        let runtime = Path::new(SOUND_RUNTIME_DIR);
        if let Some(socket) = pulse_socket()? {
            let host = existing(&socket, "sound server socket")?;
            let jail = runtime.join("pulse/native");
            self.bind(host, jail.clone(), false);
            self.env_set
                .push(("PULSE_SERVER".into(), format!("unix:{}", jail.display())));
        }
        if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR") {
            let pipewire = PathBuf::from(xdg).join("pipewire-0");
            if pipewire.exists() {
                self.bind(pipewire, runtime.join("pipewire-0"), false);
            }
        }
        if let Some(cookie) = pulse_cookie() {
            // A copy the uid can read (the host's is usually 0600 for its owner).
            let contents = std::fs::read(&cookie).map_err(|e| {
                format!(
                    "jail: cannot read the PulseAudio cookie '{}': {e}",
                    cookie.display()
                )
            })?;
            let jail = runtime.join("pulse/cookie");
            self.copies.push(CopiedFile {
                contents,
                jail: jail.clone(),
            });
            self.env_set
                .push(("PULSE_COOKIE".into(), jail.display().to_string()));
        }
        self.env_set
            .push(("XDG_RUNTIME_DIR".into(), SOUND_RUNTIME_DIR.into()));
        self.env_set.push(("HOME".into(), SOUND_RUNTIME_DIR.into()));
        self.env_remove
            .extend(["PULSE_RUNTIME_PATH", "PULSE_STATE_PATH"].map(String::from));
        Ok(())
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> io::Result<()> {
    let source = source.map(cstring).transpose()?;
    let target = cstring(target)?;
    let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is null or a valid NUL-terminated string that outlives the call.
    check(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            fstype.map_or(std::ptr::null(), CStr::as_ptr),
            flags,
            data.map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    })
}

/// `what` failed: one line.
fn fail(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> String {
    move |e| format!("jail: {what}: {e}")
}

/// Enters the jail `config.jail` describes (see the module's documentation). Call it from
/// `main` before any thread exists. Errors are one line.
pub fn enter(config: &VmConfig) -> Result<Entered, String> {
    let Some(jail) = config.jail.clone() else {
        return Ok(Entered::Jailed(Box::new(config.clone())));
    };
    jail.validate()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("jail: --jail must be started as root (it makes namespaces and mounts, then drops to --jail-uid); without root use --landlock".into());
    }
    let dir = match std::fs::metadata(&jail.dir) {
        Ok(m) if m.is_dir() => std::fs::canonicalize(&jail.dir)
            .map_err(fail(format_args!("directory '{}'", jail.dir.display())))?,
        Ok(_) => return Err(format!("jail: '{}' is not a directory", jail.dir.display())),
        Err(e) => {
            return Err(format!(
                "jail: the directory '{}' cannot be used: {e}",
                jail.dir.display()
            ))
        }
    };
    if dir == Path::new("/") {
        return Err("jail: the jail's directory cannot be the host's root".into());
    }
    if !user_exists(jail.uid) {
        return Err(format!(
            "jail: unknown uid {} (no such user on the host)",
            jail.uid
        ));
    }
    if !group_exists(jail.gid) {
        return Err(format!(
            "jail: unknown gid {} (no such group on the host)",
            jail.gid
        ));
    }
    let mut jailed = config.clone();
    jailed.jail = None;
    let plan = Plan::make(&mut jailed)?;
    for path in &plan.created {
        std::fs::File::create(path)
            .map_err(fail(format_args!("cannot create '{}'", path.display())))?;
        chown(path, jail.uid, jail.gid)?;
    }

    close_inherited_fds();
    if let Some(cgroup) = &jail.cgroup {
        join_cgroup(cgroup, jail.cpu_percent, jail.memory_limit)?;
    }
    // SAFETY: unshare takes flags only; this thread is the process's only one.
    check(unsafe {
        libc::unshare(
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWNET,
        )
    })
    .map_err(fail("cannot make the namespaces"))?;

    // Blocked before the fork so that none is lost in between; the parent waits for them.
    let forwarded = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
    let mut previous = empty_set();
    // SAFETY: both sets are valid sigset_t values.
    check(unsafe { libc::sigprocmask(libc::SIG_BLOCK, &forwarded, &mut previous) })
        .map_err(fail("cannot block signals"))?;
    // SAFETY: getpid has no preconditions.
    let parent_pid = unsafe { libc::getpid() };
    // SAFETY: the process has one thread, so the child is a complete copy of it.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!(
            "jail: cannot fork into the pid namespace: {}",
            io::Error::last_os_error()
        ));
    }
    if child > 0 {
        return Ok(Entered::Parent(wait_forwarding(child, &forwarded)));
    }

    // The child: pid 1 of the new pid namespace. It dies with its parent.
    // SAFETY: prctl with these arguments only sets the parent-death signal; getppid has no
    // preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The parent is outside the namespace, so getppid is 0 while it lives.
        if libc::getppid() != 0 && libc::getppid() != parent_pid {
            libc::_exit(1);
        }
    }
    let sigchld = signal_set(&[libc::SIGCHLD]);
    // SAFETY: a valid set; SIGCHLD goes back to its default (the others stay blocked, which is
    // what `signals::install` wants anyway).
    unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, &sigchld, std::ptr::null_mut()) };
    build_root(&dir, &plan, &jail)?;
    for (key, value) in &plan.env_set {
        std::env::set_var(key, value);
    }
    for key in &plan.env_remove {
        std::env::remove_var(key);
    }
    set_rlimits(&jail, config.memory)?;
    drop_privileges(jail.uid, jail.gid)?;
    // A change of uid clears the parent-death signal: set it again, then make sure the parent
    // did not die in between (outside the namespace it is pid 0 to us while it lives).
    // SAFETY: as above.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != 0 {
            libc::_exit(1);
        }
    }
    Ok(Entered::Jailed(Box::new(jailed)))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), String> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(fail(format_args!(
        "cannot give '{}' to the uid",
        path.display()
    )))
}

fn empty_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    set
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    let mut set = empty_set();
    for &signal in signals {
        // SAFETY: a valid set and signal number.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    set
}

/// The parent: forwards stop signals to the jailed VMM until it ends, then gives its exit
/// status (128 + N when signal N killed it, as shells report).
fn wait_forwarding(child: libc::pid_t, set: &libc::sigset_t) -> u8 {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        let reaped = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if reaped == child {
            if libc::WIFEXITED(status) {
                return libc::WEXITSTATUS(status) as u8;
            }
            if libc::WIFSIGNALED(status) {
                return crate::signals::exit_status(libc::WTERMSIG(status));
            }
            continue;
        }
        if reaped < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 1;
        }
        // SAFETY: siginfo_t is plain data that sigwaitinfo fills.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: a valid set and out-pointer; the signals are blocked in this thread.
        let signal = unsafe { libc::sigwaitinfo(set, &mut info) };
        if signal == libc::SIGTERM || signal == libc::SIGINT || signal == libc::SIGHUP {
            // SAFETY: kill takes numbers; the child is ours and not yet reaped.
            unsafe { libc::kill(child, signal) };
        }
    }
}

/// Closes every descriptor above stderr: nothing the caller left open reaches the guest's VMM.
fn close_inherited_fds() {
    // SAFETY: close_range closes descriptors only; this thread is the process's only one and
    // holds none it still needs above 2.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if ret < 0 {
        // Kernels before 5.9: one by one, from what /proc says is open.
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<i32> = entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|fd| *fd > 2)
                .collect();
            for fd in fds {
                // SAFETY: as above.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// Which cgroup hierarchy the host mounts at /sys/fs/cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// v2 when /sys/fs/cgroup is a cgroup2 file system, else v1 (the per-controller hierarchies).
pub fn cgroup_version() -> CgroupVersion {
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        CgroupVersion::V2
    } else {
        CgroupVersion::V1
    }
}

fn write_cgroup(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| {
        format!(
            "jail: cannot join the cgroup: writing '{value}' to {}: {e}",
            path.display()
        )
    })
}

/// Joins `name` (created when missing) with its limits: v2 one directory, v1 one in each of the
/// cpu and memory hierarchies.
fn join_cgroup(name: &str, cpu_percent: Option<u32>, memory: Option<u64>) -> Result<(), String> {
    let root = Path::new("/sys/fs/cgroup");
    let period: u64 = 100_000;
    let quota = cpu_percent.map(|p| u64::from(p) * period / 100);
    let make = |dir: &Path| {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("jail: cannot join the cgroup {}: {e}", dir.display()))
    };
    match cgroup_version() {
        CgroupVersion::V2 => {
            let dir = root.join(name);
            make(&dir)?;
            if let Some(quota) = quota {
                write_cgroup(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
            }
            if let Some(memory) = memory {
                write_cgroup(&dir.join("memory.max"), &memory.to_string())?;
                // No swapping around the limit.
                let _ = std::fs::write(dir.join("memory.swap.max"), "0");
            }
            write_cgroup(&dir.join("cgroup.procs"), "0")
        }
        CgroupVersion::V1 => {
            for controller in ["cpu", "memory"] {
                if !root.join(controller).is_dir() {
                    return Err(format!(
                        "jail: cannot join the cgroup: this host mounts no cgroup v1 '{controller}' hierarchy at {}",
                        root.join(controller).display()
                    ));
                }
            }
            let cpu = root.join("cpu").join(name);
            make(&cpu)?;
            if let Some(quota) = quota {
                write_cgroup(&cpu.join("cpu.cfs_period_us"), &period.to_string())?;
                write_cgroup(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            let mem = root.join("memory").join(name);
            make(&mem)?;
            if let Some(memory) = memory {
                write_cgroup(&mem.join("memory.limit_in_bytes"), &memory.to_string())?;
            }
            write_cgroup(&cpu.join("cgroup.procs"), "0")?;
            write_cgroup(&mem.join("cgroup.procs"), "0")
        }
    }
}

/// Makes `path` (inside the jail's directory) a mount point of the right kind.
fn mount_point(path: &Path, dir: bool) -> Result<(), String> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent)
        .map_err(fail(format_args!("cannot make '{}'", parent.display())))?;
    if dir {
        std::fs::create_dir_all(path)
    } else {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(drop)
    }
    .map_err(fail(format_args!(
        "cannot make the mount point '{}'",
        path.display()
    )))
}

/// `dir` + the in-jail absolute `path`.
fn under(dir: &Path, path: &Path) -> PathBuf {
    dir.join(path.strip_prefix("/").unwrap_or(path))
}

/// The child's mounts, then pivot_root into `dir`.
fn build_root(dir: &Path, plan: &Plan, jail: &JailConfig) -> Result<(), String> {
    let bind = libc::MS_BIND | libc::MS_REC;
    // Nothing done here reaches the host's mount table.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
    .map_err(fail("cannot make the mounts private"))?;
    // pivot_root needs the new root to be a mount point.
    mount(Some(dir), dir, None, bind, None)
        .map_err(fail(format_args!("cannot bind '{}'", dir.display())))?;

    // Small tmpfs's for /dev and /run: the uid's device nodes and the sound server's files.
    let tmpfs = c"tmpfs";
    for (path, options) in [
        ("/dev", c"mode=0755,size=64k"),
        ("/run", c"mode=0755,size=1m"),
    ] {
        let target = under(dir, Path::new(path));
        mount_point(&target, true)?;
        mount(
            Some(Path::new("tmpfs")),
            &target,
            Some(tmpfs),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            Some(options),
        )
        .map_err(fail(format_args!("cannot mount a tmpfs on {path}")))?;
    }
    make_devices(&under(dir, Path::new("/dev")), jail)?;
    let proc_dir = under(dir, Path::new("/proc"));
    mount_point(&proc_dir, true)?;
    mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some(c"proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .map_err(fail("cannot mount /proc"))?;

    for bind_mount in &plan.binds {
        let target = under(dir, &bind_mount.jail);
        mount_point(&target, bind_mount.host.is_dir())?;
        mount(Some(&bind_mount.host), &target, None, bind, None).map_err(fail(format_args!(
            "cannot give the VM '{}'",
            bind_mount.host.display()
        )))?;
        let mut flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV;
        if bind_mount.readonly {
            flags |= libc::MS_RDONLY;
        }
        mount(None, &target, None, flags, None).map_err(fail(format_args!(
            "cannot restrict '{}'",
            bind_mount.jail.display()
        )))?;
    }
    for copy in &plan.copies {
        let target = under(dir, &copy.jail);
        mount_point(&target, false)?;
        std::fs::write(&target, &copy.contents)
            .map_err(fail(format_args!("cannot write '{}'", copy.jail.display())))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o400))
            .map_err(fail(format_args!("cannot write '{}'", copy.jail.display())))?;
        chown(&target, jail.uid, jail.gid)?;
    }
    // The sound runtime directory is the uid's, as XDG_RUNTIME_DIR must be.
    let runtime = under(dir, Path::new(SOUND_RUNTIME_DIR));
    if runtime.exists() {
        chown(&runtime, jail.uid, jail.gid)?;
        let _ = std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700));
    }
    for (link, target) in &plan.symlinks {
        let at = under(dir, link);
        if std::fs::symlink_metadata(&at).is_err() {
            std::os::unix::fs::symlink(target, &at)
                .map_err(fail(format_args!("cannot link '{}'", link.display())))?;
        }
    }

    let old = dir.join(".old-root");
    std::fs::create_dir_all(&old).map_err(fail("cannot make the old root's mount point"))?;
    let (new_root, put_old) = (
        cstring(dir).map_err(fail("root"))?,
        cstring(&old).map_err(fail("root"))?,
    );
    // SAFETY: two valid NUL-terminated paths.
    let pivoted =
        unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
    check(pivoted as i32).map_err(fail(format_args!(
        "cannot pivot_root into '{}'",
        dir.display()
    )))?;
    std::env::set_current_dir("/").map_err(fail("cannot enter the new root"))?;
    let old = cstring(Path::new("/.old-root")).map_err(fail("root"))?;
    // SAFETY: a valid path; a lazy unmount of the host's tree, which nothing here uses.
    check(unsafe { libc::umount2(old.as_ptr(), libc::MNT_DETACH) })
        .map_err(fail("cannot drop the host's root"))?;
    let _ = std::fs::remove_dir("/.old-root");
    // The jail's own root is read-only (its mounts keep their own flags).
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )
    .map_err(fail("cannot make the jail's root read-only"))
}

/// /dev/kvm (the uid's alone) and the harmless character devices.
fn make_devices(dev: &Path, jail: &JailConfig) -> Result<(), String> {
    for (name, major, minor, mode, owned) in [
        ("kvm", 10, 232, 0o600, true),
        ("null", 1, 3, 0o666, false),
        ("zero", 1, 5, 0o666, false),
        ("random", 1, 8, 0o666, false),
        ("urandom", 1, 9, 0o666, false),
    ] {
        let path = dev.join(name);
        let c = cstring(&path).map_err(fail("dev"))?;
        // SAFETY: a valid path; makedev and mknod take numbers.
        check(unsafe {
            libc::mknod(
                c.as_ptr(),
                libc::S_IFCHR | mode,
                libc::makedev(major, minor),
            )
        })
        .map_err(fail(format_args!("cannot make /dev/{name}")))?;
        // mknod's mode went through the umask.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(fail(format_args!("cannot make /dev/{name}")))?;
        if owned {
            chown(&path, jail.uid, jail.gid)?;
        }
    }
    Ok(())
}

fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64, what: &str) -> Result<(), String> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: a valid rlimit value.
    check(unsafe { libc::setrlimit(resource, &limit) })
        .map_err(fail(format_args!("cannot set {what} to {value}")))
}

/// Descriptors, address space, and no core dumps (a core would hold the guest's memory).
fn set_rlimits(jail: &JailConfig, guest_memory: u64) -> Result<(), String> {
    set_rlimit(
        libc::RLIMIT_NOFILE,
        jail.max_fds.unwrap_or(DEFAULT_MAX_FDS),
        "RLIMIT_NOFILE",
    )?;
    set_rlimit(
        libc::RLIMIT_AS,
        jail.max_address_space
            .unwrap_or(guest_memory.saturating_add(DEFAULT_ADDRESS_SPACE_HEADROOM)),
        "RLIMIT_AS",
    )?;
    set_rlimit(libc::RLIMIT_CORE, 0, "RLIMIT_CORE")
}

/// no_new_privs, then no supplementary groups, the gid, the uid (which clears every
/// capability); checked.
fn drop_privileges(uid: u32, gid: u32) -> Result<(), String> {
    // SAFETY: prctl with these arguments only sets a flag on this thread (the only one).
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })
        .map_err(fail("cannot set no_new_privs"))?;
    // SAFETY: an empty group list; the id calls take numbers.
    unsafe {
        check(libc::setgroups(0, std::ptr::null())).map_err(fail("cannot clear the groups"))?;
        check(libc::setresgid(gid, gid, gid))
            .map_err(fail(format_args!("cannot become gid {gid}")))?;
        check(libc::setresuid(uid, uid, uid))
            .map_err(fail(format_args!("cannot become uid {uid}")))?;
        if libc::geteuid() != uid || libc::getegid() != gid || libc::setuid(0) == 0 {
            return Err("jail: the uid and gid did not change".into());
        }
    }
    Ok(())
}

/// The test-only trigger (CANTO_CONFINEMENT_TEST_OPEN=PATH): after confinement the VMM tries to
/// open PATH and lists its network interfaces, each with one line on stderr, then goes on.
pub fn confinement_test_trigger() {
    let Some(path) = std::env::var_os("CANTO_CONFINEMENT_TEST_OPEN") else {
        return;
    };
    let path = PathBuf::from(path);
    match std::fs::File::open(&path) {
        Ok(_) => eprintln!("canto: confinement test: open '{}': opened", path.display()),
        Err(e) => eprintln!(
            "canto: confinement test: open '{}': refused ({e})",
            path.display()
        ),
    }
    eprintln!(
        "canto: confinement test: network interfaces: {}",
        network_interfaces().join(" ")
    );
    // SAFETY: the id calls have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    eprintln!("canto: confinement test: uid={uid} gid={gid}");
}

/// The names of the network interfaces this process sees (if_nameindex, over netlink: no
/// files needed).
pub fn network_interfaces() -> Vec<String> {
    // SAFETY: if_nameindex has no preconditions; the array it returns is freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return vec![format!("(unknown: {})", io::Error::last_os_error())];
    }
    let mut names = Vec::new();
    let mut entry = list;
    // SAFETY: the array ends with an entry whose index is 0; each name is a C string.
    unsafe {
        while (*entry).if_index != 0 {
            names.push(
                CStr::from_ptr((*entry).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            entry = entry.add(1);
        }
        libc::if_freenameindex(list);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskConfig, SoundDeviceConfig, VsockConfig};

    #[test]
    fn settings_are_checked() {
        let ok = JailConfig::new("/srv/jail");
        assert_eq!(ok.validate(), Ok(()));
        let mut root = ok.clone();
        root.uid = 0;
        assert!(root.validate().unwrap_err().contains("other than 0"));
        for bad in ["", "/abs", "../up", "a/../b"] {
            let mut c = ok.clone();
            c.cgroup = Some(bad.into());
            assert!(c.validate().unwrap_err().contains("relative path"), "{bad}");
        }
        let mut limits = ok.clone();
        limits.cpu_percent = Some(50);
        assert!(limits.validate().unwrap_err().contains("need a cgroup"));
        limits.cgroup = Some("canto/vm1".into());
        assert_eq!(limits.validate(), Ok(()));
        limits.memory_limit = Some(0);
        assert!(limits.validate().unwrap_err().contains("of 0"));
        assert!(JailConfig::new("")
            .validate()
            .unwrap_err()
            .contains("directory"));
    }

    #[test]
    fn names_and_numbers_resolve() {
        assert_eq!(parse_uid("1234"), Ok(1234));
        assert_eq!(parse_uid("root"), Ok(0));
        assert!(parse_uid("no-such-user-here")
            .unwrap_err()
            .contains("unknown user"));
        assert_eq!(parse_gid("root"), Ok(0));
        assert!(parse_gid("no-such-group-here")
            .unwrap_err()
            .contains("unknown group"));
    }

    #[test]
    fn the_plan_rewrites_host_paths_to_jail_paths() {
        let dir = std::env::temp_dir().join(format!("canto-jail-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["vmlinux", "initrd", "disk.img", "in.wav"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let mut config = VmConfig::new(dir.join("vmlinux"));
        config.initramfs = Some(dir.join("initrd"));
        config.devices.disks = vec![DiskConfig {
            path: dir.join("disk.img"),
            readonly: true,
            id: None,
        }];
        config.devices.vsock = Some(VsockConfig {
            cid: 3,
            socket: dir.join("v.sock"),
        });
        config.devices.sound = SoundSetting::Device(SoundDeviceConfig {
            backend: SoundBackend::Wav {
                path: dir.join("out.wav"),
            },
            capture: Some(SoundCapture::Wav {
                path: dir.join("in.wav"),
            }),
            outputs: 1,
            inputs: None,
            jacks: 0,
        });
        let plan = Plan::make(&mut config).unwrap();
        assert_eq!(config.kernel, Path::new("/vm/kernel-vmlinux"));
        assert_eq!(
            config.initramfs.as_deref(),
            Some(Path::new("/vm/initramfs-initrd"))
        );
        assert_eq!(
            config.devices.disks[0].path,
            Path::new("/vm/disk0-disk.img")
        );
        assert_eq!(
            config.devices.vsock.as_ref().unwrap().socket,
            Path::new("/vm/vsock/v.sock")
        );
        let SoundSetting::Device(sound) = &config.devices.sound else {
            panic!()
        };
        assert_eq!(
            sound.backend,
            SoundBackend::Wav {
                path: "/vm/sound-out/out.wav".into()
            }
        );
        let find = |jail: &str| {
            plan.binds
                .iter()
                .find(|b| b.jail == Path::new(jail))
                .unwrap()
        };
        assert!(find("/vm/kernel-vmlinux").readonly);
        assert!(find("/vm/disk0-disk.img").readonly);
        assert!(!find("/vm/vsock").readonly);
        assert!(!find("/vm/sound-out").readonly);
        assert!(find("/vm/capture-in.wav").readonly);
        // No ALSA: no host libraries in the jail.
        assert!(!plan.binds.iter().any(|b| b.jail.starts_with("/usr")));

        config.kernel = dir.join("missing");
        let e = Plan::make(&mut config).unwrap_err();
        assert!(
            e.contains("kernel") && e.contains("missing") && !e.contains('\n'),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_file_and_the_command_line_give_the_same_confinement() {
        let doc = r#"{"kernel": "/k", "landlock": true,
            "jail": {"dir": "/j", "uid": 1000, "cgroup": "canto/vm1", "memory_limit": "1G"}}"#;
        let from_file = VmConfig::from_text(doc, crate::config::FileFormat::Json).unwrap();
        let jail = from_file.jail.clone().unwrap();
        assert_eq!((jail.uid, jail.gid), (1000, DEFAULT_ID));
        assert_eq!(jail.memory_limit, Some(1 << 30));
        assert!(from_file.landlock);
        let cli = crate::cli::Cli::parse_args([
            "canto",
            "--kernel",
            "/k",
            "--jail",
            "/j",
            "--jail-uid",
            "1000",
            "--jail-cgroup",
            "canto/vm1",
            "--jail-memory-limit",
            "1G",
            "--landlock",
        ])
        .unwrap();
        assert_eq!(cli.vm_config().unwrap(), from_file);
        let text = serde_json::to_string(&from_file).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&text).unwrap(), from_file);
        // The jail's options need --jail; a file's bad jail is refused with its reason.
        assert!(
            crate::cli::Cli::parse_args(["canto", "--kernel", "/k", "--jail-uid", "1"]).is_err()
        );
        let e = VmConfig::from_text(
            r#"{"kernel": "/k", "jail": {"dir": "/j", "uid": 0}}"#,
            crate::config::FileFormat::Json,
        )
        .unwrap_err();
        assert!(e.contains("other than 0"), "{e}");
    }

    #[test]
    fn the_loopback_is_listed() {
        assert!(network_interfaces().iter().any(|n| n == "lo"));
    }
}
