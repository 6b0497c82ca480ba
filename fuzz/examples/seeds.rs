//! Writes the seed corpora: `cargo run --example seeds -- [DIR]` (default `corpus`, relative to the
//! fuzz/ directory) creates `DIR/<target>/<name>` for snd_control, snd_io, pci_common_config,
//! rng and vsock.
//! Every seed is a valid driver session in the target's input format (see each target's header
//! and `canto_fuzz`), so the fuzzer starts from requests the device accepts: every control request
//! code, valid SET_PARAMS, TX and RX messages, and a full virtio-pci bring-up.

use std::path::{Path, PathBuf};

use canto_devices::virtio::snd::wire::*;
use canto_fuzz::{
    encode_chain, encode_chain_with, raw_descs, DescSpec, IndirectShape, ParamsChoice, Writer,
    DATA_START, MEM_SIZE,
};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

/// S16 (index 2 in PcmFormat::ALL) stereo at 48 kHz (rate index 6), 48-frame (1 ms) periods,
/// 4 periods per buffer: 192-byte periods.
const S16_48K_1MS: ParamsChoice = ParamsChoice {
    format: 2,
    channels: 1,
    rate: 6,
    period_frames: 47,
    periods: 3,
};
/// The smallest period: one U8 mono frame at 192 kHz (5.2 µs), 1 period per buffer.
const TINY: ParamsChoice = ParamsChoice {
    format: 1,
    channels: 0,
    rate: 11,
    period_frames: 0,
    periods: 0,
};
/// Float 8 channels at 8 kHz, 256-frame periods, 8 periods.
const FLOAT_8CH: ParamsChoice = ParamsChoice {
    format: 7,
    channels: 7,
    rate: 0,
    period_frames: 255,
    periods: 7,
};

/// Topology byte: 1 output, 1 input, `jacks` jacks.
fn topo(outputs: u8, inputs: u8, jacks: u8) -> u8 {
    outputs + 3 * inputs + 9 * jacks
}

fn query(code: u32, start: u32, count: u32, size: u32) -> Vec<u8> {
    [code, start, count, size]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

fn pcm_hdr(code: u32, stream: u32) -> Vec<u8> {
    [code, stream]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

fn set_params(stream: u32, p: &ParamsChoice) -> Vec<u8> {
    p.request(stream).to_vec()
}

struct Out {
    dir: PathBuf,
    count: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.dir.join(target);
        std::fs::create_dir_all(&dir).expect("create corpus dir");
        std::fs::write(dir.join(name), bytes).expect("write seed");
        self.count += 1;
    }
}

// ----- indirect descriptors, for every target -----

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// A chain layout with indirect descriptors somewhere, and the payload it goes with (the
/// payload's bytes are an indirect table when a payload descriptor has the INDIRECT flag).
struct IndirectCase {
    name: &'static str,
    payload: Vec<u8>,
    descs: Vec<(DescSpec, bool)>,
    shape: Option<IndirectShape>,
}

/// Every shape of indirect descriptor no device may follow (none offers
/// VIRTIO_F_INDIRECT_DESC): the whole chain in a table of the exact, a longer, a shorter, an odd,
/// zero and a 65535- or 65536-entry length, or with NEXT on the ring's descriptor; a nested
/// indirect descriptor; the payload as a table of well-formed or indirect entries; a table
/// outside RAM or across its end; an indirect descriptor with NEXT in the middle of a chain.
/// `readable` is the request the device reads (empty for virtio-rng), `writable` its response.
fn indirect_cases(request: &[u8], writable: u16) -> Vec<IndirectCase> {
    let plain = |payload: &[u8]| {
        let mut descs = Vec::new();
        if !payload.is_empty() {
            descs.push((DescSpec::Payload(payload.len() as u16), false));
        }
        descs.push((DescSpec::Writable(writable), false));
        descs
    };
    let whole = |name, shape: u8| IndirectCase {
        name,
        payload: request.to_vec(),
        descs: plain(request),
        shape: Some(IndirectShape(shape)),
    };
    let table = raw_descs(&[
        (DATA_START + 0x4_0000, 64, WRITE | NEXT, 1),
        (DATA_START + 0x4_1000, 64, WRITE, 0),
    ]);
    let nested_table = raw_descs(&[(DATA_START + 0x4_0000, 32, INDIRECT, 0)]);
    let with_table = |name, payload: Vec<u8>| IndirectCase {
        name,
        descs: vec![(DescSpec::Payload(payload.len() as u16), true)],
        payload,
        shape: None,
    };
    let mut cases = vec![
        whole("exact", 0),
        whole("longer", 1 | 3 << 2),
        whole("shorter", 2 | 8 << 2),
        whole("odd", 1 | 1 << 2),
        whole("zero", 3),
        whole("entries_65535", 3 | 1 << 2),
        whole("entries_65536", 3 | 2 << 2),
        whole("u32_max", 3 | 3 << 2),
        whole("with_next", 0x80),
        with_table("payload_table", table.clone()),
        with_table("payload_nested_table", nested_table),
    ];
    // Nested: the chain's own table holds an indirect descriptor (the payload as its table).
    let mut nested = plain(request);
    nested[0].1 = true;
    cases.push(IndirectCase {
        name: "nested",
        payload: if request.is_empty() {
            table.clone()
        } else {
            request.to_vec()
        },
        descs: if request.is_empty() {
            vec![(DescSpec::Payload(table.len() as u16), true)]
        } else {
            nested
        },
        shape: Some(IndirectShape(0)),
    });
    let mut mid = plain(request);
    mid.insert(
        mid.len() - 1,
        (
            DescSpec::Anywhere {
                addr: DATA_START,
                len: 16 * 65535,
                write: false,
            },
            true,
        ),
    );
    cases.push(IndirectCase {
        name: "huge_table_mid_chain",
        payload: request.to_vec(),
        descs: mid,
        shape: None,
    });
    for (name, addr, len) in [
        ("table_outside_ram", 0xffff_ffff_ffff_0000u64, 32u32),
        ("table_across_ram_end", MEM_SIZE - 16, 32),
        ("table_odd_len", DATA_START, 17),
    ] {
        let mut descs = plain(request);
        descs.insert(
            0,
            (
                DescSpec::Anywhere {
                    addr,
                    len,
                    write: false,
                },
                true,
            ),
        );
        cases.push(IndirectCase {
            name,
            payload: request.to_vec(),
            descs,
            shape: None,
        });
    }
    cases
}

// ----- snd_control -----

/// A raw control request op (op 0) with the given layout.
fn raw_request(w: &mut Writer, payload: &[u8], descs: &[DescSpec], indirect: bool) {
    w.u8(0).u8(payload.len() as u8).bytes(payload);
    encode_chain(w, descs, indirect, false);
}

fn simple_request(w: &mut Writer, payload: &[u8], resp: u16) {
    raw_request(
        w,
        payload,
        &[
            DescSpec::Payload(payload.len() as u16),
            DescSpec::Writable(resp),
        ],
        false,
    );
}

fn snd_control(out: &mut Out) {
    let t = "snd_control";
    let header = |topology: u8, flags: u8| {
        let mut w = Writer::new();
        w.u8(topology).u8(flags);
        w
    };
    // One seed per request code, well formed, on a 1:1 device with 2 jacks.
    let requests: Vec<(&str, Vec<u8>, u16)> = vec![
        ("jack_info", query(R_JACK_INFO, 0, 2, 24), 4 + 2 * 24),
        ("jack_remap", query(R_JACK_REMAP, 1, 0, 0), 4),
        ("pcm_info", query(R_PCM_INFO, 0, 2, 32), 4 + 2 * 32),
        (
            "pcm_info_large_items",
            query(R_PCM_INFO, 1, 1, 1024),
            4 + 1024,
        ),
        ("chmap_info", query(R_CHMAP_INFO, 0, 2, 24), 4 + 2 * 24),
        ("set_params", set_params(0, &S16_48K_1MS), 4),
        ("prepare", pcm_hdr(R_PCM_PREPARE, 0), 4),
        ("start", pcm_hdr(R_PCM_START, 0), 4),
        ("stop", pcm_hdr(R_PCM_STOP, 0), 4),
        ("release", pcm_hdr(R_PCM_RELEASE, 0), 4),
        ("ctl_info_unsupported", query(0x0300, 0, 1, 16), 4),
        ("short_header", vec![1, 0], 4),
    ];
    for (name, request, resp) in &requests {
        let mut w = header(topo(1, 1, 2), 0);
        simple_request(&mut w, request, *resp);
        out.put(t, name, &w.out);
    }
    // Every code in one session, through the raw path: the whole stream life cycle.
    let mut w = header(topo(1, 1, 2), 1);
    for (_, request, resp) in &requests {
        simple_request(&mut w, request, *resp);
    }
    for (code, stream) in [
        (R_PCM_PREPARE, 1),
        (R_PCM_START, 1),
        (R_PCM_STOP, 1),
        (R_PCM_RELEASE, 1),
    ] {
        simple_request(&mut w, &pcm_hdr(code, stream), 4);
    }
    out.put(t, "every_code_one_session", &w.out);

    // The structured ops: SET_PARAMS with the smallest period, PREPARE, START, sleep, STOP,
    // RELEASE, on both streams of a 2:2 device.
    let mut w = header(topo(2, 2, 0), 0);
    for stream in 0..4u8 {
        w.u8(7).u8(stream);
        [TINY, S16_48K_1MS, FLOAT_8CH, TINY][usize::from(stream)].write(&mut w);
        w.u8(6).u8(0).u8(stream); // PREPARE
    }
    for stream in 0..4u8 {
        w.u8(6).u8(1).u8(stream); // START
    }
    w.u8(5).u8(20); // sleep 1 ms
    for stream in 0..4u8 {
        w.u8(6).u8(2).u8(stream); // STOP
        w.u8(6).u8(3).u8(stream); // RELEASE
    }
    out.put(t, "structured_lifecycle_2x2", &w.out);

    // Layouts: the header split over several descriptors, with empty ones in between.
    let mut w = header(topo(1, 1, 0), 0);
    let req = query(R_PCM_INFO, 0, 2, 32);
    raw_request(
        &mut w,
        &req,
        &[
            DescSpec::Payload(2),
            DescSpec::Payload(0),
            DescSpec::Payload(2),
            DescSpec::Payload(12),
            DescSpec::Writable(3),
            DescSpec::Writable(0),
            DescSpec::Writable(65),
        ],
        false,
    );
    let sp = set_params(0, &S16_48K_1MS);
    raw_request(
        &mut w,
        &sp,
        &[
            DescSpec::Payload(1),
            DescSpec::Payload(7),
            DescSpec::Payload(16),
            DescSpec::Writable(2),
            DescSpec::Writable(2),
        ],
        false,
    );
    out.put(t, "split_descriptors", &w.out);

    // The same request through an indirect table, and a chain that loops.
    let mut w = header(topo(1, 1, 0), 0);
    raw_request(
        &mut w,
        &req,
        &[DescSpec::Payload(16), DescSpec::Writable(68)],
        true,
    );
    w.u8(0).u8(8).bytes(&pcm_hdr(R_PCM_PREPARE, 0));
    encode_chain(
        &mut w,
        &[DescSpec::Payload(8), DescSpec::Writable(4)],
        false,
        true,
    );
    out.put(t, "indirect_and_loop", &w.out);

    // Every shape of indirect descriptor, each followed by a well-formed request.
    let mut w = header(topo(1, 1, 0), 0);
    for case in indirect_cases(&req, 68) {
        w.u8(0).u8(case.payload.len() as u8).bytes(&case.payload);
        encode_chain_with(&mut w, &case.descs, case.shape, false);
        simple_request(&mut w, &pcm_hdr(R_PCM_PREPARE, 0), 4);
    }
    out.put(t, "indirect_shapes", &w.out);

    // Responses that cannot be written: read-only, too short, outside RAM, straddling its end;
    // requests outside RAM.
    let mut w = header(topo(1, 1, 1), 0);
    let in_ram = DATA_START + 0x10_0000;
    for resp in [
        DescSpec::Anywhere {
            addr: in_ram,
            len: 68,
            write: false,
        },
        DescSpec::Writable(3),
        DescSpec::Writable(4),
        DescSpec::Anywhere {
            addr: 1 << 40,
            len: 68,
            write: true,
        },
        DescSpec::RamEnd {
            len: 16,
            write: true,
        },
    ] {
        raw_request(&mut w, &req, &[DescSpec::Payload(16), resp], false);
    }
    raw_request(
        &mut w,
        &req,
        &[
            DescSpec::Anywhere {
                addr: MEM_SIZE + 0x1000,
                len: 16,
                write: false,
            },
            DescSpec::Writable(68),
        ],
        false,
    );
    raw_request(
        &mut w,
        &req,
        &[
            DescSpec::Anywhere {
                addr: u64::MAX - 7,
                len: 16,
                write: false,
            },
            DescSpec::Writable(68),
        ],
        false,
    );
    // A writable descriptor before a readable one.
    raw_request(
        &mut w,
        &req,
        &[DescSpec::Writable(4), DescSpec::Payload(16)],
        false,
    );
    out.put(t, "bad_layouts", &w.out);

    // Deferred requests kicked together, and kicks of the other queues.
    let mut w = header(topo(1, 0, 0), 1);
    for code in [R_PCM_INFO, R_CHMAP_INFO] {
        w.u8(0x80).u8(16).bytes(&query(code, 0, 1, 32));
        encode_chain(
            &mut w,
            &[DescSpec::Payload(16), DescSpec::Writable(36)],
            false,
            false,
        );
    }
    w.u8(3).u8(0).u8(3).u8(1).u8(3).u8(2).u8(3).u8(3);
    out.put(t, "deferred_kicks", &w.out);
}

// ----- snd_io -----

fn io_header(topology: u8, params: &[ParamsChoice], start_mask: u8) -> Writer {
    let mut w = Writer::new();
    w.u8(topology).u8(0);
    for p in params {
        p.write(&mut w);
    }
    w.u8(start_mask);
    w
}

fn tx(w: &mut Writer, stream: u8, len: u16, descs: &[DescSpec]) {
    w.u8(0).u8(stream).u16(len);
    encode_chain(w, descs, false, false);
}

fn tx_simple(w: &mut Writer, stream: u8, len: u16) {
    tx(
        w,
        stream,
        len,
        &[
            DescSpec::Payload(4),
            DescSpec::Payload(len),
            DescSpec::Writable(8),
        ],
    );
}

fn rx(w: &mut Writer, stream: u8, descs: &[DescSpec]) {
    w.u8(1).u8(stream);
    encode_chain(w, descs, false, false);
}

fn rx_simple(w: &mut Writer, stream: u8, len: u16) {
    rx(
        w,
        stream,
        &[
            DescSpec::Payload(4),
            DescSpec::Writable(len),
            DescSpec::Writable(8),
        ],
    );
}

fn snd_io(out: &mut Out) {
    let t = "snd_io";
    let one_one = topo(1, 1, 0);
    // Playback: 1 ms periods, the output started, a few periods queued and played.
    let mut w = io_header(one_one, &[S16_48K_1MS, S16_48K_1MS], 0b01);
    for _ in 0..4 {
        tx_simple(&mut w, 0, 192);
    }
    w.u8(5).u8(31);
    out.put(t, "tx_playing", &w.out);

    // Capture: the input started, RX messages filled with silence.
    let mut w = io_header(one_one, &[S16_48K_1MS, S16_48K_1MS], 0b10);
    for _ in 0..4 {
        rx_simple(&mut w, 1, 192);
    }
    w.u8(5).u8(31);
    out.put(t, "rx_capturing", &w.out);

    // Queued while prepared, then START, STOP, more messages, START, RELEASE.
    let mut w = io_header(one_one, &[TINY, TINY], 0);
    tx_simple(&mut w, 0, 16);
    rx_simple(&mut w, 1, 16);
    w.u8(3).u8(1).u8(0).u8(3).u8(1).u8(1); // START both
    w.u8(5).u8(2);
    w.u8(3).u8(2).u8(0).u8(3).u8(2).u8(1); // STOP both
    tx_simple(&mut w, 0, 3);
    rx_simple(&mut w, 1, 5);
    w.u8(3).u8(1).u8(0); // START output
    w.u8(3).u8(3).u8(1); // RELEASE input (stopped)
    rx_simple(&mut w, 1, 16); // after RELEASE: IO_ERR
    out.put(t, "tiny_periods_lifecycle", &w.out);

    // Split messages: header over two descriptors, PCM over several, status split in two.
    let mut w = io_header(one_one, &[S16_48K_1MS, S16_48K_1MS], 0b11);
    tx(
        &mut w,
        0,
        192,
        &[
            DescSpec::Payload(2),
            DescSpec::Payload(2),
            DescSpec::Payload(100),
            DescSpec::Payload(0),
            DescSpec::Payload(92),
            DescSpec::Writable(4),
            DescSpec::Writable(4),
        ],
    );
    rx(
        &mut w,
        1,
        &[
            DescSpec::Payload(1),
            DescSpec::Payload(3),
            DescSpec::Writable(100),
            DescSpec::Writable(92),
            DescSpec::Writable(5),
            DescSpec::Writable(3),
        ],
    );
    w.u8(5).u8(31);
    out.put(t, "split_messages", &w.out);

    // Malformed messages: no status, read-only status, short status, no PCM, short header,
    // PCM outside RAM, status straddling the end of RAM, more PCM than a message may carry,
    // wrong direction and unknown streams.
    let mut w = io_header(topo(2, 1, 0), &[S16_48K_1MS, TINY, S16_48K_1MS], 0b001);
    tx(&mut w, 0, 0, &[DescSpec::Payload(4)]);
    tx(
        &mut w,
        0,
        64,
        &[
            DescSpec::Payload(68),
            DescSpec::Anywhere {
                addr: DATA_START,
                len: 8,
                write: false,
            },
        ],
    );
    tx(
        &mut w,
        0,
        64,
        &[DescSpec::Payload(68), DescSpec::Writable(7)],
    );
    tx(&mut w, 0, 0, &[DescSpec::Payload(4), DescSpec::Writable(8)]);
    tx(&mut w, 0, 0, &[DescSpec::Payload(2), DescSpec::Writable(8)]);
    tx(
        &mut w,
        0,
        0,
        &[
            DescSpec::Payload(4),
            DescSpec::Anywhere {
                addr: 1 << 36,
                len: 192,
                write: false,
            },
            DescSpec::Writable(8),
        ],
    );
    tx(
        &mut w,
        0,
        64,
        &[
            DescSpec::Payload(68),
            DescSpec::RamEnd {
                len: 8,
                write: true,
            },
        ],
    );
    tx(
        &mut w,
        0,
        0,
        &[
            DescSpec::Payload(4),
            DescSpec::Anywhere {
                addr: DATA_START,
                len: (4 << 20) + 1,
                write: false,
            },
            DescSpec::Writable(8),
        ],
    );
    tx_simple(&mut w, 2, 64); // an input stream on the txq
    tx_simple(&mut w, 3, 64); // no such stream
    w.u8(0).u8(0xff).u32(u32::MAX).u16(8);
    encode_chain(
        &mut w,
        &[DescSpec::Payload(12), DescSpec::Writable(8)],
        false,
        false,
    );
    rx_simple(&mut w, 0, 64); // an output stream on the rxq
    rx(&mut w, 2, &[DescSpec::Payload(4), DescSpec::Writable(8)]);
    rx(&mut w, 2, &[DescSpec::Payload(4), DescSpec::Writable(7)]);
    w.u8(5).u8(10);
    out.put(t, "malformed_messages", &w.out);

    // The biggest valid message: 4 MiB of PCM in RAM, on a prepared stream; then RELEASE flushes.
    let mut w = io_header(topo(1, 0, 0), &[FLOAT_8CH], 0);
    tx(
        &mut w,
        0,
        0,
        &[
            DescSpec::Payload(4),
            DescSpec::Anywhere {
                addr: DATA_START + 0x10_0000,
                len: 4 << 20,
                write: false,
            },
            DescSpec::Writable(8),
        ],
    );
    out.put(t, "tx_4mib", &w.out);

    // More messages than a stream takes (twice its buffer), deferred then kicked together, and
    // re-published heads.
    let mut w = io_header(one_one, &[S16_48K_1MS, S16_48K_1MS], 0);
    for _ in 0..10 {
        w.u8(0x80).u8(0).u16(192);
        encode_chain(
            &mut w,
            &[
                DescSpec::Payload(4),
                DescSpec::Payload(192),
                DescSpec::Writable(8),
            ],
            false,
            false,
        );
    }
    w.u8(2).u8(2);
    w.u8(6).u8(0).u8(0).u8(6).u8(0).u8(1).u8(6).u8(1).u8(0);
    out.put(t, "over_limit_and_reused_heads", &w.out);

    // New parameters while messages are queued, then PREPARE again; a raw control request.
    let mut w = io_header(one_one, &[S16_48K_1MS, S16_48K_1MS], 0);
    tx_simple(&mut w, 0, 192);
    w.u8(4).u8(0);
    TINY.write(&mut w);
    w.u8(3).u8(0).u8(0); // PREPARE
    w.u8(3).u8(1).u8(0); // START
    w.u8(5).u8(4);
    w.u8(7).u8(16).bytes(&query(R_PCM_INFO, 0, 2, 32));
    encode_chain(
        &mut w,
        &[DescSpec::Payload(16), DescSpec::Writable(68)],
        false,
        false,
    );
    out.put(t, "set_params_with_queued_messages", &w.out);

    // Indirect and looping chains on the txq.
    let mut w = io_header(one_one, &[S16_48K_1MS, S16_48K_1MS], 0b01);
    w.u8(0).u8(0).u16(192);
    encode_chain(
        &mut w,
        &[
            DescSpec::Payload(4),
            DescSpec::Payload(192),
            DescSpec::Writable(8),
        ],
        true,
        false,
    );
    w.u8(0).u8(0).u16(192);
    encode_chain(
        &mut w,
        &[
            DescSpec::Payload(4),
            DescSpec::Payload(192),
            DescSpec::Writable(8),
        ],
        false,
        true,
    );
    out.put(t, "indirect_and_loop", &w.out);

    // Every shape of indirect descriptor as a raw control request, then TX and RX messages
    // with indirect descriptors, then a well-formed message each.
    let mut w = io_header(one_one, &[S16_48K_1MS, S16_48K_1MS], 0b11);
    let req = query(R_PCM_INFO, 0, 2, 32);
    for case in indirect_cases(&req, 68) {
        w.u8(7).u8(case.payload.len() as u8).bytes(&case.payload);
        encode_chain_with(&mut w, &case.descs, case.shape, false);
    }
    for shape in [0, 1 | 1 << 2, 3 | 1 << 2, 0x80] {
        w.u8(0).u8(0).u16(192);
        encode_chain_with(
            &mut w,
            &[
                (DescSpec::Payload(4), false),
                (DescSpec::Payload(192), false),
                (DescSpec::Writable(8), false),
            ],
            Some(IndirectShape(shape)),
            false,
        );
        w.u8(1).u8(1);
        encode_chain_with(
            &mut w,
            &[
                (DescSpec::Payload(4), false),
                (DescSpec::Writable(200), false),
            ],
            Some(IndirectShape(shape)),
            false,
        );
    }
    for flagged in 0..3 {
        w.u8(0).u8(0).u16(192);
        let mut descs = vec![
            (DescSpec::Payload(4), false),
            (DescSpec::Payload(192), false),
            (DescSpec::Writable(8), false),
        ];
        descs[flagged].1 = true;
        encode_chain_with(&mut w, &descs, None, false);
    }
    tx_simple(&mut w, 0, 192);
    rx_simple(&mut w, 1, 192);
    out.put(t, "indirect_shapes", &w.out);
}

// ----- pci_common_config -----

const RAM: u64 = 1 << 20;

fn bar_write(w: &mut Writer, offset: u16, width_sel: u8, value: u64) {
    w.u8(1).u16(offset).u8(width_sel).u64(value);
}

fn bar_read(w: &mut Writer, offset: u16, width_sel: u8) {
    w.u8(0).u16(offset).u8(width_sel);
}

fn ram_write(w: &mut Writer, addr: u32, bytes: &[u8]) {
    w.u8(5).u32(addr).u8(bytes.len() as u8).bytes(bytes);
}

fn desc_bytes(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend(len.to_le_bytes());
    d.extend(flags.to_le_bytes());
    d.extend(next.to_le_bytes());
    d
}

/// Queue `q`'s rings in the seeds' layout.
fn rings(q: u64) -> (u64, u64, u64) {
    let base = 0x1_0000 + q * 0x4000;
    (base, base + 0x1000, base + 0x2000)
}

/// The bring-up op with every queue of `n` enabled, size 16, vector q + 1.
fn bring_up(w: &mut Writer, n: u64, features: u64) {
    w.u8(6).u64(features);
    for q in 0..n {
        let (d, a, u) = rings(q);
        w.u16(16).u64(d).u64(a).u64(u).u16(q as u16 + 1).u8(1);
    }
}

/// One two-descriptor chain at the head of queue `q`, made available.
fn post_chain(w: &mut Writer, q: u64, first: (u64, u32, u16), second: (u64, u32, u16)) {
    let (d, a, _) = rings(q);
    let mut table = desc_bytes(first.0, first.1, first.2 | 1, 1);
    table.extend(desc_bytes(second.0, second.1, second.2, 0));
    ram_write(w, d as u32, &table);
    ram_write(w, a as u32, &[0, 0, 1, 0, 0, 0]);
}

fn pci(out: &mut Out) {
    let t = "pci_common_config";
    let version_1 = 1u64 << 32;
    // Every configuration register and every common configuration field, read.
    for (name, kind) in [("rng_read_everything", 0u8), ("snd_read_everything", 1)] {
        let mut w = Writer::new();
        w.u8(kind);
        for reg in 0..64u8 {
            w.u8(2).u8(reg).u8(2);
        }
        for offset in 0..0x38u16 {
            bar_read(&mut w, offset, 0);
        }
        for (offset, width) in [
            (0x1000u16, 0u8),
            (0x2000, 2),
            (0x2004, 2),
            (0x4000, 3),
            (0x5000, 3),
        ] {
            bar_read(&mut w, offset, width);
        }
        out.put(t, name, &w.out);
    }
    // virtio-rng: bring-up, MSI-X enabled and programmed, one request, notify.
    let mut w = Writer::new();
    w.u8(0);
    // MSI-X enable: the capability sits at 0x98 (after common 0x40, notify 0x50, ISR 0x64,
    // device 0x74, PCI cfg 0x84); message control is its upper half-word (register 38).
    w.u8(3).u8(38).u8(0b1001).u32(0x8000);
    bar_write(&mut w, 0x4000, 3, 0xfee0_0000);
    bar_write(&mut w, 0x4008, 2, 0x41);
    bar_write(&mut w, 0x4010, 3, 0xfee0_0000);
    bar_write(&mut w, 0x4018, 2, 0x42);
    bar_write(&mut w, 0x10, 1, 0);
    bring_up(&mut w, 1, version_1);
    post_chain(&mut w, 0, (0x8_0000, 64, 2), (0x8_1000, 64, 2));
    w.u8(8).u8(0);
    bar_read(&mut w, 0x1000, 0);
    bar_read(&mut w, 0x5000, 3);
    w.u8(10).u8(0); // reset
    out.put(t, "rng_bring_up_and_request", &w.out);

    // virtio-snd: bring-up with EVENT_IDX, a PCM_INFO request on the controlq, notify.
    let mut w = Writer::new();
    w.u8(1);
    bring_up(&mut w, 4, version_1 | 1 << 29);
    let req = query(R_PCM_INFO, 0, 2, 32);
    ram_write(&mut w, 0x8_0000, &req);
    post_chain(&mut w, 0, (0x8_0000, 16, 0), (0x8_1000, 68, 2));
    w.u8(8).u8(0);
    // SET_PARAMS + PREPARE on stream 0 through the second descriptor slot pair.
    let (d, a, _) = rings(0);
    let sp = set_params(0, &S16_48K_1MS);
    ram_write(&mut w, 0x8_2000, &sp);
    let mut table = desc_bytes(0x8_2000, 24, 1, 3);
    table.extend(desc_bytes(0x8_3000, 4, 2, 0));
    ram_write(&mut w, d as u32 + 32, &table);
    ram_write(&mut w, a as u32 + 2, &[2, 0]);
    ram_write(&mut w, a as u32 + 6, &[2, 0]);
    w.u8(8).u8(0);
    w.u8(11).u8(5);
    w.u8(10).u8(0);
    out.put(t, "snd_bring_up_and_control", &w.out);

    // Out-of-order status, features without VERSION_1, queues outside RAM, DRIVER_OK twice.
    let mut w = Writer::new();
    w.u8(1);
    w.u8(10).u8(4);
    w.u8(6).u64(0);
    for q in 0..4u64 {
        w.u16(256)
            .u64(RAM - 0x100 + q)
            .u64(u64::MAX - 1)
            .u64(q << 40)
            .u16(0xffff)
            .u8(1);
    }
    w.u8(10).u8(0);
    bring_up(&mut w, 4, version_1);
    w.u8(10).u8(0xf);
    w.u8(10).u8(0x8f);
    out.put(t, "snd_bad_bring_up", &w.out);

    // The BAR moved, memory decoding off and on, BAR sizing, the PCI configuration access
    // window (virtio_pci_cfg_cap) reading and writing the common configuration.
    let mut w = Writer::new();
    w.u8(0);
    w.u8(3).u8(4).u8(2).u32(0xffff_ffff); // size BAR 0
    w.u8(2).u8(4).u8(2);
    w.u8(3).u8(4).u8(2).u32(0xc100_0000); // move it
    bar_read(&mut w, 0x12, 1);
    w.u8(3).u8(1).u8(1).u32(0); // decoding off
    w.u8(3).u8(1).u8(1).u32(6); // and on
    w.u8(3).u8(4).u8(2).u32(0x1000); // over RAM: refused
                                     // virtio_pci_cfg_cap at 0x84: bar (reg 34, byte 0), offset (reg 35), length (reg 36), data
                                     // (reg 37). Window on device_status (0x14), 1 byte: write ACKNOWLEDGE, read it back; then a
                                     // 4-byte window on device_feature.
    w.u8(3).u8(34).u8(0b0000).u32(0);
    w.u8(3).u8(35).u8(0b0010).u32(0x14);
    w.u8(3).u8(36).u8(0b0010).u32(1);
    w.u8(3).u8(37).u8(0b0010).u32(1);
    w.u8(2).u8(37).u8(2);
    w.u8(3).u8(35).u8(0b0010).u32(0x4);
    w.u8(3).u8(36).u8(0b0010).u32(4);
    w.u8(2).u8(37).u8(2);
    w.u8(4).u32(0x8000_0800 | 0x40).u8(2);
    w.u8(9).u64(0xc100_0014).u8(0).u8(1).u64(1);
    w.u8(9).u64(0xcf8).u8(2).u8(0).u64(0);
    out.put(t, "bar_moves_and_cfg_window", &w.out);
}

// ----- rng -----

/// A request of the rng target (op 0, kicked unless `deferred`) with the given layout.
fn rng_request(w: &mut Writer, payload: &[u8], descs: &[DescSpec], deferred: bool) {
    w.u8(if deferred { 0x80 } else { 0 })
        .u8(payload.len() as u8)
        .bytes(payload);
    encode_chain(w, descs, false, false);
}

/// A raw descriptor in slot `slot`, made available and kicked (rng op 7).
fn rng_raw(w: &mut Writer, slot: u8, addr: u64, len: u32, flags: u16, next: u16) {
    w.u8(7).u8(slot).u64(addr).u32(len).u16(flags).u16(next);
}

fn rng(out: &mut Out) {
    let t = "rng";
    // Well-formed requests: one buffer, several, the 64 KiB cap, with and without EVENT_IDX.
    for (name, flags) in [("requests", 0u8), ("requests_event_idx", 1)] {
        let mut w = Writer::new();
        w.u8(flags);
        rng_request(&mut w, &[], &[DescSpec::Writable(64)], false);
        rng_request(&mut w, &[], &[DescSpec::Writable(1)], false);
        rng_request(
            &mut w,
            &[],
            &[DescSpec::Writable(16), DescSpec::Writable(4096)],
            false,
        );
        rng_request(
            &mut w,
            &[],
            &[DescSpec::Writable(u16::MAX), DescSpec::Writable(u16::MAX)],
            false,
        );
        rng_request(&mut w, &[], &[DescSpec::Writable(4096); 16], false);
        rng_request(&mut w, &[], &[DescSpec::Writable(0)], false);
        // Deferred, then one kick for all.
        for _ in 0..4 {
            rng_request(&mut w, &[], &[DescSpec::Writable(32)], true);
        }
        w.u8(3);
        out.put(t, name, &w.out);
    }

    // Malformed: a read-only buffer, readable after writable, outside RAM, across its end,
    // 17 descriptors, a loop, a wild next.
    let mut w = Writer::new();
    w.u8(0);
    rng_request(&mut w, &[1, 2, 3, 4], &[DescSpec::Payload(4)], false);
    rng_request(
        &mut w,
        &[1, 2, 3, 4],
        &[DescSpec::Writable(8), DescSpec::Payload(4)],
        false,
    );
    rng_request(
        &mut w,
        &[],
        &[DescSpec::Anywhere {
            addr: MEM_SIZE,
            len: 64,
            write: true,
        }],
        false,
    );
    rng_request(
        &mut w,
        &[],
        &[DescSpec::Anywhere {
            addr: u64::MAX - 7,
            len: 64,
            write: true,
        }],
        false,
    );
    rng_request(
        &mut w,
        &[],
        &[DescSpec::RamEnd {
            len: 64,
            write: true,
        }],
        false,
    );
    rng_request(&mut w, &[], &[DescSpec::Writable(8); 16], false);
    // 16 + 2 repeats of the last: 18 descriptors.
    w.u8(0).u8(0).u8(0x1f);
    for _ in 0..16 {
        w.u8(1).u16(8);
    }
    w.u8(1);
    w.u8(0).u8(0);
    encode_chain(&mut w, &[DescSpec::Writable(8); 3], false, true);
    w.u8(0)
        .u8(0)
        .u8(0x81)
        .u8(1)
        .u16(8)
        .u8(1)
        .u16(8)
        .u8(0)
        .u16(200);
    rng_request(&mut w, &[], &[DescSpec::Writable(64)], false);
    out.put(t, "malformed", &w.out);

    // Every shape of indirect descriptor, each followed by a well-formed request.
    let mut w = Writer::new();
    w.u8(1);
    for case in indirect_cases(&[], 64) {
        w.u8(0).u8(case.payload.len() as u8).bytes(&case.payload);
        encode_chain_with(&mut w, &case.descs, case.shape, false);
        rng_request(&mut w, &[], &[DescSpec::Writable(64)], false);
    }
    out.put(t, "indirect_shapes", &w.out);
    for case in indirect_cases(&[], 64) {
        let mut w = Writer::new();
        w.u8(0)
            .u8(0)
            .u8(case.payload.len() as u8)
            .bytes(&case.payload);
        encode_chain_with(&mut w, &case.descs, case.shape, false);
        rng_request(&mut w, &[], &[DescSpec::Writable(64)], false);
        out.put(t, &format!("indirect_{}", case.name), &w.out);
    }

    // One 65535-entry indirect table behind every head of the ring (the walk must not follow
    // it), a ring's worth and then one more than a ring's worth (a broken ring), then a reset
    // and a request.
    let mut w = Writer::new();
    w.u8(0);
    rng_raw(&mut w, 0, DATA_START, 16 * 65535, INDIRECT, 0);
    w.u8(5).u8(0).u8(254);
    rng_raw(&mut w, 1, DATA_START, 16 * 65535, INDIRECT, 0);
    w.u8(0x85).u8(1).u8(255);
    w.u8(5).u8(1).u8(1);
    w.u8(6).u8(1);
    rng_request(&mut w, &[], &[DescSpec::Writable(64)], false);
    out.put(t, "one_table_many_heads", &w.out);

    // Raw descriptors: well-formed, chained to each other, out-of-range next, then resets.
    let mut w = Writer::new();
    w.u8(0);
    rng_raw(&mut w, 9, DATA_START + 0x1000, 128, WRITE, 0);
    rng_raw(&mut w, 10, DATA_START + 0x2000, 128, WRITE | NEXT, 11);
    rng_raw(&mut w, 12, DATA_START + 0x3000, 128, WRITE | NEXT, 0xffff);
    rng_request(&mut w, &[], &[DescSpec::Writable(64)], true);
    w.u8(6).u8(1);
    rng_request(&mut w, &[], &[DescSpec::Writable(64)], false);
    w.u8(5).u8(0).u8(3);
    w.u8(4).u8(1).u16(300);
    w.u8(3);
    w.u8(6).u8(0);
    rng_request(&mut w, &[], &[DescSpec::Writable(64)], false);
    out.put(t, "raw_descriptors_and_resets", &w.out);
}

/// blk_requests: a write, a flush, a read back, GET_ID, ranges, refusals, a reset in flight.
fn blk(out: &mut Out) {
    let t = "blk_requests";
    // A request op: kind index (see the target), sector byte, data length, the first data bytes,
    // then the chain layout: header + data readable (`data` > 0), then writable buffers.
    let request = |w: &mut Writer, kind: u8, sector: u8, data: u16, given: &[u8], out_len: u16| {
        w.u8(0).u8(kind).u8(sector).u16(data);
        w.bytes(&given[..usize::from(data).min(48)]);
        let mut descs = vec![DescSpec::Payload(16 + data)];
        if out_len > 0 {
            descs.push(DescSpec::Writable(out_len));
        }
        descs.push(DescSpec::Writable(1));
        encode_chain(w, &descs, false, false);
    };
    let zeros = [0u8; 48];
    let mut range = Vec::new();
    range.extend_from_slice(&3u64.to_le_bytes());
    range.extend_from_slice(&2u32.to_le_bytes());
    range.extend_from_slice(&0u32.to_le_bytes());
    range.resize(48, 0);
    let mut w = Writer::new();
    w.u8(0);
    request(&mut w, 1, 5, 512, &zeros, 0); // OUT
    request(&mut w, 2, 0, 0, &zeros, 0); // FLUSH
    request(&mut w, 0, 5, 0, &zeros, 1024); // IN, two sectors
    request(&mut w, 3, 0, 0, &zeros, 20); // GET_ID
    request(&mut w, 5, 0, 16, &range, 0); // WRITE_ZEROES
    request(&mut w, 4, 0, 16, &range, 0); // DISCARD
    out.put(t, "round_trip", &w.out);
    let mut w = Writer::new();
    w.u8(0);
    request(&mut w, 0, 64, 0, &zeros, 512); // past the end
                                            // A raw sector (a sector byte >= 0xf0 is followed by a u64): 2^64 - 1.
    w.u8(0).u8(0).u8(0xff).u64(u64::MAX).u16(0);
    encode_chain(
        &mut w,
        &[
            DescSpec::Payload(16),
            DescSpec::Writable(512),
            DescSpec::Writable(1),
        ],
        false,
        false,
    );
    request(&mut w, 1, 7, 100, &zeros, 0); // not whole sectors
    request(&mut w, 7, 0, 0, &zeros, 0); // raw type
    w.u8(3); // reset in flight
    request(&mut w, 0, 1, 0, &zeros, 512);
    out.put(t, "refusals_and_reset", &w.out);
    let mut w = Writer::new();
    w.u8(1); // read-only
    request(&mut w, 1, 0, 512, &zeros, 0);
    request(&mut w, 0, 0, 0, &zeros, 512);
    out.put(t, "read_only", &w.out);
}
// ----- vsock -----

/// Offers 8 rx buffers of 4 KiB.
fn vsock_rx(w: &mut Writer) {
    w.u8(1).u8(7);
    for _ in 0..8 {
        encode_chain(w, &[DescSpec::Writable(4096)], false, false);
    }
}

/// A tx packet: `dst` is the target's port selector (0: the listening port 1000, 0x80: the first
/// host-initiated connection's port).
fn vsock_tx(w: &mut Writer, opcode: u8, src: u8, dst: u8, flags: u8, data: u16) {
    w.u8(0).u8(opcode).u8(src).u8(dst).u8(0).u16(data).u8(flags);
    w.u32(64 * 1024).u32(0).u16(data);
    encode_chain(w, &[DescSpec::Payload(44 + data)], false, false);
}

fn vsock(out: &mut Out) {
    let t = "vsock";
    // Guest to host: REQUEST, accept, data both ways, SHUTDOWN, RST.
    let mut w = Writer::new();
    vsock_rx(&mut w);
    vsock_tx(&mut w, 1, 5, 0, 0, 0);
    w.u8(6);
    vsock_tx(&mut w, 5, 5, 0, 0, 16);
    w.u8(3).u8(0).u16(5).bytes(b"hello");
    w.u8(4).u8(0);
    vsock_tx(&mut w, 7, 5, 0, 0, 0);
    vsock_tx(&mut w, 4, 5, 0, 3, 0);
    vsock_tx(&mut w, 3, 5, 0, 0, 0);
    out.put(t, "guest_connects", &w.out);
    // Host to guest: CONNECT 52, RESPONSE, data both ways, host half-close.
    let mut w = Writer::new();
    vsock_rx(&mut w);
    w.u8(2).u8(1).u8(52);
    vsock_tx(&mut w, 2, 52, 0x80, 0, 0);
    w.u8(3).u8(0).u16(3).bytes(b"abc");
    vsock_tx(&mut w, 5, 52, 0x80, 0, 100);
    w.u8(4).u8(0);
    w.u8(0x85).u8(0);
    vsock_rx(&mut w);
    vsock_tx(&mut w, 4, 52, 0x80, 3, 0);
    out.put(t, "host_connects", &w.out);
}

fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    let mut out = Out { dir, count: 0 };
    snd_control(&mut out);
    snd_io(&mut out);
    pci(&mut out);
    rng(&mut out);
    blk(&mut out);
    vsock(&mut out);
    println!("wrote {} seeds under {}", out.count, out.dir.display());
}
