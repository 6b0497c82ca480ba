//! Loading the guest: kernel (ELF vmlinux via PVH or its 64-bit entry, or bzImage), command line,
//! initramfs, and the boot structures the kernel reads (zero page or PVH start info, MP table).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use canto_arch::acpi::AcpiPlatform;
use canto_arch::regs::BootEntry;
use canto_arch::{acpi, boot, layout, mptable};
use canto_devices::legacy::{
    ACPI_PM_PORT_BASE, RESET_OFFSET, RESET_VALUE, SERIAL_PORT_BASE, SERIAL_PORT_LEN,
    SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET,
};
use canto_devices::pci::{PCI_CONFIG_IO_BASE, PCI_CONFIG_IO_LEN};
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Offset of the 64-bit entry point (startup_64) from where a bzImage's protected-mode part loads.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot open {what} '{path}': {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("'{0}' is not a Linux kernel: give an ELF vmlinux or a bzImage (e.g. target/guest/vmlinux from `make guest`)")]
    NotAKernel(PathBuf),
    #[error("cannot load the kernel '{path}': {reason}")]
    Kernel { path: PathBuf, reason: String },
    #[error("the kernel command line is invalid: {0}")]
    Cmdline(String),
    #[error(
        "the initramfs '{path}' does not fit in guest memory: {reason} (use a larger --memory)"
    )]
    InitramfsTooLarge { path: PathBuf, reason: String },
    #[error("cannot write {what} into guest memory: {reason}")]
    Boot { what: &'static str, reason: String },
}

fn open(what: &'static str, path: &Path) -> Result<File, LoadError> {
    let file = File::open(path).map_err(|source| LoadError::Open {
        what,
        path: path.to_owned(),
        source,
    })?;
    match file.metadata() {
        Ok(m) if m.is_dir() => Err(LoadError::Open {
            what,
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "it is a directory"),
        }),
        _ => Ok(file),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum KernelFormat {
    Elf,
    BzImage,
}

/// Tells an ELF from a bzImage by their magic numbers, before any loader sees the file.
fn sniff(file: &mut File) -> io::Result<Option<KernelFormat>> {
    let mut head = [0u8; 0x206];
    file.seek(SeekFrom::Start(0))?;
    let mut got = 0;
    while got < head.len() {
        match file.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if got >= 4 && head[..4] == *b"\x7fELF" {
        return Ok(Some(KernelFormat::Elf));
    }
    // The boot protocol's "HdrS" at 0x202 and the 0xAA55 boot flag at 0x1fe.
    if got >= 0x206 && head[0x202..0x206] == *b"HdrS" && head[0x1fe..0x200] == [0x55, 0xaa] {
        return Ok(Some(KernelFormat::BzImage));
    }
    Ok(None)
}

/// What booting needs to know after loading.
pub struct LoadedKernel {
    pub entry: BootEntry,
    pub setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

fn open_kernel(path: &Path) -> Result<(File, Option<KernelFormat>), LoadError> {
    let mut file = open("kernel", path)?;
    let format = sniff(&mut file).map_err(|source| LoadError::Open {
        what: "kernel",
        path: path.to_owned(),
        source,
    })?;
    Ok((file, format))
}

/// Checks, before any VM exists, that the kernel and initramfs can be read and the kernel is one.
pub fn check_inputs(kernel: &Path, initramfs: Option<&Path>) -> Result<(), LoadError> {
    if open_kernel(kernel)?.1.is_none() {
        return Err(LoadError::NotAKernel(kernel.to_owned()));
    }
    if let Some(initramfs) = initramfs {
        open("initramfs", initramfs)?;
    }
    Ok(())
}

/// Loads the kernel image into guest memory.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoadError> {
    let (mut file, format) = open_kernel(path)?;
    let failed = |e: linux_loader::loader::Error| LoadError::Kernel {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let himem = Some(GuestAddress(layout::HIMEM_START));
    match format {
        Some(KernelFormat::Elf) => {
            let res = Elf::load(mem, None, &mut file, himem).map_err(failed)?;
            let entry = match res.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => BootEntry::Pvh { entry: addr.0 },
                _ => BootEntry::Linux64 {
                    entry: res.kernel_load.0,
                },
            };
            Ok(LoadedKernel {
                entry,
                setup_header: None,
            })
        }
        Some(KernelFormat::BzImage) => {
            let res = BzImage::load(mem, None, &mut file, himem).map_err(failed)?;
            Ok(LoadedKernel {
                entry: BootEntry::Linux64 {
                    entry: res.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                },
                setup_header: res.setup_header,
            })
        }
        None => Err(LoadError::NotAKernel(path.to_owned())),
    }
}

/// Loads the initramfs at the top of low RAM; returns (address, size).
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    path: &Path,
) -> Result<(u64, u64), LoadError> {
    let mut file = open("initramfs", path)?;
    let io_err = |source| LoadError::Open {
        what: "initramfs",
        path: path.to_owned(),
        source,
    };
    let size = file.metadata().map_err(io_err)?.len();
    let addr =
        boot::initramfs_load_addr(mem_size, size).map_err(|e| LoadError::InitramfsTooLarge {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let len = usize::try_from(size).map_err(|_| LoadError::InitramfsTooLarge {
        path: path.to_owned(),
        reason: "it is larger than this host can address".into(),
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| LoadError::Boot {
            what: "the initramfs",
            reason: e.to_string(),
        })?;
    Ok((addr, size))
}

/// The platform Canto's ACPI tables describe for `num_cpus` vCPUs: the devices
/// [`crate::Vmm::build`] adds, at their ports.
pub fn acpi_platform(num_cpus: u8) -> AcpiPlatform {
    AcpiPlatform {
        num_cpus,
        sleep_control_port: (ACPI_PM_PORT_BASE + SLEEP_CONTROL_OFFSET) as u16,
        sleep_status_port: (ACPI_PM_PORT_BASE + SLEEP_STATUS_OFFSET) as u16,
        reset_port: (ACPI_PM_PORT_BASE + RESET_OFFSET) as u16,
        reset_value: RESET_VALUE,
        pci_config_port: PCI_CONFIG_IO_BASE as u16,
        pci_config_len: PCI_CONFIG_IO_LEN as u8,
        pci_mmio32: (
            layout::PCI_MMIO32_START as u32,
            (layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE) as u32,
        ),
        serial_port: SERIAL_PORT_BASE as u16,
        serial_len: SERIAL_PORT_LEN as u8,
        serial_irq: crate::SERIAL_IRQ,
    }
}

/// Writes the command line, the MP table, the ACPI tables and the kernel's boot structures (which
/// point at the ACPI RSDP).
pub fn write_boot_structures(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    num_cpus: u8,
    cmdline: &str,
    kernel: &LoadedKernel,
    initrd: Option<(u64, u64)>,
) -> Result<(), LoadError> {
    let mut line =
        Cmdline::new(layout::CMDLINE_MAX_SIZE).map_err(|e| LoadError::Cmdline(e.to_string()))?;
    line.insert_str(cmdline).map_err(|e| {
        LoadError::Cmdline(format!("{e} (at most {} bytes)", layout::CMDLINE_MAX_SIZE))
    })?;
    load_cmdline(mem, GuestAddress(layout::CMDLINE_START), &line)
        .map_err(|e| LoadError::Cmdline(e.to_string()))?;
    let boot_err = |what| {
        move |e: boot::Error| LoadError::Boot {
            what,
            reason: e.to_string(),
        }
    };
    mptable::setup_mptable(mem, num_cpus).map_err(|e| LoadError::Boot {
        what: "the MP table",
        reason: e.to_string(),
    })?;
    let rsdp = acpi::setup_acpi(mem, &acpi_platform(num_cpus)).map_err(|e| LoadError::Boot {
        what: "the ACPI tables",
        reason: e.to_string(),
    })?;
    match kernel.entry {
        BootEntry::Pvh { .. } => {
            boot::write_pvh_start_info(mem, mem_size, layout::CMDLINE_START, initrd)
                .map_err(boot_err("the PVH start info"))?;
        }
        BootEntry::Linux64 { .. } => {
            boot::write_zero_page(
                mem,
                mem_size,
                layout::CMDLINE_START,
                cmdline.len() + 1,
                initrd,
                kernel.setup_header,
            )
            .map_err(boot_err("the zero page"))?;
        }
    }
    let pvh = matches!(kernel.entry, BootEntry::Pvh { .. });
    boot::set_acpi_rsdp(mem, pvh, rsdp).map_err(boot_err("the ACPI RSDP address"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&canto_arch::memory::ram_regions(64 << 20)).unwrap()
    }

    fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
        let path = std::env::temp_dir().join(format!("canto-loader-{}-{name}", std::process::id()));
        File::create(&path).unwrap().write_all(bytes).unwrap();
        path
    }

    #[test]
    fn missing_kernel_names_the_path() {
        let err = load_kernel(&mem(), Path::new("/nonexistent/vmlinux"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("/nonexistent/vmlinux") && err.contains("kernel"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_kernel_is_refused() {
        let path = temp_file("notkernel", b"#!/bin/sh\necho hello\n");
        let err = load_kernel(&mem(), &path).err().unwrap();
        assert!(matches!(err, LoadError::NotAKernel(_)), "{err}");
        assert!(err.to_string().contains("not a Linux kernel"));
        let empty = temp_file("empty", b"");
        assert!(matches!(
            load_kernel(&mem(), &empty).err().unwrap(),
            LoadError::NotAKernel(_)
        ));
        let dir = load_kernel(&mem(), Path::new("/tmp"))
            .err()
            .unwrap()
            .to_string();
        assert!(dir.contains("directory"), "{dir}");
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(empty);
    }

    #[test]
    fn a_truncated_elf_is_an_error_not_a_panic() {
        let path = temp_file("badelf", b"\x7fELF\x02\x01\x01\0garbage");
        assert!(matches!(
            load_kernel(&mem(), &path).err().unwrap(),
            LoadError::Kernel { .. }
        ));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn initramfs_is_loaded_and_too_large_one_is_refused() {
        let mem = mem();
        let path = temp_file("initrd", &[0xab; 4096]);
        let (addr, size) = load_initramfs(&mem, 64 << 20, &path).unwrap();
        assert_eq!(size, 4096);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(addr + 4095)).unwrap(), 0xab);
        let big = temp_file("bigrd", &vec![0u8; 70 << 20]);
        let err = load_initramfs(&mem, 64 << 20, &big)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--memory"), "{err}");
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(big);
    }
}
