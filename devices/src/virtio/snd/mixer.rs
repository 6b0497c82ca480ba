//! Audio controls (VIRTIO 1.3 `VIRTIO_SND_F_CTLS`): a volume and a mute switch per stream, and
//! the gain they apply inside the one copy each period makes.
//!
//! # Controls
//! Stream `s` (output streams first, then input streams) has control `2s`, its volume, and
//! `2s + 1`, its switch. The Linux driver (`virtio_kctl.c`) names ALSA mixer controls from
//! `virtio_snd_ctl_info::name` and `index` alone (it ignores `role`), so the names follow ALSA's
//! conventions: output stream N (`hw:0,N`) has "PCM Playback Volume" and "PCM Playback Switch"
//! with index N, input stream N "Capture Volume" and "Capture Switch" with index N.
//! - Volume: INTEGER, role VOLUME, one value 0..=112, step 1, default 100; value `v` is
//!   `(v - 100) / 2` dB: -50 dB to +6 dB in 0.5 dB steps, 100 = 0 dB. Its TLV (CTL_TLV_READ) is
//!   ALSA's `DB_SCALE` (type 1, 8 bytes: min -5000 in 0.01 dB, step 50, no mute flag).
//! - Switch: BOOLEAN, role MUTE, one value, default 1. As every ALSA "Switch", 1 lets the sound
//!   through and 0 mutes it (`amixer sset PCM mute` writes 0).
//!
//! # Gain
//! Volume 100 with the switch on is bit-exact passthrough: the period's copy is the plain copy.
//! Switch off: the period is the format's silence (0; 0x80 for U8, 0x8000 for U16), the guest's
//! PCM is not read. Otherwise each sample `x` becomes:
//! - integer formats (unsigned ones offset to signed first): `q = round(65536 * 10^(dB/20))`
//!   (Q16, computed in f64), `y = round_half_even(x * q / 65536)`, saturated to the format's
//!   range (24-bit formats to 24 bits; S24 in 4 bytes writes the sign extension in the top byte);
//! - FLOAT: `y = x * f` with `f = 10^(dB/20)` rounded to f32 (IEEE multiply, round to nearest
//!   even), clamped to [-1.0, 1.0] (NaN stays NaN).

use std::sync::atomic::{AtomicU32, Ordering};

use super::wire::*;

/// The volume control's range: `(v - VOLUME_UNITY) / 2` dB.
pub const VOLUME_MIN: i32 = 0;
pub const VOLUME_MAX: i32 = 112;
pub const VOLUME_UNITY: i32 = 100;
/// `DB_SCALE` in 0.01 dB.
const DB_MIN_CENTI: i32 = -5000;
const DB_STEP_CENTI: i32 = 50;
/// ALSA's `SNDRV_CTL_TLVT_DB_SCALE`.
const TLV_DB_SCALE: u32 = 1;
/// The volume control's TLV, as CTL_TLV_READ returns it.
pub fn volume_tlv() -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&TLV_DB_SCALE.to_le_bytes());
    out[4..8].copy_from_slice(&8u32.to_le_bytes());
    out[8..12].copy_from_slice(&DB_MIN_CENTI.to_le_bytes());
    out[12..16].copy_from_slice(&(DB_STEP_CENTI as u32).to_le_bytes());
    out
}

/// Which of a stream's two controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlKind {
    Volume,
    Switch,
}

/// A stream's volume and switch, read by its period thread once per period.
#[derive(Debug)]
struct Setting {
    /// Volume in the low 16 bits, the switch in bit 16.
    packed: AtomicU32,
}

const SWITCH_BIT: u32 = 1 << 16;

impl Setting {
    fn new() -> Setting {
        Setting {
            packed: AtomicU32::new(VOLUME_UNITY as u32 | SWITCH_BIT),
        }
    }

    fn get(&self) -> (i32, bool) {
        let packed = self.packed.load(Ordering::Acquire);
        ((packed & 0xffff) as i32, packed & SWITCH_BIT != 0)
    }
}

/// What a CTL_WRITE or host-side set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    Changed,
    Unchanged,
    /// Out of range, or not a control: BAD_MSG.
    Invalid,
}

/// Every stream's controls, shared by the worker (requests), the period threads (gain) and the
/// host side (tests, a VMM front end).
#[derive(Debug)]
pub struct Controls {
    /// Per stream: whether it is an output stream, and its PCM device number (the index).
    streams: Vec<(bool, u32)>,
    settings: Vec<Setting>,
}

impl Controls {
    /// `streams`: for each stream in id order, (is output, PCM device number).
    pub fn new(streams: &[(bool, u32)]) -> Controls {
        Controls {
            streams: streams.to_vec(),
            settings: streams.iter().map(|_| Setting::new()).collect(),
        }
    }

    /// The number of controls (two per stream).
    pub fn count(&self) -> u32 {
        // At most 16 streams.
        (self.streams.len() * 2) as u32
    }

    /// (stream, kind) of control `id`.
    pub fn locate(&self, id: u32) -> Option<(usize, ControlKind)> {
        let stream = (id / 2) as usize;
        if stream >= self.streams.len() {
            return None;
        }
        let kind = if id.is_multiple_of(2) {
            ControlKind::Volume
        } else {
            ControlKind::Switch
        };
        Some((stream, kind))
    }

    /// The id of a stream's control.
    pub fn id_of(stream: u32, kind: ControlKind) -> u32 {
        stream * 2 + u32::from(kind == ControlKind::Switch)
    }

    pub fn info(&self, id: u32) -> Option<CtlInfo> {
        let (stream, kind) = self.locate(id)?;
        let (output, index) = self.streams[stream];
        let name = match (output, kind) {
            (true, ControlKind::Volume) => "PCM Playback Volume",
            (true, ControlKind::Switch) => "PCM Playback Switch",
            (false, ControlKind::Volume) => "Capture Volume",
            (false, ControlKind::Switch) => "Capture Switch",
        };
        Some(match kind {
            ControlKind::Volume => CtlInfo {
                role: CTL_ROLE_VOLUME,
                kind: CTL_TYPE_INTEGER,
                access: CTL_ACCESS_READ | CTL_ACCESS_WRITE | CTL_ACCESS_TLV_READ,
                count: 1,
                index,
                name,
                range: (VOLUME_MIN, VOLUME_MAX, 1),
            },
            ControlKind::Switch => CtlInfo {
                role: CTL_ROLE_MUTE,
                kind: CTL_TYPE_BOOLEAN,
                access: CTL_ACCESS_READ | CTL_ACCESS_WRITE,
                count: 1,
                index,
                name,
                range: (0, 0, 0),
            },
        })
    }

    /// The control's value (one member).
    pub fn read(&self, id: u32) -> Option<i32> {
        let (stream, kind) = self.locate(id)?;
        let (volume, on) = self.settings[stream].get();
        Some(match kind {
            ControlKind::Volume => volume,
            ControlKind::Switch => i32::from(on),
        })
    }

    /// Sets the control's value: volume within 0..=112, switch 0 or 1.
    pub fn write(&self, id: u32, value: i32) -> WriteResult {
        let Some((stream, kind)) = self.locate(id) else {
            return WriteResult::Invalid;
        };
        let valid = match kind {
            ControlKind::Volume => (VOLUME_MIN..=VOLUME_MAX).contains(&value),
            ControlKind::Switch => value == 0 || value == 1,
        };
        if !valid {
            return WriteResult::Invalid;
        }
        let setting = &self.settings[stream];
        let update = |packed: u32| {
            // `value` was checked to be 0..=112.
            Some(match kind {
                ControlKind::Volume => (packed & !0xffff) | value as u32,
                ControlKind::Switch if value == 1 => packed | SWITCH_BIT,
                ControlKind::Switch => packed & !SWITCH_BIT,
            })
        };
        // The closure always returns Some.
        let old = setting
            .packed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, update)
            .unwrap_or_else(|v| v);
        if update(old) == Some(old) {
            WriteResult::Unchanged
        } else {
            WriteResult::Changed
        }
    }

    /// The gain stream `stream` applies now.
    pub fn gain(&self, stream: u32) -> Gain {
        match self.settings.get(stream as usize) {
            Some(setting) => {
                let (volume, on) = setting.get();
                Gain::new(volume, on)
            }
            None => Gain::Unity,
        }
    }
}

/// The gain of one period.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Gain {
    /// 0 dB, switch on: the plain copy.
    Unity,
    /// Switch off: silence.
    Mute,
    /// Any other volume: `q16` for integer samples, `factor` for FLOAT.
    Scale { q16: i64, factor: f32 },
}

/// How many bytes of guest PCM go through the scaled copy's stack buffer at once: a multiple
/// of every sample size (1, 2, 3, 4 bytes), small enough to stay in L1.
pub const SCRATCH_BYTES: usize = 3072;

impl Gain {
    /// The gain of volume `volume` (0..=112) and switch `on`.
    pub fn new(volume: i32, on: bool) -> Gain {
        if !on {
            return Gain::Mute;
        }
        if volume == VOLUME_UNITY {
            return Gain::Unity;
        }
        let db = f64::from(volume - VOLUME_UNITY) / 2.0;
        let linear = 10f64.powf(db / 20.0);
        Gain::Scale {
            // At most 2 * 65536: no overflow.
            q16: (linear * 65536.0).round() as i64,
            factor: linear as f32,
        }
    }

    /// Scales whole samples of `src` into `dst` (same length, a multiple of the sample size).
    pub fn apply(&self, format: PcmFormat, src: &[u8], dst: &mut [u8]) {
        let (q16, factor) = match *self {
            Gain::Unity => return dst.copy_from_slice(src),
            Gain::Mute => return fill_silence_at(format, 0, dst),
            Gain::Scale { q16, factor } => (q16, factor),
        };
        let scale = |x: i64, min: i64, max: i64| scale_q16(x, q16).clamp(min, max);
        match format {
            PcmFormat::S8 => {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = scale(i64::from(*s as i8), -128, 127) as i8 as u8;
                }
            }
            PcmFormat::U8 => {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = (scale(i64::from(*s) - 128, -128, 127) + 128) as u8;
                }
            }
            PcmFormat::S16 => {
                for (d, s) in dst.chunks_exact_mut(2).zip(src.chunks_exact(2)) {
                    let x = i16::from_le_bytes([s[0], s[1]]);
                    let y = scale(i64::from(x), -32768, 32767) as i16;
                    d.copy_from_slice(&y.to_le_bytes());
                }
            }
            PcmFormat::U16 => {
                for (d, s) in dst.chunks_exact_mut(2).zip(src.chunks_exact(2)) {
                    let x = i64::from(u16::from_le_bytes([s[0], s[1]])) - 32768;
                    let y = (scale(x, -32768, 32767) + 32768) as u16;
                    d.copy_from_slice(&y.to_le_bytes());
                }
            }
            PcmFormat::S24_3 => {
                for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(3)) {
                    let x = i32::from_le_bytes([0, s[0], s[1], s[2]]) >> 8;
                    let y = scale(i64::from(x), -(1 << 23), (1 << 23) - 1) as i32;
                    d.copy_from_slice(&y.to_le_bytes()[..3]);
                }
            }
            PcmFormat::S24 => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
                    let x = i32::from_le_bytes([0, s[0], s[1], s[2]]) >> 8;
                    let y = scale(i64::from(x), -(1 << 23), (1 << 23) - 1) as i32;
                    d.copy_from_slice(&y.to_le_bytes());
                }
            }
            PcmFormat::S32 => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
                    let x = i32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    let y = scale(i64::from(x), i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
                    d.copy_from_slice(&y.to_le_bytes());
                }
            }
            PcmFormat::Float => {
                for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
                    let x = f32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    let y = (x * factor).clamp(-1.0, 1.0);
                    d.copy_from_slice(&y.to_le_bytes());
                }
            }
        }
    }

    /// Scales one whole sample in place (a sample two messages share).
    fn apply_in_place(&self, format: PcmFormat, sample: &mut [u8]) {
        let mut src = [0u8; 4];
        let len = sample.len().min(4);
        src[..len].copy_from_slice(&sample[..len]);
        self.apply(format, &src[..len], &mut sample[..len]);
    }

    /// Copies `n` bytes of guest PCM into `buffer[at..at + n]` through this gain, in one pass:
    /// `read(offset, dst)` reads the piece's bytes `[offset, offset + dst.len())`. `at` is the
    /// byte offset in a period that starts on a sample boundary; a sample cut between two
    /// pieces (two messages) is scaled once its last byte has arrived. Unity reads straight
    /// into `buffer`; Mute reads nothing and writes silence.
    pub fn copy_into<E>(
        &self,
        format: PcmFormat,
        buffer: &mut [u8],
        at: usize,
        n: usize,
        mut read: impl FnMut(usize, &mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let piece = &mut buffer[at..at + n];
        match self {
            Gain::Unity => return read(0, piece),
            Gain::Mute => {
                fill_silence_at(format, at, piece);
                return Ok(());
            }
            Gain::Scale { .. } => {}
        }
        let size = format.sample_bytes() as usize;
        let mut done = 0;
        let phase = at % size;
        if phase != 0 {
            // The end of a sample the previous piece began.
            let head = (size - phase).min(n);
            read(0, &mut buffer[at..at + head])?;
            done = head;
            if (at + head).is_multiple_of(size) {
                self.apply_in_place(format, &mut buffer[at + head - size..at + head]);
            }
        }
        let mut scratch = [0u8; SCRATCH_BYTES];
        while n - done >= size {
            let k = (n - done).min(SCRATCH_BYTES) / size * size;
            read(done, &mut scratch[..k])?;
            self.apply(format, &scratch[..k], &mut buffer[at + done..at + done + k]);
            done += k;
        }
        if done < n {
            // The start of a sample the next piece ends: raw until then.
            read(done, &mut buffer[at + done..at + n])?;
        }
        Ok(())
    }
}

impl Gain {
    /// The capture side of [`Gain::copy_into`]: hands `data[start..end]` (part of a captured
    /// period, which starts on a sample boundary) to `write(offset, bytes)` through this gain,
    /// `offset` counting from `start`. Samples are scaled whole from `data` into a stack
    /// buffer, so a sample two messages share comes out the same in both. Unity writes `data`
    /// itself; a trailing partial sample (a period that is not whole samples) goes raw.
    pub fn copy_from<E>(
        &self,
        format: PcmFormat,
        data: &[u8],
        start: usize,
        end: usize,
        mut write: impl FnMut(usize, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if *self == Gain::Unity {
            return write(0, &data[start..end]);
        }
        let size = format.sample_bytes() as usize;
        let mut scratch = [0u8; SCRATCH_BYTES];
        let mut pos = start;
        while pos < end {
            let first = pos - pos % size;
            let whole_end = first + (data.len() - first).min(SCRATCH_BYTES) / size * size;
            if whole_end == first {
                return write(pos - start, &data[pos..end]);
            }
            let scaled = &mut scratch[..whole_end - first];
            self.apply(format, &data[first..whole_end], scaled);
            let take_end = whole_end.min(end);
            write(pos - start, &scaled[pos - first..take_end - first])?;
            pos = take_end;
        }
        Ok(())
    }
}

/// `round_half_even(x * q16 / 65536)`.
/// Branch-free, so that the per-format loops vectorize.
#[inline(always)]
fn scale_q16(x: i64, q16: i64) -> i64 {
    let product = x * q16;
    let floor = product >> 16;
    let rest = product & 0xffff;
    let up = i64::from(rest > 0x8000) | (i64::from(rest == 0x8000) & floor & 1);
    floor + up
}

/// Silence for `buf`, which starts `at` bytes into a sample-aligned period.
fn fill_silence_at(format: PcmFormat, at: usize, buf: &mut [u8]) {
    let sample = format.silence_sample();
    if sample.iter().all(|b| *b == 0) {
        buf.fill(0);
        return;
    }
    for (i, byte) in buf.iter_mut().enumerate() {
        *byte = sample[(at + i) % sample.len()];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controls() -> Controls {
        Controls::new(&[(true, 0), (true, 1), (false, 0)])
    }

    fn gain_db(db_halves: i32) -> Gain {
        Gain::new(VOLUME_UNITY + db_halves, true)
    }

    #[test]
    fn controls_have_alsa_names_and_ranges() {
        let c = controls();
        assert_eq!(c.count(), 6);
        let names: Vec<(&str, u32)> = (0..6)
            .map(|id| c.info(id).unwrap())
            .map(|i| (i.name, i.index))
            .collect();
        assert_eq!(
            names,
            [
                ("PCM Playback Volume", 0),
                ("PCM Playback Switch", 0),
                ("PCM Playback Volume", 1),
                ("PCM Playback Switch", 1),
                ("Capture Volume", 0),
                ("Capture Switch", 0)
            ]
        );
        assert!(c.info(6).is_none());
        let volume = c.info(0).unwrap();
        assert_eq!(
            (volume.role, volume.kind, volume.count),
            (CTL_ROLE_VOLUME, CTL_TYPE_INTEGER, 1)
        );
        assert_eq!(volume.range, (0, 112, 1));
        let switch = c.info(1).unwrap();
        assert_eq!(
            (switch.role, switch.kind),
            (CTL_ROLE_MUTE, CTL_TYPE_BOOLEAN)
        );
        let bytes = volume.encode();
        assert_eq!(&bytes[24..43], b"PCM Playback Volume");
        assert_eq!(bytes[43], 0);
        assert_eq!(&bytes[72..84], &[0, 0, 0, 0, 112, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&volume_tlv()[8..12], &(-5000i32).to_le_bytes());
    }

    #[test]
    fn writes_are_range_checked_and_report_changes() {
        let c = controls();
        assert_eq!(c.read(0), Some(100));
        assert_eq!(c.read(1), Some(1));
        assert_eq!(c.write(0, 100), WriteResult::Unchanged);
        assert_eq!(c.write(0, 88), WriteResult::Changed);
        assert_eq!(c.read(0), Some(88));
        assert_eq!(c.read(1), Some(1), "the volume leaves the switch alone");
        assert_eq!(c.write(0, 113), WriteResult::Invalid);
        assert_eq!(c.write(0, -1), WriteResult::Invalid);
        assert_eq!(c.write(1, 2), WriteResult::Invalid);
        assert_eq!(c.write(1, 0), WriteResult::Changed);
        assert_eq!(c.read(0), Some(88), "the switch leaves the volume alone");
        assert_eq!(c.write(6, 0), WriteResult::Invalid);
        assert_eq!(c.read(6), None);
        assert_eq!(c.gain(0), Gain::Mute);
        assert_eq!(c.gain(1), Gain::Unity);
        assert_eq!(c.gain(99), Gain::Unity);
    }

    #[test]
    fn q16_rounds_half_to_even() {
        // q16 = 32768 is x / 2.
        assert_eq!(scale_q16(3, 32768), 2); // 1.5 -> 2
        assert_eq!(scale_q16(5, 32768), 2); // 2.5 -> 2
        assert_eq!(scale_q16(-3, 32768), -2); // -1.5 -> -2
        assert_eq!(scale_q16(-5, 32768), -2); // -2.5 -> -2
        assert_eq!(scale_q16(7, 32768), 4); // 3.5 -> 4
        assert_eq!(scale_q16(1000, 65536), 1000);
    }

    fn expected_int(x: i64, gain: Gain, min: i64, max: i64) -> i64 {
        let Gain::Scale { q16, .. } = gain else {
            panic!()
        };
        let exact = x as f64 * q16 as f64 / 65536.0;
        // Round half to even by hand, independently of scale_q16.
        let floor = exact.floor();
        let diff = exact - floor;
        let rounded = if diff > 0.5 || (diff == 0.5 && floor as i64 % 2 != 0) {
            floor + 1.0
        } else {
            floor
        };
        (rounded as i64).clamp(min, max)
    }

    #[test]
    fn gain_per_format_with_clipping() {
        let minus6 = gain_db(-12);
        let plus6 = gain_db(12);
        let Gain::Scale { q16, .. } = minus6 else {
            panic!()
        };
        assert_eq!(q16, (65536.0 * 10f64.powf(-6.0 / 20.0)).round() as i64);
        for gain in [minus6, plus6, Gain::new(VOLUME_MIN, true)] {
            // S16, including clipping at +6 dB.
            for x in [0i16, 1, -1, 100, -100, 20000, -20000, 32767, -32768] {
                let mut out = [0u8; 2];
                gain.apply(PcmFormat::S16, &x.to_le_bytes(), &mut out);
                let want = expected_int(i64::from(x), gain, -32768, 32767);
                assert_eq!(i64::from(i16::from_le_bytes(out)), want, "S16 {x} {gain:?}");
            }
            for x in [0i8, 1, -1, 100, -128, 127] {
                let mut out = [0u8; 1];
                gain.apply(PcmFormat::S8, &[x as u8], &mut out);
                assert_eq!(
                    i64::from(out[0] as i8),
                    expected_int(i64::from(x), gain, -128, 127)
                );
            }
            for x in [0u8, 0x80, 0xff, 0x10, 0xf0] {
                let mut out = [0u8; 1];
                gain.apply(PcmFormat::U8, &[x], &mut out);
                let want = expected_int(i64::from(x) - 128, gain, -128, 127) + 128;
                assert_eq!(i64::from(out[0]), want, "U8 {x}");
            }
            for x in [0u16, 0x8000, 0xffff, 0x1234] {
                let mut out = [0u8; 2];
                gain.apply(PcmFormat::U16, &x.to_le_bytes(), &mut out);
                let want = expected_int(i64::from(x) - 32768, gain, -32768, 32767) + 32768;
                assert_eq!(i64::from(u16::from_le_bytes(out)), want, "U16 {x}");
            }
            for x in [0i32, 1, -1, 5_000_000, -8_388_608, 8_388_607] {
                let (min, max) = (-(1i64 << 23), (1i64 << 23) - 1);
                let want = expected_int(i64::from(x), gain, min, max);
                let mut out3 = [0u8; 3];
                gain.apply(PcmFormat::S24_3, &x.to_le_bytes()[..3], &mut out3);
                assert_eq!(
                    i64::from(i32::from_le_bytes([0, out3[0], out3[1], out3[2]]) >> 8),
                    want
                );
                let mut out4 = [0u8; 4];
                gain.apply(PcmFormat::S24, &x.to_le_bytes(), &mut out4);
                assert_eq!(
                    i64::from(i32::from_le_bytes(out4)),
                    want,
                    "S24 {x}: sign-extended"
                );
            }
            for x in [0i32, 1, -1, 1 << 30, i32::MAX, i32::MIN] {
                let mut out = [0u8; 4];
                gain.apply(PcmFormat::S32, &x.to_le_bytes(), &mut out);
                let want = expected_int(i64::from(x), gain, i32::MIN.into(), i32::MAX.into());
                assert_eq!(i64::from(i32::from_le_bytes(out)), want, "S32 {x}");
            }
            let Gain::Scale { factor, .. } = gain else {
                panic!()
            };
            for x in [0.0f32, 0.25, -0.25, 0.9, -0.9, 1.0, -1.0] {
                let mut out = [0u8; 4];
                gain.apply(PcmFormat::Float, &x.to_le_bytes(), &mut out);
                assert_eq!(f32::from_le_bytes(out), (x * factor).clamp(-1.0, 1.0));
            }
        }
        // Clipping at +6 dB, exactly.
        let mut out = [0u8; 2];
        plus6.apply(PcmFormat::S16, &30000i16.to_le_bytes(), &mut out);
        assert_eq!(i16::from_le_bytes(out), 32767);
        plus6.apply(PcmFormat::S16, &(-30000i16).to_le_bytes(), &mut out);
        assert_eq!(i16::from_le_bytes(out), -32768);
        let mut out = [0u8; 4];
        plus6.apply(PcmFormat::Float, &0.8f32.to_le_bytes(), &mut out);
        assert_eq!(f32::from_le_bytes(out), 1.0);
    }

    #[test]
    fn unity_is_bit_exact_and_mute_is_silence() {
        let src: Vec<u8> = (0..=255u8).collect();
        for format in PcmFormat::ALL {
            let mut out = vec![0u8; 240];
            Gain::Unity
                .copy_into(format, &mut out, 0, 240, |at, dst: &mut [u8]| {
                    dst.copy_from_slice(&src[at..at + dst.len()]);
                    Ok::<(), ()>(())
                })
                .unwrap();
            assert_eq!(out, src[..240]);
            Gain::Mute
                .copy_into(format, &mut out, 0, 240, |_, _| Err(()))
                .unwrap();
            let mut silence = vec![0u8; 240];
            format.fill_silence(&mut silence);
            assert_eq!(out, silence, "{format:?}");
        }
        assert_eq!(Gain::new(VOLUME_UNITY, true), Gain::Unity);
        assert_eq!(Gain::new(VOLUME_UNITY, false), Gain::Mute);
    }

    #[test]
    fn captured_samples_cut_between_messages_are_scaled_whole() {
        for gain in [gain_db(-12), Gain::Mute, Gain::Unity] {
            for format in PcmFormat::ALL {
                let data: Vec<u8> = (0..7200u32).map(|i| (i * 13 % 253) as u8).collect();
                let mut whole = vec![0u8; data.len()];
                gain.apply(format, &data, &mut whole);
                for cuts in [[1usize, 3500, 5001], [3, 3073, 7000], [2, 4, 7199]] {
                    let mut out = vec![0u8; data.len()];
                    let mut at = 0;
                    for end in cuts.iter().copied().chain([data.len()]) {
                        let base = at;
                        gain.copy_from(format, &data, at, end, |off, bytes: &[u8]| {
                            out[base + off..base + off + bytes.len()].copy_from_slice(bytes);
                            Ok::<(), ()>(())
                        })
                        .unwrap();
                        at = end;
                    }
                    assert!(out == whole, "{gain:?} {format:?} {cuts:?}");
                }
            }
        }
    }

    #[test]
    fn samples_cut_between_messages_are_scaled_once() {
        let gain = gain_db(-12);
        for format in PcmFormat::ALL {
            // 4000 bytes (more than the scratch buffer) of a ramp, split at odd places.
            let src: Vec<u8> = (0..12000u32).map(|i| (i * 7 % 251) as u8).collect();
            let len = 12000 / 12 * 12;
            let mut whole = vec![0u8; len];
            gain.apply(format, &src[..len], &mut whole);
            for cuts in [[1usize, 5000, 7001], [3, 3073, 9000], [2, 4, 11999]] {
                let mut out = vec![0u8; len];
                let mut at = 0;
                for end in cuts.iter().copied().chain([len]) {
                    let n = end - at;
                    let base = at;
                    gain.copy_into(format, &mut out, at, n, |off, dst: &mut [u8]| {
                        dst.copy_from_slice(&src[base + off..base + off + dst.len()]);
                        Ok::<(), ()>(())
                    })
                    .unwrap();
                    at = end;
                }
                assert!(out == whole, "{format:?} {cuts:?}");
            }
        }
    }
}
