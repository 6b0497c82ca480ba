//! One connection: the `Hello` exchange, then requests one after another. A frame that cannot
//! be decoded gets an `Error` reply and the connection goes on; only the peer closing it (or a
//! failing socket) ends it.

use std::io;

use canto_agent_protocol::{
    skip_payload, write_message, FrameError, FrameReader, Message, VERSION,
};

use crate::listen::Connection;
use crate::{exec, files};

/// A request, or a frame the agent answers with an `Error` and skips.
pub enum Incoming {
    Message(Message),
    /// Refused (already answered); the stream is at the next frame.
    Refused,
    /// The peer closed the connection.
    Closed,
}

/// Reads the next frame. Bad frames are answered with an `Error` and skipped (an oversized one
/// by discarding its payload, so the stream stays in step).
pub fn next_frame(conn: &mut dyn Connection, reader: &mut FrameReader) -> io::Result<Incoming> {
    let refusal = match reader.read_frame(conn) {
        Ok((frame_type, payload)) => match Message::decode(frame_type, payload) {
            Ok(message) => return Ok(Incoming::Message(message)),
            Err(e) => e.to_string(),
        },
        Err(FrameError::Closed | FrameError::Truncated) => return Ok(Incoming::Closed),
        Err(FrameError::Io(e)) => return Err(e),
        Err(e @ FrameError::TooLarge { len, .. }) => {
            let text = e.to_string();
            write_message(conn, &Message::Error(text))?;
            return match skip_payload(conn, u64::from(len)) {
                Ok(()) => Ok(Incoming::Refused),
                Err(FrameError::Io(e)) => Err(e),
                Err(_) => Ok(Incoming::Closed),
            };
        }
    };
    write_message(conn, &Message::Error(refusal))?;
    Ok(Incoming::Refused)
}

/// Tells a connection the agent will not serve it, and drops it.
pub fn refuse(conn: &mut Box<dyn Connection>, why: &str) {
    let _ = write_message(conn, &Message::Error(why.into()));
}

pub fn serve(conn: &mut Box<dyn Connection>) -> io::Result<()> {
    let conn: &mut dyn Connection = conn.as_mut();
    let mut reader = FrameReader::new();
    let mut greeted = false;
    loop {
        let message = match next_frame(conn, &mut reader)? {
            Incoming::Message(m) => m,
            Incoming::Refused => continue,
            Incoming::Closed => return Ok(()),
        };
        match message {
            Message::Hello { version } if version == VERSION => {
                greeted = true;
                write_message(conn, &Message::Hello { version: VERSION })?;
            }
            Message::Hello { version } => write_message(
                conn,
                &Message::Error(format!(
                    "protocol version {version} is not supported; this agent speaks version {VERSION}"
                )),
            )?,
            // Stdin and signals for a command may cross its end on the wire: they are dropped.
            Message::Stdin(_) | Message::StdinEof | Message::Signal(_) => {}
            m if !greeted => write_message(
                conn,
                &Message::Error(format!("{} before Hello", m.name())),
            )?,
            Message::Exec(request) => {
                if exec::run(conn, &mut reader, request)? == exec::Outcome::PeerGone {
                    return Ok(());
                }
            }
            Message::PutFile { path, mode } => {
                if !files::put(conn, &mut reader, &path, mode)? {
                    return Ok(());
                }
            }
            Message::GetFile { path } => files::get(conn, &path)?,
            m => write_message(
                conn,
                &Message::Error(format!("{} is not a request", m.name())),
            )?,
        }
    }
}
