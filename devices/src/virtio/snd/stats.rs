//! Device-wide counters, cumulative over the device's life (resets included), for logs and
//! benchmarks. All are relaxed atomics: they order nothing.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of a sound device.
#[derive(Debug, Default)]
pub struct SoundStats {
    tx_bytes_copied: AtomicU64,
    tx_bytes_played: AtomicU64,
    tx_silence_bytes: AtomicU64,
    tx_underruns: AtomicU64,
    tx_messages: AtomicU64,
    tx_bytes_dropped_on_release: AtomicU64,
    tx_bytes_dropped_at_close: AtomicU64,
    rx_bytes_copied: AtomicU64,
    rx_overruns: AtomicU64,
    rx_messages: AtomicU64,
    bad_messages: AtomicU64,
    io_errors: AtomicU64,
    backend_xruns: AtomicU64,
    control_requests: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SoundStatsSnapshot {
    /// Guest PCM bytes copied out of guest memory (TX). Each byte is copied once, straight into
    /// the backend's period buffer, so `tx_bytes_copied / tx_bytes_played` is 1.
    pub tx_bytes_copied: u64,
    /// Guest PCM bytes the backend accepted (silence not included).
    pub tx_bytes_played: u64,
    /// Silence bytes the device gave the backend because no guest data was queued.
    pub tx_silence_bytes: u64,
    /// Periods in which an output stream ran out of queued guest data while started.
    pub tx_underruns: u64,
    /// TX messages returned to the driver (any status).
    pub tx_messages: u64,
    /// Guest PCM bytes a RELEASE dropped: queued bytes the backend did not take within the
    /// release's time bound. Their messages still come back with status OK (the driver has
    /// released the stream; the host device was too slow to play them in time).
    pub tx_bytes_dropped_on_release: u64,
    /// Bytes the backend had accepted (counted as played) but had not played yet when the
    /// stream was closed: the bounded drain after RELEASE ran out, or a device reset or VMM exit
    /// cut it short.
    pub tx_bytes_dropped_at_close: u64,
    /// Captured bytes copied into guest memory (RX).
    pub rx_bytes_copied: u64,
    /// Captured periods (or parts of them) dropped because no RX message was queued.
    pub rx_overruns: u64,
    /// RX messages returned to the driver (any status).
    pub rx_messages: u64,
    /// Malformed I/O messages, completed with IO_ERR or returned with length 0.
    pub bad_messages: u64,
    /// I/O messages completed with IO_ERR.
    pub io_errors: u64,
    /// Backend xruns the backend recovered from (ALSA EPIPE/ESTRPIPE).
    pub backend_xruns: u64,
    /// Control requests handled.
    pub control_requests: u64,
}

/// `key=value` pairs separated by spaces, in field order (the VMM's `sound stats:` line; the
/// bench reads it back). The destructuring names every field, so a new counter cannot be left out.
impl std::fmt::Display for SoundStatsSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let SoundStatsSnapshot {
            tx_bytes_copied,
            tx_bytes_played,
            tx_silence_bytes,
            tx_underruns,
            tx_messages,
            tx_bytes_dropped_on_release,
            tx_bytes_dropped_at_close,
            rx_bytes_copied,
            rx_overruns,
            rx_messages,
            bad_messages,
            io_errors,
            backend_xruns,
            control_requests,
        } = self;
        write!(
            f,
            "tx_bytes_copied={tx_bytes_copied} tx_bytes_played={tx_bytes_played} \
             tx_silence_bytes={tx_silence_bytes} tx_underruns={tx_underruns} \
             tx_messages={tx_messages} \
             tx_bytes_dropped_on_release={tx_bytes_dropped_on_release} \
             tx_bytes_dropped_at_close={tx_bytes_dropped_at_close} \
             rx_bytes_copied={rx_bytes_copied} \
             rx_overruns={rx_overruns} rx_messages={rx_messages} bad_messages={bad_messages} \
             io_errors={io_errors} backend_xruns={backend_xruns} \
             control_requests={control_requests}"
        )
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl SoundStats {
    pub fn snapshot(&self) -> SoundStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SoundStatsSnapshot {
            tx_bytes_copied: get(&self.tx_bytes_copied),
            tx_bytes_played: get(&self.tx_bytes_played),
            tx_silence_bytes: get(&self.tx_silence_bytes),
            tx_underruns: get(&self.tx_underruns),
            tx_messages: get(&self.tx_messages),
            tx_bytes_dropped_on_release: get(&self.tx_bytes_dropped_on_release),
            tx_bytes_dropped_at_close: get(&self.tx_bytes_dropped_at_close),
            rx_bytes_copied: get(&self.rx_bytes_copied),
            rx_overruns: get(&self.rx_overruns),
            rx_messages: get(&self.rx_messages),
            bad_messages: get(&self.bad_messages),
            io_errors: get(&self.io_errors),
            backend_xruns: get(&self.backend_xruns),
            control_requests: get(&self.control_requests),
        }
    }

    pub(crate) fn tx_copied(&self, n: u64) {
        add(&self.tx_bytes_copied, n)
    }
    pub(crate) fn tx_played(&self, n: u64) {
        add(&self.tx_bytes_played, n)
    }
    pub(crate) fn tx_silence(&self, n: u64) {
        add(&self.tx_silence_bytes, n)
    }
    pub(crate) fn tx_underrun(&self) {
        add(&self.tx_underruns, 1)
    }
    pub(crate) fn tx_dropped_on_release(&self, n: u64) {
        add(&self.tx_bytes_dropped_on_release, n)
    }
    pub fn tx_dropped_at_close(&self, n: u64) {
        add(&self.tx_bytes_dropped_at_close, n)
    }
    pub(crate) fn rx_copied(&self, n: u64) {
        add(&self.rx_bytes_copied, n)
    }
    pub(crate) fn rx_overrun(&self) {
        add(&self.rx_overruns, 1)
    }
    pub(crate) fn messages_completed(&self, queue: u16, n: u64) {
        if queue == super::wire::TXQ {
            add(&self.tx_messages, n)
        } else {
            add(&self.rx_messages, n)
        }
    }
    pub(crate) fn bad_message(&self) {
        add(&self.bad_messages, 1)
    }
    pub(crate) fn io_error(&self) {
        add(&self.io_errors, 1)
    }
    pub fn backend_xrun(&self) {
        add(&self.backend_xruns, 1)
    }
    pub(crate) fn control_request(&self) {
        add(&self.control_requests, 1)
    }
}
