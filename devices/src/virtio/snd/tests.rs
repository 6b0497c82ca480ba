//! Device-level tests: a fake driver on real guest memory.
