//! The guest's serial console: a 16550 UART (vm-superio) on COM1, its interrupt an eventfd.

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// COM1's I/O ports.
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
pub const SERIAL_PORT_LEN: u64 = 8;

/// Raises the UART's interrupt by writing an eventfd that the VMM registers as an irqfd (IRQ 4).
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// COM1 on the port I/O bus.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl SerialConsole {
    /// A UART whose transmitted bytes go to `out` and whose interrupt writes `irq`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger::new(irq), out),
        }
    }

    /// Hands host input to the guest; returns how many bytes fitted in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        let take = bytes.len().min(room);
        if take == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..take]) {
            Ok(n) => n,
            Err(e) => {
                crate::warn_limited!("serial: cannot queue input: {e:?}");
                0
            }
        }
    }

    /// Room left in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        // The UART has byte-wide registers; wider accesses read the first register, rest zero.
        data.fill(0);
        if let (Some(first), Ok(reg)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.uart.read(reg);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (Some(&value), Ok(reg)) = (data.first(), u8::try_from(offset)) {
            if let Err(e) = self.uart.write(reg, value) {
                crate::warn_limited!("serial: write to register {reg} failed: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_to_the_writer_and_receives_input() {
        let out = SharedBuf::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = SerialConsole::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        for b in b"hi" {
            serial.write(SERIAL_PORT_BASE, 0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        // Enable the received-data interrupt, then feed input: the irq eventfd fires.
        serial.write(SERIAL_PORT_BASE, 1, &[0x01]);
        assert_eq!(serial.enqueue_input(b"x"), 1);
        assert_eq!(irq.read().unwrap(), 1);
        let mut data = [0u8; 1];
        serial.read(SERIAL_PORT_BASE, 0, &mut data);
        assert_eq!(data[0], b'x');
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut serial = SerialConsole::new(irq, Box::new(std::io::sink()));
        let mut wide = [0xffu8; 8];
        serial.read(SERIAL_PORT_BASE, 7, &mut wide);
        serial.read(SERIAL_PORT_BASE, 300, &mut wide);
        serial.write(SERIAL_PORT_BASE, 300, &[1]);
        serial.write(SERIAL_PORT_BASE, 0, &[]);
        serial.read(SERIAL_PORT_BASE, 0, &mut []);
    }
}
