//! snd_io: TX and RX messages, their stream ids, lengths and descriptor layouts chosen by the
//! input, on the txq and rxq of a virtio-snd device (null backend) whose streams are prepared
//! (and some started) first, with control requests interleaved.
//!
//! Input: `u8 topology` (see `sound_config`), `u8 flags` (bit 0: EVENT_IDX), 5 bytes of
//! `ParamsChoice` per stream (SET_PARAMS + PREPARE), `u8 start mask`, then operations until the
//! input ends (at most 128):
//! - `op % 8 == 0`: a TX message: `u8 stream` (>= 0xf0: then `u32 stream`), `u16 PCM length`,
//!   a chain layout (`decode_chain`) over the payload `stream id + PCM`; kicked unless `op & 0x80`.
//! - 1: an RX message: `u8 stream`, a chain layout over the payload `stream id`; same kick rule.
//! - 2: kick queue `u8 % 4`.
//! - 3: a well-formed PREPARE/START/STOP/RELEASE: `u8 code, u8 stream`.
//! - 4: a well-formed SET_PARAMS: `u8 stream`, 5 bytes of `ParamsChoice`.
//! - 5: pause `u8` (`Pauses`: the period threads consume and fill messages meanwhile).
//! - 6: make an earlier head available again (a driver re-using heads): `u8 queue, u8 which`.
//! - 7: a raw control request: `u8 len`, payload, chain layout.
//!
//! Checked: nothing panics, and every chain made available on the txq and rxq comes back: at the
//! end every stream gets STOP and RELEASE (RELEASE returns every queued message before it is
//! answered; if messages are still out, PREPARE and RELEASE again, for a stream left with new
//! parameters) and the harness waits at most 2 s for the used rings (unless the input wrote over
//! the rings through a writable descriptor). Then device reset.
#![no_main]

use std::time::Duration;

use canto_devices::virtio::snd::wire::R_PCM_PREPARE;
use canto_fuzz::*;
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 128;

fn stream_id(r: &mut Reader, streams: u32) -> u32 {
    let s = r.u8();
    if s >= 0xf0 {
        r.u32()
    } else {
        // One id past the last stream is in range too: it must be refused.
        u32::from(s) % (streams + 1)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut pauses = Pauses::new();
    let mut rig = rig_from_input(&mut r);
    let streams = rig.streams;
    for id in 0..streams {
        let params = ParamsChoice::read(&mut r);
        rig.try_control(&params.request(id), 4);
        rig.try_pcm(R_PCM_PREPARE, id);
    }
    let start = r.u8();
    for id in 0..streams {
        if start & (1 << id) != 0 {
            rig.try_pcm(PCM_CODES[1], id);
        }
    }
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        match op % 8 {
            0 => {
                let id = stream_id(&mut r, streams);
                let len = usize::from(r.u16());
                let mut payload = id.to_le_bytes().to_vec();
                payload.extend((0..len).map(|i| i as u8));
                let (descs, opts) =
                    decode_chain(&mut r, &rig.mem, MEM_SIZE, &mut rig.bump, &payload);
                rig.add(TXQ, &descs, opts);
                if op & 0x80 == 0 {
                    rig.kick(TXQ);
                }
            }
            1 => {
                let id = stream_id(&mut r, streams);
                let payload = id.to_le_bytes();
                let (descs, opts) =
                    decode_chain(&mut r, &rig.mem, MEM_SIZE, &mut rig.bump, &payload);
                rig.add(RXQ, &descs, opts);
                if op & 0x80 == 0 {
                    rig.kick(RXQ);
                }
            }
            2 => rig.kick(usize::from(r.u8() % 4)),
            3 => {
                let code = PCM_CODES[usize::from(r.u8() % 4)];
                let id = stream_id(&mut r, streams);
                rig.try_pcm(code, id);
            }
            4 => {
                let id = stream_id(&mut r, streams);
                let params = ParamsChoice::read(&mut r);
                rig.try_control(&params.request(id), 4);
            }
            5 => pauses.pause(r.u8()),
            6 => {
                let q = if r.u8() & 1 == 0 { TXQ } else { RXQ };
                let which = usize::from(r.u8());
                let queue = &mut rig.queues[q];
                if !queue.heads.is_empty() {
                    let head = queue.heads[which % queue.heads.len()];
                    queue.publish(&rig.mem, head);
                    rig.kick(q);
                }
            }
            _ => {
                let (descs, opts) = read_raw_chain(&mut r, &rig.mem, &mut rig.bump);
                rig.add(CONTROLQ, &descs, opts);
                rig.kick(CONTROLQ);
            }
        }
    }
    rig.kick(TXQ);
    rig.kick(RXQ);
    rig.release_all(true);
    if !rig.tampered {
        for (q, name) in [(TXQ, "TX"), (RXQ, "RX")] {
            if !rig.wait_all_returned(q, Duration::from_secs(2)) {
                rig.assert_all_returned(q, &format!("{name} messages after RELEASE (2 s)"));
            }
        }
    }
    rig.reset();
});
