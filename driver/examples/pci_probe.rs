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
mod common;

use common::{check, stamp, version_of, Trigger};
use driver::pci::{PciDevice, PciOptions};
use driver::{run_one, Completion, Device, DmaBuf, Error, Lba, Op};
use std::sync::Arc;

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
    let is_reset = |e: &Error| matches!(e, Error::ControllerReset { .. });
    let trigger = if how == "requested" {
        let d = dev.clone();
        Trigger::InWorker(Box::new(move || {
            d.reset_controller().map_err(|e| e.to_string())
        }))
    } else {
        let path = format!("/sys/bus/pci/devices/{}/reset", dev.addr());
        Trigger::FromMain(Box::new(move || {
            std::fs::write(&path, "1").map_err(|e| format!("{path}: {e}"))
        }))
    };
    let what = if how == "requested" {
        "reset on request".to_string()
    } else {
        "function-level reset through sysfs".to_string()
    };
    // This driver fails whatever it had in flight when the controller is reset.
    common::reset_test(
        Arc::new(dev.clone()),
        &what,
        trigger,
        is_reset,
        true,
        failed,
    );
    println!("controller resets: {}", dev.resets());
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
