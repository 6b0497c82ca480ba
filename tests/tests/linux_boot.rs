//! Boots the real Linux guest (`make guest`) on real KVM. Each boot costs about 40 s on a
//! software KVM (kvm_pvm), so these tests are few and each checks several things.

use std::time::{Duration, Instant};

use canto_tests::{kvm_available, prerequisite, Canto, GuestImage};

/// The Linux guest `make guest` built, or None (the reason printed, or a failure under CI=true)
/// when there is no KVM or no image.
fn guest_image() -> Option<GuestImage> {
    if !kvm_available() {
        return None;
    }
    GuestImage::find()
}

/// Canto booting `image` with 256 MiB in run-script `mode`, logging at info (the tests read its
/// "guest ended: ..." line).
fn linux_canto(image: &GuestImage, mode: &str) -> Canto {
    Canto::linux(image, mode)
        .arg("--memory")
        .arg("256M")
        .envs([("RUST_LOG".to_string(), "info".to_string())])
}

#[test]
fn linux_guest_boots_to_ready_and_exits_zero() {
    let Some(image) = guest_image() else {
        return;
    };
    let out = linux_canto(&image, "boot").run();
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
    let Some(image) = guest_image() else {
        return;
    };
    let start = Instant::now();
    let mut ready_at = None;
    let mut poweroff_at = None;
    let out = linux_canto(&image, "poweroff")
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

/// `halt -p` as the guest's interactive shell runs it (its /etc/shrc function, then
/// /canto/halt, since busybox's own halt has no -p) powers the guest off: Canto exits with
/// status 0, like after `poweroff`.
#[test]
fn linux_guest_halt_p_ends_canto_with_status_0() {
    let Some(image) = guest_image() else {
        return;
    };
    let out = linux_canto(&image, "halt-p")
        .timeout(Duration::from_secs(240))
        .run();
    out.expect_line("CANTO-HALT-P");
    assert!(
        out.stderr.contains("guest ended: PowerOff"),
        "{}",
        out.stderr
    );
    assert!(!out.stdout.contains("invalid option"), "{}", out.stdout);
}

/// A minimal bzImage: one setup sector after the boot sector, the boot protocol header ("HdrS",
/// version 2.15, LOADED_HIGH, code32_start at 1 MiB), and a protected-mode part whose 64-bit
/// entry (offset 0x200, where a real bzImage has `startup_64`) prints the command line the zero
/// page points at (`boot_params.hdr.cmd_line_ptr`, offset 0x228 from RSI) on COM1 and resets the
/// machine through the i8042. It runs in milliseconds, so the bzImage path is tested even where
/// a real kernel's decompressor is too slow to run.
fn tiny_bzimage() -> Vec<u8> {
    const SETUP_SECTS: usize = 1;
    let mut image = vec![0u8; (SETUP_SECTS + 1) * 512];
    image[0x1f1] = SETUP_SECTS as u8;
    image[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 0x01; // loadflags: LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&0x0010_0000u32.to_le_bytes());
    let mut payload = vec![0xf4u8; 0x200]; // hlt: nothing but the 64-bit entry is ever run
    payload.extend_from_slice(&[
        0x8b, 0xb6, 0x28, 0x02, 0x00, 0x00, // mov esi, [rsi + 0x228]  (cmd_line_ptr)
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8  (COM1)
        0xac, // next: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz done
        0xee, // out dx, al
        0xeb, 0xf8, // jmp next
        0xb0, 0x0a, // done: mov al, '\n'
        0xee, // out dx, al
        0xb0, 0xfe, // mov al, 0xfe  (i8042: pulse the reset line)
        0xe6, 0x64, // out 0x64, al
        0xf4, // hlt
        0xeb, 0xfd, // jmp hlt
    ]);
    image.extend_from_slice(&payload);
    image
}

/// Canto tells a bzImage by its "HdrS" header, loads its protected-mode part at code32_start and
/// enters it at the 64-bit entry in long mode with RSI at a zero page that carries the command
/// line (the guest prints it), and the guest's reset ends Canto with status 0.
#[test]
fn a_bzimage_is_entered_at_its_64_bit_entry_with_the_zero_page() {
    if !kvm_available() {
        return;
    }
    let path = std::env::temp_dir().join(format!("canto-tiny-bzimage-{}", std::process::id()));
    std::fs::write(&path, tiny_bzimage()).expect("write the bzImage");
    let out = Canto::new()
        .arg("--kernel")
        .arg(path.to_str().expect("utf-8 path"))
        .arg("--memory")
        .arg("64M")
        .arg("--no-sound")
        .arg("--cmdline")
        .arg("tiny-bzimage-says-hello")
        .envs([("RUST_LOG".to_string(), "info".to_string())])
        .timeout(Duration::from_secs(60))
        .run();
    let _ = std::fs::remove_file(&path);
    assert!(out.success(), "{out:#?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("tiny-bzimage-says-hello"))
        .unwrap_or_else(|| panic!("the guest did not print its command line: {out:#?}"));
    // Canto's platform arguments come first on the command line the zero page points at.
    assert!(line.starts_with("console=ttyS0 "), "{line}");
    assert!(out.stderr.contains("guest ended: Reset"), "{}", out.stderr);
}

/// The guest kernel as a bzImage (the same build as vmlinux, LZ4-compressed): Canto enters its
/// decompressor through the 64-bit boot protocol, the kernel it unpacks boots to the run script,
/// and its `poweroff` ends Canto with status 0. On kvm_pvm the decompressor runs interpreted:
/// about a minute more than booting vmlinux through PVH.
#[test]
fn linux_guest_boots_from_its_bzimage() {
    let Some(mut image) = guest_image() else {
        return;
    };
    if !prerequisite(
        image.bz_image.exists(),
        "target/guest/bzImage is not built (run `make guest`)",
    ) {
        return;
    }
    image.kernel = image.bz_image.clone();
    let out = linux_canto(&image, "poweroff")
        .timeout(Duration::from_secs(600))
        .run();
    out.expect_line("CANTO-POWEROFF");
    assert!(
        out.stderr.contains("guest ended: PowerOff"),
        "{}",
        out.stderr
    );
    // The kernel the decompressor unpacked is the one built with the guest image.
    assert!(out.stdout.contains("Linux version 6.12"), "{}", out.stdout);
    eprintln!(
        "bzImage boot to power-off took {:.1} s",
        out.elapsed.as_secs_f64()
    );
}
