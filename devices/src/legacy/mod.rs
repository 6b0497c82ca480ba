//! Legacy PC devices a Linux guest expects: the 16550 serial console and the i8042 reset line.

mod i8042;
mod serial;

pub use i8042::{I8042Reset, I8042_PORT_BASE, I8042_PORT_LEN};
pub use serial::{EventFdTrigger, SerialConsole, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
