//! Big workloads through the in-process FUSE mount: a directory of 100,000 entries, a 1 GiB
//! file, eight concurrent writers, and ENOSPC on a full image followed by normal work. Each
//! unmounts cleanly and then asserts the offline `FileSystem::check()` is clean.
//!
//! These use real disk (up to ~1 GiB in the temp dir) and time; nextest runs them one at a
//! time (test group `fuse-big` in .config/nextest.toml). Timings are printed, not asserted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{errno, fixture, pattern, sh};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// A seeded xorshift64* generator.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Fills `buf` with pseudo-random bytes determined by `seed` (fast: 8 bytes a step).
fn fill(seed: u64, buf: &mut [u8]) {
    let mut r = Rng::new(seed);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&r.next().to_le_bytes());
    }
    let rest = words.into_remainder();
    let last = r.next().to_le_bytes();
    rest.copy_from_slice(&last[..rest.len()]);
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

/// Names in a directory, sorted (read_dir: no `.` and `..`).
fn names(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(p)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Bytes free for unprivileged users on the filesystem holding `p`.
fn avail_bytes(p: &Path) -> u64 {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `s` a valid, writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "statvfs {}", p.display());
    s.f_bavail * s.f_frsize
}

#[test]
fn directory_of_100k_entries() {
    const N: usize = 100_000;
    let t0 = Instant::now();
    let fx = fixture(512 << 20);
    let mut m = fx.mount("");
    let dir = fx.p("big");
    fs::create_dir(&dir).unwrap();
    let name = |i: usize| format!("entry-{i:06}");

    let t = Instant::now();
    for i in 0..N {
        File::create(dir.join(name(i))).unwrap();
    }
    let t_create = t.elapsed();

    // read_dir: every name exactly once.
    let t = Instant::now();
    let listed = names(&dir);
    let t_list = t.elapsed();
    assert_eq!(listed.len(), N, "read_dir returned {} names", listed.len());
    assert_eq!(
        listed.iter().collect::<HashSet<_>>().len(),
        N,
        "duplicate names"
    );
    let expected: Vec<String> = (0..N).map(name).collect();
    assert!(listed == expected, "read_dir is missing names");
    // find agrees (it also lists the directory itself).
    let t = Instant::now();
    let found = sh(&format!("find '{}' | wc -l", dir.display()));
    let t_find = t.elapsed();
    assert_eq!(found.trim(), (N + 1).to_string());
    for i in [0, 1, 777, 49_999, 50_000, 99_998, N - 1] {
        let md = fs::metadata(dir.join(name(i))).unwrap();
        assert!(md.is_file());
        assert_eq!((md.len(), md.nlink()), (0, 1));
    }
    assert_eq!(fs::metadata(&dir).unwrap().nlink(), 2);

    // Remove every other entry.
    let t = Instant::now();
    for i in (0..N).step_by(2) {
        fs::remove_file(dir.join(name(i))).unwrap();
    }
    let t_remove = t.elapsed();
    let odd: Vec<String> = (1..N).step_by(2).map(name).collect();
    assert!(names(&dir) == odd, "wrong listing after removing half");

    let t = Instant::now();
    m.unmount().unwrap();
    let t_unmount = t.elapsed();
    let t = Instant::now();
    fx.check_clean();
    let t_check = t.elapsed();

    // Remount: the remaining 50,000 are there, the removed ones are not.
    let mut m = fx.mount("");
    let t = Instant::now();
    let listed = names(&dir);
    let t_relist = t.elapsed();
    assert_eq!(listed.len(), N / 2);
    assert!(listed == odd, "wrong listing after the remount");
    assert_eq!(
        sh(&format!("find '{}' -type f | wc -l", dir.display())).trim(),
        (N / 2).to_string()
    );
    for i in [1, 12_345, N - 1] {
        assert!(fs::metadata(dir.join(name(i))).unwrap().is_file());
    }
    for i in [0, 12_344, N - 2] {
        assert_eq!(errno(fs::metadata(dir.join(name(i)))), libc::ENOENT);
    }
    m.unmount().unwrap();
    fx.check_clean();
    eprintln!(
        "fuse-big: 100k entries: create {:.1}s ({:.0}/s), read_dir {:.2}s, find {:.2}s, \
         remove 50k {:.1}s ({:.0}/s), unmount {:.2}s, check {:.2}s, read_dir after \
         remount {:.2}s; total {:.1}s",
        t_create.as_secs_f64(),
        N as f64 / t_create.as_secs_f64(),
        t_list.as_secs_f64(),
        t_find.as_secs_f64(),
        t_remove.as_secs_f64(),
        (N / 2) as f64 / t_remove.as_secs_f64(),
        t_unmount.as_secs_f64(),
        t_check.as_secs_f64(),
        t_relist.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn one_gib_file_written_fsynced_and_read_back_after_remount() {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: u64 = 1024;
    const SEED: u64 = 0x016b_f11e;
    let chunk_seed = |i: u64| SEED ^ (i << 20);
    let t0 = Instant::now();
    let tmp = std::env::temp_dir();
    let avail = avail_bytes(&tmp);
    assert!(
        avail > (1200 << 20),
        "the 1 GiB test needs ~1.2 GiB free in {} ({} MiB free)",
        tmp.display(),
        avail >> 20
    );
    let fx = fixture(1536 << 20);
    let mut m = fx.mount("");
    let path = fx.p("big.bin");

    // Write in 1 MiB chunks, hashing as we go; time only the writes and the fsync.
    let mut buf = vec![0u8; CHUNK];
    let mut h = Sha256::new();
    let mut t_write = Duration::ZERO;
    let mut f = File::create(&path).unwrap();
    for i in 0..CHUNKS {
        fill(chunk_seed(i), &mut buf);
        h.update(&buf);
        let t = Instant::now();
        f.write_all(&buf).unwrap();
        t_write += t.elapsed();
    }
    let t = Instant::now();
    f.sync_all().unwrap();
    let t_fsync = t.elapsed();
    t_write += t_fsync;
    drop(f);
    let want: [u8; 32] = h.finalize().into();
    assert_eq!(fs::metadata(&path).unwrap().len(), CHUNKS * CHUNK as u64);

    // Unmount (drops the kernel's page cache for the file, and blobfs's own) and check.
    let t = Instant::now();
    m.unmount().unwrap();
    let t_unmount = t.elapsed();
    let t = Instant::now();
    fx.check_clean();
    let t_check = t.elapsed();

    // Remount and read it back sequentially.
    let mut m = fx.mount("");
    let mut f = File::open(&path).unwrap();
    assert_eq!(f.metadata().unwrap().len(), CHUNKS * CHUNK as u64);
    let mut h = Sha256::new();
    let mut t_read = Duration::ZERO;
    let mut first_bad = None;
    let mut expect = vec![0u8; CHUNK];
    for i in 0..CHUNKS {
        let t = Instant::now();
        f.read_exact(&mut buf).unwrap();
        t_read += t.elapsed();
        h.update(&buf);
        if first_bad.is_none() {
            fill(chunk_seed(i), &mut expect);
            if buf != expect {
                first_bad = Some(i);
            }
        }
    }
    let mut tail = [0u8; 1];
    assert_eq!(f.read(&mut tail).unwrap(), 0, "data past the end");
    let got: [u8; 32] = h.finalize().into();
    assert_eq!(
        first_bad, None,
        "chunk {first_bad:?} differs after the remount"
    );
    assert_eq!(hex(&got), hex(&want), "whole-file SHA-256 differs");

    // Spot checks at odd offsets and lengths (crossing chunk boundaries), with pread.
    let mut r = Rng::new(42);
    let total = CHUNKS * CHUNK as u64;
    for k in 0..16 {
        let len = r.range(1, 3 * CHUNK as u64) as usize;
        let off = match k {
            0 => 0,
            1 => total - len as u64,
            _ => r.range(0, total - len as u64),
        };
        let mut got = vec![0u8; len];
        f.read_exact_at(&mut got, off).unwrap();
        // The expected bytes, from the chunks the range covers.
        let mut want = Vec::with_capacity(len + 2 * CHUNK);
        let (c0, c1) = (off / CHUNK as u64, (off + len as u64 - 1) / CHUNK as u64);
        for c in c0..=c1 {
            fill(chunk_seed(c), &mut expect);
            want.extend_from_slice(&expect);
        }
        let a = (off - c0 * CHUNK as u64) as usize;
        assert!(
            got == want[a..a + len],
            "range {off}+{len} differs after the remount"
        );
    }
    drop(f);
    m.unmount().unwrap();
    fx.check_clean();
    let gib = total;
    eprintln!(
        "fuse-big: 1 GiB file: write {:.0} MB/s ({:.1}s incl. fsync {:.2}s), read after \
         remount {:.0} MB/s ({:.1}s), unmount {:.2}s, check {:.2}s, sha256 {}; total {:.1}s",
        mbps(gib, t_write),
        t_write.as_secs_f64(),
        t_fsync.as_secs_f64(),
        mbps(gib, t_read),
        t_read.as_secs_f64(),
        t_unmount.as_secs_f64(),
        t_check.as_secs_f64(),
        &hex(&want)[..16],
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn eight_concurrent_writers_with_fsyncs_and_appends() {
    const THREADS: u64 = 8;
    let t0 = Instant::now();
    let fx = fixture(512 << 20);
    let mut m = fx.mount("");
    fs::create_dir(fx.p("w")).unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(THREADS as usize));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let path = fx.p(&format!("w/file-{t}"));
            let barrier = std::sync::Arc::clone(&barrier);
            std::thread::spawn(move || {
                let mut r = Rng::new(1000 + t);
                let mut want: Vec<u8> = Vec::new();
                barrier.wait();
                // Several MiB in writes of odd sizes, fsync about every MiB.
                let target = r.range(4 << 20, 7 << 20) as usize;
                let mut f = OpenOptions::new()
                    .create_new(true)
                    .read(true)
                    .write(true)
                    .open(&path)
                    .unwrap();
                let mut since_sync = 0;
                let mut n = 0u64;
                while want.len() < target {
                    let len = r.range(1, 512 << 10) as usize;
                    let mut piece = vec![0u8; len];
                    fill((t << 32) | n, &mut piece);
                    n += 1;
                    f.write_all(&piece).unwrap();
                    want.extend_from_slice(&piece);
                    since_sync += len;
                    if since_sync >= 1 << 20 {
                        f.sync_all().unwrap();
                        since_sync = 0;
                    }
                }
                // Overwrite a few ranges in place (unaligned), fsync.
                for _ in 0..4 {
                    let len = r.range(1, 200_000) as usize;
                    let off = r.range(0, (want.len() - len) as u64) as usize;
                    let mut piece = vec![0u8; len];
                    fill((t << 32) | n, &mut piece);
                    n += 1;
                    f.write_all_at(&piece, off as u64).unwrap();
                    want[off..off + len].copy_from_slice(&piece);
                }
                f.sync_data().unwrap();
                drop(f);
                // Appends through a fresh O_APPEND descriptor, each fsynced.
                let mut f = OpenOptions::new().append(true).open(&path).unwrap();
                for _ in 0..5 {
                    let len = r.range(1, 300_000) as usize;
                    let mut piece = vec![0u8; len];
                    fill((t << 32) | n, &mut piece);
                    n += 1;
                    f.write_all(&piece).unwrap();
                    want.extend_from_slice(&piece);
                    f.sync_all().unwrap();
                }
                drop(f);
                // This thread's view right away.
                assert!(fs::read(&path).unwrap() == want, "{}", path.display());
                (path, want)
            })
        })
        .collect();
    let files: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let t_write = t0.elapsed();
    let bytes: usize = files.iter().map(|(_, w)| w.len()).sum();
    let verify = |when: &str| {
        for (path, want) in &files {
            let got = fs::read(path).unwrap();
            assert_eq!(got.len(), want.len(), "{} {when}", path.display());
            assert!(
                sha256(&got) == sha256(want),
                "{} differs {when}",
                path.display()
            );
        }
    };
    verify("after all writers finished");
    m.unmount().unwrap();
    fx.check_clean();
    let mut m = fx.mount("");
    verify("after the remount");
    m.unmount().unwrap();
    fx.check_clean();
    eprintln!(
        "fuse-big: {THREADS} writers: {:.1} MiB in {:.2}s ({:.0} MB/s with fsyncs); total {:.1}s",
        bytes as f64 / (1 << 20) as f64,
        t_write.as_secs_f64(),
        mbps(bytes as u64, t_write),
        t0.elapsed().as_secs_f64()
    );
}

/// Closes a file with close(2) and returns its error: the error of the FUSE flush.
fn close_errno(f: File) -> i32 {
    use std::os::fd::IntoRawFd;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` is an open descriptor we own (taken from the File), closed once.
    let rc = unsafe { libc::close(fd) };
    if rc == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }
}

#[test]
fn enospc_on_a_full_image_then_normal_work_after_deletes() {
    const MIB: usize = 1 << 20;
    let t0 = Instant::now();
    let fx = fixture(64 << 20);
    let mut m = fx.mount("");
    // Something that must survive the full disk.
    let keep = pattern(5, 24 * MIB + 333);
    let mut f = File::create(fx.p("keep")).unwrap();
    f.write_all(&keep).unwrap();
    f.sync_all().unwrap();
    drop(f);

    // Fill the image with one file until a write (or the fsync) fails. At most 60 MiB: more
    // than the free space, less than the device (a file cannot be larger than the device:
    // past that, writes fail with EFBIG, which with -o writeback_cache is what fsync would
    // report for a file written far past the end of the space).
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(fx.p("fill"))
        .unwrap();
    let mut written = 0usize;
    let mut failure = None;
    let mut failed_in = "write";
    for i in 0..60u64 {
        let chunk = pattern(100 + i, MIB);
        match f.write(&chunk) {
            Ok(n) if n == chunk.len() => written += n,
            Ok(n) => {
                // A short write: the next one must say why.
                written += n;
                failure = Some(f.write(&chunk[n..]).unwrap_err());
                break;
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let failure = match failure {
        Some(e) => e,
        None => {
            failed_in = "fsync";
            f.sync_all()
                .expect_err("60 MiB and 24 MiB fitted on a 64 MiB image")
        }
    };
    assert_eq!(
        failure.raw_os_error(),
        Some(libc::ENOSPC),
        "filling the image failed with {failure} after {written} bytes, not ENOSPC"
    );
    // fsync and close say ENOSPC too (or succeed), never EIO.
    let fsync_after = match f.sync_all() {
        Ok(()) => 0,
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "fsync when full: {e}");
            libc::ENOSPC
        }
    };
    let ce = close_errno(f);
    assert!(
        ce == 0 || ce == libc::ENOSPC,
        "close when full: errno {ce} ({})",
        std::io::Error::from_raw_os_error(ce)
    );
    let t_fill = t0.elapsed();

    // The mount is still usable (not read-only): metadata changes work, what was written
    // reads back, the fsynced file is intact.
    fs::create_dir(fx.p("still-writable")).unwrap();
    File::create(fx.p("still-writable/empty")).unwrap();
    fs::rename(fx.p("still-writable/empty"), fx.p("still-writable/renamed")).unwrap();
    assert_eq!(names(&fx.p("still-writable")), ["renamed"]);
    assert!(fs::read(fx.p("keep")).unwrap() == keep, "keep damaged");
    let got = fs::read(fx.p("fill")).unwrap();
    assert!(
        got.len() >= written,
        "fill has {} bytes, {written} were written",
        got.len()
    );
    for (i, c) in got[..written].chunks(MIB).enumerate() {
        assert!(
            c == &pattern(100 + i as u64, MIB)[..c.len()],
            "fill: MiB {i} does not read back what write() accepted"
        );
    }

    // Delete the big file; new data fits again.
    fs::remove_file(fx.p("fill")).unwrap();
    let data = pattern(9, 6 * MIB + 17);
    let mut f = OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(fx.p("after"))
        .unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    let mut back = Vec::new();
    File::open(fx.p("after"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert!(back == data, "after: content differs");
    assert_eq!(close_errno(f), 0);
    m.unmount().unwrap();
    fx.check_clean();

    // And after a remount.
    let mut m = fx.mount("");
    assert!(fs::read(fx.p("after")).unwrap() == data);
    assert!(fs::read(fx.p("keep")).unwrap() == keep);
    assert!(!fx.p("fill").exists());
    m.unmount().unwrap();
    fx.check_clean();
    eprintln!(
        "fuse-big: ENOSPC from {failed_in} after {:.1} MiB accepted on a 64 MiB image ({:.2}s; \
         then fsync errno {fsync_after}, close errno {ce}); delete and rewrite ok; total {:.1}s",
        written as f64 / MIB as f64,
        t_fill.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
