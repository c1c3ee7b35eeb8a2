//! The record of a run: the table on stdout, results.json, the ratio plot and the results
//! section of docs/benchmarks.md.

use crate::machine::Machine;
use crate::{fmt_num, Case};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;

/// Everything one `blobfs bench` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub quick: bool,
    /// UTC, "2026-11-25 16:40".
    pub date: String,
    pub elapsed_s: f64,
    /// Seconds per group.
    pub groups: Vec<(String, f64)>,
    pub machine: Machine,
    pub cases: Vec<Case>,
    pub failures: Vec<(String, String)>,
}

/// The current UTC time as "YYYY-MM-DD HH:MM".
pub fn now_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A plain-text table of every case.
pub fn table(run: &Run) -> String {
    let mut rows = vec![[
        "case".to_string(),
        "ours".into(),
        "baseline".into(),
        "unit".into(),
        "ratio".into(),
        "target".into(),
        "status".into(),
    ]];
    for c in &run.cases {
        rows.push([
            c.name.clone(),
            fmt_num(c.ours),
            fmt_num(c.baseline),
            c.unit.clone(),
            format!("{:.2}", c.ratio()),
            c.target.map_or("-".into(), |t| format!(">= {t}")),
            c.status().into(),
        ]);
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.len());
        }
    }
    let mut s = String::new();
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(j, (c, w))| {
                if j == 0 || j == 3 || j == 6 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        let _ = writeln!(s, "{}", cells.join("  ").trim_end());
        if i == 0 {
            let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
            let _ = writeln!(s, "{}", "-".repeat(total));
        }
    }
    for (what, why) in &run.failures {
        let _ = writeln!(s, "FAILED {what}: {why}");
    }
    s
}

/// A horizontal bar chart of the ratios (log scale, 1.0 marked), one bar per case, its
/// target as a tick; green where the target is met, red where missed, grey without one.
pub fn plot(run: &Run, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let n = run.cases.len().max(1);
    let height = 80 + 24 * n as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_ratio = run
        .cases
        .iter()
        .flat_map(|c| [c.ratio(), c.target.unwrap_or(1.0)])
        .fold(2.0f64, f64::max)
        * 1.2;
    let min_ratio = run
        .cases
        .iter()
        .map(|c| c.ratio())
        .filter(|r| *r > 0.0)
        .fold(0.5f64, f64::min)
        * 0.8;
    let title = format!(
        "BlobFS / baseline, {} run {} ({} cores, {})",
        if run.quick { "quick" } else { "full" },
        run.date,
        run.machine.cores,
        run.machine.work_fs
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(240)
        .build_cartesian_2d((min_ratio..max_ratio).log_scale(), 0..n)?;
    let names: Vec<String> = run.cases.iter().map(|c| c.name.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|i| names.get(*i).cloned().unwrap_or_default())
        .x_desc("ratio (above 1: BlobFS better)")
        .draw()?;
    for (i, c) in run.cases.iter().enumerate() {
        let color = match c.status() {
            "ok" => RGBColor(60, 160, 80),
            "MISS" => RGBColor(200, 60, 60),
            _ => RGBColor(140, 140, 140),
        };
        let r = c.ratio().max(min_ratio);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(min_ratio, i), (r, i + 1)],
            color.filled(),
        )))?;
        if let Some(t) = c.target {
            chart.draw_series(std::iter::once(PathElement::new(
                vec![(t, i), (t, i + 1)],
                BLACK.stroke_width(2),
            )))?;
        }
    }
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(1.0, 0), (1.0, n)],
        BLUE.stroke_width(1),
    )))?;
    root.present().context("writing the SVG")?;
    Ok(())
}

const BEGIN: &str = "<!-- bench-results:begin (written by `blobfs bench`; edits here are lost) -->";
const END: &str = "<!-- bench-results:end -->";

/// Replaces the results section of `docs` (between the markers; appended if missing).
pub fn update_docs(run: &Run, docs: &Path, svg: &Path) -> Result<()> {
    let old = std::fs::read_to_string(docs).unwrap_or_else(|_| {
        "# Benchmarks\n\nWritten by `make bench` (`blobfs bench`).\n\n".to_string()
    });
    let section = results_markdown(run, docs, svg);
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{}{}", &old[..b], section, &old[e + END.len()..])
        }
        _ => format!("{}\n{}\n", old.trim_end(), section),
    };
    std::fs::write(docs, new)?;
    Ok(())
}

fn results_markdown(run: &Run, docs: &Path, svg: &Path) -> String {
    let m = &run.machine;
    let mut s = String::new();
    let _ = writeln!(s, "{BEGIN}");
    let _ = writeln!(
        s,
        "\n## Results ({} run, {} UTC)\n",
        if run.quick { "quick" } else { "full" },
        run.date
    );
    let _ = writeln!(
        s,
        "Machine: {} cores ({}), {} GiB RAM, Linux {}, {}; work directory on {}; {}.\n\
         The whole run took {:.0} s.\n",
        m.cores, m.cpu, m.mem_gib, m.kernel, m.os, m.work_fs, m.fio, run.elapsed_s
    );
    if let Some(rel) = relative(docs, svg) {
        let _ = writeln!(s, "![ratios]({rel})\n");
    }
    let _ = writeln!(
        s,
        "| case | ours | baseline | unit | ratio | target | status |\n|---|---:|---:|---|---:|---:|---|"
    );
    for c in &run.cases {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} | {} | {} |",
            c.name,
            fmt_num(c.ours),
            fmt_num(c.baseline),
            c.unit,
            c.ratio(),
            c.target.map_or("-".into(), |t| format!("≥ {t}")),
            c.status()
        );
    }
    for (what, why) in &run.failures {
        let _ = writeln!(s, "\nFailed: {what}: {}", why.replace('\n', " "));
    }
    let _ = writeln!(s, "\nHow each figure was produced:\n");
    for c in &run.cases {
        let _ = write!(
            s,
            "- `{}`: ours: {}; baseline: {}",
            c.name, c.ours_how, c.baseline_how
        );
        if !c.note.is_empty() {
            let _ = write!(s, " ({})", c.note);
        }
        let _ = writeln!(s);
    }
    let _ = write!(s, "\n{END}");
    s
}

/// `target` relative to the directory of `from`, when both are relative paths.
fn relative(from: &Path, target: &Path) -> Option<String> {
    let from_dir = from.parent().unwrap_or(Path::new(""));
    if from.is_absolute() || target.is_absolute() {
        return Some(target.display().to_string());
    }
    let ups = from_dir.components().count();
    let mut s = "../".repeat(ups);
    s.push_str(&target.display().to_string());
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Better;

    fn case(name: &str, ours: f64, base: f64, better: Better, target: Option<f64>) -> Case {
        Case {
            group: "g".into(),
            name: name.into(),
            ours,
            baseline: base,
            unit: "IOPS".into(),
            better,
            target,
            ours_how: "a".into(),
            baseline_how: "b".into(),
            note: String::new(),
        }
    }

    fn run_of(cases: Vec<Case>) -> Run {
        Run {
            quick: true,
            date: "2026-11-25 16:00".into(),
            elapsed_s: 1.0,
            groups: vec![],
            machine: Machine::probe(Path::new("/")),
            cases,
            failures: vec![("x".into(), "why".into())],
        }
    }

    #[test]
    fn ratios_and_status() {
        let a = case("a", 95.0, 100.0, Better::Higher, Some(0.95));
        assert_eq!(a.status(), "ok");
        assert!(a
            .line()
            .starts_with("bench: case=a ours=95.0 baseline=100 unit=IOPS ratio=0.95"));
        let b = case("b", 200.0, 100.0, Better::Lower, Some(1.0));
        assert_eq!(b.ratio(), 0.5);
        assert_eq!(b.status(), "MISS");
        assert_eq!(case("c", 1.0, 0.0, Better::Higher, None).ratio(), 0.0);
        assert_eq!(case("c", 1.0, 1.0, Better::Higher, None).status(), "-");
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn docs_section_is_replaced_not_duplicated() {
        let dir = tempfile::tempdir().unwrap();
        let docs = dir.path().join("b.md");
        std::fs::write(&docs, "# Benchmarks\n\nintro\n").unwrap();
        let svg = dir.path().join("r.svg");
        let run = run_of(vec![case("a", 1.0, 2.0, Better::Higher, Some(1.0))]);
        update_docs(&run, &docs, &svg).unwrap();
        update_docs(&run, &docs, &svg).unwrap();
        let s = std::fs::read_to_string(&docs).unwrap();
        assert_eq!(s.matches(BEGIN).count(), 1);
        assert!(s.starts_with("# Benchmarks\n\nintro\n"));
        assert!(s.contains("| a | 1.000 | 2.000 | IOPS | 0.50 | ≥ 1 | MISS |"));
        assert!(s.contains("Failed: x: why"));
        plot(&run, &svg).unwrap();
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
        let t = table(&run);
        assert!(t.contains("MISS") && t.contains("FAILED x: why"));
    }
}
