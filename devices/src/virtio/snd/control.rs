//! Control requests (§5.14.6): decoding with size checks, the item information requests
//! (JACK_INFO, PCM_INFO, CHMAP_INFO) and writing replies into the driver's buffer.
//!
//! Every request is answered at once, on the event loop. A request shorter than its structure is
//! BAD_MSG; an unknown code (the VIRTIO 1.3 control elements included: VIRTIO_SND_F_CTLS is not
//! offered) is NOT_SUPP. An *_INFO reply is `count * size` bytes after the header, with `size`
//! at least the structure's size and at most [`MAX_INFO_ITEM_SIZE`] (the tail of each item is
//! zeroed) and `start_id + count` within the configured items: nothing is allocated from the
//! guest's numbers.

use vm_memory::GuestMemoryMmap;

use super::config::SoundConfig;
use super::io::Direction;
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
}

impl InfoKind {
    fn item_size(self) -> u32 {
        match self {
            InfoKind::Jack => JACK_INFO_SIZE as u32,
            InfoKind::Pcm => PCM_INFO_SIZE as u32,
            InfoKind::Chmap => CHMAP_INFO_SIZE as u32,
        }
    }
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
    /// Shorter than its structure: BAD_MSG.
    Malformed,
    /// A code the device does not implement: NOT_SUPP.
    Unsupported(u32),
}

/// Decodes the first bytes of a request's readable part.
pub fn decode(request: &[u8]) -> Request {
    if request.len() < HDR_SIZE {
        return Request::Malformed;
    }
    let code = request_code(request);
    let needed = match code {
        R_JACK_INFO | R_PCM_INFO | R_CHMAP_INFO => QUERY_INFO_SIZE,
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
}

/// The device's fixed items: jacks, streams and channel maps.
#[derive(Debug, Clone)]
pub struct Topology {
    pub jacks: Vec<JackInfo>,
    pub streams: Vec<StreamInfo>,
    pub chmaps: Vec<ChmapInfo>,
}

/// HDA pin default configurations (HDA §7.3.3.31): a green 1/8" line out at the rear,
/// association 1, and a pink 1/8" microphone in at the rear, association 2.
const LINE_OUT_DEFCONF: u32 = 0x0101_4010;
const MIC_IN_DEFCONF: u32 = 0x01a1_9020;
/// HDA pin capabilities (HDA §7.3.4.9): presence detect plus output or input capable.
const LINE_OUT_CAPS: u32 = 0x14;
const MIC_IN_CAPS: u32 = 0x24;

impl Topology {
    /// Output streams first, then input streams; each with every rate Canto knows, 1 to 8
    /// channels and the backend's formats; jacks alternate line out and microphone, all
    /// connected.
    ///
    /// Each stream is its own guest PCM device: the N-th output stream and the N-th input
    /// stream have `hda_fn_nid` N, so the Linux driver makes `hw:C,N` with (at most) one
    /// playback and one capture substream, never two streams of one direction behind one
    /// device. Every stream has one channel map per channel count it offers (1 to 8 channels,
    /// [`standard_positions`]), on its own nid and direction.
    pub fn new(config: &SoundConfig, formats: u64) -> Topology {
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
        let jacks = (0..config.jacks)
            .map(|id| {
                let (defconf, caps) = if id % 2 == 0 {
                    (LINE_OUT_DEFCONF, LINE_OUT_CAPS)
                } else {
                    (MIC_IN_DEFCONF, MIC_IN_CAPS)
                };
                JackInfo {
                    hda_fn_nid: 0,
                    features: 0,
                    hda_reg_defconf: defconf,
                    hda_reg_caps: caps,
                    connected: true,
                }
            })
            .collect();
        Topology {
            jacks,
            streams,
            chmaps,
        }
    }

    fn count(&self, kind: InfoKind) -> u32 {
        let len = match kind {
            InfoKind::Jack => self.jacks.len(),
            InfoKind::Pcm => self.streams.len(),
            InfoKind::Chmap => self.chmaps.len(),
        };
        // Bounded by the configuration limits.
        len as u32
    }

    /// Item `id` encoded; its length is `kind.item_size()`.
    fn encode(&self, kind: InfoKind, id: u32) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        let id = id as usize;
        match kind {
            InfoKind::Jack => out[..JACK_INFO_SIZE].copy_from_slice(&self.jacks.get(id)?.encode()),
            InfoKind::Pcm => {
                out[..PCM_INFO_SIZE].copy_from_slice(&self.streams.get(id)?.pcm_info().encode())
            }
            InfoKind::Chmap => {
                out[..CHMAP_INFO_SIZE].copy_from_slice(&self.chmaps.get(id)?.encode())
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
        Reply::Info {
            kind,
            start,
            count,
            size,
        } => (kind, start, count, size),
    };
    // count <= 128 items (16 streams, 8 channel maps each) and size <= 1 KiB: no overflow, and
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
        Topology::new(&config, PcmFormat::S16.bit())
    }

    #[test]
    fn decodes_every_request_with_size_checks() {
        assert_eq!(decode(&[]), Request::Malformed);
        assert_eq!(decode(&[1, 0, 0]), Request::Malformed);
        assert_eq!(
            decode(&0x9999u32.to_le_bytes()),
            Request::Unsupported(0x9999)
        );
        // Control elements (VIRTIO 1.3) are not offered.
        assert_eq!(
            decode(&query(0x0300, 0, 1, 16)),
            Request::Unsupported(0x0300)
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
        assert_eq!(t.jack_remap(2), Reply::Status(S_BAD_MSG));
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
        assert_eq!(t.jacks[1].hda_reg_defconf, MIC_IN_DEFCONF);
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
        let t = Topology::new(&config, PcmFormat::S16.bit());
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
            let maps: Vec<[u8; 32]> = (0..128)
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
