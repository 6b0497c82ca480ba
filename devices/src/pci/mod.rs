//! PCI: the root bus, configuration space, and MSI-X.
//!
//! [`PciRoot`] is bus 0: a host bridge at 00:00.0 and up to 31 single-function endpoints. The
//! guest reaches their configuration spaces through configuration mechanism #1 (ports
//! 0xCF8–0xCFF: [`PciRoot`] is the [`BusDevice`] for that range). The root also plays firmware:
//! it places each endpoint's BARs in a 32-bit window, maps them on the MMIO bus, and follows the
//! guest when it turns memory decoding off and on or moves a BAR.

pub mod config;
pub mod msix;

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::bus::{Bus, BusDevice, BusError};
pub use config::{
    PciBar, PciBarKind, PciConfigError, PciConfigSpace, PciIdentity, BAR0_REGISTER,
    COMMAND_REGISTER, NUM_BARS,
};
pub use msix::{MsiInterruptGroup, MsiMessage, Msix, MsixCapability, MsixError};

/// First port of configuration mechanism #1 (the address register).
pub const PCI_CONFIG_IO_BASE: u64 = 0xcf8;
/// Ports of configuration mechanism #1: the address register and the data window.
pub const PCI_CONFIG_IO_LEN: u64 = 8;

/// Config address register: enable bit, bus, device, function and register fields.
const CONFIG_ADDRESS_ENABLE: u32 = 1 << 31;
/// Bits of the address register that hold something; the reserved ones (30:28, 1:0) read zero.
/// Bits 27:24 are kept: AMD-style extended register numbers, which select registers past 255.
const CONFIG_ADDRESS_MASK: u32 = 0x8fff_fffc;
/// AMD-style extended register number (bits 11:8 of the register offset).
const CONFIG_ADDRESS_EXTENDED_REGISTER: u32 = 0x0f00_0000;
/// Slots on bus 0 (device numbers 0..32); 0 is the host bridge.
const SLOTS: usize = 32;

/// Host bridge identity: Intel's Q35 DRAM controller ids, so guests that probe mechanism #1 by
/// looking for an Intel host bridge (Linux's `pci_sanity_check`) find one.
const HOST_BRIDGE_VENDOR_ID: u16 = 0x8086;
const HOST_BRIDGE_DEVICE_ID: u16 = 0x29c0;
const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;

const FOUR_GIB: u64 = 1 << 32;

/// Errors from building the PCI bus.
#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error(
        "BAR window {start:#x}..{end:#x} must be non-empty, above RAM (ends {ram_end:#x}) and below 4 GiB"
    )]
    InvalidWindow { start: u64, end: u64, ram_end: u64 },
    #[error("all device slots on bus 0 are taken")]
    NoFreeSlot,
    #[error("BAR {bar} ({size:#x} bytes) does not fit in what is left of the BAR window")]
    WindowExhausted { bar: u8, size: u64 },
    #[error("cannot map BAR {bar} at {address:#x}: {source}")]
    Map {
        bar: u8,
        address: u64,
        #[source]
        source: BusError,
    },
}

/// A function's address: bus, device (0..32), function (0..8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    pub bus: u8,
    pub device: u8,
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{:x}",
            self.bus, self.device, self.function
        )
    }
}

/// A PCI function on the root bus.
///
/// The root reads the identity and BARs from [`PciDevice::config_space`], sends the guest's
/// configuration accesses through the `*_config_register` methods (override them for side
/// effects), and sends accesses to a mapped BAR to `read_bar`/`write_bar`.
pub trait PciDevice: Send {
    fn config_space(&self) -> &PciConfigSpace;
    fn config_space_mut(&mut self) -> &mut PciConfigSpace;

    /// A guest read of configuration register `reg` (0..64).
    fn read_config_register(&mut self, reg: usize) -> u32 {
        self.config_space().read_register(reg)
    }

    /// A guest write of `data` (1..=4 bytes) at byte `offset` within configuration register `reg`.
    fn write_config_register(&mut self, reg: usize, offset: usize, data: &[u8]) {
        self.config_space_mut().write_register(reg, offset, data);
    }

    /// A guest read at `offset` within BAR `bar`.
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]);

    /// A guest write at `offset` within BAR `bar`.
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]);

    /// BAR `bar` is now mapped at `address` on the MMIO bus, or not mapped at all (`None`).
    /// Devices that registered ioeventfds inside the BAR move them here.
    fn bar_mapped(&mut self, _bar: u8, _address: Option<u64>) {}
}

/// A shared PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The host bridge at 00:00.0: identity only, no BARs.
pub struct PciHostBridge {
    config: PciConfigSpace,
}

impl PciHostBridge {
    pub fn new() -> Self {
        Self {
            config: PciConfigSpace::new(PciIdentity {
                vendor_id: HOST_BRIDGE_VENDOR_ID,
                device_id: HOST_BRIDGE_DEVICE_ID,
                class_code: CLASS_HOST_BRIDGE,
                revision_id: 0,
                subsystem_vendor_id: 0,
                subsystem_id: 0,
                interrupt_pin: 0,
            }),
        }
    }
}

impl Default for PciHostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl PciDevice for PciHostBridge {
    fn config_space(&self) -> &PciConfigSpace {
        &self.config
    }

    fn config_space_mut(&mut self) -> &mut PciConfigSpace {
        &mut self.config
    }

    fn read_bar(&mut self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _bar: u8, _offset: u64, _data: &[u8]) {}
}

/// What the MMIO bus holds for one BAR: forwards accesses to the function with the BAR number,
/// so the function does not need to work out which BAR an address belongs to.
struct PciBarBusDevice {
    device: SharedPciDevice,
    bar: u8,
}

impl BusDevice for PciBarBusDevice {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        lock(&self.device).read_bar(self.bar, offset, data);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        lock(&self.device).write_bar(self.bar, offset, data);
    }
}

struct SlotBar {
    index: u8,
    size: u64,
    bus_device: Arc<Mutex<PciBarBusDevice>>,
    /// Where the BAR is on the MMIO bus now. It may differ from the BAR register after the root
    /// refused a move.
    mapped_at: Option<u64>,
}

struct PciSlot {
    device: SharedPciDevice,
    bars: Vec<SlotBar>,
}

/// One line of [`PciRoot::device_list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDeviceInfo {
    pub address: PciAddress,
    pub vendor_id: u16,
    pub device_id: u16,
    /// `0xCCSSPP`: base class, subclass, programming interface.
    pub class_code: u32,
    /// From the PCI ID database (the part build.rs keeps, [`pci_device_name`]), or "unknown".
    pub name: String,
}

impl fmt::Display for PciDeviceInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:04x}:{:04x} {}",
            self.address, self.vendor_id, self.device_id, self.name
        )
    }
}

include!(concat!(env!("OUT_DIR"), "/pci_names.rs"));

/// The name the PCI ID database gives a vendor/device pair Canto can present (its host bridge
/// and the virtio vendor's ids: build.rs keeps just those), or "unknown".
pub fn pci_device_name(vendor_id: u16, device_id: u16) -> String {
    let vendor = PCI_VENDOR_NAMES
        .iter()
        .find(|(id, _)| *id == vendor_id)
        .map(|(_, name)| *name);
    let device = PCI_DEVICE_NAMES
        .iter()
        .find(|(v, d, _)| (*v, *d) == (vendor_id, device_id))
        .map(|(_, _, name)| *name);
    match (vendor, device) {
        (Some(vendor), Some(device)) => format!("{vendor} {device}"),
        (Some(vendor), None) => format!("{vendor} unknown"),
        (None, _) => "unknown".to_string(),
    }
}

/// PCI bus 0: the host bridge, the endpoints, and configuration mechanism #1.
pub struct PciRoot {
    /// The last value written to 0xCF8.
    config_address: u32,
    slots: Vec<Option<PciSlot>>,
    mmio_bus: Arc<Bus>,
    bar_window: Range<u64>,
    next_bar_address: u64,
    ram_end_below_4g: u64,
    /// Further ranges no BAR may overlap (high RAM, the APIC pages, ...).
    reserved: Vec<Range<u64>>,
}

impl PciRoot {
    /// A root bus with only the host bridge. BARs are placed in `bar_window` (below 4 GiB) and
    /// mapped on `mmio_bus`; the guest may move them anywhere but over RAM, which ends at
    /// `ram_end_below_4g` below 4 GiB.
    pub fn new(
        mmio_bus: Arc<Bus>,
        bar_window: Range<u64>,
        ram_end_below_4g: u64,
    ) -> Result<Self, PciError> {
        if bar_window.is_empty() || bar_window.start < ram_end_below_4g || bar_window.end > FOUR_GIB
        {
            return Err(PciError::InvalidWindow {
                start: bar_window.start,
                end: bar_window.end,
                ram_end: ram_end_below_4g,
            });
        }
        let mut slots: Vec<Option<PciSlot>> = (0..SLOTS).map(|_| None).collect();
        slots[0] = Some(PciSlot {
            device: Arc::new(Mutex::new(PciHostBridge::new())),
            bars: Vec::new(),
        });
        Ok(Self {
            config_address: 0,
            slots,
            mmio_bus,
            next_bar_address: bar_window.start,
            bar_window,
            ram_end_below_4g,
            reserved: Vec::new(),
        })
    }

    /// Keeps BARs off `range` too (e.g. RAM above 4 GiB, or the local/IO APIC pages).
    pub fn reserve_range(&mut self, range: Range<u64>) {
        if !range.is_empty() {
            self.reserved.push(range);
        }
    }

    /// Plugs `device` into the next free slot as function 0, places its BARs in the window
    /// (naturally aligned), turns memory decoding on and maps the BARs, as firmware would.
    pub fn add_device(&mut self, device: SharedPciDevice) -> Result<PciAddress, PciError> {
        let slot = (1..SLOTS)
            .find(|slot| self.slots[*slot].is_none())
            .ok_or(PciError::NoFreeSlot)?;

        let mut requests: Vec<PciBar> = lock(&device).config_space().bars().to_vec();
        // Largest first: natural alignment then leaves no holes between them.
        requests.sort_by_key(|bar| std::cmp::Reverse(bar.size));
        let mut next = self.next_bar_address;
        let mut placements = Vec::new();
        for bar in &requests {
            let address = next
                .checked_next_multiple_of(bar.size)
                .filter(|a| {
                    a.checked_add(bar.size)
                        .is_some_and(|end| end <= self.bar_window.end)
                })
                .ok_or(PciError::WindowExhausted {
                    bar: bar.index,
                    size: bar.size,
                })?;
            next = address + bar.size;
            placements.push((*bar, address));
        }

        let mut bars: Vec<SlotBar> = Vec::new();
        for (bar, address) in &placements {
            let bus_device = Arc::new(Mutex::new(PciBarBusDevice {
                device: device.clone(),
                bar: bar.index,
            }));
            if let Err(source) = self.mmio_bus.insert(bus_device.clone(), *address, bar.size) {
                for placed in &bars {
                    if let Some(at) = placed.mapped_at {
                        let _ = self.mmio_bus.remove(at);
                    }
                }
                return Err(PciError::Map {
                    bar: bar.index,
                    address: *address,
                    source,
                });
            }
            bars.push(SlotBar {
                index: bar.index,
                size: bar.size,
                bus_device,
                mapped_at: Some(*address),
            });
        }
        self.next_bar_address = next;

        {
            let mut locked = lock(&device);
            let config = locked.config_space_mut();
            for (bar, address) in &placements {
                config.set_bar_address(bar.index, *address);
            }
            if !placements.is_empty() {
                let command = config.command() | config::COMMAND_MEMORY_SPACE;
                config.write_register(COMMAND_REGISTER, 0, &command.to_le_bytes());
            }
            for (bar, address) in &placements {
                locked.bar_mapped(bar.index, Some(*address));
            }
        }
        bars.sort_by_key(|b| b.index);
        self.slots[slot] = Some(PciSlot { device, bars });
        Ok(PciAddress {
            bus: 0,
            device: slot as u8,
            function: 0,
        })
    }

    /// Every function on the bus, in slot order.
    pub fn device_list(&self) -> Vec<PciDeviceInfo> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, entry)| {
                let entry = entry.as_ref()?;
                let device = lock(&entry.device);
                let config = device.config_space();
                Some(PciDeviceInfo {
                    address: PciAddress {
                        bus: 0,
                        device: slot as u8,
                        function: 0,
                    },
                    vendor_id: config.vendor_id(),
                    device_id: config.device_id(),
                    class_code: config.class_code(),
                    name: pci_device_name(config.vendor_id(), config.device_id()),
                })
            })
            .collect()
    }

    /// The slot and register the address register selects, if a function is there.
    fn selected(&self) -> Option<(usize, usize)> {
        let address = self.config_address;
        if address & CONFIG_ADDRESS_ENABLE == 0 {
            return None;
        }
        let bus = (address >> 16) & 0xff;
        let device = ((address >> 11) & 0x1f) as usize;
        let function = (address >> 8) & 0x7;
        let reg = ((address >> 2) & 0x3f) as usize;
        // Only bus 0 exists, every function is single-function (function 0), and configuration
        // spaces end at 256 bytes, so an extended register is absent rather than an alias.
        if bus != 0 || function != 0 || address & CONFIG_ADDRESS_EXTENDED_REGISTER != 0 {
            return None;
        }
        self.slots.get(device)?.as_ref().map(|_| (device, reg))
    }

    fn read_config_data(&self, offset: usize, data: &mut [u8]) {
        let value = match self.selected() {
            Some((slot, reg)) => match &self.slots[slot] {
                Some(entry) => lock(&entry.device).read_config_register(reg),
                None => u32::MAX,
            },
            None => u32::MAX,
        };
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = (value >> ((offset + i) * 8)) as u8;
        }
    }

    fn write_config_data(&mut self, offset: usize, data: &[u8]) {
        let Some((slot, reg)) = self.selected() else {
            return;
        };
        if let Some(entry) = &self.slots[slot] {
            lock(&entry.device).write_config_register(reg, offset, data);
        }
        let bar_registers = BAR0_REGISTER..BAR0_REGISTER + NUM_BARS;
        if reg == COMMAND_REGISTER || bar_registers.contains(&reg) {
            self.sync_bar_mappings(slot);
        }
    }

    /// Whether a BAR may sit at `[address, address + size)`: not wrapping, not over RAM, not
    /// over a reserved range. Overlaps with other devices are the MMIO bus's to refuse.
    fn placement_allowed(&self, address: u64, size: u64) -> bool {
        let Some(end) = address.checked_add(size) else {
            return false;
        };
        let overlaps = |range: &Range<u64>| address < range.end && range.start < end;
        !overlaps(&(0..self.ram_end_below_4g)) && !self.reserved.iter().any(overlaps)
    }

    /// Brings the MMIO bus in line with the function's command register and BARs: unmaps BARs
    /// when memory decoding goes off, maps or moves them when it is on. A move to a forbidden or
    /// occupied place is refused and logged, and the BAR stays where it was. While the guest
    /// sizes a BAR (all ones in its address bits) the mapping stays put.
    fn sync_bar_mappings(&mut self, slot: usize) {
        // Taken out of the table while it is worked on, so the bus can be borrowed alongside.
        let Some(mut entry) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let wanted: Vec<(Option<u64>, bool)> = {
            let device = lock(&entry.device);
            let config = device.config_space();
            entry
                .bars
                .iter()
                .map(|bar| {
                    let address = config
                        .memory_decoding()
                        .then(|| config.bar_address(bar.index))
                        .flatten();
                    (address, config.bar_sizing(bar.index))
                })
                .collect()
        };
        let mut moved = Vec::new();
        for (bar, (wanted, sizing)) in entry.bars.iter_mut().zip(wanted) {
            if let Some(mapping) = self.remap_bar(slot, bar, wanted, sizing) {
                bar.mapped_at = mapping;
                moved.push((bar.index, mapping));
            }
        }
        if !moved.is_empty() {
            let mut device = lock(&entry.device);
            for (index, mapping) in moved {
                device.bar_mapped(index, mapping);
            }
        }
        self.slots[slot] = Some(entry);
    }

    /// Moves one BAR on the MMIO bus towards `wanted`; returns its new mapping if it changed.
    fn remap_bar(
        &self,
        slot: usize,
        bar: &SlotBar,
        wanted: Option<u64>,
        sizing: bool,
    ) -> Option<Option<u64>> {
        let (index, size, current) = (bar.index, bar.size, bar.mapped_at);
        match (current, wanted) {
            (None, None) => None,
            (_, Some(_)) if sizing => {
                log::debug!("PCI 00:{slot:02x}.0 BAR {index}: being sized, mapping kept");
                None
            }
            (Some(old), None) => {
                if let Err(e) = self.mmio_bus.remove(old) {
                    crate::error_limited!(
                        "PCI 00:{slot:02x}.0 BAR {index}: unmapping {old:#x}: {e}"
                    );
                }
                Some(None)
            }
            (Some(old), Some(new)) if old == new => None,
            (current, Some(new)) => {
                let result = if !self.placement_allowed(new, size) {
                    Err("it would overlap RAM or a reserved range".to_string())
                } else {
                    match current {
                        Some(old) => self.mmio_bus.relocate(old, new),
                        None => self.mmio_bus.insert(bar.bus_device.clone(), new, size),
                    }
                    .map_err(|e| e.to_string())
                };
                match result {
                    Ok(()) => Some(Some(new)),
                    Err(why) => {
                        crate::warn_limited!(
                            "PCI 00:{slot:02x}.0 BAR {index}: refusing to map {size:#x} bytes at {new:#x} ({why}); keeping {current:#x?}"
                        );
                        None
                    }
                }
            }
        }
    }

    /// Where BAR `bar` of the function in `slot` is mapped on the MMIO bus now.
    pub fn bar_mapping(&self, slot: u8, bar: u8) -> Option<u64> {
        self.slots
            .get(usize::from(slot))?
            .as_ref()?
            .bars
            .iter()
            .find(|b| b.index == bar)?
            .mapped_at
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            // The address register answers dword accesses only; other widths reach nothing.
            (0, 4) => data.copy_from_slice(&self.config_address.to_le_bytes()),
            (4..=7, len) if (offset - 4) as usize + len <= 4 => {
                self.read_config_data((offset - 4) as usize, data)
            }
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => {
                let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.config_address = value & CONFIG_ADDRESS_MASK;
            }
            (4..=7, len) if (offset - 4) as usize + len <= 4 => {
                self.write_config_data((offset - 4) as usize, data)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Range<u64> = 0xc000_0000..0xe000_0000;
    const RAM_END: u64 = 0x8000_0000;

    /// A function with a 32-bit 4 KiB BAR 0 and a 64-bit 16 KiB BAR 2 that records what it sees.
    struct FakeDevice {
        config: PciConfigSpace,
        accesses: Vec<(u8, u64, Vec<u8>)>,
        mapped: Vec<(u8, Option<u64>)>,
    }

    impl FakeDevice {
        fn shared(device_id: u16) -> Arc<Mutex<FakeDevice>> {
            let mut config = PciConfigSpace::new(PciIdentity {
                vendor_id: 0x1af4,
                device_id,
                class_code: 0x04_01_00,
                revision_id: 1,
                subsystem_vendor_id: 0x1af4,
                subsystem_id: 0x40,
                interrupt_pin: 0,
            });
            config
                .add_bar(PciBar {
                    index: 0,
                    size: 0x1000,
                    kind: PciBarKind::Memory32,
                    prefetchable: false,
                })
                .unwrap();
            config
                .add_bar(PciBar {
                    index: 2,
                    size: 0x4000,
                    kind: PciBarKind::Memory64,
                    prefetchable: false,
                })
                .unwrap();
            Arc::new(Mutex::new(FakeDevice {
                config,
                accesses: Vec::new(),
                mapped: Vec::new(),
            }))
        }
    }

    impl PciDevice for FakeDevice {
        fn config_space(&self) -> &PciConfigSpace {
            &self.config
        }
        fn config_space_mut(&mut self) -> &mut PciConfigSpace {
            &mut self.config
        }
        fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
            data.fill(bar + 1);
            self.accesses.push((bar, offset, data.to_vec()));
        }
        fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
            self.accesses.push((bar, offset, data.to_vec()));
        }
        fn bar_mapped(&mut self, bar: u8, address: Option<u64>) {
            self.mapped.push((bar, address));
        }
    }

    fn root() -> (PciRoot, Arc<Bus>) {
        let bus = Arc::new(Bus::new());
        (PciRoot::new(bus.clone(), WINDOW, RAM_END).unwrap(), bus)
    }

    fn address(device: u32, reg: u32) -> u32 {
        CONFIG_ADDRESS_ENABLE | device << 11 | reg << 2
    }

    fn cfg_read(root: &mut PciRoot, device: u32, offset: u32, len: usize) -> u32 {
        root.write(
            PCI_CONFIG_IO_BASE,
            0,
            &address(device, offset / 4).to_le_bytes(),
        );
        let mut data = vec![0u8; len];
        root.read(PCI_CONFIG_IO_BASE, 4 + u64::from(offset % 4), &mut data);
        data.iter().rev().fold(0, |acc, b| acc << 8 | u32::from(*b))
    }

    fn cfg_write(root: &mut PciRoot, device: u32, offset: u32, value: u32, len: usize) {
        root.write(
            PCI_CONFIG_IO_BASE,
            0,
            &address(device, offset / 4).to_le_bytes(),
        );
        root.write(
            PCI_CONFIG_IO_BASE,
            4 + u64::from(offset % 4),
            &value.to_le_bytes()[..len],
        );
    }

    #[test]
    fn window_is_checked() {
        let bus = Arc::new(Bus::new());
        assert!(PciRoot::new(bus.clone(), 0xc000_0000..0xc000_0000, RAM_END).is_err());
        assert!(PciRoot::new(bus.clone(), 0x7000_0000..0xe000_0000, RAM_END).is_err());
        assert!(PciRoot::new(bus, 0xc000_0000..0x1_0000_1000, RAM_END).is_err());
    }

    #[test]
    fn host_bridge_and_absent_functions() {
        let (mut root, _) = root();
        assert_eq!(cfg_read(&mut root, 0, 0, 4), 0x29c0_8086);
        assert_eq!(cfg_read(&mut root, 0, 0x0a, 2), 0x0600);
        assert_eq!(cfg_read(&mut root, 0, 0x0e, 1), 0, "header type 0");
        for device in 1..32 {
            assert_eq!(cfg_read(&mut root, device, 0, 4), u32::MAX);
            assert_eq!(cfg_read(&mut root, device, 2, 2), 0xffff);
            assert_eq!(cfg_read(&mut root, device, 3, 1), 0xff);
        }
        // Another function of the bridge, another bus: absent.
        root.write(0xcf8, 0, &(CONFIG_ADDRESS_ENABLE | 1 << 8).to_le_bytes());
        let mut data = [0u8; 4];
        root.read(0xcf8, 4, &mut data);
        assert_eq!(data, [0xff; 4]);
        root.write(0xcf8, 0, &(CONFIG_ADDRESS_ENABLE | 1 << 16).to_le_bytes());
        root.read(0xcf8, 4, &mut data);
        assert_eq!(data, [0xff; 4]);
        // Extended register 0x100 of the bridge: absent, not an alias of register 0.
        root.write(0xcf8, 0, &(CONFIG_ADDRESS_ENABLE | 1 << 24).to_le_bytes());
        root.read(0xcf8, 4, &mut data);
        assert_eq!(data, [0xff; 4]);
        root.write(0xcf8, 4, &[0; 4]);
        // Enable bit clear: all ones, writes ignored.
        root.write(0xcf8, 0, &0u32.to_le_bytes());
        root.read(0xcf8, 4, &mut data);
        assert_eq!(data, [0xff; 4]);
    }

    #[test]
    fn address_register_reads_back_dwords_only() {
        let (mut root, _) = root();
        root.write(0xcf8, 0, &0x8000_0000u32.to_le_bytes());
        let mut data = [0u8; 4];
        root.read(0xcf8, 0, &mut data);
        assert_eq!(u32::from_le_bytes(data), 0x8000_0000);
        root.write(0xcf8, 3, &[0x01]); // Linux's type-1 probe pokes 0xcfb: ignored
        root.write(0xcf8, 0, &0xffff_ffffu32.to_le_bytes());
        root.read(0xcf8, 0, &mut data);
        assert_eq!(u32::from_le_bytes(data), CONFIG_ADDRESS_MASK);
        let mut word = [0u8; 2];
        root.read(0xcf8, 2, &mut word);
        assert_eq!(word, [0xff; 2]);
    }

    #[test]
    fn data_port_widths_at_every_offset() {
        let (mut root, _) = root();
        let id = 0x29c0_8086u32;
        for offset in 0..4u64 {
            for len in [1usize, 2, 4] {
                root.write(0xcf8, 0, &address(0, 0).to_le_bytes());
                let mut data = vec![0u8; len];
                root.read(0xcf8, 4 + offset, &mut data);
                if offset as usize + len <= 4 {
                    let expected = &id.to_le_bytes()[offset as usize..offset as usize + len];
                    assert_eq!(data, expected, "offset {offset} len {len}");
                } else {
                    assert!(data.iter().all(|b| *b == 0xff), "straddling read");
                }
                root.write(0xcf8, 4 + offset, &data); // read-only: no effect
            }
        }
        assert_eq!(cfg_read(&mut root, 0, 0, 4), id);
        // Straddling the address register and the data window, and a bogus width.
        root.write(0xcf8, 2, &[0xff; 4]);
        root.write(0xcf8, 0, &[0xff; 8]);
        let mut odd = [0u8; 3];
        root.read(0xcf8, 0, &mut odd);
        assert_eq!(odd, [0xff; 3]);
    }

    #[test]
    fn devices_get_slots_bars_and_names() {
        let (mut root, bus) = root();
        let snd = FakeDevice::shared(0x1059);
        let unknown = FakeDevice::shared(0x10ff);
        assert_eq!(root.add_device(snd.clone()).unwrap().to_string(), "00:01.0");
        assert_eq!(root.add_device(unknown).unwrap().to_string(), "00:02.0");

        // Largest BAR first, naturally aligned, memory decoding on, mapped on the bus.
        assert_eq!(cfg_read(&mut root, 1, 0x18, 4), 0xc000_0004);
        assert_eq!(cfg_read(&mut root, 1, 0x1c, 4), 0);
        assert_eq!(cfg_read(&mut root, 1, 0x10, 4), 0xc000_4000);
        assert_eq!(cfg_read(&mut root, 2, 0x18, 4), 0xc000_8004);
        assert_ne!(cfg_read(&mut root, 1, 4, 2) & 2, 0);
        assert_eq!(
            snd.lock().unwrap().mapped,
            [(2, Some(0xc000_0000)), (0, Some(0xc000_4000))]
        );
        let mut data = [0u8; 4];
        assert!(bus.read(0xc000_4010, &mut data));
        assert_eq!(data, [1; 4]);
        assert!(bus.write(0xc000_0008, &[7, 7]));
        assert_eq!(
            snd.lock().unwrap().accesses.last().unwrap(),
            &(2, 8, vec![7, 7])
        );

        let list: Vec<String> = root.device_list().iter().map(|d| d.to_string()).collect();
        assert_eq!(list.len(), 3);
        assert_eq!(
            list[0],
            "00:00.0 8086:29c0 Intel Corporation 82G33/G31/P35/P31 Express DRAM Controller"
        );
        assert_eq!(list[1], "00:01.0 1af4:1059 Red Hat, Inc. Virtio 1.0 sound");
        assert_eq!(list[2], "00:02.0 1af4:10ff Red Hat, Inc. unknown");
        assert_eq!(root.device_list()[1].class_code, 0x04_01_00);
        assert_eq!(pci_device_name(0x0002, 0x1234), "unknown");
    }

    #[test]
    fn slots_and_window_run_out() {
        let bus = Arc::new(Bus::new());
        let mut small = PciRoot::new(bus, 0xc000_0000..0xc000_a000, RAM_END).unwrap();
        small.add_device(FakeDevice::shared(1)).unwrap();
        assert!(matches!(
            small.add_device(FakeDevice::shared(2)),
            Err(PciError::WindowExhausted { bar: 2, .. })
        ));
        // A device without BARs still fits; then the slots run out.
        let (mut root, _) = root();
        for _ in 1..32 {
            root.add_device(Arc::new(Mutex::new(PciHostBridge::new())))
                .unwrap();
        }
        assert!(matches!(
            root.add_device(Arc::new(Mutex::new(PciHostBridge::new()))),
            Err(PciError::NoFreeSlot)
        ));
    }

    #[test]
    fn memory_decoding_off_unmaps_bars() {
        let (mut root, bus) = root();
        let dev = FakeDevice::shared(0x1059);
        root.add_device(dev.clone()).unwrap();
        let mut data = [0u8; 1];
        cfg_write(&mut root, 1, 4, 0, 2);
        assert!(!bus.read(0xc000_4000, &mut data));
        assert!(!bus.read(0xc000_0000, &mut data));
        assert_eq!(root.bar_mapping(1, 0), None);
        cfg_write(&mut root, 1, 4, 2, 2);
        assert!(bus.read(0xc000_4000, &mut data));
        assert!(bus.read(0xc000_0000, &mut data));
        let mapped = dev.lock().unwrap().mapped.clone();
        assert_eq!(
            mapped[2..],
            [
                (0, None),
                (2, None),
                (0, Some(0xc000_4000)),
                (2, Some(0xc000_0000))
            ]
        );
    }

    #[test]
    fn sizing_returns_size_masks_and_keeps_mappings() {
        let (mut root, bus) = root();
        root.add_device(FakeDevice::shared(0x1059)).unwrap();
        // With decoding on (the worst case): the mapping must not wander off during sizing.
        cfg_write(&mut root, 1, 0x10, u32::MAX, 4);
        assert_eq!(cfg_read(&mut root, 1, 0x10, 4), 0xffff_f000);
        cfg_write(&mut root, 1, 0x10, 0xc000_4000, 4);
        cfg_write(&mut root, 1, 0x18, u32::MAX, 4);
        cfg_write(&mut root, 1, 0x1c, u32::MAX, 4);
        assert_eq!(cfg_read(&mut root, 1, 0x18, 4), 0xffff_c004);
        assert_eq!(cfg_read(&mut root, 1, 0x1c, 4), 0xffff_ffff);
        assert_eq!(root.bar_mapping(1, 2), Some(0xc000_0000));
        cfg_write(&mut root, 1, 0x18, 0xc000_0000, 4);
        cfg_write(&mut root, 1, 0x1c, 0, 4);
        let mut data = [0u8; 1];
        assert!(bus.read(0xc000_0000, &mut data));
        assert!(bus.read(0xc000_4000, &mut data));
        assert_eq!(root.bar_mapping(1, 0), Some(0xc000_4000));
    }

    #[test]
    fn bar_moves_and_refused_moves() {
        let (mut root, bus) = root();
        let dev = FakeDevice::shared(0x1059);
        root.add_device(dev.clone()).unwrap();
        root.add_device(FakeDevice::shared(0x1044)).unwrap(); // BAR 0 at 0xc000_c000
        root.reserve_range(0x1_0000_0000..0x2_0000_0000);
        let mut data = [0u8; 1];

        // A move to free space: the mapping follows, the device hears of it.
        cfg_write(&mut root, 1, 0x10, 0xd000_0000, 4);
        assert_eq!(root.bar_mapping(1, 0), Some(0xd000_0000));
        assert!(bus.read(0xd000_0000, &mut data));
        assert!(!bus.read(0xc000_4000, &mut data));
        assert_eq!(
            dev.lock().unwrap().mapped.last(),
            Some(&(0, Some(0xd000_0000)))
        );

        // Over RAM, over another device's BAR, over a reserved range: refused, old kept.
        for target in [0x1000_0000u32, 0x7fff_f000, 0xc000_c000] {
            cfg_write(&mut root, 1, 0x10, target, 4);
            assert_eq!(root.bar_mapping(1, 0), Some(0xd000_0000), "{target:#x}");
            assert!(bus.read(0xd000_0000, &mut data));
        }
        cfg_write(&mut root, 1, 0x1c, 1, 4); // BAR 2 high half: 0x1_c000_0000, reserved
        assert_eq!(root.bar_mapping(1, 2), Some(0xc000_0000));
        cfg_write(&mut root, 1, 0x1c, 3, 4); // 0x3_c000_0000: free
        assert_eq!(root.bar_mapping(1, 2), Some(0x3_c000_0000));
        assert!(bus.read(0x3_c000_0000, &mut data));

        // After decoding off/on, a BAR whose register points at a refused place stays unmapped.
        cfg_write(&mut root, 1, 0x10, 0x1000_0000, 4);
        cfg_write(&mut root, 1, 4, 0, 2);
        cfg_write(&mut root, 1, 4, 2, 2);
        assert_eq!(root.bar_mapping(1, 0), None);
        cfg_write(&mut root, 1, 0x10, 0xd100_0000, 4);
        assert_eq!(root.bar_mapping(1, 0), Some(0xd100_0000));
    }
}
