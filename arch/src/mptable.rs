//! The Intel MultiProcessor Specification (v1.4) table: how a guest without ACPI learns its CPUs,
//! its IO-APIC and how legacy interrupts are wired.
//!
//! The MP floating pointer structure sits at `EBDA_START` (the last KiB of base memory, one of the
//! places Linux scans) and the configuration table follows it directly. The table is serialized
//! field by field in little-endian order, so no structure layout tricks are needed.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{APIC_START, EBDA_START, HIMEM_START, IOAPIC_START};

/// Why the MP table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A guest needs at least one CPU.
    #[error("an MP table needs at least one CPU")]
    NoCpus,
    /// More CPUs than xAPIC ids available.
    #[error("{0} CPUs requested, the MP table supports at most {MAX_CPUS}")]
    TooManyCpus(usize),
    /// A PCI interrupt entry names an impossible device, pin or IO-APIC input.
    #[error("invalid PCI interrupt entry {0:?}")]
    InvalidPciIntx(PciIntx),
    /// The table would run into the kernel area at 1 MiB.
    #[error("an MP table of {0} bytes does not fit between the EBDA and 1 MiB")]
    TooLarge(usize),
    /// Guest memory rejected the write.
    #[error("failed to write the MP table to guest memory: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Most CPUs an MP table can describe: xAPIC ids are 8 bits, 0xff is the broadcast id, and the
/// IO-APIC takes the id right after the last CPU.
pub const MAX_CPUS: u8 = 254;

/// Pins of the IO-APIC KVM emulates.
pub const IOAPIC_PINS: u8 = 24;
/// Number of legacy ISA IRQs, routed 1:1 to the first IO-APIC pins.
pub const ISA_IRQS: u8 = 16;

/// MP bus id of PCI bus 0. MP bus ids of PCI buses must equal their PCI bus numbers, because the
/// guest matches PCI interrupt entries against the bus its devices sit on.
pub const BUS_ID_PCI: u8 = 0;
/// MP bus id of the ISA bus.
pub const BUS_ID_ISA: u8 = 1;

/// Version register of KVM's emulated local APIC (integrated xAPIC).
const LAPIC_VERSION: u8 = 0x14;
/// Version register of KVM's emulated IO-APIC.
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REVISION: u8 = 4;
/// CPU signature for processor entries: family 6. Only informational; the guest uses CPUID.
const CPU_SIGNATURE: u32 = 0x600;
/// Feature flags for processor entries: on-chip FPU (bit 0) and APIC (bit 9).
const CPU_FEATURES: u32 = 1 | 1 << 9;

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_ENTRY_SIZE: usize = 20;
const SHORT_ENTRY_SIZE: usize = 8;

mod entry_type {
    pub const PROCESSOR: u8 = 0;
    pub const BUS: u8 = 1;
    pub const IOAPIC: u8 = 2;
    pub const IO_INTERRUPT: u8 = 3;
    pub const LOCAL_INTERRUPT: u8 = 4;
}

mod cpu_flags {
    pub const ENABLED: u8 = 1;
    pub const BOOT_PROCESSOR: u8 = 2;
}

/// Interrupt types of interrupt assignment entries.
mod irq_type {
    pub const INT: u8 = 0;
    pub const NMI: u8 = 1;
    pub const EXTINT: u8 = 3;
}

/// Interrupt entry flags: polarity and trigger mode "conform to the bus" (edge/high for ISA).
const IRQ_FLAGS_CONFORMING: u16 = 0;
/// Interrupt entry flags for PCI INTx: active low (3), level triggered (3 << 2).
const IRQ_FLAGS_PCI_LEVEL_LOW: u16 = 0b11 | 0b11 << 2;
/// Destination local APIC id meaning "every local APIC".
const ALL_LOCAL_APICS: u8 = 0xff;

/// A PCI INTx line on bus 0 wired to an IO-APIC input, for guests whose PCI devices use legacy
/// interrupts (see [`setup_mptable_with_pci_intx`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIntx {
    /// PCI device number (0..32).
    pub device: u8,
    /// Interrupt pin: 0 = INTA# .. 3 = INTD#.
    pub pin: u8,
    /// IO-APIC input the line is wired to (16..24 keeps it clear of the ISA IRQs).
    pub ioapic_pin: u8,
}

/// Sum of all bytes, mod 256.
fn byte_sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(byte_sum(bytes))
}

fn processor_entry(apic_id: u8, boot_processor: bool) -> [u8; PROCESSOR_ENTRY_SIZE] {
    let mut entry = [0u8; PROCESSOR_ENTRY_SIZE];
    entry[0] = entry_type::PROCESSOR;
    entry[1] = apic_id;
    entry[2] = LAPIC_VERSION;
    entry[3] = cpu_flags::ENABLED
        | if boot_processor {
            cpu_flags::BOOT_PROCESSOR
        } else {
            0
        };
    entry[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
    entry[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
    entry
}

fn bus_entry(bus_id: u8, bus_type: &[u8; 6]) -> [u8; SHORT_ENTRY_SIZE] {
    let mut entry = [entry_type::BUS, bus_id, 0, 0, 0, 0, 0, 0];
    entry[2..8].copy_from_slice(bus_type);
    entry
}

fn ioapic_entry(ioapic_id: u8) -> [u8; SHORT_ENTRY_SIZE] {
    let mut entry = [entry_type::IOAPIC, ioapic_id, IOAPIC_VERSION, 1, 0, 0, 0, 0];
    entry[4..8].copy_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entry
}

fn interrupt_entry(
    kind: u8,
    irq_type: u8,
    flags: u16,
    source_bus: (u8, u8),
    destination: (u8, u8),
) -> [u8; SHORT_ENTRY_SIZE] {
    let flags = flags.to_le_bytes();
    [
        kind,
        irq_type,
        flags[0],
        flags[1],
        source_bus.0,
        source_bus.1,
        destination.0,
        destination.1,
    ]
}

/// Size in bytes of the whole structure (floating pointer + configuration table) for `num_cpus`
/// CPUs and `pci_intx` PCI interrupt entries.
pub fn mptable_size(num_cpus: usize, pci_intx: usize) -> usize {
    let short_entries = 2 /* buses */ + 1 /* IO-APIC */ + usize::from(ISA_IRQS) + pci_intx + 2 /* LINT0/1 */;
    FLOATING_POINTER_SIZE
        + HEADER_SIZE
        + num_cpus.saturating_mul(PROCESSOR_ENTRY_SIZE)
        + short_entries.saturating_mul(SHORT_ENTRY_SIZE)
}

/// Build the MP floating pointer followed by the configuration table, as it will be laid out at
/// `base`.
fn build_mptable(base: u64, num_cpus: u8, pci_intx: &[PciIntx]) -> Result<Vec<u8>, Error> {
    let total = mptable_size(usize::from(num_cpus), pci_intx.len());
    if base.saturating_add(total as u64) > HIMEM_START {
        return Err(Error::TooLarge(total));
    }
    let config_table_addr = base + FLOATING_POINTER_SIZE as u64;
    // The config table is below 1 MiB, checked above, so both fit their 16/32-bit fields.
    let config_len = total - FLOATING_POINTER_SIZE;
    let ioapic_id = num_cpus;

    let mut entries: Vec<u8> = Vec::with_capacity(config_len - HEADER_SIZE);
    let mut entry_count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        entry_count += 1;
    };
    // Entries must appear sorted by type.
    for cpu in 0..num_cpus {
        push(&processor_entry(cpu, cpu == 0));
    }
    push(&bus_entry(BUS_ID_PCI, b"PCI   "));
    push(&bus_entry(BUS_ID_ISA, b"ISA   "));
    push(&ioapic_entry(ioapic_id));
    // ISA IRQ n -> IO-APIC pin n, all as plain INT. This is how KVM's default GSI routing wires
    // the in-kernel PIC/PIT and IO-APIC (GSI n drives pin n), so the guest routes the timer
    // straight through the IO-APIC instead of probing the 8259 virtual-wire paths.
    for irq in 0..ISA_IRQS {
        push(&interrupt_entry(
            entry_type::IO_INTERRUPT,
            irq_type::INT,
            IRQ_FLAGS_CONFORMING,
            (BUS_ID_ISA, irq),
            (ioapic_id, irq),
        ));
    }
    for line in pci_intx {
        push(&interrupt_entry(
            entry_type::IO_INTERRUPT,
            irq_type::INT,
            IRQ_FLAGS_PCI_LEVEL_LOW,
            (BUS_ID_PCI, line.device << 2 | line.pin),
            (ioapic_id, line.ioapic_pin),
        ));
    }
    // Every local APIC: LINT0 takes the 8259's ExtINT (virtual wire), LINT1 the NMI.
    push(&interrupt_entry(
        entry_type::LOCAL_INTERRUPT,
        irq_type::EXTINT,
        IRQ_FLAGS_CONFORMING,
        (BUS_ID_ISA, 0),
        (ALL_LOCAL_APICS, 0),
    ));
    push(&interrupt_entry(
        entry_type::LOCAL_INTERRUPT,
        irq_type::NMI,
        IRQ_FLAGS_CONFORMING,
        (BUS_ID_ISA, 0),
        (ALL_LOCAL_APICS, 1),
    ));

    let mut header = [0u8; HEADER_SIZE];
    header[0..4].copy_from_slice(b"PCMP");
    header[4..6].copy_from_slice(&(config_len as u16).to_le_bytes());
    header[6] = SPEC_REVISION;
    header[8..16].copy_from_slice(b"CANTO   ");
    header[16..28].copy_from_slice(b"CANTO VMM   ");
    header[34..36].copy_from_slice(&entry_count.to_le_bytes());
    header[36..40].copy_from_slice(&(APIC_START as u32).to_le_bytes());
    header[7] = checksum(&header).wrapping_sub(byte_sum(&entries));

    let mut floating_pointer = [0u8; FLOATING_POINTER_SIZE];
    floating_pointer[0..4].copy_from_slice(b"_MP_");
    floating_pointer[4..8].copy_from_slice(&(config_table_addr as u32).to_le_bytes());
    floating_pointer[8] = 1; // length in 16-byte units
    floating_pointer[9] = SPEC_REVISION;
    // feature1 = 0: the configuration table is present, no default configuration.
    // feature2 = 0: no IMCR, the PIC is in virtual wire mode.
    floating_pointer[10] = checksum(&floating_pointer);

    let mut table = Vec::with_capacity(total);
    table.extend_from_slice(&floating_pointer);
    table.extend_from_slice(&header);
    table.extend_from_slice(&entries);
    Ok(table)
}

fn check_cpus(num_cpus: u8) -> Result<(), Error> {
    match num_cpus {
        0 => Err(Error::NoCpus),
        n if n > MAX_CPUS => Err(Error::TooManyCpus(n.into())),
        _ => Ok(()),
    }
}

/// Write the MP table (MP floating pointer + config table) at EBDA_START for `num_cpus` CPUs with
/// APIC ids 0..num_cpus (CPU 0 the boot processor), one IO-APIC (id `num_cpus`, at IOAPIC_START,
/// 24 pins), a PCI bus and an ISA bus, ISA IRQs 0..15 on IO-APIC pins 0..15, and LINT0 = ExtINT,
/// LINT1 = NMI on every local APIC.
pub fn setup_mptable(mem: &GuestMemoryMmap, num_cpus: u8) -> Result<(), Error> {
    setup_mptable_with_pci_intx(mem, num_cpus, &[])
}

/// [`setup_mptable`] plus one interrupt entry per PCI INTx line in `pci_intx` (level-triggered,
/// active low, on PCI bus 0), for guests with PCI devices using legacy interrupts.
pub fn setup_mptable_with_pci_intx(
    mem: &GuestMemoryMmap,
    num_cpus: u8,
    pci_intx: &[PciIntx],
) -> Result<(), Error> {
    check_cpus(num_cpus)?;
    if let Some(bad) = pci_intx
        .iter()
        .find(|l| l.device >= 32 || l.pin >= 4 || l.ioapic_pin >= IOAPIC_PINS)
    {
        return Err(Error::InvalidPciIntx(*bad));
    }
    let table = build_mptable(EBDA_START, num_cpus, pci_intx)?;
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(Error::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn low_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn u16_at(bytes: &[u8], offset: usize) -> u16 {
        u16::from_le_bytes([bytes[offset], bytes[offset + 1]])
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    /// The parsed configuration table: (header, entries as raw byte slices).
    struct Parsed {
        header: Vec<u8>,
        entries: Vec<Vec<u8>>,
    }

    /// Find the floating pointer at the EBDA, verify it, and parse the table it points to, the
    /// way a guest would.
    fn parse(mem: &GuestMemoryMmap) -> Parsed {
        let fp = read(mem, EBDA_START, FLOATING_POINTER_SIZE);
        assert_eq!(&fp[0..4], b"_MP_");
        assert_eq!(fp[8], 1);
        assert_eq!(fp[9], 4);
        assert_eq!(byte_sum(&fp), 0, "floating pointer checksum");
        assert_eq!(fp[11], 0, "a configuration table must be present");

        let table_addr = u64::from(u32_at(&fp, 4));
        let header = read(mem, table_addr, HEADER_SIZE);
        assert_eq!(&header[0..4], b"PCMP");
        let len = usize::from(u16_at(&header, 4));
        let table = read(mem, table_addr, len);
        assert_eq!(byte_sum(&table), 0, "configuration table checksum");
        assert_eq!(u32_at(&header, 36), APIC_START as u32);

        let mut entries = Vec::new();
        let mut offset = HEADER_SIZE;
        while offset < len {
            let size = if table[offset] == entry_type::PROCESSOR {
                PROCESSOR_ENTRY_SIZE
            } else {
                SHORT_ENTRY_SIZE
            };
            entries.push(table[offset..offset + size].to_vec());
            offset += size;
        }
        assert_eq!(offset, len);
        assert_eq!(usize::from(u16_at(&header, 34)), entries.len());
        Parsed { header, entries }
    }

    fn of_type(parsed: &Parsed, kind: u8) -> Vec<&Vec<u8>> {
        parsed.entries.iter().filter(|e| e[0] == kind).collect()
    }

    #[test]
    fn single_cpu_table_is_valid() {
        let mem = low_memory();
        setup_mptable(&mem, 1).unwrap();
        let parsed = parse(&mem);
        let cpus = of_type(&parsed, entry_type::PROCESSOR);
        assert_eq!(cpus.len(), 1);
        assert_eq!(cpus[0][1], 0);
        assert_eq!(cpus[0][3], cpu_flags::ENABLED | cpu_flags::BOOT_PROCESSOR);
        assert_eq!(parsed.header[6], 4);
    }

    #[test]
    fn one_processor_entry_per_cpu_with_bsp_flag_only_on_cpu0() {
        for num_cpus in [2u8, 4, 7, 64, MAX_CPUS] {
            let mem = low_memory();
            setup_mptable(&mem, num_cpus).unwrap();
            let parsed = parse(&mem);
            let cpus = of_type(&parsed, entry_type::PROCESSOR);
            assert_eq!(cpus.len(), usize::from(num_cpus));
            for (index, cpu) in cpus.iter().enumerate() {
                assert_eq!(usize::from(cpu[1]), index, "APIC id");
                assert_ne!(cpu[3] & cpu_flags::ENABLED, 0);
                assert_eq!(cpu[3] & cpu_flags::BOOT_PROCESSOR != 0, index == 0);
                assert_eq!(cpu[2], LAPIC_VERSION);
            }
        }
    }

    #[test]
    fn one_ioapic_after_the_cpus() {
        let mem = low_memory();
        setup_mptable(&mem, 3).unwrap();
        let parsed = parse(&mem);
        let ioapics = of_type(&parsed, entry_type::IOAPIC);
        assert_eq!(ioapics.len(), 1);
        let ioapic = ioapics[0];
        assert_eq!(ioapic[1], 3, "IO-APIC id follows the CPU APIC ids");
        assert_eq!(ioapic[3] & 1, 1, "enabled");
        assert_eq!(u32_at(ioapic, 4), IOAPIC_START as u32);
    }

    #[test]
    fn pci_and_isa_buses() {
        let mem = low_memory();
        setup_mptable(&mem, 1).unwrap();
        let parsed = parse(&mem);
        let buses: Vec<(u8, &[u8])> = of_type(&parsed, entry_type::BUS)
            .iter()
            .map(|e| (e[1], &e[2..8]))
            .collect();
        assert_eq!(
            buses,
            vec![(BUS_ID_PCI, &b"PCI   "[..]), (BUS_ID_ISA, &b"ISA   "[..])]
        );
    }

    #[test]
    fn isa_irqs_route_to_matching_ioapic_pins() {
        let mem = low_memory();
        setup_mptable(&mem, 2).unwrap();
        let parsed = parse(&mem);
        let irqs = of_type(&parsed, entry_type::IO_INTERRUPT);
        assert_eq!(irqs.len(), 16);
        for (irq, entry) in irqs.iter().enumerate() {
            assert_eq!(entry[1], irq_type::INT);
            assert_eq!(entry[4], BUS_ID_ISA);
            assert_eq!(usize::from(entry[5]), irq, "source IRQ");
            assert_eq!(entry[6], 2, "destination is the IO-APIC");
            assert_eq!(usize::from(entry[7]), irq, "IO-APIC pin");
        }
    }

    #[test]
    fn local_interrupts_are_extint_and_nmi() {
        let mem = low_memory();
        setup_mptable(&mem, 2).unwrap();
        let parsed = parse(&mem);
        let lints: Vec<(u8, u8, u8)> = of_type(&parsed, entry_type::LOCAL_INTERRUPT)
            .iter()
            .map(|e| (e[1], e[6], e[7]))
            .collect();
        assert_eq!(
            lints,
            vec![
                (irq_type::EXTINT, ALL_LOCAL_APICS, 0),
                (irq_type::NMI, ALL_LOCAL_APICS, 1)
            ]
        );
    }

    #[test]
    fn entries_are_sorted_by_type() {
        let mem = low_memory();
        setup_mptable(&mem, 4).unwrap();
        let types: Vec<u8> = parse(&mem).entries.iter().map(|e| e[0]).collect();
        assert!(types.windows(2).all(|w| w[0] <= w[1]), "{types:?}");
    }

    #[test]
    fn pci_intx_entries_are_level_low_on_the_pci_bus() {
        let mem = low_memory();
        let line = PciIntx {
            device: 3,
            pin: 1,
            ioapic_pin: 19,
        };
        setup_mptable_with_pci_intx(&mem, 1, &[line]).unwrap();
        let parsed = parse(&mem);
        let irqs = of_type(&parsed, entry_type::IO_INTERRUPT);
        assert_eq!(irqs.len(), 17);
        let pci = irqs[16];
        assert_eq!(u16_at(pci, 2), IRQ_FLAGS_PCI_LEVEL_LOW);
        assert_eq!(
            (pci[4], pci[5], pci[6], pci[7]),
            (BUS_ID_PCI, 3 << 2 | 1, 1, 19)
        );
    }

    #[test]
    fn invalid_pci_intx_is_rejected() {
        let mem = low_memory();
        for bad in [
            PciIntx {
                device: 32,
                pin: 0,
                ioapic_pin: 16,
            },
            PciIntx {
                device: 1,
                pin: 4,
                ioapic_pin: 16,
            },
            PciIntx {
                device: 1,
                pin: 0,
                ioapic_pin: 24,
            },
        ] {
            assert!(matches!(
                setup_mptable_with_pci_intx(&mem, 1, &[bad]),
                Err(Error::InvalidPciIntx(b)) if b == bad
            ));
        }
    }

    #[test]
    fn zero_cpus_is_an_error() {
        assert!(matches!(
            setup_mptable(&low_memory(), 0),
            Err(Error::NoCpus)
        ));
    }

    #[test]
    fn too_many_cpus_is_an_error() {
        assert!(matches!(
            setup_mptable(&low_memory(), 255),
            Err(Error::TooManyCpus(255))
        ));
    }

    #[test]
    fn the_largest_table_fits_below_1_mib() {
        assert!(EBDA_START + mptable_size(MAX_CPUS.into(), 0) as u64 <= HIMEM_START);
        assert!(matches!(
            build_mptable(HIMEM_START - 0x100, 8, &[]),
            Err(Error::TooLarge(_))
        ));
    }

    #[test]
    fn missing_memory_is_an_error() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x9_f000)]).unwrap();
        assert!(matches!(setup_mptable(&mem, 1), Err(Error::Write(_))));
    }
}
