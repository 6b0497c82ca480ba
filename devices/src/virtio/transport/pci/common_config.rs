//! The common configuration structure of virtio over PCI (VIRTIO 1.2 §4.1.4.3): feature
//! negotiation, the device status state machine and per-queue setup.
//!
//! This module keeps the registers and decides what a write means; the transport carries out the
//! consequences it reports (activating or resetting the device).

use std::sync::atomic::Ordering;

use super::InterruptState;
use crate::virtio::VIRTIO_F_VERSION_1;

/// Device status bits (VIRTIO 1.2 §2.1).
pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;

/// "No MSI-X vector" for config_msix_vector and queue_msix_vector.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;

/// Length of the common configuration structure as this transport implements it: up to
/// queue_device. queue_notify_data and queue_reset belong to features it does not offer.
pub const COMMON_CONFIG_LEN: usize = 0x38;

// Field offsets.
const DEVICE_FEATURE_SELECT: usize = 0x00;
const DEVICE_FEATURE: usize = 0x04;
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const CONFIG_MSIX_VECTOR: usize = 0x10;
const NUM_QUEUES: usize = 0x12;
const DEVICE_STATUS: usize = 0x14;
const CONFIG_GENERATION: usize = 0x15;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_MSIX_VECTOR: usize = 0x1a;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;

/// Every field as (offset, size), in address order.
const FIELDS: [(usize, usize); 16] = [
    (DEVICE_FEATURE_SELECT, 4),
    (DEVICE_FEATURE, 4),
    (DRIVER_FEATURE_SELECT, 4),
    (DRIVER_FEATURE, 4),
    (CONFIG_MSIX_VECTOR, 2),
    (NUM_QUEUES, 2),
    (DEVICE_STATUS, 1),
    (CONFIG_GENERATION, 1),
    (QUEUE_SELECT, 2),
    (QUEUE_SIZE, 2),
    (QUEUE_MSIX_VECTOR, 2),
    (QUEUE_ENABLE, 2),
    (QUEUE_NOTIFY_OFF, 2),
    (QUEUE_DESC, 8),
    (QUEUE_DRIVER, 8),
    (QUEUE_DEVICE, 8),
];

/// The driver's settings for one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSettings {
    pub max_size: u16,
    pub size: u16,
    pub enabled: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl QueueSettings {
    fn new(max_size: u16) -> Self {
        Self {
            max_size,
            // The device offers its maximum; the driver may lower it.
            size: max_size,
            enabled: false,
            desc_table: 0,
            avail_ring: 0,
            used_ring: 0,
        }
    }
}

/// What the transport must do after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommonConfigAction {
    /// The driver set DRIVER_OK: start the device.
    Activate,
    /// The driver wrote 0 to device_status.
    Reset,
}

/// The common configuration registers of one device.
#[derive(Debug)]
pub struct CommonConfig {
    offered_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    acked_features: u64,
    status: u8,
    queue_select: u16,
    queues: Vec<QueueSettings>,
}

impl CommonConfig {
    pub fn new(offered_features: u64, queue_max_sizes: &[u16]) -> Self {
        Self {
            offered_features,
            device_feature_select: 0,
            driver_feature_select: 0,
            acked_features: 0,
            status: 0,
            queue_select: 0,
            queues: queue_max_sizes
                .iter()
                .map(|m| QueueSettings::new(*m))
                .collect(),
        }
    }

    /// Back to the state after power-on (the vectors are reset by the transport).
    pub fn reset(&mut self) {
        *self = Self::new(
            self.offered_features,
            &self.queues.iter().map(|q| q.max_size).collect::<Vec<_>>(),
        );
    }

    pub fn status(&self) -> u8 {
        self.status
    }

    /// Sets DEVICE_NEEDS_RESET: the device hit an error the driver must reset it to clear.
    pub fn set_needs_reset(&mut self) {
        self.status |= STATUS_DEVICE_NEEDS_RESET;
    }

    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    pub fn queues(&self) -> &[QueueSettings] {
        &self.queues
    }

    /// Whether queue `index` exists and the driver enabled it.
    pub fn queue_enabled(&self, index: usize) -> bool {
        self.queues.get(index).is_some_and(|q| q.enabled)
    }

    fn selected_queue(&self) -> Option<&QueueSettings> {
        self.queues.get(usize::from(self.queue_select))
    }

    /// The current value of the field at `offset`. Reads have no side effects.
    fn field_value(&self, offset: usize, interrupts: &InterruptState) -> u64 {
        let queue = self.selected_queue();
        let queue_vector = || {
            interrupts
                .queue_vectors
                .get(usize::from(self.queue_select))
                .map_or(0, |v| v.load(Ordering::Acquire))
        };
        match offset {
            DEVICE_FEATURE_SELECT => self.device_feature_select.into(),
            DEVICE_FEATURE => match self.device_feature_select {
                0 => self.offered_features & 0xffff_ffff,
                1 => self.offered_features >> 32,
                _ => 0,
            },
            DRIVER_FEATURE_SELECT => self.driver_feature_select.into(),
            DRIVER_FEATURE => match self.driver_feature_select {
                0 => self.acked_features & 0xffff_ffff,
                1 => self.acked_features >> 32,
                _ => 0,
            },
            CONFIG_MSIX_VECTOR => interrupts.config_vector.load(Ordering::Acquire).into(),
            NUM_QUEUES => self.queues.len() as u64,
            DEVICE_STATUS => self.status.into(),
            CONFIG_GENERATION => interrupts.config_generation.load(Ordering::Acquire).into(),
            QUEUE_SELECT => self.queue_select.into(),
            // An absent queue reads all zero: size 0 tells the driver it does not exist.
            QUEUE_SIZE => queue.map_or(0, |q| q.size.into()),
            QUEUE_MSIX_VECTOR => queue.map_or(0, |_| queue_vector().into()),
            QUEUE_ENABLE => queue.map_or(0, |q| q.enabled.into()),
            // One notify address per queue: notify_off is the queue index.
            QUEUE_NOTIFY_OFF => queue.map_or(0, |_| self.queue_select.into()),
            QUEUE_DESC => queue.map_or(0, |q| q.desc_table),
            QUEUE_DRIVER => queue.map_or(0, |q| q.avail_ring),
            QUEUE_DEVICE => queue.map_or(0, |q| q.used_ring),
            _ => 0,
        }
    }

    /// Reads `data.len()` bytes at `offset`, any width; bytes outside the structure read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8], interrupts: &InterruptState) {
        data.fill(0);
        for (field, size) in FIELDS {
            let value = self.field_value(field, interrupts).to_le_bytes();
            copy_overlap(offset, data, field as u64, &value[..size]);
        }
    }

    /// A guest write of `data` at `offset`. Each field the write covers gets its current value
    /// with the written bytes merged in, so partial and wide writes are handled like the
    /// natural-width writes the spec asks drivers to use.
    pub fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        interrupts: &InterruptState,
    ) -> Option<CommonConfigAction> {
        let mut action = None;
        for (field, size) in FIELDS {
            let mut value = self.field_value(field, interrupts).to_le_bytes();
            if merge_overlap(offset, data, field as u64, &mut value[..size]) {
                let value = u64::from_le_bytes(value);
                if let Some(a) = self.write_field(field, value, interrupts) {
                    action = Some(a);
                }
            }
        }
        action
    }

    fn write_field(
        &mut self,
        field: usize,
        value: u64,
        interrupts: &InterruptState,
    ) -> Option<CommonConfigAction> {
        let vectors = interrupts.msix.vectors();
        let checked_vector = |v: u16| {
            // An out-of-range vector reads back as NO_VECTOR, which is how the driver learns
            // the assignment failed.
            if v < vectors {
                v
            } else {
                VIRTIO_MSI_NO_VECTOR
            }
        };
        match field {
            DEVICE_FEATURE_SELECT => self.device_feature_select = value as u32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = value as u32,
            DRIVER_FEATURE => self.write_driver_features(value as u32),
            CONFIG_MSIX_VECTOR => interrupts
                .config_vector
                .store(checked_vector(value as u16), Ordering::Release),
            DEVICE_STATUS => return self.write_status(value as u8),
            QUEUE_SELECT => self.queue_select = value as u16,
            QUEUE_MSIX_VECTOR => {
                if let Some(vector) = interrupts.queue_vectors.get(usize::from(self.queue_select)) {
                    vector.store(checked_vector(value as u16), Ordering::Release);
                }
            }
            QUEUE_SIZE | QUEUE_ENABLE | QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE => {
                self.write_queue_field(field, value)
            }
            // device_feature, num_queues, config_generation, queue_notify_off: read-only.
            _ => {}
        }
        None
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & STATUS_FEATURES_OK != 0 {
            crate::warn_limited!("virtio-pci: driver features written after FEATURES_OK, ignored");
            return;
        }
        let (shift, mask) = match self.driver_feature_select {
            0 => (0, 0xffff_ffffu64),
            1 => (32, 0xffff_ffff_0000_0000),
            _ => return,
        };
        // Only offered bits can be accepted.
        let accepted = (u64::from(value) << shift) & self.offered_features;
        self.acked_features = (self.acked_features & !mask) | accepted;
    }

    fn write_queue_field(&mut self, field: usize, value: u64) {
        let driver_ok = self.status & STATUS_DRIVER_OK != 0;
        let select = self.queue_select;
        let Some(queue) = self.queues.get_mut(usize::from(select)) else {
            return; // queue_select out of range: writes go nowhere
        };
        // The driver configures a queue before enabling it and leaves it alone after.
        if queue.enabled || driver_ok {
            crate::warn_limited!("virtio-pci: queue {select} reconfigured while enabled, ignored");
            return;
        }
        match field {
            QUEUE_SIZE => {
                let size = value as u16;
                if size.is_power_of_two() && size <= queue.max_size {
                    queue.size = size;
                } else {
                    crate::warn_limited!(
                        "virtio-pci: queue {select} size {size} is not a power of two up to {}, ignored",
                        queue.max_size
                    );
                }
            }
            // Only 1 means anything; disabling needs a reset (queue_reset is not offered).
            QUEUE_ENABLE if value as u16 == 1 => queue.enabled = true,
            QUEUE_DESC => queue.desc_table = value,
            QUEUE_DRIVER => queue.avail_ring = value,
            QUEUE_DEVICE => queue.used_ring = value,
            _ => {}
        }
    }

    /// The status state machine. The driver only ever adds bits, in the order ACKNOWLEDGE,
    /// DRIVER, FEATURES_OK, DRIVER_OK (FAILED at any time); 0 resets. Anything else is ignored.
    fn write_status(&mut self, value: u8) -> Option<CommonConfigAction> {
        if value == 0 {
            return Some(CommonConfigAction::Reset);
        }
        let old = self.status;
        // DEVICE_NEEDS_RESET is the device's to set and only a reset clears it.
        let value = (value & !STATUS_DEVICE_NEEDS_RESET) | (old & STATUS_DEVICE_NEEDS_RESET);
        if value & old != old {
            crate::warn_limited!("virtio-pci: status {old:#x} -> {value:#x} clears bits, ignored");
            return None;
        }
        let added = value & !old;
        let mut status = old | (added & STATUS_FAILED);
        let mut action = None;
        let steps = [
            (STATUS_ACKNOWLEDGE, 0),
            (STATUS_DRIVER, STATUS_ACKNOWLEDGE),
            (STATUS_FEATURES_OK, STATUS_ACKNOWLEDGE | STATUS_DRIVER),
            (
                STATUS_DRIVER_OK,
                STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
            ),
        ];
        for (bit, needs) in steps {
            if added & bit == 0 {
                continue;
            }
            if status & needs != needs {
                crate::warn_limited!("virtio-pci: status bit {bit:#x} set out of order (status {status:#x}), ignored");
                break;
            }
            if bit == STATUS_FEATURES_OK && self.acked_features & VIRTIO_F_VERSION_1 == 0 {
                // A modern-only device cannot work with a legacy driver: leave FEATURES_OK
                // clear so the driver sees its features were not accepted.
                crate::warn_limited!(
                    "virtio-pci: driver did not accept VIRTIO_F_VERSION_1; refusing FEATURES_OK"
                );
                break;
            }
            if bit == STATUS_DRIVER_OK {
                if status & STATUS_DEVICE_NEEDS_RESET != 0 {
                    crate::warn_limited!(
                        "virtio-pci: DRIVER_OK while the device needs a reset, ignored"
                    );
                    break;
                }
                action = Some(CommonConfigAction::Activate);
            }
            status |= bit;
        }
        self.status = status;
        action
    }
}

/// Copies the bytes of `field` (at `field_offset`) that fall inside the access window
/// `[offset, offset + data.len())` into `data`.
fn copy_overlap(offset: u64, data: &mut [u8], field_offset: u64, field: &[u8]) {
    for (i, byte) in field.iter().enumerate() {
        let at = field_offset + i as u64;
        if let Some(pos) = at.checked_sub(offset).filter(|p| *p < data.len() as u64) {
            data[pos as usize] = *byte;
        }
    }
}

/// Merges the bytes of the access window into `field`; returns whether any byte landed.
fn merge_overlap(offset: u64, data: &[u8], field_offset: u64, field: &mut [u8]) -> bool {
    let mut touched = false;
    for (i, byte) in field.iter_mut().enumerate() {
        let at = field_offset + i as u64;
        if let Some(pos) = at.checked_sub(offset).filter(|p| *p < data.len() as u64) {
            *byte = data[pos as usize];
            touched = true;
        }
    }
    touched
}
