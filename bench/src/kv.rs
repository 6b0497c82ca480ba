//! `key=value` words, the form the VMM's `sound stats:` line and the driver-guest's `DG RTT` line
//! print their figures in.

use std::str::FromStr;

/// The `key=value` words of `text`, in order; words without `=` (the log prefix, the message's
/// first words) are skipped.
pub fn pairs(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split_whitespace()
        .filter_map(|word| word.split_once('='))
}

/// The value of the first `key=` word in `text`, parsed; `None` when it is missing or does not
/// parse.
pub fn get<T: FromStr>(text: &str, key: &str) -> Option<T> {
    pairs(text)
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use canto_devices::virtio::snd::SoundStatsSnapshot;

    use super::*;

    #[test]
    fn reads_the_vmm_stats_line() {
        let line = "[2026-11-24T10:00:00.000Z INFO  vmm] sound stats: tx_bytes_copied=384000 \
                    tx_bytes_played=384000 tx_silence_bytes=0 tx_underruns=2 tx_messages=50";
        assert_eq!(get(line, "tx_bytes_copied"), Some(384000u64));
        assert_eq!(get(line, "tx_underruns"), Some(2u64));
        assert_eq!(get(line, "tx_messages"), Some(50u64));
        assert_eq!(get::<u64>(line, "rx_overruns"), None);
        // A key is a whole word's prefix up to `=`, not any substring.
        assert_eq!(get::<u64>(line, "bytes_copied"), None);
        assert_eq!(
            get::<u64>("sound stats: tx_messages=lots", "tx_messages"),
            None
        );
    }

    #[test]
    fn reads_every_counter_the_device_prints() {
        let snapshot = SoundStatsSnapshot {
            tx_bytes_copied: 384_000,
            tx_bytes_played: 383_040,
            tx_silence_bytes: 3,
            tx_underruns: 4,
            tx_messages: 50,
            control_requests: 12,
            ..SoundStatsSnapshot::default()
        };
        let line = format!("[2026-11-24T10:00:00.000Z INFO  vmm::devices] sound stats: {snapshot}");
        for (key, value) in [
            ("tx_bytes_copied", 384_000u64),
            ("tx_bytes_played", 383_040),
            ("tx_silence_bytes", 3),
            ("tx_underruns", 4),
            ("tx_messages", 50),
            ("control_requests", 12),
            ("rx_overruns", 0),
        ] {
            assert_eq!(get(&line, key), Some(value), "{key} in {line}");
        }
        // Every field, in field order: the same names and values as the derived Debug form.
        let debug = format!("{snapshot:?}");
        let fields = debug
            .split_once('{')
            .expect("a struct")
            .1
            .trim_end_matches('}')
            .split(',')
            .map(|f| f.split_once(':').expect("name: value"))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()));
        let printed = pairs(&line).map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(printed.collect::<Vec<_>>(), fields.collect::<Vec<_>>());
    }

    #[test]
    fn reads_the_driver_guest_rtt_line() {
        let line = "DG RTT n=1000 median_cycles=52311 total_cycles=61234567";
        assert_eq!(get(line, "median_cycles"), Some(52311.0f64));
        assert_eq!(get(line, "n"), Some(1000u32));
        assert_eq!(get::<f64>(line, "median_ns"), None);
    }
}
