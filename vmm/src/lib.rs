//! Canto VMM.
