//! The command line a user types: clap parses it into a [`Cli`], which becomes the VM's
//! [`VmConfig`]. Each user error is one clear line, before KVM is touched.

use std::path::PathBuf;
use std::str::FromStr;

use canto_devices::virtio::snd::SoundConfig;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};

use crate::config::{
    check_cpus, DevicesConfig, DiskConfig, SeccompMode, SerialConfig, SoundDeviceConfig,
    SoundSetting, VmConfig, VsockConfig, DISK_NEEDS_PATH, SERIAL_FILE_NEEDS_PATH,
};

/// `canto --kernel PATH [--initramfs PATH] [--cmdline STR] ...` or `canto --config FILE [...]`
#[derive(Debug, Parser)]
#[command(
    name = "canto",
    version,
    about = "A small, fast KVM virtual machine monitor whose guests have sound",
    after_help = crate::console::ESCAPE_HELP
)]
pub struct Cli {
    /// The whole VM from a file, JSON or TOML (docs/config.md); options given on the command
    /// line override what it says.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Guest kernel: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    #[arg(long, value_name = "PATH", required_unless_present = "config")]
    pub kernel: Option<PathBuf>,
    /// Initramfs to hand the kernel (cpio, optionally compressed; concatenated archives work).
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line. Canto adds the arguments its platform needs (console, reboot, and
    /// CPU-feature masks on kvm_pvm); a key given here wins over Canto's.
    #[arg(long, value_name = "STR", default_value = "")]
    pub cmdline: String,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value = "1", value_parser = parse_cpus)]
    pub cpus: u8,
    /// Guest RAM, e.g. 256M, 1G, 1073741824 (bytes).
    #[arg(long, value_name = "SIZE", default_value = "512M", value_parser = parse_size)]
    pub memory: u64,
    /// Where the guest's serial console goes: stdio, null or file=PATH.
    #[arg(long, value_name = "MODE", default_value = "stdio")]
    pub serial: SerialConfig,
    /// The sound device: backend=alsa[,device=NAME] | backend=wav,path=FILE | backend=null,
    /// with optional capture=alsa[:DEVICE]|wav:FILE|null and streams=OUT:IN (up to 8:8; output N
    /// and input N are the guest's hw:0,N). The guest gets input streams only with capture=, the
    /// grant to record (from the host's microphone with alsa). Default: ALSA `default`, output
    /// only, or null (with a note) when it cannot be opened.
    #[arg(long, value_name = "SPEC", conflicts_with = "no_sound")]
    pub sound: Option<SoundConfig>,
    /// No sound device.
    #[arg(long)]
    pub no_sound: bool,
    /// No virtio-rng entropy device.
    #[arg(long)]
    pub no_rng: bool,
    /// A virtio-blk disk: path=FILE[,readonly=on][,id=NAME] (the id is the serial the guest
    /// sees, at most 20 bytes). Repeatable: the guest's vda, vdb, ... in this order.
    #[arg(long, value_name = "SPEC")]
    pub disk: Vec<DiskConfig>,
    /// A virtio-vsock device for a guest with CID N (3 or more), speaking Firecracker's hybrid
    /// protocol on the Unix socket PATH: host programs connect to PATH and send
    /// `CONNECT <port>\n`; guest connections to host port P reach the socket PATH_P.
    #[arg(long, value_name = "cid=N,socket=PATH", value_parser = parse_vsock)]
    pub vsock: Option<VsockConfig>,
    /// Confinement: run in a jail rooted at DIR (started as root: new mount, pid, ipc and
    /// network namespaces, the VM's files bind-mounted in, pivot_root, rlimits, then the
    /// unprivileged --jail-uid/--jail-gid). See docs/security.md.
    #[arg(long, value_name = "DIR")]
    pub jail: Option<PathBuf>,
    /// The jail's user, by number or name (default 65534, nobody).
    #[arg(long, value_name = "UID", requires = "jail", value_parser = crate::jail::parse_uid)]
    pub jail_uid: Option<u32>,
    /// The jail's group, by number or name (default 65534).
    #[arg(long, value_name = "GID", requires = "jail", value_parser = crate::jail::parse_gid)]
    pub jail_gid: Option<u32>,
    /// A cgroup for the jail to join (created when missing), relative to the cgroup root (v2)
    /// or to the cpu and memory hierarchies (v1).
    #[arg(long, value_name = "PATH", requires = "jail")]
    pub jail_cgroup: Option<String>,
    /// The jail's cgroup CPU limit in percent of one CPU (150: one and a half).
    #[arg(long, value_name = "PERCENT", requires = "jail_cgroup")]
    pub jail_cpu_percent: Option<u32>,
    /// The jail's cgroup memory limit, e.g. 1G.
    #[arg(long, value_name = "SIZE", requires = "jail_cgroup", value_parser = parse_size)]
    pub jail_memory_limit: Option<u64>,
    /// The jail's RLIMIT_NOFILE (default 4096).
    #[arg(long, value_name = "N", requires = "jail")]
    pub jail_max_fds: Option<u64>,
    /// The jail's RLIMIT_AS, e.g. 8G (default: the guest's memory + 4G).
    #[arg(long, value_name = "SIZE", requires = "jail", value_parser = parse_size)]
    pub jail_max_address_space: Option<u64>,
    /// Confinement without root: Landlock lets Canto open only the VM's files and what its
    /// sound backend needs. See docs/security.md.
    #[arg(long)]
    pub landlock: bool,
    /// Seccomp filters on Canto's threads: on (a syscall outside its thread's filter ends Canto
    /// with one line naming it), log (the kernel logs it instead, for writing rules) or off.
    #[arg(long, value_name = "MODE", default_value = "on")]
    pub seccomp: SeccompMode,
    /// Print the guest's PCI devices and exit after building the VM.
    #[arg(long)]
    pub print_devices: bool,
    /// The arguments given on the command line (not defaulted), by id, for `--config`'s
    /// overrides; empty unless parsed by [`Cli::parse_args`].
    #[arg(skip)]
    given: Vec<String>,
}

impl Cli {
    /// Parses `args` (the program name first), remembering which options were given rather
    /// than defaulted, so that they override a `--config` file.
    pub fn parse_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        cli.given = matches
            .ids()
            .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
            .map(|id| id.to_string())
            .collect();
        Ok(cli)
    }

    fn given(&self, id: &str) -> bool {
        self.given.iter().any(|g| g == id)
    }

    /// The VM to run: the `--config` file with the options given on the command line laid over
    /// it, or the command line alone. Errors are one line.
    pub fn vm_config(&self) -> Result<VmConfig, String> {
        let Some(path) = &self.config else {
            return Ok(self.to_config());
        };
        let mut config = VmConfig::from_file(path)?;
        let line = self.to_config();
        if self.given("kernel") {
            config.kernel = line.kernel;
        }
        if self.given("initramfs") {
            config.initramfs = line.initramfs;
        }
        if self.given("cmdline") {
            config.cmdline = line.cmdline;
        }
        if self.given("cpus") {
            config.cpus = line.cpus;
        }
        if self.given("memory") {
            config.memory = line.memory;
        }
        if self.given("serial") {
            config.serial = line.serial;
        }
        // The whole device, its capture grant included: `--sound` without `capture=` revokes
        // the file's grant.
        if self.given("sound") || self.given("no_sound") {
            config.devices.sound = line.devices.sound;
        }
        if self.given("no_rng") {
            config.devices.rng = line.devices.rng;
        }
        // The command line's disks replace the file's (a list has no per-entry override).
        if self.given("disk") {
            config.devices.disks = line.devices.disks;
        }
        if self.given("vsock") {
            config.devices.vsock = line.devices.vsock;
        }
        self.overlay_confinement(&mut config);
        if self.given("seccomp") {
            config.seccomp = line.seccomp;
        }
        Ok(config)
    }

    /// The VM the command line alone describes, defaults included (`--print-devices` is an
    /// action, not part of it; `--config` is not read).
    pub fn to_config(&self) -> VmConfig {
        VmConfig {
            kernel: self.kernel.clone().unwrap_or_default(),
            initramfs: self.initramfs.clone(),
            cmdline: self.cmdline.clone(),
            cpus: self.cpus,
            memory: self.memory,
            serial: self.serial.clone(),
            devices: DevicesConfig {
                rng: !self.no_rng,
                sound: match (&self.sound, self.no_sound) {
                    (_, true) => SoundSetting::Off,
                    (Some(sound), false) => SoundSetting::Device(SoundDeviceConfig::from(sound)),
                    (None, false) => SoundSetting::Auto,
                },
                disks: self.disk.clone(),
                vsock: self.vsock.clone(),
            },
            jail: self.jail_config(None),
            landlock: self.landlock,
            seccomp: self.seccomp,
        }
    }

    /// The jail the `--jail*` options describe, laid over `base` (a file's).
    fn jail_config(
        &self,
        base: Option<&crate::jail::JailConfig>,
    ) -> Option<crate::jail::JailConfig> {
        let mut jail = match (&self.jail, base) {
            (Some(dir), Some(base)) => crate::jail::JailConfig {
                dir: dir.clone(),
                ..base.clone()
            },
            (Some(dir), None) => crate::jail::JailConfig::new(dir),
            (None, Some(base)) => base.clone(),
            (None, None) => return None,
        };
        if let Some(uid) = self.jail_uid {
            jail.uid = uid;
        }
        if let Some(gid) = self.jail_gid {
            jail.gid = gid;
        }
        if let Some(cgroup) = &self.jail_cgroup {
            jail.cgroup = Some(cgroup.clone());
        }
        if let Some(percent) = self.jail_cpu_percent {
            jail.cpu_percent = Some(percent);
        }
        if let Some(limit) = self.jail_memory_limit {
            jail.memory_limit = Some(limit);
        }
        if let Some(n) = self.jail_max_fds {
            jail.max_fds = Some(n);
        }
        if let Some(size) = self.jail_max_address_space {
            jail.max_address_space = Some(size);
        }
        Some(jail)
    }

    /// `--jail*` and `--landlock` over a file's confinement.
    fn overlay_confinement(&self, config: &mut VmConfig) {
        config.jail = self.jail_config(config.jail.as_ref());
        if self.landlock {
            config.landlock = true;
        }
    }
}

/// `--seccomp on|log|off`.
impl FromStr for SeccompMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "on" => Ok(Self::On),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            _ => Err(format!("unknown seccomp mode '{s}': use on, log or off")),
        }
    }
}

/// `--serial stdio|null|file=PATH`.
impl FromStr for SerialConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdio" => Ok(Self::Stdio),
            "null" => Ok(Self::Null),
            _ => match s.strip_prefix("file=") {
                Some("") => Err(SERIAL_FILE_NEEDS_PATH.into()),
                Some(path) => Ok(Self::File {
                    path: PathBuf::from(path),
                }),
                None => Err(format!(
                    "unknown serial mode '{s}': use stdio, null or file=PATH"
                )),
            },
        }
    }
}

/// `--disk path=FILE[,readonly=on|off][,id=NAME]`.
impl FromStr for DiskConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut disk = DiskConfig {
            path: PathBuf::new(),
            readonly: false,
            id: None,
        };
        for part in s.split(',') {
            let (key, value) = part.split_once('=').unwrap_or((part, ""));
            match key {
                "path" => disk.path = PathBuf::from(value),
                "readonly" => {
                    disk.readonly = match value {
                        "on" | "true" | "yes" => true,
                        "off" | "false" | "no" => false,
                        _ => return Err(format!("readonly={value}: use readonly=on or off")),
                    }
                }
                "id" => disk.id = Some(value.to_string()),
                _ => {
                    return Err(format!(
                        "unknown disk option '{part}': use path=FILE[,readonly=on][,id=NAME]"
                    ))
                }
            }
        }
        if disk.path.as_os_str().is_empty() {
            return Err(DISK_NEEDS_PATH.into());
        }
        disk.validate()?;
        Ok(disk)
    }
}
/// `--vsock cid=N,socket=PATH`.
fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    let (mut cid, mut socket) = (None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("cid", n)) => {
                cid = Some(
                    n.parse::<u64>()
                        .map_err(|_| format!("vsock: cid '{n}' is not a whole number"))?,
                )
            }
            Some(("socket", path)) => socket = Some(PathBuf::from(path)),
            _ => {
                return Err(format!(
                    "vsock: unknown setting '{part}': use cid=N,socket=PATH"
                ))
            }
        }
    }
    let (Some(cid), Some(socket)) = (cid, socket) else {
        return Err("vsock: both cid=N and socket=PATH are needed".into());
    };
    let config = VsockConfig { cid, socket };
    config.validate()?;
    Ok(config)
}

fn parse_cpus(s: &str) -> Result<u8, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number of vCPUs"))?;
    check_cpus(n)
}

/// Parses a size with an optional K/M/G/T suffix (powers of 1024; a trailing "iB"/"B" is allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let not_a_size = || format!("'{s}' is not a size (examples: 512M, 2G, 1048576)");
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| not_a_size())?;
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => {
            return Err(format!(
                "'{s}': unknown size suffix '{suffix}' (use K, M, G or T)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("canto").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_and_full_command_line() {
        let cli = parse(&["--kernel", "k"]).unwrap();
        assert_eq!(cli.cpus, 1);
        assert_eq!(cli.memory, 512 << 20);
        assert_eq!(cli.serial, SerialConfig::Stdio);
        assert!(cli.initramfs.is_none());
        let cli = parse(&[
            "--kernel",
            "k",
            "--initramfs",
            "i",
            "--cmdline",
            "quiet",
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--serial",
            "file=/tmp/x",
        ])
        .unwrap();
        assert_eq!(cli.cpus, 2);
        assert_eq!(cli.memory, 1 << 30);
        assert_eq!(cli.cmdline, "quiet");
        assert_eq!(
            cli.serial,
            SerialConfig::File {
                path: "/tmp/x".into()
            }
        );
        let cli = parse(&["--kernel", "k", "--sound", "backend=wav,path=/tmp/o.wav"]).unwrap();
        assert_eq!(cli.sound.unwrap().backend.name(), "wav");
    }

    #[test]
    fn user_errors_are_rejected_with_a_reason() {
        let err = |args: &[&str]| parse(args).unwrap_err().to_string();
        assert!(err(&[]).contains("--kernel"));
        assert!(err(&["--kernel", "k", "--cpus", "0"]).contains("at least 1 vCPU"));
        assert!(err(&["--kernel", "k", "--cpus", "999"]).contains("at most"));
        assert!(err(&["--kernel", "k", "--cpus", "two"]).contains("not a whole number"));
        assert!(err(&["--kernel", "k", "--memory", "12Q"]).contains("unknown size suffix"));
        assert!(err(&["--kernel", "k", "--memory", "lots"]).contains("not a size"));
        assert!(err(&["--kernel", "k", "--serial", "tty"]).contains("unknown serial mode"));
        assert!(err(&["--kernel", "k", "--serial", "file="]).contains("needs a path"));
        assert!(err(&["--kernel", "k", "--bogus"]).contains("--bogus"));
        assert!(err(&["--kernel", "k", "--disk", "readonly=on"]).contains("needs path=FILE"));
        assert!(err(&["--kernel", "k", "--disk", "path=/x,ro"]).contains("unknown disk option"));
        assert!(err(&["--kernel", "k", "--disk", "path=/x,readonly=maybe"]).contains("on or off"));
        let long_id = "path=/x,id=123456789012345678901";
        assert!(err(&["--kernel", "k", "--disk", long_id]).contains("longer than 20 bytes"));
        assert!(err(&["--kernel", "k", "--sound", "backend=jack"]).contains("jack"));
        assert!(
            err(&["--kernel", "k", "--sound", "backend=null", "--no-sound"])
                .contains("cannot be used with")
        );
    }

    #[test]
    fn vsock_option() {
        let config = parse(&["--kernel", "k", "--vsock", "cid=3,socket=/tmp/v.sock"])
            .unwrap()
            .to_config();
        assert_eq!(
            config.devices.vsock,
            Some(VsockConfig {
                cid: 3,
                socket: "/tmp/v.sock".into()
            })
        );
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(parse(&["--kernel", "k"]).unwrap().vsock, None);
        let err = |spec: &str| {
            parse(&["--kernel", "k", "--vsock", spec])
                .unwrap_err()
                .to_string()
        };
        assert!(err("cid=2,socket=/s").contains("not usable"));
        assert!(err("cid=x,socket=/s").contains("not a whole number"));
        assert!(err("cid=3").contains("both"));
        assert!(err("cid=3,socket=/s,port=1").contains("unknown setting"));
        assert!(err("cid=3,socket=").contains("needs a path"));
    }

    #[test]
    fn the_command_line_becomes_the_vm_config() {
        let config = parse(&["--kernel", "k"]).unwrap().to_config();
        assert_eq!(config, VmConfig::new("k"));
        let config = parse(&[
            "--kernel",
            "k",
            "--initramfs",
            "i",
            "--cmdline",
            "quiet",
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--serial",
            "null",
            "--sound",
            "backend=wav,path=/tmp/o.wav,streams=2:0",
            "--no-rng",
        ])
        .unwrap()
        .to_config();
        assert_eq!(config.initramfs, Some("i".into()));
        assert_eq!(config.cmdline, "quiet");
        assert_eq!((config.cpus, config.memory), (2, 1 << 30));
        assert_eq!(config.serial, SerialConfig::Null);
        assert!(!config.devices.rng);
        let SoundSetting::Device(sound) = &config.devices.sound else {
            panic!("{config:?}");
        };
        assert_eq!(
            sound.to_sound_config().to_string(),
            "backend=wav,path=/tmp/o.wav,streams=2:0"
        );
        assert_eq!(config.validate(), Ok(()));
        let disks = parse(&[
            "--kernel",
            "k",
            "--disk",
            "path=/a.img",
            "--disk",
            "path=/b.img,readonly=on,id=data",
        ])
        .unwrap()
        .to_config();
        assert_eq!(
            disks.devices.disks,
            [
                DiskConfig {
                    path: "/a.img".into(),
                    readonly: false,
                    id: None
                },
                DiskConfig {
                    path: "/b.img".into(),
                    readonly: true,
                    id: Some("data".into())
                }
            ]
        );
        let off = parse(&["--kernel", "k", "--no-sound"]).unwrap().to_config();
        assert_eq!(off.devices.sound, SoundSetting::Off);
    }

    /// A `--config` file in a temporary directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("canto-cli-{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
        fn arg(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn args(list: &[&str]) -> Cli {
        Cli::parse_args(std::iter::once("canto").chain(list.iter().copied())).unwrap()
    }

    #[test]
    fn seccomp_is_on_by_default_and_set_by_the_line_or_the_file() {
        assert_eq!(
            args(&["--kernel", "k"]).to_config().seccomp,
            SeccompMode::On
        );
        for (text, mode) in [
            ("on", SeccompMode::On),
            ("log", SeccompMode::Log),
            ("off", SeccompMode::Off),
        ] {
            let config = args(&["--kernel", "k", "--seccomp", text]).to_config();
            assert_eq!(config.seccomp, mode);
        }
        let file = TempFile::new("seccomp.toml", "kernel = \"/k\"\nseccomp = \"log\"\n");
        let config = args(&["--config", file.arg()]).vm_config().unwrap();
        assert_eq!(config.seccomp, SeccompMode::Log);
        // The default on the command line does not override the file; a given mode does.
        let config = args(&["--config", file.arg(), "--seccomp", "off"])
            .vm_config()
            .unwrap();
        assert_eq!(config.seccomp, SeccompMode::Off);
        let bad = TempFile::new(
            "seccomp-bad.toml",
            "kernel = \"/k\"\nseccomp = \"strict\"\n",
        );
        let err = args(&["--config", bad.arg()]).vm_config().unwrap_err();
        assert!(err.contains("seccomp"), "{err}");
    }

    #[test]
    fn a_config_file_is_the_vm_and_given_options_override_it() {
        let file = TempFile::new(
            "override.toml",
            r#"
                kernel = "/file/kernel"
                cmdline = "from-file"
                cpus = 2
                memory = "128M"
                serial = "null"
                [devices]
                rng = false
                sound = "off"
            "#,
        );
        let config = args(&["--config", file.arg()]).vm_config().unwrap();
        assert_eq!(config.kernel, PathBuf::from("/file/kernel"));
        assert_eq!((config.cpus, config.memory), (2, 128 << 20));
        assert_eq!(config.cmdline, "from-file");
        assert_eq!(config.serial, SerialConfig::Null);
        assert_eq!(config.devices.sound, SoundSetting::Off);
        assert!(!config.devices.rng);
        // Defaults on the command line do not override the file; given options do.
        let config = args(&["--config", file.arg(), "--cpus", "1", "--cmdline", "x"])
            .vm_config()
            .unwrap();
        assert_eq!((config.cpus, config.memory), (1, 128 << 20));
        assert_eq!(config.cmdline, "x");
        assert_eq!(config.serial, SerialConfig::Null);
        let config = args(&[
            "--config",
            file.arg(),
            "--kernel",
            "/cli/kernel",
            "--initramfs",
            "/cli/initrd",
            "--memory",
            "1G",
            "--serial",
            "stdio",
            "--sound",
            "backend=null",
        ])
        .vm_config()
        .unwrap();
        assert_eq!(config.kernel, PathBuf::from("/cli/kernel"));
        assert_eq!(config.initramfs, Some("/cli/initrd".into()));
        assert_eq!(config.memory, 1 << 30);
        assert_eq!(config.serial, SerialConfig::Stdio);
        assert!(matches!(config.devices.sound, SoundSetting::Device(_)));
        assert!(!config.devices.rng, "rng stays as the file says");
    }

    #[test]
    fn the_capture_grant_comes_from_the_file_or_the_command_line() {
        let file = TempFile::new(
            "capture.toml",
            r#"
                kernel = "/k"
                [devices.sound.device]
                backend = "null"
                capture = { wav = { path = "/tmp/in.wav" } }
            "#,
        );
        let sound = |cli: Cli| match cli.vm_config().unwrap().devices.sound {
            SoundSetting::Device(device) => device.to_sound_config(),
            other => panic!("{other:?}"),
        };
        let granted = sound(args(&["--config", file.arg()]));
        assert_eq!(
            granted.to_string(),
            "backend=null,capture=wav:/tmp/in.wav,streams=1:1"
        );
        // `--sound` replaces the whole device: without `capture=` the grant is gone.
        let revoked = sound(args(&["--config", file.arg(), "--sound", "backend=null"]));
        assert_eq!((revoked.capture, revoked.inputs), (None, 0));
        let other = sound(args(&[
            "--config",
            file.arg(),
            "--sound",
            "backend=null,capture=alsa:hw:1,0",
        ]));
        assert_eq!(
            other.to_string(),
            "backend=null,capture=alsa:hw:1,0,streams=1:1"
        );
        // On the command line alone: no grant by default, and a clear refusal of inputs
        // without one.
        let default = parse(&["--kernel", "k", "--sound", "backend=null"]).unwrap();
        assert_eq!(default.sound.unwrap().inputs, 0);
        let err = parse(&["--kernel", "k", "--sound", "backend=null,streams=1:1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture grant"), "{err}");
        let err = parse(&["--kernel", "k", "--sound", "backend=null,capture=mic"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("capture=mic"), "{err}");
    }

    #[test]
    fn no_rng_and_no_sound_override_a_file_that_has_them() {
        let file = TempFile::new("devices.json", r#"{"kernel": "/k"}"#);
        let config = args(&["--config", file.arg()]).vm_config().unwrap();
        assert!(config.devices.rng);
        assert_eq!(config.devices.sound, SoundSetting::Auto);
        let config = args(&["--config", file.arg(), "--no-rng", "--no-sound"])
            .vm_config()
            .unwrap();
        assert!(!config.devices.rng);
        assert_eq!(config.devices.sound, SoundSetting::Off);
    }

    #[test]
    fn disks_come_from_the_file_unless_the_command_line_gives_some() {
        let file = TempFile::new(
            "disks.toml",
            r#"
                kernel = "/k"
                [[devices.disks]]
                path = "/file/a.img"
                [[devices.disks]]
                path = "/file/b.img"
                readonly = true
                id = "b"
            "#,
        );
        let config = args(&["--config", file.arg()]).vm_config().unwrap();
        let paths: Vec<_> = config
            .devices
            .disks
            .iter()
            .map(|d| d.path.clone())
            .collect();
        assert_eq!(paths, [PathBuf::from("/file/a.img"), "/file/b.img".into()]);
        assert!(config.devices.disks[1].readonly);
        assert_eq!(config.devices.disks[1].id.as_deref(), Some("b"));
        let config = args(&["--config", file.arg(), "--disk", "path=/cli.img"])
            .vm_config()
            .unwrap();
        let paths: Vec<_> = config
            .devices
            .disks
            .iter()
            .map(|d| d.path.clone())
            .collect();
        assert_eq!(
            paths,
            [PathBuf::from("/cli.img")],
            "the command line's list wins"
        );
        let bad = TempFile::new(
            "disks-bad.toml",
            "kernel = \"/k\"\n[[devices.disks]]\npath = \"/x\"\nro = true\n",
        );
        let e = args(&["--config", bad.arg()]).vm_config().unwrap_err();
        assert!(e.contains("unknown field `ro`"), "{e}");
    }

    #[test]
    fn vsock_on_the_command_line_overrides_the_file() {
        let file = TempFile::new(
            "vsock.json",
            r#"{"kernel": "/k", "devices": {"vsock": {"cid": 7, "socket": "/a.sock"}}}"#,
        );
        let config = args(&["--config", file.arg()]).vm_config().unwrap();
        assert_eq!(config.devices.vsock.unwrap().cid, 7);
        let config = args(&["--config", file.arg(), "--vsock", "cid=9,socket=/b.sock"])
            .vm_config()
            .unwrap();
        assert_eq!(
            config.devices.vsock,
            Some(VsockConfig {
                cid: 9,
                socket: "/b.sock".into()
            })
        );
    }

    #[test]
    fn kernel_is_needed_unless_a_config_file_is_given() {
        let e = Cli::parse_args(["canto", "--cpus", "2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kernel"), "{e}");
        assert!(Cli::parse_args(["canto", "--config", "/x.toml"]).is_ok());
        // Without --config the command line is the VM, as before.
        let cli = args(&["--kernel", "k", "--memory", "1G"]);
        assert_eq!(cli.vm_config(), Ok(cli.to_config()));
        let e = args(&["--config", "/nonexistent/vm.toml"])
            .vm_config()
            .unwrap_err();
        assert!(e.contains("cannot read the config file"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("128m"), Ok(128 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("99999999999999999999T").is_err());
        assert!(parse_size("20000000T").unwrap_err().contains("too large"));
        assert!(parse_size("").is_err());
    }
}
