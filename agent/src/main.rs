//! `canto-agent`: Canto's guest agent. The guest's init starts it; it listens on a vsock port
//! (52 unless told otherwise) or, for tests on the host, a Unix socket, and serves the protocol of
//! `docs/agent-protocol.md` (crate `canto-agent-protocol`): it runs commands, relays their output
//! and exit status, and puts and gets files. Connections are served concurrently, up to a few.

mod exec;
mod files;
mod listen;
mod session;

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use listen::{Endpoint, Listener};

/// The vsock port the agent listens on by default.
const DEFAULT_VSOCK_PORT: u32 = 52;

/// Connections served at once; a connection beyond gets an `Error` frame and is closed.
const DEFAULT_MAX_CONNECTIONS: usize = 4;

/// The command search path when the agent's environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

const USAGE: &str =
    "usage: canto-agent [--listen vsock:PORT | --listen unix:PATH] [--max-connections N]
  --listen vsock:PORT   listen on AF_VSOCK port PORT of any CID (default vsock:52)
  --listen unix:PATH    listen on a Unix socket at PATH (for tests on the host)
  --max-connections N   serve at most N connections at once (default 4)";

struct Args {
    endpoint: Endpoint,
    max_connections: usize,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut endpoint = Endpoint::Vsock(DEFAULT_VSOCK_PORT);
    let mut max_connections = DEFAULT_MAX_CONNECTIONS;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                let value = args.next().ok_or("--listen needs a value")?;
                endpoint = Endpoint::parse(&value)?;
            }
            "--max-connections" => {
                let value = args.next().ok_or("--max-connections needs a value")?;
                max_connections = value.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                    format!("--max-connections: '{value}' is not a positive number")
                })?;
            }
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(Some(Args {
        endpoint,
        max_connections,
    }))
}

/// How long the agent retries listening on vsock: an init may start it before the vsock device
/// has been probed.
const VSOCK_BIND_RETRY: Duration = Duration::from_secs(10);

fn bind(endpoint: &Endpoint) -> std::io::Result<Listener> {
    let start = Instant::now();
    loop {
        match Listener::bind(endpoint) {
            Err(_)
                if matches!(endpoint, Endpoint::Vsock(_)) && start.elapsed() < VSOCK_BIND_RETRY =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("canto-agent: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Started by a guest's init, the agent may have no PATH; commands are looked up in the
    // usual places then. Set before any thread starts.
    if std::env::var_os("PATH").is_none() {
        std::env::set_var("PATH", DEFAULT_PATH);
    }
    let listener = match bind(&args.endpoint) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("canto-agent: cannot listen on {}: {e}", args.endpoint);
            return ExitCode::FAILURE;
        }
    };
    eprintln!("canto-agent: listening on {}", args.endpoint);
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let mut conn = match listener.accept() {
            Ok(conn) => conn,
            Err(e) => {
                // A failed accept (a peer gone before it was accepted, fds exhausted) is not a
                // reason to stop serving; a short pause keeps a persistent failure from spinning.
                eprintln!("canto-agent: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= args.max_connections {
            active.fetch_sub(1, Ordering::AcqRel);
            session::refuse(
                &mut conn,
                "the agent serves its maximum number of connections",
            );
            continue;
        }
        let active = active.clone();
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .spawn(move || {
                if let Err(e) = session::serve(&mut conn) {
                    eprintln!("canto-agent: connection ended: {e}");
                }
                active.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            eprintln!("canto-agent: cannot start a connection thread: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments_parse() {
        let a = parse(&[]).unwrap().unwrap();
        assert!(matches!(a.endpoint, Endpoint::Vsock(52)));
        let a = parse(&["--listen", "unix:/tmp/a.sock", "--max-connections", "2"])
            .unwrap()
            .unwrap();
        assert!(matches!(a.endpoint, Endpoint::Unix(ref p) if p.to_str() == Some("/tmp/a.sock")));
        assert_eq!(a.max_connections, 2);
        assert!(matches!(
            parse(&["--listen", "vsock:1024"])
                .unwrap()
                .unwrap()
                .endpoint,
            Endpoint::Vsock(1024)
        ));
        assert!(parse(&["--help"]).unwrap().is_none());
        for bad in [
            &["--listen"][..],
            &["--listen", "tcp:1"],
            &["--listen", "vsock:x"],
            &["--max-connections", "0"],
            &["--what"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
