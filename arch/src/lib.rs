//! x86_64 guest setup for Canto: the guest physical memory map, and everything that must be in
//! guest memory and in the vCPUs before a kernel's first instruction runs.
//!
//! The VMM builds guest RAM from [`memory::ram_regions`], loads the kernel with linux-loader,
//! then uses this crate to write the MP table ([`mptable`]), the Linux zero page or PVH start
//! info ([`boot`]), and to put each vCPU into its boot state ([`cpuid`], [`regs`]). The fixed
//! addresses all of this uses live in [`layout`].

#![cfg(target_arch = "x86_64")]

pub mod acpi;
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
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
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
                VcpuExit::InternalError => {
                    // SAFETY: KVM filled the `internal` member of the exit union, as the exit
                    // reason says; it is plain integers.
                    let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
                    let data = &internal.data[..(internal.ndata as usize).min(internal.data.len())];
                    panic!(
                        "internal error (suberror {}, data {data:x?}) after {results:x?}, regs {:x?}",
                        internal.suberror,
                        vcpu.get_regs()
                    )
                }
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

#[cfg(test)]
mod tests {
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
    use vm_memory::{Bytes, GuestAddress};

    use crate::layout::{CMDLINE_START, HIMEM_START};
    use crate::test_utils::{kvm_or_skip, run_test_guest, test_vm};
    use crate::{boot, cpuid, mptable, regs, BootEntry};

    const MEM_SIZE: u64 = 128 << 20;

    #[test]
    fn errors_convert_into_the_crate_error() {
        let err: crate::Error = mptable::Error::NoCpus.into();
        assert!(matches!(err, crate::Error::Mptable(_)));
        assert_eq!(err.to_string(), mptable::Error::NoCpus.to_string());
        let err: crate::Error = cpuid::Error::InvalidCpuCount(0).into();
        assert!(matches!(err, crate::Error::Cpuid(_)));
    }

    /// The whole sequence the VMM runs for a 64-bit guest, then a guest that reads back what it
    /// was given: CPUID, the MP table and the zero page.
    #[test]
    fn kvm_full_linux64_boot_sequence() {
        let Some(kvm) = kvm_or_skip("kvm_full_linux64_boot_sequence") else {
            return;
        };
        let num_cpus = 2;
        let test_vm = test_vm(&kvm, MEM_SIZE);
        let mem = &test_vm.mem;
        #[rustfmt::skip]
        let code: &[u8] = &[
            0xb8, 0x01, 0, 0, 0,                // mov eax, 1
            0x0f, 0xa2,                         // cpuid
            0x66, 0xba, 0xf8, 0x03,             // mov dx, 0x3f8
            0x89, 0xd8, 0xef,                   // mov eax, ebx; out dx, eax
            0x89, 0xc8, 0xef,                   // mov eax, ecx; out dx, eax
            0xb8, 0x0b, 0, 0, 0,                // mov eax, 0xb
            0xb9, 0x01, 0, 0, 0,                // mov ecx, 1
            0x0f, 0xa2,                         // cpuid
            0x66, 0xba, 0xf8, 0x03,             // mov dx, 0x3f8
            0x89, 0xd8, 0xef,                   // mov eax, ebx; out dx, eax
            0xb8, 0x06, 0, 0, 0,                // mov eax, 6
            0x31, 0xc9,                         // xor ecx, ecx
            0x0f, 0xa2,                         // cpuid
            0x66, 0xba, 0xf8, 0x03,             // mov dx, 0x3f8
            0xef,                               // out dx, eax
            0xa1, 0x00, 0xfc, 0x09, 0, 0, 0, 0, 0, // mov eax, [0x9fc00] (MP signature)
            0xef,                               // out dx, eax
            0x0f, 0xb7, 0x04, 0x25, 0xfe, 0x71, 0, 0, // movzx eax, word [0x71fe] (boot_flag)
            0xef,                               // out dx, eax
            0x66, 0xba, 0xf9, 0x03, 0xef,       // mov dx, 0x3f9; out dx, eax (done)
        ];
        mem.write_slice(code, GuestAddress(HIMEM_START)).unwrap();
        let cmdline = b"console=ttyS0\0";
        mem.write_slice(cmdline, GuestAddress(CMDLINE_START))
            .unwrap();
        let initrd_addr = boot::initramfs_load_addr(MEM_SIZE, 0x1000).unwrap();
        mptable::setup_mptable(mem, num_cpus).unwrap();
        boot::write_zero_page(
            mem,
            MEM_SIZE,
            CMDLINE_START,
            cmdline.len(),
            Some((initrd_addr, 0x1000)),
            None,
        )
        .unwrap();

        let mut vcpu = test_vm.vm.create_vcpu(0).expect("create vCPU");
        let mut cpuid = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
        cpuid::filter_cpuid(&mut cpuid, 0, num_cpus).unwrap();
        vcpu.set_cpuid2(&cpuid)
            .expect("KVM accepts the filtered CPUID");
        regs::setup_msrs(&vcpu).unwrap();
        regs::setup_vcpu_regs(&vcpu, mem, &BootEntry::Linux64 { entry: HIMEM_START }).unwrap();
        regs::setup_fpu(&vcpu).unwrap();
        regs::setup_lapic_lints(&vcpu).unwrap();

        let results = run_test_guest(&mut vcpu);
        assert_eq!(results.len(), 6, "{results:x?}");
        let (leaf1_ebx, leaf1_ecx) = (results[0], results[1]);
        assert_eq!(leaf1_ebx >> 24, 0, "APIC id");
        assert_eq!(
            (leaf1_ebx >> 16) & 0xff,
            u32::from(num_cpus),
            "logical count"
        );
        assert_ne!(leaf1_ecx & (1 << 31), 0, "hypervisor bit");
        let has_leaf_b = cpuid.as_slice().iter().any(|e| e.function == 0xb);
        if has_leaf_b {
            assert_eq!(results[2], u32::from(num_cpus), "cores in the package");
        }
        assert_eq!(results[3], 0, "leaf 6 cleared");
        assert_eq!(&results[4].to_le_bytes(), b"_MP_");
        assert_eq!(results[5], 0xaa55);
    }
}
