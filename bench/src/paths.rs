//! `paths`: one NVMe namespace reached through several device paths, as ratios against the
//! first (`--device /dev/nvme0n1,/dev/ng0n1,pci:0000:00:05.0`).
//!
//! The question is what each path costs per command (the kernel block layer, io_uring
//! passthrough, our userspace driver), so every path drives the same bytes of the same
//! namespace with the same offsets, and nothing but the path differs. On the machines this
//! runs on the namespace is emulated (QEMU), where absolute figures say nothing about real
//! hardware; the ratios still show which path does less work per command.
//!
//! Raw device I/O through the driver's [`QueuePair`] API: one thread, one queue pair per
//! device, QD commands kept in flight (`wait`, then resubmit each finished command at once
//! with its buffer). Patterns: 4 KiB random read and write at QD1 and QD32, 128 KiB (at most
//! the smallest `max_transfer`) sequential read and write at QD8, over the first
//! min(capacity, 256 MiB; 64 MiB with --quick) bytes. The span is written once through the
//! first device before measuring, so reads hit written data even when the emulated
//! namespace is backed by a sparse file.
//!
//! Drift: per pattern, rounds of one run per device alternate the device order (forward,
//! then reverse), each run a ramp then a fixed measuring time; a device's figure is the
//! median of its runs. Every device is written raw: the group refuses a device that holds a
//! BlobFS store unless `--force`.

use crate::{fmt_num, note, Better, Case, Ctx, Results};
use anyhow::{anyhow, bail, ensure, Context, Result};
use blobstore::format::superblock::{SB_MAGIC, SB_SIZE};
use driver::{Device, Lba, Op, QueuePair};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KIB: u32 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Queue pair depth: the deepest pattern.
const MAX_QD: u32 = 32;

/// One I/O pattern, run on every device.
#[derive(Debug, Clone, Copy)]
struct Pattern {
    write: bool,
    random: bool,
    /// Transfer size; sequential patterns are clamped to the devices' `max_transfer`.
    bs: u32,
    qd: u32,
}

impl Pattern {
    /// "randread-4k-qd32".
    fn name(&self, bs: u32) -> String {
        let kind = match (self.random, self.write) {
            (true, false) => "randread",
            (true, true) => "randwrite",
            (false, false) => "seqread",
            (false, true) => "seqwrite",
        };
        format!("{kind}-{}k-qd{}", bs / KIB, self.qd)
    }

    /// IOPS for small random transfers, MB/s for large sequential ones.
    fn unit(&self) -> &'static str {
        ["MB/s", "IOPS"][usize::from(self.random)]
    }
}

const fn pat(write: bool, random: bool, bs: u32, qd: u32) -> Pattern {
    Pattern {
        write,
        random,
        bs,
        qd,
    }
}

const PATTERNS: [Pattern; 6] = [
    pat(false, true, 4 * KIB, 1),
    pat(false, true, 4 * KIB, 32),
    pat(true, true, 4 * KIB, 1),
    pat(true, true, 4 * KIB, 32),
    pat(false, false, 128 * KIB, 8),
    pat(true, false, 128 * KIB, 8),
];

/// How long and how much: from `--quick`, or tiny in unit tests.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Not counted at the start of each run (queues and caches settle).
    pub ramp: Duration,
    /// Counted after the ramp.
    pub measure: Duration,
    /// Runs per device and pattern; a device's figure is their median.
    pub rounds: usize,
    /// Bytes from the start of each device used at most.
    pub span: u64,
}

impl Timing {
    pub fn for_ctx(ctx: &Ctx) -> Timing {
        Timing {
            ramp: ctx.pick(Duration::from_secs(1), Duration::from_millis(500)),
            measure: ctx.pick(Duration::from_secs(4), Duration::from_secs(2)),
            rounds: ctx.pick(3, 1),
            span: ctx.pick(256 * MIB, 64 * MIB),
        }
    }
}

/// One path under test.
struct Dev {
    spec: String,
    label: String,
    dev: Arc<dyn Device>,
    qp: Box<dyn QueuePair>,
}

/// Runs the group on `specs` (the first is the baseline).
pub fn run(ctx: &Ctx, specs: &[String], force: bool, out: &mut Results) -> Result<()> {
    run_with(specs, force, &Timing::for_ctx(ctx), out)
}

/// Opens every device and refuses any holding a BlobFS store (unless `force`), so a typo in
/// `--device` fails before anything is written. [`run`] checks again when it opens them.
pub fn check_devices(specs: &[String], force: bool) -> Result<()> {
    open_all(specs, force).map(drop)
}

fn open_all(specs: &[String], force: bool) -> Result<Vec<Dev>> {
    ensure!(
        specs.len() >= 2,
        "the paths group needs at least two devices (the first is the baseline)"
    );
    let mut devs = Vec::with_capacity(specs.len());
    for (spec, label) in specs.iter().zip(labels(specs)) {
        let dev = driver::open_uri(spec).with_context(|| format!("opening {spec}"))?;
        let mut qp = dev
            .open_qpair(MAX_QD)
            .with_context(|| format!("opening a queue pair on {spec}"))?;
        if let Some(at) = store_at(dev.as_ref(), qp.as_mut()).with_context(|| spec.clone())? {
            if !force {
                bail!(
                    "{spec} holds a BlobFS store (superblock at byte {at}) and the paths group \
                     overwrites its devices: pass --force to destroy it"
                );
            }
            note(format!(
                "paths: --force: overwriting the BlobFS store on {spec}"
            ));
        }
        devs.push(Dev {
            spec: spec.clone(),
            label,
            dev,
            qp,
        });
    }
    Ok(devs)
}

/// The byte offset of a BlobFS superblock magic in the first two 4 KiB pages (where the two
/// superblock copies live), if there is one.
fn store_at(dev: &dyn Device, qp: &mut dyn QueuePair) -> Result<Option<u64>> {
    let g = dev.geometry();
    let lba = u64::from(g.lba_size);
    let max = u64::from(g.max_transfer) / lba * lba;
    let len = ((2 * SB_SIZE as u64).div_ceil(lba) * lba)
        .min(max)
        .min(g.capacity() / lba * lba);
    if len == 0 {
        return Ok(None);
    }
    let buf = read_start(dev, qp, len)?;
    let b = buf.as_slice();
    Ok([0, SB_SIZE]
        .into_iter()
        .find(|&o| b.get(o..o + SB_MAGIC.len()) == Some(&SB_MAGIC[..]))
        .map(|o| o as u64))
}

/// The first `len` bytes of the device (at most one transfer).
fn read_start(dev: &dyn Device, qp: &mut dyn QueuePair, len: u64) -> Result<driver::DmaBuf> {
    let op = Op::Read {
        lba: Lba(0),
        buf: dev.alloc_buf(len as usize),
    };
    driver::run_one(qp, op)
        .context("reading the first blocks")?
        .context("the read returned no buffer")
}

/// Short names for case names: `blk`, `passthru`, `pci`, `file`, `mem` (`dev` otherwise),
/// with the device's position appended when a kind occurs more than once.
fn labels(specs: &[String]) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt;
    let kinds: Vec<&str> = specs
        .iter()
        .map(|spec| {
            let body = spec.split('?').next().unwrap_or(spec);
            let path = body.strip_prefix("file:").unwrap_or(body);
            if body.starts_with("mem:") {
                return "mem";
            }
            if body.starts_with("pci:") {
                return "pci";
            }
            match std::fs::metadata(path).map(|m| m.file_type()) {
                Ok(t) if t.is_block_device() => "blk",
                Ok(t) if t.is_char_device() => "passthru",
                Ok(t) if t.is_file() => "file",
                _ => "dev",
            }
        })
        .collect();
    kinds
        .iter()
        .enumerate()
        .map(|(i, k)| {
            if kinds.iter().filter(|x| *x == k).count() > 1 {
                format!("{k}{}", i + 1)
            } else {
                k.to_string()
            }
        })
        .collect()
}

/// What one run counted.
struct Measured {
    ops: u64,
    secs: f64,
}

/// When [`drive`] stops: after a ramp (not counted) and a measured time, or once that many
/// bytes were submitted (the fill, counted from the start).
enum Until {
    Time(Duration, Duration),
    Bytes(u64),
}

/// Keeps `p.qd` commands of `bs` bytes in flight on `d` within the first `span` bytes until
/// `until`. Offsets come from `seed`, so every device gets the same sequence.
fn drive(
    d: &mut Dev,
    p: &Pattern,
    bs: u32,
    span: u64,
    until: Until,
    seed: u64,
) -> Result<Measured> {
    let lba = u64::from(d.dev.geometry().lba_size);
    let bs64 = u64::from(bs);
    let blocks = span / bs64;
    ensure!(blocks > 0, "span of {span} bytes below one {bs}-byte block");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut seq = 0u64;
    let mut next_lba = move || {
        let b = if p.random {
            rng.gen_range(0..blocks)
        } else {
            let b = seq;
            seq = (seq + 1) % blocks;
            b
        };
        Lba(b * bs64 / lba)
    };
    let (name, spec) = (p.name(bs), d.spec.clone());
    let mut submit = |qp: &mut dyn QueuePair, buf, tag| -> Result<()> {
        let lba = next_lba();
        let op = if p.write {
            Op::Write { lba, buf }
        } else {
            Op::Read { lba, buf }
        };
        qp.submit(op, tag)
            .map_err(|e| anyhow!(e.error))
            .with_context(|| format!("{name} on {spec}: submitting at {lba}"))
    };
    let (ramp, measure, limit) = match until {
        Until::Time(r, m) => (r, m, None),
        Until::Bytes(b) => (Duration::ZERO, Duration::ZERO, Some(b)),
    };
    // The first error stops submitting; what is in flight is still collected, so the queue
    // pair is idle again whatever happens.
    let mut failed: Option<anyhow::Error> = None;
    let mut submitted = 0u64;
    for tag in 0..u64::from(p.qd) {
        if limit.is_some_and(|l| submitted >= l) {
            break;
        }
        let mut buf = d.dev.alloc_buf(bs as usize);
        // Non-zero, different per buffer: written data never reads back as a hole.
        buf.as_mut_slice().fill(0x40 | tag as u8);
        if let Err(e) = submit(d.qp.as_mut(), buf, tag) {
            failed = Some(e);
            break;
        }
        submitted += bs64;
    }
    let start = Instant::now();
    let mut from = ramp.is_zero().then_some(start);
    let mut stop: Option<Instant> = None;
    let mut ops = 0u64;
    let mut done = Vec::with_capacity(p.qd as usize);
    while d.qp.in_flight() > 0 {
        d.qp.wait(p.qd as usize, &mut done);
        let now = Instant::now();
        if from.is_some() && stop.is_none() {
            ops += done.len() as u64;
        } else if from.is_none() && now.duration_since(start) >= ramp {
            // What completed so far belongs to the ramp.
            from = Some(now);
        }
        let over = match limit {
            Some(l) => submitted >= l,
            None => from.is_some_and(|f| now.duration_since(f) >= measure),
        };
        if over || failed.is_some() {
            stop.get_or_insert(now);
        }
        for c in done.drain(..) {
            let r = c
                .result
                .map_err(|e| anyhow!(e).context(format!("{name} on {spec}: command failed")))
                .and_then(|()| c.buf.context("a completion without its buffer"));
            let r = match r {
                Ok(buf) if stop.is_none() => submit(d.qp.as_mut(), buf, c.tag),
                Ok(_) => continue,
                Err(e) => Err(e),
            };
            match r {
                Ok(()) => submitted += bs64,
                Err(e) => {
                    failed.get_or_insert(e);
                    stop.get_or_insert(now);
                }
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let secs = stop
        .unwrap_or_else(Instant::now)
        .duration_since(from.unwrap_or(start));
    let secs = secs.as_secs_f64();
    ensure!(
        limit.is_some() || (secs > 0.0 && ops > 0),
        "{name} on {spec}: nothing measured"
    );
    Ok(Measured { ops, secs })
}

/// Writes the first `span` bytes of `d` once, sequentially, with non-zero data, and flushes:
/// reads then hit written data even on a sparse backing file.
fn fill(d: &mut Dev, bs: u32, span: u64) -> Result<()> {
    let p = pat(true, false, bs, 8);
    drive(d, &p, bs, span, Until::Bytes(span), 1).with_context(|| format!("filling {}", d.spec))?;
    driver::run_one(d.qp.as_mut(), Op::Flush).with_context(|| format!("flushing {}", d.spec))?;
    Ok(())
}

/// [`run`] with explicit durations and span (unit tests use tiny ones).
pub fn run_with(specs: &[String], force: bool, t: &Timing, out: &mut Results) -> Result<()> {
    let mut devs = open_all(specs, force)?;
    let geoms: Vec<_> = devs.iter().map(|d| d.dev.geometry()).collect();
    // Offsets and transfers fit every device's LBA size; the biggest transfer every
    // device takes.
    let align = geoms.iter().map(|g| g.lba_size).max().unwrap_or(4096);
    ensure!(
        (4 * KIB).is_multiple_of(align),
        "4 KiB transfers need LBAs of at most 4 KiB (a device has {align})"
    );
    let max_xfer = geoms.iter().map(|g| g.max_transfer).min().unwrap_or(0);
    let seq_bs = (128 * KIB).min(max_xfer) / align * align;
    ensure!(seq_bs > 0, "a device takes transfers of less than one LBA");
    let cap = geoms.iter().map(|g| g.capacity()).min().unwrap_or(0);
    let span = cap.min(t.span) / u64::from(seq_bs) * u64::from(seq_bs);
    ensure!(
        span > 0,
        "a device is smaller than one {seq_bs}-byte transfer"
    );

    let fill_t = Instant::now();
    let (head, rest) = devs.split_at_mut(1);
    let d0 = &mut head[0];
    fill(d0, seq_bs, span)?;
    // The devices should be one namespace: each must read back what the first wrote. One
    // that does not (two files, say) gets its own fill, so its reads hit data too.
    let first = read_start(d0.dev.as_ref(), d0.qp.as_mut(), u64::from(seq_bs))
        .with_context(|| d0.spec.clone())?;
    for d in rest {
        let seen = read_start(d.dev.as_ref(), d.qp.as_mut(), u64::from(seq_bs))
            .with_context(|| d.spec.clone())?;
        if seen.as_slice() != first.as_slice() {
            note(format!(
                "paths: {} does not show what was written through {}: not the same \
                 namespace; filling it too",
                d.spec, d0.spec
            ));
            fill(d, seq_bs, span)?;
        }
    }
    note(format!(
        "paths: {} MiB filled in {:.1}s; devices {}",
        span / MIB,
        fill_t.elapsed().as_secs_f64(),
        devs.iter()
            .map(|d| format!("{}={}", d.label, d.dev.describe()))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    let n = devs.len();
    let mut summary = Vec::new();
    for (i, p) in PATTERNS.iter().enumerate() {
        let bs = if p.random { p.bs } else { seq_bs };
        let pname = p.name(bs);
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); n];
        let mut errs: Vec<Option<String>> = vec![None; n];
        for round in 0..t.rounds {
            let order: Vec<usize> = if round % 2 == 0 {
                (0..n).collect()
            } else {
                (0..n).rev().collect()
            };
            let seed = 0x5eed + (i * 16 + round) as u64;
            for k in order {
                if errs[k].is_some() {
                    continue;
                }
                match drive(
                    &mut devs[k],
                    p,
                    bs,
                    span,
                    Until::Time(t.ramp, t.measure),
                    seed,
                ) {
                    Ok(m) if p.random => runs[k].push(m.ops as f64 / m.secs),
                    Ok(m) => runs[k].push((m.ops * u64::from(bs)) as f64 / m.secs / 1e6),
                    Err(e) => errs[k] = Some(format!("{e:#}")),
                }
            }
        }
        let how = |d: &Dev| {
            format!(
                "{pname} on {} ({}): one thread, one queue pair, {}-byte {} at {} offsets in \
                 the first {} MiB, {} in flight (wait, resubmit each finished one with its \
                 buffer); {} runs of {:.1}s after a {:.1}s ramp, median",
                d.spec,
                d.dev.describe(),
                bs,
                ["Op::Read", "Op::Write"][usize::from(p.write)],
                ["consecutive (wrapping)", "uniformly random"][usize::from(p.random)],
                span / MIB,
                p.qd,
                t.rounds,
                t.measure.as_secs_f64(),
                t.ramp.as_secs_f64(),
            )
        };
        let list = |v: &[f64]| v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(", ");
        let base = median(&runs[0]);
        let mut line = format!("paths: {pname:<20} {} 1.00", devs[0].label);
        for k in 1..n {
            let name = format!("paths-{pname}-{}", devs[k].label);
            let err = match (&errs[0], &errs[k]) {
                (Some(e), _) => Some(format!("baseline {} failed: {e}", devs[0].spec)),
                (None, e) => e.clone(),
            };
            if let Some(e) = err {
                line.push_str(&format!("  {} FAILED", devs[k].label));
                out.fail(&name, e);
                continue;
            }
            let ours = median(&runs[k]);
            line.push_str(&format!("  {} {:.2}", devs[k].label, ours / base));
            out.push(Case {
                group: "paths".into(),
                name,
                ours,
                baseline: base,
                unit: p.unit().into(),
                better: Better::Higher,
                target: None,
                ours_how: how(&devs[k]),
                baseline_how: how(&devs[0]),
                note: format!(
                    "ratios only: absolute figures on an emulated device mean nothing. Rounds \
                     alternate the device order (forward, then reverse); runs: {} {}, \
                     baseline {} {}",
                    list(&runs[k]),
                    p.unit(),
                    list(&runs[0]),
                    p.unit()
                ),
            });
        }
        summary.push(line);
    }
    for line in summary {
        println!("{line}");
    }
    Ok(())
}

/// The median (the mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: crate::Args,
    }

    fn args(argv: &[&str]) -> crate::Args {
        Cli::try_parse_from(std::iter::once("bench").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    fn tiny() -> Timing {
        Timing {
            ramp: Duration::from_millis(10),
            measure: Duration::from_millis(50),
            rounds: 2,
            span: 8 * MIB,
        }
    }

    #[test]
    fn options_are_checked() {
        let groups = |argv: &[&str]| crate::select_groups(&args(argv)).map_err(|e| e.to_string());
        // A plain run is what it always was: paths is not among the defaults.
        assert_eq!(groups(&[]).unwrap(), crate::GROUPS.to_vec());
        assert_eq!(
            groups(&[
                "--only",
                "paths",
                "--device",
                "mem:1M,mem:1M",
                "--device",
                "mem:2M"
            ])
            .unwrap(),
            ["paths"]
        );
        assert_eq!(
            args(&["--device", "a,b", "--device", "c"]).device,
            ["a", "b", "c"]
        );
        let e = groups(&["--only", "paths"]).unwrap_err();
        assert!(e.contains("at least two --device"), "{e}");
        let e = groups(&["--only", "paths", "--device", "mem:1M"]).unwrap_err();
        assert!(e.contains("at least two --device"), "{e}");
        let e = groups(&["--device", "mem:1M,mem:1M"]).unwrap_err();
        assert!(e.contains("only used by the paths group"), "{e}");
        let e = groups(&["--only", "blobio", "--device", "mem:1M,mem:1M"]).unwrap_err();
        assert!(e.contains("only used by the paths group"), "{e}");
        let e = groups(&["--only", "nope"]).unwrap_err();
        assert!(e.contains("paths"), "{e}");
    }

    #[test]
    fn labels_name_the_kind_and_disambiguate() {
        let s = |v: &[&str]| labels(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(
            s(&["mem:1M", "pci:0000:00:05.0", "/dev/null"]),
            ["mem", "pci", "passthru"]
        );
        assert_eq!(s(&["mem:1M", "mem:2M?lba=512"]), ["mem1", "mem2"]);
        assert_eq!(
            s(&["Cargo.toml", "file:Cargo.toml", "/nonexistent"]),
            ["file1", "file2", "dev"]
        );
    }

    #[test]
    fn two_devices_give_finite_ratios() {
        let specs = vec!["mem:64M".to_string(), "mem:64M".to_string()];
        let mut out = Results::default();
        run_with(&specs, false, &tiny(), &mut out).unwrap();
        assert!(out.failures.is_empty(), "{:?}", out.failures);
        assert_eq!(out.cases.len(), PATTERNS.len());
        for c in &out.cases {
            assert!(
                c.name.starts_with("paths-") && c.name.ends_with("-mem2"),
                "{}",
                c.name
            );
            assert_eq!(c.group, "paths");
            assert!(c.ours.is_finite() && c.ours > 0.0, "{c:?}");
            assert!(c.baseline.is_finite() && c.baseline > 0.0, "{c:?}");
            assert!(c.ratio().is_finite() && c.ratio() > 0.0, "{c:?}");
        }
        assert!(out
            .cases
            .iter()
            .any(|c| c.name == "paths-randread-4k-qd32-mem2"));
        assert!(out
            .cases
            .iter()
            .any(|c| c.name == "paths-seqwrite-128k-qd8-mem2"));
    }

    #[test]
    fn refuses_a_device_holding_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("store.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(64 * MIB)
            .unwrap();
        let spec = img.to_str().unwrap().to_string();
        let dev = driver::open_uri(&spec).unwrap();
        blobstore::Blobstore::format(dev, &blobstore::FormatOptions::default()).unwrap();
        let specs = vec!["mem:64M".to_string(), spec.clone()];
        let e = format!("{:#}", check_devices(&specs, false).unwrap_err());
        assert!(
            e.contains("holds a BlobFS store") && e.contains(&spec),
            "{e}"
        );
        let mut out = Results::default();
        let e = format!(
            "{:#}",
            run_with(&specs, false, &tiny(), &mut out).unwrap_err()
        );
        assert!(e.contains("--force"), "{e}");
        assert!(out.cases.is_empty());
        // With --force it runs (and destroys the store).
        run_with(&specs, true, &tiny(), &mut out).unwrap();
        assert_eq!(out.cases.len(), PATTERNS.len());
        check_devices(&specs, false).unwrap();
    }
}
