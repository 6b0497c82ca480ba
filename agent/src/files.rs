//! `PutFile` and `GetFile`.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use canto_agent_protocol::{write_message, FrameReader, Message, DATA_CHUNK};

use crate::listen::Connection;
use crate::session::{next_frame, Incoming};

/// Receives a file's `FileData` chunks up to `FileEnd` and answers `Ok` or `Error`. Any other
/// request ends the transfer with an `Error` (and is dropped). Returns false when the peer closed the connection.
pub fn put(
    conn: &mut dyn Connection,
    reader: &mut FrameReader,
    path: &[u8],
    mode: u32,
) -> io::Result<bool> {
    let path = OsStr::from_bytes(path);
    let mode = mode & 0o7777;
    let mut failure: Option<String> = None;
    let mut file = match OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            failure = Some(format!("cannot create {}: {e}", path.to_string_lossy()));
            None
        }
    };
    loop {
        let message = match next_frame(conn, reader)? {
            Incoming::Message(m) => m,
            // Already answered with its own Error; the transfer fails but runs to its FileEnd.
            Incoming::Refused => {
                failure.get_or_insert_with(|| "a bad frame in the file's data".into());
                file = None;
                continue;
            }
            Incoming::Closed => return Ok(false),
        };
        match message {
            Message::FileData(data) => {
                if let Some(f) = file.as_mut() {
                    if let Err(e) = f.write_all(&data) {
                        failure = Some(format!("cannot write {}: {e}", path.to_string_lossy()));
                        file = None;
                    }
                }
            }
            Message::FileEnd => break,
            other => {
                failure.get_or_insert_with(|| {
                    format!("{} in the middle of a file's data", other.name())
                });
                break;
            }
        }
    }
    if let (None, Some(f)) = (&failure, &file) {
        // The mode as asked, not as the umask left it.
        if let Err(e) = f.set_permissions(std::fs::Permissions::from_mode(mode)) {
            failure = Some(format!(
                "cannot set the mode of {}: {e}",
                path.to_string_lossy()
            ));
        }
    }
    let reply = match failure {
        None => Message::Ok,
        Some(why) => Message::Error(why),
    };
    write_message(conn, &reply)?;
    Ok(true)
}

/// Sends a file as `FileData` chunks and `FileEnd`, or an `Error`.
pub fn get(conn: &mut dyn Connection, path: &[u8]) -> io::Result<()> {
    let path = OsStr::from_bytes(path);
    let mut file = match File::open(path).and_then(|f| {
        if f.metadata()?.is_dir() {
            Err(io::Error::from_raw_os_error(libc::EISDIR))
        } else {
            Ok(f)
        }
    }) {
        Ok(f) => f,
        Err(e) => {
            let why = format!("cannot open {}: {e}", path.to_string_lossy());
            return write_message(conn, &Message::Error(why));
        }
    };
    let mut chunk = vec![0u8; DATA_CHUNK];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return write_message(conn, &Message::FileEnd),
            Ok(n) => write_message(conn, &Message::FileData(chunk[..n].to_vec()))?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let why = format!("cannot read {}: {e}", path.to_string_lossy());
                return write_message(conn, &Message::Error(why));
            }
        }
    }
}
