//! `--landlock`: the VMM may then open only the files the VM was given, plus what its sound
//! backend needs. It needs no root, so it is the confinement for users without it (Cloud
//! Hypervisor offers the same; this is Canto's own rule set).
//!
//! [`restrict`] runs in `main` before any thread exists (Landlock confines the calling thread
//! and the threads it starts later, never the ones already running), before the VM is built:
//! everything the VMM opens is opened under the rules. They are, with the rights each gets:
//! - the kernel, the initramfs, the capture WAV file and read-only disks: read;
//! - read-write disks: read, write, truncate; the serial output file (created first): write;
//! - the WAV output's directory: create, write and truncate files (streams past the first and
//!   format changes write files beside the first);
//! - the vsock socket's directory: make and remove sockets;
//! - /dev/kvm (read, write, ioctl), /dev/null, /dev/zero, /dev/urandom, /dev/random;
//! - /proc/self and /sys/devices/system/cpu: read (the runtime's CPU count, thread names);
//! - with an ALSA backend: alsa-lib's and the sound server's configuration (/usr/share/alsa,
//!   /etc/alsa, /etc/asound.conf, ~/.asoundrc, /etc/pulse, the PulseAudio cookie), the plugins and
//!   the libraries they load (/usr/lib: read and execute), /dev/shm (PulseAudio's shared memory).
//!   Connecting to the sound server's socket needs no rule: Landlock ABI 7 does not restrict
//!   connecting to a named Unix socket.
//!
//! TCP bind and connect are refused (unless `PULSE_SERVER` names a TCP server); signals to
//! processes outside the VMM and abstract Unix sockets made outside it are out of reach.

use std::path::{Path, PathBuf};

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, BitFlags, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::config::{SerialConfig, SoundBackend, SoundCapture, SoundSetting, VmConfig};

/// The Landlock ABI Canto's rules are written for (Linux 6.15).
pub const TARGET_ABI: ABI = ABI::V7;

/// The test-only switch that makes [`restrict`] behave as on a kernel without Landlock.
pub const TEST_UNSUPPORTED_ENV: &str = "CANTO_LANDLOCK_TEST_UNSUPPORTED";

/// The one line for a kernel without Landlock.
pub const UNSUPPORTED: &str = "landlock: this kernel does not offer Landlock (Linux 5.13 or later with landlock in its lsm= list is needed); run without --landlock, or as root with --jail";

/// One rule: what may be done beneath `path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: PathBuf,
    pub access: BitFlags<AccessFs>,
}

fn read() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

/// The rules for `config` (see the module's documentation).
pub fn rules(config: &VmConfig) -> Vec<Rule> {
    let mut rules = Vec::new();
    let mut add = |path: &Path, access: BitFlags<AccessFs>| {
        rules.push(Rule {
            path: path.to_path_buf(),
            access,
        })
    };
    let read_write = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate;
    add(&config.kernel, AccessFs::ReadFile.into());
    if let Some(initramfs) = &config.initramfs {
        add(initramfs, AccessFs::ReadFile.into());
    }
    for disk in &config.devices.disks {
        if disk.readonly {
            add(&disk.path, AccessFs::ReadFile | AccessFs::IoctlDev);
        } else {
            add(&disk.path, read_write | AccessFs::IoctlDev);
        }
    }
    if let SerialConfig::File { path } = &config.serial {
        add(path, AccessFs::WriteFile | AccessFs::Truncate);
    }
    let parent = |path: &Path| -> PathBuf {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    if let Some(vsock) = &config.devices.vsock {
        add(
            &parent(&vsock.socket),
            AccessFs::MakeSock | AccessFs::RemoveFile,
        );
    }
    if let SoundSetting::Device(sound) = &config.devices.sound {
        if let SoundBackend::Wav { path } = &sound.backend {
            add(&parent(path), read_write | AccessFs::MakeReg);
        }
        if let Some(SoundCapture::Wav { path }) = &sound.capture {
            add(path, AccessFs::ReadFile.into());
        }
    }
    add(
        Path::new("/dev/kvm"),
        AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::IoctlDev,
    );
    add(
        Path::new("/dev/null"),
        AccessFs::ReadFile | AccessFs::WriteFile,
    );
    for device in ["/dev/zero", "/dev/urandom", "/dev/random"] {
        add(Path::new(device), AccessFs::ReadFile.into());
    }
    add(Path::new("/proc/self"), read());
    add(Path::new("/sys/devices/system/cpu"), read());
    if crate::jail::uses_alsa(config) {
        for path in crate::jail::ALSA_READ_ONLY {
            let access = if path.starts_with("/usr/lib") {
                read() | AccessFs::Execute
            } else {
                read()
            };
            add(Path::new(path), access);
        }
        for path in [
            "/etc/nsswitch.conf",
            "/etc/passwd",
            "/etc/group",
            "/var/lib/dbus/machine-id",
        ] {
            add(Path::new(path), read());
        }
        if let Some(home) = std::env::var_os("HOME") {
            add(&Path::new(&home).join(".asoundrc"), read());
            add(&Path::new(&home).join(".config/pulse"), read());
        }
        if let Some(cookie) = crate::jail::pulse_cookie() {
            add(&cookie, read());
        }
        if let Some(runtime) = std::env::var_os("XDG_RUNTIME_DIR") {
            add(&Path::new(&runtime).join("pulse"), read());
        }
        add(
            Path::new("/dev/shm"),
            read_write | AccessFs::MakeReg | AccessFs::RemoveFile,
        );
    }
    rules
}

/// Whether the sound server is reached over TCP (then TCP stays allowed).
fn sound_over_tcp(config: &VmConfig) -> bool {
    crate::jail::uses_alsa(config)
        && std::env::var("PULSE_SERVER").is_ok_and(|s| s.contains("tcp:"))
}

/// Makes the serial output file first, as Canto would (File::create), so that its rule can be
/// on the file alone.
fn create_outputs(config: &VmConfig) -> Result<(), String> {
    if let SerialConfig::File { path } = &config.serial {
        std::fs::File::create(path).map_err(|e| {
            format!(
                "cannot open the serial output file '{}': {e}",
                path.display()
            )
        })?;
    }
    Ok(())
}

/// Confines this thread (and every thread it starts) to [`rules`]. Errors are one line.
pub fn restrict(config: &VmConfig) -> Result<(), String> {
    if std::env::var_os(TEST_UNSUPPORTED_ENV).is_some() {
        return Err(UNSUPPORTED.into());
    }
    create_outputs(config)?;
    let fail = |e: landlock::RulesetError| format!("landlock: {e}");
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .map_err(fail)?
        .scope(Scope::from_all(TARGET_ABI))
        .map_err(fail)?;
    if !sound_over_tcp(config) {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(TARGET_ABI))
            .map_err(fail)?;
    }
    let mut created = ruleset.create().map_err(fail)?;
    for rule in rules(config) {
        // Paths that do not exist (an absent ~/.asoundrc) are skipped; the VM's own files were
        // checked or created before.
        created = created
            .add_rules(path_beneath_rules([&rule.path], rule.access))
            .map_err(fail)?;
    }
    let status = created.restrict_self().map_err(fail)?;
    match status.ruleset {
        RulesetStatus::NotEnforced => Err(UNSUPPORTED.into()),
        RulesetStatus::PartiallyEnforced => {
            log::warn!("landlock: this kernel's Landlock is older than ABI 7: partly enforced");
            Ok(())
        }
        RulesetStatus::FullyEnforced => {
            log::info!("landlock: enforced (ABI 7 rules)");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DiskConfig, SoundDeviceConfig};

    #[test]
    fn the_rules_cover_the_vms_files_with_their_rights() {
        let mut config = VmConfig::new("/k");
        config.initramfs = Some("/i".into());
        config.devices.disks = vec![
            DiskConfig {
                path: "/ro.img".into(),
                readonly: true,
                id: None,
            },
            DiskConfig {
                path: "/rw.img".into(),
                readonly: false,
                id: None,
            },
        ];
        config.devices.sound = SoundSetting::Device(SoundDeviceConfig {
            backend: SoundBackend::Wav {
                path: "/out/o.wav".into(),
            },
            capture: None,
            outputs: 1,
            inputs: None,
            jacks: 0,
        });
        let rules = rules(&config);
        let access = |p: &str| {
            rules
                .iter()
                .find(|r| r.path == Path::new(p))
                .map(|r| r.access)
                .unwrap_or_else(|| panic!("no rule for {p}: {rules:?}"))
        };
        assert_eq!(access("/k"), AccessFs::ReadFile);
        assert!(!access("/ro.img").contains(AccessFs::WriteFile));
        assert!(access("/rw.img").contains(AccessFs::WriteFile));
        assert!(access("/out").contains(AccessFs::MakeReg));
        assert!(access("/dev/kvm").contains(AccessFs::IoctlDev));
        // A WAV backend needs none of ALSA's files.
        assert!(!rules.iter().any(|r| r.path.starts_with("/usr")));
        config.devices.sound = SoundSetting::Auto;
        let rules = super::rules(&config);
        assert!(rules
            .iter()
            .any(|r| r.path == Path::new("/usr/lib") && r.access.contains(AccessFs::Execute)));
    }
}
