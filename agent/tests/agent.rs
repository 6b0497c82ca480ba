//! The real `canto-agent` binary on a Unix socket on the host, driven by Canto's host client
//! (`vmm::agent_client`) and, for the bad frames, by hand.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use canto_agent_protocol::{frame_type, write_frame, write_message, FrameReader, Message, VERSION};
use vmm::agent_client::{AgentClient, AgentError, ExecRequest, ExecStatus};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A running agent on a Unix socket in a private directory; killed on drop.
struct Agent {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Agent {
    fn start(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("canto-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("agent.sock");
        let mut agent = Command::new(env!("CARGO_BIN_EXE_canto-agent"));
        agent
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .stderr(Stdio::piped());
        // Started as a shell's background job is (`canto-agent &` in a guest's init): with
        // SIGINT and SIGQUIT ignored.
        // SAFETY: the hook runs in the forked child and calls only signal(), which is
        // async-signal-safe.
        unsafe {
            agent.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                libc::signal(libc::SIGQUIT, libc::SIG_IGN);
                Ok(())
            });
        }
        let mut child = agent.spawn().unwrap();
        // The agent says it listens once it does (the socket file exists a moment earlier,
        // between bind and listen). Its later lines go on to the test's stderr.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains("listening on"), "the agent said: {line}");
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
        Self { child, dir, socket }
    }

    fn client(&self) -> AgentClient {
        AgentClient::connect_unix(&self.socket, IO_TIMEOUT).unwrap()
    }

    fn raw(&self) -> UnixStream {
        let s = UnixStream::connect(&self.socket).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

fn run(client: &mut AgentClient, request: &ExecRequest) -> (ExecStatus, Vec<u8>, Vec<u8>) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = client.exec(request, None, &mut out, &mut err).unwrap();
    (status, out, err)
}

#[test]
fn exec_relays_stdout_stderr_and_the_exit_status() {
    let agent = Agent::start("exec");
    let mut client = agent.client();
    let (status, out, err) = run(&mut client, &sh("echo out; echo err >&2; exit 3"));
    assert_eq!(status, ExecStatus::Exited(3));
    assert_eq!(status.code(), 3);
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    // The same connection serves the next command; env and cwd are applied.
    let mut request = sh("echo \"$CANTO_TEST\"; pwd");
    request.env.push(("CANTO_TEST".into(), "hello".into()));
    request.cwd = Some(agent.dir.clone());
    let (status, out, _) = run(&mut client, &request);
    assert_eq!(status, ExecStatus::Exited(0));
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("hello\n{}\n", agent.dir.display())
    );
}

#[test]
fn a_command_killed_by_a_signal_is_128_plus_n() {
    let agent = Agent::start("signal");
    let mut client = agent.client();
    let (status, _, _) = run(&mut client, &sh("kill -TERM $$"));
    assert_eq!(
        status,
        ExecStatus::Signaled {
            signal: 15,
            timed_out: false
        }
    );
    assert_eq!(status.code(), 143);
}

#[test]
fn a_signal_from_the_host_reaches_the_command() {
    let agent = Agent::start("forward");
    let mut client = agent.client();
    let signaler = client.signaler();
    // The command says it is ready, then the host sends SIGINT.
    struct Ready(Option<std::sync::mpsc::Sender<()>>);
    impl Write for Ready {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let sender = std::thread::spawn(move || {
        rx.recv().unwrap();
        signaler.signal(2).unwrap();
    });
    // Without the signal the timeout ends the command (SIGKILL, 137).
    let mut request = sh("echo ready; exec sleep 60");
    request.timeout = Some(Duration::from_secs(20));
    let status = client
        .exec(&request, None, &mut Ready(Some(tx)), &mut io::sink())
        .unwrap();
    sender.join().unwrap();
    assert_eq!(status.code(), 130);
}

#[test]
fn a_command_past_its_timeout_is_killed() {
    let agent = Agent::start("timeout");
    let mut client = agent.client();
    let mut request = sh("echo started; sleep 60");
    request.timeout = Some(Duration::from_millis(500));
    let start = Instant::now();
    let (status, out, _) = run(&mut client, &request);
    assert_eq!(
        status,
        ExecStatus::Signaled {
            signal: 9,
            timed_out: true
        }
    );
    assert_eq!(status.code(), 137);
    assert_eq!(out, b"started\n");
    // Far below the 60 s the command would take; the margin is for a loaded machine.
    assert!(start.elapsed() < Duration::from_secs(30));
}

#[test]
fn stdin_reaches_the_command() {
    let agent = Agent::start("stdin");
    let mut client = agent.client();
    // More than one frame and more than a pipe holds, so the agent's flow control is used.
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = client
        .exec(
            &ExecRequest::new(["cat"]),
            Some(Box::new(io::Cursor::new(input.clone()))),
            &mut out,
            &mut err,
        )
        .unwrap();
    assert_eq!(status, ExecStatus::Exited(0));
    assert!(
        out == input,
        "cat returned {} of {} bytes",
        out.len(),
        input.len()
    );
}

#[test]
fn a_10_mb_random_file_goes_in_and_comes_back_identical() {
    let agent = Agent::start("files");
    let mut client = agent.client();
    let mut state = 0x1234_5678_9abc_def1u64;
    let data: Vec<u8> = (0..10_000_000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let guest_path = agent.dir.join("random.bin");
    let sent = client.put_file(&mut &data[..], &guest_path, 0o640).unwrap();
    assert_eq!(sent, data.len() as u64);
    let mode = std::fs::metadata(&guest_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);
    let mut back = Vec::new();
    let received = client.get_file(&guest_path, &mut back, 64 << 20).unwrap();
    assert_eq!(received, data.len() as u64);
    assert!(back == data, "the file came back different");
}

#[test]
fn file_and_command_errors_are_replies_and_the_connection_goes_on() {
    let agent = Agent::start("errors");
    let mut client = agent.client();
    let missing = agent.dir.join("missing");
    let e = client
        .get_file(&missing, &mut Vec::new(), 1 << 20)
        .unwrap_err();
    assert!(matches!(e, AgentError::Refused { .. }), "{e}");
    let e = client
        .get_file(&agent.dir, &mut Vec::new(), 1 << 20)
        .unwrap_err();
    assert!(matches!(e, AgentError::Refused { .. }), "{e}");
    let e = client
        .put_file(&mut &b"x"[..], &missing.join("sub/file"), 0o644)
        .unwrap_err();
    assert!(matches!(e, AgentError::Refused { .. }), "{e}");
    let e = client
        .exec(
            &ExecRequest::new(["/nonexistent/program"]),
            None,
            &mut io::sink(),
            &mut io::sink(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/program"), "{e}");
    let (status, out, _) = run(&mut client, &sh("echo still here"));
    assert_eq!(
        (status, &out[..]),
        (ExecStatus::Exited(0), &b"still here\n"[..])
    );
}

/// Sends `bytes` as they are and reads one reply.
fn send_raw(stream: &mut UnixStream, frames: &mut FrameReader, bytes: &[u8]) -> Message {
    stream.write_all(bytes).unwrap();
    frames.read_message(stream).unwrap()
}

#[test]
fn a_bad_frame_gets_an_error_reply_and_the_agent_keeps_serving() {
    let agent = Agent::start("badframe");
    let mut stream = agent.raw();
    let mut frames = FrameReader::new();
    let mut hello = Vec::new();
    write_message(&mut hello, &Message::Hello { version: VERSION }).unwrap();

    // Before Hello: refused.
    let mut exec = Vec::new();
    write_frame(
        &mut exec,
        frame_type::GET_FILE,
        &[4, 0, 0, 0, b'/', b'e', b't', b'c'],
    )
    .unwrap();
    assert!(matches!(
        send_raw(&mut stream, &mut frames, &exec),
        Message::Error(_)
    ));
    // A version the agent does not speak.
    let mut v99 = Vec::new();
    write_message(&mut v99, &Message::Hello { version: 99 }).unwrap();
    let Message::Error(text) = send_raw(&mut stream, &mut frames, &v99) else {
        panic!("version 99 accepted");
    };
    assert!(text.contains("99"), "{text}");
    assert_eq!(
        send_raw(&mut stream, &mut frames, &hello),
        Message::Hello { version: VERSION }
    );

    // An unknown type, a truncated Exec, trailing bytes, a reply type sent as a request.
    let mut bad = Vec::new();
    write_frame(&mut bad, 0x42, b"what").unwrap();
    let Message::Error(text) = send_raw(&mut stream, &mut frames, &bad) else {
        panic!("unknown type accepted");
    };
    assert!(text.contains("0x42"), "{text}");
    for (ty, payload) in [
        (frame_type::EXEC, &[5u8, 0, 0, 0, 1][..]),
        (frame_type::SIGNAL, &[1, 0, 0, 0, 0][..]),
        (frame_type::EXIT, &[0, 0, 0, 0][..]),
    ] {
        let mut bad = Vec::new();
        write_frame(&mut bad, ty, payload).unwrap();
        // A Signal outside a command is dropped; the rest are refused.
        if ty == frame_type::SIGNAL {
            let mut good = Vec::new();
            write_message(&mut good, &Message::Signal(1)).unwrap();
            stream.write_all(&good).unwrap();
        }
        assert!(
            matches!(send_raw(&mut stream, &mut frames, &bad), Message::Error(_)),
            "type {ty:#x} accepted"
        );
    }

    // An oversized frame: refused, its payload skipped, the next frame understood.
    let big = 3 << 20;
    let mut oversized = (big as u32).to_le_bytes().to_vec();
    oversized.push(frame_type::STDIN);
    oversized.resize(oversized.len() + big, 0x55);
    let writer = {
        let mut s = stream.try_clone().unwrap();
        // An agent that took the payload for frames would stop reading (its replies unread):
        // the write times out and the test fails instead of hanging.
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        std::thread::spawn(move || s.write_all(&oversized).unwrap())
    };
    let Message::Error(text) = frames.read_message(&mut stream).unwrap() else {
        panic!("oversized frame accepted");
    };
    assert!(text.contains("limit"), "{text}");
    writer.join().unwrap();

    // Still serving on this connection, and on a new one.
    let mut exec = Vec::new();
    write_message(
        &mut exec,
        &Message::Exec(canto_agent_protocol::Exec {
            argv: vec![b"true".to_vec()],
            ..Default::default()
        }),
    )
    .unwrap();
    assert!(matches!(
        send_raw(&mut stream, &mut frames, &exec),
        Message::Started { .. }
    ));
    assert_eq!(
        frames.read_message(&mut stream).unwrap(),
        Message::Exit { code: 0 }
    );
    let mut client = agent.client();
    assert_eq!(run(&mut client, &sh("exit 7")).0, ExecStatus::Exited(7));
}

#[test]
fn a_peer_that_goes_away_mid_command_does_not_stop_the_agent() {
    let agent = Agent::start("gone");
    let pid = {
        let mut stream = agent.raw();
        let mut frames = FrameReader::new();
        let mut bytes = Vec::new();
        write_message(&mut bytes, &Message::Hello { version: VERSION }).unwrap();
        write_message(
            &mut bytes,
            &Message::Exec(canto_agent_protocol::Exec {
                argv: vec![b"sleep".to_vec(), b"60".to_vec()],
                ..Default::default()
            }),
        )
        .unwrap();
        stream.write_all(&bytes).unwrap();
        assert!(matches!(
            frames.read_message(&mut stream),
            Ok(Message::Hello { .. })
        ));
        let Ok(Message::Started { pid }) = frames.read_message(&mut stream) else {
            panic!("the command did not start");
        };
        pid
    };
    // The agent kills and reaps the abandoned command.
    let start = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the command outlived its peer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Two connections at once, after the abandoned one.
    let mut a = agent.client();
    let mut b = agent.client();
    assert_eq!(run(&mut a, &sh("exit 1")).0, ExecStatus::Exited(1));
    assert_eq!(run(&mut b, &sh("exit 2")).0, ExecStatus::Exited(2));
}

#[test]
fn a_closed_peer_while_reading_is_not_an_error_for_the_agent() {
    // A connection that sends half a frame and closes: the agent drops it and serves the next.
    let agent = Agent::start("half");
    {
        let mut stream = agent.raw();
        stream
            .write_all(&[10, 0, 0, 0, frame_type::HELLO, 1])
            .unwrap();
        let mut rest = Vec::new();
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = stream.read_to_end(&mut rest);
        assert!(rest.is_empty());
    }
    let mut client = agent.client();
    assert_eq!(run(&mut client, &sh("exit 0")).0, ExecStatus::Exited(0));
    assert!(Path::new(&agent.socket).exists());
}

#[test]
fn stdin_waits_for_a_command_that_reads_it_late() {
    // The agent stops taking stdin while the command does not read it; the host's writes time
    // out meanwhile (its I/O timeout is short here) and are retried, not taken as a dead agent.
    let agent = Agent::start("latestdin");
    let mut client = agent.client();
    client.set_io_timeout(Duration::from_millis(200)).unwrap();
    let input = vec![b'q'; 4 << 20];
    let mut out = Vec::new();
    // A stdin that stopped would leave wc waiting: the timeout turns that into a failure.
    let mut request = sh("sleep 2; wc -c");
    request.timeout = Some(Duration::from_secs(60));
    let status = client
        .exec(
            &request,
            Some(Box::new(io::Cursor::new(input))),
            &mut out,
            &mut io::sink(),
        )
        .unwrap();
    assert_eq!(status, ExecStatus::Exited(0));
    assert_eq!(String::from_utf8(out).unwrap().trim(), "4194304");
    assert_eq!(run(&mut client, &sh("exit 5")).0, ExecStatus::Exited(5));
}
