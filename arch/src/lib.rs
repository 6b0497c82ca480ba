//! x86_64 boot setup for Canto guests.
