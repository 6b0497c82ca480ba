//! A type-0 (endpoint) PCI configuration space: 256 bytes as 64 little-endian registers.
//!
//! Every register has a mask of the bits the guest may change, so read-only fields (ids, class,
//! the BARs' type bits, capability bodies) keep their values whatever the guest writes. The BARs'
//! masks also make sizing work: after the guest writes all ones, a BAR reads back the size mask.

/// Size of the configuration space reachable through configuration mechanism #1.
pub const CONFIG_SPACE_SIZE: usize = 256;
/// Number of 32-bit registers in the configuration space.
pub const NUM_REGISTERS: usize = CONFIG_SPACE_SIZE / 4;
/// Number of BAR registers in a type-0 header.
pub const NUM_BARS: usize = 6;

/// Register holding the vendor id (low half) and device id (high half).
pub const ID_REGISTER: usize = 0;
/// Register holding the command (low half) and status (high half) words.
pub const COMMAND_REGISTER: usize = 1;
/// Register holding the revision id (byte 0) and class code (bytes 1..4).
pub const CLASS_REGISTER: usize = 2;
/// Register of BAR 0; BARs 1..5 follow.
pub const BAR0_REGISTER: usize = 4;
/// Register holding the subsystem vendor id (low half) and subsystem id (high half).
pub const SUBSYSTEM_REGISTER: usize = 11;
/// Register holding the capabilities pointer (byte 0).
pub const CAPABILITY_POINTER_REGISTER: usize = 13;
/// Register holding the interrupt line (byte 0) and interrupt pin (byte 1).
pub const INTERRUPT_REGISTER: usize = 15;

/// Command register: the function decodes accesses to its memory BARs.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// Command register: the function may master the bus (DMA, and MSI/MSI-X messages, which are
/// memory writes).
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command bits a guest may set: I/O space, memory space, bus master, parity error response,
/// SERR# enable, INTx disable. The rest are reserved or hard-wired to zero on PCI Express.
const COMMAND_WRITABLE: u32 = 0x0547;
/// Status register: the function has a capability list.
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;

/// Capabilities live after the 64-byte standard header.
const FIRST_CAPABILITY_OFFSET: usize = 0x40;

/// BAR low bits: bits 2:1 say 64-bit, bit 3 says prefetchable (bit 0 clear: memory, not I/O).
const BAR_MEM_TYPE_64: u32 = 0b10 << 1;
const BAR_MEM_PREFETCHABLE: u32 = 1 << 3;
/// The address bits of a memory BAR's low register.
const BAR_MEM_ADDRESS_MASK: u32 = !0xf;
/// Memory BARs cover at least 16 bytes (their four low bits are flags).
const BAR_MIN_SIZE: u64 = 16;

/// Errors from building a configuration space.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciConfigError {
    #[error("BAR index {0} is out of range or its register is already used")]
    BarIndex(u8),
    #[error(
        "BAR size {0:#x} must be a power of two, at least 16 bytes, and fit its address width"
    )]
    BarSize(u64),
    #[error("no room for a {0}-byte capability in configuration space")]
    CapabilitySpace(usize),
    #[error("a capability needs at least its id and next pointer, and a mask of its own length")]
    CapabilityShape,
}

/// The address width of a memory BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciBarKind {
    /// One register; the BAR lives below 4 GiB.
    Memory32,
    /// Two registers (this one and the next); the BAR may live anywhere.
    Memory64,
}

/// A memory BAR the function implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciBar {
    /// BAR number, 0..=5 (a 64-bit BAR also takes `index + 1`).
    pub index: u8,
    /// Size in bytes; a power of two.
    pub size: u64,
    pub kind: PciBarKind,
    pub prefetchable: bool,
}

impl PciBar {
    /// The size mask of the whole (up to 64-bit) address: the bits the guest may set.
    fn address_mask(&self) -> u64 {
        let mask = !(self.size - 1);
        match self.kind {
            PciBarKind::Memory32 => mask & u64::from(BAR_MEM_ADDRESS_MASK),
            PciBarKind::Memory64 => mask & !0xf,
        }
    }
}

/// The fixed identity of a function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciIdentity {
    pub vendor_id: u16,
    pub device_id: u16,
    /// Base class, subclass and programming interface, as `0xCCSSPP`.
    pub class_code: u32,
    pub revision_id: u8,
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
    /// 0 for none, 1..=4 for INTA#..INTD#.
    pub interrupt_pin: u8,
}

/// A function's 256-byte type-0 configuration space.
#[derive(Debug, Clone)]
pub struct PciConfigSpace {
    registers: [u32; NUM_REGISTERS],
    /// Per register, the bits a guest write may change.
    writable: [u32; NUM_REGISTERS],
    bars: Vec<PciBar>,
    /// Offset of the last capability in the chain, whose next pointer a new one goes into.
    last_capability: Option<usize>,
    /// Where the next capability may start.
    next_capability_offset: usize,
}

impl PciConfigSpace {
    pub fn new(identity: PciIdentity) -> Self {
        let mut registers = [0u32; NUM_REGISTERS];
        let mut writable = [0u32; NUM_REGISTERS];
        registers[ID_REGISTER] =
            u32::from(identity.vendor_id) | u32::from(identity.device_id) << 16;
        registers[CLASS_REGISTER] =
            u32::from(identity.revision_id) | (identity.class_code & 0x00ff_ffff) << 8;
        registers[SUBSYSTEM_REGISTER] =
            u32::from(identity.subsystem_vendor_id) | u32::from(identity.subsystem_id) << 16;
        registers[INTERRUPT_REGISTER] = u32::from(identity.interrupt_pin) << 8;
        writable[COMMAND_REGISTER] = COMMAND_WRITABLE;
        // Cache line size is read-write for software's bookkeeping; the rest of that register
        // (latency timer, header type 0 single-function, BIST) is read-only zero.
        writable[3] = 0x0000_00ff;
        // Interrupt line is scratch space for the OS.
        writable[INTERRUPT_REGISTER] = 0x0000_00ff;
        Self {
            registers,
            writable,
            bars: Vec::new(),
            last_capability: None,
            next_capability_offset: FIRST_CAPABILITY_OFFSET,
        }
    }

    pub fn vendor_id(&self) -> u16 {
        self.registers[ID_REGISTER] as u16
    }

    pub fn device_id(&self) -> u16 {
        (self.registers[ID_REGISTER] >> 16) as u16
    }

    /// Base class, subclass and programming interface, as `0xCCSSPP`.
    pub fn class_code(&self) -> u32 {
        self.registers[CLASS_REGISTER] >> 8
    }

    pub fn command(&self) -> u16 {
        self.registers[COMMAND_REGISTER] as u16
    }

    /// Whether the function may master the bus (command register bit 2).
    pub fn bus_master(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// Whether the function decodes its memory BARs (command register bit 1).
    pub fn memory_decoding(&self) -> bool {
        self.command() & COMMAND_MEMORY_SPACE != 0
    }

    /// Reads register `reg`; registers past the end read as all ones, like an absent function.
    pub fn read_register(&self, reg: usize) -> u32 {
        self.registers.get(reg).copied().unwrap_or(u32::MAX)
    }

    /// A guest write of `data` at byte `offset` inside register `reg`. Only the writable bits of
    /// the bytes written change. Writes that do not fit in the register are ignored.
    pub fn write_register(&mut self, reg: usize, offset: usize, data: &[u8]) {
        let Some((value, bytes_mask)) = Self::shift_into_register(offset, data) else {
            return;
        };
        if let (Some(current), Some(writable)) =
            (self.registers.get_mut(reg), self.writable.get(reg))
        {
            let mask = bytes_mask & writable;
            *current = (*current & !mask) | (value & mask);
        }
    }

    /// Sets register `reg` to `value` regardless of the writable mask: the device's own update of
    /// a read-only field.
    pub fn set_register(&mut self, reg: usize, value: u32) {
        if let Some(current) = self.registers.get_mut(reg) {
            *current = value;
        }
    }

    /// Reads `data.len()` bytes from byte `offset`, across registers; bytes past the end read as
    /// 0xff.
    pub fn read_bytes(&self, offset: usize, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i)
                .map(|at| (self.read_register(at / 4) >> ((at % 4) * 8)) as u8)
                .unwrap_or(0xff);
        }
    }

    /// A guest write of `data` at byte `offset`, split across registers; bytes past the end are
    /// dropped.
    pub fn write_bytes(&mut self, offset: usize, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            if let Some(at) = offset.checked_add(i) {
                self.write_register(at / 4, at % 4, std::slice::from_ref(byte));
            }
        }
    }

    /// Turns 1..=4 bytes at `offset` within a register into the value shifted into place and the
    /// mask of the bytes it covers.
    fn shift_into_register(offset: usize, data: &[u8]) -> Option<(u32, u32)> {
        if data.is_empty() || offset.checked_add(data.len())? > 4 {
            return None;
        }
        let mut value = 0u32;
        let mut mask = 0u32;
        for (i, byte) in data.iter().enumerate() {
            let shift = (offset + i) * 8;
            value |= u32::from(*byte) << shift;
            mask |= 0xff << shift;
        }
        Some((value, mask))
    }

    /// Declares a memory BAR: its type bits become read-only and its address bits writable
    /// above the size, so that sizing reads back the size mask. The address starts at zero.
    pub fn add_bar(&mut self, bar: PciBar) -> Result<(), PciConfigError> {
        let registers_needed = match bar.kind {
            PciBarKind::Memory32 => 1,
            PciBarKind::Memory64 => 2,
        };
        let first = usize::from(bar.index);
        if first + registers_needed > NUM_BARS
            || self.bars.iter().any(|b| {
                let taken = match b.kind {
                    PciBarKind::Memory32 => b.index..b.index + 1,
                    PciBarKind::Memory64 => b.index..b.index + 2,
                };
                taken.contains(&bar.index)
                    || (registers_needed == 2 && taken.contains(&(bar.index + 1)))
            })
        {
            return Err(PciConfigError::BarIndex(bar.index));
        }
        let max_size = match bar.kind {
            PciBarKind::Memory32 => 1 << 31,
            PciBarKind::Memory64 => 1 << 63,
        };
        if !bar.size.is_power_of_two() || bar.size < BAR_MIN_SIZE || bar.size > max_size {
            return Err(PciConfigError::BarSize(bar.size));
        }
        let mut flags = 0;
        if bar.kind == PciBarKind::Memory64 {
            flags |= BAR_MEM_TYPE_64;
        }
        if bar.prefetchable {
            flags |= BAR_MEM_PREFETCHABLE;
        }
        let mask = bar.address_mask();
        let reg = BAR0_REGISTER + first;
        self.registers[reg] = flags;
        self.writable[reg] = mask as u32;
        if bar.kind == PciBarKind::Memory64 {
            self.registers[reg + 1] = 0;
            self.writable[reg + 1] = (mask >> 32) as u32;
        }
        self.bars.push(bar);
        Ok(())
    }

    /// The BARs the function implements.
    pub fn bars(&self) -> &[PciBar] {
        &self.bars
    }

    pub fn bar(&self, index: u8) -> Option<&PciBar> {
        self.bars.iter().find(|b| b.index == index)
    }

    /// The address BAR `index` is programmed with (whatever memory decoding says).
    pub fn bar_address(&self, index: u8) -> Option<u64> {
        let bar = self.bar(index)?;
        let reg = BAR0_REGISTER + usize::from(index);
        let low = u64::from(self.registers[reg] & BAR_MEM_ADDRESS_MASK);
        Some(match bar.kind {
            PciBarKind::Memory32 => low,
            PciBarKind::Memory64 => low | u64::from(self.registers[reg + 1]) << 32,
        })
    }

    /// Whether BAR `index` holds a sizing pattern (its address bits, or either half of them for
    /// a 64-bit BAR, all ones) rather than an address the guest means.
    pub fn bar_sizing(&self, index: u8) -> bool {
        let Some(bar) = self.bar(index) else {
            return false;
        };
        let reg = BAR0_REGISTER + usize::from(index);
        let mask = bar.address_mask();
        let (low_mask, high_mask) = (mask as u32, (mask >> 32) as u32);
        let low_sizing = low_mask != 0 && self.registers[reg] & BAR_MEM_ADDRESS_MASK == low_mask;
        match bar.kind {
            PciBarKind::Memory32 => low_sizing,
            PciBarKind::Memory64 => {
                low_sizing || (high_mask != 0 && self.registers[reg + 1] == high_mask)
            }
        }
    }

    /// Programs BAR `index` with `address` (the firmware's job, done by the root at placement).
    pub fn set_bar_address(&mut self, index: u8, address: u64) {
        let Some(bar) = self.bar(index).copied() else {
            return;
        };
        let reg = BAR0_REGISTER + usize::from(index);
        let flags = self.registers[reg] & !BAR_MEM_ADDRESS_MASK;
        let address = address & bar.address_mask();
        self.registers[reg] = flags | address as u32;
        if bar.kind == PciBarKind::Memory64 {
            self.registers[reg + 1] = (address >> 32) as u32;
        }
    }

    /// Appends a capability to the list and returns its offset. `body` is the whole capability
    /// from its id byte on (its next-pointer byte is filled in here); `writable` is a mask of the
    /// same length of the bits the guest may change. Capabilities start dword-aligned.
    pub fn add_capability(
        &mut self,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, PciConfigError> {
        if body.len() < 2 || writable.len() != body.len() {
            return Err(PciConfigError::CapabilityShape);
        }
        let offset = self.next_capability_offset;
        let end = offset
            .checked_add(body.len())
            .filter(|end| *end <= CONFIG_SPACE_SIZE)
            .ok_or(PciConfigError::CapabilitySpace(body.len()))?;
        for (i, (byte, mask)) in body.iter().zip(writable).enumerate() {
            let at = offset + i;
            let shift = (at % 4) * 8;
            let reg = at / 4;
            // The next pointer is the list's, never the guest's.
            let (byte, mask) = if i == 1 { (0, 0) } else { (*byte, *mask) };
            self.registers[reg] =
                (self.registers[reg] & !(0xff << shift)) | u32::from(byte) << shift;
            self.writable[reg] = (self.writable[reg] & !(0xff << shift)) | u32::from(mask) << shift;
        }
        match self.last_capability {
            // Link the previous capability's next pointer (the byte after its id) to this one.
            Some(previous) => self.set_byte(previous + 1, offset as u8),
            None => {
                self.set_byte(CAPABILITY_POINTER_REGISTER * 4, offset as u8);
                let status = u32::from(STATUS_CAPABILITIES_LIST) << 16;
                self.registers[COMMAND_REGISTER] |= status;
            }
        }
        self.last_capability = Some(offset);
        self.next_capability_offset = end.next_multiple_of(4);
        Ok(offset)
    }

    fn set_byte(&mut self, at: usize, value: u8) {
        if let Some(reg) = self.registers.get_mut(at / 4) {
            let shift = (at % 4) * 8;
            *reg = (*reg & !(0xff << shift)) | u32::from(value) << shift;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> PciIdentity {
        PciIdentity {
            vendor_id: 0x1af4,
            device_id: 0x1059,
            class_code: 0x04_01_00,
            revision_id: 1,
            subsystem_vendor_id: 0x1af4,
            subsystem_id: 0x1059,
            interrupt_pin: 1,
        }
    }

    fn space_with_bars() -> PciConfigSpace {
        let mut config = PciConfigSpace::new(identity());
        config
            .add_bar(PciBar {
                index: 0,
                size: 0x4000,
                kind: PciBarKind::Memory32,
                prefetchable: false,
            })
            .unwrap();
        config
            .add_bar(PciBar {
                index: 2,
                size: 0x10_0000,
                kind: PciBarKind::Memory64,
                prefetchable: true,
            })
            .unwrap();
        config
    }

    #[test]
    fn identity_fields_read_back() {
        let config = PciConfigSpace::new(identity());
        assert_eq!(config.read_register(0), 0x1059_1af4);
        assert_eq!(config.read_register(2), 0x0401_0001);
        assert_eq!(config.read_register(11), 0x1059_1af4);
        assert_eq!(config.read_register(15), 0x0000_0100);
        assert_eq!(config.read_register(3) >> 16 & 0xff, 0, "header type 0");
        assert_eq!(config.vendor_id(), 0x1af4);
        assert_eq!(config.device_id(), 0x1059);
        assert_eq!(config.class_code(), 0x04_01_00);
    }

    #[test]
    fn read_only_fields_survive_all_ones() {
        let mut config = space_with_bars();
        let before = config.clone();
        for reg in 0..NUM_REGISTERS {
            config.write_register(reg, 0, &[0xff; 4]);
        }
        assert_eq!(config.read_register(0), before.read_register(0));
        assert_eq!(config.read_register(2), before.read_register(2));
        assert_eq!(config.read_register(11), before.read_register(11));
        assert_eq!(config.read_register(1) & 0xffff, COMMAND_WRITABLE);
        assert_eq!(
            config.read_register(15),
            0x0000_01ff,
            "line writable, pin not"
        );
        assert_eq!(config.read_register(12), 0, "no expansion ROM");
    }

    #[test]
    fn every_width_at_every_offset_never_panics_and_is_consistent() {
        let mut config = space_with_bars();
        config
            .add_capability(&[0x09, 0, 8, 1, 2, 3, 4, 5], &[0; 8])
            .unwrap();
        let pristine = config.clone();
        for offset in 0..260usize {
            for len in [1usize, 2, 3, 4, 8] {
                let mut data = vec![0u8; len];
                config.read_bytes(offset, &mut data);
                for (i, byte) in data.iter().enumerate() {
                    let at = offset + i;
                    let expected = if at < CONFIG_SPACE_SIZE {
                        (pristine.read_register(at / 4) >> ((at % 4) * 8)) as u8
                    } else {
                        0xff
                    };
                    assert_eq!(*byte, expected, "offset {offset} len {len}");
                }
                // Register-level access with offsets/lengths that do not fit is ignored.
                config.write_register(offset / 4, offset % 4, &data);
                let _ = config.read_register(offset / 4);
            }
        }
        // Writing back what was read leaves the space as it was.
        for reg in 0..NUM_REGISTERS {
            assert_eq!(
                config.read_register(reg),
                pristine.read_register(reg),
                "reg {reg}"
            );
        }
        config.write_register(0, 3, &[1, 2]); // straddles the register end
        config.write_register(usize::MAX, 0, &[1]);
        config.write_bytes(usize::MAX - 1, &[1, 2, 3]);
        let mut data = [0u8; 3];
        config.read_bytes(usize::MAX - 1, &mut data);
        assert_eq!(data, [0xff; 3]);
        assert_eq!(config.read_register(64), u32::MAX);
    }

    #[test]
    fn unaligned_byte_writes_touch_only_their_bytes() {
        let mut config = space_with_bars();
        // Interrupt line is byte 0x3c; a word write at 0x3b also hits register 14 (read-only).
        config.write_bytes(0x3b, &[0xaa, 0x0b]);
        assert_eq!(config.read_register(15) & 0xff, 0x0b);
        assert_eq!(config.read_register(14), 0);
        // Command word written as two bytes.
        config.write_bytes(0x04, &[0x02]);
        assert!(config.memory_decoding());
        config.write_bytes(0x05, &[0x04]);
        assert_eq!(config.command(), 0x0402);
        config.write_register(1, 0, &[0]);
        assert!(!config.memory_decoding());
    }

    #[test]
    fn bar_sizing_32_and_64_bit() {
        let mut config = space_with_bars();
        config.write_register(4, 0, &u32::MAX.to_le_bytes());
        assert_eq!(config.read_register(4), 0xffff_c000);
        assert!(config.bar_sizing(0));
        config.write_register(4, 0, &0xc000_0000u32.to_le_bytes());
        assert_eq!(config.bar_address(0), Some(0xc000_0000));
        assert!(!config.bar_sizing(0));

        // 64-bit prefetchable BAR 2: type bits 0b1100 in the low register.
        config.write_register(6, 0, &u32::MAX.to_le_bytes());
        config.write_register(7, 0, &u32::MAX.to_le_bytes());
        assert_eq!(config.read_register(6), 0xfff0_000c);
        assert_eq!(config.read_register(7), 0xffff_ffff);
        assert!(config.bar_sizing(2));
        let size_mask =
            u64::from(config.read_register(7)) << 32 | u64::from(config.read_register(6) & !0xf);
        assert_eq!(!size_mask + 1, 0x10_0000);
        config.write_register(6, 0, &0xd000_0000u32.to_le_bytes());
        config.write_register(7, 0, &0x1u32.to_le_bytes());
        assert_eq!(config.bar_address(2), Some(0x1_d000_0000));
        assert!(!config.bar_sizing(2));
        // Unimplemented BARs read zero and stay zero (no size).
        config.write_register(5, 0, &u32::MAX.to_le_bytes());
        assert_eq!(config.read_register(5), 0);
        assert_eq!(config.bar_address(1), None);
    }

    #[test]
    fn set_bar_address_keeps_flags() {
        let mut config = space_with_bars();
        config.set_bar_address(2, 0x2_0010_0000);
        assert_eq!(config.read_register(6), 0x0010_000c);
        assert_eq!(config.read_register(7), 2);
        config.set_bar_address(0, 0xc000_0123); // misaligned bits are dropped
        assert_eq!(config.bar_address(0), Some(0xc000_0000));
    }

    #[test]
    fn bad_bars_are_refused() {
        let mut config = space_with_bars();
        let bar = |index, size, kind| PciBar {
            index,
            size,
            kind,
            prefetchable: false,
        };
        use PciBarKind::*;
        assert_eq!(
            config.add_bar(bar(0, 0x1000, Memory32)),
            Err(PciConfigError::BarIndex(0))
        );
        assert_eq!(
            config.add_bar(bar(3, 0x1000, Memory32)),
            Err(PciConfigError::BarIndex(3))
        );
        assert_eq!(
            config.add_bar(bar(1, 0x1000, Memory64)),
            Err(PciConfigError::BarIndex(1))
        );
        assert_eq!(
            config.add_bar(bar(5, 0x1000, Memory64)),
            Err(PciConfigError::BarIndex(5))
        );
        assert_eq!(
            config.add_bar(bar(6, 0x1000, Memory32)),
            Err(PciConfigError::BarIndex(6))
        );
        assert_eq!(
            config.add_bar(bar(4, 0x1001, Memory32)),
            Err(PciConfigError::BarSize(0x1001))
        );
        assert_eq!(
            config.add_bar(bar(4, 8, Memory32)),
            Err(PciConfigError::BarSize(8))
        );
        assert_eq!(
            config.add_bar(bar(4, 1 << 32, Memory32)),
            Err(PciConfigError::BarSize(1 << 32))
        );
        config.add_bar(bar(4, 1 << 32, Memory64)).unwrap();
    }

    #[test]
    fn capability_chain_links_and_masks() {
        let mut config = PciConfigSpace::new(identity());
        assert_eq!(
            config.read_register(1) >> 16 & u32::from(STATUS_CAPABILITIES_LIST),
            0
        );
        let first = config
            .add_capability(&[0x11, 0xee, 1, 2, 3], &[0, 0, 0xff, 0, 0])
            .unwrap();
        let second = config.add_capability(&[0x09, 0xee, 7, 7], &[0; 4]).unwrap();
        let third = config
            .add_capability(&[0x05, 0, 1, 2, 3, 4, 5, 6, 7], &[0; 9])
            .unwrap();
        assert_eq!((first, second, third), (0x40, 0x48, 0x4c));
        assert_ne!(
            config.read_register(1) >> 16 & u32::from(STATUS_CAPABILITIES_LIST),
            0
        );

        let mut ids = Vec::new();
        let mut byte = [0u8; 1];
        config.read_bytes(0x34, &mut byte);
        let mut at = usize::from(byte[0]);
        while at != 0 {
            config.read_bytes(at, &mut byte);
            ids.push(byte[0]);
            config.read_bytes(at + 1, &mut byte);
            at = usize::from(byte[0]);
        }
        assert_eq!(ids, [0x11, 0x09, 0x05]);

        // Only the masked byte is writable; the next pointer never is.
        config.write_bytes(first, &[0xff; 5]);
        let mut body = [0u8; 5];
        config.read_bytes(first, &mut body);
        assert_eq!(body, [0x11, 0x48, 0xff, 2, 3]);
    }

    #[test]
    fn capability_space_runs_out() {
        let mut config = PciConfigSpace::new(identity());
        let big = [0u8; 100];
        config.add_capability(&big, &big).unwrap();
        assert_eq!(
            config.add_capability(&big, &big),
            Err(PciConfigError::CapabilitySpace(100))
        );
        assert_eq!(
            config.add_capability(&[1], &[0]),
            Err(PciConfigError::CapabilityShape)
        );
        assert_eq!(
            config.add_capability(&[1, 0], &[0]),
            Err(PciConfigError::CapabilityShape)
        );
    }
}
