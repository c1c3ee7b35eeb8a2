//! Metadata: durable creates per second.
//!
//! - `meta-blob-create-sync`: blobs created and made durable through the blobstore API
//!   (`create_blob` + `sync`) on the io_uring backend over an image file, against ext4
//!   creating an empty file durably (`File::create`, `fsync` of the file, `fsync` of its
//!   directory).
//! - `meta-file-create-fsync`: files created with 4 KiB of data and fsynced through the
//!   blobfs API (`create`, `open_file`, `write`, `fsync`, `release_file`), against the same
//!   with std::fs on ext4 (`File::create`, `write_all`, `sync_all`, close, `fsync` of the
//!   directory). Our fsync makes the new name durable too; on ext4 only the directory's
//!   fsync promises that, so the baseline includes it (ext4 without the directory fsync is
//!   measured too and given in the note).
//! - `meta-file-create-fsync-4t`: the same with four threads, each in its own directory
//!   (concurrent fsyncs share commits: group commit, on both sides).
//!
//! Both sides run in alternating rounds (ours, ext4, ext4, ours, ...), so a load change on
//! this shared machine hits both alike. The ext4 baseline is a loop device (direct I/O) over
//! a file of the same size as our image, in the same directory.

use crate::ext4::Ext4Loop;
use crate::{note, Better, Case, Ctx, Results};
use anyhow::{bail, Context, Result};
use blobfs::{FileSystem, FsOptions, ROOT_INO};
use blobstore::{BlobOptions, Blobstore, FormatOptions, OpenOptions};
use driver::uring::{UringDevice, UringOptions};
use driver::Device;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes written to each new file.
const FILE_DATA: usize = 4096;
/// Threads of the group-commit case.
const THREADS: usize = 4;
/// Cluster size of our images: small files, small clusters (one per file).
const CLUSTER: u64 = 64 << 10;
/// Untimed operations per side before measuring (first-touch costs).
const WARMUP_OPS: u64 = 16;

pub fn run(ctx: &Ctx, out: &mut Results) -> Result<()> {
    let image_size: u64 = ctx.pick(16 << 30, 4 << 30);
    // Time per side and case, split over rounds that alternate the sides.
    let per_side = Duration::from_secs_f64(ctx.pick(7.0, 1.2));
    let rounds: u32 = ctx.pick(4, 2);
    let gib = image_size >> 30;

    let ext4 = Ext4Loop::new(
        &ctx.dir.join("meta-ext4.img"),
        image_size,
        &ctx.dir.join("meta-ext4"),
    )?;
    let ext4_how = format!(
        "ext4 (mkfs.ext4 defaults) on a loop device (direct-io=on) over a {gib} GiB file in \
         the work directory"
    );

    // Blobs.
    {
        let image = ctx.dir.join("meta-blob.img");
        let dev = image_device(&image, image_size)?;
        let store = Blobstore::create(dev, &format_options(), OpenOptions::default())
            .context("formatting the blobstore image")?;
        let ours = Side::new("blobstore", 1, |_, _| {
            store.create_blob(BlobOptions {
                thin: true,
                ..BlobOptions::default()
            })?;
            store.sync()?;
            Ok(true)
        });
        let dir = ext4.mountpoint.join("blobs");
        std::fs::create_dir_all(&dir)?;
        let dirf = File::open(&dir)?;
        let base = Side::new("ext4", 1, |_, n| {
            File::create(dir.join(format!("b{n}")))?.sync_all()?;
            dirf.sync_all()?;
            Ok(true)
        });
        let [o, b] = measure([&ours, &base], per_side, rounds)?;
        out.push(Case {
            group: "meta".into(),
            name: "meta-blob-create-sync".into(),
            ours: o,
            baseline: b,
            unit: "ops/s".into(),
            better: Better::Higher,
            target: None,
            ours_how: format!(
                "blobstore API, io_uring backend (O_DIRECT) over a {gib} GiB image file \
                 (64 KiB clusters): create_blob(thin, 0 clusters) then sync(), 1 thread"
            ),
            baseline_how: format!(
                "{ext4_how}: File::create (empty) + sync_all + fsync of the directory, 1 thread"
            ),
            note: format!(
                "{} blobs and {} files created in {:.1} s and {:.1} s",
                ours.total_ops(),
                base.total_ops(),
                ours.secs(),
                base.secs()
            ),
        });
        drop(ours);
        store.close().context("closing the blobstore")?;
        let _ = std::fs::remove_file(&image);
    }

    // Files.
    {
        let image = ctx.dir.join("meta-fs.img");
        let dev = image_device(&image, image_size)?;
        FileSystem::format(Arc::clone(&dev), &format_options())
            .context("formatting the blobfs image")?;
        let fs = FileSystem::open(dev, FsOptions::default()).context("opening blobfs")?;
        let data = vec![0x5au8; FILE_DATA];
        // Each new file takes a cluster: stop well before the image is full (the metadata
        // log takes clusters too).
        let clusters = fs.statfs().bavail * blobfs::PAGE / CLUSTER;
        let room = AtomicU64::new(clusters - (clusters / 10).max(256).min(clusters));
        let full = AtomicBool::new(false);
        let make_ours = |prefix: &str, threads: usize| -> Result<Side<'_>> {
            let dirs = (0..threads)
                .map(|t| {
                    Ok(fs
                        .mkdir(ROOT_INO, format!("{prefix}{t}").as_bytes(), 0o755, 0, 0)?
                        .ino)
                })
                .collect::<Result<Vec<_>>>()?;
            let (fs, data, room, full) = (&fs, &data, &room, &full);
            Ok(Side::new("blobfs", threads, move |t, n| {
                if room
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(1))
                    .is_err()
                {
                    full.store(true, Ordering::SeqCst);
                    return Ok(false);
                }
                let a = fs.create(dirs[t], format!("f{n}").as_bytes(), 0o644, 0, 0)?;
                fs.open_file(a.ino)?;
                fs.write(a.ino, 0, data)?;
                fs.fsync(a.ino)?;
                fs.release_file(a.ino)?;
                Ok(true)
            }))
        };
        let make_ext4 = |prefix: &str, threads: usize, dir_fsync: bool| -> Result<Side<'_>> {
            let dirs = (0..threads)
                .map(|t| {
                    let d = ext4.mountpoint.join(format!("{prefix}{t}"));
                    std::fs::create_dir_all(&d)?;
                    let f = File::open(&d)?;
                    Ok((d, f))
                })
                .collect::<Result<Vec<(PathBuf, File)>>>()?;
            let data = &data;
            Ok(Side::new("ext4", threads, move |t, n| {
                let (d, dirf) = &dirs[t];
                let mut f = File::create(d.join(format!("f{n}")))?;
                f.write_all(data)?;
                f.sync_all()?;
                drop(f);
                if dir_fsync {
                    dirf.sync_all()?;
                }
                Ok(true)
            }))
        };
        let ours_how = |threads: usize| {
            format!(
                "blobfs API, io_uring backend (O_DIRECT) over a {gib} GiB image file (64 KiB \
                 clusters): create + open_file + write {FILE_DATA} B + fsync + release_file, \
                 {threads} thread(s){}",
                if threads > 1 {
                    ", one directory each"
                } else {
                    ""
                }
            )
        };
        let base_how = |threads: usize| {
            format!(
                "{ext4_how}: File::create + write_all {FILE_DATA} B + sync_all + close + fsync \
                 of the directory, {threads} thread(s){}",
                if threads > 1 {
                    ", one directory each"
                } else {
                    ""
                }
            )
        };

        // One thread; ext4 also without the directory fsync, for the note.
        let ours = make_ours("single", 1)?;
        let base = make_ext4("single", 1, true)?;
        let nodir = make_ext4("nodirsync", 1, false)?;
        let [o, b, nd] = measure([&ours, &base, &nodir], per_side, rounds)?;
        out.push(Case {
            group: "meta".into(),
            name: "meta-file-create-fsync".into(),
            ours: o,
            baseline: b,
            unit: "ops/s".into(),
            better: Better::Higher,
            target: Some(5.0),
            ours_how: ours_how(1),
            baseline_how: base_how(1),
            note: format!(
                "our fsync makes the new name durable as well; on ext4 that takes the \
                 directory's fsync. ext4 without the directory fsync: {nd:.0} ops/s (ratio \
                 {:.2}){}",
                o / nd,
                full_note(&full)
            ),
        });
        drop((ours, base, nodir));

        let ours = make_ours("t", THREADS)?;
        let base = make_ext4("t", THREADS, true)?;
        let [o, b] = measure([&ours, &base], per_side, rounds)?;
        out.push(Case {
            group: "meta".into(),
            name: "meta-file-create-fsync-4t".into(),
            ours: o,
            baseline: b,
            unit: "ops/s".into(),
            better: Better::Higher,
            target: Some(5.0),
            ours_how: ours_how(THREADS),
            baseline_how: base_how(THREADS),
            note: format!(
                "concurrent fsyncs share commits on both sides (blobstore group commit, jbd2 \
                 transactions){}",
                full_note(&full)
            ),
        });
        drop((ours, base));
        fs.close().context("closing blobfs")?;
        let _ = std::fs::remove_file(&image);
    }
    drop(ext4);
    Ok(())
}

fn full_note(full: &AtomicBool) -> &'static str {
    if full.load(Ordering::SeqCst) {
        "; our image filled up, so our side ran shorter (the rate is over the time it ran)"
    } else {
        ""
    }
}

fn format_options() -> FormatOptions {
    FormatOptions {
        cluster_size: CLUSTER as u32,
        ..FormatOptions::default()
    }
}

/// A sparse image file of `size` bytes, opened with the io_uring backend (O_DIRECT).
fn image_device(path: &Path, size: u64) -> Result<Arc<dyn Device>> {
    File::create(path)
        .and_then(|f| f.set_len(size))
        .with_context(|| format!("creating {}", path.display()))?;
    let p = path
        .to_str()
        .with_context(|| format!("{}: not UTF-8", path.display()))?;
    let dev = UringDevice::open(
        p,
        &UringOptions {
            lba_size: Some(4096),
            read_only: false,
        },
    )
    .with_context(|| format!("opening {} with io_uring", path.display()))?;
    Ok(Arc::new(dev))
}

/// One side of a comparison: an operation run by `threads` threads, with running totals.
struct Side<'a> {
    name: &'static str,
    threads: usize,
    /// `op(thread, n)` does operation number `n` of `thread`; `Ok(false)`: no room left.
    #[allow(clippy::type_complexity)]
    op: Box<dyn Fn(usize, u64) -> Result<bool> + Sync + 'a>,
    /// Next operation number of each thread (names stay unique over rounds).
    next: Vec<AtomicU64>,
    ops: std::cell::Cell<u64>,
    secs: std::cell::Cell<f64>,
    warmed: std::cell::Cell<bool>,
    stopped: AtomicBool,
}

impl<'a> Side<'a> {
    fn new(
        name: &'static str,
        threads: usize,
        op: impl Fn(usize, u64) -> Result<bool> + Sync + 'a,
    ) -> Side<'a> {
        Side {
            name,
            threads,
            op: Box::new(op),
            next: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            ops: std::cell::Cell::new(0),
            secs: std::cell::Cell::new(0.0),
            warmed: std::cell::Cell::new(false),
            stopped: AtomicBool::new(false),
        }
    }

    fn total_ops(&self) -> u64 {
        self.ops.get()
    }

    fn secs(&self) -> f64 {
        self.secs.get()
    }

    /// Runs the operation on every thread for `dur` (the first time after a few untimed
    /// ones), adding to the totals.
    fn run(&self, dur: Duration) -> Result<()> {
        if self.stopped.load(Ordering::SeqCst) {
            return Ok(());
        }
        let (op, next, stopped, name) = (&self.op, &self.next, &self.stopped, self.name);
        let warm = !self.warmed.replace(true);
        let one = |t: usize| -> Result<bool> {
            let n = next[t].fetch_add(1, Ordering::Relaxed);
            let go = op(t, n).with_context(|| format!("{name}: operation {n} of thread {t}"))?;
            if !go {
                stopped.store(true, Ordering::SeqCst);
            }
            Ok(go)
        };
        if warm {
            for _ in 0..WARMUP_OPS {
                for t in 0..self.threads {
                    if !one(t)? {
                        return Ok(());
                    }
                }
            }
        }
        let start = Instant::now();
        let until = start + dur;
        let counts = std::thread::scope(|s| {
            let handles: Vec<_> = (0..self.threads)
                .map(|t| {
                    s.spawn(move || -> Result<u64> {
                        let mut done = 0u64;
                        while Instant::now() < until && !stopped.load(Ordering::SeqCst) {
                            if !one(t)? {
                                break;
                            }
                            done += 1;
                        }
                        Ok(done)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| bail!("a benchmark thread panicked"))
                })
                .collect::<Result<Vec<u64>>>()
        })?;
        self.secs
            .set(self.secs.get() + start.elapsed().as_secs_f64());

        self.ops.set(self.ops.get() + counts.iter().sum::<u64>());
        Ok(())
    }

    fn rate(&self) -> Result<f64> {
        if self.ops.get() == 0 || self.secs.get() <= 0.0 {
            bail!("{}: no operation completed", self.name);
        }
        Ok(self.ops.get() as f64 / self.secs.get())
    }
}

/// Runs the sides for `per_side` each, in `rounds` rounds whose order rotates, and returns
/// their rates (operations per second).
fn measure<const N: usize>(
    sides: [&Side<'_>; N],
    per_side: Duration,
    rounds: u32,
) -> Result<[f64; N]> {
    let slice = per_side / rounds.max(1);
    for r in 0..rounds.max(1) as usize {
        for i in 0..N {
            sides[(i + r) % N].run(slice)?;
        }
    }
    let mut rates = [0.0; N];
    for (rate, side) in rates.iter_mut().zip(sides) {
        *rate = side.rate()?;
        note(format!(
            "  {}: {} ops in {:.1} s, {:.0} ops/s ({} thread(s))",
            side.name,
            side.total_ops(),
            side.secs(),
            *rate,
            side.threads
        ));
    }
    Ok(rates)
}
