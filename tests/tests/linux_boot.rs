//! Boots the real Linux guest (`make guest`) on real KVM. Each boot costs about 40 s on a
//! software KVM (kvm_pvm), so these tests are few and each checks several things.

use std::time::{Duration, Instant};

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
        .envs([("RUST_LOG".to_string(), "info".to_string())])
        .run();
    out.expect_line("CANTO-READY");
    // The guest's /init ends with `reboot -f`: a reset, as before ACPI.
    assert!(out.stderr.contains("guest ended: Reset"), "{}", out.stderr);
    // Canto's platform arguments reached the kernel.
    assert!(out.stdout.contains("console=ttyS0"), "{}", out.stdout);
    eprintln!("boot to exit took {:.1} s", out.elapsed.as_secs_f64());
}

/// `poweroff` in the guest goes through ACPI (the FADT's sleep control register, `\_S5`) and
/// ends Canto with status 0. Before ACPI the kernel printed "Power off not available: System
/// halted instead" and Canto never exited (this test then times out).
#[test]
fn linux_guest_poweroff_ends_canto_with_status_0() {
    if !kvm_available() {
        return;
    }
    let Some(image) = GuestImage::find() else {
        return;
    };
    let start = Instant::now();
    let mut ready_at = None;
    let mut poweroff_at = None;
    let out = Canto::linux(&image, "poweroff")
        .arg("--memory")
        .arg("256M")
        .envs([("RUST_LOG".to_string(), "info".to_string())])
        .timeout(Duration::from_secs(240))
        .run_interacting(|_, serial| {
            if ready_at.is_none() && serial.contains("CANTO-READY") {
                ready_at = Some(start.elapsed());
            }
            if poweroff_at.is_none() && serial.contains("CANTO-POWEROFF") {
                poweroff_at = Some(Instant::now());
            }
        });
    out.expect_line("CANTO-POWEROFF");
    assert!(
        out.stderr.contains("guest ended: PowerOff"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stdout.contains("Power off not available"),
        "{}",
        out.stdout
    );
    if let (Some(ready), Some(poweroff)) = (ready_at, poweroff_at) {
        eprintln!(
            "READY after {:.1} s; poweroff to exit {:.2} s",
            ready.as_secs_f64(),
            poweroff.elapsed().as_secs_f64()
        );
    }
}
