//! The host side of the guest agent protocol (`docs/agent-protocol.md`, crate
//! `canto-agent-protocol`): a handshake, running a command with its output forwarded, and
//! putting and getting files.
//!
//! Everything the agent sends is untrusted (the guest may be compromised): frames are bounded
//! by [`MAX_PAYLOAD`] and checked before anything is allocated, memory stays one frame buffer
//! whatever the agent sends, reads have timeouts, output and downloads can be capped, and every
//! malformed or unexpected frame is an [`AgentError`], never a panic. After an error in the middle
//! of an exchange the connection's state is unknown, so the client refuses further requests.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canto_agent_protocol::{
    Exec, FrameError, FrameReader, Message, ReadError, DATA_CHUNK, HEADER_LEN, MAX_PAYLOAD, VERSION,
};

pub use canto_agent_protocol::VERSION as PROTOCOL_VERSION;

/// The vsock port the agent listens on in Canto's guests.
pub const AGENT_VSOCK_PORT: u32 = 52;

/// How long a read may wait during the handshake and file transfers (and how long a write may
/// wait at any time) before the agent is taken as unresponsive.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long past a command's timeout the client waits for the agent to report its end (the agent
/// kills the command at the timeout itself).
const EXEC_TIMEOUT_GRACE: Duration = Duration::from_secs(10);

/// The longest agent error text kept (the rest is cut), so a log line stays a line.
const MAX_ERROR_TEXT: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the agent did not answer {what} within {waited:?}")]
    Timeout { what: String, waited: Duration },
    #[error("the agent closed the connection {during}")]
    Closed { during: String },
    #[error("the agent sent a malformed frame {during}: {detail}")]
    Malformed { during: String, detail: String },
    #[error("the agent sent {got} {during}, which does not belong there")]
    Unexpected { during: String, got: &'static str },
    #[error("the agent refused {what}: {message}")]
    Refused { what: String, message: String },
    #[error("the command's output passed the limit of {limit} bytes")]
    OutputLimit { limit: u64 },
    #[error("the file from the guest passed the limit of {limit} bytes")]
    FileTooLarge { limit: u64 },
    #[error("the hybrid vsock socket answered '{answer}' to CONNECT {port}")]
    VsockConnect { port: u32, answer: String },
    #[error("a {what} request of {len} bytes is over the protocol's frame limit")]
    TooLarge { what: &'static str, len: usize },
    #[error("the agent connection is unusable after an earlier error")]
    Broken,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExecStatus {
    Exited(i32),
    Signaled { signal: u32, timed_out: bool },
}

impl ExecStatus {
    /// The status a shell would report: the exit code, or 128 + the signal.
    pub fn code(&self) -> i32 {
        match *self {
            Self::Exited(code) => code,
            // An agent can send any number; a signal number is below 128.
            Self::Signaled { signal, .. } => 128 + signal.min(127) as i32,
        }
    }
}

/// A command for the agent to run.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub argv: Vec<OsString>,
    /// Variables set on top of the agent's environment.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: Option<PathBuf>,
    /// The agent kills the command (SIGKILL to its process group) after this long.
    pub timeout: Option<Duration>,
    /// The command's stdout and stderr together may be at most this many bytes; past it the
    /// exec fails with [`AgentError::OutputLimit`] (a flooding guest costs nothing but time).
    pub max_output: Option<u64>,
}

impl ExecRequest {
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    fn to_message(&self, stdin: bool) -> Message {
        let bytes = |s: &std::ffi::OsStr| s.as_bytes().to_vec();
        Message::Exec(Exec {
            argv: self.argv.iter().map(|a| bytes(a)).collect(),
            env: self.env.iter().map(|(k, v)| (bytes(k), bytes(v))).collect(),
            cwd: self.cwd.as_ref().map(|p| bytes(p.as_os_str())),
            stdin,
            timeout_ms: self
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)),
        })
    }
}

/// The writing half, shared with the stdin thread and [`Signaler`]s: frames are written whole
/// under its lock, so they never interleave.
struct Writer {
    stream: Mutex<UnixStream>,
    broken: AtomicBool,
}

impl Writer {
    /// Writes a whole frame. The stream has a write timeout; a frame cut by it leaves the
    /// connection out of step, so the connection is marked broken.
    fn send(&self, message: &Message) -> Result<(), AgentError> {
        self.send_frame(message, None).map(|_| ())
    }

    /// Writes a whole frame, unless `stdin_done` is set when the lock is taken; returns whether
    /// it sent. With `stdin_done` (the stdin thread), a write that times out is retried: the
    /// agent stops taking stdin while the command does not read it, which is no failure.
    fn send_frame(
        &self,
        message: &Message,
        stdin_done: Option<&AtomicBool>,
    ) -> Result<bool, AgentError> {
        let (frame_type, payload) = message.encode();
        if payload.len() > MAX_PAYLOAD {
            return Err(AgentError::TooLarge {
                what: message.name(),
                len: payload.len(),
            });
        }
        let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.push(frame_type);
        frame.extend_from_slice(&payload);
        let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        if stdin_done.is_some_and(|c| c.load(Ordering::Acquire)) {
            return Ok(false);
        }
        let mut written = 0;
        while written < frame.len() {
            if self.broken.load(Ordering::Acquire) {
                return Err(AgentError::Broken);
            }
            let source = match stream.write(&frame[written..]) {
                Ok(0) => io::Error::from(io::ErrorKind::WriteZero),
                Ok(n) => {
                    written += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Until the command ends; after, the agent reads all the time, and one that does
                // not gets one write timeout.
                Err(e)
                    if is_timeout(&e) && stdin_done.is_some_and(|d| !d.load(Ordering::Acquire)) =>
                {
                    continue
                }
                Err(e) => e,
            };
            // A frame cut short leaves the connection out of step.
            self.broken.store(true, Ordering::Release);
            return Err(if is_timeout(&source) {
                AgentError::Timeout {
                    what: format!("(it stopped reading) while sending {}", message.name()),
                    waited: stream.write_timeout().ok().flatten().unwrap_or_default(),
                }
            } else {
                AgentError::Io {
                    what: format!("cannot send {} to the agent", message.name()),
                    source,
                }
            });
        }
        Ok(true)
    }
}

/// Sends signals to the command an [`AgentClient::exec`] runs, from another thread.
#[derive(Clone)]
pub struct Signaler {
    writer: Arc<Writer>,
}

impl Signaler {
    /// Sends signal `signal` to the running command's process group (ignored by the agent when
    /// no command runs).
    pub fn signal(&self, signal: u32) -> Result<(), AgentError> {
        self.writer.send(&Message::Signal(signal))
    }
}

/// A connection to the guest agent, after the version handshake.
pub struct AgentClient {
    reader: UnixStream,
    frames: FrameReader,
    writer: Arc<Writer>,
    io_timeout: Duration,
    exec_grace: Duration,
}

/// When a read gives up: a time per read (`idle`) and an overall deadline, either optional.
#[derive(Clone, Copy)]
struct ReadLimits {
    idle: Option<Duration>,
    deadline: Option<Instant>,
    /// What a timeout reports as the time waited.
    waited: Duration,
}

impl AgentClient {
    /// Connects to an agent listening on a Unix socket (`canto-agent --listen unix:PATH`).
    pub fn connect_unix(path: &Path, io_timeout: Duration) -> Result<Self, AgentError> {
        let stream = UnixStream::connect(path).map_err(|source| AgentError::Io {
            what: format!("cannot connect to {}", path.display()),
            source,
        })?;
        Self::handshake(stream, io_timeout)
    }

    /// Connects to the agent through a hybrid vsock socket (Firecracker's protocol, Canto's
    /// `--vsock socket=PATH`): `CONNECT <port>\n`, answered `OK <host port>\n`.
    pub fn connect_vsock(
        socket: &Path,
        port: u32,
        io_timeout: Duration,
    ) -> Result<Self, AgentError> {
        let mut stream = UnixStream::connect(socket).map_err(|source| AgentError::Io {
            what: format!("cannot connect to {}", socket.display()),
            source,
        })?;
        let io = |what: &str| {
            let what = what.to_string();
            move |source| AgentError::Io { what, source }
        };
        stream
            .set_read_timeout(Some(io_timeout))
            .and_then(|()| stream.set_write_timeout(Some(io_timeout)))
            .map_err(io("cannot set the socket's timeouts"))?;
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .map_err(io("cannot send CONNECT"))?;
        // The answer is one short line; it is read a byte at a time, so nothing of the agent's
        // stream behind it is consumed, and at most 64 bytes of it.
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < 64 {
            match stream.read(&mut byte) {
                Ok(0) => break,
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    return Err(AgentError::Timeout {
                        what: format!("CONNECT {port}"),
                        waited: io_timeout,
                    })
                }
                Err(e) => return Err(io("cannot read the answer to CONNECT")(e)),
            }
        }
        let answer = String::from_utf8_lossy(&line).into_owned();
        if !answer.starts_with("OK ") {
            return Err(AgentError::VsockConnect { port, answer });
        }
        Self::handshake(stream, io_timeout)
    }

    /// Exchanges `Hello` on a connected stream (a Unix socket or a hybrid vsock connection).
    pub fn handshake(stream: UnixStream, io_timeout: Duration) -> Result<Self, AgentError> {
        let io = |source| AgentError::Io {
            what: "cannot set up the agent connection".into(),
            source,
        };
        let write_half = stream.try_clone().map_err(io)?;
        write_half.set_write_timeout(Some(io_timeout)).map_err(io)?;
        let mut client = Self {
            reader: stream,
            frames: FrameReader::new(),
            writer: Arc::new(Writer {
                stream: Mutex::new(write_half),
                broken: AtomicBool::new(false),
            }),
            io_timeout,
            exec_grace: EXEC_TIMEOUT_GRACE,
        };
        client.send(&Message::Hello { version: VERSION })?;
        let during = "the handshake";
        match client.receive(during, client.idle_limits())? {
            Message::Hello { version } if version == VERSION => Ok(client),
            Message::Hello { version } => Err(client.fail(AgentError::Refused {
                what: "the handshake".into(),
                message: format!("the agent speaks version {version}, Canto {VERSION}"),
            })),
            Message::Error(message) => Err(client.fail(AgentError::Refused {
                what: "the handshake".into(),
                message: clip(message),
            })),
            other => Err(client.unexpected(during, &other)),
        }
    }

    /// Sets the I/O timeout (see [`DEFAULT_IO_TIMEOUT`]) from now on.
    pub fn set_io_timeout(&mut self, timeout: Duration) -> Result<(), AgentError> {
        let timeout = timeout.max(Duration::from_millis(1));
        self.io_timeout = timeout;
        let stream = self.writer.stream.lock().unwrap_or_else(|e| e.into_inner());
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|source| AgentError::Io {
                what: "cannot set the agent connection's write timeout".into(),
                source,
            })
    }

    /// Sets how long past a command's timeout the client waits for its end (10 s by default).
    pub fn set_exec_grace(&mut self, grace: Duration) {
        self.exec_grace = grace;
    }

    /// A handle that sends signals to the running command from another thread.
    pub fn signaler(&self) -> Signaler {
        Signaler {
            writer: self.writer.clone(),
        }
    }

    fn idle_limits(&self) -> ReadLimits {
        ReadLimits {
            idle: Some(self.io_timeout),
            deadline: None,
            waited: self.io_timeout,
        }
    }

    fn send(&self, message: &Message) -> Result<(), AgentError> {
        self.writer.send(message)
    }

    /// Marks the connection unusable and passes the error on.
    fn fail(&self, e: AgentError) -> AgentError {
        self.writer.broken.store(true, Ordering::Release);
        e
    }

    fn unexpected(&self, during: &str, got: &Message) -> AgentError {
        self.fail(AgentError::Unexpected {
            during: during.into(),
            got: got.name(),
        })
    }

    /// Reads the next message, within `limits`. Any failure breaks the connection.
    fn receive(&mut self, during: &str, limits: ReadLimits) -> Result<Message, AgentError> {
        if self.writer.broken.load(Ordering::Acquire) {
            return Err(AgentError::Broken);
        }
        let mut reader = TimedReader {
            stream: &self.reader,
            limits,
        };
        match self.frames.read_message(&mut reader) {
            Ok(message) => Ok(message),
            Err(e) => {
                let during = format!("during {during}");
                Err(self.fail(match e {
                    ReadError::Frame(FrameError::Closed | FrameError::Truncated) => {
                        AgentError::Closed { during }
                    }
                    ReadError::Frame(FrameError::Io(source)) if is_timeout(&source) => {
                        AgentError::Timeout {
                            what: during,
                            waited: limits.waited,
                        }
                    }
                    ReadError::Frame(FrameError::Io(source)) => AgentError::Io {
                        what: format!("cannot read from the agent {during}"),
                        source,
                    },
                    other => AgentError::Malformed {
                        during,
                        detail: other.to_string(),
                    },
                }))
            }
        }
    }

    /// Runs a command: its stdout and stderr go to `stdout` and `stderr` as they arrive, `stdin`
    /// (when given) is sent from a thread as the agent takes it. Returns how the command ended.
    pub fn exec(
        &mut self,
        request: &ExecRequest,
        stdin: Option<Box<dyn Read + Send>>,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<ExecStatus, AgentError> {
        if request.argv.is_empty() {
            return Err(AgentError::Refused {
                what: "the command".into(),
                message: "no program given".into(),
            });
        }
        let what = format!("running {}", request.argv[0].to_string_lossy());
        self.send(&request.to_message(stdin.is_some()))?;
        let start_limits = self.idle_limits();
        match self.receive(&what, start_limits)? {
            Message::Started { .. } => {}
            Message::Error(message) => {
                return Err(AgentError::Refused {
                    what,
                    message: clip(message),
                })
            }
            other => return Err(self.unexpected(&what, &other)),
        }
        let done = Arc::new(AtomicBool::new(false));
        if let Some(source) = stdin {
            let writer = self.writer.clone();
            let done = done.clone();
            let spawned = std::thread::Builder::new()
                .name("agent-stdin".into())
                .spawn(move || send_stdin(source, &writer, &done));
            if let Err(source) = spawned {
                // Without the thread the command gets an empty stdin rather than none at all.
                log::warn!("cannot start the thread that sends the command's stdin: {source}");
                self.send(&Message::StdinEof)?;
            }
        }
        let result = self.relay_output(request, &what, stdout, stderr);
        // No stdin frame starts after this (the stdin thread checks under the writer's lock).
        done.store(true, Ordering::Release);
        if result.is_ok() {
            // One being written finishes (the agent reads on and drops stdin that comes after
            // the command's end) before the next request goes out. On an error the connection is
            // broken already and nothing more is sent.
            drop(self.writer.stream.lock().unwrap_or_else(|e| e.into_inner()));
        }
        result
    }

    fn relay_output(
        &mut self,
        request: &ExecRequest,
        what: &str,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<ExecStatus, AgentError> {
        let wait = request.timeout.map(|t| t.saturating_add(self.exec_grace));
        let limits = ReadLimits {
            // A command may be silent for as long as it likes; only its timeout bounds it.
            idle: None,
            // A timeout too far to represent is no deadline.
            deadline: wait.and_then(|w| Instant::now().checked_add(w)),
            waited: wait.unwrap_or_default(),
        };
        let mut output: u64 = 0;
        loop {
            let (data, out): (Vec<u8>, &mut dyn Write) = match self.receive(what, limits)? {
                Message::Stdout(data) => (data, &mut *stdout),
                Message::Stderr(data) => (data, &mut *stderr),
                Message::Exit { code } => return Ok(ExecStatus::Exited(code)),
                Message::Signaled { signal, timed_out } => {
                    return Ok(ExecStatus::Signaled { signal, timed_out })
                }
                // A refused Stdin or Signal frame; the command goes on.
                Message::Error(message) => {
                    log::warn!("the agent, {what}: {}", clip(message));
                    continue;
                }
                other => return Err(self.unexpected(what, &other)),
            };
            output = output.saturating_add(data.len() as u64);
            if let Some(limit) = request.max_output {
                if output > limit {
                    return Err(self.fail(AgentError::OutputLimit { limit }));
                }
            }
            if let Err(source) = out.write_all(&data).and_then(|()| out.flush()) {
                return Err(self.fail(AgentError::Io {
                    what: format!("cannot forward the output of {what}"),
                    source,
                }));
            }
        }
    }

    /// Writes `source`'s content to `guest_path` in the guest with permission bits `mode`.
    /// Returns the number of bytes sent.
    pub fn put_file(
        &mut self,
        source: &mut dyn Read,
        guest_path: &Path,
        mode: u32,
    ) -> Result<u64, AgentError> {
        let what = format!("writing {} in the guest", guest_path.display());
        self.send(&Message::PutFile {
            path: guest_path.as_os_str().as_bytes().to_vec(),
            mode,
        })?;
        let mut sent = 0u64;
        let mut chunk = vec![0u8; DATA_CHUNK];
        loop {
            let n = match source.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    // The agent is in the middle of the transfer: the connection is out of step.
                    return Err(self.fail(AgentError::Io {
                        what: format!("cannot read the file for {what}"),
                        source,
                    }));
                }
            };
            self.send(&Message::FileData(chunk[..n].to_vec()))?;
            sent += n as u64;
        }
        self.send(&Message::FileEnd)?;
        let limits = self.idle_limits();
        match self.receive(&what, limits)? {
            Message::Ok => Ok(sent),
            Message::Error(message) => Err(AgentError::Refused {
                what,
                message: clip(message),
            }),
            other => Err(self.unexpected(&what, &other)),
        }
    }

    /// Writes the content of `guest_path` in the guest to `dest`, at most `max_bytes` of it
    /// (more is [`AgentError::FileTooLarge`]). Returns the number of bytes received.
    pub fn get_file(
        &mut self,
        guest_path: &Path,
        dest: &mut dyn Write,
        max_bytes: u64,
    ) -> Result<u64, AgentError> {
        let what = format!("reading {} in the guest", guest_path.display());
        self.send(&Message::GetFile {
            path: guest_path.as_os_str().as_bytes().to_vec(),
        })?;
        let limits = self.idle_limits();
        let mut received = 0u64;
        loop {
            match self.receive(&what, limits)? {
                Message::FileData(data) => {
                    received = received.saturating_add(data.len() as u64);
                    if received > max_bytes {
                        return Err(self.fail(AgentError::FileTooLarge { limit: max_bytes }));
                    }
                    if let Err(source) = dest.write_all(&data) {
                        return Err(self.fail(AgentError::Io {
                            what: format!("cannot store the file from {what}"),
                            source,
                        }));
                    }
                }
                Message::FileEnd => return Ok(received),
                Message::Error(message) => {
                    return Err(AgentError::Refused {
                        what,
                        message: clip(message),
                    })
                }
                other => return Err(self.unexpected(&what, &other)),
            }
        }
    }
}

/// The stdin thread: sends `source` as `Stdin` frames, then `StdinEof`, until the command ends.
fn send_stdin(mut source: Box<dyn Read + Send>, writer: &Writer, done: &AtomicBool) {
    let mut chunk = vec![0u8; DATA_CHUNK];
    loop {
        let message = match source.read(&mut chunk) {
            Ok(0) => Message::StdinEof,
            Ok(n) => Message::Stdin(chunk[..n].to_vec()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::warn!("cannot read the command's stdin: {e}; closing it");
                Message::StdinEof
            }
        };
        let eof = message == Message::StdinEof;
        // `done` is checked under the writer's lock, where exec sets it.
        match writer.send_frame(&message, Some(done)) {
            Ok(true) if !eof => {}
            _ => return,
        }
    }
}

/// Reads from the stream with a timeout per read: `idle`, or what is left of `deadline`.
struct TimedReader<'a> {
    stream: &'a UnixStream,
    limits: ReadLimits,
}

impl Read for TimedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut timeout = self.limits.idle;
        if let Some(deadline) = self.limits.deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        // set_read_timeout refuses zero; the shortest real timeout stands for it.
        self.stream
            .set_read_timeout(timeout.map(|t| t.max(Duration::from_millis(1))))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Agent text cut to [`MAX_ERROR_TEXT`] bytes, without control characters (it goes to logs and
/// terminals).
fn clip(message: String) -> String {
    let mut text: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

impl fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentClient")
            .field("io_timeout", &self.io_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canto_agent_protocol::{frame_type, write_frame, write_message};
    use std::thread::JoinHandle;

    /// For the tests of the timeouts themselves.
    const SHORT: Duration = Duration::from_millis(300);
    /// For everything else: a loaded machine must not make a test fail.
    const PATIENT: Duration = Duration::from_secs(30);

    /// A fake agent on the other end of a socket pair: `script` runs with its stream after it
    /// has read the client's Hello.
    fn fake_agent<F>(script: F) -> (UnixStream, JoinHandle<()>)
    where
        F: FnOnce(&mut UnixStream, &mut FrameReader) + Send + 'static,
    {
        let (client, mut agent) = UnixStream::pair().unwrap();
        let handle = std::thread::spawn(move || {
            let mut frames = FrameReader::new();
            if let Ok(Message::Hello { .. }) = frames.read_message(&mut agent) {
                script(&mut agent, &mut frames);
            }
        });
        (client, handle)
    }

    /// A fake agent that completes the handshake, then runs `script`.
    fn greeting_agent<F>(script: F) -> (AgentClient, JoinHandle<()>)
    where
        F: FnOnce(&mut UnixStream, &mut FrameReader) + Send + 'static,
    {
        let (stream, handle) = fake_agent(move |agent, frames| {
            write_message(agent, &Message::Hello { version: VERSION }).unwrap();
            script(agent, frames);
        });
        (AgentClient::handshake(stream, PATIENT).unwrap(), handle)
    }

    /// Reads the Exec request, answers Started, then runs `script`.
    fn exec_agent<F>(script: F) -> (AgentClient, JoinHandle<()>)
    where
        F: FnOnce(&mut UnixStream) + Send + 'static,
    {
        greeting_agent(move |agent, frames| {
            assert!(matches!(frames.read_message(agent), Ok(Message::Exec(_))));
            write_message(agent, &Message::Started { pid: 1 }).unwrap();
            script(agent);
        })
    }

    fn run(client: &mut AgentClient, request: &ExecRequest) -> Result<ExecStatus, AgentError> {
        client.exec(request, None, &mut io::sink(), &mut io::sink())
    }

    fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed | 1;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    #[test]
    fn a_well_behaved_agent_s_exchange_works() {
        let (mut client, agent) = exec_agent(|agent| {
            write_message(agent, &Message::Stdout(b"out\n".to_vec())).unwrap();
            write_message(agent, &Message::Stderr(b"err\n".to_vec())).unwrap();
            write_message(agent, &Message::Exit { code: 3 }).unwrap();
        });
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let status = client
            .exec(&ExecRequest::new(["sh"]), None, &mut out, &mut err)
            .unwrap();
        assert_eq!((status, status.code()), (ExecStatus::Exited(3), 3));
        assert_eq!((&out[..], &err[..]), (&b"out\n"[..], &b"err\n"[..]));
        agent.join().unwrap();
    }

    #[test]
    fn a_signal_is_128_plus_n_and_an_absurd_one_stays_in_range() {
        let s = ExecStatus::Signaled {
            signal: 9,
            timed_out: true,
        };
        assert_eq!(s.code(), 137);
        let s = ExecStatus::Signaled {
            signal: u32::MAX,
            timed_out: false,
        };
        assert_eq!(s.code(), 255);
    }

    #[test]
    fn a_4_gib_length_prefix_is_an_error_without_allocating_it() {
        let (mut client, agent) = exec_agent(|agent| {
            let mut header = u32::MAX.to_le_bytes().to_vec();
            header.push(frame_type::STDOUT);
            let _ = agent.write_all(&header);
            // Keep the connection open: the client must not wait for the 4 GiB.
            std::thread::sleep(Duration::from_millis(500));
        });
        let e = run(&mut client, &ExecRequest::new(["x"])).unwrap_err();
        assert!(matches!(e, AgentError::Malformed { .. }), "{e}");
        assert!(e.to_string().contains("over the 1048576-byte limit"), "{e}");
        // The connection is out of step now: further requests are refused.
        assert!(matches!(
            run(&mut client, &ExecRequest::new(["x"])),
            Err(AgentError::Broken)
        ));
        agent.join().unwrap();
    }

    #[test]
    fn endless_stdout_stops_at_the_output_limit() {
        let (mut client, agent) = exec_agent(|agent| {
            let chunk = Message::Stdout(vec![b'y'; DATA_CHUNK]);
            while write_message(agent, &chunk).is_ok() {}
        });
        let mut request = ExecRequest::new(["yes"]);
        request.max_output = Some(10 << 20);
        let mut seen = CountingSink(0);
        let e = client
            .exec(&request, None, &mut seen, &mut io::sink())
            .unwrap_err();
        assert!(
            matches!(e, AgentError::OutputLimit { limit } if limit == 10 << 20),
            "{e}"
        );
        assert!(seen.0 <= 10 << 20);
        drop(client);
        agent.join().unwrap();
    }

    #[test]
    fn endless_stdout_stops_at_the_timeout() {
        let (mut client, agent) = exec_agent(|agent| {
            let chunk = Message::Stdout(vec![b'y'; 1024]);
            while write_message(agent, &chunk).is_ok() {}
        });
        client.set_exec_grace(Duration::from_millis(200));
        let mut request = ExecRequest::new(["yes"]);
        request.timeout = Some(Duration::from_millis(200));
        let start = Instant::now();
        let e = run(&mut client, &request).unwrap_err();
        assert!(matches!(e, AgentError::Timeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(30));
        drop(client);
        agent.join().unwrap();
    }

    #[test]
    fn a_silent_agent_times_out_the_handshake() {
        let (stream, agent) = fake_agent(|_, _| std::thread::sleep(Duration::from_secs(2)));
        let start = Instant::now();
        let e = AgentClient::handshake(stream, SHORT).unwrap_err();
        assert!(
            matches!(e, AgentError::Timeout { waited, .. } if waited == SHORT),
            "{e}"
        );
        assert!(start.elapsed() < Duration::from_secs(2));
        agent.join().unwrap();
    }

    #[test]
    fn a_trickling_command_is_bounded_by_its_timeout() {
        // One byte of a frame every 100 ms: each read succeeds, the deadline still holds.
        let (mut client, agent) = exec_agent(|agent| {
            let mut frame = Vec::new();
            write_message(&mut frame, &Message::Stdout(vec![b'z'; 1000])).unwrap();
            for b in frame {
                if agent.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        client.set_exec_grace(Duration::ZERO);
        let mut request = ExecRequest::new(["slow"]);
        request.timeout = Some(Duration::from_millis(500));
        let e = run(&mut client, &request).unwrap_err();
        assert!(matches!(e, AgentError::Timeout { .. }), "{e}");
        drop(client);
        agent.join().unwrap();
    }

    #[test]
    fn random_bytes_from_the_agent_are_an_error_not_a_panic() {
        for seed in 0..200u64 {
            let mut next = xorshift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let len = (next() % 4096) as usize;
            let garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let phase = seed % 3;
            let (stream, agent) = fake_agent(move |agent, frames| {
                if phase > 0 {
                    write_message(agent, &Message::Hello { version: VERSION }).unwrap();
                    let _ = frames.read_message(agent);
                }
                if phase > 1 {
                    write_message(agent, &Message::Started { pid: 1 }).unwrap();
                }
                let _ = agent.write_all(&garbage);
            });
            // Whatever happens, it is a Result; a handshake that passes goes on to an exec.
            if let Ok(mut client) = AgentClient::handshake(stream, PATIENT) {
                let mut request = ExecRequest::new(["x"]);
                request.max_output = Some(1 << 20);
                let _ = run(&mut client, &request);
            }
            agent.join().unwrap();
        }
    }

    #[test]
    fn random_well_framed_messages_are_an_error_or_a_status_not_a_panic() {
        for seed in 0..200u64 {
            let mut next = xorshift(seed + 12345);
            let frames: Vec<(u8, Vec<u8>)> = (0..20)
                .map(|_| {
                    let ty = match next() % 4 {
                        0 => next() as u8,
                        _ => 0x80 + (next() % 8) as u8,
                    };
                    let len = (next() % 16) as usize;
                    (ty, (0..len).map(|_| next() as u8).collect())
                })
                .collect();
            let (mut client, agent) = exec_agent(move |agent| {
                for (ty, payload) in frames {
                    if write_frame(agent, ty, &payload).is_err() {
                        return;
                    }
                }
            });
            let _ = run(&mut client, &ExecRequest::new(["x"]));
            drop(client);
            agent.join().unwrap();
        }
    }

    #[test]
    fn an_unexpected_reply_breaks_the_connection() {
        let (mut client, agent) = exec_agent(|agent| {
            write_message(agent, &Message::FileEnd).unwrap();
        });
        let e = run(&mut client, &ExecRequest::new(["x"])).unwrap_err();
        assert!(
            matches!(e, AgentError::Unexpected { got: "FileEnd", .. }),
            "{e}"
        );
        agent.join().unwrap();
        let mut sink = Vec::new();
        assert!(matches!(
            client.get_file(Path::new("/x"), &mut sink, 10),
            Err(AgentError::Broken)
        ));
    }

    #[test]
    fn errors_during_a_command_are_notices_and_long_error_text_is_clipped() {
        let (mut client, agent) = greeting_agent(|agent, frames| {
            let _ = frames.read_message(agent);
            let text = format!("\x1b[31m{}", "e".repeat(100_000));
            write_message(agent, &Message::Error(text)).unwrap();
        });
        let e = run(&mut client, &ExecRequest::new(["x"])).unwrap_err();
        let AgentError::Refused { message, .. } = &e else {
            panic!("{e}");
        };
        assert!(message.len() <= MAX_ERROR_TEXT + 3 && !message.contains('\x1b'));
        agent.join().unwrap();

        let (mut client, agent) = exec_agent(|agent| {
            write_message(agent, &Message::Error("bad signal".into())).unwrap();
            write_message(agent, &Message::Exit { code: 0 }).unwrap();
        });
        assert_eq!(
            run(&mut client, &ExecRequest::new(["x"])).unwrap(),
            ExecStatus::Exited(0)
        );
        agent.join().unwrap();
    }

    #[test]
    fn get_file_stops_at_its_limit() {
        let (mut client, agent) = greeting_agent(|agent, frames| {
            let _ = frames.read_message(agent);
            let chunk = Message::FileData(vec![0; DATA_CHUNK]);
            while write_message(agent, &chunk).is_ok() {}
        });
        let mut dest = CountingSink(0);
        let e = client
            .get_file(Path::new("/dev/zero"), &mut dest, 1 << 20)
            .unwrap_err();
        assert!(
            matches!(e, AgentError::FileTooLarge { limit } if limit == 1 << 20),
            "{e}"
        );
        assert!(dest.0 <= 1 << 20);
        drop(client);
        agent.join().unwrap();
    }

    #[test]
    fn the_agent_closing_mid_frame_is_closed() {
        let (mut client, agent) = exec_agent(|agent| {
            let mut frame = Vec::new();
            write_message(&mut frame, &Message::Stdout(b"partial".to_vec())).unwrap();
            agent.write_all(&frame[..frame.len() - 2]).unwrap();
        });
        let e = run(&mut client, &ExecRequest::new(["x"])).unwrap_err();
        assert!(matches!(e, AgentError::Closed { .. }), "{e}");
        agent.join().unwrap();
    }

    #[test]
    fn a_version_mismatch_is_refused() {
        let (stream, agent) = fake_agent(|agent, _| {
            write_message(agent, &Message::Hello { version: 99 }).unwrap();
        });
        let e = AgentClient::handshake(stream, PATIENT).unwrap_err();
        assert!(e.to_string().contains("version 99"), "{e}");
        agent.join().unwrap();
    }

    #[test]
    fn connect_vsock_speaks_the_hybrid_handshake() {
        let dir = std::env::temp_dir().join(format!("canto-agent-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vsock.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for answer in ["OK 1073741824\n", "NO\n"] {
                let (mut conn, _) = listener.accept().unwrap();
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while conn.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                    line.push(byte[0]);
                }
                assert_eq!(line, b"CONNECT 52");
                conn.write_all(answer.as_bytes()).unwrap();
                let mut frames = FrameReader::new();
                if let Ok(Message::Hello { .. }) = frames.read_message(&mut conn) {
                    write_message(&mut conn, &Message::Hello { version: VERSION }).unwrap();
                }
            }
        });
        AgentClient::connect_vsock(&path, AGENT_VSOCK_PORT, PATIENT).unwrap();
        let e = AgentClient::connect_vsock(&path, AGENT_VSOCK_PORT, PATIENT).unwrap_err();
        assert!(
            matches!(e, AgentError::VsockConnect { ref answer, .. } if answer == "NO"),
            "{e}"
        );
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn requests_over_the_frame_limit_are_refused_before_sending() {
        let (mut client, agent) = greeting_agent(|agent, frames| {
            // The next frame is the Exec that fits.
            assert!(matches!(frames.read_message(agent), Ok(Message::Exec(_))));
            write_message(agent, &Message::Started { pid: 1 }).unwrap();
            write_message(agent, &Message::Exit { code: 0 }).unwrap();
        });
        let huge = ExecRequest::new(["echo".to_string(), "a".repeat(MAX_PAYLOAD)]);
        let e = run(&mut client, &huge).unwrap_err();
        assert!(
            matches!(e, AgentError::TooLarge { what: "Exec", .. }),
            "{e}"
        );
        assert_eq!(
            run(&mut client, &ExecRequest::new(["echo"])).unwrap(),
            ExecStatus::Exited(0)
        );
        agent.join().unwrap();
    }

    struct CountingSink(u64);

    impl Write for CountingSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
