//! "micro-benchmarks": the criterion medians `cargo bench -p canto-bench --bench micro` left
//! under `CRITERION_HOME` (benches/micro.rs measures them; this only reads them).

use std::path::Path;

use crate::config::Config;
use crate::report::{Report, Row};

pub fn run(cfg: &Config, report: &mut Report) {
    if !cfg.micro_enabled {
        report.skip("micro-benchmarks: BENCH_NO_MICRO is set");
        return;
    }
    rows(report, &cfg.criterion_home);
}

/// `point_estimate` of the median in a criterion estimates.json (nanoseconds).
fn criterion_median(home: &Path, id: &str) -> Option<f64> {
    let text = std::fs::read_to_string(home.join(id).join("new/estimates.json")).ok()?;
    let median = &text[text.find("\"median\"")?..];
    let at = median.find("\"point_estimate\":")? + "\"point_estimate\":".len();
    let rest = &median[at..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

fn rows(report: &mut Report, home: &Path) {
    let ids = [
        (
            "control/pcm_info",
            "PCM_INFO request (1 stream): kick → event loop → reply in the used ring",
        ),
        (
            "control/set_params",
            "SET_PARAMS request: kick → event loop → reply in the used ring",
        ),
        (
            "parse/set_params_decode",
            "SetParams::decode alone (24 bytes)",
        ),
        (
            "tx/period_1920B",
            "TX step per 10 ms period (1920 B), unpaced backend, amortized",
        ),
        ("tx/memcpy_1920B", "memcpy of 1920 B (reference)"),
        (
            "gain/unity_s16_1920B",
            "period copy through the volume at 0 dB (plain copy), 1920 B",
        ),
        (
            "gain/minus6db_s16_1920B",
            "period copy through the volume at -6 dB, S16, 1920 B",
        ),
        (
            "gain/minus6db_float_1920B",
            "period copy through the volume at -6 dB, FLOAT, 1920 B",
        ),
        (
            "gain/mute_s16_1920B",
            "muted period (silence, no read), 1920 B",
        ),
    ];
    let found: Vec<(&str, &str, Option<f64>)> = ids
        .iter()
        .map(|(id, what)| (*id, *what, criterion_median(home, id)))
        .collect();
    if found.iter().all(|f| f.2.is_none()) {
        report.skip(format!(
            "micro-benchmarks: no criterion results under {} (run `cargo bench -p canto-bench --bench micro`, as `make bench` does)",
            home.display()
        ));
        return;
    }
    report.section(
        "micro-benchmarks (criterion medians, `cargo bench -p canto-bench --bench micro`)",
    );
    let memcpy = found[4].2;
    for (id, what, ns) in &found {
        let ratio = match (*id, ns, memcpy) {
            ("tx/period_1920B", Some(t), Some(m)) if *t > 0.0 => {
                format!("memcpy ÷ step: {:.3}", m / t)
            }
            _ => String::new(),
        };
        report.row(Row {
            figure: what.to_string(),
            canto: ns.map_or("—".into(), |v| {
                if v >= 1e4 {
                    format!("{:.2} µs", v / 1e3)
                } else {
                    format!("{v:.0} ns")
                }
            }),
            ratio,
            note: format!("`{id}`"),
            ..Row::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_criterion_medians() {
        let dir = std::env::temp_dir().join(format!("canto-bench-{}", std::process::id()));
        let at = dir.join("g/b/new");
        std::fs::create_dir_all(&at).unwrap();
        std::fs::write(
            at.join("estimates.json"),
            r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":3.0},"point_estimate":2.0,"standard_error":0.1},"median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":1.0,"upper_bound":2.0},"point_estimate":1.5,"standard_error":0.1}}"#,
        )
        .unwrap();
        assert_eq!(criterion_median(&dir, "g/b"), Some(1.5));
        assert_eq!(criterion_median(&dir, "g/none"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
