//! Where the agent listens: an AF_VSOCK port (in the guest) or a Unix socket (tests).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

pub enum Endpoint {
    Vsock(u32),
    Unix(PathBuf),
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(port) = s.strip_prefix("vsock:") {
            port.parse()
                .map(Self::Vsock)
                .map_err(|_| format!("'{port}' is not a vsock port number"))
        } else if let Some(path) = s.strip_prefix("unix:").filter(|p| !p.is_empty()) {
            Ok(Self::Unix(path.into()))
        } else {
            Err(format!("'{s}' is neither vsock:PORT nor unix:PATH"))
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vsock(port) => write!(f, "vsock port {port}"),
            Self::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A connection's byte stream; its fd is polled while a command runs.
pub trait Connection: Read + Write + AsRawFd + Send {}
impl Connection for UnixStream {}
impl Connection for File {}

pub enum Listener {
    Unix(UnixListener),
    Vsock(OwnedFd),
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Listener {
    pub fn bind(endpoint: &Endpoint) -> io::Result<Self> {
        match endpoint {
            Endpoint::Unix(path) => Ok(Self::Unix(UnixListener::bind(path)?)),
            Endpoint::Vsock(port) => {
                // SAFETY: socket() takes no pointers; the result is checked.
                let fd = check(unsafe {
                    libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)
                })?;
                // SAFETY: fd is a new socket this function owns from here on.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                // SAFETY: sockaddr_vm is plain data, for which all zeroes is valid.
                let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
                addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
                addr.svm_port = *port;
                addr.svm_cid = libc::VMADDR_CID_ANY;
                // SAFETY: addr is a valid sockaddr_vm and its size is passed with it.
                check(unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        (&addr as *const libc::sockaddr_vm).cast(),
                        size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                    )
                })?;
                // SAFETY: listen() on a socket we own.
                check(unsafe { libc::listen(fd.as_raw_fd(), 16) })?;
                Ok(Self::Vsock(fd))
            }
        }
    }

    pub fn accept(&self) -> io::Result<Box<dyn Connection>> {
        match self {
            Self::Unix(l) => Ok(Box::new(l.accept()?.0)),
            Self::Vsock(fd) => {
                let conn = loop {
                    // SAFETY: null address pointers ask accept4 not to report the peer.
                    let ret = unsafe {
                        libc::accept4(
                            fd.as_raw_fd(),
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_CLOEXEC,
                        )
                    };
                    match check(ret) {
                        Ok(conn) => break conn,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                };
                // SAFETY: accept4 returned a new fd that nothing else owns. A File reads and
                // writes a stream socket with read(2)/write(2), which is all the agent needs.
                Ok(Box::new(unsafe { File::from_raw_fd(conn as RawFd) }))
            }
        }
    }
}
