//! Guest RAM: how many bytes of RAM become which guest physical regions.
//!
//! RAM starts at 0 and runs up to the 32-bit MMIO hole; whatever does not fit below the hole
//! continues at 4 GiB. The VMM builds its `GuestMemoryMmap` from [`ram_regions`], and the e820
//! map describes the same RAM to the guest.

use vm_memory::GuestAddress;

use crate::layout::{MAX_MEMORY, MIN_MEMORY, MMIO_HOLE_START, PAGE_SIZE, RAM_64BIT_START};

/// Why a guest RAM size is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Less RAM than [`MIN_MEMORY`].
    #[error("guest RAM of {0} bytes is below the minimum of {MIN_MEMORY} bytes")]
    TooSmall(u64),
    /// More RAM than [`MAX_MEMORY`].
    #[error("guest RAM of {0} bytes is above the maximum of {MAX_MEMORY} bytes")]
    TooLarge(u64),
    /// Not a whole number of pages.
    #[error("guest RAM of {0} bytes is not a multiple of the {PAGE_SIZE}-byte page size")]
    NotPageAligned(u64),
}

/// Check that `mem_size` bytes is a RAM size Canto can lay out: at least [`MIN_MEMORY`], at most
/// [`MAX_MEMORY`], whole pages. The other functions of this crate accept any size without
/// panicking, but only validated sizes give a guest that can boot.
pub fn validate_mem_size(mem_size: u64) -> Result<(), Error> {
    if mem_size < MIN_MEMORY {
        return Err(Error::TooSmall(mem_size));
    }
    if mem_size > MAX_MEMORY {
        return Err(Error::TooLarge(mem_size));
    }
    if mem_size & (PAGE_SIZE - 1) != 0 {
        return Err(Error::NotPageAligned(mem_size));
    }
    Ok(())
}

/// Bytes of RAM below the MMIO hole, i.e. the end (exclusive) of low RAM.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_HOLE_START)
}

/// Bytes of RAM that live above 4 GiB.
pub fn high_ram_size(mem_size: u64) -> u64 {
    mem_size.saturating_sub(MMIO_HOLE_START)
}

/// The guest RAM regions for `mem_size` bytes of RAM: below the MMIO hole, and the rest from
/// 4 GiB. A size of 0 gives no regions.
///
/// Sizes are clamped so that no region reaches past the end of the 64-bit address space; callers
/// should run [`validate_mem_size`] first.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, usize)> {
    let mut regions = Vec::with_capacity(2);
    let low = low_ram_end(mem_size);
    if low > 0 {
        regions.push((GuestAddress(0), to_usize(low)));
    }
    // Clamp so that RAM_64BIT_START + high never overflows.
    let high = high_ram_size(mem_size).min(u64::MAX - RAM_64BIT_START);
    if high > 0 {
        regions.push((GuestAddress(RAM_64BIT_START), to_usize(high)));
    }
    regions
}

/// `u64` to `usize`, saturating (only matters on 32-bit hosts, which Canto does not target).
fn to_usize(value: u64) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemoryBackend, GuestMemoryMmap};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_ram_is_one_region_from_zero() {
        assert_eq!(
            ram_regions(128 * MIB),
            vec![(GuestAddress(0), (128 * MIB) as usize)]
        );
    }

    #[test]
    fn ram_exactly_filling_the_space_below_the_hole_is_one_region() {
        assert_eq!(
            ram_regions(MMIO_HOLE_START),
            vec![(GuestAddress(0), MMIO_HOLE_START as usize)]
        );
    }

    #[test]
    fn ram_beyond_the_hole_continues_at_4_gib() {
        assert_eq!(
            ram_regions(4 * GIB),
            vec![
                (GuestAddress(0), (3 * GIB) as usize),
                (GuestAddress(RAM_64BIT_START), GIB as usize),
            ]
        );
        let total: usize = ram_regions(10 * GIB).iter().map(|r| r.1).sum();
        assert_eq!(total as u64, 10 * GIB);
    }

    #[test]
    fn zero_ram_gives_no_regions_and_huge_ram_does_not_overflow() {
        assert!(ram_regions(0).is_empty());
        let regions = ram_regions(u64::MAX);
        let (start, size) = regions[1];
        assert!(start.0.checked_add(size as u64).is_some());
    }

    #[test]
    fn regions_build_a_guest_memory() {
        // The regions must be acceptable to vm-memory as they are (sorted, non-overlapping).
        let mem = GuestMemoryMmap::<()>::from_ranges(&ram_regions(64 * MIB)).unwrap();
        assert_eq!(mem.num_regions(), 1);
        assert!(mem.address_in_range(GuestAddress(64 * MIB - 1)));
        assert!(!mem.address_in_range(GuestAddress(64 * MIB)));
    }

    #[test]
    fn validation_accepts_sane_sizes_and_rejects_the_rest() {
        assert_eq!(validate_mem_size(MIN_MEMORY), Ok(()));
        assert_eq!(validate_mem_size(8 * GIB), Ok(()));
        assert_eq!(validate_mem_size(MAX_MEMORY), Ok(()));
        assert_eq!(validate_mem_size(0), Err(Error::TooSmall(0)));
        assert_eq!(
            validate_mem_size(MIN_MEMORY - PAGE_SIZE),
            Err(Error::TooSmall(MIN_MEMORY - PAGE_SIZE))
        );
        assert_eq!(
            validate_mem_size(MAX_MEMORY + PAGE_SIZE),
            Err(Error::TooLarge(MAX_MEMORY + PAGE_SIZE))
        );
        assert_eq!(
            validate_mem_size(MIN_MEMORY + 1),
            Err(Error::NotPageAligned(MIN_MEMORY + 1))
        );
    }
}
