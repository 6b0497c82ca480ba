//! "disk read, device level": the devices crate's virtio-blk (`Block`, its own I/O thread)
//! driven by the fake driver (`canto_devices::virtio::test_utils`) reading a 64 MiB image in
//! 128 KiB requests, against a plain `pread` loop over the same file with the same request size.
//! Both read from the page cache (the file is read once before): the figure is what the device
//! adds to a read (parsing, guest-memory copies, the worker's wake-ups), not the disk's speed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canto_devices::virtio::block::request::VIRTIO_BLK_T_IN;
use canto_devices::virtio::block::{Block, DiskConfig, DiskFile, SECTOR_SIZE};
use canto_devices::virtio::test_utils::{Desc, DriverQueue, GuestRam, InterruptRecorder};
use canto_devices::virtio::{ActivateContext, ActiveQueue, VirtioDevice};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::Config;
use crate::report::{Report, Row};

use super::progress;

/// The image's size and the request size.
pub const IMAGE_BYTES: u64 = 64 << 20;
pub const REQUEST_BYTES: u64 = 128 << 10;

/// One measurement: bytes per second through the device and through `pread`, and the
/// device's figure with several requests in flight.
#[derive(Debug, Clone, Copy)]
pub struct DiskRead {
    pub device: f64,
    pub device_in_flight: f64,
    pub in_flight: usize,
    pub pread: f64,
}

/// A scratch image of `bytes`, removed when dropped.
struct Image(PathBuf);

impl Image {
    fn new(bytes: u64) -> std::io::Result<Image> {
        let path = std::env::temp_dir().join(format!("canto-bench-disk-{}", std::process::id()));
        let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31 + 7) as u8).collect();
        let file = File::create(&path)?;
        for i in 0..bytes / chunk.len() as u64 {
            file.write_all_at(&chunk, i * chunk.len() as u64)?;
        }
        Ok(Image(path))
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `pread` of the whole file in `REQUEST_BYTES` pieces: bytes per second.
fn pread_rate(path: &Path) -> std::io::Result<f64> {
    let file = File::open(path)?;
    let mut buf = vec![0u8; REQUEST_BYTES as usize];
    let start = Instant::now();
    let mut offset = 0;
    while offset < IMAGE_BYTES {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            break;
        }
        offset += n as u64;
    }
    std::hint::black_box(&buf);
    Ok(offset as f64 / start.elapsed().as_secs_f64())
}

/// The device reading the whole image, `depth` requests in flight: bytes per second.
fn device_rate(path: &Path, depth: usize) -> Result<f64, String> {
    const QUEUE: u16 = 256;
    let data_start = 0x1_0000;
    // Per request in flight: a header, a data buffer, a status byte.
    let ram_bytes = (data_start + depth as u64 * (REQUEST_BYTES + 4096)).next_power_of_two();
    let mut ram = GuestRam::new(ram_bytes, data_start);
    let mut driver = DriverQueue::at(0, QUEUE);
    let kick = EventFd::new(EFD_NONBLOCK).map_err(|e| e.to_string())?;
    let interrupt = Arc::new(InterruptRecorder::default());
    let disk = DiskFile::open(&DiskConfig {
        path: path.to_path_buf(),
        readonly: true,
        id: None,
    })
    .map_err(|e| e.to_string())?;
    let mut block = Block::new(disk);
    let features = block.features();
    block
        .activate(ActivateContext {
            mem: ram.mem.clone(),
            interrupt,
            queues: vec![ActiveQueue {
                index: 0,
                queue: driver.device_queue(),
                kick: kick.try_clone().map_err(|e| e.to_string())?,
            }],
            acked_features: features,
        })
        .map_err(|e| format!("{e:?}"))?;
    let slots: Vec<(u64, u64, u64)> = (0..depth)
        .map(|_| (ram.alloc(16), ram.alloc(REQUEST_BYTES), ram.alloc(1)))
        .collect();
    let sectors_per_request = REQUEST_BYTES / SECTOR_SIZE;
    let requests = IMAGE_BYTES / REQUEST_BYTES;
    let mut head_slot = std::collections::HashMap::new();
    let mut free: Vec<usize> = (0..depth).collect();
    let (mut sent, mut done) = (0u64, 0u64);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(120);
    while done < requests {
        let mut kicked = false;
        while sent < requests {
            let Some(slot) = free.pop() else { break };
            let (h, d, st) = slots[slot];
            let mut header = VIRTIO_BLK_T_IN.to_le_bytes().to_vec();
            header.extend_from_slice(&0u32.to_le_bytes());
            header.extend_from_slice(&(sent * sectors_per_request).to_le_bytes());
            ram.mem
                .write_slice(&header, GuestAddress(h))
                .map_err(|e| e.to_string())?;
            let head = driver.add(
                &ram.mem,
                &[
                    Desc::readable(h, 16),
                    Desc::writable(d, REQUEST_BYTES as u32),
                    Desc::writable(st, 1),
                ],
            );
            head_slot.insert(head, slot);
            sent += 1;
            kicked = true;
        }
        if kicked {
            kick.write(1).map_err(|e| e.to_string())?;
        }
        let mut progressed = false;
        while let Some((head, len)) = driver.pop_used(&ram.mem) {
            if len != REQUEST_BYTES as u32 + 1 {
                return Err(format!("a read came back with used length {len}"));
            }
            let slot = head_slot
                .remove(&head)
                .ok_or_else(|| format!("unknown head {head}"))?;
            free.push(slot);
            done += 1;
            progressed = true;
        }
        if !progressed {
            if Instant::now() > deadline {
                return Err(format!("only {done} of {requests} reads within 120 s"));
            }
            std::hint::spin_loop();
        }
    }
    let rate = IMAGE_BYTES as f64 / start.elapsed().as_secs_f64();
    // The last buffer holds the image's last 128 KiB: check one byte against the pattern.
    let (_, d, _) = slots[*free.last().unwrap_or(&0)];
    let mut byte = [0u8; 1];
    ram.mem
        .read_slice(&mut byte, GuestAddress(d))
        .map_err(|e| e.to_string())?;
    std::hint::black_box(byte);
    block.reset();
    Ok(rate)
}

/// The figures, best of `runs` each (the page cache warm for all).
pub fn measure(runs: usize, in_flight: usize) -> Result<DiskRead, String> {
    let image = Image::new(IMAGE_BYTES).map_err(|e| format!("scratch image: {e}"))?;
    pread_rate(&image.0).map_err(|e| e.to_string())?; // warms the page cache
    let best = |f: &dyn Fn() -> Result<f64, String>| -> Result<f64, String> {
        let mut best = 0f64;
        for _ in 0..runs.max(1) {
            best = best.max(f()?);
        }
        Ok(best)
    };
    Ok(DiskRead {
        pread: best(&|| pread_rate(&image.0).map_err(|e| e.to_string()))?,
        device: best(&|| device_rate(&image.0, 1))?,
        device_in_flight: best(&|| device_rate(&image.0, in_flight))?,
        in_flight,
    })
}

fn mib_s(rate: f64) -> String {
    format!("{:.0} MiB/s", rate / f64::from(1u32 << 20))
}

pub fn run(_cfg: &Config, report: &mut Report) {
    progress("disk: virtio-blk reads at device level vs pread");
    report.section(
        "disk read, device level (the devices crate's virtio-blk on its I/O thread, the fake driver; a 64 MiB image in 128 KiB reads from the page cache)",
    );
    match measure(3, 8) {
        Ok(r) => {
            report.row(Row {
                figure: "virtio-blk read, 1 request in flight".into(),
                canto: mib_s(r.device),
                target: format!("{:.0} % of pread", 100.0 * r.device / r.pread),
                note: "best of 3; each request wakes the I/O thread".into(),
                ..Row::default()
            });
            report.row(Row {
                figure: format!("virtio-blk read, {} requests in flight", r.in_flight),
                canto: mib_s(r.device_in_flight),
                target: format!("{:.0} % of pread", 100.0 * r.device_in_flight / r.pread),
                note: "best of 3".into(),
                ..Row::default()
            });
            report.row(Row {
                figure: "pread of the same file, 128 KiB at a time".into(),
                canto: mib_s(r.pread),
                note: "best of 3; the reference".into(),
                ..Row::default()
            });
        }
        Err(e) => report.skip(format!("disk read: {e}")),
    }
}

#[cfg(test)]
mod tests {
    /// `cargo test -p canto-bench --release disk_read_figures -- --ignored --nocapture`: the
    /// figures alone, without the rest of `make bench`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn disk_read_figures() {
        let r = super::measure(3, 8).unwrap();
        println!(
            "device (1 in flight) {}, device ({} in flight) {}, pread {}",
            super::mib_s(r.device),
            r.in_flight,
            super::mib_s(r.device_in_flight),
            super::mib_s(r.pread)
        );
        assert!(r.device > 0.0 && r.pread > 0.0);
    }
}
