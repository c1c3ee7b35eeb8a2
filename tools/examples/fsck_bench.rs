//! Benchmark for `blobfs fsck` on a big image: a sparse 64 GiB image holding 100,000 files
//! (the "Offline tools" requirement: fsck finishes in bounded time and memory; the time is
//! printed, not asserted).
//!
//! Builds the image through the blobfs library directly (no FUSE), then runs the release
//! `blobfs` binary as a child: `fsck -n --json` twice (the second pass finds the host's
//! caches warm; the image is opened with O_DIRECT, so there is no page cache of the image
//! itself) and `fsck -y` once, each timed, with the child's peak RSS. Only the outcome is
//! checked (exit code 0, "clean"), never the time.
//!
//! ```text
//! cargo build --release -p blobfs-tools
//! cargo run --release -p blobfs-tools --example fsck_bench -- [--dir DIR] [--files N] [--keep]
//! ```
//! (`make bench-fsck` does both.)

use anyhow::{bail, ensure, Context, Result};
use blobfs::{FileSystem, FsOptions, ROOT_INO};
use clap::Parser;
use driver::uring::{UringDevice, UringOptions};
use driver::Device;
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Cluster size of the image: every non-empty file takes one.
const CLUSTER: u32 = 64 << 10;
/// Data written into each file.
const FILE_DATA: usize = 4 << 10;
/// Real disk use per file allowed for in the free-space check, over its cluster: metadata
/// (inode and directory-entry records in the log and checkpoints; about 1 KiB measured).
const META_ALLOWANCE: u64 = 8 * KIB;
/// Free space kept on top of the estimate.
const MARGIN: u64 = GIB;

#[derive(Debug, Parser)]
#[command(about = "Time `blobfs fsck` on a sparse 64 GiB image holding 100,000 files")]
struct Args {
    /// Where the image is made (default: $TMPDIR, else /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Number of files.
    #[arg(long, default_value_t = 100_000)]
    files: u64,
    /// Number of top-level directories the files are spread over (every tenth also holds
    /// two nested levels, which get files too).
    #[arg(long, default_value_t = 100)]
    dirs: u64,
    /// Image size in GiB (a sparse file).
    #[arg(long, default_value_t = 64)]
    size_gib: u64,
    /// Commit (sync_all) after this many files.
    #[arg(long, default_value_t = 5000)]
    sync_every: u64,
    /// The release `blobfs` binary (default: target/release/blobfs in the workspace).
    #[arg(long)]
    blobfs: Option<PathBuf>,
    /// Keep the image afterwards (its path is printed).
    #[arg(long)]
    keep: bool,
    /// Skip building: run the fsck passes on this existing image (never deleted).
    #[arg(long, value_name = "IMAGE")]
    reuse: Option<PathBuf>,
}

/// Removes the image when dropped (also on errors), unless it is to be kept.
struct ImageGuard {
    path: PathBuf,
    keep: bool,
}

impl Drop for ImageGuard {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept the image: {}", self.path.display());
        } else if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.files > 0, "--files must be at least 1");
    ensure!(args.dirs > 0, "--dirs must be at least 1");
    ensure!(args.sync_every > 0, "--sync-every must be at least 1");
    let blobfs = match &args.blobfs {
        Some(p) => p.clone(),
        None => workspace_root()?.join("target/release/blobfs"),
    };
    ensure!(
        blobfs.is_file(),
        "{}: no such binary; build it first: cargo build --release -p blobfs-tools \
         (or pass --blobfs PATH)",
        blobfs.display()
    );
    let case = format!(
        "fsck-{}g-{}-files",
        args.size_gib,
        if args.files % 1000 == 0 {
            format!("{}k", args.files / 1000)
        } else {
            args.files.to_string()
        }
    );

    let guard = match &args.reuse {
        Some(image) => {
            ensure!(image.is_file(), "{}: no such image", image.display());
            ImageGuard {
                path: image.clone(),
                keep: true,
            }
        }
        None => {
            let dir = match &args.dir {
                Some(d) => d.clone(),
                None => std::env::var_os("TMPDIR")
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/tmp")),
            };
            check_room(&dir, &args)?;
            let path = dir.join(format!("blobfs-fsck-bench-{}.img", std::process::id()));
            let guard = ImageGuard {
                path,
                keep: args.keep,
            };
            build(&guard.path, &args)?;
            guard
        }
    };
    let image = &guard.path;
    let real = std::fs::metadata(image)?.blocks() * 512;
    println!(
        "image: {} ({} GiB sparse, {:.1} MiB on disk)",
        image.display(),
        args.size_gib,
        real as f64 / MIB as f64
    );

    // fsck -n, twice.
    let mut first = None;
    for pass in ["cold", "warm"] {
        let r = run_fsck(&blobfs, image, "-n")?;
        check_clean(&r, "fsck -n")?;
        println!(
            "fsck -n ({pass}): {:.3} s wall, {:.3} s user, {:.3} s sys, max rss {:.1} MiB, \
             {} note(s)",
            r.wall.as_secs_f64(),
            r.user.as_secs_f64(),
            r.sys.as_secs_f64(),
            r.max_rss_kib as f64 / 1024.0,
            r.notes
        );
        if first.is_none() {
            first = Some(r);
        } else {
            print_bench(&format!("{case}-warm"), &r, &args);
        }
    }
    // fsck -y: nothing to repair.
    let r = run_fsck(&blobfs, image, "-y")?;
    check_clean(&r, "fsck -y")?;
    ensure!(
        r.repairs == 0,
        "fsck -y repaired something on a clean image: {}",
        r.json
    );
    println!(
        "fsck -y: {:.3} s wall, {:.3} s user, {:.3} s sys, max rss {:.1} MiB",
        r.wall.as_secs_f64(),
        r.user.as_secs_f64(),
        r.sys.as_secs_f64(),
        r.max_rss_kib as f64 / 1024.0
    );
    print_bench(&format!("{case}-repair"), &r, &args);
    if let Some(r) = first {
        // The headline figure: the first (cold) check, last so it is easy to find.
        print_bench(&case, &r, &args);
    }
    drop(guard);
    Ok(())
}

fn print_bench(case: &str, r: &FsckRun, args: &Args) {
    println!(
        "bench: case={case} ours={:.3} unit=s files={} image={}GiB max_rss_mib={:.1}",
        r.wall.as_secs_f64(),
        args.files,
        args.size_gib,
        r.max_rss_kib as f64 / 1024.0
    );
}

/// The workspace root: the parent of this package's directory.
fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("the package directory has no parent")
}

/// Refuses to start when the filesystem holding `dir` lacks room for the image's real
/// (non-sparse) part. Each file takes a whole cluster of real disk although only 4 KiB of
/// it is written: the store zeroes the rest of a newly allocated cluster with
/// fallocate(ZERO_RANGE), which allocates (unwritten) blocks on ext4 and XFS.
fn check_room(dir: &Path, args: &Args) -> Result<()> {
    ensure!(dir.is_dir(), "{}: not a directory", dir.display());
    let need = args.files * (CLUSTER as u64 + META_ALLOWANCE) + MARGIN;
    let free = free_bytes(dir)?;
    println!(
        "image: {} GiB sparse in {}; {} files x (one 64 KiB cluster, 4 KiB of it data, + up \
         to {} KiB metadata) + {} GiB margin: needs about {:.2} GiB of real disk, {:.2} GiB \
         free",
        args.size_gib,
        dir.display(),
        args.files,
        META_ALLOWANCE / KIB,
        MARGIN / GIB,
        need as f64 / GIB as f64,
        free as f64 / GIB as f64,
    );
    if free < need {
        bail!(
            "{}: not enough free space: about {:.2} GiB needed, {:.2} GiB free; pass \
             --dir on a bigger filesystem or fewer --files",
            dir.display(),
            need as f64 / GIB as f64,
            free as f64 / GIB as f64
        );
    }
    let max_clusters = args.size_gib * GIB / CLUSTER as u64;
    ensure!(
        args.files < max_clusters,
        "{} files do not fit in {} GiB of 64 KiB clusters",
        args.files,
        args.size_gib
    );
    Ok(())
}

/// Bytes available to an unprivileged user on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    let c = CString::new(dir.as_os_str().as_bytes())?;
    // SAFETY: statvfs is plain old data; all-zero is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("{}: statvfs", dir.display()));
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

fn device(image: &Path) -> Result<Arc<dyn Device>> {
    let path = image.to_str().context("the image path is not UTF-8")?;
    let dev = UringDevice::open(
        path,
        &UringOptions {
            lba_size: Some(4096),
            read_only: false,
        },
    )
    .with_context(|| format!("{path}: cannot open"))?;
    Ok(Arc::new(dev))
}

/// Time spent in each step of the build.
#[derive(Debug, Default)]
struct Timers {
    create: Duration,
    write: Duration,
    release: Duration,
    sync: Duration,
}

/// Makes the image: sparse file, format, directories, files; then closes the filesystem.
fn build(image: &Path, args: &Args) -> Result<()> {
    let t0 = Instant::now();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(image)
        .with_context(|| format!("{}: cannot create", image.display()))?;
    f.set_len(args.size_gib * GIB)?;
    drop(f);
    FileSystem::format(
        device(image)?,
        &blobstore::FormatOptions {
            cluster_size: CLUSTER,
            ..Default::default()
        },
    )
    .context("format")?;
    let formatted = t0.elapsed();
    // No background syncer: commits happen every --sync-every files, as the bench says.
    let fs = FileSystem::open(
        device(image)?,
        FsOptions {
            sync_interval: None,
            ..Default::default()
        },
    )
    .context("open")?;

    // 100 top-level directories; every tenth also holds dNNN/nested/deeper.
    let mut dirs = Vec::new();
    for d in 0..args.dirs {
        let top = fs.mkdir(ROOT_INO, format!("d{d:03}").as_bytes(), 0o755, 0, 0)?;
        dirs.push(top.ino);
        if d % 10 == 0 {
            let n1 = fs.mkdir(top.ino, b"nested", 0o755, 0, 0)?;
            let n2 = fs.mkdir(n1.ino, b"deeper", 0o755, 0, 0)?;
            dirs.push(n1.ino);
            dirs.push(n2.ino);
        }
    }
    fs.sync_all()?;

    let mut data = vec![0u8; FILE_DATA];
    let mut t = Timers::default();
    let mut since_sync = Vec::with_capacity(args.sync_every as usize);
    let mut last_report = Instant::now();
    let populate = Instant::now();
    for i in 0..args.files {
        let parent = dirs[(i % dirs.len() as u64) as usize];
        fill(&mut data, i);
        let s = Instant::now();
        let a = fs.create(parent, format!("f{i:06}").as_bytes(), 0o644, 0, 0)?;
        t.create += s.elapsed();
        let s = Instant::now();
        fs.open_file(a.ino)?;
        let n = fs.write(a.ino, 0, &data)?;
        ensure!(n == data.len(), "short write: {n} of {}", data.len());
        t.write += s.elapsed();
        let s = Instant::now();
        fs.release_file(a.ino)?;
        t.release += s.elapsed();
        since_sync.push(a.ino);
        if (i + 1) % args.sync_every == 0 || i + 1 == args.files {
            let s = Instant::now();
            fs.sync_all()?;
            t.sync += s.elapsed();
            // As the kernel would after close: the cache holds only what is in use.
            for ino in since_sync.drain(..) {
                fs.forget(ino);
            }
            if last_report.elapsed() >= Duration::from_secs(10) || i + 1 == args.files {
                let el = populate.elapsed().as_secs_f64();
                eprintln!(
                    "  {} files in {el:.1} s ({:.0} files/s)",
                    i + 1,
                    (i + 1) as f64 / el
                );
                last_report = Instant::now();
            }
        }
    }
    let populated = populate.elapsed();
    let s = Instant::now();
    fs.close().context("close")?;
    let closed = s.elapsed();
    println!(
        "build: {:.3} s total: format {:.3} s, {} dirs + {} files {:.3} s ({:.0} files/s: \
         create {:.3} s, open+write {:.3} s, release {:.3} s, sync_all {:.3} s), close {:.3} s",
        t0.elapsed().as_secs_f64(),
        formatted.as_secs_f64(),
        dirs.len(),
        args.files,
        populated.as_secs_f64(),
        args.files as f64 / populated.as_secs_f64(),
        t.create.as_secs_f64(),
        t.write.as_secs_f64(),
        t.release.as_secs_f64(),
        t.sync.as_secs_f64(),
        closed.as_secs_f64()
    );
    Ok(())
}

/// Fills a file's data: its number, then a cheap pattern.
fn fill(buf: &mut [u8], i: u64) {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    buf[..8].copy_from_slice(&i.to_le_bytes());
}

/// One fsck run as a child process.
#[derive(Debug)]
struct FsckRun {
    code: i32,
    wall: Duration,
    user: Duration,
    sys: Duration,
    max_rss_kib: u64,
    json: serde_json::Value,
    notes: u64,
    repairs: usize,
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// Runs `blobfs fsck MODE IMAGE --json`; times it and reads its resource usage.
fn run_fsck(blobfs: &Path, image: &Path, mode: &str) -> Result<FsckRun> {
    let start = Instant::now();
    let mut child = Command::new(blobfs)
        .arg("fsck")
        .arg(mode)
        .arg(image)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {}", blobfs.display()))?;
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .context("no stdout pipe")?
        .read_to_end(&mut out)?;
    // Reaped with wait4 rather than Child::wait: its rusage is this child's own, where
    // getrusage(RUSAGE_CHILDREN) gives the largest RSS of every child reaped so far.
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = loop {
        // SAFETY: `pid` is our unreaped child; `status` and `ru` are valid and writable.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break r;
    };
    let wall = start.elapsed();
    if r != pid {
        return Err(std::io::Error::last_os_error()).context("wait4");
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        bail!(
            "blobfs fsck {mode} did not exit normally (wait status {status:#x}); output: {}",
            String::from_utf8_lossy(&out)
        );
    };
    let json: serde_json::Value = serde_json::from_slice(&out).with_context(|| {
        format!(
            "blobfs fsck {mode} (exit code {code}) printed no JSON: {}",
            String::from_utf8_lossy(&out)
        )
    })?;
    Ok(FsckRun {
        code,
        wall,
        user: tv(ru.ru_utime),
        sys: tv(ru.ru_stime),
        // Linux reports ru_maxrss in KiB.
        max_rss_kib: ru.ru_maxrss as u64,
        notes: json["notes"].as_u64().unwrap_or(0),
        repairs: json["repairs"].as_array().map_or(0, Vec::len),
        json,
    })
}

fn check_clean(r: &FsckRun, what: &str) -> Result<()> {
    let summary = r.json["summary"].as_str().unwrap_or("");
    ensure!(
        r.code == 0 && summary.starts_with("clean"),
        "{what}: exit code {} (want 0), summary {summary:?} (want \"clean\"): {:#}",
        r.code,
        r.json
    );
    ensure!(
        r.json["filesystem"].as_bool() == Some(true),
        "{what}: fsck did not find a filesystem: {:#}",
        r.json
    );
    ensure!(
        r.json["errors"].as_u64() == Some(0),
        "{what}: errors reported: {:#}",
        r.json
    );
    Ok(())
}
