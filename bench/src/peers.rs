//! Running a Linux guest's playback on several implementations of virtio-snd and measuring each
//! from the outside, the same way: the VMM (and a vhost-user daemon, when there is one) sampled
//! from /proc, and the sink's output file read while it grows (peers_audio.rs uses it).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process to start: program, arguments, environment.
#[derive(Debug, Clone)]
pub struct Proc {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Proc {
    pub fn new(program: impl Into<PathBuf>, args: &[String]) -> Proc {
        Proc {
            program: program.into(),
            args: args.to_vec(),
            env: Vec::new(),
        }
    }

    fn spawn(&self, stdout: Stdio) -> std::io::Result<Child> {
        Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
    }
}

/// One playback: the VMM, what runs beside it, and where the audio lands.
pub struct Playback {
    pub label: String,
    pub vmm: Proc,
    /// A vhost-user device daemon, started first; `daemon_ready` is the path that exists once it
    /// listens (its socket).
    pub daemon: Option<(Proc, PathBuf)>,
    /// A recorder of the sink (the PipeWire monitor), started before the VMM and stopped with
    /// SIGINT after it exits, so it finishes its file.
    pub recorder: Option<Proc>,
    /// The WAV file the audio ends up in (written by the VMM, or by the recorder).
    pub sink_wav: PathBuf,
    /// Threads that run the guest (their CPU, under kvm_pvm, is the interpreted guest).
    pub is_vcpu_thread: fn(&str) -> bool,
    pub timeout: Duration,
}

/// Counters of one process, summed over its threads (each thread's last value, so a thread that
/// ended still counts).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcCounters {
    /// CPU of the threads that do not run the guest, seconds.
    pub cpu_s: f64,
    /// CPU of the vCPU threads, seconds.
    pub vcpu_cpu_s: f64,
    /// Voluntary + involuntary context switches, all threads.
    pub switches: u64,
    /// The same without the vCPU threads.
    pub switches_no_vcpu: u64,
}

impl std::ops::Sub for ProcCounters {
    type Output = ProcCounters;
    fn sub(self, o: ProcCounters) -> ProcCounters {
        ProcCounters {
            cpu_s: self.cpu_s - o.cpu_s,
            vcpu_cpu_s: self.vcpu_cpu_s - o.vcpu_cpu_s,
            switches: self.switches.saturating_sub(o.switches),
            switches_no_vcpu: self.switches_no_vcpu.saturating_sub(o.switches_no_vcpu),
        }
    }
}

impl std::ops::Add for ProcCounters {
    type Output = ProcCounters;
    fn add(self, o: ProcCounters) -> ProcCounters {
        ProcCounters {
            cpu_s: self.cpu_s + o.cpu_s,
            vcpu_cpu_s: self.vcpu_cpu_s + o.vcpu_cpu_s,
            switches: self.switches + o.switches,
            switches_no_vcpu: self.switches_no_vcpu + o.switches_no_vcpu,
        }
    }
}

/// Per-thread values of one process: tid -> (name, cpu s, switches).
#[derive(Default)]
struct ThreadTable(HashMap<i32, (String, f64, u64)>);

impl ThreadTable {
    fn sample(&mut self, pid: i32) {
        for (tid, name) in crate::util::threads(pid) {
            let cpu = crate::util::thread_cpu(pid, tid).map(|d| d.as_secs_f64());
            let switches = thread_switches(pid, tid);
            if let (Some(cpu), Some(switches)) = (cpu, switches) {
                self.0.insert(tid, (name, cpu, switches));
            }
        }
    }

    fn counters(&self, is_vcpu: fn(&str) -> bool) -> ProcCounters {
        let mut c = ProcCounters::default();
        for (name, cpu, switches) in self.0.values() {
            c.switches += switches;
            if is_vcpu(name) {
                c.vcpu_cpu_s += cpu;
            } else {
                c.cpu_s += cpu;
                c.switches_no_vcpu += switches;
            }
        }
        c
    }
}

/// voluntary_ctxt_switches + nonvoluntary_ctxt_switches of a thread.
fn thread_switches(pid: i32, tid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some(field("voluntary_ctxt_switches:")? + field("nonvoluntary_ctxt_switches:")?)
}

/// A WAV file read while it is written: where its samples start, how many frames are in, and
/// when the first and the last non-silent frame arrived.
#[derive(Default)]
struct GrowingWav {
    data_offset: Option<u64>,
    read_to: u64,
    frames: u64,
    first_sound: Option<(Duration, u64)>,
    last_sound: Option<(Duration, u64)>,
    /// Frames in the file after the polls that saw the first and the last sound: a writer that
    /// writes whole periods lands a period at once, so the pacing compares the frames that
    /// arrived between those polls with the time between them.
    frames_at_first: u64,
    frames_at_last: u64,
}

/// Where the samples of a RIFF/WAVE file start: after the `data` chunk header. Chunk sizes are
/// not trusted (a writer that has not finished leaves them 0).
pub fn wav_data_offset(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize;
        if id == b"data" {
            return Some(at + 8);
        }
        at += 8 + size + (size & 1);
    }
    None
}

impl GrowingWav {
    fn poll(&mut self, path: &Path, now: Duration) {
        let Ok(mut file) = std::fs::File::open(path) else {
            return;
        };
        if self.data_offset.is_none() {
            let mut head = vec![0u8; 4096];
            let n = file.read(&mut head).unwrap_or(0);
            match wav_data_offset(&head[..n]) {
                Some(off) => {
                    self.data_offset = Some(off as u64);
                    self.read_to = off as u64;
                }
                None => return,
            }
        }
        if file.seek(SeekFrom::Start(self.read_to)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let _ = file.read_to_end(&mut buf);
        let whole = buf.len() / 4 * 4;
        let had_sound = self.first_sound.is_some();
        let last_before = self.last_sound;
        for frame in buf[..whole].chunks_exact(4) {
            if frame != [0; 4] {
                if self.first_sound.is_none() {
                    self.first_sound = Some((now, self.frames));
                }
                self.last_sound = Some((now, self.frames));
            }
            self.frames += 1;
        }
        self.read_to += whole as u64;
        if !had_sound && self.first_sound.is_some() {
            self.frames_at_first = self.frames;
        }
        if self.last_sound != last_before {
            self.frames_at_last = self.frames;
        }
    }
}

/// A sample of the run: time since the VMM's spawn, the counters of the VMM and the daemon, and
/// the frames in the sink so far.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at: Duration,
    pub vmm: ProcCounters,
    pub daemon: ProcCounters,
    pub frames: u64,
}

/// What a playback gave.
#[derive(Default)]
pub struct PlaybackResult {
    pub lines: Vec<(Duration, String)>,
    pub stderr: String,
    pub daemon_stderr: String,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub error: Option<String>,
    pub samples: Vec<Sample>,
    /// (arrival time, frame index) of the first and the last non-silent frame in the sink.
    pub first_sound: Option<(Duration, u64)>,
    pub last_sound: Option<(Duration, u64)>,
    /// Frames in the sink's file at the polls that saw the first and the last sound.
    pub frames_at_first: u64,
    pub frames_at_last: u64,
}

impl PlaybackResult {
    /// The sample nearest to `t`.
    pub fn sample_at(&self, t: Duration) -> Option<&Sample> {
        self.samples
            .iter()
            .min_by_key(|s| (s.at.as_nanos() as i128 - t.as_nanos() as i128).unsigned_abs())
    }

    pub fn failure(&self) -> String {
        let tail: Vec<&str> = self
            .lines
            .iter()
            .rev()
            .take(4)
            .map(|(_, l)| l.as_str())
            .collect();
        let err: Vec<&str> = self.stderr.lines().rev().take(4).collect();
        format!(
            "{}exit {:?}{}; last serial lines: {:?}; stderr: {:?}; daemon: {:?}",
            self.error
                .as_ref()
                .map(|e| format!("{e}; "))
                .unwrap_or_default(),
            self.exit_code,
            if self.timed_out { " (timed out)" } else { "" },
            tail.into_iter().rev().collect::<Vec<_>>(),
            err.into_iter().rev().collect::<Vec<_>>(),
            self.daemon_stderr.lines().rev().take(3).collect::<Vec<_>>()
        )
    }
}

fn stop(child: &mut Child, signal: i32) {
    // SAFETY: signals our own child, not yet reaped (we wait for it below).
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn read_all(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Runs one playback to the VMM's exit, sampling every `every`.
pub fn run(p: &Playback, every: Duration) -> PlaybackResult {
    let mut result = PlaybackResult::default();
    let _ = std::fs::remove_file(&p.sink_wav);
    let mut daemon = None;
    let mut daemon_err = None;
    if let Some((proc_, ready)) = &p.daemon {
        let _ = std::fs::remove_file(ready);
        match proc_.spawn(Stdio::null()) {
            Ok(mut child) => {
                daemon_err = Some(read_all(child.stderr.take()));
                let deadline = Instant::now() + Duration::from_secs(10);
                while !ready.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                daemon = Some(child);
                if !ready.exists() {
                    result.error = Some(format!(
                        "{} never created {}",
                        proc_.program.display(),
                        ready.display()
                    ));
                }
            }
            Err(e) => result.error = Some(format!("cannot start {}: {e}", proc_.program.display())),
        }
    }
    let mut recorder = None;
    if result.error.is_none() {
        if let Some(rec) = &p.recorder {
            match rec.spawn(Stdio::null()) {
                Ok(child) => recorder = Some(child),
                Err(e) => {
                    result.error = Some(format!("cannot start {}: {e}", rec.program.display()))
                }
            }
            // Let the recorder link to the sink before the guest plays.
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    if result.error.is_none() {
        run_vmm(
            p,
            every,
            daemon.as_ref().map(|d| d.id() as i32),
            &mut result,
        );
    }
    if let Some(mut rec) = recorder {
        stop(&mut rec, libc::SIGINT);
    }
    if let Some(mut d) = daemon {
        stop(&mut d, libc::SIGTERM);
    }
    if let Some(h) = daemon_err {
        result.daemon_stderr = h.join().unwrap_or_default();
    }
    result
}

fn run_vmm(p: &Playback, every: Duration, daemon_pid: Option<i32>, result: &mut PlaybackResult) {
    let start = Instant::now();
    let mut child = match p.vmm.spawn(Stdio::piped()) {
        Ok(c) => c,
        Err(e) => {
            result.error = Some(format!("cannot start {}: {e}", p.vmm.program.display()));
            return;
        }
    };
    let pid = child.id() as i32;
    let stdout = child.stdout.take();
    let err = read_all(child.stderr.take());
    let out = std::thread::spawn(move || {
        let mut lines = Vec::new();
        if let Some(stdout) = stdout {
            let mut reader = std::io::BufReader::new(stdout);
            let mut line = Vec::new();
            while let Ok(n) = std::io::BufRead::read_until(&mut reader, b'\n', &mut line) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&line).replace('\r', "");
                lines.push((start.elapsed(), text.trim_end().to_string()));
                line.clear();
            }
        }
        lines
    });
    let mut vmm_threads = ThreadTable::default();
    let mut daemon_threads = ThreadTable::default();
    let mut wav = GrowingWav::default();
    let status = loop {
        let now = start.elapsed();
        vmm_threads.sample(pid);
        if let Some(d) = daemon_pid {
            daemon_threads.sample(d);
        }
        wav.poll(&p.sink_wav, now);
        result.samples.push(Sample {
            at: now,
            vmm: vmm_threads.counters(p.is_vcpu_thread),
            daemon: daemon_threads.counters(|_| false),
            frames: wav.frames,
        });
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if now > p.timeout {
            result.timed_out = true;
            let _ = child.kill();
            break child.wait().ok();
        }
        std::thread::sleep(every);
    };
    wav.poll(&p.sink_wav, start.elapsed());
    result.exit_code = status.and_then(|s| s.code());
    result.lines = out.join().unwrap_or_default();
    result.stderr = err.join().unwrap_or_default();
    result.first_sound = wav.first_sound;
    result.last_sound = wav.last_sound;
    result.frames_at_first = wav.frames_at_first;
    result.frames_at_last = wav.frames_at_last;
}

/// The samples (S16 interleaved stereo frames as u32) of a WAV file.
pub fn wav_frames(path: &Path) -> Option<Vec<u32>> {
    let bytes = std::fs::read(path).ok()?;
    let off = wav_data_offset(&bytes)?;
    Some(
        bytes[off..]
            .chunks_exact(4)
            .map(|f| u32::from_le_bytes([f[0], f[1], f[2], f[3]]))
            .collect(),
    )
}

/// How a capture compares with the clip it should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exactness {
    pub clip_frames: usize,
    /// Clip frames missing (or wrong) before the first clip frame found in place.
    pub lost_start: usize,
    /// Clip frames missing (or wrong) after the last clip frame found in place.
    pub lost_end: usize,
    /// Clip frames between those that differ.
    pub wrong_inside: usize,
    /// Capture frames before the clip's first frame (silence or anything else).
    pub added_start: usize,
    /// Capture frames after the clip's last frame.
    pub added_end: usize,
}

/// Aligns `capture` on `clip` by the first 32 frames from the clip's first non-silent frame, then
/// compares frame by frame. None: the clip is not in the capture.
pub fn exactness(clip: &[u32], capture: &[u32]) -> Option<Exactness> {
    const KEY: usize = 32;
    let k = clip.iter().position(|&f| f != 0)?;
    let key = clip.get(k..k + KEY)?;
    let at = capture.windows(KEY).position(|w| w == key)?;
    let offset = at as isize - k as isize;
    let in_place = |i: usize| {
        let j = i as isize + offset;
        j >= 0 && (j as usize) < capture.len() && capture[j as usize] == clip[i]
    };
    let first = (0..clip.len()).find(|&i| in_place(i))?;
    let last = (0..clip.len()).rev().find(|&i| in_place(i))?;
    let wrong_inside = (first..=last).filter(|&i| !in_place(i)).count();
    let clip_start = offset.max(0) as usize;
    let clip_end = (clip.len() as isize + offset).max(0) as usize;
    Some(Exactness {
        clip_frames: clip.len(),
        lost_start: first,
        lost_end: clip.len() - 1 - last,
        wrong_inside,
        added_start: clip_start.min(capture.len()),
        added_end: capture.len().saturating_sub(clip_end),
    })
}

/// A capture compared with its clip 10 ms chunk by chunk, for a sink that does not hold one
/// contiguous copy: how many of the clip's (non-silent) chunks are in it exactly and in order,
/// and the frames inserted or dropped between consecutive chunks found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Chunks {
    pub total: usize,
    pub found: usize,
    pub inserted: u64,
    pub dropped: u64,
}

pub fn chunk_alignment(clip: &[u32], capture: &[u32], chunk: usize) -> Chunks {
    let mut c = Chunks::default();
    // Where the search for the next chunk starts, and the last chunk found: (index, position).
    let mut from = 0usize;
    let mut last: Option<(usize, usize)> = None;
    for (i, key) in clip.chunks_exact(chunk).enumerate() {
        if key.iter().all(|&f| f == 0) {
            continue;
        }
        c.total += 1;
        // A lost chunk is looked for over 5 s past the last one found, not the whole capture.
        let end = capture.len().min(from + 5 * 48_000 + chunk);
        let Some(at) = capture
            .get(from..end)
            .and_then(|hay| hay.windows(chunk).position(|w| w == key))
            .map(|p| p + from)
        else {
            continue;
        };
        c.found += 1;
        if let Some((li, lp)) = last {
            let expected = lp + (i - li) * chunk;
            if at > expected {
                c.inserted += (at - expected) as u64;
            } else {
                c.dropped += (expected - at) as u64;
            }
        }
        last = Some((i, at));
        from = at + chunk;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip() -> Vec<u32> {
        (1..=1000u32).map(|i| i * 7919).collect()
    }

    #[test]
    fn an_exact_capture_with_silence_around_it() {
        let clip = clip();
        let mut cap = vec![0; 50];
        cap.extend(&clip);
        cap.extend([0; 20]);
        let e = exactness(&clip, &cap).unwrap();
        assert_eq!(
            e,
            Exactness {
                clip_frames: 1000,
                lost_start: 0,
                lost_end: 0,
                wrong_inside: 0,
                added_start: 50,
                added_end: 20
            }
        );
    }

    #[test]
    fn lost_frames_at_the_end_and_a_wrong_one_inside() {
        let clip = clip();
        let mut cap = clip[..850].to_vec();
        cap[400] = 1;
        let e = exactness(&clip, &cap).unwrap();
        assert_eq!((e.lost_start, e.lost_end, e.wrong_inside), (0, 150, 1));
        assert_eq!((e.added_start, e.added_end), (0, 0));
        assert!(exactness(&clip, &[0; 100]).is_none());
    }

    #[test]
    fn chunks_count_frames_inserted_and_dropped() {
        let clip: Vec<u32> = (1..=1000u32).collect();
        let mut cap = vec![0; 7];
        cap.extend(&clip[..300]);
        cap.extend([9; 5]); // 5 frames inserted
        cap.extend(&clip[300..700]);
        cap.extend(&clip[703..]); // 3 frames dropped
        let c = chunk_alignment(&clip, &cap, 100);
        assert_eq!(c.total, 10);
        // The chunk holding the drop is not there exactly.
        assert_eq!(c.found, 9);
        assert_eq!((c.inserted, c.dropped), (5, 3));
        let exact = chunk_alignment(&clip, &clip, 100);
        assert_eq!((exact.found, exact.inserted, exact.dropped), (10, 0, 0));
    }

    #[test]
    fn the_data_chunk_is_found_after_other_chunks() {
        let mut wav = b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0".to_vec();
        wav.extend([0u8; 16]);
        wav.extend(b"LIST\x03\0\0\0abc\0");
        wav.extend(b"data\0\0\0\0");
        assert_eq!(wav_data_offset(&wav), Some(wav.len()));
        assert_eq!(wav_data_offset(b"RIFX"), None);
    }
}
