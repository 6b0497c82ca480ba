//! Micro-benchmarks of the virtio-snd device through its public API (`make bench` runs them with
//! `cargo bench -p canto-bench --bench micro`; the harness reads the medians back from
//! target/criterion).
//!
//! - `control/*`: one control request, from the driver's kick to the reply in the used ring,
//!   through the device's event-loop subscriber run inline (an eventfd write, an epoll_wait, the
//!   request's decoding and execution, the used ring, the interrupt).
//! - `parse/set_params_decode`: the wire decoder alone.
//! - `tx/period_1920B`: the TX path's cost per 10 ms period (1920 B of S16 stereo 48 kHz) with
//!   an unpaced backend, amortized over many periods in flight: the period thread's copy and
//!   completion, the event loop's taking of the message, the fake driver's re-send.
//! - `tx/memcpy_1920B`: copying the same 1920 B, for scale.
//! - `gain/*`: the cost of the volume control per period: one 1920 B period copied through
//!   `Gain::copy_into` (what the period thread does, from a source slice standing for guest
//!   RAM) at unity (the plain copy), at -6 dB in S16 and FLOAT, and muted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use canto_bench::backends::UnpacedBackend;
use canto_bench::device::{stereo_48k, Device, LoopMode};
use canto_devices::virtio::snd::backend::null::NullBackend;
use canto_devices::virtio::snd::mixer::Gain;
use canto_devices::virtio::snd::wire::{PcmFormat, SetParams, S_OK, TXQ};
use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;

fn control(c: &mut Criterion) {
    let mut group = c.benchmark_group("control");
    let mut dev = Device::new(Arc::new(NullBackend), LoopMode::Inline);
    assert_eq!(dev.pcm_info(1), S_OK);
    group.bench_function("pcm_info", |b| b.iter(|| black_box(dev.pcm_info(1))));
    let params = stereo_48k(480, 4);
    assert_eq!(dev.set_params(&params), S_OK);
    group.bench_function("set_params", |b| {
        b.iter(|| black_box(dev.set_params(black_box(&params))))
    });
    group.finish();
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    let bytes = stereo_48k(480, 4).encode();
    group.bench_function("set_params_decode", |b| {
        b.iter(|| SetParams::decode(black_box(&bytes)))
    });
    group.finish();
}

fn tx(c: &mut Criterion) {
    let mut group = c.benchmark_group("tx");
    let period_bytes = 1920u32;
    let slots = 64;
    let mut dev = Device::new(Arc::new(UnpacedBackend), LoopMode::Thread);
    dev.prepare(&stereo_48k(period_bytes / 4, slots as u32 / 2), slots);
    for slot in 0..slots {
        dev.send_tx(slot, slot as u64);
    }
    dev.kick(TXQ);
    dev.start(0);
    let mut done = Vec::new();
    group.bench_function("period_1920B", |b| {
        b.iter_custom(|iters| {
            let target = dev.stats().tx_bytes_played + iters * u64::from(period_bytes);
            let t0 = Instant::now();
            while dev.stats().tx_bytes_played < target {
                let seen = dev.irq.count(TXQ);
                done.clear();
                dev.reap_tx(&mut done);
                if done.is_empty() {
                    dev.irq.wait_beyond(TXQ, seen, Duration::from_millis(5));
                    continue;
                }
                for &(slot, _) in &done {
                    dev.send_tx(slot, slot as u64);
                }
                dev.kick(TXQ);
            }
            t0.elapsed()
        })
    });
    let len = period_bytes as usize;
    let source: Vec<u8> = (0..len * slots).map(|i| i as u8).collect();
    let mut dest = vec![0u8; len];
    let mut i = 0;
    group.bench_function("memcpy_1920B", |b| {
        b.iter(|| {
            dest.copy_from_slice(black_box(&source[i * len..(i + 1) * len]));
            i = (i + 1) % slots;
            black_box(&mut dest);
        })
    });
    group.finish();
    dev.stop_release(0);
}

fn gain(c: &mut Criterion) {
    let mut group = c.benchmark_group("gain");
    let len = 1920usize;
    let source: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
    let mut period = vec![0u8; len];
    let cases = [
        ("unity_s16_1920B", Gain::new(100, true), PcmFormat::S16),
        ("minus6db_s16_1920B", Gain::new(88, true), PcmFormat::S16),
        (
            "minus6db_float_1920B",
            Gain::new(88, true),
            PcmFormat::Float,
        ),
        ("mute_s16_1920B", Gain::new(100, false), PcmFormat::S16),
    ];
    for (name, gain, format) in cases {
        group.bench_function(name, |b| {
            b.iter(|| {
                let read = |at: usize, dst: &mut [u8]| {
                    dst.copy_from_slice(&black_box(&source)[at..at + dst.len()]);
                    Ok::<(), ()>(())
                };
                let _ = gain.copy_into(format, &mut period, 0, len, read);
                black_box(&mut period);
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = control, parse, tx, gain
}
criterion_main!(benches);
