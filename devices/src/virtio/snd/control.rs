//! Control requests (§5.14.6): decoding with size checks, the item information requests
//! (JACK_INFO, PCM_INFO, CHMAP_INFO) and writing replies into the driver's buffer.
//!
//! Every request is answered at once, on the event loop. A request shorter than its structure is
//! BAD_MSG; an unknown code is NOT_SUPP, and so are the control element requests (VIRTIO 1.3)
//! when the driver did not accept VIRTIO_SND_F_CTLS. An *_INFO reply is `count * size` bytes after the header, with `size`
//! at least the structure's size and at most [`MAX_INFO_ITEM_SIZE`] (the tail of each item is
//! zeroed) and `start_id + count` within the configured items: nothing is allocated from the
//! guest's numbers.

use std::sync::Arc;

use vm_memory::GuestMemoryMmap;

use super::config::SoundConfig;
use super::events::Jacks;
use super::io::Direction;
use super::mixer::{volume_tlv, Controls, WriteResult};
use super::stream::StreamInfo;
use super::wire::*;
use crate::virtio::chain::Segments;

/// The largest `size` an *_INFO request may ask for per item.
pub const MAX_INFO_ITEM_SIZE: u32 = 1024;

/// Which items an *_INFO request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfoKind {
    Jack,
    Pcm,
    Chmap,
    Ctl,
}

impl InfoKind {
    fn item_size(self) -> u32 {
        match self {
            InfoKind::Jack => JACK_INFO_SIZE as u32,
            InfoKind::Pcm => PCM_INFO_SIZE as u32,
            InfoKind::Chmap => CHMAP_INFO_SIZE as u32,
            InfoKind::Ctl => CTL_INFO_SIZE as u32,
        }
    }
}

/// A control element request other than CTL_INFO, by control id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtlRequest {
    EnumItems(u32),
    Read(u32),
    /// The control id and the value's first member (the only one: every control has count 1).
    Write(u32, i32),
    TlvRead(u32),
    TlvWrite(u32),
    TlvCommand(u32),
}

/// A decoded control request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Info {
        kind: InfoKind,
        query: QueryInfo,
    },
    JackRemap {
        jack_id: u32,
    },
    SetParams(SetParams),
    Prepare(u32),
    Release(u32),
    Start(u32),
    Stop(u32),
    Ctl(CtlRequest),
    /// Shorter than its structure: BAD_MSG.
    Malformed,
    /// A code the device does not implement: NOT_SUPP.
    Unsupported(u32),
}

/// Decodes a request for a device whose driver did (`ctls`) or did not accept
/// VIRTIO_SND_F_CTLS: without it, a control element code is unknown (NOT_SUPP) whatever its
/// length, as it was before the device offered the feature.
pub fn decode_for(request: &[u8], ctls: bool) -> Request {
    if !ctls && request.len() >= HDR_SIZE {
        let code = request_code(request);
        if (R_CTL_INFO..=R_CTL_TLV_COMMAND).contains(&code) {
            return Request::Unsupported(code);
        }
    }
    decode(request)
}

/// Decodes the first bytes of a request's readable part.
pub fn decode(request: &[u8]) -> Request {
    if request.len() < HDR_SIZE {
        return Request::Malformed;
    }
    let code = request_code(request);
    let needed = match code {
        R_JACK_INFO | R_PCM_INFO | R_CHMAP_INFO | R_CTL_INFO => QUERY_INFO_SIZE,
        R_CTL_ENUM_ITEMS | R_CTL_READ | R_CTL_TLV_READ | R_CTL_TLV_WRITE | R_CTL_TLV_COMMAND => {
            CTL_HDR_SIZE
        }
        R_CTL_WRITE => CTL_WRITE_SIZE,
        R_JACK_REMAP => JACK_REMAP_SIZE,
        R_PCM_SET_PARAMS => PCM_SET_PARAMS_SIZE,
        R_PCM_PREPARE | R_PCM_RELEASE | R_PCM_START | R_PCM_STOP => PCM_HDR_SIZE,
        _ => return Request::Unsupported(code),
    };
    if request.len() < needed {
        return Request::Malformed;
    }
    match code {
        R_JACK_INFO => Request::Info {
            kind: InfoKind::Jack,
            query: QueryInfo::decode(request),
        },
        R_PCM_INFO => Request::Info {
            kind: InfoKind::Pcm,
            query: QueryInfo::decode(request),
        },
        R_CHMAP_INFO => Request::Info {
            kind: InfoKind::Chmap,
            query: QueryInfo::decode(request),
        },
        R_CTL_INFO => Request::Info {
            kind: InfoKind::Ctl,
            query: QueryInfo::decode(request),
        },
        R_CTL_ENUM_ITEMS => Request::Ctl(CtlRequest::EnumItems(ctl_id(request))),
        R_CTL_READ => Request::Ctl(CtlRequest::Read(ctl_id(request))),
        R_CTL_WRITE => {
            let mut member = [0u8; 4];
            member.copy_from_slice(&request[CTL_HDR_SIZE..CTL_HDR_SIZE + 4]);
            Request::Ctl(CtlRequest::Write(
                ctl_id(request),
                i32::from_le_bytes(member),
            ))
        }
        R_CTL_TLV_READ => Request::Ctl(CtlRequest::TlvRead(ctl_id(request))),
        R_CTL_TLV_WRITE => Request::Ctl(CtlRequest::TlvWrite(ctl_id(request))),
        R_CTL_TLV_COMMAND => Request::Ctl(CtlRequest::TlvCommand(ctl_id(request))),
        R_JACK_REMAP => Request::JackRemap {
            jack_id: jack_id(request),
        },
        R_PCM_SET_PARAMS => Request::SetParams(SetParams::decode(request)),
        R_PCM_PREPARE => Request::Prepare(pcm_stream_id(request)),
        R_PCM_RELEASE => Request::Release(pcm_stream_id(request)),
        R_PCM_START => Request::Start(pcm_stream_id(request)),
        R_PCM_STOP => Request::Stop(pcm_stream_id(request)),
        _ => Request::Unsupported(code),
    }
}

/// What to write back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Status(u32),
    /// OK followed by `count` items of `size` bytes, starting at item `start`.
    Info {
        kind: InfoKind,
        start: u32,
        count: u32,
        size: u32,
    },
    /// OK followed by a `virtio_snd_ctl_value` whose first member is this.
    CtlValue(i32),
    /// OK, then the volume's TLV in the bytes after the header.
    Tlv,
}

/// The device's items: jacks, streams, channel maps and controls.
#[derive(Clone)]
pub struct Topology {
    pub jacks: Vec<JackInfo>,
    pub streams: Vec<StreamInfo>,
    pub chmaps: Vec<ChmapInfo>,
    /// Every stream's volume and switch.
    pub controls: Arc<Controls>,
    /// Whether each jack's host device works now (JACK_INFO's `connected`).
    pub jack_state: Arc<Jacks>,
}

/// HDA pin default configurations (HDA §7.3.3.31): port connectivity 0 (a jack) in bits 31:30,
/// location 0x01 (external, rear) in 29:24, default device in 23:20 (0x0 line out, 0xa mic
/// in), connection type 0x1 (1/8" jack) in 19:16, colour in 15:12 (0x4 green, 0x9 pink), misc
/// 0 (jack detect available) in 11:8, default association in 7:4 (1 for output, 2 for input),
/// sequence 0 in 3:0. The Linux driver labels them "Line Out" and "Mic" (`virtio_jack.c`).
pub(crate) const LINE_OUT_DEFCONF: u32 = 0x0101_4010;
pub(crate) const MIC_IN_DEFCONF: u32 = 0x01a1_9020;
/// HDA pin capabilities (HDA §7.3.4.9): presence detect plus output or input capable.
const LINE_OUT_CAPS: u32 = 0x14;
const MIC_IN_CAPS: u32 = 0x24;

impl Topology {
    /// Output streams first, then input streams; each with every rate Canto knows, 1 to 8
    /// channels and the backend's formats. One jack per stream, jack N for stream N: a line
    /// out on an output stream's nid, a microphone on an input stream's; `jack_state` says
    /// whether each is connected (its host device works).
    ///
    /// Each stream is its own guest PCM device: the N-th output stream and the N-th input
    /// stream have `hda_fn_nid` N, so the Linux driver makes `hw:C,N` with (at most) one
    /// playback and one capture substream, never two streams of one direction behind one
    /// device. Every stream has one channel map per channel count it offers (1 to 8 channels,
    /// [`standard_positions`]), on its own nid and direction.
    pub fn new(config: &SoundConfig, formats: u64, jack_state: Arc<Jacks>) -> Topology {
        let (channels_min, channels_max) = (1u8, 8u8);
        let streams: Vec<StreamInfo> = (0..config.streams())
            .map(|id| {
                let (direction, pcm_device) = if id < config.outputs {
                    (Direction::Output, id)
                } else {
                    (Direction::Input, id - config.outputs)
                };
                StreamInfo {
                    id,
                    direction,
                    pcm_device,
                    formats,
                    rates: all_rates_mask(),
                    channels_min,
                    channels_max,
                }
            })
            .collect();
        let chmaps = streams
            .iter()
            .flat_map(|stream| {
                (stream.channels_min..=stream.channels_max).filter_map(move |channels| {
                    let layout = standard_positions(channels)?;
                    let mut positions = [0u8; CHMAP_MAX_SIZE];
                    positions[..layout.len()].copy_from_slice(layout);
                    Some(ChmapInfo {
                        hda_fn_nid: stream.pcm_device,
                        direction: stream.direction.wire(),
                        channels,
                        positions,
                    })
                })
            })
            .collect();
        let jacks = streams
            .iter()
            .map(|stream| {
                let (defconf, caps) = match stream.direction {
                    Direction::Output => (LINE_OUT_DEFCONF, LINE_OUT_CAPS),
                    Direction::Input => (MIC_IN_DEFCONF, MIC_IN_CAPS),
                };
                JackInfo {
                    hda_fn_nid: stream.pcm_device,
                    features: 0,
                    hda_reg_defconf: defconf,
                    hda_reg_caps: caps,
                    connected: true,
                }
            })
            .collect();
        let controls = Arc::new(Controls::new(
            &streams
                .iter()
                .map(|s| (s.direction == Direction::Output, s.pcm_device))
                .collect::<Vec<_>>(),
        ));
        Topology {
            jacks,
            streams,
            chmaps,
            controls,
            jack_state,
        }
    }

    fn count(&self, kind: InfoKind) -> u32 {
        let len = match kind {
            InfoKind::Jack => self.jacks.len(),
            InfoKind::Pcm => self.streams.len(),
            InfoKind::Chmap => self.chmaps.len(),
            InfoKind::Ctl => self.controls.count() as usize,
        };
        // Bounded by the configuration limits.
        len as u32
    }

    /// Item `id` encoded; its length is `kind.item_size()`.
    fn encode(&self, kind: InfoKind, id: u32) -> Option<[u8; CTL_INFO_SIZE]> {
        let mut out = [0u8; CTL_INFO_SIZE];
        let index = id as usize;
        match kind {
            InfoKind::Jack => {
                let info = JackInfo {
                    connected: self.jack_state.is_connected(id),
                    ..*self.jacks.get(index)?
                };
                out[..JACK_INFO_SIZE].copy_from_slice(&info.encode())
            }
            InfoKind::Ctl => out.copy_from_slice(&self.controls.info(id)?.encode()),
            InfoKind::Pcm => {
                out[..PCM_INFO_SIZE].copy_from_slice(&self.streams.get(index)?.pcm_info().encode())
            }
            InfoKind::Chmap => {
                out[..CHMAP_INFO_SIZE].copy_from_slice(&self.chmaps.get(index)?.encode())
            }
        }
        Some(out)
    }

    /// Validates an *_INFO request.
    pub fn info(&self, kind: InfoKind, query: QueryInfo) -> Reply {
        let in_range = query
            .start_id
            .checked_add(query.count)
            .is_some_and(|end| end <= self.count(kind));
        if !in_range || query.size < kind.item_size() || query.size > MAX_INFO_ITEM_SIZE {
            return Reply::Status(S_BAD_MSG);
        }
        Reply::Info {
            kind,
            start: query.start_id,
            count: query.count,
            size: query.size,
        }
    }

    /// A control element request (the driver accepted VIRTIO_SND_F_CTLS). An unknown control id
    /// is BAD_MSG, and so is a value out of the control's range, or ENUM_ITEMS on a control that
    /// is not ENUMERATED (none is). TLV_READ works on volumes (they have TLV_READ access);
    /// TLV_READ on a switch, and TLV_WRITE and TLV_COMMAND on anything (no control has those
    /// access rights), are NOT_SUPP. Returns the reply and whether a value changed.
    pub fn ctl(&self, request: CtlRequest) -> (Reply, bool) {
        let exists = |id: u32| self.controls.info(id);
        let status = |code| (Reply::Status(code), false);
        match request {
            // No control is ENUMERATED: the request is not one its control can take.
            CtlRequest::EnumItems(_) => status(S_BAD_MSG),
            CtlRequest::Read(id) => match self.controls.read(id) {
                Some(value) => (Reply::CtlValue(value), false),
                None => status(S_BAD_MSG),
            },
            CtlRequest::Write(id, value) => match self.controls.write(id, value) {
                WriteResult::Changed => (Reply::Status(S_OK), true),
                WriteResult::Unchanged => (Reply::Status(S_OK), false),
                WriteResult::Invalid => status(S_BAD_MSG),
            },
            CtlRequest::TlvRead(id) => match exists(id) {
                Some(info) if info.access & CTL_ACCESS_TLV_READ != 0 => (Reply::Tlv, false),
                Some(_) => status(S_NOT_SUPP),
                None => status(S_BAD_MSG),
            },
            CtlRequest::TlvWrite(id) | CtlRequest::TlvCommand(id) => match exists(id) {
                Some(_) => status(S_NOT_SUPP),
                None => status(S_BAD_MSG),
            },
        }
    }

    /// JACK_REMAP: no jack offers VIRTIO_SND_JACK_F_REMAP.
    pub fn jack_remap(&self, jack_id: u32) -> Reply {
        if jack_id < self.count(InfoKind::Jack) {
            Reply::Status(S_NOT_SUPP)
        } else {
            Reply::Status(S_BAD_MSG)
        }
    }
}

static ZEROS: [u8; 256] = [0; 256];

/// Writes a reply into the chain's writable part; returns the used length. A writable part
/// smaller than the status header gets nothing (length 0); one too small for an *_INFO reply
/// gets BAD_MSG.
pub fn write_reply(
    mem: &GuestMemoryMmap,
    writable: &Segments,
    reply: Reply,
    topology: &Topology,
) -> u32 {
    if writable.len() < HDR_SIZE as u64 {
        return 0;
    }
    let status = |code: u32| match writable.write_at(mem, 0, &code.to_le_bytes()) {
        Ok(()) => HDR_SIZE as u32,
        Err(_) => 0,
    };
    let (kind, start, count, size) = match reply {
        Reply::Status(code) => return status(code),
        Reply::CtlValue(value) => {
            let needed = (HDR_SIZE + CTL_VALUE_SIZE) as u64;
            if writable.len() < needed {
                return status(S_BAD_MSG);
            }
            let mut out = [0u8; HDR_SIZE + CTL_VALUE_SIZE];
            out[..4].copy_from_slice(&S_OK.to_le_bytes());
            out[4..8].copy_from_slice(&value.to_le_bytes());
            return match writable.write_at(mem, 0, &out) {
                Ok(()) => needed as u32,
                Err(_) => 0,
            };
        }
        Reply::Tlv => {
            let tlv = volume_tlv();
            let needed = (HDR_SIZE + tlv.len()) as u64;
            if writable.len() < needed {
                return status(S_BAD_MSG);
            }
            let mut out = [0u8; HDR_SIZE + 16];
            out[..4].copy_from_slice(&S_OK.to_le_bytes());
            out[4..].copy_from_slice(&tlv);
            return match writable.write_at(mem, 0, &out) {
                Ok(()) => needed as u32,
                Err(_) => 0,
            };
        }
        Reply::Info {
            kind,
            start,
            count,
            size,
        } => (kind, start, count, size),
    };
    // count <= 128 items (16 streams, 8 channel maps each; 32 controls) and size <= 1 KiB: no overflow, and
    // the reply fits in a u32.
    let needed = HDR_SIZE as u64 + u64::from(count) * u64::from(size);
    if writable.len() < needed {
        return status(S_BAD_MSG);
    }
    let item_size = kind.item_size() as usize;
    let write_items = || -> Result<(), vm_memory::GuestMemoryError> {
        writable.write_at(mem, 0, &S_OK.to_le_bytes())?;
        for i in 0..count {
            let at = HDR_SIZE as u64 + u64::from(i) * u64::from(size);
            let item = topology
                .encode(kind, start + i)
                .ok_or(vm_memory::GuestMemoryError::InvalidBackendAddress)?;
            writable.write_at(mem, at, &item[..item_size])?;
            // A newer driver's larger structure: the fields Canto does not know are zero.
            let mut pad_at = at + item_size as u64;
            let mut pad = size as usize - item_size;
            while pad > 0 {
                let n = pad.min(ZEROS.len());
                writable.write_at(mem, pad_at, &ZEROS[..n])?;
                pad_at += n as u64;
                pad -= n;
            }
        }
        Ok(())
    };
    match write_items() {
        Ok(()) => needed as u32,
        Err(e) => {
            crate::warn_limited!("virtio-snd: cannot write a control reply: {e}");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::snd::config::BackendConfig;
    use crate::virtio::test_utils::sound::query;

    fn topology() -> Topology {
        let config = SoundConfig {
            backend: BackendConfig::Null,
            capture: Some(crate::virtio::snd::CaptureConfig::Null),
            outputs: 2,
            inputs: 1,
            jacks: 2,
        };
        Topology::new(&config, PcmFormat::S16.bit(), all_connected(3))
    }

    fn all_connected(n: usize) -> Arc<Jacks> {
        let events = Arc::new(crate::virtio::snd::events::SoundEvents::default());
        Arc::new(Jacks::new(&vec![true; n], events))
    }

    #[test]
    fn decodes_every_request_with_size_checks() {
        assert_eq!(decode(&[]), Request::Malformed);
        assert_eq!(decode(&[1, 0, 0]), Request::Malformed);
        assert_eq!(
            decode(&0x9999u32.to_le_bytes()),
            Request::Unsupported(0x9999)
        );
        // Control elements (VIRTIO 1.3): CTL_INFO is a query like the others.
        assert!(matches!(
            decode(&query(R_CTL_INFO, 0, 1, 96)),
            Request::Info {
                kind: InfoKind::Ctl,
                ..
            }
        ));
        assert_eq!(
            decode(&query(0x0307, 0, 1, 16)),
            Request::Unsupported(0x0307)
        );
        for code in [R_JACK_INFO, R_PCM_INFO, R_CHMAP_INFO] {
            let full = query(code, 1, 2, 3);
            assert!(matches!(
                decode(&full),
                Request::Info {
                    query: QueryInfo {
                        start_id: 1,
                        count: 2,
                        size: 3
                    },
                    ..
                }
            ));
            assert_eq!(decode(&full[..15]), Request::Malformed);
        }
        for code in [R_PCM_PREPARE, R_PCM_RELEASE, R_PCM_START, R_PCM_STOP] {
            let mut request = code.to_le_bytes().to_vec();
            assert_eq!(decode(&request), Request::Malformed);
            request.extend(7u32.to_le_bytes());
            assert!(matches!(
                decode(&request),
                Request::Prepare(7) | Request::Release(7) | Request::Start(7) | Request::Stop(7)
            ));
        }
        let set = SetParams {
            stream_id: 1,
            ..Default::default()
        }
        .encode();
        assert_eq!(decode(&set), Request::SetParams(SetParams::decode(&set)));
        assert_eq!(decode(&set[..23]), Request::Malformed);
        let mut remap = query(R_JACK_REMAP, 5, 0, 0);
        assert_eq!(decode(&remap), Request::JackRemap { jack_id: 5 });
        remap.truncate(12);
        assert_eq!(decode(&remap), Request::Malformed);
    }

    fn ctl_request(code: u32, id: u32, value: Option<i32>) -> Vec<u8> {
        let mut out = code.to_le_bytes().to_vec();
        out.extend(id.to_le_bytes());
        if let Some(value) = value {
            let mut union = [0u8; CTL_VALUE_SIZE];
            union[..4].copy_from_slice(&value.to_le_bytes());
            out.extend(union);
        }
        out
    }

    #[test]
    fn control_element_codes_are_unknown_without_the_feature() {
        for code in R_CTL_INFO..=R_CTL_TLV_COMMAND {
            // Short or whole, they are NOT_SUPP, not BAD_MSG.
            for len in [4, 8, 16, 520] {
                let mut request = code.to_le_bytes().to_vec();
                request.resize(len, 0);
                assert_eq!(decode_for(&request, false), Request::Unsupported(code));
            }
        }
        assert_eq!(
            decode_for(&query(R_CTL_INFO, 0, 1, 96)[..8], true),
            Request::Malformed
        );
        assert_eq!(
            decode_for(&R_PCM_START.to_le_bytes(), false),
            Request::Malformed
        );
    }

    #[test]
    fn decodes_control_element_requests_with_size_checks() {
        let cases = [
            (R_CTL_ENUM_ITEMS, CtlRequest::EnumItems(5)),
            (R_CTL_READ, CtlRequest::Read(5)),
            (R_CTL_TLV_READ, CtlRequest::TlvRead(5)),
            (R_CTL_TLV_WRITE, CtlRequest::TlvWrite(5)),
            (R_CTL_TLV_COMMAND, CtlRequest::TlvCommand(5)),
        ];
        for (code, want) in cases {
            let request = ctl_request(code, 5, None);
            assert_eq!(decode(&request), Request::Ctl(want));
            assert_eq!(decode(&request[..7]), Request::Malformed, "{code:#x}");
        }
        let write = ctl_request(R_CTL_WRITE, 3, Some(-7));
        assert_eq!(decode(&write), Request::Ctl(CtlRequest::Write(3, -7)));
        // The value union is 512 bytes: a write without all of it is malformed.
        assert_eq!(decode(&write[..519]), Request::Malformed);
        assert_eq!(decode(&write[..12]), Request::Malformed);
        assert_eq!(
            decode(&query(R_CTL_INFO, 0, 1, 96)[..15]),
            Request::Malformed
        );
    }

    #[test]
    fn control_element_requests_get_their_status() {
        let t = topology();
        let bad = (Reply::Status(S_BAD_MSG), false);
        let not_supp = (Reply::Status(S_NOT_SUPP), false);
        // 3 streams: controls 0 to 5.
        assert_eq!(t.ctl(CtlRequest::Read(0)), (Reply::CtlValue(100), false));
        assert_eq!(t.ctl(CtlRequest::Read(1)), (Reply::CtlValue(1), false));
        assert_eq!(t.ctl(CtlRequest::Read(6)), bad);
        assert_eq!(t.ctl(CtlRequest::Read(u32::MAX)), bad);
        assert_eq!(t.ctl(CtlRequest::Write(0, 88)), (Reply::Status(S_OK), true));
        assert_eq!(
            t.ctl(CtlRequest::Write(0, 88)),
            (Reply::Status(S_OK), false)
        );
        assert_eq!(t.ctl(CtlRequest::Read(0)), (Reply::CtlValue(88), false));
        assert_eq!(t.ctl(CtlRequest::Write(0, 113)), bad);
        assert_eq!(t.ctl(CtlRequest::Write(0, i32::MIN)), bad);
        assert_eq!(t.ctl(CtlRequest::Write(1, 2)), bad, "a BOOLEAN is 0 or 1");
        assert_eq!(t.ctl(CtlRequest::Write(1, -1)), bad);
        assert_eq!(t.ctl(CtlRequest::Write(6, 0)), bad);
        assert_eq!(t.ctl(CtlRequest::Read(0)), (Reply::CtlValue(88), false));
        assert_eq!(t.ctl(CtlRequest::Write(5, 0)), (Reply::Status(S_OK), true));
        // No control is ENUMERATED.
        assert_eq!(t.ctl(CtlRequest::EnumItems(0)), bad);
        assert_eq!(t.ctl(CtlRequest::EnumItems(9)), bad);
        assert_eq!(t.ctl(CtlRequest::TlvRead(0)), (Reply::Tlv, false));
        assert_eq!(t.ctl(CtlRequest::TlvRead(4)), (Reply::Tlv, false));
        assert_eq!(
            t.ctl(CtlRequest::TlvRead(1)),
            not_supp,
            "a switch has no TLV"
        );
        assert_eq!(t.ctl(CtlRequest::TlvRead(6)), bad);
        for id in 0..6 {
            assert_eq!(t.ctl(CtlRequest::TlvWrite(id)), not_supp);
            assert_eq!(t.ctl(CtlRequest::TlvCommand(id)), not_supp);
        }
        assert_eq!(t.ctl(CtlRequest::TlvWrite(6)), bad);
        assert_eq!(t.ctl(CtlRequest::TlvCommand(6)), bad);
        // CTL_INFO is bounded like the other queries.
        let q = |start_id, count, size| QueryInfo {
            start_id,
            count,
            size,
        };
        assert!(matches!(
            t.info(InfoKind::Ctl, q(0, 6, 96)),
            Reply::Info { count: 6, .. }
        ));
        assert_eq!(t.info(InfoKind::Ctl, q(0, 7, 96)), Reply::Status(S_BAD_MSG));
        assert_eq!(t.info(InfoKind::Ctl, q(0, 1, 95)), Reply::Status(S_BAD_MSG));
    }

    /// What `virtsnd_kctl_validate_info` checks (one failure fails the guest's probe), and what
    /// the guest's mixer needs: names unique with their index, ranges sane.
    #[test]
    fn control_info_passes_the_linux_drivers_validation() {
        let config = SoundConfig {
            backend: BackendConfig::Null,
            capture: Some(crate::virtio::snd::CaptureConfig::Null),
            outputs: 8,
            inputs: 8,
            jacks: 0,
        };
        let t = Topology::new(&config, PcmFormat::S16.bit(), all_connected(16));
        let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let mut names = std::collections::HashSet::new();
        for id in 0..t.controls.count() {
            let info = t.encode(InfoKind::Ctl, id).unwrap();
            let (kind, count) = (le32(&info, 8), le32(&info, 12 + 4));
            assert!(kind <= 5, "known type");
            let max_count = [128, 128, 64, 128, 512, 1][kind as usize];
            assert!(count >= 1 && count <= max_count);
            let name_end = info[24..68]
                .iter()
                .position(|b| *b == 0)
                .expect("NUL-terminated");
            let name = std::str::from_utf8(&info[24..24 + name_end])
                .unwrap()
                .to_string();
            assert!(
                names.insert((name.clone(), le32(&info, 20))),
                "{name} twice"
            );
            if kind == CTL_TYPE_INTEGER {
                let (min, max, step) = (
                    le32(&info, 72) as i32,
                    le32(&info, 76) as i32,
                    le32(&info, 80) as i32,
                );
                assert!(min < max && step >= 1);
            }
        }
        assert_eq!(names.len(), 32);
        assert!(t.encode(InfoKind::Ctl, 32).is_none());
        // Jacks: line outs on the output nids, mics on the input nids.
        for id in 0..16u32 {
            let jack = t.encode(InfoKind::Jack, id).unwrap();
            let (nid, defconf) = (le32(&jack, 0), le32(&jack, 8));
            assert_eq!(nid, id % 8);
            // Default device, bits 23:20: 0 line out, 0xa mic in.
            assert_eq!((defconf >> 20) & 0xf, if id < 8 { 0x0 } else { 0xa });
            assert_eq!(jack[16], 1);
        }
    }

    #[test]
    fn info_requests_are_bounded() {
        let t = topology();
        let ok = |kind, q| t.info(kind, q);
        let q = |start_id, count, size| QueryInfo {
            start_id,
            count,
            size,
        };
        assert!(matches!(
            ok(InfoKind::Pcm, q(0, 3, 32)),
            Reply::Info { count: 3, .. }
        ));
        assert!(matches!(
            ok(InfoKind::Pcm, q(3, 0, 32)),
            Reply::Info { count: 0, .. }
        ));
        assert!(matches!(
            ok(InfoKind::Pcm, q(0, 1, 1024)),
            Reply::Info { .. }
        ));
        let bad = Reply::Status(S_BAD_MSG);
        assert_eq!(ok(InfoKind::Pcm, q(0, 4, 32)), bad);
        assert_eq!(ok(InfoKind::Pcm, q(3, 1, 32)), bad);
        assert_eq!(ok(InfoKind::Pcm, q(0, u32::MAX, 32)), bad);
        assert_eq!(ok(InfoKind::Pcm, q(u32::MAX, 2, 32)), bad);
        assert_eq!(ok(InfoKind::Pcm, q(1, u32::MAX, 32)), bad);
        assert_eq!(ok(InfoKind::Pcm, q(0, 1, 31)), bad);
        assert_eq!(ok(InfoKind::Pcm, q(0, 1, 0)), bad);
        assert_eq!(ok(InfoKind::Pcm, q(0, 1, 1025)), bad);
        assert_eq!(ok(InfoKind::Pcm, q(0, 1, u32::MAX)), bad);
        assert_eq!(ok(InfoKind::Jack, q(0, 2, 23)), bad);
        assert!(matches!(
            ok(InfoKind::Jack, q(0, 2, 24)),
            Reply::Info { .. }
        ));
        // 3 streams with 8 channel maps each.
        assert!(matches!(
            ok(InfoKind::Chmap, q(0, 24, 24)),
            Reply::Info { count: 24, .. }
        ));
        assert_eq!(ok(InfoKind::Chmap, q(0, 25, 24)), bad);
        assert_eq!(t.jack_remap(1), Reply::Status(S_NOT_SUPP));
        // One jack per stream: jacks 0 to 2.
        assert_eq!(t.jack_remap(2), Reply::Status(S_NOT_SUPP));
        assert_eq!(t.jack_remap(3), Reply::Status(S_BAD_MSG));
        assert_eq!(t.jack_remap(u32::MAX), Reply::Status(S_BAD_MSG));
    }

    #[test]
    fn topology_lists_outputs_then_inputs() {
        let t = topology();
        let directions: Vec<u8> = t.streams.iter().map(|s| s.direction.wire()).collect();
        assert_eq!(directions, vec![D_OUTPUT, D_OUTPUT, D_INPUT]);
        // Eight channel maps (1 to 8 channels) per stream, in stream order.
        assert_eq!(t.chmaps[2 * 8].direction, D_INPUT);
        assert_eq!(t.chmaps[1].channels, 2);
        assert_eq!(&t.chmaps[1].positions[..3], &[CHMAP_FL, CHMAP_FR, 0]);
        // One jack per stream: line outs for the outputs, a mic for the input.
        assert_eq!(t.jacks[1].hda_reg_defconf, LINE_OUT_DEFCONF);
        assert_eq!(t.jacks[2].hda_reg_defconf, MIC_IN_DEFCONF);
        let pcm = t.encode(InfoKind::Pcm, 0).unwrap();
        assert_eq!(pcm[25..27], [1, 8]);
        assert!(t.encode(InfoKind::Pcm, 3).is_none());
    }

    /// The biggest topology, 8:8, as the Linux driver reads it: PCM_INFO and CHMAP_INFO in one
    /// query each, decoded from the wire bytes.
    #[test]
    fn topology_8_8_gives_each_stream_its_own_pcm_device_and_valid_channel_maps() {
        let config = SoundConfig {
            backend: BackendConfig::Null,
            capture: Some(crate::virtio::snd::CaptureConfig::Null),
            outputs: 8,
            inputs: 8,
            jacks: 0,
        };
        let t = Topology::new(&config, PcmFormat::S16.bit(), all_connected(16));
        assert!(matches!(
            t.info(
                InfoKind::Pcm,
                QueryInfo {
                    start_id: 0,
                    count: 16,
                    size: 32
                }
            ),
            Reply::Info { count: 16, .. }
        ));
        assert!(matches!(
            t.info(
                InfoKind::Chmap,
                QueryInfo {
                    start_id: 0,
                    count: 128,
                    size: 24
                }
            ),
            Reply::Info { count: 128, .. }
        ));
        let le32 = |b: &[u8]| u32::from_le_bytes(b[..4].try_into().unwrap());
        // (direction, nid) of every stream from its PCM_INFO bytes.
        let pcm: Vec<(u8, u32)> = (0..16)
            .map(|id| {
                let info = t.encode(InfoKind::Pcm, id).unwrap();
                (info[24], le32(&info[0..4]))
            })
            .collect();
        for (i, (direction, nid)) in pcm.iter().enumerate() {
            let (want_direction, want_nid) = if i < 8 {
                (D_OUTPUT, i as u32)
            } else {
                (D_INPUT, i as u32 - 8)
            };
            assert_eq!((*direction, *nid), (want_direction, want_nid), "stream {i}");
        }
        // No two streams of one direction share a nid (the driver would make them substreams
        // of one PCM device).
        let mut seen = std::collections::HashSet::new();
        assert!(pcm.iter().all(|key| seen.insert(*key)));

        let valid_positions = CHMAP_MONO..=CHMAP_RC;
        for (i, &(direction, nid)) in pcm.iter().enumerate() {
            let maps: Vec<[u8; CTL_INFO_SIZE]> = (0..128)
                .map(|id| t.encode(InfoKind::Chmap, id).unwrap())
                .filter(|m| m[4] == direction && le32(&m[0..4]) == nid)
                .collect();
            let counts: Vec<u8> = maps.iter().map(|m| m[5]).collect();
            assert_eq!(counts, (1..=8).collect::<Vec<u8>>(), "stream {i}");
            for map in &maps {
                let channels = usize::from(map[5]);
                let positions = &map[6..6 + CHMAP_MAX_SIZE];
                let used = &positions[..channels];
                assert!(used.iter().all(|p| valid_positions.contains(p)), "{used:?}");
                let distinct: std::collections::HashSet<u8> = used.iter().copied().collect();
                assert_eq!(distinct.len(), channels, "{used:?}");
                assert!(positions[channels..].iter().all(|&p| p == 0));
            }
            assert_eq!(&maps[0][6..7], &[CHMAP_MONO]);
            assert_eq!(
                &maps[5][6..12],
                &[CHMAP_FL, CHMAP_FR, CHMAP_FC, CHMAP_LFE, CHMAP_RL, CHMAP_RR]
            );
        }
        assert!(t.encode(InfoKind::Chmap, 128).is_none());
    }
}
