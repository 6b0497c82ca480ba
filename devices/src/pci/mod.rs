//! PCI: the root bus, configuration space, and MSI-X.
