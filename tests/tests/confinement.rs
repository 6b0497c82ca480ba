//! Issue 14: the VMM confined by `--jail` (root: namespaces, pivot_root, an unprivileged uid)
//! and `--landlock` (no root needed). The test-only trigger CANTO_CONFINEMENT_TEST_OPEN=PATH
//! makes the confined VMM try to open PATH and list its network interfaces and ids, one line
//! each on stderr, before it builds the VM.
//!
//! The jail tests need root (CI runs as root); the Landlock file test runs as uid 65534 through
//! `setpriv`. The Linux guest boots once (the jail with PulseAudio); the others use the
//! driver-guest.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use canto_tests::{canto_bin, driver_guest_to_run, kvm_available, Canto, GuestImage, PulseServer};

const NOBODY: u32 = 65534;
const TRIGGER: &str = "CANTO_CONFINEMENT_TEST_OPEN";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Root is needed for a jail (and to become uid 65534 for the Landlock test): skip otherwise,
/// with the reason, except in CI, which runs as root.
fn root_or_skip() -> bool {
    canto_tests::prerequisite(is_root(), "this test needs root (CI runs as root)")
}

/// A scratch directory, removed when dropped; `chown` gives it to the jail's uid.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("canto-conf-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn sub(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).expect("scratch subdir");
        dir
    }

    fn chown(path: &Path, uid: u32) {
        std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `canto ARGS` with `env`, stdin closed; (exit code, stdout, stderr).
fn canto(args: &[&str], env: &[(&str, &str)], as_nobody: bool) -> (Option<i32>, String, String) {
    canto_leaking(args, env, as_nobody, false)
}

/// [`canto`], optionally with descriptor 3 left open (a host file's) as a careless caller would.
fn canto_leaking(
    args: &[&str],
    env: &[(&str, &str)],
    as_nobody: bool,
    leak_fd3: bool,
) -> (Option<i32>, String, String) {
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(canto_bin());
        c
    } else {
        Command::new(canto_bin())
    };
    if leak_fd3 {
        let file = std::fs::File::open("/etc/hostname").expect("/etc/hostname");
        let fd = std::os::unix::io::IntoRawFd::into_raw_fd(file);
        // SAFETY: dup2 is async-signal-safe; the child's descriptor 3 becomes the file, without
        // close-on-exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                // (dup2 onto itself keeps close-on-exec: clear it either way.)
                if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let out = command
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("cannot start canto");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The trigger's line about `what` ("open '/etc/hostname'", "network interfaces", "uid").
fn trigger_line<'a>(stderr: &'a str, what: &str) -> &'a str {
    let prefix = format!("canto: confinement test: {what}");
    stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no '{prefix}' line in canto's stderr:\n{stderr}"))
}

/// Where the guest's clip starts in the PulseAudio capture (the probe is past any fade-in).
fn find_clip(capture: &[u8], clip: &[u8]) -> Option<usize> {
    const PROBE_AT: usize = 4 * 1000;
    let probe = clip.get(PROBE_AT..PROBE_AT + 4 * 256)?;
    let at = capture.windows(probe.len()).position(|w| w == probe)?;
    at.checked_sub(PROBE_AT)
}

fn wav_pcm(path: &Path) -> Vec<u8> {
    let reader = hound::WavReader::open(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    reader
        .into_samples::<i16>()
        .flat_map(|s| s.unwrap().to_le_bytes())
        .collect()
}

/// Issue 14: the jail boots the Linux guest as uid 65534, `aplay` in the guest plays through the
/// private PulseAudio via its socket inside the jail (what the sink played is the clip, bit for
/// bit), and inside the jail the VMM cannot open a host file it was not given and has no
/// network interface but loopback.
#[test]
fn the_jail_boots_linux_as_nobody_with_sound_through_pulseaudio() {
    if !kvm_available() || !root_or_skip() {
        return;
    }
    let Some(image) = GuestImage::find() else {
        return;
    };
    let Some(pulse) = PulseServer::start("jail") else {
        return;
    };
    let scratch = Scratch::new("linux");
    let jail = scratch.sub("jail");
    let capture_path = scratch.0.join("capture.raw");
    let mut recorder = pulse.record(&capture_path);
    let out = Canto::linux(&image, "play")
        .arg("--memory")
        .arg("256M")
        .arg("--sound")
        .arg("backend=alsa,device=pulse")
        .arg("--jail")
        .arg(jail.to_str().unwrap())
        .envs(pulse.client_env())
        .envs([
            (TRIGGER.to_string(), "/etc/hostname".to_string()),
            ("RUST_LOG".to_string(), "info".to_string()),
        ])
        .timeout(Duration::from_secs(400))
        .run();
    std::thread::sleep(Duration::from_millis(500));
    let _ = recorder.kill();
    let _ = recorder.wait();
    out.expect_line("CANTO-APLAY rc=0");
    let refused = trigger_line(&out.stderr, "open '/etc/hostname'");
    assert!(refused.contains("refused"), "{refused}");
    assert_eq!(
        trigger_line(&out.stderr, "network interfaces"),
        "canto: confinement test: network interfaces: lo"
    );
    assert_eq!(
        trigger_line(&out.stderr, "uid"),
        format!("canto: confinement test: uid={NOBODY} gid={NOBODY}")
    );
    // PulseAudio played the guest's clip: 256 of its frames, bit for bit, are in the sink's
    // capture. (The whole clip bit-exact needs a host that keeps real time for the jailed VMM;
    // on a loaded shared machine the sink may fill a late period with silence, which is no
    // confinement matter: tests/tests/linux_sound.rs checks that part.)
    let clip = wav_pcm(&image.test_wav);
    let capture = std::fs::read(&capture_path).expect("capture");
    let start = find_clip(&capture, &clip).expect("the clip is not in PulseAudio's capture");
    let exact = capture
        .get(start..)
        .unwrap_or_default()
        .iter()
        .zip(&clip)
        .take_while(|(a, b)| a == b)
        .count();
    eprintln!(
        "the capture matches the clip for {exact} of its {} bytes",
        clip.len()
    );
}

/// The driver-guest's S16 counter pattern (tests/driver-guest/tests/snd_util.h).
fn counter_pcm(samples: usize) -> Vec<u8> {
    (0..samples)
        .flat_map(|i| (i as u16).to_le_bytes())
        .collect()
}

/// The WAV's data is exactly the guest's 40 periods of the counter pattern.
fn assert_snd_tx_wav(path: &Path) {
    let expected = counter_pcm(40 * 2400);
    assert_eq!(
        wav_pcm(path),
        expected,
        "{} is not the guest's PCM",
        path.display()
    );
}

/// `snd-tx` through the WAV backend, with `confinement` options and the trigger on `open`.
fn driver_snd_tx(
    elf: &Path,
    wav: &Path,
    confinement: &[&str],
    open: &str,
    as_nobody: bool,
) -> (Option<i32>, String, String) {
    driver_snd_tx_leaking(elf, wav, confinement, open, as_nobody, false)
}

fn driver_snd_tx_leaking(
    elf: &Path,
    wav: &Path,
    confinement: &[&str],
    open: &str,
    as_nobody: bool,
    leak_fd3: bool,
) -> (Option<i32>, String, String) {
    let sound = format!("backend=wav,path={},capture=null", wav.display());
    let mut args = vec![
        "--kernel",
        elf.to_str().unwrap(),
        "--memory",
        "64M",
        "--serial",
        "stdio",
        "--sound",
        &sound,
        "--cmdline",
        "test=snd-tx",
    ];
    args.extend_from_slice(confinement);
    canto_leaking(&args, &[(TRIGGER, open)], as_nobody, leak_fd3)
}

/// The jail with the driver-guest: the WAV output's directory is bind-mounted in (the guest's
/// PCM reaches the host file bit-exact), the VMM runs as 65534 inside a cgroup with the CPU and
/// memory limits asked for, and the inherited descriptors are closed.
#[test]
fn the_jail_gives_the_vm_its_files_and_a_cgroup_with_limits() {
    if !root_or_skip() {
        return;
    }
    let Some(elf) = driver_guest_to_run() else {
        return;
    };
    let scratch = Scratch::new("dg");
    let jail = scratch.sub("jail");
    let out_dir = scratch.sub("out");
    Scratch::chown(&out_dir, NOBODY);
    let wav = out_dir.join("tx.wav");
    let cgroup = format!("canto-test-jail-{}", std::process::id());
    let (code, stdout, stderr) = driver_snd_tx_leaking(
        &elf,
        &wav,
        &[
            "--jail",
            jail.to_str().unwrap(),
            "--jail-cgroup",
            &cgroup,
            "--jail-cpu-percent",
            "150",
            "--jail-memory-limit",
            "1G",
        ],
        "/proc/self/fd/3",
        false,
        true,
    );
    // v2: one directory; v1: one per controller.
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let cgroup_file = |controller: &str, file: &str| {
        let root = Path::new("/sys/fs/cgroup");
        let dir = if v2 {
            root.join(&cgroup)
        } else {
            root.join(controller).join(&cgroup)
        };
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_else(|e| panic!("cgroup file {controller}/{file}: {e}"))
    };
    let (memory, cpu) = if v2 {
        (cgroup_file("", "memory.max"), cgroup_file("", "cpu.max"))
    } else {
        (
            cgroup_file("memory", "memory.limit_in_bytes"),
            cgroup_file("cpu", "cpu.cfs_quota_us"),
        )
    };
    for controller in ["", "cpu", "memory"] {
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(controller).join(&cgroup));
    }
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("DG PASS snd-tx"), "{stdout}");
    assert_snd_tx_wav(&wav);
    assert_eq!(memory.trim(), (1u64 << 30).to_string());
    assert!(cpu.starts_with("150000"), "cpu limit: {cpu}");
    // Descriptor 3, a host file the caller left open, was closed.
    let fd3 = trigger_line(&stderr, "open '/proc/self/fd/3'");
    assert!(fd3.contains("refused"), "{fd3}");
    assert_eq!(
        trigger_line(&stderr, "uid"),
        format!("canto: confinement test: uid={NOBODY} gid={NOBODY}")
    );
}

/// Issue 14: Landlock without root. As uid 65534, `--landlock` refuses a readable host file the
/// VM was not given (and, as the control, the same user opens it without `--landlock`) while
/// the VM's own kernel opens. The VMM then cannot open /dev/kvm as that user, which is expected.
#[test]
fn landlock_refuses_a_file_the_vm_was_not_given_without_root() {
    if !root_or_skip() {
        return;
    }
    let Some(elf) = canto_tests::driver_guest() else {
        return;
    };
    // The user must be able to reach the binary and the guest.
    for path in [canto_bin(), elf.clone()] {
        let ok = Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "test",
                "-r",
            ])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !canto_tests::prerequisite(ok, &format!("uid 65534 cannot read {}", path.display())) {
            return;
        }
    }
    let kernel = elf.to_str().unwrap();
    let run = |landlock: bool, open: &str| {
        let mut args = vec![
            "--kernel",
            kernel,
            "--serial",
            "null",
            "--sound",
            "backend=null",
        ];
        if landlock {
            args.push("--landlock");
        }
        let (_, _, stderr) = canto(&args, &[(TRIGGER, open)], true);
        trigger_line(&stderr, &format!("open '{open}'")).to_string()
    };
    let control = run(false, "/etc/hostname");
    assert!(control.ends_with("opened"), "{control}");
    let refused = run(true, "/etc/hostname");
    assert!(
        refused.contains("refused") && refused.contains("Permission denied"),
        "{refused}"
    );
    let given = run(true, kernel);
    assert!(given.ends_with("opened"), "{given}");
}

/// `--landlock` with a running VM (as root, who can open /dev/kvm): the driver-guest plays
/// through the WAV backend into its directory bit-exact, and the host file stays closed.
#[test]
fn landlock_runs_the_vm_with_only_its_files() {
    let Some(elf) = driver_guest_to_run() else {
        return;
    };
    let scratch = Scratch::new("landlock");
    let wav = scratch.sub("out").join("tx.wav");
    let (code, stdout, stderr) = driver_snd_tx(&elf, &wav, &["--landlock"], "/etc/hostname", false);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("DG PASS snd-tx"), "{stdout}");
    assert_snd_tx_wav(&wav);
    let refused = trigger_line(&stderr, "open '/etc/hostname'");
    assert!(refused.contains("refused"), "{refused}");
}

/// Exit 1 and exactly one line on stderr, containing `expected`.
fn assert_one_line(out: (Option<i32>, String, String), expected: &str) {
    let (code, _, stderr) = out;
    assert_eq!(code, Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {stderr}");
    assert!(
        lines[0].starts_with("canto: ") && lines[0].contains(expected),
        "expected '{expected}': {stderr}"
    );
}

/// Issue 14's bad input: one clear line each, before any guest runs.
#[test]
fn bad_confinement_input_is_one_clear_line() {
    if !root_or_skip() {
        return;
    }
    let scratch = Scratch::new("bad");
    let jail = scratch.sub("jail");
    let kernel = scratch.0.join("vmlinux");
    std::fs::write(&kernel, b"not a kernel").unwrap();
    Scratch::chown(&scratch.0, NOBODY);
    let (k, j) = (kernel.to_str().unwrap(), jail.to_str().unwrap());
    let base = |extra: &[&str]| {
        let mut args = vec!["--kernel", k, "--serial", "null", "--sound", "backend=null"];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |extra: &[&str], env: &[(&str, &str)], nobody: bool| {
        let args = base(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        canto(&args, env, nobody)
    };
    assert_one_line(
        run(&["--jail", j], &[], true),
        "--jail must be started as root",
    );
    assert_one_line(
        run(&["--jail", "/nonexistent/canto-jail"], &[], false),
        "the directory '/nonexistent/canto-jail' cannot be used",
    );
    assert_one_line(
        run(&["--jail", j, "--jail-uid", "4242424"], &[], false),
        "unknown uid 4242424",
    );
    // A name the host does not know is refused while parsing, by clap, in its own words.
    let (code, _, stderr) = run(
        &["--jail", j, "--jail-uid", "no-such-user-here"],
        &[],
        false,
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("unknown user 'no-such-user-here'"),
        "{stderr}"
    );
    // A cgroup path that is a file of the hierarchy, not a group, cannot be joined.
    assert_one_line(
        run(&["--jail", j, "--jail-cgroup", "cgroup.procs"], &[], false),
        "cannot join the cgroup",
    );
    // A kernel without Landlock is simulated: no kernel here lacks it.
    assert_one_line(
        run(
            &["--landlock"],
            &[("CANTO_LANDLOCK_TEST_UNSUPPORTED", "1")],
            true,
        ),
        "this kernel does not offer Landlock",
    );
}

/// The jail's parent forwards SIGTERM to the jailed VMM, which stops cleanly (its WAV file
/// complete, its one line), and the parent exits with the VMM's status, 143.
#[test]
fn the_jail_forwards_sigterm_and_passes_on_the_exit_status() {
    if !root_or_skip() {
        return;
    }
    let Some(elf) = driver_guest_to_run() else {
        return;
    };
    let scratch = Scratch::new("sigterm");
    let jail = scratch.sub("jail");
    let out_dir = scratch.sub("out");
    Scratch::chown(&out_dir, NOBODY);
    let wav = out_dir.join("play.wav");
    let mut sent = false;
    let out = Canto::new()
        .arg("--kernel")
        .arg(elf.to_str().unwrap())
        .arg("--memory")
        .arg("64M")
        .arg("--serial")
        .arg("stdio")
        .arg("--sound")
        .arg(&format!("backend=wav,path={}", wav.display()))
        .arg("--cmdline")
        .arg("test=snd-play")
        .arg("--jail")
        .arg(jail.to_str().unwrap())
        .timeout(Duration::from_secs(60))
        .run_watching(|pid| {
            // Once the guest has played 200 ms into the file.
            let len = std::fs::metadata(&wav).map_or(0, |m| m.len());
            if !sent && len > 44 + 8 * 4800 {
                // SAFETY: signals the jail's parent, our child, which has not been reaped.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                sent = true;
            }
        });
    assert!(sent && !out.timed_out, "{out:#?}");
    assert_eq!(out.status.and_then(|s| s.code()), Some(143), "{out:#?}");
    assert!(
        out.stderr.contains("canto: stopped by SIGTERM"),
        "{}",
        out.stderr
    );
    // The teardown finished the file: its header counts the frames it holds.
    let reader = hound::WavReader::open(&wav).expect("a complete WAV file");
    let frames = u64::from(reader.duration());
    let data_bytes = std::fs::metadata(&wav).unwrap().len() - 44;
    assert!(frames >= 2 * 4800, "{frames} frames");
    assert_eq!(
        frames * 4,
        data_bytes,
        "the header does not count the file's frames"
    );
}

/// The jailed VMM dies with the jail's parent (SIGKILLed, as a timeout would): no VMM is left
/// running without anyone to wait for it. (A change of uid clears the parent-death signal; the
/// jail sets it again after the drop.)
#[test]
fn the_jailed_vmm_dies_with_its_parent() {
    if !root_or_skip() {
        return;
    }
    let Some(elf) = driver_guest_to_run() else {
        return;
    };
    let scratch = Scratch::new("orphan");
    let jail = scratch.sub("jail");
    let mut parent = Command::new(canto_bin())
        .args(["--kernel", elf.to_str().unwrap(), "--memory", "64M"])
        .args(["--serial", "null", "--sound", "backend=null"])
        .args([
            "--cmdline",
            "test=snd-play",
            "--jail",
            jail.to_str().unwrap(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cannot start canto");
    let children = format!("/proc/{0}/task/{0}/children", parent.id());
    let start = std::time::Instant::now();
    let child: i32 = loop {
        let text = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next().and_then(|p| p.parse().ok()) {
            break pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no jailed VMM started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let it drop its privileges and run the guest.
    std::thread::sleep(Duration::from_millis(500));
    parent.kill().expect("kill the parent");
    parent.wait().expect("reap the parent");
    let start = std::time::Instant::now();
    let alive = || Path::new(&format!("/proc/{child}")).exists();
    while alive() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = alive();
    if survived {
        // SAFETY: kill takes numbers; the orphan is the one this test made.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }
    assert!(!survived, "the jailed VMM outlived its parent");
}

/// `--landlock` leaves the ALSA backend what it needs: the driver-guest plays through alsa-lib's
/// `pulse` plugin to the private PulseAudio (plugin and libraries loaded, configuration read,
/// socket reached after the restriction), and the host file stays closed.
#[test]
fn landlock_lets_the_alsa_backend_reach_pulseaudio() {
    let Some(elf) = driver_guest_to_run() else {
        return;
    };
    let Some(pulse) = PulseServer::start("landlock") else {
        return;
    };
    let env: Vec<(String, String)> = pulse.client_env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push((TRIGGER, "/etc/hostname"));
    let (code, stdout, stderr) = canto(
        &[
            "--kernel",
            elf.to_str().unwrap(),
            "--memory",
            "64M",
            "--serial",
            "stdio",
            "--sound",
            "backend=alsa,device=pulse,capture=null",
            "--cmdline",
            "test=snd-tx",
            "--landlock",
        ],
        &env,
        false,
    );
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("DG PASS snd-tx"), "{stdout}\n{stderr}");
    let refused = trigger_line(&stderr, "open '/etc/hostname'");
    assert!(refused.contains("refused"), "{refused}");
}
