//! Host faults: what the device does when the host side of a stream breaks while the guest plays
//! (docs/virtio-snd.md, "Host faults"). The fake driver of `virtio::test_utils` drives the device
//! through split queues in fake guest memory, as in `tests.rs`; each test checks the status the
//! guest reads back from its memory AND that the device still plays afterwards.
//!
//! The ALSA tests start their own headless PulseAudio (the flags of `resources/with-pulse.sh`)
//! so they can kill and restart it. PULSE_SERVER is process-wide, so each such test runs its body
//! in a child process of this test binary with that environment (see [`pulse_child`]); they skip
//! with a printed reason when `pulseaudio` is missing, except with `CI=true`.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::backend::Backend;
use super::backend::{
    alsa::AlsaBackend, null, BackendError, InputStream, OutputStream, PcmParams, Readiness,
};
use super::stats::SoundStats;
use super::stream::PcmState;
use super::waker::Waker;
use super::wire::*;
use super::*;
use crate::virtio::test_utils::sound::{
    fast_params, null_config, pattern, Captured, Recorder, Sent, SoundRig, STALE,
};
use crate::virtio::test_utils::{prerequisite, HookedBackend, PulseServer};

/// A TX message in flight and the PCM it carries.
struct Message {
    sent: Sent,
    data: Vec<u8>,
}

/// Plays like the Linux driver: keeps `depth` one-period messages in flight, queueing one each
/// time one comes back (in order, on one stream), and panics if one takes longer than the
/// patience it is given: no wait is unbounded.
struct Player {
    stream: u32,
    period_bytes: usize,
    depth: usize,
    in_flight: std::collections::VecDeque<Message>,
    seed: u8,
}

impl Player {
    fn new(stream: u32, period_bytes: u32, depth: usize) -> Player {
        Player {
            stream,
            period_bytes: period_bytes as usize,
            depth,
            in_flight: Default::default(),
            seed: 0,
        }
    }

    /// Sets stream 0 up for 10 ms periods, prepares it, queues four periods and starts it.
    #[track_caller]
    fn start(h: &mut SoundRig) -> Player {
        assert_eq!(h.set_params(params_10ms(0)), S_OK);
        assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_OK);
        let mut player = Player::new(0, 1920, 4);
        player.fill(h);
        assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
        player
    }

    /// STOP and RELEASE stream 0: RELEASE returns every message still in flight before its
    /// reply, each with `status`. Returns those messages.
    #[track_caller]
    fn release(&mut self, h: &mut SoundRig, status: u32) -> Vec<Message> {
        assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
        assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
        let mut messages = Vec::new();
        for (message, got) in self.drain(h, Duration::ZERO) {
            assert_eq!(got, status);
            messages.push(message);
        }
        messages
    }

    fn fill(&mut self, h: &mut SoundRig) {
        while self.in_flight.len() < self.depth {
            let data = pattern(self.period_bytes, self.seed);
            self.seed = self.seed.wrapping_add(1);
            let sent = h.tx(self.stream, &data);
            self.in_flight.push_back(Message { sent, data });
        }
    }

    /// Waits for the oldest message; returns it with its status.
    fn next(&mut self, h: &mut SoundRig, patience: Duration) -> (Message, u32) {
        let (head, _) = h.next_used(TXQ, patience).unwrap_or_else(|| {
            panic!(
                "no TX message came back within {patience:?} ({} in flight)",
                self.in_flight.len()
            )
        });
        let heads: Vec<u16> = self.in_flight.iter().map(|m| m.sent.head).collect();
        let message = self.in_flight.pop_front().expect("a message in flight");
        assert_eq!(
            head, message.sent.head,
            "TX messages came back out of order: in flight {heads:?}"
        );
        let (status, _) = h.status_of(&message.sent);
        (message, status)
    }

    /// Waits for `count` messages, refilling after each (so `depth` stay in flight); returns
    /// them with their statuses.
    fn play(&mut self, h: &mut SoundRig, count: usize, patience: Duration) -> Vec<(Message, u32)> {
        let mut out = Vec::new();
        self.fill(h);
        while out.len() < count {
            out.push(self.next(h, patience));
            self.fill(h);
        }
        out
    }

    /// Waits for every message still in flight.
    fn drain(&mut self, h: &mut SoundRig, patience: Duration) -> Vec<(Message, u32)> {
        let mut out = Vec::new();
        while !self.in_flight.is_empty() {
            out.push(self.next(h, patience));
        }
        out
    }
}

/// S16 stereo at 48 kHz, 10 ms periods (1920 bytes), four per buffer.
fn params_10ms(stream_id: u32) -> SetParams {
    SetParams {
        buffer_bytes: 1920 * 4,
        period_bytes: 1920,
        ..fast_params(stream_id)
    }
}

fn config(backend: BackendConfig) -> SoundConfig {
    null_config().with_backend(backend)
}

/// An empty directory `canto-fault-<pid>-<name>` under the system's temporary directory (what
/// was there before is removed); the caller removes it.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("canto-fault-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    dir
}

// ----- a private PulseAudio server -----

/// Set in the child process that runs a test's body: the private directory of its server.
const CHILD_DIR_ENV: &str = "CANTO_FAULT_PULSE_DIR";
/// How long a child may run before the parent kills it.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

/// In the test process: runs the test `name` (a test of this module) again in a child process
/// with a private PulseAudio directory and PULSE_SERVER pointing into it, checks that it passed,
/// and returns None. In that child: returns the directory; the test body goes on.
fn pulse_child(name: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        return Some(dir.into());
    }
    if !prerequisite(PulseServer::installed(), "`pulseaudio` is not installed") {
        return None;
    }
    // One child (and server) at a time: the tests are about timing, on few cores.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let dir = fresh_dir(name);
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // This module's path without the crate name is the test's path in the harness.
    let module = module_path!().split_once("::").unwrap().1;
    let test = format!("{module}::{name}");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([&test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, &dir)
        .envs(PulseServer::env_for(&dir))
        .env("HOME", &dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let readers = [
        reader(child.stdout.take().unwrap()),
        reader(child.stderr.take().unwrap()),
    ];
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > CHILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let [out, err] = readers.map(|r| r.join().unwrap_or_default());
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("--- child {test} ---\n{out}{err}--- end of child ---");
    let status = status.unwrap_or_else(|| panic!("{test} hung: killed after {CHILD_TIMEOUT:?}"));
    assert!(status.success(), "{test} failed in its child process");
    assert!(
        out.contains("1 passed"),
        "the child did not run exactly {test}"
    );
    None
}

fn reader(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

// ----- 1. the ALSA device disappears mid-stream -----

/// Plays `count` periods and checks each came back OK; returns how long they took.
fn play_ok(h: &mut SoundRig, player: &mut Player, count: usize) -> Duration {
    let start = Instant::now();
    for (i, (_, status)) in player.play(h, count, PATIENCE).into_iter().enumerate() {
        assert_eq!(status, S_OK, "message {i} of {count}");
    }
    start.elapsed()
}

/// How long any one message may take to come back, whatever happened to the host device.
const PATIENCE: Duration = Duration::from_secs(2);

/// Waits until messages come back with IO_ERR after the server was killed: a few queued before
/// may still come back OK (ALSA had taken their PCM), but within a second they fail, and from
/// then on every one does, at the period pace.
fn fails_at_the_period_pace(h: &mut SoundRig, player: &mut Player, what: &str) {
    let killed = Instant::now();
    let mut ok_after_kill = 0;
    loop {
        let (_, status) = player.next(h, PATIENCE);
        player.fill(h);
        if status == S_IO_ERR {
            break;
        }
        assert_eq!(status, S_OK, "{what}");
        ok_after_kill += 1;
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "{what}: messages still complete OK {:?} after the server died",
            killed.elapsed()
        );
    }
    eprintln!(
        "{what}: first IO_ERR after {:?} ({ok_after_kill} OK before it)",
        killed.elapsed()
    );
    // The failing stream keeps the guest's clock: 20 periods of 10 ms take about 200 ms.
    let start = Instant::now();
    for (i, (_, status)) in player.play(h, 20, PATIENCE).into_iter().enumerate() {
        assert_eq!(
            status, S_IO_ERR,
            "{what}: message {i} after the first failure"
        );
    }
    let elapsed = start.elapsed();
    eprintln!("{what}: 20 failed periods in {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(150),
        "{what}: failures come faster than the period pace: {elapsed:?}"
    );
}

/// The pulse PCM on a private server that is killed mid-stream (twice) and restarted: queued
/// messages fail with IO_ERR at the period pace, nothing hangs, the stream does not come back
/// by itself, and re-preparing it (as the Linux driver does after the XRUN an IO_ERR causes)
/// plays on the new server.
#[test]
fn alsa_device_disappears_mid_stream() {
    let Some(dir) = pulse_child("alsa_device_disappears_mid_stream") else {
        return;
    };
    let mut server = PulseServer::start_in(&dir);
    let mut h = SoundRig::new(config(BackendConfig::Alsa {
        device: "pulse".into(),
    }));
    let mut player = Player::start(&mut h);
    let elapsed = play_ok(&mut h, &mut player, 30);
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");

    // The server dies: the device notices and fails messages, and keeps running.
    server.kill();
    fails_at_the_period_pace(&mut h, &mut player, "first kill");
    assert_eq!(h.state(0), PcmState::Started);

    // A new server on the same socket: the old PCM stays broken, messages keep failing.
    server.restart();
    for (_, status) in player.play(&mut h, 20, PATIENCE) {
        assert_eq!(status, S_IO_ERR, "the stream came back by itself");
    }

    // The guest re-prepares the stream (the spec's sequence, with SET_PARAMS): each request
    // is answered OK, RELEASE returns the queued messages (failed) before its reply, and the
    // stream plays on the new server in real time.
    player.release(&mut h, S_IO_ERR);
    assert_eq!(h.set_params(params_10ms(0)), S_OK);
    assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_OK);
    player.fill(&mut h);
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    let elapsed = play_ok(&mut h, &mut player, 50);
    eprintln!("50 periods after re-preparing in {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(430),
        "not paced: {elapsed:?}"
    );

    // Again, recovering as the Linux driver does (STOP, RELEASE, PREPARE without SET_PARAMS,
    // START), first while the server is still gone: PREPARE fails at once and changes nothing.
    server.kill();
    fails_at_the_period_pace(&mut h, &mut player, "second kill");
    player.release(&mut h, S_IO_ERR);
    let start = Instant::now();
    assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_IO_ERR);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(h.state(0), PcmState::Released);
    server.restart();
    assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_OK);
    player.fill(&mut h);
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    let elapsed = play_ok(&mut h, &mut player, 30);
    assert!(
        elapsed >= Duration::from_millis(250),
        "not paced: {elapsed:?}"
    );

    player.release(&mut h, S_OK);
    let stats = h.sound.stats();
    eprintln!("{stats:?}");
    assert!(stats.io_errors >= 2 * 21 + 20, "{stats:?}");
    // A dead server is not an xrun: failed recoveries are not counted as recovered ones.
    assert!(stats.backend_xruns <= 2, "{stats:?}");
}

// ----- 2. an xrun on the host -----

/// Wraps a backend; its output streams' period thread stalls once, for `stall`, when it is about
/// to hand over period number `at` (counted from 0) to the real backend.
fn stalling_backend(inner: AlsaBackend, at: u64, stall: Duration) -> HookedBackend {
    HookedBackend::new(Arc::new(inner), move |period| {
        if period.index == at {
            std::thread::sleep(stall);
        }
    })
}

/// The period thread stalls for 500 ms while playing to the pulse PCM: ALSA underruns, the
/// device recovers (one xrun counted), and every message still completes OK, the stream going
/// on at the real-time pace.
#[test]
fn a_host_xrun_is_recovered_and_the_stream_continues() {
    let Some(dir) = pulse_child("a_host_xrun_is_recovered_and_the_stream_continues") else {
        return;
    };
    let _server = PulseServer::start_in(&dir);
    let backend = stalling_backend(
        AlsaBackend::new("pulse").unwrap(),
        30,
        Duration::from_millis(500),
    );
    let config = config(BackendConfig::Alsa {
        device: "pulse".into(),
    });
    let sound = Sound::with_backend(config, Arc::new(backend)).unwrap();
    let mut h = SoundRig::activate(sound, VIRTIO_F_VERSION_1);
    let mut player = Player::start(&mut h);
    play_ok(&mut h, &mut player, 20);
    let xruns_before = h.sound.stats().backend_xruns;
    // The stall comes with period 30.
    let stalled = play_ok(&mut h, &mut player, 30);
    let stats = h.sound.stats();
    eprintln!("30 periods with a 500 ms stall in {stalled:?}: {stats:?}");
    assert!(stalled >= Duration::from_millis(700), "{stalled:?}");
    assert!(
        stats.backend_xruns > xruns_before,
        "no xrun recovered: {stats:?}"
    );
    // The stream goes on in real time.
    let after = play_ok(&mut h, &mut player, 50);
    eprintln!("50 more periods in {after:?}");
    assert!(after >= Duration::from_millis(430), "not paced: {after:?}");
    player.release(&mut h, S_OK);
    let stats = h.sound.stats();
    eprintln!("{stats:?}");
    // Every message completed OK (checked one by one above).
    assert_eq!(stats.io_errors, 0, "{stats:?}");
}

/// The input stream's period thread stalls for 500 ms while it records from the pulse PCM (10 ms
/// periods, a 40 ms buffer): the host capture device overruns, the read fails with EPIPE, the
/// device recovers (prepare and start again, one xrun counted) and every RX message still comes
/// back full and OK, the stream going on at the real-time pace.
#[test]
fn a_host_capture_xrun_is_recovered_counted_and_capture_goes_on() {
    let Some(dir) = pulse_child("a_host_capture_xrun_is_recovered_counted_and_capture_goes_on")
    else {
        return;
    };
    let _server = PulseServer::start_in(&dir);
    let inner = HookedBackend::new(Arc::new(AlsaBackend::new("pulse").unwrap()), |_| {});
    let backend = inner.with_capture_hook(|_, period| {
        if period == 30 {
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let config = SoundConfig {
        capture: Some(CaptureConfig::Alsa {
            device: "pulse".into(),
        }),
        ..config(BackendConfig::Null)
    };
    let sound = Sound::with_backend(config, Arc::new(backend)).unwrap();
    let mut h = SoundRig::activate(sound, VIRTIO_F_VERSION_1);
    let params = SetParams {
        stream_id: 1,
        ..params_10ms(0)
    };
    assert_eq!(h.set_params(params), S_OK);
    assert_eq!(h.pcm(R_PCM_PREPARE, 1), S_OK);
    let mut recorder = Recorder::new(1, params.period_bytes, 4);
    recorder.fill(&mut h);
    assert_eq!(h.pcm(R_PCM_START, 1), S_OK);
    let patience = Duration::from_secs(3);
    let full_and_ok = |captured: &[Captured]| {
        for (i, message) in captured.iter().enumerate() {
            assert_eq!(message.status, S_OK, "message {i}");
            assert_eq!(message.used_len, 1920 + 8, "message {i} not full");
            assert!(
                !message.data.iter().all(|b| *b == STALE),
                "message {i} is stale"
            );
        }
    };
    full_and_ok(&recorder.record(&mut h, 20, patience));
    assert_eq!(h.sound.stats().backend_xruns, 0, "{:?}", h.sound.stats());
    // The stall comes with period 30.
    let before = Instant::now();
    full_and_ok(&recorder.record(&mut h, 30, patience));
    let stalled = before.elapsed();
    let stats = h.sound.stats();
    eprintln!("30 periods with a 500 ms stall in {stalled:?}: {stats:?}");
    assert!(stalled >= Duration::from_millis(500), "{stalled:?}");
    assert_eq!(
        stats.backend_xruns, 1,
        "one stall, one xrun recovered: {stats:?}"
    );
    // The stale audio the host buffered during the stall was dropped, not handed to the guest
    // as a burst faster than its buffers come back (which overruns it on the device).
    assert_eq!(stats.rx_overruns, 0, "{stats:?}");
    // The stream goes on in real time.
    let before = Instant::now();
    full_and_ok(&recorder.record(&mut h, 50, patience));
    let after = before.elapsed();
    eprintln!("50 more periods in {after:?}");
    assert!(after >= Duration::from_millis(430), "not paced: {after:?}");
    assert_eq!(h.pcm(R_PCM_STOP, 1), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 1), S_OK);
    recorder.forget();
    let stats = h.sound.stats();
    assert_eq!(stats.backend_xruns, 1, "{stats:?}");
    assert_eq!(stats.io_errors, 0, "{stats:?}");
}

// ----- 2b. a host device with no room at RELEASE -----

/// The null backend, except that its output streams take nothing during a RELEASE flush: each
/// `flush_bytes` waits for room until its deadline and gets none, like a paced device whose
/// buffer is full of seconds of audio.
fn no_room_on_flush_backend() -> Arc<dyn Backend> {
    Arc::new(
        HookedBackend::new(Arc::new(null::NullBackend), |_| {}).with_flush_hook(|_, deadline| {
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
            0
        }),
    )
}

/// RELEASE on a host device that takes nothing more: answered OK within the flush's time bound,
/// every message back with status OK, every byte counted as dropped, none as played or failed.
#[test]
fn a_release_the_host_device_has_no_room_for_is_answered_ok_in_time() {
    let sound = Sound::with_backend(null_config(), no_room_on_flush_backend()).unwrap();
    let mut h = SoundRig::activate(sound, VIRTIO_F_VERSION_1);
    let params = SetParams {
        period_bytes: 1920,
        buffer_bytes: 1920 * 8,
        ..fast_params(0)
    };
    h.prepare(params);
    // Twice the buffer: as much as the device holds for a stream.
    let sent: Vec<Sent> = (0..16).map(|i| h.tx(0, &pattern(1920, i))).collect();
    let start = Instant::now();
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    let elapsed = start.elapsed();
    assert!(elapsed >= period::RELEASE_FLUSH_TIME, "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "RELEASE took {elapsed:?}");
    let used = h.take_used(TXQ);
    assert_eq!(used.len(), sent.len(), "RELEASE must return every message");
    for message in &sent {
        assert_eq!(h.status_of(message).0, S_OK);
        assert!(
            used.contains(&(message.head, 8)),
            "{} missing",
            message.head
        );
    }
    let stats = h.sound.stats();
    assert_eq!(stats.tx_bytes_dropped_on_release, 16 * 1920, "{stats:?}");
    assert_eq!(stats.tx_bytes_played, 0, "{stats:?}");
    assert_eq!(stats.io_errors, 0, "{stats:?}");
    // The stream works again at once.
    assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
}

// ----- 2c. a host call that does not return (a hung sound server) -----

/// The null backend, except that one period's hand-over hangs for `hang` (a sound server that
/// stopped answering), deaf to the stream's waker.
struct HangingBackend {
    hang: Duration,
    /// Hang in `start` (the first START) instead of the third period.
    in_start: bool,
    /// Set when the hang begins, cleared when it ends.
    hanging: Arc<std::sync::atomic::AtomicBool>,
    /// Set when the hang has ended.
    returned: Arc<std::sync::atomic::AtomicBool>,
}

impl Backend for HangingBackend {
    fn name(&self) -> &'static str {
        "null"
    }

    fn formats(&self) -> u64 {
        null::NullBackend.formats()
    }

    fn open_output(
        &self,
        stream_id: u32,
        params: &PcmParams,
        stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn OutputStream>, BackendError> {
        Ok(Box::new(HangingOutput {
            inner: null::NullBackend.open_output(stream_id, params, stats)?,
            periods: 0,
            hang: self.hang,
            in_start: self.in_start,
            hanging: self.hanging.clone(),
            returned: self.returned.clone(),
        }))
    }

    fn open_input(
        &self,
        stream_id: u32,
        params: &PcmParams,
        stats: &Arc<SoundStats>,
    ) -> Result<Box<dyn InputStream>, BackendError> {
        null::NullBackend.open_input(stream_id, params, stats)
    }
}

struct HangingOutput {
    inner: Box<dyn OutputStream>,
    periods: u64,
    hang: Duration,
    in_start: bool,
    hanging: Arc<std::sync::atomic::AtomicBool>,
    returned: Arc<std::sync::atomic::AtomicBool>,
}

impl HangingOutput {
    fn hang_once(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.returned.load(SeqCst) {
            return;
        }
        self.hanging.store(true, SeqCst);
        std::thread::sleep(self.hang);
        self.hanging.store(false, SeqCst);
        self.returned.store(true, SeqCst);
    }
}

impl OutputStream for HangingOutput {
    fn start(&mut self) -> Result<(), BackendError> {
        if self.in_start {
            self.hang_once();
        }
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
        self.periods += 1;
        if self.periods == 3 && !self.in_start {
            self.hang_once();
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

/// A device reset while the period thread hangs in a host call (a sound server that stopped
/// answering) returns at once, not when the call does: a vCPU writing device_status = 0 never
/// waits for the host. The thread, once back, writes nothing into guest memory (its queue was
/// revoked) and is joined later.
#[test]
fn a_reset_does_not_wait_for_a_host_call_that_hangs() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let hanging = Arc::new(AtomicBool::new(false));
    let returned = Arc::new(AtomicBool::new(false));
    let backend = HangingBackend {
        hang: Duration::from_secs(3),
        in_start: false,
        hanging: hanging.clone(),
        returned: returned.clone(),
    };
    let sound = Sound::with_backend(null_config(), Arc::new(backend)).unwrap();
    let mut h = SoundRig::activate(sound, VIRTIO_F_VERSION_1);
    let params = SetParams {
        period_bytes: 1920,
        buffer_bytes: 1920 * 8,
        ..fast_params(0)
    };
    h.prepare(params);
    let sent: Vec<Sent> = (0..8).map(|i| h.tx(0, &pattern(1920, i))).collect();
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !hanging.load(SeqCst) {
        assert!(Instant::now() < deadline, "the backend never hung");
        std::thread::sleep(Duration::from_millis(1));
    }
    let used_before = h.queues[usize::from(TXQ)].used_idx(&h.mem);
    let start = Instant::now();
    h.sound.reset();
    let reset = start.elapsed();
    eprintln!("reset with a hung host call: {reset:?}");
    assert!(
        !returned.load(SeqCst),
        "the hang ended before the reset did"
    );
    assert!(reset < Duration::from_millis(1500), "reset took {reset:?}");
    assert_eq!(h.sound.stragglers.len(), 1);
    // The hang ends; the thread, back from it, must not touch the revoked queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !returned.load(SeqCst) {
        assert!(Instant::now() < deadline, "the hang never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.sound.stragglers.iter().any(|t| !t.is_finished()) {
        assert!(Instant::now() < deadline, "the straggler never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        h.queues[usize::from(TXQ)].used_idx(&h.mem),
        used_before,
        "a used-ring entry after the reset"
    );
    // Messages 0 and 1 went back before the hang; the one in the hung period and the later ones
    // stay the driver's, unwritten.
    for message in &sent[2..] {
        assert_eq!(h.status_of(message), (0xeeee_eeee, 0xeeee_eeee));
    }
    h.sound.reap_stragglers();
    assert!(h.sound.stragglers.is_empty());
}

/// SET_PARAMS on a prepared stream whose thread hangs in a host call (a START that timed out):
/// the event loop waits for the thread a bounded time, then goes on without it; the stream is
/// prepared again and plays on a new thread, its queued messages kept.
#[test]
fn set_params_does_not_wait_for_a_thread_that_hangs() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let hanging = Arc::new(AtomicBool::new(false));
    let returned = Arc::new(AtomicBool::new(false));
    let backend = HangingBackend {
        hang: Duration::from_secs(4),
        in_start: true,
        hanging: hanging.clone(),
        returned: returned.clone(),
    };
    let sound = Sound::with_backend(null_config(), Arc::new(backend)).unwrap();
    let mut h = SoundRig::activate(sound, VIRTIO_F_VERSION_1);
    let params = SetParams {
        period_bytes: 1920,
        buffer_bytes: 1920 * 8,
        ..fast_params(0)
    };
    h.prepare(params);
    let sent = h.tx(0, &pattern(1920, 1));
    // The thread hangs in the backend's start: START times out.
    assert_eq!(h.pcm(R_PCM_START, 0), S_IO_ERR);
    assert!(hanging.load(SeqCst));
    let start = Instant::now();
    assert_eq!(h.set_params(params), S_OK);
    let elapsed = start.elapsed();
    eprintln!("SET_PARAMS with a hung thread: {elapsed:?}");
    assert!(
        !returned.load(SeqCst),
        "the hang ended before SET_PARAMS did"
    );
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    // A new thread: the queued message plays (once the first hang is over, the backend's
    // start no longer hangs).
    assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !returned.load(SeqCst) {
        assert!(Instant::now() < deadline, "the hang never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    let used = h.wait_used(TXQ, 1, Duration::from_secs(5));
    assert_eq!(used, vec![(sent.head, 8)]);
    assert_eq!(h.status_of(&sent).0, S_OK);
    let start = Instant::now();
    h.sound.reset();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

// ----- 3. a WAV path that cannot be written -----

/// A private directory under the system's temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        TempDir(fresh_dir(name))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn wav_config(path: &Path, outputs: u32) -> SoundConfig {
    SoundConfig {
        outputs,
        ..config(BackendConfig::Wav { path: path.into() })
    }
}

/// Plays 9 periods on a fresh WAV device and reads the file back.
fn wav_plays(path: &Path) {
    let mut h = SoundRig::new(wav_config(path, 1));
    let mut player = Player::start(&mut h);
    play_ok(&mut h, &mut player, 5);
    player.release(&mut h, S_OK);
    drop(h);
    assert_eq!(hound::WavReader::open(path).unwrap().len(), 9 * 960);
}

/// A WAV path that cannot be created fails `Sound::new` (and `probe`) with an error naming the
/// path, the one of a second output stream included; a good path then plays.
#[test]
fn a_wav_path_that_cannot_be_written_is_named() {
    let path = Path::new("/nonexistent-dir/x.wav");
    let err = Sound::new(wav_config(path, 1)).err().expect("no error");
    assert!(
        matches!(err, Error::Backend(BackendError::WavCreate { .. })),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("/nonexistent-dir/x.wav"), "{text}");
    assert!(!text.contains('\n'), "{text}");
    let err = probe(&wav_config(path, 1)).unwrap_err();
    assert!(err.to_string().contains("/nonexistent-dir/x.wav"), "{err}");

    // Output stream 1 records into `rec-1.wav`: here a directory.
    let dir = TempDir::new("wav-path");
    std::fs::create_dir(dir.0.join("rec-1.wav")).unwrap();
    let err = Sound::new(wav_config(&dir.0.join("rec.wav"), 2))
        .err()
        .expect("no error");
    assert!(err.to_string().contains("rec-1.wav"), "{err}");

    // The device itself is fine with a path it can write.
    wav_plays(&dir.0.join("good.wav"));
}

// ----- 4. the disk fills mid-stream -----

/// A tmpfs of `size` mounted on a fresh directory; unmounted (and the directory removed) when
/// dropped.
struct TinyTmpfs(PathBuf);

impl TinyTmpfs {
    /// None (with the reason printed) when it cannot be mounted: not root (which fails under
    /// `CI=true`), or no permission to mount (a container without CAP_SYS_ADMIN).
    fn mount(name: &str, size: &str) -> Option<TinyTmpfs> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !prerequisite(root, "not root: cannot mount a tmpfs to fill") {
            return None;
        }
        let dir = fresh_dir(name);
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(TinyTmpfs(dir)),
            other => {
                let _ = std::fs::remove_dir(&dir);
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    Err(e) => e.to_string(),
                };
                eprintln!("SKIPPED: cannot mount a tmpfs: {why}");
                None
            }
        }
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        let status = Command::new("umount").arg(&self.0).status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("cannot unmount {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The data chunk of a WAV file as its header describes it.
fn wav_data_chunk(path: &Path) -> Vec<u8> {
    let reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 48000, 16)
    );
    let data_len = reader.len() as usize * 2;
    drop(reader);
    let bytes = std::fs::read(path).unwrap();
    // The data chunk is last, its length even (S16).
    assert!(
        bytes.len() >= 44 + data_len,
        "the file is shorter than its header says"
    );
    bytes[bytes.len() - data_len..].to_vec()
}

/// The WAV file's file system fills while the guest plays: messages fail with IO_ERR once writes
/// fail, at the period pace; the file stays a valid WAV holding exactly the PCM of the messages
/// that completed OK (a prefix of what was sent); once there is room again, re-preparing the
/// stream appends to it.
#[test]
fn the_disk_fills_mid_stream() {
    let Some(fs) = TinyTmpfs::mount("tmpfs", "64k") else {
        return;
    };
    // Room to free later.
    std::fs::write(fs.0.join("filler"), vec![0u8; 16 << 10]).unwrap();
    let path = fs.0.join("x.wav");
    let mut h = SoundRig::new(wav_config(&path, 1));
    let mut player = Player::start(&mut h);

    // About 48 KiB are free: 25 periods of 1920 bytes fit, not 30.
    let mut recorded = Vec::new();
    let mut sent = 0;
    loop {
        let (message, status) = player.next(&mut h, PATIENCE);
        player.fill(&mut h);
        sent += 1;
        if status == S_IO_ERR {
            break;
        }
        assert_eq!(status, S_OK);
        recorded.extend_from_slice(&message.data);
        assert!(sent < 60, "the file system never filled");
    }
    eprintln!(
        "the first IO_ERR came with message {sent}: {} bytes recorded",
        recorded.len()
    );
    assert!(recorded.len() >= 20 * 1920, "{}", recorded.len());

    // Later messages fail too, at the period pace, and the device keeps running.
    let start = Instant::now();
    for (i, (_, status)) in player.play(&mut h, 20, PATIENCE).into_iter().enumerate() {
        assert_eq!(status, S_IO_ERR, "message {i} after the disk filled");
    }
    let elapsed = start.elapsed();
    eprintln!("20 failing periods in {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(150),
        "a busy loop: {elapsed:?}"
    );
    assert_eq!(h.state(0), PcmState::Started);
    let stats = h.sound.stats();
    assert!(stats.io_errors >= 21, "{stats:?}");

    // RELEASE still brings the header up to date (in place, no room needed): the file is a
    // valid WAV whose data is exactly what the OK messages carried.
    player.release(&mut h, S_IO_ERR);
    let data = wav_data_chunk(&path);
    assert_eq!(
        data.len(),
        recorded.len(),
        "the data chunk is not what was acknowledged"
    );
    assert!(
        data == recorded,
        "the recorded PCM differs from what was sent"
    );

    // Room again: the guest re-prepares and plays; the file grows by exactly that.
    std::fs::remove_file(fs.0.join("filler")).unwrap();
    assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_OK);
    player.fill(&mut h);
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    for (message, status) in player.play(&mut h, 5, PATIENCE) {
        assert_eq!(status, S_OK);
        recorded.extend_from_slice(&message.data);
    }
    for message in player.release(&mut h, S_OK) {
        recorded.extend_from_slice(&message.data);
    }
    drop(h);
    let data = wav_data_chunk(&path);
    assert!(
        data == recorded,
        "after re-preparing: {} bytes, {} expected",
        data.len(),
        recorded.len()
    );
}

/// At the backend: a write that fails part way, right after the header was brought up to date,
/// leaves nothing behind once the stream is closed: the file ends where its data chunk does.
#[test]
fn a_short_wav_write_on_a_full_disk_leaves_nothing_behind() {
    let Some(fs) = TinyTmpfs::mount("tmpfs-short", "64k") else {
        return;
    };
    let path = fs.0.join("x.wav");
    let backend = backend::wav::WavBackend::new(&path, 1).unwrap();
    // U8 mono at 8 kHz with 1 s periods: the header is rewritten after every period.
    let params = PcmParams {
        format: PcmFormat::U8,
        rate_hz: 8000,
        channels: 1,
        period_bytes: 8000,
        buffer_bytes: 16000,
    };
    let mut out = backend
        .open_output(0, &params, &Arc::new(SoundStats::default()))
        .unwrap();
    let mut sent = Vec::new();
    let mut failed = false;
    for i in 0..10u8 {
        let data = pattern(8000, i);
        out.period_buffer().copy_from_slice(&data);
        match out.play_period(8000) {
            Ok(_) => sent.extend_from_slice(&data),
            Err(e) => {
                assert!(matches!(e, BackendError::WavWrite { .. }), "{e}");
                assert!(e.to_string().contains("x.wav"), "{e}");
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "64 KiB never filled");
    // 44 + 8 × 8000 bytes fit in 64 KiB; the ninth period was written in part.
    assert_eq!(sent.len(), 8 * 8000);
    out.finish().unwrap();
    out.close(None);
    drop(backend);
    let bytes = std::fs::read(&path).unwrap();
    let riff = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    assert_eq!(bytes.len(), riff + 8, "bytes after the RIFF chunk");
    let reader = hound::WavReader::open(&path).unwrap();
    assert_eq!(reader.len() as usize, sent.len());
    drop(reader);
    assert!(bytes[bytes.len() - sent.len()..] == sent[..]);
}
