//! Per-vCPU CPUID: KVM's supported CPUID, adjusted so each vCPU reports its own APIC id and a
//! topology of `num_cpus` single-threaded cores in one package, admits it runs under a
//! hypervisor, and hides host features a microVM cannot honour.
//!
//! [`filter_cpuid`] is a pure function on the CPUID table, so it is unit-tested on synthetic
//! tables; the VMM feeds it `Kvm::get_supported_cpuid` output and passes the result to
//! `VcpuFd::set_cpuid2`.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::mptable::MAX_CPUS;

/// Why the CPUID table could not be adjusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// `num_cpus` is 0 or above [`MAX_CPUS`].
    #[error("invalid vCPU count {0} (must be 1..={MAX_CPUS})")]
    InvalidCpuCount(u8),
    /// `cpu_index` is not below `num_cpus`.
    #[error("vCPU index {cpu_index} is out of range for {num_cpus} vCPUs")]
    InvalidCpuIndex {
        /// The vCPU being configured.
        cpu_index: u8,
        /// How many vCPUs the guest has.
        num_cpus: u8,
    },
    /// Adding the topology sub-leaves would exceed KVM's CPUID entry limit.
    #[error("too many CPUID entries to add the topology leaves")]
    TooManyEntries,
}

/// CPU vendor as reported by CPUID leaf 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuVendor {
    /// "GenuineIntel".
    Intel,
    /// "AuthenticAMD".
    Amd,
    /// Anything else (or no leaf 0).
    Other,
}

/// Leaf numbers this module touches.
pub mod leaf {
    /// Vendor string and highest basic leaf.
    pub const VENDOR: u32 = 0x0;
    /// Version, APIC id and feature flags.
    pub const FEATURES: u32 = 0x1;
    /// Deterministic cache parameters (Intel).
    pub const CACHE_PARAMS: u32 = 0x4;
    /// Thermal and power management.
    pub const THERMAL_POWER: u32 = 0x6;
    /// Architectural performance monitoring.
    pub const PERFMON: u32 = 0xa;
    /// Extended topology enumeration.
    pub const EXT_TOPOLOGY: u32 = 0xb;
    /// V2 extended topology enumeration.
    pub const EXT_TOPOLOGY_V2: u32 = 0x1f;
    /// AMD: address sizes and core count.
    pub const AMD_SIZES_AND_CORES: u32 = 0x8000_0008;
    /// AMD: extended APIC id, core and node ids.
    pub const AMD_EXT_APIC_ID: u32 = 0x8000_001e;
}

/// Leaf 1 EBX: initial APIC id (bits 31..24) and addressable logical processor ids (23..16).
const LEAF1_EBX_APIC_ID_SHIFT: u32 = 24;
const LEAF1_EBX_LOGICAL_COUNT_SHIFT: u32 = 16;
const LEAF1_EBX_KEEP_MASK: u32 = 0x0000_ffff;
/// Leaf 1 ECX bit 31: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX bit 28: the logical processor count field is valid (multi-threading/multi-core).
const LEAF1_EDX_HTT: u32 = 1 << 28;

/// Leaf 4 EAX: cache type (bits 4..0, 0 = no more caches), cache level (7..5), logical
/// processors sharing the cache - 1 (25..14), cores per package - 1 (31..26).
const LEAF4_EAX_TYPE_MASK: u32 = 0x1f;
const LEAF4_EAX_LEVEL_SHIFT: u32 = 5;
const LEAF4_EAX_SHARING_SHIFT: u32 = 14;
const LEAF4_EAX_SHARING_MASK: u32 = 0xfff << LEAF4_EAX_SHARING_SHIFT;
const LEAF4_EAX_CORES_SHIFT: u32 = 26;
const LEAF4_EAX_CORES_MASK: u32 = 0x3f << LEAF4_EAX_CORES_SHIFT;

/// Extended topology level types (leaf 0xB / 0x1F ECX bits 15..8).
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// AMD leaf 0x8000_0008 ECX: cores - 1 (7..0), APIC id bits for the core id (15..12).
const AMD_ECX_NC_MASK: u32 = 0xff;
const AMD_ECX_APIC_ID_SIZE_SHIFT: u32 = 12;
const AMD_ECX_APIC_ID_SIZE_MASK: u32 = 0xf << AMD_ECX_APIC_ID_SIZE_SHIFT;

/// The vendor named by leaf 0 of `cpuid`.
pub fn cpu_vendor(cpuid: &CpuId) -> CpuVendor {
    let Some(entry) = cpuid.as_slice().iter().find(|e| e.function == leaf::VENDOR) else {
        return CpuVendor::Other;
    };
    let mut name = [0u8; 12];
    name[0..4].copy_from_slice(&entry.ebx.to_le_bytes());
    name[4..8].copy_from_slice(&entry.edx.to_le_bytes());
    name[8..12].copy_from_slice(&entry.ecx.to_le_bytes());
    match &name {
        b"GenuineIntel" => CpuVendor::Intel,
        b"AuthenticAMD" => CpuVendor::Amd,
        _ => CpuVendor::Other,
    }
}

/// Number of APIC id bits that distinguish the cores of a package: ceil(log2(num_cpus)).
fn core_id_bits(num_cpus: u8) -> u32 {
    u32::from(num_cpus).next_power_of_two().trailing_zeros()
}

/// The leaf 0xB / 0x1F sub-leaves for a package of `num_cpus` single-thread cores, as seen by the
/// vCPU with x2APIC id `apic_id`. Sub-leaf 2 (level type 0) terminates the enumeration.
fn topology_subleaves(function: u32, apic_id: u32, num_cpus: u8) -> [kvm_cpuid_entry2; 3] {
    let subleaf = |index: u32, shift: u32, count: u32, level_type: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: count,
        ecx: level_type << 8 | index,
        edx: apic_id,
        ..Default::default()
    };
    [
        // One thread per core: no SMT bits in the APIC id.
        subleaf(0, 0, 1, LEVEL_TYPE_SMT),
        subleaf(
            1,
            core_id_bits(num_cpus),
            u32::from(num_cpus),
            LEVEL_TYPE_CORE,
        ),
        subleaf(2, 0, 0, 0),
    ]
}

/// Replace every sub-leaf of `function` with a fresh topology description.
fn rewrite_topology_leaf(
    cpuid: &mut CpuId,
    function: u32,
    apic_id: u32,
    num_cpus: u8,
) -> Result<(), Error> {
    cpuid.retain(|entry| entry.function != function);
    for entry in topology_subleaves(function, apic_id, num_cpus) {
        cpuid.push(entry).map_err(|_| Error::TooManyEntries)?;
    }
    Ok(())
}

/// Adjust KVM_GET_SUPPORTED_CPUID output for vCPU `cpu_index` of `num_cpus`:
/// - leaf 1: initial APIC id (= `cpu_index`) in EBX[31:24], logical processor count in
///   EBX[23:16] with HTT set when there is more than one vCPU, hypervisor bit set;
/// - leaf 4: cores per package and per-cache sharing for one thread per core, L3 shared by all;
/// - leaves 0xB and (if present) 0x1F: x2APIC topology of `num_cpus` one-thread cores in one
///   package, EDX = APIC id;
/// - AMD leaves 0x8000_0008 (core count) and 0x8000_001E (extended APIC id) to match;
/// - leaf 6 (thermal/power management) and leaf 0xA (architectural perfmon) cleared: a microVM
///   has neither to offer, and an advertised PMU makes guests program counters KVM may not
///   virtualize.
///
/// Everything else is left as KVM reported it. On error the table may be partly adjusted; build
/// a fresh one from KVM's output before retrying.
pub fn filter_cpuid(cpuid: &mut CpuId, cpu_index: u8, num_cpus: u8) -> Result<(), Error> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(Error::InvalidCpuCount(num_cpus));
    }
    if cpu_index >= num_cpus {
        return Err(Error::InvalidCpuIndex {
            cpu_index,
            num_cpus,
        });
    }
    let apic_id = u32::from(cpu_index);
    let vendor = cpu_vendor(cpuid);
    let max_basic_leaf = cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == leaf::VENDOR)
        .map_or(0, |e| e.eax);
    // IDs addressable with the core bits of the APIC id; the fields holding it are 8 bits wide.
    let addressable_ids = 1u32 << core_id_bits(num_cpus);

    for entry in cpuid.as_mut_slice() {
        match entry.function {
            leaf::FEATURES => {
                entry.ebx = (entry.ebx & LEAF1_EBX_KEEP_MASK)
                    | apic_id << LEAF1_EBX_APIC_ID_SHIFT
                    | addressable_ids.min(0xff) << LEAF1_EBX_LOGICAL_COUNT_SHIFT;
                entry.ecx |= LEAF1_ECX_HYPERVISOR;
                if num_cpus > 1 {
                    entry.edx |= LEAF1_EDX_HTT;
                } else {
                    entry.edx &= !LEAF1_EDX_HTT;
                }
            }
            leaf::CACHE_PARAMS if entry.eax & LEAF4_EAX_TYPE_MASK != 0 => {
                let level = (entry.eax >> LEAF4_EAX_LEVEL_SHIFT) & 0x7;
                // L1/L2 belong to one core (one thread); the L3 is shared by the package.
                let sharing = if level >= 3 { addressable_ids - 1 } else { 0 };
                let cores = (addressable_ids - 1).min(0x3f);
                entry.eax = (entry.eax & !(LEAF4_EAX_SHARING_MASK | LEAF4_EAX_CORES_MASK))
                    | sharing << LEAF4_EAX_SHARING_SHIFT
                    | cores << LEAF4_EAX_CORES_SHIFT;
            }
            leaf::THERMAL_POWER | leaf::PERFMON => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            leaf::AMD_SIZES_AND_CORES if vendor == CpuVendor::Amd => {
                entry.ecx = (entry.ecx & !(AMD_ECX_NC_MASK | AMD_ECX_APIC_ID_SIZE_MASK))
                    | (u32::from(num_cpus) - 1)
                    | core_id_bits(num_cpus) << AMD_ECX_APIC_ID_SIZE_SHIFT;
            }
            leaf::AMD_EXT_APIC_ID if vendor == CpuVendor::Amd => {
                // Core id = APIC id, one thread per core (EBX[15:8] = 0), one node (ECX = 0).
                entry.eax = apic_id;
                entry.ebx = apic_id & 0xff;
                entry.ecx = 0;
            }
            _ => {}
        }
    }

    if max_basic_leaf >= leaf::EXT_TOPOLOGY {
        rewrite_topology_leaf(cpuid, leaf::EXT_TOPOLOGY, apic_id, num_cpus)?;
    }
    let has_v2_topology = cpuid
        .as_slice()
        .iter()
        .any(|e| e.function == leaf::EXT_TOPOLOGY_V2);
    if has_v2_topology && max_basic_leaf >= leaf::EXT_TOPOLOGY_V2 {
        rewrite_topology_leaf(cpuid, leaf::EXT_TOPOLOGY_V2, apic_id, num_cpus)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: 0,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn vendor_leaf(max_leaf: u32, name: &[u8; 12]) -> kvm_cpuid_entry2 {
        let word = |i: usize| u32::from_le_bytes(name[i..i + 4].try_into().unwrap());
        entry(0, 0, [max_leaf, word(0), word(8), word(4)])
    }

    /// A CPUID table shaped like KVM's output on an Intel host with 2 threads per core.
    fn intel_cpuid() -> CpuId {
        CpuId::from_entries(&[
            vendor_leaf(0x1f, b"GenuineIntel"),
            // Leaf 1: host APIC id 0x2a, 16 logical CPUs, CLFLUSH 8, brand 0x11.
            entry(1, 0, [0x000906ea, 0x2a10_0811, 0x7ffa_3203, 0x0f8b_fbff]),
            // Leaf 4: L1d, L1i, L2, L3 (level in bits 7..5, type in 4..0), then the terminator.
            entry(4, 0, [0x1c00_4121, 0x01c0_003f, 0x3f, 0]),
            entry(4, 1, [0x1c00_4122, 0x01c0_003f, 0x3f, 0]),
            entry(4, 2, [0x1c00_4143, 0x03c0_003f, 0x3ff, 0]),
            entry(4, 3, [0x1c03_c163, 0x03c0_003f, 0x2fff, 6]),
            entry(4, 4, [0, 0, 0, 0]),
            entry(6, 0, [0x77, 2, 9, 0]),
            entry(0xa, 0, [0x0730_0404, 0, 0, 0x603]),
            entry(0xb, 0, [1, 2, 0x100, 0x2a]),
            entry(0xb, 1, [4, 16, 0x201, 0x2a]),
            entry(0x1f, 0, [1, 2, 0x100, 0x2a]),
            entry(0x1f, 1, [4, 16, 0x201, 0x2a]),
            entry(0x8000_0000, 0, [0x8000_0008, 0, 0, 0]),
            entry(0x8000_0008, 0, [0x3027, 0, 0x1234, 0]),
        ])
        .unwrap()
    }

    /// A CPUID table shaped like KVM's output on an AMD host (no leaf 4, no leaf 0x1F).
    fn amd_cpuid() -> CpuId {
        CpuId::from_entries(&[
            vendor_leaf(0x10, b"AuthenticAMD"),
            entry(1, 0, [0x00a00f11, 0x0510_0800, 0x7ef8_320b, 0x178b_fbff]),
            entry(0xb, 0, [1, 2, 0x100, 5]),
            entry(
                0x8000_0000,
                0,
                [0x8000_0021, 0x6874_7541, 0x444d_4163, 0x6974_6e65],
            ),
            entry(0x8000_0008, 0, [0x3030, 0, 0x700f, 0]),
            entry(0x8000_001e, 0, [0, 0, 0, 0]),
        ])
        .unwrap()
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
    }

    fn subleaves(cpuid: &CpuId, function: u32) -> Vec<kvm_cpuid_entry2> {
        let mut found: Vec<_> = cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function == function)
            .copied()
            .collect();
        found.sort_by_key(|e| e.index);
        found
    }

    #[test]
    fn vendor_is_read_from_leaf_0() {
        assert_eq!(cpu_vendor(&intel_cpuid()), CpuVendor::Intel);
        assert_eq!(cpu_vendor(&amd_cpuid()), CpuVendor::Amd);
        let other = CpuId::from_entries(&[vendor_leaf(1, b"HygonGenuine")]).unwrap();
        assert_eq!(cpu_vendor(&other), CpuVendor::Other);
        assert_eq!(cpu_vendor(&CpuId::new(0).unwrap()), CpuVendor::Other);
    }

    #[test]
    fn leaf1_apic_id_follows_cpu_index() {
        for cpu in 0..4u8 {
            let mut cpuid = intel_cpuid();
            filter_cpuid(&mut cpuid, cpu, 4).unwrap();
            let leaf1 = find(&cpuid, 1, 0);
            assert_eq!(leaf1.ebx >> 24, u32::from(cpu));
            assert_eq!((leaf1.ebx >> 16) & 0xff, 4, "logical processor count");
            assert_eq!(leaf1.ebx & 0xffff, 0x0811, "CLFLUSH size and brand kept");
            assert_ne!(leaf1.edx & LEAF1_EDX_HTT, 0);
        }
    }

    #[test]
    fn leaf1_hypervisor_bit_set_and_other_features_kept() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 0, 1).unwrap();
        let leaf1 = find(&cpuid, 1, 0);
        assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(leaf1.ecx & !LEAF1_ECX_HYPERVISOR, 0x7ffa_3203);
        assert_eq!(leaf1.eax, 0x000906ea);
    }

    #[test]
    fn single_cpu_has_no_htt_and_count_one() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 0, 1).unwrap();
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!((leaf1.ebx >> 16) & 0xff, 1);
        assert_eq!(leaf1.ebx >> 24, 0);
    }

    #[test]
    fn logical_count_rounds_up_to_addressable_ids() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 5, 6).unwrap();
        assert_eq!((find(&cpuid, 1, 0).ebx >> 16) & 0xff, 8);
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 200, MAX_CPUS).unwrap();
        let leaf1 = find(&cpuid, 1, 0);
        assert_eq!(leaf1.ebx >> 24, 200);
        assert_eq!(
            (leaf1.ebx >> 16) & 0xff,
            0xff,
            "saturates in its 8-bit field"
        );
    }

    #[test]
    fn leaf_b_describes_one_package_of_single_thread_cores() {
        for cpu in 0..4u8 {
            let mut cpuid = intel_cpuid();
            filter_cpuid(&mut cpuid, cpu, 4).unwrap();
            let topo = subleaves(&cpuid, 0xb);
            assert_eq!(topo.len(), 3);
            let apic_id = u32::from(cpu);
            // SMT level: nothing to shift, one thread.
            assert_eq!((topo[0].eax, topo[0].ebx, topo[0].ecx), (0, 1, 0x100));
            // Core level: 2 APIC id bits for 4 cores.
            assert_eq!((topo[1].eax, topo[1].ebx, topo[1].ecx), (2, 4, 0x201));
            // Terminator: level type 0.
            assert_eq!((topo[2].eax, topo[2].ebx, topo[2].ecx), (0, 0, 2));
            for sub in &topo {
                assert_eq!(sub.edx, apic_id);
                assert_eq!(sub.flags, KVM_CPUID_FLAG_SIGNIFCANT_INDEX);
            }
        }
    }

    #[test]
    fn leaf_1f_is_rewritten_like_leaf_b() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 2, 3).unwrap();
        let v1: Vec<_> = subleaves(&cpuid, 0xb)
            .iter()
            .map(|e| (e.index, e.eax, e.ebx, e.ecx, e.edx))
            .collect();
        let v2: Vec<_> = subleaves(&cpuid, 0x1f)
            .iter()
            .map(|e| (e.index, e.eax, e.ebx, e.ecx, e.edx))
            .collect();
        assert_eq!(v1, v2);
        assert_eq!(v1[1], (1, 2, 3, 0x201, 2));
    }

    #[test]
    fn leaf_1f_is_not_invented_when_absent() {
        let mut cpuid = amd_cpuid();
        filter_cpuid(&mut cpuid, 0, 2).unwrap();
        assert!(subleaves(&cpuid, 0x1f).is_empty());
        // Leaf 0xB gains its missing sub-leaves.
        assert_eq!(subleaves(&cpuid, 0xb).len(), 3);
    }

    #[test]
    fn leaf_b_is_not_added_below_max_basic_leaf() {
        let mut cpuid =
            CpuId::from_entries(&[vendor_leaf(0xa, b"GenuineIntel"), entry(1, 0, [0, 0, 0, 0])])
                .unwrap();
        filter_cpuid(&mut cpuid, 0, 2).unwrap();
        assert!(subleaves(&cpuid, 0xb).is_empty());
    }

    #[test]
    fn leaf4_cores_and_cache_sharing() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 1, 4).unwrap();
        let caches = subleaves(&cpuid, 4);
        for cache in &caches[0..4] {
            assert_eq!(cache.eax >> 26, 3, "4 cores per package");
            assert_eq!(cache.eax & 0xff, caches_original_low_byte(cache.index));
        }
        let sharing = |e: &kvm_cpuid_entry2| (e.eax >> 14) & 0xfff;
        assert_eq!(sharing(&caches[0]), 0, "L1d per core");
        assert_eq!(sharing(&caches[2]), 0, "L2 per core");
        assert_eq!(sharing(&caches[3]), 3, "L3 shared by the package");
        assert_eq!(caches[4].eax, 0, "terminator untouched");
        assert_eq!(caches[3].ebx, 0x03c0_003f, "geometry untouched");
    }

    fn caches_original_low_byte(index: u32) -> u32 {
        [0x21, 0x22, 0x43, 0x63][index as usize]
    }

    #[test]
    fn power_management_and_perfmon_are_cleared() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 0, 2).unwrap();
        for function in [6, 0xa] {
            let leaf = find(&cpuid, function, 0);
            assert_eq!((leaf.eax, leaf.ebx, leaf.ecx, leaf.edx), (0, 0, 0, 0));
        }
    }

    #[test]
    fn amd_core_count_and_extended_apic_id() {
        let mut cpuid = amd_cpuid();
        filter_cpuid(&mut cpuid, 3, 6).unwrap();
        let sizes = find(&cpuid, 0x8000_0008, 0);
        assert_eq!(sizes.ecx & 0xff, 5, "NC = cores - 1");
        assert_eq!((sizes.ecx >> 12) & 0xf, 3, "3 APIC id bits for 6 cores");
        assert_eq!(sizes.eax, 0x3030, "address sizes untouched");
        let ext = find(&cpuid, 0x8000_001e, 0);
        assert_eq!((ext.eax, ext.ebx, ext.ecx), (3, 3, 0));
    }

    #[test]
    fn amd_leaves_untouched_on_intel() {
        let mut cpuid = intel_cpuid();
        filter_cpuid(&mut cpuid, 1, 2).unwrap();
        assert_eq!(find(&cpuid, 0x8000_0008, 0).ecx, 0x1234);
    }

    #[test]
    fn invalid_counts_and_indices_are_errors() {
        let mut cpuid = intel_cpuid();
        assert_eq!(
            filter_cpuid(&mut cpuid, 0, 0),
            Err(Error::InvalidCpuCount(0))
        );
        assert_eq!(
            filter_cpuid(&mut cpuid, 0, 255),
            Err(Error::InvalidCpuCount(255))
        );
        assert_eq!(
            filter_cpuid(&mut cpuid, 4, 4),
            Err(Error::InvalidCpuIndex {
                cpu_index: 4,
                num_cpus: 4
            })
        );
        // Nothing was modified by the failed calls.
        assert_eq!(cpuid.as_slice(), intel_cpuid().as_slice());
    }

    #[test]
    fn full_table_reports_too_many_entries() {
        let mut entries = vec![vendor_leaf(0xd, b"GenuineIntel")];
        entries
            .extend((1..KVM_MAX_CPUID_ENTRIES as u32).map(|i| entry(0x4000_0100 + i, 0, [0; 4])));
        let mut cpuid = CpuId::from_entries(&entries).unwrap();
        assert_eq!(filter_cpuid(&mut cpuid, 0, 1), Err(Error::TooManyEntries));
    }

    #[test]
    fn filtering_is_idempotent() {
        let mut once = intel_cpuid();
        filter_cpuid(&mut once, 1, 2).unwrap();
        let mut twice = once.clone();
        filter_cpuid(&mut twice, 1, 2).unwrap();
        let sorted = |c: &CpuId| {
            let mut v: Vec<_> = c
                .as_slice()
                .iter()
                .map(|e| (e.function, e.index, e.eax, e.ebx, e.ecx, e.edx))
                .collect();
            v.sort();
            v
        };
        assert_eq!(sorted(&once), sorted(&twice));
    }

    #[test]
    fn kvm_accepts_the_filtered_cpuid_of_every_vcpu() {
        use crate::test_utils::kvm_or_skip;
        let Some(kvm) = kvm_or_skip("kvm_accepts_the_filtered_cpuid_of_every_vcpu") else {
            return;
        };
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .expect("KVM_GET_SUPPORTED_CPUID");
        let vm = kvm.create_vm().expect("create VM");
        let num_cpus = 4;
        for cpu in 0..num_cpus {
            let vcpu = vm.create_vcpu(u64::from(cpu)).expect("create vCPU");
            let mut cpuid = supported.clone();
            filter_cpuid(&mut cpuid, cpu, num_cpus).unwrap();
            vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");
            let applied = vcpu
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .expect("KVM_GET_CPUID2");
            let leaf1 = find(&applied, 1, 0);
            assert_eq!(leaf1.ebx >> 24, u32::from(cpu), "APIC id of vCPU {cpu}");
            assert_ne!(leaf1.ecx & LEAF1_ECX_HYPERVISOR, 0);
            if applied.as_slice().iter().any(|e| e.function == 0xb) {
                let core_level = find(&applied, 0xb, 1);
                assert_eq!((core_level.ebx, core_level.edx), (4, u32::from(cpu)));
            }
        }
    }
}
