//! Device-level tests: a fake driver ([`SoundRig`], in `virtio::test_utils`) drives the device through real split queues
//! in real guest memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::stream::PcmState;
use super::wire::*;
use super::*;
use crate::virtio::test_utils::sound::*;
use crate::virtio::test_utils::InterruptRecorder;
use crate::virtio::ActiveQueue;

/// A descriptor as the tests write it: address, length, device-writable.
type Desc = (u64, u32, bool);

struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str) -> TempFile {
        TempFile(std::env::temp_dir().join(format!("canto-snd-{}-{name}", std::process::id())))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn wav_config(file: &TempFile) -> SoundConfig {
    SoundConfig {
        backend: BackendConfig::Wav {
            path: file.0.clone(),
        },
        ..null_config()
    }
}

/// The data chunk of a 16-bit WAV file: the `data_len` bytes before the optional pad byte.
fn wav_data(path: &PathBuf) -> Vec<u8> {
    let reader = hound::WavReader::open(path).unwrap();
    assert_eq!(reader.spec().bits_per_sample, 16);
    let data_len = reader.len() as usize * 2;
    drop(reader);
    let bytes = std::fs::read(path).unwrap();
    let end = bytes.len() - data_len % 2;
    bytes[end - data_len..end].to_vec()
}

/// S16 mono at 8 kHz: 160-byte periods of 10 ms, 4 periods per buffer.
fn slow_params(stream_id: u32) -> SetParams {
    SetParams {
        stream_id,
        buffer_bytes: 640,
        period_bytes: 160,
        features: 0,
        channels: 1,
        format: PcmFormat::S16.code(),
        rate: rate_code(8000).unwrap(),
    }
}

// ----- configuration space and activation -----

#[test]
fn config_space_and_features() {
    let config = SoundConfig {
        outputs: 2,
        inputs: 1,
        jacks: 3,
        ..null_config()
    };
    let sound = Sound::new(config).unwrap();
    assert_eq!(sound.device_type(), 25);
    assert_eq!(sound.queue_max_sizes(), &[QUEUE_SIZE; 4]);
    // VIRTIO_SND_F_CTLS is bit 0.
    assert_eq!(
        sound.features(),
        VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX | 1
    );
    assert_eq!(sound.backend_name(), "null");
    let mut space = [0xffu8; 20];
    sound.read_config(0, &mut space);
    // 3 jacks (one per stream), 3 streams, 8 channel maps (1 to 8 channels) per stream, 6
    // controls (a volume and a switch per stream).
    assert_eq!(&space[..12], &[3, 0, 0, 0, 3, 0, 0, 0, 24, 0, 0, 0]);
    assert_eq!(&space[12..16], &[6, 0, 0, 0]);
    assert_eq!(&space[16..], &[0; 4]);
    let mut one = [0xffu8; 2];
    sound.read_config(4, &mut one);
    assert_eq!(one, [3, 0]);
    sound.read_config(u64::MAX, &mut one);
    assert_eq!(one, [0, 0]);
    let mut sound = sound;
    sound.write_config(0, &[9, 9, 9, 9]);
    sound.read_config(0, &mut one);
    assert_eq!(one, [3, 0]);
}

#[test]
fn activation_needs_four_distinct_queues() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let mut sound = Sound::new(null_config()).unwrap();
    let queue = |index: u16| ActiveQueue {
        index,
        queue: Queue::new(QUEUE_SIZE).unwrap(),
        kick: EventFd::new(0).unwrap(),
    };
    let ctx = |queues| ActivateContext {
        mem: mem.clone(),
        interrupt: Arc::new(InterruptRecorder::default()),
        queues,
        acked_features: VIRTIO_F_VERSION_1,
    };
    assert!(matches!(
        sound.activate(ctx(vec![queue(0), queue(1)])),
        Err(ActivateError::QueueCount { got: 2, want: 4 })
    ));
    assert!(sound
        .activate(ctx(vec![queue(0), queue(1), queue(1), queue(3)]))
        .is_err());
    assert!(sound
        .activate(ctx(vec![queue(3), queue(1), queue(0), queue(2)]))
        .is_ok());
}

#[test]
fn a_wav_path_that_cannot_be_created_fails_at_startup() {
    let config = SoundConfig {
        backend: BackendConfig::Wav {
            path: "/nonexistent-canto-dir/out.wav".into(),
        },
        ..null_config()
    };
    let err = Sound::new(config.clone()).err().unwrap();
    assert!(
        err.to_string().contains("/nonexistent-canto-dir/out.wav"),
        "{err}"
    );
    assert!(probe(&config).is_err());
    assert!(probe(&null_config()).is_ok());
    let missing_alsa = null_config().with_backend(BackendConfig::Alsa {
        device: "canto_no_such_pcm".into(),
    });
    assert!(probe(&missing_alsa).is_err());
    // The device still builds: ALSA is opened at PREPARE.
    assert!(Sound::new(missing_alsa).is_ok());
}

// ----- control requests -----

#[test]
fn pcm_info_describes_every_stream() {
    let mut h = SoundRig::new(SoundConfig {
        outputs: 2,
        inputs: 1,
        ..null_config()
    });
    let (len, reply) = h.control_with(&query(R_PCM_INFO, 0, 3, 32), 4 + 3 * 32);
    assert_eq!(len, 4 + 3 * 32);
    assert_eq!(request_code(&reply), S_OK);
    for (i, item) in reply[4..].chunks(32).enumerate() {
        let formats = u64::from_le_bytes(item[8..16].try_into().unwrap());
        let rates = u64::from_le_bytes(item[16..24].try_into().unwrap());
        for format in [
            PcmFormat::U8,
            PcmFormat::S16,
            PcmFormat::S24,
            PcmFormat::S32,
            PcmFormat::Float,
        ] {
            assert!(formats & format.bit() != 0, "{format:?}");
        }
        for hz in [8000, 44100, 48000, 96000, 192000] {
            assert!(mask_has(rates, rate_code(hz).unwrap()), "{hz}");
        }
        assert!(!mask_has(rates, 0) && !mask_has(rates, 13));
        assert_eq!(&item[4..8], &[0; 4], "features");
        let direction = if i < 2 { D_OUTPUT } else { D_INPUT };
        assert_eq!(&item[24..], &[direction, 1, 8, 0, 0, 0, 0, 0]);
    }
    // Start in the middle; a larger item size is zero-padded.
    let (len, reply) = h.control_with(&query(R_PCM_INFO, 2, 1, 40), 4 + 40);
    assert_eq!(len, 44);
    assert_eq!(reply[4 + 24], D_INPUT);
    assert_eq!(&reply[4 + 32..], &[0; 8]);
    // Count 0 is an empty success.
    let (len, reply) = h.control_with(&query(R_PCM_INFO, 3, 0, 32), 4);
    assert_eq!((len, request_code(&reply)), (4, S_OK));
}

#[test]
fn info_requests_with_bad_ranges_or_sizes_are_bad_msg() {
    let mut h = SoundRig::new(SoundConfig {
        jacks: 1,
        ..null_config()
    });
    for request in [
        query(R_PCM_INFO, 0, 0xffff_ffff, 32),
        query(R_PCM_INFO, 0xffff_ffff, 1, 32),
        query(R_PCM_INFO, 1, 0xffff_ffff, 32),
        query(R_PCM_INFO, 2, 1, 32),
        query(R_PCM_INFO, 0, 3, 32),
        query(R_PCM_INFO, 0, 1, 31),
        query(R_PCM_INFO, 0, 1, 0),
        query(R_PCM_INFO, 0, 1, 0xffff_ffff),
        query(R_PCM_INFO, 0, 2, 0x8000_0000),
        query(R_JACK_INFO, 2, 1, 24),
        query(R_JACK_INFO, 0, 1, 23),
        query(R_CHMAP_INFO, 0, 17, 24),
        query(R_CHMAP_INFO, 16, 1, 24),
        query(R_CHMAP_INFO, 0, 1, 1),
    ] {
        assert_eq!(h.control(&request), S_BAD_MSG, "{request:?}");
    }
    // A response buffer too small for the items: BAD_MSG in the header.
    let (len, reply) = h.control_with(&query(R_PCM_INFO, 0, 2, 32), 4 + 32);
    assert_eq!((len, request_code(&reply)), (4, S_BAD_MSG));
    // The good requests.
    let (len, reply) = h.control_with(&query(R_JACK_INFO, 0, 1, 24), 28);
    assert_eq!((len, request_code(&reply)), (28, S_OK));
    assert_eq!(reply[4 + 16], 1, "connected");
    assert_eq!(&reply[4 + 17..], &[0; 7], "padding");
    // Two streams, eight channel maps each; the second is the stereo one.
    let (len, reply) = h.control_with(&query(R_CHMAP_INFO, 0, 16, 24), 4 + 16 * 24);
    assert_eq!((len, request_code(&reply)), (4 + 16 * 24, S_OK));
    assert_eq!(&reply[4..10], &[0, 0, 0, 0, D_OUTPUT, 1]);
    assert_eq!(&reply[28..34], &[0, 0, 0, 0, D_OUTPUT, 2]);
    assert_eq!(&reply[34..37], &[CHMAP_FL, CHMAP_FR, 0]);
    assert_eq!(reply[4 + 8 * 24 + 4], D_INPUT);
}

#[test]
fn malformed_and_unknown_requests_are_answered() {
    let mut h = SoundRig::new(null_config());
    // Short header.
    assert_eq!(h.control(&[0x00, 0x01]), S_BAD_MSG);
    // Short bodies.
    assert_eq!(h.control(&R_PCM_START.to_le_bytes()), S_BAD_MSG);
    assert_eq!(h.control(&query(R_PCM_INFO, 0, 1, 32)[..12]), S_BAD_MSG);
    assert_eq!(h.control(&slow_params(0).encode()[..20]), S_BAD_MSG);
    // Unknown codes, control elements included.
    for code in [
        0u32,
        3,
        0x0106,
        0x0201,
        0x0300,
        0x0306,
        0x1000,
        S_OK,
        u32::MAX,
    ] {
        assert_eq!(h.control(&query(code, 0, 0, 0)), S_NOT_SUPP, "{code:#x}");
    }
    // JACK_REMAP: no such jack, or no remapping support (one jack per stream: 0 and 1).
    assert_eq!(h.control(&query(R_JACK_REMAP, 2, 0, 0)), S_BAD_MSG);
    let mut jacks = SoundRig::new(SoundConfig {
        jacks: 1,
        ..null_config()
    });
    assert_eq!(jacks.control(&query(R_JACK_REMAP, 0, 1, 2)), S_NOT_SUPP);
    assert_eq!(jacks.control(&query(R_JACK_REMAP, 1, 1, 2)), S_NOT_SUPP);
    assert_eq!(jacks.control(&query(R_JACK_REMAP, 2, 1, 2)), S_BAD_MSG);
    // Stream ids out of range.
    for id in [2, 3, u32::MAX] {
        for code in [R_PCM_PREPARE, R_PCM_START, R_PCM_STOP, R_PCM_RELEASE] {
            assert_eq!(h.pcm(code, id), S_BAD_MSG, "{code:#x} on {id}");
        }
        assert_eq!(h.set_params(slow_params(id)), S_BAD_MSG);
    }
    assert_eq!(h.sound.stats().control_requests, 29);
}

#[test]
fn replies_need_a_writable_status() {
    let mut h = SoundRig::new(null_config());
    // No writable part at all: the chain comes back with length 0.
    let (len, _) = h.control_with(&query(R_PCM_INFO, 0, 1, 32), 0);
    assert_eq!(len, 0);
    // Room for less than the header.
    let (len, reply) = h.control_with(&query(R_PCM_INFO, 0, 1, 32), 3);
    assert_eq!((len, reply), (0, vec![0xaa; 3]));
    // A response buffer the device may only read.
    let req = h.alloc(16);
    h.mem
        .write_slice(&query(R_PCM_INFO, 0, 1, 32), GuestAddress(req))
        .unwrap();
    let ro = h.alloc(36);
    let head = h.queues[0].add(&h.mem, &[(req, 16, false), (ro, 36, false)]);
    h.kick(CONTROLQ);
    assert_eq!(h.take_used(CONTROLQ), vec![(head, 0)]);
    // A request with no readable part still gets BAD_MSG.
    let resp = h.alloc(4);
    let head = h.queues[0].add(&h.mem, &[(resp, 4, true)]);
    h.kick(CONTROLQ);
    assert_eq!(h.take_used(CONTROLQ), vec![(head, 4)]);
    assert_eq!(
        h.mem.read_obj::<u32>(GuestAddress(resp)).unwrap(),
        S_BAD_MSG
    );
    // Descriptors outside RAM, or readable after writable: length 0.
    let req = h.alloc(8);
    let head = h.queues[0].add(&h.mem, &[(req, 8, false), (OUTSIDE, 4, true)]);
    h.kick(CONTROLQ);
    assert_eq!(h.take_used(CONTROLQ), vec![(head, 0)]);
    let head = h.queues[0].add(&h.mem, &[(resp, 4, true), (req, 8, false)]);
    h.kick(CONTROLQ);
    assert_eq!(h.take_used(CONTROLQ), vec![(head, 0)]);
    // The device still answers.
    assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_BAD_MSG);
    assert!(h.interrupt.count(CONTROLQ) >= 5);
}

// ----- the PCM state machine -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    SetParams,
    Prepare,
    Start,
    Stop,
    Release,
}

const OPS: [Op; 5] = [Op::SetParams, Op::Prepare, Op::Start, Op::Stop, Op::Release];

fn run_op(h: &mut SoundRig, op: Op) -> u32 {
    match op {
        Op::SetParams => h.set_params(fast_params(0)),
        Op::Prepare => h.pcm(R_PCM_PREPARE, 0),
        Op::Start => h.pcm(R_PCM_START, 0),
        Op::Stop => h.pcm(R_PCM_STOP, 0),
        Op::Release => h.pcm(R_PCM_RELEASE, 0),
    }
}

fn reach(h: &mut SoundRig, state: PcmState) {
    let path: &[Op] = match state {
        PcmState::Initial => &[],
        PcmState::ParamsSet => &[Op::SetParams],
        PcmState::Prepared => &[Op::SetParams, Op::Prepare],
        PcmState::Started => &[Op::SetParams, Op::Prepare, Op::Start],
        PcmState::Stopped => &[Op::SetParams, Op::Prepare, Op::Start, Op::Stop],
        PcmState::Released => &[Op::SetParams, Op::Prepare, Op::Release],
    };
    for op in path {
        assert_eq!(run_op(h, *op), S_OK, "{op:?} on the way to {state:?}");
    }
    assert_eq!(h.state(0), state);
}

/// The state after `op` in `state`, or None if the spec does not allow it.
fn transition(state: PcmState, op: Op) -> Option<PcmState> {
    use PcmState::*;
    match (state, op) {
        (Initial | ParamsSet | Prepared | Released, Op::SetParams) => Some(ParamsSet),
        (ParamsSet | Prepared | Released, Op::Prepare) => Some(Prepared),
        (Prepared | Stopped, Op::Start) => Some(Started),
        (Started, Op::Stop) => Some(Stopped),
        (Prepared | Stopped, Op::Release) => Some(Released),
        _ => None,
    }
}

#[test]
fn every_transition_legal_and_illegal() {
    use PcmState::*;
    for state in [Initial, ParamsSet, Prepared, Started, Stopped, Released] {
        for op in OPS {
            let mut h = SoundRig::new(null_config());
            reach(&mut h, state);
            let status = run_op(&mut h, op);
            match transition(state, op) {
                Some(next) => {
                    assert_eq!(status, S_OK, "{op:?} in {state:?}");
                    assert_eq!(h.state(0), next, "{op:?} in {state:?}");
                }
                None => {
                    assert_eq!(status, S_BAD_MSG, "{op:?} in {state:?}");
                    assert_eq!(h.state(0), state, "{op:?} in {state:?} changed the state");
                }
            }
        }
    }
}

#[test]
fn set_params_fields_are_validated_on_the_wire() {
    let mut h = SoundRig::new(null_config());
    let good = fast_params(0);
    let cases = [
        (SetParams { format: 64, ..good }, S_BAD_MSG),
        (
            SetParams {
                format: 255,
                ..good
            },
            S_BAD_MSG,
        ),
        (SetParams { format: 0, ..good }, S_BAD_MSG),
        (SetParams { rate: 32, ..good }, S_BAD_MSG),
        (SetParams { rate: 64, ..good }, S_BAD_MSG),
        (SetParams { rate: 255, ..good }, S_BAD_MSG),
        (
            SetParams {
                channels: 0,
                ..good
            },
            S_BAD_MSG,
        ),
        (
            SetParams {
                channels: 9,
                ..good
            },
            S_BAD_MSG,
        ),
        (
            SetParams {
                period_bytes: 0,
                ..good
            },
            S_BAD_MSG,
        ),
        (
            SetParams {
                period_bytes: 190,
                buffer_bytes: 760,
                ..good
            },
            S_BAD_MSG,
        ),
        (
            SetParams {
                buffer_bytes: 100,
                ..good
            },
            S_BAD_MSG,
        ),
        (
            SetParams {
                buffer_bytes: 192 * 4 + 4,
                ..good
            },
            S_BAD_MSG,
        ),
        (
            SetParams {
                features: 1 << 2,
                ..good
            },
            S_BAD_MSG,
        ),
        (
            SetParams {
                period_bytes: 2 << 20,
                buffer_bytes: 4 << 20,
                ..good
            },
            S_NOT_SUPP,
        ),
    ];
    for (params, want) in cases {
        assert_eq!(h.set_params(params), want, "{params:?}");
        assert_eq!(h.state(0), PcmState::Initial);
    }
    // S32 frames are 8 bytes in stereo: 396 is a multiple of 4, not of 8 (400 is: 50 frames,
    // just over the 1 ms floor at 48 kHz).
    let s32 = SetParams {
        format: PcmFormat::S32.code(),
        period_bytes: 396,
        buffer_bytes: 396 * 2,
        ..good
    };
    assert_eq!(h.set_params(s32), S_BAD_MSG);
    assert_eq!(
        h.set_params(SetParams {
            period_bytes: 400,
            buffer_bytes: 800,
            ..s32
        }),
        S_OK
    );
    // A failed SET_PARAMS leaves earlier parameters in place.
    assert_eq!(
        h.set_params(SetParams {
            channels: 0,
            ..good
        }),
        S_BAD_MSG
    );
    assert_eq!(h.worker().streams()[0].params().unwrap().period_bytes, 400);
}

#[test]
fn repeated_prepare_does_not_leak_backend_streams() {
    // The WAV backend has one file per output stream: a leaked stream would keep it, and the
    // next PREPARE would fail.
    let file = TempFile::new("prepare.wav");
    let mut h = SoundRig::new(wav_config(&file));
    for _ in 0..5 {
        assert_eq!(h.set_params(fast_params(0)), S_OK);
        assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_OK);
        assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_OK);
    }
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    // A format the WAV backend cannot store fails at PREPARE with IO_ERR, and nothing leaks.
    let s8 = SetParams {
        format: PcmFormat::S8.code(),
        ..fast_params(0)
    };
    assert_eq!(
        h.set_params(s8),
        S_BAD_MSG,
        "S8 is not offered by the WAV backend"
    );
    assert_eq!(h.set_params(fast_params(0)), S_OK);
    assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_OK);
}

#[test]
fn a_backend_that_cannot_open_gives_io_err() {
    let config = null_config().with_backend(BackendConfig::Alsa {
        device: "canto_no_such_pcm".into(),
    });
    let mut h = SoundRig::new(config);
    assert_eq!(h.set_params(fast_params(0)), S_OK);
    assert_eq!(h.pcm(R_PCM_PREPARE, 0), S_IO_ERR);
    assert_eq!(h.state(0), PcmState::ParamsSet);
    assert_eq!(h.pcm(R_PCM_START, 0), S_BAD_MSG);
}

// ----- TX -----

#[test]
fn tx_messages_return_at_the_pace_of_the_backend_with_data_read_at_consume_time() {
    let file = TempFile::new("pace.wav");
    let mut h = SoundRig::new(wav_config(&file));
    h.prepare(slow_params(0));
    // Pre-buffer four periods; the driver writes the PCM only after queueing (as the Linux 6.1
    // driver does when it re-queues a period before the application refilled it).
    let sent: Vec<Sent> = (0..4).map(|_| h.tx(0, &[0u8; 160])).collect();
    let mut expected = Vec::new();
    for (i, message) in sent.iter().enumerate() {
        let data = pattern(160, i as u8);
        h.mem
            .write_slice(&data, GuestAddress(message.data))
            .unwrap();
        expected.extend(data);
    }
    // Nothing is consumed (or returned) before START.
    std::thread::sleep(Duration::from_millis(40));
    assert!(h.take_used(TXQ).is_empty());
    let start = Instant::now();
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    let first = h.wait_used(TXQ, 1, Duration::from_secs(10));
    let first_at = start.elapsed();
    let rest = h.wait_used(TXQ, 3, Duration::from_secs(10));
    let all_at = start.elapsed();
    // A message is returned when its period has elapsed, not on arrival.
    assert!(first_at >= Duration::from_millis(9), "{first_at:?}");
    assert!(all_at >= Duration::from_millis(39), "{all_at:?}");
    let used: Vec<(u16, u32)> = first.into_iter().chain(rest).collect();
    assert_eq!(
        used,
        sent.iter().map(|m| (m.head, 8)).collect::<Vec<_>>(),
        "in order, each with the 8-byte status"
    );
    for message in &sent {
        assert_eq!(h.status_of(message), (S_OK, 0));
    }
    assert!(h.interrupt.count(TXQ) >= 1);
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    assert_eq!(wav_data(&file.0), expected);
    let stats = h.sound.stats();
    assert_eq!(stats.tx_bytes_copied, 640);
    assert_eq!(stats.tx_bytes_played, 640);
    assert_eq!(stats.tx_messages, 4);
}

#[test]
fn release_flushes_and_returns_everything_before_its_reply() {
    let file = TempFile::new("release.wav");
    let mut h = SoundRig::new(wav_config(&file));
    h.prepare(slow_params(0));
    let mut expected = Vec::new();
    let mut heads = Vec::new();
    for i in 0..6 {
        let data = pattern(160, 10 + i);
        heads.push(h.tx(0, &data).head);
        expected.extend(data);
    }
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    let played = h.wait_used(TXQ, 1, Duration::from_secs(2));
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    // Two more arrive after STOP, one of them not yet kicked: RELEASE must still take them.
    for i in 0..2 {
        let data = pattern(160, 20 + i);
        expected.extend(&data);
        let sent = h.add_io(TXQ, 0, &data, 0);
        heads.push(sent.head);
        if i == 0 {
            h.kick(TXQ);
        }
    }
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    // By the time the reply is in, every message is back.
    let mut used: Vec<u16> = played.iter().map(|u| u.0).collect();
    used.extend(h.take_used(TXQ).iter().map(|u| u.0));
    assert_eq!(used, heads);
    assert_eq!(h.worker().streams()[0].pending_len(), 0);
    assert_eq!(wav_data(&file.0), expected);
    let stats = h.sound.stats();
    assert_eq!(stats.tx_bytes_copied, expected.len() as u64);
    assert_eq!(stats.tx_bytes_played, expected.len() as u64);
    // Nothing more comes back later.
    std::thread::sleep(Duration::from_millis(30));
    assert!(h.take_used(TXQ).is_empty());
}

#[test]
fn stop_keeps_messages_and_start_resumes_them() {
    let file = TempFile::new("stop.wav");
    let mut h = SoundRig::new(wav_config(&file));
    h.prepare(slow_params(0));
    let mut expected = Vec::new();
    for i in 0..8 {
        let data = pattern(160, 40 + i);
        h.tx(0, &data);
        expected.extend(data);
    }
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    let mut used = h.wait_used(TXQ, 2, Duration::from_secs(2));
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    used.extend(h.take_used(TXQ));
    let stopped_at = used.len();
    assert!(stopped_at < 8);
    std::thread::sleep(Duration::from_millis(60));
    assert!(
        h.take_used(TXQ).is_empty(),
        "a stopped stream consumed messages"
    );
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    used.extend(h.wait_used(TXQ, 8 - stopped_at, Duration::from_secs(2)));
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    assert_eq!(wav_data(&file.0), expected, "all data, once, in order");
}

#[test]
fn a_message_spanning_periods_returns_when_fully_consumed() {
    let file = TempFile::new("span.wav");
    let mut h = SoundRig::new(wav_config(&file));
    h.prepare(slow_params(0));
    // 2.5 periods, then half a period.
    let long = pattern(400, 1);
    let short = pattern(80, 2);
    let a = h.tx(0, &long);
    let b = h.tx(0, &short);
    let start = Instant::now();
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    let used = h.wait_used(TXQ, 2, Duration::from_secs(2));
    assert_eq!(used, vec![(a.head, 8), (b.head, 8)]);
    assert!(start.elapsed() >= Duration::from_millis(29));
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    assert_eq!(wav_data(&file.0), [long, short].concat());
}

#[test]
fn underruns_give_silence_on_null_and_nothing_in_wav() {
    let mut null = SoundRig::new(null_config());
    null.prepare(fast_params(0));
    assert_eq!(null.pcm(R_PCM_START, 0), S_OK);
    std::thread::sleep(Duration::from_millis(60));
    let stats = null.sound.stats();
    assert!(stats.tx_underruns >= 5, "{stats:?}");
    assert!(stats.tx_silence_bytes >= 5 * 192, "{stats:?}");
    assert_eq!(stats.tx_bytes_played, 0);

    let file = TempFile::new("underrun.wav");
    let mut h = SoundRig::new(wav_config(&file));
    h.prepare(fast_params(0));
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    std::thread::sleep(Duration::from_millis(20));
    let data = pattern(192 * 3, 7);
    h.tx(0, &data);
    h.wait_used(TXQ, 1, Duration::from_secs(2));
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    let stats = h.sound.stats();
    assert!(stats.tx_underruns >= 5, "{stats:?}");
    assert_eq!(stats.tx_silence_bytes, 0);
    assert_eq!(wav_data(&file.0), data, "no silence recorded");
    assert_eq!(stats.tx_bytes_copied, stats.tx_bytes_played);
}

#[test]
fn bad_tx_chains_are_refused_and_the_device_keeps_playing() {
    let file = TempFile::new("bad.wav");
    let mut h = SoundRig::new(wav_config(&file));
    h.prepare(fast_params(0));
    // Stream ids out of range, and an input stream on the txq: IO_ERR (§5.14.6.8 gives I/O
    // messages only OK and IO_ERR).
    for stream in [2, 3, u32::MAX, 1] {
        let sent = h.tx(stream, &[1; 192]);
        assert_eq!(h.take_used(TXQ), vec![(sent.head, 8)], "stream {stream}");
        assert_eq!(h.status_of(&sent).0, S_IO_ERR);
    }
    let hdr = h.alloc(4);
    h.mem.write_obj(0u32, GuestAddress(hdr)).unwrap();
    let data = h.alloc(192);
    let status = h.alloc(8);
    let bad: Vec<(Vec<Desc>, u32)> = vec![
        // Header only: no status to write.
        (vec![(hdr, 4, false)], 0),
        // Header and data, status read-only.
        (
            vec![(hdr, 4, false), (data, 192, false), (status, 8, false)],
            0,
        ),
        // Status too small.
        (
            vec![(hdr, 4, false), (data, 192, false), (status, 7, true)],
            0,
        ),
        // Header and status, no PCM.
        (vec![(hdr, 4, false), (status, 8, true)], 8),
        // A 2-byte header.
        (vec![(hdr, 2, false), (status, 8, true)], 8),
        // PCM outside guest RAM.
        (
            vec![(hdr, 4, false), (OUTSIDE, 192, false), (status, 8, true)],
            0,
        ),
        // Status outside guest RAM, and straddling its end.
        (
            vec![(hdr, 4, false), (data, 192, false), (OUTSIDE, 8, true)],
            0,
        ),
        (
            vec![(hdr, 4, false), (data, 192, false), (MEM_SIZE - 4, 8, true)],
            0,
        ),
        // More PCM than any message may carry (the range is in RAM).
        (
            vec![
                (hdr, 4, false),
                (DATA_START, 8 << 20, false),
                (status, 8, true),
            ],
            8,
        ),
    ];
    for (descs, want_len) in &bad {
        h.mem.write_obj(0u64, GuestAddress(status)).unwrap();
        let head = h.queues[2].add(&h.mem, descs);
        h.kick(TXQ);
        assert_eq!(h.take_used(TXQ), vec![(head, *want_len)], "{descs:?}");
        if *want_len == 8 {
            assert_eq!(
                h.mem.read_obj::<u32>(GuestAddress(status)).unwrap(),
                S_IO_ERR
            );
        }
    }
    assert_eq!(h.sound.stats().bad_messages, 4 + bad.len() as u64);
    // A stream that is not prepared: IO_ERR at once.
    let mut other = SoundRig::new(wav_config(&TempFile::new("bad2.wav")));
    let sent = other.tx(0, &[1; 192]);
    assert_eq!(other.take_used(TXQ), vec![(sent.head, 8)]);
    assert_eq!(other.status_of(&sent).0, S_IO_ERR);
    // The device still plays.
    let good = pattern(192, 3);
    let sent = h.tx(0, &good);
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    h.wait_used(TXQ, 1, Duration::from_secs(2));
    assert_eq!(h.status_of(&sent).0, S_OK);
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    assert_eq!(wav_data(&file.0), good);
}

#[test]
fn split_headers_and_data_across_descriptors_are_read_as_one_stream() {
    let file = TempFile::new("split.wav");
    let mut h = SoundRig::new(wav_config(&file));
    h.prepare(fast_params(0));
    let data = pattern(192, 9);
    let hdr = h.alloc(4);
    h.mem.write_slice(&[0, 0], GuestAddress(hdr)).unwrap();
    let hdr2 = h.alloc(2);
    h.mem.write_slice(&[0, 0], GuestAddress(hdr2)).unwrap();
    let a = h.alloc(100);
    h.mem.write_slice(&data[..100], GuestAddress(a)).unwrap();
    let b = h.alloc(92);
    h.mem.write_slice(&data[100..], GuestAddress(b)).unwrap();
    let status = h.alloc(8);
    let head = h.queues[2].add(
        &h.mem,
        &[
            (hdr, 2, false),
            (hdr2, 2, false),
            (a, 100, false),
            (b, 0, false),
            (b, 92, false),
            (status, 4, true),
            (status + 4, 4, true),
        ],
    );
    h.kick(TXQ);
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    assert_eq!(h.wait_used(TXQ, 1, Duration::from_secs(2)), vec![(head, 8)]);
    assert_eq!(h.mem.read_obj::<u32>(GuestAddress(status)).unwrap(), S_OK);
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    assert_eq!(wav_data(&file.0), data);
}

#[test]
fn tx_beyond_the_queue_size_is_refused_not_stored() {
    let mut h = SoundRig::new(null_config());
    // A buffer of 256 periods: the byte limit is not what stops them.
    h.prepare(SetParams {
        buffer_bytes: 192 * 256,
        ..fast_params(0)
    });
    // The same descriptors made available again and again (a driver re-using heads).
    let hdr = h.alloc(4);
    h.mem.write_obj(0u32, GuestAddress(hdr)).unwrap();
    let data = h.alloc(192);
    let status = h.alloc(8);
    let descs = [(hdr, 4, false), (data, 192, false), (status, 8, true)];
    for _ in 0..usize::from(QUEUE_SIZE) + 10 {
        h.queues[2].add(&h.mem, &descs);
        if h.queues[2].avail_idx.is_multiple_of(64) {
            h.kick(TXQ);
        }
    }
    h.kick(TXQ);
    assert_eq!(
        h.worker().streams()[0].pending_len(),
        usize::from(QUEUE_SIZE)
    );
    assert_eq!(h.take_used(TXQ).len(), 10);
}

#[test]
fn tx_beyond_twice_the_buffer_is_refused() {
    let mut h = SoundRig::new(null_config());
    // A 768-byte buffer: at most 1536 bytes may wait.
    h.prepare(fast_params(0));
    for _ in 0..8 {
        let sent = h.tx(0, &[0; 192]);
        assert!(h.take_used(TXQ).is_empty(), "message {} refused", sent.head);
    }
    let sent = h.tx(0, &[0; 192]);
    assert_eq!(h.take_used(TXQ), vec![(sent.head, 8)]);
    assert_eq!(h.status_of(&sent).0, S_IO_ERR);
    let sent = h.tx(0, &[0; 4096]);
    assert_eq!(h.take_used(TXQ), vec![(sent.head, 8)]);
    assert_eq!(h.worker().streams()[0].pending_len(), 8);
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let mut h =
        SoundRig::with_features(null_config(), VIRTIO_F_VERSION_1 | VIRTIO_F_RING_EVENT_IDX);
    h.prepare(fast_params(0));
    // The driver wants an interrupt only after the 4th used entry.
    h.queues[2].set_used_event(&h.mem, 3);
    for i in 0..6 {
        h.tx(0, &pattern(192, i));
    }
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    h.wait_used(TXQ, 6, Duration::from_secs(2));
    assert_eq!(h.interrupt.count(TXQ), 1);
}

#[test]
fn device_reset_joins_threads_and_drops_queued_messages() {
    let file = TempFile::new("reset.wav");
    let mut h = SoundRig::new(wav_config(&file));
    h.prepare(slow_params(0));
    h.prepare(slow_params(1));
    for i in 0..4 {
        h.tx(0, &pattern(160, i));
        h.rx(1, 160);
    }
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    h.wait_used(TXQ, 1, Duration::from_secs(2));
    let before = h.queues[2].used_idx(&h.mem);
    h.sound.reset();
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(
        h.queues[2].used_idx(&h.mem),
        before,
        "no used entry after reset"
    );
    assert_eq!(h.queues[3].used_idx(&h.mem), 0);
    // The WAV file went back to its slot: a new activation can prepare the stream again.
    let sound = std::mem::replace(&mut h.sound, Sound::new(null_config()).unwrap());
    let mut again = SoundRig::activate(sound, VIRTIO_F_VERSION_1);
    assert_eq!(again.state(0), PcmState::Initial);
    again.prepare(slow_params(0));
    again.sound.reset();
    // Notifications after reset are ignored.
    drop(h);
}

#[test]
fn an_avail_index_past_the_ring_needs_reset_and_stops_only_that_queue() {
    let mut h = SoundRig::new(null_config());
    h.prepare(fast_params(0));
    let sent = h.tx(0, &[1; 192]);
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    h.wait_used(TXQ, 1, Duration::from_secs(2));
    assert_eq!(h.status_of(&sent).0, S_OK);
    let used_before = h.queues[2].used_idx(&h.mem);
    h.queues[2].publish_avail_idx(&h.mem, h.queues[2].avail_idx.wrapping_add(1000));
    h.kick(TXQ);
    assert_eq!(h.interrupt.needs_reset_count(), 1);
    // Stopped until reset: repairing the index changes nothing, and nothing is reported twice.
    h.queues[2].publish_avail_idx(&h.mem, h.queues[2].avail_idx);
    h.tx(0, &[2; 192]);
    h.kick(TXQ);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(h.queues[2].used_idx(&h.mem), used_before);
    assert_eq!(h.interrupt.needs_reset_count(), 1);
    // The controlq still answers, and RELEASE does not wait on the broken txq.
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    // After a reset the device plays again.
    h.sound.reset();
    let sound = std::mem::replace(&mut h.sound, Sound::new(null_config()).unwrap());
    let mut again = SoundRig::activate(sound, VIRTIO_F_VERSION_1);
    again.prepare(fast_params(0));
    let sent = again.tx(0, &[3; 192]);
    assert_eq!(again.pcm(R_PCM_START, 0), S_OK);
    again.wait_used(TXQ, 1, Duration::from_secs(2));
    assert_eq!(again.status_of(&sent).0, S_OK);
    assert_eq!(again.interrupt.needs_reset_count(), 0);
}

// ----- RX -----

#[test]
fn rx_chains_without_room_for_the_status_come_back_empty() {
    let mut h = SoundRig::new(null_config());
    h.prepare(fast_params(1));
    let hdr = h.alloc(4);
    h.mem.write_obj(1u32, GuestAddress(hdr)).unwrap();
    for writable in 0..8u32 {
        let buf = h.alloc(8);
        h.mem.write_slice(&[0xcc; 8], GuestAddress(buf)).unwrap();
        let mut descs = vec![(hdr, 4, false)];
        if writable > 0 {
            descs.push((buf, writable, true));
        }
        let head = h.queues[3].add(&h.mem, &descs);
        h.kick(RXQ);
        assert_eq!(
            h.take_used(RXQ),
            vec![(head, 0)],
            "{writable} writable bytes"
        );
        let mut back = [0u8; 8];
        h.mem.read_slice(&mut back, GuestAddress(buf)).unwrap();
        assert_eq!(back, [0xcc; 8], "nothing written");
    }
    // Exactly a status and no room for PCM: IO_ERR, length 8.
    let status = h.alloc(8);
    let head = h.queues[3].add(&h.mem, &[(hdr, 4, false), (status, 8, true)]);
    h.kick(RXQ);
    assert_eq!(h.take_used(RXQ), vec![(head, 8)]);
    assert_eq!(
        h.mem.read_obj::<u32>(GuestAddress(status)).unwrap(),
        S_IO_ERR
    );
    // An output stream's id on the rxq.
    let sent = h.rx(0, 192);
    assert_eq!(h.take_used(RXQ), vec![(sent.head, 8)]);
    assert_eq!(h.status_of(&sent).0, S_IO_ERR);
}

#[test]
fn rx_captures_silence_at_the_stream_pace() {
    let mut h = SoundRig::new(null_config());
    // U8 silence is 0x80, not 0.
    let params = SetParams {
        format: PcmFormat::U8.code(),
        channels: 1,
        period_bytes: 80,
        buffer_bytes: 320,
        ..slow_params(1)
    };
    h.prepare(params);
    let sent: Vec<Sent> = (0..3).map(|_| h.rx(1, 80)).collect();
    for message in &sent {
        h.mem
            .write_slice(&[0x11; 80], GuestAddress(message.data))
            .unwrap();
    }
    let start = Instant::now();
    assert_eq!(h.pcm(R_PCM_START, 1), S_OK);
    let used = h.wait_used(RXQ, 3, Duration::from_secs(2));
    assert!(start.elapsed() >= Duration::from_millis(29));
    assert_eq!(used, sent.iter().map(|m| (m.head, 88)).collect::<Vec<_>>());
    for message in &sent {
        let mut data = [0u8; 80];
        h.mem
            .read_slice(&mut data, GuestAddress(message.data))
            .unwrap();
        assert_eq!(data, [0x80; 80]);
        assert_eq!(h.status_of(message).0, S_OK);
    }
    // A stopped stream keeps what is queued; RELEASE returns it, empty.
    assert_eq!(h.pcm(R_PCM_STOP, 1), S_OK);
    let late = h.rx(1, 80);
    std::thread::sleep(Duration::from_millis(20));
    assert!(h.take_used(RXQ).is_empty());
    assert_eq!(h.pcm(R_PCM_RELEASE, 1), S_OK);
    assert_eq!(h.take_used(RXQ), vec![(late.head, 8)]);
    assert_eq!(h.sound.stats().rx_bytes_copied, 240);
}

// ----- the event loop and ALSA -----

#[test]
fn kicks_reach_the_device_through_the_event_loop() {
    use event_manager::{EventManager, SubscriberOps};
    let mut h = SoundRig::new(null_config());
    let mut manager = EventManager::<SharedSubscriber>::new().unwrap();
    manager.add_subscriber(h.subscribers[0].clone());
    let req = h.alloc(16);
    h.mem
        .write_slice(&query(R_PCM_INFO, 0, 2, 32), GuestAddress(req))
        .unwrap();
    let resp = h.alloc(68);
    let head = h.queues[0].add(&h.mem, &[(req, 16, false), (resp, 68, true)]);
    h.kicks[0].write(1).unwrap();
    manager.run_with_timeout(1000).unwrap();
    assert_eq!(h.take_used(CONTROLQ), vec![(head, 68)]);
    // A kick on the eventq changes nothing.
    h.kicks[1].write(1).unwrap();
    manager.run_with_timeout(1000).unwrap();
    assert_eq!(h.queues[1].used_idx(&h.mem), 0);
}

#[test]
fn alsa_file_pcm_records_the_guest_pcm_bit_exactly() {
    let file = TempFile::new("alsa.raw");
    let config = null_config().with_backend(BackendConfig::Alsa {
        device: format!("file:'{}',raw", file.0.display()),
    });
    let mut h = SoundRig::new(config);
    h.prepare(SetParams {
        buffer_bytes: 192 * 10,
        ..fast_params(0)
    });
    let mut expected = Vec::new();
    for i in 0..10 {
        let data = pattern(192, i);
        h.tx(0, &data);
        expected.extend(data);
    }
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    h.wait_used(TXQ, 10, Duration::from_secs(2));
    // Let it underrun a few periods: silence follows the data.
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    // Reset joins the retired thread, which closes the PCM and flushes the file.
    h.sound.reset();
    let recorded = std::fs::read(&file.0).unwrap();
    assert!(recorded.len() > expected.len());
    assert!(
        recorded[..expected.len()] == expected[..],
        "the recording differs"
    );
    assert!(
        recorded[expected.len()..].iter().all(|b| *b == 0),
        "not silence"
    );
    let stats = h.sound.stats();
    assert_eq!(stats.tx_bytes_copied, 1920);
    assert_eq!(stats.tx_bytes_played, 1920);
    assert!(stats.tx_silence_bytes > 0);
}

/// The whole device on a real, paced PCM: run with a PulseAudio server reachable (PULSE_SERVER
/// set) and `CANTO_ALSA_TEST_PCM=pulse`: `cargo test -- --ignored`. The `tee` plugin records
/// exactly what the device handed to ALSA.
#[test]
#[ignore]
fn a_paced_alsa_pcm_plays_the_guest_pcm_in_real_time() {
    const IN_FLIGHT: usize = 32;
    let Some(slave) = paced_alsa_pcm() else {
        return;
    };
    let file = TempFile::new("tee.raw");
    let config = null_config().with_backend(BackendConfig::Alsa {
        device: format!("tee:{slave},'{}',raw", file.0.display()),
    });
    let mut h = SoundRig::new(config);
    // 10 ms periods, 32 per buffer, 100 periods of audio. 32 in flight give the test thread
    // (the "guest") 320 ms of slack: with 8 (80 ms) a slow host let it run dry once in about
    // five runs, and the device then rightly played a period of silence.
    let params = SetParams {
        period_bytes: 1920,
        buffer_bytes: 1920 * IN_FLIGHT as u32,
        ..fast_params(0)
    };
    h.prepare(params);
    let mut expected = Vec::new();
    for i in 0..IN_FLIGHT as u8 {
        let data = pattern(1920, i);
        h.tx(0, &data);
        expected.extend(data);
    }
    let start = Instant::now();
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    // Like the Linux driver: queue a period each time one completes.
    let mut returned = 0;
    let mut sent = IN_FLIGHT;
    while sent < 100 {
        returned += h.wait_used(TXQ, 1, Duration::from_secs(10)).len();
        while sent < 100 && sent - returned < IN_FLIGHT {
            let data = pattern(1920, sent as u8);
            h.tx(0, &data);
            expected.extend(data);
            sent += 1;
        }
    }
    h.wait_used(TXQ, 100 - returned, Duration::from_secs(10));
    let elapsed = start.elapsed();
    assert_eq!(h.pcm(R_PCM_STOP, 0), S_OK);
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    h.sound.reset();
    let stats = h.sound.stats();
    eprintln!("100 periods of 10 ms in {elapsed:?}: {stats:?}");
    let recorded = std::fs::read(&file.0).unwrap();
    assert!(
        recorded[..expected.len()] == expected[..],
        "the recording differs"
    );
    assert_eq!(stats.tx_underruns, 0);
    // Not asserted: `backend_xruns`. Whether PulseAudio's plugin ran dry once depends on how
    // promptly a busy host schedules the period thread (it did once in 100 periods on a slow
    // machine); the exact recording above is what shows the device lost and added nothing, and
    // the bench measures the timing.
    // Paced by the device: never faster than real time. (How close to real time it stays is a
    // benchmark's business, not a test's: a busy machine may only make it slower.)
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
}

/// Ten seconds of audio queued on a paced PCM without START: 100 ms periods, a 5 s buffer (the
/// device holds up to twice that). Returns the harness, the messages and the bytes queued.
fn queue_ten_seconds_unstarted(slave: &str) -> (SoundRig, Vec<Sent>, u64) {
    let config = null_config().with_backend(BackendConfig::Alsa {
        device: slave.to_string(),
    });
    let mut h = SoundRig::new(config);
    let period = 19200; // 100 ms of S16 stereo at 48 kHz
    let params = SetParams {
        period_bytes: period,
        buffer_bytes: period * 50,
        ..fast_params(0)
    };
    h.prepare(params);
    let sent: Vec<Sent> = (0..100)
        .map(|i| h.tx(0, &pattern(period as usize, i as u8)))
        .collect();
    assert!(h.take_used(TXQ).is_empty(), "a message came back unplayed");
    (h, sent, 100 * u64::from(period))
}

/// RELEASE of a stream holding 10 s of unplayed audio (paced PCM, never started) is answered OK
/// long before the audio could have played, with every message back (status OK); what the host
/// device could not take is dropped and counted. The next PREPARE does not wait for playback.
#[test]
#[ignore]
fn a_release_with_seconds_queued_answers_at_once_and_prepare_follows() {
    let Some(slave) = paced_alsa_pcm() else {
        return;
    };
    let (mut h, sent, queued) = queue_ten_seconds_unstarted(&slave);
    let start = Instant::now();
    let status = h.pcm(R_PCM_RELEASE, 0);
    let release = start.elapsed();
    assert_eq!(status, S_OK, "RELEASE after {release:?}");
    // The Linux driver's control timeout is 1 s; 3 s leaves a busy machine a large margin and
    // is still far below the 10 s of audio.
    assert!(release < Duration::from_secs(3), "RELEASE took {release:?}");
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
    assert!(stats.tx_bytes_dropped_on_release > 0, "{stats:?}");
    assert_eq!(
        stats.tx_bytes_played + stats.tx_bytes_dropped_on_release,
        queued,
        "{stats:?}"
    );
    assert_eq!(stats.io_errors, 0, "{stats:?}");

    let start = Instant::now();
    let status = h.pcm(R_PCM_PREPARE, 0);
    let prepare = start.elapsed();
    assert_eq!(status, S_OK);
    assert!(prepare < Duration::from_secs(2), "PREPARE took {prepare:?}");
    eprintln!("RELEASE {release:?}, PREPARE {prepare:?}: {stats:?}");
    assert_eq!(h.pcm(R_PCM_RELEASE, 0), S_OK);
    let start = Instant::now();
    h.sound.reset();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

/// A device reset right after RELEASE of 10 s of unplayed audio (paced PCM) returns at once:
/// a vCPU writing device_status = 0 never waits for the host device to play.
#[test]
#[ignore]
fn a_reset_after_a_release_with_seconds_queued_does_not_wait_for_playback() {
    let Some(slave) = paced_alsa_pcm() else {
        return;
    };
    let (mut h, sent, _) = queue_ten_seconds_unstarted(&slave);
    let start = Instant::now();
    // Whatever RELEASE answers, the reset that follows must not wait for the audio.
    h.pcm(R_PCM_RELEASE, 0);
    h.sound.reset();
    let elapsed = start.elapsed();
    assert!(
        elapsed < Duration::from_secs(2),
        "RELEASE + reset took {elapsed:?}"
    );
    eprintln!("RELEASE + reset {elapsed:?}: {:?}", h.sound.stats());
    drop(sent);
}

// ----- host cost of idle streams -----

/// The ids of this process's threads named `name`.
fn threads_named(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|entry| {
            let tid = entry.ok()?.file_name().to_str()?.parse::<u32>().ok()?;
            let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).ok()?;
            (comm.trim_end() == name).then_some(tid)
        })
        .collect()
}

/// CPU time (user + system) thread `tid` has used, in clock ticks.
fn thread_cpu_ticks(tid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

/// How many times thread `tid` of this process has been switched out (voluntary + involuntary
/// context switches), which is how often it woke.
fn thread_context_switches(tid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap_or_default();
    status
        .lines()
        .filter(|l| {
            l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Issue 12 finding 2: with periods of one frame an idle started stream's period thread woke
/// 10^4-10^5 times a second. Whatever SET_PARAMS the device accepts, an idle started stream (no
/// buffers queued), output or input, wakes at most about once per millisecond (its shortest
/// period). The test counts wake-ups, not CPU time: what a wake-up costs is the machine's (one
/// 1 kHz thread measured 0.4 % of a core on one host and 5.5 % on a slower one), the count is
/// the device's.
#[test]
fn idle_started_streams_wake_at_most_once_a_millisecond() {
    // Stream ids 3 (output) and 7 (input) name threads "snd-out3" and "snd-in7", which no other
    // test of this process starts.
    let config = SoundConfig {
        outputs: 4,
        inputs: 4,
        ..null_config()
    };
    let mut h = SoundRig::new(config);
    let rate = rate_code(192_000).unwrap();
    let s16_stereo = |stream_id: u32, frames: u32| SetParams {
        stream_id,
        buffer_bytes: frames * 4,
        period_bytes: frames * 4,
        features: 0,
        channels: 2,
        format: PcmFormat::S16.code(),
        rate,
    };
    for (stream, name) in [(3, "snd-out3"), (7, "snd-in7")] {
        // One frame (5 us) if the device takes it; otherwise it must say NOT_SUPP and take
        // the shortest period it supports (1 ms).
        let status = h.set_params(s16_stereo(stream, 1));
        if status != S_OK {
            assert_eq!(status, S_NOT_SUPP, "stream {stream}: one-frame periods");
            assert_eq!(h.set_params(s16_stereo(stream, 192)), S_OK);
        }
        assert_eq!(h.pcm(R_PCM_PREPARE, stream), S_OK);
        assert_eq!(h.pcm(R_PCM_START, stream), S_OK);
        assert_eq!(threads_named(name).len(), 1, "{name}");
    }
    let tids: Vec<u32> = ["snd-out3", "snd-in7"]
        .iter()
        .flat_map(|name| threads_named(name))
        .collect();
    let before: Vec<(u64, u64)> = tids
        .iter()
        .map(|tid| (thread_cpu_ticks(*tid), thread_context_switches(*tid)))
        .collect();
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let elapsed = started.elapsed().as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    for (tid, (ticks_before, switches_before)) in tids.iter().zip(before) {
        let share = (thread_cpu_ticks(*tid) - ticks_before) as f64 / ticks_per_second / elapsed;
        let wakeups = (thread_context_switches(*tid) - switches_before) as f64 / elapsed;
        eprintln!(
            "idle started stream thread {tid}: {wakeups:.0} wake-ups/s, {:.2} % of a core",
            share * 100.0
        );
        // 1 ms periods: ~1000 a second; the bug was 10^4-10^5.
        assert!(
            wakeups < 2500.0,
            "an idle started stream's thread {tid} woke {wakeups:.0} times a second"
        );
    }
    for stream in [3, 7] {
        assert_eq!(h.pcm(R_PCM_STOP, stream), S_OK);
        assert_eq!(h.pcm(R_PCM_RELEASE, stream), S_OK);
    }
}

/// Issue 12 finding 5: while DMA is not allowed (Bus Master Enable clear) a started stream's
/// period thread neither reads nor returns the messages it holds; once it is allowed again they
/// all complete.
#[test]
fn period_threads_leave_messages_alone_while_dma_is_not_allowed() {
    let mut h = SoundRig::new(null_config());
    let params = slow_params(0);
    h.prepare(params);
    // Six 10 ms periods queued (the stream holds at most 2 x buffer_bytes = 8), then START.
    let sent: Vec<Sent> = (0..6)
        .map(|i| h.tx(0, &pattern(params.period_bytes as usize, i)))
        .collect();
    assert_eq!(h.pcm(R_PCM_START, 0), S_OK);
    h.interrupt.set_dma_allowed(false);
    let answered = |h: &SoundRig| {
        sent.iter()
            .filter(|m| h.status_of(m).0 != 0xeeee_eeee)
            .count()
    };
    // What was already under way settles; then 15 periods pass with nothing returned.
    std::thread::sleep(Duration::from_millis(30));
    let before = answered(&h);
    let used_before = h.take_used(TXQ).len();
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(
        answered(&h),
        before,
        "statuses written while DMA is not allowed"
    );
    assert!(
        h.take_used(TXQ).is_empty(),
        "used entries while DMA is not allowed"
    );
    assert!(
        before < sent.len(),
        "all {before} messages done before DMA stopped"
    );
    h.interrupt.set_dma_allowed(true);
    let rest = h.wait_used(TXQ, sent.len() - used_before, Duration::from_secs(5));
    assert_eq!(rest.len() + used_before, sent.len());
    assert!(sent.iter().all(|m| h.status_of(m).0 == S_OK));
}
