//! A fake virtio-snd driver around a real [`Sound`] device: the devices crate's shared fake
//! driver (`virtio::test_utils`: split queues in real guest memory, the device's queue
//! notifications delivered through its event-loop subscriber, its interrupts recorded with
//! timestamps), and the bench's own fixed buffers on top.
//!
//! TX messages live in fixed slots: slot `k` owns descriptors `3k..3k+3` (header, PCM, status)
//! and a fixed piece of guest memory, so re-sending a slot only writes the available ring. The
//! control request and its response have fixed buffers and descriptors 0 and 1 too, so that a
//! measured request costs the driver no allocation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use canto_devices::virtio::snd::wire::{
    SetParams, CONTROLQ, PCM_STATUS_SIZE, R_PCM_INFO, R_PCM_PREPARE, R_PCM_RELEASE, R_PCM_START,
    R_PCM_STOP, S_OK, TXQ,
};
use canto_devices::virtio::snd::{Backend, BackendConfig, Sound, SoundConfig, SoundStatsSnapshot};
use canto_devices::virtio::test_utils::sound::{self, pattern, pcm_request, query};
pub use canto_devices::virtio::test_utils::LoopMode;
use canto_devices::virtio::test_utils::{Desc, InterruptRecorder, RigLayout, SoundRig};
use canto_devices::virtio::VIRTIO_F_VERSION_1;
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM of the fake machine.
pub const MEM_SIZE: u64 = 64 << 20;
/// Queue `i` is laid out at `i * QUEUE_STRIDE`.
const QUEUE_STRIDE: u64 = 0x8000;
const QUEUE_SIZE: u16 = 256;
const CTL_REQUEST: u64 = 0x4_0000;
const CTL_RESPONSE: u64 = 0x4_1000;
const CTL_RESPONSE_MAX: u32 = 0x1000;
const TX_BASE: u64 = 1 << 20;
/// The most TX messages in flight (3 descriptors each, 256 descriptors).
pub const MAX_TX_SLOTS: usize = 80;
/// Set in every PCM tag, so a tag is never mistaken for silence.
pub const TAG_BIT: u64 = 1 << 63;

/// A sound device with one output stream, driven by a fake driver.
pub struct Device {
    rig: SoundRig,
    mode: LoopMode,
    /// The device's interrupts, per queue; the txq's timestamped on request
    /// (`record_times(Some(TXQ))`).
    pub irq: Arc<InterruptRecorder>,
    used_buf: Vec<(u16, u32)>,
    tx_data_len: u32,
    tx_stride: u64,
}

impl Device {
    /// A device with one output stream (id 0) and no input, on `backend`.
    pub fn new(backend: Arc<dyn Backend>, mode: LoopMode) -> Device {
        let config = SoundConfig {
            backend: BackendConfig::Null,
            capture: None,
            outputs: 1,
            inputs: 0,
            jacks: 0,
        };
        let sound = Sound::with_backend(config, backend).expect("a valid configuration");
        let layout = RigLayout {
            mem_size: MEM_SIZE,
            queue_stride: QUEUE_STRIDE,
            queue_size: QUEUE_SIZE,
            // The bench places its buffers itself.
            data_start: TX_BASE,
            data_end: MEM_SIZE,
        };
        let rig = SoundRig::build(sound, VIRTIO_F_VERSION_1, mode, layout, None);
        Device {
            mode,
            irq: rig.interrupt.clone(),
            rig,
            used_buf: Vec::with_capacity(256),
            tx_data_len: 0,
            tx_stride: 0,
        }
    }

    /// The device's counters.
    pub fn stats(&self) -> SoundStatsSnapshot {
        self.rig.sound.stats()
    }

    /// The Linux thread id of the event-loop thread (threaded mode).
    pub fn event_loop_tid(&self) -> Option<i32> {
        self.rig.event_loop_tid()
    }

    /// Notifies `queue`; in inline mode the event loop runs once (the device takes it); in
    /// direct mode the device's handler runs.
    pub fn kick(&mut self, queue: u16) {
        if self.mode == LoopMode::Direct {
            self.rig.kick(queue);
        } else {
            self.rig.notify(queue);
            self.rig.run_events_once();
        }
    }

    fn take_used(&mut self, queue: u16) -> Vec<(u16, u32)> {
        let mut out = std::mem::take(&mut self.used_buf);
        out.clear();
        self.rig.queues[usize::from(queue)].take_used_into(&self.rig.mem, &mut out);
        out
    }

    /// Sends a control request with a `response_len`-byte response buffer; returns the used
    /// length. The response is at [`Device::control_response`].
    pub fn control_raw(&mut self, request: &[u8], response_len: u32) -> u32 {
        let response_len = response_len.clamp(4, CTL_RESPONSE_MAX);
        let mem = &self.rig.mem;
        mem.write_slice(request, GuestAddress(CTL_REQUEST))
            .expect("control buffer");
        let q = &mut self.rig.queues[usize::from(CONTROLQ)];
        q.write_chain_at(
            mem,
            0,
            &[
                Desc::readable(CTL_REQUEST, request.len() as u32),
                Desc::writable(CTL_RESPONSE, response_len),
            ],
        );
        let before = self.irq.count(CONTROLQ);
        q.publish(mem, 0);
        self.kick(CONTROLQ);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let used = self.take_used(CONTROLQ);
            if let Some(&(_, len)) = used.first() {
                self.used_buf = used;
                return len;
            }
            self.used_buf = used;
            assert!(
                Instant::now() < deadline,
                "a control request got no answer (DEVICE_NEEDS_RESET reported {} times: the \
                 bench's driver broke a ring)",
                self.irq.needs_reset_count()
            );
            self.irq
                .wait_beyond(CONTROLQ, before, Duration::from_millis(10));
        }
    }

    /// The first `len` bytes of the last control response.
    pub fn control_response(&self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.rig
            .mem
            .read_slice(&mut out, GuestAddress(CTL_RESPONSE))
            .expect("control buffer");
        out
    }

    /// Sends a control request with a 4-byte status reply; returns the status.
    pub fn control(&mut self, request: &[u8]) -> u32 {
        self.control_raw(request, 4);
        let reply = self.control_response(4);
        u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]])
    }

    /// PCM_INFO for `count` streams from 0; returns the status.
    pub fn pcm_info(&mut self, count: u32) -> u32 {
        let request = query(R_PCM_INFO, 0, count, 32);
        self.control_raw(&request, 4 + 32 * count);
        let reply = self.control_response(4);
        u32::from_le_bytes([reply[0], reply[1], reply[2], reply[3]])
    }

    pub fn pcm(&mut self, code: u32, stream: u32) -> u32 {
        self.control(&pcm_request(code, stream))
    }

    pub fn set_params(&mut self, params: &SetParams) -> u32 {
        self.control(&params.encode())
    }

    /// SET_PARAMS + PREPARE, and lays out `slots` TX slots of one period each.
    pub fn prepare(&mut self, params: &SetParams, slots: usize) {
        assert_eq!(self.set_params(params), S_OK, "SET_PARAMS refused");
        assert_eq!(
            self.pcm(R_PCM_PREPARE, params.stream_id),
            S_OK,
            "PREPARE refused"
        );
        self.setup_tx(params.stream_id, params.period_bytes, slots);
    }

    pub fn start(&mut self, stream: u32) {
        assert_eq!(self.pcm(R_PCM_START, stream), S_OK, "START refused");
    }

    /// STOP + RELEASE (which returns every queued message).
    pub fn stop_release(&mut self, stream: u32) {
        assert_eq!(self.pcm(R_PCM_STOP, stream), S_OK, "STOP refused");
        assert_eq!(self.pcm(R_PCM_RELEASE, stream), S_OK, "RELEASE refused");
    }

    fn slot_addr(&self, slot: usize) -> u64 {
        TX_BASE + slot as u64 * self.tx_stride
    }

    /// Writes `slots` TX chains (header, `data_len` bytes of PCM, status) for `stream`; the PCM
    /// is a pattern, its first 8 bytes the tag `send_tx` writes.
    fn setup_tx(&mut self, stream: u32, data_len: u32, slots: usize) {
        assert!(slots <= MAX_TX_SLOTS);
        self.tx_data_len = data_len;
        self.tx_stride = (64 + u64::from(data_len)).next_multiple_of(64);
        assert!(TX_BASE + slots as u64 * self.tx_stride <= MEM_SIZE);
        let pattern = pattern(data_len as usize, 7);
        for slot in 0..slots {
            let base = self.slot_addr(slot);
            let mem = &self.rig.mem;
            mem.write_slice(&stream.to_le_bytes(), GuestAddress(base))
                .expect("tx slot");
            mem.write_slice(&pattern, GuestAddress(base + 64))
                .expect("tx slot");
            self.rig.queues[usize::from(TXQ)].write_chain_at(
                mem,
                3 * slot as u16,
                &[
                    Desc::readable(base, 4),
                    Desc::readable(base + 64, data_len),
                    Desc::writable(base + 8, PCM_STATUS_SIZE as u32),
                ],
            );
        }
    }

    /// Makes TX slot `slot` available with `tag` in its first PCM bytes (no notification).
    pub fn send_tx(&mut self, slot: usize, tag: u64) {
        let base = self.slot_addr(slot);
        let mem = &self.rig.mem;
        mem.write_obj(tag | TAG_BIT, GuestAddress(base + 64))
            .expect("tx slot");
        self.rig.queues[usize::from(TXQ)].publish(mem, 3 * slot as u16);
    }

    /// The TX slots returned since the last call, with their status.
    pub fn reap_tx(&mut self, out: &mut Vec<(usize, u32)>) {
        let used = self.take_used(TXQ);
        for &(head, _) in &used {
            let slot = usize::from(head / 3);
            let status: u32 = self
                .rig
                .mem
                .read_obj(GuestAddress(self.slot_addr(slot) + 8))
                .expect("tx slot");
            out.push((slot, status));
        }
        self.used_buf = used;
    }

    /// The PCM bytes of one TX message.
    pub fn tx_data_len(&self) -> u32 {
        self.tx_data_len
    }
}

/// S16 stereo at 48 kHz: `period_frames` per period, `periods` per buffer.
pub fn stereo_48k(period_frames: u32, periods: u32) -> SetParams {
    sound::stereo_48k(0, period_frames, periods)
}
