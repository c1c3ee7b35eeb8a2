//! `blobfs bench`: every figure is a ratio against a baseline measured in the same run on
//! the same backing storage, because these machines are too noisy for absolute numbers to
//! mean anything from one run to the next.
//!
//! Groups (each a module): `blobio` (blob I/O on io_uring vs fio on the same file), `meta`
//! (blob and file create+sync vs ext4 on a loop device), `fuse` (fio on the mount vs ext4),
//! `rocksdb` (db_bench with `--fs_uri=blobfs://` vs db_bench on ext4) and `recovery` (load
//! time vs log length and device size); `paths` (one NVMe namespace through several device
//! paths, `--only paths --device A,B,...`) runs only when asked for. Each prints one line
//! per case as it finishes: `bench: case=NAME ours=X baseline=Y unit=U ratio=R`, and at the
//! end a table, then `bench/results.json`, an SVG plot of the ratios and the results section
//! of `docs/benchmarks.md` are written.

pub mod blobio;
pub mod ext4;
pub mod fio;
pub mod fuse;
pub mod machine;
pub mod meta;
pub mod paths;
pub mod recovery;
pub mod report;
pub mod rocksdb;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The benchmark groups, in the order they run.
pub const GROUPS: [&str; 5] = ["blobio", "meta", "fuse", "rocksdb", "recovery"];

/// Groups that run only when named in `--only`: they need options of their own (`paths`
/// needs `--device` and destroys what the devices hold).
pub const OPTIONAL_GROUPS: [&str; 1] = ["paths"];

/// Options of `blobfs bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Short runs on smaller files (about 3 minutes in all instead of 20): a smoke test of
    /// the benchmark, with noisier ratios.
    #[arg(long)]
    pub quick: bool,
    /// Groups to run, comma separated (default: all): blobio, meta, fuse, rocksdb, recovery;
    /// also paths, which runs only when named here.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Where backing files, loop-device images and mounts go (default: $TMPDIR or /tmp).
    /// Needs a few GiB free (about 1 GiB in --quick mode) and O_DIRECT support.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where to write results.json and ratios.svg (default: bench, or bench/quick with
    /// --quick, so a smoke run never replaces the recorded full results).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The Markdown file whose results section is replaced ("" to leave docs alone;
    /// default: docs/benchmarks.md for a full run, none with --quick).
    // Not clap's PathBuf parser: it refuses the empty value this option documents.
    #[arg(
        long,
        value_parser = clap::builder::TypedValueParser::map(
            clap::builder::OsStringValueParser::new(),
            PathBuf::from
        )
    )]
    pub docs: Option<PathBuf>,
    /// libblobfs_rocksdb.so for the db_bench cases (default: next to this binary, as
    /// `make bench` builds it).
    #[arg(long)]
    pub rocksdb_lib: Option<PathBuf>,
    /// Devices for the paths group (repeatable, comma separated), all reaching the same
    /// namespace: a block device, an NVMe generic char device (passthrough), pci:ADDR, a file
    /// or mem:SIZE. The first is the baseline of the ratios. Their contents are DESTROYED
    /// (raw writes over the first 256 MiB, 64 MiB with --quick). Only with --only paths.
    #[arg(long, value_name = "SPEC", value_delimiter = ',')]
    pub device: Vec<String>,
    /// Only affects paths: overwrite devices even if they hold a BlobFS store.
    #[arg(long)]
    pub force: bool,
}

/// What every group gets: where to work and how big to go.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// A fresh directory for this run (removed at the end).
    pub dir: PathBuf,
    pub quick: bool,
    /// The `blobfs` binary running this (for mounts in a child process).
    pub blobfs_bin: PathBuf,
    /// libblobfs_rocksdb.so, if found.
    pub rocksdb_lib: Option<PathBuf>,
}

impl Ctx {
    /// `full` normally, `quick` in quick mode.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick {
            quick
        } else {
            full
        }
    }
}

/// Whether bigger is better for a figure (IOPS, MB/s, ops/s) or smaller (µs/op, seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// One measured case: our figure, the baseline's, and what produced each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Case {
    /// Group (module) name, e.g. "blobio".
    pub group: String,
    /// Case name, unique in the run, e.g. "blobio-randread-4k-qd32".
    pub name: String,
    pub ours: f64,
    pub baseline: f64,
    /// Unit of both figures, e.g. "IOPS", "MB/s", "us/op", "ms".
    pub unit: String,
    pub better: Better,
    /// What the ratio should reach (issue 7's targets), if there is one.
    pub target: Option<f64>,
    /// What ran on our side and on the baseline side (commands or API calls), so a reader
    /// can reproduce the figure.
    pub ours_how: String,
    pub baseline_how: String,
    /// Anything that helps read the figure.
    #[serde(default)]
    pub note: String,
}

impl Case {
    /// ours/baseline when higher is better, baseline/ours when lower is: above 1 is better.
    pub fn ratio(&self) -> f64 {
        let r = match self.better {
            Better::Higher => self.ours / self.baseline,
            Better::Lower => self.baseline / self.ours,
        };
        if r.is_finite() {
            r
        } else {
            0.0
        }
    }

    /// "ok", "MISS" or "-" (no target).
    pub fn status(&self) -> &'static str {
        match self.target {
            Some(t) if self.ratio() >= t => "ok",
            Some(_) => "MISS",
            None => "-",
        }
    }

    /// The acceptance line.
    pub fn line(&self) -> String {
        let mut s = format!(
            "bench: case={} ours={} baseline={} unit={} ratio={:.2}",
            self.name,
            fmt_num(self.ours),
            fmt_num(self.baseline),
            self.unit,
            self.ratio()
        );
        if let Some(t) = self.target {
            s.push_str(&format!(" target={t} status={}", self.status()));
        }
        s
    }
}

/// Figures with as many decimals as they deserve.
pub fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

/// Collects cases and prints each line as it comes.
#[derive(Debug, Default)]
pub struct Results {
    pub cases: Vec<Case>,
    /// Groups or cases that could not run, with the reason (reported, never hidden).
    pub failures: Vec<(String, String)>,
}

impl Results {
    pub fn push(&mut self, case: Case) {
        println!("{}", case.line());
        let _ = std::io::stdout().flush();
        self.cases.push(case);
    }

    pub fn fail(&mut self, what: &str, why: String) {
        println!("bench: case={what} FAILED: {why}");
        self.failures.push((what.to_string(), why));
    }
}

/// Prints a progress note (stderr, so stdout stays the record).
pub fn note(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

/// Runs `blobfs bench`.
pub fn run(args: &Args) -> Result<()> {
    let started = Instant::now();
    let groups = select_groups(args)?;
    if groups.iter().any(|g| g == "paths") {
        // Refuse a wrong device before anything runs or is written.
        paths::check_devices(&args.device, args.force)?;
    }
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("blobfs-bench-")
        .tempdir_in(&base)
        .with_context(|| format!("making a work directory in {}", base.display()))?;
    let blobfs_bin = std::env::current_exe().context("finding the blobfs binary")?;
    let rocksdb_lib = args.rocksdb_lib.clone().or_else(|| {
        let p = blobfs_bin.with_file_name("libblobfs_rocksdb.so");
        p.exists().then_some(p)
    });
    let ctx = Ctx {
        dir: tmp.path().to_path_buf(),
        quick: args.quick,
        blobfs_bin,
        rocksdb_lib,
    };
    let machine = machine::Machine::probe(&ctx.dir);
    note(format!(
        "{} mode, groups {}, work directory {} ({}); {}",
        if args.quick { "quick" } else { "full" },
        groups.join(","),
        ctx.dir.display(),
        machine.work_fs,
        machine.summary()
    ));
    let mut results = Results::default();
    let mut timings = Vec::new();
    for g in &groups {
        let t = Instant::now();
        note(format!("group {g}"));
        let r = match g.as_str() {
            "blobio" => blobio::run(&ctx, &mut results),
            "meta" => meta::run(&ctx, &mut results),
            "fuse" => fuse::run(&ctx, &mut results),
            "rocksdb" => rocksdb::run(&ctx, &mut results),
            "recovery" => recovery::run(&ctx, &mut results),
            "paths" => paths::run(&ctx, &args.device, args.force, &mut results),
            _ => unreachable!("checked above"),
        };
        if let Err(e) = r {
            results.fail(g, format!("{e:#}"));
        }
        timings.push((g.clone(), t.elapsed()));
    }
    let elapsed = started.elapsed();
    let run = report::Run {
        quick: args.quick,
        date: report::now_utc(),
        elapsed_s: elapsed.as_secs_f64(),
        groups: timings
            .iter()
            .map(|(g, d)| (g.clone(), d.as_secs_f64()))
            .collect(),
        machine,
        cases: results.cases.clone(),
        failures: results.failures.clone(),
    };
    println!();
    print!("{}", report::table(&run));
    let out_dir = args.out.clone().unwrap_or_else(|| {
        if args.quick {
            PathBuf::from("bench/quick")
        } else {
            PathBuf::from("bench")
        }
    });
    let docs = args.docs.clone().unwrap_or_else(|| {
        if args.quick {
            PathBuf::new()
        } else {
            PathBuf::from("docs/benchmarks.md")
        }
    });
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let json = out_dir.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&run)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    let svg = out_dir.join("ratios.svg");
    report::plot(&run, &svg).with_context(|| format!("writing {}", svg.display()))?;
    let mut wrote = vec![json.display().to_string(), svg.display().to_string()];
    if !docs.as_os_str().is_empty() {
        report::update_docs(&run, &docs, &svg)
            .with_context(|| format!("updating {}", docs.display()))?;
        wrote.push(docs.display().to_string());
    }
    println!(
        "bench: {} cases, {} misses, {} failures in {}; wrote {}",
        run.cases.len(),
        run.cases.iter().filter(|c| c.status() == "MISS").count(),
        run.failures.len(),
        human_duration(elapsed),
        wrote.join(", ")
    );
    drop(tmp);
    if !run.failures.is_empty() {
        bail!(
            "{} benchmark group(s) or case(s) failed (see above)",
            run.failures.len()
        );
    }
    Ok(())
}

/// The groups `args` asks for, checked against the options they need: `paths` only when
/// named, with at least two `--device`, and `--device` only for it.
pub fn select_groups(args: &Args) -> Result<Vec<String>> {
    let groups: Vec<String> = if args.only.is_empty() {
        GROUPS.iter().map(|s| s.to_string()).collect()
    } else {
        for g in &args.only {
            if !GROUPS.contains(&g.as_str()) && !OPTIONAL_GROUPS.contains(&g.as_str()) {
                bail!(
                    "unknown group {g:?}: choose from {}, {}",
                    GROUPS.join(", "),
                    OPTIONAL_GROUPS.join(", ")
                );
            }
        }
        args.only.clone()
    };
    let paths = groups.iter().any(|g| g == "paths");
    if paths && args.device.len() < 2 {
        bail!(
            "the paths group needs at least two --device (the first is the baseline), e.g. \
             --device /dev/nvme0n1,/dev/ng0n1"
        );
    }
    if !paths && !args.device.is_empty() {
        bail!("--device is only used by the paths group: add --only paths");
    }
    Ok(groups)
}

/// "3m12s".
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Runs a command to completion, failing with its stderr if it fails.
pub fn run_cmd(cmd: &mut std::process::Command) -> Result<std::process::Output> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Whether `prog` is on PATH.
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            let f = d.join(prog);
            f.is_file()
        })
    })
}

/// Makes sure `path` exists as a file of exactly `size` bytes with every block written
/// (fio and our backend then read real data, not holes).
pub fn filled_file(path: &Path, size: u64) -> Result<()> {
    use std::io::Write as _;
    if std::fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return Ok(());
    }
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let chunk = vec![0xa5u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}
