//! The private PulseAudio server that tests needing a real-time paced ALSA device use (the
//! device crate's host-fault tests, canto-tests' sound tests), and the skip-or-fail rule for a
//! missing prerequisite.
//!
//! Tests that need something the host lacks skip with a printed reason, except in CI
//! (`CI=true`), where a missing prerequisite fails the test loudly.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the tests run in CI (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Returns false (after printing why) when a prerequisite is missing outside CI; panics in CI.
pub fn prerequisite(ok: bool, what: &str) -> bool {
    if !ok {
        if in_ci() {
            panic!("CI=true and {what}: this test cannot run, so it fails");
        }
        eprintln!("SKIPPED: {what}");
    }
    ok
}

/// A private, headless PulseAudio server with a null sink: a real-time paced ALSA device
/// (ALSA PCM `pulse`) on a machine with no sound card. Killed (by PID) when dropped, and with
/// the thread that started it should that die first.
pub struct PulseServer {
    child: std::process::Child,
    dir: PathBuf,
    /// Whether `dir` is the server's own, removed when it is dropped.
    owns_dir: bool,
}

impl PulseServer {
    /// Starts the server in a directory of its own; None (with the reason printed, or a panic in
    /// CI) when `pulseaudio` is not installed.
    pub fn start(name: &str) -> Option<Self> {
        if !prerequisite(
            Self::installed(),
            "pulseaudio is not installed (make test installs it)",
        ) {
            return None;
        }
        let dir = std::env::temp_dir().join(format!("canto-pulse-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let child = Self::spawn(&dir);
        Some(Self {
            child,
            dir,
            owns_dir: true,
        })
    }

    /// Starts the server in `dir`, which the caller made (mode 0700) and removes: its socket is
    /// `<dir>/native`, its log `<dir>/server.log`.
    pub fn start_in(dir: &Path) -> Self {
        Self {
            child: Self::spawn(dir),
            dir: dir.to_owned(),
            owns_dir: false,
        }
    }

    /// Whether `pulseaudio` runs here.
    pub fn installed() -> bool {
        Command::new("pulseaudio")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Starts `pulseaudio` on `<dir>/native` and waits until it accepts connections (a killed
    /// server leaves its socket file behind, so the file alone proves nothing).
    fn spawn(dir: &Path) -> std::process::Child {
        let socket = dir.join("native");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .expect("the server's log file");
        let mut command = Command::new("pulseaudio");
        command
            .args([
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "--use-pid-file=no",
                "--disable-shm=yes",
                "--load=module-null-sink sink_name=vsink format=s16le rate=48000 channels=2 norewinds=1",
            ])
            .arg(format!(
                "--load=module-native-protocol-unix auth-anonymous=1 socket={}",
                socket.display()
            ))
            .envs(Self::env_for(dir))
            .env("HOME", dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the server's log file"))
            .stderr(log);
        // SAFETY: prctl is async-signal-safe and touches no memory of this process; the server
        // then dies with the thread that started it should a test die without dropping it.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("cannot start pulseaudio");
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                panic!("pulseaudio exited at start-up ({status}):\n{log}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "pulseaudio did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Kills the server with SIGKILL: to its clients the sound device disappears without notice.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same socket (after [`PulseServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.dir);
    }

    /// The environment that makes a client reach a server in `dir` (the server's own
    /// runtime paths point there too).
    pub fn env_for(dir: &Path) -> Vec<(String, String)> {
        let d = dir.display().to_string();
        vec![
            ("XDG_RUNTIME_DIR".into(), d.clone()),
            ("PULSE_RUNTIME_PATH".into(), d.clone()),
            ("PULSE_STATE_PATH".into(), d.clone()),
            ("PULSE_SERVER".into(), format!("unix:{d}/native")),
        ]
    }

    /// The environment a client (canto, parec) needs to reach this server.
    pub fn client_env(&self) -> Vec<(String, String)> {
        Self::env_for(&self.dir)
    }

    /// Starts recording the null sink's monitor as raw S16LE stereo 48 kHz into `path`.
    pub fn record(&self, path: &Path) -> std::process::Child {
        Command::new("parec")
            .args([
                "-d",
                "vsink.monitor",
                "--format=s16le",
                "--rate=48000",
                "--channels=2",
                "--raw",
            ])
            .envs(self.client_env())
            .stdout(std::fs::File::create(path).expect("capture file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start parec")
    }
}

impl Drop for PulseServer {
    fn drop(&mut self) {
        self.kill();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
