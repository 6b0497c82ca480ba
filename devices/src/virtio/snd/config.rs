//! The sound device's topology and backend choice, and its command-line syntax.
//!
//! `backend=alsa[,device=NAME]`, `backend=wav,path=FILE` or `backend=null`, optionally followed
//! by `capture=alsa[:DEVICE]|wav:FILE|null`, `streams=OUT:IN` (or `outputs=N`, `inputs=M`) and
//! `jacks=N`. Without `backend`, ALSA's `default` PCM is used. `device`, `path` and `capture`
//! values may contain commas (`device=hw:1,0`).
//!
//! The guest gets input streams only with a capture grant (`capture=`): the default topology is
//! one output stream and no input, so a guest never hears the host's microphone unless the user
//! said so. A grant without `streams`/`inputs` gives one input stream.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The most output (and, separately, input) streams a device may have.
pub const MAX_STREAMS_PER_DIRECTION: u32 = 8;
/// The most jacks a device may advertise.
pub const MAX_JACKS: u32 = 8;

const VALID_KEYS: &str = "backend, device, path, capture, streams, outputs, inputs, jacks";
const VALID_CAPTURES: &str = "alsa, alsa:DEVICE, wav:FILE, null";
const VALID_BACKENDS: &str = "alsa, wav, null";

/// Where the device's audio goes to and comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendConfig {
    /// An ALSA PCM opened by name (`default`, `pulse`, `hw:0,0`, `file:'/tmp/x.raw',raw`, ...).
    Alsa { device: String },
    /// A WAV file per output stream; input streams capture silence. Output stream 0 writes
    /// `path`; output stream N > 0 writes `path` with `-N` appended to the file stem.
    Wav { path: PathBuf },
    /// Discards output and captures silence, paced in real time.
    Null,
}

impl BackendConfig {
    /// The backend's name as the command line spells it.
    pub fn name(&self) -> &'static str {
        match self {
            BackendConfig::Alsa { .. } => "alsa",
            BackendConfig::Wav { .. } => "wav",
            BackendConfig::Null => "null",
        }
    }
}

/// Where input streams' PCM comes from: the grant `capture=` gives. Without one the device has no
/// input stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaptureConfig {
    /// An ALSA capture PCM by name: a real microphone, so Canto prints one line the first time
    /// the guest starts recording from it.
    Alsa { device: String },
    /// A WAV file's PCM, paced in real time, then silence after its end; the input streams
    /// offer only the file's format, rate and channel count.
    Wav { path: PathBuf },
    /// Silence, paced in real time.
    Null,
}

impl CaptureConfig {
    /// The source's name as `capture=` spells it.
    pub fn name(&self) -> &'static str {
        match self {
            CaptureConfig::Alsa { .. } => "alsa",
            CaptureConfig::Wav { .. } => "wav",
            CaptureConfig::Null => "null",
        }
    }

    /// Parses `alsa`, `alsa:DEVICE`, `wav:FILE` or `null`. A bare `alsa` records from
    /// `alsa_default` (the output's ALSA device, or `default`).
    fn parse(value: &str, alsa_default: &str) -> Result<CaptureConfig, ConfigError> {
        let bad = || ConfigError::BadCapture(value.to_string());
        match value.split_once(':') {
            None if value == "alsa" => Ok(CaptureConfig::Alsa {
                device: alsa_default.to_string(),
            }),
            None if value == "null" => Ok(CaptureConfig::Null),
            Some(("alsa", device)) if !device.is_empty() => Ok(CaptureConfig::Alsa {
                device: device.to_string(),
            }),
            Some(("wav", path)) if !path.is_empty() => Ok(CaptureConfig::Wav {
                path: PathBuf::from(path),
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for CaptureConfig {
    /// The `capture=` value, which [`CaptureConfig::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CaptureConfig::Alsa { device } => write!(f, "alsa:{device}"),
            CaptureConfig::Wav { path } => write!(f, "wav:{}", path.display()),
            CaptureConfig::Null => write!(f, "null"),
        }
    }
}

/// The sound device's configuration: its backend, its capture grant, and its stream and jack
/// topology.
///
/// Stream ids 0..outputs are output streams, outputs..outputs+inputs are input streams. Output
/// stream N and input stream N are the guest's PCM device N (`hw:0,N`); every stream has a
/// channel map for each of 1 to 8 channels. Input streams exist only with a `capture` source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SoundConfig {
    pub backend: BackendConfig,
    /// Where input streams record from; `None`: no input stream (the default).
    pub capture: Option<CaptureConfig>,
    pub outputs: u32,
    pub inputs: u32,
    pub jacks: u32,
}

impl Default for SoundConfig {
    /// ALSA's `default` PCM, one output stream, no input stream (no capture grant), no jacks.
    fn default() -> Self {
        SoundConfig {
            backend: BackendConfig::Alsa {
                device: "default".to_string(),
            },
            capture: None,
            outputs: 1,
            inputs: 0,
            jacks: 0,
        }
    }
}

impl SoundConfig {
    /// The same topology with another backend (the VMM falls back to `null` this way).
    pub fn with_backend(&self, backend: BackendConfig) -> SoundConfig {
        SoundConfig {
            backend,
            ..self.clone()
        }
    }

    /// The total number of PCM streams.
    pub fn streams(&self) -> u32 {
        self.outputs.saturating_add(self.inputs)
    }

    /// Checks the limits that the parser checks, for configurations built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_max("outputs", self.outputs, MAX_STREAMS_PER_DIRECTION)?;
        check_max("inputs", self.inputs, MAX_STREAMS_PER_DIRECTION)?;
        check_max("jacks", self.jacks, MAX_JACKS)?;
        if self.streams() == 0 {
            return Err(ConfigError::NoStreams);
        }
        match (&self.capture, self.inputs) {
            (None, 1..) => return Err(ConfigError::InputsNeedCapture(self.inputs)),
            (Some(CaptureConfig::Alsa { device }), _) if device.is_empty() => {
                return Err(ConfigError::BadCapture("alsa:".to_string()))
            }
            (Some(CaptureConfig::Alsa { device }), _) if device.contains('\0') => {
                return Err(ConfigError::NulByte)
            }
            (Some(CaptureConfig::Wav { path }), _) if path.as_os_str().is_empty() => {
                return Err(ConfigError::BadCapture("wav:".to_string()))
            }
            _ => {}
        }
        match &self.backend {
            BackendConfig::Alsa { device } if device.is_empty() => {
                Err(ConfigError::EmptyValue("device".to_string()))
            }
            BackendConfig::Alsa { device } if device.contains('\0') => Err(ConfigError::NulByte),
            BackendConfig::Wav { path } if path.as_os_str().is_empty() => {
                Err(ConfigError::EmptyValue("path".to_string()))
            }
            _ => Ok(()),
        }
    }
}

fn check_max(key: &'static str, value: u32, max: u32) -> Result<(), ConfigError> {
    if value > max {
        Err(ConfigError::TooMany { key, value, max })
    } else {
        Ok(())
    }
}

/// Why a sound option string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "empty sound option; expected backend=alsa[,device=NAME], backend=wav,path=FILE or \
         backend=null, optionally with streams=OUT:IN"
    )]
    Empty,
    #[error("`{0}` is not KEY=VALUE; valid keys: {VALID_KEYS}")]
    NotKeyValue(String),
    #[error("unknown key `{0}`; valid keys: {VALID_KEYS}")]
    UnknownKey(String),
    #[error("key `{0}` is given twice")]
    DuplicateKey(String),
    #[error("`{0}` has an empty value")]
    EmptyValue(String),
    #[error("unknown backend `{0}`; valid backends: {VALID_BACKENDS}")]
    UnknownBackend(String),
    #[error("`{key}` applies only to backend={needs}, not backend={backend}")]
    KeyNeedsBackend {
        key: &'static str,
        needs: &'static str,
        backend: &'static str,
    },
    #[error("backend=wav needs path=FILE")]
    MissingPath,
    #[error("{key}={value} is not a whole number")]
    BadNumber { key: &'static str, value: String },
    #[error("streams={0} is not OUT:IN (e.g. streams=1:1)")]
    BadStreams(String),
    #[error("streams=OUT:IN and outputs=/inputs= cannot be combined")]
    ConflictingStreamKeys,
    #[error("{key}={value} is too many; at most {max}")]
    TooMany {
        key: &'static str,
        value: u32,
        max: u32,
    },
    #[error("the sound device needs at least one stream")]
    NoStreams,
    #[error("the ALSA device name contains a NUL byte")]
    NulByte,
    #[error("capture={0} is not a capture source; valid: {VALID_CAPTURES}")]
    BadCapture(String),
    #[error(
        "{0} input stream(s) need a capture grant: add capture=alsa[:DEVICE] (the host's \
         microphone), capture=wav:FILE or capture=null (silence)"
    )]
    InputsNeedCapture(u32),
    #[error("capture= grants a source to input streams, but inputs=0")]
    CaptureNeedsInputs,
}

const KEYS: [&str; 8] = [
    "backend", "device", "path", "capture", "streams", "outputs", "inputs", "jacks",
];

/// Splits `KEY=VALUE,KEY=VALUE` into trimmed pairs. ALSA device names and paths may contain
/// commas (`hw:1,0`, `file:'/tmp/x.raw',raw`): a part that is not a known `KEY=VALUE` continues
/// the value of a preceding `device=`, `path=` or `capture=`.
fn split_options(s: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for part in s.split(',') {
        let known = part
            .split_once('=')
            .filter(|(key, _)| KEYS.contains(&key.trim()));
        match (known, pairs.last_mut()) {
            (Some((key, value)), _) => pairs.push((key.trim().to_string(), value.to_string())),
            (None, Some((key, value))) if ["device", "path", "capture"].contains(&key.as_str()) => {
                value.push(',');
                value.push_str(part);
            }
            (None, _) => {
                let part = part.trim();
                return Err(match part.split_once('=') {
                    Some((key, _)) => ConfigError::UnknownKey(key.trim().to_string()),
                    None => ConfigError::NotKeyValue(part.to_string()),
                });
            }
        }
    }
    Ok(pairs
        .into_iter()
        .map(|(key, value)| (key, value.trim().to_string()))
        .collect())
}

fn parse_count(key: &'static str, value: &str) -> Result<u32, ConfigError> {
    value.parse::<u32>().map_err(|_| ConfigError::BadNumber {
        key,
        value: value.to_string(),
    })
}

impl FromStr for SoundConfig {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(ConfigError::Empty);
        }
        let mut backend: Option<String> = None;
        let mut device: Option<String> = None;
        let mut path: Option<String> = None;
        let mut capture: Option<String> = None;
        let mut streams: Option<(u32, u32)> = None;
        let mut outputs: Option<u32> = None;
        let mut inputs: Option<u32> = None;
        let mut jacks: Option<u32> = None;
        let mut seen: Vec<&'static str> = Vec::new();

        for (key, value) in split_options(s)? {
            let (key, value) = (key.as_str(), value.as_str());
            if seen.contains(&key) {
                return Err(ConfigError::DuplicateKey(key.to_string()));
            }
            if value.is_empty() {
                return Err(ConfigError::EmptyValue(key.to_string()));
            }
            match key {
                "backend" => backend = Some(value.to_string()),
                "device" => device = Some(value.to_string()),
                "path" => path = Some(value.to_string()),
                "capture" => capture = Some(value.to_string()),
                "streams" => {
                    let bad = || ConfigError::BadStreams(value.to_string());
                    let (out, inp) = value.split_once(':').ok_or_else(bad)?;
                    let out = out.trim().parse::<u32>().map_err(|_| bad())?;
                    let inp = inp.trim().parse::<u32>().map_err(|_| bad())?;
                    streams = Some((out, inp));
                }
                "outputs" => outputs = Some(parse_count("outputs", value)?),
                "inputs" => inputs = Some(parse_count("inputs", value)?),
                "jacks" => jacks = Some(parse_count("jacks", value)?),
                _ => return Err(ConfigError::UnknownKey(key.to_string())),
            }
            if let Some(known) = KEYS.iter().find(|k| **k == key) {
                seen.push(known);
            }
        }

        let backend_name = backend.as_deref().unwrap_or("alsa");
        let backend = match backend_name {
            "alsa" => {
                if path.is_some() {
                    return Err(ConfigError::KeyNeedsBackend {
                        key: "path",
                        needs: "wav",
                        backend: "alsa",
                    });
                }
                BackendConfig::Alsa {
                    device: device.unwrap_or_else(|| "default".to_string()),
                }
            }
            "wav" | "null" => {
                let name = if backend_name == "wav" { "wav" } else { "null" };
                if device.is_some() {
                    return Err(ConfigError::KeyNeedsBackend {
                        key: "device",
                        needs: "alsa",
                        backend: name,
                    });
                }
                if name == "wav" {
                    BackendConfig::Wav {
                        path: PathBuf::from(path.ok_or(ConfigError::MissingPath)?),
                    }
                } else {
                    if path.is_some() {
                        return Err(ConfigError::KeyNeedsBackend {
                            key: "path",
                            needs: "wav",
                            backend: "null",
                        });
                    }
                    BackendConfig::Null
                }
            }
            other => return Err(ConfigError::UnknownBackend(other.to_string())),
        };

        let alsa_default = match &backend {
            BackendConfig::Alsa { device } => device.as_str(),
            _ => "default",
        };
        let capture = capture
            .map(|value| CaptureConfig::parse(&value, alsa_default))
            .transpose()?;
        let defaults = SoundConfig::default();
        // A grant without a count gives one input stream.
        let default_inputs = if capture.is_some() {
            1
        } else {
            defaults.inputs
        };
        let (outputs, inputs) = match (streams, outputs, inputs) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ConfigError::ConflictingStreamKeys)
            }
            (Some(pair), None, None) => pair,
            (None, out, inp) => (
                out.unwrap_or(defaults.outputs),
                inp.unwrap_or(default_inputs),
            ),
        };
        if capture.is_some() && inputs == 0 {
            return Err(ConfigError::CaptureNeedsInputs);
        }
        let config = SoundConfig {
            backend,
            capture,
            outputs,
            inputs,
            jacks: jacks.unwrap_or(0),
        };
        config.validate()?;
        Ok(config)
    }
}

impl fmt::Display for SoundConfig {
    /// The command-line form, which [`FromStr`] parses back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            BackendConfig::Alsa { device } => write!(f, "backend=alsa,device={device}")?,
            BackendConfig::Wav { path } => write!(f, "backend=wav,path={}", path.display())?,
            BackendConfig::Null => write!(f, "backend=null")?,
        }
        if let Some(capture) = &self.capture {
            write!(f, ",capture={capture}")?;
        }
        write!(f, ",streams={}:{}", self.outputs, self.inputs)?;
        if self.jacks > 0 {
            write!(f, ",jacks={}", self.jacks)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_backend() {
        let alsa: SoundConfig = "backend=alsa".parse().unwrap();
        assert_eq!(alsa, SoundConfig::default());
        let hw: SoundConfig = "backend=alsa,device=hw:1,0,streams=1:0".parse().unwrap();
        assert_eq!(
            hw.backend,
            BackendConfig::Alsa {
                device: "hw:1,0".into()
            }
        );
        assert_eq!((hw.outputs, hw.inputs), (1, 0));
        let file: SoundConfig = "device=file:'/tmp/x.raw',raw".parse().unwrap();
        assert_eq!(
            file.backend,
            BackendConfig::Alsa {
                device: "file:'/tmp/x.raw',raw".into()
            }
        );
        let named: SoundConfig = "backend=alsa,device=pulse".parse().unwrap();
        assert_eq!(
            named.backend,
            BackendConfig::Alsa {
                device: "pulse".into()
            }
        );
        let wav: SoundConfig = "backend=wav,path=/tmp/out.wav".parse().unwrap();
        assert_eq!(
            wav.backend,
            BackendConfig::Wav {
                path: "/tmp/out.wav".into()
            }
        );
        let null: SoundConfig = " backend = null , streams = 2:0 ".parse().unwrap();
        assert_eq!(null.backend, BackendConfig::Null);
        assert_eq!((null.outputs, null.inputs), (2, 0));
        let split: SoundConfig = "backend=null,capture=null,outputs=3,inputs=2,jacks=1"
            .parse()
            .unwrap();
        assert_eq!((split.outputs, split.inputs, split.jacks), (3, 2, 1));
        // No capture grant, no input stream.
        let only_out: SoundConfig = "backend=null,outputs=2".parse().unwrap();
        assert_eq!((only_out.outputs, only_out.inputs), (2, 0));
        let default_backend: SoundConfig = "streams=1:0".parse().unwrap();
        assert_eq!(default_backend.backend, SoundConfig::default().backend);
    }

    #[test]
    fn streams_up_to_8_8_and_bad_values_refused_in_one_line() {
        let full: SoundConfig = "backend=null,capture=null,streams=8:8".parse().unwrap();
        assert_eq!((full.outputs, full.inputs, full.streams()), (8, 8, 16));
        let outputs_only: SoundConfig = "backend=null,streams=8:0".parse().unwrap();
        assert_eq!(outputs_only.streams(), 8);
        for bad in [
            "9:0",
            "0:9",
            "8:9",
            "99:99",
            "4294967296:1",
            "0:0",
            "1",
            "1:",
            ":1",
            "1:1:1",
            "-1:0",
            "1.5:1",
            "a:b",
            "1;1",
            "0x2:1",
        ] {
            let text = format!("backend=null,streams={bad}");
            let message = text.parse::<SoundConfig>().unwrap_err().to_string();
            assert!(!message.contains('\n'), "{text}: {message}");
            assert!(
                message.contains(bad)
                    || message.contains("too many")
                    || message.contains("at least one stream"),
                "{text}: {message}"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "backend=alsa,device=default,capture=alsa:default,streams=1:1",
            "backend=wav,path=/tmp/a.wav,streams=2:0,jacks=2",
            "backend=null,capture=null,streams=0:3",
            "backend=wav,path=/tmp/a.wav,capture=wav:/tmp/in.wav,streams=1:1",
            "backend=null,capture=alsa:hw:1,0,streams=1:2",
        ] {
            let config: SoundConfig = text.parse().unwrap();
            assert_eq!(config.to_string(), text);
        }
    }

    #[test]
    fn errors_name_the_bad_key_or_value() {
        let cases: &[(&str, ConfigError)] = &[
            ("", ConfigError::Empty),
            ("backend", ConfigError::NotKeyValue("backend".into())),
            ("backend=jack", ConfigError::UnknownBackend("jack".into())),
            (
                "backend=null,volume=3",
                ConfigError::UnknownKey("volume".into()),
            ),
            (
                "backend=null,backend=wav",
                ConfigError::DuplicateKey("backend".into()),
            ),
            ("backend=wav", ConfigError::MissingPath),
            (
                "backend=alsa,device=",
                ConfigError::EmptyValue("device".into()),
            ),
            (
                "backend=null,device=x",
                ConfigError::KeyNeedsBackend {
                    key: "device",
                    needs: "alsa",
                    backend: "null",
                },
            ),
            (
                "backend=alsa,path=/x",
                ConfigError::KeyNeedsBackend {
                    key: "path",
                    needs: "wav",
                    backend: "alsa",
                },
            ),
            (
                "backend=null,streams=2",
                ConfigError::BadStreams("2".into()),
            ),
            (
                "backend=null,streams=a:1",
                ConfigError::BadStreams("a:1".into()),
            ),
            (
                "backend=null,streams=1:1,outputs=2",
                ConfigError::ConflictingStreamKeys,
            ),
            (
                "backend=null,outputs=-1",
                ConfigError::BadNumber {
                    key: "outputs",
                    value: "-1".into(),
                },
            ),
            (
                "backend=null,streams=9:0",
                ConfigError::TooMany {
                    key: "outputs",
                    value: 9,
                    max: MAX_STREAMS_PER_DIRECTION,
                },
            ),
            (
                "backend=null,jacks=99",
                ConfigError::TooMany {
                    key: "jacks",
                    value: 99,
                    max: MAX_JACKS,
                },
            ),
            ("backend=null,streams=0:0", ConfigError::NoStreams),
            (
                "backend=null,streams=1:1",
                ConfigError::InputsNeedCapture(1),
            ),
            ("backend=null,inputs=2", ConfigError::InputsNeedCapture(2)),
            (
                "backend=null,capture=null,streams=1:0",
                ConfigError::CaptureNeedsInputs,
            ),
            (
                "backend=null,capture=mic",
                ConfigError::BadCapture("mic".into()),
            ),
            (
                "backend=null,capture=wav:",
                ConfigError::BadCapture("wav:".into()),
            ),
            (
                "backend=null,capture=alsa:",
                ConfigError::BadCapture("alsa:".into()),
            ),
            (
                "backend=null,capture=pulse:x",
                ConfigError::BadCapture("pulse:x".into()),
            ),
            (
                "backend=null,capture=",
                ConfigError::EmptyValue("capture".into()),
            ),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<SoundConfig>().as_ref(), Err(want), "{text}");
        }
        let message = "backend=null,volume=3"
            .parse::<SoundConfig>()
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("volume") && message.contains("streams"),
            "{message}"
        );
        let message = "backend=jack"
            .parse::<SoundConfig>()
            .unwrap_err()
            .to_string();
        assert!(message.contains("alsa, wav, null"), "{message}");
    }

    #[test]
    fn the_default_topology_has_no_input_stream() {
        let default = SoundConfig::default();
        assert_eq!((default.outputs, default.inputs), (1, 0));
        assert_eq!(default.capture, None);
        assert_eq!(default.validate(), Ok(()));
        for text in ["backend=alsa", "backend=alsa,device=pulse", "backend=null"] {
            let config: SoundConfig = text.parse().unwrap();
            assert_eq!((config.inputs, config.capture), (0, None), "{text}");
        }
    }

    #[test]
    fn capture_grants_parse() {
        let wav: SoundConfig = "backend=null,capture=wav:/tmp/in,put.wav".parse().unwrap();
        assert_eq!(
            wav.capture,
            Some(CaptureConfig::Wav {
                path: "/tmp/in,put.wav".into()
            })
        );
        // A grant without a count gives one input stream.
        assert_eq!((wav.outputs, wav.inputs), (1, 1));
        let hw: SoundConfig = "backend=null,capture=alsa:hw:1,0,streams=1:2"
            .parse()
            .unwrap();
        assert_eq!(
            hw.capture,
            Some(CaptureConfig::Alsa {
                device: "hw:1,0".into()
            })
        );
        assert_eq!(hw.inputs, 2);
        // A bare `alsa` records from the output's ALSA device, else from `default`.
        let same: SoundConfig = "backend=alsa,device=pulse,capture=alsa".parse().unwrap();
        assert_eq!(
            same.capture,
            Some(CaptureConfig::Alsa {
                device: "pulse".into()
            })
        );
        let default: SoundConfig = "backend=wav,path=/tmp/o.wav,capture=alsa".parse().unwrap();
        assert_eq!(
            default.capture,
            Some(CaptureConfig::Alsa {
                device: "default".into()
            })
        );
        let null: SoundConfig = "backend=null,capture=null,inputs=3".parse().unwrap();
        assert_eq!((null.capture, null.inputs), (Some(CaptureConfig::Null), 3));
    }

    #[test]
    fn capture_errors_are_one_line_naming_the_fix() {
        for text in [
            "backend=null,capture=mic",
            "backend=null,streams=1:1",
            "backend=null,capture=null,streams=1:0",
        ] {
            let message = text.parse::<SoundConfig>().unwrap_err().to_string();
            assert!(!message.contains('\n'), "{message}");
            assert!(message.contains("capture"), "{text}: {message}");
        }
        let message = "backend=null,streams=1:1"
            .parse::<SoundConfig>()
            .unwrap_err()
            .to_string();
        assert!(message.contains("capture=wav:FILE"), "{message}");
    }
}
