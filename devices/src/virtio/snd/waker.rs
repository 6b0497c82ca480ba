//! Wakes a period thread out of its pacing wait (a timer deadline or an ALSA poll), so control
//! requests and device reset never wait for a period to elapse.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A wake-up flag that a thread can wait on either with a deadline (condition variable) or by
/// polling a file descriptor (the eventfd), whichever its backend needs.
#[derive(Debug)]
pub struct Waker {
    pending: Mutex<bool>,
    changed: Condvar,
    fd: EventFd,
    cancelled: AtomicBool,
}

impl Waker {
    pub fn new() -> std::io::Result<Waker> {
        Ok(Waker {
            pending: Mutex::new(false),
            changed: Condvar::new(),
            fd: EventFd::new(EFD_NONBLOCK)?,
            cancelled: AtomicBool::new(false),
        })
    }

    fn flag(&self) -> MutexGuard<'_, bool> {
        // The flag is a plain bool: a panic elsewhere cannot leave it inconsistent.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the waiting thread, or makes its next wait return at once.
    pub fn wake(&self) {
        *self.flag() = true;
        self.changed.notify_all();
        // A full counter (impossible in practice) still leaves the fd readable.
        let _ = self.fd.write(1);
    }

    /// Wakes the thread for good: every later wait returns at once. For a stream that is going
    /// away (device reset), so that nothing, not even a drain, keeps its thread.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.wake();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// Undoes [`Waker::cancel`] once the thread it was meant for is gone.
    pub fn uncancel(&self) {
        self.cancelled.store(false, Ordering::SeqCst);
        self.consume();
    }

    /// Clears a pending wake-up; returns whether there was one.
    pub fn consume(&self) -> bool {
        let mut pending = self.flag();
        // Empty the eventfd too, so a later poll does not see a stale wake-up.
        let _ = self.fd.read();
        std::mem::replace(&mut *pending, false)
    }

    /// Waits until `deadline` or a wake-up, whichever comes first. Returns true (and consumes the
    /// wake-up) if woken.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let mut pending = self.flag();
        loop {
            if self.cancelled.load(Ordering::SeqCst) {
                return true;
            }
            if *pending {
                *pending = false;
                let _ = self.fd.read();
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            pending = self
                .changed
                .wait_timeout(pending, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits for at most `timeout`; see [`Waker::wait_until`].
    pub fn wait_for(&self, timeout: Duration) -> bool {
        self.wait_until(Instant::now() + timeout)
    }
}

impl AsRawFd for Waker {
    /// Readable while a wake-up is pending (for poll-based waits).
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_wake_before_the_wait_is_not_lost() {
        let waker = Waker::new().unwrap();
        waker.wake();
        let start = Instant::now();
        assert!(waker.wait_for(Duration::from_secs(5)));
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(!waker.wait_for(Duration::from_millis(5)));
    }

    #[test]
    fn wakes_a_waiting_thread() {
        let waker = Arc::new(Waker::new().unwrap());
        let other = waker.clone();
        let thread = std::thread::spawn(move || other.wait_for(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        waker.wake();
        assert!(thread.join().unwrap());
    }

    #[test]
    fn cancel_is_sticky() {
        let waker = Waker::new().unwrap();
        waker.cancel();
        assert!(waker.wait_for(Duration::from_secs(5)));
        assert!(waker.wait_for(Duration::from_secs(5)));
        assert!(waker.is_cancelled());
        waker.uncancel();
        assert!(!waker.wait_for(Duration::from_millis(5)));
    }

    #[test]
    fn consume_clears_the_fd() {
        let waker = Waker::new().unwrap();
        waker.wake();
        assert!(waker.consume());
        assert!(!waker.consume());
        assert!(waker.fd.read().is_err());
    }
}
