//! What the driver probes share: checks, stamped blocks, and I/O through a controller
//! reset.
#![allow(dead_code)]

use driver::{run_one, Device, DmaBuf, Error, Lba, Op};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn check(failed: &mut bool, what: &str, ok: bool, detail: String) {
    println!("{what}: {}", if ok { "ok".to_string() } else { detail });
    *failed |= !ok;
}

/// A block stamped with its LBA and a version number, so torn or misplaced data shows.
pub fn stamp(lba_size: usize, lba: u64, version: u64) -> DmaBuf {
    let mut b = DmaBuf::zeroed(lba_size);
    for (i, w) in b.as_mut_slice().chunks_exact_mut(16).enumerate() {
        w[..8].copy_from_slice(&lba.to_le_bytes());
        w[8..].copy_from_slice(&(version ^ i as u64).to_le_bytes());
    }
    b
}

/// The version a block holds, if it is a whole stamp of `lba`.
pub fn version_of(b: &[u8], lba: u64) -> Option<u64> {
    let v = u64::from_le_bytes(b[8..16].try_into().ok()?);
    for (i, w) in b.chunks_exact(16).enumerate() {
        if w[..8] != lba.to_le_bytes() || w[8..] != (v ^ i as u64).to_le_bytes() {
            return None;
        }
    }
    Some(v)
}

/// How the reset comes: from the I/O thread right after it filled its queue (so commands
/// are certainly in flight), or from the main thread while I/O runs.
pub enum Trigger {
    InWorker(Box<dyn FnOnce() -> Result<(), String> + Send>),
    FromMain(Box<dyn FnOnce() -> Result<(), String>>),
}

/// Keeps 32 writes and reads in flight on a worker thread while `trigger` resets the
/// controller (`what` names it); `is_reset_error` tells the errors the reset may cause
/// from any other. Checks that commands failed with such an error only (and that some did,
/// if `must_fail_some`), that I/O works after the reset, and that every block holds a whole version, the flushed one
/// or a later one.
pub fn reset_test(
    dev: Arc<dyn Device>,
    what: &str,
    trigger: Trigger,
    is_reset_error: fn(&Error) -> bool,
    must_fail_some: bool,
    failed: &mut bool,
) {
    let g = dev.geometry();
    let bs = g.lba_size as usize;
    const BLOCKS: u64 = 512;
    const BASE: u64 = 20_000;
    // Version 1 everywhere, flushed: this must survive whatever the reset does.
    {
        let mut qp = dev.open_qpair(8).expect("qpair");
        for lba in BASE..BASE + BLOCKS {
            run_one(
                qp.as_mut(),
                Op::Write {
                    lba: Lba(lba),
                    buf: stamp(bs, lba, 1),
                },
            )
            .expect("write v1");
        }
        run_one(qp.as_mut(), Op::Flush).expect("flush");
    }
    let stop = Arc::new(AtomicBool::new(false));
    // Set once the reset has been triggered: completions after it count as "after".
    let triggered = Arc::new(AtomicBool::new(false));
    let ok_ops = Arc::new(AtomicU64::new(0));
    let (worker, from_main) = {
        let dev = dev.clone();
        let stop = Arc::clone(&stop);
        let ok_ops = Arc::clone(&ok_ops);
        let triggered = Arc::clone(&triggered);
        // A reset from the worker comes right after it filled its queue: 32 commands are
        // certainly in flight then (from another thread the reset often lands while the
        // queue is momentarily empty: QEMU completes a whole submission queue per doorbell).
        let (mut in_worker, from_main) = match trigger {
            Trigger::InWorker(f) => (Some(f), None),
            Trigger::FromMain(f) => (None, Some(f)),
        };
        let mut reset_result = None;
        let handle = std::thread::spawn(move || {
            // Writes of version 2 and reads of the upper half, 32 in flight, until told.
            let mut qp = dev.open_qpair(32).expect("qpair");
            let mut reset_errors = Vec::new();
            let mut other_errors = Vec::new();
            let mut out = Vec::new();
            let mut i = 0u64;
            let mut ok_after_reset = 0u64;
            loop {
                while qp.in_flight() < 32 && !stop.load(Ordering::Relaxed) {
                    let lba = BASE + (i * 7919) % BLOCKS;
                    i += 1;
                    let op = if i.is_multiple_of(2) {
                        Op::Write {
                            lba: Lba(lba),
                            buf: stamp(bs, lba, 2),
                        }
                    } else {
                        Op::Read {
                            lba: Lba(lba),
                            buf: DmaBuf::zeroed(bs),
                        }
                    };
                    if let Err(e) = qp.submit(op, lba) {
                        other_errors.push(format!("submit: {}", e.error));
                        break;
                    }
                }
                if qp.in_flight() == 0 {
                    break;
                }
                if ok_ops.load(Ordering::Relaxed) >= 2000 {
                    if let Some(f) = in_worker.take() {
                        reset_result = Some(f());
                        triggered.store(true, Ordering::SeqCst);
                    }
                }
                out.clear();
                qp.wait(64, &mut out);
                for c in out.drain(..) {
                    match c.result {
                        Ok(()) => {
                            ok_ops.fetch_add(1, Ordering::Relaxed);
                            if triggered.load(Ordering::SeqCst) {
                                ok_after_reset += 1;
                            }
                            if let Some(b) = c.buf.filter(|b| b.len() == bs) {
                                if version_of(b.as_slice(), c.tag).is_none() {
                                    other_errors.push(format!("lba {} read torn data", c.tag));
                                }
                            }
                        }
                        Err(e) if is_reset_error(&e) => reset_errors.push(e.to_string()),
                        Err(e) => other_errors.push(e.to_string()),
                    }
                }
            }
            (reset_errors, other_errors, ok_after_reset, reset_result)
        });
        (handle, from_main)
    };
    // Let I/O get going, then reset.
    let t = Instant::now();
    while ok_ops.load(Ordering::Relaxed) < 2000 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = ok_ops.load(Ordering::Relaxed);
    if let Some(f) = from_main {
        let r = f();
        triggered.store(true, Ordering::SeqCst);
        check(failed, what, r.is_ok(), format!("{r:?}"));
    }
    // Keep going until well after the reset.
    let t = Instant::now();
    while ok_ops.load(Ordering::Relaxed) < before + 4000 && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let (reset_errors, other_errors, ok_after, reset_result) = worker.join().expect("worker");
    if let Some(r) = reset_result {
        check(
            failed,
            &format!("{what}, with 32 commands in flight"),
            r.is_ok(),
            format!("{r:?}"),
        );
    }
    println!(
        "{what}: {} commands failed with the reset error, {} other errors, {} succeeded \
         after the reset",
        reset_errors.len(),
        other_errors.len(),
        ok_after,
    );
    if let Some(e) = reset_errors.first() {
        println!("  the error: {e}");
    }
    for e in other_errors.iter().take(5) {
        println!("  other error: {e}");
    }
    check(
        failed,
        "commands in flight failed with the reset error, nothing else",
        (!reset_errors.is_empty() || !must_fail_some) && other_errors.is_empty(),
        "expected reset errors only".into(),
    );
    check(
        failed,
        "I/O works after the reset",
        ok_after > 1000,
        format!("only {ok_after} commands after it"),
    );
    // Every block holds version 1 or 2, whole.
    let mut qp = dev.open_qpair(8).expect("qpair");
    let mut bad = 0;
    for lba in BASE..BASE + BLOCKS {
        let r = run_one(
            qp.as_mut(),
            Op::Read {
                lba: Lba(lba),
                buf: DmaBuf::zeroed(bs),
            },
        );
        match r {
            Ok(Some(b)) if matches!(version_of(b.as_slice(), lba), Some(1 | 2)) => {}
            other => {
                bad += 1;
                if bad < 4 {
                    println!("  lba {lba}: {other:?}");
                }
            }
        }
    }
    check(
        failed,
        "every block holds a whole version after the reset",
        bad == 0,
        format!("{bad} blocks wrong"),
    );
}
