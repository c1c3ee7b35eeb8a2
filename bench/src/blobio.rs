//! Blob I/O on the io_uring backend against fio on the same file.
//!
//! One backing file in the work directory (4 GiB; 512 MiB in quick mode), every block
//! written first ([`crate::filled_file`]). A blobstore is formatted on it without discard
//! (so the file keeps its written extents) and holds one thick blob spanning nearly all of
//! it; the blob is then written end to end, so that every read below hits written data, on
//! our side and on fio's. A fresh store allocates the blob's clusters in one run, so the
//! blob is one contiguous byte range of the file: fio gets exactly that range
//! (`--offset`/`--size`), and both sides pick offsets from the same span.
//!
//! Patterns (issue 7): 4 KiB random read and write at QD1 and QD32, 1 MiB sequential read
//! and write at QD8. Our side is one thread with one [`IoChannel`]: `submit_read` /
//! `submit_write` until QD requests are in flight, then `wait` and resubmit each finished
//! request at once, reusing its buffer. fio: `--ioengine=io_uring --direct=1`, one job.
//!
//! Noise and drift: for each pattern, a few rounds of one fio run and one of ours, alternating
//! which goes first (fio/ours, ours/fio, ...), every run measured for the same time after the
//! same ramp; each side's figure is the median of its runs, so one burst of load from
//! elsewhere (or of the host's cache) does not decide a ratio.

use crate::fio::{Job, Outcome};
use crate::{filled_file, fmt_num, have, note, Better, Case, Ctx, Results};
use anyhow::{bail, ensure, Context, Result};
use blobstore::{
    Blob, BlobOptions, Blobstore, FormatOptions, IoChannel, IoCompletion, OpenOptions,
};
use driver::uring::{UringDevice, UringOptions};
use driver::{Device, DmaBuf};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// Cluster size of the store (the default).
const CLUSTER: u32 = 1 << 20;
/// LBA size the file is driven with (fio's 4 KiB blocks are aligned to it too).
const LBA: u32 = 4096;

/// One I/O pattern, run by both sides.
#[derive(Debug, Clone, Copy)]
struct Pattern {
    /// Case name.
    name: &'static str,
    /// fio `--rw`.
    rw: &'static str,
    write: bool,
    random: bool,
    bs: u64,
    qd: u32,
}

impl Pattern {
    /// Bandwidth for large sequential transfers, IOPS for small random ones.
    fn unit(&self) -> &'static str {
        if self.random {
            "IOPS"
        } else {
            "MB/s"
        }
    }

    fn pick(&self, ops_s: f64, bytes_s: f64) -> f64 {
        if self.random {
            ops_s
        } else {
            bytes_s / 1e6
        }
    }

    fn of_fio(&self, o: &Outcome) -> f64 {
        self.pick(o.iops, o.bw)
    }
}

const PATTERNS: [Pattern; 6] = [
    Pattern {
        name: "blobio-randread-4k-qd1",
        rw: "randread",
        write: false,
        random: true,
        bs: 4 * KIB,
        qd: 1,
    },
    Pattern {
        name: "blobio-randread-4k-qd32",
        rw: "randread",
        write: false,
        random: true,
        bs: 4 * KIB,
        qd: 32,
    },
    Pattern {
        name: "blobio-seqread-1m-qd8",
        rw: "read",
        write: false,
        random: false,
        bs: MIB,
        qd: 8,
    },
    Pattern {
        name: "blobio-randwrite-4k-qd1",
        rw: "randwrite",
        write: true,
        random: true,
        bs: 4 * KIB,
        qd: 1,
    },
    Pattern {
        name: "blobio-randwrite-4k-qd32",
        rw: "randwrite",
        write: true,
        random: true,
        bs: 4 * KIB,
        qd: 32,
    },
    Pattern {
        name: "blobio-seqwrite-1m-qd8",
        rw: "write",
        write: true,
        random: false,
        bs: MIB,
        qd: 8,
    },
];

/// What our side measured.
#[derive(Debug, Clone, Copy)]
struct Measured {
    ops: u64,
    bytes: u64,
    secs: f64,
}

impl Measured {
    fn value(&self, p: &Pattern) -> f64 {
        p.pick(self.ops as f64 / self.secs, self.bytes as f64 / self.secs)
    }
}

/// The blob under test and the file region it occupies.
struct Target<'a> {
    ch: &'a mut IoChannel,
    blob: &'a Blob,
    dev: &'a Arc<dyn Device>,
    /// Blob bytes used by both sides (a multiple of 1 MiB).
    span: u64,
}

/// Runs `p` on the blob: keeps `p.qd` requests in flight for `ramp` (not counted), then
/// counts what completes during the next `dur`. With `limit`, stops instead after that many
/// bytes were submitted (the initial fill), counting from the start.
fn drive(
    t: &mut Target<'_>,
    p: &Pattern,
    ramp: Duration,
    dur: Duration,
    limit: Option<u64>,
    seed: u64,
) -> Result<Measured> {
    let bs = p.bs;
    let blocks = t.span / bs;
    ensure!(
        blocks > 0,
        "blob of {} bytes is smaller than one block",
        t.span
    );
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut next_seq = 0u64;
    let mut submitted = 0u64;
    let mut next_offset = |rng: &mut SmallRng| {
        if p.random {
            rng.gen_range(0..blocks) * bs
        } else {
            let o = next_seq;
            next_seq = (next_seq + 1) % blocks;
            o * bs
        }
    };
    let submit = |t: &mut Target<'_>, buf: DmaBuf, off: u64, tag: u64| -> Result<()> {
        let r = if p.write {
            t.ch.submit_write(t.blob, off, buf, tag)
        } else {
            t.ch.submit_read(t.blob, off, buf, tag)
        };
        r.map_err(|(e, _)| e)
            .with_context(|| format!("{} at blob offset {off}", p.name))
    };
    // The first error stops submitting; what is in flight is still collected, so the
    // channel is idle again whatever happens.
    let mut failed: Option<anyhow::Error> = None;
    for tag in 0..u64::from(p.qd) {
        if limit.is_some_and(|l| submitted >= l) {
            break;
        }
        let mut buf = t.dev.alloc_buf(bs as usize);
        // Recognizable data, different per buffer (fio writes its own pattern).
        buf.as_mut_slice().fill(0x40 | tag as u8);
        let off = next_offset(&mut rng);
        if let Err(e) = submit(t, buf, off, tag) {
            failed = Some(e);
            break;
        }
        submitted += bs;
    }
    let start = Instant::now();
    let mut t0 = if ramp.is_zero() || limit.is_some() {
        Some(start)
    } else {
        None
    };
    let mut ops = 0u64;
    let mut stopping = failed.is_some();
    let mut stop_at = start;
    let mut done: Vec<IoCompletion> = Vec::with_capacity(p.qd as usize);
    while t.ch.in_flight() > 0 {
        t.ch.wait(&mut done);
        let now = Instant::now();
        let counting = match t0 {
            Some(_) => !stopping,
            None => {
                if now.duration_since(start) >= ramp {
                    // What completed so far belongs to the ramp.
                    t0 = Some(now);
                }
                false
            }
        };
        if counting {
            ops += done.len() as u64;
        }
        if !stopping {
            let over = match limit {
                Some(l) => submitted >= l,
                None => t0.is_some_and(|t0| now.duration_since(t0) >= dur),
            };
            if over {
                stopping = true;
                stop_at = now;
            }
        }
        for c in done.drain(..) {
            if let Err(e) = c.result {
                let e =
                    anyhow::Error::new(e).context(format!("{}: request {} failed", p.name, c.tag));
                failed.get_or_insert(e);
                stopping = true;
            }
            if !stopping {
                let off = next_offset(&mut rng);
                match submit(t, c.buf, off, c.tag) {
                    Ok(()) => submitted += bs,
                    Err(e) => {
                        failed = Some(e);
                        stopping = true;
                    }
                }
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if !stopping {
        stop_at = Instant::now();
    }
    let t0 = t0.unwrap_or(start);
    let secs = stop_at.duration_since(t0).as_secs_f64();
    ensure!(secs > 0.0 && ops > 0, "{}: nothing measured", p.name);
    Ok(Measured {
        ops,
        bytes: ops * bs,
        secs,
    })
}

pub fn run(ctx: &Ctx, out: &mut Results) -> Result<()> {
    if !have("fio") {
        bail!("fio is not installed (apt-get install fio)");
    }
    let size: u64 = ctx.pick(4 << 30, 512 << 20);
    // Per pattern: `rounds` runs of each side, `slice_s` seconds each after `ramp_s`.
    let rounds: usize = ctx.pick(3, 2);
    let slice_s: u32 = ctx.pick(3, 1);
    let ramp_s: u32 = ctx.pick(1, 0);
    let path = ctx.dir.join("blobio.img");
    let t = Instant::now();
    filled_file(&path, size)?;
    note(format!(
        "blobio: {} MiB backing file written in {:.1}s",
        size >> 20,
        t.elapsed().as_secs_f64()
    ));
    let res = run_on(out, &path, rounds, slice_s, ramp_s);
    let _ = std::fs::remove_file(&path);
    res
}

fn run_on(out: &mut Results, path: &Path, rounds: usize, slice_s: u32, ramp_s: u32) -> Result<()> {
    let ramp = Duration::from_secs(u64::from(ramp_s));
    let spath = path
        .to_str()
        .with_context(|| format!("{}: path is not UTF-8", path.display()))?;
    let dev: Arc<dyn Device> = Arc::new(
        UringDevice::open(
            spath,
            &UringOptions {
                lba_size: Some(LBA),
                read_only: false,
            },
        )
        .with_context(|| format!("opening {spath} with io_uring"))?,
    );
    // No discard: the file keeps its written blocks (both sides read real data).
    Blobstore::format(
        Arc::clone(&dev),
        &FormatOptions {
            cluster_size: CLUSTER,
            discard: false,
            uuid: None,
        },
    )
    .context("formatting the blobio store")?;
    let store = Blobstore::open(Arc::clone(&dev), OpenOptions::default())
        .context("opening the blobio store")?;
    let info = store.info();
    // Everything but what is kept for metadata, with a little slack for the log.
    let clusters = info
        .free_clusters
        .saturating_sub(info.reserved_clusters)
        .saturating_sub(8);
    ensure!(clusters >= 16, "store too small: {info:?}");
    let id = store
        .create_blob(BlobOptions {
            thin: false,
            clusters,
            xattrs: Vec::new(),
        })
        .context("creating the blob")?;
    store.sync()?;
    let meta = store.blob_meta(id)?;
    let first = meta.clusters.first().map(|c| c.0).context("empty blob")?;
    let contiguous = meta
        .clusters
        .iter()
        .enumerate()
        .all(|(i, c)| c.0 == first + i as u64);
    ensure!(
        contiguous,
        "the blob's clusters are not one run; fio could not cover the same bytes"
    );
    let cs = u64::from(CLUSTER);
    let span = clusters * cs;
    let region_off = first * cs;
    let blob = store.open_blob(id)?;
    let mut ch = store.channel()?;
    let mut target = Target {
        ch: &mut ch,
        blob: &blob,
        dev: &dev,
        span,
    };
    // Write the whole blob once: thick blobs are zeroed with fallocate(ZERO_RANGE), which
    // leaves unwritten extents that read without touching the disk.
    let t = Instant::now();
    let fill = Pattern {
        name: "blobio-fill",
        rw: "write",
        write: true,
        random: false,
        bs: MIB,
        qd: 8,
    };
    drive(
        &mut target,
        &fill,
        Duration::ZERO,
        Duration::ZERO,
        Some(span),
        1,
    )?;
    store.sync()?;
    note(format!(
        "blobio: blob of {} MiB at file offset {} MiB filled in {:.1}s",
        span >> 20,
        region_off >> 20,
        t.elapsed().as_secs_f64()
    ));
    // Spot check: the fill went to the blob's region.
    let b = blob
        .read_buf(target.ch, span - cs, dev.alloc_buf(LBA as usize))
        .context("reading the blob back")?;
    ensure!(
        b.as_slice().iter().all(|&x| x & 0xf0 == 0x40),
        "the blob does not hold what was written"
    );

    for (i, p) in PATTERNS.iter().enumerate() {
        let job = Job {
            rw: p.rw,
            bs: p.bs,
            iodepth: p.qd,
            engine: "io_uring",
            direct: true,
            size: span,
            runtime_s: slice_s,
            ramp_s,
            extra: vec![format!("--offset={region_off}")],
        };
        let slice = Duration::from_secs(u64::from(slice_s));
        let ramp_txt = if ramp_s == 0 {
            "without a ramp".to_string()
        } else {
            format!("after a {ramp_s}s ramp")
        };
        let r =
            (|| -> Result<Case> {
                let mut fio_vals = Vec::with_capacity(rounds);
                let mut our_vals = Vec::with_capacity(rounds);
                let (mut ops, mut secs) = (0u64, 0.0f64);
                for round in 0..rounds {
                    let fio_first = round % 2 == 0;
                    if fio_first {
                        fio_vals.push(p.of_fio(&job.run(path).context("fio")?));
                    }
                    let seed = 0x5eed + (i * 16 + round) as u64;
                    let m = drive(&mut target, p, ramp, slice, None, seed)?;
                    our_vals.push(m.value(p));
                    ops += m.ops;
                    secs += m.secs;
                    if !fio_first {
                        fio_vals.push(p.of_fio(&job.run(path).context("fio")?));
                    }
                }
                let kind = if p.random {
                    format!("uniformly random {}-aligned", human(p.bs))
                } else {
                    "consecutive (wrapping)".to_string()
                };
                let list = |v: &[f64]| v.iter().map(|x| fmt_num(*x)).collect::<Vec<_>>().join(", ");
                Ok(Case {
                    group: "blobio".into(),
                    name: p.name.into(),
                    ours: median(&our_vals),
                    baseline: median(&fio_vals),
                    unit: p.unit().into(),
                    better: Better::Higher,
                    target: Some(0.95),
                    ours_how: format!(
                    "one thread, one IoChannel (io_uring backend, O_DIRECT, {LBA}-byte LBAs) on \
                     {}: IoChannel::{} of {} DmaBufs at {kind} offsets of one thick {} MiB blob \
                     (1 MiB clusters, contiguous from file offset {region_off}), {} in flight, \
                     IoChannel::wait then resubmit each finished request with its buffer; \
                     {rounds} runs of {slice_s}s measured {ramp_txt}",
                    path.display(),
                    if p.write { "submit_write" } else { "submit_read" },
                    human(p.bs),
                    span >> 20,
                    p.qd,
                ),
                    baseline_how: format!("{rounds} runs of: {}", job.command(path)),
                    note: format!(
                        "{rounds} rounds of one fio run and one of ours, alternating which goes \
                     first (fio first in round 1), each {slice_s}s {ramp_txt}; each \
                     figure is the median of its side's runs (fio: {}; ours: {} {}). Both cover \
                     the same {} MiB of the file (the blob's clusters); ours did {ops} requests \
                     in {secs:.2}s",
                        list(&fio_vals),
                        list(&our_vals),
                        p.unit(),
                        span >> 20,
                    ),
                })
            })();
        match r {
            Ok(c) => out.push(c),
            Err(e) => out.fail(p.name, format!("{e:#}")),
        }
    }
    drop(ch);
    drop(blob);
    store.close().context("closing the blobio store")?;
    Ok(())
}

/// The median (the mean of the middle two for an even count).
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// "4 KiB", "1 MiB".
fn human(n: u64) -> String {
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else {
        format!("{} KiB", n / KIB)
    }
}
