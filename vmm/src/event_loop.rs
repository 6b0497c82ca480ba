//! Event-loop subscribers that belong to the VMM itself: the VM's end, stop signals, and host
//! input for the serial console.

use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use canto_devices::legacy::SerialConsole;
use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::signals::StopSignals;
use crate::vcpu::{ExitReporter, VmExit};

/// Ends the event loop when a vCPU reports the VM's end or the guest pulses the i8042 reset.
pub struct ExitWatcher {
    pub vcpu_exit: Arc<EventFd>,
    pub reset: Arc<EventFd>,
    pub exit: ExitReporter,
    pub done: Arc<AtomicBool>,
}

impl MutEventSubscriber for ExitWatcher {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            self.exit.report(VmExit::Reset);
        } else {
            let _ = self.vcpu_exit.read();
        }
        self.done.store(true, Ordering::Release);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&*self.vcpu_exit, &*self.reset] {
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

/// Copies host stdin (a terminal in raw mode) into the serial console's receive FIFO.
pub struct StdinToSerial {
    pub serial: Arc<Mutex<SerialConsole>>,
}

impl MutEventSubscriber for StdinToSerial {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events
            .event_set()
            .intersects(EventSet::HANG_UP | EventSet::ERROR)
        {
            let _ = ops.remove(events);
            return;
        }
        let mut serial = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        // Read no more than the FIFO can take: the rest waits in the terminal for the next round.
        let room = serial.input_room().min(64);
        if room == 0 {
            return;
        }
        let mut buf = [0u8; 64];
        match std::io::stdin().lock().read(&mut buf[..room]) {
            Ok(0) => {
                let _ = ops.remove(events);
            }
            Ok(n) => {
                serial.enqueue_input(&buf[..n]);
            }
            Err(e) => log::warn!("cannot read stdin: {e}"),
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let stdin = std::io::stdin();
        if let Err(e) = ops.add(Events::new(&stdin, EventSet::IN)) {
            log::warn!("cannot watch stdin for the serial console: {e:?}");
        }
    }
}
