//! `canto run [VM options] [--copy-in HOST:GUEST]... [--copy-out GUEST:HOST]... [--timeout S]
//! -- COMMAND [ARGS]` and `canto exec --vsock PATH -- COMMAND [ARGS]`: a command in a guest,
//! through its agent (`canto-agent`, docs/agent-protocol.md), with its output on Canto's and its
//! exit status as Canto's, like `docker run --rm`.
//!
//! `canto run` boots the VM with a vsock device whose socket is in a private temporary
//! directory, waits for the agent, copies files in, runs the command, copies files out and stops
//! the VM (a clean teardown: every device flushes, a WAV file is complete). Without `--kernel`
//! (or `--config`) it boots the guest `make guest` built, from `$CANTO_GUEST_DIR`, or else
//! `target/guest/` of the workspace the `canto` binary was built in: `vmlinux` with the root disk
//! `rootfs.ext4` (read-only, the first disk: `/dev/vda`; the guest's init puts a tmpfs overlay
//! on it), or with `initramfs.cpio` when there is no root disk or `--initramfs` is given.
//! `--rootfs PATH` boots another root disk (e.g. `make rootfs-debian`'s) the same way.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::agent_client::{
    AgentClient, AgentError, ExecRequest, ExecStatus, AGENT_VSOCK_PORT, DEFAULT_IO_TIMEOUT,
};
use crate::config::{DiskConfig, SerialConfig, VsockConfig};
use crate::vcpu::VmExit;

/// The CID `canto run` gives its guest (the first one a guest may have).
const RUN_GUEST_CID: u64 = 3;

/// How long `canto run` waits for the agent by default (the boot included: 30-50 s under
/// kvm_pvm, a second or two on hardware KVM).
const DEFAULT_AGENT_WAIT: Duration = Duration::from_secs(180);

/// How long `canto exec` waits for the agent of a running VM by default.
const DEFAULT_EXEC_AGENT_WAIT: Duration = Duration::from_secs(10);

/// The largest file `--copy-out` takes from the guest (the guest is untrusted: a bound, however
/// generous, on what it can make the host write).
const MAX_COPY_OUT: u64 = 64 << 30;

/// The exit status for a command the agent could not start (a shell's "command not found").
const STATUS_NOT_STARTED: u8 = 127;

/// Canto's own failures (bad options, a VM that does not boot, an agent that never answers).
const STATUS_CANTO_ERROR: u8 = 1;

const RUN_USAGE: &str = "usage: canto run [VM options] [--rootfs IMAGE] [--copy-in HOST:GUEST]... \
[--copy-out GUEST:HOST]... [--timeout S] [--agent-timeout S] [--stdin] -- COMMAND [ARGS]";

/// The root disk `make guest` writes beside the kernel.
const ROOT_DISK: &str = "rootfs.ext4";

/// The kernel arguments that boot a root disk: the first disk, read-only, and the init all
/// Canto guest images share (resources/guest/init).
const ROOT_DISK_CMDLINE: &str = "root=/dev/vda ro rootfstype=ext4 init=/init";
const EXEC_USAGE: &str =
    "usage: canto exec --vsock PATH [--timeout S] [--agent-timeout S] [--stdin] -- COMMAND [ARGS]";

/// The options of `canto run` and `canto exec` that are not the VM's.
#[derive(Debug, Default, PartialEq)]
pub struct SessionOptions {
    pub copy_in: Vec<(PathBuf, PathBuf)>,
    pub copy_out: Vec<(PathBuf, PathBuf)>,
    pub timeout: Option<Duration>,
    pub agent_wait: Option<Duration>,
    pub stdin: bool,
    /// `canto exec --vsock PATH`.
    pub vsock: Option<PathBuf>,
    /// `canto run --rootfs IMAGE`: the root disk to boot instead of `make guest`'s.
    pub rootfs: Option<PathBuf>,
    pub command: Vec<OsString>,
}

/// `canto run`'s arguments, split: the VM's options (for [`crate::cli::Cli`]) and the session's.
#[derive(Debug, PartialEq)]
pub struct RunArgs {
    pub vm_args: Vec<OsString>,
    pub session: SessionOptions,
}

fn parse_seconds(option: &str, value: &OsStr) -> Result<Duration, String> {
    let text = value.to_string_lossy();
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{option}: '{text}' is not a positive number of seconds"))
}

fn parse_pair(option: &str, value: &OsStr) -> Result<(PathBuf, PathBuf), String> {
    let bytes = value.as_bytes();
    let split = bytes.iter().position(|&b| b == b':');
    match split {
        Some(i) if i > 0 && i + 1 < bytes.len() => Ok((
            PathBuf::from(OsStr::from_bytes(&bytes[..i])),
            PathBuf::from(OsStr::from_bytes(&bytes[i + 1..])),
        )),
        _ => Err(format!(
            "{option}: '{}' is not SOURCE:DESTINATION",
            value.to_string_lossy()
        )),
    }
}

/// Splits the arguments after `run` or `exec`: the session's options are taken out, the
/// command is what follows `--`, the rest is the VM's (`exec` takes no VM options).
fn split_args(args: &[OsString], exec: bool) -> Result<RunArgs, String> {
    let usage = if exec { EXEC_USAGE } else { RUN_USAGE };
    let Some(dash) = args.iter().position(|a| a == "--") else {
        return Err(format!(
            "no command: put it after `--` ({})",
            usage.trim_start_matches("usage: ")
        ));
    };
    let command = args[dash + 1..].to_vec();
    if command.is_empty() {
        return Err(format!("no command after `--` ({usage})"));
    }
    let mut session = SessionOptions {
        command,
        ..SessionOptions::default()
    };
    let mut vm_args = Vec::new();
    let mut rest = args[..dash].iter();
    while let Some(arg) = rest.next() {
        // `--name VALUE` or `--name=VALUE`.
        let (name, inline) = match arg.as_bytes().iter().position(|&b| b == b'=') {
            Some(i) if arg.as_bytes().starts_with(b"--") => (
                OsStr::from_bytes(&arg.as_bytes()[..i]),
                Some(OsStr::from_bytes(&arg.as_bytes()[i + 1..]).to_os_string()),
            ),
            _ => (arg.as_os_str(), None),
        };
        let name = name.to_string_lossy().into_owned();
        let takes_value = matches!(
            name.as_str(),
            "--copy-in" | "--copy-out" | "--timeout" | "--agent-timeout"
        ) || (exec && name == "--vsock")
            || (!exec && name == "--rootfs");
        if name == "--stdin" {
            session.stdin = true;
            continue;
        }
        if !takes_value {
            if exec {
                return Err(format!("unknown option '{name}' ({usage})"));
            }
            vm_args.push(arg.clone());
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => rest
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))?,
        };
        match name.as_str() {
            "--copy-in" => session.copy_in.push(parse_pair(&name, &value)?),
            "--copy-out" => session.copy_out.push(parse_pair(&name, &value)?),
            "--timeout" => session.timeout = Some(parse_seconds(&name, &value)?),
            "--agent-timeout" => session.agent_wait = Some(parse_seconds(&name, &value)?),
            "--rootfs" => session.rootfs = Some(PathBuf::from(value)),
            _ => session.vsock = Some(PathBuf::from(value)),
        }
    }
    if exec && session.vsock.is_none() {
        return Err(format!("--vsock PATH is needed ({usage})"));
    }
    Ok(RunArgs { vm_args, session })
}

/// Where `canto run` looks for the guest `make guest` built: `$CANTO_GUEST_DIR`, or the
/// `target/guest` directory of the workspace holding the running binary
/// (`WORKSPACE/target/{debug,release}/canto`).
pub fn guest_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("CANTO_GUEST_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe =
        std::env::current_exe().map_err(|e| format!("cannot find the canto binary's path: {e}"))?;
    exe.ancestors()
        .filter(|dir| dir.file_name() == Some(OsStr::new("target")))
        .map(|target| target.join("guest"))
        .find(|guest| guest.join("vmlinux").is_file())
        .ok_or_else(|| {
            format!(
                "no guest kernel: give --kernel PATH, or build one with `make guest` \
                 (looked for target/guest/vmlinux above {}; $CANTO_GUEST_DIR overrides)",
                exe.display()
            )
        })
}

/// The guest kernel in `dir` for a VM with these options: the uniprocessor build (vmlinux-up,
/// seconds faster to boot here) unless `--cpus` asks for more than one vCPU or it is not built.
fn guest_kernel(dir: &Path, vm_args: &[OsString]) -> PathBuf {
    let up = dir.join("vmlinux-up");
    let smp = option_value(vm_args, "--cpus").is_some_and(|n| n.as_bytes() != b"1");
    if !smp && up.is_file() {
        up
    } else {
        dir.join("vmlinux")
    }
}

/// The value of `NAME VALUE` or `NAME=VALUE` in `args` (the VM's parser refuses it twice).
fn option_value<'a>(args: &'a [OsString], name: &str) -> Option<&'a OsStr> {
    let mut value = None;
    for (i, a) in args.iter().enumerate() {
        let b = a.as_bytes();
        if b == name.as_bytes() {
            value = args.get(i + 1).map(OsString::as_os_str);
        } else if b.starts_with(name.as_bytes()) && b.get(name.len()) == Some(&b'=') {
            value = Some(OsStr::from_bytes(&b[name.len() + 1..]));
        }
    }
    value
}

fn has_option(args: &[OsString], name: &str) -> bool {
    args.iter().any(|a| {
        let b = a.as_bytes();
        b == name.as_bytes() || (b.starts_with(name.as_bytes()) && b.get(name.len()) == Some(&b'='))
    })
}

/// A private directory for the vsock socket, removed when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> io::Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!("canto-run-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Says one line on stderr and gives Canto's error status.
fn fail(message: impl std::fmt::Display) -> u8 {
    eprintln!("canto: {message}");
    STATUS_CANTO_ERROR
}

/// Connects to the agent behind the hybrid vsock socket, retrying until `wait` has passed (the
/// socket appears when the VM is built; the agent listens once the guest has booted), or until
/// `gone` says the VM ended.
fn wait_for_agent(
    socket: &Path,
    wait: Duration,
    gone: &dyn Fn() -> bool,
) -> Result<AgentClient, String> {
    let start = Instant::now();
    let mut last = String::from("no attempt");
    loop {
        if gone() {
            return Err(format!(
                "the guest ended before its agent answered (after {:.1} s)",
                start.elapsed().as_secs_f64()
            ));
        }
        let left = wait.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!(
                "the guest agent did not answer on vsock port {AGENT_VSOCK_PORT} of {} within \
                 {:.1} s (last: {last}); does the guest start canto-agent (canto.agent=1)?",
                socket.display(),
                wait.as_secs_f64()
            ));
        }
        let attempt = left.min(Duration::from_secs(5));
        match AgentClient::connect_vsock(socket, AGENT_VSOCK_PORT, attempt) {
            // The short attempt's timeout was for finding the agent; transfers then get the
            // default (a busy guest can take seconds to drain a 64 KiB frame).
            Ok(mut client) => match client.set_io_timeout(DEFAULT_IO_TIMEOUT) {
                Ok(()) => return Ok(client),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200).min(left));
    }
}

/// Copies in, runs the command, copies out: the exit status `canto run`/`canto exec` gives.
fn session(client: &mut AgentClient, options: &SessionOptions) -> u8 {
    for (host, guest) in &options.copy_in {
        let result = File::open(host)
            .and_then(|f| Ok((f.metadata()?.permissions().mode() & 0o7777, f)))
            .map_err(|e| format!("--copy-in: cannot read {}: {e}", host.display()))
            .and_then(|(mode, mut file)| {
                client
                    .put_file(&mut file, guest, mode)
                    .map_err(|e| format!("--copy-in {}: {e}", host.display()))
            });
        if let Err(e) = result {
            return fail(e);
        }
    }
    let mut request = ExecRequest::new(options.command.iter().cloned());
    request.timeout = options.timeout;
    let stdin: Option<Box<dyn io::Read + Send>> = if options.stdin {
        Some(Box::new(io::stdin()))
    } else {
        None
    };
    let name = options.command[0].to_string_lossy().into_owned();
    let result = client.exec(&request, stdin, &mut io::stdout(), &mut io::stderr());
    let _ = io::stdout().flush();
    let status = match result {
        Ok(status) => status,
        Err(AgentError::Refused { message, .. }) => {
            eprintln!("canto: cannot run {name} in the guest: {message}");
            return STATUS_NOT_STARTED;
        }
        Err(e) => return fail(format!("running {name}: {e}")),
    };
    if let ExecStatus::Signaled {
        signal,
        timed_out: true,
    } = status
    {
        eprintln!(
            "canto: {name} passed its --timeout of {:.1} s and was killed (signal {signal}); \
             exit status {}",
            options.timeout.unwrap_or_default().as_secs_f64(),
            status.code()
        );
    }
    for (guest, host) in &options.copy_out {
        let result = File::create(host)
            .map_err(|e| format!("--copy-out: cannot create {}: {e}", host.display()))
            .and_then(|mut file| {
                client
                    .get_file(guest, &mut file, MAX_COPY_OUT)
                    .map_err(|e| format!("--copy-out {}: {e}", guest.display()))
            });
        if let Err(e) = result {
            return fail(e);
        }
    }
    // A status is 0..=255 (128 + N for a signal: ExecStatus::code caps N).
    status.code().clamp(0, 255) as u8
}

/// `canto exec --vsock PATH -- COMMAND`: the arguments after `exec`.
pub fn exec_main(args: &[OsString]) -> u8 {
    let options = match split_args(args, true) {
        Ok(parsed) => parsed.session,
        Err(e) => return fail(e),
    };
    let socket = options.vsock.clone().unwrap_or_default();
    let wait = options.agent_wait.unwrap_or(DEFAULT_EXEC_AGENT_WAIT);
    match wait_for_agent(&socket, wait, &|| false) {
        Ok(mut client) => session(&mut client, &options),
        Err(e) => fail(e),
    }
}

/// `canto run [VM options] ... -- COMMAND`: the arguments after `run`.
pub fn run_main(args: &[OsString], signals: &crate::signals::StopSignals) -> u8 {
    let RunArgs {
        mut vm_args,
        session: options,
    } = match split_args(args, false) {
        Ok(parsed) => parsed,
        Err(e) => return fail(e),
    };
    // The root disk to put first (`/dev/vda`), read-only.
    let mut root_disk = options.rootfs.clone();
    if let Some(image) = &root_disk {
        if has_option(&vm_args, "--initramfs") {
            return fail("--rootfs and --initramfs: give one of them");
        }
        if !image.is_file() {
            return fail(format!("--rootfs {}: no such file", image.display()));
        }
    }
    if !has_option(&vm_args, "--kernel") && !has_option(&vm_args, "--config") {
        let dir = match guest_dir() {
            Ok(dir) => dir,
            Err(e) => return fail(e),
        };
        let kernel = guest_kernel(&dir, &vm_args);
        vm_args.push("--kernel".into());
        vm_args.push(kernel.into());
        let initramfs = dir.join("initramfs.cpio");
        let disk = dir.join(ROOT_DISK);
        if root_disk.is_none() && !has_option(&vm_args, "--initramfs") {
            if disk.is_file() {
                root_disk = Some(disk);
            } else if initramfs.is_file() {
                vm_args.push("--initramfs".into());
                vm_args.push(initramfs.into());
            }
        }
    }
    let serial_given = has_option(&vm_args, "--serial");
    let mut argv = vec![OsString::from("canto run")];
    argv.extend(vm_args);
    let cli = crate::cli::Cli::parse_args(argv).unwrap_or_else(|e| e.exit());
    let mut config = match cli.vm_config() {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    if let Some(image) = root_disk {
        // First, so that it is /dev/vda; the user's disks follow (/dev/vdb, ...).
        config.devices.disks.insert(
            0,
            DiskConfig {
                path: image,
                readonly: true,
                id: Some("canto-root".into()),
            },
        );
        // The user's root= (or init=) wins, like canto.agent= below.
        let words: Vec<&str> = config
            .cmdline
            .split(" -- ")
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let extra: Vec<&str> = ROOT_DISK_CMDLINE
            .split_whitespace()
            .filter(|arg| {
                let key = arg.split('=').next().unwrap_or(arg);
                !words.iter().any(|w| w.split('=').next() == Some(key))
            })
            .collect();
        config.cmdline = format!("{} {}", extra.join(" "), config.cmdline)
            .trim()
            .to_string();
    }
    // The guest's console is not the command's output.
    if !serial_given {
        config.serial = SerialConfig::Null;
    }
    // The user's canto.agent= wins (canto.agent=0 boots a guest without its agent).
    if !config
        .cmdline
        .split_whitespace()
        .any(|a| a.starts_with("canto.agent="))
    {
        let line = format!(" {}", config.cmdline);
        config.cmdline = match line.split_once(" -- ") {
            Some((kernel, init)) => format!("{kernel} canto.agent=1 -- {init}"),
            None => format!("{line} canto.agent=1"),
        };
    }
    if let Err(e) = crate::seccomp::init(config.seccomp) {
        return fail(e);
    }
    if let Err(e) = signals.watch() {
        return fail(format!("cannot set up the stop signals: {e}"));
    }
    let dir = match PrivateDir::new() {
        Ok(dir) => dir,
        Err(e) => {
            return fail(format!(
                "cannot make a private directory for the vsock socket: {e}"
            ))
        }
    };
    let socket = match &config.devices.vsock {
        Some(vsock) => vsock.socket.clone(),
        None => {
            let socket = dir.0.join("vsock.sock");
            config.devices.vsock = Some(VsockConfig {
                cid: RUN_GUEST_CID,
                socket: socket.clone(),
            });
            socket
        }
    };
    let mut vmm = match crate::Vmm::build(&config) {
        Ok(vmm) => vmm,
        Err(e) => return fail(error_line(&e)),
    };
    vmm.stop_on(signals);

    // The VM runs on this thread (it owns the stop signals' handling); the session runs on
    // another and, when done, stops the VM the way a SIGTERM would: a clean teardown.
    let vm_ended = Arc::new(AtomicBool::new(false));
    let session_done = Arc::new(AtomicBool::new(false));
    let (status_tx, status_rx) = mpsc::channel();
    let spawned = {
        let vm_ended = vm_ended.clone();
        let session_done = session_done.clone();
        std::thread::Builder::new()
            .name("canto-run".into())
            .spawn(move || {
                crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::RunSession);
                let wait = options.agent_wait.unwrap_or(DEFAULT_AGENT_WAIT);
                let status =
                    match wait_for_agent(&socket, wait, &|| vm_ended.load(Ordering::Acquire)) {
                        Ok(mut client) => session(&mut client, &options),
                        Err(e) => fail(e),
                    };
                session_done.store(true, Ordering::Release);
                let _ = status_tx.send(status);
                // SAFETY: kill takes no pointers; it signals this process, whose signal thread
                // turns SIGTERM into the VM's orderly stop.
                unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
            })
    };
    if let Err(e) = spawned {
        return fail(format!("cannot start the session thread: {e}"));
    }
    let result = vmm.run();
    vm_ended.store(true, Ordering::Release);
    if session_done.load(Ordering::Acquire) {
        return status_rx.recv().unwrap_or(STATUS_CANTO_ERROR);
    }
    match result {
        Ok(VmExit::Signal(signal)) => {
            eprintln!(
                "canto: stopped by {} before the command ended",
                crate::signals::name(signal)
            );
            crate::signals::exit_status(signal)
        }
        Ok(reason) => {
            // The session may still finish its last words (e.g. the agent's error line).
            match status_rx.recv_timeout(Duration::from_secs(2)) {
                Ok(status) => status,
                Err(_) => fail(format!(
                    "the guest ended ({reason:?}) before the command did"
                )),
            }
        }
        Err(e) => fail(error_line(&e)),
    }
}

/// The error and each cause behind it, in one line.
pub fn error_line(e: &crate::Error) -> String {
    let mut line = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn one_vcpu_boots_the_uniprocessor_kernel_when_it_is_built() {
        let dir = std::env::temp_dir().join(format!("canto-guest-kernel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let smp = dir.join("vmlinux");
        let up = dir.join("vmlinux-up");
        std::fs::write(&smp, b"").unwrap();
        // Not built: the SMP kernel whatever the options.
        assert_eq!(guest_kernel(&dir, &args(&[])), smp);
        std::fs::write(&up, b"").unwrap();
        assert_eq!(guest_kernel(&dir, &args(&[])), up);
        assert_eq!(guest_kernel(&dir, &args(&["--cpus", "1"])), up);
        assert_eq!(guest_kernel(&dir, &args(&["--cpus", "2"])), smp);
        assert_eq!(guest_kernel(&dir, &args(&["--cpus=4"])), smp);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn run_arguments_split_into_the_vm_s_and_the_session_s() {
        let parsed = split_args(
            &args(&[
                "--memory",
                "256M",
                "--copy-in",
                "a.wav:/tmp/a.wav",
                "--copy-out=/tmp/b:b",
                "--timeout",
                "2.5",
                "--stdin",
                "--sound",
                "backend=null",
                "--",
                "sh",
                "-c",
                "echo --timeout",
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            parsed.vm_args,
            args(&["--memory", "256M", "--sound", "backend=null"])
        );
        let s = parsed.session;
        assert_eq!(s.copy_in, vec![("a.wav".into(), "/tmp/a.wav".into())]);
        assert_eq!(s.copy_out, vec![("/tmp/b".into(), "b".into())]);
        assert_eq!(s.timeout, Some(Duration::from_millis(2500)));
        assert!(s.stdin);
        assert_eq!(s.command, args(&["sh", "-c", "echo --timeout"]));
    }

    #[test]
    fn run_argument_mistakes_are_one_line() {
        let err = |list: &[&str]| split_args(&args(list), false).unwrap_err();
        assert!(err(&["sh"]).contains("no command: put it after `--`"));
        assert!(err(&["--"]).contains("no command after `--`"));
        assert!(err(&["--timeout", "x", "--", "true"]).contains("not a positive number"));
        assert!(err(&["--timeout", "0", "--", "true"]).contains("not a positive number"));
        assert!(err(&["--copy-in", "nocolon", "--", "true"]).contains("SOURCE:DESTINATION"));
        assert!(err(&["--copy-in", "--", "true"]).contains("--copy-in needs a value"));
        for e in [err(&["sh"]), err(&["--copy-in", "x", "--", "y"])] {
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn rootfs_is_run_s_option_not_the_vm_s() {
        let parsed = split_args(
            &args(&["--rootfs", "deb.ext4", "--disk", "path=d.img", "--", "true"]),
            false,
        )
        .unwrap();
        assert_eq!(parsed.session.rootfs, Some("deb.ext4".into()));
        assert_eq!(parsed.vm_args, args(&["--disk", "path=d.img"]));
        let err = split_args(
            &args(&["--vsock", "/v", "--rootfs", "x", "--", "true"]),
            true,
        )
        .unwrap_err();
        assert!(err.contains("unknown option '--rootfs'"), "{err}");
    }

    #[test]
    fn exec_needs_its_socket_and_takes_no_vm_options() {
        let parsed = split_args(&args(&["--vsock", "/v.sock", "--", "true"]), true).unwrap();
        assert_eq!(parsed.session.vsock, Some("/v.sock".into()));
        let err = |list: &[&str]| split_args(&args(list), true).unwrap_err();
        assert!(err(&["--", "true"]).contains("--vsock PATH is needed"));
        assert!(err(&["--memory", "1G", "--", "true"]).contains("unknown option '--memory'"));
    }

    #[test]
    fn an_absent_agent_is_one_line_naming_the_wait() {
        let dir = PrivateDir::new().unwrap();
        let socket = dir.0.join("none.sock");
        let start = Instant::now();
        let e = wait_for_agent(&socket, Duration::from_millis(300), &|| false)
            .err()
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(e.contains("did not answer") && e.contains("0.3 s"), "{e}");
        assert!(!e.contains('\n'));
        let e = wait_for_agent(&socket, Duration::from_secs(60), &|| true)
            .err()
            .unwrap();
        assert!(
            e.contains("the guest ended before its agent answered"),
            "{e}"
        );
    }
}
