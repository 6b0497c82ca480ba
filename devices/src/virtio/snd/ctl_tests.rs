//! Device-level tests of the audio controls (VIRTIO_SND_F_CTLS), the gain they apply, the event
//! queue and the jacks that follow the host device, through the fake driver ([`SoundRig`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};

use super::backend::null::NullBackend;
use super::backend::{Backend, BackendError, InputStream, OutputStream, PcmParams, Readiness};
use super::mixer::Gain;
use super::stats::SoundStats;
use super::waker::Waker;
use super::wire::*;
use super::*;
use crate::virtio::test_utils::sound::*;
use crate::virtio::VIRTIO_F_VERSION_1;

const CTLS: u64 = VIRTIO_F_VERSION_1 | (1 << F_CTLS);

fn ctl_request(code: u32, id: u32) -> Vec<u8> {
    let mut out = code.to_le_bytes().to_vec();
    out.extend(id.to_le_bytes());
    out
}

fn ctl_write(id: u32, value: i32) -> Vec<u8> {
    let mut out = ctl_request(R_CTL_WRITE, id);
    let mut union = [0u8; CTL_VALUE_SIZE];
    union[..4].copy_from_slice(&value.to_le_bytes());
    out.extend(union);
    out
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

/// Gives the device `n` 8-byte event buffers; returns their addresses by head.
fn post_event_buffers(h: &mut SoundRig, n: usize) -> Vec<(u16, u64)> {
    let buffers: Vec<(u16, u64)> = (0..n)
        .map(|_| {
            let addr = h.alloc(8);
            let head = h.queues[usize::from(EVENTQ)].add(&h.mem, &[(addr, 8u32, true)]);
            (head, addr)
        })
        .collect();
    h.kick(EVENTQ);
    buffers
}

/// Gives the device `n` 8-byte event buffers without a notification, as the Linux driver fills
/// the eventq at probe.
fn post_event_buffers_unkicked(h: &mut SoundRig, n: usize) -> Vec<(u16, u64)> {
    (0..n)
        .map(|_| {
            let addr = h.alloc(8);
            let head = h.queues[usize::from(EVENTQ)].add(&h.mem, &[(addr, 8u32, true)]);
            (head, addr)
        })
        .collect()
}

/// The next event the device sent, within `timeout`.
fn next_event(h: &mut SoundRig, buffers: &[(u16, u64)], timeout: Duration) -> Option<[u8; 8]> {
    let (head, len) = h.next_used(EVENTQ, timeout)?;
    assert_eq!(len, 8);
    let addr = buffers
        .iter()
        .find(|(h, _)| *h == head)
        .expect("one of ours")
        .1;
    let mut event = [0u8; 8];
    h.mem.read_slice(&mut event, GuestAddress(addr)).unwrap();
    Some(event)
}

#[test]
fn control_requests_need_the_feature() {
    let mut h = SoundRig::new(null_config());
    assert_eq!(h.control(&query(R_CTL_INFO, 0, 1, 96)), S_NOT_SUPP);
    for code in [
        R_CTL_ENUM_ITEMS,
        R_CTL_READ,
        R_CTL_TLV_READ,
        R_CTL_TLV_WRITE,
        R_CTL_TLV_COMMAND,
    ] {
        assert_eq!(h.control(&ctl_request(code, 0)), S_NOT_SUPP, "{code:#x}");
    }
    assert_eq!(h.control(&ctl_write(0, 50)), S_NOT_SUPP);
    // Short ones too: an unknown code, not a malformed request.
    assert_eq!(h.control(&[0x00, 0x03, 0, 0, 0, 0, 0, 0]), S_NOT_SUPP);
    assert_eq!(h.control(&R_CTL_READ.to_le_bytes()), S_NOT_SUPP);
    assert_eq!(h.sound.controls().read(0), Some(100), "nothing changed");
}

#[test]
fn every_control_request_and_malformed_variant_gets_its_status() {
    let mut h = SoundRig::with_features(null_config(), CTLS);
    // 1 output and 1 input stream: four controls.
    let (len, reply) = h.control_with(&query(R_CTL_INFO, 0, 4, 96), 4 + 4 * 96);
    assert_eq!((len, le32(&reply, 0)), (4 + 4 * 96, S_OK));
    let name = |i: usize| {
        let raw = &reply[4 + i * 96 + 24..4 + i * 96 + 68];
        let end = raw.iter().position(|b| *b == 0).unwrap();
        String::from_utf8(raw[..end].to_vec()).unwrap()
    };
    assert_eq!(name(0), "PCM Playback Volume");
    assert_eq!(name(1), "PCM Playback Switch");
    assert_eq!(name(2), "Capture Volume");
    assert_eq!(name(3), "Capture Switch");
    assert_eq!(le32(&reply, 4 + 4), CTL_ROLE_VOLUME);
    assert_eq!(le32(&reply, 4 + 96 + 4), CTL_ROLE_MUTE);
    // A larger item size is zero-padded; out of range, too small, or no room: BAD_MSG.
    let (len, reply) = h.control_with(&query(R_CTL_INFO, 1, 1, 128), 4 + 128);
    assert_eq!((len, le32(&reply, 0)), (4 + 128, S_OK));
    assert!(reply[4 + 96..].iter().all(|b| *b == 0));
    assert_eq!(h.control(&query(R_CTL_INFO, 0, 5, 96)), S_BAD_MSG);
    assert_eq!(h.control(&query(R_CTL_INFO, 0, 1, 92)), S_BAD_MSG);
    let (len, reply) = h.control_with(&query(R_CTL_INFO, 0, 2, 96), 4 + 96);
    assert_eq!((len, le32(&reply, 0)), (4, S_BAD_MSG));
    assert_eq!(h.control(&query(R_CTL_INFO, 0, 1, 96)[..12]), S_BAD_MSG);

    // CTL_READ: the header and the 512-byte value.
    let (len, reply) = h.control_with(&ctl_request(R_CTL_READ, 0), 4 + 512);
    assert_eq!((len, le32(&reply, 0), le32(&reply, 4)), (516, S_OK, 100));
    assert!(reply[8..].iter().all(|b| *b == 0));
    assert_eq!(
        h.control(&ctl_request(R_CTL_READ, 0)),
        S_BAD_MSG,
        "no room for the value"
    );
    let (len, reply) = h.control_with(&ctl_request(R_CTL_READ, 4), 4 + 512);
    assert_eq!((len, le32(&reply, 0)), (4, S_BAD_MSG));
    assert_eq!(h.control(&ctl_request(R_CTL_READ, 0)[..6]), S_BAD_MSG);

    // CTL_WRITE: in range, out of range, not a boolean, no such control, short.
    assert_eq!(h.control(&ctl_write(0, 88)), S_OK);
    assert_eq!(h.sound.controls().read(0), Some(88));
    assert_eq!(h.control(&ctl_write(0, 113)), S_BAD_MSG);
    assert_eq!(h.control(&ctl_write(0, -1)), S_BAD_MSG);
    assert_eq!(h.control(&ctl_write(1, 2)), S_BAD_MSG);
    assert_eq!(h.control(&ctl_write(4, 0)), S_BAD_MSG);
    assert_eq!(h.control(&ctl_write(u32::MAX, 0)), S_BAD_MSG);
    assert_eq!(h.control(&ctl_write(0, 50)[..519]), S_BAD_MSG);
    assert_eq!(h.control(&ctl_request(R_CTL_WRITE, 0)), S_BAD_MSG);
    assert_eq!(
        h.sound.controls().read(0),
        Some(88),
        "refused writes change nothing"
    );
    assert_eq!(h.control(&ctl_write(3, 0)), S_OK);
    assert_eq!(h.sound.controls().read(3), Some(0));

    // TLV: the volume's dB scale after the header; none on switches; no writes or commands.
    let (len, reply) = h.control_with(&ctl_request(R_CTL_TLV_READ, 2), 4 + 256);
    assert_eq!((len, le32(&reply, 0)), (4 + 16, S_OK));
    assert_eq!(
        (
            le32(&reply, 4),
            le32(&reply, 8),
            le32(&reply, 12) as i32,
            le32(&reply, 16)
        ),
        (1, 8, -5000, 50)
    );
    let (len, reply) = h.control_with(&ctl_request(R_CTL_TLV_READ, 0), 4 + 8);
    assert_eq!(
        (len, le32(&reply, 0)),
        (4, S_BAD_MSG),
        "no room for the TLV"
    );
    assert_eq!(h.control(&ctl_request(R_CTL_TLV_READ, 1)), S_NOT_SUPP);
    assert_eq!(h.control(&ctl_request(R_CTL_TLV_READ, 4)), S_BAD_MSG);
    for code in [R_CTL_TLV_WRITE, R_CTL_TLV_COMMAND] {
        let mut request = ctl_request(code, 0);
        request.extend([0u8; 16]);
        assert_eq!(h.control(&request), S_NOT_SUPP, "{code:#x}");
        assert_eq!(h.control(&ctl_request(code, 9)), S_BAD_MSG, "{code:#x}");
    }
    // ENUM_ITEMS: no control is ENUMERATED.
    assert_eq!(h.control(&ctl_request(R_CTL_ENUM_ITEMS, 0)), S_BAD_MSG);
    assert_eq!(h.control(&ctl_request(R_CTL_ENUM_ITEMS, 7)), S_BAD_MSG);
    // Unknown codes next to them.
    assert_eq!(h.control(&ctl_request(0x0307, 0)), S_NOT_SUPP);

    // The device goes on working.
    h.prepare(fast_params(0));
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    let sent = h.tx(0, &pattern(fast_params(0).period_bytes as usize, 1));
    h.wait_used(TXQ, 1, Duration::from_secs(10));
    assert_eq!(h.status_of(&sent).0, S_OK);
}

#[test]
fn every_change_is_notified_the_guests_own_before_its_reply() {
    let mut h = SoundRig::with_features(null_config(), CTLS);
    let buffers = post_event_buffers(&mut h, 4);
    // The guest's write that changes the value: CTL_NOTIFY, already used when the reply is
    // (Linux's put callback sends no event of its own; mixer-test wants it by the write's end).
    assert_eq!(h.control(&ctl_write(0, 90)), S_OK);
    let event = next_event(&mut h, &buffers, Duration::ZERO).expect("CTL_NOTIFY before the reply");
    assert_eq!(event, ctl_event(0, CTL_EVT_MASK_VALUE));
    // The same value again: no change, no event.
    assert_eq!(h.control(&ctl_write(0, 90)), S_OK);
    assert!(next_event(&mut h, &buffers, Duration::from_millis(50)).is_none());
    // The host's: CTL_NOTIFY, control 1, mask VALUE.
    assert_eq!(h.sound.set_control(1, 0), Some(true));
    let event = next_event(&mut h, &buffers, Duration::from_secs(1)).expect("CTL_NOTIFY");
    assert_eq!(event, ctl_event(1, CTL_EVT_MASK_VALUE));
    assert_eq!(le32(&event, 0), EVT_CTL_NOTIFY);
    // No change, no event; a bad value, refused.
    assert_eq!(h.sound.set_control(1, 0), Some(false));
    assert_eq!(h.sound.set_control(0, 500), None);
    assert!(next_event(&mut h, &buffers, Duration::from_millis(50)).is_none());
    let (_, reply) = h.control_with(&ctl_request(R_CTL_READ, 1), 516);
    assert_eq!(le32(&reply, 4), 0, "the guest reads the host's value");

    // With no buffer held, events wait, coalesced, and go out when the driver gives one.
    let mut h = SoundRig::with_features(null_config(), CTLS);
    assert_eq!(h.sound.set_control(0, 10), Some(true));
    assert_eq!(h.sound.set_control(0, 20), Some(true));
    assert_eq!(h.sound.set_control(2, 30), Some(true));
    let buffers = post_event_buffers(&mut h, 4);
    let first = next_event(&mut h, &buffers, Duration::from_secs(1)).unwrap();
    let second = next_event(&mut h, &buffers, Duration::from_secs(1)).unwrap();
    assert_eq!(first, ctl_event(0, CTL_EVT_MASK_VALUE));
    assert_eq!(second, ctl_event(2, CTL_EVT_MASK_VALUE));
    assert!(next_event(&mut h, &buffers, Duration::from_millis(50)).is_none());
    // An event buffer too small for an event comes back empty.
    let addr = h.alloc(4);
    h.queues[usize::from(EVENTQ)].add(&h.mem, &[(addr, 4u32, true)]);
    h.kick(EVENTQ);
    assert_eq!(
        h.next_used(EVENTQ, Duration::from_secs(1)).map(|u| u.1),
        Some(0)
    );
}

struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Plays `periods` periods of `data` through stream 0 (S16 mono 8 kHz, 160-byte periods) and
/// returns when all came back.
fn play(h: &mut SoundRig, data: &[u8]) {
    for chunk in data.chunks(160) {
        h.tx(0, chunk);
    }
    h.wait_used(TXQ, data.len().div_ceil(160), Duration::from_secs(20));
}

#[test]
fn the_gain_is_applied_in_the_copy_and_mute_is_silence() {
    let file = TempFile(
        std::env::temp_dir().join(format!("canto-snd-ctl-{}-gain.wav", std::process::id())),
    );
    let config = SoundConfig {
        backend: BackendConfig::Wav {
            path: file.0.clone(),
        },
        ..null_config()
    };
    let mut h = SoundRig::with_features(config, CTLS);
    let params = SetParams {
        stream_id: 0,
        buffer_bytes: 640,
        period_bytes: 160,
        features: 0,
        channels: 1,
        format: PcmFormat::S16.code(),
        rate: rate_code(8000).unwrap(),
    };
    h.prepare(params);
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    // Loud samples, so that +6 dB clips.
    let loud: Vec<u8> = (0..320i32)
        .flat_map(|i| ((i * 997) % 60000 - 30000).to_le_bytes()[..2].to_vec())
        .collect();
    // Unity: bit-exact.
    play(&mut h, &loud);
    let mut expected = loud.clone();
    // -6 dB (volume 88), then +6 dB (112, clipping), then muted.
    for volume in [88, 112] {
        assert_eq!(h.control(&ctl_write(0, volume)), S_OK);
        play(&mut h, &loud);
        let mut scaled = vec![0u8; loud.len()];
        Gain::new(volume, true).apply(PcmFormat::S16, &loud, &mut scaled);
        expected.extend(scaled);
    }
    assert_eq!(h.control(&ctl_write(1, 0)), S_OK);
    play(&mut h, &loud);
    expected.extend(vec![0u8; loud.len()]);
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    let bytes = std::fs::read(&file.0).unwrap();
    let data = &bytes[bytes.len() - expected.len()..];
    assert!(
        data == expected.as_slice(),
        "the WAV holds the input scaled"
    );
    // +6 dB clipped somewhere.
    assert!(expected[2 * loud.len()..3 * loud.len()]
        .chunks(2)
        .any(|s| i16::from_le_bytes([s[0], s[1]]) == i16::MAX));
    let stats = h.sound.stats();
    // Muted bytes count as consumed (their silence was played), once each.
    assert_eq!(stats.tx_bytes_copied, 4 * loud.len() as u64);
    assert_eq!(stats.tx_bytes_played, stats.tx_bytes_copied);
}

/// A null backend whose host device can go away: while `up` is false it cannot be opened,
/// and a stream that fails once stays broken (as an ALSA PCM whose server died).
struct FlakyBackend {
    up: Arc<AtomicBool>,
    probes: Arc<AtomicUsize>,
}

struct FlakyOutput {
    inner: Box<dyn OutputStream>,
    up: Arc<AtomicBool>,
    broken: bool,
}

impl Backend for FlakyBackend {
    fn name(&self) -> &'static str {
        "flaky"
    }

    fn formats(&self) -> u64 {
        NullBackend.formats()
    }

    fn open_output(
        &self,
        stream_id: u32,
        params: &PcmParams,
        stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn OutputStream>, BackendError> {
        if !self.up.load(Ordering::SeqCst) {
            return Err(BackendError::Stalled(Duration::ZERO));
        }
        Ok(Box::new(FlakyOutput {
            inner: NullBackend.open_output(stream_id, params, stats)?,
            up: self.up.clone(),
            broken: false,
        }))
    }

    fn open_input(
        &self,
        stream_id: u32,
        params: &PcmParams,
        stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn InputStream>, BackendError> {
        NullBackend.open_input(stream_id, params, stats)
    }

    fn device_available(&self, _direction: Direction) -> bool {
        self.probes.fetch_add(1, Ordering::SeqCst);
        self.up.load(Ordering::SeqCst)
    }
}

impl OutputStream for FlakyOutput {
    fn start(&mut self) -> Result<(), BackendError> {
        self.inner.start()
    }
    fn stop(&mut self) -> Result<(), BackendError> {
        self.inner.stop()
    }
    fn wait_ready(&mut self, waker: &Waker) -> Result<Readiness, BackendError> {
        self.inner.wait_ready(waker)
    }
    fn period_buffer(&mut self) -> &mut [u8] {
        self.inner.period_buffer()
    }
    fn play_period(&mut self, filled: usize) -> Result<usize, BackendError> {
        self.broken |= !self.up.load(Ordering::SeqCst);
        if self.broken {
            return Err(BackendError::Stalled(Duration::ZERO));
        }
        self.inner.play_period(filled)
    }
    fn flush_bytes(&mut self, len: usize, deadline: Instant) -> Result<usize, BackendError> {
        self.inner.flush_bytes(len, deadline)
    }
    fn latency_bytes(&mut self) -> u32 {
        self.inner.latency_bytes()
    }
    fn finish(&mut self) -> Result<(), BackendError> {
        self.inner.finish()
    }
    fn close(self: Box<Self>, drain: Option<&Waker>) {
        self.inner.close(drain)
    }
}

fn jack_connected_in_jack_info(h: &mut SoundRig, jack: u32) -> bool {
    let (len, reply) = h.control_with(&query(R_JACK_INFO, jack, 1, 24), 28);
    assert_eq!((len, le32(&reply, 0)), (28, S_OK));
    reply[4 + 16] == 1
}

#[test]
fn jacks_follow_the_host_device_through_failure_and_recovery() {
    let up = Arc::new(AtomicBool::new(true));
    let probes = Arc::new(AtomicUsize::new(0));
    let backend = Arc::new(FlakyBackend {
        up: up.clone(),
        probes: probes.clone(),
    });
    let sound = Sound::with_backend(null_config(), backend).unwrap();
    let mut h = SoundRig::activate(sound, CTLS);
    let buffers = post_event_buffers(&mut h, 8);
    assert!(jack_connected_in_jack_info(&mut h, 0));
    assert!(jack_connected_in_jack_info(&mut h, 1));
    h.prepare(fast_params(0));
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    let period = fast_params(0).period_bytes as usize;
    for i in 0..4 {
        h.tx(0, &pattern(period, i));
    }
    h.wait_used(TXQ, 4, Duration::from_secs(10));
    assert!(next_event(&mut h, &buffers, Duration::from_millis(50)).is_none());

    // The host device fails: the next period fails, the jack is disconnected.
    up.store(false, Ordering::SeqCst);
    let probes_before = probes.load(Ordering::SeqCst);
    let down_at = Instant::now();
    for i in 0..4 {
        h.tx(0, &pattern(period, i));
    }
    let event = next_event(&mut h, &buffers, Duration::from_secs(10)).expect("a jack event");
    assert_eq!(event, event_bytes(EVT_JACK_DISCONNECTED, 0));
    assert!(!jack_connected_in_jack_info(&mut h, 0));
    assert!(
        jack_connected_in_jack_info(&mut h, 1),
        "the other stream's jack is fine"
    );
    assert!(!h.sound.jack_connected(0));
    // A PREPARE while it is gone fails, and says so again without a second event.
    h.wait_used(TXQ, 4, Duration::from_secs(10));
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_IO_ERR);
    std::thread::sleep(Duration::from_millis(2500));
    let probes_down = probes.load(Ordering::SeqCst) - probes_before;
    let elapsed = down_at.elapsed().as_secs_f64();
    // About once a second while down, never spinning (a wide margin).
    assert!(probes_down >= 1, "the watcher looked");
    assert!(
        (probes_down as f64) <= elapsed * 2.0 + 2.0,
        "{probes_down} probes in {elapsed:.1} s"
    );
    assert!(next_event(&mut h, &buffers, Duration::from_millis(10)).is_none());

    // The device is back: the watcher finds it within a couple of seconds.
    up.store(true, Ordering::SeqCst);
    let event = next_event(&mut h, &buffers, Duration::from_secs(10)).expect("a jack event");
    assert_eq!(event, event_bytes(EVT_JACK_CONNECTED, 0));
    assert!(jack_connected_in_jack_info(&mut h, 0));
    // And the guest plays again after preparing.
    assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    let sent = h.tx(0, &pattern(period, 9));
    h.wait_used(TXQ, 1, Duration::from_secs(10));
    assert_eq!(h.status_of(&sent).0, S_OK);
    assert!(next_event(&mut h, &buffers, Duration::from_millis(50)).is_none());
}

fn event_bytes(code: u32, data: u32) -> [u8; 8] {
    event(code, data)
}

/// The Linux driver never kicks the eventq at probe: its buffers must be found anyway.
#[test]
fn event_buffers_the_driver_never_notified_are_used() {
    let mut h = SoundRig::with_features(null_config(), CTLS);
    let buffers = post_event_buffers_unkicked(&mut h, 2);
    assert_eq!(h.sound.set_control(0, 50), Some(true));
    let event = next_event(&mut h, &buffers, Duration::from_secs(1)).expect("CTL_NOTIFY");
    assert_eq!(event, ctl_event(0, CTL_EVT_MASK_VALUE));
}

#[test]
fn a_jack_whose_device_cannot_be_opened_at_start_is_disconnected() {
    let up = Arc::new(AtomicBool::new(false));
    let backend = Arc::new(FlakyBackend {
        up: up.clone(),
        probes: Arc::new(AtomicUsize::new(0)),
    });
    let sound = Sound::with_backend(null_config(), backend).unwrap();
    let mut h = SoundRig::activate(sound, CTLS);
    assert!(!jack_connected_in_jack_info(&mut h, 0));
    let buffers = post_event_buffers(&mut h, 2);
    up.store(true, Ordering::SeqCst);
    let event = next_event(&mut h, &buffers, Duration::from_secs(10)).expect("a jack event");
    assert_eq!(event, event_bytes(EVT_JACK_CONNECTED, 0));
}
