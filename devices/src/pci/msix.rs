//! MSI-X: the capability, the vector table and the pending bit array (PBA).
//!
//! The table and the PBA live in a BAR of the function; the function owning that BAR forwards
//! accesses to [`Msix::read_table`], [`Msix::write_table`] and [`Msix::read_pba`], and forwards
//! writes of the capability's message control word to [`Msix::set_control`].
//!
//! Messages leave through [`MsiInterruptGroup`], which the VMM implements with KVM GSI routes and
//! one irqfd per vector. Device threads call [`Msix::trigger`] while vCPU threads program the
//! table, so the state sits behind a mutex that is held only for bookkeeping and an eventfd
//! write, never across the (slow) routing update.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

/// Capability id of MSI-X.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Length of the MSI-X capability in configuration space.
pub const MSIX_CAPABILITY_LEN: usize = 12;
/// Bytes per vector table entry.
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// Largest table the capability can describe.
pub const MSIX_MAX_VECTORS: u16 = 2048;

/// Message control: MSI-X enable.
pub const MSIX_CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: all vectors masked.
pub const MSIX_CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: this vector masked.
const VECTOR_CONTROL_MASKED: u32 = 1;

/// Where a message goes: the address and data an MSI write carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// How MSI-X messages reach the guest; the VMM implements it (KVM GSI routing + irqfds).
pub trait MsiInterruptGroup: Send + Sync {
    /// Vector `index` now targets `msg` (called when the guest writes a table entry or (un)masks).
    fn update(&self, index: u16, msg: MsiMessage, masked: bool) -> io::Result<()>;
    /// Raise vector `index` (one eventfd write, no VMM exit).
    fn trigger(&self, index: u16) -> io::Result<()>;
}

/// Errors from setting up MSI-X.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsixError {
    #[error("MSI-X needs 1..={MSIX_MAX_VECTORS} vectors, not {0}")]
    VectorCount(u16),
    #[error("MSI-X BIR {0} is not a BAR number")]
    Bir(u8),
    #[error("MSI-X table/PBA offset {0:#x} is not 8-byte aligned")]
    Offset(u32),
}

/// The MSI-X capability's fixed contents: table size and where the table and PBA live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCapability {
    pub vectors: u16,
    pub table_bar: u8,
    pub table_offset: u32,
    pub pba_bar: u8,
    pub pba_offset: u32,
}

impl MsixCapability {
    pub fn new(
        vectors: u16,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> Result<Self, MsixError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS {
            return Err(MsixError::VectorCount(vectors));
        }
        for bir in [table_bar, pba_bar] {
            if bir > 5 {
                return Err(MsixError::Bir(bir));
            }
        }
        for offset in [table_offset, pba_offset] {
            if offset % 8 != 0 {
                return Err(MsixError::Offset(offset));
            }
        }
        Ok(Self {
            vectors,
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
        })
    }

    /// Bytes of the vector table.
    pub fn table_len(&self) -> u64 {
        u64::from(self.vectors) * MSIX_TABLE_ENTRY_SIZE
    }

    /// Bytes of the PBA: one bit per vector, in whole qwords.
    pub fn pba_len(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }

    /// The capability's bytes (id, next pointer left zero, message control, table, PBA) and the
    /// mask of bits the guest may write: only the enable and function-mask bits.
    pub fn to_bytes(&self) -> ([u8; MSIX_CAPABILITY_LEN], [u8; MSIX_CAPABILITY_LEN]) {
        let mut body = [0u8; MSIX_CAPABILITY_LEN];
        body[0] = MSIX_CAPABILITY_ID;
        body[2..4].copy_from_slice(&(self.vectors - 1).to_le_bytes());
        body[4..8].copy_from_slice(&(self.table_offset | u32::from(self.table_bar)).to_le_bytes());
        body[8..12].copy_from_slice(&(self.pba_offset | u32::from(self.pba_bar)).to_le_bytes());
        let mut writable = [0u8; MSIX_CAPABILITY_LEN];
        writable[3] = ((MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK) >> 8) as u8;
        (body, writable)
    }
}

/// One vector table entry, as the four dwords the guest sees.
#[derive(Debug, Clone, Copy)]
struct MsixEntry {
    /// Message address low, message address high, message data, vector control.
    dwords: [u32; 4],
    /// What `MsiInterruptGroup::update` was last told about this vector.
    reported: Option<(MsiMessage, bool)>,
    /// A routing update for this vector is in flight: raising it now would use a stale route,
    /// so it is left pending until the update lands.
    updating: bool,
}

impl MsixEntry {
    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.dwords[0]) | u64::from(self.dwords[1]) << 32,
            data: self.dwords[2],
        }
    }

    fn masked(&self) -> bool {
        self.dwords[3] & VECTOR_CONTROL_MASKED != 0
    }
}

impl Default for MsixEntry {
    fn default() -> Self {
        Self {
            // Vectors come out of reset masked (PCI Local Bus 3.0, 6.8.2.9).
            dwords: [0, 0, 0, VECTOR_CONTROL_MASKED],
            reported: None,
            updating: false,
        }
    }
}

#[derive(Debug)]
struct MsixState {
    enabled: bool,
    function_masked: bool,
    entries: Vec<MsixEntry>,
    pending: Vec<u64>,
    /// The function may master the bus. An MSI-X message is a memory write, which only a bus
    /// master may issue: without it every vector stays pending.
    bus_master: bool,
}

impl MsixState {
    /// Whether vector `index` may not fire now (masked itself, or by the function, or MSI-X off).
    fn blocked(&self, index: usize) -> bool {
        !self.enabled || self.function_masked || self.entries[index].masked()
    }

    fn pending(&self, index: usize) -> bool {
        self.pending[index / 64] & (1 << (index % 64)) != 0
    }

    fn set_pending(&mut self, index: usize, pending: bool) {
        let bit = 1 << (index % 64);
        if pending {
            self.pending[index / 64] |= bit;
        } else {
            self.pending[index / 64] &= !bit;
        }
    }
}

struct MsixShared {
    state: Mutex<MsixState>,
    /// Serializes configuration changes (table writes, control writes) so that their routing
    /// updates reach the VMM in order; interrupt triggers never take it.
    config: Mutex<()>,
    group: Arc<dyn MsiInterruptGroup>,
}

/// The MSI-X state of one function. Cloning gives another handle to the same state.
#[derive(Clone)]
pub struct Msix {
    shared: Arc<MsixShared>,
    vectors: u16,
}

impl std::fmt::Debug for Msix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Msix")
            .field("vectors", &self.vectors)
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Msix {
    pub fn new(vectors: u16, group: Arc<dyn MsiInterruptGroup>) -> Result<Self, MsixError> {
        if vectors == 0 || vectors > MSIX_MAX_VECTORS {
            return Err(MsixError::VectorCount(vectors));
        }
        let state = MsixState {
            enabled: false,
            function_masked: false,
            entries: vec![MsixEntry::default(); usize::from(vectors)],
            pending: vec![0; usize::from(vectors).div_ceil(64)],
            // The owning function says otherwise through `set_bus_master`.
            bus_master: true,
        };
        Ok(Self {
            shared: Arc::new(MsixShared {
                state: Mutex::new(state),
                config: Mutex::new(()),
                group,
            }),
            vectors,
        })
    }

    pub fn vectors(&self) -> u16 {
        self.vectors
    }

    /// Whether MSI-X is enabled in the message control word.
    pub fn enabled(&self) -> bool {
        lock(&self.shared.state).enabled
    }

    /// Whether the function mask is set in the message control word.
    pub fn function_masked(&self) -> bool {
        lock(&self.shared.state).function_masked
    }

    /// Reads the vector table at `offset`, any width; bytes past the table read as zero.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let state = lock(&self.shared.state);
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| {
                    let entry = state.entries.get(usize::try_from(at / 16).ok()?)?;
                    let dword = entry.dwords[(at % 16 / 4) as usize];
                    Some((dword >> (at % 4 * 8)) as u8)
                })
                .unwrap_or(0);
        }
    }

    /// A guest write to the vector table at `offset`, any width. Changed entries are reported to
    /// the interrupt group; unmasking a vector with its pending bit set raises it.
    pub fn write_table(&self, offset: u64, data: &[u8]) {
        let _config = lock(&self.shared.config);
        let mut touched = Vec::new();
        {
            let mut state = lock(&self.shared.state);
            for (i, byte) in data.iter().enumerate() {
                let Some(at) = offset.checked_add(i as u64) else {
                    break;
                };
                let Some(index) = usize::try_from(at / 16)
                    .ok()
                    .filter(|index| *index < state.entries.len())
                else {
                    continue;
                };
                let dword = (at % 16 / 4) as usize;
                let shift = at % 4 * 8;
                // Only the mask bit of vector control is implemented; the rest is reserved.
                let writable = if dword == 3 {
                    VECTOR_CONTROL_MASKED
                } else {
                    u32::MAX
                };
                let mask = (0xff << shift) & writable;
                let value = &mut state.entries[index].dwords[dword];
                *value = (*value & !mask) | (u32::from(*byte) << shift & mask);
                if touched.last() != Some(&index) {
                    touched.push(index);
                }
            }
        }
        self.sync_routes(touched);
    }

    /// Reads the PBA at `offset`, any width; bytes past it read as zero.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let state = lock(&self.shared.state);
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| {
                    let qword = state.pending.get(usize::try_from(at / 8).ok()?)?;
                    Some((qword >> (at % 8 * 8)) as u8)
                })
                .unwrap_or(0);
        }
    }

    /// Applies the message control word the guest wrote to the capability (enable and function
    /// mask bits; the rest is read-only and ignored).
    pub fn set_control(&self, control: u16) {
        let _config = lock(&self.shared.config);
        let changed = {
            let mut state = lock(&self.shared.state);
            let enabled = control & MSIX_CONTROL_ENABLE != 0;
            let function_masked = control & MSIX_CONTROL_FUNCTION_MASK != 0;
            let changed = (enabled, function_masked) != (state.enabled, state.function_masked);
            state.enabled = enabled;
            state.function_masked = function_masked;
            changed
        };
        if changed {
            self.sync_routes((0..usize::from(self.vectors)).collect());
        }
    }

    /// The owning function's Bus Master Enable changed: while it is clear every message is left
    /// pending; once set, the pending ones that are not masked go out.
    pub fn set_bus_master(&self, enabled: bool) {
        let _config = lock(&self.shared.config);
        let mut state = lock(&self.shared.state);
        state.bus_master = enabled;
        if enabled {
            self.raise_deliverable_pending(&mut state);
        }
    }

    /// Back to the power-on state: disabled, every vector masked and zeroed, nothing pending.
    pub fn reset(&self) {
        let _config = lock(&self.shared.config);
        {
            let mut state = lock(&self.shared.state);
            state.enabled = false;
            state.function_masked = false;
            for entry in &mut state.entries {
                entry.dwords = MsixEntry::default().dwords;
            }
            state.pending.fill(0);
        }
        self.sync_routes((0..usize::from(self.vectors)).collect());
    }

    /// Reports vectors whose message or effective mask changed to the interrupt group, then
    /// raises the ones now unmasked with their pending bit set. Called with `config` held.
    fn sync_routes(&self, vectors: Vec<usize>) {
        let mut updates = Vec::new();
        {
            let mut state = lock(&self.shared.state);
            for index in vectors {
                let now = (state.entries[index].message(), state.blocked(index));
                if state.entries[index].reported != Some(now) {
                    state.entries[index].updating = true;
                    updates.push((index, now));
                }
            }
        }
        // The routing update can take milliseconds (KVM_SET_GSI_ROUTING waits for readers), so
        // it runs unlocked; triggers meanwhile leave the vector pending (see `updating`).
        for (index, (msg, masked)) in &updates {
            if let Err(e) = self.shared.group.update(*index as u16, *msg, *masked) {
                crate::error_limited!("MSI-X vector {index}: routing update failed: {e}");
            }
        }
        let mut state = lock(&self.shared.state);
        for (index, now) in updates {
            state.entries[index].reported = Some(now);
            state.entries[index].updating = false;
        }
        self.raise_deliverable_pending(&mut state);
    }

    /// Any vector now deliverable with its pending bit set fires once, and its bit clears.
    fn raise_deliverable_pending(&self, state: &mut MsixState) {
        if !state.bus_master {
            return;
        }
        for index in 0..state.entries.len() {
            if state.pending(index) && !state.blocked(index) && !state.entries[index].updating {
                state.set_pending(index, false);
                if let Err(e) = self.shared.group.trigger(index as u16) {
                    crate::error_limited!(
                        "MSI-X vector {index}: raising pending interrupt failed: {e}"
                    );
                }
            }
        }
    }

    /// Raises vector `index`, or sets its pending bit when it is masked (by itself or the
    /// function), MSI-X is disabled or the function may not master the bus.
    pub fn trigger(&self, index: u16) -> io::Result<()> {
        let slot = usize::from(index);
        let mut state = lock(&self.shared.state);
        if slot >= state.entries.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MSI-X vector {index} out of range"),
            ));
        }
        if state.blocked(slot) || state.entries[slot].updating || !state.bus_master {
            state.set_pending(slot, true);
            return Ok(());
        }
        // An eventfd write: fast, and doing it under the lock keeps a concurrent mask from
        // slipping in between the check and the delivery.
        self.shared.group.trigger(index)
    }

    /// Whether vector `index` has its pending bit set.
    pub fn is_pending(&self, index: u16) -> bool {
        let state = lock(&self.shared.state);
        usize::from(index) < state.entries.len() && state.pending(usize::from(index))
    }
}

/// A fake interrupt group recording what it is told, for tests here and in the virtio transport.
#[cfg(test)]
pub(crate) mod test_utils {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum MsiEvent {
        Update(u16, MsiMessage, bool),
        Trigger(u16),
    }

    #[derive(Default)]
    pub struct RecordingMsiGroup {
        pub events: Mutex<Vec<MsiEvent>>,
    }

    impl RecordingMsiGroup {
        pub fn take(&self) -> Vec<MsiEvent> {
            std::mem::take(&mut *lock(&self.events))
        }

        pub fn triggers(&self) -> Vec<u16> {
            lock(&self.events)
                .iter()
                .filter_map(|e| match e {
                    MsiEvent::Trigger(v) => Some(*v),
                    _ => None,
                })
                .collect()
        }
    }

    impl MsiInterruptGroup for RecordingMsiGroup {
        fn update(&self, index: u16, msg: MsiMessage, masked: bool) -> io::Result<()> {
            lock(&self.events).push(MsiEvent::Update(index, msg, masked));
            Ok(())
        }

        fn trigger(&self, index: u16) -> io::Result<()> {
            lock(&self.events).push(MsiEvent::Trigger(index));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_utils::{MsiEvent, RecordingMsiGroup};
    use super::*;

    fn msix(vectors: u16) -> (Msix, Arc<RecordingMsiGroup>) {
        let group = Arc::new(RecordingMsiGroup::default());
        (Msix::new(vectors, group.clone()).unwrap(), group)
    }

    fn program(msix: &Msix, index: u16, address: u64, data: u32, masked: bool) {
        let base = u64::from(index) * 16;
        msix.write_table(base, &(address as u32).to_le_bytes());
        msix.write_table(base + 4, &((address >> 32) as u32).to_le_bytes());
        msix.write_table(base + 8, &data.to_le_bytes());
        msix.write_table(base + 12, &u32::from(masked).to_le_bytes());
    }

    #[test]
    fn without_bus_mastering_vectors_stay_pending_until_it_is_back() {
        let (msix, group) = msix(2);
        program(&msix, 0, 0xfee0_0000, 0x41, false);
        msix.set_control(MSIX_CONTROL_ENABLE);
        group.take();
        msix.set_bus_master(false);
        msix.trigger(0).unwrap();
        assert!(group.triggers().is_empty());
        assert!(msix.is_pending(0));
        msix.set_bus_master(true);
        assert_eq!(group.triggers(), [0]);
        assert!(!msix.is_pending(0));
        msix.trigger(0).unwrap();
        assert_eq!(group.triggers(), [0, 0]);
    }

    #[test]
    fn capability_bytes() {
        let cap = MsixCapability::new(5, 0, 0x4000, 0, 0x5000).unwrap();
        let (body, writable) = cap.to_bytes();
        assert_eq!(body, [0x11, 0, 4, 0, 0, 0x40, 0, 0, 0, 0x50, 0, 0]);
        assert_eq!(writable[3], 0xc0);
        assert_eq!(writable.iter().map(|b| b.count_ones()).sum::<u32>(), 2);
        assert_eq!(cap.table_len(), 80);
        assert_eq!(cap.pba_len(), 8);
        assert_eq!(
            MsixCapability::new(65, 1, 0, 1, 0x800).unwrap().pba_len(),
            16
        );
        assert_eq!(
            MsixCapability::new(0, 0, 0, 0, 0),
            Err(MsixError::VectorCount(0))
        );
        assert_eq!(MsixCapability::new(1, 6, 0, 0, 0), Err(MsixError::Bir(6)));
        assert_eq!(
            MsixCapability::new(1, 0, 4, 0, 0),
            Err(MsixError::Offset(4))
        );
        assert!(Msix::new(2049, Arc::new(RecordingMsiGroup::default())).is_err());
    }

    #[test]
    fn table_reads_back_at_every_width() {
        let (msix, _) = msix(2);
        program(&msix, 1, 0xfee0_1000, 0x4041, false);
        let mut qword = [0u8; 8];
        msix.read_table(16, &mut qword);
        assert_eq!(u64::from_le_bytes(qword), 0xfee0_1000);
        let mut dword = [0u8; 4];
        msix.read_table(24, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), 0x4041);
        msix.read_table(12, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), 1, "vector 0 still masked");
        let mut byte = [0u8; 1];
        msix.read_table(25, &mut byte);
        assert_eq!(byte[0], 0x40);
        // A qword write covering address low and high at once.
        msix.write_table(0, &0x1_2345_6780u64.to_le_bytes());
        msix.read_table(0, &mut qword);
        assert_eq!(u64::from_le_bytes(qword), 0x1_2345_6780);
        // Reserved vector control bits stay zero; past the table reads zero, writes vanish.
        msix.write_table(12, &u32::MAX.to_le_bytes());
        msix.read_table(12, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), 1);
        msix.write_table(32, &[0xff; 8]);
        msix.read_table(30, &mut dword);
        assert_eq!(dword, [0, 0, 0, 0]);
        msix.write_table(u64::MAX - 2, &[1; 8]);
        msix.read_table(u64::MAX - 2, &mut qword);
        assert_eq!(qword, [0; 8]);
    }

    #[test]
    fn routes_are_reported_once_per_change() {
        let (msix, group) = msix(2);
        msix.set_control(MSIX_CONTROL_ENABLE);
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x30,
        };
        assert_eq!(
            group.take(),
            [
                MsiEvent::Update(0, MsiMessage::default(), true),
                MsiEvent::Update(1, MsiMessage::default(), true)
            ]
        );
        program(&msix, 0, msg.address, msg.data, false);
        // Address low changes the route; writing zero to address high changes nothing.
        assert_eq!(
            group.take(),
            [
                MsiEvent::Update(
                    0,
                    MsiMessage {
                        address: 0xfee0_0000,
                        data: 0
                    },
                    true
                ),
                MsiEvent::Update(0, msg, true),
                MsiEvent::Update(0, msg, false),
            ]
        );
        msix.trigger(0).unwrap();
        assert_eq!(group.take(), [MsiEvent::Trigger(0)]);
        assert!(msix.trigger(2).is_err());
    }

    #[test]
    fn masked_vector_goes_pending_and_fires_on_unmask() {
        let (msix, group) = msix(3);
        msix.set_control(MSIX_CONTROL_ENABLE);
        program(&msix, 2, 0xfee0_0000, 0x31, true);
        group.take();
        msix.trigger(2).unwrap();
        msix.trigger(2).unwrap();
        assert!(msix.is_pending(2));
        assert!(group.triggers().is_empty());
        let mut pba = [0u8; 8];
        msix.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0b100);
        msix.write_table(2 * 16 + 12, &[0]);
        assert_eq!(
            group.take(),
            [
                MsiEvent::Update(
                    2,
                    MsiMessage {
                        address: 0xfee0_0000,
                        data: 0x31
                    },
                    false
                ),
                MsiEvent::Trigger(2)
            ],
            "route first, then the one pending interrupt"
        );
        assert!(!msix.is_pending(2));
        msix.read_pba(0, &mut pba);
        assert_eq!(pba, [0; 8]);
    }

    #[test]
    fn function_mask_and_disable_hold_interrupts_pending() {
        let (msix, group) = msix(2);
        msix.set_control(MSIX_CONTROL_ENABLE | MSIX_CONTROL_FUNCTION_MASK);
        program(&msix, 0, 0xfee0_0000, 0x40, false);
        program(&msix, 1, 0xfee0_0000, 0x41, true);
        group.take();
        msix.trigger(0).unwrap();
        msix.trigger(1).unwrap();
        assert!(group.triggers().is_empty());
        assert!(msix.function_masked());
        msix.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!(group.triggers(), [0], "vector 1 is still masked on its own");
        assert!(msix.is_pending(1));
        group.take();

        msix.set_control(0);
        assert!(!msix.enabled());
        msix.trigger(0).unwrap();
        assert!(msix.is_pending(0));
        msix.set_control(MSIX_CONTROL_ENABLE);
        assert_eq!(group.triggers(), [0]);
        msix.reset();
        assert!(!msix.enabled());
        assert!(!msix.is_pending(1));
        let mut dword = [0u8; 4];
        msix.read_table(12, &mut dword);
        assert_eq!(u32::from_le_bytes(dword), 1);
    }

    #[test]
    fn triggers_from_threads_race_with_masking() {
        let (msix, group) = msix(1);
        msix.set_control(MSIX_CONTROL_ENABLE);
        program(&msix, 0, 0xfee0_0000, 0x40, false);
        let raiser = {
            let msix = msix.clone();
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    msix.trigger(0).unwrap();
                }
            })
        };
        for i in 0..200 {
            msix.write_table(12, &[i as u8 & 1]);
        }
        raiser.join().unwrap();
        msix.write_table(12, &[0]);
        assert!(
            !msix.is_pending(0),
            "unmasked at the end: nothing left pending"
        );
        assert!(!group.triggers().is_empty());
    }
}
