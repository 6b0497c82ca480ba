//! Stop signals: SIGTERM, SIGINT and SIGHUP end the VM cleanly.
//!
//! [`install`] blocks the three signals in the calling thread before any other thread exists, so
//! every thread inherits the mask and no system call anywhere is interrupted by them. One thread,
//! started by [`StopSignals::watch`] once the seccomp mode is known (a signal before it stays
//! pending, not lost), waits for them with `sigwaitinfo`: the first one is recorded and wakes the event loop through
//! an eventfd, which ends the VM through the normal teardown (vCPUs stopped, devices reset in
//! order so every backend flushes and a WAV file gets its true header, terminal restored). A
//! second signal, or a teardown longer than [`TEARDOWN_BOUND`], restores the terminal and exits at
//! once. The exit status is 128 + the signal's number, as shells report it.

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::terminal;

/// The signals that stop Canto.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// How long the teardown after a stop signal may take before Canto exits without finishing it.
pub const TEARDOWN_BOUND: Duration = Duration::from_secs(10);

/// The signal's name as `kill -l` spells it.
pub fn name(signal: i32) -> &'static str {
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// The exit status for a stop by `signal`: 128 + its number, as shells report it.
pub fn exit_status(signal: i32) -> u8 {
    (128 + signal).clamp(0, 255) as u8
}

/// Where the first stop signal is reported: the eventfd the event loop watches, and the signal.
#[derive(Clone)]
pub struct StopSignals {
    evt: Arc<EventFd>,
    received: Arc<AtomicI32>,
}

impl StopSignals {
    /// Readable once a stop signal arrived.
    pub fn event(&self) -> &Arc<EventFd> {
        &self.evt
    }

    /// The first stop signal, if one arrived.
    pub fn received(&self) -> Option<i32> {
        match self.received.load(Ordering::Acquire) {
            0 => None,
            signal => Some(signal),
        }
    }
}

fn stop_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, and sigemptyset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in STOP_SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
    }
    set
}

/// Blocks the stop signals; [`StopSignals::watch`] then starts the thread that waits for them.
/// Call it first in `main`, before any other thread is started (those inherit the mask; a
/// thread that does not have it would take the signal's default action, ending the process at
/// once).
pub fn install() -> io::Result<StopSignals> {
    let set = stop_set();
    // SAFETY: `set` is a valid signal set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // A process Canto's libraries start (alsa-lib may spawn a sound server) must not inherit
    // the blocked signals, or it could not be stopped with them.
    // SAFETY: the handler only calls pthread_sigmask, which is async-signal-safe, in the child.
    let rc = unsafe { libc::pthread_atfork(None, None, Some(unblock_in_child)) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    let stop = StopSignals {
        evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK)?),
        received: Arc::new(AtomicI32::new(0)),
    };
    Ok(stop)
}

impl StopSignals {
    /// Starts the thread that waits for the stop signals (after [`crate::seccomp::init`]: it
    /// installs its filter first). Call it once.
    pub fn watch(&self) -> io::Result<()> {
        let watcher = self.clone();
        std::thread::Builder::new()
            .name("canto-signals".into())
            .spawn(move || {
                crate::seccomp::install_or_exit(crate::seccomp::ThreadKind::Signals);
                watch(stop_set(), &watcher)
            })?;
        Ok(())
    }
}

extern "C" fn unblock_in_child() {
    let set = stop_set();
    // SAFETY: `set` is a valid signal set; this runs in the new child, on its only thread.
    unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
}

fn watch(set: libc::sigset_t, stop: &StopSignals) {
    let first = loop {
        // SAFETY: `set` is a valid signal set; no siginfo is wanted.
        let signal = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if signal > 0 {
            break signal;
        }
    };
    stop.received.store(first, Ordering::Release);
    if let Err(e) = stop.evt.write(1) {
        // The event loop cannot be told: end the way a second signal does.
        exit_now(
            &format!(
                "canto: {}: cannot stop the VM cleanly ({e}); exiting at once",
                name(first)
            ),
            first,
        );
    }
    let timeout = libc::timespec {
        tv_sec: TEARDOWN_BOUND.as_secs() as libc::time_t,
        tv_nsec: 0,
    };
    loop {
        // SAFETY: `set` and `timeout` are valid; no siginfo is wanted.
        let signal = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        if signal > 0 {
            exit_now(
                &format!(
                    "canto: {} during the shutdown after {}: exiting at once",
                    name(signal),
                    name(first)
                ),
                signal,
            );
        }
        if io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN) {
            exit_now(
                &format!(
                    "canto: {}: the shutdown took more than {} s; exiting without finishing it",
                    name(first),
                    TEARDOWN_BOUND.as_secs()
                ),
                first,
            );
        }
        // EINTR: wait again (a little longer than the bound at worst).
    }
}

/// Restores the terminal, prints `line` and ends the process with the status for `signal`,
/// without running destructors (another thread may be in the middle of the teardown).
fn exit_now(line: &str, signal: i32) -> ! {
    terminal::restore();
    eprintln!("{line}");
    // SAFETY: _exit ends the process at once; nothing runs after it.
    unsafe { libc::_exit(i32::from(exit_status(signal))) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_names_follow_the_shell() {
        assert_eq!(exit_status(libc::SIGHUP), 129);
        assert_eq!(exit_status(libc::SIGINT), 130);
        assert_eq!(exit_status(libc::SIGTERM), 143);
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
        assert_eq!(name(libc::SIGINT), "SIGINT");
        assert_eq!(name(libc::SIGHUP), "SIGHUP");
    }
}
