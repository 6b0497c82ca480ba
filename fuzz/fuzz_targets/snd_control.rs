//! snd_control: a sequence of control requests, their bytes and descriptor layouts chosen by the
//! input, on the controlq of an activated virtio-snd device (null backend).
//!
//! Input: `u8 topology` (see `sound_config`), `u8 flags` (bit 0: EVENT_IDX), then operations
//! until the input ends (at most 96):
//! - `op % 8` in 0..=2: a raw request: `u8 len`, `len` payload bytes, a chain layout
//!   (`decode_chain`); kicked at once unless `op & 0x80`.
//! - 3: kick queue `u8 % 4` (also the eventq, txq and rxq, empty).
//! - 4: tamper with the controlq's rings: `u8 what, u16 value` (the answer check is off after).
//! - 5: pause `u8` (`Pauses`: let the period threads run).
//! - 6: a well-formed PREPARE/START/STOP/RELEASE: `u8 code, u8 stream`.
//! - 7: a well-formed SET_PARAMS: `u8 stream`, 5 bytes of `ParamsChoice`.
//!
//! Checked: nothing panics (in any thread: libfuzzer-sys aborts on a panic), and after every
//! kick each chain made available on the controlq has come back on its used ring (unless the input
//! wrote over the rings). The run ends with STOP and RELEASE on every stream and a device reset,
//! which joins every period thread.
#![no_main]

use canto_fuzz::*;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const MAX_OPS: usize = 96;

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut pauses = Pauses::new();
    let mut rig = rig_from_input(&mut r);
    let mut deferred = false;
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        match op % 8 {
            0..=2 => {
                let (descs, opts) = read_raw_chain(&mut r, &rig.mem, &mut rig.bump);
                rig.add(CONTROLQ, &descs, opts);
                if op & 0x80 == 0 {
                    rig.kick(CONTROLQ);
                } else {
                    deferred = true;
                }
            }
            3 => {
                let q = usize::from(r.u8() % 4);
                rig.kick(q);
                if q == CONTROLQ {
                    deferred = false;
                }
            }
            4 => {
                let what = r.u8();
                let value = r.u16();
                let q = &rig.queues[CONTROLQ];
                let _ = rig.mem.write_obj(value, GuestAddress(ring_field(q, what)));
                rig.tampered = true;
            }
            5 => pauses.pause(r.u8()),
            6 => {
                let code = PCM_CODES[usize::from(r.u8() % 4)];
                let stream = u32::from(r.u8() % 4);
                rig.try_pcm(code, stream);
                deferred = false;
            }
            _ => {
                let stream = u32::from(r.u8() % 4);
                let params = ParamsChoice::read(&mut r);
                rig.try_control(&params.request(stream), 4);
                deferred = false;
            }
        }
        if !deferred {
            rig.assert_all_returned(CONTROLQ, "after a controlq kick");
        }
    }
    rig.kick(CONTROLQ);
    rig.assert_all_returned(CONTROLQ, "at the end");
    rig.release_all(false);
    rig.assert_all_returned(CONTROLQ, "after RELEASE");
    rig.reset();
});
