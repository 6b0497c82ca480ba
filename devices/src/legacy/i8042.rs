//! The one part of the i8042 keyboard controller a microVM needs: the CPU reset line.
//!
//! A Linux guest booted with `reboot=k` resets the machine by writing 0xFE to port 0x64; Canto
//! ends the VM then, as Firecracker does. Status reads say "no data, ready for input" so the
//! kernel's controller probe finishes quickly.

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// The controller's command/status port, relative to port 0x60.
pub const I8042_COMMAND_OFFSET: u64 = 4;
pub const I8042_PORT_BASE: u64 = 0x60;
pub const I8042_PORT_LEN: u64 = 5;
const CMD_RESET_CPU: u8 = 0xfe;

/// Signals `reset` when the guest pulses the CPU reset line.
pub struct I8042Reset {
    reset: EventFd,
}

impl I8042Reset {
    pub fn new(reset: EventFd) -> Self {
        Self { reset }
    }
}

impl BusDevice for I8042Reset {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset == I8042_COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            if let Err(e) = self.reset.write(1) {
                crate::error_limited!("i8042: cannot signal the reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_signals_the_eventfd_and_nothing_else_does() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = I8042Reset::new(evt.try_clone().unwrap());
        dev.write(I8042_PORT_BASE, 0, &[CMD_RESET_CPU]);
        dev.write(I8042_PORT_BASE, I8042_COMMAND_OFFSET, &[0xaa]);
        assert!(evt.read().is_err()); // nothing signalled yet (EAGAIN)
        dev.write(I8042_PORT_BASE, I8042_COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
        let mut data = [0xffu8; 2];
        dev.read(I8042_PORT_BASE, I8042_COMMAND_OFFSET, &mut data);
        assert_eq!(data, [0, 0]);
    }
}
