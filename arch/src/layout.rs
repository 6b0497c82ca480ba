//! The guest physical memory map every Canto guest gets.
//!
//! Everything the VMM places in guest memory before the first instruction runs has a fixed home
//! here, so that the modules writing those structures and the tests checking them agree on where
//! things live. The low boot structures all sit below 640 KiB, in RAM the e820 map reports as
//! usable; the kernel is expected to reserve what it still needs (it copies boot_params and the
//! command line out early).

/// Where the kernel is loaded: 1 MiB, the first address above the legacy BIOS/VGA area.
pub const HIMEM_START: u64 = 0x10_0000;

/// The boot GDT (four 8-byte descriptors: null, code, data, TSS).
pub const BOOT_GDT_START: u64 = 0x500;
/// The boot IDT: a single empty gate, so that any early exception triple-faults instead of
/// jumping through garbage.
pub const BOOT_IDT_START: u64 = 0x520;

/// `hvm_start_info` for PVH boot (its address goes to the guest in %ebx).
pub const PVH_INFO_START: u64 = 0x6000;
/// The `hvm_memmap_table_entry` array for PVH boot.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// How many memory map entries fit between [`PVH_MEMMAP_START`] and [`PVH_MODLIST_START`].
pub const PVH_MEMMAP_MAX_ENTRIES: usize = 16;
/// Size in bytes of one `hvm_memmap_table_entry`.
pub const PVH_MEMMAP_ENTRY_SIZE: u64 = 24;
/// The `hvm_modlist_entry` array for PVH boot (the initramfs), right after the memory map.
pub const PVH_MODLIST_START: u64 =
    PVH_MEMMAP_START + PVH_MEMMAP_MAX_ENTRIES as u64 * PVH_MEMMAP_ENTRY_SIZE;

/// The Linux zero page (`boot_params`, 4 KiB).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for 64-bit boot; the stack grows down into the page above the zero page.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Level-4 page map of the boot identity mapping.
pub const PML4_START: u64 = 0x9000;
/// The single page-directory-pointer table (4 entries used, one per GiB).
pub const PDPTE_START: u64 = 0xa000;
/// Four page directories mapping 0..4 GiB with 2 MiB pages (0xb000..0xf000).
pub const PDE_START: u64 = 0xb000;
/// Number of page directories (one per GiB of the identity mapping).
pub const PDE_PAGES: u64 = 4;

/// The kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Room reserved for the command line, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;

/// Start of the (emulated) Extended BIOS Data Area, the last KiB of base memory. Linux scans it
/// for the MP floating pointer, so the MP table goes here; [EBDA_START, 1 MiB) is reported as
/// reserved.
pub const EBDA_START: u64 = 0x9_fc00;

/// The 32-bit MMIO hole: no RAM in [3 GiB, 4 GiB); RAM beyond 3 GiB continues at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// End (exclusive) of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

/// The window PCI BARs below 4 GiB are allocated from.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
/// Size of the 32-bit PCI BAR window (512 MiB), which ends well before the IO-APIC.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;

/// The IO-APIC's MMIO registers (the architectural default address).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APIC's MMIO registers (the architectural default address).
pub const APIC_START: u64 = 0xfee0_0000;

/// Where RAM above the MMIO hole starts.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;

/// The smallest guest RAM Canto accepts: 32 MiB.
///
/// The fixed boot structures need only the first MiB, but a guest below this cannot usefully boot
/// a Linux kernel: the kernel is loaded at 1 MiB and a modern x86_64 kernel needs well over 16 MiB
/// for its image, decompression and early allocations, and the initramfs is placed at the top of
/// RAM, so it must not collide with the kernel.
pub const MIN_MEMORY: u64 = 32 << 20;

/// The largest guest RAM Canto accepts: 1 TiB. Keeps every guest physical address below 2^41,
/// comfortably inside the physical address width of any host KVM runs on, and keeps all address
/// arithmetic far from overflow.
pub const MAX_MEMORY: u64 = 1 << 40;

/// Guest page size; RAM sizes and initramfs placement are aligned to it.
pub const PAGE_SIZE: u64 = 0x1000;

// The map's invariants, checked at compile time.
const _: () = assert!(MMIO_HOLE_END == RAM_64BIT_START);
const _: () = assert!(PCI_MMIO32_START >= MMIO_HOLE_START);
const _: () = assert!(PCI_MMIO32_START + PCI_MMIO32_SIZE <= IOAPIC_START);
const _: () = assert!(IOAPIC_START < APIC_START && APIC_START < MMIO_HOLE_END);
const _: () = assert!(MIN_MEMORY & (PAGE_SIZE - 1) == 0 && MAX_MEMORY & (PAGE_SIZE - 1) == 0);
const _: () = assert!(MIN_MEMORY > HIMEM_START && MIN_MEMORY < MAX_MEMORY);
const _: () = assert!(PVH_MODLIST_START + 32 <= ZERO_PAGE_START);
const _: () = assert!(BOOT_GDT_START + 4 * 8 <= BOOT_IDT_START);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_structures_do_not_overlap() {
        // (start, end) of every fixed structure below 1 MiB, in address order.
        let regions = [
            (BOOT_GDT_START, BOOT_GDT_START + 4 * 8),
            (BOOT_IDT_START, BOOT_IDT_START + 8),
            (PVH_INFO_START, PVH_INFO_START + 56),
            (
                PVH_MEMMAP_START,
                PVH_MEMMAP_START + PVH_MEMMAP_MAX_ENTRIES as u64 * PVH_MEMMAP_ENTRY_SIZE,
            ),
            (PVH_MODLIST_START, PVH_MODLIST_START + 32),
            (ZERO_PAGE_START, ZERO_PAGE_START + PAGE_SIZE),
            (ZERO_PAGE_START + PAGE_SIZE, BOOT_STACK_POINTER + 0x10),
            (PML4_START, PML4_START + PAGE_SIZE),
            (PDPTE_START, PDPTE_START + PAGE_SIZE),
            (PDE_START, PDE_START + PDE_PAGES * PAGE_SIZE),
            (CMDLINE_START, CMDLINE_START + CMDLINE_MAX_SIZE as u64),
            (EBDA_START, HIMEM_START),
        ];
        for pair in regions.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "{:#x?} overlaps {:#x?}",
                pair[0],
                pair[1]
            );
        }
        assert!(regions.iter().all(|r| r.1 <= HIMEM_START));
    }
}
