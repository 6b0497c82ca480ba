//! The VM's configuration: what to boot and which devices the guest gets.
//!
//! The command line ([`crate::cli`]) and a configuration file ([`VmConfig::from_file`], JSON or
//! TOML, docs/config.md) build a [`VmConfig`]; an API socket (docs/api.md) will build the same
//! struct, which is why it is serde-(de)serializable and refuses fields it does not know. Everything that can be checked without KVM is checked by
//! [`VmConfig::validate`], so every front end gives the same one-line errors.

use std::path::{Path, PathBuf};

use canto_devices::virtio::snd::{BackendConfig, CaptureConfig, SoundConfig};
use serde::{Deserialize, Deserializer, Serialize};

/// Largest vCPU count Canto accepts (what the MP table can describe, and more than a microVM needs).
pub const MAX_VCPUS: u8 = canto_arch::mptable::MAX_CPUS;

/// Guest RAM when the configuration does not say.
pub const DEFAULT_MEMORY: u64 = 512 << 20;

/// One virtual machine: its kernel, CPUs, memory, console and devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    pub kernel: PathBuf,
    /// Initramfs to hand the kernel.
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// The user's kernel command line (Canto adds its platform's arguments, see [`crate::cmdline`]).
    #[serde(default)]
    pub cmdline: String,
    /// Number of vCPUs, 1..=[`MAX_VCPUS`].
    #[serde(default = "default_cpus")]
    pub cpus: u8,
    /// Guest RAM in bytes; a file may also give a size string such as "512M" or "2G".
    #[serde(default = "default_memory", deserialize_with = "bytes_or_size")]
    pub memory: u64,
    /// Where the guest's serial console goes.
    #[serde(default)]
    pub serial: SerialConfig,
    /// The guest's virtio devices.
    #[serde(default)]
    pub devices: DevicesConfig,
    /// Confinement: run the VMM in a jail (namespaces, pivot_root, a uid; docs/security.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jail: Option<crate::jail::JailConfig>,
    /// Confinement: Landlock lets the VMM open only the files the VM was given.
    #[serde(default)]
    pub landlock: bool,
    /// The seccomp filters on Canto's own threads ([`crate::seccomp`]).
    #[serde(default)]
    pub seccomp: SeccompMode,
}

/// What a syscall outside a thread's seccomp filter does (`--seccomp on|log|off`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompMode {
    /// Ends Canto with one line naming the syscall and the thread (the default).
    #[default]
    On,
    /// Lets it through; the kernel logs it (SECCOMP_RET_LOG), for writing rules.
    Log,
    /// No filters.
    Off,
}

fn default_cpus() -> u8 {
    1
}

fn default_memory() -> u64 {
    DEFAULT_MEMORY
}

/// [`bytes_or_size`] for an optional field.
pub(crate) fn opt_bytes_or_size<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    bytes_or_size(deserializer).map(Some)
}

/// A byte count as a number, or as a size string with a K/M/G/T suffix ([`crate::cli::parse_size`]).
fn bytes_or_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct Size;
    impl serde::de::Visitor<'_> for Size {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number of bytes or a size such as \"512M\"")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("a size cannot be negative ({v})")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            crate::cli::parse_size(v).map_err(E::custom)
        }
    }
    deserializer.deserialize_any(Size)
}

/// The formats a configuration file can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    Json,
    Toml,
}

impl FileFormat {
    /// By the file's extension (`.json`, `.toml`); otherwise JSON when the text starts with `{`.
    pub fn of(path: &Path, text: &str) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Self::Json,
            Some(e) if e.eq_ignore_ascii_case("toml") => Self::Toml,
            _ if text.trim_start().starts_with('{') => Self::Json,
            _ => Self::Toml,
        }
    }
}

/// `message` prefixed with the key it is about (`devices.sound: ...`), unless that is the
/// document itself.
fn at_key(path: &str, message: String) -> String {
    if path.is_empty() || path == "." {
        message
    } else {
        format!("{path}: {message}")
    }
}

/// Line and column (from 1) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

impl VmConfig {
    /// A VM booting `kernel` with every other setting at its default.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel: kernel.into(),
            initramfs: None,
            cmdline: String::new(),
            cpus: default_cpus(),
            memory: default_memory(),
            serial: SerialConfig::default(),
            devices: DevicesConfig::default(),
            jail: None,
            landlock: false,
            seccomp: SeccompMode::default(),
        }
    }

    /// Reads a configuration file, JSON or TOML ([`FileFormat::of`]); every error is one line
    /// naming the file (an unknown key by its name, a wrong type by its field and place).
    /// Relative paths in it are relative to Canto's working directory, as on the command line.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let name = path.display();
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file '{name}': {e}"))?;
        Self::from_text(&text, FileFormat::of(path, &text))
            .map_err(|e| format!("config file '{name}': {e}"))
    }

    /// Parses a configuration document and [validates](Self::validate) it.
    pub fn from_text(text: &str, format: FileFormat) -> Result<Self, String> {
        let config: Self = match format {
            FileFormat::Json => {
                let mut de = serde_json::Deserializer::from_str(text);
                let config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
                    let (path, e) = (e.path().to_string(), e.into_inner());
                    if e.is_syntax() || e.is_eof() {
                        format!("not valid JSON: {e}")
                    } else {
                        at_key(&path, e.to_string())
                    }
                })?;
                // Text after the document is a syntax error too.
                de.end().map_err(|e| format!("not valid JSON: {e}"))?;
                config
            }
            FileFormat::Toml => {
                // toml's Display draws the line with a caret over several lines; one line here.
                let one_line = |e: toml::de::Error| {
                    let message = e.message().trim().replace('\n', " ");
                    match e.span() {
                        Some(span) => {
                            let (line, column) = line_column(text, span.start);
                            format!("{message} at line {line} column {column}")
                        }
                        None => message,
                    }
                };
                // Syntax first, so that a file that is not TOML at all says so.
                let de = toml::de::Deserializer::parse(text)
                    .map_err(|e| format!("not valid TOML: {}", one_line(e)))?;
                serde_path_to_error::deserialize(de).map_err(|e| {
                    let path = e.path().to_string();
                    at_key(&path, one_line(e.into_inner()))
                })?
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// The checks that need no KVM and no files (the command line makes them while parsing; a
    /// configuration built another way gets them here).
    pub fn validate(&self) -> Result<(), String> {
        check_cpus(u32::from(self.cpus))?;
        if let SerialConfig::File { path } = &self.serial {
            if path.as_os_str().is_empty() {
                return Err(SERIAL_FILE_NEEDS_PATH.into());
            }
        }
        if let SoundSetting::Device(sound) = &self.devices.sound {
            sound
                .to_sound_config()
                .validate()
                .map_err(|e| format!("sound: {e}"))?;
        }
        for disk in &self.devices.disks {
            disk.validate()?;
        }
        if let Some(vsock) = &self.devices.vsock {
            vsock.validate()?;
        }
        if let Some(jail) = &self.jail {
            jail.validate()?;
        }
        Ok(())
    }
}

/// Why a serial file without a path is refused (shared with the command line's parser).
pub(crate) const SERIAL_FILE_NEEDS_PATH: &str =
    "file= needs a path, e.g. --serial file=/tmp/console.log";

/// Checks a vCPU count, with the error the user sees.
pub fn check_cpus(n: u32) -> Result<u8, String> {
    if n == 0 {
        return Err("a VM needs at least 1 vCPU".into());
    }
    if n > u32::from(MAX_VCPUS) {
        return Err(format!("at most {MAX_VCPUS} vCPUs are supported, got {n}"));
    }
    Ok(n as u8)
}

/// Where guest serial output goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SerialConfig {
    /// Canto's stdout; stdin (a terminal, put in raw mode) is the guest's input.
    #[default]
    Stdio,
    /// Discarded.
    Null,
    /// A file, created or truncated.
    File { path: PathBuf },
}

/// The guest's virtio devices. Each is built by its entry in the VMM's device list
/// ([`crate::devices`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesConfig {
    /// A virtio-rng entropy device.
    #[serde(default = "yes")]
    pub rng: bool,
    /// The virtio-snd device.
    #[serde(default)]
    pub sound: SoundSetting,
    /// A virtio-blk device for each, in this order (the guest's vda, vdb, ...).
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// A virtio-vsock device bridged to host Unix sockets (none by default).
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
}

/// One virtio-blk disk (`--disk path=FILE[,readonly=on][,id=NAME]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The image file (or block device); its size must be a multiple of 512 bytes.
    pub path: PathBuf,
    /// The guest may not write it.
    #[serde(default)]
    pub readonly: bool,
    /// The serial the guest sees (at most 20 bytes).
    #[serde(default)]
    pub id: Option<String>,
}

impl DiskConfig {
    /// The block device's own configuration type.
    pub fn to_block_config(&self) -> canto_devices::virtio::block::DiskConfig {
        canto_devices::virtio::block::DiskConfig {
            path: self.path.clone(),
            readonly: self.readonly,
            id: self.id.clone(),
        }
    }

    /// The checks that need no file.
    pub fn validate(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Err(DISK_NEEDS_PATH.into());
        }
        if let Some(id) = &self.id {
            if id.len() > canto_devices::virtio::block::disk::ID_BYTES {
                return Err(format!("disk id '{id}' is longer than 20 bytes"));
            }
        }
        Ok(())
    }
}

/// Why a disk without a path is refused (shared with the command line's parser).
pub(crate) const DISK_NEEDS_PATH: &str =
    "--disk needs path=FILE, e.g. --disk path=/tmp/disk.img,readonly=on";

fn yes() -> bool {
    true
}

impl Default for DevicesConfig {
    fn default() -> Self {
        Self {
            rng: true,
            sound: SoundSetting::default(),
            disks: Vec::new(),
            vsock: None,
        }
    }
}

/// A vsock device: the guest's CID and the host Unix socket of Firecracker's hybrid protocol
/// (host clients connect to `socket`; guest connections to host port P go to `socket`_P).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub cid: u64,
    pub socket: PathBuf,
}

impl VsockConfig {
    /// The checks that need no files: a usable CID and a socket path.
    pub fn validate(&self) -> Result<(), String> {
        let min = canto_devices::virtio::vsock::MIN_GUEST_CID;
        if self.cid < min || self.cid > u64::from(u32::MAX) {
            return Err(format!(
                "vsock: cid {} is not usable; use a cid from {min} to {}",
                self.cid,
                u32::MAX
            ));
        }
        if self.socket.as_os_str().is_empty() {
            return Err("vsock: socket= needs a path".into());
        }
        Ok(())
    }
}

/// Whether the guest gets a sound device, and which.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SoundSetting {
    /// ALSA `default`, or the null backend (with one line on stderr) when it cannot be opened.
    #[default]
    Auto,
    /// No sound device.
    Off,
    /// This device, as configured (an error if its backend cannot be set up).
    Device(SoundDeviceConfig),
}

/// A sound device: its backend and its stream and jack topology (see
/// `canto_devices::virtio::snd::SoundConfig`, which this converts to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SoundDeviceConfig {
    pub backend: SoundBackend,
    /// Where input streams record from: the capture grant. Without it the guest has no input
    /// stream (the host's microphone is never used unless granted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<SoundCapture>,
    /// Output streams (ids 0..outputs).
    #[serde(default = "one")]
    pub outputs: u32,
    /// Input streams (ids outputs..outputs+inputs); by default 1 with a capture grant, 0
    /// without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<u32>,
    #[serde(default)]
    pub jacks: u32,
}

fn one() -> u32 {
    1
}

/// Where the sound device's audio goes to and comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SoundBackend {
    /// An ALSA PCM opened by name (`default`, `pulse`, `hw:0,0`, ...).
    Alsa { device: String },
    /// A WAV file per output stream.
    Wav { path: PathBuf },
    /// Discards output, captures silence, paced in real time.
    Null,
}

/// Where input streams record from (`capture=` on the command line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SoundCapture {
    /// An ALSA capture PCM by name: the host's microphone.
    Alsa { device: String },
    /// A WAV file's PCM, then silence.
    Wav { path: PathBuf },
    /// Silence.
    Null,
}

impl SoundDeviceConfig {
    /// The sound device's own configuration type.
    pub fn to_sound_config(&self) -> SoundConfig {
        let capture = self.capture.as_ref().map(|capture| match capture {
            SoundCapture::Alsa { device } => CaptureConfig::Alsa {
                device: device.clone(),
            },
            SoundCapture::Wav { path } => CaptureConfig::Wav { path: path.clone() },
            SoundCapture::Null => CaptureConfig::Null,
        });
        SoundConfig {
            backend: match &self.backend {
                SoundBackend::Alsa { device } => BackendConfig::Alsa {
                    device: device.clone(),
                },
                SoundBackend::Wav { path } => BackendConfig::Wav { path: path.clone() },
                SoundBackend::Null => BackendConfig::Null,
            },
            inputs: self.inputs.unwrap_or(if capture.is_some() { 1 } else { 0 }),
            capture,
            outputs: self.outputs,
            jacks: self.jacks,
        }
    }
}

impl From<&SoundConfig> for SoundDeviceConfig {
    fn from(config: &SoundConfig) -> Self {
        Self {
            backend: match &config.backend {
                BackendConfig::Alsa { device } => SoundBackend::Alsa {
                    device: device.clone(),
                },
                BackendConfig::Wav { path } => SoundBackend::Wav { path: path.clone() },
                BackendConfig::Null => SoundBackend::Null,
            },
            capture: config.capture.as_ref().map(|capture| match capture {
                CaptureConfig::Alsa { device } => SoundCapture::Alsa {
                    device: device.clone(),
                },
                CaptureConfig::Wav { path } => SoundCapture::Wav { path: path.clone() },
                CaptureConfig::Null => SoundCapture::Null,
            }),
            outputs: config.outputs,
            inputs: Some(config.inputs),
            jacks: config.jacks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_document_takes_the_defaults() {
        let config: VmConfig = serde_json::from_str(r#"{"kernel": "/k"}"#).unwrap();
        assert_eq!(config, VmConfig::new("/k"));
        assert_eq!(config.cpus, 1);
        assert_eq!(config.memory, 512 << 20);
        assert_eq!(config.serial, SerialConfig::Stdio);
        assert!(config.devices.rng);
        assert_eq!(config.devices.sound, SoundSetting::Auto);
    }

    #[test]
    fn round_trips_through_serde() {
        let mut config = VmConfig::new("/boot/vmlinux");
        config.initramfs = Some("/boot/initrd".into());
        config.cmdline = "quiet".into();
        config.cpus = 2;
        config.memory = 1 << 30;
        config.serial = SerialConfig::File {
            path: "/tmp/console".into(),
        };
        config.devices = DevicesConfig {
            rng: false,
            sound: SoundSetting::Device(SoundDeviceConfig {
                backend: SoundBackend::Wav {
                    path: "/tmp/o.wav".into(),
                },
                capture: None,
                outputs: 2,
                inputs: Some(0),
                jacks: 1,
            }),
            disks: vec![DiskConfig {
                path: "/tmp/disk.img".into(),
                readonly: true,
                id: Some("root".into()),
            }],
            vsock: Some(VsockConfig {
                cid: 3,
                socket: "/tmp/v.sock".into(),
            }),
        };
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<VmConfig>(&text).unwrap(), config);
        let off = r#"{"kernel": "/k", "devices": {"sound": "off"}}"#;
        let off: VmConfig = serde_json::from_str(off).unwrap();
        assert_eq!(off.devices.sound, SoundSetting::Off);
    }

    #[test]
    fn unknown_fields_are_refused() {
        for doc in [
            r#"{"kernel": "/k", "vcpus": 2}"#,
            r#"{"kernel": "/k", "devices": {"rgn": true}}"#,
            r#"{"kernel": "/k", "serial": {"file": {"path": "/x", "mode": 1}}}"#,
            r#"{"kernel": "/k", "devices": {"sound": {"device": {"backend": "null", "streams": 2}}}}"#,
        ] {
            let err = serde_json::from_str::<VmConfig>(doc)
                .unwrap_err()
                .to_string();
            assert!(err.contains("unknown field"), "{doc}: {err}");
        }
    }

    #[test]
    fn validate_gives_the_command_lines_errors() {
        let mut config = VmConfig::new("/k");
        assert_eq!(config.validate(), Ok(()));
        config.cpus = 0;
        assert!(config.validate().unwrap_err().contains("at least 1 vCPU"));
        config.cpus = MAX_VCPUS + 1;
        assert!(config.validate().unwrap_err().contains("at most"));
        config.cpus = 1;
        config.serial = SerialConfig::File { path: "".into() };
        assert!(config.validate().unwrap_err().contains("needs a path"));
        config.serial = SerialConfig::Null;
        config.devices.sound = SoundSetting::Device(SoundDeviceConfig {
            backend: SoundBackend::Null,
            capture: None,
            outputs: 0,
            inputs: Some(0),
            jacks: 0,
        });
        assert!(config
            .validate()
            .unwrap_err()
            .contains("at least one stream"));
    }

    #[test]
    fn vsock_settings_are_checked() {
        let mut config = VmConfig::new("/k");
        for cid in [0, 1, 2, 1 << 32] {
            config.devices.vsock = Some(VsockConfig {
                cid,
                socket: "/tmp/v.sock".into(),
            });
            let e = config.validate().unwrap_err();
            assert!(e.contains("cid") && !e.contains('\n'), "{e}");
        }
        config.devices.vsock = Some(VsockConfig {
            cid: 3,
            socket: "".into(),
        });
        assert!(config.validate().unwrap_err().contains("needs a path"));
        config.devices.vsock.as_mut().unwrap().socket = "/tmp/v.sock".into();
        assert_eq!(config.validate(), Ok(()));
        let doc = r#"{"kernel": "/k", "devices": {"vsock": {"cid": 7, "socket": "/s"}}}"#;
        let parsed: VmConfig = serde_json::from_str(doc).unwrap();
        assert_eq!(parsed.devices.vsock.unwrap().cid, 7);
    }

    #[test]
    fn toml_and_json_give_the_same_config() {
        let toml = r#"
            kernel = "/boot/vmlinux"
            initramfs = "/boot/initramfs.cpio"
            cmdline = "quiet"
            cpus = 2
            memory = "1G"
            serial = { file = { path = "/tmp/console" } }

            [devices]
            rng = false

            [devices.sound.device]
            backend = { wav = { path = "/tmp/o.wav" } }
            outputs = 2
            inputs = 0
        "#;
        let json = r#"{
            "kernel": "/boot/vmlinux",
            "initramfs": "/boot/initramfs.cpio",
            "cmdline": "quiet",
            "cpus": 2,
            "memory": 1073741824,
            "serial": {"file": {"path": "/tmp/console"}},
            "devices": {
                "rng": false,
                "sound": {"device": {"backend": {"wav": {"path": "/tmp/o.wav"}}, "outputs": 2, "inputs": 0}}
            }
        }"#;
        let from_toml = VmConfig::from_text(toml, FileFormat::Toml).unwrap();
        let from_json = VmConfig::from_text(json, FileFormat::Json).unwrap();
        assert_eq!(from_toml, from_json);
        assert_eq!(from_toml.memory, 1 << 30);
        assert_eq!(from_toml.cpus, 2);
        assert!(!from_toml.devices.rng);
        let minimal = VmConfig::from_text("kernel = \"/k\"", FileFormat::Toml).unwrap();
        assert_eq!(minimal, VmConfig::new("/k"));
    }

    #[test]
    fn memory_takes_bytes_or_a_size() {
        let memory = |doc: &str| VmConfig::from_text(doc, FileFormat::Json).map(|c| c.memory);
        assert_eq!(
            memory(r#"{"kernel": "/k", "memory": "512M"}"#),
            Ok(512 << 20)
        );
        assert_eq!(memory(r#"{"kernel": "/k", "memory": "2GiB"}"#), Ok(2 << 30));
        assert_eq!(memory(r#"{"kernel": "/k", "memory": 4096}"#), Ok(4096));
        assert!(memory(r#"{"kernel": "/k", "memory": "12Q"}"#)
            .unwrap_err()
            .contains("unknown size suffix"));
        assert!(memory(r#"{"kernel": "/k", "memory": -1}"#)
            .unwrap_err()
            .contains("negative"));
        assert!(memory(r#"{"kernel": "/k", "memory": true}"#)
            .unwrap_err()
            .contains("a number of bytes or a size"));
    }

    #[test]
    fn file_errors_are_one_line_naming_the_problem() {
        let err = |doc: &str, format| {
            let e = VmConfig::from_text(doc, format).unwrap_err();
            assert!(!e.contains('\n'), "not one line: {e}");
            e
        };
        let e = err("kernel = \"/k\"\nvcpus = 2\n", FileFormat::Toml);
        assert!(
            e.contains("unknown field `vcpus`") && e.contains("line 2"),
            "{e}"
        );
        let e = err(
            r#"{"kernel": "/k", "devices": {"rgn": true}}"#,
            FileFormat::Json,
        );
        assert!(e.contains("unknown field `rgn`"), "{e}");
        let e = err("[devices]\nrgn = true\n", FileFormat::Toml);
        assert!(e.contains("unknown field `rgn`"), "{e}");
        let e = err("kernel = \"/k\"\ncpus = \"two\"\n", FileFormat::Toml);
        assert!(
            e.starts_with("cpus: invalid type") && e.contains("line 2"),
            "{e}"
        );
        let e = err(r#"{"kernel": "/k", "cpus": "two"}"#, FileFormat::Json);
        assert!(e.starts_with("cpus: invalid type"), "{e}");
        let e = err(
            "kernel = \"/k\"\n[devices.sound.device]\nbackend = \"jack\"\n",
            FileFormat::Toml,
        );
        assert!(
            e.starts_with("devices.sound.device.backend: unknown variant `jack`"),
            "{e}"
        );
        assert!(err(r#"{"kernel": "/k"} x"#, FileFormat::Json).starts_with("not valid JSON"));
        assert!(err("this is = = not", FileFormat::Toml).starts_with("not valid TOML"));
        assert!(err("{ nope", FileFormat::Json).starts_with("not valid JSON"));
        assert!(err("", FileFormat::Json).starts_with("not valid JSON"));
        assert!(err("cpus = 2", FileFormat::Toml).contains("missing field `kernel`"));
        assert!(err("kernel = \"/k\"\ncpus = 0", FileFormat::Toml).contains("at least 1 vCPU"));
    }

    #[test]
    fn the_format_comes_from_the_extension_or_the_text() {
        assert_eq!(FileFormat::of(Path::new("vm.json"), ""), FileFormat::Json);
        assert_eq!(FileFormat::of(Path::new("vm.TOML"), "{"), FileFormat::Toml);
        assert_eq!(
            FileFormat::of(Path::new("vm.conf"), " {\"kernel\": 1}"),
            FileFormat::Json
        );
        assert_eq!(
            FileFormat::of(Path::new("vm"), "kernel = 1"),
            FileFormat::Toml
        );
    }

    #[test]
    fn a_missing_file_is_one_line() {
        let e = VmConfig::from_file(Path::new("/nonexistent/vm.toml")).unwrap_err();
        assert!(
            e.starts_with("cannot read the config file '/nonexistent/vm.toml'"),
            "{e}"
        );
    }

    #[test]
    fn line_and_column() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\n", 1), (1, 1));
        assert_eq!(line_column("x", 99), (1, 2));
    }

    #[test]
    fn sound_configs_convert_both_ways() {
        for spec in [
            "backend=alsa,device=hw:1,0",
            "backend=wav,path=/tmp/x.wav,capture=null,streams=2:1,jacks=2",
            "backend=null,capture=wav:/tmp/in.wav,streams=0:1",
            "backend=alsa,device=pulse,capture=alsa",
            "backend=alsa,capture=alsa:hw:1,0,streams=1:2",
        ] {
            let sound: SoundConfig = spec.parse().unwrap();
            assert_eq!(SoundDeviceConfig::from(&sound).to_sound_config(), sound);
        }
    }

    #[test]
    fn a_file_grants_capture_like_the_command_line() {
        let doc = |sound: &str| {
            let text = format!("kernel = \"/k\"\n[devices.sound.device]\n{sound}\n");
            VmConfig::from_text(&text, FileFormat::Toml).map(|c| match c.devices.sound {
                SoundSetting::Device(d) => d.to_sound_config(),
                other => panic!("{other:?}"),
            })
        };
        // No grant, no input stream.
        let none = doc("backend = \"null\"").unwrap();
        assert_eq!((none.inputs, none.capture), (0, None));
        // A grant gives one input stream unless `inputs` says otherwise.
        let wav =
            doc("backend = \"null\"\ncapture = { wav = { path = \"/tmp/in.wav\" } }").unwrap();
        assert_eq!(wav, "backend=null,capture=wav:/tmp/in.wav".parse().unwrap());
        assert_eq!(wav.inputs, 1);
        let alsa =
            doc("backend = \"null\"\ncapture = { alsa = { device = \"hw:1,0\" } }\ninputs = 2")
                .unwrap();
        assert_eq!(
            alsa,
            "backend=null,capture=alsa:hw:1,0,inputs=2".parse().unwrap()
        );
        // Input streams without a grant are refused, with the fix in the message.
        let e = doc("backend = \"null\"\ninputs = 1").unwrap_err();
        assert!(e.contains("capture grant") && !e.contains('\n'), "{e}");
        let e = doc("backend = \"null\"\ncapture = \"mic\"").unwrap_err();
        assert!(e.contains("devices.sound.device.capture"), "{e}");
        // The JSON form says the same.
        let json = r#"{"kernel": "/k", "devices": {"sound": {"device": {"backend": "null", "capture": "null"}}}}"#;
        let config = VmConfig::from_text(json, FileFormat::Json).unwrap();
        let SoundSetting::Device(sound) = config.devices.sound else {
            panic!("{config:?}");
        };
        assert_eq!(sound.to_sound_config().capture, Some(CaptureConfig::Null));
    }
}
