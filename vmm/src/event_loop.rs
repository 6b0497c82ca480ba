//! Event-loop subscribers that belong to the VMM itself: the VM's end, stop signals, and host
//! input for the serial console (with the console escape keys).

use std::collections::VecDeque;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use canto_devices::legacy::SerialConsole;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::console::{EscapeCommand, EscapeDecoder, ESCAPE_HELP};

use crate::signals::StopSignals;
use crate::vcpu::{ExitReporter, VmExit};

/// Ends the event loop when a vCPU reports the VM's end, the guest resets (i8042 reset line,
/// ACPI reset register) or powers off (ACPI S5).
pub struct ExitWatcher {
    pub vcpu_exit: Arc<EventFd>,
    pub reset: Arc<EventFd>,
    pub power_off: Arc<EventFd>,
    pub exit: ExitReporter,
    pub done: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            self.exit.report(VmExit::Reset);
        } else if events.fd() == self.power_off.as_raw_fd() {
            let _ = self.power_off.read();
            self.exit.report(VmExit::PowerOff);
        } else {
            let _ = self.vcpu_exit.read();
        }
        self.done.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&*self.vcpu_exit, &*self.reset, &*self.power_off] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                log::error!("cannot watch the VM's exit events: {e:?}");
            }
        }
    }
}

/// Ends the event loop when a stop signal arrives (see [`crate::signals`]).
pub struct StopSignalWatcher {
    pub signals: StopSignals,
    pub exit: ExitReporter,
    pub done: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopSignalWatcher {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.signals.event().read();
        if let Some(signal) = self.signals.received() {
            self.exit.report(VmExit::Signal(signal));
            self.done.store(true, Ordering::Release);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&**self.signals.event(), EventSet::IN)) {
            log::error!("cannot watch for stop signals: {e:?}");
        }
    }
}

/// How much typed-ahead input waits for the guest's receive FIFO before more is dropped.
const INPUT_BACKLOG_MAX: usize = 4096;

/// How much of stdin one event reads.
const STDIN_CHUNK: usize = 256;

/// Reads file descriptor 0 itself. Not through `std::io::stdin()`, whose 8 KiB buffer would take
/// a whole paste off the terminal at once and hold it where epoll cannot see it: the rest (and any
/// Ctrl-A x in it) would then wait for the next key.
fn read_stdin_fd(buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; fd 0 stays open for the process.
    let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

/// How soon a full receive FIFO is tried again.
const FIFO_RETRY: Duration = Duration::from_millis(10);

/// Copies host stdin (a terminal in raw mode) into the serial console's receive FIFO, taking the
/// console escape keys out ([`crate::console`]).
///
/// Stdin is read whenever it has input, even while the guest leaves its FIFO full, so Ctrl-A x
/// always works and a stuck guest cannot make the loop spin on a readable stdin. What does not
/// fit waits in a bounded backlog, retried on a timer; past that bound input is dropped (as a
/// real UART overruns), with one warning.
pub struct StdinToSerial {
    serial: Arc<Mutex<SerialConsole>>,
    escape: EscapeDecoder,
    backlog: VecDeque<u8>,
    retry: TimerFd,
    retry_armed: bool,
    overrun_reported: bool,
    exit: ExitReporter,
    done: Arc<AtomicBool>,
}

impl StdinToSerial {
    pub fn new(
        serial: Arc<Mutex<SerialConsole>>,
        exit: ExitReporter,
        done: Arc<AtomicBool>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            serial,
            escape: EscapeDecoder::default(),
            backlog: VecDeque::new(),
            retry: TimerFd::new()?,
            retry_armed: false,
            overrun_reported: false,
            exit,
            done,
        })
    }

    /// Moves what fits of the backlog into the FIFO; arms the retry timer for the rest.
    fn drain(&mut self) {
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        while !self.backlog.is_empty() {
            let (front, _) = self.backlog.as_slices();
            let taken = serial.enqueue_input(front);
            if taken == 0 {
                break;
            }
            self.backlog.drain(..taken);
        }
        drop(serial);
        if !self.backlog.is_empty() && !self.retry_armed {
            match self.retry.reset(FIFO_RETRY, None) {
                Ok(()) => self.retry_armed = true,
                Err(e) => log::warn!("cannot arm the serial input timer: {e}"),
            }
        }
    }

    fn read_stdin(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; STDIN_CHUNK];
        let n = match read_stdin_fd(&mut buf) {
            Ok(0) => {
                let _ = ops.remove(events);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Err(e) => {
                log::warn!("cannot read stdin: {e}");
                return;
            }
        };
        let mut to_guest = Vec::with_capacity(n + 1);
        let commands = self.escape.feed(&buf[..n], &mut to_guest);
        let room = INPUT_BACKLOG_MAX.saturating_sub(self.backlog.len());
        if to_guest.len() > room && !self.overrun_reported {
            self.overrun_reported = true;
            log::warn!("the guest is not reading its serial console: further input is dropped");
        }
        self.backlog.extend(to_guest.iter().take(room).copied());
        self.drain();
        for command in commands {
            match command {
                EscapeCommand::Help => {
                    // The terminal is raw for input only: output still turns \n into \r\n.
                    eprintln!("{ESCAPE_HELP}");
                }
                EscapeCommand::Exit => {
                    self.exit.report(VmExit::ConsoleExit);
                    self.done.store(true, Ordering::Release);
                    return;
                }
            }
        }
    }
}

impl MutEventSubscriber for StdinToSerial {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.retry.as_raw_fd() {
            let _ = self.retry.wait();
            self.retry_armed = false;
            self.drain();
            return;
        }
        if events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR)
        {
            let _ = ops.remove(events);
            return;
        }
        self.read_stdin(events, ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let stdin = std::io::stdin();
        if let Err(e) = ops.add(Events::new(&stdin, EventSet::IN)) {
            log::warn!("cannot watch stdin for the serial console: {e:?}");
        }
        if let Err(e) = ops.add(Events::new(&self.retry, EventSet::IN)) {
            log::warn!("cannot watch the serial input timer: {e:?}");
        }
    }
}
