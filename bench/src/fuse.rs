//! FUSE: fio on a file in a BlobFS mount against the same on ext4.
//!
//! Our side is what a user gets: `blobfs mkfs` of an image file in the work directory, then
//! `blobfs mount --background` (the server in its own process, default mount options).
//! The baseline is ext4 on a loop device (direct I/O) over a file of the same size. fio runs
//! the same job on both: psync, buffered (`--direct=0`: FUSE mounts may refuse O_DIRECT),
//! one job, on a file written in full beforehand; write jobs end with an fsync
//! (`--end_fsync=1`, counted in the job's time) so the data really reaches the device.
//!
//! Before every read job the caches go: the kernel's (`sync` + `drop_caches`, for ext4 and
//! the FUSE mount's page cache) and ours (BlobFS keeps its own page cache in the server:
//! the mount is unmounted and mounted again). During the job both sides cache what they
//! read, each in its own way.

use crate::ext4::Ext4Loop;
use crate::fio::{Job, Outcome};
use crate::{filled_file, have, note, run_cmd, Better, Case, Ctx, Results};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One fio pattern and how it is reported.
struct Pattern {
    case: &'static str,
    rw: &'static str,
    bs: u64,
    target: f64,
    /// Report IOPS (random) or MB/s (sequential).
    iops: bool,
}

const PATTERNS: [Pattern; 4] = [
    Pattern {
        case: "fuse-seqwrite-1m",
        rw: "write",
        bs: 1 << 20,
        target: 0.7,
        iops: false,
    },
    Pattern {
        case: "fuse-randwrite-4k",
        rw: "randwrite",
        bs: 4096,
        target: 0.5,
        iops: true,
    },
    Pattern {
        case: "fuse-seqread-1m",
        rw: "read",
        bs: 1 << 20,
        target: 0.7,
        iops: false,
    },
    Pattern {
        case: "fuse-randread-4k",
        rw: "randread",
        bs: 4096,
        target: 0.5,
        iops: true,
    },
];

pub fn run(ctx: &Ctx, out: &mut Results) -> Result<()> {
    if !have("fio") {
        bail!("fio is not installed (apt-get install fio, or `make bench`)");
    }
    let file_size: u64 = ctx.pick(1 << 30, 256 << 20);
    let image_size: u64 = ctx.pick(4 << 30, 1 << 30);
    let runtime_s: u32 = ctx.pick(10, 3);

    let ext4 = Ext4Loop::new(
        &ctx.dir.join("fuse-ext4.img"),
        image_size,
        &ctx.dir.join("fuse-ext4"),
    )?;
    let mut ours = FuseMount::create(ctx, &ctx.dir.join("fuse.img"), image_size)?;
    let ext4_file = ext4.mountpoint.join("fio.dat");
    let our_file = ours.mountpoint.join("fio.dat");

    // The file, written in full, so reads read data and writes overwrite it.
    let t = Instant::now();
    filled_file(&ext4_file, file_size).context("writing the test file on ext4")?;
    let ext4_fill = t.elapsed();
    let t = Instant::now();
    filled_file(&our_file, file_size).context("writing the test file on the BlobFS mount")?;
    let our_fill = t.elapsed();
    note(format!(
        "  test file of {} MiB written in {:.1} s on ext4, {:.1} s on BlobFS",
        file_size >> 20,
        ext4_fill.as_secs_f64(),
        our_fill.as_secs_f64()
    ));

    for p in &PATTERNS {
        let write = p.rw.contains("write");
        let job = Job {
            rw: p.rw,
            bs: p.bs,
            iodepth: 1,
            engine: "psync",
            direct: false,
            size: file_size,
            runtime_s,
            ramp_s: 0,
            extra: {
                // No fallocate: FUSE would refuse it and ext4 would skip work ours does.
                let mut e = vec!["--fallocate=none".to_string()];
                if write {
                    e.push("--end_fsync=1".into());
                }
                e
            },
        };
        // ext4 first, then ours (with the caches dropped before each read job).
        if !write {
            Ext4Loop::drop_caches();
        }
        let base = job
            .run(&ext4_file)
            .with_context(|| format!("{}: fio on ext4", p.case))?;
        if !write {
            ours.remount()?;
            Ext4Loop::drop_caches();
        }
        let mine = job
            .run(&our_file)
            .with_context(|| format!("{}: fio on the BlobFS mount", p.case))?;
        let (o, b, unit) = figures(p, &mine, &base);
        let cache_note = if write {
            "psync buffered writes, QD1; the fsync at the end is in the job's time. Both sides \
             keep written pages dirty in the kernel's page cache and write them back in the \
             background and at the fsync (ours: the FUSE writeback cache, with the kernel's \
             strict per-mount dirty cap lifted, sending writes of up to 1 MiB to the server)"
                .to_string()
        } else {
            format!(
                "psync buffered reads, QD1; kernel caches dropped before each side's job and \
                 BlobFS remounted (its own page cache, up to {} MiB, lives in the server; \
                 reads of 128 KiB or more, like the kernel's read-ahead requests, are not \
                 cached there); both sides cache what they read during the job in the \
                 kernel's page cache",
                blobfs::FsOptions::default().cache_bytes >> 20
            )
        };
        out.push(Case {
            group: "fuse".into(),
            name: p.case.into(),
            ours: o,
            baseline: b,
            unit: unit.into(),
            better: Better::Higher,
            target: Some(p.target),
            ours_how: format!(
                "{} ({} GiB image, `blobfs mount` with default options: 4 request threads, \
                 kernel writeback cache)",
                job.command(&our_file),
                image_size >> 30
            ),
            baseline_how: format!(
                "{} (ext4 on a loop device, direct-io=on, over a {} GiB file)",
                job.command(&ext4_file),
                image_size >> 30
            ),
            note: format!(
                "{cache_note}; mean latency {:.0} us ours, {:.0} us ext4",
                mine.lat_us, base.lat_us
            ),
        });
    }
    ours.unmount()?;
    drop(ext4);
    Ok(())
}

fn figures(p: &Pattern, ours: &Outcome, base: &Outcome) -> (f64, f64, &'static str) {
    if p.iops {
        (ours.iops, base.iops, "IOPS")
    } else {
        (ours.mb_s(), base.mb_s(), "MB/s")
    }
}

/// A BlobFS image mounted by `blobfs mount --background`; unmounted on drop.
#[derive(Debug)]
struct FuseMount {
    bin: PathBuf,
    image: PathBuf,
    mountpoint: PathBuf,
    mounted: bool,
}

impl FuseMount {
    /// `blobfs mkfs --size SIZE IMAGE`, then mounts it.
    fn create(ctx: &Ctx, image: &Path, size: u64) -> Result<FuseMount> {
        run_cmd(
            Command::new(&ctx.blobfs_bin)
                .arg("mkfs")
                .arg(format!("--size={size}"))
                .arg(image),
        )
        .context("blobfs mkfs")?;
        let mountpoint = image.with_extension("mnt");
        std::fs::create_dir_all(&mountpoint)?;
        let mut m = FuseMount {
            bin: ctx.blobfs_bin.clone(),
            image: image.to_path_buf(),
            mountpoint,
            mounted: false,
        };
        m.mount()?;
        note(format!(
            "BlobFS ({}) mounted at {}",
            m.image.display(),
            m.mountpoint.display()
        ));
        Ok(m)
    }

    fn mount(&mut self) -> Result<()> {
        run_cmd(
            Command::new(&self.bin)
                .arg("mount")
                .arg("--background")
                .arg(&self.image)
                .arg(&self.mountpoint),
        )
        .context("blobfs mount")?;
        self.mounted = true;
        Ok(())
    }

    /// `blobfs umount`, which returns once the server has written everything back and
    /// closed the store.
    fn unmount(&mut self) -> Result<()> {
        if !self.mounted {
            return Ok(());
        }
        let t = Instant::now();
        loop {
            match run_cmd(Command::new(&self.bin).arg("umount").arg(&self.mountpoint)) {
                Ok(_) => break,
                // fio may still be letting go of the file.
                Err(e) if t.elapsed() < Duration::from_secs(10) => {
                    log::debug!("unmounting: {e:#}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e.context("blobfs umount")),
            }
        }
        self.mounted = false;
        Ok(())
    }

    /// Unmounts and mounts again: a cold start for our caches.
    fn remount(&mut self) -> Result<()> {
        self.unmount()?;
        self.mount()
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if self.mounted && self.unmount().is_err() {
            let _ = blobfs_fuse::unmount(&self.mountpoint, blobfs_fuse::Unmount::Lazy);
        }
        let _ = std::fs::remove_file(&self.image);
    }
}
