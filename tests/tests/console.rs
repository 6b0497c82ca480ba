//! The console escape keys, typed through a pseudo-terminal at the driver-guest's `serial-echo`
//! test (which prints every byte COM1 receives): Ctrl-A x ends Canto with status 0 and the
//! terminal as it was, Ctrl-A Ctrl-A delivers one 0x01, Ctrl-A h prints the keys.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use canto_tests::{canto_bin, driver_guest_to_run};

/// Long enough for any boot of the driver-guest here, however loaded the machine.
const PATIENCE: Duration = Duration::from_secs(60);

const CANONICAL: libc::tcflag_t = libc::ICANON | libc::ECHO | libc::ISIG;

fn local_flags(fd: i32) -> libc::tcflag_t {
    // SAFETY: termios is plain data that tcgetattr fills in.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open terminal descriptor owned by the test; `t` is valid to write.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut t) }, 0);
    t.c_lflag
}

/// Collects a pipe's bytes as they arrive.
fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let thread = std::thread::spawn({
        let bytes = bytes.clone();
        move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                bytes.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        }
    });
    (bytes, thread)
}

/// Canto running the `serial-echo` guest with a pseudo-terminal on stdin.
struct ConsoleRun {
    child: Child,
    master: std::fs::File,
    cooked: libc::tcflag_t,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

struct Ended {
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    /// The terminal's local flags after Canto ended.
    flags_after: libc::tcflag_t,
    cooked: libc::tcflag_t,
}

impl ConsoleRun {
    /// Starts Canto and waits for the guest to say it is ready (None: no KVM or toolchain).
    fn start() -> Option<Self> {
        Self::start_with("test=serial-echo")
    }

    /// [`ConsoleRun::start`] with this guest command line.
    fn start_with(cmdline: &str) -> Option<Self> {
        let elf = driver_guest_to_run()?;
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two descriptors it opened into the two ints; no name, no
        // settings.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened by openpty and are owned here alone.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let cooked = local_flags(master.as_raw_fd());
        // SAFETY: F_SETFL on a descriptor this test owns; no memory is involved.
        let rc = unsafe { libc::fcntl(master.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        assert_eq!(rc, 0, "fcntl: {}", std::io::Error::last_os_error());
        assert_eq!(cooked & CANONICAL, CANONICAL, "a new pty is not canonical");
        let mut child = Command::new(canto_bin())
            .args(["--kernel", elf.to_str().unwrap(), "--memory", "64M"])
            .args(["--serial", "stdio", "--no-sound", "--no-rng"])
            .args(["--cmdline", cmdline])
            .stdin(Stdio::from(slave))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start canto");
        let (stdout, out_reader) = collect(child.stdout.take().unwrap());
        let (stderr, err_reader) = collect(child.stderr.take().unwrap());
        let mut run = Self {
            child,
            master: std::fs::File::from(master),
            cooked,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
        };
        run.wait_for_stdout("DG serial-echo: ready");
        assert_eq!(
            local_flags(run.master.as_raw_fd()) & CANONICAL,
            0,
            "the terminal is not in raw mode while the guest runs"
        );
        Some(run)
    }

    fn text(bytes: &Mutex<Vec<u8>>) -> String {
        String::from_utf8_lossy(&bytes.lock().unwrap()).into_owned()
    }

    fn wait_until(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let start = Instant::now();
        while !done(self) {
            let exited = self.child.try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < PATIENCE,
                "waiting for {what}: canto {exited:?}\nstdout:\n{}\nstderr:\n{}",
                Self::text(&self.stdout),
                Self::text(&self.stderr)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for_stdout(&mut self, line: &str) {
        self.wait_until(line, |run| Self::text(&run.stdout).contains(line));
    }

    fn wait_for_stderr(&mut self, text: &str) {
        self.wait_until(text, |run| Self::text(&run.stderr).contains(text));
    }

    /// Writes `keys` to the terminal; panics if Canto stops taking them off it for
    /// [`PATIENCE`] (the master is non-blocking, so a test never hangs on a full pty).
    fn type_keys(&mut self, mut keys: &[u8]) {
        let start = Instant::now();
        while !keys.is_empty() {
            match self.master.write(keys) {
                Ok(n) => keys = &keys[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        start.elapsed() < PATIENCE,
                        "canto stopped reading the terminal with {} bytes left to type",
                        keys.len()
                    );
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("write to the pty: {e}"),
            }
        }
    }

    /// The bytes the guest reported receiving, in order (complete lines only: the last may be
    /// still arriving).
    fn guest_received(&self) -> Vec<u8> {
        Self::text(&self.stdout)
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .filter_map(|l| l.trim_end().strip_prefix("DG serial-echo: byte 0x"))
            .map(|hex| u8::from_str_radix(hex, 16).expect("a hex byte"))
            .collect()
    }

    /// The CPU time Canto has used so far (user + system), from /proc/PID/stat.
    fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // The fields after the command name, which is in parentheses: utime and stime are the
        // 14th and 15th fields of the line, the 12th and 13th after the name.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf only reads a system setting.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / per_second)
    }

    /// Waits for Canto to end (killing it after [`PATIENCE`]).
    fn wait_end(mut self) -> Ended {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if start.elapsed() > PATIENCE {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Ended {
            status,
            stdout: Self::text(&self.stdout),
            stderr: Self::text(&self.stderr),
            flags_after: local_flags(self.master.as_raw_fd()),
            cooked: self.cooked,
        }
    }
}

impl Drop for ConsoleRun {
    /// A failed test leaves no Canto behind.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Ended {
    /// Status 0, one stderr line saying Ctrl-A x ended it, the terminal back in its mode.
    fn check_ctrl_a_x(&self) {
        assert_eq!(
            self.status.and_then(|s| s.code()),
            Some(0),
            "{:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr
                .lines()
                .last()
                .is_some_and(|l| l.contains("Ctrl-A x")),
            "{}",
            self.stderr
        );
        assert_eq!(
            self.flags_after & CANONICAL,
            self.cooked & CANONICAL,
            "the terminal was left in raw mode"
        );
        assert!(!self.stdout.contains("DG PASS") && !self.stdout.contains("DG FAIL"));
    }
}

#[test]
fn ctrl_a_x_ends_the_vm_with_status_0_and_restores_the_terminal() {
    let Some(mut run) = ConsoleRun::start() else {
        return;
    };
    run.type_keys(b"ok");
    run.wait_until("the guest to get 'ok'", |r| r.guest_received() == b"ok");
    run.type_keys(b"\x01x");
    let ended = run.wait_end();
    ended.check_ctrl_a_x();
}

#[test]
fn ctrl_a_ctrl_a_delivers_one_ctrl_a() {
    let Some(mut run) = ConsoleRun::start() else {
        return;
    };
    // Ctrl-A Ctrl-A, then 'x' (a plain x, since the second Ctrl-A was sent), then an end marker.
    run.type_keys(b"a\x01\x01xz");
    run.wait_until("the guest to get the end marker", |r| {
        r.guest_received().ends_with(b"z")
    });
    assert_eq!(run.guest_received(), b"a\x01xz");
    run.type_keys(b"\x01x");
    run.wait_end().check_ctrl_a_x();
}

#[test]
fn ctrl_a_h_prints_the_keys() {
    let Some(mut run) = ConsoleRun::start() else {
        return;
    };
    run.type_keys(b"\x01h");
    run.wait_for_stderr("Ctrl-A Ctrl-A");
    let help = ConsoleRun::text(&run.stderr);
    for key in ["Ctrl-A x", "Ctrl-A Ctrl-A", "Ctrl-A h"] {
        assert!(help.contains(key), "{help}");
    }
    // The help keys reach the guest as nothing; the VM runs on.
    run.type_keys(b"z");
    run.wait_until("the guest to get 'z'", |r| r.guest_received() == b"z");
    run.type_keys(b"\x01x");
    run.wait_end().check_ctrl_a_x();
}

/// A paste much longer than the UART's 64-byte FIFO reaches the guest whole, in order, with no
/// further key pressed.
#[test]
fn a_long_paste_arrives_whole() {
    let Some(mut run) = ConsoleRun::start() else {
        return;
    };
    let paste: Vec<u8> = (0..1500u32).map(|i| b'a' + (i % 26) as u8).collect();
    run.type_keys(&paste);
    run.wait_until("the guest to get the whole paste", |r| {
        r.guest_received().len() >= paste.len()
    });
    assert_eq!(run.guest_received(), paste);
    run.type_keys(b"\x01x");
    run.wait_end().check_ctrl_a_x();
}

/// The guest never reads COM1: its 64-byte FIFO fills with typed-ahead input, and Canto still
/// reads the terminal (no busy loop on a readable stdin, bounded memory), so Ctrl-A x still
/// ends it.
#[test]
fn a_guest_that_never_reads_neither_blocks_ctrl_a_x_nor_makes_canto_spin() {
    let Some(mut run) = ConsoleRun::start_with("test=serial-echo read=0") else {
        return;
    };
    // More than the FIFO and the 4 KiB backlog together: the rest is dropped, with one warning.
    for _ in 0..8 {
        run.type_keys(&[b'a'; 1000]);
    }
    run.wait_for_stderr("not reading its serial console");
    let (cpu_before, wall) = (run.cpu_time(), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let used = run.cpu_time() - cpu_before;
    let elapsed = wall.elapsed();
    // Measured here: idle, about 1% of a core; a loop spinning on the readable stdin, 30-100%
    // depending on what else runs.
    assert!(
        used < elapsed / 10,
        "canto used {used:?} of CPU in {elapsed:?} while the guest's FIFO was full"
    );
    run.type_keys(b"\x01x");
    let ended = run.wait_end();
    ended.check_ctrl_a_x();
    assert_eq!(
        ended
            .stderr
            .matches("not reading its serial console")
            .count(),
        1,
        "{}",
        ended.stderr
    );
}

#[test]
fn help_lists_the_console_keys() {
    let out = Command::new(canto_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for key in ["Ctrl-A x", "Ctrl-A Ctrl-A", "Ctrl-A h"] {
        assert!(help.contains(key), "{help}");
    }
}
