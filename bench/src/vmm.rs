//! Runs a VMM process (Canto or QEMU) and measures it from the outside: when each serial line
//! arrived (time since spawn), when it exited, its peak RSS (its ru_maxrss, taken by GNU time: see
//! [`run`]), and optionally its memory map and per-thread CPU sampled from /proc while it runs.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::util::{thread_cpu, threads};

/// One VMM invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub label: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    /// Sample /proc/PID/smaps at this interval (VMM overhead = RSS − guest RAM's RSS).
    pub sample_memory: Option<Duration>,
    /// Sample per-thread CPU at this interval.
    pub sample_threads: Option<Duration>,
    /// Guest RAM size in bytes (to find its mapping).
    pub guest_bytes: u64,
    /// Ends the run as a success when this file holds this text (Cloud Hypervisor's event
    /// monitor: it reboots the guest instead of exiting on its reset).
    pub stop_when_file: Option<(PathBuf, &'static str)>,
    /// A nonzero exit with an output line holding this text is the guest's own end, so a
    /// success: Firecracker exits 1 with "Unexpected exit reason on vcpu run: Shutdown" when the
    /// guest's triple fault (pvh-hello's fallback after its i8042 reset, for VMMs without an
    /// i8042) reaches its vCPU before it has acted on the reset, which races.
    pub ended_by_guest_line: Option<&'static str>,
}

/// The last memory sample taken before the process exited (that still showed the guest's RAM).
#[derive(Debug, Clone, Copy, Default)]
pub struct MemSample {
    pub rss_kb: u64,
    /// RSS of the guest-RAM mapping: the largest anonymous mapping of exactly the guest's size.
    pub guest_rss_kb: u64,
    pub found_guest: bool,
    pub at: Duration,
}

impl MemSample {
    pub fn overhead_kb(&self) -> u64 {
        self.rss_kb.saturating_sub(self.guest_rss_kb)
    }
}

/// What a run gave.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// Serial (stdout) lines with the time since spawn at which each was complete.
    pub lines: Vec<(Duration, String)>,
    pub stderr: String,
    pub exit: Duration,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub maxrss_kb: u64,
    pub cpu: Duration,
    pub memory: Option<MemSample>,
    /// Highest CPU seen per thread: (name, cpu).
    pub thread_cpu: Vec<(String, Duration)>,
}

impl RunResult {
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }

    /// The time of the first line for which `pred` holds.
    pub fn first(&self, pred: impl Fn(&str) -> bool) -> Option<Duration> {
        self.lines.iter().find(|(_, l)| pred(l)).map(|(t, _)| *t)
    }

    pub fn find_line(&self, pred: impl Fn(&str) -> bool) -> Option<&str> {
        self.lines
            .iter()
            .find(|(_, l)| pred(l))
            .map(|(_, l)| l.as_str())
    }

    /// Why the run is unusable, for a message.
    pub fn failure(&self) -> String {
        let tail: Vec<&str> = self
            .lines
            .iter()
            .rev()
            .take(5)
            .map(|(_, l)| l.as_str())
            .collect();
        let err: Vec<&str> = self.stderr.lines().rev().take(5).collect();
        format!(
            "exit {:?}{}; last serial lines: {:?}; stderr: {:?}",
            self.exit_code,
            if self.timed_out { " (timed out)" } else { "" },
            tail.into_iter().rev().collect::<Vec<_>>(),
            err.into_iter().rev().collect::<Vec<_>>()
        )
    }
}

/// Strips terminal escape sequences and carriage returns from a serial line.
fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI: ESC [ params final-byte; other escapes: ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// Reads /proc/PID/smaps: total RSS and the guest-RAM mapping's RSS.
pub fn smaps_sample(pid: i32, guest_bytes: u64) -> Option<MemSample> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    Some(parse_smaps(&text, guest_bytes))
}

/// How much larger than the guest's RAM its mapping may show in smaps: the kernel merges the RAM
/// with an adjacent anonymous mapping of the same protection, e.g. a glibc malloc arena's heap,
/// which grows up to 64 MiB (its reserve).
const GUEST_MAPPING_SLACK_KB: u64 = 64 << 10;

/// Parses smaps text: total RSS, and the RSS of the largest-RSS anonymous mapping whose size is
/// the guest's RAM (`guest_bytes`), or up to [`GUEST_MAPPING_SLACK_KB`] more when merged with a
/// neighbour.
pub fn parse_smaps(text: &str, guest_bytes: u64) -> MemSample {
    let guest_kb = guest_bytes / 1024;
    let mut sample = MemSample::default();
    // The mapping being read: (anonymous, size in kB).
    let mut current: Option<(bool, u64)> = None;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            // A mapping header: range perms offset dev inode [path]
            let rest: Vec<&str> = fields.collect();
            let inode = rest.get(3).copied().unwrap_or("0");
            let path = rest.get(4).copied().unwrap_or("");
            let anonymous = inode == "0" && (path.is_empty() || path.starts_with("[anon"));
            current = Some((anonymous, 0));
            continue;
        }
        let value: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match first {
            "Size:" => {
                if let Some(c) = current.as_mut() {
                    c.1 = value;
                }
            }
            "Rss:" => {
                sample.rss_kb += value;
                if let Some((true, size)) = current {
                    let is_guest_size =
                        size >= guest_kb && size <= guest_kb + GUEST_MAPPING_SLACK_KB;
                    if is_guest_size && value >= sample.guest_rss_kb {
                        sample.guest_rss_kb = value;
                        sample.found_guest = true;
                    }
                }
            }
            _ => {}
        }
    }
    sample
}

/// GNU time: the VMM runs as its child, and it writes the VMM's own ru_maxrss to a file.
const GNU_TIME: &str = "/usr/bin/time";

/// The VMM's pid under GNU time (its only child), once it has forked.
fn only_child(pid: i32) -> Option<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The peak RSS GNU time wrote (its last line: "%M"; a line about the exit status may come first).
fn time_maxrss_kb(file: &Path) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
}

/// Runs the invocation to its end (or its timeout, then kills it).
///
/// The peak RSS is not the harness's own wait4 of the VMM: a process's ru_maxrss keeps the peak
/// of the memory it replaced at exec, and a child the harness spawns (posix_spawn, sharing the
/// harness's memory until exec) starts with the harness's peak, ~10 MiB after the audio sections,
/// which then hid every VMM smaller than that. GNU time, a small process, forks the VMM and
/// reports its ru_maxrss alone; its process group is what a stop or a timeout kills.
pub fn run(inv: &Invocation) -> RunResult {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    // Without GNU time (`make bench` installs it) the figure is the inflated ru_maxrss.
    let wrapped = Path::new(GNU_TIME).is_file();
    let rss_file = std::env::temp_dir().join(format!(
        "canto-bench-maxrss-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    ));
    let mut command = if wrapped {
        let mut c = Command::new(GNU_TIME);
        c.args(["-f", "%M", "-o"])
            .arg(&rss_file)
            .arg("--")
            .arg(&inv.program);
        c
    } else {
        Command::new(&inv.program)
    };
    let start = Instant::now();
    let mut child = match command
        .args(&inv.args)
        .envs(inv.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            return RunResult {
                stderr: format!("cannot start {}: {e}", inv.program.display()),
                ..RunResult::default()
            }
        }
    };
    let pid = child.id() as i32;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut pending = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let now = start.elapsed();
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            lines.push((now, clean(&pending)));
                            pending.clear();
                        } else {
                            pending.push(b);
                        }
                    }
                }
            }
        }
        if !pending.is_empty() {
            lines.push((start.elapsed(), clean(&pending)));
        }
        lines
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 fills it.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child; status and usage are valid out-pointers.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let _ = done_tx.send((start.elapsed(), r, status, usage));
    });
    let mut result = RunResult::default();
    let mut per_thread: HashMap<i32, (String, Duration)> = HashMap::new();
    let mut next_mem = Instant::now();
    let mut next_threads = Instant::now();
    let mut killed = false;
    let mut stopped_on_event = false;
    let mut vmm_pid = (!wrapped).then_some(pid);
    let (exit, r, status, usage) = loop {
        let tick = Duration::from_millis(2);
        match done_rx.recv_timeout(tick) {
            Ok(done) => break done,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // SAFETY: libc::rusage is plain integers and timevals; all-zero is a valid value.
                break (start.elapsed(), -1, 0, unsafe { std::mem::zeroed() });
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let now = Instant::now();
        if vmm_pid.is_none() {
            vmm_pid = only_child(pid);
        }
        if let Some((file, text)) = &inv.stop_when_file {
            if !killed && std::fs::read_to_string(file).is_ok_and(|t| t.contains(text)) {
                result.exit = start.elapsed();
                stopped_on_event = true;
                // SAFETY: signals our own child's process group (the child, not reaped yet, leads it).
                unsafe { libc::kill(-pid, libc::SIGKILL) };
                killed = true;
            }
        }
        if !killed && start.elapsed() > inv.timeout {
            // SAFETY: signals our own child's process group (the child, not reaped yet since its
            // waiter has not reported, leads it).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            killed = true;
        }
        if let (Some(every), Some(vmm_pid)) = (inv.sample_memory, vmm_pid) {
            if now >= next_mem {
                // The last sample that still shows the guest's RAM: a VMM unmaps it while it
                // exits, and a sample taken then would miss it.
                if let Some(mut sample) = smaps_sample(vmm_pid, inv.guest_bytes) {
                    let had_guest = result.memory.is_some_and(|m| m.found_guest);
                    if sample.rss_kb > 0 && (sample.found_guest || !had_guest) {
                        sample.at = start.elapsed();
                        result.memory = Some(sample);
                    }
                }
                next_mem = Instant::now() + every;
            }
        }
        if let (Some(every), Some(vmm_pid)) = (inv.sample_threads, vmm_pid) {
            if now >= next_threads {
                for (tid, name) in threads(vmm_pid) {
                    if let Some(cpu) = thread_cpu(vmm_pid, tid) {
                        let entry = per_thread.entry(tid).or_insert((name.clone(), cpu));
                        entry.0 = name;
                        entry.1 = entry.1.max(cpu);
                    }
                }
                next_threads = Instant::now() + every;
            }
        }
    };
    drop(child);
    if !stopped_on_event {
        result.exit = exit;
    }
    result.timed_out = killed && !stopped_on_event;
    if r == pid {
        if libc::WIFEXITED(status) {
            result.exit_code = Some(libc::WEXITSTATUS(status));
        }
        if stopped_on_event {
            result.exit_code = Some(0);
        }
        result.maxrss_kb = if wrapped {
            time_maxrss_kb(&rss_file).unwrap_or(0)
        } else {
            usage.ru_maxrss as u64
        };
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        result.cpu = tv(usage.ru_utime) + tv(usage.ru_stime);
    }
    let _ = std::fs::remove_file(&rss_file);
    result.lines = out_reader.join().unwrap_or_default();
    result.stderr = err_reader.join().unwrap_or_default();
    if let Some(text) = inv.ended_by_guest_line {
        let said =
            result.lines.iter().any(|(_, l)| l.contains(text)) || result.stderr.contains(text);
        if said && result.exit_code.is_some_and(|c| c != 0) {
            result.exit_code = Some(0);
        }
    }
    let mut threads: Vec<(String, Duration)> = per_thread.into_values().collect();
    threads.sort();
    result.thread_cpu = threads;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_finds_the_guest_mapping() {
        let text = "\
55d0c0a00000-55d0c0c00000 r-xp 00000000 fd:01 1234    /usr/bin/canto
Size:               2048 kB
Rss:                1500 kB
7f0000000000-7f0004000000 rw-p 00000000 00:00 0
Size:              65536 kB
Rss:                 900 kB
7f0010000000-7f0010100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                 300 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]
Size:                132 kB
Rss:                  20 kB
";
        let s = parse_smaps(text, 64 << 20);
        assert!(s.found_guest);
        assert_eq!(s.rss_kb, 1500 + 900 + 300 + 20);
        assert_eq!(s.guest_rss_kb, 900);
        assert_eq!(s.overhead_kb(), 1820);
        assert!(!parse_smaps(text, 128 << 20).found_guest);
    }

    /// Today's canto (256 MiB guest, vmlinux, 4 s in): the guest RAM is merged with the glibc
    /// malloc arena heap that follows it (0x21000 bytes, then the arena's `---p` reserve), so the
    /// mapping is 132 kB larger than the RAM.
    #[test]
    fn smaps_finds_the_guest_mapping_merged_with_a_malloc_arena() {
        let text = "\
7f2584021000-7f2588000000 ---p 00000000 00:00 0 
Size:              65404 kB
Rss:                   0 kB
7f258c000000-7f259c021000 rw-p 00000000 00:00 0 
Size:             262276 kB
KernelPageSize:        4 kB
MMUPageSize:           4 kB
Rss:               15980 kB
Anonymous:         15980 kB
AnonHugePages:         0 kB
7f259c021000-7f25a0000000 ---p 00000000 00:00 0 
Size:              65404 kB
Rss:                   0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]
Size:                132 kB
Rss:                  20 kB
";
        let s = parse_smaps(text, 256 << 20);
        assert!(s.found_guest);
        assert_eq!(s.guest_rss_kb, 15980);
        assert_eq!(s.overhead_kb(), 20);
        // A mapping far larger than the RAM is not the RAM.
        assert!(!parse_smaps(text, 128 << 20).found_guest);
    }

    #[test]
    fn serial_lines_lose_escapes_and_carriage_returns() {
        assert_eq!(
            clean(b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)\r"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(clean(b"DG PASS hello"), "DG PASS hello");
    }
}
