//! The unit-level harness itself: it must move every byte, in order, through the real device.
//! Nothing here depends on timing beyond generous timeouts.

use std::time::Duration;

use canto_bench::audio;

#[test]
fn a_steady_playback_moves_every_byte_once_and_in_order() {
    // 1 ms periods for 0.4 s: ~400 messages, so the 256-entry rings wrap.
    let r = audio::steady_playback(48, 4, 0.4, 0.0);
    assert_eq!(r.bad_status, 0);
    assert!(r.records.len() > 256, "{} periods", r.records.len());
    assert_eq!(r.stats.tx_bytes_copied, r.stats.tx_bytes_played);
    assert_eq!(r.stats.bad_messages, 0);
    let tags: Vec<u64> = r.records.iter().filter_map(|p| p.tag).collect();
    assert!(
        tags.windows(2).all(|w| w[1] == w[0] + 1),
        "tags out of order"
    );
    // Everything the backend received in periods came from the driver; RELEASE flushes the rest.
    assert!(r.pcm_bytes_received <= r.pcm_bytes_sent);
    assert!(r.stats.tx_bytes_played >= r.pcm_bytes_received);
}

#[test]
fn every_just_in_time_message_is_seen_by_the_backend() {
    let r = audio::latency_just_in_time(48, 30, 1);
    assert_eq!(r.missing, 0);
    assert_eq!(r.latencies_periods.len(), 29);
    assert!(r.latencies_periods.iter().all(|l| *l > 0.0));
}

#[test]
fn the_unpaced_path_moves_data() {
    assert!(audio::unpaced_throughput(1920, Duration::from_millis(50)) > 0.0);
    assert!(audio::memcpy_throughput(1920, Duration::from_millis(10)) > 0.0);
}
