//! The boot GDT: flat segments covering all 4 GiB, encoded as x86 segment descriptors, and the
//! conversion of those descriptors into the `kvm_segment`s KVM loads into the vCPU.
//!
//! Two tables share one layout (null at 0x0, code at 0x8, data at 0x10, TSS at 0x18); they differ
//! only in the code descriptor, 64-bit for the Linux 64-bit boot protocol and 32-bit for PVH. The
//! four entries fill exactly the space between `BOOT_GDT_START` and `BOOT_IDT_START`.

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{BOOT_GDT_START, BOOT_IDT_START};

/// Failure writing the descriptor tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The table does not fit between its start and the next fixed structure.
    #[error("a GDT of {0} entries does not fit below the boot IDT")]
    TooManyEntries(usize),
    /// Guest memory rejected the write.
    #[error("failed to write the {table} to guest memory: {source}")]
    Write {
        /// "GDT" or "IDT".
        table: &'static str,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// Selector of the code segment (GDT index 1).
pub const CODE_SELECTOR: u16 = 0x8;
/// Selector of the data segment used for DS, ES, FS, GS and SS (GDT index 2).
pub const DATA_SELECTOR: u16 = 0x10;
/// Selector of the task state segment (GDT index 3).
pub const TSS_SELECTOR: u16 = 0x18;

/// Access byte and flags of a descriptor, in the 16-bit form used by [`gdt_entry`]: bits 0..8
/// are the access byte (type, S, DPL, P), bits 12..16 are AVL, L, D/B, G.
pub mod flags {
    /// Segment present.
    pub const PRESENT: u16 = 1 << 7;
    /// Code or data segment (as opposed to a system segment such as a TSS).
    pub const CODE_OR_DATA: u16 = 1 << 4;
    /// Code segment type: execute/read, accessed.
    pub const TYPE_CODE_EXEC_READ_ACCESSED: u16 = 0xb;
    /// Data segment type: read/write, accessed.
    pub const TYPE_DATA_READ_WRITE_ACCESSED: u16 = 0x3;
    /// System segment type: busy 32/64-bit TSS (VM entry requires TR to be busy).
    pub const TYPE_TSS_BUSY: u16 = 0xb;
    /// 64-bit code segment.
    pub const LONG: u16 = 1 << 13;
    /// 32-bit default operand size (code) / 32-bit stack (data).
    pub const DB: u16 = 1 << 14;
    /// Limit counts 4 KiB pages rather than bytes.
    pub const GRANULARITY_4K: u16 = 1 << 15;

    /// 64-bit code: present, execute/read, L=1 (D must be 0 when L is set).
    pub const CODE64: u16 =
        GRANULARITY_4K | LONG | PRESENT | CODE_OR_DATA | TYPE_CODE_EXEC_READ_ACCESSED;
    /// 32-bit code for PVH entry: present, execute/read, D=1.
    pub const CODE32: u16 =
        GRANULARITY_4K | DB | PRESENT | CODE_OR_DATA | TYPE_CODE_EXEC_READ_ACCESSED;
    /// Flat read/write data, 32-bit stack.
    pub const DATA: u16 =
        GRANULARITY_4K | DB | PRESENT | CODE_OR_DATA | TYPE_DATA_READ_WRITE_ACCESSED;
    /// Busy TSS, byte-granular limit.
    pub const TSS: u16 = PRESENT | TYPE_TSS_BUSY;
}

/// Limit of a flat 4 GiB segment in 4 KiB units.
const FLAT_LIMIT_PAGES: u32 = 0xf_ffff;
/// Limit of the boot TSS: the 104 bytes of a 32-bit TSS, as the PVH ABI specifies for TR.
const TSS_LIMIT: u32 = 0x67;

/// Encode a segment descriptor from its flags (see [`flags`]), base and limit (in the unit the
/// granularity flag selects; only the low 20 bits are representable).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags & 0xf0ff);
    (limit & 0xffff)
        | (base & 0xff_ffff) << 16
        | flags << 40
        | ((limit >> 16) & 0xf) << 48
        | ((base >> 24) & 0xff) << 56
}

/// The boot GDT for the Linux 64-bit boot protocol (and 64-bit freestanding guests).
pub fn linux64_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(flags::CODE64, 0, FLAT_LIMIT_PAGES),
        gdt_entry(flags::DATA, 0, FLAT_LIMIT_PAGES),
        gdt_entry(flags::TSS, 0, TSS_LIMIT),
    ]
}

/// The boot GDT for PVH entry: the code segment is 32-bit protected mode code.
pub fn pvh_gdt() -> [u64; 4] {
    [
        0,
        gdt_entry(flags::CODE32, 0, FLAT_LIMIT_PAGES),
        gdt_entry(flags::DATA, 0, FLAT_LIMIT_PAGES),
        gdt_entry(flags::TSS, 0, TSS_LIMIT),
    ]
}

fn bit(entry: u64, shift: u32) -> u8 {
    ((entry >> shift) & 1) as u8
}

/// Base address of a descriptor.
pub fn entry_base(entry: u64) -> u64 {
    ((entry >> 16) & 0xff_ffff) | ((entry >> 56) & 0xff) << 24
}

/// Limit of a descriptor in bytes (KVM's unit), expanding page granularity.
pub fn entry_limit_bytes(entry: u64) -> u32 {
    let raw = ((entry & 0xffff) | ((entry >> 48) & 0xf) << 16) as u32;
    if bit(entry, 55) == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The `kvm_segment` a descriptor loads: what the CPU's hidden segment register would hold after
/// loading `selector` from a GDT containing `entry`.
pub fn kvm_segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let present = bit(entry, 47);
    kvm_segment {
        base: entry_base(entry),
        limit: entry_limit_bytes(entry),
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: bit(entry, 55),
        avl: bit(entry, 52),
        // A not-present segment (the null descriptor) is unusable.
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The descriptor a `kvm_segment` came from: the inverse of [`kvm_segment_from_gdt`] for
/// segments whose limit is representable (byte-granular ≤ 1 MiB, or page-granular with the low
/// 12 bits set).
pub fn gdt_entry_from_kvm_segment(segment: &kvm_segment) -> u64 {
    let flags = u16::from(segment.type_ & 0xf)
        | u16::from(segment.s & 1) << 4
        | u16::from(segment.dpl & 3) << 5
        | u16::from(segment.present & 1) << 7
        | u16::from(segment.avl & 1) << 12
        | u16::from(segment.l & 1) << 13
        | u16::from(segment.db & 1) << 14
        | u16::from(segment.g & 1) << 15;
    let limit = if segment.g != 0 {
        segment.limit >> 12
    } else {
        segment.limit
    };
    // Bases above 4 GiB are not representable in a code/data descriptor.
    gdt_entry(flags, segment.base as u32, limit)
}

/// Limit to load into GDTR for a table of `entries` descriptors.
pub fn table_limit(entries: usize) -> u16 {
    u16::try_from(entries.saturating_mul(8).saturating_sub(1)).unwrap_or(u16::MAX)
}

/// Write `table` to guest memory at [`BOOT_GDT_START`].
pub fn write_gdt(mem: &GuestMemoryMmap, table: &[u64]) -> Result<(), Error> {
    let room = ((BOOT_IDT_START - BOOT_GDT_START) / 8) as usize;
    if table.len() > room {
        return Err(Error::TooManyEntries(table.len()));
    }
    let bytes: Vec<u8> = table.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&bytes, GuestAddress(BOOT_GDT_START))
        .map_err(|source| Error::Write {
            table: "GDT",
            source,
        })
}

/// Size in bytes of the boot IDT written by [`write_empty_idt`].
pub const IDT_SIZE: usize = 8;

/// Write the empty boot IDT (one zero, not-present gate) at [`BOOT_IDT_START`].
pub fn write_empty_idt(mem: &GuestMemoryMmap) -> Result<(), Error> {
    mem.write_slice(&[0u8; IDT_SIZE], GuestAddress(BOOT_IDT_START))
        .map_err(|source| Error::Write {
            table: "IDT",
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn low_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn encodes_the_well_known_flat_descriptors() {
        // Values from the Intel SDM encoding of flat 4 GiB segments.
        assert_eq!(
            gdt_entry(flags::CODE64, 0, FLAT_LIMIT_PAGES),
            0x00af_9b00_0000_ffff
        );
        assert_eq!(
            gdt_entry(flags::CODE32, 0, FLAT_LIMIT_PAGES),
            0x00cf_9b00_0000_ffff
        );
        assert_eq!(
            gdt_entry(flags::DATA, 0, FLAT_LIMIT_PAGES),
            0x00cf_9300_0000_ffff
        );
        assert_eq!(gdt_entry(flags::TSS, 0, TSS_LIMIT), 0x0000_8b00_0000_0067);
    }

    #[test]
    fn base_and_limit_are_split_across_the_descriptor() {
        let entry = gdt_entry(flags::DATA & !flags::GRANULARITY_4K, 0xdead_beef, 0xa_bcde);
        assert_eq!(entry_base(entry), 0xdead_beef);
        assert_eq!(entry_limit_bytes(entry), 0xa_bcde);
    }

    #[test]
    fn code64_segment_is_long_mode_flat() {
        let seg = kvm_segment_from_gdt(linux64_gdt()[1], CODE_SELECTOR);
        assert_eq!(seg.selector, 0x8);
        assert_eq!(seg.base, 0);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.type_, 0xb);
        assert_eq!((seg.present, seg.s, seg.l, seg.db, seg.g), (1, 1, 1, 0, 1));
        assert_eq!((seg.dpl, seg.unusable), (0, 0));
    }

    #[test]
    fn pvh_code_segment_is_32_bit_flat() {
        let seg = kvm_segment_from_gdt(pvh_gdt()[1], CODE_SELECTOR);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!((seg.l, seg.db, seg.g), (0, 1, 1));
        assert_eq!(pvh_gdt()[2], linux64_gdt()[2]);
        assert_eq!(pvh_gdt()[3], linux64_gdt()[3]);
    }

    #[test]
    fn data_and_tss_segments() {
        let data = kvm_segment_from_gdt(linux64_gdt()[2], DATA_SELECTOR);
        assert_eq!(
            (data.type_, data.s, data.db, data.limit),
            (3, 1, 1, 0xffff_ffff)
        );
        let tss = kvm_segment_from_gdt(linux64_gdt()[3], TSS_SELECTOR);
        assert_eq!((tss.type_, tss.s, tss.g, tss.limit), (0xb, 0, 0, 0x67));
        assert_eq!(tss.present, 1);
    }

    #[test]
    fn null_descriptor_is_unusable() {
        let seg = kvm_segment_from_gdt(0, 0);
        assert_eq!((seg.present, seg.unusable), (0, 1));
    }

    #[test]
    fn entries_round_trip_through_kvm_segments() {
        for table in [linux64_gdt(), pvh_gdt()] {
            for (index, &entry) in table.iter().enumerate() {
                let seg = kvm_segment_from_gdt(entry, (index * 8) as u16);
                assert_eq!(gdt_entry_from_kvm_segment(&seg), entry, "entry {index}");
            }
        }
        let odd = gdt_entry(0x10f5 & 0xf0ff, 0x1234_5678, 0x4_5678);
        assert_eq!(
            gdt_entry_from_kvm_segment(&kvm_segment_from_gdt(odd, 0)),
            odd
        );
    }

    #[test]
    fn gdt_and_idt_are_written_to_their_homes() {
        let mem = low_memory();
        write_gdt(&mem, &linux64_gdt()).unwrap();
        write_empty_idt(&mem).unwrap();
        for (index, &entry) in linux64_gdt().iter().enumerate() {
            let addr = GuestAddress(BOOT_GDT_START + index as u64 * 8);
            assert_eq!(mem.read_obj::<u64>(addr).unwrap(), entry);
        }
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(BOOT_IDT_START)).unwrap(),
            0
        );
        assert_eq!(table_limit(4), 31);
        assert_eq!(table_limit(0), 0);
    }

    #[test]
    fn oversized_table_is_rejected() {
        let mem = low_memory();
        assert!(matches!(
            write_gdt(&mem, &[0; 5]),
            Err(Error::TooManyEntries(5))
        ));
    }

    #[test]
    fn missing_memory_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x10_0000), 0x1000)]).unwrap();
        assert!(matches!(
            write_gdt(&mem, &linux64_gdt()),
            Err(Error::Write { table: "GDT", .. })
        ));
        assert!(matches!(
            write_empty_idt(&mem),
            Err(Error::Write { table: "IDT", .. })
        ));
    }
}
