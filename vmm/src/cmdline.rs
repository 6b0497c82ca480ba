//! The guest kernel command line: the arguments Canto's platform needs, merged with the user's.

/// What every Canto guest needs: the console on COM1, reboot through the i8042 (Canto ends the VM
/// on that reset), and an immediate reboot on panic so a crashed guest ends the VM.
const PLATFORM_ARGS: &[&str] = &["console=ttyS0", "reboot=k", "panic=-1"];

/// kvm_pvm (a software KVM) cannot execute these CPU features in guest kernel mode, and its guests
/// see the host CPUID whatever KVM_SET_CPUID2 says, so the kernel is told on its command line.
const KVM_PVM_ARGS: &[&str] = &[
    "noxsave",
    "clearcpuid=cx16,popcnt,smap,smep,fsgsbase,pcid,invpcid,pku,rdpid,umip,rdrand,rdseed,xsave,avx,avx2,bmi1,bmi2",
];

/// True when /dev/kvm is kvm_pvm, the software KVM whose guests need [`KVM_PVM_ARGS`]. Looked
/// up once: a confined VMM (`--jail`, `--landlock`) cannot see /sys/module, so `main` asks
/// before confining it.
pub fn host_is_kvm_pvm() -> bool {
    static KVM_PVM: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KVM_PVM.get_or_init(|| std::path::Path::new("/sys/module/kvm_pvm").exists())
}

fn key_of(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(k, _)| k)
}

/// Builds the full command line: the platform's arguments whose keys the user did not give, then
/// the user's. Arguments after a `--` (for init) stay last.
pub fn build(user: &str, kvm_pvm: bool) -> String {
    let (kernel_part, init_part) = match user.split_once(" -- ") {
        Some((k, i)) => (k, Some(i)),
        None => match user.strip_prefix("-- ") {
            Some(i) => ("", Some(i)),
            None => (user, None),
        },
    };
    let user_args: Vec<&str> = kernel_part.split_whitespace().collect();
    let platform = PLATFORM_ARGS
        .iter()
        .chain(if kvm_pvm { KVM_PVM_ARGS } else { &[] })
        .filter(|a| !user_args.iter().any(|u| key_of(u) == key_of(a)));
    let mut args: Vec<&str> = platform.copied().collect();
    args.extend(user_args);
    let mut line = args.join(" ");
    if let Some(init) = init_part {
        line.push_str(" -- ");
        line.push_str(init.trim());
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_arguments_come_first() {
        assert_eq!(build("", false), "console=ttyS0 reboot=k panic=-1");
        assert_eq!(
            build("quiet", false),
            "console=ttyS0 reboot=k panic=-1 quiet"
        );
    }

    #[test]
    fn kvm_pvm_adds_feature_masks() {
        let line = build("", true);
        assert!(line.contains(" noxsave "));
        assert!(line.contains("clearcpuid=cx16,"));
        assert!(line.contains("bmi2"));
        assert!(!build("", false).contains("clearcpuid"));
    }

    #[test]
    fn a_key_the_user_gives_wins() {
        let line = build("console=hvc0 panic=5 clearcpuid=avx", true);
        assert_eq!(line.matches("console=").count(), 1);
        assert!(line.contains("console=hvc0"));
        assert!(line.contains("panic=5") && !line.contains("panic=-1"));
        assert!(line.contains("clearcpuid=avx") && !line.contains("clearcpuid=cx16"));
        assert!(line.contains("reboot=k"));
    }

    #[test]
    fn init_arguments_stay_after_the_separator() {
        assert_eq!(
            build("quiet -- foo bar", false),
            "console=ttyS0 reboot=k panic=-1 quiet -- foo bar"
        );
        assert_eq!(build("-- x", false), "console=ttyS0 reboot=k panic=-1 -- x");
    }
}
