//! The ACPI power-management registers of Canto's hardware-reduced FADT: the sleep control and
//! sleep status registers and the reset register, one I/O port each.
//!
//! A guest powers off (`poweroff`, `halt -p`) by writing `SLP_TYP << 2 | SLP_EN` to the sleep
//! control register with the sleep type `\_S5` gives ([`S5_SLEEP_TYPE`]); Canto then ends the VM
//! with status 0. Other sleep states are not offered (the DSDT has no `\_S1`..`\_S4`), so their
//! writes are ignored. Writing [`RESET_VALUE`] to the reset register reboots, like the i8042's
//! reset line.

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// The registers' first port: sleep control, then sleep status, then reset.
pub const ACPI_PM_PORT_BASE: u64 = 0x600;
pub const ACPI_PM_PORT_LEN: u64 = 3;
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
pub const SLEEP_STATUS_OFFSET: u64 = 1;
pub const RESET_OFFSET: u64 = 2;
/// What the guest writes to the reset register to reset.
pub const RESET_VALUE: u8 = 0x0e;
/// The sleep type of S5 (soft off), as the DSDT's `\_S5` says.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Sleep control register fields (ACPI 6.5, 4.8.3.7).
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;
const SLP_EN: u8 = 1 << 5;

/// Signals `power_off` when the guest enters S5 and `reset` when it writes the reset register.
pub struct AcpiPmRegisters {
    power_off: EventFd,
    reset: EventFd,
}

impl AcpiPmRegisters {
    pub fn new(power_off: EventFd, reset: EventFd) -> Self {
        Self { power_off, reset }
    }
}

impl BusDevice for AcpiPmRegisters {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS clear (the guest never wakes from S5); the rest reads as 0.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        let signal = match offset {
            SLEEP_CONTROL_OFFSET
                if value & SLP_EN != 0
                    && (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT == S5_SLEEP_TYPE =>
            {
                &self.power_off
            }
            RESET_OFFSET if value == RESET_VALUE => &self.reset,
            // SLP_EN clear, another sleep type, or the sleep status register (write 1 to
            // clear WAK_STS, which is never set).
            _ => return,
        };
        if let Err(e) = signal.write(1) {
            crate::error_limited!("ACPI PM: cannot signal the VM's end: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (AcpiPmRegisters, EventFd, EventFd) {
        let power_off = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = AcpiPmRegisters::new(power_off.try_clone().unwrap(), reset.try_clone().unwrap());
        (dev, power_off, reset)
    }

    #[test]
    fn s5_with_slp_en_powers_off() {
        let (mut dev, power_off, reset) = device();
        // What Linux's acpi_hw_extended_sleep() writes: SLP_TYP 5, SLP_EN.
        dev.write(ACPI_PM_PORT_BASE, SLEEP_CONTROL_OFFSET, &[0x34]);
        assert_eq!(power_off.read().unwrap(), 1);
        assert!(reset.read().is_err());
    }

    #[test]
    fn other_writes_do_nothing() {
        let (mut dev, power_off, reset) = device();
        for (offset, value) in [
            (SLEEP_CONTROL_OFFSET, 5 << 2),          // S5 without SLP_EN
            (SLEEP_CONTROL_OFFSET, 3 << 2 | SLP_EN), // S3: not offered
            (SLEEP_CONTROL_OFFSET, SLP_EN),          // S0
            (SLEEP_STATUS_OFFSET, 0x80),             // clear WAK_STS
            (SLEEP_STATUS_OFFSET, 0x34),
            (RESET_OFFSET, 0x01),
        ] {
            dev.write(ACPI_PM_PORT_BASE, offset, &[value]);
        }
        dev.write(ACPI_PM_PORT_BASE, SLEEP_CONTROL_OFFSET, &[]);
        assert!(power_off.read().is_err());
        assert!(reset.read().is_err());
        let mut data = [0xffu8; 1];
        dev.read(ACPI_PM_PORT_BASE, SLEEP_STATUS_OFFSET, &mut data);
        assert_eq!(data, [0]);
    }

    #[test]
    fn reset_value_resets() {
        let (mut dev, power_off, reset) = device();
        dev.write(ACPI_PM_PORT_BASE, RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(reset.read().unwrap(), 1);
        assert!(power_off.read().is_err());
    }
}
