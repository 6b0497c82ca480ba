//! Address-range buses: a port I/O bus and an MMIO bus map guest addresses to devices.
//!
//! A vCPU thread that takes an I/O or MMIO exit looks the address up here and calls the device
//! with the offset into its range. Ranges can be moved at run time (a guest reprograms a PCI BAR),
//! so the map sits behind a read-write lock that exits take only for reading.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device that answers reads and writes on a bus.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` into the device's range that starts at `base`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` into the device's range that starts at `base`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Errors from changing a bus's map.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range at {base:#x} with length {len:#x} is empty or wraps the address space")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus range at {base:#x} with length {len:#x} overlaps a range already mapped")]
    Overlap { base: u64, len: u64 },
    #[error("no bus range starts at {0:#x}")]
    NotFound(u64),
}

/// A shared device on a bus.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct BusEntry {
    len: u64,
    device: SharedBusDevice,
}

/// A map from non-overlapping address ranges to devices.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, BusEntry>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    fn overlaps(map: &BTreeMap<u64, BusEntry>, base: u64, len: u64, ignore: Option<u64>) -> bool {
        let end = base + len; // checked by the caller
                              // The range starting at or before `base`, and the first one after it, are the only candidates.
        let before = map.range(..=base).next_back();
        let after = map
            .range(base..)
            .find(|(b, _)| Some(**b) != ignore && **b != base);
        let hits_before = before
            .filter(|(b, _)| Some(**b) != ignore)
            .is_some_and(|(b, e)| b + e.len > base);
        let hits_after = after.is_some_and(|(b, _)| *b < end);
        hits_before || hits_after
    }

    fn check_range(base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        Ok(())
    }

    /// Maps `device` at `[base, base + len)`.
    pub fn insert(&self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        Self::check_range(base, len)?;
        let mut map = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        if Self::overlaps(&map, base, len, None) {
            return Err(BusError::Overlap { base, len });
        }
        map.insert(base, BusEntry { len, device });
        Ok(())
    }

    /// Unmaps the range that starts at `base`.
    pub fn remove(&self, base: u64) -> Result<(), BusError> {
        let mut map = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&base)
            .map(|_| ())
            .ok_or(BusError::NotFound(base))
    }

    /// Moves the range that starts at `old_base` to `new_base`, keeping its length and device.
    pub fn relocate(&self, old_base: u64, new_base: u64) -> Result<(), BusError> {
        let mut map = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let len = map.get(&old_base).ok_or(BusError::NotFound(old_base))?.len;
        Self::check_range(new_base, len)?;
        if Self::overlaps(&map, new_base, len, Some(old_base)) {
            return Err(BusError::Overlap {
                base: new_base,
                len,
            });
        }
        let entry = map.remove(&old_base).ok_or(BusError::NotFound(old_base))?;
        map.insert(new_base, entry);
        Ok(())
    }

    /// The device mapped at `addr`, the base of its range, and whether `size` bytes from `addr` fit in it.
    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, SharedBusDevice)> {
        let map = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (base, entry) = map.range(..=addr).next_back()?;
        let offset = addr - base;
        let end = offset.checked_add(size as u64)?;
        (end <= entry.len).then(|| (*base, entry.device.clone()))
    }

    /// Dispatches a guest read; returns false (and leaves `data` alone) when nothing is mapped there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((base, device)) => {
                device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(base, addr - base, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a guest write; returns false when nothing is mapped there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((base, device)) => {
                device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(base, addr - base, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last: Option<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
            self.last = Some((base, offset, data.to_vec()));
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.last = Some((base, offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn dispatches_with_offset_and_base() {
        let bus = Bus::new();
        let dev = recorder();
        bus.insert(dev.clone(), 0x1000, 0x10).unwrap();
        let mut data = [0u8; 2];
        assert!(bus.read(0x1004, &mut data));
        assert_eq!(data, [4, 4]);
        assert!(bus.write(0x100e, &[1, 2]));
        assert_eq!(dev.lock().unwrap().last, Some((0x1000, 0xe, vec![1, 2])));
    }

    #[test]
    fn accesses_outside_or_straddling_a_range_miss() {
        let bus = Bus::new();
        bus.insert(recorder(), 0x1000, 0x10).unwrap();
        let mut data = [0u8; 4];
        assert!(!bus.read(0xfff, &mut data[..1]));
        assert!(!bus.read(0x1010, &mut data[..1]));
        assert!(!bus.read(0x100e, &mut data)); // straddles the end
        assert!(!bus.write(u64::MAX, &[0; 4])); // would wrap
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let bus = Bus::new();
        bus.insert(recorder(), 0x1000, 0x10).unwrap();
        assert!(matches!(
            bus.insert(recorder(), 0x1008, 0x10),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(recorder(), 0xff8, 0x10),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(recorder(), 0x1000, 0x1),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(recorder(), 0x0, 0x0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(recorder(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(recorder(), 0x1010, 0x10).unwrap(); // adjacent is fine
        bus.insert(recorder(), 0xff0, 0x10).unwrap();
    }

    #[test]
    fn relocate_moves_a_range_and_checks_overlap() {
        let bus = Bus::new();
        bus.insert(recorder(), 0x1000, 0x10).unwrap();
        bus.insert(recorder(), 0x2000, 0x10).unwrap();
        assert!(matches!(
            bus.relocate(0x1000, 0x2008),
            Err(BusError::Overlap { .. })
        ));
        bus.relocate(0x1000, 0x1004).unwrap(); // overlapping its own old place is fine
        bus.relocate(0x1004, 0x3000).unwrap();
        let mut data = [0u8; 1];
        assert!(!bus.read(0x1000, &mut data));
        assert!(bus.read(0x3000, &mut data));
        assert_eq!(
            bus.relocate(0x1000, 0x4000),
            Err(BusError::NotFound(0x1000))
        );
        bus.remove(0x3000).unwrap();
        assert!(!bus.read(0x3000, &mut data));
    }
}
