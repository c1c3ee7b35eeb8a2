//! Crash test through the real mount: `blobfs mount IMG MNT --foreground` as a child
//! process, an fsync-heavy workload from several threads of this process, then kill -9 of
//! the server at a random moment. Offline, every file whose fsync returned (and every rename
//! and unlink confirmed by a directory fsync) must be there exactly as acknowledged, and
//! `FileSystem::check()` must be clean. The next run mounts the same image again, so the
//! state accumulates over the runs.
//!
//! kill -9 of the server is not a power cut: the writes it completed to the image persist
//! (O_DIRECT); what is lost is its memory (dirty pages, uncommitted metadata). That is what
//! this proves harmless for fsynced files.
//!
//! `BLOBFS_CRASH_RUNS` (default 25) and `BLOBFS_CRASH_SEED` change the number of runs and
//! the seed; `BLOBFS_TEST_MOUNT_OPTIONS` adds `-o` options (e.g. `writeback_cache`). Needs
//! root and /dev/fuse.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use blobfs::{FileSystem, FsOptions, Kind, ROOT_INO};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_blobfs");
/// Workload threads.
const THREADS: usize = 4;
const PAGE: usize = 4096;
/// A thread prefers unlinks once it has this many files.
const MANY_FILES: usize = 120;

fn require_fuse() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the crash test mounts with mount(2) and needs root; euid is {euid}"
    );
    if let Err(e) = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
    {
        panic!("the crash test needs /dev/fuse ({e}); modprobe fuse, or run where FUSE is");
    }
}

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

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }

    /// A file size: some empty, many small, some up to 1 MiB.
    fn file_size(&mut self) -> usize {
        (match self.range(0, 100) {
            0..=7 => 0,
            8..=54 => self.range(1, 8 << 10),
            55..=91 => self.range(8 << 10, 128 << 10),
            _ => self.range(128 << 10, 1 << 20),
        }) as usize
    }
}

/// A file content as the ledger keeps it: length and SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Ver {
    len: u64,
    sha: [u8; 32],
}

impl Ver {
    fn of(data: &[u8]) -> Ver {
        Ver {
            len: data.len() as u64,
            sha: Sha256::digest(data).into(),
        }
    }
}

/// An overwrite or append issued and not acknowledged: the whole content before and after
/// (at most one per thread at a time).
#[derive(Clone, Debug)]
struct Pending {
    old: Vec<u8>,
    new: Vec<u8>,
}

/// What the workload was told about one file.
#[derive(Clone, Debug)]
struct Rec {
    owner: usize,
    /// Names it may have in the owner's directory: one, or the old and the new one while a
    /// rename is not confirmed by a directory fsync.
    names: Vec<String>,
    /// The content its last fsync acknowledged.
    ver: Ver,
    /// An overwrite or append under way (not acknowledged): each 4 KiB page may be old or
    /// new (see `page_mix`).
    pending: Option<Pending>,
    /// An unlink was issued: it may be gone.
    unlinking: bool,
    /// The unlink and a directory fsync after it returned: it must be gone.
    unlinked: bool,
}

impl Rec {
    fn stable(&self) -> bool {
        self.names.len() == 1 && self.pending.is_none() && !self.unlinking
    }

    /// An overwrite/append, rename or unlink issued but not acknowledged.
    fn in_flight(&self) -> bool {
        self.names.len() > 1 || self.pending.is_some() || (self.unlinking && !self.unlinked)
    }
}

#[derive(Debug, Default)]
struct Stats {
    creates: u64,
    overwrites: u64,
    appends: u64,
    renames: u64,
    unlinks: u64,
}

#[derive(Debug, Default)]
struct Ledger {
    recs: BTreeMap<u64, Rec>,
    next_id: u64,
    /// Every name the workload ever used (created or renamed to).
    issued: HashSet<String>,
    stats: Stats,
    /// Errors the workload got while the server was alive.
    unexpected: Vec<String>,
    /// Files whose content read through the mount differed from the ledger (while alive).
    online_bad: Vec<String>,
}

struct Shared {
    ledger: Mutex<Ledger>,
    stop: AtomicBool,
    /// Set just before the kill: errors after it are expected.
    killing: AtomicBool,
}

fn dir_name(k: usize) -> String {
    format!("d{k}")
}

/// One workload thread: until stopped or an error (the server's death) ends it.
fn worker(sh: &Shared, mnt: &Path, run: usize, k: usize, seed: u64) {
    let dir = mnt.join(dir_name(k));
    let mut rng = Rng::new(seed);
    let mut n = 0u64;
    while !sh.stop.load(Ordering::SeqCst) {
        if let Err(e) = step(sh, &dir, run, k, &mut rng, &mut n) {
            if !sh.killing.load(Ordering::SeqCst) {
                sh.ledger
                    .lock()
                    .unwrap()
                    .unexpected
                    .push(format!("run {run} thread {k}: {e}"));
            }
            return;
        }
    }
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One operation. File I/O never happens under the ledger lock.
fn step(
    sh: &Shared,
    dir: &Path,
    run: usize,
    k: usize,
    rng: &mut Rng,
    n: &mut u64,
) -> std::io::Result<()> {
    let mut fresh_name = |sh: &Shared| {
        let name = format!("r{run}-t{k}-n{n}");
        *n += 1;
        sh.ledger.lock().unwrap().issued.insert(name.clone());
        name
    };
    let live: Vec<u64> = {
        let l = sh.ledger.lock().unwrap();
        l.recs
            .iter()
            .filter(|(_, r)| r.owner == k && r.stable())
            .map(|(&id, _)| id)
            .collect()
    };
    // The mix: create 45%, overwrite 15%, append 10%, rename 15%, unlink 15%; a thread with
    // many files turns half of its creates into unlinks.
    let roll = match rng.range(0, 100) {
        r if r < 45 && r % 2 == 0 && live.len() > MANY_FILES => 99,
        r => r,
    };
    if live.is_empty() || roll < 45 {
        // Create, write (sometimes in two parts with an fsync between), fsync.
        let name = fresh_name(sh);
        let size = rng.file_size();
        let data = rng.bytes(size);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(&name))?;
        let cut = if rng.range(0, 4) == 0 {
            rng.range(0, data.len() as u64 + 1) as usize
        } else {
            data.len()
        };
        f.write_all(&data[..cut])?;
        if cut < data.len() {
            f.sync_data()?;
            f.write_all(&data[cut..])?;
        }
        f.sync_all()?;
        let mut l = sh.ledger.lock().unwrap();
        let id = l.next_id;
        l.next_id += 1;
        l.recs.insert(
            id,
            Rec {
                owner: k,
                names: vec![name],
                ver: Ver::of(&data),
                pending: None,
                unlinking: false,
                unlinked: false,
            },
        );
        l.stats.creates += 1;
        return Ok(());
    }
    let id = live[rng.range(0, live.len() as u64) as usize];
    let (name, ver) = {
        let l = sh.ledger.lock().unwrap();
        let r = &l.recs[&id];
        (r.names[0].clone(), r.ver.clone())
    };
    let path = dir.join(&name);
    if roll < 70 {
        // Overwrite a range in place, or append; fsync. Read it first: it must be what the
        // ledger says.
        let cur = fs::read(&path)?;
        if Ver::of(&cur) != ver {
            sh.ledger.lock().unwrap().online_bad.push(format!(
                "run {run}: {name}: {} bytes read through the mount, {} acknowledged, or \
                 other content",
                cur.len(),
                ver.len
            ));
            return Ok(());
        }
        let append = roll >= 60 || cur.is_empty();
        let (new, off, len) = if append {
            let add_len = rng.range(1, 64 << 10) as usize;
            let add = rng.bytes(add_len);
            let mut new = cur.clone();
            new.extend_from_slice(&add);
            (new, cur.len(), add.len())
        } else {
            let off = rng.range(0, cur.len() as u64) as usize;
            let len = rng.range(1, (cur.len() - off).min(256 << 10) as u64 + 1) as usize;
            let mut new = cur.clone();
            new[off..off + len].copy_from_slice(&rng.bytes(len));
            (new, off, len)
        };
        let nv = Ver::of(&new);
        sh.ledger.lock().unwrap().recs.get_mut(&id).unwrap().pending = Some(Pending {
            old: cur,
            new: new.clone(),
        });
        if append {
            let mut f = OpenOptions::new().append(true).open(&path)?;
            f.write_all(&new[off..])?;
            f.sync_all()?;
        } else {
            let f = OpenOptions::new().write(true).open(&path)?;
            f.write_all_at(&new[off..off + len], off as u64)?;
            if rng.range(0, 2) == 0 {
                f.sync_data()?;
            } else {
                f.sync_all()?;
            }
        }
        let mut l = sh.ledger.lock().unwrap();
        let r = l.recs.get_mut(&id).unwrap();
        r.ver = nv;
        r.pending = None;
        if append {
            l.stats.appends += 1;
        } else {
            l.stats.overwrites += 1;
        }
    } else if roll < 85 {
        // Rename to a new name; confirmed by a directory fsync.
        let to = fresh_name(sh);
        sh.ledger
            .lock()
            .unwrap()
            .recs
            .get_mut(&id)
            .unwrap()
            .names
            .push(to.clone());
        fs::rename(&path, dir.join(&to))?;
        fsync_dir(dir)?;
        let mut l = sh.ledger.lock().unwrap();
        l.recs.get_mut(&id).unwrap().names = vec![to];
        l.stats.renames += 1;
    } else {
        // Unlink; confirmed by a directory fsync.
        sh.ledger
            .lock()
            .unwrap()
            .recs
            .get_mut(&id)
            .unwrap()
            .unlinking = true;
        fs::remove_file(&path)?;
        fsync_dir(dir)?;
        let mut l = sh.ledger.lock().unwrap();
        l.recs.get_mut(&id).unwrap().unlinked = true;
        l.stats.unlinks += 1;
    }
    Ok(())
}

fn mounted_any(mnt: &Path) -> bool {
    blobfs_fuse::find_mount(mnt)
        .ok()
        .flatten()
        .is_some_and(|m| m.fstype.starts_with("fuse"))
}

fn mounted(mnt: &Path) -> bool {
    blobfs_fuse::find_mount(mnt)
        .ok()
        .flatten()
        .is_some_and(|m| m.fstype == blobfs_fuse::FSTYPE)
}

/// A `blobfs mount --foreground` child. Dropping it kills the server and detaches whatever
/// is mounted at the mountpoint, so nothing is left behind when an assertion fails.
struct Server {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
}

impl Server {
    fn start(img: &Path, mnt: &Path, log: &Path) -> Server {
        let err = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["mount", img.to_str().unwrap(), mnt.to_str().unwrap()])
            .arg("--foreground");
        // As in the in-process mount tests: e.g. `writeback_cache`.
        if let Ok(o) = std::env::var("BLOBFS_TEST_MOUNT_OPTIONS") {
            cmd.args(["-o", &o]);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
        // SAFETY: the closure runs in the child between fork and exec and only calls
        // prctl, which is async-signal-safe; it makes the server die with this test's
        // spawning thread (a test killed by a timeout leaves no server behind).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        let mut s = Server {
            child: Some(cmd.spawn().unwrap()),
            mnt: mnt.to_path_buf(),
            log: log.to_path_buf(),
        };
        let until = Instant::now() + Duration::from_secs(20);
        while !mounted(mnt) {
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                s.child = None;
                panic!("blobfs mount exited with {st}:\n{}", s.log_text());
            }
            assert!(
                Instant::now() < until,
                "timed out waiting for the mount:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        s
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9, reap, and lazily detach the dead mount.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.detach();
    }

    fn detach(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        while mounted_any(&self.mnt) && Instant::now() < until {
            if blobfs_fuse::unmount(&self.mnt, blobfs_fuse::Unmount::Lazy).is_err() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGTERM (a clean unmount) and wait for the exit; returns whether it exited 0.
    fn terminate(&mut self) -> bool {
        let mut c = self.child.take().unwrap();
        // SAFETY: kill with the pid of the child this test started and has not reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st.success();
            }
            if Instant::now() > until {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.detach();
    }
}

/// The image opened offline, read-only (nothing is written: orphans stay for the next
/// read-write mount).
fn open_offline(img: &Path) -> FileSystem {
    let dev = driver::uring::UringDevice::open(
        img.to_str().unwrap(),
        &driver::uring::UringOptions {
            lba_size: None,
            read_only: true,
        },
    )
    .unwrap();
    FileSystem::open(
        Arc::new(dev),
        FsOptions {
            read_only: true,
            ..Default::default()
        },
    )
    .unwrap()
}

#[derive(Debug, Default)]
struct Tally {
    lost: u64,
    inconsistent: u64,
}

/// Whether `data` is what a crash during an unacknowledged overwrite or append may leave:
/// each 4 KiB page from the old or the new content (in-place data is written back page by
/// page, and the server may have written back some pages and not others), and a length
/// between the old and the new one (an append the kernel sent in several requests may have
/// had only some of them committed; the bytes under the length are never unwritten).
fn page_mix(data: &[u8], p: &Pending) -> bool {
    let (old, new) = (&p.old[..], &p.new[..]);
    let len = data.len();
    len >= old.len().min(new.len())
        && len <= old.len().max(new.len())
        && data.chunks(PAGE).enumerate().all(|(i, page)| {
            let (a, b) = (i * PAGE, i * PAGE + page.len());
            (b <= new.len() && page == &new[a..b]) || (b <= old.len() && page == &old[a..b])
        })
}

/// Checks what was found of a file (the name it has and its content, if any) against what
/// the ledger allows, and brings the record to what was found. Returns false when the file
/// is gone (the record is dropped).
fn check_rec(
    what: &str,
    rec: &mut Rec,
    found: Option<(String, Vec<u8>)>,
    present_names: usize,
    t: &mut Tally,
) -> bool {
    let bad = |t: &mut Tally, lost: bool, msg: String| {
        eprintln!("fuse-crash: {what}: {msg}");
        if lost {
            t.lost += 1;
        } else {
            t.inconsistent += 1;
        }
    };
    if present_names > 1 {
        bad(
            t,
            false,
            format!("present under several names {:?}", rec.names),
        );
    }
    let Some((name, data)) = found else {
        if !rec.unlinking {
            bad(
                t,
                true,
                format!(
                    "fsynced file gone: none of {:?} exists ({} bytes acknowledged)",
                    rec.names, rec.ver.len
                ),
            );
        }
        return false;
    };
    if rec.unlinked {
        bad(
            t,
            false,
            format!("{name} exists after its unlink and a directory fsync returned"),
        );
    }
    let got = Ver::of(&data);
    if got.sha != rec.ver.sha {
        match &rec.pending {
            Some(p) if page_mix(&data, p) => {}
            Some(p) => bad(
                t,
                false,
                format!(
                    "{name}: {} bytes, neither the acknowledged content ({} bytes) nor the \
                     one being written ({} bytes) nor a page mix of the two",
                    data.len(),
                    rec.ver.len,
                    p.new.len()
                ),
            ),
            None => bad(
                t,
                true,
                format!(
                    "{name}: {} bytes that differ from the {} acknowledged bytes",
                    data.len(),
                    rec.ver.len
                ),
            ),
        }
    }
    rec.names = vec![name];
    rec.ver = got;
    rec.pending = None;
    rec.unlinking = false;
    rec.unlinked = false;
    true
}

/// Checks the image offline against the ledger; brings the ledger to what was found.
fn verify_offline(img: &Path, l: &mut Ledger, t: &mut Tally, when: &str) {
    let fs = open_offline(img);
    let rep = fs.check().unwrap();
    if !rep.is_clean() {
        eprintln!(
            "fuse-crash: {when}: check found problems: {:#?}",
            rep.problems
        );
        t.inconsistent += 1;
    }
    let mut dirs: Vec<HashMap<String, u64>> = Vec::new();
    for k in 0..THREADS {
        let d = fs
            .lookup(ROOT_INO, dir_name(k).as_bytes())
            .unwrap_or_else(|e| panic!("{when}: /{}: {e} (fsynced before run 0)", dir_name(k)));
        let mut m = HashMap::new();
        for e in fs.readdir(d.ino).unwrap() {
            let name = String::from_utf8(e.name).unwrap();
            if e.kind != Kind::File || !l.issued.contains(&name) {
                eprintln!(
                    "fuse-crash: {when}: d{k}/{name} ({:?}) was never created",
                    e.kind
                );
                t.inconsistent += 1;
            }
            m.insert(name, e.ino);
        }
        dirs.push(m);
    }
    let read = |ino: u64| {
        let size = fs.getattr(ino).unwrap().size;
        fs.read(ino, 0, size as usize).unwrap()
    };
    l.recs.retain(|id, rec| {
        let present: Vec<(&String, u64)> = rec
            .names
            .iter()
            .filter_map(|n| dirs[rec.owner].get(n).map(|&ino| (n, ino)))
            .collect();
        let found = present.first().map(|&(n, ino)| (n.clone(), read(ino)));
        check_rec(
            &format!("{when}: file {id} of thread {}", rec.owner),
            rec,
            found,
            present.len(),
            t,
        )
    });
}

/// Checks every file through the mount (all records are stable here).
fn verify_mounted(mnt: &Path, l: &mut Ledger, t: &mut Tally) {
    l.recs.retain(|id, rec| {
        let path = mnt.join(dir_name(rec.owner)).join(&rec.names[0]);
        let found = fs::read(&path).ok().map(|d| (rec.names[0].clone(), d));
        let n = usize::from(found.is_some());
        check_rec(
            &format!("remounted: file {id} of thread {}", rec.owner),
            rec,
            found,
            n,
            t,
        )
    });
}

#[test]
fn fsynced_files_survive_kill_9_of_the_server() {
    require_fuse();
    let t0 = Instant::now();
    let runs: usize = std::env::var("BLOBFS_CRASH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(25);
    let seed: u64 = std::env::var("BLOBFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c4a5);
    eprintln!("fuse-crash: {runs} runs, {THREADS} threads, seed {seed}");
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("fs.img");
    let mnt = tmp.path().join("mnt");
    let log = tmp.path().join("server.log");
    fs::create_dir(&mnt).unwrap();
    let o = Command::new(BIN)
        .args(["mkfs", img.to_str().unwrap(), "--size", "512M"])
        .args(["--cluster-size", "64K"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    let mut ledger = Ledger::default();
    let mut kills_mid_op = 0u64;
    let mut t_verify = Duration::ZERO;
    for run in 0..runs {
        let mut server = Server::start(&img, &mnt, &log);
        if run == 0 {
            for k in 0..THREADS {
                fs::create_dir(mnt.join(dir_name(k))).unwrap();
            }
            fsync_dir(&mnt).unwrap();
        }
        let sh = Arc::new(Shared {
            ledger: Mutex::new(std::mem::take(&mut ledger)),
            stop: AtomicBool::new(false),
            killing: AtomicBool::new(false),
        });
        let workers: Vec<_> = (0..THREADS)
            .map(|k| {
                let (sh, mnt) = (Arc::clone(&sh), mnt.clone());
                let s = rng.next();
                std::thread::spawn(move || worker(&sh, &mnt, run, k, s))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(rng.range(100, 1500)));
        sh.killing.store(true, Ordering::SeqCst);
        server.kill9();
        sh.stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().unwrap();
        }
        drop(server);
        ledger = Arc::try_unwrap(sh)
            .ok()
            .expect("workers are done")
            .ledger
            .into_inner()
            .unwrap();
        assert!(
            ledger.unexpected.is_empty(),
            "errors while the server was alive: {:#?}",
            ledger.unexpected
        );
        assert!(
            ledger.online_bad.is_empty(),
            "wrong content read through the mount: {:#?}",
            ledger.online_bad
        );
        kills_mid_op += ledger.recs.values().filter(|r| r.in_flight()).count() as u64;
        let t = Instant::now();
        verify_offline(&img, &mut ledger, &mut tally, &format!("run {run}"));
        t_verify += t.elapsed();
    }

    // A last, clean mount: everything reads back through the kernel; SIGTERM unmounts and
    // closes cleanly; offline all is the same and the check clean.
    let mut server = Server::start(&img, &mnt, &log);
    verify_mounted(&mnt, &mut ledger, &mut tally);
    assert!(server.terminate(), "unclean exit:\n{}", server.log_text());
    let server_log = server.log_text();
    drop(server);
    assert!(
        !server_log.contains("panicked"),
        "the server panicked:\n{server_log}"
    );
    verify_offline(&img, &mut ledger, &mut tally, "after a clean unmount");

    let s = &ledger.stats;
    eprintln!(
        "fuse-crash: acknowledged: {} creates, {} overwrites, {} appends, {} renames, {} \
         unlinks; {} changes of fsynced files caught unacknowledged by a kill; {} files at the end; verify {:.1}s; total \
         {:.1}s",
        s.creates,
        s.overwrites,
        s.appends,
        s.renames,
        s.unlinks,
        kills_mid_op,
        ledger.recs.len(),
        t_verify.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    println!(
        "fuse-crash: runs={runs} fsynced_lost={} inconsistent={}",
        tally.lost, tally.inconsistent
    );
    assert!(s.creates >= runs as u64, "the workload hardly ran: {s:?}");
    assert_eq!(tally.lost, 0, "fsynced data lost");
    assert_eq!(tally.inconsistent, 0, "inconsistent state after a crash");
}
