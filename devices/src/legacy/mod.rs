//! Legacy PC devices a Linux guest expects: the 16550 serial console, the i8042 reset line, and
//! the ACPI power-management registers (power off, reset).

mod acpi_pm;
mod i8042;
mod serial;

pub use acpi_pm::{
    AcpiPmRegisters, ACPI_PM_PORT_BASE, ACPI_PM_PORT_LEN, RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE,
    SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET,
};
pub use i8042::{I8042Reset, I8042_PORT_BASE, I8042_PORT_LEN};
pub use serial::{EventFdTrigger, SerialConsole, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
