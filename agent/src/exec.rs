//! `Exec`: runs a command in its own process group with pipes for stdin, stdout and stderr, and
//! relays between them and the connection with poll(2) on one thread: output as `Stdout` and
//! `Stderr` frames, `Stdin` frames into the command, `Signal` frames to its process group, and a
//! SIGKILL to the group when the timeout passes. It ends with `Exit` or `Signaled`.

use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use canto_agent_protocol::{write_message, Exec, FrameReader, Message, DATA_CHUNK, MAX_PAYLOAD};

use crate::listen::Connection;
use crate::session::{next_frame, Incoming};

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The command ended (or could not start) and the reply is sent.
    Done,
    /// The peer closed the connection; the command was killed.
    PeerGone,
}

/// How often the exit is checked when no pidfd can tell it (kernels before 5.3).
const EXIT_POLL: Duration = Duration::from_millis(20);

/// Reads at most this many times from each pipe once the command has exited: what it wrote
/// before exiting is delivered, a background process that keeps the pipe open and writing does
/// not hold the reply back.
const DRAIN_READS: usize = 64;

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd this module owns (a pipe end), no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd for `pid` (readable when it exits), when the kernel has pidfd_open.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, no pointers; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn kill_group(pgid: u32, signal: i32) {
    // SAFETY: kill takes no pointers. The group is the command's own (process_group(0)), and
    // this is only called while the command has not been reaped, so the id is still its.
    unsafe { libc::kill(-(pgid as libc::pid_t), signal) };
}

/// Gives the command default signal handling. An agent started in the background by a shell
/// script (a guest's init: `canto-agent &`) ignores SIGINT and SIGQUIT, and ignored signals
/// survive exec: without this, the host's Ctrl-C would never reach the command. (std resets
/// the signal mask and SIGPIPE itself.)
fn reset_signal_dispositions() -> io::Result<()> {
    for signal in 1..libc::SIGRTMIN() {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction is plain data for which all zeroes is valid; SIG_DFL with no flags.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = libc::SIG_DFL;
        // SAFETY: a valid sigaction for a valid signal number; the old action is not wanted.
        // A failure (a signal number the kernel refuses) is of no consequence.
        unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) };
    }
    Ok(())
}

fn build_command(request: &Exec) -> Command {
    let mut command = Command::new(OsStr::from_bytes(&request.argv[0]));
    command
        .args(request.argv[1..].iter().map(|a| OsStr::from_bytes(a)))
        .envs(
            request
                .env
                .iter()
                .map(|(k, v)| (OsStr::from_bytes(k), OsStr::from_bytes(v))),
        )
        .stdin(if request.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so signals and the timeout's kill reach what it starts too.
        .process_group(0);
    // SAFETY: the hook runs in the forked child before exec and calls only sigaction, which is
    // async-signal-safe; it touches no memory of the parent's but the local it builds.
    unsafe {
        command.pre_exec(reset_signal_dispositions);
    }
    if let Some(cwd) = &request.cwd {
        command.current_dir(OsStr::from_bytes(cwd));
    }
    command
}

/// One output pipe of the command.
struct Output<R> {
    pipe: Option<R>,
    to_message: fn(Vec<u8>) -> Message,
}

impl<R: Read + AsRawFd> Output<R> {
    /// Relays one read's worth; returns false at EOF or when the pipe would block.
    fn relay(&mut self, conn: &mut dyn Connection, chunk: &mut [u8]) -> io::Result<bool> {
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(false);
        };
        match pipe.read(chunk) {
            Ok(0) => {
                self.pipe = None;
                Ok(false)
            }
            Ok(n) => {
                write_message(conn, &(self.to_message)(chunk[..n].to_vec()))?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(_) => {
                self.pipe = None;
                Ok(false)
            }
        }
    }
}

/// The command's stdin and the bytes received for it but not yet written.
struct Input {
    pipe: Option<ChildStdin>,
    pending: Vec<u8>,
    eof: bool,
}

impl Input {
    fn write_pending(&mut self) {
        if let Some(pipe) = self.pipe.as_mut() {
            while !self.pending.is_empty() {
                match pipe.write(&self.pending) {
                    Ok(n) => {
                        self.pending.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        // The command closed its stdin (EPIPE): the rest has nowhere to go.
                        self.pipe = None;
                        break;
                    }
                }
            }
        }
        if self.pipe.is_none() {
            self.pending.clear();
        }
        if self.eof && self.pending.is_empty() {
            self.pipe = None;
        }
    }

    /// Whether another frame of stdin may be taken in: the backlog stays under one frame.
    fn has_room(&self) -> bool {
        self.pending.len() < MAX_PAYLOAD
    }
}

fn status_message(status: ExitStatus, timed_out: bool) -> Message {
    match (status.code(), status.signal()) {
        (Some(code), _) => Message::Exit { code },
        (None, Some(signal)) => Message::Signaled {
            signal: signal as u32,
            timed_out,
        },
        // Neither an exit code nor a signal: not possible for a reaped child on Linux.
        (None, None) => Message::Exit { code: -1 },
    }
}

pub fn run(
    conn: &mut dyn Connection,
    reader: &mut FrameReader,
    request: Exec,
) -> io::Result<Outcome> {
    if request.argv.is_empty() {
        write_message(conn, &Message::Error("Exec with an empty argv".into()))?;
        return Ok(Outcome::Done);
    }
    let mut child = match build_command(&request).spawn() {
        Ok(child) => child,
        Err(e) => {
            let why = format!(
                "cannot run {}: {e}",
                String::from_utf8_lossy(&request.argv[0])
            );
            write_message(conn, &Message::Error(why))?;
            return Ok(Outcome::Done);
        }
    };
    let pid = child.id();
    let outcome = relay(conn, reader, &mut child, pid, request.timeout_ms);
    if !matches!(outcome, Ok(Outcome::Done)) {
        // The peer is gone or the socket failed: nobody wants the command any more.
        kill_group(pid, libc::SIGKILL);
        let _ = child.wait();
    }
    outcome
}

fn relay(
    conn: &mut dyn Connection,
    reader: &mut FrameReader,
    child: &mut Child,
    pid: u32,
    timeout_ms: Option<u64>,
) -> io::Result<Outcome> {
    write_message(conn, &Message::Started { pid })?;
    let mut stdout = Output {
        pipe: child.stdout.take(),
        to_message: Message::Stdout,
    };
    let mut stderr = Output {
        pipe: child.stderr.take(),
        to_message: Message::Stderr,
    };
    let mut input = Input {
        pipe: child.stdin.take(),
        pending: Vec::new(),
        eof: false,
    };
    for fd in [
        stdout.pipe.as_ref().map(|p| p.as_raw_fd()),
        stderr.pipe.as_ref().map(|p| p.as_raw_fd()),
        input.pipe.as_ref().map(|p| p.as_raw_fd()),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd)?;
    }
    let pidfd = pidfd_open(pid);
    let mut deadline = timeout_ms.map(|ms| Instant::now() + Duration::from_millis(ms));
    let mut timed_out = false;
    let mut chunk = vec![0u8; DATA_CHUNK];

    let status = loop {
        if let Some(status) = child.try_wait()? {
            // Deliver what the command wrote before it ended, then report.
            for _ in 0..DRAIN_READS {
                if !stdout.relay(conn, &mut chunk)? {
                    break;
                }
            }
            for _ in 0..DRAIN_READS {
                if !stderr.relay(conn, &mut chunk)? {
                    break;
                }
            }
            break status;
        }
        if let Some(d) = deadline {
            if Instant::now() >= d {
                kill_group(pid, libc::SIGKILL);
                timed_out = true;
                deadline = None;
                continue;
            }
        }

        // Slots: 0 the connection, 1 stdout, 2 stderr, 3 stdin, 4 the pidfd; an fd of -1 is
        // ignored by poll.
        let pollfd = |fd: Option<RawFd>, events: libc::c_short| libc::pollfd {
            fd: fd.unwrap_or(-1),
            events,
            revents: 0,
        };
        let mut fds = [
            pollfd(
                Some(conn.as_raw_fd()).filter(|_| input.has_room()),
                libc::POLLIN,
            ),
            pollfd(stdout.pipe.as_ref().map(|p| p.as_raw_fd()), libc::POLLIN),
            pollfd(stderr.pipe.as_ref().map(|p| p.as_raw_fd()), libc::POLLIN),
            pollfd(
                input
                    .pipe
                    .as_ref()
                    .filter(|_| !input.pending.is_empty())
                    .map(|p| p.as_raw_fd()),
                libc::POLLOUT,
            ),
            pollfd(pidfd.as_ref().map(|p| p.as_raw_fd()), libc::POLLIN),
        ];
        let mut wait = if pidfd.is_some() {
            None
        } else {
            Some(EXIT_POLL)
        };
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            wait = Some(wait.map_or(left, |w| w.min(left)));
        }
        let wait_ms = wait.map_or(-1, |w| w.as_millis().min(i32::MAX as u128) as i32 + 1);
        // SAFETY: fds is a valid array of pollfd of the length given.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let woke = |slot: usize| fds[slot].revents != 0;
        if woke(1) {
            stdout.relay(conn, &mut chunk)?;
        }
        if woke(2) {
            stderr.relay(conn, &mut chunk)?;
        }
        if woke(3) {
            input.write_pending();
        }
        if woke(0) {
            match next_frame(conn, reader)? {
                Incoming::Message(Message::Stdin(data)) => {
                    if input.pipe.is_some() && !input.eof {
                        input.pending.extend_from_slice(&data);
                    }
                    input.write_pending();
                }
                Incoming::Message(Message::StdinEof) => {
                    input.eof = true;
                    input.write_pending();
                }
                Incoming::Message(Message::Signal(n)) => {
                    if (1..=64).contains(&n) {
                        kill_group(pid, n as i32);
                    } else {
                        let why = format!("signal {n} is not a signal number (1 to 64)");
                        write_message(conn, &Message::Error(why))?;
                    }
                }
                Incoming::Message(other) => {
                    let why = format!("{} while a command runs", other.name());
                    write_message(conn, &Message::Error(why))?;
                }
                Incoming::Refused => {}
                Incoming::Closed => return Ok(Outcome::PeerGone),
            }
        }
    };
    write_message(conn, &status_message(status, timed_out))?;
    Ok(Outcome::Done)
}
