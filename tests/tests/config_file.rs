//! `canto --config FILE`: a JSON or TOML file boots the driver-guest, an option given on the
//! command line overrides it, and a bad file (missing, neither JSON nor TOML, an unknown key, a
//! wrong type) ends Canto with one clear line.

use std::path::PathBuf;

use canto_tests::{driver_guest_to_run, Canto, RunOutput};

/// A config file in the temporary directory, removed when dropped.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(name: &str, text: &str) -> Self {
        let path = std::env::temp_dir().join(format!("canto-config-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write the config file");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The guest printed a command line ending in `arg`.
fn guest_cmdline_ends_with(out: &RunOutput, arg: &str) -> bool {
    out.stdout
        .lines()
        .any(|l| l.starts_with("DG cmdline:") && l.trim_end().ends_with(arg))
}

fn run(args: &[&str]) -> RunOutput {
    args.iter()
        .fold(Canto::new(), |canto, a| canto.arg(a))
        .timeout(std::time::Duration::from_secs(120))
        .run()
}

/// The driver-guest's `hello` test in TOML: 64 MiB as a size string, no sound, no rng.
fn hello_toml(elf: &str) -> String {
    format!(
        "kernel = {elf:?}\nmemory = \"64M\"\ncmdline = \"test=hello\"\nserial = \"stdio\"\n\n\
         [devices]\nrng = false\nsound = \"off\"\n"
    )
}

#[test]
fn a_toml_file_boots_the_guest() {
    let Some(elf) = driver_guest_to_run() else {
        return;
    };
    let file = ConfigFile::new("hello.toml", &hello_toml(elf.to_str().unwrap()));
    let out = run(&["--config", file.path()]);
    out.expect_line("DG PASS hello");
    assert!(guest_cmdline_ends_with(&out, " test=hello"), "{out:#?}");
}

#[test]
fn a_json_file_boots_the_guest() {
    let Some(elf) = driver_guest_to_run() else {
        return;
    };
    let json = format!(
        r#"{{"kernel": {:?}, "memory": 67108864, "cmdline": "test=hello",
            "devices": {{"rng": false, "sound": {{"device": {{"backend": "null"}}}}}}}}"#,
        elf.to_str().unwrap()
    );
    let file = ConfigFile::new("hello.json", &json);
    run(&["--config", file.path()]).expect_line("DG PASS hello");
}

#[test]
fn an_option_on_the_command_line_overrides_the_file() {
    let Some(elf) = driver_guest_to_run() else {
        return;
    };
    // The file says `test=hello` with no rng; the command line asks for the rng test and device.
    let file = ConfigFile::new("override.toml", &hello_toml(elf.to_str().unwrap()));
    let out = run(&["--config", file.path(), "--cmdline", "test=rng"]);
    assert!(guest_cmdline_ends_with(&out, " test=rng"), "{out:#?}");
    assert!(
        out.stdout.contains("DG FAIL rng"),
        "no rng device: {out:#?}"
    );
    let with_rng = ConfigFile::new(
        "override-rng.toml",
        &hello_toml(elf.to_str().unwrap()).replace("rng = false", "rng = true"),
    );
    run(&["--config", with_rng.path(), "--cmdline", "test=rng"]).expect_line("DG PASS rng");
}

/// Canto fails with exactly one stderr line, which contains every one of `wanted`.
fn one_line_error(args: &[&str], wanted: &[&str]) {
    let out = run(args);
    assert!(!out.success() && !out.timed_out, "{out:#?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "not one line: {out:#?}");
    for w in wanted {
        assert!(lines[0].contains(w), "'{w}' missing: {}", lines[0]);
    }
    assert!(lines[0].starts_with("canto: "), "{}", lines[0]);
}

#[test]
fn a_missing_file() {
    one_line_error(
        &["--config", "/nonexistent/vm.toml"],
        &[
            "cannot read the config file '/nonexistent/vm.toml'",
            "No such file",
        ],
    );
}

#[test]
fn a_file_that_is_neither_json_nor_toml() {
    let toml = ConfigFile::new("garbage.toml", "this is = = not a VM\n");
    one_line_error(
        &["--config", toml.path()],
        &[toml.path(), "not valid TOML", "line 1"],
    );
    let json = ConfigFile::new("garbage.json", "{ \"kernel\": ");
    one_line_error(&["--config", json.path()], &[json.path(), "not valid JSON"]);
    let neither = ConfigFile::new("garbage.conf", "<vm><kernel/></vm>\n");
    one_line_error(&["--config", neither.path()], &["not valid TOML"]);
}

#[test]
fn an_unknown_key_is_named() {
    let toml = ConfigFile::new("unknown.toml", "kernel = \"/k\"\nvcpus = 2\n");
    one_line_error(
        &["--config", toml.path()],
        &["unknown field `vcpus`", "line 2"],
    );
    let json = ConfigFile::new(
        "unknown.json",
        r#"{"kernel": "/k", "devices": {"sound": {"device": {"backend": "null", "streams": 2}}}}"#,
    );
    one_line_error(
        &["--config", json.path()],
        &["devices.sound.device.streams: unknown field `streams`"],
    );
}

#[test]
fn a_wrong_type() {
    let toml = ConfigFile::new("type.toml", "kernel = \"/k\"\ncpus = \"two\"\n");
    one_line_error(
        &["--config", toml.path()],
        &["cpus: invalid type: string \"two\"", "line 2"],
    );
    let json = ConfigFile::new("type.json", r#"{"kernel": "/k", "memory": "lots"}"#);
    one_line_error(
        &["--config", json.path()],
        &["memory: 'lots' is not a size"],
    );
}
