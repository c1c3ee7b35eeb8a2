//! Exercises the userspace NVMe driver on a controller bound to `uio_pci_generic` (in the
//! VM: tests/vm/pci.sh). Exits 1 if anything failed.
//!
//! `pci_probe ADDR` runs every command kind: Flush, Read and Write of one block and of
//! multi-page transfers (PRP2 and PRP lists, up to the maximum transfer), Write Zeroes,
//! Deallocate (read back as zeroes), out-of-range and read-only refusals, and many
//! commands in flight at once on several queue pairs.
//!
//! `pci_probe ADDR --reset requested|sysfs` keeps 32 writes and reads in flight on a
//! worker thread while the controller is reset: by the driver on request
//! (`PciDevice::reset_controller`), or from outside through the PCI function's sysfs
//! `reset` file (a function-level reset the driver only notices). It checks that commands
//! in flight failed with the driver's reset error, that I/O works again afterwards, that
//! every block holds a whole version written to it, and that blocks flushed before the
//! reset kept their data.
use driver::pci::{PciDevice, PciOptions};
use driver::{run_one, Completion, Device, DmaBuf, Error, Lba, Op};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn check(failed: &mut bool, what: &str, ok: bool, detail: String) {
    println!("{what}: {}", if ok { "ok".to_string() } else { detail });
    *failed |= !ok;
}

/// A block stamped with its LBA and a version number, so torn or misplaced data shows.
fn stamp(lba_size: usize, lba: u64, version: u64) -> DmaBuf {
    let mut b = DmaBuf::zeroed(lba_size);
    for (i, w) in b.as_mut_slice().chunks_exact_mut(16).enumerate() {
        w[..8].copy_from_slice(&lba.to_le_bytes());
        w[8..].copy_from_slice(&(version ^ i as u64).to_le_bytes());
    }
    b
}

/// The version a block holds, if it is a whole stamp of `lba`.
fn version_of(b: &[u8], lba: u64) -> Option<u64> {
    let v = u64::from_le_bytes(b[8..16].try_into().ok()?);
    for (i, w) in b.chunks_exact(16).enumerate() {
        if w[..8] != lba.to_le_bytes() || w[8..] != (v ^ i as u64).to_le_bytes() {
            return None;
        }
    }
    Some(v)
}

fn basics(dev: &PciDevice, failed: &mut bool) {
    let g = dev.geometry();
    let bs = g.lba_size as usize;
    let mut qp = dev.open_qpair(16).expect("queue pair");
    let qp = qp.as_mut();
    let r = run_one(qp, Op::Flush);
    check(failed, "flush", r.is_ok(), format!("{r:?}"));
    // One block, then transfers of 2 pages (PRP2), 3 pages and the maximum (PRP lists),
    // each written with a pattern and read back.
    let mut sizes = vec![bs, 8192, 12288, 65536, g.max_transfer as usize];
    sizes.dedup();
    for (i, &len) in sizes.iter().enumerate() {
        let lba = Lba(100 + (i as u64) * (g.max_transfer as u64 / g.lba_size as u64));
        let data: Vec<u8> = (0..len)
            .map(|j| (j * 7 + i * 13 + j / 4096) as u8)
            .collect();
        let r = run_one(
            qp,
            Op::Write {
                lba,
                buf: DmaBuf::from_slice(&data),
            },
        );
        check(
            failed,
            &format!("write {len} bytes"),
            r.is_ok(),
            format!("{r:?}"),
        );
        let r = run_one(
            qp,
            Op::Read {
                lba,
                buf: DmaBuf::zeroed(len),
            },
        );
        let ok = matches!(&r, Ok(Some(b)) if b.as_slice() == data.as_slice());
        check(
            failed,
            &format!("read back {len} bytes"),
            ok,
            format!("{r:?}"),
        );
    }
    // Write Zeroes and Deallocate read back as zeroes, also across several commands.
    let big = 70_000u64.min(g.lba_count / 2);
    for (name, op) in [
        (
            "write zeroes",
            Op::WriteZeroes {
                lba: Lba(100),
                count: 8,
            },
        ),
        (
            "deallocate",
            Op::Deallocate {
                lba: Lba(100),
                count: big,
            },
        ),
    ] {
        let _ = run_one(
            qp,
            Op::Write {
                lba: Lba(100),
                buf: DmaBuf::from_slice(&vec![0xee; bs * 8]),
            },
        );
        let r = run_one(qp, op);
        check(failed, name, r.is_ok(), format!("{r:?}"));
        let r = run_one(
            qp,
            Op::Read {
                lba: Lba(100),
                buf: DmaBuf::zeroed(bs * 8),
            },
        );
        let ok = matches!(&r, Ok(Some(b)) if b.as_slice().iter().all(|&x| x == 0));
        check(
            failed,
            &format!("reads zeroes after {name}"),
            ok,
            format!("{r:?}"),
        );
    }
    println!("deallocate sent as {}", dev.deallocate_method());
    let r = run_one(
        qp,
        Op::Read {
            lba: Lba(g.lba_count),
            buf: DmaBuf::zeroed(bs),
        },
    );
    let ok = matches!(r, Err(Error::OutOfRange { .. }));
    check(failed, "beyond the end refused", ok, format!("{r:?}"));

    // Many commands in flight on three queue pairs at once.
    let mut qps: Vec<_> = (0..3).map(|_| dev.open_qpair(32).expect("qpair")).collect();
    let per = 200u64;
    for (q, qp) in qps.iter_mut().enumerate() {
        for i in 0..32u64 {
            let lba = 10_000 + q as u64 * per + i;
            qp.submit(
                Op::Write {
                    lba: Lba(lba),
                    buf: stamp(bs, lba, 1),
                },
                lba,
            )
            .expect("submit");
        }
    }
    let mut bad = 0;
    let mut out: Vec<Completion> = Vec::new();
    for (q, qp) in qps.iter_mut().enumerate() {
        let mut next = 32u64;
        while qp.in_flight() > 0 {
            out.clear();
            qp.wait(64, &mut out);
            for c in out.drain(..) {
                bad += usize::from(c.result.is_err());
                if next < per {
                    let lba = 10_000 + q as u64 * per + next;
                    next += 1;
                    qp.submit(
                        Op::Write {
                            lba: Lba(lba),
                            buf: stamp(bs, lba, 1),
                        },
                        lba,
                    )
                    .expect("submit");
                }
            }
        }
    }
    let mut wrong = 0;
    for lba in 10_000..10_000 + 3 * per {
        let r = run_one(
            qps[0].as_mut(),
            Op::Read {
                lba: Lba(lba),
                buf: DmaBuf::zeroed(bs),
            },
        );
        if !matches!(&r, Ok(Some(b)) if version_of(b.as_slice(), lba) == Some(1)) {
            wrong += 1;
        }
    }
    check(
        failed,
        "600 writes at queue depth 32 on 3 queue pairs, read back",
        bad == 0 && wrong == 0,
        format!("{bad} failed, {wrong} read back wrong"),
    );
}

fn reset_test(addr: &str, how: &str, failed: &mut bool) {
    let dev = PciDevice::open(addr, &PciOptions::default()).expect("open");
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
    let ok_ops = Arc::new(AtomicU64::new(0));
    let worker = {
        let dev = dev.clone();
        let stop = Arc::clone(&stop);
        let ok_ops = Arc::clone(&ok_ops);
        // A requested reset is issued by the worker itself, right after it filled its
        // queue: 32 commands are certainly in flight then (from another thread the reset
        // often lands while the queue is momentarily empty: QEMU completes a whole
        // submission queue per doorbell).
        let mut reset_now = how == "requested";
        let mut reset_result = None;
        std::thread::spawn(move || {
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
                if reset_now && ok_ops.load(Ordering::Relaxed) >= 2000 {
                    reset_now = false;
                    reset_result = Some(dev.reset_controller());
                }
                out.clear();
                qp.wait(64, &mut out);
                for c in out.drain(..) {
                    match c.result {
                        Ok(()) => {
                            ok_ops.fetch_add(1, Ordering::Relaxed);
                            if !reset_errors.is_empty() {
                                ok_after_reset += 1;
                            }
                            if let Some(b) = c.buf.filter(|b| b.len() == bs) {
                                if version_of(b.as_slice(), c.tag).is_none() {
                                    other_errors.push(format!("lba {} read torn data", c.tag));
                                }
                            }
                        }
                        Err(e @ Error::ControllerReset { .. }) => reset_errors.push(e.to_string()),
                        Err(e) => other_errors.push(e.to_string()),
                    }
                }
            }
            (reset_errors, other_errors, ok_after_reset, reset_result)
        })
    };
    // Let I/O get going, then reset.
    let t = Instant::now();
    while ok_ops.load(Ordering::Relaxed) < 2000 && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = ok_ops.load(Ordering::Relaxed);
    match how {
        "requested" => {}
        _ => {
            let path = format!("/sys/bus/pci/devices/{}/reset", dev.addr());
            let r = std::fs::write(&path, "1");
            check(
                failed,
                &format!("function-level reset through {path}"),
                r.is_ok(),
                format!("{r:?}"),
            );
        }
    }
    // Keep going until well after the reset.
    let t = Instant::now();
    while ok_ops.load(Ordering::Relaxed) < before + 4000 && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let (reset_errors, other_errors, ok_after, reset_result) = worker.join().expect("worker");
    if how == "requested" {
        check(
            failed,
            "reset on request, with 32 commands in flight",
            matches!(reset_result, Some(Ok(()))),
            format!("{reset_result:?}"),
        );
    }
    println!(
        "reset ({how}): {} commands failed with the reset error, {} other errors, {} succeeded \
         after the reset, {} controller resets",
        reset_errors.len(),
        other_errors.len(),
        ok_after,
        dev.resets()
    );
    if let Some(e) = reset_errors.first() {
        println!("  the error: {e}");
    }
    for e in other_errors.iter().take(5) {
        println!("  other error: {e}");
    }
    check(
        failed,
        "commands in flight failed with the reset error",
        !reset_errors.is_empty() && other_errors.is_empty(),
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(addr) = args.get(1) else {
        eprintln!("usage: pci_probe ADDR [--reset requested|sysfs]");
        std::process::exit(2);
    };
    let mut failed = false;
    if args.get(2).map(String::as_str) == Some("--reset") {
        let how = args.get(3).map(String::as_str).unwrap_or("requested");
        reset_test(addr, how, &mut failed);
    } else {
        let dev = match PciDevice::open(addr, &PciOptions::default()) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("open {addr}: {e}");
                std::process::exit(1);
            }
        };
        let (model, serial) = dev.model();
        println!("pci:{addr}: {model} serial {serial}, {:?}", dev.geometry());
        basics(&dev, &mut failed);
        // A second open while this one lives is refused: one process, one owner.
        let e = PciDevice::open(addr, &PciOptions::default());
        check(
            &mut failed,
            "a second open is refused",
            matches!(&e, Err(e) if e.to_string().contains("in use")),
            format!("{e:?}"),
        );
        drop(dev);
        let ro = PciDevice::open(
            addr,
            &PciOptions {
                read_only: true,
                ..PciOptions::default()
            },
        )
        .expect("reopen read-only");
        let mut qp = ro.open_qpair(4).expect("qpair");
        let r = qp.submit(
            Op::Write {
                lba: Lba(0),
                buf: DmaBuf::zeroed(ro.geometry().lba_size as usize),
            },
            0,
        );
        check(
            &mut failed,
            "read-only refuses writes",
            r.is_err(),
            "accepted".into(),
        );
        drop(qp);
        drop(ro);
        // Dataset Management, on request: the command works; whether the device then
        // deallocated (and reads zeroes) is its choice, so that is only reported.
        let dsm = PciDevice::open(
            addr,
            &PciOptions {
                dsm_deallocate: true,
                ..PciOptions::default()
            },
        )
        .expect("reopen");
        let bs = dsm.geometry().lba_size as usize;
        let mut qp = dsm.open_qpair(4).expect("qpair");
        let (lba, count) = (Lba(4096), 4096);
        let w = run_one(
            qp.as_mut(),
            Op::Write {
                lba,
                buf: DmaBuf::from_slice(&vec![0xee; bs]),
            },
        );
        let r = run_one(qp.as_mut(), Op::Deallocate { lba, count });
        check(
            &mut failed,
            &format!("deallocate as {}", dsm.deallocate_method()),
            w.is_ok() && r.is_ok(),
            format!("{w:?} {r:?}"),
        );
        let r = run_one(
            qp.as_mut(),
            Op::Read {
                lba,
                buf: DmaBuf::zeroed(bs),
            },
        );
        let zero = matches!(&r, Ok(Some(b)) if b.as_slice().iter().all(|&x| x == 0));
        println!("after a dataset-management deallocate the device reads zeroes: {zero}");
    }
    if failed {
        std::process::exit(1);
    }
}
