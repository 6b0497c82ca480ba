//! Interrupt plumbing between devices and KVM: GSI routing for MSI-X vectors, irqfds, ioeventfds,
//! and event-loop registration from other threads.
//!
//! KVM_SET_GSI_ROUTING replaces the whole routing table, so one [`GsiRouter`] keeps every route:
//! the legacy PIC/IO-APIC pins (so the serial port's irqfd keeps working) and one MSI route per
//! MSI-X vector. A device raises a vector by writing that vector's irqfd; no vCPU exits.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use canto_devices::pci::{MsiInterruptGroup, MsiMessage};
use canto_devices::virtio::transport::pci::IoEventRegistrar;
use canto_devices::virtio::{SharedSubscriber, SubscriberRegistrar};
use event_manager::{RemoteEndpoint, SubscriberId};
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// IO-APIC pins; GSIs from here on are free for MSI routes.
const IOAPIC_PINS: u32 = 24;

fn kvm_to_io(e: kvm_ioctls::Error) -> io::Error {
    io::Error::from_raw_os_error(e.errno())
}

/// The VM's whole GSI routing table.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    routes: Mutex<RouteTable>,
}

struct RouteTable {
    msi: BTreeMap<u32, MsiMessage>,
    next_gsi: u32,
}

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = chip;
    entry.u.irqchip.pin = pin;
    entry
}

fn msi_entry(gsi: u32, msg: &MsiMessage) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    entry.u.msi.address_lo = msg.address as u32;
    entry.u.msi.address_hi = (msg.address >> 32) as u32;
    entry.u.msi.data = msg.data;
    entry
}

impl GsiRouter {
    pub fn new(vm: Arc<VmFd>) -> Self {
        Self {
            vm,
            routes: Mutex::new(RouteTable {
                msi: BTreeMap::new(),
                next_gsi: IOAPIC_PINS,
            }),
        }
    }

    /// Reserves `count` GSIs for MSI vectors; returns the first.
    pub fn allocate(&self, count: u32) -> io::Result<u32> {
        let mut table = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        let first = table.next_gsi;
        let end = first
            .checked_add(count)
            .filter(|end| *end <= kvm_bindings::KVM_MAX_IRQ_ROUTES as u32)
            .ok_or_else(|| io::Error::other("out of KVM GSIs"))?;
        table.next_gsi = end;
        Ok(first)
    }

    /// The default legacy routes: ISA IRQs to both PICs and the IO-APIC, the rest to the IO-APIC.
    fn legacy_entries() -> Vec<kvm_irq_routing_entry> {
        let mut entries = Vec::new();
        for gsi in 0..IOAPIC_PINS {
            if gsi < 8 {
                entries.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
            } else if gsi < 16 {
                entries.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
            }
            // The PIT's IRQ 0 is wired to IO-APIC pin 2, as on a PC.
            let pin = if gsi == 0 { 2 } else { gsi };
            entries.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, pin));
        }
        entries
    }

    /// Points `gsi` at `msg` and installs the whole table.
    pub fn set_msi_route(&self, gsi: u32, msg: MsiMessage) -> io::Result<()> {
        let mut table = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        table.msi.insert(gsi, msg);
        self.commit(&table)
    }

    /// Installs the table with no MSI routes yet (the legacy pins only).
    pub fn install_legacy(&self) -> io::Result<()> {
        let table = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        self.commit(&table)
    }

    fn commit(&self, table: &RouteTable) -> io::Result<()> {
        let legacy = Self::legacy_entries();
        let mut routing = KvmIrqRouting::new(0).map_err(|_| io::Error::other("routing table"))?;
        for entry in legacy
            .into_iter()
            .chain(table.msi.iter().map(|(gsi, msg)| msi_entry(*gsi, msg)))
        {
            routing
                .push(entry)
                .map_err(|_| io::Error::other("too many KVM routes"))?;
        }
        self.vm.set_gsi_routing(&routing).map_err(kvm_to_io)
    }
}

/// A device's MSI-X vectors: one GSI and one irqfd each.
pub struct KvmMsiGroup {
    router: Arc<GsiRouter>,
    base_gsi: u32,
    irqfds: Vec<EventFd>,
}

impl KvmMsiGroup {
    pub fn new(router: Arc<GsiRouter>, vm: &VmFd, vectors: u16) -> io::Result<Self> {
        let base_gsi = router.allocate(u32::from(vectors))?;
        let irqfds = (0..u32::from(vectors))
            .map(|i| {
                let fd = EventFd::new(libc::EFD_NONBLOCK)?;
                vm.register_irqfd(&fd, base_gsi + i).map_err(kvm_to_io)?;
                Ok(fd)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Self {
            router,
            base_gsi,
            irqfds,
        })
    }
}

impl MsiInterruptGroup for KvmMsiGroup {
    fn update(&self, index: u16, msg: MsiMessage, _masked: bool) -> io::Result<()> {
        // Masking is the transport's business (it holds masked vectors pending in the PBA and
        // never writes their irqfd), so the route can always point at the latest message.
        if usize::from(index) >= self.irqfds.len() {
            return Err(io::Error::other("no such MSI-X vector"));
        }
        self.router
            .set_msi_route(self.base_gsi + u32::from(index), msg)
    }

    fn trigger(&self, index: u16) -> io::Result<()> {
        self.irqfds
            .get(usize::from(index))
            .ok_or_else(|| io::Error::other("no such MSI-X vector"))?
            .write(1)
    }
}

/// Registers queue notify addresses as KVM ioeventfds.
pub struct KvmIoEvents {
    pub vm: Arc<VmFd>,
}

impl IoEventRegistrar for KvmIoEvents {
    fn register(&self, addr: u64, evt: &EventFd) -> io::Result<()> {
        self.vm
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(kvm_to_io)
    }

    fn unregister(&self, addr: u64, evt: &EventFd) -> io::Result<()> {
        self.vm
            .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(kvm_to_io)
    }
}

/// Adds and removes event-loop subscribers from vCPU threads through the loop's remote endpoint.
pub struct RemoteRegistrar {
    pub endpoint: RemoteEndpoint<SharedSubscriber>,
}

impl SubscriberRegistrar for RemoteRegistrar {
    fn add(&self, subscriber: SharedSubscriber) -> io::Result<SubscriberId> {
        self.endpoint
            .call_blocking(move |ops| -> Result<SubscriberId, event_manager::Error> {
                Ok(ops.add_subscriber(subscriber))
            })
            .map_err(|e| io::Error::other(format!("event loop: {e:?}")))
    }

    fn remove(&self, id: SubscriberId) -> io::Result<()> {
        self.endpoint
            .call_blocking(move |ops| ops.remove_subscriber(id).map(|_| ()))
            .map_err(|e| io::Error::other(format!("event loop: {e:?}")))
    }
}
