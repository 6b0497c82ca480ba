//! vsock: packets from the guest with headers the input chooses (ops, ports, lengths, flags,
//! credit fields, forged CIDs and types) in chain layouts it chooses, rx buffers of any shape,
//! and host programs on the Unix sockets: clients of the device's socket (good and bad
//! `CONNECT` lines), writes, reads, half-closes and closes on both host-initiated and accepted
//! guest-initiated connections.
//!
//! Input: operations until the input ends (at most 128):
//! - `op % 8 == 0`: a tx packet: `u8 opcode` (`% 9`), `u8 src port`, `u8 dst` (`< 0x80`: port
//!   [`VSOCK_LISTEN_PORT`], `< 0xc0`: the port of a host-initiated connection, else `u32
//!   port`), `u8 forge` (bit 0: src_cid 0x1234, bit 1: dst_cid 5, bit 2: type 2), `u16 len`,
//!   `u8 flags`, `u32 buf_alloc`, `u32 fwd_cnt`, `u16 payload bytes`, a chain layout
//!   (`decode_chain`) over header + payload; kicked unless `op & 0x80`.
//! - 1: rx buffers: `u8 n` (`% 8 + 1`) chains, each a layout over nothing (writable parts).
//! - 2: a host client: `u8 kind` (`% 4`: `CONNECT <u8>\n`, `CONNECT 1000...\n` with data, a
//!   garbage line, nothing yet).
//! - 3: a host write: `u8 which`, `u16 len` bytes.
//! - 4: a host read: `u8 which` (up to 64 KiB, non-blocking).
//! - 5: a host close or half-close: `u8 which`, bit 7 of `op`: half.
//! - 6: accept on the `PATH_1000` listener.
//! - 7: kick queue `u8 % 3`.
//!
//! Checked: nothing panics, and every tx chain comes back (tx buffers are only read) unless the
//! input wrote over the rings; rx chains the device holds are at most a queue's worth.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;

use canto_fuzz::*;
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 128;
const MAX_HOSTS: usize = 16;

fn header(fields: (u64, u64, u32, u32, u32, u16, u16, u32, u32, u32)) -> [u8; 44] {
    let (src_cid, dst_cid, src_port, dst_port, len, type_, op, flags, buf_alloc, fwd_cnt) = fields;
    let mut h = [0u8; 44];
    h[0..8].copy_from_slice(&src_cid.to_le_bytes());
    h[8..16].copy_from_slice(&dst_cid.to_le_bytes());
    h[16..20].copy_from_slice(&src_port.to_le_bytes());
    h[20..24].copy_from_slice(&dst_port.to_le_bytes());
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[28..30].copy_from_slice(&type_.to_le_bytes());
    h[30..32].copy_from_slice(&op.to_le_bytes());
    h[32..36].copy_from_slice(&flags.to_le_bytes());
    h[36..40].copy_from_slice(&buf_alloc.to_le_bytes());
    h[40..44].copy_from_slice(&fwd_cnt.to_le_bytes());
    h
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut rig = VsockRig::new();
    let mut hosts: Vec<UnixStream> = Vec::new();
    let mut scratch = vec![0u8; 64 * 1024];
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let op = r.u8();
        match op % 8 {
            0 => {
                let opcode = u16::from(r.u8() % 9);
                let src_port = u32::from(r.u8());
                let dst = r.u8();
                let dst_port = match dst {
                    0..0x80 => VSOCK_LISTEN_PORT,
                    // Host-initiated connections get ports from 2^30 up.
                    0x80..0xc0 => (1 << 30) + u32::from(dst & 0x3f),
                    _ => r.u32(),
                };
                let forge = r.u8();
                let len = u32::from(r.u16());
                let flags = u32::from(r.u8());
                let buf_alloc = r.u32();
                let fwd_cnt = r.u32();
                let payload_len = usize::from(r.u16());
                let mut payload = header((
                    if forge & 1 != 0 { 0x1234 } else { VSOCK_CID },
                    if forge & 2 != 0 { 5 } else { 2 },
                    src_port,
                    dst_port,
                    len,
                    if forge & 4 != 0 { 2 } else { 1 },
                    opcode,
                    flags,
                    buf_alloc,
                    fwd_cnt,
                ))
                .to_vec();
                payload.extend((0..payload_len).map(|i| i as u8));
                let (descs, opts) =
                    decode_chain(&mut r, &rig.mem, MEM_SIZE, &mut rig.bump, &payload);
                rig.add(VSOCK_TXQ, &descs, opts);
                if op & 0x80 == 0 {
                    rig.kick(VSOCK_TXQ);
                }
            }
            1 => {
                let n = r.u8() % 8 + 1;
                for _ in 0..n {
                    let (descs, opts) =
                        decode_chain(&mut r, &rig.mem, MEM_SIZE, &mut rig.bump, &[]);
                    rig.add(VSOCK_RXQ, &descs, opts);
                }
                rig.kick(VSOCK_RXQ);
            }
            2 => {
                let kind = r.u8();
                let port = r.u8();
                if hosts.len() < MAX_HOSTS {
                    if let Ok(mut s) = UnixStream::connect(&rig.socket) {
                        let _ = s.set_nonblocking(true);
                        let line = match kind % 4 {
                            0 => format!("CONNECT {port}\n").into_bytes(),
                            1 => format!("CONNECT {port}\nearly data").into_bytes(),
                            2 => vec![port; 40],
                            _ => Vec::new(),
                        };
                        let _ = s.write(&line);
                        hosts.push(s);
                    }
                }
                rig.run_events();
            }
            3 => {
                let which = usize::from(r.u8());
                let len = usize::from(r.u16());
                let bytes = r.bytes(len);
                if let Some(n) = (!hosts.is_empty()).then(|| which % hosts.len()) {
                    let _ = hosts[n].write(bytes);
                }
                rig.run_events();
            }
            4 => {
                let which = usize::from(r.u8());
                if let Some(n) = (!hosts.is_empty()).then(|| which % hosts.len()) {
                    let _ = hosts[n].read(&mut scratch);
                }
                rig.run_events();
            }
            5 => {
                let which = usize::from(r.u8());
                if let Some(n) = (!hosts.is_empty()).then(|| which % hosts.len()) {
                    if op & 0x80 != 0 {
                        let _ = hosts[n].shutdown(std::net::Shutdown::Write);
                    } else {
                        hosts.swap_remove(n);
                    }
                }
                rig.run_events();
            }
            6 => {
                if hosts.len() < MAX_HOSTS {
                    if let Ok((s, _)) = rig.listener.accept() {
                        let _ = s.set_nonblocking(true);
                        hosts.push(s);
                    }
                }
                rig.run_events();
            }
            _ => {
                let q = usize::from(r.u8() % 3);
                rig.kick(q);
            }
        }
    }
    // Deferred packets (`op & 0x80`) are served now.
    rig.kick(VSOCK_TXQ);
    if !rig.tampered {
        let mem = rig.mem.clone();
        let tx = rig.queues[VSOCK_TXQ].outstanding(&mem);
        assert!(tx <= 0, "{tx} tx chains were never returned");
        let rx = rig.queues[VSOCK_RXQ].outstanding(&mem);
        assert!(rx <= i64::from(QSIZE), "the device holds {rx} rx chains");
    }
});
