//! Boots the real Linux guest (`make guest`) on real KVM. Each boot costs about 40 s on a
//! software KVM (kvm_pvm), so these tests are few and each checks several things.

use canto_tests::{kvm_available, Canto, GuestImage};

#[test]
fn linux_guest_boots_to_ready_and_exits_zero() {
    if !kvm_available() {
        return;
    }
    let Some(image) = GuestImage::find() else {
        return;
    };
    let out = Canto::linux(&image, "boot")
        .arg("--memory")
        .arg("256M")
        .run();
    out.expect_line("CANTO-READY");
    // Canto's platform arguments reached the kernel.
    assert!(out.stdout.contains("console=ttyS0"), "{}", out.stdout);
    eprintln!("boot to exit took {:.1} s", out.elapsed.as_secs_f64());
}
