//! Shared helpers for tests that boot guests under the `canto` binary.
