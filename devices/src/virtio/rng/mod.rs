//! virtio-rng, the entropy device (VIRTIO 1.2 §5.4): one queue of device-writable buffers that
//! the device fills with random bytes from the host's `getrandom(2)`.
//!
//! It is also the smallest example of a Canto virtio device (docs/architecture.md, "Adding a
//! virtio device"): activation wraps the queue in a [`DeviceQueue`] and returns an event-loop
//! subscriber that waits on the queue's kick, pops the walked chains within the kick's budget,
//! fills them and completes them (EVENT_IDX honoured by the queue).

use std::io;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vm_memory::GuestMemoryMmap;

use crate::virtio::chain::{ChainBuffers, ChainLimits};
use crate::virtio::drain::KickBudget;
use crate::virtio::queue::{Completion, DeviceQueue};
use crate::virtio::{
    ActivateContext, ActivateError, SharedSubscriber, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_ID_RNG,
};

/// The largest queue the driver may set up.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// The most random bytes one request gets, however large its buffers: a guest cannot make the
/// device do unbounded work (or drain the host's entropy) with one chain.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;
/// Random bytes are produced and copied in pieces of this size.
const CHUNK_SIZE: usize = 4096;
/// The descriptors one kick may walk, so at most this many requests: 1 MiB of random bytes at
/// most (16 x [`MAX_BYTES_PER_REQUEST`], about 2 ms of getrandom), where the shared budget of
/// 2048 descriptors let a full ring of 64 KiB requests cost 16 MiB (tens of ms) per kick. The
/// rest waits for the re-kick, after the event loop has served the other devices.
const DESCRIPTORS_PER_KICK: usize = 16;

#[cfg(test)]
mod kick_budget_tests;
/// What the device accepts of one request: 16 descriptors (Linux sends one).
const CHAIN_LIMITS: ChainLimits = ChainLimits {
    max_descriptors: 16,
    max_bytes: u32::MAX as u64,
    indirect: false,
};

/// Why a request could not be served (it is then returned with what was written so far).
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("getrandom failed: {0}")]
    Entropy(#[source] io::Error),
    #[error("writing the guest's buffer at {addr:#x}: {source}")]
    GuestMemory {
        addr: u64,
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// The entropy device.
pub struct Rng {
    queue_max_sizes: [u16; 1],
    /// The running worker, kept so a reset can let go of it.
    worker: Option<Arc<Mutex<RngWorker>>>,
}

impl Rng {
    pub fn new() -> Self {
        Self {
            queue_max_sizes: [RNG_QUEUE_SIZE],
            worker: None,
        }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_max_sizes
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    /// The entropy device has no configuration space.
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, ctx: ActivateContext) -> Result<Vec<SharedSubscriber>, ActivateError> {
        let got = ctx.queues.len();
        let Some(active) = ctx.queues.into_iter().find(|q| q.index == 0) else {
            return Err(ActivateError::QueueCount { got, want: 1 });
        };
        if got != 1 {
            return Err(ActivateError::QueueCount { got, want: 1 });
        }
        let queue = DeviceQueue::new(
            "virtio-rng",
            active,
            ctx.mem,
            ctx.interrupt,
            ctx.acked_features,
            CHAIN_LIMITS,
        );
        let worker = Arc::new(Mutex::new(RngWorker {
            queue,
            buffer: vec![0; CHUNK_SIZE],
        }));
        self.worker = Some(worker.clone());
        Ok(vec![worker])
    }

    fn reset(&mut self) {
        // The transport has already removed the subscriber from the event loop; dropping the
        // last handle here lets go of the queue and guest memory.
        self.worker = None;
    }
}

/// Serves the queue from the event loop.
struct RngWorker {
    queue: DeviceQueue,
    buffer: Vec<u8>,
}

impl RngWorker {
    /// Serves the available chains the kick's budget allows; the queue raises one interrupt at
    /// the end if the driver wants it.
    fn process_queue(&mut self) {
        let mut budget = KickBudget::with_descriptors(DESCRIPTORS_PER_KICK);
        let walks = self.queue.pop_available(&mut budget);
        let mem = self.queue.mem();
        let mut done = Vec::with_capacity(walks.len());
        for walk in walks {
            let len = match walk.result {
                Ok(buffers) => match fill_request(mem, &buffers, &mut self.buffer) {
                    Ok(len) => len,
                    Err((len, e)) => {
                        log::debug!("virtio-rng: request {}: {e}", walk.head);
                        len
                    }
                },
                // Guest-caused: debug only, so a guest cannot fill the host's log.
                Err(e) => {
                    log::debug!("virtio-rng: request {} refused: {e}", walk.head);
                    0
                }
            };
            done.push(Completion {
                head: walk.head,
                len,
            });
        }
        self.queue.complete(&done);
    }
}

impl MutEventSubscriber for RngWorker {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            return;
        }
        // Non-blocking: a spurious wake-up finds nothing to read, and that is fine.
        let _ = self.queue.kick().read();
        self.process_queue();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.queue.kick(), EventSet::IN)) {
            crate::error_limited!("virtio-rng: watching the queue's kick eventfd: {e}");
        }
    }
}

/// Fills the writable buffers of a request with random bytes, at most
/// [`MAX_BYTES_PER_REQUEST`], and returns how many were written. A request with a
/// driver-readable buffer is malformed and gets nothing (length 0); the walk has already checked
/// every buffer lies in guest RAM. On failure part-way, the error comes with the bytes written
/// so far.
fn fill_request(
    mem: &GuestMemoryMmap,
    request: &ChainBuffers,
    buffer: &mut [u8],
) -> Result<u32, (u32, RngError)> {
    if !request.readable.is_empty() {
        log::debug!(
            "virtio-rng: request {} has a read-only buffer; returned empty",
            request.head
        );
        return Ok(0);
    }
    let total = request.writable.len().min(MAX_BYTES_PER_REQUEST as u64) as usize;
    let mut written = 0usize;
    while written < total {
        let piece = &mut buffer[..(total - written).min(CHUNK_SIZE)];
        fill_random(piece).map_err(|e| (written as u32, RngError::Entropy(e)))?;
        request
            .writable
            .write_at(mem, written as u64, piece)
            .map_err(|source| {
                (
                    written as u32,
                    RngError::GuestMemory {
                        addr: written as u64,
                        source,
                    },
                )
            })?;
        written += piece.len();
    }
    // At most MAX_BYTES_PER_REQUEST, so it fits.
    Ok(written as u32)
}

/// Fills `buf` from the kernel's CSPRNG.
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: `rest` is a valid, exclusively borrowed buffer of `rest.len()` bytes for the
        // whole call, and getrandom writes at most that many bytes into it.
        let ret = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if ret < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += ret as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use event_manager::{EventManager, SubscriberOps};
    use virtio_bindings::bindings::virtio_ring::{
        VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    };
    use virtio_queue::{Queue, QueueT};
    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::virtio::test_utils::{Desc, DriverQueue, GuestRam, InterruptRecorder};
    use crate::virtio::{ActiveQueue, VirtioInterrupt, VIRTIO_F_RING_EVENT_IDX};

    const RAM: usize = 0x20_0000;

    fn memory() -> GuestRam {
        GuestRam::new(RAM as u64, 0x10_0000)
    }

    /// A descriptor; `next` matters only with VRING_DESC_F_NEXT.
    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> Desc {
        Desc::new(addr, len, flags as u16, next)
    }

    /// A 16-entry queue at guest address 0.
    fn driver_queue() -> DriverQueue {
        DriverQueue::at(0, 16)
    }

    struct Running {
        manager: EventManager<SharedSubscriber>,
        kick: EventFd,
        interrupt: Arc<InterruptRecorder>,
    }

    impl Running {
        fn start(mem: &GuestMemoryMmap, driver: &DriverQueue, event_idx: bool) -> Self {
            let mut queue = driver.device_queue();
            queue.set_event_idx(event_idx);
            let kick = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
            let interrupt = Arc::new(InterruptRecorder::default());
            let mut rng = Rng::new();
            let features = VIRTIO_F_VERSION_1
                | if event_idx {
                    VIRTIO_F_RING_EVENT_IDX
                } else {
                    0
                };
            let subscribers = rng
                .activate(ActivateContext {
                    mem: mem.clone(),
                    interrupt: interrupt.clone(),
                    queues: vec![ActiveQueue {
                        index: 0,
                        queue,
                        kick: kick.try_clone().unwrap(),
                    }],
                    acked_features: features,
                })
                .unwrap();
            let mut manager = EventManager::<SharedSubscriber>::new().unwrap();
            for subscriber in subscribers {
                manager.add_subscriber(subscriber);
            }
            Self {
                manager,
                kick,
                interrupt,
            }
        }

        fn kick(&mut self) {
            self.kick.write(1).unwrap();
            assert_eq!(self.manager.run_with_timeout(1000).unwrap(), 1);
            // The device has one queue: every interrupt is queue 0's.
            assert_eq!(self.interrupt.total(), self.interrupt.count(0));
            assert_eq!(self.interrupt.config_count(), 0);
        }

        fn interrupts(&self) -> u64 {
            self.interrupt.count(0)
        }
    }

    /// The used ring's index and entries (id, len).
    fn used(mem: &GuestMemoryMmap, driver: &DriverQueue) -> (u16, Vec<(u32, u32)>) {
        let idx = driver.used_idx(mem);
        let elems = (0..idx).map(|i| driver.used_entry(mem, i)).collect();
        (idx, elems)
    }

    #[test]
    fn round_trip_fills_buffers_and_interrupts_once() {
        let ram = memory();
        let mem = &ram.mem;
        let mut driver = driver_queue();
        driver.add_table(
            mem,
            0,
            &[
                desc(0x10_0000, 64, VRING_DESC_F_WRITE, 0),
                desc(0x11_0000, 32, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 2),
                desc(0x11_1000, 32, VRING_DESC_F_WRITE, 0),
            ],
        );
        let mut running = Running::start(mem, &driver, false);
        running.kick();
        let (idx, elems) = used(mem, &driver);
        assert_eq!(idx, 2);
        assert_eq!(elems, [(0, 64), (1, 64)]);
        assert!(!ram.all_zero(0x10_0000, 64));
        assert!(!ram.all_zero(0x11_0000, 32));
        assert!(!ram.all_zero(0x11_1000, 32));
        assert!(ram.all_zero(0x10_0040, 64), "nothing past the buffer");
        assert_eq!(running.interrupts(), 1);

        // A spurious kick with nothing new: no interrupt.
        running.kick();
        assert_eq!(running.interrupts(), 1);
    }

    #[test]
    fn malformed_chains_come_back_empty() {
        let ram = memory();
        let mem = &ram.mem;
        let mut driver = driver_queue();
        driver.add_table(
            mem,
            0,
            &[
                // Driver-readable only.
                desc(0x10_0000, 64, 0, 0),
                // Outside RAM.
                desc(RAM as u64 + 0x1000, 64, VRING_DESC_F_WRITE, 0),
                // Good first part, then a buffer straddling the end of RAM.
                desc(0x12_0000, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 3),
                desc(RAM as u64 - 8, 16, VRING_DESC_F_WRITE, 0),
                // Writable, then readable.
                desc(0x13_0000, 16, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 5),
                desc(0x13_1000, 16, 0, 0),
                // A good one after all that.
                desc(0x14_0000, 8, VRING_DESC_F_WRITE, 0),
            ],
        );
        let mut running = Running::start(mem, &driver, false);
        running.kick();
        let (idx, elems) = used(mem, &driver);
        assert_eq!(idx, 5);
        assert_eq!(elems, [(0, 0), (1, 0), (2, 0), (4, 0), (6, 8)]);
        for (addr, len) in [(0x10_0000, 64), (0x12_0000, 16), (0x13_0000, 16)] {
            assert!(ram.all_zero(addr, len), "{addr:#x} untouched");
        }
        assert!(!ram.all_zero(0x14_0000, 8));
        assert_eq!(running.interrupts(), 1);
    }

    /// Every head points at one 65535-entry indirect table of writable descriptors, which the
    /// driver never negotiated (VIRTIO_F_INDIRECT_DESC is not offered): each request is refused
    /// at its first descriptor, untouched, instead of a walk of the whole table per head.
    #[test]
    fn indirect_tables_are_refused_at_their_head() {
        let ram = memory();
        let mem = &ram.mem;
        let table = 0x10_0000u64;
        let entries = u16::MAX;
        for i in 0..entries {
            let flags = if i + 1 < entries {
                (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16
            } else {
                VRING_DESC_F_WRITE as u16
            };
            let entry = Desc::new(0x8_0000, 1, flags, i.wrapping_add(1));
            DriverQueue::write_table(mem, table, i, &[entry]);
        }
        let mut driver = driver_queue();
        let heads: Vec<Desc> = (0..16)
            .map(|_| desc(table, u32::from(entries) * 16, VRING_DESC_F_INDIRECT, 0))
            .collect();
        driver.add_table(mem, 0, &heads);
        let mut running = Running::start(mem, &driver, false);
        running.kick();
        let (idx, elems) = used(mem, &driver);
        assert_eq!(idx, 16);
        assert!(elems.iter().all(|(_, len)| *len == 0), "{elems:?}");
        assert!(ram.all_zero(0x8_0000, 1), "no request was served");
    }

    #[test]
    fn huge_requests_are_capped() {
        let ram = memory();
        let mem = &ram.mem;
        let mut driver = driver_queue();
        driver.add_table(
            mem,
            0,
            &[
                desc(0x10_0000, 0x8000, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1),
                desc(0x10_8000, 0xf_8000, VRING_DESC_F_WRITE, 0),
            ],
        );
        let mut running = Running::start(mem, &driver, false);
        running.kick();
        assert_eq!(used(mem, &driver).1, [(0, MAX_BYTES_PER_REQUEST as u32)]);
        let end = 0x10_0000 + MAX_BYTES_PER_REQUEST as u64;
        assert!(ram.all_zero(end, 0x1000), "nothing past the cap");
        assert!(!ram.all_zero(end - 64, 64));
    }

    #[test]
    fn event_idx_suppresses_interrupts() {
        let ram = memory();
        let mem = &ram.mem;
        let mut driver = driver_queue();
        // The driver wants an interrupt only once used idx passes 5.
        driver.set_used_event(mem, 5);
        driver.add_table(mem, 0, &[desc(0x10_0000, 8, VRING_DESC_F_WRITE, 0)]);
        let mut running = Running::start(mem, &driver, true);
        running.kick();
        assert_eq!(used(mem, &driver).0, 1);
        assert_eq!(running.interrupts(), 0);
        // Now it wants one after the next entry.
        driver.set_used_event(mem, 1);
        driver.add_table(mem, 1, &[desc(0x10_1000, 8, VRING_DESC_F_WRITE, 0)]);
        running.kick();
        assert_eq!(used(mem, &driver).0, 2);
        assert_eq!(running.interrupts(), 1);
        // With EVENT_IDX the device asks for kicks through avail_event.
        let avail_event = driver.avail_event(mem);
        assert_eq!(avail_event, 2);
    }

    #[test]
    fn broken_avail_index_needs_reset_and_does_not_spin() {
        let ram = memory();
        let mem = &ram.mem;
        let driver = driver_queue();
        // avail idx 1000 ahead of a 16-entry ring: the iterator refuses it.
        driver.publish_avail_idx(mem, 1000);
        let mut running = Running::start(mem, &driver, false);
        running.kick();
        assert_eq!(used(mem, &driver).0, 0);
        assert_eq!(running.interrupts(), 0);
        assert_eq!(running.interrupt.needs_reset_count(), 1);
        // Stopped: a repaired index is not served either, and no second report.
        driver.publish_avail_idx(mem, 1);
        running.kick();
        assert_eq!(used(mem, &driver).0, 0);
        assert_eq!(running.interrupt.needs_reset_count(), 1);
    }

    #[test]
    fn activation_needs_exactly_queue_zero() {
        let mem = memory().mem;
        let interrupt: Arc<dyn VirtioInterrupt> = Arc::new(InterruptRecorder::default());
        let mut rng = Rng::new();
        assert_eq!(rng.device_type(), 4);
        assert_eq!(rng.queue_max_sizes(), [RNG_QUEUE_SIZE]);
        let mut config = [0xffu8; 4];
        rng.read_config(0, &mut config);
        assert_eq!(config, [0; 4]);
        let ctx = |queues: Vec<ActiveQueue>| ActivateContext {
            mem: mem.clone(),
            interrupt: interrupt.clone(),
            queues,
            acked_features: VIRTIO_F_VERSION_1,
        };
        let queue = |index| ActiveQueue {
            index,
            queue: Queue::new(16).unwrap(),
            kick: EventFd::new(0).unwrap(),
        };
        assert!(matches!(
            rng.activate(ctx(vec![])),
            Err(ActivateError::QueueCount { got: 0, want: 1 })
        ));
        assert!(rng.activate(ctx(vec![queue(1)])).is_err());
        assert!(rng.activate(ctx(vec![queue(0), queue(1)])).is_err());
        assert_eq!(rng.activate(ctx(vec![queue(0)])).unwrap().len(), 1);
        rng.reset();
        assert!(rng.worker.is_none());
    }

    use crate::pci::msix::test_utils::RecordingMsiGroup;
    use crate::virtio::transport::pci::test_utils::LocalRegistrar;
    use crate::virtio::transport::pci::{VirtioPciDevice, BAR_INDEX};

    /// Writes `len` bytes of `value` at `offset` of the function's BAR.
    fn write_bar(dev: &mut VirtioPciDevice, offset: u64, value: u64, len: usize) {
        use crate::pci::PciDevice;
        dev.write_bar(BAR_INDEX, offset, &value.to_le_bytes()[..len]);
    }

    /// virtio-rng behind the real virtio-pci transport, with bus mastering on (as every driver
    /// does first) and MSI-X on with vector 1 unmasked.
    fn rng_behind_the_transport(
        mem: &GuestMemoryMmap,
    ) -> (VirtioPciDevice, Arc<RecordingMsiGroup>, Arc<LocalRegistrar>) {
        use crate::pci::config::COMMAND_BUS_MASTER;
        use crate::pci::msix::MSIX_CONTROL_ENABLE;
        use crate::pci::PciDevice;
        use crate::virtio::transport::pci::test_utils::FakeIoEvents;
        use crate::virtio::transport::pci::MSIX_TABLE_OFFSET;

        let msi = Arc::new(RecordingMsiGroup::default());
        let registrar = LocalRegistrar::new();
        let mut dev = VirtioPciDevice::new(
            Arc::new(Mutex::new(Rng::new())),
            mem.clone(),
            msi.clone(),
            Arc::new(FakeIoEvents::default()),
            registrar.clone(),
        )
        .unwrap();
        dev.write_config_register(1, 0, &COMMAND_BUS_MASTER.to_le_bytes());
        // MSI-X on (capability found by walking the list), vector 1 unmasked.
        let mut at = (dev.read_config_register(13) & 0xff) as usize;
        while dev.read_config_register(at / 4) & 0xff != 0x11 {
            at = (dev.read_config_register(at / 4) >> 8 & 0xff) as usize;
        }
        dev.write_config_register(at / 4, 2, &MSIX_CONTROL_ENABLE.to_le_bytes());
        write_bar(&mut dev, MSIX_TABLE_OFFSET + 16, 0xfee0_0000, 4);
        write_bar(&mut dev, MSIX_TABLE_OFFSET + 16 + 12, 0, 4);
        (dev, msi, registrar)
    }

    #[test]
    fn through_the_pci_transport_with_reset_mid_use() {
        use crate::virtio::transport::pci::*;

        let ram = memory();
        let mem = &ram.mem;
        let (mut dev, msi, registrar) = rng_behind_the_transport(mem);
        let write = write_bar;

        for round in 0..2 {
            let mut driver = DriverQueue::at(0x4_0000 * (round + 1), 16);
            let bring_up = |dev: &mut VirtioPciDevice| {
                write(dev, 0x14, 1, 1);
                write(dev, 0x14, 3, 1);
                write(dev, 0x08, 1, 4);
                write(dev, 0x0c, 1, 4); // VERSION_1
                write(dev, 0x14, 11, 1);
                write(dev, 0x16, 0, 2);
                write(dev, 0x18, 16, 2);
                write(dev, 0x1a, 1, 2);
                write(dev, 0x20, driver.desc, 8);
                write(dev, 0x28, driver.avail, 8);
                write(dev, 0x30, driver.used, 8);
                write(dev, 0x1c, 1, 2);
                write(dev, 0x14, 15, 1);
            };
            bring_up(&mut dev);
            assert!(dev.is_active(), "round {round}");
            driver.add_table(
                mem,
                0,
                &[desc(0x10_0000 + round * 0x1000, 32, VRING_DESC_F_WRITE, 0)],
            );
            msi.take();
            write(&mut dev, NOTIFY_OFFSET, 0, 2); // the MMIO path of a kick
            assert_eq!(registrar.run_once(1000), 1);
            assert_eq!(used(mem, &driver).1, [(0, 32)]);
            assert_eq!(msi.triggers(), [1]);
            // Another request in flight, then a reset before it is served.
            driver.add_table(mem, 1, &[desc(0x15_0000, 32, VRING_DESC_F_WRITE, 0)]);
            write(&mut dev, 0x14, 0, 1);
            assert!(!dev.is_active());
            assert_eq!(registrar.live_count(), 0);
            assert_eq!(registrar.run_once(0), 0);
            assert!(
                ram.all_zero(0x15_0000, 32),
                "a reset device leaves memory alone"
            );
        }
    }

    /// Issue 12 finding 5: with Bus Master Enable clear the function wrote used rings and
    /// buffers and sent MSI-X. Now a kick does nothing until BME is set again, and then the
    /// queued request completes with its interrupt.
    #[test]
    fn bus_master_clear_means_no_dma_and_no_msi_until_set() {
        use crate::pci::config::COMMAND_BUS_MASTER;
        use crate::pci::PciDevice;
        use crate::virtio::transport::pci::*;

        let ram = memory();
        let mem = &ram.mem;
        let (mut dev, msi, registrar) = rng_behind_the_transport(mem);
        let write = write_bar;
        let set_command = |dev: &mut VirtioPciDevice, command: u16| {
            dev.write_config_register(1, 0, &command.to_le_bytes());
        };
        let mut driver = DriverQueue::at(0x4_0000, 16);
        for (offset, value, len) in [
            (0x14, 1, 1),
            (0x14, 3, 1),
            (0x08, 1, 4),
            (0x0c, 1, 4), // VERSION_1
            (0x14, 11, 1),
            (0x16, 0, 2),
            (0x18, 16, 2),
            (0x1a, 1, 2),
            (0x20, driver.desc, 8),
            (0x28, driver.avail, 8),
            (0x30, driver.used, 8),
            (0x1c, 1, 2),
            (0x14, 15, 1),
        ] {
            write(&mut dev, offset, value, len);
        }
        assert!(dev.is_active());

        // BME off; a request and a kick (through the ioeventfd and the MMIO path).
        set_command(&mut dev, 0);
        driver.add_table(mem, 0, &[desc(0x10_0000, 32, VRING_DESC_F_WRITE, 0)]);
        msi.take();
        write(&mut dev, NOTIFY_OFFSET, 0, 2);
        for _ in 0..3 {
            registrar.run_once(50);
        }
        assert_eq!(used(mem, &driver).0, 0, "no used entry while BME is clear");
        assert!(
            ram.all_zero(0x10_0000, 32),
            "no buffer written while BME is clear"
        );
        assert!(msi.triggers().is_empty(), "no MSI-X while BME is clear");

        // BME on: the queued request completes, with its interrupt.
        set_command(&mut dev, COMMAND_BUS_MASTER);
        assert_eq!(registrar.run_once(1000), 1);
        assert_eq!(used(mem, &driver).1, [(0, 32)]);
        assert!(!ram.all_zero(0x10_0000, 32));
        assert_eq!(msi.triggers(), [1]);
    }
}
