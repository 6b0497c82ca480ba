//! The host side of a disk: the image file, opened and checked once at start-up, and the I/O the
//! request handler does on it (positional reads and writes of the worker's buffer, fdatasync,
//! hole punching). Only the disk's worker thread calls the I/O functions.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The most bytes one host I/O call moves, the size of the worker's buffer. Data goes file ->
/// buffer -> guest (and back) a chunk at a time: guest memory is touched only in copies under the
/// queue's DMA guard, never during a host call, and between chunks the worker checks whether the
/// device is being reset.
pub const IO_CHUNK: usize = 1 << 20;

/// The unit of the virtio-blk protocol: sectors are always 512 bytes (VIRTIO 1.2 §5.2.6).
pub const SECTOR_SIZE: u64 = 512;

/// How a disk is given to the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// The image file (or block device).
    pub path: PathBuf,
    /// The guest may not write it (VIRTIO_BLK_F_RO); the file is opened read-only.
    pub readonly: bool,
    /// The serial the guest reads with VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    pub id: Option<String>,
}

/// The most bytes of a GET_ID answer (VIRTIO 1.2 §5.2.6: `VIRTIO_BLK_ID_BYTES`).
pub const ID_BYTES: usize = 20;

/// Why a disk cannot be used: each is one line naming the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk '{0}': no such file")]
    Missing(PathBuf),
    #[error("disk '{path}': cannot open it {how}: {reason}")]
    Open {
        path: PathBuf,
        how: &'static str,
        reason: String,
    },
    #[error("disk '{0}' is a directory: give a disk image file")]
    Directory(PathBuf),
    #[error("disk '{0}' is neither a regular file nor a block device")]
    NotAFile(PathBuf),
    #[error("disk '{path}': its size, {size} bytes, is not a multiple of 512 bytes (resize it, e.g. truncate -s 1G)")]
    Size { path: PathBuf, size: u64 },
    #[error("disk '{path}': the same file as disk '{first}'; a file may be given twice only if every use has readonly=on")]
    Duplicate { path: PathBuf, first: PathBuf },
    #[error("disk '{path}': id '{id}' is longer than 20 bytes")]
    IdTooLong { path: PathBuf, id: String },
}

/// An open disk image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    /// The size in bytes at start-up, a multiple of [`SECTOR_SIZE`].
    size: u64,
    readonly: bool,
    /// The GET_ID answer, zero-padded.
    id: [u8; ID_BYTES],
    /// (device, inode), to refuse the same file twice.
    identity: (u64, u64),
}

fn reason(e: &io::Error) -> String {
    // `io::Error`'s Display adds " (os error N)"; the user gets the plain sentence.
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

impl DiskFile {
    /// Opens and checks one disk: it exists, is a regular file or block device, can be opened
    /// (read-write unless `readonly`), and its size is a whole number of sectors.
    pub fn open(config: &DiskConfig) -> Result<DiskFile, DiskError> {
        let path = config.path.clone();
        let mut id = [0u8; ID_BYTES];
        if let Some(name) = &config.id {
            if name.len() > ID_BYTES {
                return Err(DiskError::IdTooLong {
                    path,
                    id: name.clone(),
                });
            }
            id[..name.len()].copy_from_slice(name.as_bytes());
        }
        let meta = match std::fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(DiskError::Missing(path)),
            Err(e) => {
                return Err(DiskError::Open {
                    path,
                    how: "(stat)",
                    reason: reason(&e),
                })
            }
        };
        if meta.is_dir() {
            return Err(DiskError::Directory(path));
        }
        if !meta.is_file() && !meta.file_type().is_block_device() {
            return Err(DiskError::NotAFile(path));
        }
        let how = if config.readonly {
            "for reading"
        } else {
            "for reading and writing (or give readonly=on)"
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!config.readonly)
            .open(&path)
            .map_err(|e| DiskError::Open {
                path: path.clone(),
                how,
                reason: reason(&e),
            })?;
        let size = file_size(&file).map_err(|e| DiskError::Open {
            path: path.clone(),
            how: "(size)",
            reason: reason(&e),
        })?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(DiskError::Size { path, size });
        }
        Ok(DiskFile {
            file,
            path,
            size,
            readonly: config.readonly,
            id,
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// Opens every disk of a VM: [`DiskFile::open`] each, and no file twice unless every use of
    /// it is read-only (two writers, or a writer and a reader, would see each other's writes
    /// behind their caches).
    pub fn open_all(configs: &[DiskConfig]) -> Result<Vec<DiskFile>, DiskError> {
        let mut disks: Vec<DiskFile> = Vec::with_capacity(configs.len());
        for config in configs {
            let disk = DiskFile::open(config)?;
            if let Some(first) = disks
                .iter()
                .find(|d| d.identity == disk.identity && !(d.readonly && disk.readonly))
            {
                return Err(DiskError::Duplicate {
                    path: disk.path,
                    first: first.path.clone(),
                });
            }
            disks.push(disk);
        }
        Ok(disks)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The size in sectors (the `capacity` field of the configuration space).
    pub fn sectors(&self) -> u64 {
        self.size / SECTOR_SIZE
    }

    pub fn readonly(&self) -> bool {
        self.readonly
    }

    pub fn id(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Reads `buf.len()` bytes at `offset` (a short file is an error).
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, buf, offset)
    }

    /// Data written so far reaches the file's storage (VIRTIO_BLK_T_FLUSH).
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Deallocates `[offset, offset + len)` (DISCARD): a hint, so a file system that cannot
    /// punch holes is not an error.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            other => other,
        }
    }

    /// Makes `[offset, offset + len)` read as zeros (WRITE_ZEROES), deallocating it if `unmap`:
    /// a zero range or a punched hole, or zeros written where the file system has neither.
    pub fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        stop: &AtomicBool,
    ) -> io::Result<()> {
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let modes = if unmap {
            [
                keep | libc::FALLOC_FL_PUNCH_HOLE,
                keep | libc::FALLOC_FL_ZERO_RANGE,
            ]
        } else {
            [
                keep | libc::FALLOC_FL_ZERO_RANGE,
                keep | libc::FALLOC_FL_PUNCH_HOLE,
            ]
        };
        for mode in modes {
            match self.fallocate(mode, offset, len) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => continue,
                other => return other,
            }
        }
        let zeros = vec![0u8; 64 * 1024];
        let mut at = 0;
        while at < len {
            if stop.load(Ordering::Acquire) {
                return Err(stopped());
            }
            let n = (len - at).min(zeros.len() as u64) as usize;
            std::os::unix::fs::FileExt::write_all_at(&self.file, &zeros[..n], offset + at)?;
            at += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        loop {
            // SAFETY: fallocate on a descriptor this struct owns; it touches no memory of ours.
            let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
            if ret == 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// The error of I/O cut short by a reset (nobody sees its status).
fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "the device is being reset")
}

/// The file's size: its length, or for a block device where its end is.
fn file_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // SAFETY: lseek on a descriptor we own; positional I/O elsewhere ignores the offset.
    let end = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
    if end < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(end as u64)
}
