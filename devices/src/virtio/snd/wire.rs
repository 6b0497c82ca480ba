//! The virtio-snd wire format (VIRTIO 1.2 §5.14): queue indices, request and status codes, and
//! the little-endian structures the driver and the device exchange.
//!
//! Requests are decoded from byte arrays and replies encoded into byte arrays with explicit
//! `from_le_bytes`/`to_le_bytes`, so nothing here depends on host layout or alignment.

/// The virtio device id of a sound card (from `virtio-bindings`).
pub use crate::virtio::VIRTIO_ID_SOUND;

/// Queue indices (§5.14.2).
pub const CONTROLQ: u16 = 0;
pub const EVENTQ: u16 = 1;
pub const TXQ: u16 = 2;
pub const RXQ: u16 = 3;
pub const NUM_QUEUES: usize = 4;

/// Control request codes (§5.14.6).
pub const R_JACK_INFO: u32 = 1;
pub const R_JACK_REMAP: u32 = 2;
pub const R_PCM_INFO: u32 = 0x0100;
pub const R_PCM_SET_PARAMS: u32 = 0x0101;
pub const R_PCM_PREPARE: u32 = 0x0102;
pub const R_PCM_RELEASE: u32 = 0x0103;
pub const R_PCM_START: u32 = 0x0104;
pub const R_PCM_STOP: u32 = 0x0105;
pub const R_CHMAP_INFO: u32 = 0x0200;
/// Control element requests (VIRTIO 1.3 `VIRTIO_SND_F_CTLS`).
pub const R_CTL_INFO: u32 = 0x0300;
pub const R_CTL_ENUM_ITEMS: u32 = 0x0301;
pub const R_CTL_READ: u32 = 0x0302;
pub const R_CTL_WRITE: u32 = 0x0303;
pub const R_CTL_TLV_READ: u32 = 0x0304;
pub const R_CTL_TLV_WRITE: u32 = 0x0305;
pub const R_CTL_TLV_COMMAND: u32 = 0x0306;

/// Event codes (§5.14.6.1).
pub const EVT_JACK_CONNECTED: u32 = 0x1000;
pub const EVT_JACK_DISCONNECTED: u32 = 0x1001;
pub const EVT_PCM_PERIOD_ELAPSED: u32 = 0x1100;
pub const EVT_PCM_XRUN: u32 = 0x1101;
pub const EVT_CTL_NOTIFY: u32 = 0x1200;
/// `virtio_snd_event` and `virtio_snd_ctl_event` are both 8 bytes.
pub const EVENT_SIZE: usize = 8;

/// Device feature bit: control elements.
pub const F_CTLS: u32 = 0;

/// Control element roles, types, access bits and event masks.
pub const CTL_ROLE_VOLUME: u32 = 1;
pub const CTL_ROLE_MUTE: u32 = 2;
pub const CTL_TYPE_BOOLEAN: u32 = 0;
pub const CTL_TYPE_INTEGER: u32 = 1;
pub const CTL_ACCESS_READ: u32 = 1 << 0;
pub const CTL_ACCESS_WRITE: u32 = 1 << 1;
pub const CTL_ACCESS_TLV_READ: u32 = 1 << 4;
pub const CTL_EVT_MASK_VALUE: u16 = 1 << 0;

/// Status codes, for control replies and for I/O message status.
pub const S_OK: u32 = 0x8000;
pub const S_BAD_MSG: u32 = 0x8001;
pub const S_NOT_SUPP: u32 = 0x8002;
pub const S_IO_ERR: u32 = 0x8003;

/// Data flow directions.
pub const D_OUTPUT: u8 = 0;
pub const D_INPUT: u8 = 1;

/// Sizes of the request structures.
pub const HDR_SIZE: usize = 4;
pub const QUERY_INFO_SIZE: usize = 16;
pub const JACK_HDR_SIZE: usize = 8;
pub const JACK_REMAP_SIZE: usize = 16;
pub const PCM_HDR_SIZE: usize = 8;
pub const PCM_SET_PARAMS_SIZE: usize = 24;
/// `virtio_snd_ctl_hdr`.
pub const CTL_HDR_SIZE: usize = 8;
/// `virtio_snd_ctl_value`: a union of 128 le32, 64 le64 or 512 bytes.
pub const CTL_VALUE_SIZE: usize = 512;
/// CTL_WRITE: the header, then the value.
pub const CTL_WRITE_SIZE: usize = CTL_HDR_SIZE + CTL_VALUE_SIZE;
/// The largest request Canto decodes; longer requests are read up to this size.
pub const MAX_REQUEST_SIZE: usize = CTL_WRITE_SIZE;

/// Sizes of the information structures in *_INFO replies.
pub const JACK_INFO_SIZE: usize = 24;
pub const PCM_INFO_SIZE: usize = 32;
pub const CHMAP_INFO_SIZE: usize = 24;
/// `virtio_snd_ctl_info` as C lays it out on every 64-bit Linux target (and as the Linux driver
/// sizes its CTL_INFO query): the value union holds `le64` members, so it is 8-aligned at
/// offset 72 after the 68 bytes of header, fields and name, and the structure is 96 bytes.
pub const CTL_INFO_SIZE: usize = 96;
/// The length of `virtio_snd_ctl_info::name`.
pub const CTL_NAME_SIZE: usize = 44;
const CTL_INFO_VALUE_AT: usize = 72;

/// I/O message header (`virtio_snd_pcm_xfer`) and status (`virtio_snd_pcm_status`) sizes.
pub const PCM_XFER_SIZE: usize = 4;
pub const PCM_STATUS_SIZE: usize = 8;

/// The most channel positions a channel map can hold.
pub const CHMAP_MAX_SIZE: usize = 18;
/// Channel positions used by Canto's channel maps (`VIRTIO_SND_CHMAP_*`).
pub const CHMAP_MONO: u8 = 2;
pub const CHMAP_FL: u8 = 3;
pub const CHMAP_FR: u8 = 4;
pub const CHMAP_RL: u8 = 5;
pub const CHMAP_RR: u8 = 6;
pub const CHMAP_FC: u8 = 7;
pub const CHMAP_LFE: u8 = 8;
pub const CHMAP_SL: u8 = 9;
pub const CHMAP_SR: u8 = 10;
pub const CHMAP_RC: u8 = 11;

/// The channel positions of a stream with `channels` (1 to 8) channels, in the order of WAVE
/// files' channel masks (front left, front right, front centre, LFE, rear left, rear right,
/// side left, side right), so a WAV file's channels are what the guest's channel map says:
/// 1 mono, 2 stereo, 3 (FL FR FC), 4 quad (FL FR RL RR), 5 (FL FR FC RL RR), 5.1, 6.1 (FL FR FC
/// LFE RC SL SR), 7.1. `None` for other counts.
pub fn standard_positions(channels: u8) -> Option<&'static [u8]> {
    const LAYOUTS: [&[u8]; 8] = [
        &[CHMAP_MONO],
        &[CHMAP_FL, CHMAP_FR],
        &[CHMAP_FL, CHMAP_FR, CHMAP_FC],
        &[CHMAP_FL, CHMAP_FR, CHMAP_RL, CHMAP_RR],
        &[CHMAP_FL, CHMAP_FR, CHMAP_FC, CHMAP_RL, CHMAP_RR],
        &[CHMAP_FL, CHMAP_FR, CHMAP_FC, CHMAP_LFE, CHMAP_RL, CHMAP_RR],
        &[
            CHMAP_FL, CHMAP_FR, CHMAP_FC, CHMAP_LFE, CHMAP_RC, CHMAP_SL, CHMAP_SR,
        ],
        &[
            CHMAP_FL, CHMAP_FR, CHMAP_FC, CHMAP_LFE, CHMAP_RL, CHMAP_RR, CHMAP_SL, CHMAP_SR,
        ],
    ];
    LAYOUTS.get(usize::from(channels).checked_sub(1)?).copied()
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

/// The code of a control request (`virtio_snd_hdr`); `bytes` holds at least [`HDR_SIZE`] bytes.
pub fn request_code(bytes: &[u8]) -> u32 {
    le32(bytes, 0)
}

/// `virtio_snd_query_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryInfo {
    pub start_id: u32,
    pub count: u32,
    pub size: u32,
}

impl QueryInfo {
    /// Decodes the request; `bytes` holds at least [`QUERY_INFO_SIZE`] bytes.
    pub fn decode(bytes: &[u8]) -> Self {
        QueryInfo {
            start_id: le32(bytes, 4),
            count: le32(bytes, 8),
            size: le32(bytes, 12),
        }
    }
}

/// The `jack_id` of a `virtio_snd_jack_hdr`; `bytes` holds at least [`JACK_HDR_SIZE`] bytes.
pub fn jack_id(bytes: &[u8]) -> u32 {
    le32(bytes, 4)
}

/// The `stream_id` of a `virtio_snd_pcm_hdr`; `bytes` holds at least [`PCM_HDR_SIZE`] bytes.
pub fn pcm_stream_id(bytes: &[u8]) -> u32 {
    le32(bytes, 4)
}

/// `virtio_snd_pcm_set_params`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetParams {
    pub stream_id: u32,
    pub buffer_bytes: u32,
    pub period_bytes: u32,
    pub features: u32,
    pub channels: u8,
    pub format: u8,
    pub rate: u8,
}

impl SetParams {
    /// Decodes the request; `bytes` holds at least [`PCM_SET_PARAMS_SIZE`] bytes. The padding
    /// byte is ignored.
    pub fn decode(bytes: &[u8]) -> Self {
        SetParams {
            stream_id: le32(bytes, 4),
            buffer_bytes: le32(bytes, 8),
            period_bytes: le32(bytes, 12),
            features: le32(bytes, 16),
            channels: bytes[20],
            format: bytes[21],
            rate: bytes[22],
        }
    }

    /// Encodes the request (used by tests that play the driver).
    pub fn encode(&self) -> [u8; PCM_SET_PARAMS_SIZE] {
        let mut out = [0u8; PCM_SET_PARAMS_SIZE];
        out[0..4].copy_from_slice(&R_PCM_SET_PARAMS.to_le_bytes());
        out[4..8].copy_from_slice(&self.stream_id.to_le_bytes());
        out[8..12].copy_from_slice(&self.buffer_bytes.to_le_bytes());
        out[12..16].copy_from_slice(&self.period_bytes.to_le_bytes());
        out[16..20].copy_from_slice(&self.features.to_le_bytes());
        out[20] = self.channels;
        out[21] = self.format;
        out[22] = self.rate;
        out
    }
}

/// `virtio_snd_jack_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JackInfo {
    pub hda_fn_nid: u32,
    pub features: u32,
    pub hda_reg_defconf: u32,
    pub hda_reg_caps: u32,
    pub connected: bool,
}

impl JackInfo {
    pub fn encode(&self) -> [u8; JACK_INFO_SIZE] {
        let mut out = [0u8; JACK_INFO_SIZE];
        out[0..4].copy_from_slice(&self.hda_fn_nid.to_le_bytes());
        out[4..8].copy_from_slice(&self.features.to_le_bytes());
        out[8..12].copy_from_slice(&self.hda_reg_defconf.to_le_bytes());
        out[12..16].copy_from_slice(&self.hda_reg_caps.to_le_bytes());
        out[16] = u8::from(self.connected);
        out
    }
}

/// `virtio_snd_pcm_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcmInfo {
    pub hda_fn_nid: u32,
    pub features: u32,
    pub formats: u64,
    pub rates: u64,
    pub direction: u8,
    pub channels_min: u8,
    pub channels_max: u8,
}

impl PcmInfo {
    pub fn encode(&self) -> [u8; PCM_INFO_SIZE] {
        let mut out = [0u8; PCM_INFO_SIZE];
        out[0..4].copy_from_slice(&self.hda_fn_nid.to_le_bytes());
        out[4..8].copy_from_slice(&self.features.to_le_bytes());
        out[8..16].copy_from_slice(&self.formats.to_le_bytes());
        out[16..24].copy_from_slice(&self.rates.to_le_bytes());
        out[24] = self.direction;
        out[25] = self.channels_min;
        out[26] = self.channels_max;
        out
    }
}

/// `virtio_snd_chmap_info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChmapInfo {
    pub hda_fn_nid: u32,
    pub direction: u8,
    pub channels: u8,
    pub positions: [u8; CHMAP_MAX_SIZE],
}

impl ChmapInfo {
    pub fn encode(&self) -> [u8; CHMAP_INFO_SIZE] {
        let mut out = [0u8; CHMAP_INFO_SIZE];
        out[0..4].copy_from_slice(&self.hda_fn_nid.to_le_bytes());
        out[4] = self.direction;
        out[5] = self.channels;
        out[6..].copy_from_slice(&self.positions);
        out
    }
}

/// `virtio_snd_ctl_info` of a BOOLEAN or INTEGER control (the only types Canto offers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtlInfo {
    pub role: u32,
    pub kind: u32,
    pub access: u32,
    pub count: u32,
    pub index: u32,
    pub name: &'static str,
    /// INTEGER: (min, max, step).
    pub range: (i32, i32, i32),
}

impl CtlInfo {
    pub fn encode(&self) -> [u8; CTL_INFO_SIZE] {
        let mut out = [0u8; CTL_INFO_SIZE];
        // hda_fn_nid 0.
        out[4..8].copy_from_slice(&self.role.to_le_bytes());
        out[8..12].copy_from_slice(&self.kind.to_le_bytes());
        out[12..16].copy_from_slice(&self.access.to_le_bytes());
        out[16..20].copy_from_slice(&self.count.to_le_bytes());
        out[20..24].copy_from_slice(&self.index.to_le_bytes());
        // NUL-terminated: at most 43 bytes of name.
        let name = self.name.as_bytes();
        let len = name.len().min(CTL_NAME_SIZE - 1);
        out[24..24 + len].copy_from_slice(&name[..len]);
        if self.kind == CTL_TYPE_INTEGER {
            let (min, max, step) = self.range;
            let at = CTL_INFO_VALUE_AT;
            out[at..at + 4].copy_from_slice(&min.to_le_bytes());
            out[at + 4..at + 8].copy_from_slice(&max.to_le_bytes());
            out[at + 8..at + 12].copy_from_slice(&step.to_le_bytes());
        }
        out
    }
}

/// The `control_id` of a `virtio_snd_ctl_hdr`; `bytes` holds at least [`CTL_HDR_SIZE`] bytes.
pub fn ctl_id(bytes: &[u8]) -> u32 {
    le32(bytes, 4)
}

/// A `virtio_snd_event`: a jack event carries the jack id in `data`.
pub fn event(code: u32, data: u32) -> [u8; EVENT_SIZE] {
    let mut out = [0u8; EVENT_SIZE];
    out[0..4].copy_from_slice(&code.to_le_bytes());
    out[4..8].copy_from_slice(&data.to_le_bytes());
    out
}

/// A `virtio_snd_ctl_event` (CTL_NOTIFY).
pub fn ctl_event(control_id: u16, mask: u16) -> [u8; EVENT_SIZE] {
    let mut out = [0u8; EVENT_SIZE];
    out[0..4].copy_from_slice(&EVT_CTL_NOTIFY.to_le_bytes());
    out[4..6].copy_from_slice(&control_id.to_le_bytes());
    out[6..8].copy_from_slice(&mask.to_le_bytes());
    out
}

/// Encodes a `virtio_snd_pcm_status`.
pub fn pcm_status(status: u32, latency_bytes: u32) -> [u8; PCM_STATUS_SIZE] {
    let mut out = [0u8; PCM_STATUS_SIZE];
    out[0..4].copy_from_slice(&status.to_le_bytes());
    out[4..8].copy_from_slice(&latency_bytes.to_le_bytes());
    out
}

/// The sample formats Canto knows, with their virtio codes (`VIRTIO_SND_PCM_FMT_*`).
/// Only little-endian interleaved layouts exist on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PcmFormat {
    S8,
    U8,
    S16,
    U16,
    /// 24-bit samples packed in 3 bytes.
    S24_3,
    /// 24-bit samples in the low 3 bytes of a 4-byte container.
    S24,
    S32,
    /// IEEE 754 32-bit float.
    Float,
}

impl PcmFormat {
    pub const ALL: [PcmFormat; 8] = [
        PcmFormat::S8,
        PcmFormat::U8,
        PcmFormat::S16,
        PcmFormat::U16,
        PcmFormat::S24_3,
        PcmFormat::S24,
        PcmFormat::S32,
        PcmFormat::Float,
    ];

    /// The virtio code (bit position in `virtio_snd_pcm_info::formats`).
    pub const fn code(self) -> u8 {
        match self {
            PcmFormat::S8 => 3,
            PcmFormat::U8 => 4,
            PcmFormat::S16 => 5,
            PcmFormat::U16 => 6,
            PcmFormat::S24_3 => 11,
            PcmFormat::S24 => 15,
            PcmFormat::S32 => 17,
            PcmFormat::Float => 19,
        }
    }

    pub fn from_code(code: u8) -> Option<PcmFormat> {
        PcmFormat::ALL.into_iter().find(|f| f.code() == code)
    }

    /// The bit of this format in a `formats` mask.
    pub const fn bit(self) -> u64 {
        1u64 << self.code()
    }

    /// The `formats` mask of every format in `formats`.
    pub fn mask_of(formats: &[PcmFormat]) -> u64 {
        formats.iter().fold(0, |mask, f| mask | f.bit())
    }

    /// Bytes per sample (the physical width, container included).
    pub const fn sample_bytes(self) -> u32 {
        match self {
            PcmFormat::S8 | PcmFormat::U8 => 1,
            PcmFormat::S16 | PcmFormat::U16 => 2,
            PcmFormat::S24_3 => 3,
            PcmFormat::S24 | PcmFormat::S32 | PcmFormat::Float => 4,
        }
    }

    /// One sample of silence, little-endian. Unsigned formats are silent at mid-scale, not at 0.
    pub const fn silence_sample(self) -> &'static [u8] {
        match self {
            PcmFormat::U8 => &[0x80],
            PcmFormat::U16 => &[0x00, 0x80],
            PcmFormat::S8 => &[0],
            PcmFormat::S16 => &[0, 0],
            PcmFormat::S24_3 => &[0, 0, 0],
            PcmFormat::S24 | PcmFormat::S32 | PcmFormat::Float => &[0, 0, 0, 0],
        }
    }

    /// Fills `buf` with silence; a trailing partial sample gets the sample's first bytes.
    pub fn fill_silence(self, buf: &mut [u8]) {
        let sample = self.silence_sample();
        if sample.iter().all(|b| *b == 0) {
            buf.fill(0);
            return;
        }
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = sample[i % sample.len()];
        }
    }
}

/// The frame rates Canto offers (8 kHz to 192 kHz), as (virtio code, Hz).
pub const RATES: [(u8, u32); 12] = [
    (1, 8000),
    (2, 11025),
    (3, 16000),
    (4, 22050),
    (5, 32000),
    (6, 44100),
    (7, 48000),
    (8, 64000),
    (9, 88200),
    (10, 96000),
    (11, 176400),
    (12, 192000),
];

/// The `rates` mask of every rate in [`RATES`].
pub const fn all_rates_mask() -> u64 {
    let mut mask = 0u64;
    let mut i = 0;
    while i < RATES.len() {
        mask |= 1u64 << RATES[i].0;
        i += 1;
    }
    mask
}

/// The rate in Hz of a virtio rate code, if Canto knows it.
pub fn rate_hz(code: u8) -> Option<u32> {
    RATES.iter().find(|(c, _)| *c == code).map(|(_, hz)| *hz)
}

/// The virtio rate code of a rate in Hz, if Canto knows it.
pub fn rate_code(hz: u32) -> Option<u8> {
    RATES.iter().find(|(_, r)| *r == hz).map(|(c, _)| *c)
}

/// Whether `code` is set in `mask`; codes of 64 and above are never set (no out-of-range shift).
pub fn mask_has(mask: u64, code: u8) -> bool {
    1u64.checked_shl(u32::from(code))
        .is_some_and(|bit| mask & bit != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_params_round_trips() {
        let request = SetParams {
            stream_id: 3,
            buffer_bytes: 4096,
            period_bytes: 1024,
            features: 0,
            channels: 2,
            format: PcmFormat::S16.code(),
            rate: 7,
        };
        assert_eq!(SetParams::decode(&request.encode()), request);
        assert_eq!(request_code(&request.encode()), R_PCM_SET_PARAMS);
    }

    #[test]
    fn structures_have_the_spec_layout() {
        let info = PcmInfo {
            hda_fn_nid: 1,
            features: 0,
            formats: PcmFormat::S16.bit(),
            rates: 1 << 7,
            direction: D_INPUT,
            channels_min: 1,
            channels_max: 8,
        }
        .encode();
        assert_eq!(&info[8..16], &(1u64 << 5).to_le_bytes());
        assert_eq!(&info[16..24], &(1u64 << 7).to_le_bytes());
        assert_eq!(&info[24..27], &[D_INPUT, 1, 8]);
        assert_eq!(&info[27..], &[0; 5]);
        assert_eq!(pcm_status(S_IO_ERR, 7), [0x03, 0x80, 0, 0, 7, 0, 0, 0]);
    }

    #[test]
    fn masks_never_shift_out_of_range() {
        assert!(mask_has(u64::MAX, 63));
        assert!(!mask_has(u64::MAX, 64));
        assert!(!mask_has(u64::MAX, 255));
        assert!(mask_has(all_rates_mask(), 7));
        assert!(!mask_has(all_rates_mask(), 0));
        assert!(!mask_has(all_rates_mask(), 13));
    }

    #[test]
    fn formats_map_to_codes_and_sizes() {
        for format in PcmFormat::ALL {
            assert_eq!(PcmFormat::from_code(format.code()), Some(format));
            assert_eq!(format.silence_sample().len() as u32, format.sample_bytes());
        }
        assert_eq!(PcmFormat::from_code(0), None);
        assert_eq!(PcmFormat::from_code(20), None);
        assert_eq!(rate_hz(7), Some(48000));
        assert_eq!(rate_code(44100), Some(6));
        assert_eq!(rate_hz(0), None);
    }

    #[test]
    fn unsigned_silence_is_mid_scale() {
        let mut buf = [0u8; 5];
        PcmFormat::U16.fill_silence(&mut buf);
        assert_eq!(buf, [0, 0x80, 0, 0x80, 0]);
        PcmFormat::U8.fill_silence(&mut buf);
        assert_eq!(buf, [0x80; 5]);
        PcmFormat::S32.fill_silence(&mut buf);
        assert_eq!(buf, [0; 5]);
    }
}
