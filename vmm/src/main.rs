//! `canto`: boot a guest on KVM from the command line.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // virtio-queue logs an error for every malformed ring a guest hands it; those are the guest's
    // doing and would let it fill the host's log, so they are off unless RUST_LOG asks for them.
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("warn,virtio_queue=off"),
    )
    .format_timestamp_millis()
    .init();
    let cli = vmm::config::Cli::parse();
    match vmm::run(&cli) {
        Ok(reason) => {
            log::info!("guest ended: {reason:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line: the error and each cause behind it.
            let mut line = format!("canto: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !line.contains(&text) {
                    line.push_str(": ");
                    line.push_str(&text);
                }
                source = cause.source();
            }
            eprintln!("{line}");
            ExitCode::FAILURE
        }
    }
}
