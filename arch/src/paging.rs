//! Identity page tables for 64-bit boot: guest virtual == guest physical for 0..4 GiB.
//!
//! Long mode cannot be entered without paging, so the 64-bit boot protocol needs some mapping in
//! place. Mapping the whole first 4 GiB (not just the kernel) lets a freestanding test guest reach
//! the 32-bit MMIO window, the IO-APIC and the local APIC without building its own tables. One
//! PML4 entry points to one PDPT whose four entries point to four page directories of 2 MiB pages.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{
    MMIO_HOLE_END, MMIO_HOLE_START, PAGE_SIZE, PDE_PAGES, PDE_START, PDPTE_START, PML4_START,
};

/// Failure writing the page tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Guest memory rejected the write.
    #[error("failed to write the {table} at {addr:#x}: {source}")]
    Write {
        /// Which level of the tables.
        table: &'static str,
        /// Where it was being written.
        addr: u64,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Page-table entry bits.
pub mod pte {
    /// The entry is valid.
    pub const PRESENT: u64 = 1 << 0;
    /// Writes allowed.
    pub const WRITABLE: u64 = 1 << 1;
    /// Page-level write-through.
    pub const WRITE_THROUGH: u64 = 1 << 3;
    /// Page-level cache disable.
    pub const CACHE_DISABLE: u64 = 1 << 4;
    /// In a page directory entry: maps a 2 MiB page instead of pointing to a page table.
    pub const PAGE_SIZE_2M: u64 = 1 << 7;
    /// Bits of an entry holding the physical address of the next level / the page.
    pub const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;
}

/// Bytes mapped by one page directory entry.
pub const LARGE_PAGE_SIZE: u64 = 2 << 20;
const ENTRIES_PER_TABLE: u64 = PAGE_SIZE / 8;

fn write_table(
    mem: &GuestMemoryMmap,
    table: &'static str,
    addr: u64,
    entries: &[u64],
) -> Result<(), Error> {
    let bytes: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|source| Error::Write {
            table,
            addr,
            source,
        })
}

/// The page directory entry mapping the 2 MiB page at `addr`.
fn large_page_entry(addr: u64) -> u64 {
    let mut entry = addr | pte::PRESENT | pte::WRITABLE | pte::PAGE_SIZE_2M;
    // Device registers live in the MMIO hole; reads and writes there must reach the device, so
    // the guest must not cache them.
    if (MMIO_HOLE_START..MMIO_HOLE_END).contains(&addr) {
        entry |= pte::CACHE_DISABLE | pte::WRITE_THROUGH;
    }
    entry
}

/// Write page tables identity-mapping 0..4 GiB with 2 MiB pages at PML4_START / PDPTE_START /
/// PDE_START and return the value for CR3. Whole tables are written (unused entries zeroed), so
/// stale memory contents cannot leak into the mapping.
pub fn setup_identity_page_tables(mem: &GuestMemoryMmap) -> Result<u64, Error> {
    let table_len = ENTRIES_PER_TABLE as usize;

    let mut pml4 = vec![0u64; table_len];
    pml4[0] = PDPTE_START | pte::PRESENT | pte::WRITABLE;
    write_table(mem, "PML4", PML4_START, &pml4)?;

    let mut pdpt = vec![0u64; table_len];
    for (gib, entry) in pdpt.iter_mut().take(PDE_PAGES as usize).enumerate() {
        *entry = (PDE_START + gib as u64 * PAGE_SIZE) | pte::PRESENT | pte::WRITABLE;
    }
    write_table(mem, "PDPT", PDPTE_START, &pdpt)?;

    let pds: Vec<u64> = (0..PDE_PAGES * ENTRIES_PER_TABLE)
        .map(|index| large_page_entry(index * LARGE_PAGE_SIZE))
        .collect();
    write_table(mem, "page directories", PDE_START, &pds)?;

    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn low_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn read_entry(mem: &GuestMemoryMmap, table: u64, index: u64) -> u64 {
        mem.read_obj(GuestAddress(table + index * 8)).unwrap()
    }

    /// Translate a virtual address the way the MMU would, through the tables at `cr3`.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, virt: u64) -> Option<(u64, u64)> {
        let pml4e = read_entry(mem, cr3 & pte::ADDRESS_MASK, (virt >> 39) & 0x1ff);
        if pml4e & pte::PRESENT == 0 {
            return None;
        }
        let pdpte = read_entry(mem, pml4e & pte::ADDRESS_MASK, (virt >> 30) & 0x1ff);
        if pdpte & pte::PRESENT == 0 {
            return None;
        }
        let pde = read_entry(mem, pdpte & pte::ADDRESS_MASK, (virt >> 21) & 0x1ff);
        if pde & pte::PRESENT == 0 {
            return None;
        }
        assert_ne!(pde & pte::PAGE_SIZE_2M, 0, "only 2 MiB pages expected");
        let phys =
            (pde & pte::ADDRESS_MASK & !(LARGE_PAGE_SIZE - 1)) | (virt & (LARGE_PAGE_SIZE - 1));
        Some((phys, pde))
    }

    #[test]
    fn returns_pml4_as_cr3() {
        assert_eq!(
            setup_identity_page_tables(&low_memory()).unwrap(),
            PML4_START
        );
    }

    #[test]
    fn walk_maps_every_2m_page_below_4g_to_itself() {
        let mem = low_memory();
        let cr3 = setup_identity_page_tables(&mem).unwrap();
        for page in 0..(MMIO_HOLE_END / LARGE_PAGE_SIZE) {
            let virt = page * LARGE_PAGE_SIZE + 0x1234;
            let (phys, pde) = translate(&mem, cr3, virt).expect("mapped");
            assert_eq!(phys, virt);
            assert_ne!(pde & pte::WRITABLE, 0);
        }
        // Spot-check the interesting addresses.
        for virt in [0, 0x9000, 0x10_0000, 0xfec0_0000, 0xfee0_0000, 0xffff_ffff] {
            assert_eq!(translate(&mem, cr3, virt).unwrap().0, virt);
        }
    }

    #[test]
    fn nothing_is_mapped_at_or_above_4g() {
        let mem = low_memory();
        let cr3 = setup_identity_page_tables(&mem).unwrap();
        assert!(translate(&mem, cr3, 0x1_0000_0000).is_none());
        assert!(translate(&mem, cr3, 0x80_0000_0000).is_none());
    }

    #[test]
    fn only_the_mmio_hole_is_uncached() {
        let mem = low_memory();
        let cr3 = setup_identity_page_tables(&mem).unwrap();
        let uncached = |virt| translate(&mem, cr3, virt).unwrap().1 & pte::CACHE_DISABLE != 0;
        assert!(!uncached(0x10_0000));
        assert!(!uncached(MMIO_HOLE_START - 1));
        assert!(uncached(MMIO_HOLE_START));
        assert!(uncached(0xfee0_0000));
    }

    #[test]
    fn stale_entries_are_cleared() {
        let mem = low_memory();
        mem.write_obj(0xdead_b000_u64 | 1, GuestAddress(PML4_START + 8 * 300))
            .unwrap();
        let cr3 = setup_identity_page_tables(&mem).unwrap();
        assert_eq!(read_entry(&mem, cr3, 300), 0);
    }

    #[test]
    fn missing_memory_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0xa000)]).unwrap();
        assert!(matches!(
            setup_identity_page_tables(&mem),
            Err(Error::Write {
                table: "PDPT",
                addr: PDPTE_START,
                ..
            })
        ));
    }
}
