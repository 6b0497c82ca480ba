//! The host terminal: raw mode for the guest's console while it runs, and its restoration on
//! every way out (normal exit, error, stop signal, a second signal, a panic).

use std::io;
use std::os::unix::io::AsRawFd;
use std::sync::Mutex;

/// The terminal's settings from before raw mode, while raw mode is on.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Raw mode on stdin (no line editing, no echo, no signals from keys: Ctrl-C goes to the guest)
/// until dropped.
pub struct RawTerminal(());

impl RawTerminal {
    /// Raw mode, when stdin is a terminal; None (with a warning if it failed) otherwise.
    pub fn enter() -> Option<Self> {
        let stdin = io::stdin();
        if !io::IsTerminal::is_terminal(&stdin) {
            return None;
        }
        let fd = stdin.as_raw_fd();
        // SAFETY: termios is plain data that tcgetattr fills in.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open for the whole process; `saved` is a valid termios to write.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            log::warn!(
                "cannot put the terminal in raw mode: {}",
                io::Error::last_os_error()
            );
            return None;
        }
        let mut raw = saved;
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        // SAFETY: `fd` is open; `raw` is a valid termios read from this terminal.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            log::warn!(
                "cannot put the terminal in raw mode: {}",
                io::Error::last_os_error()
            );
            SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
            return None;
        }
        Some(Self(()))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the terminal back as it was before raw mode; nothing when raw mode is off. Safe to call
/// from any thread, any number of times.
pub fn restore() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(saved) = saved {
        // SAFETY: stdin stays open for the whole process; `saved` came from tcgetattr on it.
        if unsafe { libc::tcsetattr(io::stdin().as_raw_fd(), libc::TCSANOW, &saved) } != 0 {
            log::warn!(
                "cannot restore the terminal: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Makes a panic on any thread restore the terminal before the panic message is printed.
pub fn restore_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
    }));
}
