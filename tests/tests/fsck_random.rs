//! Random damage to a BlobFS image's metadata (superblocks, checkpoint, log): fsck's check
//! and repair never panic or hang, a repair of what is repairable leaves an image whose
//! check is clean, and what is not repairable is refused. 1,500 cases in the default run.
//! Prints `fsck-random: cases=N ...`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use blobfs::{check_fs, is_blobfs, repair_fs, FileSystem, FsOptions, Severity, ROOT_INO};
use blobstore::fsck::{check_store, repair_store};
use blobstore::{Blobstore, OpenOptions};
use driver::mem::{MemDevice, MemOptions};
use driver::Device;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CS: u64 = 16 * 1024;

fn dev(m: &MemDevice) -> Arc<dyn Device> {
    Arc::new(m.clone())
}

/// A populated filesystem with checkpoints and a log, and the byte ranges of its metadata.
fn image() -> (MemDevice, Vec<(u64, u64)>) {
    let mem = MemDevice::new(MemOptions {
        capacity: 8 << 20,
        lba_size: 512,
        ..Default::default()
    })
    .unwrap();
    FileSystem::format(
        dev(&mem),
        &blobstore::FormatOptions {
            cluster_size: CS as u32,
            ..Default::default()
        },
    )
    .unwrap();
    let fs = FileSystem::open(
        dev(&mem),
        FsOptions {
            sync_interval: None,
            store: OpenOptions {
                checkpoint_bytes: Some(64 * 1024),
                background_checkpoint: false,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    let mut dirs = vec![ROOT_INO];
    for i in 0..60u32 {
        let parent = dirs[i as usize % dirs.len()];
        if i % 7 == 0 {
            dirs.push(
                fs.mkdir(parent, format!("d{i}").as_bytes(), 0o755, 0, 0)
                    .unwrap()
                    .ino,
            );
        } else {
            let f = fs
                .create(parent, format!("f{i}").as_bytes(), 0o644, 0, 0)
                .unwrap();
            fs.write(f.ino, 0, &vec![i as u8; (i as usize * 997) % 40_000 + 1])
                .unwrap();
            if i % 5 == 0 {
                fs.link(f.ino, ROOT_INO, format!("l{i}").as_bytes())
                    .unwrap();
            }
        }
        fs.sync_all().unwrap();
    }
    let layout = fs.store().metadata_layout();
    drop(fs);
    let mut regions = vec![(0u64, 8192u64)];
    for s in &layout.log_segments {
        regions.push((s.0 * CS, CS));
    }
    (mem, regions)
}

#[derive(Default, Debug)]
struct Tally {
    cases: u64,
    clean: u64,
    repaired: u64,
    unrepairable: u64,
    not_a_store: u64,
    panics: u64,
    after_repair_dirty: u64,
}

/// One case: check, repair, check again. Returns the outcome name.
fn run_case(img: &MemDevice) -> &'static str {
    let d = dev(img);
    let sc = match check_store(&d) {
        Ok(c) => c,
        Err(_) => return "not-a-store",
    };
    // Check the filesystem read-only on whatever replayed.
    let fatal = sc.fatal.is_some();
    let store_clean = sc.is_clean();
    let mut fs_errors = 0;
    if let (false, Some(_)) = (fatal, sc.replayed.as_ref()) {
        let sc2 = check_store(&d).unwrap();
        let r = sc2.replayed.unwrap();
        let qp = d.open_qpair(8).unwrap();
        let ro = Blobstore::from_replayed(
            Arc::clone(&d),
            OpenOptions {
                read_only: true,
                ..Default::default()
            },
            qp,
            r,
        )
        .unwrap();
        if is_blobfs(&ro) {
            let fc = check_fs(&ro).unwrap();
            fs_errors = fc
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .count();
        }
    }
    if store_clean && fs_errors == 0 {
        return "clean";
    }
    if !sc.repairable() {
        // A refused repair must not write.
        let before = snapshot(img);
        assert!(repair_store(Arc::clone(&d), sc).is_err());
        assert!(
            snapshot(img) == before,
            "refused repair wrote to the device"
        );
        return "unrepairable";
    }
    let store = if sc.needs_repair() {
        repair_store(Arc::clone(&d), sc).unwrap().0
    } else {
        Blobstore::open(
            Arc::clone(&d),
            OpenOptions {
                background_checkpoint: false,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let mut left = 0;
    if is_blobfs(&store) {
        for _ in 0..6 {
            let fc = check_fs(&store).unwrap();
            let todo: Vec<_> = fc
                .findings
                .iter()
                .filter(|f| f.repairable())
                .cloned()
                .collect();
            left = fc
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error && !f.repairable())
                .count();
            if todo.is_empty() {
                break;
            }
            repair_fs(&store, &todo).unwrap();
        }
    }
    let c = store.check().unwrap();
    assert!(c.is_clean(), "store check after repair: {:?}", c.problems);
    store.close().unwrap();
    // The repaired image checks clean at the store level, and only unrepairable
    // filesystem errors (if any) remain.
    let again = check_store(&d).unwrap();
    assert!(again.is_clean(), "after repair: {:?}", again.findings);
    if left > 0 {
        "unrepairable"
    } else {
        "repaired"
    }
}

fn snapshot(m: &MemDevice) -> Vec<u8> {
    let mut v = vec![0u8; 8 << 20];
    m.peek(0, &mut v);
    v
}

#[test]
fn random_damage_never_panics_and_repairs_cleanly() {
    let (pristine, regions) = image();
    let cases: u64 = std::env::var("FSCK_RANDOM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let seed: u64 = std::env::var("FSCK_RANDOM_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xF5C4);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = Tally::default();
    // A watchdog: a hung case fails the test instead of stalling CI.
    let busy = Arc::new(AtomicBool::new(true));
    let case_started = Arc::new(parking_lot::Mutex::new(Instant::now()));
    {
        let busy = Arc::clone(&busy);
        let started = Arc::clone(&case_started);
        std::thread::spawn(move || {
            while busy.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(500));
                if started.lock().elapsed() > Duration::from_secs(20) {
                    eprintln!("fsck-random: a case hung for 20 s");
                    std::process::abort();
                }
            }
        });
    }
    let start = Instant::now();
    for case in 0..cases {
        *case_started.lock() = Instant::now();
        let img = pristine.duplicate();
        let hits = rng.gen_range(1..=4);
        for _ in 0..hits {
            let (base, len) = regions[rng.gen_range(0..regions.len())];
            let off = base + rng.gen_range(0..len);
            match rng.gen_range(0..4) {
                0 => {
                    let mut b = [0u8; 1];
                    img.peek(off, &mut b);
                    b[0] ^= 1 << rng.gen_range(0..8);
                    img.poke(off, &b);
                }
                1 => {
                    let n = rng.gen_range(1..64);
                    let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
                    img.poke(off, &bytes[..bytes.len().min((base + len - off) as usize)]);
                }
                2 => {
                    let n = rng.gen_range(1..2048u64).min(base + len - off);
                    img.poke(off, &vec![0u8; n as usize]);
                }
                _ => {
                    // Copy another region's bytes over this one.
                    let (b2, l2) = regions[rng.gen_range(0..regions.len())];
                    let n = 512u64.min(len - (off - base)).min(l2);
                    let mut buf = vec![0u8; n as usize];
                    img.peek(b2, &mut buf);
                    img.poke(off, &buf);
                }
            }
        }
        t.cases += 1;
        match catch_unwind(AssertUnwindSafe(|| run_case(&img))) {
            Ok("clean") => t.clean += 1,
            Ok("repaired") => t.repaired += 1,
            Ok("unrepairable") => t.unrepairable += 1,
            Ok(_) => t.not_a_store += 1,
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                if msg.contains("after repair") || msg.contains("refused repair") {
                    t.after_repair_dirty += 1;
                } else {
                    t.panics += 1;
                }
                eprintln!("fsck-random: case {case} (seed {seed}): {msg}");
            }
        }
    }
    busy.store(false, Ordering::SeqCst);
    println!(
        "fsck-random: cases={} panics={} clean={} repaired={} unrepairable={} not_a_store={} dirty_after_repair={} ({:.1}s)",
        t.cases,
        t.panics,
        t.clean,
        t.repaired,
        t.unrepairable,
        t.not_a_store,
        t.after_repair_dirty,
        start.elapsed().as_secs_f64()
    );
    assert_eq!(t.panics, 0);
    assert_eq!(t.after_repair_dirty, 0);
}
