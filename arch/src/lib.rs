//! x86_64 guest setup for Canto: the guest physical memory map, and everything that must be in
//! guest memory and in the vCPUs before a kernel's first instruction runs.
//!
//! The VMM builds guest RAM from [`memory::ram_regions`], loads the kernel with linux-loader,
//! then uses this crate to write the MP table ([`mptable`]), the Linux zero page or PVH start
//! info ([`boot`]), and to put each vCPU into its boot state ([`cpuid`], [`regs`]). The fixed
//! addresses all of this uses live in [`layout`].

#![cfg(target_arch = "x86_64")]

pub mod boot;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod paging;
pub mod regs;

pub use regs::BootEntry;

/// Any error of this crate, for callers that just propagate them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest RAM size.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// Descriptor tables.
    #[error(transparent)]
    Gdt(#[from] gdt::Error),
    /// Page tables.
    #[error(transparent)]
    Paging(#[from] paging::Error),
    /// MP table.
    #[error(transparent)]
    Mptable(#[from] mptable::Error),
    /// CPUID filtering.
    #[error(transparent)]
    Cpuid(#[from] cpuid::Error),
    /// vCPU register setup.
    #[error(transparent)]
    Regs(#[from] regs::Error),
    /// Zero page, PVH start info, initramfs placement.
    #[error(transparent)]
    Boot(#[from] boot::Error),
}

#[cfg(test)]
pub(crate) mod test_utils {
    use kvm_bindings::kvm_userspace_memory_region;
    use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
    use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

    use crate::memory::ram_regions;

    /// The first MiB of guest RAM: where every fixed boot structure lives.
    pub fn low_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// Open /dev/kvm, or explain why the calling test is skipped. With CI=true a missing KVM is a
    /// failure: CI machines are expected to provide it.
    pub fn kvm_or_skip(test: &str) -> Option<Kvm> {
        match Kvm::new() {
            Ok(kvm) => Some(kvm),
            Err(err) if std::env::var("CI").as_deref() == Ok("true") => {
                panic!("{test}: /dev/kvm is required when CI=true but cannot be opened: {err}")
            }
            Err(err) => {
                eprintln!("skipping {test}: cannot open /dev/kvm: {err}");
                None
            }
        }
    }

    /// A VM with an in-kernel irqchip and `mem_size` bytes of RAM laid out by `ram_regions`.
    /// Fields drop in order, so the VM goes away before the memory it maps.
    pub struct TestVm {
        pub vm: VmFd,
        pub mem: GuestMemoryMmap,
    }

    pub fn test_vm(kvm: &Kvm, mem_size: u64) -> TestVm {
        let vm = kvm.create_vm().expect("create VM");
        vm.create_irq_chip().expect("create irqchip");
        let mem = GuestMemoryMmap::from_ranges(&ram_regions(mem_size)).expect("guest memory");
        for (slot, region) in mem.iter().enumerate() {
            let slot_config = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the host range is a live mapping owned by `mem`, which outlives the VM
            // (see the field order of `TestVm`), and the slots do not overlap.
            unsafe { vm.set_user_memory_region(slot_config) }.expect("register guest memory");
        }
        TestVm { vm, mem }
    }

    /// Port a test guest writes 32-bit results to.
    pub const RESULT_PORT: u16 = 0x3f8;
    /// Port a test guest writes to when it is done.
    pub const DONE_PORT: u16 = 0x3f9;

    /// Run a test guest, collecting what it writes to [`RESULT_PORT`] until it writes to
    /// [`DONE_PORT`]. Any other exit fails the test.
    pub fn run_test_guest(vcpu: &mut VcpuFd) -> Vec<u32> {
        let mut results = Vec::new();
        for _ in 0..64 {
            match vcpu.run().expect("KVM_RUN") {
                VcpuExit::IoOut(RESULT_PORT, data) => {
                    let mut word = [0u8; 4];
                    word[..data.len()].copy_from_slice(data);
                    results.push(u32::from_le_bytes(word));
                }
                VcpuExit::IoOut(DONE_PORT, _) => return results,
                other => {
                    let description = format!("{other:?}");
                    panic!(
                        "unexpected exit {description} after {results:x?}, regs {:x?}",
                        vcpu.get_regs()
                    )
                }
            }
        }
        panic!("test guest never finished: {results:x?}")
    }
}
