//! What the kernel reads at boot besides its own image: the Linux zero page (`boot_params`) for
//! the 64-bit boot protocol, the `hvm_start_info` for PVH, and where the initramfs goes.

use linux_loader::loader::bootparam::{boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::e820::e820_map;
use crate::layout::{
    CMDLINE_MAX_SIZE, HIMEM_START, PAGE_SIZE, PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES,
    PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::memory::low_ram_end;

/// Why a boot structure could not be written or placed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The command line is longer than the room reserved for it.
    #[error("a command line of {0} bytes exceeds the {CMDLINE_MAX_SIZE}-byte limit")]
    CmdlineTooLarge(usize),
    /// A range handed to the guest is not (entirely) in guest RAM.
    #[error("the {what} at {addr:#x} (+{size:#x}) is not inside guest memory")]
    OutsideMemory {
        /// "command line" or "initramfs".
        what: &'static str,
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        size: u64,
    },
    /// The memory map has more entries than the structure can carry.
    #[error("{entries} memory map entries do not fit (at most {max})")]
    TooManyMemmapEntries {
        /// Entries in the map.
        entries: usize,
        /// Room in the structure.
        max: usize,
    },
    /// An initramfs needs at least one byte.
    #[error("the initramfs is empty")]
    EmptyInitramfs,
    /// No page-aligned spot in the allowed window is large enough.
    #[error("an initramfs of {size} bytes does not fit in guest RAM between {lowest:#x} and {highest:#x}")]
    InitramfsDoesNotFit {
        /// Size of the initramfs.
        size: u64,
        /// Lowest address it could start at.
        lowest: u64,
        /// Highest address it could end at (exclusive).
        highest: u64,
    },
    /// Guest memory rejected the write.
    #[error("failed to write the {what} to guest memory: {source}")]
    Write {
        /// Which structure.
        what: &'static str,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

// linux-loader's boot structures do not implement ByteValued (and the orphan rule prevents
// implementing it for them here), so each gets a transparent wrapper that does.

/// `boot_params` as a guest-memory object.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct BootParams(pub boot_params);
// SAFETY: `boot_params` is a `#[repr(C, packed)]` struct made only of integers, integer arrays and
// nested packed structs of the same, so it has no padding, no pointers, and every bit pattern is a
// valid value. The wrapper is `repr(transparent)`, so it has the same layout.
unsafe impl ByteValued for BootParams {}

/// `hvm_start_info` as a guest-memory object.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct StartInfo(pub hvm_start_info);
// SAFETY: `hvm_start_info` is `#[repr(C)]` with only u32/u64 fields laid out without padding
// (linux-loader asserts its 56-byte size), and any bit pattern is a valid value.
unsafe impl ByteValued for StartInfo {}

/// `hvm_modlist_entry` as a guest-memory object.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct ModlistEntry(pub hvm_modlist_entry);
// SAFETY: `hvm_modlist_entry` is `#[repr(C)]` with four u64 fields (32 bytes, no padding), and any
// bit pattern is a valid value.
unsafe impl ByteValued for ModlistEntry {}

/// `hvm_memmap_table_entry` as a guest-memory object.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
pub struct MemmapEntry(pub hvm_memmap_table_entry);
// SAFETY: `hvm_memmap_table_entry` is `#[repr(C)]` with two u64 and two u32 fields (24 bytes, no
// padding), and any bit pattern is a valid value.
unsafe impl ByteValued for MemmapEntry {}

const _: () =
    assert!(size_of::<hvm_memmap_table_entry>() as u64 == crate::layout::PVH_MEMMAP_ENTRY_SIZE);

/// `boot_flag` value marking a valid setup header.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `header` value "HdrS".
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a boot loader without an assigned id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Physical alignment the kernel is told it was loaded with when the header does not say (16 MiB,
/// which satisfies any CONFIG_PHYSICAL_ALIGN).
pub const DEFAULT_KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// Highest initramfs address for kernels whose header predates `initrd_addr_max` (boot protocol
/// < 2.03).
pub const LEGACY_INITRD_ADDR_MAX: u32 = 0x37ff_ffff;

fn check_in_memory(
    mem: &GuestMemoryMmap,
    what: &'static str,
    addr: u64,
    size: u64,
) -> Result<(), Error> {
    let outside = Error::OutsideMemory { what, addr, size };
    let len = usize::try_from(size).map_err(|_| Error::OutsideMemory { what, addr, size })?;
    if addr.checked_add(size).is_none()
        || !GuestMemoryBackend::check_range(mem, GuestAddress(addr), len)
    {
        return Err(outside);
    }
    Ok(())
}

/// The low and high 32 bits of a 64-bit address, for the split fields of the setup header.
fn split(value: u64) -> (u32, u32) {
    (value as u32, (value >> 32) as u32)
}

/// Build the zero page (see [`write_zero_page`]) without writing it.
pub fn build_zero_page(
    mem_size: u64,
    cmdline_addr: u64,
    cmdline_size: usize,
    initrd: Option<(u64, u64)>,
    setup_header: Option<setup_header>,
) -> Result<boot_params, Error> {
    if cmdline_size > CMDLINE_MAX_SIZE {
        return Err(Error::CmdlineTooLarge(cmdline_size));
    }
    let mut params = boot_params::default();
    if let Some(header) = setup_header {
        params.hdr = header;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG_MAGIC;
    params.hdr.header = HDRS_MAGIC;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = DEFAULT_KERNEL_ALIGNMENT;
    }
    let (cmdline_low, cmdline_high) = split(cmdline_addr);
    params.hdr.cmd_line_ptr = cmdline_low;
    params.ext_cmd_line_ptr = cmdline_high;
    // CMDLINE_MAX_SIZE fits in 32 bits, checked above.
    params.hdr.cmdline_size = cmdline_size as u32;
    if let Some((addr, size)) = initrd {
        let (addr_low, addr_high) = split(addr);
        let (size_low, size_high) = split(size);
        params.hdr.ramdisk_image = addr_low;
        params.ext_ramdisk_image = addr_high;
        params.hdr.ramdisk_size = size_low;
        params.ext_ramdisk_size = size_high;
    }

    let map = e820_map(mem_size);
    if map.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(Error::TooManyMemmapEntries {
            entries: map.len(),
            max: E820_MAX_ENTRIES_ZEROPAGE,
        });
    }
    // Copy the table out and back: fields of a packed struct cannot be borrowed in place.
    let mut table = params.e820_table;
    for (slot, entry) in table.iter_mut().zip(&map) {
        slot.addr = entry.addr;
        slot.size = entry.size;
        slot.r#type = entry.kind.raw();
    }
    params.e820_table = table;
    params.e820_entries = map.len() as u8;
    Ok(params)
}

/// Write the Linux zero page (`boot_params`) at ZERO_PAGE_START: the e820 table from
/// [`e820_map`], the command line pointer and size, the initramfs address and size, loader type
/// 0xff, boot flag 0xaa55, header magic "HdrS", and the kernel alignment. For a bzImage pass the
/// setup header the loader returned: it is the base the loader fields are filled into, keeping the
/// kernel's own fields (version, kernel_alignment, ...).
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline_addr: u64,
    cmdline_size: usize,
    initrd: Option<(u64, u64)>,
    setup_header: Option<setup_header>,
) -> Result<(), Error> {
    let params = build_zero_page(mem_size, cmdline_addr, cmdline_size, initrd, setup_header)?;
    check_in_memory(mem, "command line", cmdline_addr, cmdline_size as u64)?;
    if let Some((addr, size)) = initrd {
        check_in_memory(mem, "initramfs", addr, size)?;
    }
    mem.write_obj(BootParams(params), GuestAddress(ZERO_PAGE_START))
        .map_err(|source| Error::Write {
            what: "zero page",
            source,
        })
}

/// Tells a kernel whose boot structures are already written where the ACPI RSDP is: the PVH
/// start info's `rsdp_paddr` (`pvh`) or the zero page's `acpi_rsdp_addr`. Without it the kernel
/// would scan the BIOS area for the RSDP, slowly when interpreted.
pub fn set_acpi_rsdp(mem: &GuestMemoryMmap, pvh: bool, rsdp: u64) -> Result<(), Error> {
    let write_error = |what| move |source| Error::Write { what, source };
    if pvh {
        let mut info: StartInfo = mem
            .read_obj(GuestAddress(PVH_INFO_START))
            .map_err(write_error("PVH start info"))?;
        info.0.rsdp_paddr = rsdp;
        mem.write_obj(info, GuestAddress(PVH_INFO_START))
            .map_err(write_error("PVH start info"))
    } else {
        let mut params: BootParams = mem
            .read_obj(GuestAddress(ZERO_PAGE_START))
            .map_err(write_error("zero page"))?;
        params.0.acpi_rsdp_addr = rsdp;
        mem.write_obj(params, GuestAddress(ZERO_PAGE_START))
            .map_err(write_error("zero page"))
    }
}

/// Write the PVH `hvm_start_info` (magic XEN_HVM_START_MAGIC_VALUE, version 1) at PVH_INFO_START,
/// with the command line address, the memory map from [`e820_map`] at PVH_MEMMAP_START and, for
/// an initramfs, one `hvm_modlist_entry` at PVH_MODLIST_START (right after the memory map).
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    cmdline_addr: u64,
    initrd: Option<(u64, u64)>,
) -> Result<(), Error> {
    let map = e820_map(mem_size);
    if map.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(Error::TooManyMemmapEntries {
            entries: map.len(),
            max: PVH_MEMMAP_MAX_ENTRIES,
        });
    }
    check_in_memory(mem, "command line", cmdline_addr, 1)?;
    if let Some((addr, size)) = initrd {
        check_in_memory(mem, "initramfs", addr, size)?;
    }
    let write_error = |what| move |source| Error::Write { what, source };

    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: cmdline_addr,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(ModlistEntry(module), GuestAddress(PVH_MODLIST_START))
            .map_err(write_error("PVH module list"))?;
        start_info.nr_modules = 1;
        start_info.modlist_paddr = PVH_MODLIST_START;
    }
    for (index, entry) in map.iter().enumerate() {
        let raw = hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind.raw(),
            reserved: 0,
        };
        let addr = PVH_MEMMAP_START + index as u64 * crate::layout::PVH_MEMMAP_ENTRY_SIZE;
        mem.write_obj(MemmapEntry(raw), GuestAddress(addr))
            .map_err(write_error("PVH memory map"))?;
    }
    mem.write_obj(StartInfo(start_info), GuestAddress(PVH_INFO_START))
        .map_err(write_error("PVH start info"))
}

/// The highest address (inclusive) a kernel with this setup header accepts an initramfs at:
/// its `initrd_addr_max`, or the legacy 0x37ffffff for headers older than boot protocol 2.03.
pub fn initrd_addr_max(header: &setup_header) -> u64 {
    let version = header.version;
    let max = header.initrd_addr_max;
    if version < 0x0203 || max == 0 {
        u64::from(LEGACY_INITRD_ADDR_MAX)
    } else {
        u64::from(max)
    }
}

/// Where to put an initramfs of `size` bytes: page-aligned, as high as possible in RAM below the
/// MMIO hole, above the kernel load address. Error if it doesn't fit.
///
/// A 64-bit kernel accepts its initramfs anywhere in RAM; for a bzImage whose header limits it
/// (see [`initrd_addr_max`]) or to keep clear of the loaded kernel, use
/// [`initramfs_load_addr_within`].
pub fn initramfs_load_addr(mem_size: u64, size: u64) -> Result<u64, Error> {
    initramfs_load_addr_within(mem_size, size, HIMEM_START, u64::MAX)
}

/// [`initramfs_load_addr`] with explicit bounds: the initramfs starts at or above `lowest` (e.g.
/// the kernel's end) and its last byte is at or below `highest` (e.g. the header's
/// `initrd_addr_max`).
pub fn initramfs_load_addr_within(
    mem_size: u64,
    size: u64,
    lowest: u64,
    highest: u64,
) -> Result<u64, Error> {
    if size == 0 {
        return Err(Error::EmptyInitramfs);
    }
    let end = low_ram_end(mem_size).min(highest.saturating_add(1));
    let does_not_fit = Error::InitramfsDoesNotFit {
        size,
        lowest,
        highest: end,
    };
    let Some(start) = end.checked_sub(size) else {
        return Err(does_not_fit);
    };
    let aligned = start & !(PAGE_SIZE - 1);
    if aligned < lowest {
        return Err(does_not_fit);
    }
    Ok(aligned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e820::{E820Kind, E820_RAM, E820_RESERVED};
    use crate::layout::{CMDLINE_START, EBDA_START, MMIO_HOLE_START, RAM_64BIT_START};
    use crate::test_utils::low_memory;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    /// 64 MiB of RAM from 0, enough for every structure and a small initramfs.
    fn guest_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (64 * MIB) as usize)]).unwrap()
    }

    fn read_zero_page(mem: &GuestMemoryMmap) -> boot_params {
        mem.read_obj::<BootParams>(GuestAddress(ZERO_PAGE_START))
            .unwrap()
            .0
    }

    #[test]
    fn zero_page_has_the_loader_fields() {
        let mem = guest_memory();
        write_zero_page(&mem, 64 * MIB, CMDLINE_START, 42, None, None).unwrap();
        let params = read_zero_page(&mem);
        let hdr = params.hdr;
        assert_eq!({ hdr.type_of_loader }, 0xff);
        assert_eq!({ hdr.boot_flag }, 0xaa55);
        assert_eq!({ hdr.header }, 0x5372_6448);
        assert_eq!(&{ hdr.header }.to_le_bytes(), b"HdrS");
        assert_eq!({ hdr.kernel_alignment }, DEFAULT_KERNEL_ALIGNMENT);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.ext_cmd_line_ptr }, 0);
        assert_eq!({ hdr.cmdline_size }, 42);
        assert_eq!({ hdr.ramdisk_image }, 0);
        assert_eq!({ hdr.ramdisk_size }, 0);
    }

    #[test]
    fn zero_page_e820_table_matches_e820_map() {
        let mem = guest_memory();
        // The memory object only needs the low structures; the map describes 6 GiB.
        write_zero_page(&mem, 6 * GIB, CMDLINE_START, 1, None, None).unwrap();
        let params = read_zero_page(&mem);
        let map = e820_map(6 * GIB);
        assert_eq!(usize::from(params.e820_entries), map.len());
        let table = params.e820_table;
        for (raw, entry) in table.iter().zip(&map) {
            assert_eq!(
                ({ raw.addr }, { raw.size }, { raw.r#type }),
                (entry.addr, entry.size, entry.kind.raw())
            );
        }
        assert_eq!({ table[1].r#type }, E820_RESERVED);
        assert_eq!(
            ({ table[3].addr }, { table[3].r#type }),
            (RAM_64BIT_START, E820_RAM)
        );
        assert_eq!({ table[map.len()].size }, 0, "unused slots stay empty");
    }

    #[test]
    fn zero_page_initramfs_fields() {
        let mem = guest_memory();
        let initrd = (0x300_0000, 0x12_3456);
        write_zero_page(&mem, 64 * MIB, CMDLINE_START, 1, Some(initrd), None).unwrap();
        let params = read_zero_page(&mem);
        assert_eq!({ params.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ params.hdr.ramdisk_size }, 0x12_3456);
        assert_eq!({ params.ext_ramdisk_image }, 0);
        assert_eq!({ params.ext_ramdisk_size }, 0);
    }

    #[test]
    fn zero_page_splits_addresses_above_4g() {
        let params = build_zero_page(
            8 * GIB,
            0x1_2345_6000,
            1,
            Some((0x1_8000_0000, 0x1_0000_0001)),
            None,
        )
        .unwrap();
        assert_eq!(
            ({ params.hdr.cmd_line_ptr }, { params.ext_cmd_line_ptr }),
            (0x2345_6000, 1)
        );
        assert_eq!(
            ({ params.hdr.ramdisk_image }, { params.ext_ramdisk_image }),
            (0x8000_0000, 1)
        );
        assert_eq!(
            ({ params.hdr.ramdisk_size }, { params.ext_ramdisk_size }),
            (1, 1)
        );
    }

    #[test]
    fn zero_page_keeps_the_bzimage_setup_header() {
        let mem = guest_memory();
        let header = setup_header {
            setup_sects: 27,
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            initrd_addr_max: 0x7fff_ffff,
            loadflags: 1,
            type_of_loader: 0,
            boot_flag: 0xaa55,
            header: HDRS_MAGIC,
            ..Default::default()
        };
        write_zero_page(&mem, 64 * MIB, CMDLINE_START, 10, None, Some(header)).unwrap();
        let hdr = read_zero_page(&mem).hdr;
        assert_eq!({ hdr.setup_sects }, 27);
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!(
            { hdr.kernel_alignment },
            0x20_0000,
            "the kernel's own alignment wins"
        );
        assert_eq!({ hdr.initrd_addr_max }, 0x7fff_ffff);
        assert_eq!({ hdr.loadflags }, 1);
        assert_eq!(
            { hdr.type_of_loader },
            0xff,
            "loader fields are still filled in"
        );
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_START as u32);
    }

    #[test]
    fn zero_page_overwrites_stale_memory() {
        let mem = guest_memory();
        mem.write_slice(&[0xaa; 4096], GuestAddress(ZERO_PAGE_START))
            .unwrap();
        write_zero_page(&mem, 64 * MIB, CMDLINE_START, 1, None, None).unwrap();
        let params = read_zero_page(&mem);
        assert_eq!({ params.hdr.ramdisk_image }, 0);
        assert_eq!({ params.acpi_rsdp_addr }, 0);
    }

    #[test]
    fn zero_page_rejects_bad_cmdline_and_initramfs() {
        let mem = guest_memory();
        assert!(matches!(
            write_zero_page(
                &mem,
                64 * MIB,
                CMDLINE_START,
                CMDLINE_MAX_SIZE + 1,
                None,
                None
            ),
            Err(Error::CmdlineTooLarge(_))
        ));
        assert!(matches!(
            write_zero_page(&mem, 64 * MIB, 64 * MIB - 4, 16, None, None),
            Err(Error::OutsideMemory {
                what: "command line",
                ..
            })
        ));
        assert!(matches!(
            write_zero_page(
                &mem,
                64 * MIB,
                CMDLINE_START,
                1,
                Some((63 * MIB, 2 * MIB)),
                None
            ),
            Err(Error::OutsideMemory {
                what: "initramfs",
                ..
            })
        ));
        assert!(matches!(
            write_zero_page(&mem, 64 * MIB, CMDLINE_START, 1, Some((u64::MAX, 2)), None),
            Err(Error::OutsideMemory {
                what: "initramfs",
                ..
            })
        ));
    }

    #[test]
    fn zero_page_needs_its_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x7800)]).unwrap();
        assert!(matches!(
            write_zero_page(&mem, 64 * MIB, 0x1000, 1, None, None),
            Err(Error::Write {
                what: "zero page",
                ..
            })
        ));
    }

    fn read_start_info(mem: &GuestMemoryMmap) -> hvm_start_info {
        mem.read_obj::<StartInfo>(GuestAddress(PVH_INFO_START))
            .unwrap()
            .0
    }

    fn read_memmap(mem: &GuestMemoryMmap, info: &hvm_start_info) -> Vec<hvm_memmap_table_entry> {
        (0..u64::from(info.memmap_entries))
            .map(|i| {
                mem.read_obj::<MemmapEntry>(GuestAddress(info.memmap_paddr + i * 24))
                    .unwrap()
                    .0
            })
            .collect()
    }

    #[test]
    fn pvh_start_info_fields() {
        let mem = guest_memory();
        write_pvh_start_info(&mem, 64 * MIB, CMDLINE_START, None).unwrap();
        let info = read_start_info(&mem);
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.flags, 0);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.memmap_paddr, PVH_MEMMAP_START);
        assert_eq!(info.rsdp_paddr, 0);
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }

    #[test]
    fn pvh_memmap_matches_e820_map() {
        let mem = guest_memory();
        write_pvh_start_info(&mem, 5 * GIB, CMDLINE_START, None).unwrap();
        let info = read_start_info(&mem);
        let map = e820_map(5 * GIB);
        let memmap = read_memmap(&mem, &info);
        assert_eq!(memmap.len(), map.len());
        for (raw, entry) in memmap.iter().zip(&map) {
            assert_eq!(
                (raw.addr, raw.size, raw.type_, raw.reserved),
                (entry.addr, entry.size, entry.kind.raw(), 0)
            );
        }
        assert_eq!(memmap[1].addr, EBDA_START);
        assert_eq!(memmap[1].type_, E820Kind::Reserved.raw());
        assert_eq!(memmap[2].size, MMIO_HOLE_START - HIMEM_START);
    }

    #[test]
    fn pvh_initramfs_module_follows_the_memmap() {
        let mem = guest_memory();
        write_pvh_start_info(&mem, 64 * MIB, CMDLINE_START, Some((0x200_0000, 0x4000))).unwrap();
        let info = read_start_info(&mem);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, PVH_MODLIST_START);
        assert!(info.modlist_paddr >= info.memmap_paddr + u64::from(info.memmap_entries) * 24);
        let module = mem
            .read_obj::<ModlistEntry>(GuestAddress(PVH_MODLIST_START))
            .unwrap()
            .0;
        assert_eq!(
            (module.paddr, module.size, module.cmdline_paddr),
            (0x200_0000, 0x4000, 0)
        );
    }

    #[test]
    fn pvh_rejects_ranges_outside_memory() {
        let mem = guest_memory();
        assert!(matches!(
            write_pvh_start_info(&mem, 64 * MIB, 64 * MIB, None),
            Err(Error::OutsideMemory {
                what: "command line",
                ..
            })
        ));
        assert!(matches!(
            write_pvh_start_info(&mem, 64 * MIB, CMDLINE_START, Some((64 * MIB, 1))),
            Err(Error::OutsideMemory {
                what: "initramfs",
                ..
            })
        ));
        let tiny = low_memory();
        assert!(write_pvh_start_info(&tiny, 64 * MIB, CMDLINE_START, None).is_ok());
    }

    #[test]
    fn initramfs_goes_to_the_top_of_low_ram_page_aligned() {
        let addr = initramfs_load_addr(64 * MIB, 0x12_3456).unwrap();
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr + 0x12_3456 <= 64 * MIB);
        assert!(
            64 * MIB - addr - 0x12_3456 < PAGE_SIZE,
            "as high as possible"
        );
        assert_eq!(initramfs_load_addr(64 * MIB, 2 * MIB).unwrap(), 62 * MIB);
    }

    #[test]
    fn initramfs_stays_below_the_mmio_hole() {
        for mem_size in [MMIO_HOLE_START, 16 * GIB] {
            let addr = initramfs_load_addr(mem_size, 10 * MIB).unwrap();
            assert_eq!(addr, MMIO_HOLE_START - 10 * MIB);
        }
    }

    #[test]
    fn initramfs_honours_explicit_bounds() {
        let max = u64::from(LEGACY_INITRD_ADDR_MAX);
        let addr = initramfs_load_addr_within(2 * GIB, 10 * MIB, 40 * MIB, max).unwrap();
        assert_eq!(addr, max + 1 - 10 * MIB);
        assert!(matches!(
            initramfs_load_addr_within(64 * MIB, 30 * MIB, 40 * MIB, u64::MAX),
            Err(Error::InitramfsDoesNotFit { .. })
        ));
    }

    #[test]
    fn initramfs_too_big_or_empty_is_an_error() {
        assert!(matches!(
            initramfs_load_addr(64 * MIB, 64 * MIB),
            Err(Error::InitramfsDoesNotFit { .. })
        ));
        assert!(matches!(
            initramfs_load_addr(64 * MIB, u64::MAX),
            Err(Error::InitramfsDoesNotFit { .. })
        ));
        assert!(matches!(
            initramfs_load_addr(64 * MIB, 0),
            Err(Error::EmptyInitramfs)
        ));
        assert!(initramfs_load_addr(0, 1).is_err());
        // Just fits above the kernel load address.
        assert_eq!(
            initramfs_load_addr(64 * MIB, 63 * MIB).unwrap(),
            HIMEM_START
        );
    }

    #[test]
    fn initrd_addr_max_from_header() {
        let mut header = setup_header {
            version: 0x0202,
            initrd_addr_max: 0x7fff_ffff,
            ..Default::default()
        };
        assert_eq!(initrd_addr_max(&header), 0x37ff_ffff);
        header.version = 0x020f;
        assert_eq!(initrd_addr_max(&header), 0x7fff_ffff);
    }
    #[test]
    fn acpi_rsdp_goes_into_the_start_info_or_the_zero_page() {
        let mem = guest_memory();
        write_pvh_start_info(&mem, 64 * MIB, CMDLINE_START, None).unwrap();
        set_acpi_rsdp(&mem, true, 0xe0000).unwrap();
        let info = read_start_info(&mem);
        assert_eq!(info.rsdp_paddr, 0xe0000);
        assert_eq!(info.cmdline_paddr, CMDLINE_START, "the rest is kept");
        write_zero_page(&mem, 64 * MIB, CMDLINE_START, 10, None, None).unwrap();
        set_acpi_rsdp(&mem, false, 0xe0000).unwrap();
        let params = read_zero_page(&mem);
        assert_eq!({ params.acpi_rsdp_addr }, 0xe0000);
        assert_eq!(
            { params.hdr.cmd_line_ptr },
            CMDLINE_START as u32,
            "the rest is kept"
        );
    }
}
