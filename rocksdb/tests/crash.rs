//! Crash tests of RocksDB on BlobFS through the `rocksdb` crate's API: a writer process is
//! killed with SIGKILL at random points, again and again on the same DB, and after every
//! kill the DB must reopen (paranoid checks on) with what RocksDB promises after a process
//! crash.
//!
//! The writer is this test binary run again (`crash_writer_child`, ignored unless the crash
//! tests start it with `BLOBFS_CRASH_MODE` set). It opens the DB in the image, prints
//! `opened`, then writes batches one after another, each putting the key `rRRR-IIIIIIII` in
//! the default column family and in `meta` (one atomic batch), and prints `ack I` (flushed)
//! after each write returned. So the parent knows exactly which writes were acknowledged
//! before the kill, and that at most one more (the one in flight) may have happened.
//!
//! - `sync=true`: every acknowledged write must be there after the kill, with its value:
//!   `rocksdb-crash: runs=N synced_lost=0`.
//! - WAL only (`sync=false`, WAL on): an acknowledged write is in the WAL's BlobFS file
//!   cache in the writer's memory until something commits it (BlobFS's background syncer,
//!   here every second, or a sync RocksDB does itself: SST files, the MANIFEST, closed
//!   WALs), so a kill may lose the last ones, as a power cut would; RocksDB promises a
//!   consistent prefix (point-in-time recovery). Asserted: the DB opens, each run's keys
//!   are a prefix of what it wrote (no holes, no garbage, at most the one unacknowledged
//!   write beyond the acknowledged ones), and nothing recovered earlier is lost later:
//!   `rocksdb-crash-wal: runs=N acked=A recovered=R holes=0`.
//!
//! After every kill the crashed image is checked with `blobfs fsck -n` (clean), then
//! reopened and verified, closed, and checked again.
//!
//! `BLOBFS_CRASH_SEED=N` repeats a run's random kill points (the seed is printed).

mod common;

use blobfs_rocksdb::rocksdb::{
    ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use common::*;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MODE: &str = "BLOBFS_CRASH_MODE";
const URI: &str = "BLOBFS_CRASH_URI";
const DB_PATH: &str = "BLOBFS_CRASH_DB";
const RUN: &str = "BLOBFS_CRASH_RUN";
const CHILD: &str = "crash_writer_child";
const RUNS: usize = 20;
/// The writer stops by itself after this long (it is meant to be killed long before).
const WRITER_LIMIT: Duration = Duration::from_secs(30);

fn key(run: usize, i: u64) -> Vec<u8> {
    format!("r{run:03}-{i:08}").into_bytes()
}

/// Parses `rRRR-IIIIIIII`.
fn parse_key(k: &[u8]) -> Option<(usize, u64)> {
    let s = std::str::from_utf8(k).ok()?;
    let (r, i) = s.strip_prefix('r')?.split_once('-')?;
    if r.len() != 3 || i.len() != 8 {
        return None;
    }
    Some((r.parse().ok()?, i.parse().ok()?))
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The value of write `i` of run `run` in column family `cf` (0 or 1): a header naming it,
/// then pseudo-random bytes, `min..max` bytes long.
fn value(run: usize, i: u64, cf: u64, (min, max): (usize, usize)) -> Vec<u8> {
    let seed = mix(((run as u64) << 40) ^ i ^ (cf << 60));
    let len = min + (seed % (max - min) as u64) as usize;
    let mut v = format!("r{run}i{i}c{cf}|").into_bytes();
    let mut x = seed;
    while v.len() < len {
        x = mix(x);
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Sync,
    Wal,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Wal => "wal",
        }
    }

    fn parse(s: &str) -> Mode {
        match s {
            "sync" => Mode::Sync,
            "wal" => Mode::Wal,
            other => panic!("{MODE}={other:?}: expected sync or wal"),
        }
    }

    /// Value sizes: the WAL-only writer is much faster, so its values are smaller.
    fn value_sizes(self) -> (usize, usize) {
        match self {
            Mode::Sync => (100, 1000),
            Mode::Wal => (16, 64),
        }
    }

    /// How long after the writer said `opened` it is killed, at most.
    fn max_delay(self) -> Duration {
        match self {
            Mode::Sync => Duration::from_millis(700),
            Mode::Wal => Duration::from_millis(1200),
        }
    }

    /// The image URI: the WAL-only variant has BlobFS's background syncer commit every
    /// second (default 5 s), so some kills land during or after one.
    fn uri(self, fx: &Fixture) -> String {
        match self {
            Mode::Sync => fx.uri(),
            Mode::Wal => format!("{}?sync_interval=1", fx.uri()),
        }
    }
}

/// Small memtables and files: flushes and compactions run while the writer is killed.
fn cf_options() -> Options {
    let mut o = Options::default();
    o.set_write_buffer_size(256 << 10);
    o.set_target_file_size_base(512 << 10);
    o.set_max_bytes_for_level_base(2 << 20);
    o.set_level_zero_file_num_compaction_trigger(4);
    o
}

fn open(env: &blobfs_rocksdb::rocksdb::Env, path: &str) -> Result<DB, String> {
    let mut opts = cf_options();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_paranoid_checks(true);
    opts.set_max_background_jobs(2);
    opts.set_env(env);
    let cfs = ["default", "meta"]
        .into_iter()
        .map(|n| ColumnFamilyDescriptor::new(n, cf_options()));
    DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| e.into_string())
}

/// The writer process (see the top of the file). Without `BLOBFS_CRASH_MODE` (someone ran
/// the ignored tests by hand) there is nothing to do.
#[test]
#[ignore = "the writer process of the crash tests, which start and kill it"]
fn crash_writer_child() {
    let Ok(mode) = std::env::var(MODE) else {
        eprintln!("{CHILD}: started without {MODE}; the crash tests run it");
        return;
    };
    let mode = Mode::parse(&mode);
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"));
    let run: usize = var(RUN).parse().expect("run number");
    let env = blobfs_rocksdb::env(&var(URI)).expect("env");
    let db = open(&env, &var(DB_PATH)).unwrap_or_else(|e| panic!("open: {e}"));
    let meta = db.cf_handle("meta").expect("meta");
    // Not print!: straight to fd 1 (libtest's capture only takes the print macros), flushed
    // after every line so the parent sees each acknowledgement before the kill.
    let mut out = std::io::stdout().lock();
    writeln!(out, "opened")
        .and_then(|()| out.flush())
        .expect("stdout");
    let mut w = WriteOptions::default();
    w.set_sync(mode == Mode::Sync);
    w.disable_wal(false);
    let started = Instant::now();
    let mut i = 0u64;
    while started.elapsed() < WRITER_LIMIT {
        let mut b = WriteBatch::default();
        b.put(key(run, i), value(run, i, 0, mode.value_sizes()));
        b.put_cf(meta, key(run, i), value(run, i, 1, mode.value_sizes()));
        db.write_opt(b, &w).expect("write");
        writeln!(out, "ack {i}")
            .and_then(|()| out.flush())
            .expect("stdout");
        i += 1;
    }
    eprintln!("{CHILD}: not killed within {WRITER_LIMIT:?}");
}

/// Kills and reaps the writer if a check fails while it runs.
struct Writer(Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

enum Event {
    Opened,
    /// The reader is done (the writer's stdout closed): how many writes were acknowledged.
    Done(Result<u64, String>),
}

/// Starts the writer for `run`; a thread reads its lines and reports `opened` and, at the
/// end, the count of acknowledged writes (which must be `ack 0`, `ack 1`, ... in order).
fn spawn_writer(
    mode: Mode,
    fx: &Fixture,
    path: &str,
    run: usize,
) -> (Writer, mpsc::Receiver<Event>) {
    let log = std::fs::File::create(fx.dir.path().join(format!("writer-{run}.stderr")))
        .expect("writer stderr file");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([CHILD, "--exact", "--include-ignored", "--nocapture"])
        .env(MODE, mode.name())
        .env(URI, mode.uri(fx))
        .env(DB_PATH, path)
        .env(RUN, run.to_string())
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("start the writer");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut acked = 0u64;
        let mut result = Ok(());
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line == "opened" {
                let _ = tx.send(Event::Opened);
            } else if let Some(n) = line.strip_prefix("ack ") {
                match n.parse::<u64>() {
                    Ok(n) if n == acked => acked += 1,
                    _ if result.is_ok() => {
                        result = Err(format!("ack out of order: {line:?} after {acked}"))
                    }
                    _ => {}
                }
            }
        }
        let _ = tx.send(Event::Done(result.map(|()| acked)));
    });
    (Writer(child), rx)
}

fn writer_stderr(fx: &Fixture, run: usize) -> String {
    std::fs::read_to_string(fx.dir.path().join(format!("writer-{run}.stderr"))).unwrap_or_default()
}

/// What one verification found in the DB.
#[derive(Default)]
struct Found {
    /// Per run: the count of consecutive writes from 0 that are present.
    prefix: BTreeMap<usize, u64>,
    /// Writes missing below a present one (a hole), over all runs.
    holes: u64,
    /// Problems: values that are wrong, keys that should not exist, column families that
    /// disagree.
    bad: Vec<String>,
}

/// Reopens the DB after the kill (paranoid checks) and checks it against what the writers
/// write: every key from run `scan_from` on is read in both column families (values, holes,
/// batches split between them); the runs before it, verified already, must still hold
/// exactly `expected` writes (the last one present with its value, the next one absent).
/// `scan_from == 0` reads the whole DB.
fn verify(
    mode: Mode,
    fx: &Fixture,
    path: &str,
    expected: &BTreeMap<usize, u64>,
    scan_from: usize,
) -> Found {
    let env = blobfs_rocksdb::env(&fx.uri()).expect("env after the kill");
    let db = open(&env, path).unwrap_or_else(|e| panic!("reopen after a kill failed: {e}"));
    let mut found = Found::default();
    let mut per_cf: Vec<BTreeMap<usize, Vec<u64>>> = Vec::new();
    for (c, name) in ["default", "meta"].into_iter().enumerate() {
        let cf = db.cf_handle(name).expect("column family");
        for (&run, &n) in expected.range(..scan_from) {
            let at = |i: u64| db.get_pinned_cf(cf, key(run, i)).expect("get");
            if n > 0
                && at(n - 1).as_deref()
                    != Some(&value(run, n - 1, c as u64, mode.value_sizes())[..])
            {
                found
                    .bad
                    .push(format!("{name}: run {run}'s write {} changed", n - 1));
            }
            if at(n).is_some() {
                found
                    .bad
                    .push(format!("{name}: run {run}'s write {n} appeared"));
            }
        }
        let mut runs: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        let from = key(scan_from, 0);
        let mode_from = IteratorMode::From(&from, Direction::Forward);
        for item in db.iterator_cf(
            cf,
            if scan_from == 0 {
                IteratorMode::Start
            } else {
                mode_from
            },
        ) {
            let (k, v) = item.unwrap_or_else(|e| panic!("iterating {name}: {e}"));
            let Some((run, i)) = parse_key(&k) else {
                found.bad.push(format!(
                    "{name}: unexpected key {:?}",
                    String::from_utf8_lossy(&k)
                ));
                continue;
            };
            if v[..] != value(run, i, c as u64, mode.value_sizes())[..] {
                found.bad.push(format!(
                    "{name}: wrong value of {} ({} bytes)",
                    String::from_utf8_lossy(&k),
                    v.len()
                ));
            }
            runs.entry(run).or_default().push(i);
        }
        per_cf.push(runs);
    }
    drop(db);
    drop(env);
    if per_cf[0] != per_cf[1] {
        found
            .bad
            .push("the two column families hold different writes (a batch was split)".into());
    }
    for (run, idx) in &per_cf[0] {
        // Keys come sorted; they must be exactly 0..n.
        let n = idx.len() as u64;
        let top = idx.last().map_or(0, |t| t + 1);
        found.holes += top - n;
        let prefix = idx
            .iter()
            .enumerate()
            .take_while(|(j, i)| *j as u64 == **i)
            .count();
        found.prefix.insert(*run, prefix as u64);
    }
    found
}

/// `blobfs fsck -n IMAGE` must exit 0 (what a crash leaves, such as orphans pending
/// deletion, are notes, not errors).
fn fsck_clean(fx: &Fixture, when: &str) {
    let o = blobfs(&["fsck", "-n", fx.image_str()]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "fsck -n {when}: {:?}\n{}\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn seed() -> u64 {
    match std::env::var("BLOBFS_CRASH_SEED") {
        Ok(s) => s.parse().expect("BLOBFS_CRASH_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos() as u64,
    }
}

struct Totals {
    runs: usize,
    acked: u64,
    recovered: u64,
    /// Acknowledged writes missing after the kill.
    lost: u64,
    holes: u64,
    killed_before_opened: usize,
}

/// `RUNS` kills of a writer in `mode` on one DB; every check but the mode's own promise
/// (asserted by the caller from the totals) is asserted here.
fn crash_runs(mode: Mode) -> Totals {
    let seed = seed();
    eprintln!(
        "rocksdb-crash-{}: seed {seed} (BLOBFS_CRASH_SEED={seed} repeats it)",
        mode.name()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    let fx = Fixture::with_size("2G");
    let path = fx.db_path("crashdb");
    let mut expected: BTreeMap<usize, u64> = BTreeMap::new();
    let mut t = Totals {
        runs: 0,
        acked: 0,
        recovered: 0,
        lost: 0,
        holes: 0,
        killed_before_opened: 0,
    };
    for run in 0..RUNS {
        let (mut writer, events) = spawn_writer(mode, &fx, &path, run);
        // One run in five is killed at a random point of its start (opening the image,
        // recovering and opening the DB); the others while writing.
        let early = run % 5 == 4;
        let delay = if early {
            Duration::from_millis(rng.gen_range(0..150))
        } else {
            match events.recv_timeout(Duration::from_secs(30)) {
                Ok(Event::Opened) => {}
                Ok(Event::Done(_)) | Err(_) => {
                    let status = writer.0.wait();
                    panic!(
                        "run {run}: the writer did not open the DB: {status:?}\n{}",
                        writer_stderr(&fx, run)
                    );
                }
            }
            rng.gen_range(Duration::ZERO..mode.max_delay())
        };
        std::thread::sleep(delay);
        writer.0.kill().expect("kill -9 the writer");
        let status = writer.0.wait().expect("reap the writer");
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "run {run}: the writer ended before the kill: {status:?}\n{}",
            writer_stderr(&fx, run)
        );
        let mut opened = !early;
        let acked = loop {
            match events
                .recv_timeout(Duration::from_secs(10))
                .expect("the reader")
            {
                Event::Opened => opened = true,
                Event::Done(r) => break r.unwrap_or_else(|e| panic!("run {run}: {e}")),
            }
        };
        if !opened {
            t.killed_before_opened += 1;
        }

        fsck_clean(&fx, &format!("of the image crashed in run {run}"));
        let found = verify(mode, &fx, &path, &expected, run);
        assert!(
            found.bad.is_empty(),
            "run {run} ({} mode): {} problems:\n{}",
            mode.name(),
            found.bad.len(),
            found.bad[..found.bad.len().min(20)].join("\n")
        );
        let got = found.prefix.get(&run).copied().unwrap_or(0);
        // The write in flight at the kill may or may not be there; nothing beyond it.
        assert!(
            got <= acked + 1,
            "run {run}: {got} writes present, only {acked} acknowledged (+1 in flight)"
        );
        assert_eq!(
            found.prefix.keys().filter(|r| **r != run).count(),
            0,
            "writes of a run that has not happened"
        );
        expected.insert(run, got);
        t.runs += 1;
        t.acked += acked;
        t.recovered += got.min(acked);
        t.lost += acked.saturating_sub(got);
        t.holes += found.holes;
        fsck_clean(&fx, &format!("after the reopen of run {run}"));
        eprintln!(
            "run {run:2}: killed {:>4} ms after {}: acknowledged {acked:5}, present {got:5}",
            delay.as_millis(),
            if early { "the start" } else { "opened" },
        );
    }
    // Finally the whole DB, read once more: exactly what every run left, nothing else.
    let found = verify(mode, &fx, &path, &BTreeMap::new(), 0);
    assert!(
        found.bad.is_empty(),
        "{}",
        found.bad[..found.bad.len().min(20)].join("\n")
    );
    let left: BTreeMap<usize, u64> = expected.into_iter().filter(|(_, n)| *n > 0).collect();
    assert_eq!(found.prefix, left, "the writes each run left");
    t.holes += found.holes;
    fsck_clean(&fx, "at the end");
    t
}

#[test]
fn kill_9_during_synced_writes_loses_no_acknowledged_write() {
    let started = Instant::now();
    let t = crash_runs(Mode::Sync);
    eprintln!(
        "rocksdb-crash: {} kills ({} before the DB was open), {} synced writes acknowledged, {} \
         present after recovery, holes {}, in {:.1?}",
        t.runs,
        t.killed_before_opened,
        t.acked,
        t.recovered,
        t.holes,
        started.elapsed()
    );
    println!("rocksdb-crash: runs={} synced_lost={}", t.runs, t.lost);
    assert!(t.runs >= 20);
    assert_eq!(t.holes, 0, "holes in the recovered writes");
    assert_eq!(t.lost, 0, "acknowledged synced writes lost");
    assert!(t.acked > 0, "no write was acknowledged in any run");
}

#[test]
fn kill_9_during_wal_only_writes_recovers_a_prefix() {
    let started = Instant::now();
    let t = crash_runs(Mode::Wal);
    eprintln!(
        "rocksdb-crash-wal: {} kills ({} before the DB was open) of sync=false writers; {} of {} \
         acknowledged writes recovered ({} lost with the writer's memory) in {:.1?}",
        t.runs,
        t.killed_before_opened,
        t.recovered,
        t.acked,
        t.lost,
        started.elapsed()
    );
    println!(
        "rocksdb-crash-wal: runs={} acked={} recovered={} holes={}",
        t.runs, t.acked, t.recovered, t.holes
    );
    assert!(t.runs >= 20);
    assert_eq!(t.holes, 0, "holes in the recovered writes");
    assert!(t.acked > 0, "no write was acknowledged in any run");
}
