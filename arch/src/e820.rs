//! The e820 memory map the guest sees, shared by the Linux zero page and the PVH start info.

use crate::layout::{EBDA_START, HIMEM_START, RAM_64BIT_START};
use crate::memory::{high_ram_size, low_ram_end};

/// Raw e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// Raw e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// What an e820 range is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM.
    Ram,
    /// Not to be used by the OS.
    Reserved,
}

impl E820Kind {
    /// The raw type number used in `boot_e820_entry` and `hvm_memmap_table_entry`.
    pub fn raw(self) -> u32 {
        match self {
            E820Kind::Ram => E820_RAM,
            E820Kind::Reserved => E820_RESERVED,
        }
    }
}

/// One range of the e820 map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First guest physical address of the range.
    pub addr: u64,
    /// Length of the range in bytes (never 0 in a map from [`e820_map`]).
    pub size: u64,
    /// What the range is.
    pub kind: E820Kind,
}

impl E820Entry {
    /// End (exclusive) of the range.
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.size)
    }
}

/// The e820 map for `mem_size` bytes of RAM laid out by [`crate::memory::ram_regions`]:
/// RAM [0, EBDA_START), reserved [EBDA_START, 1 MiB), RAM [1 MiB, min(end, hole)), RAM above
/// 4 GiB. Ranges are sorted and never overlap; ranges that would be empty (or lie beyond the
/// RAM for tiny sizes) are left out.
pub fn e820_map(mem_size: u64) -> Vec<E820Entry> {
    let low_end = low_ram_end(mem_size);
    let mut map = Vec::with_capacity(4);
    let mut push = |addr: u64, end: u64, kind: E820Kind| {
        if end > addr {
            map.push(E820Entry {
                addr,
                size: end - addr,
                kind,
            });
        }
    };
    push(0, low_end.min(EBDA_START), E820Kind::Ram);
    // The EBDA and the legacy BIOS/VGA area: the MP table lives here.
    push(EBDA_START, low_end.min(HIMEM_START), E820Kind::Reserved);
    push(HIMEM_START, low_end, E820Kind::Ram);
    let high = high_ram_size(mem_size).min(u64::MAX - RAM_64BIT_START);
    push(RAM_64BIT_START, RAM_64BIT_START + high, E820Kind::Ram);
    map
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MMIO_HOLE_END, MMIO_HOLE_START};
    use crate::memory::ram_regions;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn ram(addr: u64, size: u64) -> E820Entry {
        E820Entry {
            addr,
            size,
            kind: E820Kind::Ram,
        }
    }

    fn ebda() -> E820Entry {
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820Kind::Reserved,
        }
    }

    #[test]
    fn ram_below_the_hole() {
        assert_eq!(
            e820_map(256 * MIB),
            vec![
                ram(0, EBDA_START),
                ebda(),
                ram(HIMEM_START, 256 * MIB - HIMEM_START)
            ]
        );
    }

    #[test]
    fn ram_ending_exactly_at_the_hole() {
        assert_eq!(
            e820_map(MMIO_HOLE_START),
            vec![
                ram(0, EBDA_START),
                ebda(),
                ram(HIMEM_START, MMIO_HOLE_START - HIMEM_START)
            ]
        );
    }

    #[test]
    fn ram_above_4_gib() {
        assert_eq!(
            e820_map(6 * GIB),
            vec![
                ram(0, EBDA_START),
                ebda(),
                ram(HIMEM_START, MMIO_HOLE_START - HIMEM_START),
                ram(MMIO_HOLE_END, 3 * GIB),
            ]
        );
    }

    #[test]
    fn maps_are_sorted_non_overlapping_and_avoid_the_hole() {
        for mem_size in [
            32 * MIB,
            MMIO_HOLE_START - 4096,
            MMIO_HOLE_START,
            MMIO_HOLE_START + 4096,
            4 * GIB,
            64 * GIB,
        ] {
            let map = e820_map(mem_size);
            for pair in map.windows(2) {
                assert!(pair[0].end() <= pair[1].addr, "{mem_size:#x}: {map:x?}");
            }
            for entry in &map {
                assert!(entry.size > 0);
                assert!(
                    entry.end() <= MMIO_HOLE_START || entry.addr >= MMIO_HOLE_END,
                    "{mem_size:#x}: {entry:x?} touches the MMIO hole"
                );
            }
            let ram_bytes: u64 = map
                .iter()
                .filter(|e| e.kind == E820Kind::Ram)
                .map(|e| e.size)
                .sum();
            assert_eq!(ram_bytes + (HIMEM_START - EBDA_START), mem_size);
        }
    }

    #[test]
    fn ebda_is_reserved() {
        let map = e820_map(128 * MIB);
        let covering: Vec<_> = map
            .iter()
            .filter(|e| e.addr <= EBDA_START && EBDA_START < e.end())
            .collect();
        assert_eq!(covering.len(), 1);
        assert_eq!(covering[0].kind, E820Kind::Reserved);
        assert_eq!(covering[0].end(), HIMEM_START);
    }

    #[test]
    fn every_e820_range_is_backed_by_a_ram_region() {
        // The guest may touch anything the e820 map names (reserved ranges included, the MP
        // table lives there), so each range must lie inside one of the RAM regions, and together
        // they must cover the regions exactly.
        for mem_size in [32 * MIB, MMIO_HOLE_START, 5 * GIB] {
            let regions = ram_regions(mem_size);
            let map = e820_map(mem_size);
            for entry in &map {
                assert!(
                    regions.iter().any(|(start, len)| start.0 <= entry.addr
                        && entry.end() <= start.0 + *len as u64),
                    "{entry:x?} not in {regions:x?}"
                );
            }
            let region_bytes: u64 = regions.iter().map(|r| r.1 as u64).sum();
            let map_bytes: u64 = map.iter().map(|e| e.size).sum();
            assert_eq!(region_bytes, map_bytes);
        }
    }

    #[test]
    fn tiny_sizes_do_not_produce_ranges_beyond_ram() {
        assert!(e820_map(0).is_empty());
        assert_eq!(e820_map(0x1000), vec![ram(0, 0x1000)]);
        assert_eq!(
            e820_map(EBDA_START + 0x100),
            vec![
                ram(0, EBDA_START),
                E820Entry {
                    addr: EBDA_START,
                    size: 0x100,
                    kind: E820Kind::Reserved
                }
            ]
        );
    }

    #[test]
    fn raw_types_match_the_e820_numbering() {
        assert_eq!(E820Kind::Ram.raw(), 1);
        assert_eq!(E820Kind::Reserved.raw(), 2);
    }
}
