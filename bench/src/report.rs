//! The report every section fills: one markdown table, what was skipped and why, and notes
//! (printed, and written to target/bench/report.md); and the SVG plot of per-period times,
//! written by hand.

use std::fmt::Write as _;

use crate::util::Summary;

/// A row of the results table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub figure: String,
    pub canto: String,
    pub qemu: String,
    /// QEMU ÷ Canto of the medians, or the figure against its target.
    pub ratio: String,
    pub target: String,
    pub note: String,
}

#[derive(Debug, Default)]
pub struct Table {
    pub sections: Vec<(String, Vec<Row>)>,
}

impl Table {
    pub fn section(&mut self, title: &str) {
        self.sections.push((title.to_string(), Vec::new()));
    }

    pub fn row(&mut self, row: Row) {
        if self.sections.is_empty() {
            self.section("results");
        }
        self.sections.last_mut().expect("a section").1.push(row);
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| figure | Canto | QEMU | QEMU ÷ Canto | target | note |\n|---|---|---|---|---|---|"
        );
        for (title, rows) in &self.sections {
            let _ = writeln!(out, "| **{title}** | | | | | |");
            for r in rows {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} |",
                    r.figure, r.canto, r.qemu, r.ratio, r.target, r.note
                );
            }
        }
        out
    }
}

/// What one run of the harness found: the table, in section order, and the lists under it.
#[derive(Debug, Default)]
pub struct Report {
    pub table: Table,
    /// What did not run, with the reason.
    pub skipped: Vec<String>,
    /// Failures and observations that are not figures.
    pub notes: Vec<String>,
}

impl Report {
    /// Starts a new section of the table; the rows that follow go into it.
    pub fn section(&mut self, title: &str) {
        self.table.section(title);
    }

    pub fn row(&mut self, row: Row) {
        self.table.row(row);
    }

    pub fn skip(&mut self, why: impl Into<String>) {
        self.skipped.push(why.into());
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// What the harness prints at the end: the table, then the skipped list and the notes.
    pub fn console(&self) -> String {
        let mut out = format!("\n{}\n", self.table.markdown());
        if !self.skipped.is_empty() {
            out.push_str("Skipped:\n");
            for s in &self.skipped {
                let _ = writeln!(out, "- {s}");
            }
        }
        for n in &self.notes {
            let _ = writeln!(out, "Note: {n}");
        }
        out
    }

    /// target/bench/report.md: a title, `host` (the list host::summary gives), the table, how to
    /// read it, then the skipped list and the notes.
    pub fn markdown(&self, host: &str) -> String {
        let mut out = String::from("# Canto benchmark report\n\n");
        out.push_str(host);
        out.push_str(&self.table.markdown());
        out.push_str("\nTimes are medians (min–max, n runs) measured in this one run; ratios are QEMU ÷ Canto of the medians (above 1: Canto is faster or smaller). See docs/benchmarks.md for what each figure means.\n\n![per-period times](pacing.svg)\n");
        if !self.skipped.is_empty() {
            out.push_str("\n## Skipped\n\n");
            for s in &self.skipped {
                let _ = writeln!(out, "- {s}");
            }
        }
        if !self.notes.is_empty() {
            out.push_str("\n## Notes\n\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }
}

/// "median (min–max)" with a unit and a scale.
pub fn fmt_summary(s: Option<Summary>, scale: f64, unit: &str, digits: usize) -> String {
    match s {
        Some(s) if s.n > 1 => format!(
            "{:.d$} {unit} ({:.d$}–{:.d$}, n={})",
            s.median * scale,
            s.min * scale,
            s.max * scale,
            s.n,
            d = digits
        ),
        Some(s) => format!("{:.d$} {unit} (n=1)", s.median * scale, d = digits),
        None => "—".to_string(),
    }
}

/// QEMU ÷ Canto of two medians.
pub fn fmt_ratio(canto: Option<Summary>, qemu: Option<Summary>) -> String {
    match (canto, qemu) {
        (Some(c), Some(q)) if c.median > 0.0 => format!("{:.2}×", q.median / c.median),
        _ => "—".to_string(),
    }
}

/// One line of a plot: name, colour, stroke width, (x, y) points.
pub type Series<'a> = (&'a str, &'a str, f64, Vec<(f64, f64)>);

/// A line plot of several series of (x, y) points.
pub struct Plot<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series<'a>>,
}

fn nice_step(range: f64, ticks: f64) -> f64 {
    let raw = (range / ticks).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let step = if norm < 1.5 {
        1.0
    } else if norm < 3.0 {
        2.0
    } else if norm < 7.0 {
        5.0
    } else {
        10.0
    };
    step * mag
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Plot<'_> {
    pub fn svg(&self) -> String {
        let (w, h) = (960.0, 420.0);
        let (left, right, top, bottom) = (70.0, 20.0, 40.0, 60.0);
        let points = self.series.iter().flat_map(|s| s.3.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0f64, 0.0f64);
        for &(x, y) in points {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x0 > x1 {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 - x0 < 1e-9 {
            x1 = x0 + 1.0;
        }
        if y1 - y0 < 1e-9 {
            y1 = y0 + 1.0;
        }
        let ystep = nice_step(y1 - y0, 6.0);
        y0 = (y0 / ystep).floor() * ystep;
        y1 = (y1 / ystep).ceil() * ystep;
        let xstep = nice_step(x1 - x0, 10.0);
        let px = |x: f64| left + (x - x0) / (x1 - x0) * (w - left - right);
        let py = |y: f64| top + (y1 - y) / (y1 - y0) * (h - top - bottom);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
            w / 2.0,
            esc(self.title)
        );
        // Grid and ticks.
        let mut y = y0;
        while y <= y1 + ystep * 0.01 {
            let yy = py(y);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{}" stroke-width="1"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                w - right,
                if y.abs() < ystep * 0.01 {
                    "#888"
                } else {
                    "#e4e4e4"
                },
                left - 6.0,
                yy + 4.0,
                trim_num(y)
            );
            y += ystep;
        }
        let mut x = (x0 / xstep).ceil() * xstep;
        while x <= x1 + xstep * 0.01 {
            let xx = px(x);
            let _ = writeln!(
                s,
                r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#f0f0f0"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                h - bottom,
                h - bottom + 16.0,
                trim_num(x)
            );
            x += xstep;
        }
        let _ = writeln!(
            s,
            r##"<rect x="{left}" y="{top}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
            w - left - right,
            h - top - bottom
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            left + (w - left - right) / 2.0,
            h - 18.0,
            esc(self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
            top + (h - top - bottom) / 2.0,
            top + (h - top - bottom) / 2.0,
            esc(self.y_label)
        );
        for (i, (name, color, width, pts)) in self.series.iter().enumerate() {
            let mut path = String::new();
            for (k, &(x, y)) in pts.iter().enumerate() {
                let _ = write!(
                    path,
                    "{}{:.1},{:.1}",
                    if k == 0 { "M" } else { " L" },
                    px(x),
                    py(y)
                );
            }
            let _ = writeln!(
                s,
                r#"<path d="{path}" fill="none" stroke="{color}" stroke-width="{width}" opacity="0.85"/>"#
            );
            let ly = top + 14.0 + 16.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                left + 12.0,
                left + 32.0,
                left + 38.0,
                ly + 4.0,
                esc(name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn trim_num(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_plots_render() {
        let mut t = Table::default();
        t.section("boot");
        t.row(Row {
            figure: "x".into(),
            canto: "1 ms".into(),
            ..Row::default()
        });
        let md = t.markdown();
        assert!(md.contains("| **boot** |"));
        assert!(md.contains("| x | 1 ms |"));
        let c = Summary::of(&[1.0, 2.0, 3.0]);
        let q = Summary::of(&[4.0]);
        assert_eq!(fmt_ratio(c, q), "2.00×");
        assert_eq!(fmt_summary(c, 1e3, "ms", 0), "2000 ms (1000–3000, n=3)");
        let mut report = Report::default();
        report.section("boot");
        report.row(Row {
            figure: "y".into(),
            ..Row::default()
        });
        report.skip("QEMU: not found");
        report.note("a run failed");
        let md = report.markdown("- host: here\n\n");
        assert!(md.starts_with("# Canto benchmark report\n\n- host: here\n\n| figure |"));
        assert!(md.contains("| **boot** | | | | | |\n| y |"));
        assert!(md.contains("\n## Skipped\n\n- QEMU: not found\n"));
        assert!(md.contains("\n## Notes\n\n- a run failed\n"));
        let console = report.console();
        assert!(console.contains("Skipped:\n- QEMU: not found\nNote: a run failed\n"));
        let svg = Plot {
            title: "t <1>",
            x_label: "x",
            y_label: "y",
            series: vec![("a", "#000", 1.0, vec![(0.0, -1.0), (1.0, 2.0)])],
        }
        .svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;1&gt;"));
    }
}
