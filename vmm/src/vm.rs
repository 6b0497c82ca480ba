//! The KVM virtual machine: /dev/kvm, guest RAM, the in-kernel interrupt controllers and PIT.

use std::io;

use canto_arch::memory::ram_regions;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Where KVM puts its task-state segment and identity-map page: three pages just below the
/// IO-APIC, out of the way of RAM and of PCI BARs.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("/dev/kvm does not exist: this host has no KVM. Enable virtualization in the firmware and load the module (modprobe kvm_intel or kvm_amd), or run Canto on a host with KVM")]
    KvmMissing,
    #[error("permission denied opening /dev/kvm: run as root or add your user to the 'kvm' group (sudo usermod -aG kvm $USER, then log in again)")]
    KvmPermission,
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(#[source] io::Error),
    #[error("the host's KVM API version is {0}, Canto needs 12")]
    KvmApiVersion(i32),
    #[error("KVM lacks a capability Canto needs: {0}")]
    KvmCapability(&'static str),
    #[error("cannot create the VM: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("cannot set up the VM ({what}): {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot allocate {size} bytes of guest memory: {source}")]
    GuestMemory {
        size: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
    #[error("--memory {} is more than this host has ({}): use a smaller --memory", mib(*.requested), mib(*.available))]
    MemoryTooLarge { requested: u64, available: u64 },
    #[error("--memory {} is too little: Canto needs at least {}", mib(*.requested), mib(*.minimum))]
    MemoryTooSmall { requested: u64, minimum: u64 },
}

fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

/// Opens /dev/kvm, turning the usual failures into instructions.
pub fn open_kvm() -> Result<Kvm, VmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => VmError::KvmMissing,
        libc::EACCES | libc::EPERM => VmError::KvmPermission,
        _ => VmError::KvmOpen(io::Error::from_raw_os_error(e.errno())),
    })?;
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(VmError::KvmApiVersion(version));
    }
    for (cap, name) in [
        (kvm_ioctls::Cap::Irqchip, "in-kernel irqchip"),
        (kvm_ioctls::Cap::UserMemory, "user memory"),
        (kvm_ioctls::Cap::Ioeventfd, "ioeventfd"),
        (kvm_ioctls::Cap::Irqfd, "irqfd"),
        (kvm_ioctls::Cap::IrqRouting, "IRQ routing"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::KvmCapability(name));
        }
    }
    Ok(kvm)
}

/// Host RAM in bytes, from sysinfo(2).
fn host_memory() -> Option<u64> {
    // SAFETY: sysinfo only writes the struct we hand it, which is zero-initialised and ours.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    Some(info.totalram.saturating_mul(u64::from(info.mem_unit)))
}

/// Checks a requested RAM size against Canto's minimum and the host's RAM.
pub fn check_memory_size(requested: u64) -> Result<(), VmError> {
    let minimum = canto_arch::layout::MIN_MEMORY;
    if requested < minimum {
        return Err(VmError::MemoryTooSmall { requested, minimum });
    }
    if let Some(available) = host_memory() {
        if requested > available {
            return Err(VmError::MemoryTooLarge {
                requested,
                available,
            });
        }
    }
    Ok(())
}

/// A VM with its RAM mapped and its in-kernel interrupt controllers and PIT created.
pub struct Vm {
    pub fd: std::sync::Arc<VmFd>,
    pub mem: GuestMemoryMmap,
    pub mem_size: u64,
}

impl Vm {
    pub fn new(kvm: &Kvm, mem_size: u64) -> Result<Self, VmError> {
        check_memory_size(mem_size)?;
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let setup = |what| move |source| VmError::Setup { what, source };
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(setup("TSS address"))?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(setup("identity map address"))?;
        fd.create_irq_chip().map_err(setup("in-kernel irqchip"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(setup("PIT"))?;

        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(mem_size)).map_err(|source| {
            VmError::GuestMemory {
                size: mem_size,
                source,
            }
        })?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| VmError::KvmCapability("host mapping of guest memory"))?;
            let kvm_region = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which lives as long as the VM
            // (it is stored beside the VM fd and dropped after it).
            unsafe { fd.set_user_memory_region(kvm_region) }
                .map_err(setup("guest memory region"))?;
        }
        Ok(Self {
            fd: std::sync::Arc::new(fd),
            mem,
            mem_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_size_limits() {
        assert!(matches!(
            check_memory_size(1 << 20),
            Err(VmError::MemoryTooSmall { .. })
        ));
        assert!(matches!(
            check_memory_size(1 << 50),
            Err(VmError::MemoryTooLarge { .. })
        ));
        assert!(check_memory_size(64 << 20).is_ok());
        let msg = check_memory_size(1 << 50).unwrap_err().to_string();
        assert!(msg.contains("--memory"), "{msg}");
    }

    #[test]
    fn kvm_errors_say_how_to_fix_them() {
        assert!(VmError::KvmPermission.to_string().contains("kvm' group"));
        assert!(VmError::KvmMissing.to_string().contains("modprobe"));
    }
}
