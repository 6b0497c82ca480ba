//! The protocol between Canto (the host) and `canto-agent` (in the guest), version
//! [`VERSION`]; `docs/agent-protocol.md` describes it for other implementations.
//!
//! A connection carries frames: `[u32 length, little-endian][u8 type][payload of length
//! bytes]`. A payload is at most [`MAX_PAYLOAD`] bytes, and its length is checked before
//! anything is allocated, so a peer cannot make the reader allocate more than that. Payload
//! fields are little-endian integers and byte strings (`u32` length, then the bytes); a list is a
//! `u32` count, then its items. Decoding never trusts a count or length beyond the bytes that are
//! actually there.

use std::fmt;
use std::io::{self, Read, Write};

/// The protocol version this crate speaks (the `Hello` exchange).
pub const VERSION: u32 = 1;

/// The largest payload a frame may carry.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// Bytes before the payload: the length and the type.
pub const HEADER_LEN: usize = 5;

/// The data chunk size senders use for stdin, output and file data (well below
/// [`MAX_PAYLOAD`], so frames stay small and interleave).
pub const DATA_CHUNK: usize = 64 * 1024;

/// Frame types. Requests (host to agent) are below 0x80, replies (agent to host) at or above;
/// `Hello`, `FileData` and `FileEnd` go both ways.
pub mod frame_type {
    pub const HELLO: u8 = 0x01;
    pub const EXEC: u8 = 0x02;
    pub const STDIN: u8 = 0x03;
    pub const STDIN_EOF: u8 = 0x04;
    pub const SIGNAL: u8 = 0x05;
    pub const PUT_FILE: u8 = 0x06;
    pub const GET_FILE: u8 = 0x07;
    pub const FILE_DATA: u8 = 0x08;
    pub const FILE_END: u8 = 0x09;
    pub const STARTED: u8 = 0x81;
    pub const STDOUT: u8 = 0x82;
    pub const STDERR: u8 = 0x83;
    pub const EXIT: u8 = 0x84;
    pub const SIGNALED: u8 = 0x85;
    pub const OK: u8 = 0x86;
    pub const ERROR: u8 = 0x87;
}

/// A command to run (the `Exec` request).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exec {
    /// The program (looked up in `PATH` when it has no `/`) and its arguments; not empty.
    pub argv: Vec<Vec<u8>>,
    /// Variables set on top of the agent's environment.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// The working directory; the agent's own when `None`.
    pub cwd: Option<Vec<u8>>,
    /// Whether `Stdin` frames follow; without, the command's stdin is `/dev/null`.
    pub stdin: bool,
    /// Milliseconds after which the agent kills the command (SIGKILL to its process group);
    /// `None`: no limit.
    pub timeout_ms: Option<u64>,
}

/// Every message of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The first frame each side sends: the version it speaks.
    Hello { version: u32 },
    /// Run a command; the agent answers `Started` (or `Error`), output, then `Exit` or
    /// `Signaled`.
    Exec(Exec),
    /// Bytes for the running command's stdin.
    Stdin(Vec<u8>),
    /// The running command's stdin is closed.
    StdinEof,
    /// Send signal `n` to the running command's process group.
    Signal(u32),
    /// Write a file: `FileData` chunks and `FileEnd` follow; the agent answers `Ok` or `Error`
    /// after `FileEnd`.
    PutFile { path: Vec<u8>, mode: u32 },
    /// Read a file: the agent answers `FileData` chunks and `FileEnd`, or `Error`.
    GetFile { path: Vec<u8> },
    /// A chunk of a file's content.
    FileData(Vec<u8>),
    /// The end of a file's content.
    FileEnd,
    /// The command runs, as this process id.
    Started { pid: u32 },
    /// A chunk of the command's stdout.
    Stdout(Vec<u8>),
    /// A chunk of the command's stderr.
    Stderr(Vec<u8>),
    /// The command exited with this status.
    Exit { code: i32 },
    /// A signal ended the command; `timed_out` when the agent sent it for the timeout.
    Signaled { signal: u32, timed_out: bool },
    /// The request succeeded.
    Ok,
    /// The request (or the frame) was refused; the connection stays usable.
    Error(String),
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The stream ended cleanly between frames.
    Closed,
    /// The stream ended inside a frame.
    Truncated,
    /// The header announces more than [`MAX_PAYLOAD`]; the payload was not read (see
    /// [`skip_payload`]).
    TooLarge { frame_type: u8, len: u32 },
    /// Reading failed (including a read timeout).
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => write!(f, "the connection was closed"),
            Self::Truncated => write!(f, "the connection was closed in the middle of a frame"),
            Self::TooLarge { frame_type, len } => write!(
                f,
                "a frame (type {frame_type:#04x}) of {len} bytes, over the {MAX_PAYLOAD}-byte limit"
            ),
            Self::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Why a frame's payload is not a valid message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// No message has this type.
    UnknownType(u8),
    /// The payload ends before the field.
    Truncated { frame_type: u8, field: &'static str },
    /// Bytes are left after the message's last field.
    TrailingBytes { frame_type: u8, extra: usize },
    /// A field holds a value it may not.
    BadValue { frame_type: u8, field: &'static str },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownType(t) => write!(f, "unknown frame type {t:#04x}"),
            Self::Truncated { frame_type, field } => {
                write!(
                    f,
                    "frame type {frame_type:#04x}: payload ends before {field}"
                )
            }
            Self::TrailingBytes { frame_type, extra } => write!(
                f,
                "frame type {frame_type:#04x}: {extra} bytes after the last field"
            ),
            Self::BadValue { frame_type, field } => {
                write!(f, "frame type {frame_type:#04x}: bad value for {field}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a message could not be read.
#[derive(Debug)]
pub enum ReadError {
    Frame(FrameError),
    Decode(DecodeError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Frame(e) => e.fmt(f),
            Self::Decode(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReadError {}

impl From<FrameError> for ReadError {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}

impl From<DecodeError> for ReadError {
    fn from(e: DecodeError) -> Self {
        Self::Decode(e)
    }
}

/// Reads frames into one reused buffer of at most [`MAX_PAYLOAD`] bytes.
#[derive(Default)]
pub struct FrameReader {
    payload: Vec<u8>,
}

impl FrameReader {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads one frame: its type and payload. The length is checked against [`MAX_PAYLOAD`]
    /// before the payload is read or room is made for it.
    pub fn read_frame<R: Read + ?Sized>(&mut self, r: &mut R) -> Result<(u8, &[u8]), FrameError> {
        let mut header = [0u8; HEADER_LEN];
        match read_full(r, &mut header).map_err(FrameError::Io)? {
            0 => return Err(FrameError::Closed),
            n if n < HEADER_LEN => return Err(FrameError::Truncated),
            _ => {}
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let frame_type = header[4];
        if len as usize > MAX_PAYLOAD {
            return Err(FrameError::TooLarge { frame_type, len });
        }
        self.payload.clear();
        self.payload.resize(len as usize, 0);
        if read_full(r, &mut self.payload).map_err(FrameError::Io)? < len as usize {
            return Err(FrameError::Truncated);
        }
        Ok((frame_type, &self.payload))
    }

    /// Reads and decodes one message.
    pub fn read_message<R: Read + ?Sized>(&mut self, r: &mut R) -> Result<Message, ReadError> {
        let (frame_type, payload) = self.read_frame(r)?;
        Ok(Message::decode(frame_type, payload)?)
    }
}

/// Reads and discards `len` payload bytes (after [`FrameError::TooLarge`]), in small pieces, so
/// the stream is at the next frame again.
pub fn skip_payload<R: Read + ?Sized>(r: &mut R, len: u64) -> Result<(), FrameError> {
    let copied = io::copy(&mut r.take(len), &mut io::sink()).map_err(FrameError::Io)?;
    if copied < len {
        return Err(FrameError::Truncated);
    }
    Ok(())
}

/// Fills `buf` unless the stream ends first; returns how many bytes it read.
fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Writes one frame with a single `write_all` of header and payload.
///
/// # Panics
/// When `payload` is over [`MAX_PAYLOAD`] (a caller's bug: senders chunk their data).
pub fn write_frame<W: Write + ?Sized>(w: &mut W, frame_type: u8, payload: &[u8]) -> io::Result<()> {
    assert!(
        payload.len() <= MAX_PAYLOAD,
        "frame payload over MAX_PAYLOAD"
    );
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    frame.push(frame_type);
    frame.extend_from_slice(payload);
    w.write_all(&frame)
}

/// Encodes `message` and writes it as one frame.
pub fn write_message<W: Write + ?Sized>(w: &mut W, message: &Message) -> io::Result<()> {
    let (frame_type, payload) = message.encode();
    if payload.len() > MAX_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a {} message of {} bytes is over the frame limit",
                message.name(),
                payload.len()
            ),
        ));
    }
    write_frame(w, frame_type, &payload)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Longer strings make the payload too large, which write_message refuses; the saturated
    // length never goes out.
    put_u32(out, u32::try_from(b.len()).unwrap_or(u32::MAX));
    out.extend_from_slice(b);
}

/// Reads fields off a payload, never past its end.
struct Fields<'a> {
    frame_type: u8,
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated {
                frame_type: self.frame_type,
                field,
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadValue {
                frame_type: self.frame_type,
                field,
            }),
        }
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn bytes(&mut self, field: &'static str) -> Result<Vec<u8>, DecodeError> {
        let len = self.u32(field)? as usize;
        Ok(self.take(len, field)?.to_vec())
    }

    /// A list's count. Items are pushed one by one as they decode, so a large count costs
    /// nothing beyond the bytes really there.
    fn count(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.u32(field)
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                frame_type: self.frame_type,
                extra: self.rest.len(),
            })
        }
    }
}

impl Message {
    /// The message's name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello { .. } => "Hello",
            Self::Exec(_) => "Exec",
            Self::Stdin(_) => "Stdin",
            Self::StdinEof => "StdinEof",
            Self::Signal(_) => "Signal",
            Self::PutFile { .. } => "PutFile",
            Self::GetFile { .. } => "GetFile",
            Self::FileData(_) => "FileData",
            Self::FileEnd => "FileEnd",
            Self::Started { .. } => "Started",
            Self::Stdout(_) => "Stdout",
            Self::Stderr(_) => "Stderr",
            Self::Exit { .. } => "Exit",
            Self::Signaled { .. } => "Signaled",
            Self::Ok => "Ok",
            Self::Error(_) => "Error",
        }
    }

    /// The frame type and payload of this message.
    pub fn encode(&self) -> (u8, Vec<u8>) {
        use self::frame_type as t;
        let mut p = Vec::new();
        let ty = match self {
            Self::Hello { version } => {
                put_u32(&mut p, *version);
                t::HELLO
            }
            Self::Exec(exec) => {
                put_u32(&mut p, exec.argv.len() as u32);
                for arg in &exec.argv {
                    put_bytes(&mut p, arg);
                }
                put_u32(&mut p, exec.env.len() as u32);
                for (k, v) in &exec.env {
                    put_bytes(&mut p, k);
                    put_bytes(&mut p, v);
                }
                match &exec.cwd {
                    Some(cwd) => {
                        p.push(1);
                        put_bytes(&mut p, cwd);
                    }
                    None => p.push(0),
                }
                p.push(u8::from(exec.stdin));
                p.extend_from_slice(&exec.timeout_ms.unwrap_or(0).to_le_bytes());
                t::EXEC
            }
            Self::Stdin(data) => {
                p.extend_from_slice(data);
                t::STDIN
            }
            Self::StdinEof => t::STDIN_EOF,
            Self::Signal(n) => {
                put_u32(&mut p, *n);
                t::SIGNAL
            }
            Self::PutFile { path, mode } => {
                put_bytes(&mut p, path);
                put_u32(&mut p, *mode);
                t::PUT_FILE
            }
            Self::GetFile { path } => {
                put_bytes(&mut p, path);
                t::GET_FILE
            }
            Self::FileData(data) => {
                p.extend_from_slice(data);
                t::FILE_DATA
            }
            Self::FileEnd => t::FILE_END,
            Self::Started { pid } => {
                put_u32(&mut p, *pid);
                t::STARTED
            }
            Self::Stdout(data) => {
                p.extend_from_slice(data);
                t::STDOUT
            }
            Self::Stderr(data) => {
                p.extend_from_slice(data);
                t::STDERR
            }
            Self::Exit { code } => {
                p.extend_from_slice(&code.to_le_bytes());
                t::EXIT
            }
            Self::Signaled { signal, timed_out } => {
                put_u32(&mut p, *signal);
                p.push(u8::from(*timed_out));
                t::SIGNALED
            }
            Self::Ok => t::OK,
            Self::Error(message) => {
                p.extend_from_slice(message.as_bytes());
                t::ERROR
            }
        };
        (ty, p)
    }

    /// Decodes a frame's payload. Every length and count is checked against the bytes present;
    /// nothing is allocated beyond the payload's size.
    pub fn decode(frame_type: u8, payload: &[u8]) -> Result<Self, DecodeError> {
        use self::frame_type as t;
        let mut f = Fields {
            frame_type,
            rest: payload,
        };
        let message = match frame_type {
            t::HELLO => Self::Hello {
                version: f.u32("version")?,
            },
            t::EXEC => {
                let mut exec = Exec::default();
                for _ in 0..f.count("argv")? {
                    exec.argv.push(f.bytes("argv")?);
                }
                for _ in 0..f.count("env")? {
                    let key = f.bytes("env name")?;
                    exec.env.push((key, f.bytes("env value")?));
                }
                if f.bool("cwd")? {
                    exec.cwd = Some(f.bytes("cwd")?);
                }
                exec.stdin = f.bool("stdin")?;
                exec.timeout_ms = Some(f.u64("timeout")?).filter(|&ms| ms != 0);
                Self::Exec(exec)
            }
            t::STDIN => Self::Stdin(f.take(payload.len(), "data")?.to_vec()),
            t::STDIN_EOF => Self::StdinEof,
            t::SIGNAL => Self::Signal(f.u32("signal")?),
            t::PUT_FILE => Self::PutFile {
                path: f.bytes("path")?,
                mode: f.u32("mode")?,
            },
            t::GET_FILE => Self::GetFile {
                path: f.bytes("path")?,
            },
            t::FILE_DATA => Self::FileData(f.take(payload.len(), "data")?.to_vec()),
            t::FILE_END => Self::FileEnd,
            t::STARTED => Self::Started { pid: f.u32("pid")? },
            t::STDOUT => Self::Stdout(f.take(payload.len(), "data")?.to_vec()),
            t::STDERR => Self::Stderr(f.take(payload.len(), "data")?.to_vec()),
            t::EXIT => Self::Exit {
                code: f.u32("code")? as i32,
            },
            t::SIGNALED => Self::Signaled {
                signal: f.u32("signal")?,
                timed_out: f.bool("timed_out")?,
            },
            t::OK => Self::Ok,
            t::ERROR => {
                Self::Error(String::from_utf8_lossy(f.take(payload.len(), "message")?).into_owned())
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        f.finish()?;
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn all_messages() -> Vec<Message> {
        vec![
            Message::Hello { version: VERSION },
            Message::Exec(Exec {
                argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"echo \xff".to_vec()],
                env: vec![(b"A".to_vec(), b"1".to_vec()), (b"B".to_vec(), Vec::new())],
                cwd: Some(b"/tmp".to_vec()),
                stdin: true,
                timeout_ms: Some(1500),
            }),
            Message::Exec(Exec {
                argv: vec![b"true".to_vec()],
                ..Exec::default()
            }),
            Message::Stdin(b"input".to_vec()),
            Message::Stdin(Vec::new()),
            Message::StdinEof,
            Message::Signal(15),
            Message::PutFile {
                path: b"/x/y".to_vec(),
                mode: 0o644,
            },
            Message::GetFile {
                path: b"/etc/hostname".to_vec(),
            },
            Message::FileData(vec![7; DATA_CHUNK]),
            Message::FileEnd,
            Message::Started { pid: 42 },
            Message::Stdout(b"out\n".to_vec()),
            Message::Stderr(b"err\n".to_vec()),
            Message::Exit { code: -1 },
            Message::Exit { code: 3 },
            Message::Signaled {
                signal: 9,
                timed_out: true,
            },
            Message::Ok,
            Message::Error("no such file".into()),
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_stream() {
        let mut stream = Vec::new();
        for m in all_messages() {
            write_message(&mut stream, &m).unwrap();
        }
        let mut cursor = Cursor::new(stream);
        let mut reader = FrameReader::new();
        for m in all_messages() {
            assert_eq!(reader.read_message(&mut cursor).unwrap(), m);
        }
        assert!(matches!(
            reader.read_message(&mut cursor),
            Err(ReadError::Frame(FrameError::Closed))
        ));
    }

    #[test]
    fn every_truncated_payload_is_an_error_not_a_panic() {
        for m in all_messages() {
            let (ty, payload) = m.encode();
            for cut in 0..payload.len().min(64) {
                if let Ok(decoded) = Message::decode(ty, &payload[..cut]) {
                    // Only the data messages (no fields but their bytes) decode when shorter.
                    assert!(
                        matches!(
                            decoded,
                            Message::Stdin(_)
                                | Message::FileData(_)
                                | Message::Stdout(_)
                                | Message::Stderr(_)
                                | Message::Error(_)
                        ),
                        "{} decoded from {cut} of {} bytes",
                        m.name(),
                        payload.len()
                    );
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let (ty, mut payload) = Message::Signal(2).encode();
        payload.push(0);
        assert_eq!(
            Message::decode(ty, &payload),
            Err(DecodeError::TrailingBytes {
                frame_type: ty,
                extra: 1
            })
        );
        assert!(Message::decode(frame_type::OK, &[1]).is_err());
    }

    #[test]
    fn unknown_types_and_bad_flags_are_refused() {
        assert_eq!(
            Message::decode(0x42, &[]),
            Err(DecodeError::UnknownType(0x42))
        );
        assert_eq!(
            Message::decode(frame_type::SIGNALED, &[9, 0, 0, 0, 2]),
            Err(DecodeError::BadValue {
                frame_type: frame_type::SIGNALED,
                field: "timed_out"
            })
        );
    }

    #[test]
    fn a_huge_count_or_length_costs_only_the_bytes_present() {
        // argv count u32::MAX with nothing after it: fails on the first item.
        let payload = u32::MAX.to_le_bytes();
        assert!(matches!(
            Message::decode(frame_type::EXEC, &payload),
            Err(DecodeError::Truncated { field: "argv", .. })
        ));
        // One argument claiming 4 GiB.
        let mut payload = 1u32.to_le_bytes().to_vec();
        payload.extend_from_slice(&u32::MAX.to_le_bytes());
        payload.extend_from_slice(b"abc");
        assert!(Message::decode(frame_type::EXEC, &payload).is_err());
    }

    #[test]
    fn an_oversized_frame_is_refused_before_reading_its_payload() {
        let mut stream = u32::MAX.to_le_bytes().to_vec();
        stream.push(frame_type::STDOUT);
        stream.extend_from_slice(b"only a few bytes");
        let mut cursor = Cursor::new(stream);
        let mut reader = FrameReader::new();
        match reader.read_frame(&mut cursor) {
            Err(FrameError::TooLarge { frame_type, len }) => {
                assert_eq!(frame_type, frame_type::STDOUT);
                assert_eq!(len, u32::MAX);
            }
            other => panic!(
                "expected TooLarge, got {:?}",
                other.map(|(t, p)| (t, p.len()))
            ),
        }
        assert_eq!(cursor.position(), HEADER_LEN as u64);
        assert!(reader.payload.capacity() < MAX_PAYLOAD);
    }

    #[test]
    fn the_largest_frame_passes_and_one_more_byte_does_not() {
        let mut stream = Vec::new();
        write_message(&mut stream, &Message::Stdout(vec![1; MAX_PAYLOAD])).unwrap();
        let mut reader = FrameReader::new();
        let (ty, payload) = reader.read_frame(&mut Cursor::new(stream)).unwrap();
        assert_eq!((ty, payload.len()), (frame_type::STDOUT, MAX_PAYLOAD));
        assert!(
            write_message(&mut Vec::new(), &Message::Stdout(vec![1; MAX_PAYLOAD + 1])).is_err()
        );
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        let mut stream = Vec::new();
        write_message(&mut stream, &Message::Stdout(b"hello".to_vec())).unwrap();
        for cut in 1..stream.len() {
            let mut reader = FrameReader::new();
            assert!(
                matches!(
                    reader.read_frame(&mut Cursor::new(&stream[..cut])),
                    Err(FrameError::Truncated)
                ),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn skip_payload_resynchronises_after_an_oversized_frame() {
        let big = MAX_PAYLOAD + 10;
        let mut stream = (big as u32).to_le_bytes().to_vec();
        stream.push(frame_type::STDIN);
        stream.resize(stream.len() + big, 0xaa);
        write_message(&mut stream, &Message::Ok).unwrap();
        let mut cursor = Cursor::new(stream);
        let mut reader = FrameReader::new();
        let Err(FrameError::TooLarge { len, .. }) = reader.read_frame(&mut cursor) else {
            panic!("expected TooLarge");
        };
        skip_payload(&mut cursor, u64::from(len)).unwrap();
        assert_eq!(reader.read_message(&mut cursor).unwrap(), Message::Ok);
    }

    #[test]
    fn random_payloads_never_panic() {
        // A small deterministic generator (xorshift): every type, random lengths and bytes.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let ty = next() as u8;
            let len = (next() % 64) as usize;
            let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            match Message::decode(ty, &payload) {
                // Error text is decoded lossily, so it may not re-encode to the same bytes.
                Ok(Message::Error(_)) | Err(_) => {}
                // What decodes encodes back to the same bytes.
                Ok(m) => assert_eq!(m.encode(), (ty, payload)),
            }
        }
    }
}
