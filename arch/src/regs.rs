//! Initial vCPU state: registers, segments, control registers, FPU, MSRs and local APIC LINT
//! pins, for the two ways Canto starts a guest.
//!
//! Each `setup_*` function is a thin ioctl wrapper around a pure function that computes the
//! state (`boot_regs`, `configure_sregs`, `boot_fpu`, `boot_msr_entries`, `set_lint_delivery`),
//! so the state itself is unit-tested without KVM.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use crate::gdt::{
    self, kvm_segment_from_gdt, linux64_gdt, pvh_gdt, table_limit, write_empty_idt, write_gdt,
    CODE_SELECTOR, DATA_SELECTOR, IDT_SIZE, TSS_SELECTOR,
};
use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, MMIO_HOLE_END, PVH_INFO_START,
    ZERO_PAGE_START,
};
use crate::paging::{self, setup_identity_page_tables};

/// Why the vCPU could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The entry point cannot be reached by the first instruction fetch.
    #[error("entry point {0:#x} is outside the identity-mapped first 4 GiB")]
    EntryOutOfReach(u64),
    /// Writing the descriptor tables failed.
    #[error(transparent)]
    Gdt(#[from] gdt::Error),
    /// Writing the page tables failed.
    #[error(transparent)]
    Paging(#[from] paging::Error),
    /// KVM_GET_SREGS failed.
    #[error("failed to get the vCPU special registers: {0}")]
    GetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_SREGS failed.
    #[error("failed to set the vCPU special registers: {0}")]
    SetSregs(#[source] kvm_ioctls::Error),
    /// KVM_SET_REGS failed.
    #[error("failed to set the vCPU general registers: {0}")]
    SetRegs(#[source] kvm_ioctls::Error),
    /// KVM_SET_FPU failed.
    #[error("failed to set the vCPU FPU state: {0}")]
    SetFpu(#[source] kvm_ioctls::Error),
    /// The MSR list could not be built.
    #[error("too many MSRs for one KVM_SET_MSRS call")]
    TooManyMsrs,
    /// KVM_SET_MSRS failed outright.
    #[error("failed to set the vCPU MSRs: {0}")]
    SetMsrs(#[source] kvm_ioctls::Error),
    /// KVM_SET_MSRS stopped at an MSR it refused.
    #[error("KVM refused to set MSR {index:#x}")]
    MsrRefused {
        /// The first MSR KVM did not set.
        index: u32,
    },
    /// KVM_GET_LAPIC failed (the VM needs an in-kernel irqchip before the vCPU is created).
    #[error("failed to get the local APIC state: {0}")]
    GetLapic(#[source] kvm_ioctls::Error),
    /// KVM_SET_LAPIC failed.
    #[error("failed to set the local APIC state: {0}")]
    SetLapic(#[source] kvm_ioctls::Error),
}

/// How the vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH (the Xen HVM direct boot ABI as Linux implements it): 32-bit protected mode, paging
    /// off, %ebx = PVH_INFO_START.
    Pvh {
        /// 32-bit physical entry point from the kernel's XEN_ELFNOTE_PHYS32_ENTRY note.
        entry: u64,
    },
    /// Linux 64-bit boot protocol: long mode on identity page tables, %rsi = ZERO_PAGE_START.
    /// Also how a freestanding 64-bit ELF test guest starts.
    Linux64 {
        /// Physical (= virtual) entry point.
        entry: u64,
    },
}

impl BootEntry {
    /// The entry point address.
    pub fn entry(&self) -> u64 {
        match *self {
            BootEntry::Pvh { entry } | BootEntry::Linux64 { entry } => entry,
        }
    }
}

/// Control register and EFER bits.
pub mod bits {
    /// CR0: protected mode.
    pub const CR0_PE: u64 = 1 << 0;
    /// CR0: extension type (hardwired to 1 on modern CPUs).
    pub const CR0_ET: u64 = 1 << 4;
    /// CR0: not write-through.
    pub const CR0_NW: u64 = 1 << 29;
    /// CR0: cache disable.
    pub const CR0_CD: u64 = 1 << 30;
    /// CR0: paging.
    pub const CR0_PG: u64 = 1 << 31;
    /// CR4: physical address extension (required for long mode).
    pub const CR4_PAE: u64 = 1 << 5;
    /// CR4: the OS supports FXSAVE/FXRSTOR, which also enables SSE instructions.
    pub const CR4_OSFXSR: u64 = 1 << 9;
    /// CR4: the OS handles unmasked SIMD floating-point exceptions (#XM).
    pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
    /// EFER: long mode enable.
    pub const EFER_LME: u64 = 1 << 8;
    /// EFER: long mode active.
    pub const EFER_LMA: u64 = 1 << 10;
}

/// RFLAGS with only the always-one reserved bit 1 set (interrupts off).
pub const BOOT_RFLAGS: u64 = 0x2;

/// The general registers the vCPU starts with.
pub fn boot_regs(entry: &BootEntry) -> kvm_regs {
    match *entry {
        BootEntry::Pvh { entry } => kvm_regs {
            rflags: BOOT_RFLAGS,
            rip: entry,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
        BootEntry::Linux64 { entry } => kvm_regs {
            rflags: BOOT_RFLAGS,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
    }
}

/// Write the boot GDT, IDT and (for 64-bit boot) page tables to guest memory, and point the
/// special registers in `sregs` (as read from the vCPU, so the APIC base and other state KVM
/// owns are kept) at them.
pub fn configure_sregs(
    mem: &GuestMemoryMmap,
    entry: &BootEntry,
    sregs: &mut kvm_sregs,
) -> Result<(), Error> {
    // Both modes start with a flat view of the first 4 GiB: PVH because its segments and
    // %rip are 32-bit, Linux64 because that is what the page tables map.
    if entry.entry() >= MMIO_HOLE_END {
        return Err(Error::EntryOutOfReach(entry.entry()));
    }
    let gdt = match entry {
        BootEntry::Pvh { .. } => pvh_gdt(),
        BootEntry::Linux64 { .. } => linux64_gdt(),
    };
    write_gdt(mem, &gdt)?;
    write_empty_idt(mem)?;

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = table_limit(gdt.len());
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (IDT_SIZE - 1) as u16;

    let code = kvm_segment_from_gdt(gdt[usize::from(CODE_SELECTOR / 8)], CODE_SELECTOR);
    let data = kvm_segment_from_gdt(gdt[usize::from(DATA_SELECTOR / 8)], DATA_SELECTOR);
    let tss = kvm_segment_from_gdt(gdt[usize::from(TSS_SELECTOR / 8)], TSS_SELECTOR);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    // The reset value of CR0 has CD and NW set, which would run the guest with caches off until
    // it rewrites CR0 itself (a freestanding guest may never do so).
    let cr0 = (sregs.cr0 | bits::CR0_PE | bits::CR0_ET) & !(bits::CR0_CD | bits::CR0_NW);
    match entry {
        BootEntry::Pvh { .. } => {
            sregs.cr0 = cr0 & !bits::CR0_PG;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootEntry::Linux64 { .. } => {
            sregs.cr3 = setup_identity_page_tables(mem)?;
            // SSE on as well: compilers emit SSE for ordinary x86_64 code, so a freestanding
            // guest would otherwise fault on its first memcpy. Linux rewrites CR4 itself.
            sregs.cr4 |= bits::CR4_PAE | bits::CR4_OSFXSR | bits::CR4_OSXMMEXCPT;
            sregs.cr0 = cr0 | bits::CR0_PG;
            sregs.efer |= bits::EFER_LME | bits::EFER_LMA;
        }
    }
    Ok(())
}

/// Set up the boot vCPU's general and special registers for `entry`, writing the GDT, IDT and
/// page tables they refer to into `mem`.
pub fn setup_vcpu_regs(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    entry: &BootEntry,
) -> Result<(), Error> {
    let mut sregs = vcpu.get_sregs().map_err(Error::GetSregs)?;
    configure_sregs(mem, entry, &mut sregs)?;
    vcpu.set_sregs(&sregs).map_err(Error::SetSregs)?;
    vcpu.set_regs(&boot_regs(entry)).map_err(Error::SetRegs)
}

/// x87 control word after FNINIT: all exceptions masked, 64-bit precision, round to nearest.
pub const FPU_CONTROL_WORD: u16 = 0x37f;
/// MXCSR reset value: all SSE exceptions masked, round to nearest.
pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// The FPU/SSE state the vCPU starts with.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

/// Put the FPU and SSE unit in their initialized state.
///
/// KVM_SET_FPU only transfers the x87 and XMM registers: it ignores `mxcsr`, which is passed
/// anyway for completeness. MXCSR holds its reset value 0x1f80 from vCPU creation, which is what
/// this sets up.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), Error> {
    vcpu.set_fpu(&boot_fpu()).map_err(Error::SetFpu)
}

/// MSR numbers set at boot.
pub mod msr {
    /// Time-stamp counter.
    pub const IA32_TSC: u32 = 0x10;
    /// SYSENTER code segment.
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    /// SYSENTER stack pointer.
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    /// SYSENTER entry point.
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    /// Miscellaneous feature enables.
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    /// IA32_MISC_ENABLE bit 0: fast string operations (REP MOVS/STOS) enabled.
    pub const MISC_ENABLE_FAST_STRING: u64 = 1;
    /// SYSCALL segment selectors.
    pub const STAR: u32 = 0xc000_0081;
    /// SYSCALL 64-bit entry point.
    pub const LSTAR: u32 = 0xc000_0082;
    /// SYSCALL compatibility-mode entry point.
    pub const CSTAR: u32 = 0xc000_0083;
    /// RFLAGS bits cleared by SYSCALL.
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// Value swapped into GS.base by SWAPGS.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// The MSRs set at boot: the system call MSRs cleared (the guest kernel sets its own), TSC
/// zeroed so every vCPU starts counting together, and fast strings enabled as firmware would.
pub fn boot_msr_entries() -> Vec<kvm_msr_entry> {
    let entry = |index: u32, data: u64| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        entry(msr::IA32_SYSENTER_CS, 0),
        entry(msr::IA32_SYSENTER_ESP, 0),
        entry(msr::IA32_SYSENTER_EIP, 0),
        entry(msr::STAR, 0),
        entry(msr::CSTAR, 0),
        entry(msr::KERNEL_GS_BASE, 0),
        entry(msr::SYSCALL_MASK, 0),
        entry(msr::LSTAR, 0),
        entry(msr::IA32_TSC, 0),
        entry(msr::IA32_MISC_ENABLE, msr::MISC_ENABLE_FAST_STRING),
    ]
}

/// Set the boot MSRs ([`boot_msr_entries`]); an MSR KVM refuses is an error naming it.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), Error> {
    let entries = boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::TooManyMsrs)?;
    let written = vcpu.set_msrs(&msrs).map_err(Error::SetMsrs)?;
    match entries.get(written) {
        Some(refused) => Err(Error::MsrRefused {
            index: refused.index,
        }),
        None => Ok(()),
    }
}

/// Offset of the LVT LINT0 register in the local APIC register page.
pub const APIC_LVT_LINT0: usize = 0x350;
/// Offset of the LVT LINT1 register in the local APIC register page.
pub const APIC_LVT_LINT1: usize = 0x360;
/// LVT delivery mode field (bits 10..8).
const APIC_DELIVERY_MODE_MASK: u32 = 0x700;
/// LVT delivery mode NMI.
pub const APIC_MODE_NMI: u32 = 0x4 << 8;
/// LVT delivery mode ExtINT (the 8259 PIC delivers the vector).
pub const APIC_MODE_EXTINT: u32 = 0x7 << 8;

/// Read a 32-bit local APIC register from a KVM LAPIC state page.
pub fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> Option<u32> {
    let bytes = lapic.regs.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes([
        bytes[0] as u8,
        bytes[1] as u8,
        bytes[2] as u8,
        bytes[3] as u8,
    ]))
}

/// Write a 32-bit local APIC register into a KVM LAPIC state page; false if out of range.
pub fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) -> bool {
    let Some(bytes) = offset
        .checked_add(4)
        .and_then(|end| lapic.regs.get_mut(offset..end))
    else {
        return false;
    };
    for (dst, src) in bytes.iter_mut().zip(value.to_le_bytes()) {
        *dst = src as _;
    }
    true
}

/// Make LINT0 deliver ExtINT (the PIC, virtual wire mode) and LINT1 deliver NMI, as PC firmware
/// leaves them. Only the delivery mode changes: masking stays as KVM's reset left it (KVM
/// unmasks LINT0 on the boot vCPU), the guest's own APIC setup decides the rest.
pub fn set_lint_delivery(lapic: &mut kvm_lapic_state) {
    for (offset, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        if let Some(value) = lapic_reg(lapic, offset) {
            set_lapic_reg(lapic, offset, (value & !APIC_DELIVERY_MODE_MASK) | mode);
        }
    }
}

/// Configure the local APIC LINT pins ([`set_lint_delivery`]) through KVM_GET/SET_LAPIC. The VM
/// must have an in-kernel irqchip.
pub fn setup_lapic_lints(vcpu: &VcpuFd) -> Result<(), Error> {
    let mut lapic = vcpu.get_lapic().map_err(Error::GetLapic)?;
    set_lint_delivery(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(Error::SetLapic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{PDE_START, PDPTE_START, PML4_START};
    use crate::test_utils::{kvm_or_skip, low_memory, run_test_guest, test_vm};
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn linux64_general_registers() {
        let regs = boot_regs(&BootEntry::Linux64 { entry: 0x100_0000 });
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_eq!(
            (regs.rsp, regs.rbp),
            (BOOT_STACK_POINTER, BOOT_STACK_POINTER)
        );
        assert_eq!(regs.rflags, 2);
        assert_eq!(regs.rbx, 0);
    }

    #[test]
    fn pvh_general_registers() {
        let regs = boot_regs(&BootEntry::Pvh { entry: 0x100_0200 });
        assert_eq!(regs.rip, 0x100_0200);
        assert_eq!(regs.rbx, PVH_INFO_START);
        assert_eq!(regs.rflags, 2);
        assert_eq!(regs.rsi, 0);
    }

    fn reset_like_sregs() -> kvm_sregs {
        kvm_sregs {
            cr0: 0x6000_0010,
            apic_base: 0xfee0_0900,
            ..Default::default()
        }
    }

    #[test]
    fn linux64_sregs_enter_long_mode_on_identity_tables() {
        let mem = low_memory();
        let mut sregs = reset_like_sregs();
        configure_sregs(&mem, &BootEntry::Linux64 { entry: 0x100_0000 }, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cr0, bits::CR0_PE | bits::CR0_ET | bits::CR0_PG);
        assert_ne!(sregs.cr4 & bits::CR4_PAE, 0);
        assert_eq!(
            sregs.efer & (bits::EFER_LME | bits::EFER_LMA),
            bits::EFER_LME | bits::EFER_LMA
        );
        assert_eq!((sregs.cs.selector, sregs.cs.l, sregs.cs.db), (0x8, 1, 0));
        for seg in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!((seg.selector, seg.type_, seg.present), (0x10, 3, 1));
        }
        assert_eq!((sregs.tr.selector, sregs.tr.type_), (0x18, 0xb));
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!((sregs.idt.base, sregs.idt.limit), (BOOT_IDT_START, 7));
        assert_eq!(sregs.apic_base, 0xfee0_0900, "KVM-owned state kept");
        // The tables the registers point at are really in guest memory.
        let pml4e: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4e & !0xfff, PDPTE_START);
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPTE_START)).unwrap();
        assert_eq!(pdpte & !0xfff, PDE_START);
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, linux64_gdt()[1]);
    }

    #[test]
    fn pvh_sregs_are_flat_protected_mode_without_paging() {
        let mem = low_memory();
        let mut sregs = reset_like_sregs();
        sregs.cr4 = bits::CR4_PAE;
        sregs.efer = bits::EFER_LME;
        configure_sregs(&mem, &BootEntry::Pvh { entry: 0x100_0000 }, &mut sregs).unwrap();
        assert_eq!(sregs.cr0, bits::CR0_PE | bits::CR0_ET);
        assert_eq!((sregs.cr3, sregs.cr4, sregs.efer), (0, 0, 0));
        let cs = sregs.cs;
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.type_),
            (0, 0xffff_ffff, 0, 1, 0xb)
        );
        for seg in [sregs.ds, sregs.es, sregs.ss] {
            assert_eq!((seg.base, seg.limit, seg.db), (0, 0xffff_ffff, 1));
        }
        assert_eq!(
            (sregs.tr.base, sregs.tr.limit, sregs.tr.type_),
            (0, 0x67, 0xb)
        );
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, pvh_gdt()[1]);
    }

    #[test]
    fn entry_beyond_4g_is_rejected() {
        let mem = low_memory();
        let mut sregs = reset_like_sregs();
        for entry in [
            BootEntry::Linux64 {
                entry: 0xffff_ffff_8100_0000,
            },
            BootEntry::Pvh {
                entry: 0x1_0000_0000,
            },
        ] {
            assert!(matches!(
                configure_sregs(&mem, &entry, &mut sregs),
                Err(Error::EntryOutOfReach(_))
            ));
        }
    }

    #[test]
    fn missing_low_memory_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        let mut sregs = reset_like_sregs();
        assert!(matches!(
            configure_sregs(&mem, &BootEntry::Linux64 { entry: 0x10_0000 }, &mut sregs),
            Err(Error::Gdt(_))
        ));
    }

    #[test]
    fn fpu_is_in_its_init_state() {
        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
        assert_eq!(fpu.fsw, 0);
    }

    #[test]
    fn msr_list_covers_syscall_tsc_and_misc_enable() {
        let entries = boot_msr_entries();
        let value = |index| entries.iter().find(|e| e.index == index).map(|e| e.data);
        for index in [
            msr::IA32_SYSENTER_CS,
            msr::IA32_SYSENTER_ESP,
            msr::IA32_SYSENTER_EIP,
            msr::STAR,
            msr::LSTAR,
            msr::CSTAR,
            msr::KERNEL_GS_BASE,
            msr::SYSCALL_MASK,
            msr::IA32_TSC,
        ] {
            assert_eq!(value(index), Some(0), "MSR {index:#x}");
        }
        assert_eq!(value(msr::IA32_MISC_ENABLE), Some(1));
    }

    #[test]
    fn lint_delivery_modes_keep_the_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        // Masked (bit 16), level-triggered (bit 15), fixed delivery, vector 0x30.
        set_lapic_reg(&mut lapic, APIC_LVT_LINT0, 0x1_8030);
        set_lapic_reg(&mut lapic, APIC_LVT_LINT1, 0x1_0000);
        set_lint_delivery(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT0), Some(0x1_8730));
        assert_eq!(lapic_reg(&lapic, APIC_LVT_LINT1), Some(0x1_0400));
    }

    #[test]
    fn lapic_register_access_is_bounds_checked() {
        let mut lapic = kvm_lapic_state::default();
        assert!(set_lapic_reg(&mut lapic, 0x3fc, 0xdead_beef));
        assert_eq!(lapic_reg(&lapic, 0x3fc), Some(0xdead_beef));
        assert!(!set_lapic_reg(&mut lapic, 0x3fd, 1));
        assert_eq!(lapic_reg(&lapic, 0x3fd), None);
        assert_eq!(lapic_reg(&lapic, usize::MAX), None);
    }

    #[test]
    fn kvm_linux64_regs_and_sregs_read_back() {
        let Some(kvm) = kvm_or_skip("kvm_linux64_regs_and_sregs_read_back") else {
            return;
        };
        let vm = kvm.create_vm().expect("create VM");
        let vcpu = vm.create_vcpu(0).expect("create vCPU");
        let mem = low_memory();
        let entry = BootEntry::Linux64 { entry: 0x100_0000 };
        setup_vcpu_regs(&vcpu, &mem, &entry).unwrap();

        let regs = vcpu.get_regs().unwrap();
        assert_eq!(regs.rip, 0x100_0000);
        assert_eq!(regs.rsi, ZERO_PAGE_START);
        assert_eq!(
            (regs.rsp, regs.rbp),
            (BOOT_STACK_POINTER, BOOT_STACK_POINTER)
        );
        assert_eq!(regs.rflags, 2);

        let sregs = vcpu.get_sregs().unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.cr0 & bits::CR0_PG, 0);
        assert_ne!(sregs.cr0 & bits::CR0_PE, 0);
        assert_ne!(sregs.cr4 & bits::CR4_PAE, 0);
        assert_ne!(sregs.efer & bits::EFER_LMA, 0);
        assert_ne!(sregs.efer & bits::EFER_LME, 0);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (CODE_SELECTOR, 1));
        assert_eq!(sregs.ss.selector, DATA_SELECTOR);
        assert_eq!(sregs.tr.selector, TSS_SELECTOR);
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (BOOT_GDT_START, 31));
        assert_eq!(sregs.idt.base, BOOT_IDT_START);
    }

    #[test]
    fn kvm_pvh_regs_and_sregs_read_back() {
        let Some(kvm) = kvm_or_skip("kvm_pvh_regs_and_sregs_read_back") else {
            return;
        };
        let vm = kvm.create_vm().expect("create VM");
        let vcpu = vm.create_vcpu(0).expect("create vCPU");
        let mem = low_memory();
        setup_vcpu_regs(&vcpu, &mem, &BootEntry::Pvh { entry: 0x100_0200 }).unwrap();

        let regs = vcpu.get_regs().unwrap();
        assert_eq!(
            (regs.rip, regs.rbx, regs.rflags),
            (0x100_0200, PVH_INFO_START, 2)
        );
        let sregs = vcpu.get_sregs().unwrap();
        assert_ne!(sregs.cr0 & bits::CR0_PE, 0);
        assert_eq!(sregs.cr0 & bits::CR0_PG, 0);
        assert_eq!(sregs.efer & bits::EFER_LMA, 0);
        assert_eq!(
            (sregs.cs.db, sregs.cs.l, sregs.cs.limit),
            (1, 0, 0xffff_ffff)
        );
        assert_eq!((sregs.ds.base, sregs.ds.limit), (0, 0xffff_ffff));
    }

    #[test]
    fn kvm_fpu_reads_back() {
        let Some(kvm) = kvm_or_skip("kvm_fpu_reads_back") else {
            return;
        };
        let vm = kvm.create_vm().expect("create VM");
        let vcpu = vm.create_vcpu(0).expect("create vCPU");
        setup_fpu(&vcpu).unwrap();
        let fpu = vcpu.get_fpu().unwrap();
        assert_eq!(fpu.fcw, FPU_CONTROL_WORD);
        // KVM_GET_FPU does not report MXCSR (it leaves the field 0); the XSAVE image does. Its
        // legacy area holds MXCSR at byte 24, i.e. 32-bit word 6.
        let xsave = vcpu.get_xsave().unwrap();
        assert_eq!(xsave.region[6], MXCSR_DEFAULT);
    }

    #[test]
    fn kvm_msrs_read_back() {
        let Some(kvm) = kvm_or_skip("kvm_msrs_read_back") else {
            return;
        };
        let vm = kvm.create_vm().expect("create VM");
        let vcpu = vm.create_vcpu(0).expect("create vCPU");
        setup_msrs(&vcpu).unwrap();

        let expected = boot_msr_entries();
        let queries: Vec<kvm_msr_entry> = expected
            .iter()
            .map(|e| kvm_msr_entry {
                index: e.index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&queries).unwrap();
        assert_eq!(vcpu.get_msrs(&mut msrs).unwrap(), expected.len());
        for (got, want) in msrs.as_slice().iter().zip(&expected) {
            assert_eq!(got.index, want.index);
            if want.index == msr::IA32_TSC {
                // The TSC has been counting since it was zeroed.
                continue;
            }
            assert_eq!(got.data, want.data, "MSR {:#x}", want.index);
        }
    }

    #[test]
    fn kvm_lapic_lints_read_back() {
        let Some(kvm) = kvm_or_skip("kvm_lapic_lints_read_back") else {
            return;
        };
        let vm = kvm.create_vm().expect("create VM");
        vm.create_irq_chip().expect("create irqchip");
        let vcpu = vm.create_vcpu(0).expect("create vCPU");
        setup_lapic_lints(&vcpu).unwrap();
        let lapic = vcpu.get_lapic().unwrap();
        let lint0 = lapic_reg(&lapic, APIC_LVT_LINT0).unwrap();
        let lint1 = lapic_reg(&lapic, APIC_LVT_LINT1).unwrap();
        assert_eq!(lint0 & APIC_DELIVERY_MODE_MASK, APIC_MODE_EXTINT);
        assert_eq!(lint1 & APIC_DELIVERY_MODE_MASK, APIC_MODE_NMI);
    }

    #[test]
    fn kvm_lapic_without_irqchip_is_an_error() {
        let Some(kvm) = kvm_or_skip("kvm_lapic_without_irqchip_is_an_error") else {
            return;
        };
        let vm = kvm.create_vm().expect("create VM");
        let vcpu = vm.create_vcpu(0).expect("create vCPU");
        assert!(matches!(setup_lapic_lints(&vcpu), Err(Error::GetLapic(_))));
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn kvm_linux64_guest_runs_in_long_mode_on_the_identity_map() {
        let Some(kvm) = kvm_or_skip("kvm_linux64_guest_runs_in_long_mode_on_the_identity_map")
        else {
            return;
        };
        let test_vm = test_vm(&kvm, 64 * MIB);
        #[rustfmt::skip]
        let code: &[u8] = &[
            0x66, 0xba, 0xf8, 0x03,                         // mov dx, 0x3f8
            0xa1, 0x30, 0x00, 0xe0, 0xfe, 0, 0, 0, 0,       // mov eax, [0xfee00030] (LAPIC version)
            0xef,                                           // out dx, eax
            0xa1, 0x78, 0x56, 0x34, 0x02, 0, 0, 0, 0,       // mov eax, [0x2345678]
            0xef,                                           // out dx, eax
            0x89, 0xf0, 0xef,                               // mov eax, esi; out dx, eax
            0x89, 0xe0, 0xef,                               // mov eax, esp; out dx, eax
            // An SSE load: #UD (and, with no IDT, a triple fault) unless CR4.OSFXSR is set.
            0x0f, 0x10, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00, // movups xmm0, [0x200000]
            0x89, 0xd8, 0xef,                               // mov eax, ebx; out dx, eax
            0x0f, 0x20, 0xc0, 0xef,                         // mov rax, cr0; out dx, eax
            0x66, 0xba, 0xf9, 0x03, 0xef,                   // mov dx, 0x3f9; out dx, eax (done)
        ];
        let mem = &test_vm.mem;
        mem.write_slice(code, GuestAddress(0x10_0000)).unwrap();
        mem.write_obj(0xcafe_f00d_u32, GuestAddress(0x234_5678))
            .unwrap();

        let mut vcpu = test_vm.vm.create_vcpu(0).expect("create vCPU");
        let cpuid = kvm
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        vcpu.set_cpuid2(&cpuid).unwrap();
        setup_vcpu_regs(&vcpu, mem, &BootEntry::Linux64 { entry: 0x10_0000 }).unwrap();
        setup_fpu(&vcpu).unwrap();
        let results = run_test_guest(&mut vcpu);

        assert_eq!(results.len(), 6, "{results:x?}");
        assert_eq!(
            results[0] & 0xff,
            0x14,
            "LAPIC version read through the MMIO hole"
        );
        assert_eq!(results[1], 0xcafe_f00d, "RAM read through the identity map");
        assert_eq!(u64::from(results[2]), ZERO_PAGE_START);
        assert_eq!(u64::from(results[3]), BOOT_STACK_POINTER);
        assert_eq!(results[4], 0, "survived the SSE instruction");
        let cr0 = u64::from(results[5]);
        assert_eq!(
            cr0 & (bits::CR0_PE | bits::CR0_PG),
            bits::CR0_PE | bits::CR0_PG
        );
        assert_eq!(cr0 & (bits::CR0_CD | bits::CR0_NW), 0, "caches on");
    }

    #[test]
    fn kvm_pvh_guest_runs_in_flat_protected_mode() {
        let Some(kvm) = kvm_or_skip("kvm_pvh_guest_runs_in_flat_protected_mode") else {
            return;
        };
        let test_vm = test_vm(&kvm, 64 * MIB);
        #[rustfmt::skip]
        let code: &[u8] = &[
            0x66, 0xba, 0xf8, 0x03,     // mov dx, 0x3f8
            0x89, 0xd8, 0xef,           // mov eax, ebx; out dx, eax
            0x8b, 0x03, 0xef,           // mov eax, [ebx]; out dx, eax (start info magic)
            0x0f, 0x20, 0xc0, 0xef,     // mov eax, cr0; out dx, eax
            0x8c, 0xc8, 0xef,           // mov eax, cs; out dx, eax
            0x66, 0xba, 0xf9, 0x03, 0xef, // mov dx, 0x3f9; out dx, eax (done)
        ];
        let mem = &test_vm.mem;
        mem.write_slice(code, GuestAddress(0x10_0000)).unwrap();
        crate::boot::write_pvh_start_info(mem, 64 * MIB, crate::layout::CMDLINE_START, None)
            .unwrap();

        let mut vcpu = test_vm.vm.create_vcpu(0).expect("create vCPU");
        setup_vcpu_regs(&vcpu, mem, &BootEntry::Pvh { entry: 0x10_0000 }).unwrap();
        let results = run_test_guest(&mut vcpu);

        assert_eq!(results.len(), 4, "{results:x?}");
        assert_eq!(u64::from(results[0]), PVH_INFO_START);
        assert_eq!(results[1], 0x336e_c578);
        let cr0 = u64::from(results[2]);
        assert_eq!(cr0 & (bits::CR0_PE | bits::CR0_PG), bits::CR0_PE);
        assert_eq!(results[3] & 0xffff, u32::from(CODE_SELECTOR));
    }
}
