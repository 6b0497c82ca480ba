//! `canto`: boot a guest on KVM from the command line. `canto run ... -- COMMAND` and
//! `canto exec --vsock PATH -- COMMAND` run a command in a guest (see `vmm::sandbox`).
//!
//! Exit status: 0 when the guest powers off or reboots, or the user types Ctrl-A x; 1 with one line on stderr for any error;
//! 128 + N after stop signal N (SIGHUP 129, SIGINT 130, SIGTERM 143), with one line naming it,
//! once the VM is torn down.

use std::process::ExitCode;

use vmm::vcpu::VmExit;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let subcommand = matches!(args.get(1).and_then(|a| a.to_str()), Some("run" | "exec"));
    // The VM's configuration and its confinement come first, before any thread exists: the jail
    // forks, and Landlock confines only the thread that asks and those it starts later.
    let mut vm = None;
    if !subcommand {
        let cli = vmm::cli::Cli::parse_args(&args).unwrap_or_else(|e| e.exit());
        let config = match cli.vm_config() {
            Ok(config) => config,
            Err(e) => {
                eprintln!("canto: {e}");
                return ExitCode::FAILURE;
            }
        };
        match confine(config) {
            Ok(Confined::Run(config)) => vm = Some((cli, *config)),
            Ok(Confined::Exit(status)) => return ExitCode::from(status),
            Err(e) => {
                eprintln!("canto: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Before any other thread exists: every later thread inherits the blocked stop signals.
    let signals = match vmm::signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("canto: cannot set up the stop signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    vmm::terminal::restore_on_panic();
    // virtio-queue logs an error for every malformed ring a guest hands it; those are the guest's
    // doing and would let it fill the host's log, so they are off unless RUST_LOG asks for them.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,virtio_queue=off"),
    )
    .format_timestamp_millis()
    .init();
    // `canto run ...` and `canto exec ...`: a command in a guest, through its agent.
    let Some((cli, config)) = vm else {
        return match args.get(1).and_then(|a| a.to_str()) {
            Some("run") => ExitCode::from(vmm::sandbox::run_main(&args[2..], &signals)),
            _ => {
                if let Err(e) = signals.watch() {
                    eprintln!("canto: cannot set up the stop signals: {e}");
                    return ExitCode::FAILURE;
                }
                ExitCode::from(vmm::sandbox::exec_main(&args[2..]))
            }
        };
    };
    vmm::jail::confinement_test_trigger();
    // The filters are compiled now; each thread installs its own as it starts (the main
    // thread once the VM is built, before the guest runs).
    if let Err(e) = vmm::seccomp::init(config.seccomp) {
        eprintln!("canto: {e}");
        return ExitCode::FAILURE;
    }
    if let Err(e) = signals.watch() {
        eprintln!("canto: cannot set up the stop signals: {e}");
        return ExitCode::FAILURE;
    }
    let result = vmm::Vmm::build(&config).and_then(|mut vmm| {
        if cli.print_devices {
            for device in vmm.pci_devices() {
                println!("{device}");
            }
            return Ok(VmExit::PowerOff);
        }
        vmm.stop_on(&signals);
        vmm.run()
    });
    match result {
        Ok(VmExit::Signal(signal)) => {
            eprintln!(
                "canto: stopped by {}: the guest was halted and its devices flushed",
                vmm::signals::name(signal)
            );
            ExitCode::from(vmm::signals::exit_status(signal))
        }
        Ok(VmExit::ConsoleExit) => {
            eprintln!("canto: ended by Ctrl-A x: the guest was halted and its devices flushed");
            ExitCode::SUCCESS
        }
        Ok(reason) => {
            log::info!("guest ended: {reason:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line: the error and each cause behind it.
            eprintln!("canto: {}", vmm::sandbox::error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// What [`confine`] leaves to do.
enum Confined {
    /// Build and run this VM (its paths are in-jail ones when jailed).
    Run(Box<vmm::config::VmConfig>),
    /// The jail's parent, after the jailed VMM ended: exit with its status.
    Exit(u8),
}

/// `--jail` and `--landlock`, in that order (the jail rewrites the paths Landlock's rules name).
fn confine(config: vmm::config::VmConfig) -> Result<Confined, String> {
    if config.jail.is_none() && !config.landlock {
        return Ok(Confined::Run(Box::new(config)));
    }
    // Mistakes in the configuration first, with their usual lines.
    config.validate()?;
    // Asked now: the confined VMM cannot see /sys/module.
    vmm::cmdline::host_is_kvm_pvm();
    let config = if config.jail.is_some() {
        match vmm::jail::enter(&config)? {
            vmm::jail::Entered::Jailed(config) => *config,
            vmm::jail::Entered::Parent(status) => return Ok(Confined::Exit(status)),
        }
    } else {
        config
    };
    if config.landlock {
        vmm::landlock::restrict(&config)?;
    }
    Ok(Confined::Run(Box::new(config)))
}
