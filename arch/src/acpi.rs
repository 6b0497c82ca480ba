//! ACPI tables for the guest, built with rust-vmm's `acpi_tables`: RSDP, XSDT, a hardware-reduced
//! FADT, a DSDT and a MADT.
//!
//! What they tell the guest:
//! - the MADT: one enabled local APIC per vCPU (APIC ids 0..n, as in the MP table) and the
//!   IO-APIC (id n, GSI base 0); ISA IRQs keep their identity mapping (no overrides), which is
//!   how KVM's default routing and the MP table wire them.
//! - the FADT: hardware-reduced ACPI (no PM1 blocks, no SCI, no PM timer) whose power-off path is
//!   the sleep control register, an I/O port the VMM watches; the reset register is another.
//! - the DSDT: `\_S5` (the sleep type the guest writes to power off), the PCI host bridge on bus
//!   0 with its I/O and 32-bit memory windows, and COM1.
//!
//! All of it lives in [`ACPI_TABLES_START`]..[`ACPI_TABLES_END`], inside the BIOS area the e820
//! map reports as reserved; the RSDP is first, 16-byte aligned, where a guest that is not told
//! its address (the PVH start info and the zero page do tell it) finds it by scanning.
//!
//! The MP table ([`crate::mptable`]) stays: kernels without ACPI, or booted with `acpi=off`, read
//! that instead.

use acpi_tables::aml::{
    self, AddressSpace, AddressSpaceCacheable, Device, EISAName, Interrupt, Name, Package,
    ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{APIC_START, IOAPIC_START};
use crate::mptable::MAX_CPUS;

/// Where the tables start: the RSDP, at the start of the BIOS read-only area the ACPI
/// specification lets an OS scan (0xE0000..0xFFFFF, 16-byte boundaries).
pub const ACPI_TABLES_START: u64 = 0xe_0000;
/// End (exclusive) of the room the tables may use.
pub const ACPI_TABLES_END: u64 = 0xf_0000;

/// OEM id and table id every table carries.
const OEM_ID: [u8; 6] = *b"CANTO ";
const OEM_TABLE_ID: [u8; 8] = *b"CANTOVM ";
const OEM_REVISION: u32 = 1;

/// The sleep type `\_S5` gives and the guest writes to the sleep control register to power off.
pub const S5_SLEEP_TYPE: u8 = 5;

/// IA-PC boot architecture flags (FADT): the machine has an 8042 (its reset line, for
/// `reboot=k`), no VGA.
const IAPC_BOOT_ARCH_8042: u16 = 1 << 1;
const IAPC_BOOT_ARCH_NO_VGA: u16 = 1 << 2;

/// Errors writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ACPI tables need at least 1 CPU")]
    NoCpus,
    #[error("{0} CPUs requested, the ACPI tables support at most {MAX_CPUS}")]
    TooManyCpus(u8),
    #[error("the ACPI tables ({0} bytes) do not fit in their {ACPI_TABLES_START:#x}.. area")]
    TooLarge(usize),
    #[error("cannot write the ACPI tables to guest memory: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The platform the tables describe: everything here is decided by the VMM's device layout.
#[derive(Debug, Clone)]
pub struct AcpiPlatform {
    pub num_cpus: u8,
    /// The I/O port of the FADT's sleep control register (one byte; writing
    /// `S5_SLEEP_TYPE << 2 | 1 << 5` powers off).
    pub sleep_control_port: u16,
    /// The I/O port of the FADT's sleep status register (one byte).
    pub sleep_status_port: u16,
    /// The I/O port of the FADT's reset register (one byte) and the value that resets.
    pub reset_port: u16,
    pub reset_value: u8,
    /// PCI configuration mechanism #1 ports (0xCF8, 8 ports).
    pub pci_config_port: u16,
    pub pci_config_len: u8,
    /// The PCI host bridge's 32-bit memory window (BARs are allocated in it), [start, end).
    pub pci_mmio32: (u32, u32),
    /// COM1: its port base, number of ports and ISA IRQ.
    pub serial_port: u16,
    pub serial_len: u8,
    pub serial_irq: u32,
}

/// The tables, each as bytes, and where each goes.
pub struct AcpiTables {
    pub rsdp: Vec<u8>,
    /// (guest address, bytes) of the XSDT, FADT, DSDT and MADT, in that order.
    pub tables: Vec<(u64, Vec<u8>)>,
}

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

/// Rounds `addr` up to 16 bytes (tables start on that boundary, like the RSDP must).
fn align16(addr: u64) -> u64 {
    (addr + 15) & !15
}

fn io_gas(port: u16) -> GAS {
    GAS::new(
        GasSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

/// The DSDT's AML: `\_S5`, `\_SB.PCI0` and `\_SB.COM1`.
fn dsdt_body(p: &AcpiPlatform) -> Vec<u8> {
    let mut body = Vec::new();

    // \_S5: SLP_TYPa, SLP_TYPb.
    let s5_type: u8 = S5_SLEEP_TYPE;
    let zero: u8 = 0;
    Name::new("_S5_".into(), &Package::new(vec![&s5_type, &zero])).to_aml_bytes(&mut body);

    // The PCI host bridge: bus 0 only, config mechanism #1, all I/O ports but its own config
    // ports, and the 32-bit BAR window.
    let pci_config_end = p.pci_config_port + u16::from(p.pci_config_len);
    let bus_numbers = AddressSpace::<u16>::new_bus_number(0, 0);
    let config_ports = IO::new(p.pci_config_port, p.pci_config_port, 1, p.pci_config_len);
    let io_low = AddressSpace::<u16>::new_io(0, p.pci_config_port - 1, None);
    let io_high = AddressSpace::<u16>::new_io(pci_config_end, 0xffff, None);
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        p.pci_mmio32.0,
        p.pci_mmio32.1 - 1,
        None,
    );
    let pci_crs = ResourceTemplate::new(vec![
        &bus_numbers,
        &config_ports,
        &io_low,
        &io_high,
        &mmio32,
    ]);
    let pci_hid = EISAName::new("PNP0A08");
    let pci_cid = EISAName::new("PNP0A03");
    let mut sb = Vec::new();
    Device::new(
        "PCI0".into(),
        vec![
            &Name::new("_HID".into(), &pci_hid),
            &Name::new("_CID".into(), &pci_cid),
            &Name::new("_ADR".into(), &aml::ZERO),
            &Name::new("_SEG".into(), &aml::ZERO),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_BBN".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &pci_crs),
        ],
    )
    .to_aml_bytes(&mut sb);

    // COM1: a 16550 at its legacy ports, edge-triggered active-high ISA IRQ.
    let com_ports = IO::new(p.serial_port, p.serial_port, 1, p.serial_len);
    let com_irq = Interrupt::new(true, true, false, false, p.serial_irq);
    let com_crs = ResourceTemplate::new(vec![&com_ports, &com_irq]);
    let com_hid = EISAName::new("PNP0501");
    Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &com_hid),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &com_crs),
        ],
    )
    .to_aml_bytes(&mut sb);

    body.extend(Scope::raw("\\_SB_".into(), sb));
    body
}

/// Builds every table for `platform`, laid out from [`ACPI_TABLES_START`].
pub fn build_tables(p: &AcpiPlatform) -> Result<AcpiTables, Error> {
    match p.num_cpus {
        0 => return Err(Error::NoCpus),
        n if n > MAX_CPUS => return Err(Error::TooManyCpus(n)),
        _ => {}
    }
    let xsdt_addr = align16(ACPI_TABLES_START + Rsdp::len() as u64);

    // DSDT: a header, then the AML.
    let body = dsdt_body(p);
    let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&body);
    let dsdt = dsdt.as_slice().to_vec();

    // MADT: local APICs 0..n (processor uid = APIC id), then the IO-APIC (id n, as in the MP
    // table).
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for cpu in 0..p.num_cpus {
        madt.add_structure(ProcessorLocalApic::new(cpu, cpu, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(p.num_cpus, IOAPIC_START as u32, 0));
    let madt = aml_bytes(&madt);

    // The FADT's size is fixed, so every address is known before it is built.
    let xsdt_len = 36 + 2 * 8;
    let fadt_addr = align16(xsdt_addr + xsdt_len as u64);
    let dsdt_addr = align16(fadt_addr + acpi_tables::fadt::FADT::len() as u64);
    let madt_addr = align16(dsdt_addr + dsdt.len() as u64);
    let end = madt_addr + madt.len() as u64;
    if end > ACPI_TABLES_END {
        return Err(Error::TooLarge((end - ACPI_TABLES_START) as usize));
    }

    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        // No fixed-feature power or sleep button.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    fadt.iapc_boot_arch = (IAPC_BOOT_ARCH_8042 | IAPC_BOOT_ARCH_NO_VGA).into();
    fadt.sleep_control_reg = io_gas(p.sleep_control_port);
    fadt.sleep_status_reg = io_gas(p.sleep_status_port);
    fadt.reset_reg = io_gas(p.reset_port);
    fadt.reset_value = p.reset_value;
    let fadt = aml_bytes(&fadt.finalize());

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for addr in [fadt_addr, madt_addr] {
        xsdt.add_entry(addr);
    }
    // The DSDT is reached through the FADT, not the XSDT.
    let xsdt = aml_bytes(&xsdt);
    debug_assert_eq!(xsdt.len(), xsdt_len);

    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    Ok(AcpiTables {
        rsdp,
        tables: vec![
            (xsdt_addr, xsdt),
            (fadt_addr, fadt),
            (dsdt_addr, dsdt),
            (madt_addr, madt),
        ],
    })
}

/// Writes the tables for `platform` into guest memory; returns the RSDP's address.
pub fn setup_acpi(mem: &GuestMemoryMmap, platform: &AcpiPlatform) -> Result<u64, Error> {
    let tables = build_tables(platform)?;
    // Whatever was in the area before (a previous boot's tables) goes.
    let zeros = vec![0u8; (ACPI_TABLES_END - ACPI_TABLES_START) as usize];
    mem.write_slice(&zeros, GuestAddress(ACPI_TABLES_START))
        .map_err(Error::Write)?;
    mem.write_slice(&tables.rsdp, GuestAddress(ACPI_TABLES_START))
        .map_err(Error::Write)?;
    for (addr, bytes) in &tables.tables {
        mem.write_slice(bytes, GuestAddress(*addr))
            .map_err(Error::Write)?;
    }
    Ok(ACPI_TABLES_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::low_memory;

    fn platform(num_cpus: u8) -> AcpiPlatform {
        AcpiPlatform {
            num_cpus,
            sleep_control_port: 0x600,
            sleep_status_port: 0x601,
            reset_port: 0x602,
            reset_value: 0x0e,
            pci_config_port: 0xcf8,
            pci_config_len: 8,
            pci_mmio32: (0xc000_0000, 0xe000_0000),
            serial_port: 0x3f8,
            serial_len: 8,
            serial_irq: 4,
        }
    }

    fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
        bytes
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    /// Reads the table at `addr` as the guest would: its header's length, its checksum.
    fn table(mem: &GuestMemoryMmap, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
        let header = read(mem, addr, 36);
        assert_eq!(&header[..4], signature, "signature at {addr:#x}");
        let bytes = read(mem, addr, u32_at(&header, 4) as usize);
        assert_eq!(
            sum(&bytes),
            0,
            "{} checksum",
            String::from_utf8_lossy(signature)
        );
        assert_eq!(&bytes[10..16], b"CANTO ");
        bytes
    }

    struct Parsed {
        fadt: Vec<u8>,
        dsdt: Vec<u8>,
        madt: Vec<u8>,
    }

    /// Follows the guest's path: RSDP (found by scanning, as a guest not told its address
    /// would), XSDT, the tables it lists, the DSDT through the FADT.
    fn parse(mem: &GuestMemoryMmap) -> Parsed {
        let area = read(
            mem,
            ACPI_TABLES_START,
            (ACPI_TABLES_END - ACPI_TABLES_START) as usize,
        );
        let rsdp_at = (0..area.len())
            .step_by(16)
            .find(|&i| area[i..].starts_with(b"RSD PTR "))
            .expect("an RSDP on a 16-byte boundary");
        let rsdp = &area[rsdp_at..rsdp_at + 36];
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP (with an XSDT)");
        assert_eq!(u32_at(rsdp, 20), 36);
        let xsdt = table(mem, u64_at(rsdp, 24), b"XSDT");
        let entries: Vec<u64> = xsdt[36..].chunks(8).map(|c| u64_at(c, 0)).collect();
        let mut fadt = None;
        let mut madt = None;
        for addr in entries {
            assert!((ACPI_TABLES_START..ACPI_TABLES_END).contains(&addr));
            match &read(mem, addr, 4)[..] {
                b"FACP" => fadt = Some(table(mem, addr, b"FACP")),
                b"APIC" => madt = Some(table(mem, addr, b"APIC")),
                other => panic!("unexpected table {other:?}"),
            }
        }
        let fadt = fadt.expect("the XSDT lists a FADT");
        let x_dsdt = u64_at(&fadt, 140);
        assert_eq!(u32_at(&fadt, 40), 0, "only the 64-bit DSDT pointer is set");
        let dsdt = table(mem, x_dsdt, b"DSDT");
        Parsed {
            fadt,
            dsdt,
            madt: madt.expect("the XSDT lists a MADT"),
        }
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn tables_parse_and_checksum() {
        let mem = low_memory();
        let rsdp = setup_acpi(&mem, &platform(2)).unwrap();
        assert_eq!(rsdp, ACPI_TABLES_START);
        parse(&mem);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_and_reset_registers() {
        let mem = low_memory();
        setup_acpi(&mem, &platform(1)).unwrap();
        let fadt = parse(&mem).fadt;
        assert_eq!(fadt.len(), 276, "ACPI 6.x FADT");
        assert_eq!(fadt[8], 6, "FADT major version");
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // Generic address structures: space 1 (I/O), 8 bits, byte access, the port.
        let gas = |at: usize| (fadt[at], fadt[at + 1], fadt[at + 3], u64_at(&fadt, at + 4));
        assert_eq!(gas(116), (1, 8, 1, 0x602), "reset register");
        assert_eq!(fadt[128], 0x0e, "reset value");
        assert_eq!(gas(244), (1, 8, 1, 0x600), "sleep control register");
        assert_eq!(gas(256), (1, 8, 1, 0x601), "sleep status register");
        assert_eq!(
            u16::from_le_bytes([fadt[109], fadt[110]]) & 0b110,
            0b110,
            "8042, no VGA"
        );
    }

    #[test]
    fn madt_lists_each_cpu_and_the_ioapic() {
        for cpus in [1u8, 2, 4, MAX_CPUS] {
            let mem = low_memory();
            setup_acpi(&mem, &platform(cpus)).unwrap();
            let madt = parse(&mem).madt;
            assert_eq!(u32_at(&madt, 36), APIC_START as u32);
            let mut lapics = Vec::new();
            let mut ioapics = Vec::new();
            let mut at = 44;
            while at < madt.len() {
                let (kind, len) = (madt[at], madt[at + 1] as usize);
                assert!(len >= 2 && at + len <= madt.len(), "entry at {at}");
                match kind {
                    0 => {
                        assert_eq!(u32_at(&madt, at + 4), 1, "enabled");
                        lapics.push((madt[at + 2], madt[at + 3]));
                    }
                    1 => ioapics.push((madt[at + 2], u32_at(&madt, at + 4), u32_at(&madt, at + 8))),
                    other => panic!("unexpected MADT entry type {other}"),
                }
                at += len;
            }
            let expected: Vec<(u8, u8)> = (0..cpus).map(|c| (c, c)).collect();
            assert_eq!(lapics, expected, "{cpus} CPUs");
            assert_eq!(ioapics, vec![(cpus, IOAPIC_START as u32, 0)]);
        }
    }

    #[test]
    fn dsdt_holds_s5_the_pci_host_bridge_and_com1() {
        let mem = low_memory();
        setup_acpi(&mem, &platform(1)).unwrap();
        let dsdt = parse(&mem).dsdt;
        let aml = &dsdt[36..];
        // Name(_S5_, Package(2) { 5, 0 }): NameOp, name, PackageOp, PkgLength, NumElements,
        // BytePrefix 5, ZeroOp.
        assert!(contains(
            aml,
            &[0x08, b'_', b'S', b'5', b'_', 0x12, 0x05, 0x02, 0x0a, 0x05, 0x00]
        ));
        // Scope(\_SB_) holding both devices.
        assert!(contains(aml, b"\\_SB_"));
        // Device(name): ExtOpPrefix, DeviceOp, a 1- or 2-byte PkgLength, the name.
        let device = |name: &[u8]| {
            aml.windows(8).any(|w| {
                w[..2] == [0x5b, 0x82]
                    && (w[3..7] == *name || (w[2] & 0xc0 == 0x40 && w[4..8] == *name))
            })
        };
        assert!(device(b"PCI0") && device(b"COM1"));
        // _HID/_CID: EISA ids PNP0A08, PNP0A03 and PNP0501, as DWordConst.
        for (id, bytes) in [
            ("PNP0A08", [0x41u8, 0xd0, 0x0a, 0x08]),
            ("PNP0A03", [0x41, 0xd0, 0x0a, 0x03]),
            ("PNP0501", [0x41, 0xd0, 0x05, 0x01]),
        ] {
            assert!(contains(aml, &[&[0x0c][..], &bytes].concat()), "{id}");
        }
        // PCI0's resources: bus 0..0, the config ports (IO descriptor, 0xcf8, 8 ports), I/O
        // 0..0xcf7 and 0xd00..0xffff, memory 0xc0000000..0xdfffffff.
        assert!(contains(
            aml,
            &[0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00]
        ));
        assert!(contains(
            aml,
            &[0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]
        ));
        assert!(contains(aml, &[0x00, 0x00, 0xf7, 0x0c]));
        assert!(contains(aml, &[0x00, 0x0d, 0xff, 0xff]));
        assert!(contains(
            aml,
            &[0x00, 0x00, 0x00, 0xc0, 0xff, 0xff, 0xff, 0xdf]
        ));
        // COM1: IO 0x3f8, 8 ports; extended interrupt 4, edge, active high, exclusive.
        assert!(contains(
            aml,
            &[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]
        ));
        assert!(contains(
            aml,
            &[0x89, 0x06, 0x00, 0x03, 0x01, 0x04, 0x00, 0x00, 0x00]
        ));
    }

    #[test]
    fn bad_cpu_counts_are_refused() {
        assert!(matches!(build_tables(&platform(0)), Err(Error::NoCpus)));
        assert!(matches!(
            build_tables(&platform(MAX_CPUS + 1)),
            Err(Error::TooManyCpus(_))
        ));
    }

    #[test]
    fn old_tables_are_cleared() {
        let mem = low_memory();
        mem.write_slice(&[0xaa; 64], GuestAddress(ACPI_TABLES_END - 64))
            .unwrap();
        setup_acpi(&mem, &platform(1)).unwrap();
        assert!(read(&mem, ACPI_TABLES_END - 64, 64).iter().all(|&b| b == 0));
    }
}
