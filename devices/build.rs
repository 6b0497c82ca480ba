//! Writes `$OUT_DIR/pci_names.rs`: the PCI ID database's names (the `pci-ids` crate, read here,
//! at build time) of the functions Canto can put on its bus: its host bridge and every virtio-pci
//! device id of the virtio vendor.
//!
//! Linked in whole, the database is ~1 MB of strings and ~1.3 MB of tables of `&str`s (~47,000
//! pointers) in every `canto` binary: paged in around whatever constants share their pages, and
//! relocated, so written, at every start of a position-independent executable. A run only ever
//! names the few functions it built, so the binary carries just those names (issue 16: no start-up
//! work proportional to a table the run does not use).
use std::fmt::Write as _;
use std::path::PathBuf;

use pci_ids::FromId;

/// The virtio vendor (Red Hat, Inc.): all of its device ids, transitional and modern, so any
/// virtio device added to Canto's device list is named without touching this file.
const VIRTIO_VENDOR_ID: u16 = 0x1af4;
/// Other functions Canto presents: the host bridge (Intel's Q35 DRAM controller).
const OTHER_FUNCTIONS: &[(u16, u16)] = &[(0x8086, 0x29c0)];

fn main() {
    let mut vendors = String::new();
    let mut devices = String::new();
    let mut add_vendor = |id: u16| {
        let vendor = pci_ids::Vendor::from_id(id)
            .unwrap_or_else(|| panic!("vendor {id:04x} is not in the PCI ID database"));
        writeln!(vendors, "    ({id:#06x}, {:?}),", vendor.name()).unwrap();
        vendor
    };
    for device in add_vendor(VIRTIO_VENDOR_ID).devices() {
        writeln!(
            devices,
            "    ({VIRTIO_VENDOR_ID:#06x}, {:#06x}, {:?}),",
            device.id(),
            device.name()
        )
        .unwrap();
    }
    for &(vendor_id, device_id) in OTHER_FUNCTIONS {
        add_vendor(vendor_id);
        let device = pci_ids::Device::from_vid_pid(vendor_id, device_id).unwrap_or_else(|| {
            panic!("{vendor_id:04x}:{device_id:04x} is not in the PCI ID database")
        });
        writeln!(
            devices,
            "    ({vendor_id:#06x}, {device_id:#06x}, {:?}),",
            device.name()
        )
        .unwrap();
    }
    let code = format!(
        "/// (vendor id, vendor name), from the PCI ID database at build time (build.rs).\n\
         const PCI_VENDOR_NAMES: &[(u16, &str)] = &[\n{vendors}];\n\
         /// (vendor id, device id, device name), from the PCI ID database at build time.\n\
         const PCI_DEVICE_NAMES: &[(u16, u16, &str)] = &[\n{devices}];\n"
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(out.join("pci_names.rs"), code).expect("cannot write pci_names.rs");
    println!("cargo:rerun-if-changed=build.rs");
}
