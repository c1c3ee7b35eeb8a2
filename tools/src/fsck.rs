//! `blobfs fsck`: check (and repair) a blobstore and the filesystem in it, offline.
//!
//! Exit codes as fsck(8): 0 no errors, 1 errors corrected, 4 errors left uncorrected,
//! 8 operational error (cannot open, not a blobstore, I/O error).

use crate::device::{Target, LOCK_WAIT};
use anyhow::{Context, Result};
use blobfs::{check_fs, is_blobfs, repair_fs, FsFinding, Severity};
use blobstore::check::Sharing;
use blobstore::fsck::{check_store, repair_store};
use blobstore::{Blobstore, OpenOptions};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// fsck(8) exit codes.
pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_CORRECTED: u8 = 1;
pub const EXIT_UNCORRECTED: u8 = 4;
pub const EXIT_OPERATIONAL: u8 = 8;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image file or device holding the store.
    pub path: String,
    /// Check only, change nothing (the default when neither -n nor -y is given).
    #[arg(short = 'n', long = "no-action", conflicts_with = "yes")]
    pub no: bool,
    /// Repair everything that can be repaired without guessing file contents.
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
    /// Same as -y (fsck(8)'s automatic repair).
    #[arg(short = 'a', short_alias = 'p', hide = true, conflicts_with = "no")]
    pub auto: bool,
    /// Accepted for fsck(8) compatibility (the check always runs in full).
    #[arg(short = 'f', hide = true)]
    pub force: bool,
    /// Print the findings and the outcome as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct JsonFinding {
    level: &'static str,
    layer: &'static str,
    kind: &'static str,
    detail: String,
    repairable: bool,
    repaired: bool,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    path: String,
    mode: &'static str,
    filesystem: bool,
    findings: Vec<JsonFinding>,
    errors: usize,
    notes: usize,
    repaired: usize,
    remaining: usize,
    repairs: Vec<String>,
    /// Blob clusters whose owner has children (clones read through them), and those
    /// whose owner has none, as `blobfs df` counts them; after repairs, of the repaired
    /// state. Absent when no state could be replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_clusters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shared_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exclusive_clusters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exclusive_bytes: Option<u64>,
    #[serde(skip)]
    cluster_size: u64,
    exit_code: u8,
    summary: String,
}

impl Report {
    fn set_sharing(&mut self, s: Sharing, cluster_size: u64) {
        self.cluster_size = cluster_size;
        self.shared_clusters = Some(s.shared_clusters);
        self.shared_bytes = Some(s.shared_clusters * cluster_size);
        self.exclusive_clusters = Some(s.exclusive_clusters);
        self.exclusive_bytes = Some(s.exclusive_clusters * cluster_size);
    }
}

/// Runs fsck and returns the process exit code (errors are reported, as code 8).
pub fn main(args: &Args, out: &mut dyn Write) -> ExitCode {
    let mut report = Report {
        path: args.path.clone(),
        mode: if args.yes || args.auto {
            "repair"
        } else {
            "check"
        },
        ..Report::default()
    };
    let code = match run(args, &mut report) {
        Ok(code) => code,
        Err(e) => {
            report.summary = format!("{e:#}");
            EXIT_OPERATIONAL
        }
    };
    report.exit_code = code;
    let printed = if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)
            .map_err(anyhow::Error::from)
            .and_then(|()| writeln!(out).map_err(anyhow::Error::from))
    } else {
        print_human(&report, out)
    };
    if code == EXIT_OPERATIONAL && !args.json {
        eprintln!("blobfs fsck: error: {}", report.summary);
    }
    if printed.is_err() && code == EXIT_CLEAN {
        return ExitCode::from(EXIT_OPERATIONAL);
    }
    ExitCode::from(code)
}

fn print_human(r: &Report, out: &mut dyn Write) -> Result<()> {
    for f in &r.findings {
        let tag = match (f.level, f.repaired) {
            (_, true) => "fixed",
            ("error", false) => "ERROR",
            _ => "note",
        };
        writeln!(out, "{tag:5} {} {}: {}", f.layer, f.kind, f.detail)?;
    }
    if r.exit_code != EXIT_OPERATIONAL {
        if let (Some(shared), Some(exclusive)) = (r.shared_clusters, r.exclusive_clusters) {
            let s = Sharing {
                shared_clusters: shared,
                exclusive_clusters: exclusive,
                ..Sharing::default()
            };
            writeln!(out, "{}", crate::df::sharing_line(&s, r.cluster_size))?;
        }
        writeln!(out, "{}: {}", r.path, r.summary)?;
    }
    Ok(())
}

/// A spinner with a message, on a terminal only.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new(json: bool) -> Progress {
        if json || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        Progress(Some(pb))
    }

    fn step(&self, msg: &str) {
        if let Some(pb) = &self.0 {
            pb.set_message(msg.to_string());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}

fn push_store(report: &mut Report, f: &blobstore::recovery::Finding, repaired: bool) {
    report.findings.push(JsonFinding {
        level: if f.note { "note" } else { "error" },
        layer: "store",
        kind: f.kind,
        detail: f.detail.clone(),
        repairable: f.repairable,
        repaired,
    });
}

fn push_fs(report: &mut Report, f: &FsFinding, repaired: bool) {
    report.findings.push(JsonFinding {
        level: match f.severity {
            Severity::Error => "error",
            Severity::Note => "note",
        },
        layer: "fs",
        kind: f.kind,
        detail: f.detail.clone(),
        repairable: f.repairable(),
        repaired,
    });
}

fn run(args: &Args, report: &mut Report) -> Result<u8> {
    let repair = args.yes || args.auto;
    let target = Target::parse(&args.path)?;
    let _lock = target.lock(repair, LOCK_WAIT)?;
    let dev = target.open_store_device(!repair)?;
    let progress = Progress::new(args.json);
    progress.step("reading the superblocks and replaying the metadata log");
    let sc = check_store(&dev).with_context(|| format!("{}: cannot check", target.describe()))?;
    let store_errors = sc.errors();
    let store_repairable = sc.repairable();
    if let (Some(s), Some(r)) = (sc.sharing, &sc.replayed) {
        report.set_sharing(s, u64::from(r.sb.cluster_size));
    }
    // The store: repaired (written as a fresh checkpoint), or built read-only from what
    // the lenient replay recovered, so the filesystem can be checked either way.
    let mut store_done = false;
    let store: Option<Blobstore> = if repair && sc.needs_repair() && store_repairable {
        progress.step("repairing the store");
        let findings = sc.findings.clone();
        let (store, done) = repair_store(std::sync::Arc::clone(&dev), sc)
            .with_context(|| format!("{}: store repair failed", target.describe()))?;
        for f in &findings {
            push_store(report, f, true);
        }
        report.repairs.extend(done);
        store_done = true;
        Some(store)
    } else {
        for f in &sc.findings {
            push_store(report, f, false);
        }
        match (sc.fatal.is_some(), sc.replayed) {
            (false, Some(r)) => {
                let qp = dev.open_qpair(16)?;
                Some(Blobstore::from_replayed(
                    std::sync::Arc::clone(&dev),
                    OpenOptions {
                        read_only: !(repair && store_errors == 0),
                        background_checkpoint: false,
                        ..OpenOptions::default()
                    },
                    qp,
                    r,
                )?)
            }
            _ => None,
        }
    };
    let mut fs_errors = 0usize;
    let mut fs_repaired = 0usize;
    let mut fs_left = 0usize;
    if let Some(store) = &store {
        report.filesystem = is_blobfs(store);
        if report.filesystem {
            progress.step("checking the filesystem");
            let first = check_fs(store)?.findings;
            fs_errors = first
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count();
            let writable = !store.is_read_only();
            if repair && writable {
                // Fixes can reveal others (a reattached directory changes link counts):
                // repeat until nothing repairable is left.
                let mut fixed: Vec<FsFinding> = Vec::new();
                let mut current = first.clone();
                for _ in 0..6 {
                    let todo: Vec<FsFinding> =
                        current.iter().filter(|f| f.repairable()).cloned().collect();
                    if todo.is_empty() {
                        break;
                    }
                    progress.step("repairing the filesystem");
                    report.repairs.extend(repair_fs(store, &todo)?);
                    fixed.extend(todo);
                    current = check_fs(store)?.findings;
                }
                for f in &fixed {
                    push_fs(report, f, true);
                }
                for f in current.iter().filter(|f| !fixed.contains(f)) {
                    push_fs(report, f, false);
                }
                fs_repaired = fixed
                    .iter()
                    .filter(|f| f.severity == Severity::Error)
                    .count();
                fs_left = current
                    .iter()
                    .filter(|f| f.severity == Severity::Error)
                    .count();
            } else {
                for f in &first {
                    push_fs(report, f, false);
                }
                fs_left = fs_errors;
            }
        }
    }
    // Repairs can change the figures (a deleted orphan): report the repaired state.
    if let Some(store) = &store {
        if !report.repairs.is_empty() {
            report.set_sharing(store.cluster_sharing(), store.cluster_size());
        }
    }
    // After a repair, the store's own check (memory and device) must agree. Without
    // repairs nothing is written (dropping a store does no I/O).
    if let Some(store) = store {
        if !store.is_read_only() && !report.repairs.is_empty() {
            progress.step("verifying");
            let c = store.check()?;
            if !c.is_clean() {
                for p in c.problems {
                    report.findings.push(JsonFinding {
                        level: "error",
                        layer: "store",
                        kind: "after-repair",
                        detail: p,
                        repairable: false,
                        repaired: false,
                    });
                    fs_left += 1;
                }
            }
            store.close()?;
        }
    }
    let store_left = if store_done { 0 } else { store_errors };
    report.errors = store_errors + fs_errors;
    report.notes = report.findings.iter().filter(|f| f.level == "note").count();
    report.repaired = if store_done { store_errors } else { 0 } + fs_repaired;
    report.remaining = store_left + fs_left;
    let code = if report.errors == 0 && report.remaining == 0 {
        EXIT_CLEAN
    } else if report.remaining == 0 {
        EXIT_CORRECTED
    } else {
        EXIT_UNCORRECTED
    };
    report.summary = match code {
        EXIT_CLEAN => {
            if report.notes > 0 && !repair {
                format!(
                    "clean ({} note(s): normal after a crash; a mount or fsck -y tidies them)",
                    report.notes
                )
            } else {
                "clean".into()
            }
        }
        EXIT_CORRECTED => format!("{} error(s) found, all repaired", report.errors),
        _ if repair => format!(
            "{} error(s) found, {} repaired, {} left that cannot be repaired safely",
            report.errors, report.repaired, report.remaining
        ),
        _ => format!(
            "{} error(s) found; run with -y to repair {} of them",
            report.errors,
            report
                .findings
                .iter()
                .filter(|f| f.level == "error" && f.repairable)
                .count()
        ),
    };
    Ok(code)
}
